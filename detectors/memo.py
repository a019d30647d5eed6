"""Derived views of a patient's state, remembered between decisions (never serialised).

A decision is asked for at nearly every blood-pressure reading while a run of low pressure grows
(``detectors.intake.on_pressure``), but the labs it pairs that run with change a few times a day:
recomputing the confirmed hemoconcentration findings (a baseline per draw, the hemoglobin of each
draw, the spike check) and folding every live blood-pressure slot again at each reading made the
engine ~5x slower than the readings themselves. Each view here is the exact result of its pure
function (``criteria.hemoconcentration.findings``, ``criteria.hypotension.runs``), remembered in
``PatientState.memo`` together with a COPY of every input it read; it is reused only while those
inputs compare equal, so any change to them, by whatever path (a new draw, a retraction, a
transfusion, a new stay, a state loaded after a restart), recomputes it. Decisions are therefore
the same with or without the memo; the memo only saves time, and a restarted worker starts
without one.
"""

from __future__ import annotations

from typing import Any

from detectors.config import Thresholds
from detectors.criteria import hemoconcentration
from detectors.criteria import hypotension as bp
from detectors.criteria.hemoconcentration import Finding
from detectors.state import PatientState

_INF = float("inf")
_NO_FINDINGS: list[Finding] = []


def _copy_rows(rows: list[list[Any]] | None) -> list[list[Any]] | None:
    return None if rows is None else [list(r) for r in rows]


def hemoconcentrated(st: PatientState, weight_kg: float, th: Thresholds) -> list[Finding]:
    """``hemoconcentration.findings(st, weight_kg, th)``, recomputed only when an input changed.

    Inputs: the hematocrit and hemoglobin draws, their baseline readings, the red cells given,
    the sex, ``weight_kg``, the thresholds (by identity) and the horizon ``st.max_t``, which the
    spike check of a draw compares with the draw's time plus ``hct_spike_wait_ms``: the view is
    kept while the horizon stays between the same two of those times. The list returned is the
    caller's own.
    """
    labs = st.labs
    draws = labs.get("hematocrit")
    if not draws:
        return []
    blr = st.blr
    inputs = (draws, labs.get("hemoglobin"), blr.get("hematocrit"), blr.get("hemoglobin"),
              st.iv.get("rc"))
    horizon = st.max_t
    memo = st.memo.get("hct")
    if (memo is not None and memo[0] is th and memo[1] == weight_kg and memo[2] == st.sex
            and memo[3] <= horizon < memo[4] and memo[5] == inputs):
        return list(memo[6])
    found = hemoconcentration.findings(st, weight_kg, th)
    lo, hi = -_INF, _INF
    wait = th.hct_spike_wait_ms
    for row in draws:
        moment = row[0] + wait
        if moment <= horizon:
            lo = max(lo, moment)
        else:
            hi = min(hi, moment)
    st.memo["hct"] = (th, weight_kg, st.sex, lo, hi, tuple(_copy_rows(x) for x in inputs),
                      found or _NO_FINDINGS)
    return list(found)


class _Runs:
    """The runs folded from the closed runs and a prefix of the live slots, with copies of
    what they were folded from."""

    __slots__ = ("th", "hypo", "norm", "fold", "keys", "slots", "low", "high", "marker")

    def __init__(self, st: PatientState, th: Thresholds) -> None:
        self.th = th
        self.hypo = [list(r) for r in st.hypo]
        self.norm = [list(r) for r in st.norm]
        self.fold = list(st.fold)
        self.keys: list[int] = []
        self.slots: list[list[float]] = []
        self.low = [list(r) for r in st.hypo]
        self.high = [list(r) for r in st.norm]
        self.marker = list(st.fold)

    def still_folds(self, st: PatientState, th: Thresholds, keys: list[int]) -> bool:
        """True when the closed runs and the remembered prefix of slots are unchanged."""
        n = len(self.keys)
        if (self.th is not th or self.hypo != st.hypo or self.norm != st.norm
                or self.fold != st.fold or keys[:n] != self.keys):
            return False
        slots = st.slots
        return all(slots[s] == copy for s, copy in zip(self.keys, self.slots, strict=True))


def bp_runs(st: PatientState, th: Thresholds
            ) -> tuple[list[list[float]], list[list[float]]]:
    """``hypotension.runs(st.slots, st.hypo, st.norm, st.fold, th)``, folding again only the
    slots that changed.

    The closed runs and the live slots up to the one before the newest are folded once and
    remembered with copies of what they were folded from; a call folds the remembered prefix
    further when it is still a prefix of the live slots (the usual case: a reading lands in the
    newest slot) and starts again otherwise. The newest slot is folded onto a copy. Returns new
    outer lists; the runs in them other than the last of each kind are shared with the memo and
    must not be changed by the caller.
    """
    slots = st.slots
    keys = sorted(slots)
    remembered = st.memo.get("runs")
    if remembered is None or not remembered.still_folds(st, th, keys):
        remembered = st.memo["runs"] = _Runs(st, th)
    low, high = remembered.low, remembered.high
    for s in keys[len(remembered.keys):-1]:
        slot = slots[s]
        remembered.marker = bp.fold(low, high, remembered.marker, s, slot, th)
        remembered.keys.append(s)
        remembered.slots.append(list(slot))
    low_out = list(low)
    high_out = list(high)
    if len(keys) > len(remembered.keys):
        if low_out:
            low_out[-1] = list(low_out[-1])
        if high_out:
            high_out[-1] = list(high_out[-1])
        s = keys[-1]
        bp.fold(low_out, high_out, list(remembered.marker), s, slots[s], th)
    return low_out, high_out


