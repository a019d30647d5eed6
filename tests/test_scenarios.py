"""Whole patients through the engine: CLS episodes must alert, confounders must not.

Synthetic patients come from streams.offline.simulator (seeded; labs reported 1-3 h after the
draw, so arrival order is not event order). Handmade streams pin the exact timing rules.
"""

from __future__ import annotations

import json

import pytest
from builders import HOUR, MIN, T0, by_time, obs, phases, run, vitals

from detectors.alerts import Evidence
from detectors.config import thresholds_from_mapping
from detectors.observation import parse_time_ms
from detectors.state import PatientState
from streams.offline.simulator import make_patient

SEEDS = range(6)


def sim(profile, seed, **kw):
    p = make_patient(f"{profile}-{seed}", profile, seed, T0, **kw)
    alerts, state = run(p.observations, p.context())
    return p, alerts, state


def truth_start(p, phase, nth=0):
    starts = [parse_time_ms(t["start"]) for t in p.truth if t["phase"] == phase]
    return starts[nth]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_full_scls_episode_walks_through_leak_and_recovery(seed):
    p, alerts, _ = sim("scls", seed)
    seq = phases(alerts)
    entries = [a for a in alerts if a.phase == "leak" and a.previous_phase != "leak"]
    assert len(entries) == 1 and seq.count("recovery/warning") == 1
    assert alerts.index(entries[0]) < seq.index("recovery/warning")
    leak = entries[0]
    leak_start = truth_start(p, "leak")
    # the leak's onset is when hypotension and a hemoconcentrated draw are both there: labs are
    # drawn every 6 h, so within one draw interval (+ the 10-min persistence); it is raised when
    # that draw was REPORTED (1-3 h later in the simulator), never before
    assert leak_start <= leak.onset_at_ms <= leak_start + 7 * HOUR
    assert leak.onset_at_ms < leak.raised_at_ms <= leak.onset_at_ms + 3 * HOUR
    recovery = next(a for a in alerts if a.phase == "recovery")
    assert recovery.raised_at_ms >= truth_start(p, "recovery")
    assert all(a.episode == 1 for a in alerts)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_leak_is_escalated_to_critical_when_albumin_completes_the_triad(seed):
    _, alerts, _ = sim("scls", seed)
    critical = [a for a in alerts if a.phase == "leak" and a.severity == "critical"]
    assert len(critical) == 1
    # the whole triad in the one critical alert
    assert {"hypotension", "hemoconcentration", "hypoalbuminemia"} <= {
        e.criterion for e in critical[0].evidence}


@pytest.mark.parametrize("seed", SEEDS)
def test_recovery_warns_of_fluid_overload_when_polyuria_meets_a_heavy_patient(seed):
    _, alerts, _ = sim("scls", seed)
    overload = [a for a in alerts if a.phase == "recovery" and a.severity == "high"]
    assert len(overload) == 1
    assert {e.criterion for e in overload[0].evidence} == {"polyuria", "weight_over_baseline"}
    assert "pulmonary edema" in overload[0].summary


def test_every_alert_shows_its_evidence_with_values_thresholds_and_times():
    _, alerts, _ = sim("scls", 1)
    leak = next(a for a in alerts if a.phase == "leak")
    d = leak.to_dict()
    criteria = {e["criterion"] for e in d["evidence"]}
    assert {"hypotension", "hemoconcentration"} <= criteria
    for e in d["evidence"]:
        assert e["value"] > 0 and e["threshold"] and e["observed_at"].endswith("Z")
    hct = next(e for e in d["evidence"] if e["criterion"] == "hemoconcentration")
    assert "baseline" in hct and hct["value"] > hct["baseline"]
    # the summary reads in clinical words: the pressure that was low, the Hct and its baseline
    assert ("MAP " in d["summary"] or "SBP " in d["summary"]) and "Hct " in d["summary"]
    assert "baseline" in hct["text"] and hct["text"].startswith("Hct ")


