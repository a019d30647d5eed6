"""Folding one validated observation into the patient's windows (no decision is taken here).

Each handler updates the windows of one kind and says whether a decision may have changed
(``(evaluate, status)``) or refuses the reading (a ``Rejection``: an SBP not above its DBP, an
impossible urine rate, a value that does not fit the patient's series). ``detectors.phases``
calls them from ``step`` and takes the decisions.

Every reading carries when it became known (``known``: its ``available_at``, or the patient's
arrival clock when it came later than its event time), so evidence can say when it existed.
"""

from __future__ import annotations

from collections.abc import Callable

from detectors.config import HOUR_MS, MIN_MS, Thresholds
from detectors.confounders import albumin_infused_before
from detectors.criteria import hypotension as bp
from detectors.observation import Observation, Rejection
from detectors.plausibility import check_jump
from detectors.state import (
    CENSORED_CODE,
    LAB_KINDS,
    RUNS_KEEP,
    PatientState,
    add_baseline,
    add_baseline_reading,
    add_fluid,
    add_urine,
    delay_min,
    insert_row,
    remove_baseline,
    remove_rows,
)

#: [D] urine collections are kept 12 h: the longest flow window is 6 h (oliguria, prodrome)
_URINE_HORIZON_MS = 12 * HOUR_MS

Outcome = tuple[bool, str] | Rejection
Handler = Callable[[PatientState, Observation, int, Thresholds], Outcome]


def on_pressure(st: PatientState, obs: Observation, known: int, th: Thresholds) -> Outcome:
    """An SBP or MAP reading: tallied into its 5-minute slot (``criteria.hypotension``); an SBP
    also enters the running baseline (first ``baseline_vitals_h``, normal readings only) and is
    kept as the latest SBP. A decision may have changed when the slot's class changed, while a
    low run grows outside a leak, or while a recovered run grows in a leak."""
    t = obs.observed_at_ms
    value = obs.value
    if obs.kind == "sbp":
        last = st.last
        dbp = last.get("dbp")
        if dbp is not None and dbp[0] == t and value <= dbp[1]:
            return Rejection("inconsistent", f"SBP {value:g} not above DBP {dbp[1]:g} mmHg at the "
                             "same time (docs/clinical-criteria.md: SBP must exceed DBP): artefact")
        b = st.bl.get("sbp")
        window = th.baseline_vitals_ms
        # a hypotensive reading is never a baseline
        if (b is None or t - b[0] <= window) and value > th.sbp_low_mmhg:
            add_baseline(st, "sbp", t, value, window)
            b = st.bl.get("sbp")  # none yet when the first episode began before a normal SBP
        latest = last.get("sbp")
        if latest is None:
            last["sbp"] = [t, value]
        elif t >= latest[0]:
            latest[0], latest[1] = t, value
        sbp_baseline = b[2] / b[1] if (
            b is not None and b[1] >= th.baseline_min_vitals
            and t - b[0] <= th.baseline_max_age_ms) else None
        measure, low, high = bp.SBP_N, bp.sbp_low(value, sbp_baseline, th), \
            value > th.recovery_sbp_mmhg
    else:
        measure, low, high = bp.MAP_N, value < th.map_low_mmhg, False
    slot_ms = th.bp_slot_ms
    s = t // slot_ms
    horizon = th.bp_horizon_slots
    newest = st.max_t // slot_ms
    if s < newest - horizon or (st.fold and s <= st.fold[0]):
        count_late_bp(st, t)
        return False, "late"
    slots = st.slots
    slot = slots.get(s)
    if slot is None:
        slot = slots[s] = bp.new_slot()
        # a new slot continues the class of the slot before it: if it keeps that class nothing
        # about the runs changes but their length
        earlier = slots.get(s - 1)
        before = earlier[bp.CLS] if earlier is not None else -1
    else:
        before = slot[bp.CLS]
    after = bp.tally(slot, measure, value, t, low, high, known)
    if len(slots) > horizon + 1:
        fold_old_slots(st, newest - horizon, th)
    # a low run growing matters while a leak (or a relapse) may begin; a recovered run growing
    # matters during a leak; any change of class may start or end a run
    if after != before:
        return True, "accepted"
    if after == bp.LOW:
        return st.phase != "leak", "accepted"
    return after == bp.HIGH and st.phase == "leak", "accepted"


