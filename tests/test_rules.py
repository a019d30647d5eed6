"""One test per clinical rule that fails when the rule is broken (issue 13: "every clinical rule
has a test that fails when the rule is broken").

Handmade streams pin each rule at its threshold: moving the threshold past the pinned value, or
removing the rule, turns one of these red (``make mutation`` checks the code the same way).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from builders import (
    HOUR,
    MIN,
    T0,
    by_time,
    feed,
    lab_panel,
    leak_with_signs,
    obs,
    phases,
    recovery_course,
    vitals,
)

from detectors.config import DEFAULT_THRESHOLDS as TH
from detectors.observation import Rejection, format_time, normalise
from detectors.phases import step


def shock_with_hct(hct_rows, bp_from_h=20, bp_to_h=30, sbp=80, map_=58, every=5, th=TH,
                   interventions=(), context=None, early_hct=40.0):
    rows = vitals(0, bp_from_h, 120, 85, every) + vitals(bp_from_h, bp_to_h, sbp, map_, every)
    rows += lab_panel(T0 + 4 * HOUR, early_hct, albumin=4.0)
    rows += hct_rows
    return feed(by_time(rows), interventions, context, th)


def rbc(t_ms, ml):
    return {"patient_id": "p1", "kind": "red_cells", "started_at": t_ms, "amount": ml,
            "amount_unit": "mL"}


# --- hypotension: persistence fits the charting rate ------------------------------------------

@pytest.mark.parametrize("every", [1, 5, 15, 60])
def test_twelve_hours_of_sbp_80_with_hct_55_alert_at_any_charting_rate(every):
    alerts, _, _ = shock_with_hct(lab_panel(T0 + 24 * HOUR, 55), every=every, bp_to_h=32)
    assert [a.phase for a in alerts][:1] == ["leak"], (every, phases(alerts))


@pytest.mark.parametrize("every", [1, 5, 15, 60])
def test_one_low_reading_among_normal_ones_is_never_hypotension(every):
    rows = vitals(0, 30, 120, 85, every)
    low_at = T0 + 24 * HOUR
    rows = [r for r in rows if r["observed_at"] != low_at]
    rows += [obs("sbp", 70, low_at, "mmHg"), obs("map", 50, low_at, "mmHg")]
    rows += lab_panel(T0 + 4 * HOUR, 40) + lab_panel(T0 + 24 * HOUR, 55)
    alerts, _, _ = feed(by_time(rows))
    assert alerts == []


def test_two_low_chartings_are_not_enough_three_are():
    """hypotension_min_readings = 3 distinct reading times (an SBP and its MAP are one)."""
    base = vitals(0, 20, 120, 85, 60)
    hct = lab_panel(T0 + 4 * HOUR, 40) + lab_panel(T0 + 21 * HOUR, 55)
    two = [r for h in (20, 21) for r in vitals(h, h + 0.5, 80, 58, 60)]
    after = vitals(22, 30, 120, 85, 60)
    alerts, _, _ = feed(by_time(base + hct + two + after))
    assert alerts == []
    three = [r for h in (20, 21, 22) for r in vitals(h, h + 0.5, 80, 58, 60)]
    after = vitals(23, 30, 120, 85, 60)
    alerts, _, _ = feed(by_time(base + hct + three + after))
    assert phases(alerts)[:1] == ["leak/high"]


def test_two_isolated_low_readings_far_apart_never_join():
    rows = vitals(0, 40, 120, 85, 60)
    rows = [r for r in rows if r["observed_at"] not in (T0 + 20 * HOUR, T0 + 23 * HOUR,
                                                        T0 + 26 * HOUR)]
    for h in (20, 23, 26):  # three lows, each with normal chartings between them
        rows += [obs("sbp", 80, T0 + h * HOUR, "mmHg"), obs("map", 58, T0 + h * HOUR, "mmHg")]
    rows += lab_panel(T0 + 4 * HOUR, 40) + lab_panel(T0 + 23 * HOUR, 55)
    alerts, _, _ = feed(by_time(rows))
    assert alerts == []


def test_a_gap_longer_than_the_tolerance_splits_a_run():
    """hypotension_gap_min: lows 60 min apart join, lows 3 h apart (no reading between) do not."""
    rows = vitals(0, 20, 120, 85, 60)
    for h in (20, 23, 26):
        rows += [obs("sbp", 80, T0 + h * HOUR, "mmHg"), obs("map", 58, T0 + h * HOUR, "mmHg")]
    rows += vitals(27, 35, 120, 85, 60)
    rows += lab_panel(T0 + 4 * HOUR, 40) + lab_panel(T0 + 23 * HOUR, 55)
    alerts, _, _ = feed(by_time(rows))
    assert alerts == []


# --- hemoconcentration: no look-ahead, transfusion, consistency --------------------------------

def test_an_sbp_not_above_the_dbp_charted_at_the_same_time_is_an_inconsistent_artefact():
    st, results = None, []
    for row in (obs("dbp", 80, T0, "mmHg"), obs("sbp", 80, T0, "mmHg"),
                obs("sbp", 81, T0, "mmHg"), obs("sbp", 70, T0 + 5 * MIN, "mmHg")):
        r = step(st, normalise(row))
        st = r.state
        results.append(r)
    assert [r.status for r in results] == ["accepted", "rejected", "accepted", "accepted"]
    assert results[1].rejection.reason == "inconsistent"
    assert results[1].rejection.detail.startswith("SBP 80 not above DBP 80 mmHg at the same time")


def _sbp_baseline_shown(baseline_rows):
    """The SBP baseline the leak alert shows (shock 20-30 h, Hct 55 % at 21 h)."""
    rows = baseline_rows + vitals(20, 30, 80, 58) + lab_panel(T0 + 4 * HOUR, 40, albumin=4.0) \
        + lab_panel(T0 + 21 * HOUR, 55, albumin=3.9)
    alerts, _, _ = feed(by_time(rows))
    assert phases(alerts) == ["leak/high"]
    return alerts[0].evidence[0].baseline


def _hourly_sbp(value, hours):
    return [obs("sbp", value, T0 + h * HOUR, "mmHg") for h in hours]


def test_the_sbp_baseline_is_the_mean_of_the_normal_readings_of_the_first_6_h():
    assert (TH.baseline_vitals_h, TH.sbp_low_mmhg) == (6.0, 90.0)
    later = _hourly_sbp(120, range(8, 20))
    # 6 readings of 120 and one of 190 at exactly 6 h are averaged; the one a minute later is not
    at_six = [obs("sbp", 190, T0 + 6 * HOUR + m * MIN, "mmHg") for m in (0, 1)]
    assert _sbp_baseline_shown(_hourly_sbp(120, range(6)) + at_six + later) == 130.0
    # an SBP of 90 is hypotensive: it never enters the baseline
    assert _sbp_baseline_shown(_hourly_sbp(120, range(5)) + _hourly_sbp(90, (5, 6))
                               + later) == 120.0


def test_an_sbp_baseline_needs_five_readings():
    assert TH.baseline_min_vitals == 5
    later = _hourly_sbp(150, range(8, 20))
    assert _sbp_baseline_shown(_hourly_sbp(120, range(4)) + later) is None
    assert _sbp_baseline_shown(_hourly_sbp(120, range(5)) + later) == 120.0


@pytest.mark.parametrize(("sbp", "leak"), [(110, True), (111, False)])
def test_an_sbp_40_below_the_patients_baseline_is_hypotension_even_above_90(sbp, leak):
    # baseline 150 mmHg, MAP 75 (not low): SBP 110 is the 40 mmHg fall of sbp_fall_mmhg
    assert TH.sbp_fall_mmhg == 40.0
    rows = vitals(0, 20, 150, 85) + vitals(20, 30, sbp, 75)
    rows += lab_panel(T0 + 4 * HOUR, 40, albumin=4.0) + lab_panel(T0 + 21 * HOUR, 55, albumin=3.9)
    alerts, _, _ = feed(by_time(rows))
    assert phases(alerts) == (["leak/high"] if leak else [])
    if leak:
        hypotension = alerts[0].evidence[0]
        assert (hypotension.value, hypotension.baseline) == (110.0, 150.0)
        assert hypotension.text.startswith("SBP 110 mmHg (fall >= 40; baseline 150;")


@pytest.mark.parametrize(("map_", "leak"), [(65, False), (64, True)])
def test_a_map_of_65_is_not_hypotension_64_is(map_, leak):
    # SBP 95: neither <= 90 nor 40 below the baseline of 120, so the MAP alone decides
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 95, map_)
    rows += lab_panel(T0 + 4 * HOUR, 40, albumin=4.0) + lab_panel(T0 + 21 * HOUR, 55, albumin=3.9)
    alerts, _, _ = feed(by_time(rows))
    assert phases(alerts) == (["leak/high"] if leak else [])


def test_a_later_falling_hct_never_makes_an_earlier_one_hemoconcentrated():
    """The baseline judging a draw holds only draws taken before it (10119's dilution)."""
    rows = lab_panel(T0 + 2 * HOUR, 38) + lab_panel(T0 + 20 * HOUR, 37) + \
        lab_panel(T0 + 22 * HOUR, 29) + lab_panel(T0 + 23 * HOUR, 27)
    alerts, _, _ = shock_with_hct(rows, bp_from_h=20, bp_to_h=24, early_hct=38)
    assert alerts == []


def test_red_cells_explain_a_hct_rise_above_the_cut_off():
    hct = lab_panel(T0 + 24 * HOUR, 47)  # F cut-off 45
    alone, _, _ = shock_with_hct(hct, context={"patient_id": "p1", "sex": "F", "weight_kg": 70})
    assert phases(alone)[:1] == ["leak/high"]
    given, _, _ = shock_with_hct(hct, context={"patient_id": "p1", "sex": "F", "weight_kg": 70},
                                 interventions=[rbc(T0 + 20 * HOUR, 300)])
    assert given == []


def test_red_cells_given_long_before_do_not_explain_a_hct_above_the_cut_off():
    """transfusion_window_h: 10126's Hct 53 three days after its last unit was a leak."""
    hct = lab_panel(T0 + 24 * HOUR, 47)
    given, _, _ = shock_with_hct(hct, context={"patient_id": "p1", "sex": "F", "weight_kg": 70},
                                 interventions=[rbc(T0 - 30 * HOUR, 300)])
    assert phases(given)[:1] == ["leak/high"]


def test_a_relative_rise_the_units_given_since_the_baseline_explain_is_not_a_leak():
    """10093, 10059: Hct 29 -> 42 after four units is transfusion (baseline + units given)."""
    hct = lab_panel(T0 + 24 * HOUR, 36)  # +29 % over 28, below the M cut-off
    ctx = {"patient_id": "p1", "sex": "M", "weight_kg": 70}
    alone, _, _ = shock_with_hct(hct, context=ctx, early_hct=28)
    assert phases(alone)[:1] == ["leak/high"]
    given, _, _ = shock_with_hct(hct, context=ctx, early_hct=28,
                                 interventions=[rbc(T0 + 10 * HOUR, 900)])
    assert given == []


def test_a_hct_that_no_hb_and_no_second_draw_confirms_does_not_count():
    ctx = {"patient_id": "p1", "sex": "M", "weight_kg": 70}
    lone = [obs("hematocrit", 55, T0 + 24 * HOUR, "%")]
    alerts, _, _ = shock_with_hct(lone, context=ctx)
    assert alerts == []
    disagreeing = lone + [obs("hemoglobin", 13.0, T0 + 24 * HOUR, "g/dL")]
    alerts, _, _ = shock_with_hct(disagreeing, context=ctx)
    assert alerts == []
    second = lone + [obs("hematocrit", 54, T0 + 27 * HOUR, "%")]
    alerts, _, _ = shock_with_hct(second, context=ctx)
    assert phases(alerts)[:1] == ["leak/high"]


def test_hb_agrees_by_its_reference_change_value():
    """hb_agree_rise_relative: a Hb up 10 % over its baseline confirms, one up 5 % does not."""
    ctx = {"patient_id": "p1", "sex": "M", "weight_kg": 70}
    early = [obs("hematocrit", 30, T0 + 4 * HOUR, "%"), obs("hemoglobin", 10.0, T0 + 4 * HOUR)]
    draw = T0 + 24 * HOUR
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + early
    ok, _, _ = feed(by_time(rows + [obs("hematocrit", 36, draw, "%"),
                                    obs("hemoglobin", 11.0, draw)]), context=ctx)
    assert phases(ok)[:1] == ["leak/high"]
    no, _, _ = feed(by_time(rows + [obs("hematocrit", 36, draw, "%"),
                                    obs("hemoglobin", 10.5, draw)]), context=ctx)
    assert no == []


def test_a_single_spike_between_two_lower_draws_never_counts():
    """10088: one blood-gas Hct 35 between laboratory values of 30.7 and 30.3."""
    ctx = {"patient_id": "p1", "sex": "M", "weight_kg": 70}
    rows = lab_panel(T0 + 23 * HOUR, 30) + lab_panel(T0 + 24 * HOUR, 36) + \
        lab_panel(T0 + 25 * HOUR, 30)
    alerts, _, _ = shock_with_hct(rows, context=ctx, early_hct=29)
    assert alerts == []
    kept = lab_panel(T0 + 23 * HOUR, 30) + lab_panel(T0 + 24 * HOUR, 36) + \
        lab_panel(T0 + 25 * HOUR, 35.5)
    alerts, _, _ = shock_with_hct(kept, context=ctx, early_hct=29)
    assert phases(alerts)[:1] == ["leak/high"]
    # the spike's alert waits for the next draw: never before it was available
    assert alerts[0].raised_at_ms >= T0 + 25 * HOUR


def test_a_baseline_older_than_a_week_judges_no_relative_rise():
    ctx = {"patient_id": "p1", "sex": "M", "weight_kg": 70}
    days = 9 * 24
    rows = vitals(0, 2, 120, 85, 60) + lab_panel(T0 + HOUR, 28)
    for d in range(1, 10):
        rows += lab_panel(T0 + d * 24 * HOUR, 28.5)
    rows += vitals(2, days - 4, 120, 85, 60) + vitals(days - 4, days + 6, 80, 58, 15)
    rows += lab_panel(T0 + (days + 1) * HOUR, 36) + lab_panel(T0 + (days + 3) * HOUR, 36)
    # 28 -> 36 is +29 % over the first day's baseline, now 9 days old; the recent baseline is gone
    alerts, _, _ = feed(by_time(rows), context=ctx)
    assert "leak/high" not in phases(alerts)
    young = replace(TH, baseline_max_age_h=24 * 30)
    alerts, _, _ = feed(by_time(rows), context=ctx, th=young)
    assert "leak/high" in phases(alerts) or "leak/critical" in phases(alerts)


# --- exclusions ---------------------------------------------------------------------------------

def test_a_weight_loss_of_two_percent_is_dehydration_not_a_leak():
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58)
    rows += [obs("weight", w, T0 + h * HOUR, "kg") for h, w in ((2, 70.0), (14, 70.0),
                                                                 (20, 68.5))]
    rows += lab_panel(T0 + 4 * HOUR, 40, albumin=4.0) + lab_panel(T0 + 21 * HOUR, 54, albumin=4.1)
    alerts, _, _ = feed(by_time(rows))
    assert alerts == []
    rows = [r for r in rows if not (r["kind"] == "weight" and r["value"] == 68.5)]
    rows.append(obs("weight", 69.5, T0 + 20 * HOUR, "kg"))  # -0.7 %: not dehydration
    alerts, _, _ = feed(by_time(rows))
    assert phases(alerts)[:1] == ["leak/high"]


