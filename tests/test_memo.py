"""The views the engine remembers between decisions (detectors/memo.py) are exactly the pure
functions' answers, whatever happened to the state in between: 1-minute vitals (slots closed
every 5 minutes), vitals and lab panels arriving late, retractions and corrections of labs and
weighings, red cells given, a restart from the serialised state, a new stay."""

from __future__ import annotations

import random
from typing import Any

import pytest
from builders import HOUR, MIN, T0, obs, vitals
from test_properties import shuffled_within_bounds

from detectors import memo
from detectors.criteria import hemoconcentration, weight_gain
from detectors.criteria import hypotension as bp
from detectors.interventions import parse_intervention
from detectors.observation import Rejection, normalise, parse_context, parse_time_ms
from detectors.phases import apply_context, flush, step
from detectors.state import PatientState
from streams.offline.simulator import make_patient


def _checked(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap each memo view so that every answer it gives the engine is compared with the pure
    function's answer on the same state (the memo's own history is left as the engine makes
    it)."""
    asked = {"runs": 0, "hct": 0, "gain": 0}
    runs, hcts, gain = memo.bp_runs, memo.hemoconcentrated, memo.confirmed_gain

    def checked_runs(st: PatientState, th: Any) -> Any:
        got = runs(st, th)
        assert got == bp.runs(st.slots, st.hypo, st.norm, st.fold, th)
        asked["runs"] += 1
        return got

    def checked_hcts(st: PatientState, weight_kg: float, th: Any) -> Any:
        got = hcts(st, weight_kg, th)
        assert got == hemoconcentration.findings(st, weight_kg, th)
        asked["hct"] += 1
        return got

    def checked_gain(st: PatientState, baseline: float, since: int, th: Any, sign_of: Any
                     ) -> Any:
        got = gain(st, baseline, since, th, sign_of)
        assert got == weight_gain.confirmed_gain(st.wt, baseline, since, th, sign_of(st, th))
        asked["gain"] += 1
        return got

    monkeypatch.setattr(memo, "bp_runs", checked_runs)
    monkeypatch.setattr(memo, "hemoconcentrated", checked_hcts)
    monkeypatch.setattr(memo, "confirmed_gain", checked_gain)
    return asked


def _with_upsets(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The rows plus what disturbs remembered views: retractions and corrections of labs and
    weighings, red cells, and a second stay four days after the first ends."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for row in rows:
        out.append(row)
        if row["kind"] in ("hematocrit", "hemoglobin", "weight") and rng.random() < 0.15:
            if rng.random() < 0.5:
                out.append(dict(row, status="entered-in-error"))
            else:
                out.append(dict(row, value=row["value"] * 1.02, status="corrected"))
        if row["kind"] == "hematocrit" and rng.random() < 0.1:
            out.append({"intervention": {"patient_id": row["patient_id"], "kind": "red_cells",
                                         "started_at": row["observed_at"], "amount": 300,
                                         "amount_unit": "mL", "source": "test"}})
    last = max(parse_time_ms(r["observed_at"]) or 0 for r in rows)
    again = [dict(r, observed_at=(parse_time_ms(r["observed_at"]) or 0) + last - T0 + 96 * HOUR)
             for r in rows[: len(rows) // 3]]
    return out + again


def _replay(rows: list[dict[str, Any]], context: dict[str, Any], restart_every: int
            ) -> list[tuple[str, str]]:
    ctx = parse_context(context)
    assert not isinstance(ctx, Rejection)
    state = apply_context(None, ctx)
    alerts = []
    for i, row in enumerate(rows):
        if "intervention" in row:
            parsed: Any = parse_intervention(row["intervention"])
        else:
            parsed = normalise(row)
        if isinstance(parsed, Rejection):
            continue
        if state is not None and i % restart_every == 0:
            state = PatientState.from_json(state.to_json())  # a restart: no memo
        r = step(state, parsed)
        state = r.state
        alerts += [(a.alert_id, a.summary) for a in r.alerts]
    if state is not None:
        alerts += [(a.alert_id, a.summary) for a in flush(state)]
    return alerts


@pytest.mark.parametrize("profile", ["scls", "scls_relapse", "sepsis_cls", "septic_shock",
                                     "dehydration", "artefact"])
def test_every_remembered_view_is_the_pure_functions_answer(profile: str,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    p = make_patient("p", profile, 7, T0, hours=48, vitals_every_min=1)
    rows = _with_upsets(shuffled_within_bounds(p.observations, 3, vital_jitter_ms=8 * MIN), 5)
    asked = _checked(monkeypatch)
    _replay(rows, p.context(), restart_every=2_000)
    assert asked["hct"] > 0 and asked["gain"] + asked["runs"] > 0


@pytest.mark.parametrize("profile", ["scls", "scls_relapse", "septic_shock", "dehydration"])
def test_alerts_are_the_same_with_and_without_remembered_views(profile: str,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    p = make_patient("p", profile, 11, T0, hours=96, vitals_every_min=5)
    rows = _with_upsets(shuffled_within_bounds(p.observations, 4), 6)
    remembered = _replay(rows, p.context(), restart_every=10**9)
    monkeypatch.setattr(memo, "bp_runs",
                        lambda st, th: bp.runs(st.slots, st.hypo, st.norm, st.fold, th))
    monkeypatch.setattr(memo, "hemoconcentrated", hemoconcentration.findings)
    monkeypatch.setattr(memo, "confirmed_gain", lambda st, b, since, th, sign_of:
                        weight_gain.confirmed_gain(st.wt, b, since, th, sign_of(st, th)))
    assert remembered == _replay(rows, p.context(), restart_every=10**9)
    assert profile not in ("scls", "scls_relapse") or remembered


def test_runs_remembered_while_old_runs_are_dropped_and_slots_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pressure low and normal by turns every 20 minutes for 12 hours: more closed runs than
    the six kept, so the oldest are dropped while the memo moves past the closed slots; and a
    Hct that jumped, with no next draw: a possible spike until the wait is over, then a
    finding (the remembered findings must change when the horizon passes the wait)."""
    rows = [obs("hematocrit", 40.0, T0), obs("hemoglobin", 13.0, T0),
            obs("hematocrit", 46.0, T0 + HOUR), obs("hemoglobin", 15.5, T0 + HOUR)]
    for i in range(36):
        low = i % 2 == 0
        rows += vitals(i / 3, (i + 1) / 3, 80 if low else 125, 55 if low else 85, every_min=1)
    asked = _checked(monkeypatch)
    alerts = _replay(rows, {"patient_id": "p1", "event": "admit", "sex": "F"},
                     restart_every=10**9)
    assert asked["runs"] > 100 and alerts


