"""`clsmon replay`: files in, alerts and rejects out, the same decisions as the engine itself."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from builders import run
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.observation import Observation, normalise
from streams.cli import main
from streams.offline import replay as rp
from streams.offline.simulator import cohort
from streams.offline.sources import NO_TIME, epoch_ms

COLUMNS = ["patient_id", "observed_at", "kind", "value", "unit", "source", "period_min"]


@pytest.fixture(scope="module")
def small_cohort():
    return cohort(12, seed=3, hours=120, mix={"scls": 0.5, "septic_shock": 0.25,
                                              "dehydration": 0.25})


def write_cohort(tmp_path, patients, suffix=".csv", extra_rows=()):
    rows = [o for p in patients for o in p.observations] + list(extra_rows)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    path = tmp_path / f"obs{suffix}"
    if suffix == ".parquet":
        frame.astype({"value": "string", "period_min": "string"}).to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    ctx = tmp_path / "patients.csv"
    pd.DataFrame([p.context() for p in patients])[["patient_id", "sex", "weight_kg",
                                                   "birth_year"]].to_csv(ctx, index=False)
    return path, ctx


def engine_alert_ids(patients):
    ids = set()
    for p in patients:
        alerts, _ = run(p.observations, p.context())
        ids |= {a.alert_id for a in alerts}
    return ids


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_replay_writes_the_alerts_the_engine_raises(tmp_path, small_cohort, capsys):
    path, ctx = write_cohort(tmp_path, small_cohort)
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", str(path), "--patients", str(ctx), "--out", str(out)]) == 0
    alerts = read_jsonl(out)
    assert {a["alert_id"] for a in alerts} == engine_alert_ids(small_cohort)
    assert any(a["phase"] == "leak" for a in alerts)
    for a in alerts:
        assert set(a) >= {"alert_id", "patient_id", "phase", "previous_phase", "severity",
                          "raised_at", "episode", "summary", "evidence"}
    printed = capsys.readouterr().out
    assert "alerts by phase/severity" in printed and "leak/high" in printed


def test_bad_rows_go_to_the_rejects_file_with_their_reason(tmp_path, small_cohort):
    bad = [
        {"patient_id": "x", "observed_at": "2026-09-22T00:00:00Z", "kind": "glucose",
         "value": 5, "unit": "mmol/L"},
        {"patient_id": "x", "observed_at": "2026-09-22T00:00:00Z", "kind": "sbp", "value": 0,
         "unit": "mmHg"},
        {"patient_id": "x", "observed_at": "2026-09-22T00:00:00", "kind": "sbp", "value": 120,
         "unit": "mmHg"},
        {"patient_id": "x", "observed_at": "2026-09-22T00:00:00Z", "kind": "sbp",
         "value": "n/a", "unit": "mmHg"},
        {"patient_id": "x", "observed_at": "2026-09-22T00:00:00Z", "kind": "weight",
         "value": 70, "unit": "stone"},
    ]
    path, ctx = write_cohort(tmp_path, small_cohort[:2], extra_rows=bad)
    rejects = tmp_path / "rejects.jsonl"
    assert main(["replay", str(path), "--rejects", str(rejects), "--quiet"]) == 0
    got = read_jsonl(rejects)
    assert [r["reason"] for r in got] == ["unknown_kind", "out_of_range", "bad_time",
                                          "bad_value", "unknown_unit"]
    n_rows = sum(len(p.observations) for p in small_cohort[:2]) + len(bad)
    assert got[0]["row"] == n_rows - len(bad) + 2  # 1-based line number in the file
    assert got[2]["input"]["observed_at"] == "2026-09-22T00:00:00"


def test_alerts_can_be_written_as_csv(tmp_path, small_cohort):
    path, ctx = write_cohort(tmp_path, small_cohort[:4])
    out = tmp_path / "alerts.csv"
    assert main(["replay", str(path), "--patients", str(ctx), "--out", str(out), "--quiet"]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == list(rp.ALERT_CSV_COLUMNS)
    assert all(isinstance(json.loads(e), list) for e in frame["evidence"])


def test_parquet_input_gives_the_same_alerts(tmp_path, small_cohort):
    csv_path, ctx = write_cohort(tmp_path, small_cohort)
    pq_path, _ = write_cohort(tmp_path, small_cohort, suffix=".parquet")
    a = rp.replay_frame(rp.read_observations(csv_path), rp.read_contexts(ctx))
    b = rp.replay_frame(rp.read_observations(pq_path), rp.read_contexts(ctx))
    assert [x.alert_id for x in a.alerts] == [x.alert_id for x in b.alerts]
    assert a.alerts


def test_sort_replays_a_shuffled_file_in_event_time_order(tmp_path, small_cohort):
    rows = [o for p in small_cohort for o in p.observations]
    in_time = sorted(rows, key=lambda r: r["observed_at"])
    shuffled = pd.DataFrame(rows, columns=COLUMNS).sample(frac=1.0, random_state=1)
    ctx = [p.context() for p in small_cohort]
    expected = rp.replay_frame(pd.DataFrame(in_time, columns=COLUMNS).astype("string"), ctx)
    got = rp.replay_frame(shuffled.astype("string"), ctx, sort=True)
    # the same decisions on the same evidence (raised_at follows arrival: rows of one minute may
    # come in another order)
    assert sorted((a.alert_id, a.onset_at_ms) for a in got.alerts) == sorted(
        (a.alert_id, a.onset_at_ms) for a in expected.alerts)


def test_missing_columns_and_files_are_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,kind,value\np,sbp,120\n")
    assert main(["replay", str(bad)]) == 2
    assert "missing column(s) observed_at, unit" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "nope.csv")]) == 2
    assert "not found" in capsys.readouterr().err


def test_thresholds_come_from_the_environment(tmp_path, small_cohort, monkeypatch, capsys):
    path, ctx = write_cohort(tmp_path, small_cohort)
    strict = tmp_path / "strict.toml"
    strict.write_text("hct_high_female_pct = 79\nhct_high_male_pct = 79\n"
                      "hct_high_unknown_sex_pct = 79\nhct_rise_relative = 5\n")
    monkeypatch.setenv("CLSMON_THRESHOLDS", str(strict))
    out = tmp_path / "a.jsonl"
    assert main(["replay", str(path), "--patients", str(ctx), "--out", str(out), "--quiet"]) == 0
    assert not [a for a in read_jsonl(out) if a["phase"] == "leak"]
    monkeypatch.setenv("CLSMON_THRESHOLDS", str(tmp_path / "missing.toml"))
    assert main(["replay", str(path), "--quiet"]) == 2
    assert "thresholds file not found" in capsys.readouterr().err


def test_the_simulator_writes_a_replayable_cohort_with_truth(tmp_path):
    out = tmp_path / "sim.csv"
    assert main(["simulate", "--patients", "3", "--hours", "48", "--to", str(out)]) == 0
    truth = pd.read_csv(tmp_path / "sim.truth.csv")
    assert list(truth.columns) == ["patient_id", "phase", "start", "end", "profile"]
    result = rp.replay_frame(rp.read_observations(out),
                             rp.read_contexts(tmp_path / "sim.patients.csv"))
    assert result.observations > 3 * 48 * 12 and not result.rejects


cell = st.one_of(
    st.sampled_from(["", "sbp", "SBP", "hct", "hematocrit", "weight", "urine_output", "glucose",
                     "mmHg", "kPa", "L/L", "%", "[lb_av]", "g/L", "mL", "furlong",
                     "2026-09-22T00:00:00Z", "2026-09-22T01:00:00+01:00", "2026-09-22T00:00:00",
                     "2026-02-30T00:00:00Z", "1790000000000", "179000", "12", "0", "-3", "nan",
                     "inf", "1e3", " 5 ", "0.52", "60", "abc", "final", "corrected",
                     "entered-in-error", "amended"]),
    st.text(max_size=6))

#: times as producers write them: every JSON form, the refusals of cases 08 and 11, and the
#: edges of the plausible window and of Arrow's ISO reader
time_cell = st.one_of(
    st.sampled_from([
        "2026-11-29T10:00:00Z", "2026-11-29T10:00Z", "2026-11-29T10:00:00.123456789Z",
        "2026-11-29T10:00:00+0100", "2026-11-29 10:00:00+01", "20261129100000+0100",
        "202611291000+0100", "2026-11-29T23:59:60Z", "2026-11-29T10:00:00z",
        "2026-11-29T10:00:00-00:00", "2026-11-29T10:00:00.5+01:00", "2026-W48-7T10:00:00Z",
        "2026-11-29T10:00:00.123+01:00:00", "1764410400", "1764410400000", "1764410400000.0",
        "1764410400000²", "-1764410400000", "2026-11-29T10:00:00+23:59", "2026-11-29T24:00:00Z",
        "2026-11-29 10:00:00+00:00", "1799-12-31T23:59:59.999Z", "1800-01-01T00:00:00Z",
        "2499-12-31T23:59:59.999Z", "2500-01-01T00:00:00Z", "2150-03-01T10:00:00.1-14:00",
        " 2026-11-29T10:00:00Z", "2026-11-29t10:00:00Z", "20261129T100000Z", ""]),
    st.datetimes(min_value=datetime(1790, 1, 1), max_value=datetime(2510, 1, 1),
                 timezones=st.builds(lambda m: timezone(timedelta(minutes=m)),
                                     st.integers(-900, 900))
                 ).map(lambda d: d.isoformat(timespec=["minutes", "seconds", "milliseconds",
                                                       "microseconds"][d.microsecond % 4])),
    st.integers(-(10**13), 2 * 10**13).map(str),
    cell)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(time_cell, cell, cell, cell, cell, cell, cell, time_cell),
                     min_size=1, max_size=12))
def test_fast_validation_agrees_with_the_scalar_gate(rows):
    """Every row the vectorised path accepts, the scalar gate accepts with the same values
    (the rows it refuses go through the scalar gate itself)."""
    frame = pd.DataFrame([("p1",) + r for r in rows],
                         columns=["patient_id", "observed_at", "kind", "value", "unit",
                                  "period_min", "source", "status", "available_at"]
                         ).astype("string")
    norm, ok = rp.validate(frame)
    for i, raw in enumerate(frame.to_dict("records")):
        scalar = normalise(raw)
        if not ok[i]:
            continue  # rejected rows go through the scalar gate itself
        assert isinstance(scalar, Observation), (raw, scalar)
        assert scalar.kind == norm["kind"].iat[i]
        assert math.isclose(scalar.value, norm["value"].iat[i], rel_tol=1e-9)
        assert scalar.observed_at_ms == norm["t"].iat[i]
        avail = norm["avail"].iat[i]
        assert scalar.available_at_ms == (None if avail == NO_TIME else avail)
        assert scalar.status == norm["status"].iat[i]
        if scalar.kind == "urine_output" and scalar.period_min is not None:
            assert math.isclose(scalar.period_min, norm["period"].iat[i])


@settings(max_examples=200, deadline=None)
@given(times=st.lists(time_cell, min_size=1, max_size=20))
def test_the_replay_accepts_exactly_the_rows_the_scalar_parser_accepts(times):
    """End to end: a row is replayed iff the scalar gate accepts it, at the scalar's instant,
    and the vectorised reader takes the common shapes itself (no row-wise slow path)."""
    from detectors.times import JSON_FORMS, ParsedTime, parse_time

    frame = pd.DataFrame({"patient_id": [f"p{i}" for i in range(len(times))],
                          "observed_at": times, "kind": "heart_rate", "value": "80",
                          "unit": "/min"}).astype("string")
    result = rp.replay_frame(frame)
    refused = {r["row"] - 2 for r in result.rejects}
    ms, ok = epoch_ms(frame["observed_at"])
    for i, text in enumerate(times):
        scalar = parse_time(text, forms=JSON_FORMS)
        assert (i not in refused) == isinstance(scalar, ParsedTime), (text, scalar)
        if ok[i]:
            assert isinstance(scalar, ParsedTime) and scalar.epoch_ms == ms[i], text
        elif isinstance(scalar, ParsedTime) and scalar.form == "rfc3339" and text.endswith("Z") \
                and len(text) == 20 and text[10] == "T":
            pytest.fail(f"the common shape {text!r} fell to the row-wise path")


def test_a_superscript_digit_in_a_time_rejects_that_row_only(tmp_path):
    """Case 11: `1764410400000²` crashed the replay with a traceback."""
    path = tmp_path / "sup.csv"
    path.write_text("patient_id,observed_at,kind,value,unit\n"
                    "u1,2026-11-29T10:00:00Z,sbp,120,mmHg\n"
                    "u2,1764410400000²,sbp,120,mmHg\n"
                    "u3,2026-11-29T10:05:00Z,sbp,121,mmHg\n", encoding="utf-8")
    result = rp.replay_frame(rp.read_observations(path))
    assert [(r["row"], r["reason"]) for r in result.rejects] == [(3, "bad_time")]
    assert "ASCII" in result.rejects[0]["detail"]
    assert result.accepted == 2


def test_an_hl7_dtm_in_a_file_is_refused_not_shifted(tmp_path):
    """Case 08: `20261129101500+0100` was read as 00:50Z instead of 09:15Z, with no error."""
    path = tmp_path / "dtm.csv"
    path.write_text("patient_id,observed_at,kind,value,unit\n"
                    "h1,20261129101500+0100,sbp,120,mmHg\n"
                    "h2,2026-11-29T10:15:00+01:00,sbp,120,mmHg\n", encoding="utf-8")
    result = rp.replay_frame(rp.read_observations(path))
    assert [(r["row"], r["reason"]) for r in result.rejects] == [(2, "bad_time")]
    assert "HL7 DTM" in result.rejects[0]["detail"]
    assert result.canonical is not None
    assert result.canonical["t"].tolist() == [1_795_943_700_000]  # 09:15Z


def test_a_file_read_in_many_chunks_gives_the_alerts_and_rejects_of_the_whole_file(
        tmp_path, small_cohort):
    """The chunked reader (tiny CSV blocks, so chunk boundaries fall everywhere, inside a vital
    set too) replays exactly as the whole file in memory: alerts, refused rows with their file
    row numbers and inputs, counts, patients."""
    rows = [o for p in small_cohort for o in p.observations]
    bad = [{"patient_id": "x", "observed_at": "2026-09-22T00:00:00Z", "kind": "sbp",
            "value": 9999, "unit": "mmHg"},
           {"patient_id": "x", "observed_at": "not a time", "kind": "sbp", "value": 120,
            "unit": "mmHg"},
           {"patient_id": " ", "observed_at": "2026-09-22T00:00:00Z", "kind": "sbp",
            "value": 120, "unit": "mmHg"}]
    for i, row in enumerate(bad):  # refused rows inside chunks, far apart in the file
        rows.insert((i + 1) * len(rows) // 4, row)
    path = tmp_path / "obs.csv"
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    ctx = tmp_path / "patients.csv"
    pd.DataFrame([p.context() for p in small_cohort])[
        ["patient_id", "sex", "weight_kg", "birth_year"]].to_csv(ctx, index=False)
    contexts = rp.read_contexts(ctx)
    whole = rp.replay_frame(rp.read_observations(path), contexts)
    chunks = list(rp.iter_observations(path, chunk_rows=700, block_bytes=16 << 10))
    assert len(chunks) > 20
    parts = rp.replay_chunks(chunks, contexts)

    def rejects(result):
        return [(r["row"], r["reason"], r["detail"], r["input"]) for r in result.rejects]

    assert whole.alerts and len(whole.rejects) >= 3
    assert [(a.alert_id, a.raised_at_ms) for a in parts.alerts] == [
        (a.alert_id, a.raised_at_ms) for a in whole.alerts]
    assert rejects(parts) == rejects(whole)
    assert (parts.observations, parts.accepted, parts.patients) == (
        whole.observations, whole.accepted, whole.patients)


def test_refused_rows_stream_to_their_file_in_file_order_and_are_never_all_kept(
        tmp_path, small_cohort):
    """A file whose rows are mostly refused (a wrong column from a gateway) must not hold
    them all in memory: with a sink, ``rejects`` stays empty, the sink gets every refused row
    in file order (the same rows as the in-memory path), ``rejected`` counts them, and
    ``clsmon replay --rejects`` writes them as it goes (the same file as ``write_rejects`` of
    the kept rows)."""
    rows = [dict(o, value="furlongs") if i % 3 else o
            for i, o in enumerate(o for p in small_cohort for o in p.observations)]
    rows.append({"patient_id": None, "observed_at": "2026-09-22T00:00:00Z", "kind": "sbp",
                 "value": 120, "unit": "mmHg"})  # refused for another reason
    path = tmp_path / "obs.csv"
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    kept = rp.replay_chunks(rp.iter_observations(path, chunk_rows=500, block_bytes=16 << 10))
    sunk: list[dict] = []
    streamed = rp.replay_chunks(rp.iter_observations(path, chunk_rows=500,
                                                     block_bytes=16 << 10), on_reject=sunk.append)
    assert len(kept.rejects) > 0.6 * len(rows)
    assert streamed.rejects == [] and sunk == kept.rejects
    assert streamed.rejected == kept.rejected and streamed.rejected.total() == len(sunk)
    assert streamed.rejects_by_reason() == {"bad_value": len(sunk) - 1, "missing_field": 1}
    # the command: written as found, byte for byte what the kept rows give
    for suffix in (".jsonl", ".csv"):
        out, expected = tmp_path / f"rejects{suffix}", tmp_path / f"expected{suffix}"
        assert main(["replay", str(path), "--rejects", str(out), "--quiet"]) == 0
        rp.write_rejects(kept.rejects, expected)
        assert out.read_bytes() == expected.read_bytes()


def test_raw_rows_read_back_in_bulk_equal_those_read_one_at_a_time() -> None:
    """``_row_dicts`` (the bulk gate's refusals) and ``_row_dict`` (one row) give the same
    values and types: text from Arrow, numbers and missing values from other arrays."""
    import numpy as np

    frame = pd.DataFrame({"text": pd.array(["a", None, "c"], dtype="string[pyarrow]"),
                          "number": [1.5, float("nan"), 3.0],
                          "count": pd.array([1, None, 3], dtype="Int64")})
    columns = rp._raw_columns(frame)
    one = [rp._row_dict(columns, i) for i in range(3)]
    bulk = rp._row_dicts(columns, np.arange(3))
    assert [{k: (type(v), str(v)) for k, v in r.items()} for r in bulk] == [
        {k: (type(v), str(v)) for k, v in r.items()} for r in one]
    assert one[1]["text"] is None and one[1]["count"] is None and one[0]["text"] == "a"


def test_an_output_that_is_a_folder_is_one_line_before_the_replay_runs(
        tmp_path, capsys) -> None:
    """``--out`` or ``--rejects`` naming a folder is refused at once (it used to fail with a
    traceback once the whole replay had run); a path error elsewhere is one line too."""
    path = tmp_path / "obs.csv"
    pd.DataFrame([{"patient_id": "p1", "observed_at": "2026-11-25T04:10:00Z", "kind": "sbp",
                   "value": 120, "unit": "mmHg"}]).to_csv(path, index=False)
    for flag in ("--out", "--rejects"):
        assert main(["replay", str(path), flag, str(tmp_path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err == f"clsmon replay: error: {flag} {tmp_path} is a folder: give a file name\n"
    assert main(["replay", str(path), "--thresholds", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Is a directory" in err