def test_a_concentrated_albumin_rise_of_half_a_gram_is_dehydration():
    base = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + \
        lab_panel(T0 + 4 * HOUR, 40, albumin=4.0)
    alerts, _, _ = feed(by_time(base + lab_panel(T0 + 21 * HOUR, 54, albumin=4.5)))
    assert alerts == []
    alerts, _, _ = feed(by_time(base + lab_panel(T0 + 21 * HOUR, 54, albumin=4.3)))
    assert phases(alerts)[:1] == ["leak/high"]


def test_an_albumin_after_an_albumin_infusion_is_not_called_concentrated():
    base = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + \
        lab_panel(T0 + 4 * HOUR, 40, albumin=4.0)
    rows = base + lab_panel(T0 + 21 * HOUR, 54, albumin=4.6)
    alb = {"patient_id": "p1", "kind": "albumin", "agent": "albumin 25%",
           "started_at": T0 + 18 * HOUR, "amount": 100, "amount_unit": "mL"}
    alerts, _, _ = feed(by_time(rows), [alb])
    assert phases(alerts)[:1] == ["leak/high"]


def test_the_hb_of_the_same_draw_is_the_one_taken_within_the_panel_window():
    """panel_min: a Hb 5 min after the Hct belongs to its draw and confirms it; 30 min after,
    it is another draw."""
    ctx = {"patient_id": "p1", "sex": "M", "weight_kg": 70}
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + lab_panel(T0 + 4 * HOUR, 40)
    draw = T0 + 21 * HOUR
    same = [obs("hematocrit", 55, draw, "%"), obs("hemoglobin", 18.5, draw + 5 * MIN)]
    alerts, _, _ = feed(by_time(rows + same), context=ctx)
    assert phases(alerts)[:1] == ["leak/high"]
    other = [obs("hematocrit", 55, draw, "%"), obs("hemoglobin", 18.5, draw + 30 * MIN)]
    alerts, _, _ = feed(by_time(rows + other), context=ctx)
    assert alerts == []


