"""Supportive signs of a leak: they fill the evidence and raise severity, never decide alone.

Leukocytosis: WBC > 12 x10^9/L (SIRS criterion, docs/clinical-criteria.md).
"""

from __future__ import annotations

from detectors.alerts import Evidence
from detectors.config import Thresholds
from detectors.state import known_at


def leukocytosis(readings: list[list[float]], since: int, th: Thresholds) -> Evidence | None:
    """The highest WBC at or after ``since`` when it exceeds the SIRS cut-off."""
    best = None
    for row in readings:
        t, value = row[0], row[1]
        if t >= since and value > th.wbc_high and (best is None or value > best[1]):
            best = row
    if best is None:
        return None
    return Evidence("leukocytosis", best[1], "10^9/L", f"WBC > {th.wbc_high:g}", int(best[0]),
                    None, f"WBC {best[1]:.1f} x10^9/L (> {th.wbc_high:g})", known_at(best))
