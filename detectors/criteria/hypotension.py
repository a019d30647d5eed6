"""Hypotension, and its opposite for recovery: blood pressure folded into 5-minute slots.

Criterion (docs/clinical-criteria.md, leak phase): SBP <= 90 mmHg, or a fall >= 40 mmHg from
baseline (Karsen 2017), or MAP < 65 mmHg (Sepsis-3), held >= 10 minutes over several readings [D]
so that one reading never raises it. Recovery needs "SBP > 100 held" [D].

Readings are tallied per event-time slot (counts are order-free, so late and shuffled vitals give
the same slots). A slot is *low* when most SBP or most MAP readings in it are low: a lone artefact
among good readings changes nothing. Consecutive low slots, allowing gaps of EMPTY slots up to
``hypotension_gap_min`` (90 min: hourly charting is bridged, a normal reading in between still
ends the run), form a *run*; a run is *persistent* once it holds >= 3 low readings at distinct
times (an SBP and a MAP of one cuff cycle are one reading) spanning >= 10 minutes. So a 1-minute
monitor needs 10 minutes of low pressure and hourly charting three low chartings in a row. Slots
older than the late horizon fold into closed runs, so the state stays bounded while a shock that
lasts days is still one run.

Each slot and run also keeps the latest AVAILABILITY of its readings, so that the moment a run
became persistent carries the time its readings were known (an alert is never raised before
its evidence existed).
"""

from __future__ import annotations

from detectors.config import MIN_MS, Thresholds

# slot fields (CLS: the slot's class as of its last reading, cached for the hot path; LOW_AV /
# HIGH_AV: latest availability of its low / recovered readings)
(SBP_N, SBP_LOW, SBP_HIGH, MAP_N, MAP_LOW, MIN_SBP, MIN_MAP, FIRST_LOW_T, LAST_LOW_T, CLS,
 LOW_AV, HIGH_AV) = range(12)
LOW, MID, HIGH = 0, 1, 2
#: low run record: [first_low_t, last_low_t, start_slot, end_slot, n_low, min_sbp, min_map, q_t,
#: n_sbp_low, n_map_low, available, q_available] (q_t = event time the run became persistent, 0
#: while it has not; n_low counts readings at distinct times); high run: [start_slot, end_slot,
#: q_t, available, q_available]
(R_FIRST, R_LAST, R_START, R_END, R_N, R_MIN_SBP, R_MIN_MAP, R_Q, R_NS, R_NM, R_AV,
 R_QA) = range(12)
H_START, H_END, H_Q, H_AV, H_QA = range(5)
_NO_VALUE = 999.0


def new_slot() -> list[float]:
    return [0, 0, 0, 0, 0, _NO_VALUE, _NO_VALUE, 0, 0, -1, 0, 0]


def add_reading(slot: list[float], kind: str, value: float, t: int, sbp_baseline: float | None,
                th: Thresholds, available: int = 0) -> tuple[int, int]:
    """Tally one SBP or MAP reading into its slot; return its class (before, after).
    ``available``: when the reading became known (0 = at ``t``)."""
    before = int(slot[CLS])
    if kind == "sbp":
        after = tally(slot, SBP_N, value, t, sbp_low(value, sbp_baseline, th),
                      value > th.recovery_sbp_mmhg, available)
    else:
        after = tally(slot, MAP_N, value, t, value < th.map_low_mmhg, False, available)
    return before, after


def sbp_low(value: float, sbp_baseline: float | None, th: Thresholds) -> bool:
    """An SBP reading is low at <= 90 mmHg, or >= 40 mmHg below the patient's baseline."""
    return value <= th.sbp_low_mmhg or (
        sbp_baseline is not None and sbp_baseline - value >= th.sbp_fall_mmhg)


def tally(slot: list[float], measure: int, value: float, t: int, low: bool, high: bool,
          available: int) -> int:
    """``add_reading`` once the reading is classified (the engine's hot path calls it
    directly): ``measure`` is ``SBP_N`` or ``MAP_N``, ``low`` whether the reading is low,
    ``high`` whether an SBP is above the recovery cut-off (counted only when not low).
    Returns the slot's new class (``slot[CLS]``, cached for the next reading)."""
    slot[measure] += 1
    lowest = MIN_SBP if measure == SBP_N else MIN_MAP
    if value < slot[lowest]:
        slot[lowest] = value
    if low:
        slot[measure + 1] += 1  # SBP_LOW or MAP_LOW
        first = slot[FIRST_LOW_T]
        if not first or t < first:
            slot[FIRST_LOW_T] = t
        if t > slot[LAST_LOW_T]:
            slot[LAST_LOW_T] = t
        known = available if available > t else t
        if known > slot[LOW_AV]:
            slot[LOW_AV] = known
    elif high:
        slot[SBP_HIGH] += 1
        known = available if available > t else t
        if known > slot[HIGH_AV]:
            slot[HIGH_AV] = known
    # slot_class, inline (one call less per reading)
    if 2 * slot[SBP_LOW] > slot[SBP_N] or 2 * slot[MAP_LOW] > slot[MAP_N]:
        after = LOW
    elif 2 * slot[SBP_HIGH] > slot[SBP_N]:
        after = HIGH
    else:
        after = MID
    slot[CLS] = after
    return after