def test_a_leak_is_only_raised_from_fresh_evidence():
    """leak_max_age_h: a pairing whose time lies 12 h or more behind the horizon is too old."""
    rows = vitals(0, 20, 120, 85) + vitals(20, 21, 80, 58) + vitals(21, 60, 120, 85)
    rows += lab_panel(T0 + 4 * HOUR, 40)
    late = lab_panel(T0 + 20 * HOUR + 30 * MIN, 55)
    arrival = by_time(rows)
    cut = next(i for i, r in enumerate(arrival) if r["observed_at"] >= T0 + 40 * HOUR)
    alerts, _, _ = feed(arrival[:cut] + late + arrival[cut:], ordered=True)
    assert alerts == []
    cut = next(i for i, r in enumerate(arrival) if r["observed_at"] >= T0 + 30 * HOUR)
    alerts, _, _ = feed(arrival[:cut] + late + arrival[cut:], ordered=True)
    assert phases(alerts)[:1] == ["leak/high"]


# --- prodrome -----------------------------------------------------------------------------------

def test_a_weight_gain_the_fluid_balance_explains_is_resuscitation():
    rows = vitals(0, 60, 120, 85, every_min=15)
    rows += [obs("weight", w, T0 + h * HOUR, "kg") for h, w in
             ((2, 70.0), (14, 70.1), (26, 72.3), (38, 72.8))]
    alerts, _, _ = feed(by_time(rows))
    assert phases(alerts) == ["prodromal/warning"]
    fluids = [{"patient_id": "p1", "kind": "crystalloid", "started_at": T0 + h * HOUR,
               "amount": 1000, "amount_unit": "mL"} for h in (16, 20, 24)]
    alerts, _, _ = feed(by_time(rows), fluids)
    assert alerts == []


