"""Plausibility against the patient's own series: times and jumps.

The fixed physiological ranges (``detectors.units``) are wide on purpose: real extremes happen
(Hct 8 % in a haemorrhage, Hb 2.8 g/dL, WBC 440 in leukostasis). What betrays an artefact is a
value that does not fit the patient's OWN series. Two checks, both pure:

- **Time** (``check_time``): a reading more than ``future_tolerance_h`` after the patient's
  horizon is ``bad_time`` ("in the future": a mistyped date, a skewed device clock) and never
  moves the horizon, until a second such reading that agrees with it shows that the patient's
  time really moved on: after more than ``stay_gap_h`` that is a new stay (a readmission the ADT
  feed did not announce). A reading more than ``stay_gap_h`` BEFORE the horizon is outside this
  stay (``bad_time``), unless the horizon itself rests on one lone reading: then that reading was
  the date error and the stay restarts from the readings that agree (cases/07: the first SBP
  dated a year ahead).
- **Jumps** (``check_jump``): a weighing that differs from the median of the recent weighings
  (and the admission weight) by more than a bed-scale tolerance plus what any fluid balance
  allows per hour, or a Hct that differs from both neighbouring draws by more than the fastest
  real change, is ``artefact_jump`` with the neighbouring values in the detail. Two weighings
  that agree with each other and not with the old reference replace it (the old one was wrong).
"""

from __future__ import annotations

from detectors.config import HOUR_MS, Thresholds
from detectors.criteria.hemoconcentration import median
from detectors.observation import Rejection, format_time
from detectors.state import PatientState

#: the reason code of a value that does not fit the patient's series
ARTEFACT_JUMP = "artefact_jump"
#: the outcome of ``check_time`` when the reading starts a new stay
NEW_STAY = "new_stay"


def check_time(st: PatientState, t: int, th: Thresholds) -> Rejection | str | None:
    """None when ``t`` fits the patient's horizon; ``NEW_STAY`` when it starts a new stay (the
    caller resets the state); a ``bad_time`` Rejection otherwise. Updates ``st.ahead`` only."""
    horizon = st.max_t
    if not horizon:
        return None
    tolerance = th.future_tolerance_ms
    gap = th.stay_gap_ms
    if t > horizon + tolerance:
        if st.ahead and t >= st.ahead - tolerance:
            # a second reading far ahead that agrees with the first: time really moved on
            st.ahead = 0
            return NEW_STAY if t - horizon > gap else None
        st.ahead = t
        hours = (t - horizon) / HOUR_MS
        return Rejection("bad_time", f"{format_time(t)} is {_span(hours)} after the patient's "
                         f"latest reading ({format_time(horizon)}): in the future (a second "
                         "reading near it starts the patient's new time, or a new stay)")
    if t < horizon - gap:
        if st.near < 2:
            return NEW_STAY  # the horizon was one lone reading: that one was the date error
        hours = (horizon - t) / HOUR_MS
        return Rejection("bad_time", f"{format_time(t)} is {_span(hours)} before the patient's "
                         f"latest reading ({format_time(horizon)}): outside this stay")
    return None


def advance_horizon(st: PatientState, t: int, th: Thresholds) -> None:
    """Fold an accepted reading's time into the horizon and its support count."""
    tolerance = th.future_tolerance_ms
    if t > st.max_t:
        st.near = 2 if st.max_t and t - st.max_t <= tolerance else 1
        st.max_t = t
    elif t >= st.max_t - tolerance and st.near < 2:
        st.near += 1


def _span(hours: float) -> str:
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h"


def check_jump(st: PatientState, kind: str, t: int, value: float, th: Thresholds
               ) -> Rejection | None:
    """``artefact_jump`` when a weighing or a Hct does not fit the patient's series."""
    if kind == "weight":
        return _weight_jump(st, t, value, th)
    if kind == "hematocrit":
        return _hct_jump(st, t, value, th)
    return None


def _weight_jump(st: PatientState, t: int, kg: float, th: Thresholds) -> Rejection | None:
    recent = st.wt[-th.weight_jump_reference_weighings:]
    refs = [row[1] for row in recent]
    if st.weight_kg is not None:
        refs.append(st.weight_kg)
    if not refs:
        return None
    ref = median(refs)
    nearest_h = min((abs(t - row[0]) / HOUR_MS for row in recent),
                    default=th.weight_jump_unknown_age_h)
    allowed = max(th.weight_jump_kg, ref * th.weight_jump_pct / 100.0) \
        + th.weight_jump_kg_per_h * nearest_h
    if abs(kg - ref) <= allowed:
        st.wref = []
        return None
    if st.wref and abs(kg - st.wref[1]) <= max(th.weight_jump_kg,
                                               kg * th.weight_jump_pct / 100.0):
        # two weighings agree with each other, not with the reference: the reference was wrong
        st.wt = [row for row in st.wt if abs(row[1] - kg) <= allowed]
        st.weight_kg = None if st.weight_kg is not None and abs(st.weight_kg - kg) > allowed \
            else st.weight_kg
        st.blr.pop("weight", None)
        st.wref = []
        return None
    st.wref = [t, kg]
    shown = ", ".join(f"{row[1]:g} kg at {format_time(int(row[0]))}" for row in recent)
    admission = f"; admission weight {st.weight_kg:g} kg" if st.weight_kg is not None else ""
    return Rejection(ARTEFACT_JUMP, f"weight {kg:g} kg at {format_time(t)} differs from the "
                     f"patient's recent weighings ({shown or 'none'}{admission}; median "
                     f"{ref:g} kg) by more than {allowed:.1f} kg: artefact (a second weighing "
                     "that agrees with it replaces them)")


def _hct_jump(st: PatientState, t: int, value: float, th: Thresholds) -> Rejection | None:
    draws = st.lab("hematocrit")
    before = [row for row in draws if row[0] < t][-1:]
    after = [row for row in draws if row[0] > t][:1]
    neighbours = before + after
    if not neighbours:
        return None
    for row in neighbours:
        hours = abs(t - row[0]) / HOUR_MS
        if abs(value - row[1]) <= th.hct_jump_points + th.hct_jump_points_per_h * hours:
            return None
    shown = ", ".join(f"{row[1]:g} % at {format_time(int(row[0]))}" for row in neighbours)
    return Rejection(ARTEFACT_JUMP, f"hematocrit {value:g} % at {format_time(t)} differs from "
                     f"the neighbouring draws ({shown}) by more than "
                     f"{th.hct_jump_points:g} points + {th.hct_jump_points_per_h:g} per hour: "
                     "artefact")