def slot_class(slot: list[float]) -> int:
    """LOW when most SBP or most MAP readings are low; HIGH when most SBP are > 100 (recovered).
    (No reading of a measure: its count of low readings is 0 too, so it is not "most".)"""
    if 2 * slot[SBP_LOW] > slot[SBP_N] or 2 * slot[MAP_LOW] > slot[MAP_N]:
        return LOW
    if 2 * slot[SBP_HIGH] > slot[SBP_N]:
        return HIGH
    return MID


def fold(low_runs: list[list[float]], high_runs: list[list[float]], prev: list[int],
         s: int, slot: list[float], th: Thresholds) -> list[int]:
    """Fold slot ``s`` (slots come in increasing order) into the run lists; return the new
    ``prev`` marker ``[slot, class]``. Pure on its arguments' contents: callers pass copies when
    they only want to look.

    Times (ms) and counts are written into the runs as ``int``: the rows are ``list[float]``,
    and the engine compiled by mypyc reads an item of such a list as a C double, so without
    ``int`` a run would hold ``1790306000000.0`` where the interpreted engine holds
    ``1790306000000``, and the serialised state would differ between the two engines."""
    cls = slot_class(slot)
    if cls == MID:  # neither low nor recovered: ends the runs before it, starts none
        return [s, cls]
    slot_ms = th.bp_slot_ms
    continues = bool(prev) and prev[1] == cls and (s - prev[0] - 1) * slot_ms <= th.bp_gap_ms
    if cls == LOW:
        n_sbp, n_map = int(slot[SBP_LOW]), int(slot[MAP_LOW])
        n_low = n_sbp if n_sbp > n_map else n_map  # an SBP and its MAP are one reading
        if continues and low_runs:
            run = low_runs[-1]
            run[R_LAST] = int(max(run[R_LAST], slot[LAST_LOW_T]))
            run[R_END] = s
            run[R_N] += n_low
            run[R_MIN_SBP] = min(run[R_MIN_SBP], slot[MIN_SBP])
            run[R_MIN_MAP] = min(run[R_MIN_MAP], slot[MIN_MAP])
            run[R_NS] += n_sbp
            run[R_NM] += n_map
            run[R_AV] = int(max(run[R_AV], slot[LOW_AV]))
        else:
            run = [int(slot[FIRST_LOW_T]), int(slot[LAST_LOW_T]), s, s, n_low, slot[MIN_SBP],
                   slot[MIN_MAP], 0, n_sbp, n_map, int(slot[LOW_AV]), 0]
            low_runs.append(run)
        hold_ms = th.hypotension_hold_min * MIN_MS
        if (not run[R_Q] and run[R_N] >= th.hypotension_min_readings
                and run[R_LAST] - run[R_FIRST] >= hold_ms):
            run[R_Q] = int(max(run[R_FIRST] + hold_ms, slot[FIRST_LOW_T]))
            run[R_QA] = int(max(run[R_AV], run[R_Q]))
    elif cls == HIGH:
        if continues and high_runs:
            run = high_runs[-1]
            run[H_END] = s
            if slot[HIGH_AV] > run[H_AV]:
                run[H_AV] = int(slot[HIGH_AV])
        else:
            run = [s, s, 0, int(slot[HIGH_AV]), 0]
            high_runs.append(run)
        if not run[H_Q]:  # not yet held long enough: is it now?
            hold_ms = th.recovery_hold_min * MIN_MS
            if (run[H_END] + 1 - run[H_START]) * slot_ms >= hold_ms:
                run[H_Q] = int(run[H_START] * slot_ms + hold_ms)
                run[H_QA] = int(max(run[H_AV], run[H_Q]))
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


def run_nadir(run: list[float], th: Thresholds) -> tuple[str, float]:
    """The run's worst value as evidence: ("SBP", nadir) when most of its low readings were SBP
    readings (or no MAP was low), else ("MAP", nadir): the measure that made it hypotensive."""
    if run[R_MIN_SBP] < _NO_VALUE and (run[R_NS] >= run[R_NM] or run[R_MIN_MAP] >= _NO_VALUE):
        return "SBP", run[R_MIN_SBP]
    return "MAP", run[R_MIN_MAP]
