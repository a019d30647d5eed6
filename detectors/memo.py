"""Derived views of a patient's state, remembered between decisions (never serialised).

A decision is asked for at nearly every blood-pressure reading while a run of low pressure grows
(``detectors.intake.on_pressure``), but the labs it pairs that run with change a few times a day:
recomputing the confirmed hemoconcentration findings (a baseline per draw, the hemoglobin of each
draw, the spike check) and folding every live blood-pressure slot again at each reading made the
engine ~5x slower than the readings themselves. Each view here is the exact result of its pure
function (``criteria.hemoconcentration.findings``, ``criteria.hypotension.runs``,
``criteria.weight_gain.confirmed_gain``), remembered in
``PatientState.memo`` together with a COPY of every input it read; it is reused only while those
inputs compare equal, so any change to them, by whatever path (a new draw, a retraction, a
transfusion, a new stay, a state loaded after a restart), recomputes it. Decisions are therefore
the same with or without the memo; the memo only saves time, and a restarted worker starts
without one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detectors.alerts import Evidence
from detectors.config import Thresholds
from detectors.criteria import hemoconcentration, weight_gain
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
    what they were folded from, and after each slot of the prefix a snapshot of what folding
    had made so far: ``(number of low runs, copy of the last, number of high runs, copy of the
    last, marker)``. Folding only changes the last run of each kind or appends one, so a
    snapshot and the runs before the last give the whole state after that slot."""

    __slots__ = ("th", "hypo", "norm", "fold", "keys", "slots", "low", "high", "marker",
                 "snaps")

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
        self.snaps: list[tuple[int, list[float] | None, int, list[float] | None, list[int]]] = []

    def extend(self, s: int, slot: list[float]) -> None:
        """Fold the next live slot into the remembered prefix."""
        low, high = self.low, self.high
        self.marker = bp.fold(low, high, self.marker, s, slot, self.th)
        self.keys.append(s)
        self.slots.append(list(slot))
        self.snaps.append((len(low), list(low[-1]) if low else None, len(high),
                           list(high[-1]) if high else None, self.marker))

    def still_folds(self, st: PatientState, th: Thresholds, keys: list[int]) -> bool:
        """True when the remembered prefix still folds the live slots from the closed runs,
        after moving its start past the slots that ``intake.fold_old_slots`` closed since."""
        if self.th is not th:
            return False
        if self.fold != st.fold or self.hypo != st.hypo or self.norm != st.norm:
            if not self._closed_since(st):
                return False
        n = len(self.keys)
        if keys[:n] != self.keys:
            return False
        slots = st.slots
        return [slots[s] for s in self.keys] == self.slots

    def _closed_since(self, st: PatientState) -> bool:
        """Move the start of the prefix past its first ``j`` slots when the closed runs are now
        exactly what folding those slots made (the oldest closed runs may have been dropped)."""
        j = 0
        while j < len(self.keys) and self.keys[j] not in st.slots:
            j += 1
        if not j:
            return False
        n_low, last_low, n_high, last_high, marker = self.snaps[j - 1]
        if marker != st.fold:
            return False
        drop_low = _dropped(self.low, n_low, last_low, st.hypo)
        drop_high = _dropped(self.high, n_high, last_high, st.norm)
        if drop_low is None or drop_high is None:
            return False
        self.low = self.low[drop_low:]
        self.high = self.high[drop_high:]
        self.hypo = [list(r) for r in st.hypo]
        self.norm = [list(r) for r in st.norm]
        self.fold = list(st.fold)
        del self.keys[:j], self.slots[:j]
        self.snaps = [(a - drop_low, x, b - drop_high, y, m) for a, x, b, y, m in self.snaps[j:]]
        return True


def _dropped(runs: list[list[float]], n: int, last: list[float] | None,
             closed: list[list[float]]) -> int | None:
    """How many runs were dropped from the front of the ``n`` runs a snapshot had (``runs[:n -
    1]`` and ``last``) to leave ``closed``; None when ``closed`` is not such a suffix, or is empty
    while they were not (the next slot would then start a run instead of continuing one)."""
    made = runs[:n - 1] + [last] if last is not None else []
    k = len(made) - len(closed)
    if k < 0 or (made and not closed) or made[k:] != closed:
        return None
    return k


def bp_runs(st: PatientState, th: Thresholds
            ) -> tuple[list[list[float]], list[list[float]]]:
    """``hypotension.runs(st.slots, st.hypo, st.norm, st.fold, th)``, folding again only the
    slots that changed.

    The closed runs and the live slots up to the one before the newest are folded once and
    remembered with copies of what they were folded from; a call folds the remembered prefix
    further when it is still a prefix of the live slots (the usual case: a reading lands in the
    newest slot, or the oldest slots were closed into exactly the runs the prefix had made of
    them) and starts again otherwise. The newest slot is folded onto a copy. Returns new outer
    lists; the runs in them other than the last of each kind are shared with the memo and must
    not be changed by the caller.
    """
    slots = st.slots
    keys = sorted(slots)
    remembered = st.memo.get("runs")
    if remembered is None or not remembered.still_folds(st, th, keys):
        remembered = st.memo["runs"] = _Runs(st, th)
    for s in keys[len(remembered.keys):-1]:
        remembered.extend(s, slots[s])
    low_out = list(remembered.low)
    high_out = list(remembered.high)
    if len(keys) > len(remembered.keys):
        if low_out:
            low_out[-1] = list(low_out[-1])
        if high_out:
            high_out[-1] = list(high_out[-1])
        s = keys[-1]
        bp.fold(low_out, high_out, list(remembered.marker), s, slots[s], th)
    return low_out, high_out


#: builds the prodrome's supporting sign at time t from the urine collections (``st.uo``) and the
#: running urine baseline (``st.bl["urine_ml_h"]``) only
SignOf = Callable[[PatientState, Thresholds], Callable[[int], Evidence | None]]


def confirmed_gain(st: PatientState, baseline_kg: float, since: int, th: Thresholds,
                   sign_of: SignOf) -> list[Evidence] | None:
    """``weight_gain.confirmed_gain(st.wt, baseline_kg, since, th, sign_of(st, th))``,
    recomputed only when the weighings, the urine collections or the urine baseline changed (or
    another baseline, start, thresholds or sign is asked for). Returns the caller's own list."""
    urine_baseline = st.bl.get("urine_ml_h")
    memo = st.memo.get("gain")
    if (memo is not None and memo[0] is th and memo[1] is sign_of and memo[2] == baseline_kg
            and memo[3] == since and memo[4] == st.wt and memo[5] == st.uo
            and memo[6] == urine_baseline):
        found = memo[7]
    else:
        found = weight_gain.confirmed_gain(st.wt, baseline_kg, since, th, sign_of(st, th))
        st.memo["gain"] = (th, sign_of, baseline_kg, since, [list(r) for r in st.wt],
                           [list(r) for r in st.uo],
                           None if urine_baseline is None else list(urine_baseline), found)
    return None if found is None else list(found)
