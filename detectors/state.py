"""Per-patient state: small, bounded, JSON-serialisable, and independent of arrival order.

The stream worker keeps one of these per patient in a Faust table whose changelog is replayed on
restart, so it must stay small (target < 4 KB of JSON after a week of 1-minute vitals) and cheap to
write. Every window is keyed on EVENT time and folds values with order-free aggregates (counts,
minima, per-time-slot tallies, readings kept sorted by time), so a lab that arrives hours after its
draw lands where it belongs and leads to the same decisions as in-order delivery.

Layout (short keys because the changelog stores this once per update):
- ``slots``: 5-minute blood-pressure slots of the last hour, ``{slot: [sbp_n, sbp_low, sbp_high,
  map_n, map_low, min_sbp, min_map, first_low_t, last_low_t]}``; older slots fold into
- ``hypo`` / ``norm``: closed runs of hypotensive / recovered slots (see ``criteria.hypotension``);
- ``labs``: per lab kind, the latest readings ``[t, value]`` sorted by time (bounded);
- ``wt``: weighings ``[t, kg]`` of the gain window (bounded), ``uo``: urine collections
  ``[start, end, mL]`` of the last day; ``last``: the latest reading of the other kinds (evidence);
- ``bl``: admission baselines ``{kind: [t0, n, sum]}``; ``seen``: fingerprints of the last
  observations, so an at-least-once redelivery is not counted twice;
- ``iv``: the latest interventions per kind ``[start, end, amount, rate, tag]`` of the last 48 h
  (``detectors.interventions``; carried, not yet used by a decision).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: how many readings each lab window keeps ([D] enough for a trend over the 48-72 h of a leak
#: with 6-12-hourly draws; older readings no longer change a decision)
LAB_KEEP = {"hematocrit": 8, "albumin": 8, "leukocytes": 3, "hemoglobin": 3}
WEIGHT_KEEP = 12
URINE_KEEP = 30
RUNS_KEEP = 6
SEEN_KEEP = 8
#: baseline kinds and whether they are vitals (short window) or labs/weighings (long window)
BASELINE_KINDS = {"sbp": True, "hematocrit": False, "albumin": False, "weight": False}


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
    max_t: int = 0  # latest event time seen
    bl: dict[str, list[float]] = field(default_factory=dict)
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

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"pid": self.patient_id, "ph": self.phase, "ep": self.episode,
                             "sev": self.severity, "pt": self.phase_since, "lt": self.leak_since,
                             "mx": self.max_t, "fe": self.first_episode_at}
        if self.pending:
            d["pd"] = self.pending
        if self.sex is not None:
            d["sex"] = self.sex
        if self.weight_kg is not None:
            d["wkg"] = self.weight_kg
        if self.ward is not None:
            d["wd"] = self.ward
        if self.bed is not None:
            d["bd"] = self.bed
        for key in ("bl", "fold", "hypo", "norm", "labs", "wt", "uo", "last", "seen", "iv"):
            value = getattr(self, key)
            if value:
                d[key] = value
        if self.slots:
            d["slots"] = {str(k): v for k, v in self.slots.items()}
        if self.uo_end:
            d["ue"] = self.uo_end
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatientState:
        return cls(
            patient_id=d["pid"], sex=d.get("sex"), weight_kg=d.get("wkg"), ward=d.get("wd"),
            bed=d.get("bd"),
            phase=d.get("ph", "none"),
            episode=d.get("ep", 0), severity=d.get("sev", "none"), phase_since=d.get("pt", 0),
            leak_since=d.get("lt", 0), max_t=d.get("mx", 0), first_episode_at=d.get("fe", 0),
            pending=d.get("pd", 0), bl=d.get("bl", {}),
            slots={int(k): v for k, v in d.get("slots", {}).items()}, fold=d.get("fold", []),
            hypo=d.get("hypo", []), norm=d.get("norm", []), labs=d.get("labs", {}),
            wt=d.get("wt", []), uo=d.get("uo", []), uo_end=d.get("ue", 0),
            last=d.get("last", {}), seen=d.get("seen", []), iv=d.get("iv", {}),
        )

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PatientState:
        return cls.from_dict(json.loads(data))

    # --- read helpers used by the criteria ----------------------------------------------------
    def baseline(self, kind: str, min_n: int = 1) -> float | None:
        """Mean of the admission-window readings of ``kind`` (None until ``min_n`` were seen)."""
        b = self.bl.get(kind)
        if not b or b[1] < min_n:
            return None
        return b[2] / b[1]

    def lab(self, kind: str) -> list[list[float]]:
        return self.labs.get(kind, [])

    def latest(self, kind: str) -> list[float] | None:
        """The latest reading [t, value] of a lab or other kind, by event time."""
        readings = self.labs.get(kind)
        if readings:
            return readings[-1]
        return self.last.get(kind)


# --- window updates (pure data operations on the state) ------------------------------------------

def add_baseline(st: PatientState, kind: str, t: int, value: float, window_ms: int) -> None:
    """Fold a reading into the admission baseline if it lies in the first ``window_ms`` and
    before the patient's first episode: a baseline never drifts into the leak it measures."""
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
    """Take a withdrawn reading back out of the admission baseline if ``add_baseline`` would
    have folded it in (same window and episode rules). The window's start is not moved back."""
    b = st.bl.get(kind)
    if b is None or (st.first_episode_at and t >= st.first_episode_at):
        return
    if b[0] <= t <= b[0] + window_ms:
        b[1] -= 1
        b[2] -= value
        if b[1] <= 0:
            del st.bl[kind]


def add_urine(st: PatientState, start: int, end: int, ml: float, horizon_ms: int) -> None:
    """Record a urine collection [start, end, mL]; drop those ending before the horizon."""
    insert_row(st.uo, [start, end, ml], URINE_KEEP)
    cutoff = st.max_t - horizon_ms
    while st.uo and st.uo[0][1] < cutoff:
        del st.uo[0]


def state_size_bytes(st: PatientState) -> int:
    return len(st.to_json())
