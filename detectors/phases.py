"""The phase state machine: one observation in, the patient's new state and any alerts out.

    none -> prodromal -> leak -> recovery -> none,  none -> leak,  recovery -> leak (relapse)

``step(state, observation)`` is deterministic and reads no clock, so the stream worker and the
offline replay give the same alerts for the same input. Decisions are made on EVENT time: each
transition's ``onset_at`` is computed from the evidence (the later of the two triad findings, the
moment a run of low pressure became persistent), and its ``raised_at`` is when that evidence had
all ARRIVED (``detectors.alerts``). The windows in the state are order-free, so a lab that
arrives hours late produces the alert it would have produced in order, with the same id.

Alert ladder: a phase is entered at its base severity (prodromal and recovery: warning, leak:
high); more evidence escalates it once (leak -> critical when hypoalbuminemia that means
something completes the triad, or two supportive signs join; recovery -> high when polyuria meets
a weight still >= 5 % over baseline: the fluid-overload warning). An escalation repeats the whole
triad and names the alert it supersedes (``supersedes``), so that a critical decided with (or
minutes after) the high is the one page of the event: the notifier holds a high for its
supersede window. Both alerts are always raised: whether the albumin had arrived when the leak
was decided depends on a stream's timing, and alert ids must not. Closing an episode (back to
none) is an info alert; a leak with no supporting evidence for ``leak_quiet_h`` closes too.

Exclusions [D] (docs/clinical-criteria.md: the triad counts "after other causes are excluded"):
- dehydration: hypotension and hemoconcentration with weight falling >= 2 % in 48 h or albumin
  concentrated (not after an albumin infusion) is volume loss, not a leak;
- transfusion: a Hct the red cells given explain is not hemoconcentration
  (``criteria.hemoconcentration``);
- fluids: a weight gain that follows a shock, comes with a falling Hct (hemodilution) or that the
  fluid balance explains is resuscitation fluid, not a prodrome;
- vasopressors: a pressure held by a vasopressor that is not weaning is not recovery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import NamedTuple

from detectors import memo
from detectors.alerts import SEVERITY_RANK, Alert, Evidence, alert_id, make_alert
from detectors.config import DEFAULT_THRESHOLDS, HOUR_MS, Thresholds
from detectors.confounders import albumin_infused_before, first_unheld, gain_explained_by_fluids
from detectors.criteria import hemoconcentration, hypoalbuminemia, supportive, urine, weight_gain
from detectors.criteria import hypotension as bp
from detectors.criteria.hemoconcentration import Finding, baseline_before, median
from detectors.intake import INTAKE, withdraw
from detectors.interventions import Intervention, record
from detectors.observation import (
    Observation,
    PatientContext,
    Rejection,
    Retraction,
    format_time,
)
from detectors.plausibility import NEW_STAY, advance_horizon, check_time
from detectors.state import (
    LAB_KINDS,
    SEEN_KEEP,
    PatientState,
    censored_mark,
    known_at,
    reset_stay,
)

_MAX_TRANSITIONS_PER_STEP = 4
_NO_ALERTS: tuple[Alert, ...] = ()
#: a reading this close to the patient's horizon needs no plausibility check of its time
_NEAR_BEHIND_MS = 3 * HOUR_MS
_NEAR_AHEAD_MS = HOUR_MS
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
    in its table). An exact redelivery of a recent observation is recognised and ignored. A
    reading whose time does not fit the patient's series is refused (``bad_time``), a value that
    does not fit it too (``artefact_jump``); a reading that shows a new stay restarts the state
    in place (``detectors.plausibility``). Interventions are recorded for the decisions to come.
    """
    st = state if state is not None else PatientState(obs.patient_id)
    if obs.__class__ is not Observation:
        if isinstance(obs, Intervention):
            return _tuple_new(StepResult, (st, _NO_ALERTS, record(st, obs, th), None))
        if isinstance(obs, Retraction):
            return _retract(st, obs, th)
    t = obs.observed_at_ms
    # hash of ints and floats is not salted per process (only str/bytes are), so the
    # fingerprint of a redelivered observation is the same after a worker restart
    kind = obs.kind
    handler, code = INTAKE[kind]
    if code is not None:  # kinds that only replace a latest value need no redelivery check
        fingerprint = hash((code, t, obs.value))
        if fingerprint in st.seen:
            return _tuple_new(StepResult, (st, _NO_ALERTS, "duplicate", None))
    previous_max = st.max_t
    ahead = t - previous_max
    if (previous_max and st.near == 2 and 0 <= ahead <= _NEAR_AHEAD_MS
            and ahead <= th.future_tolerance_ms):
        previous_near = 2
        st.max_t = t  # the usual reading: the horizon moves on (or stays), its support stays
    else:
        moved = _horizon(st, t, th)
        if isinstance(moved, Rejection):
            return _tuple_new(StepResult, (st, _NO_ALERTS, "rejected", moved))
        previous_max, previous_near = moved
    available = obs.available_at_ms
    known = available if available is not None and available > t else t
    if st.arrived > known:
        known = st.arrived
    outcome = handler(st, obs, known, th)
    if outcome.__class__ is Rejection:
        st.max_t, st.near = previous_max, previous_near
        return _tuple_new(StepResult, (st, _NO_ALERTS, "rejected", outcome))
    st.arrived = known
    stay = st.stay
    if not stay or (t < stay and not st.stay_fixed):
        st.stay = t
    if code is not None:
        seen = st.seen
        seen.append(fingerprint)
        if len(seen) > SEEN_KEEP:
            del seen[0]
    evaluate, status = outcome
    pending = st.pending
    phase = st.phase
    if evaluate or pending or phase != "none":
        is_lab = kind in LAB_KINDS
        if pending and not (is_lab and abs(t - pending) <= th.panel_ms):
            st.pending = 0  # the panel is complete: the decision it waited for is taken now
            evaluate = True
        if is_lab and evaluate:
            st.pending = st.pending or t
            return _tuple_new(StepResult, (st, _NO_ALERTS, status, None))
        if not evaluate and phase != "none" and st.max_t > previous_max:
            evaluate = _time_based_exit_due(st, th)
        if evaluate:
            return _tuple_new(StepResult, (st, _decide(st, th), status, None))
    if status != "accepted":
        return _tuple_new(StepResult, (st, _NO_ALERTS, status, None))
    quiet = st.quiet  # a quiet reading: the same reply every time
    if quiet is None:
        quiet = st.quiet = _tuple_new(StepResult, (st, _NO_ALERTS, status, None))
    return quiet