@pytest.mark.parametrize("seed", SEEDS)
def test_a_relapse_during_recovery_opens_a_second_leak(seed):
    p, alerts, _ = sim("scls_relapse", seed)
    leaks = [a for a in alerts if a.phase == "leak" and a.previous_phase != "leak"]
    assert len(leaks) == 2
    assert leaks[1].previous_phase == "recovery" and leaks[1].episode == 2
    assert "Relapse" in leaks[1].summary
    # found within one lab interval of its onset, like the first (not a day late)
    assert leaks[1].onset_at_ms <= truth_start(p, "leak", 1) + 7 * HOUR


@pytest.mark.parametrize("profile", ["stable", "septic_shock", "dehydration", "diuretic",
                                     "artefact"])
@pytest.mark.parametrize("seed", SEEDS)
def test_confounders_and_stable_patients_raise_no_alert(profile, seed):
    _, alerts, _ = sim(profile, seed)
    assert alerts == [], [a.summary for a in alerts]


def test_septic_shock_without_hemoconcentration_does_not_alert_though_hypotensive():
    p, alerts, state = sim("septic_shock", 3, hours=48)
    assert any(r[7] for r in state.hypo), "the septic shock was seen as persistent hypotension"
    assert alerts == []


def test_a_female_patient_in_alternative_units_gets_the_same_alerts():
    canonical = make_patient("f1", "scls", 11, T0, sex="F")
    ucum = make_patient("f1", "scls", 11, T0, sex="F", alt_units=True)
    assert {o["unit"] for o in ucum.observations} >= {"kPa", "L/L", "g/L", "/uL", "[lb_av]"}
    a1, _ = run(canonical.observations, canonical.context())
    a2, _ = run(ucum.observations, ucum.context())
    assert [(a.alert_id, a.raised_at_ms) for a in a1] == [(a.alert_id, a.raised_at_ms)
                                                            for a in a2]
    assert any(a.phase == "leak" for a in a1)


def test_a_patient_without_context_still_gets_the_leak_alert():
    p = make_patient("anon", "scls", 4, T0)
    alerts, state = run(p.observations, context=None)
    assert state.sex is None and state.weight_kg is None
    assert any(a.phase == "leak" for a in alerts)


def late_lab_stream():
    """Hypotension from 10:00; Hct 56 % drawn at 10:30 but reported at 13:00."""
    rows = vitals(0, 10, 120, 85) + vitals(10, 14, 78, 55)
    rows += [obs("hematocrit", 40, T0 + 2 * HOUR, "%"), obs("hemoglobin", 13.3, T0 + 2 * HOUR)]
    draw = T0 + int(10.5 * HOUR)
    return rows, [obs("hematocrit", 56, draw, "%"), obs("hemoglobin", 18.7, draw)]


def test_a_late_lab_raises_the_alert_it_would_have_raised_in_order():
    rows, late_hct = late_lab_stream()
    in_order, _ = run(by_time(rows + late_hct))
    arrival = by_time(rows)
    cut = next(i for i, r in enumerate(arrival) if r["observed_at"] >= T0 + 13 * HOUR)
    late, _ = run(arrival[:cut] + late_hct + arrival[cut:])
    assert phases(in_order) == ["leak/high"]
    assert [(a.alert_id, a.onset_at_ms) for a in late] == [(a.alert_id, a.onset_at_ms)
                                                          for a in in_order]
    assert late[0].onset_at_ms == T0 + int(10.5 * HOUR)  # the evidence: the draw
    # possible only once the lab had arrived: after the vitals of 12:55 (the patient's clock
    # when it came), not at its draw
    assert late[0].raised_at_ms == T0 + 13 * HOUR - 5 * MIN


def test_a_single_noisy_weighing_does_not_raise_a_prodrome():
    rows = vitals(0, 72, 120, 85, every_min=15)
    rows += [obs("weight", w, T0 + h * HOUR, "kg") for h, w in
             ((2, 70.0), (14, 70.1), (26, 74.0), (38, 70.2), (50, 70.1))]
    alerts, _ = run(by_time(rows))
    assert alerts == []


def test_a_confirmed_rapid_weight_gain_with_normal_pressure_is_a_prodrome():
    rows = vitals(0, 72, 120, 85, every_min=15)
    rows += [obs("weight", w, T0 + h * HOUR, "kg") for h, w in
             ((2, 70.0), (14, 70.1), (26, 72.3), (38, 72.8))]
    alerts, _ = run(by_time(rows))
    assert phases(alerts) == ["prodromal/warning"]
    assert alerts[0].raised_at_ms == T0 + 38 * HOUR
    assert alerts[0].evidence[0].criterion == "rapid_weight_gain"