def count_late_bp(st: PatientState, t: int) -> None:
    """Remember, per patient, a blood-pressure reading the hypotension rule could not use (its
    slot lies behind the late horizon, or in runs already folded): the patient's alerts say so
    (``detectors.phases``), so it is never left out of detection silently."""
    late = st.late
    if late:
        late[0] += 1
        late[1] = max(late[1], t)
    else:
        st.late = [1, t]


def on_dbp(st: PatientState, obs: Observation, known: int, th: Thresholds) -> Outcome:
    sbp = st.last.get("sbp")
    if sbp is not None and sbp[0] == obs.observed_at_ms and sbp[1] <= obs.value:
        return Rejection("inconsistent", f"DBP {obs.value:g} not below SBP {sbp[1]:g} mmHg at the "
                         "same time (docs/clinical-criteria.md: SBP must exceed DBP): artefact")
    return on_other(st, obs, known, th)


def on_other(st: PatientState, obs: Observation, known: int, th: Thresholds) -> Outcome:
    """A kind kept only as its latest reading (by event time), for the evidence."""
    t = obs.observed_at_ms
    last = st.last.get(obs.kind)
    if last is None:
        st.last[obs.kind] = [t, obs.value]
    elif t >= last[0]:
        last[0], last[1] = t, obs.value
    return False, "accepted"


def on_lab(st: PatientState, obs: Observation, known: int, th: Thresholds) -> Outcome:
    kind, t, value = obs.kind, obs.observed_at_ms, obs.value
    if obs.status == "corrected":  # the corrected result replaces the reading of that time
        withdraw(st, kind, t, None, th)
    jump = check_jump(st, kind, t, value, th)
    if jump is not None:
        return jump
    keep = th.labs_kept if kind in ("hematocrit", "albumin") else th.wbc_kept
    row = [t, value, delay_min(t, known)]
    censored = obs.censored if len(obs) > 8 else ""
    if censored:
        row.append(CENSORED_CODE[censored])
    insert_row(st.labs.setdefault(kind, []), row, keep)
    if kind != "leukocytes" and normal_for_baseline(st, kind, t, value, th):
        add_baseline_reading(st, kind, t, value, th.baseline_labs_ms, th.baseline_kept)
    decides = kind in ("hematocrit", "albumin", "hemoglobin") or st.phase == "leak"
    return decides, "accepted"


def normal_for_baseline(st: PatientState, kind: str, t: int, value: float, th: Thresholds
                        ) -> bool:
    """[D] A baseline is the patient's normal: a hemoconcentrated Hct or Hb, or an albumin that is
    concentrated (a dehydration not yet recognised) or follows an albumin infusion, never enters
    it. A low albumin does: in the ICU it is the patient's normal (MIMIC-III demo median 2.9)."""
    if kind == "hematocrit":
        return value <= th.hct_high_pct(st.sex)
    if kind == "hemoglobin":
        return value <= th.hct_high_pct(st.sex) / 3.0
    if kind == "albumin":
        return value <= th.albumin_concentrated_gdl and not albumin_infused_before(st, t, th)
    return True


def on_weight(st: PatientState, obs: Observation, known: int, th: Thresholds) -> Outcome:
    t, kg = obs.observed_at_ms, obs.value
    if obs.status == "corrected":
        withdraw(st, "weight", t, None, th)
    jump = check_jump(st, "weight", t, kg, th)
    if jump is not None:
        return jump
    insert_row(st.wt, [t, kg, delay_min(t, known)], th.weighings_kept)
    add_baseline_reading(st, "weight", t, kg, th.baseline_labs_ms, th.baseline_kept)
    return True, "accepted"