def _horizon(st: PatientState, t: int, th: Thresholds) -> tuple[int, int] | Rejection:
    """Fold the time of a reading other than the usual one (at or just after a horizon that a
    second reading supports) into the patient's horizon, after checking a time far from it
    (``plausibility.check_time``). Returns the horizon and its support before the reading (after
    a new stay: the fresh state's), or the ``bad_time`` Rejection of a refused time."""
    previous_max, previous_near = st.max_t, st.near
    if previous_max and not previous_max - _NEAR_BEHIND_MS <= t <= previous_max + _NEAR_AHEAD_MS:
        verdict = check_time(st, t, th)  # far from the horizon: is it plausible?
        if isinstance(verdict, Rejection):
            return verdict
        if verdict == NEW_STAY:
            reset_stay(st)
            previous_max, previous_near = st.max_t, st.near
    if previous_near == 2 and previous_max and previous_max < t <= previous_max + \
            th.future_tolerance_ms:
        st.max_t = t
    elif t > previous_max or previous_near < 2:
        advance_horizon(st, t, th)
    return previous_max, previous_near


def flush(state: PatientState, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Alert]:
    """Take the decision a lab panel is waiting for (end of input, or a quiet patient)."""
    if not state.pending:
        return []
    state.pending = 0
    return _decide(state, th)


def _retract(st: PatientState, r: Retraction, th: Thresholds) -> StepResult:
    """Remove a retracted lab or weighing still in the windows (and from the baseline it
    entered), then decide again unless a lab panel is pending (it decides when complete).

    [D] Kept small on purpose: blood pressure is folded into 5-minute slots and urine into
    collections, so one reading cannot be taken out of them, and an alert already raised is not
    withdrawn; such a retraction is ``not_retracted`` (the worker counts it), as is one whose
    reading has left the windows or was never seen.
    """
    if not withdraw(st, r.kind, r.observed_at_ms, r.value, th):
        return _tuple_new(StepResult, (st, _NO_ALERTS, "not_retracted", None))
    alerts = _NO_ALERTS if st.pending else _decide(st, th)
    return _tuple_new(StepResult, (st, alerts, "retracted", None))


