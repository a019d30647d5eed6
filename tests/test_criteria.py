"""One test group per criterion of docs/clinical-criteria.md, on the pure criterion functions."""

from __future__ import annotations

import pytest
from builders import HOUR, MIN, T0

from detectors.alerts import Evidence
from detectors.config import DEFAULT_THRESHOLDS as TH
from detectors.config import ThresholdsError, load_thresholds, thresholds_from_mapping
from detectors.criteria import hemoconcentration, hypoalbuminemia, supportive, urine, weight_gain
from detectors.criteria import hypotension as bp


def slots_from(readings):
    """readings: (minutes, kind, value) -> slots dict, as the engine tallies them."""
    slots = {}
    for minute, kind, value in readings:
        t = T0 + int(minute * MIN)
        s = t // TH.bp_slot_ms
        bp.add_reading(slots.setdefault(s, bp.new_slot()), kind, value, t, None, TH)
    return slots


def persistent_runs(readings):
    low, _ = bp.runs(slots_from(readings), [], [], [], TH)
    return bp.persistent(low)


class TestHypotension:
    def test_one_low_reading_is_not_hypotension(self):
        readings = [(m, "sbp", 120) for m in range(0, 60, 2)] + [(31, "sbp", 70)]
        assert persistent_runs(readings) == []

    def test_low_pressure_held_ten_minutes_over_three_readings_is_hypotension(self):
        readings = [(m, "sbp", 82) for m in range(0, 16, 5)]
        runs = persistent_runs(readings)
        assert len(runs) == 1
        assert runs[0][bp.R_Q] == T0 + 10 * MIN  # persistent from 10 min after the first

    def test_low_pressure_for_five_minutes_is_not_yet_hypotension(self):
        assert persistent_runs([(0, "sbp", 80), (2, "sbp", 80), (4, "sbp", 80)]) == []

    def test_map_below_65_alone_counts(self):
        assert persistent_runs([(m, "map", 60) for m in range(0, 21, 5)])

    def test_sbp_at_exactly_90_counts_as_low(self):
        assert persistent_runs([(m, "sbp", 90) for m in range(0, 21, 5)])

    def test_a_slot_is_low_only_when_most_of_its_readings_are(self):
        # every slot has 3 normal and 1 low reading: never low
        readings = [(m + d, "sbp", v) for m in range(0, 60, 5)
                    for d, v in ((0, 120), (1, 118), (2, 70), (3, 121))]
        assert persistent_runs(readings) == []

    def test_a_fall_of_40_from_baseline_counts_even_above_90(self):
        slot = bp.new_slot()
        bp.add_reading(slot, "sbp", 110, T0, 160.0, TH)
        assert bp.slot_class(slot) == bp.LOW

    def test_the_class_a_reading_leaves_is_the_slots_class(self):
        """The class the tally returns (and caches for the next reading) is ``slot_class``'s
        answer after every reading: low, recovered or neither, SBP and MAP mixed, ties, with
        and without a baseline."""
        import random

        rng = random.Random(3)
        classes = set()
        for i in range(600):
            if i % 6 == 0:
                slot = bp.new_slot()
                baseline = rng.choice((None, 150.0))
            kind = rng.choice(("sbp", "map"))
            value = rng.choice((80, 90, 95, 100, 101, 130, 140) if kind == "sbp"
                               else (60, 64, 65, 80, 90))
            _, after = bp.add_reading(slot, kind, value, T0 + i * 1000, baseline, TH)
            assert after == bp.slot_class(slot) == slot[bp.CLS]
            classes.add(after)
        assert classes == {bp.LOW, bp.MID, bp.HIGH}

    def test_gaps_up_to_a_cuff_cycle_keep_a_run(self):
        # NIBP every 15 minutes: empty slots between readings must not split the run
        assert persistent_runs([(m, "sbp", 80) for m in (0, 15, 30)])

    def test_a_normal_slot_splits_runs(self):
        readings = [(0, "sbp", 80), (5, "sbp", 120), (10, "sbp", 80)]
        assert persistent_runs(readings) == []