# --- recovery -----------------------------------------------------------------------------------

def _leak_then_recovery(interventions=()):
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + vitals(30, 60, 115, 80)
    rows += lab_panel(T0 + 4 * HOUR, 40, albumin=4.0)
    rows += lab_panel(T0 + 21 * HOUR, 56, albumin=3.9)
    rows += lab_panel(T0 + 33 * HOUR, 50, albumin=3.9)
    return feed(by_time(rows), interventions)


def test_recovery_is_not_called_while_a_vasopressor_holds_the_pressure():
    alerts, _, _ = _leak_then_recovery()
    assert "recovery/warning" in phases(alerts)
    pressor = [{"patient_id": "p1", "kind": "vasopressor", "agent": "phenylephrine",
                "started_at": T0 + 29 * HOUR, "ended_at": T0 + 60 * HOUR, "rate": 2,
                "rate_unit": "mcg/kg/min", "mode": "infusion"}]
    alerts, _, _ = _leak_then_recovery(pressor)
    assert "recovery/warning" not in phases(alerts)


def test_recovery_may_be_called_once_the_pressor_is_weaning():
    pressor = [{"patient_id": "p1", "kind": "vasopressor", "agent": "norepinephrine",
                "started_at": T0 + 29 * HOUR, "ended_at": T0 + 31 * HOUR, "rate": 0.2,
                "rate_unit": "mcg/kg/min", "mode": "infusion"},
               {"patient_id": "p1", "kind": "vasopressor", "agent": "norepinephrine",
                "started_at": T0 + 31 * HOUR, "ended_at": T0 + 60 * HOUR, "rate": 0.05,
                "rate_unit": "mcg/kg/min", "mode": "infusion"}]
    alerts, _, _ = _leak_then_recovery(pressor)
    assert "recovery/warning" in phases(alerts)


@pytest.mark.parametrize(("sbp", "recovery"), [(100, False), (101, True)])
def test_a_recovered_pressure_is_an_sbp_over_100_not_100(sbp, recovery):
    assert TH.recovery_sbp_mmhg == 100.0
    alerts, _, _ = recovery_course(sbp=sbp)
    assert ("recovery/warning" in phases(alerts)) is recovery


def _pressor_until_40_h(sbp_40_to_41_h):
    """Leak at 21 h, phenylephrine 29-40 h, SBP 115 from 30 h but ``sbp_40_to_41_h`` in 40-41 h,
    Hct fallen to 50 % at 33 h."""
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + vitals(30, 40, 115, 80) + \
        vitals(40, 41, sbp_40_to_41_h, 75) + vitals(41, 60, 115, 80)
    rows += lab_panel(T0 + 4 * HOUR, 40, albumin=4.0) + lab_panel(T0 + 21 * HOUR, 56, albumin=3.9)
    rows += lab_panel(T0 + 33 * HOUR, 50, albumin=3.9)
    pressor = [{"patient_id": "p1", "kind": "vasopressor", "agent": "phenylephrine",
                "started_at": T0 + 29 * HOUR, "ended_at": T0 + 40 * HOUR, "rate": 2,
                "rate_unit": "mcg/kg/min", "mode": "infusion"}]
    alerts, _, _ = feed(by_time(rows), pressor)
    assert phases(alerts) == ["leak/high", "recovery/warning"]
    return alerts[-1]


def test_a_pressure_that_stays_over_100_when_the_pressor_stops_is_recovery_from_that_moment():
    assert _pressor_until_40_h(115).onset_at_ms == T0 + 40 * HOUR


