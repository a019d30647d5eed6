"""The phase state machine: one observation in, the patient's new state and any alerts out.

    none -> prodromal -> leak -> recovery -> none,  none -> leak,  recovery -> leak (relapse)

``step(state, observation)`` is deterministic and reads no clock, so the stream worker and the
offline replay give the same alerts for the same input. Decisions are made on EVENT time: each
transition's time is computed from the evidence (the later of the two triad findings, the moment a
run of low pressure became persistent), not from when a message happened to arrive, and the
windows in the state are order-free. A lab that arrives hours late therefore produces the alert it
would have produced in order, with the same id and the same ``raised_at``.

Alert ladder: a phase is entered at its base severity (prodromal and recovery: warning, leak:
high); more evidence escalates it once (leak -> critical when hypoalbuminemia completes the triad
or two supportive signs join; recovery -> high when polyuria meets a weight still >= 5 % over
baseline: the fluid-overload warning). Closing an episode (back to none) is an info alert.

Exclusions [D] (docs/clinical-criteria.md: the triad counts "after other causes are excluded"):
- dehydration: hypotension and hemoconcentration with weight falling >= 2 % in 48 h or albumin
  concentrated (>= 0.5 g/dL over baseline, or > 4.5 g/dL) is volume loss, not a leak;
- fluids: a weight gain that follows a shock (persistent hypotension in the 48 h before) or comes
  with a falling Hct (hemodilution) is resuscitation fluid, not a prodrome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import NamedTuple

from detectors.alerts import SEVERITY_RANK, Alert, Evidence, make_alert
from detectors.config import DEFAULT_THRESHOLDS, HOUR_MS, MIN_MS, Thresholds
from detectors.criteria import hemoconcentration, hypoalbuminemia, supportive, urine, weight_gain
from detectors.criteria import hypotension as bp
from detectors.interventions import Intervention, record
from detectors.observation import (
    Observation,
    PatientContext,
    Rejection,
    Retraction,
    format_time,
)
from detectors.state import (
    BASELINE_KINDS,
    LAB_KEEP,
    SEEN_KEEP,
    WEIGHT_KEEP,
    PatientState,
    add_baseline,
    add_urine,
    insert_row,
    remove_baseline,
    remove_rows,
)

#: [D] dehydration exclusion (see module docstring)
DEHYDRATION_WEIGHT_LOSS_PCT = 2.0
ALBUMIN_CONCENTRATED_RISE_GDL = 0.5
ALBUMIN_CONCENTRATED_GDL = 4.5
_URINE_HORIZON_MS = 24 * HOUR_MS
#: [D] labs drawn within 10 minutes of each other are one panel (Hct, albumin and WBC of one draw
#: reach the lab feed as separate messages; a decision waits for the whole panel, so that the
#: albumin which rules out dehydration is not one message too late)
PANEL_MS = 10 * MIN_MS
#: [D] closed blood-pressure runs are kept 72 h; a decision that rests on the ABSENCE of a shock
#: (the prodrome) is only taken on evidence younger than 72 h minus its 48 h look-back
RUN_RETENTION_MS = 72 * HOUR_MS
PRODROME_MAX_AGE_MS = 24 * HOUR_MS
#: [D] likewise a leak is raised from evidence at most 12 h old: labs arrive hours late, but the
#: albumin and weighings that rule out dehydration are kept for about two days, and a decision
#: must never become possible only because the evidence against it has aged out of the state
LEAK_MAX_AGE_MS = 12 * HOUR_MS
_MAX_TRANSITIONS_PER_STEP = 4


_NO_ALERTS: tuple[Alert, ...] = ()
_tuple_new = tuple.__new__  # builds a StepResult without the Python-level NamedTuple __new__


class StepResult(NamedTuple):
    state: PatientState
    alerts: Sequence[Alert]
    #: accepted | duplicate | late (kept, too late to rewrite blood-pressure slots) | rejected |
    #: retracted (a retraction removed its reading) | not_retracted (see ``_retract``)
    status: str
    rejection: Rejection | None = None


def new_state(patient_id: str) -> PatientState:
    return PatientState(patient_id)


def apply_context(state: PatientState | None, ctx: PatientContext) -> PatientState | None:
    """Fold an ADT event into the patient's state (None = the patient is forgotten).

    admit/update set what they carry (sex, weight, ward, bed); transfer moves the patient to the
    ward and bed it names (an omitted bed is cleared: the old ward's bed is wrong now);
    discharge forgets the patient; cancel of an admit (HL7 A11, an admission entered in error)
    forgets the patient like a discharge; cancel of a discharge (A13) keeps or starts the state
    like an update: what the discharge forgot stays forgotten, detection begins anew.
    """
    if ctx.event == "discharge" or (ctx.event == "cancel" and ctx.cancels == "admit"):
        return None
    st = state or PatientState(ctx.patient_id)
    if ctx.sex is not None:
        st.sex = ctx.sex
    if ctx.weight_kg is not None:
        st.weight_kg = ctx.weight_kg
    if ctx.event == "transfer":
        st.ward, st.bed = ctx.ward, ctx.bed
    else:
        st.ward = ctx.ward if ctx.ward is not None else st.ward
        st.bed = ctx.bed if ctx.bed is not None else st.bed
    return st


def step(state: PatientState | None, obs: Observation | Retraction | Intervention,
         th: Thresholds = DEFAULT_THRESHOLDS) -> StepResult:
    """Fold one validated observation, a retraction of one, or an intervention into the
    patient's state and decide.

    The state object is updated in place and returned (callers own it; the worker stores it back
    in its table). An exact redelivery of a recent observation is recognised and ignored.
    Interventions are only recorded in the state for now (``detectors.interventions``): they
    raise no alert and change no decision yet.
    """
    st = state if state is not None else PatientState(obs.patient_id)
    if isinstance(obs, Intervention):
        return _tuple_new(StepResult, (st, _NO_ALERTS, record(st, obs), None))
    if isinstance(obs, Retraction):
        return _retract(st, obs, th)
    t = obs.observed_at_ms
    # hash of ints and floats is not salted per process (only str/bytes are), so the
    # fingerprint of a redelivered observation is the same after a worker restart
    kind = obs.kind
    code = _ACCUMULATING.get(kind)
    if code is not None:  # kinds that only replace a latest value need no redelivery check
        fingerprint = hash((code, t, obs.value))
        seen = st.seen
        if fingerprint in seen:
            return _tuple_new(StepResult, (st, _NO_ALERTS, "duplicate", None))
    previous_max = st.max_t
    if t > previous_max:
        st.max_t = t
    outcome = _HANDLERS[kind](st, obs, th)
    if outcome.__class__ is Rejection:
        st.max_t = previous_max
        return _tuple_new(StepResult, (st, _NO_ALERTS, "rejected", outcome))
    if code is not None:
        seen.append(fingerprint)
        if len(seen) > SEEN_KEEP:
            del seen[0]
    evaluate, status = outcome
    if not evaluate and not st.pending and st.phase == "none":
        return _tuple_new(StepResult, (st, _NO_ALERTS, status, None))  # a quiet reading
    is_lab = kind in LAB_KEEP
    if st.pending and not (is_lab and abs(t - st.pending) <= PANEL_MS):
        st.pending = 0  # the panel is complete: the decision it waited for is taken now
        evaluate = True
    if is_lab and evaluate:
        st.pending = st.pending or t
        return _tuple_new(StepResult, (st, _NO_ALERTS, status, None))
    if not evaluate and st.phase != "none" and st.max_t > previous_max:
        evaluate = _time_based_exit_due(st, th)
    return _tuple_new(StepResult, (st, _decide(st, th) if evaluate else _NO_ALERTS, status, None))


def flush(state: PatientState, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Alert]:
    """Take the decision a lab panel is waiting for (end of input, or a quiet patient)."""
    if not state.pending:
        return []
    state.pending = 0
    return _decide(state, th)


# --- observation handlers: update windows, say whether a decision may have changed ------------

_Outcome = tuple[bool, str] | Rejection


def _on_pressure(st: PatientState, obs: Observation, th: Thresholds) -> _Outcome:
    t, value, kind = obs.observed_at_ms, obs.value, obs.kind
    sbp_baseline = None
    if kind == "sbp":
        dbp = st.last.get("dbp")
        if dbp is not None and dbp[0] == t and value <= dbp[1]:
            return Rejection("inconsistent", f"SBP {value:g} not above DBP {dbp[1]:g} mmHg at the "
                             "same time (docs/clinical-criteria.md: SBP must exceed DBP): artefact")
        b = st.bl.get("sbp")
        window = th.baseline_vitals_h * HOUR_MS
        # a hypotensive reading is never a baseline
        if value > th.sbp_low_mmhg and (b is None or t - b[0] <= window):
            add_baseline(st, "sbp", t, value, int(window))
            b = st.bl["sbp"]
        last = st.last.get("sbp")
        if last is None or t >= last[0]:
            st.last["sbp"] = [t, value]
        if b is not None and b[1] >= th.baseline_min_vitals:
            sbp_baseline = b[2] / b[1]
    slot_ms = th.bp_slot_ms
    s = t // slot_ms
    horizon = th.bp_horizon_slots
    newest = st.max_t // slot_ms
    if s < newest - horizon or (st.fold and s <= st.fold[0]):
        return False, "late"
    slot = st.slots.get(s)
    if slot is None:
        slot = st.slots[s] = bp.new_slot()
        # a new slot continues the class of the slot before it: if it keeps that class nothing
        # about the runs changes but their length
        earlier = st.slots.get(s - 1)
        before = earlier[bp.CLS] if earlier is not None else -1
        after = bp.add_reading(slot, kind, value, t, sbp_baseline, th)[1]
    else:
        before, after = bp.add_reading(slot, kind, value, t, sbp_baseline, th)
    if len(st.slots) > horizon + 1:
        _fold_old_slots(st, newest - horizon, th)
    # a low run growing matters while a leak (or a relapse) may begin; a recovered run growing
    # matters during a leak; any change of class may start or end a run
    if after != before:
        return True, "accepted"
    if after == bp.LOW:
        return st.phase != "leak", "accepted"
    return after == bp.HIGH and st.phase == "leak", "accepted"


def _on_dbp(st: PatientState, obs: Observation, th: Thresholds) -> _Outcome:
    sbp = st.last.get("sbp")
    if sbp is not None and sbp[0] == obs.observed_at_ms and sbp[1] <= obs.value:
        return Rejection("inconsistent", f"DBP {obs.value:g} not below SBP {sbp[1]:g} mmHg at the "
                         "same time (docs/clinical-criteria.md: SBP must exceed DBP): artefact")
    _remember_latest(st, "dbp", obs.observed_at_ms, obs.value)
    return False, "accepted"


def _on_other(st: PatientState, obs: Observation, th: Thresholds) -> _Outcome:
    _remember_latest(st, obs.kind, obs.observed_at_ms, obs.value)
    return False, "accepted"


def _on_lab(st: PatientState, obs: Observation, th: Thresholds) -> _Outcome:
    kind = obs.kind
    if obs.status == "corrected":
        _withdraw(st, kind, obs.observed_at_ms, None, th)
    insert_row(st.labs.setdefault(kind, []), [obs.observed_at_ms, obs.value], LAB_KEEP[kind])
    if kind in BASELINE_KINDS and _normal_for_baseline(st, kind, obs.value, th):
        add_baseline(st, kind, obs.observed_at_ms, obs.value, int(th.baseline_labs_h * HOUR_MS))
    decides = kind in ("hematocrit", "albumin") or st.phase == "leak"
    return decides, "accepted"


def _normal_for_baseline(st: PatientState, kind: str, value: float, th: Thresholds) -> bool:
    """[D] A baseline is the patient's normal: a hemoconcentrated Hct or an albumin that is low or
    concentrated (a leak or dehydration not yet recognised) never enters it."""
    if kind == "hematocrit":
        return value <= th.hct_high_pct(st.sex)
    if kind == "albumin":
        return th.albumin_low_gdl <= value <= ALBUMIN_CONCENTRATED_GDL
    return True


def _on_weight(st: PatientState, obs: Observation, th: Thresholds) -> _Outcome:
    if obs.status == "corrected":
        _withdraw(st, "weight", obs.observed_at_ms, None, th)
    insert_row(st.wt, [obs.observed_at_ms, obs.value], WEIGHT_KEEP)
    add_baseline(st, "weight", obs.observed_at_ms, obs.value, int(th.baseline_labs_h * HOUR_MS))
    return True, "accepted"


def _on_urine(st: PatientState, obs: Observation, th: Thresholds) -> _Outcome:
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
    add_urine(st, start, end, obs.value, _URINE_HORIZON_MS)
    add_baseline(st, "urine_ml_h", end, obs.value / ((end - start) / HOUR_MS),
                 int(th.baseline_labs_h * HOUR_MS))
    st.uo_end = max(st.uo_end, end)
    return st.phase in ("leak", "recovery"), "accepted"


def _retract(st: PatientState, r: Retraction, th: Thresholds) -> StepResult:
    """Remove a retracted lab or weighing still in the windows (and from the baseline it
    entered), then decide again unless a lab panel is pending (it decides when complete).

    [D] Kept small on purpose: blood pressure is folded into 5-minute slots and urine into
    collections, so one reading cannot be taken out of them, and an alert already raised is not
    withdrawn; such a retraction is ``not_retracted`` (the worker counts it), as is one whose
    reading has left the windows or was never seen.
    """
    if not _withdraw(st, r.kind, r.observed_at_ms, r.value, th):
        return _tuple_new(StepResult, (st, _NO_ALERTS, "not_retracted", None))
    alerts = _NO_ALERTS if st.pending else _decide(st, th)
    return _tuple_new(StepResult, (st, alerts, "retracted", None))


def _withdraw(st: PatientState, kind: str, t: int, value: float | None, th: Thresholds) -> bool:
    """Remove the reading(s) of ``kind`` at event time ``t`` (of ``value`` when given) from the
    lab or weight window and from the admission baseline; True if one was removed."""
    if kind == "weight":
        rows, window_h = st.wt, th.baseline_labs_h
    elif kind in LAB_KEEP:
        rows, window_h = st.labs.get(kind, []), th.baseline_labs_h
    else:
        return False
    removed = remove_rows(rows, t, value)
    for old in removed:
        if kind in BASELINE_KINDS and (kind == "weight" or _normal_for_baseline(st, kind, old, th)):
            remove_baseline(st, kind, t, old, int(window_h * HOUR_MS))
    return bool(removed)


def _remember_latest(st: PatientState, kind: str, t: int, value: float) -> None:
    last = st.last.get(kind)
    if last is None or t >= last[0]:
        st.last[kind] = [t, value]


def _fold_old_slots(st: PatientState, keep_from: int, th: Thresholds) -> None:
    for s in sorted(st.slots):
        if s >= keep_from:
            break
        st.fold = bp.fold(st.hypo, st.norm, st.fold, s, st.slots.pop(s), th)
    cutoff = st.max_t - RUN_RETENTION_MS
    st.hypo = [r for r in st.hypo if r[bp.R_LAST] >= cutoff][-6:]
    st.norm = st.norm[-6:]


#: kinds whose observations are counted or summed into windows (a redelivery would count twice),
#: with a stable small code for the fingerprint
_ACCUMULATING = {kind: i for i, kind in enumerate(
    ("sbp", "map", "hematocrit", "albumin", "leukocytes", "hemoglobin", "weight",
     "urine_output"))}

_HANDLERS: dict[str, Callable[[PatientState, Observation, Thresholds], _Outcome]] = {
    "sbp": _on_pressure, "map": _on_pressure, "dbp": _on_dbp,
    "hematocrit": _on_lab, "albumin": _on_lab, "leukocytes": _on_lab, "hemoglobin": _on_lab,
    "weight": _on_weight, "urine_output": _on_urine,
    "heart_rate": _on_other, "temperature": _on_other, "spo2": _on_other, "lactate": _on_other,
}


# --- decisions ------------------------------------------------------------------------------

class _Facts:
    """Derived views of the state for one decision round; the runs only when asked for."""

    def __init__(self, st: PatientState, th: Thresholds) -> None:
        self._st = st
        self._th = th
        self.sbp_baseline = st.baseline("sbp", th.baseline_min_vitals)
        self.hct_baseline = st.baseline("hematocrit")
        self.albumin_baseline = st.baseline("albumin")
        self.weight_baseline = st.weight_kg or st.baseline("weight")
        self.urine_weight_kg = st.weight_kg or st.baseline("weight") or th.default_weight_kg

    @cached_property
    def _runs(self) -> tuple[list[list[float]], list[list[float]]]:
        st = self._st
        return bp.runs(st.slots, st.hypo, st.norm, st.fold, self._th)

    @cached_property
    def hypotension(self) -> list[list[float]]:
        return bp.persistent(self._runs[0])

    @cached_property
    def recovered_bp(self) -> list[list[float]]:
        return [r for r in self._runs[1] if r[2]]


def _decide(st: PatientState, th: Thresholds) -> list[Alert]:
    alerts: list[Alert] = []
    for _ in range(_MAX_TRANSITIONS_PER_STEP):
        facts = _Facts(st, th)
        alert = _DECIDERS[st.phase](st, facts, th)
        if alert is None:
            break
        alerts.append(alert)
    return alerts


def _time_based_exit_due(st: PatientState, th: Thresholds) -> bool:
    if st.phase == "prodromal":
        return st.max_t >= st.phase_since + th.prodrome_expiry_h * HOUR_MS
    if st.phase == "recovery":
        return st.max_t >= st.phase_since + th.recovery_min_h * HOUR_MS
    return False


def _transition(st: PatientState, phase: str, severity: str, t: int, evidence: list[Evidence],
                new_episode: bool = False, headline: str | None = None) -> Alert:
    previous = st.phase
    if new_episode:
        st.episode += 1
        if not st.first_episode_at:
            st.first_episode_at = t
    if phase != previous:
        st.phase_since = t
    if phase == "leak" and previous != "leak":
        st.leak_since = t
    if phase == "none":
        st.leak_since = 0
    st.phase = phase
    st.severity = severity
    return make_alert(st.patient_id, st.episode, phase, previous, severity, t, evidence, headline,
                      ward=st.ward, bed=st.bed)


def _escalate(st: PatientState, severity: str, t: int, evidence: list[Evidence],
              headline: str) -> Alert:
    st.severity = severity
    return make_alert(st.patient_id, st.episode, st.phase, st.phase, severity, t, evidence,
                      headline, ward=st.ward, bed=st.bed)


def _hypotension_evidence(run: list[float], facts: _Facts, th: Thresholds) -> Evidence:
    nadir, which = bp.run_nadir_text(run)
    if which == "sbp":
        return Evidence("hypotension", nadir, "mmHg",
                        f"SBP <= {th.sbp_low_mmhg:g} or fall >= {th.sbp_fall_mmhg:g} from "
                        f"baseline, held >= {th.hypotension_hold_min:g} min",
                        int(run[bp.R_Q]), facts.sbp_baseline)
    return Evidence("hypotension", nadir, "mmHg",
                    f"MAP < {th.map_low_mmhg:g}, held >= {th.hypotension_hold_min:g} min",
                    int(run[bp.R_Q]))


def _dehydrated(st: PatientState, facts: _Facts, at: int, th: Thresholds) -> bool:
    window = th.weight_gain_window_h * HOUR_MS
    weighings = [w for w in st.wt if at - window <= w[0] <= at]
    if len(weighings) >= 2:
        heaviest = max(w[1] for w in weighings)
        if (heaviest - weighings[-1][1]) / heaviest * 100.0 >= DEHYDRATION_WEIGHT_LOSS_PCT:
            return True
    near = th.triad_window_h * HOUR_MS
    for t, albumin in st.lab("albumin"):
        if abs(t - at) <= near and (albumin > ALBUMIN_CONCENTRATED_GDL or (
                facts.albumin_baseline is not None
                and albumin - facts.albumin_baseline >= ALBUMIN_CONCENTRATED_RISE_GDL)):
            return True
    return False


def _leak_onset(st: PatientState, facts: _Facts, th: Thresholds, not_before: int,
                both_after: bool) -> tuple[int, list[float], list[float]] | None:
    """Earliest (time, hypotension run, Hct reading) pairing of the triad's two deciders."""
    hcts = hemoconcentration.readings_hemoconcentrated(
        st.lab("hematocrit"), facts.hct_baseline, st.sex, th)
    if not hcts or not facts.hypotension:
        return None
    window = th.triad_window_h * HOUR_MS
    best = None
    for run in facts.hypotension:
        for hct in hcts:
            if not run[bp.R_FIRST] - window <= hct[0] <= run[bp.R_LAST] + window:
                continue
            if both_after and (run[bp.R_Q] <= not_before or hct[0] <= not_before):
                continue
            at = int(max(run[bp.R_Q], hct[0]))
            fresh = at > not_before and at >= st.max_t - LEAK_MAX_AGE_MS
            if fresh and (best is None or at < best[0]):
                best = (at, run, hct)
    if best is not None and _dehydrated(st, facts, best[0], th):
        return None
    return best


def _leak_alert(st: PatientState, facts: _Facts, th: Thresholds,
                onset: tuple[int, list[float], list[float]], new_episode: bool,
                headline: str | None = None) -> Alert:
    at, run, hct = onset
    evidence = [_hypotension_evidence(run, facts, th),
                hemoconcentration.evidence(int(hct[0]), hct[1], facts.hct_baseline, st.sex, th)]
    wbc = supportive.leukocytosis(st.lab("leukocytes"), at - int(th.triad_window_h * HOUR_MS), th)
    if wbc is not None and wbc.observed_at_ms <= at:
        evidence.append(wbc)
    return _transition(st, "leak", "high", at, evidence, new_episode=new_episode,
                       headline=headline)


def _urine_falling(st: PatientState, th: Thresholds) -> Callable[[int], Evidence | None]:
    """A prodromal sign at time t: urine flow well below the patient's admission flow."""
    admission = st.baseline("urine_ml_h", 3)

    def sign(t: int) -> Evidence | None:
        if admission is None:
            return None
        flow = urine.rate_ml_per_kg_h(st.uo, t, th.prodrome_urine_hours, 1.0)  # mL/h
        if flow is None or flow >= admission * th.prodrome_urine_fall_ratio:
            return None
        return Evidence("falling_urine_output", flow, "mL/h",
                        f"< {th.prodrome_urine_fall_ratio:.0%} of the admission flow over "
                        f"{th.prodrome_urine_hours:g} h", t, admission)

    return sign


def _prodrome(st: PatientState, facts: _Facts, th: Thresholds) -> list[Evidence] | None:
    baseline = facts.weight_baseline or th.default_weight_kg
    found = weight_gain.confirmed_gain(st.wt, baseline, st.phase_since + 1, th,
                                       _urine_falling(st, th))
    if found is None:
        return None
    at = found[0].observed_at_ms
    if at < st.max_t - PRODROME_MAX_AGE_MS:
        return None  # too old to be a prodrome, and older than the shock runs kept to rule out
    lookback = at - th.weight_gain_window_h * HOUR_MS
    for run in facts.hypotension:  # gain after (or during) a shock: resuscitation fluids
        if run[bp.R_FIRST] <= at and run[bp.R_LAST] >= lookback:
            return None
    hcts = [h for h in st.lab("hematocrit") if lookback <= h[0] <= at]
    if len(hcts) >= 2 and max(h[1] for h in hcts) - hcts[-1][1] >= th.hct_fall_points:
        return None  # weight up while Hct falls: hemodilution from fluids
    return found


def _decide_none(st: PatientState, facts: _Facts, th: Thresholds) -> Alert | None:
    onset = _leak_onset(st, facts, th, st.phase_since, both_after=False)
    if onset is not None:
        return _leak_alert(st, facts, th, onset, new_episode=True)
    found = _prodrome(st, facts, th)
    if found is not None:
        return _transition(st, "prodromal", "warning", found[0].observed_at_ms, found,
                           new_episode=True)
    return None


def _decide_prodromal(st: PatientState, facts: _Facts, th: Thresholds) -> Alert | None:
    onset = _leak_onset(st, facts, th, st.phase_since, both_after=False)
    if onset is not None:
        return _leak_alert(st, facts, th, onset, new_episode=False)
    expiry = st.phase_since + int(th.prodrome_expiry_h * HOUR_MS)
    if st.max_t >= expiry:
        return _transition(st, "none", "info", expiry, [],
                           headline=f"Prodrome closed: no leak within {th.prodrome_expiry_h:g} h")
    return None


def _polyuria_at(st: PatientState, facts: _Facts, since: int, th: Thresholds
                 ) -> Evidence | None:
    """First collection end from ``since`` at which the flow over the polyuria window is high."""
    found = urine.first_flow(st.uo, since, th.polyuria_hours, facts.urine_weight_kg,
                             lambda rate: rate > th.polyuria_ml_per_kg_h)
    if found is None:
        return None
    return Evidence("polyuria", found[1], "mL/kg/h",
                    f"> {th.polyuria_ml_per_kg_h:g} mL/kg/h over {th.polyuria_hours:g} h",
                    found[0])


def _oliguria_at(st: PatientState, facts: _Facts, since: int, th: Thresholds
                 ) -> Evidence | None:
    """First collection end from ``since`` at which the flow over the oliguria window is low."""
    found = urine.first_flow(st.uo, since, th.oliguria_hours, facts.urine_weight_kg,
                             lambda rate: rate < th.oliguria_ml_per_kg_h)
    if found is None:
        return None
    return Evidence("oliguria", found[1], "mL/kg/h",
                    f"< {th.oliguria_ml_per_kg_h:g} mL/kg/h for {th.oliguria_hours:g} h",
                    found[0])


def _decide_leak(st: PatientState, facts: _Facts, th: Thresholds) -> Alert | None:
    window = int(th.triad_window_h * HOUR_MS)
    if SEVERITY_RANK[st.severity] < SEVERITY_RANK["critical"]:
        albumin = hypoalbuminemia.first_low_since(st.lab("albumin"), st.leak_since - window,
                                                  facts.albumin_baseline, th)
        if albumin is not None:
            return _escalate(st, "critical", max(st.leak_since, albumin.observed_at_ms),
                             [albumin], "Leak phase, triad complete (hypoalbuminemia)")
        signs = [e for e in (supportive.leukocytosis(st.lab("leukocytes"), st.leak_since - window,
                                                     th),
                             _oliguria_at(st, facts, st.leak_since, th)) if e is not None]
        if len(signs) >= 2:
            at = max(st.leak_since, *(e.observed_at_ms for e in signs))
            return _escalate(st, "critical", at, signs,
                             "Leak phase with leukocytosis and oliguria")
    falling = hemoconcentration.falling_from_peak(st.lab("hematocrit"), st.leak_since - window,
                                                  th)
    if falling is None or falling[0][0] < st.leak_since:
        return None
    reading, peak = falling
    for run in facts.recovered_bp:
        if run[2] <= st.leak_since:
            continue
        at = int(max(run[2], reading[0]))
        sbp = st.last.get("sbp") or [run[2], th.recovery_sbp_mmhg]
        evidence = [
            Evidence("blood_pressure_recovered", sbp[1], "mmHg",
                     f"SBP > {th.recovery_sbp_mmhg:g} held >= {th.recovery_hold_min:g} min "
                     f"(since {format_time(int(run[2]))})", int(sbp[0]), facts.sbp_baseline),
            Evidence("hematocrit_falling", reading[1], "%",
                     f">= {th.hct_fall_points:g} points below the episode peak ({peak:g} %)",
                     int(reading[0]), facts.hct_baseline)]
        polyuria = _polyuria_at(st, facts, st.leak_since, th)
        if polyuria is not None and polyuria.observed_at_ms <= at:
            evidence.append(polyuria)
        return _transition(st, "recovery", "warning", at, evidence)
    return None


def _decide_recovery(st: PatientState, facts: _Facts, th: Thresholds) -> Alert | None:
    onset = _leak_onset(st, facts, th, st.phase_since, both_after=True)
    if onset is not None:
        return _leak_alert(st, facts, th, onset, new_episode=True,
                           headline="Relapse: leak phase again during recovery")
    if st.severity != "high" and facts.weight_baseline:
        polyuria = _polyuria_at(st, facts, st.phase_since, th)
        if polyuria is not None:
            # the weighing that makes the decision earliest, whatever arrived last
            best = None
            for t, kg in st.wt:
                over = weight_gain.over_baseline_pct(kg, facts.weight_baseline)
                if (abs(t - polyuria.observed_at_ms) <= 24 * HOUR_MS
                        and over >= th.fluid_overload_weight_pct):
                    at = int(max(t, polyuria.observed_at_ms))
                    if best is None or at < best[0]:
                        best = (at, t, kg, over)
            if best is not None:
                at, t, kg, over = best
                weight = Evidence("weight_over_baseline", kg, "kg",
                                  f">= {th.fluid_overload_weight_pct:g} % over baseline "
                                  f"(+{over:.1f} %)", int(t), facts.weight_baseline)
                return _escalate(st, "high", at, [polyuria, weight],
                                 "Fluid overload risk in recovery: polyuria with weight "
                                 "still high; review and stop fluids (pulmonary edema)")
    closes_at = st.phase_since + int(th.recovery_min_h * HOUR_MS)
    longest = st.phase_since + int(th.recovery_max_h * HOUR_MS)
    if st.max_t >= longest:
        return _transition(st, "none", "info", longest, [],
                           headline=f"Episode closed after {th.recovery_max_h:g} h of recovery")
    if st.max_t >= closes_at:
        recent = st.max_t - 6 * HOUR_MS
        if _polyuria_at(st, facts, recent, th) is None and not any(
                r[bp.R_LAST] >= recent for r in facts.hypotension):
            return _transition(st, "none", "info", closes_at, [],
                               headline="Episode closed: recovery complete, no polyuria or "
                                        "hypotension in the last 6 h")
    return None


_DECIDERS: dict[str, Callable[[PatientState, _Facts, Thresholds], Alert | None]] = {
    "none": _decide_none, "prodromal": _decide_prodromal, "leak": _decide_leak,
    "recovery": _decide_recovery,
}
