"""Properties over generated input: nothing raises, and order within bounds does not matter."""

from __future__ import annotations

import random

from builders import HOUR, MIN, T0, run
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detectors.observation import Observation, Rejection, normalise, parse_time_ms
from detectors.phases import flush, step
from detectors.units import KINDS
from streams.offline.simulator import PROFILES, make_patient

anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                       children, max_size=3),
    max_leaves=6)

raw_observation = st.fixed_dictionaries(
    {},
    optional={
        "patient_id": st.one_of(st.text(max_size=8), anything),
        "kind": st.one_of(st.sampled_from([*KINDS, "HCT", "8480-6", "glucose", ""]), anything),
        "value": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                           st.text(max_size=6), anything),
        "unit": st.one_of(st.sampled_from(["mmHg", "kPa", "L/L", "%", "g/L", "/uL", "[lb_av]",
                                           "mL", "furlong", ""]), anything),
        "observed_at": st.one_of(st.integers(), st.text(max_size=30),
                                 st.just("2026-11-25T04:10:00Z"), anything),
        "period_min": st.one_of(st.floats(), st.integers(), st.text(max_size=4), anything),
        "source": anything, "id": anything,
    })


@settings(max_examples=400, deadline=None)
@given(raw=st.one_of(raw_observation, anything))
def test_normalise_never_raises_and_always_decides(raw):
    result = normalise(raw)
    assert isinstance(result, Observation | Rejection)
    if isinstance(result, Observation):
        spec = KINDS[result.kind]
        assert spec.low <= result.value <= spec.high


valid_observation = st.builds(
    lambda kind, frac, minute, period: Observation(
        "p", kind, KINDS[kind].low + frac * (KINDS[kind].high - KINDS[kind].low),
        T0 + minute * MIN, "", period if kind == "urine_output" else None, ""),
    st.sampled_from(sorted(KINDS)), st.floats(0, 1), st.integers(-3000, 20_000),
    st.one_of(st.none(), st.floats(1, 1440)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(valid_observation, max_size=120))
def test_step_never_raises_on_any_sequence_of_valid_observations(stream):
    state = None
    for o in stream:
        r = step(state, o)
        state = r.state
        assert r.status in ("accepted", "duplicate", "late", "rejected")
        assert (r.rejection is not None) == (r.status == "rejected")
    if state is not None:
        flush(state)
        assert len(state.to_json()) < 8192


LABS = ("hematocrit", "albumin", "leukocytes", "hemoglobin")


def shuffled_within_bounds(rows, seed, vital_jitter_ms=3 * MIN, lab_delay_ms=4 * HOUR,
                           stamp=False):
    """Arrival order of a real feed: vitals up to 3 min late, each lab panel up to 4 h late
    (``stamp``: each row also says when it arrived, as ``available_at``)."""
    rng = random.Random(seed)
    panel_delay = {}

    def arrival(row):
        t = parse_time_ms(row["observed_at"])
        if row["kind"] in LABS:
            return t + panel_delay.setdefault(t, rng.uniform(0, lab_delay_ms))
        return t + rng.uniform(0, vital_jitter_ms)

    timed = sorted(((arrival(r), i, r) for i, r in enumerate(rows)), key=lambda x: x[:2])
    if stamp:
        return [dict(r, available_at=int(a)) for a, _, r in timed]
    return [r for _, _, r in timed]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(PROFILES), seed=st.integers(0, 10_000),
       shuffle_seed=st.integers(0, 10_000))
# a counterexample a random run once found (a relapse, shuffled): kept in every run
@example(profile="scls_relapse", seed=528, shuffle_seed=0)
def test_shuffling_arrival_within_the_lateness_bounds_changes_no_alert_id(profile, seed,
                                                                          shuffle_seed):
    p = make_patient("p", profile, seed, T0, hours=120, vitals_every_min=5)
    in_order = sorted(p.observations, key=lambda r: parse_time_ms(r["observed_at"]))
    expected, _ = run(in_order, p.context())
    got, _ = run(shuffled_within_bounds(p.observations, shuffle_seed), p.context())
    assert [(a.alert_id, a.onset_at_ms) for a in got] == [(a.alert_id, a.onset_at_ms)
                                                          for a in expected]


#: the kind of observation behind each evidence criterion that names one reading
_EVIDENCE_KIND = {"hemoconcentration": "hematocrit", "hypoalbuminemia": "albumin",
                  "leukocytosis": "leukocytes", "hematocrit_falling": "hematocrit",
                  "rapid_weight_gain": "weight", "weight_over_baseline": "weight"}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(PROFILES), seed=st.integers(0, 10_000),
       shuffle_seed=st.integers(0, 10_000))
def test_raised_at_never_precedes_the_arrival_of_its_evidence(profile, seed, shuffle_seed):
    p = make_patient("p", profile, seed, T0, hours=120, vitals_every_min=5)
    rows = shuffled_within_bounds(p.observations, shuffle_seed, stamp=True)
    arrived = {(r["kind"], parse_time_ms(r["observed_at"])): r["available_at"] for r in rows}
    alerts, _ = run(rows, p.context())
    for a in alerts:
        assert a.raised_at_ms >= a.onset_at_ms
        for e in a.evidence:
            assert a.raised_at_ms >= e.observed_at_ms
            kind = _EVIDENCE_KIND.get(e.criterion)
            if kind is not None:
                assert a.raised_at_ms >= arrived[(kind, e.observed_at_ms)], (a.summary, e)


def _out_of_series(rows, rng):
    """One value that does not fit the patient's series, at a random place in the stream."""
    weights = [r for r in rows if r["kind"] == "weight"]
    hcts = [r for r in rows if r["kind"] == "hematocrit"]
    choice = rng.randrange(4)
    if choice == 0 and weights:  # a unit slip: kg read as g/10, or x10
        w = rng.choice(weights)
        bad = dict(w, value=round(w["value"] * rng.choice((0.1, 10.0)) % 400 or 1.0, 1),
                   observed_at=parse_time_ms(w["observed_at"]) + 3 * HOUR)
    elif choice == 1 and hcts:  # a Hct 40 points off 30 min after a draw
        h = rng.choice(hcts)
        value = h["value"] + 40 if h["value"] < 40 else h["value"] - 30
        bad = dict(h, value=value, observed_at=parse_time_ms(h["observed_at"]) + 30 * MIN)
    else:  # one wild blood pressure reading
        v = rng.choice([r for r in rows if r["kind"] in ("sbp", "map")])
        bad = dict(v, value=25 if v["kind"] == "map" else 40,
                   observed_at=parse_time_ms(v["observed_at"]) + MIN)
    at = next(i for i, r in enumerate(rows)
              if parse_time_ms(r["observed_at"]) >= parse_time_ms(bad["observed_at"]))
    return rows[:at] + [bad] + rows[at:]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(PROFILES), seed=st.integers(0, 10_000),
       where=st.integers(0, 10_000))
def test_a_single_out_of_series_value_never_creates_or_removes_an_alert(profile, seed, where):
    p = make_patient("p", profile, seed, T0, hours=120, vitals_every_min=5)
    rows = sorted(p.observations, key=lambda r: parse_time_ms(r["observed_at"]))
    expected, _ = run(rows, p.context())
    got, _ = run(_out_of_series(rows, random.Random(where)), p.context())
    assert [a.alert_id for a in got] == [a.alert_id for a in expected]
