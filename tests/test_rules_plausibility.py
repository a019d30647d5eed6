"""Rules of plausibility against the patient's own series (``detectors.plausibility``), pinned at
their thresholds (issue 13): a reading's time against the patient's horizon, a weighing or a Hct
against the patient's neighbouring values.

Each bound is computed from the thresholds object, so a deliberate change of
``future_tolerance_h``, ``stay_gap_h``, ``weight_jump_*`` or ``hct_jump_*`` moves the test with
it, while a broken comparison, unit or condition turns it red (``make mutation`` checks them the
same way). The states are built by hand: ``check_time``, ``advance_horizon`` and ``check_jump``
are pure functions of them.
"""

from __future__ import annotations

from dataclasses import replace
from statistics import median

import pytest
from builders import HOUR, MIN, T0, feed, lab_panel, obs

from detectors.config import DEFAULT_THRESHOLDS as TH
from detectors.observation import Rejection, format_time
from detectors.plausibility import ARTEFACT_JUMP, NEW_STAY, advance_horizon, check_jump, check_time
from detectors.state import PatientState

#: the patient's horizon (latest plausible reading) in the time tests
H = T0 + 100 * HOUR
TOLERANCE = TH.future_tolerance_ms
GAP = TH.stay_gap_ms
DAY_H = TH.weight_jump_unknown_age_h  # the age of an admission weight with no weighing yet


def horizon_at(t, near=2, ahead=0):
    """A patient whose latest reading is at ``t``, backed by ``near`` readings (2: supported)."""
    st = PatientState("p1")
    st.max_t, st.near, st.ahead = t, near, ahead
    return st


def verdict(result):
    """check_time's answer in words: fits, new stay, or the rejection's reason."""
    if result is None:
        return "fits"
    return result.reason if isinstance(result, Rejection) else result


# --- time: in the future ------------------------------------------------------------------------

def test_a_reading_exactly_the_future_tolerance_after_the_horizon_fits_one_ms_more_is_held():
    assert check_time(horizon_at(H), H + TOLERANCE, TH) is None
    st = horizon_at(H)
    assert verdict(check_time(st, H + TOLERANCE + 1, TH)) == "bad_time"
    assert st.ahead == H + TOLERANCE + 1  # held, waiting for a second reading near it
    assert st.max_t == H  # and it never moves the horizon


def test_the_in_the_future_detail_names_both_times_and_how_far_apart_they_are():
    year_ahead = H + 365 * 24 * HOUR
    rejection = check_time(horizon_at(H), year_ahead, TH)
    assert rejection.detail == (
        f"{format_time(year_ahead)} is 365.0 days after the patient's latest reading "
        f"({format_time(H)}): in the future (a second reading near it starts the patient's new "
        "time, or a new stay)")


@pytest.mark.parametrize(("ahead_h", "shown"), [(30.0, "30.0 h"), (47.9, "47.9 h"),
                                               (48.0, "2.0 days")])
def test_how_far_ahead_a_reading_is_reads_in_hours_below_two_days_in_days_from_then(ahead_h,
                                                                                   shown):
    th = replace(TH, future_tolerance_h=24.0)  # a tolerance that lets hours show
    rejection = check_time(horizon_at(H), H + int(ahead_h * HOUR), th)
    assert f" is {shown} after the patient's latest reading" in rejection.detail


def test_a_second_reading_up_to_the_tolerance_before_the_held_one_confirms_it_earlier_does_not():
    held = H + 3 * TOLERANCE  # both readings far enough ahead to be held on their own
    st = horizon_at(H)
    check_time(st, held, TH)
    # it agrees: the patient's time moved on (a new stay when that is beyond the stay gap)
    assert verdict(check_time(st, held - TOLERANCE, TH)) in ("fits", NEW_STAY)
    assert st.ahead == 0
    st = horizon_at(H)
    check_time(st, held, TH)
    assert verdict(check_time(st, held - TOLERANCE - 1, TH)) == "bad_time"
    assert st.ahead == held - TOLERANCE - 1  # now that one waits for confirmation


def _tolerance_below_the_stay_gap():
    """Thresholds where the future tolerance is a quarter of the stay gap, so that a confirmed
    move ahead can stay within the stay."""
    return replace(TH, future_tolerance_h=TH.stay_gap_h / 4)


@pytest.mark.parametrize(("ahead_ms", "expected"), [(GAP, "fits"), (GAP + 1, NEW_STAY)],
                         ids=["stay_gap_ahead_same_stay", "beyond_stay_gap_new_stay"])