def test_after_the_pressor_a_new_pressure_over_100_is_recovery_once_held_60_min():
    # SBP 95 in 40-41 h ends the run the pressor held; the next one rises at 41 h (its 5-minute
    # slot began at most 5 min before) and is held 60 min later
    onset = _pressor_until_40_h(95).onset_at_ms
    assert T0 + 41 * HOUR + 55 * MIN <= onset <= T0 + 42 * HOUR


def test_recovery_needs_the_hct_three_points_below_the_episode_peak():
    # peak 56 %: 53 % is the 3-point fall of hct_fall_points, 54 % only 2 points
    assert TH.hct_fall_points == 3.0
    alerts, _, _ = recovery_course(recovery_hct=53)
    assert phases(alerts) == ["leak/high", "recovery/warning"]
    alerts, _, _ = recovery_course(recovery_hct=54)
    assert "recovery/warning" not in phases(alerts)


def test_the_recovery_alert_shows_the_pressure_held_over_100_and_the_hct_fall_from_the_peak():
    alerts, _, _ = recovery_course(recovery_hct=53)
    recovery = alerts[-1]
    # SBP > 100 from 30 h is held 60 min at 31 h; the Hct fall drawn at 33 h decides
    assert recovery.onset_at_ms == T0 + 33 * HOUR
    assert recovery.previous_phase == "leak" and recovery.episode == 1
    pressure, hct = recovery.evidence
    assert (pressure.criterion, pressure.value, pressure.unit) == \
        ("blood_pressure_recovered", 115.0, "mmHg")
    # held since the 5-minute slot of the first SBP over 100 (at 30 h)
    rose = (T0 + 30 * HOUR) // TH.bp_slot_ms * TH.bp_slot_ms
    assert pressure.threshold == f"SBP > 100 held >= 60 min (since {format_time(rose)})"
    # the SBP shown is the newest when the decision was taken
    assert recovery.onset_at_ms <= pressure.observed_at_ms <= recovery.raised_at_ms
    assert pressure.baseline == 120.0
    assert "not on a vasopressor that is not weaning" in pressure.text
    # the pressure was known to be held at 31 h: the slot in which it rose, plus 60 min
    assert T0 + 30 * HOUR < pressure.available_at_ms <= T0 + 31 * HOUR
    assert (hct.criterion, hct.value, hct.unit, hct.baseline) == \
        ("hematocrit_falling", 53.0, "%", 56.0)
    assert hct.observed_at_ms == T0 + 33 * HOUR
    assert hct.threshold == ">= 3 points below the episode peak (56.0 %)"
    assert hct.text == "Hct 53.0 % (3.0 points below the episode peak 56.0 %)"
    assert "Hct 53.0 % (3.0 points below the episode peak 56.0 %)" in recovery.summary


def _peak_then_fall(peak_h, fall_extra=None):
    """Shock 20-30 h (held from 20:10 h), Hct 56 % at ``peak_h`` and 55 % at 22 h, SBP 115 from
    30 h, Hct 53 % at 33 h (``fall_extra``: extra fields of that draw)."""
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + vitals(30, 60, 115, 80, 15)
    rows += lab_panel(T0 + 4 * HOUR, 40, albumin=4.0)
    rows += lab_panel(T0 + peak_h * HOUR, 56, albumin=3.9)
    rows += lab_panel(T0 + 22 * HOUR, 55, albumin=3.9)
    rows += lab_panel(T0 + 33 * HOUR, 53, albumin=3.9, **(fall_extra or {}))
    alerts, _, _ = feed(by_time(rows))
    assert phases(alerts) == ["leak/high", "recovery/warning"]
    return alerts


def test_the_episode_peak_includes_a_hct_drawn_up_to_6_h_before_the_leak_began():
    # the 56 % drawn at 18 h, before the shock of 20 h, is the peak: 53 % is 3 points below it
    leak, recovery = _peak_then_fall(peak_h=18)
    assert leak.onset_at_ms < T0 + 21 * HOUR
    hct = recovery.evidence[1]
    assert (hct.value, hct.baseline) == (53.0, 56.0)


def test_a_recovery_is_not_raised_before_its_falling_hct_was_reported():
    alerts = _peak_then_fall(peak_h=21, fall_extra={"available_at": T0 + 35 * HOUR})
    recovery = alerts[-1]
    assert recovery.onset_at_ms == T0 + 33 * HOUR
    assert recovery.raised_at_ms == T0 + 35 * HOUR
    assert recovery.evidence[1].available_at_ms == T0 + 35 * HOUR


def test_polyuria_over_2_1_ml_kg_h_for_3_h_before_the_recovery_is_part_of_its_evidence():
    # 70 kg (the default weight): 150 mL/h = 2.14 mL/kg/h is polyuria, 140 mL/h = 2.0 is not
    alerts, _, _ = recovery_course(urine_ml_h=150)
    recovery = alerts[1]
    assert recovery.phase == "recovery"
    polyuria = recovery.evidence[-1]
    assert (polyuria.criterion, polyuria.unit) == ("polyuria", "mL/kg/h")
    assert polyuria.value == pytest.approx(150 / 70)
    assert polyuria.threshold == "> 2.1 mL/kg/h over 3 h"
    assert polyuria.text == "urine 2.14 mL/kg/h over 3 h (> 2.1)"
    assert polyuria.observed_at_ms == T0 + 33 * HOUR  # 31-33 h alone is < 90 % of 3 h
    alerts, _, _ = recovery_course(urine_ml_h=140)
    assert [e.criterion for e in alerts[1].evidence] == ["blood_pressure_recovered",
                                                         "hematocrit_falling"]