# --- decisions ------------------------------------------------------------------------------

class _Facts:
    """Derived views of the state for one decision round; computed only when asked for (the
    runs and the Hct findings come from ``detectors.memo``: recomputed only when their inputs
    changed since the last decision)."""

    __slots__ = ("_st", "_th", "_oldest", "_sbp_asked", "_sbp_baseline", "weight_baseline",
                 "weight_kg", "_low", "_high", "_hypotension", "_recovered", "_hcts")

    def __init__(self, st: PatientState, th: Thresholds) -> None:
        self._st = st
        self._th = th
        # baselines older than baseline_max_age_h judge nothing (the ADT weight is as old as the
        # stay's first reading)
        self._oldest = oldest = st.max_t - th.baseline_max_age_ms
        self._sbp_asked = False
        self._sbp_baseline: float | None = None
        admission = st.weight_kg if st.stay >= oldest else None
        if admission:
            self.weight_baseline: float | None = admission
        else:  # the median of the stay's baseline weighings
            weighings = [w[1] for w in st.blr.get("weight", ()) if w[0] >= oldest]
            self.weight_baseline = median(weighings) if weighings else None
        latest = st.wt[-1][1] if st.wt else None
        self.weight_kg = self.weight_baseline or st.weight_kg or latest or th.default_weight_kg
        self._low: list[list[float]] | None = None
        self._high: list[list[float]] = []
        self._hypotension: list[list[float]] | None = None
        self._recovered: list[list[float]] | None = None
        self._hcts: list[Finding] | None = None

    @property
    def sbp_baseline(self) -> float | None:
        """The stay's SBP baseline (None until ``baseline_min_vitals`` readings, or when older
        than ``baseline_max_age_h``); only evidence asks for it, so it is computed then."""
        if not self._sbp_asked:
            self._sbp_asked = True
            st = self._st
            sbp = st.bl.get("sbp")
            self._sbp_baseline = st.baseline("sbp", self._th.baseline_min_vitals) \
                if sbp and sbp[0] >= self._oldest else None
        return self._sbp_baseline

    def _runs(self) -> list[list[float]]:
        if self._low is None:
            self._low, self._high = memo.bp_runs(self._st, self._th)
        return self._low

    @property
    def hypotension(self) -> list[list[float]]:
        if self._hypotension is None:
            self._hypotension = bp.persistent(self._runs())
        return self._hypotension

    @property
    def recovered_bp(self) -> list[list[float]]:
        if self._recovered is None:
            self._runs()
            self._recovered = [r for r in self._high if r[bp.H_Q]]
        return self._recovered

    @property
    def hemoconcentrated(self) -> list[Finding]:
        if self._hcts is None:
            self._hcts = memo.hemoconcentrated(self._st, self.weight_kg, self._th)
        return self._hcts

    def albumin_baseline(self, t: int) -> float | None:
        return baseline_before(self._st, "albumin", t, self._th, self.weight_kg, 0.0)


def _decide(st: PatientState, th: Thresholds) -> list[Alert]:
    alerts: list[Alert] = []
    for _ in range(_MAX_TRANSITIONS_PER_STEP):
        facts = _Facts(st, th)
        alert = _DECIDERS[st.phase](st, facts, th)
        if alert is None:
            break
        alerts.append(_with_late_readings(alert, st, th) if st.late else alert)
    return alerts


def _with_late_readings(alert: Alert, st: PatientState, th: Thresholds) -> Alert:
    """The alert with a ``late_bp_readings`` entry and a summary that says some blood-pressure
    readings were left out of the hypotension rule (``intake.count_late_bp``). Its id and times
    are unchanged; the entry's time is the latest such reading's, at most the alert's (an alert
    never shows evidence from after it was raised)."""
    count, t = st.late
    horizon = th.bp_late_horizon_min
    late = Evidence("late_bp_readings", count, "readings",
                    f"> {horizon:g} min behind the newest reading",
                    min(t, alert.raised_at_ms), None,
                    f"{count} blood-pressure readings arrived more than {horizon:g} min behind "
                    f"the patient's newest and were not used by the hypotension rule (latest "
                    f"taken at {format_time(t)})")
    return replace(alert, evidence=(*alert.evidence, late),
                   summary=f"{alert.summary}; {count} late blood-pressure readings not used")


