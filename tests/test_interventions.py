"""Interventions: validated like observations, carried into the state through the same step,
merged into the replay's arrival order; patient context applied at its time."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from builders import HOUR, MIN, T0, vitals

from detectors.interventions import (
    IV_KEEP,
    Intervention,
    parse_intervention,
    record,
)
from detectors.observation import Rejection, format_time, parse_time_ms
from detectors.phases import step
from detectors.state import PatientState
from streams.cli import main
from streams.offline import replay as rp

START = "2026-11-25T04:00:00Z"


def iv(**changes: object) -> dict[str, object]:
    return {"patient_id": "p1", "kind": "red_cells", "started_at": START,
            "ended_at": "2026-11-25T05:00:00Z", "amount": 375, "amount_unit": "mL",
            "source": "test", **changes}


def test_a_valid_intervention_comes_out_in_canonical_units() -> None:
    got = parse_intervention(iv(amount=0.3, amount_unit="L"))
    assert isinstance(got, Intervention)
    assert (got.kind, got.amount, got.amount_unit) == ("red_cells", 300.0, "mL")
    assert got.ended_at_ms - got.started_at_ms == HOUR
    pressor = parse_intervention({"patient_id": "p1", "kind": "vasopressor",
                                  "agent": "vasopressin", "started_at": START, "rate": 2.4,
                                  "rate_unit": "units/hour", "mode": "infusion"})
    assert isinstance(pressor, Intervention)
    assert (pressor.rate, pressor.rate_unit, pressor.ended_at_ms) == (pytest.approx(0.04),
                                                                      "units/min", None)


@pytest.mark.parametrize("changes, reason", [
    ({"kind": "leeches"}, "unknown_kind"),
    ({"kind": ""}, "missing_field"),
    ({"patient_id": " "}, "missing_field"),
    ({"amount_unit": "pints"}, "unknown_unit"),
    ({"kind": "vasopressor", "amount": None, "rate": 0.1, "rate_unit": "mcg/min"},
     "unknown_unit"),
    ({"ended_at": "2026-11-25T03:00:00Z"}, "inconsistent"),
    ({"amount": 375_000}, "out_of_range"),
    ({"amount": -5}, "out_of_range"),
    ({"amount": "lots"}, "bad_value"),
    ({"amount": None}, "bad_value"),
    ({"mode": "sometimes"}, "bad_value"),
    ({"started_at": "2026-11-25T04:00:00"}, "bad_time"),
    ({"ended_at": "tomorrow"}, "bad_time"),
])
def test_bad_interventions_are_refused_with_a_stable_reason(changes, reason) -> None:
    got = parse_intervention(iv(**changes))
    assert isinstance(got, Rejection)
    assert got.reason == reason and got.detail


def test_the_step_records_an_intervention_without_an_alert() -> None:
    parsed = parse_intervention(iv())
    assert isinstance(parsed, Intervention)
    result = step(None, parsed)
    assert result.status == "accepted" and list(result.alerts) == []
    assert result.state.iv["rc"][0][:4] == [parsed.started_at_ms, parsed.ended_at_ms, 375.0,
                                            None]
    again = step(result.state, parsed)  # an at-least-once redelivery
    assert again.status == "duplicate" and len(again.state.iv["rc"]) == 1
    restored = PatientState.from_json(result.state.to_json())
    assert restored.iv == result.state.iv
    other_bag = step(result.state, parsed._replace(id="bag-2"))  # same time and volume
    assert other_bag.status == "accepted" and len(other_bag.state.iv["rc"]) == 2


def test_the_intervention_state_stays_small_and_bounded() -> None:
    st = PatientState("p1")
    kinds = [("red_cells", "mL", "amount"), ("crystalloid", "mL", "amount"),
             ("vasopressor", "mcg/kg/min", "rate"), ("albumin", "mL", "amount"),
             ("diuretic", "mg", "amount"), ("plasma", "mL", "amount")]
    for h in range(24):  # a day of hourly charting of everything
        for kind, unit, field in kinds:
            raw = {"patient_id": "p1", "kind": kind,
                   "started_at": format_time(T0 + h * HOUR), field: 10 + h,
                   f"{field}_unit": unit}
            parsed = parse_intervention(raw)
            assert isinstance(parsed, Intervention), parsed
            assert record(st, parsed) == "accepted"
    for kind, _, _ in kinds:
        rows = st.iv[{"red_cells": "rc", "crystalloid": "cr", "vasopressor": "vp",
                      "albumin": "al", "diuretic": "di", "plasma": "pl"}[kind]]
        assert len(rows) == IV_KEEP[kind]
        assert rows == sorted(rows, key=lambda r: r[0]) and rows[-1][0] == T0 + 23 * HOUR
    # red cells are kept for the baseline's week (16 rows), and the fluids enter the balance
    assert len(st.to_json()) < 2000


def _files(tmp_path, obs_rows, contexts=None, interventions=None):
    obs = tmp_path / "obs.csv"
    pd.DataFrame(obs_rows).to_csv(obs, index=False)
    args = [str(obs)]
    if contexts is not None:
        path = tmp_path / "patients.csv"
        pd.DataFrame(contexts).to_csv(path, index=False)
        args += ["--patients", str(path)]
    if interventions is not None:
        path = tmp_path / "interventions.csv"
        pd.DataFrame(interventions).to_csv(path, index=False)
        args += ["--interventions", str(path)]
    return args


def _iso(rows):
    return [{**r, "observed_at": format_time(r["observed_at"])} for r in rows]


def _leak(start_h: float, pid: str = "p1") -> list[dict[str, object]]:
    """Normal pressure, then a shock with a hemoconcentrated Hct: one leak alert."""
    rows = vitals(start_h, start_h + 8, 120, 85, pid=pid)
    for h, hct in ((1, 40), (9, 58)):  # a CBC: Hct and Hb of one draw
        rows += [{"patient_id": pid, "kind": "hematocrit", "value": hct, "unit": "%",
                  "observed_at": T0 + int((start_h + h) * HOUR)},
                 {"patient_id": pid, "kind": "hemoglobin", "value": hct / 3, "unit": "g/dL",
                  "observed_at": T0 + int((start_h + h) * HOUR)}]
        if h == 1:
            rows += vitals(start_h + 8, start_h + 10, 78, 55, pid=pid)
    rows += vitals(start_h + 10, start_h + 10.5, 78, 55, pid=pid)
    return rows


def test_replay_takes_interventions_and_dead_letters_bad_ones(tmp_path, capsys) -> None:
    rows = _iso(_leak(0))
    good = [iv(started_at=format_time(T0 + 2 * HOUR), ended_at=format_time(T0 + 3 * HOUR)),
            {"patient_id": "p1", "kind": "vasopressor", "agent": "norepinephrine",
             "started_at": format_time(T0 + 9 * HOUR), "rate": 0.1, "rate_unit": "mcg/kg/min",
             "mode": "infusion"}]
    bad = [iv(kind="leeches"), iv(ended_at="2026-11-25T01:00:00Z"), iv(amount=99_999)]
    out, rejects = tmp_path / "a.jsonl", tmp_path / "rejects.jsonl"
    assert main(["replay", *_files(tmp_path, rows, interventions=good + bad), "--out", str(out),
                 "--rejects", str(rejects)]) == 0
    printed = capsys.readouterr().out
    assert "interventions accepted 2" in printed
    got = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["file"], r["reason"]) for r in got] == [
        ("interventions", "unknown_kind"), ("interventions", "inconsistent"),
        ("interventions", "out_of_range")]
    assert [r["row"] for r in got] == [4, 5, 6]
    # a unit of red cells 6 h before (3 points) and a pressor at the shock explain nothing here:
    # the alerts are the ones without them
    without = tmp_path / "b.jsonl"
    assert main(["replay", *_files(tmp_path, rows), "--out", str(without), "--quiet"]) == 0
    def ids(path):
        return [(d["alert_id"], d["raised_at"]) for d in map(json.loads,
                                                             path.read_text().splitlines())]
    assert ids(out) == ids(without) and "leak" in out.read_text()
    assert "explained by red cells" in out.read_text()  # the evidence says what was given


def test_an_intervention_lands_in_the_state_at_its_arrival_time() -> None:
    rows = pd.DataFrame(_iso(vitals(0, 4, 120, 85))).astype("string")
    given = [iv(started_at=format_time(T0 + 2 * HOUR), ended_at="",
                available_at=format_time(T0 + 3 * HOUR))]
    result = rp.replay_frame(rows, interventions=given)
    assert result.interventions == 1
    assert result.states["p1"].iv["rc"][0][0] == T0 + 2 * HOUR


def _two_stays() -> list[dict[str, object]]:
    """p1's context rows: admitted for 21 h, then again 30 days later for a day."""
    return [{"patient_id": "p1", "sex": "F", "weight_kg": 70,
             "admit": format_time(T0 - HOUR), "discharge": format_time(T0 + 20 * HOUR)},
            {"patient_id": "p1", "sex": "F", "weight_kg": 80,
             "admit": format_time(T0 + 30 * 24 * HOUR - HOUR),
             "discharge": format_time(T0 + 31 * 24 * HOUR)}]