def on_urine(st: PatientState, obs: Observation, known: int, th: Thresholds) -> Outcome:
    end = obs.observed_at_ms
    if obs.period_min is not None:
        start = end - int(obs.period_min * MIN_MS)
    elif st.uo_end and st.uo_end < end:
        start = st.uo_end
        hours = (end - start) / HOUR_MS
        if obs.value / hours > 2000.0:
            return Rejection("out_of_range", f"urine_output {obs.value:g} mL since the previous "
                             f"collection ({hours:.2g} h) exceeds 2000 mL/h "
                             "(docs/clinical-criteria.md): artefact")
    else:
        st.uo_end = max(st.uo_end, end)  # first collection with no period: marks the start
        return False, "accepted"
    add_urine(st, [start, end, obs.value, delay_min(end, known)], _URINE_HORIZON_MS)
    add_fluid(st, start, end, obs.value, 1)
    add_baseline(st, "urine_ml_h", end, obs.value / ((end - start) / HOUR_MS),
                 int(th.baseline_labs_h * HOUR_MS))
    st.uo_end = max(st.uo_end, end)
    return (st.phase in ("leak", "recovery")
            or (st.phase == "none" and _may_confirm_a_weighing(st, start, end, th))), "accepted"


def _may_confirm_a_weighing(st: PatientState, start: int, end: int, th: Thresholds) -> bool:
    """Does the collection (start, end] reach into the window before a weighing in which
    falling urine confirms a heavy weighing as a prodrome (``phases._urine_falling``)? Then a
    decision is due now: charted after the weighing, the urine would otherwise wait for the
    next weighing or lab, and the alert would depend on arrival order."""
    reach = th.prodrome_urine_hours * HOUR_MS
    return any(start < w[0] and end > w[0] - reach for w in st.wt)


def withdraw(st: PatientState, kind: str, t: int, value: float | None, th: Thresholds) -> bool:
    """Remove the reading(s) of ``kind`` at event time ``t`` (of ``value`` when given) from the
    lab or weight window and from the baseline readings; True if one was removed."""
    if kind == "weight":
        rows = st.wt
    elif kind in LAB_KINDS:
        rows = st.labs.get(kind, [])
    else:
        return False
    removed = remove_rows(rows, t, value)
    for old in removed:
        remove_baseline(st, kind, t, old, th.baseline_labs_ms)
    return bool(removed)


def fold_old_slots(st: PatientState, keep_from: int, th: Thresholds) -> None:
    """Close the live slots older than ``keep_from`` into runs, oldest first (usually the one
    slot a new slot pushed past the late horizon), and keep the last ``RUNS_KEEP`` closed runs
    of each kind (low runs only while they end within ``run_retention_h``)."""
    slots = st.slots
    hypo, norm, marker = st.hypo, st.norm, st.fold
    oldest = min(slots)
    while oldest < keep_from:
        marker = bp.fold(hypo, norm, marker, oldest, slots.pop(oldest), th)
        if not slots:
            break
        oldest = min(slots)
    st.fold = marker
    if hypo:
        cutoff = st.max_t - th.run_retention_ms
        st.hypo = [r for r in hypo if r[bp.R_LAST] >= cutoff][-RUNS_KEEP:]
    if len(norm) > RUNS_KEEP:
        st.norm = norm[-RUNS_KEEP:]


#: kinds whose observations are counted or summed into windows (a redelivery would count twice),
#: with a stable small code for the fingerprint
ACCUMULATING = {kind: i for i, kind in enumerate(
    ("sbp", "map", "hematocrit", "albumin", "leukocytes", "hemoglobin", "weight",
     "urine_output"))}

HANDLERS: dict[str, Handler] = {
    "sbp": on_pressure, "map": on_pressure, "dbp": on_dbp,
    "hematocrit": on_lab, "albumin": on_lab, "leukocytes": on_lab, "hemoglobin": on_lab,
    "weight": on_weight, "urine_output": on_urine,
    "heart_rate": on_other, "temperature": on_other, "spo2": on_other, "lactate": on_other,
}

#: per kind, its handler and its ``ACCUMULATING`` code (None: no redelivery check): one lookup
#: per reading in ``phases.step``
INTAKE: dict[str, tuple[Handler, int | None]] = {
    kind: (handler, ACCUMULATING.get(kind)) for kind, handler in HANDLERS.items()}