def test_a_heavy_weighing_with_a_falling_urine_output_is_a_prodrome_at_once():
    rows = vitals(0, 60, 120, 85, every_min=15)
    rows += [obs("weight", w, T0 + h * HOUR, "kg") for h, w in ((2, 70.0), (14, 70.1),
                                                                 (38, 72.5))]
    rows += [obs("urine_output", 70 if h < 30 else 25, T0 + (h + 1) * HOUR, "mL", period_min=60)
             for h in range(48)]
    alerts, _ = run(by_time(rows))
    assert phases(alerts) == ["prodromal/warning"]
    assert alerts[0].raised_at_ms == T0 + 38 * HOUR
    assert [e.criterion for e in alerts[0].evidence] == ["rapid_weight_gain",
                                                         "falling_urine_output"]


def test_a_prodrome_with_no_leak_closes_after_72_hours():
    rows = vitals(0, 120, 120, 85, every_min=15)
    rows += [obs("weight", w, T0 + h * HOUR, "kg") for h, w in
             ((2, 70.0), (14, 70.1), (26, 72.3), (38, 72.8))]
    alerts, _ = run(by_time(rows))
    assert phases(alerts) == ["prodromal/warning", "none/info"]
    assert alerts[1].raised_at_ms == T0 + (38 + 72) * HOUR


def test_dehydration_pattern_is_excluded_by_concentrated_albumin_in_the_same_panel():
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58)
    rows += [obs("hematocrit", 40, T0 + 4 * HOUR, "%"), obs("albumin", 4.0, T0 + 4 * HOUR),
             obs("hemoglobin", 13.3, T0 + 4 * HOUR)]
    draw = T0 + 21 * HOUR
    panel = [obs("hematocrit", 54, draw, "%"), obs("albumin", 4.9, draw, "g/dL"),
             obs("hemoglobin", 18.0, draw)]
    alerts, _ = run(by_time(rows + panel))
    assert alerts == []
    # the same shock with a leaking albumin is a leak, escalated at once
    panel = [obs("hematocrit", 54, draw, "%"), obs("albumin", 2.4, draw, "g/dL"),
             obs("hemoglobin", 18.0, draw)]
    alerts, _ = run(by_time(rows + panel))
    assert phases(alerts) == ["leak/high", "leak/critical"]


def test_redelivered_observations_do_not_change_the_alerts():
    p = make_patient("dup", "scls", 2, T0)
    once, _ = run(p.observations, p.context())
    twice_each = [o for o in p.observations for _ in range(2)]
    again, _ = run(twice_each, p.context())
    assert [a.alert_id for a in again] == [a.alert_id for a in once]


def test_state_saved_and_restored_after_every_observation_gives_the_same_alerts():
    """What a worker restart does with the table changelog, at every possible point."""
    from detectors.observation import normalise
    from detectors.phases import flush, step

    p = make_patient("rt", "scls_relapse", 5, T0, hours=168, vitals_every_min=15)
    expected, _ = run(p.observations, p.context())
    blob = None
    got = []
    for row in p.observations:
        state = PatientState.from_json(blob) if blob else None
        r = step(state, normalise(row))
        got.extend(r.alerts)
        blob = r.state.to_json()
    got.extend(flush(PatientState.from_json(blob)))
    assert [a.alert_id for a in got] == [a.alert_id for a in expected]


def test_alert_ids_are_deterministic_and_distinct_per_decision():
    _, a1, _ = sim("scls_relapse", 0)
    _, a2, _ = sim("scls_relapse", 0)
    assert [a.alert_id for a in a1] == [a.alert_id for a in a2]
    assert len({a.alert_id for a in a1}) == len(a1)


def test_thresholds_from_config_change_the_decision():
    rows = vitals(0, 10, 120, 85) + vitals(10, 12, 86, 70)
    rows += [obs("hematocrit", 40, T0 + HOUR), obs("hematocrit", 52, T0 + 11 * HOUR),
             obs("hemoglobin", 17.5, T0 + 11 * HOUR)]
    default, _ = run(by_time(rows))
    assert phases(default) == ["leak/high"]
    strict = thresholds_from_mapping({"sbp_low_mmhg": 80})
    alerts, _ = run(by_time(rows), th=strict)
    assert alerts == []