def _time_based_exit_due(st: PatientState, th: Thresholds) -> bool:
    if st.phase == "prodromal":
        return st.max_t >= st.phase_since + th.prodrome_expiry_h * HOUR_MS
    if st.phase == "recovery":
        return st.max_t >= st.phase_since + th.recovery_min_h * HOUR_MS
    if st.phase == "leak":
        return st.max_t >= max(st.leak_since, st.last_evidence) + th.leak_quiet_h * HOUR_MS
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
        st.last_evidence = t
    if phase == "none":
        st.leak_since = 0
    st.phase = phase
    st.severity = severity
    st.stay_fixed = 1
    alert = make_alert(st.patient_id, st.episode, phase, previous, severity, t, evidence,
                       headline, stay=st.stay, not_before_ms=st.raised, ward=st.ward, bed=st.bed)
    st.raised = alert.raised_at_ms
    return alert


def _escalate(st: PatientState, severity: str, t: int, evidence: list[Evidence],
              headline: str) -> Alert:
    """A more severe alert of the current phase: never before the phase was entered, nor raised
    before the alert it escalates."""
    previous = st.severity
    st.severity = severity
    alert = make_alert(st.patient_id, st.episode, st.phase, st.phase, severity,
                       max(t, st.phase_since), evidence, headline, stay=st.stay,
                       not_before_ms=st.raised, ward=st.ward, bed=st.bed,
                       supersedes=alert_id(st.patient_id, st.episode, st.phase, previous,
                                           st.stay or None))
    st.raised = alert.raised_at_ms
    return alert


def _hypotension_evidence(run: list[float], facts: _Facts, th: Thresholds) -> Evidence:
    which, nadir = bp.run_nadir(run, th)
    held = (run[bp.R_LAST] - run[bp.R_FIRST]) / 60_000
    if which == "SBP":
        base = facts.sbp_baseline
        rule = f"<= {th.sbp_low_mmhg:g}" if nadir <= th.sbp_low_mmhg else \
            f"fall >= {th.sbp_fall_mmhg:g}"
        extra = f"; baseline {base:.0f}" if base is not None else ""
        text = f"SBP {nadir:.0f} mmHg ({rule}{extra}; low for {held:.0f} min)"
        threshold = (f"SBP <= {th.sbp_low_mmhg:g} or fall >= {th.sbp_fall_mmhg:g} from "
                     f"baseline, held >= {th.hypotension_hold_min:g} min")
    else:
        base = None
        text = f"MAP {nadir:.0f} mmHg (< {th.map_low_mmhg:g}; low for {held:.0f} min)"
        threshold = f"MAP < {th.map_low_mmhg:g}, held >= {th.hypotension_hold_min:g} min"
    return Evidence("hypotension", nadir, "mmHg", threshold, int(run[bp.R_Q]), base, text,
                    int(run[bp.R_QA]))


def _dehydrated(st: PatientState, facts: _Facts, at: int, th: Thresholds) -> bool:
    window = th.weight_gain_window_h * HOUR_MS
    weighings = [w for w in st.wt if at - window <= w[0] <= at]
    if len(weighings) >= 2:
        heaviest = max(w[1] for w in weighings)
        if (heaviest - weighings[-1][1]) / heaviest * 100.0 >= th.dehydration_weight_loss_pct:
            return True
    near = th.triad_window_h * HOUR_MS
    for row in st.lab("albumin"):
        t, albumin = int(row[0]), row[1]
        if abs(t - at) > near or albumin_infused_before(st, t, th):
            continue
        base = facts.albumin_baseline(t)
        if albumin > th.albumin_concentrated_gdl or (
                base is not None and albumin - base >= th.albumin_concentrated_rise_gdl):
            return True
    return False


class _Onset(NamedTuple):
    at: int  # event time both deciders were met
    run: list[float]
    hct: Finding