def test_a_confirmed_move_ahead_is_a_new_stay_only_beyond_the_stay_gap(ahead_ms, expected):
    th = _tolerance_below_the_stay_gap()
    st = horizon_at(H)
    assert verdict(check_time(st, H + ahead_ms, th)) == "bad_time"
    assert verdict(check_time(st, H + ahead_ms, th)) == expected


def test_after_a_confirmed_move_ahead_the_next_jump_ahead_is_held_again():
    th = _tolerance_below_the_stay_gap()
    st = horizon_at(H)
    moved = H + th.stay_gap_ms // 2
    check_time(st, moved, th)
    assert check_time(st, moved, th) is None  # confirmed, same stay: the caller moves on
    advance_horizon(st, moved, th)
    jump = moved + th.stay_gap_ms // 2
    assert verdict(check_time(st, jump, th)) == "bad_time"  # one reading never confirms itself


# --- time: outside the stay ---------------------------------------------------------------------

def test_a_reading_exactly_the_stay_gap_before_a_supported_horizon_fits_one_ms_earlier_is_refused():
    assert check_time(horizon_at(H), H - GAP, TH) is None
    rejection = check_time(horizon_at(H), H - GAP - 1, TH)
    assert rejection.reason == "bad_time"
    gap_h = GAP / HOUR
    shown = f"{gap_h / 24:.1f} days" if gap_h >= 48 else f"{gap_h:.1f} h"  # days from 48 h on
    assert rejection.detail == (
        f"{format_time(H - GAP - 1)} is {shown} before the patient's latest reading "
        f"({format_time(H)}): outside this stay")


def test_a_reading_far_before_a_lone_reading_restarts_the_stay_instead():
    """cases/07: the horizon rested on one reading dated ahead; that one was the date error."""
    assert check_time(horizon_at(H, near=1), H - GAP - 1, TH) == NEW_STAY


# --- time: what supports a horizon --------------------------------------------------------------

def _far_before(st, th=TH):
    """What a reading more than the stay gap before the horizon gets: a lone horizon restarts
    the stay (``new_stay``), a supported one refuses it (``bad_time``)."""
    return verdict(check_time(st, st.max_t - th.stay_gap_ms - 1, th))


def _horizon_from(times, th=TH):
    st = PatientState("p1")
    for t in times:
        advance_horizon(st, t, th)
    return st


def test_a_first_reading_alone_is_a_lone_horizon():
    assert _far_before(_horizon_from([H])) == NEW_STAY


@pytest.mark.parametrize("after", [HOUR, TOLERANCE], ids=["an_hour_later", "tolerance_later"])
def test_a_second_reading_up_to_the_tolerance_after_the_first_supports_the_horizon(after):
    st = _horizon_from([H, H + after])
    assert st.max_t == H + after
    assert _far_before(st) == "bad_time"


def test_a_reading_more_than_the_tolerance_after_the_horizon_is_a_lone_horizon_again():
    """(the reading a confirmed move ahead lets through starts a horizon of its own)"""
    st = _horizon_from([H, H + HOUR, H + HOUR + TOLERANCE + 1])
    assert _far_before(st) == NEW_STAY


@pytest.mark.parametrize("before", [HOUR, TOLERANCE], ids=["an_hour_before", "tolerance_before"])
def test_a_reading_up_to_the_tolerance_before_a_lone_horizon_supports_it(before):
    st = _horizon_from([H, H - before])
    assert st.max_t == H
    assert _far_before(st) == "bad_time"


def test_a_reading_further_before_a_lone_horizon_than_the_tolerance_does_not_support_it():
    th = _tolerance_below_the_stay_gap()
    st = _horizon_from([H, H - th.future_tolerance_ms - 1], th)
    assert _far_before(st, th) == NEW_STAY


# --- weight jumps -------------------------------------------------------------------------------

def allowed_kg(ref_kg, hours):
    """The documented weight-jump bound: max(5 kg, 10 % of the reference) + 1 kg per hour since
    the nearest recent weighing (docs/clinical-criteria.md, "weight jump")."""
    return max(TH.weight_jump_kg, ref_kg * TH.weight_jump_pct / 100.0) \
        + TH.weight_jump_kg_per_h * hours


def weighed(*rows, admission=None):
    """A patient with weighings ``(t, kg)`` and an optional ADT admission weight."""
    st = PatientState("p1", weight_kg=admission)
    st.wt = [[t, kg, 0] for t, kg in rows]
    return st


