"""Rapid weight gain: the prodrome's one measurable sign, fluid already leaving the vessels.

Criterion (docs/clinical-criteria.md, prodromal phase): a gain >= 3 % of baseline (or >= 2 kg)
within 48 h while blood pressure is still normal [D]; confirmed by a second weighing [D
persistence], so a single scale error (a pump on the bed, a blanket) never raises it. Fluid
overload in recovery uses the weight >= 5 % over baseline (Druey 2010, Cordemans 2012).
"""

from __future__ import annotations

from collections.abc import Callable

from detectors.alerts import Evidence
from detectors.config import HOUR_MS, Thresholds


def gain_at(weighings: list[list[float]], i: int, baseline_kg: float, th: Thresholds
            ) -> float | None:
    """Gain (kg) of weighing ``i`` over the lightest weighing of the 48 h before it, when it
    meets the criterion; otherwise None."""
    t, kg = weighings[i]
    window_start = t - th.weight_gain_window_h * HOUR_MS
    lightest = None
    for tj, kj in weighings[:i]:
        if tj >= window_start and (lightest is None or kj < lightest):
            lightest = kj
    if lightest is None:
        return None
    gain = kg - lightest
    if gain >= th.weight_gain_kg or gain >= baseline_kg * th.weight_gain_pct / 100.0:
        return gain
    return None


def confirmed_gain(weighings: list[list[float]], baseline_kg: float, since: int,
                   th: Thresholds,
                   supporting_sign: Callable[[int], Evidence | None] | None = None
                   ) -> list[Evidence] | None:
    """Evidence at the weighing that confirms a rapid gain, looking only at weighings from
    ``since``: the ``weight_confirm_readings``-th consecutive weighing meeting the criterion, or
    the first one when ``supporting_sign(t)`` finds a prodromal sign at its time (Wu 2019: the
    prodrome comes with a very low urine output). With 12-hourly weighings a second weighing
    alone often comes after the leak has begun."""
    streak = 0
    for i, (t, kg) in enumerate(weighings):
        gain = gain_at(weighings, i, baseline_kg, th)
        if gain is None:
            streak = 0
            continue
        streak += 1
        if t < since:
            continue
        sign = None
        if streak < th.weight_confirm_readings:
            sign = supporting_sign(int(t)) if supporting_sign is not None else None
            if sign is None:
                continue
        found = Evidence("rapid_weight_gain", kg, "kg",
                         f"gain >= {th.weight_gain_pct:g} % of baseline or >= "
                         f"{th.weight_gain_kg:g} kg within {th.weight_gain_window_h:g} h "
                         f"(+{gain:.1f} kg)", int(t), baseline_kg)
        return [found, sign] if sign is not None else [found]
    return None


def over_baseline_pct(kg: float, baseline_kg: float) -> float:
    return (kg - baseline_kg) / baseline_kg * 100.0