def _leak_onset(st: PatientState, facts: _Facts, th: Thresholds, not_before: int,
                both_after: bool) -> _Onset | None:
    """Earliest (time, hypotension run, Hct finding) pairing of the triad's two deciders."""
    hcts = facts.hemoconcentrated  # asked first: mostly none, and then no runs are folded
    if not hcts or not facts.hypotension:
        return None
    window = th.triad_window_h * HOUR_MS
    oldest = st.max_t - th.leak_max_age_h * HOUR_MS
    best = None
    for run in facts.hypotension:
        for hct in hcts:
            if not run[bp.R_FIRST] - window <= hct.t <= run[bp.R_LAST] + window:
                continue
            if both_after and (run[bp.R_Q] <= not_before or hct.t <= not_before):
                continue
            at = int(max(run[bp.R_Q], hct.t))
            if at > not_before and at >= oldest and (best is None or at < best.at):
                best = _Onset(at, run, hct)
    if best is not None and _dehydrated(st, facts, best.at, th):
        return None
    return best


def _escalating_albumin(st: PatientState, facts: _Facts, since: int, th: Thresholds
                        ) -> Evidence | None:
    """The first albumin from ``since`` whose hypoalbuminemia escalates a leak to critical."""
    for row in st.lab("albumin"):
        t = int(row[0])
        if t < since:
            continue
        base = facts.albumin_baseline(t)
        if hypoalbuminemia.escalates(row[1], base, th):
            return hypoalbuminemia.evidence(t, row[1], base, known_at(row), th,
                                            censored_mark(row))
    return None


def _leak_alert(st: PatientState, facts: _Facts, th: Thresholds, onset: _Onset,
                new_episode: bool, headline: str | None = None) -> Alert:
    evidence = [_hypotension_evidence(onset.run, facts, th),
                hemoconcentration.evidence(onset.hct, st.sex, th)]
    window = int(th.triad_window_h * HOUR_MS)
    wbc = supportive.leukocytosis(st.lab("leukocytes"), onset.at - window, th)
    if wbc is not None and wbc.observed_at_ms <= onset.at:
        evidence.append(wbc)
    return _transition(st, "leak", "high", onset.at, evidence, new_episode=new_episode,
                       headline=headline)


def _urine_falling(st: PatientState, th: Thresholds) -> Callable[[int], Evidence | None]:
    """A prodromal sign at time t: urine flow well below the patient's admission flow."""
    admission = st.baseline("urine_ml_h", th.prodrome_urine_baseline_collections)

    def sign(t: int) -> Evidence | None:
        if admission is None:
            return None
        flow = urine.rate_ml_per_kg_h(st.uo, t, th.prodrome_urine_hours, 1.0,
                                      th.urine_min_coverage)  # mL/h
        if flow is None or flow >= admission * th.prodrome_urine_fall_ratio:
            return None
        known = urine.window_known_at(st.uo, t, th.prodrome_urine_hours)
        return Evidence("falling_urine_output", flow, "mL/h",
                        f"< {th.prodrome_urine_fall_ratio:.0%} of the admission flow over "
                        f"{th.prodrome_urine_hours:g} h", t, admission,
                        f"urine {flow:.0f} mL/h over {th.prodrome_urine_hours:g} h (< "
                        f"{th.prodrome_urine_fall_ratio:.0%} of the admission flow "
                        f"{admission:.0f} mL/h)", known if known > t else 0)

    return sign


def _prodrome(st: PatientState, facts: _Facts, th: Thresholds) -> list[Evidence] | None:
    baseline = facts.weight_baseline or th.default_weight_kg
    found = memo.confirmed_gain(st, baseline, st.phase_since + 1, th, _urine_falling)
    if found is None:
        return None
    at = found[0].observed_at_ms
    if at < st.max_t - th.prodrome_max_age_h * HOUR_MS:
        return None  # too old to be a prodrome, and older than the shock runs kept to rule out
    lookback = at - th.weight_gain_window_h * HOUR_MS
    for run in facts.hypotension:  # gain after (or during) a shock: resuscitation fluids
        if run[bp.R_FIRST] <= at and run[bp.R_LAST] >= lookback:
            return None
    hcts = [h for h in st.lab("hematocrit") if lookback <= h[0] <= at]
    if len(hcts) >= 2 and max(h[1] for h in hcts) - hcts[-1][1] >= th.hct_fall_points:
        return None  # weight up while Hct falls: hemodilution from fluids
    i = next(i for i, w in enumerate(st.wt) if w[0] == at)
    start = weight_gain.lightest_before(st.wt, i, th)
    if start is not None and gain_explained_by_fluids(st, int(start[0]), at, found[0].value
                                                      - start[1], th) is not None:
        return None  # the fluid balance explains the gain: resuscitation
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