class TestHemoconcentration:
    @pytest.mark.parametrize("hct, sex, expected", [
        (47, "F", True), (47, "M", False), (47, None, True), (51, "M", True), (45, None, False)])
    def test_sex_specific_cut_offs(self, hct, sex, expected):
        assert hemoconcentration.is_hemoconcentrated(hct, None, sex, TH) is expected

    def test_a_rise_of_15_percent_over_baseline_counts_below_the_cut_off(self):
        assert hemoconcentration.is_hemoconcentrated(40.3, 35.0, "M", TH)
        assert not hemoconcentration.is_hemoconcentrated(40.0, 35.0, "M", TH)

    def test_falling_needs_three_points_below_the_episode_peak(self):
        readings = [[T0, 40], [T0 + HOUR, 58], [T0 + 2 * HOUR, 56], [T0 + 3 * HOUR, 54.9]]
        reading, peak = hemoconcentration.falling_from_peak(readings, T0, TH)
        assert peak == 58 and reading[1] == 54.9
        assert hemoconcentration.falling_from_peak(readings[:3], T0, TH) is None


class TestHypoalbuminemia:
    def test_below_3_g_dl(self):
        assert hypoalbuminemia.is_low(2.9, None, TH)
        assert not hypoalbuminemia.is_low(3.0, None, TH)

    def test_a_fall_of_half_a_gram_from_baseline(self):
        assert hypoalbuminemia.is_low(3.5, 4.0, TH)
        assert not hypoalbuminemia.is_low(3.6, 4.0, TH)

    def test_escalation_needs_a_fall_of_half_a_gram_or_an_albumin_below_two_and_a_half(self):
        assert hypoalbuminemia.escalates(3.4, 3.9, TH)
        assert not hypoalbuminemia.escalates(3.5, 3.9, TH)
        assert hypoalbuminemia.escalates(2.4, None, TH)
        assert not hypoalbuminemia.escalates(2.9, None, TH)  # below 3.0 alone: the ICU norm


class TestWeightGain:
    def test_one_heavy_weighing_is_not_confirmed(self):
        w = [[T0, 70.0], [T0 + 12 * HOUR, 73.0]]
        assert weight_gain.confirmed_gain(w, 70.0, 0, TH) is None

    def test_two_weighings_confirm_a_gain_of_three_percent_within_48_h(self):
        w = [[T0, 70.0], [T0 + 12 * HOUR, 72.2], [T0 + 24 * HOUR, 72.4]]
        (e,) = weight_gain.confirmed_gain(w, 70.0, 0, TH)
        assert e.observed_at_ms == T0 + 24 * HOUR and e.value == 72.4

    def test_one_heavy_weighing_with_a_supporting_sign_is_confirmed(self):
        w = [[T0, 70.0], [T0 + 12 * HOUR, 73.0]]
        sign = Evidence("falling_urine_output", 20.0, "mL/h", "< 60 %", T0 + 12 * HOUR)
        found = weight_gain.confirmed_gain(w, 70.0, 0, TH, lambda t: sign)
        assert [e.criterion for e in found] == ["rapid_weight_gain", "falling_urine_output"]
        assert weight_gain.confirmed_gain(w, 70.0, 0, TH, lambda t: None) is None

    def test_two_kilograms_count_for_a_heavy_patient(self):
        w = [[T0, 120.0], [T0 + 12 * HOUR, 122.1], [T0 + 24 * HOUR, 122.2]]
        assert weight_gain.confirmed_gain(w, 120.0, 0, TH) is not None

    def test_a_gain_spread_over_more_than_48_h_is_not_rapid(self):
        w = [[T0, 70.0], [T0 + 30 * HOUR, 71.0], [T0 + 60 * HOUR, 72.0], [T0 + 90 * HOUR, 73.0]]
        assert weight_gain.confirmed_gain(w, 70.0, 0, TH) is None