def test_a_calm_recovery_closes_48_hours_after_it_began_not_before():
    assert TH.recovery_min_h == 48.0
    onset_h = 33
    alerts, _, _ = recovery_course(end_h=onset_h + 48 - 0.25)
    assert phases(alerts) == ["leak/high", "recovery/warning"]
    alerts, st, _ = recovery_course(end_h=onset_h + 48)
    assert phases(alerts) == ["leak/high", "recovery/warning", "none/info"]
    closed = alerts[-1]
    assert closed.previous_phase == "recovery" and closed.episode == 1
    assert closed.onset_at_ms == T0 + (onset_h + 48) * HOUR
    assert "recovery complete, no polyuria or hypotension in the last 6 h" in closed.summary
    assert st.phase == "none"


def test_a_recovery_with_polyuria_in_the_last_6_h_stays_open_until_7_days():
    assert TH.recovery_max_h == 168.0
    onset_h = 33
    alerts, _, _ = recovery_course(end_h=onset_h + 168 - 0.25, urine_ml_h=150)
    assert phases(alerts) == ["leak/high", "recovery/warning"]
    alerts, st, _ = recovery_course(end_h=onset_h + 168, urine_ml_h=150)
    assert phases(alerts) == ["leak/high", "recovery/warning", "none/info"]
    closed = alerts[-1]
    assert closed.previous_phase == "recovery"
    assert closed.onset_at_ms == T0 + (onset_h + 168) * HOUR
    assert "Episode closed after 168 h of recovery" in closed.summary
    assert st.phase == "none"


def test_a_new_shock_with_hemoconcentration_during_recovery_is_a_relapse_in_a_new_episode():
    # recovery at 33 h; shock again 40-50 h with Hct 57 % at 41 h (both after the recovery)
    relapse = vitals(40, 50, 80, 58) + lab_panel(T0 + 41 * HOUR, 57, albumin=3.9)
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + vitals(30, 40, 115, 80) + \
        vitals(50, 60, 115, 80) + relapse
    rows += lab_panel(T0 + 4 * HOUR, 40, albumin=4.0) + lab_panel(T0 + 21 * HOUR, 56, albumin=3.9)
    rows += lab_panel(T0 + 33 * HOUR, 50, albumin=3.9)
    alerts, st, _ = feed(by_time(rows))
    assert phases(alerts)[:3] == ["leak/high", "recovery/warning", "leak/high"]
    again = alerts[2]
    assert again.previous_phase == "recovery"
    assert again.episode == 2 and again.alert_id != alerts[0].alert_id
    assert again.summary.startswith("Relapse: leak phase again during recovery")
    assert [e.criterion for e in again.evidence][:2] == ["hypotension", "hemoconcentration"]
    assert T0 + 40 * HOUR < again.onset_at_ms <= T0 + 41 * HOUR


def test_a_high_hct_after_the_recovery_does_not_pair_with_the_shock_before_it():
    # recovery at 33 h; Hct 57 % at 34-35 h lies within 6 h of the shock that ended at 30 h, but
    # a relapse needs both the hypotension and the hemoconcentration after the recovery began
    extra = lab_panel(T0 + 34 * HOUR, 57, albumin=3.9) + lab_panel(T0 + 35 * HOUR, 57, albumin=3.9)
    alerts, st, _ = recovery_course(extra=extra)
    assert phases(alerts) == ["leak/high", "recovery/warning"]
    assert st.phase == "recovery"


@pytest.mark.parametrize(("kg", "overload"), [(73.5, True), (73.4, False)])
def test_polyuria_in_recovery_with_weight_5_percent_over_baseline_is_a_fluid_overload(kg, overload):
    # 70 kg on admission: 73.5 kg is +5.0 % (fluid_overload_weight_pct), 73.4 kg +4.9 %
    assert TH.fluid_overload_weight_pct == 5.0
    ctx = {"patient_id": "p1", "weight_kg": 70}
    weighings = [obs("weight", kg, T0 + h * HOUR, "kg") for h in (36, 38)]
    alerts, _, _ = recovery_course(urine_ml_h=150, extra=weighings, context=ctx)
    if not overload:
        assert phases(alerts) == ["leak/high", "recovery/warning"]
        return
    assert phases(alerts) == ["leak/high", "recovery/warning", "recovery/high"]
    high = alerts[-1]
    assert high.supersedes == alerts[1].alert_id
    assert high.onset_at_ms == T0 + 36 * HOUR  # the first weighing paired with the polyuria
    assert high.summary.startswith("Fluid overload risk in recovery")
    polyuria, weight = high.evidence
    assert polyuria.criterion == "polyuria" and weight.criterion == "weight_over_baseline"
    assert (weight.value, weight.baseline) == (kg, 70.0)


def test_a_leak_with_no_supporting_evidence_for_a_day_closes():
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + vitals(30, 80, 95, 70)
    rows += lab_panel(T0 + 4 * HOUR, 40, albumin=4.0) + lab_panel(T0 + 21 * HOUR, 56,
                                                                   albumin=3.9)
    alerts, _, _ = feed(by_time(rows))
    assert phases(alerts) == ["leak/high", "none/info"]
    closing = alerts[-1]
    assert closing.onset_at_ms == T0 + (30 + 24) * HOUR - 5 * MIN
    assert closing.summary.startswith("Leak episode closed: no persistent hypotension and no "
                                      "hemoconcentration for 24 h")


# --- escalation ---------------------------------------------------------------------------------

