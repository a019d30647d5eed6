"""Hypoalbuminemia: albumin leaks with the plasma (the third element of the triad).

Criterion (docs/clinical-criteria.md, leak phase; Karsen 2017): albumin < 3.0 g/dL, or a fall >= 0.5
g/dL from baseline. It raises a leak alert's severity from high to critical.
"""

from __future__ import annotations

from detectors.alerts import Evidence
from detectors.config import Thresholds


def is_low(albumin_gdl: float, baseline_gdl: float | None, th: Thresholds) -> bool:
    if albumin_gdl < th.albumin_low_gdl:
        return True
    return baseline_gdl is not None and baseline_gdl - albumin_gdl >= th.albumin_fall_gdl


def first_low_since(readings: list[list[float]], since: int, baseline_gdl: float | None,
                    th: Thresholds) -> Evidence | None:
    """The first low albumin reading at or after ``since`` (event time), as evidence."""
    for t, value in readings:
        if t >= since and is_low(value, baseline_gdl, th):
            return Evidence("hypoalbuminemia", value, "g/dL",
                            f"albumin < {th.albumin_low_gdl:g} g/dL or fall >= "
                            f"{th.albumin_fall_gdl:g} g/dL", int(t), baseline_gdl)
    return None