def weight_verdict(st, t, kg):
    result = check_jump(st, "weight", t, kg, TH)
    return "kept" if result is None else result.reason


#: a heavy patient, whose 10 % exceeds the 5 kg floor, and a light one, below it
HEAVY_KG = 3 * TH.weight_jump_kg * 100.0 / TH.weight_jump_pct
LIGHT_KG = 0.8 * TH.weight_jump_kg * 100.0 / TH.weight_jump_pct


@pytest.mark.parametrize("ref_kg", [HEAVY_KG, LIGHT_KG], ids=["heavy_10_percent", "light_5_kg"])
@pytest.mark.parametrize("sign", [1, -1], ids=["gain", "loss"])
def test_a_weighing_at_the_jump_bound_is_kept_beyond_it_is_an_artefact(ref_kg, sign):
    """max(5 kg, 10 %) + 1 kg per hour: two hours after the last weighing."""
    assert (ref_kg * TH.weight_jump_pct / 100.0 > TH.weight_jump_kg) is (ref_kg == HEAVY_KG)
    t = T0 + 2 * HOUR
    bound = allowed_kg(ref_kg, 2.0)
    st = weighed((T0, ref_kg))
    assert weight_verdict(st, t, ref_kg + sign * bound) == "kept"
    assert weight_verdict(weighed((T0, ref_kg)), t, ref_kg + sign * (bound + 0.1)) == ARTEFACT_JUMP


def test_the_reference_is_the_median_of_the_last_three_weighings_an_older_one_does_not_count():
    """docs: "the median of the last 3 weighings and the admission weight"."""
    rows = [(T0, 60.0), (T0 + 24 * HOUR, 70.0), (T0 + 48 * HOUR, 80.0), (T0 + 60 * HOUR, 80.0)]
    t = T0 + 72 * HOUR
    bound = allowed_kg(80.0, 12.0)
    kg = 80.0 + bound
    assert kg - median([60.0, 70.0, 80.0, 80.0]) > bound  # the older weighing would refuse it
    assert weight_verdict(weighed(*rows), t, kg) == "kept"
    assert weight_verdict(weighed(*rows), t, kg + 0.1) == ARTEFACT_JUMP


def test_the_admission_weight_is_a_reference_before_any_weighing():
    """With no weighing yet the admission weight alone is the reference, taken as a day old
    (the code's default distance when there is no weighing to measure it from)."""
    assert weight_verdict(weighed(), T0, 8.2) == "kept"  # nothing to compare with
    bound = allowed_kg(80.0, DAY_H)
    assert weight_verdict(weighed(admission=80.0), T0, 80.0 + bound) == "kept"
    assert weight_verdict(weighed(admission=80.0), T0, 80.0 + bound + 0.1) == ARTEFACT_JUMP
    rejection = check_jump(weighed(admission=82.0), "weight", T0, 8.2, TH)
    assert rejection.detail == (
        f"weight 8.2 kg at {format_time(T0)} differs from the patient's recent weighings (none; "
        f"admission weight 82 kg; median 82 kg) by more than {allowed_kg(82.0, DAY_H):.1f} kg: "
        "artefact (a second weighing that agrees with it replaces them)")


def test_the_weight_jump_detail_lists_the_recent_weighings_the_admission_weight_and_the_median():
    rows = [(T0, 82.0), (T0 + 12 * HOUR, 82.3), (T0 + 24 * HOUR, 82.1)]
    t = T0 + 25 * HOUR
    rejection = check_jump(weighed(*rows, admission=81.0), "weight", t, 8.2, TH)
    assert rejection.reason == ARTEFACT_JUMP
    ref = median([82.0, 82.3, 82.1, 81.0])
    assert rejection.detail == (
        f"weight 8.2 kg at {format_time(t)} differs from the patient's recent weighings "
        f"(82 kg at {format_time(T0)}, 82.3 kg at {format_time(T0 + 12 * HOUR)}, 82.1 kg at "
        f"{format_time(T0 + 24 * HOUR)}; admission weight 81 kg; median {ref:g} kg) by more "
        f"than {allowed_kg(ref, 1.0):.1f} kg: artefact (a second weighing that agrees with it "
        "replaces them)")
    rejection = check_jump(weighed(*rows), "weight", t, 8.2, TH)  # no admission weight
    assert rejection.detail == (
        f"weight 8.2 kg at {format_time(t)} differs from the patient's recent weighings "
        f"(82 kg at {format_time(T0)}, 82.3 kg at {format_time(T0 + 12 * HOUR)}, 82.1 kg at "
        f"{format_time(T0 + 24 * HOUR)}; median 82.1 kg) by more than "
        f"{allowed_kg(82.1, 1.0):.1f} kg: artefact (a second weighing that agrees with it "
        "replaces them)")


