"""Per-patient state: small, bounded, JSON-serialisable, and independent of arrival order.

The stream worker keeps one of these per patient in a Faust table whose changelog is replayed on
restart, so it must stay small (target < 4 KB of JSON after a week of 1-minute vitals) and cheap to
write. Every window is keyed on EVENT time and folds values with order-free aggregates (counts,
minima, per-time-slot tallies, readings kept sorted by time), so a lab that arrives hours after its
draw lands where it belongs and leads to the same decisions as in-order delivery.

One state is one STAY: an ADT admit, or a gap of ``stay_gap_h`` without readings, starts a new one
(``detectors.plausibility``), so baselines, windows and episodes never reach into another
admission, and alert ids carry the stay (``stay``).

Layout (short keys because the changelog stores this once per update):
- ``slots``: 5-minute blood-pressure slots of the last hour (``criteria.hypotension``); older
  slots fold into ``hypo`` / ``norm``: closed runs of hypotensive / recovered slots;
- ``labs``: per lab kind, the latest readings ``[t, value, delay]`` sorted by time (bounded;
  ``delay``: minutes after ``t`` it became known, ``known_at``; a 4th item marks a censored
  result, "<2.0", read as its bound);
- ``wt``: weighings ``[t, kg, delay]``, ``uo``: urine collections ``[start, end, mL, delay]`` of
  the last day (delay after ``end``); ``last``: the latest reading of the other kinds (evidence);
- ``bl``: running baselines ``{kind: [t0, n, sum]}`` (SBP, urine flow); ``blr``: the baseline
  READINGS ``{kind: [[t, value], ...]}`` of the labs and weighings (a decision uses only those
  drawn before the value it judges: no look-ahead); ``seen``: fingerprints of the last
  observations, so an at-least-once redelivery is not counted twice;
- ``iv``: interventions per kind ``[start, end, amount, rate, tag]`` (``detectors.interventions``);
  ``fb``: fluid balance per 6-hour bucket ``{bucket: [mL in, mL out]}`` of the last 54 h;
- ``max_t`` / ``near`` / ``ahead``: the patient's event-time horizon, whether a second reading
  supports it, and a reading held back as "in the future" (``detectors.plausibility``);
  ``arrived``: the latest availability seen (an alert is never raised before its evidence was
  there); ``wref``: a weighing refused as a jump (two that agree replace the reference);
- ``applied``: per input source, the position ``[offset, timestamp_ms]`` of the last record
  folded into this state. Opaque to the engine: the stream worker writes it with the state in
  one changelog write and skips a redelivered record at or before it
  (``streams.worker.store.already_applied``), so at-least-once delivery never folds a
  reading in twice, however many came again after a crash (``seen`` alone remembers 8); a
  discharge leaves it behind in the worker's discharged record, so a discharged patient's
  records resent after a crash do not start a new state (``streams.worker.store``);
- ``late``: ``[count, t]``: blood-pressure readings that came too late for the hypotension rule
  (``Thresholds.bp_late_horizon_min`` behind ``max_t``) and the event time of the latest of them;
  the patient's alerts show it, so a reading left out of detection is never left out silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the engine's reply type; state.py is imported by detectors.phases
    from detectors.phases import StepResult

#: kinds held as lab readings (``labs``); WBC keeps fewer (it only fills evidence)
LAB_KINDS = ("hematocrit", "albumin", "leukocytes", "hemoglobin")
SEEN_KEEP = 8
URINE_KEEP = 16
RUNS_KEEP = 6
#: the kinds whose first readings of the stay are kept as baseline readings
BASELINE_READING_KINDS = ("hematocrit", "hemoglobin", "albumin", "weight")
#: fluid-balance bucket length and horizon ([D] 6 h buckets over 54 h: the 48 h gain window
#: at 6 h resolution, whole mL)
FLUID_BUCKET_MS = 6 * 3_600_000
FLUID_HORIZON_MS = 54 * 3_600_000

_SCALARS = (("pid", "patient_id"), ("ph", "phase"), ("ep", "episode"), ("sev", "severity"),
            ("pt", "phase_since"), ("lt", "leak_since"), ("mx", "max_t"),
            ("fe", "first_episode_at"))
_OPTIONAL = (("pd", "pending"), ("sex", "sex"), ("wkg", "weight_kg"), ("ue", "uo_end"),
             ("st", "stay"), ("sf", "stay_fixed"), ("nr", "near"), ("ah", "ahead"),
             ("ar", "arrived"), ("ev", "last_evidence"), ("rz", "raised"), ("wref", "wref"),
             ("wd", "ward"), ("bd", "bed"))
_CONTAINERS = ("bl", "blr", "fold", "hypo", "norm", "labs", "wt", "uo", "last", "seen", "iv",
               "late", "applied")


@dataclass(slots=True)
class PatientState:
    patient_id: str
    sex: str | None = None
    weight_kg: float | None = None  # from the ADT context (admission weight)
    ward: str | None = None  # from the ADT context (PV1-3): alerts carry it for routing
    bed: str | None = None
    phase: str = "none"
    episode: int = 0
    severity: str = "none"
    phase_since: int = 0  # event time of the transition into the current phase
    leak_since: int = 0  # event time the current episode's leak began (0 = no leak yet)
    first_episode_at: int = 0  # baselines take no reading from this event time on (0 = open)
    pending: int = 0  # draw time of a lab panel whose decision waits for the rest of the panel
    max_t: int = 0  # the patient's event-time horizon (latest plausible event time seen)
    #: event time of the stay's first reading (lowered by earlier late readings until the first
    #: alert fixes it): part of every alert id, so a later stay never repeats an id
    stay: int = 0
    stay_fixed: int = 0
    near: int = 0  # readings within the future tolerance of max_t (capped at 2)
    ahead: int = 0  # event time of a reading held back as in the future (0 = none)
    arrived: int = 0  # latest availability (or event time) of anything accepted
    last_evidence: int = 0  # event time of the latest evidence for the current leak
    raised: int = 0  # raised_at of the latest alert (a later decision is never raised before)
    wref: list[float] = field(default_factory=list)  # [t, kg] of a weighing refused as a jump
    bl: dict[str, list[float]] = field(default_factory=dict)
    blr: dict[str, list[list[float]]] = field(default_factory=dict)
    slots: dict[int, list[float]] = field(default_factory=dict)
    fold: list[int] = field(default_factory=list)  # [slot, class] of the last folded slot
    hypo: list[list[float]] = field(default_factory=list)
    norm: list[list[float]] = field(default_factory=list)
    labs: dict[str, list[list[float]]] = field(default_factory=dict)
    wt: list[list[float]] = field(default_factory=list)
    uo: list[list[float]] = field(default_factory=list)
    uo_end: int = 0  # end of the last urine collection (for period_min = since the previous one)
    last: dict[str, list[float]] = field(default_factory=dict)
    seen: list[int] = field(default_factory=list)
    #: interventions per kind, ``[start, end, amount, rate, tag]`` (``detectors.interventions``)
    iv: dict[str, list[list[float | None]]] = field(default_factory=dict)
    #: fluid balance per 6-hour bucket: ``{bucket: [mL in, mL out]}``
    fb: dict[int, list[float]] = field(default_factory=dict)
    #: ``[count, t]`` of blood-pressure readings too late for the hypotension rule
    late: list[int] = field(default_factory=list)
    #: per input source, ``[offset, timestamp_ms]`` of the last record folded in (module doc;
    #: written by the stream worker, never read by the engine, kept across a new stay)
    applied: dict[str, list[int]] = field(default_factory=dict, compare=False)
    #: derived views remembered between decisions (``detectors.memo``): not serialised, not
    #: compared, empty after a restart
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: ``detectors.phases.step``'s reply to an accepted reading that decides nothing, built once
    #: per state object (it only holds the state): not serialised, not compared
    quiet: StepResult | None = field(default=None, init=False, repr=False, compare=False)

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {key: getattr(self, name) for key, name in _SCALARS}
        for key, name in _OPTIONAL:
            value = getattr(self, name)
            if value:
                d[key] = value
        for key in _CONTAINERS:
            value = getattr(self, key)
            if value:
                d[key] = value
        if self.slots:
            d["slots"] = {str(k): v for k, v in self.slots.items()}
        if self.fb:
            d["fb"] = {str(k): v for k, v in self.fb.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatientState:
        st = cls(d["pid"])
        for key, name in _SCALARS[1:]:
            if key in d:
                setattr(st, name, d[key])
        for key, name in _OPTIONAL:
            if key in d:
                setattr(st, name, d[key])
        for key in _CONTAINERS:
            if key in d:
                setattr(st, key, d[key])
        st.slots = {int(k): v for k, v in d.get("slots", {}).items()}
        st.fb = {int(k): v for k, v in d.get("fb", {}).items()}
        _upgrade(st)
        return st

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PatientState:
        return cls.from_dict(json.loads(data))

    # --- read helpers used by the criteria ----------------------------------------------------
    def baseline(self, kind: str, min_n: int = 1) -> float | None:
        """Mean of the running baseline of ``kind`` (SBP, urine flow; None until ``min_n``)."""
        b = self.bl.get(kind)
        if not b or b[1] < min_n:
            return None
        return b[2] / b[1]

    def lab(self, kind: str) -> list[list[float]]:
        return self.labs.get(kind, [])

    def latest(self, kind: str) -> list[float] | None:
        """The latest reading [t, value, ...] of a lab or other kind, by event time."""
        readings = self.labs.get(kind)
        if readings:
            return readings[-1]
        return self.last.get(kind)


# --- window updates (pure data operations on the state) ------------------------------------------

def _upgrade(st: PatientState) -> None:
    """A state written by an earlier version (a worker's changelog survives an upgrade): slots
    and runs without the availability fields get them (0: known at their event time), a run
    counts its SBP and MAP readings as one."""
    for slot in st.slots.values():
        if len(slot) < 12:
            slot.extend([0] * (12 - len(slot)))
    for run in st.hypo:
        if len(run) < 12:
            run.extend([run[4], 0, 0, run[7]][len(run) - 8:] if len(run) >= 8 else [])
            run.extend([0] * (12 - len(run)))
    for run in st.norm:
        if len(run) < 5:
            run.extend([0] * (5 - len(run)))
    if not st.stay and st.max_t:
        st.stay = st.max_t


def add_baseline(st: PatientState, kind: str, t: int, value: float, window_ms: int) -> None:
    """Fold a reading into a running baseline if it lies in the first ``window_ms`` and before
    the patient's first episode: a baseline never drifts into the leak it measures."""
    if st.first_episode_at and t >= st.first_episode_at:
        return
    b = st.bl.get(kind)
    if b is None:
        st.bl[kind] = [t, 1, value]
    elif t < b[0]:
        # a late reading older than the first one: it opens the window earlier (readings already
        # in it stay; the window only ever covers the admission period)
        b[0] = t
        b[1] += 1
        b[2] += value
    elif t - b[0] <= window_ms:
        b[1] += 1
        b[2] += value


def add_baseline_reading(st: PatientState, kind: str, t: int, value: float, window_ms: int,
                         keep: int) -> None:
    """Keep ``[t, value]`` as a baseline reading of ``kind`` when it lies within ``window_ms`` of
    the stay's first reading of that kind and before the first episode (at most ``keep``, the
    earliest ones)."""
    if st.first_episode_at and t >= st.first_episode_at:
        return
    rows = st.blr.setdefault(kind, [])
    if rows and t - rows[0][0] > window_ms:
        return
    insert_row(rows, [t, value], keep + 1)
    # an earlier late reading may move the window start: drop what now lies outside it
    while len(rows) > keep or (rows and rows[-1][0] - rows[0][0] > window_ms):
        del rows[-1]


def insert_row(rows: list[list[float]], row: list[float], keep: int) -> None:
    """Insert ``row`` (its first item is an event time) in time order, keeping the newest
    ``keep`` rows."""
    i = len(rows)
    while i and rows[i - 1][0] > row[0]:
        i -= 1
    rows.insert(i, row)
    if len(rows) > keep:
        del rows[0]


def remove_rows(rows: list[list[float]], t: int, value: float | None) -> list[float]:
    """Remove the rows at event time ``t`` (and of ``value``, when given, to 1e-6); returns the
    values removed (a retraction or a correction of a reading still in a window)."""
    removed = [row[1] for row in rows
               if row[0] == t and (value is None or abs(row[1] - value) <= 1e-6)]
    if removed:
        rows[:] = [row for row in rows
                   if not (row[0] == t and (value is None or abs(row[1] - value) <= 1e-6))]
    return removed


def remove_baseline(st: PatientState, kind: str, t: int, value: float, window_ms: int) -> None:
    """Take a withdrawn reading back out of the baseline it entered: a lab's or weighing's
    baseline reading, or the running baseline (same window and episode rules as when it was
    added; the window's start is not moved back)."""
    readings = st.blr.get(kind)
    if readings is not None:
        remove_rows(readings, t, value)
        if not readings:
            del st.blr[kind]
        return
    b = st.bl.get(kind)
    if b is None or (st.first_episode_at and t >= st.first_episode_at):
        return
    if b[0] <= t <= b[0] + window_ms:
        b[1] -= 1
        b[2] -= value
        if b[1] <= 0:
            del st.bl[kind]


def add_urine(st: PatientState, row: list[float], horizon_ms: int) -> None:
    """Record a urine collection [start, end, mL, delay]; drop those ending before the
    horizon."""
    insert_row(st.uo, row, URINE_KEEP)
    cutoff = st.max_t - horizon_ms
    while st.uo and st.uo[0][1] < cutoff:
        del st.uo[0]


def add_fluid(st: PatientState, start: int, end: int, ml: float, column: int) -> None:
    """Spread ``ml`` given (column 0) or passed (column 1) over [start, end] into the 6-hour
    fluid-balance buckets; buckets older than 72 h before the horizon are dropped."""
    end = max(end, start)
    span = end - start
    b = start // FLUID_BUCKET_MS
    last = end // FLUID_BUCKET_MS
    while b <= last:
        lo = max(start, b * FLUID_BUCKET_MS)
        hi = min(end, (b + 1) * FLUID_BUCKET_MS)
        share = 1.0 if span <= 0 else (hi - lo) / span
        if share > 0:
            cell = st.fb.setdefault(b, [0, 0])
            cell[column] = round(cell[column] + ml * share)
        b += 1
    oldest = (max(st.max_t, end) - FLUID_HORIZON_MS) // FLUID_BUCKET_MS
    for key in [k for k in st.fb if k < oldest]:
        del st.fb[key]


def fluid_balance_ml(st: PatientState, start: int, end: int) -> float | None:
    """Net mL (in minus out) of the buckets overlapping [start, end] pro rata, or None when
    nothing was recorded over it (no fluid data is not a balance of zero)."""
    if not st.fb:
        return None
    net = 0.0
    found = False
    for b, (given, passed) in st.fb.items():
        lo = max(start, b * FLUID_BUCKET_MS)
        hi = min(end, (b + 1) * FLUID_BUCKET_MS)
        if hi > lo:
            found = True
            net += (given - passed) * (hi - lo) / FLUID_BUCKET_MS
    return net if found else None


def delay_min(t: int, known: int) -> int:
    """How long after its event time ``t`` a reading became known, in whole minutes rounded up
    (stored instead of a second epoch: it keeps the state small and never claims it earlier)."""
    return -((t - known) // 60_000) if known > t else 0


def known_at(row: list[float], t_index: int = 0) -> int:
    """When a stored reading became known: its event time (``row[t_index]``) plus the delay in
    minutes kept two items after it."""
    return int(row[t_index] + (row[t_index + 2] * 60_000 if len(row) > t_index + 2 else 0))


#: a lab row's optional 4th item: the result was reported as a bound ("<2.0" -> -1, ">70" -> 1)
CENSORED_CODE = {"<": -1, ">": 1}


def censored_mark(row: list[float]) -> str:
    """"<" or ">" when a lab row holds a censored result's bound, else ""."""
    if len(row) > 3:
        return "<" if row[3] < 0 else ">"
    return ""


def state_size_bytes(st: PatientState) -> int:
    return len(st.to_json())


#: every attribute of a state (its dataclass fields: with ``slots=True``, its ``__slots__`` too;
#: read from the fields so that a compiled build of the engine, whose classes have no
#: ``__slots__``, starts a stay the same way)
_FIELD_NAMES = tuple(f.name for f in fields(PatientState))


def reset_stay(st: PatientState) -> None:
    """Start a new stay in place (callers hold the object): the ADT facts (sex, admission
    weight, ward, bed) and the input positions (``applied``) are kept, everything measured is
    forgotten."""
    fresh = PatientState(st.patient_id, sex=st.sex, weight_kg=st.weight_kg, ward=st.ward,
                         bed=st.bed, applied=st.applied)
    for name in _FIELD_NAMES:
        setattr(st, name, getattr(fresh, name))