def test_a_leak_is_critical_when_albumin_fell_half_a_gram_the_critical_repeats_the_triad():
    base = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + \
        lab_panel(T0 + 4 * HOUR, 40, albumin=3.8)
    alerts, _, _ = feed(by_time(base + lab_panel(T0 + 21 * HOUR, 55, albumin=3.3)))
    assert phases(alerts) == ["leak/high", "leak/critical"]
    high, critical = alerts
    assert [e.criterion for e in critical.evidence][:3] == [
        "hypotension", "hemoconcentration", "hypoalbuminemia"]
    assert critical.summary.startswith("Leak phase, triad complete (hypoalbuminemia)")
    # one page per event: the critical names the high it supersedes (the notifier holds the
    # high for its supersede window); decided together, it is raised no earlier than the high
    assert critical.supersedes == high.alert_id and critical.raised_at_ms >= high.raised_at_ms
    alerts, _, _ = feed(by_time(base + lab_panel(T0 + 21 * HOUR, 55, albumin=3.4)))
    assert phases(alerts) == ["leak/high"]


def test_leukocytosis_and_oliguria_together_escalate_a_leak_to_critical():
    # WBC 13 > 12 drawn 2 h before the leak (within the 6 h triad window) and 0.29 mL/kg/h
    # < 0.5 over 6 h: critical once the 6 h of oliguria are complete (21-27 h)
    alerts, _, _ = leak_with_signs()
    assert phases(alerts) == ["leak/high", "leak/critical"]
    high, critical = alerts
    assert critical.supersedes == high.alert_id
    assert critical.onset_at_ms == T0 + 27 * HOUR
    assert critical.summary.startswith("Leak phase with leukocytosis and oliguria")
    assert [e.criterion for e in critical.evidence] == [
        "hypotension", "hemoconcentration", "leukocytosis", "oliguria"]
    wbc, oliguria = critical.evidence[2:]
    assert (wbc.value, wbc.observed_at_ms) == (13.0, T0 + 19 * HOUR)
    assert oliguria.value == pytest.approx(20 / 70)
    assert (oliguria.unit, oliguria.threshold) == ("mL/kg/h", "< 0.5 mL/kg/h over 6 h")
    assert oliguria.observed_at_ms == T0 + 27 * HOUR


@pytest.mark.parametrize("sign", [{"wbc": 12.0}, {"wbc_h": 14}, {"urine_ml_h": 35}],
                         ids=["wbc_12_is_not_over_12", "wbc_7_h_before_the_leak",
                              "urine_0.5_ml_kg_h_is_not_below_0.5"])
def test_one_supportive_sign_alone_does_not_escalate_a_leak(sign):
    alerts, _, _ = leak_with_signs(**sign)
    assert phases(alerts) == ["leak/high"]


@pytest.mark.parametrize(("last_reading_min", "closed"), [(0, True), (5, False)])
def test_a_leak_closes_exactly_24_h_after_its_last_evidence(last_reading_min, closed):
    # the last low reading at 29:55 h: the episode closes at 53:55 h, not a reading earlier
    end = T0 + 54 * HOUR - 5 * MIN - last_reading_min * MIN
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + \
        vitals(30, (end - T0 + 1) / HOUR, 95, 70)
    rows += lab_panel(T0 + 4 * HOUR, 40, albumin=4.0) + lab_panel(T0 + 21 * HOUR, 56,
                                                                   albumin=3.9)
    alerts, _, _ = feed(by_time(rows))
    assert phases(alerts) == (["leak/high", "none/info"] if closed else ["leak/high"])


def test_an_albumin_below_three_alone_no_longer_escalates_below_two_and_a_half_does():
    base = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + \
        lab_panel(T0 + 4 * HOUR, 40, albumin=2.8)
    alerts, _, _ = feed(by_time(base + lab_panel(T0 + 21 * HOUR, 55, albumin=2.6)))
    assert phases(alerts) == ["leak/high"]
    alerts, _, _ = feed(by_time(base + lab_panel(T0 + 21 * HOUR, 55, albumin=2.4)))
    assert phases(alerts) == ["leak/high", "leak/critical"]


# --- plausibility -------------------------------------------------------------------------------

def test_a_weighing_out_of_the_patients_series_is_an_artefact_jump():
    rows = [obs("weight", w, T0 + h * HOUR, "kg") for h, w in ((0, 82.0), (12, 82.3),
                                                                (24, 8.2), (36, 82.1))]
    alerts, st, rejected = feed(rows)
    assert [r.reason for r in rejected] == ["artefact_jump"]
    assert "82" in rejected[0].detail and "8.2" in rejected[0].detail
    assert [w[1] for w in st.wt] == [82.0, 82.3, 82.1]


def test_thirty_five_kilograms_in_51_minutes_is_refused_a_day_of_fluids_is_not():
    rows = [obs("weight", 64.0, T0, "kg"), obs("weight", 99.0, T0 + 51 * MIN, "kg")]
    _, _, rejected = feed(rows)
    assert [r.reason for r in rejected] == ["artefact_jump"]
    rows = [obs("weight", 64.0, T0, "kg"), obs("weight", 70.0, T0 + 24 * HOUR, "kg")]
    _, _, rejected = feed(rows)
    assert rejected == []


def test_two_weighings_that_agree_replace_a_wrong_reference():
    rows = [obs("weight", w, T0 + h * HOUR, "kg") for h, w in ((0, 8.2), (12, 82.0), (24, 82.2))]
    _, st, rejected = feed(rows)
    assert len(rejected) == 1 and [w[1] for w in st.wt] == [82.2]


def test_a_reading_a_year_ahead_is_bad_time_and_never_moves_the_horizon():
    rows = vitals(0, 2, 120, 85)
    future = obs("sbp", 121, T0 + 365 * 24 * HOUR, "mmHg")
    alerts, st, rejected = feed(by_time(rows[:10]) + [future] + by_time(rows[10:]))
    assert [r.reason for r in rejected] == ["bad_time"]
    assert "in the future" in rejected[0].detail
    assert st.max_t < T0 + 3 * HOUR