def _after_one_artefact(first_kg, admission=None):
    """An 80 kg patient weighed 80 kg twice, then ``first_kg`` refused as a jump."""
    st = weighed((T0, 80.0), (T0 + HOUR, 80.0), admission=admission)
    assert weight_verdict(st, T0 + 2 * HOUR, first_kg) == ARTEFACT_JUMP
    return st


def test_a_second_weighing_within_10_percent_of_a_refused_one_agrees_with_it_and_is_kept():
    """Two weighings agree when they differ by at most max(5 kg, 10 % of the newer)."""
    second = 200.0
    first = second - second * TH.weight_jump_pct / 100.0
    assert second * TH.weight_jump_pct / 100.0 > TH.weight_jump_kg
    assert weight_verdict(_after_one_artefact(first), T0 + 3 * HOUR, second) == "kept"
    st = _after_one_artefact(first)
    assert weight_verdict(st, T0 + 3 * HOUR, second + 1.0) == ARTEFACT_JUMP
    assert st.wref == [T0 + 3 * HOUR, second + 1.0]  # the newest refused one waits for its twin


def test_two_light_weighings_agree_within_5_kg():
    second = LIGHT_KG
    assert second * TH.weight_jump_pct / 100.0 < TH.weight_jump_kg
    first = second + TH.weight_jump_kg
    st = weighed((T0, 120.0), (T0 + HOUR, 120.0))
    assert weight_verdict(st, T0 + 2 * HOUR, first) == ARTEFACT_JUMP
    assert weight_verdict(st, T0 + 3 * HOUR, second) == "kept"


def _wrong_series(extra_rows=(), admission=None):
    """Three recent weighings of 60 kg (a wrong reference), a refused 80 kg one hour ago, and an
    80.5 kg weighing now: the two agree and replace the 60s. Two hours since the last 60."""
    rows = [*extra_rows, (T0, 60.0), (T0 + 30 * MIN, 60.0), (T0 + HOUR, 60.0)]
    st = weighed(*rows, admission=admission)
    st.wref = [T0 + 2 * HOUR, 80.0]
    return st, T0 + 3 * HOUR, 80.5


def test_weighings_that_agree_with_the_replacing_pair_stay_the_others_go():
    bound = allowed_kg(60.0, 2.0)
    kept_row = (T0 - 24 * HOUR, 80.5 - bound)  # exactly at the bound from the new weighing
    dropped_row = (T0 - 20 * HOUR, 80.5 - bound - 0.1)
    st, t, kg = _wrong_series([kept_row, dropped_row])
    st.blr["weight"] = [[T0 - 24 * HOUR, 60.0]]
    assert weight_verdict(st, t, kg) == "kept"
    assert st.wt == [[T0 - 24 * HOUR, 80.5 - bound, 0]]
    assert "weight" not in st.blr  # the baseline weighings rested on the wrong reference
    assert st.wref == []


@pytest.mark.parametrize(("admission", "kept"), [(80.5 - allowed_kg(60.0, 2.0), True),
                                                 (80.5 - allowed_kg(60.0, 2.0) - 0.1, False),
                                                 (60.0, False)],
                         ids=["at_the_bound_kept", "beyond_the_bound_dropped", "wrong_dropped"])
def test_an_admission_weight_that_agrees_with_the_replacing_pair_stays(admission, kept):
    st, t, kg = _wrong_series(admission=admission)  # no baseline weighings: nothing to clear
    assert weight_verdict(st, t, kg) == "kept"
    assert st.weight_kg == (admission if kept else None)
    assert st.wt == []


def test_a_replaced_reference_leaves_the_weight_baseline_too():
    """Through ``step``: 8.2 kg first (the stay's baseline weighing), then 82.0 and 82.2 kg that
    agree: the baseline is the 82.2 kg weighing, not a median with the 8.2."""
    rows = [obs("weight", w, T0 + h * HOUR, "kg") for h, w in ((0, 8.2), (12, 82.0), (24, 82.2))]
    _, st, rejected = feed(rows)
    assert [r.reason for r in rejected] == [ARTEFACT_JUMP]
    assert st.blr["weight"] == [[T0 + 24 * HOUR, 82.2]]