class TestUrine:
    def test_rate_in_ml_per_kg_per_hour(self):
        hourly = [[T0 + h * HOUR, T0 + (h + 1) * HOUR, 35.0] for h in range(6)]
        assert urine.rate_ml_per_kg_h(hourly, T0 + 6 * HOUR, 6, 70.0) == pytest.approx(0.5)

    def test_a_window_with_missing_charting_gives_no_rate(self):
        hourly = [[T0 + h * HOUR, T0 + (h + 1) * HOUR, 5.0] for h in (0, 1, 2)]
        assert urine.rate_ml_per_kg_h(hourly, T0 + 6 * HOUR, 6, 70.0) is None

    def test_long_collections_are_pro_rated(self):
        day = [[T0, T0 + 24 * HOUR, 2400.0]]
        assert urine.rate_ml_per_kg_h(day, T0 + 24 * HOUR, 3, 50.0) == pytest.approx(2.0)


def test_leukocytosis_takes_the_highest_wbc_over_12():
    e = supportive.leukocytosis([[T0, 11.0], [T0 + HOUR, 19.0], [T0 + 2 * HOUR, 15.0]], T0, TH)
    assert e.value == 19.0
    assert supportive.leukocytosis([[T0, 11.9]], T0, TH) is None


class TestThresholdsConfig:
    def test_toml_overrides_defaults_in_tables_or_flat(self, tmp_path):
        f = tmp_path / "t.toml"
        f.write_text("sbp_low_mmhg = 85\n[hemoconcentration]\nhct_high_male_pct = 52\n")
        th = load_thresholds(f)
        assert th.sbp_low_mmhg == 85.0 and th.hct_high_male_pct == 52.0
        assert th.map_low_mmhg == TH.map_low_mmhg

    def test_unknown_keys_are_refused(self):
        with pytest.raises(ThresholdsError, match="sbp_lwo_mmhg"):
            thresholds_from_mapping({"sbp_lwo_mmhg": 80})

    def test_wrong_types_and_negative_values_are_refused(self):
        with pytest.raises(ThresholdsError):
            thresholds_from_mapping({"sbp_low_mmhg": "eighty"})
        with pytest.raises(ThresholdsError):
            thresholds_from_mapping({"sbp_low_mmhg": -1})

    def test_missing_or_invalid_files_say_so(self, tmp_path):
        with pytest.raises(ThresholdsError, match="not found"):
            load_thresholds(tmp_path / "nope.toml")
        bad = tmp_path / "bad.toml"
        bad.write_text("= nope")
        with pytest.raises(ThresholdsError, match="not valid TOML"):
            load_thresholds(bad)

    def test_derived_slot_length_follows_an_override(self):
        assert thresholds_from_mapping({"bp_slot_min": 10}).bp_slot_ms == 600_000


def test_the_example_thresholds_file_documents_the_defaults():
    from pathlib import Path

    from detectors.config import DEFAULT_THRESHOLDS

    example = Path(__file__).resolve().parent.parent / "deploy" / "thresholds.example.toml"
    assert load_thresholds(example) == DEFAULT_THRESHOLDS


def test_the_shifted_dates_file_changes_only_the_streams_wall_clock_check():
    """deploy/thresholds.shifted-dates.toml (date-shifted data into a live worker) must not
    change a clinical threshold, or the stream would no longer compare with the replay."""
    from dataclasses import replace
    from pathlib import Path

    from detectors.config import DEFAULT_THRESHOLDS

    path = Path(__file__).resolve().parent.parent / "deploy" / "thresholds.shifted-dates.toml"
    shifted = load_thresholds(path)
    import time
    from datetime import UTC, datetime

    latest_mimic_ms = datetime(2211, 1, 1, tzinfo=UTC).timestamp() * 1000
    assert time.time() * 1000 + shifted.stream_future_h * 3_600_000 > latest_mimic_ms
    assert replace(shifted, stream_future_h=DEFAULT_THRESHOLDS.stream_future_h) \
        == DEFAULT_THRESHOLDS