def test_a_later_admission_is_a_new_stay(tmp_path) -> None:
    """Two admissions 30 days apart, each with a leak: with admit/discharge times the second
    is episode 1 of a new stay; without, the first stay's state carries over."""
    rows, stays = _iso(_leak(0) + _leak(30 * 24)), _two_stays()
    frame = pd.DataFrame(rows).astype("string")
    with_stays = rp.replay_frame(frame, stays)
    leaks = [a for a in with_stays.alerts if a.phase == "leak"]
    assert [a.episode for a in leaks] == [1, 1]
    assert with_stays.contexts == 4 and with_stays.states == {}  # both stays discharged
    old_style = [{k: v for k, v in s.items() if k not in ("admit", "discharge")} for s in stays]
    carried = rp.replay_frame(frame, old_style[:1])
    assert [a.episode for a in carried.alerts if a.phase == "leak"][0] == 1
    assert carried.states["p1"].weight_kg == 70.0 and carried.states["p1"].episode >= 1


def test_context_rows_apply_at_their_time_in_arrival_order() -> None:
    """An `update` with a new weight at hour 2 changes the state from then on, not before."""
    rows = pd.DataFrame(_iso(vitals(0, 4, 120, 85))).astype("string")
    ctx = [{"patient_id": "p1", "sex": "M", "weight_kg": 70},
           {"patient_id": "p1", "event": "update", "weight_kg": 90,
            "at": format_time(T0 + 2 * HOUR)}]
    seen = []
    result = rp.replay_chunks(_split(rows, 7), ctx,
                              progress=lambda done, total: seen.append(done))
    assert result.states["p1"].weight_kg == 90.0 and result.states["p1"].sex == "M"
    early = rp.replay_frame(rows.iloc[:10], ctx)  # the data end before the update's time
    assert early.states["p1"].weight_kg == 90.0  # applied at the end: nothing is dropped
    assert result.contexts == 2


