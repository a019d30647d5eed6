"""Urine-flow rules (issue 13), pinned at their thresholds: the prodrome's falling urine output
(a single heavy weighing confirmed by urine below 60 % of the admission flow), oliguria in the
leak and polyuria in recovery (``detectors.criteria.urine.first_flow`` through
``detectors.phases``), and the coverage a window needs before it gives a rate.

Cut-offs, windows and the coverage come from the thresholds object, so a deliberate change of
them moves the tests with it, while a broken comparison, unit or window turns them red.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from builders import HOUR, T0, feed, leak_with_signs, obs, phases, recovery_course

from detectors.alerts import Evidence
from detectors.config import DEFAULT_THRESHOLDS as TH
from detectors.criteria import urine

#: admission urine flow (mL/h) and the number of hourly collections that make it
ADMISSION_ML_H = 100.0
ADMISSION_COLLECTIONS = TH.prodrome_urine_baseline_collections


def hourly_urine(ml_per_h, end_hours, **extra):
    """Hourly urine collections of ``ml_per_h`` ending at each of ``end_hours`` (hours after T0)."""
    return [obs("urine_output", ml_per_h, T0 + int(h * HOUR), "mL", period_min=60, **extra)
            for h in end_hours]


# --- prodrome: falling urine output confirms a single heavy weighing ----------------------------

#: the heavy weighing: after the admission flow's 24 h window and the 6 h urine window
WEIGHED_H = TH.baseline_labs_h + TH.prodrome_urine_hours + 2
GAIN_KG = max(TH.weight_gain_kg, 70.0 * TH.weight_gain_pct / 100.0) + 0.5


def _single_heavy_weighing(flow_ml_h, charted_h=None, admission=ADMISSION_COLLECTIONS, th=TH,
                           urine_extra=None):
    """70 kg at T0, ``admission`` hourly collections of 100 mL from T0, hourly urine of
    ``flow_ml_h`` over the last ``charted_h`` hours (default: the whole prodrome window) before
    one weighing of 70 kg + a rapid gain at ``WEIGHED_H``; no second weighing."""
    assert WEIGHED_H <= TH.weight_gain_window_h  # the gain is within its window
    hours = th.prodrome_urine_hours if charted_h is None else charted_h
    rows = hourly_urine(ADMISSION_ML_H, range(1, admission + 1))
    rows += hourly_urine(flow_ml_h, [WEIGHED_H - k for k in range(int(hours))],
                         **(urine_extra or {}))
    # the collection that ends at the weighing is charted before it (in the other order: see
    # test_urine_charted_after_the_heavy_weighing_confirms_it_as_in_order)
    rows += [obs("weight", 70.0, T0, "kg"), obs("weight", 70.0 + GAIN_KG,
                                                T0 + int(WEIGHED_H * HOUR), "kg")]
    return feed(rows, th=th)


def _falling(flow_ml_h):
    return Evidence(
        "falling_urine_output", flow_ml_h, "mL/h",
        f"< {TH.prodrome_urine_fall_ratio:.0%} of the admission flow over "
        f"{TH.prodrome_urine_hours:g} h", T0 + int(WEIGHED_H * HOUR), ADMISSION_ML_H,
        f"urine {flow_ml_h:.0f} mL/h over {TH.prodrome_urine_hours:g} h (< "
        f"{TH.prodrome_urine_fall_ratio:.0%} of the admission flow {ADMISSION_ML_H:.0f} mL/h)")


def test_urine_below_60_percent_of_the_admission_flow_confirms_a_single_heavy_weighing():
    flow = ADMISSION_ML_H * TH.prodrome_urine_fall_ratio - 1.0
    alerts, _, _ = _single_heavy_weighing(flow)
    assert phases(alerts) == ["prodromal/warning"]
    gain, falling = alerts[0].evidence
    assert gain.criterion == "rapid_weight_gain"
    assert falling == _falling(flow)
    assert alerts[0].onset_at_ms == T0 + WEIGHED_H * HOUR


def test_urine_at_60_percent_of_the_admission_flow_does_not_confirm_it():
    alerts, _, _ = _single_heavy_weighing(ADMISSION_ML_H * TH.prodrome_urine_fall_ratio)
    assert alerts == []


def test_a_single_heavy_weighing_with_normal_urine_is_not_a_prodrome():
    alerts, _, _ = _single_heavy_weighing(ADMISSION_ML_H)
    assert alerts == []


def test_without_an_admission_flow_falling_urine_confirms_nothing():
    alerts, _, _ = _single_heavy_weighing(0.0, admission=0)
    assert alerts == []


def test_the_urine_window_needs_the_configured_coverage():
    """5 of 6 hours charted (83 %) is no rate at the default 90 %, a rate at 80 %."""
    hours = TH.prodrome_urine_hours - 1
    share = hours / TH.prodrome_urine_hours
    assert share < TH.urine_min_coverage
    flow = ADMISSION_ML_H * TH.prodrome_urine_fall_ratio - 1.0
    alerts, _, _ = _single_heavy_weighing(flow, charted_h=hours)
    assert alerts == []
    lenient = replace(TH, urine_min_coverage=share - 0.01)
    alerts, _, _ = _single_heavy_weighing(flow, charted_h=hours, th=lenient)
    assert phases(alerts) == ["prodromal/warning"]


def test_three_admission_collections_make_the_admission_flow():
    flow = ADMISSION_ML_H * TH.prodrome_urine_fall_ratio - 1.0
    alerts, _, _ = _single_heavy_weighing(flow, admission=ADMISSION_COLLECTIONS)
    assert phases(alerts) == ["prodromal/warning"]
    alerts, _, _ = _single_heavy_weighing(flow, admission=ADMISSION_COLLECTIONS - 1)
    assert alerts == []


def test_urine_charted_after_the_heavy_weighing_confirms_it_as_in_order():
    flow = ADMISSION_ML_H * TH.prodrome_urine_fall_ratio - 1.0
    weighed = T0 + int(WEIGHED_H * HOUR)
    rows = [obs("weight", 70.0, T0, "kg")] + hourly_urine(ADMISSION_ML_H, range(1, 4))
    rows += [obs("weight", 70.0 + GAIN_KG, weighed, "kg")]  # arrives before the urine
    rows += hourly_urine(flow, [WEIGHED_H - k for k in range(int(TH.prodrome_urine_hours))])
    alerts, _, _ = feed(rows, ordered=True)
    assert phases(alerts) == ["prodromal/warning"]


def test_a_prodrome_is_not_raised_before_the_urine_that_confirms_it_was_reported():
    flow = ADMISSION_ML_H * TH.prodrome_urine_fall_ratio - 1.0
    weighed = T0 + int(WEIGHED_H * HOUR)
    reported = weighed + 2 * HOUR
    rows = [obs("weight", 70.0, T0, "kg")] + hourly_urine(ADMISSION_ML_H, range(1, 4))
    rows += [obs("weight", 70.0 + GAIN_KG, weighed, "kg")]
    rows += hourly_urine(flow, [WEIGHED_H - k for k in range(int(TH.prodrome_urine_hours))],
                         available_at=reported)
    rows += [obs("heart_rate", 80, reported + HOUR, "/min"),
             obs("albumin", 3.8, reported + HOUR, "g/dL")]  # a later lab: the decision
    alerts, _, _ = feed(rows, ordered=True)
    assert phases(alerts) == ["prodromal/warning"]
    assert alerts[0].raised_at_ms >= reported


# --- the first collection end at which a window's flow is beyond a cut-off ----------------------

KG = TH.default_weight_kg
POLYURIA_ML_H = TH.polyuria_ml_per_kg_h * KG


def collections(ml_per_h, end_hours, delays_min=None):
    """Hourly collections [start, end, mL, reporting delay in min] ending at ``end_hours``."""
    delays = delays_min or {}
    return [[T0 + (h - 1) * HOUR, T0 + h * HOUR, ml_per_h, delays.get(h, 0)] for h in end_hours]


def polyuric(rows, since):
    return urine.first_flow(rows, since, TH.polyuria_hours, KG,
                            lambda r: r > TH.polyuria_ml_per_kg_h, TH.urine_min_coverage)


#: a coverage that a window missing one of its hours still meets
LENIENT = (TH.polyuria_hours - 1) / TH.polyuria_hours - 0.01


@pytest.mark.parametrize("coverage", [TH.urine_min_coverage, LENIENT], ids=["default", "lenient"])
def test_a_flow_is_found_only_once_its_window_is_covered_as_asked(coverage):
    """Collections from T0: a window is under-covered until ``coverage`` of it is charted."""
    rows = collections(2 * POLYURIA_ML_H, range(1, 11))
    covered_h = next(h for h in range(1, 11) if h >= coverage * TH.polyuria_hours)
    end, rate, known = urine.first_flow(rows, T0, TH.polyuria_hours, KG,
                                        lambda r: r > TH.polyuria_ml_per_kg_h, coverage)
    assert end == T0 + covered_h * HOUR
    assert rate == pytest.approx(2 * TH.polyuria_ml_per_kg_h)
    assert known == end


def test_a_collection_that_ends_at_the_start_of_the_search_counts_earlier_ones_fill_its_window():
    rows = collections(2 * POLYURIA_ML_H, range(1, 11))
    assert polyuric(rows, T0 + 5 * HOUR)[0] == T0 + 5 * HOUR
    assert polyuric(rows, T0 + 5 * HOUR + 1)[0] == T0 + 6 * HOUR


def test_the_flow_is_known_when_every_collection_up_to_it_was_reported():
    """A collection reported late delays the finding, even one ending before the search start."""
    rows = collections(2 * POLYURIA_ML_H, range(1, 11), delays_min={3: 240})
    end, _, known = polyuric(rows, T0 + 5 * HOUR)
    assert (end, known) == (T0 + 5 * HOUR, T0 + 7 * HOUR)
    end, _, known = polyuric(rows, T0 + 8 * HOUR)
    assert (end, known) == (T0 + 8 * HOUR, T0 + 8 * HOUR)


def test_a_window_covered_exactly_at_the_minimum_gives_a_rate_a_millisecond_less_does_not():
    end = T0 + 10 * HOUR
    needed = int(TH.urine_min_coverage * TH.oliguria_hours * HOUR)
    assert needed == TH.urine_min_coverage * TH.oliguria_hours * HOUR  # whole milliseconds
    ml = 100.0
    rate = urine.rate_ml_per_kg_h([[end - needed, end, ml]], end, TH.oliguria_hours, KG,
                                  TH.urine_min_coverage)
    assert rate == pytest.approx(ml / KG / (needed / HOUR))
    assert urine.rate_ml_per_kg_h([[end - needed + 1, end, ml]], end, TH.oliguria_hours, KG,
                                  TH.urine_min_coverage) is None


def test_no_window_beyond_the_cut_off_is_no_finding():
    assert polyuric(collections(POLYURIA_ML_H, range(1, 11)), T0) is None


# --- oliguria in the leak, polyuria in recovery -------------------------------------------------

def test_a_flow_of_exactly_the_polyuria_cut_off_is_not_polyuria():
    """70 kg (the default weight): 2.1 mL/kg/h exactly is not "> 2.1"."""
    alerts, _, _ = recovery_course(urine_ml_h=POLYURIA_ML_H)
    assert phases(alerts) == ["leak/high", "recovery/warning"]
    assert "polyuria" not in [e.criterion for e in alerts[1].evidence]
    alerts, _, _ = recovery_course(urine_ml_h=POLYURIA_ML_H + 1.0)
    assert [e.criterion for e in alerts[1].evidence][-1] == "polyuria"


def test_the_oliguria_evidence_reads_in_clinical_words():
    alerts, _, _ = leak_with_signs()
    oliguria = alerts[-1].evidence[-1]
    assert oliguria.criterion == "oliguria"
    assert oliguria.text == (f"urine {20 / KG:.2f} mL/kg/h over {TH.oliguria_hours:g} h "
                             f"(< {TH.oliguria_ml_per_kg_h:g})")
    assert oliguria.baseline is None


def test_the_oliguria_window_needs_the_configured_coverage():
    """Hourly urine from 21 h: 6 h of oliguria are complete at 27 h; with a coverage that 5 of
    the 6 hours meet, at 26 h."""
    alerts, _, _ = leak_with_signs()
    assert alerts[-1].onset_at_ms == T0 + 27 * HOUR
    lenient = replace(TH, urine_min_coverage=(TH.oliguria_hours - 1) / TH.oliguria_hours - 0.01)
    alerts, _, _ = leak_with_signs(th=lenient)
    assert phases(alerts) == ["leak/high", "leak/critical"]
    assert alerts[-1].onset_at_ms == T0 + 26 * HOUR


def test_a_leak_is_not_escalated_by_oliguria_before_the_urine_was_reported():
    """Each collection reported 2 h after it ended: the 6 h of oliguria complete at 27 h are
    known at 29 h, and so is the critical alert they complete."""
    late = 2 * HOUR
    alerts, _, _ = leak_with_signs(urine_reported_after_ms=late)
    assert phases(alerts) == ["leak/high", "leak/critical"]
    critical = alerts[-1]
    oliguria = critical.evidence[-1]
    assert oliguria.observed_at_ms == T0 + 27 * HOUR
    assert oliguria.available_at_ms == T0 + 27 * HOUR + late
    assert critical.raised_at_ms == T0 + 27 * HOUR + late