class TestConfounders:
    """detectors.confounders, one boundary each."""

    @staticmethod
    def state(**rows):
        from detectors.state import PatientState
        st = PatientState("p1")
        st.iv = {k: v for k, v in rows.items()}
        return st

    def test_red_cells_explain_three_points_a_unit_scaled_by_weight(self):
        from detectors.confounders import hct_points_from_red_cells, red_cell_ml
        st = self.state(rc=[[T0, T0, 300.0, None, 0], [T0 + 10 * HOUR, T0 + 10 * HOUR, 600.0,
                                                       None, 1]])
        assert red_cell_ml(st, T0 - 1, T0) == 300.0  # (after, until]
        assert red_cell_ml(st, T0, T0 + 10 * HOUR) == 600.0
        assert hct_points_from_red_cells(st, T0 - 1, T0, 70.0, TH) == pytest.approx(3.0)
        assert hct_points_from_red_cells(st, T0 - 1, T0, 35.0, TH) == pytest.approx(6.0)
        assert hct_points_from_red_cells(st, T0, T0 + HOUR, 70.0, TH) == 0.0

    def test_albumin_infused_within_the_window_before_a_draw(self):
        from detectors.confounders import albumin_infused_before
        st = self.state(al=[[T0, T0, 100.0, None, 0]])
        assert albumin_infused_before(st, T0, TH)
        assert albumin_infused_before(st, T0 + 24 * HOUR, TH)
        assert not albumin_infused_before(st, T0 + 24 * HOUR + 1, TH)
        assert not albumin_infused_before(st, T0 - 1, TH)

    def test_a_pressor_runs_from_its_start_until_its_end_or_an_hour(self):
        from detectors.confounders import pressor_rate
        st = self.state(vp=[[T0, T0 + 2 * HOUR, None, 0.2, 0], [T0 + 5 * HOUR, None, 1.0, None, 1]])
        assert pressor_rate(st, T0, TH) == pytest.approx(0.2)
        assert pressor_rate(st, T0 + 2 * HOUR - 1, TH) == pytest.approx(0.2)
        assert pressor_rate(st, T0 + 2 * HOUR, TH) == 0.0
        assert pressor_rate(st, T0 - 1, TH) == 0.0
        assert pressor_rate(st, T0 + 5 * HOUR + 59 * MIN, TH) == 1.0  # a bolus: 1 h, rate 1
        assert pressor_rate(st, T0 + 6 * HOUR, TH) == 0.0

    def test_a_pressor_holds_the_pressure_unless_weaning_to_half_its_peak(self):
        from detectors.confounders import first_unheld, pressure_held_by_pressor
        st = self.state(vp=[[T0, T0 + 2 * HOUR, None, 0.2, 0],
                            [T0 + 2 * HOUR, T0 + 9 * HOUR, None, 0.1, 1],
                            [T0 + 9 * HOUR, T0 + 20 * HOUR, None, 0.11, 2]])
        assert pressure_held_by_pressor(st, T0 + HOUR, TH)
        assert not pressure_held_by_pressor(st, T0 + 3 * HOUR, TH)  # 0.1 = half of 0.2: weaning
        assert pressure_held_by_pressor(st, T0 + 9 * HOUR, TH)  # the 0.2 peak is 7 h old
        assert not pressure_held_by_pressor(st, T0 + 21 * HOUR, TH)  # stopped
        assert first_unheld(st, T0, T0 + 12 * HOUR, TH) == T0 + 2 * HOUR
        assert first_unheld(st, T0 + 9 * HOUR, T0 + 12 * HOUR, TH) is None
        assert first_unheld(st, T0 + 9 * HOUR, T0 + 20 * HOUR, TH) == T0 + 20 * HOUR

    def test_a_gain_is_explained_when_the_balance_covers_half_of_it(self):
        from detectors.confounders import gain_explained_by_fluids
        from detectors.state import FLUID_BUCKET_MS, add_fluid
        st = self.state()
        t0 = (T0 // FLUID_BUCKET_MS + 1) * FLUID_BUCKET_MS  # on the 6-hour buckets
        assert gain_explained_by_fluids(st, t0, t0 + 24 * HOUR, 2.0, TH) is None  # no data
        add_fluid(st, t0, t0 + 12 * HOUR, 2000.0, 0)
        add_fluid(st, t0, t0 + 12 * HOUR, 1000.0, 1)
        assert gain_explained_by_fluids(st, t0, t0 + 12 * HOUR, 2.0, TH) == pytest.approx(1.0)
        assert gain_explained_by_fluids(st, t0, t0 + 12 * HOUR, 2.1, TH) is None
        assert gain_explained_by_fluids(st, t0, t0 + 12 * HOUR, 0.0, TH) is None
