"""Confounders from treatment: what the interventions in the state explain away.

docs/clinical-criteria.md, "Confounders from treatment and charting": a transfusion raises the
Hct, albumin raises serum albumin, a vasopressor holds the pressure, fluids put weight on. Each
function here answers one question about one patient at one event time, from the rows that
``detectors.interventions.record`` keeps (``[start, end, amount, rate, tag]``), and never reads a
clock. Numbers come from the thresholds (``detectors.config``).
"""

from __future__ import annotations

from detectors.config import Thresholds
from detectors.state import PatientState, fluid_balance_ml


def red_cell_ml(st: PatientState, after: int, until: int) -> float:
    """mL of red cells started in (after, until]."""
    total = 0.0
    for start, _end, amount, _rate, _tag in st.iv.get("rc", ()):
        if start is not None and after < start <= until and amount:
            total += amount
    return total


def hct_points_from_red_cells(st: PatientState, after: int, until: int, weight_kg: float,
                              th: Thresholds) -> float:
    """Hct points that the red cells started in (after, until] explain: ~3 points per 300 mL
    unit in a 70 kg adult, scaled by 70 kg / weight ([Q] NCCN rule of thumb)."""
    if not st.iv.get("rc"):  # hot path: asked for every Hct draw at every decision
        return 0.0
    ml = red_cell_ml(st, after, until)
    if not ml:
        return 0.0
    scale = th.default_weight_kg / weight_kg if weight_kg > 0 else 1.0
    return ml / th.red_cell_unit_ml * th.hct_rise_per_unit * scale


def albumin_infused_before(st: PatientState, t: int, th: Thresholds) -> bool:
    """True when albumin was infused in the ``albumin_infusion_window_h`` before ``t`` (a high
    serum albumin then says nothing about concentration, nor is it the patient's baseline)."""
    window = th.albumin_infusion_window_ms
    for start, _end, _amount, _rate, _tag in st.iv.get("al", ()):
        if start is not None and t - window <= start <= t:
            return True
    return False


def pressor_rate(st: PatientState, t: int, th: Thresholds) -> float:
    """Norepinephrine-equivalent rate (mcg/kg/min) running at ``t``; a dose with no rate or no
    known end counts as running for ``pressor_open_h`` (1 mcg/kg/min-equivalent when no rate)."""
    total = 0.0
    open_ms = th.pressor_open_ms
    for start, end, _amount, rate, _tag in st.iv.get("vp", ()):
        if start is None:
            continue
        stop = end if end is not None and end > start else start + open_ms
        if start <= t < stop:
            total += rate if rate is not None else 1.0
    return total


def pressure_held_by_pressor(st: PatientState, t: int, th: Thresholds) -> bool:
    """True when a vasopressor runs at ``t`` and is not weaning: its norepinephrine-equivalent
    rate is above ``pressor_weaning_ratio`` of the highest rate of the ``pressor_weaning_h``
    before. A pressure held that way is shock treated, not recovery."""
    now = pressor_rate(st, t, th)
    if now <= 0:
        return False
    window = th.pressor_weaning_ms
    peak = now
    for start, end, _amount, _rate, _tag in st.iv.get("vp", ()):
        for moment in (start, end):
            if moment is not None and t - window <= moment <= t:
                peak = max(peak, pressor_rate(st, int(moment), th))
    return now > th.pressor_weaning_ratio * peak


def first_unheld(st: PatientState, start: int, until: int, th: Thresholds) -> int | None:
    """The first moment in [start, until] at which no vasopressor holds the pressure (it ended,
    was stopped or is weaning), looking at ``start`` and at each change of a pressor row."""
    moments = [start]
    for row in st.iv.get("vp", ()):
        for moment in (row[0], row[1]):
            if moment is not None and start < moment <= until:
                moments.append(int(moment))
        if row[0] is not None and row[1] in (None, row[0]):
            stop = int(row[0]) + th.pressor_open_ms
            if start < stop <= until:
                moments.append(stop)
    for moment in sorted(moments):
        if not pressure_held_by_pressor(st, moment, th):
            return moment
    return None


def gain_explained_by_fluids(st: PatientState, start: int, end: int, gain_kg: float,
                             th: Thresholds) -> float | None:
    """The net fluid balance (L ~ kg) over [start, end] when it explains at least
    ``fluid_balance_explains`` of a weight gain of ``gain_kg``; else None."""
    net = fluid_balance_ml(st, start, end)
    if net is None or gain_kg <= 0:
        return None
    litres = net / 1000.0
    return litres if litres >= th.fluid_balance_explains * gain_kg else None