def test_an_sbp_not_above_the_dbp_of_the_same_reading_is_rejected():
    from detectors.observation import normalise
    from detectors.phases import step

    t = T0
    r = step(None, normalise(obs("dbp", 80, t, "mmHg")))
    r = step(r.state, normalise(obs("sbp", 75, t, "mmHg")))
    assert r.status == "rejected" and r.rejection.reason == "inconsistent"


def test_state_stays_under_4_kb_after_a_week_of_one_minute_vitals():
    p = make_patient("big", "scls_relapse", 9, T0, hours=168, vitals_every_min=1)
    _, state = run(p.observations, p.context())
    assert len(p.observations) > 168 * 60 * 3
    assert len(state.to_json()) < 4096


def test_a_reading_too_late_for_the_hypotension_rule_is_counted_for_the_patient_and_shown():
    """A cuff reading that arrives 10 h behind the patient's newest is kept but cannot rewrite
    the closed blood-pressure runs: the patient's state counts it, and the next alert says so
    with the same id and times (issue 14: a reading is never left out of detection silently)."""
    def panel(t: int, hct: float) -> list[dict]:
        return [obs("hematocrit", hct, t, "%"), obs("hemoglobin", hct / 3.0, t, "g/dL")]

    before = vitals(0, 20, sbp=120, map_=85) + panel(T0 + 4 * HOUR, 40)
    late = obs("sbp", 70, T0 + 10 * HOUR, "mmHg")
    shock = by_time(vitals(20, 30, sbp=80, map_=58) + panel(T0 + 21 * HOUR, 55))
    alerts, st = run(by_time(before) + shock[:3] + [late] + shock[3:])  # before the panel
    assert st is not None and st.late == [1, T0 + 10 * HOUR]
    assert PatientState.from_json(st.to_json()).late == st.late  # kept in the table
    assert phases(alerts) == ["leak/high"]
    shown = [e for e in alerts[0].evidence if e.criterion == "late_bp_readings"]
    assert [(e.value, e.observed_at_ms) for e in shown] == [(1, T0 + 10 * HOUR)]
    assert "1 late blood-pressure readings not used" in alerts[0].summary
    in_order, st_in_order = run(by_time([*before, late, *shock]))
    assert st_in_order is not None and not st_in_order.late
    assert [(a.alert_id, a.raised_at_ms, a.onset_at_ms) for a in in_order] == \
        [(a.alert_id, a.raised_at_ms, a.onset_at_ms) for a in alerts]
    assert all(e.criterion != "late_bp_readings" for a in in_order for e in a.evidence)
    assert json.dumps(shown[0].to_dict()["value"]) == "1"


def test_a_count_in_the_evidence_prints_as_a_whole_number_whatever_type_holds_it():
    """A count of readings reads "8" in the alert's JSON, also when the value was stored as a
    float (a build compiled by mypyc keeps ``Evidence.value`` as a C double)."""
    for held in (8, 8.0):
        evidence = Evidence("late_bp_readings", held, "readings", "> 60 min", T0)
        assert json.dumps(evidence.to_dict()["value"]) == "8"
    assert json.dumps(Evidence("hypotension", 78.0, "mmHg", "<= 90", T0).to_dict()["value"]) \
        == "78.0"


@pytest.mark.parametrize("seed", SEEDS)
def test_every_evidence_text_shows_numbers_as_a_clinician_charts_them(seed):
    """Simulated (and interpolated) values carry many decimals: a text must round them like a
    chart does (pressure to the mmHg, hematocrit to 0.1 %), never "SBP 116.021 mmHg"."""
    import re

    _, alerts, _ = sim("scls", seed)
    texts = [e.text for a in alerts for e in a.evidence]
    assert any("Hematocrit" in t or "Hct" in t for t in texts)
    over_precise = [t for t in texts
                    if re.search(r"(?:SBP|MAP|DBP) \d+\.\d", t) or re.search(r"\d+\.\d\d+ %", t)]
    assert over_precise == []