def _split(frame: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    size = len(frame) // n + 1
    return [frame.iloc[i:i + size].reset_index(drop=True) for i in range(0, len(frame), size)]


def test_chunks_give_the_alerts_of_the_whole_file() -> None:
    rows = _iso(_leak(0) + _leak(0, pid="p2") + _leak(40))
    frame = pd.DataFrame(rows).astype("string")
    ctx = [{"patient_id": "p1", "sex": "F", "admit": format_time(T0 - HOUR),
            "discharge": format_time(T0 + 20 * HOUR)},
           {"patient_id": "p2", "sex": "M"}]
    given = [iv(started_at=format_time(T0 + 30 * MIN), ended_at="")]
    whole = rp.replay_frame(frame, ctx, interventions=given)
    for n in (2, 5, 13):
        parts = rp.replay_chunks(_split(frame, n), ctx, interventions=given)
        assert [(a.alert_id, a.raised_at_ms) for a in parts.alerts] == [
            (a.alert_id, a.raised_at_ms) for a in whole.alerts]
        assert (parts.accepted, parts.contexts, parts.interventions) == (
            whole.accepted, whole.contexts, whole.interventions)
    assert whole.alerts


def test_a_value_available_before_it_was_measured_is_refused() -> None:
    frame = pd.DataFrame(_iso(vitals(0, 1, 120, 85))).astype("string")
    frame["available_at"] = frame["observed_at"]
    frame.loc[0, "available_at"] = "2000-01-01T00:00:00Z"  # before it was measured
    result = rp.replay_frame(frame)
    assert [r["reason"] for r in result.rejects] == ["inconsistent"]
    assert result.accepted == len(frame) - 1
    assert result.canonical is not None and len(result.canonical) == len(frame) - 1


def _two_stays_and_a_transfusion(tmp_path):
    """p1: two admissions 30 days apart, each with a shock and a Hct rise; red cells in each
    stay, enough in the first to explain its rise (the files of
    ``test_a_later_admission_is_a_new_stay``, through ``_files``)."""
    rows, stays = _iso(_leak(0) + _leak(30 * 24)), _two_stays()
    # the first stay's Hct rise (40 -> 58 %) is explained by 7 units of red cells given before
    # it: no leak alert there
    given = [iv(started_at=format_time(T0 + 4 * HOUR), ended_at=format_time(T0 + 7 * HOUR),
                amount=7 * 300),
             iv(started_at=format_time(T0 + (30 * 24 + 2) * HOUR), ended_at="")]
    return _files(tmp_path, rows, stays, given)


def test_publish_sends_the_side_files_records_where_the_replay_applies_them(tmp_path) -> None:
    """``clsmon publish --patients --interventions``: each stay's admit goes before its first
    reading, its discharge after the last reading up to its time (a reading at the discharge
    time included) and before the next; an intervention before the first reading at or after
    its time; so the worker folds them in where the replay does."""
    from streams.interfaces.codes import load_tables
    from streams.interfaces.fhir.inbound import FhirSettings
    from streams.interfaces.hl7.inbound import Hl7Settings
    from streams.interfaces.publish import read_items, with_side_events

    obs, _, patients, _, interventions = _two_stays_and_a_transfusion(tmp_path)
    tables = load_tables(None, None)
    items = list(with_side_events(read_items(Path(obs), "csv", Hl7Settings(tables),
                                             FhirSettings(tables)), patients, interventions))
    assert all(i.record is not None for i in items)
    sent = [(i.record[0], i.record[2]) for i in items if i.record is not None]

    def at(doc):
        return parse_time_ms(doc.get("observed_at") or doc.get("started_at"))

    side = [(n, role, doc) for n, (role, doc) in enumerate(sent)
            if role in ("patients", "interventions")]
    assert [(role, doc.get("event")) for _, role, doc in side] == [
        ("patients", "admit"), ("interventions", None), ("patients", "discharge"),
        ("patients", "admit"), ("interventions", None), ("patients", "discharge")]
    readings, clock = [], 0  # (position, the arrival clock: the latest reading time so far)
    for n, (role, doc) in enumerate(sent):
        if role in ("vitals", "labs"):
            clock = max(clock, at(doc))
            readings.append((n, clock))
    for n, role, doc in side:
        if role == "interventions":
            assert all(t < at(doc) for m, t in readings if m < n)
            assert all(t >= at(doc) for m, t in readings if m > n)
    # the discharges split the readings exactly at their times
    first_discharge, second_admit = side[2][0], side[3][0]
    assert max(t for m, t in readings if m < first_discharge) <= T0 + 20 * HOUR
    assert min(t for m, t in readings if m > first_discharge) > T0 + 20 * HOUR
    assert not [m for m, _ in readings if first_discharge < m < second_admit]
    # the dry run says what would go where
    out = tmp_path / "dry.txt"
    with out.open("w") as f:
        from streams.interfaces.publish import run_publish
        from streams.kafka.topics import TopicNames

        assert run_publish(obs, bootstrap=None, names=TopicNames("c."), fmt="auto",
                           hl7=Hl7Settings(tables), fhir=FhirSettings(tables), dry_run=True,
                           out=f, patients=patients, interventions=interventions) == 0
    kinds = pd.read_csv(obs)["kind"]
    labs = int(kinds.isin(["hematocrit", "hemoglobin"]).sum())
    assert (f"would send {len(kinds) + 6} records (c.interventions 2, c.labs {labs}, "
            f"c.patients 4, c.vitals {len(kinds) - labs})") in out.read_text()


def test_a_stay_discharged_before_its_admission_is_refused_with_its_row(tmp_path) -> None:
    """A stay row whose discharge precedes its admit (a swapped pair, a typo) would queue the
    discharge before the admission and leave the stay open: refused, in replay and publish."""
    stays = _two_stays()
    stays[1] = {**stays[1], "discharge": format_time(T0 + 29 * 24 * HOUR)}
    frame = pd.DataFrame(_iso(_leak(0))).astype("string")
    result = rp.replay_frame(frame, stays)
    [refused] = result.rejects
    assert (refused["file"], refused["row"], refused["reason"]) == ("patients", 3, "inconsistent")
    assert "is before admit" in refused["detail"] and result.contexts == 2


def test_the_interventions_or_observations_file_given_as_patients_is_one_line(
        tmp_path, capsys) -> None:
    """A context row needs only patient_id, so a swapped file used to be taken row by row
    (270 "admissions" carrying a crystalloid's fields): refused by its columns, in replay and
    publish alike."""
    obs, _, _, _, interventions = _two_stays_and_a_transfusion(tmp_path)
    for wrong, named in ((interventions, "kind, started_at"), (obs, "kind, observed_at")):
        for command in (["replay", obs, "--quiet"], ["publish", obs, "--dry-run"]):
            assert main([*command, "--patients", wrong]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"is not a patients file: it has {named}" in err