# --- Hct jumps ----------------------------------------------------------------------------------

def drawn(*rows):
    """A patient with Hct draws ``(t, %)``."""
    st = PatientState("p1")
    st.labs["hematocrit"] = [[t, value, 0] for t, value in rows]
    return st


def hct_verdict(st, t, value):
    result = check_jump(st, "hematocrit", t, value, TH)
    return "kept" if result is None else result.reason


def hct_bound(hours):
    return TH.hct_jump_points + TH.hct_jump_points_per_h * hours


@pytest.mark.parametrize("sign", [1, -1], ids=["rise", "fall"])
def test_a_hct_at_the_jump_bound_from_the_draw_before_is_kept_beyond_it_is_an_artefact(sign):
    """20 points + 10 per hour: half an hour after the previous draw."""
    t = T0 + 30 * MIN
    assert hct_verdict(drawn((T0, 40.0)), t, 40.0 + sign * hct_bound(0.5)) == "kept"
    assert hct_verdict(drawn((T0, 40.0)), t, 40.0 + sign * (hct_bound(0.5) + 0.5)) \
        == ARTEFACT_JUMP


def test_a_late_hct_is_judged_by_the_draw_just_after_it_too():
    t = T0 + 30 * MIN
    assert hct_verdict(drawn((t + 30 * MIN, 40.0)), t, 40.0 + hct_bound(0.5)) == "kept"
    assert hct_verdict(drawn((t + 30 * MIN, 40.0)), t, 40.0 + hct_bound(0.5) + 0.5) \
        == ARTEFACT_JUMP


def test_a_hct_that_fits_one_neighbouring_draw_is_kept():
    """A real fast rise is bracketed by draws: it fits the later one, not the earlier one."""
    t = T0 + 30 * MIN
    st = drawn((T0, 20.0), (t + 30 * MIN, 60.0))
    assert 58.0 - 20.0 > hct_bound(0.5)
    assert hct_verdict(st, t, 58.0) == "kept"


def test_only_the_nearest_draws_before_and_after_are_neighbours():
    """An older or a later draw that the value would fit does not save it."""
    t = T0 + 12 * HOUR
    value = 40.0 + hct_bound(1.0) + 1.0
    older = drawn((t - 10 * HOUR, 40.0), (t - HOUR, 40.0))
    assert hct_verdict(older, t, value) == ARTEFACT_JUMP
    later = drawn((t + HOUR, 40.0), (t + 10 * HOUR, 40.0))
    assert hct_verdict(later, t, value) == ARTEFACT_JUMP
    assert value - 40.0 <= hct_bound(10.0)  # the far draws alone would have kept it


@pytest.mark.parametrize(("before", "after", "minutes"), [(23.0, 39.6, 50), (15.5, 8.9, 47)],
                         ids=["massive_transfusion", "haemorrhage"])
def test_the_fastest_real_hct_changes_of_the_mimic_demo_are_kept(before, after, minutes):
    assert hct_verdict(drawn((T0, before)), T0 + minutes * MIN, after) == "kept"


def test_the_hct_jump_detail_names_the_neighbouring_draws_and_the_bound():
    t = T0 + 2 * HOUR
    st = drawn((t - HOUR, 40.0), (t + HOUR, 41.5))
    rejection = check_jump(st, "hematocrit", t, 75.0, TH)
    assert rejection.reason == ARTEFACT_JUMP
    assert rejection.detail == (
        f"hematocrit 75 % at {format_time(t)} differs from the neighbouring draws (40 % at "
        f"{format_time(t - HOUR)}, 41.5 % at {format_time(t + HOUR)}) by more than "
        f"{TH.hct_jump_points:g} points + {TH.hct_jump_points_per_h:g} per hour: artefact")


def test_a_first_hct_has_no_neighbour_and_is_kept():
    assert hct_verdict(drawn(), T0, 75.0) == "kept"


def test_a_hct_jump_is_refused_by_step_and_never_enters_the_draws():
    value = 40.0 + hct_bound(1.0) + 1.0
    rows = lab_panel(T0, 40.0) + [obs("hematocrit", value, T0 + HOUR, "%")]
    _, st, rejected = feed(rows)
    assert [r.reason for r in rejected] == [ARTEFACT_JUMP]
    assert [row[1] for row in st.lab("hematocrit")] == [40.0]
