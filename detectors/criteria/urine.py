"""Urine flow in mL/kg/h over a window: oliguria in the leak, polyuria in recovery.

Criteria (docs/clinical-criteria.md): oliguria < 0.5 mL/kg/h for 6 h (KDIGO 2012 stage 1); polyuria
> 2.1 mL/kg/h sustained >= 3 h (StatPearls). Collections ``[start, end, mL]`` are pro-rated into
the window; a window less than 90 % covered by collections [D] gives no answer rather than a rate
computed from missing data (a missing hour of charting is not anuria; ``urine_min_coverage``).
"""

from __future__ import annotations

from collections.abc import Callable

from detectors.config import HOUR_MS
from detectors.state import known_at

#: [D] default share of a window that collections must cover (Thresholds.urine_min_coverage)
MIN_COVERAGE = 0.9


def rate_ml_per_kg_h(collections: list[list[float]], end: int, hours: float, weight_kg: float,
                     min_coverage: float = MIN_COVERAGE) -> float | None:
    """Mean urine flow over (end - hours, end], or None when under-covered."""
    start = end - hours * HOUR_MS
    covered = 0.0
    ml = 0.0
    for row in collections:
        c_start, c_end, c_ml = row[0], row[1], row[2]
        lo = max(c_start, start)
        hi = min(c_end, end)
        if hi <= lo or c_end <= c_start:
            continue
        share = (hi - lo) / (c_end - c_start)
        covered += hi - lo
        ml += c_ml * share
    if covered < min_coverage * (end - start):
        return None
    return ml / weight_kg / (covered / HOUR_MS)


def window_known_at(collections: list[list[float]], end: int, hours: float) -> int:
    """When every collection that ``rate_ml_per_kg_h`` pro-rates into (end - hours, end] was
    known (reported: its end plus its reporting delay), and never before ``end``: a flow is
    evidence only once the urine it is computed from was charted."""
    start = end - hours * HOUR_MS
    known = end
    for row in collections:
        if min(row[1], end) > max(row[0], start) and row[1] > row[0]:
            known = max(known, known_at(row, 1))
    return known


def first_flow(collections: list[list[float]], since: int, hours: float, weight_kg: float,
               beyond: Callable[[float], bool], min_coverage: float = MIN_COVERAGE
               ) -> tuple[int, float, int] | None:
    """The first collection end from ``since`` at which the flow over the last ``hours`` meets
    ``beyond`` (e.g. above the polyuria cut-off): (end, mL/kg/h, available), or None."""
    known = 0
    for row in collections:
        end = row[1]
        known = max(known, known_at(row, 1))
        if end < since:
            continue
        rate = rate_ml_per_kg_h(collections, int(end), hours, weight_kg, min_coverage)
        if rate is not None and beyond(rate):
            return int(end), rate, max(known, int(end))
    return None