def _accepted(state: PatientState | None, row: dict[str, Any], th: Any = None) -> Any:
    o = normalise(row)
    assert not isinstance(o, Rejection), o
    return step(state, o) if th is None else step(state, o, th)


def test_a_quiet_reading_is_answered_for_its_own_state_and_never_serialised() -> None:
    """The reply to a reading that decides nothing is built once per state object: it holds
    that state (also after a new stay restarted it in place), no alert, and stays out of the
    JSON a worker stores."""
    first = _accepted(None, obs("heart_rate", 80, T0))
    again = _accepted(first.state, obs("heart_rate", 82, T0 + MIN))
    assert again is first and again.state is first.state
    assert (again.alerts, again.status, again.rejection) == ((), "accepted", None)
    assert "quiet" not in first.state.to_dict()
    assert PatientState.from_json(first.state.to_json()).quiet is None
    # four days later (the first reading held back as in the future, the second, agreeing with
    # it, starts a new stay in the same object): the reply still holds that object
    st = first.state
    _accepted(st, obs("heart_rate", 90, T0 + 96 * HOUR))
    later = _accepted(st, obs("heart_rate", 91, T0 + 96 * HOUR + MIN))
    assert later.state is st and st.max_t == T0 + 96 * HOUR + MIN and not later.alerts


def test_the_usual_reading_moves_the_horizon_only_within_the_future_tolerance() -> None:
    """step's fast path (a reading at or just after a horizon a second reading supports) is
    the general rule's answer: with a future tolerance of 30 minutes, a reading 40 minutes on
    is a horizon with no support yet (``plausibility.advance_horizon``)."""
    from detectors.config import thresholds_from_mapping

    th = thresholds_from_mapping({"future_tolerance_h": 0.5})
    st = _accepted(None, obs("heart_rate", 80, T0), th).state
    st = _accepted(st, obs("heart_rate", 80, T0 + MIN), th).state
    assert st.near == 2
    st = _accepted(st, obs("heart_rate", 80, T0 + 5 * MIN), th).state
    assert (st.max_t, st.near) == (T0 + 5 * MIN, 2)  # the usual reading
    st = _accepted(st, obs("heart_rate", 80, T0 + 45 * MIN), th).state
    assert (st.max_t, st.near) == (T0 + 45 * MIN, 1)