def _flow_evidence(st: PatientState, facts: _Facts, since: int, th: Thresholds,
                   polyuria: bool) -> Evidence | None:
    """Polyuria (or oliguria): the first collection end from ``since`` at which the flow over
    its window is beyond the cut-off."""
    if polyuria:
        cut, hours, name, sign = th.polyuria_ml_per_kg_h, th.polyuria_hours, "polyuria", ">"
    else:
        cut, hours, name, sign = th.oliguria_ml_per_kg_h, th.oliguria_hours, "oliguria", "<"
    found = urine.first_flow(st.uo, since, hours, facts.weight_kg,
                             (lambda r: r > cut) if polyuria else (lambda r: r < cut),
                             th.urine_min_coverage)
    if found is None:
        return None
    end, rate, known = found
    return Evidence(name, rate, "mL/kg/h", f"{sign} {cut:g} mL/kg/h over {hours:g} h", end, None,
                    f"urine {rate:.2f} mL/kg/h over {hours:g} h ({sign} {cut:g})", known)


def _leak_evidence_now(st: PatientState, facts: _Facts, th: Thresholds) -> list[Evidence]:
    """The leak's hypotension and hemoconcentration, repeated in an escalation."""
    window = th.triad_window_h * HOUR_MS
    out = []
    runs = [r for r in facts.hypotension if r[bp.R_LAST] >= st.leak_since - window]
    if runs:
        out.append(_hypotension_evidence(runs[0], facts, th))
    hcts = [h for h in facts.hemoconcentrated if h.t >= st.leak_since - window]
    if hcts:
        out.append(hemoconcentration.evidence(hcts[0], st.sex, th))
    return out


def _decide_leak(st: PatientState, facts: _Facts, th: Thresholds) -> Alert | None:
    window = int(th.triad_window_h * HOUR_MS)
    latest = [r[bp.R_LAST] for r in facts.hypotension] + [h.t for h in facts.hemoconcentrated]
    st.last_evidence = int(max([st.last_evidence, *latest]))
    if SEVERITY_RANK[st.severity] < SEVERITY_RANK["critical"]:
        albumin = _escalating_albumin(st, facts, st.leak_since - window, th)
        if albumin is not None:
            return _escalate(st, "critical", max(st.leak_since, albumin.observed_at_ms),
                             [*_leak_evidence_now(st, facts, th), albumin],
                             "Leak phase, triad complete (hypoalbuminemia)")
        signs = [e for e in (supportive.leukocytosis(st.lab("leukocytes"), st.leak_since - window,
                                                     th),
                             _flow_evidence(st, facts, st.leak_since, th, polyuria=False))
                 if e is not None]
        if len(signs) >= 2:
            at = max(st.leak_since, *(e.observed_at_ms for e in signs))
            return _escalate(st, "critical", at, [*_leak_evidence_now(st, facts, th), *signs],
                             "Leak phase with leukocytosis and oliguria")
    recovery = _recovery_onset(st, facts, th)
    if recovery is not None:
        return recovery
    quiet_until = max(st.leak_since, st.last_evidence) + int(th.leak_quiet_h * HOUR_MS)
    if st.max_t >= quiet_until:
        return _transition(st, "none", "info", quiet_until, [],
                           headline=f"Leak episode closed: no persistent hypotension and no "
                                    f"hemoconcentration for {th.leak_quiet_h:g} h")
    return None


