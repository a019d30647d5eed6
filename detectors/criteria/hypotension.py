"""Hypotension, and its opposite for recovery: blood pressure folded into 5-minute slots.

Criterion (docs/clinical-criteria.md, leak phase): SBP <= 90 mmHg, or a fall >= 40 mmHg from
baseline (Karsen 2017), or MAP < 65 mmHg (Sepsis-3), held >= 10 minutes over several readings [D]
so that one reading never raises it. Recovery needs "SBP > 100 held" [D].

Readings are tallied per event-time slot (counts are order-free, so late and shuffled vitals give
the same slots). A slot is *low* when most SBP or most MAP readings in it are low: a lone artefact
among good readings changes nothing. Consecutive low slots, allowing gaps of empty slots as long
as a cuff cycle (30 min), form a *run*; a run is *persistent* once it holds >= 3 low readings
spanning >= 10 minutes. Slots older than the late horizon fold into closed runs, so the state stays
bounded while a shock that lasts days is still one run.
"""

from __future__ import annotations

from detectors.config import MIN_MS, Thresholds

# slot fields (CLS: the slot's class as of its last reading, cached for the hot path)
SBP_N, SBP_LOW, SBP_HIGH, MAP_N, MAP_LOW, MIN_SBP, MIN_MAP, FIRST_LOW_T, LAST_LOW_T, CLS = range(10)
LOW, MID, HIGH = 0, 1, 2
#: [D] a gap of empty slots up to one NIBP cycle (15-30 min in an unstable patient) keeps a run
GAP_TOLERANCE_MS = 30 * MIN_MS
#: low run record: [first_low_t, last_low_t, start_slot, end_slot, n_low, min_sbp, min_map, q_t]
#: (q_t = event time the run became persistent, 0 while it has not); high run: [start, end, q_t]
R_FIRST, R_LAST, R_START, R_END, R_N, R_MIN_SBP, R_MIN_MAP, R_Q = range(8)
_NO_VALUE = 999.0


def new_slot() -> list[float]:
    return [0, 0, 0, 0, 0, _NO_VALUE, _NO_VALUE, 0, 0, -1]


def add_reading(slot: list[float], kind: str, value: float, t: int, sbp_baseline: float | None,
                th: Thresholds) -> tuple[int, int]:
    """Tally one SBP or MAP reading into its slot; return its class (before, after)."""
    if kind == "sbp":
        low = value <= th.sbp_low_mmhg or (
            sbp_baseline is not None and sbp_baseline - value >= th.sbp_fall_mmhg)
        slot[SBP_N] += 1
        if low:
            slot[SBP_LOW] += 1
        elif value > th.recovery_sbp_mmhg:
            slot[SBP_HIGH] += 1
        if value < slot[MIN_SBP]:
            slot[MIN_SBP] = value
    else:
        low = value < th.map_low_mmhg
        slot[MAP_N] += 1
        if low:
            slot[MAP_LOW] += 1
        if value < slot[MIN_MAP]:
            slot[MIN_MAP] = value
    if low:
        if not slot[FIRST_LOW_T] or t < slot[FIRST_LOW_T]:
            slot[FIRST_LOW_T] = t
        if t > slot[LAST_LOW_T]:
            slot[LAST_LOW_T] = t
    before = int(slot[CLS])
    after = slot_class(slot)
    slot[CLS] = after
    return before, after


def slot_class(slot: list[float]) -> int:
    """LOW when most SBP or most MAP readings are low; HIGH when most SBP are > 100 (recovered)."""
    if (slot[SBP_N] and 2 * slot[SBP_LOW] > slot[SBP_N]) or (
            slot[MAP_N] and 2 * slot[MAP_LOW] > slot[MAP_N]):
        return LOW
    if slot[SBP_N] and 2 * slot[SBP_HIGH] > slot[SBP_N]:
        return HIGH
    return MID


def fold(low_runs: list[list[float]], high_runs: list[list[float]], prev: list[int],
         s: int, slot: list[float], th: Thresholds) -> list[int]:
    """Fold slot ``s`` (slots come in increasing order) into the run lists; return the new
    ``prev`` marker ``[slot, class]``. Pure on its arguments' contents: callers pass copies when
    they only want to look."""
    cls = slot_class(slot)
    slot_ms = th.bp_slot_ms
    continues = bool(prev) and prev[1] == cls and (s - prev[0]) * slot_ms <= GAP_TOLERANCE_MS
    if cls == LOW:
        n_low = slot[SBP_LOW] + slot[MAP_LOW]
        if continues and low_runs:
            run = low_runs[-1]
            run[R_LAST] = max(run[R_LAST], slot[LAST_LOW_T])
            run[R_END] = s
            run[R_N] += n_low
            run[R_MIN_SBP] = min(run[R_MIN_SBP], slot[MIN_SBP])
            run[R_MIN_MAP] = min(run[R_MIN_MAP], slot[MIN_MAP])
        else:
            run = [slot[FIRST_LOW_T], slot[LAST_LOW_T], s, s, n_low, slot[MIN_SBP],
                   slot[MIN_MAP], 0]
            low_runs.append(run)
        hold_ms = th.hypotension_hold_min * MIN_MS
        if (not run[R_Q] and run[R_N] >= th.hypotension_min_readings
                and run[R_LAST] - run[R_FIRST] >= hold_ms):
            run[R_Q] = int(max(run[R_FIRST] + hold_ms, slot[FIRST_LOW_T]))
    elif cls == HIGH:
        if continues and high_runs:
            run = high_runs[-1]
            run[1] = s
        else:
            run = [s, s, 0]
            high_runs.append(run)
        hold_ms = th.recovery_hold_min * MIN_MS
        if not run[2] and (run[1] + 1 - run[0]) * slot_ms >= hold_ms:
            run[2] = int(run[0] * slot_ms + hold_ms)
    return [s, cls]


def runs(slots: dict[int, list[float]], closed_low: list[list[float]],
         closed_high: list[list[float]], prev: list[int], th: Thresholds
         ) -> tuple[list[list[float]], list[list[float]]]:
    """All low and high runs: the closed ones continued by the live slots (copies)."""
    low = [list(r) for r in closed_low]
    high = [list(r) for r in closed_high]
    marker = list(prev)
    for s in sorted(slots):
        marker = fold(low, high, marker, s, slots[s], th)
    return low, high


def persistent(low_runs: list[list[float]]) -> list[list[float]]:
    """The low runs that held long enough to count as hypotension."""
    return [r for r in low_runs if r[R_Q]]


def run_nadir_text(run: list[float]) -> tuple[float, str]:
    """The run's worst value as evidence: SBP nadir if any SBP was read, else MAP nadir."""
    if run[R_MIN_SBP] < _NO_VALUE:
        return run[R_MIN_SBP], "sbp"
    return run[R_MIN_MAP], "map"
