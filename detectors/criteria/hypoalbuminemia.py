"""Hypoalbuminemia: albumin leaks with the plasma (the third element of the triad).

Criterion (docs/clinical-criteria.md, leak phase; Karsen 2017): albumin < 3.0 g/dL, or a fall >= 0.5
g/dL from baseline. In the ICU an albumin below 3.0 is the norm (MIMIC-III demo median 2.9-3.0
g/dL), so it escalates a leak alert from high to critical only when it MEANS something: a fall
>= ``albumin_fall_gdl`` from the stay's baseline (the median of the stay's first albumins drawn
before it, no look-ahead), or a severe hypoalbuminemia below ``albumin_critical_gdl`` drawn with
the rest of the triad.
"""

from __future__ import annotations

from detectors.alerts import Evidence
from detectors.config import Thresholds


def is_low(albumin_gdl: float, baseline_gdl: float | None, th: Thresholds) -> bool:
    """Hypoalbuminemia by the case definition (< 3.0 g/dL or a fall >= 0.5 g/dL)."""
    if albumin_gdl < th.albumin_low_gdl:
        return True
    return baseline_gdl is not None and baseline_gdl - albumin_gdl >= th.albumin_fall_gdl


def escalates(albumin_gdl: float, baseline_gdl: float | None, th: Thresholds) -> bool:
    """Hypoalbuminemia that escalates a leak to critical: fell >= ``albumin_fall_gdl`` from the
    stay's baseline, or lies below ``albumin_critical_gdl``."""
    if albumin_gdl < th.albumin_critical_gdl:
        return True
    return baseline_gdl is not None and baseline_gdl - albumin_gdl >= th.albumin_fall_gdl


def evidence(t: int, value: float, baseline: float | None, available: int, th: Thresholds,
             censored: str = "") -> Evidence:
    parts = []
    if baseline is not None:
        parts.append(f"baseline {baseline:.1f}, fall {baseline - value:.1f}")
    if value < th.albumin_critical_gdl:
        parts.append(f"< {th.albumin_critical_gdl:g}")
    bound = f"reported {censored}{value:g}, " if censored else ""
    text = f"albumin {value:.1f} g/dL ({bound}{'; '.join(parts)})" if parts else \
        f"albumin {value:.1f} g/dL"
    return Evidence("hypoalbuminemia", value, "g/dL",
                    f"fall >= {th.albumin_fall_gdl:g} g/dL from the stay's baseline, or < "
                    f"{th.albumin_critical_gdl:g} g/dL with the triad", t, baseline, text,
                    available)