def test_a_first_reading_a_year_ahead_does_not_stop_detection():
    """cases/07: the very first SBP dated a year ahead, then a leak."""
    rows = [obs("sbp", 121, T0 + 365 * 24 * HOUR, "mmHg")]
    rows += by_time(vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58)
                    + lab_panel(T0 + 4 * HOUR, 40) + lab_panel(T0 + 21 * HOUR, 55))
    alerts, _, _ = feed(rows)
    assert phases(alerts)[:1] == ["leak/high"]


def test_a_second_reading_far_ahead_starts_a_new_stay_with_new_alert_ids():
    stay1 = by_time(vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58)
                    + lab_panel(T0 + 4 * HOUR, 40) + lab_panel(T0 + 21 * HOUR, 55))
    later = 60 * 24
    stay2 = by_time(vitals(later, later + 20, 120, 85) + vitals(later + 20, later + 30, 80, 58)
                    + lab_panel(T0 + (later + 4) * HOUR, 40)
                    + lab_panel(T0 + (later + 21) * HOUR, 55))
    alerts, _, rejected = feed(stay1 + stay2)
    leaks = [a for a in alerts if a.phase == "leak"]
    assert len(leaks) == 2 and leaks[0].episode == leaks[1].episode == 1
    assert leaks[0].alert_id != leaks[1].alert_id
    assert len(rejected) == 1  # the first reading of the new stay, held as "in the future"


def test_real_extremes_are_accepted():
    for kind, value, unit in (("hematocrit", 8, "%"), ("hemoglobin", 2.8, "g/dL"),
                              ("heart_rate", 3, "/min"), ("leukocytes", 440, "10*9/L")):
        assert not isinstance(normalise(obs(kind, value, T0, unit)), Rejection), kind


def test_a_censored_albumin_is_read_as_its_bound_and_says_so():
    o = normalise(obs("albumin", "<2.0", T0, "g/dL"))
    assert not isinstance(o, Rejection) and o.value == 2.0 and o.censored == "<"
    base = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + lab_panel(T0 + 4 * HOUR, 40)
    rows = base + lab_panel(T0 + 21 * HOUR, 55) + [obs("albumin", "<2.0", T0 + 21 * HOUR)]
    alerts, _, _ = feed(by_time(rows))
    critical = next(a for a in alerts if a.severity == "critical")
    albumin = next(e for e in critical.evidence if e.criterion == "hypoalbuminemia")
    assert "reported <2" in albumin.text


def test_an_odd_birth_year_leaves_the_rest_of_the_context_intact():
    from detectors.observation import parse_context
    ctx = parse_context({"patient_id": "p", "sex": "F", "weight_kg": 60, "birth_year": 1700})
    assert not isinstance(ctx, Rejection) and ctx.sex == "F" and ctx.birth_year is None


# --- honest times and evidence -------------------------------------------------------------------

def test_an_alert_is_raised_when_its_lab_was_reported_not_at_the_draw():
    draw = T0 + 21 * HOUR
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + lab_panel(T0 + 4 * HOUR, 40)
    rows += lab_panel(draw, 55, available_at=draw + 3 * HOUR)
    alerts, _, _ = feed(by_time(rows))
    assert alerts[0].onset_at_ms == draw
    assert alerts[0].raised_at_ms == draw + 3 * HOUR


def test_evidence_reads_in_clinical_words():
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 86, 58) + lab_panel(T0 + 4 * HOUR, 40)
    rows += lab_panel(T0 + 21 * HOUR, 55)
    alerts, _, _ = feed(by_time(rows))
    texts = [e.text for e in alerts[0].evidence]
    assert texts[0].startswith("SBP 86 mmHg (<= 90; baseline 120")
    assert texts[1].startswith("Hct 55 % (> 45 % sex unknown; baseline 40.0 %, +38 %")
    assert "hemoglobin" in texts[1]
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 100, 56) + lab_panel(T0 + 4 * HOUR, 40)
    rows += lab_panel(T0 + 21 * HOUR, 55)
    alerts, _, _ = feed(by_time(rows))
    assert alerts[0].evidence[0].text.startswith("MAP 56 mmHg (< 65")


def test_alert_ids_differ_between_stays_of_one_patient():
    from detectors.alerts import alert_id
    assert alert_id("p", 1, "leak", "high", 1) != alert_id("p", 1, "leak", "high", 2)
    assert alert_id("p", 1, "leak", "high", 1) == alert_id("p", 1, "leak", "high", 1)


def test_a_patient_in_shock_from_the_first_reading_has_no_sbp_baseline_and_no_crash():
    rows = vitals(0, 10, 80, 58) + lab_panel(T0 + HOUR, 55) + vitals(10, 20, 120, 85)
    alerts, st, _ = feed(by_time(rows))
    assert phases(alerts)[:1] == ["leak/high"] and "sbp" not in st.bl


def test_a_state_written_by_the_previous_version_still_decides():
    """A worker's changelog survives an upgrade: slots and runs without the availability
    fields are read as known at their event time."""
    import json

    from detectors.state import PatientState

    old = {"pid": "p1", "ph": "none", "ep": 0, "sev": "none", "pt": 0, "lt": 0,
           "mx": T0 + 20 * HOUR, "fe": 0,
           "hypo": [[T0 + HOUR, T0 + 2 * HOUR, 1, 2, 5, 80.0, 55.0, T0 + HOUR + 10 * MIN]],
           "norm": [[0, 3, T0]], "slots": {str((T0 + 20 * HOUR) // 300_000):
                                           [1, 0, 1, 1, 0, 120, 85, 0, 0, 2]}}
    st = PatientState.from_json(json.dumps(old))
    rows = vitals(20, 30, 80, 58) + lab_panel(T0 + 21 * HOUR, 55)
    for raw in by_time(rows):
        st = step(st, normalise(raw)).state
    assert len(st.hypo[0]) == 12 and len(st.norm[0]) == 5
