"""Hemoconcentration: plasma leaves the vessels, the red cells stay behind.

Criterion (docs/clinical-criteria.md, leak phase): Hct > 45 % (F) / > 50 % (M) / > 45 % when sex is
unknown (upper reference limits, [D]), OR a rise >= 15 % relative to the patient's baseline (from
Druey & Greipp 2010: Hct > 60 from a baseline of 35-40). Peak values in attacks are 60-70 %
(Pineton de Chambrun 2017). Recovery needs the Hct to fall again: [D] 3 points below the peak.

What real ICU data adds (docs/clinical-criteria.md, "Confounders from treatment and charting"):

- **No look-ahead.** The baseline that judges a draw is the median of the stay's baseline
  readings drawn BEFORE it (never a later, falling value), and never older than
  ``baseline_max_age_h``.
- **Transfusion.** Red cells given in the ``transfusion_window_h`` before a draw are subtracted
  (~3 points per unit, scaled by weight) before the absolute cut-off; a relative rise is judged
  against the baseline plus every unit given since the baseline reading.
- **Consistency.** A draw counts only when something confirms it: the hemoglobin of the same
  draw agrees (above its cut-off, Hct / 3, or risen by more than its reference change value over
  its own baseline), or a second draw within the triad window also meets the criterion. And a
  draw that jumped >= ``hct_spike_points`` over a draw taken less than ``hct_spike_window_h``
  before it waits for the next draw (at most ``hct_spike_wait_h``): if that one is as much lower
  the draw was a spike and never counts, whatever its Hb says (the same sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from detectors.alerts import Evidence
from detectors.config import Thresholds
from detectors.confounders import hct_points_from_red_cells
from detectors.state import PatientState, censored_mark, known_at


class Finding(NamedTuple):
    """A draw that meets the criterion, once confirmed."""

    t: int  # draw time
    value: float  # Hct %
    known_at: int  # when the draw and what confirms it had arrived
    baseline: float | None  # the baseline it was judged against (red cells added), if any
    explained: float  # Hct points the red cells of the last 24 h explain
    confirmation: str  # in words: what confirmed it
    censored: str = ""  # "<" / ">": the draw was reported as a bound


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0


def baseline_before(st: PatientState, kind: str, t: int, th: Thresholds,
                    weight_kg: float, red_cell_factor: float = 1.0) -> float | None:
    """The stay's baseline of ``kind`` for a value drawn at ``t``: the median of the baseline
    readings drawn before ``t`` and at most ``baseline_max_age_h`` older, each raised by the red
    cells given between it and ``t`` (``red_cell_factor``: 1 for Hct points, 1/3 for Hb)."""
    oldest = t - th.baseline_max_age_ms
    values = []
    transfused = red_cell_factor and st.iv.get("rc")  # hot path: most stays have no red cells
    for bt, value in st.blr.get(kind, ()):
        if oldest <= bt < t:
            if transfused:
                value += red_cell_factor * hct_points_from_red_cells(st, int(bt), t, weight_kg,
                                                                     th)
            values.append(value)
    return median(values) if values else None


def is_hemoconcentrated(hct_pct: float, baseline_pct: float | None, sex: str | None,
                        th: Thresholds, explained: float = 0.0) -> bool:
    """The criterion on one value: above the sex cut-off once ``explained`` points (recent red
    cells) are taken off, or >= ``hct_rise_relative`` over the (transfusion-adjusted) baseline."""
    if hct_pct - explained > th.hct_high_pct(sex):
        return True
    return baseline_pct is not None and hct_pct >= baseline_pct * (1.0 + th.hct_rise_relative)


def _meets(st: PatientState, t: int, value: float, weight_kg: float, th: Thresholds
           ) -> tuple[bool, float | None, float]:
    explained = hct_points_from_red_cells(st, t - th.transfusion_window_ms, t, weight_kg,
                                          th)
    base = baseline_before(st, "hematocrit", t, th, weight_kg)
    return is_hemoconcentrated(value, base, st.sex, th, explained), base, explained


def _hb_agrees(st: PatientState, t: int, weight_kg: float, th: Thresholds) -> int | None:
    """Availability of a Hb of the same draw that agrees, or None."""
    explained_hb = hct_points_from_red_cells(st, t - th.transfusion_window_ms, t,
                                             weight_kg, th) / 3.0
    for row in st.lab("hemoglobin"):
        if abs(row[0] - t) > th.panel_ms:
            continue
        hb = row[1]
        base = baseline_before(st, "hemoglobin", int(row[0]), th, weight_kg, 1.0 / 3.0)
        if hb - explained_hb > th.hct_high_pct(st.sex) / 3.0 or (
                base is not None and hb >= base * (1.0 + th.hb_agree_rise_relative)):
            return known_at(row)
    return None


def _spike_check(draws: list[list[float]], i: int, horizon: int, th: Thresholds
                 ) -> tuple[bool, int]:
    """(is a spike, when it is known not to be one) for draw ``i`` of ``draws``."""
    t, value = draws[i][0], draws[i][1]
    before = [d for d in draws[:i] if t - d[0] < th.hct_spike_window_ms and d[0] < t]
    if not before or value - before[-1][1] < th.hct_spike_points:
        return False, 0
    wait = th.hct_spike_wait_ms
    after = [d for d in draws[i + 1:] if t < d[0] <= t + wait]
    if after:
        nxt = after[0]
        if value - nxt[1] >= th.hct_spike_points:
            return True, 0
        return False, known_at(nxt)
    if horizon >= t + wait:
        return False, int(t + wait)
    return True, 0  # not known yet: it counts once the next draw (or the wait) says so


def findings(st: PatientState, weight_kg: float, th: Thresholds) -> list[Finding]:
    """The draws [t, %] of the stay that meet the criterion and are confirmed, in time order."""
    draws = st.lab("hematocrit")
    met: list[tuple[int, float, float | None, float, int]] = []
    for i, row in enumerate(draws):
        ok, base, explained = _meets(st, int(row[0]), row[1], weight_kg, th)
        if ok:
            met.append((i, row[1], base, explained, known_at(row)))
    out = []
    near = th.triad_window_ms
    for i, value, base, explained, known in met:
        t = int(draws[i][0])
        spike, checked_at = _spike_check(draws, i, st.max_t, th)
        if spike:
            continue
        routes = []
        hb = _hb_agrees(st, t, weight_kg, th)
        if hb is not None:
            routes.append((hb, "the hemoglobin of the same draw agrees"))
        for j, _v, _b, _e, known_j in met:
            tj = int(draws[j][0])
            if j != i and abs(tj - t) <= near and abs(tj - t) > th.panel_ms:
                routes.append((known_j, f"a second draw ({draws[j][1]:g} %) agrees"))
                break
        if not routes:
            continue
        when, why = min(routes)
        out.append(Finding(t, value, max(known, when, checked_at), base, explained, why,
                           censored_mark(draws[i])))
    return out


def evidence(f: Finding, sex: str | None, th: Thresholds) -> Evidence:
    """The hemoconcentration evidence in clinical words."""
    sex_txt = {"F": "F", "M": "M"}.get(sex or "", "sex unknown")
    cut = th.hct_high_pct(sex)
    parts = [f"> {cut:g} % {sex_txt}"]
    if f.baseline is not None:
        rise = (f.value / f.baseline - 1.0) * 100.0
        parts.append(f"baseline {f.baseline:.1f} %, {rise:+.0f} %")
    if f.explained:
        parts.append(f"{f.explained:.1f} points explained by red cells")
    text = f"Hct {f.value:.3g} % ({'; '.join(parts)}; {f.confirmation})"
    if f.censored:
        text += f", reported as {f.censored}{f.value:g}"
    rise_rule = f" or >= +{th.hct_rise_relative:.0%} of baseline" if f.baseline is not None else ""
    return Evidence("hemoconcentration", f.value, "%", f"Hct > {cut:g} % ({sex_txt}){rise_rule}",
                    f.t, f.baseline, text, f.known_at)


def falling_from_peak(readings: list[list[float]], since: int, th: Thresholds
                      ) -> tuple[list[float], float] | None:
    """The first reading after the episode's Hct peak that lies >= ``hct_fall_points`` below it.

    Returns (reading, peak) or None. Only readings from ``since`` (leak entry minus the triad
    window) count, so the peak is this episode's.
    """
    peak = None
    for r in readings:
        if r[0] < since:
            continue
        if peak is None or r[1] > peak:
            peak = r[1]
        elif peak - r[1] >= th.hct_fall_points:
            return r, peak
    return None
