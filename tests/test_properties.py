"""Properties over generated input: nothing raises, and order within bounds does not matter."""

from __future__ import annotations

import random

from builders import HOUR, MIN, T0, run
from hypothesis import HealthCheck, given, settings
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


def shuffled_within_bounds(rows, seed, vital_jitter_ms=3 * MIN, lab_delay_ms=4 * HOUR):
    """Arrival order of a real feed: vitals up to 3 min late, each lab panel up to 4 h late."""
    rng = random.Random(seed)
    panel_delay = {}

    def arrival(row):
        t = parse_time_ms(row["observed_at"])
        if row["kind"] in ("hematocrit", "albumin", "leukocytes", "hemoglobin"):
            return t + panel_delay.setdefault(t, rng.uniform(0, lab_delay_ms))
        return t + rng.uniform(0, vital_jitter_ms)

    return sorted(rows, key=arrival)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(PROFILES), seed=st.integers(0, 10_000),
       shuffle_seed=st.integers(0, 10_000))
def test_in_order_and_shuffled_within_bounds_give_the_same_alerts(profile, seed, shuffle_seed):
    p = make_patient("p", profile, seed, T0, hours=120, vitals_every_min=5)
    in_order = sorted(p.observations, key=lambda r: parse_time_ms(r["observed_at"]))
    expected, _ = run(in_order, p.context())
    got, _ = run(shuffled_within_bounds(p.observations, shuffle_seed), p.context())
    assert [(a.alert_id, a.raised_at_ms) for a in got] == [(a.alert_id, a.raised_at_ms)
                                                           for a in expected]