def _recovery_onset(st: PatientState, facts: _Facts, th: Thresholds) -> Alert | None:
    window = int(th.triad_window_h * HOUR_MS)
    falling = hemoconcentration.falling_from_peak(st.lab("hematocrit"), st.leak_since - window,
                                                  th)
    if falling is None or falling[0][0] < st.leak_since:
        return None
    reading, peak = falling
    for run in facts.recovered_bp:
        q = int(run[bp.H_Q])
        if q <= st.leak_since:
            continue
        # a pressure held by a vasopressor that is not weaning is shock treated, not recovery:
        # recovery is called at the first moment the pressure stands on its own
        run_end = int((run[bp.H_END] + 1) * th.bp_slot_ms)
        unheld = first_unheld(st, int(max(q, reading[0])), min(run_end, st.max_t), th)
        if unheld is None:
            continue
        at = unheld
        sbp = st.last.get("sbp") or [q, th.recovery_sbp_mmhg]
        since = format_time(q - int(th.recovery_hold_min * 60_000))
        evidence = [
            Evidence("blood_pressure_recovered", sbp[1], "mmHg",
                     f"SBP > {th.recovery_sbp_mmhg:g} held >= {th.recovery_hold_min:g} min "
                     f"(since {since})", int(sbp[0]), facts.sbp_baseline,
                     f"SBP {sbp[1]:.0f} mmHg (> {th.recovery_sbp_mmhg:g} held "
                     f"{th.recovery_hold_min:g} min since {since}, not on a vasopressor that "
                     "is not weaning)", int(run[bp.H_QA])),
            Evidence("hematocrit_falling", reading[1], "%",
                     f">= {th.hct_fall_points:g} points below the episode peak ({peak:.1f} %)",
                     int(reading[0]), peak,
                     f"Hct {reading[1]:.1f} % ({peak - reading[1]:.1f} points below the episode "
                     f"peak {peak:.1f} %)", known_at(reading))]
        polyuria = _flow_evidence(st, facts, st.leak_since, th, polyuria=True)
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
        overload = _fluid_overload(st, facts, th)
        if overload is not None:
            return overload
    closes_at = st.phase_since + int(th.recovery_min_h * HOUR_MS)
    longest = st.phase_since + int(th.recovery_max_h * HOUR_MS)
    if st.max_t >= longest:
        return _transition(st, "none", "info", longest, [],
                           headline=f"Episode closed after {th.recovery_max_h:g} h of recovery")
    if st.max_t >= closes_at:
        recent = st.max_t - int(th.recovery_calm_h * HOUR_MS)
        if _flow_evidence(st, facts, recent, th, polyuria=True) is None and not any(
                r[bp.R_LAST] >= recent for r in facts.hypotension):
            return _transition(st, "none", "info", closes_at, [],
                               headline=f"Episode closed: recovery complete, no polyuria or "
                                        f"hypotension in the last {th.recovery_calm_h:g} h")
    return None


def _fluid_overload(st: PatientState, facts: _Facts, th: Thresholds) -> Alert | None:
    polyuria = _flow_evidence(st, facts, st.phase_since, th, polyuria=True)
    baseline = facts.weight_baseline
    if polyuria is None or baseline is None:
        return None
    # the weighing that makes the decision earliest, whatever arrived last
    best = None
    pairing = th.fluid_overload_pairing_h * HOUR_MS
    for row in st.wt:
        t, kg = int(row[0]), row[1]
        over = weight_gain.over_baseline_pct(kg, baseline)
        if abs(t - polyuria.observed_at_ms) <= pairing and over >= th.fluid_overload_weight_pct:
            at = int(max(t, polyuria.observed_at_ms))
            if best is None or at < best[0]:
                best = (at, row, over)
    if best is None:
        return None
    at, row, over = best
    weight = Evidence("weight_over_baseline", row[1], "kg",
                      f">= {th.fluid_overload_weight_pct:g} % over baseline (+{over:.1f} %)",
                      int(row[0]), baseline,
                      f"weight {row[1]:.1f} kg (+{over:.1f} % over baseline {baseline:.1f} kg)",
                      known_at(row))
    return _escalate(st, "high", at, [polyuria, weight],
                     "Fluid overload risk in recovery: polyuria with weight still high; review "
                     "and stop fluids (pulmonary edema)")


_DECIDERS: dict[str, Callable[[PatientState, _Facts, Thresholds], Alert | None]] = {
    "none": _decide_none, "prodromal": _decide_prodromal, "leak": _decide_leak,
    "recovery": _decide_recovery,
}
