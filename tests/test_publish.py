"""``clsmon publish``: every file format an interface engineer has, told apart by content,
validated by the listener's and the worker's own mapping, sent keyed to the input topics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hl7_corpus import T, adt, bad_messages, frame, lab_panel, monitor_loinc
from stream_support import ROOT, child_env, fresh_prefix, read_topic

from streams.cli import main
from streams.interfaces.publish import detect
from streams.kafka.topics import TopicNames

PANEL = {"resourceType": "Observation", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
         "subject": {"identifier": {"system": "urn:mrn", "value": "12345"}},
         "effectiveDateTime": "2026-11-29T10:14:00+01:00",
         "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                        "valueQuantity": {"value": 84, "system": "http://unitsofmeasure.org",
                                          "code": "mm[Hg]"}}]}


def files(tmp: Path) -> dict[str, Path]:
    out = {"hl7": tmp / "feed.hl7", "framed": tmp / "feed.mllp", "fhir": tmp / "panel.json",
           "jsonl": tmp / "records.jsonl", "csv": tmp / "obs.csv"}
    out["hl7"].write_bytes(adt("A1", "A01") + monitor_loinc("L1", T, 84, 56, ending="\r\n"))
    out["framed"].write_bytes(frame(lab_panel("LAB1", T, 58, 2.1), bad_messages()[5][1]))
    out["fhir"].write_text(json.dumps(PANEL))
    out["jsonl"].write_text(json.dumps({"patient_id": "12345", "event": "admit", "sex": "F"})
                            + "\n" + json.dumps(PANEL) + "\n" + json.dumps(
                                {"patient_id": "12345", "kind": "sbp", "value": 0,
                                 "unit": "mmHg", "observed_at": "2026-11-29T10:00:00Z"}) + "\n")
    out["csv"].write_text("patient_id,observed_at,kind,value,unit\n"
                          "12345,2026-11-29T10:00:00Z,sbp,120,mmHg\n"
                          "12345,20261129101500+0100,sbp,120,mmHg\n")
    return out


def test_the_format_is_told_from_the_content(tmp_path: Path) -> None:
    assert {k: detect(p) for k, p in files(tmp_path).items()} == {
        "hl7": "hl7", "framed": "hl7", "fhir": "fhir", "jsonl": "jsonl", "csv": "csv"}


@pytest.mark.parametrize(("name", "code", "refused"), [
    ("hl7", 0, []), ("framed", 1, ["bad_value"]), ("fhir", 0, []),
    ("jsonl", 1, ["out_of_range"]), ("csv", 1, ["bad_time"])])
def test_a_dry_run_prints_what_would_be_refused_and_sends_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, code: int,
        refused: list[str]) -> None:
    path = files(tmp_path)[name]
    assert main(["publish", str(path), "--dry-run", "--id-authority", "HOSP",
                 "--patient-system", "urn:mrn"]) == code
    out = capsys.readouterr().out
    assert [line.split(": ")[1] for line in out.splitlines() if line.startswith("refused")] \
        == refused
    assert "would send" in out


def test_a_file_that_is_not_there_is_one_line_and_exit_2(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert main(["publish", str(tmp_path / "nope.hl7"), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("clsmon publish: error: file not found")


def test_readings_dated_far_after_now_are_pointed_out_before_a_worker_refuses_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Date-shifted data (MIMIC-III: 2100-2210) would all be dead-lettered by a worker as
    bad_time ("in the future"): publish says so, with the way out, once."""
    path = tmp_path / "shifted.csv"
    path.write_text("patient_id,observed_at,kind,value,unit\n"
                    "p1,2026-11-25T04:10:00Z,sbp,120,mmHg\n"
                    "p1,2150-03-01T04:10:00Z,sbp,120,mmHg\n"
                    "p1,2150-03-01T04:15:00Z,sbp,118,mmHg\n")
    assert main(["publish", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("note: 2 readings are dated more than 24 h after now (the first "
            "2150-03-01T04:10:00Z)") in out
    assert "deploy/thresholds.shifted-dates.toml" in out and out.count("note:") == 1


def test_a_csv_without_the_observation_columns_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # a fresh interpreter: the error is one line whether or not the replay was imported before
    # (here it was, by other tests; `clsmon publish` alone never imports it)
    context = tmp_path / "cohort.patients.csv"
    context.write_text("patient_id,sex,weight_kg,birth_year\nsim-0001,F,70,1960\n")
    done = subprocess.run([sys.executable, "-m", "streams.cli", "publish", str(context),
                           "--dry-run"], cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"clsmon publish: error: {context}: missing column(s) observed_at, kind, value, unit; "
        "expected patient_id, observed_at, kind, value, unit (+ optional source, period_min, "
        "id, available_at, status)"]


@pytest.mark.broker
def test_publish_sends_each_record_keyed_to_its_topic(kafka_bootstrap: str,
                                                      tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    paths = files(tmp_path)
    for name in ("hl7", "fhir", "jsonl"):
        main(["publish", str(paths[name]), "--broker", kafka_bootstrap, "--topic-prefix",
              names.prefix, "--id-authority", "HOSP", "--patient-system", "urn:mrn"])
    vitals = read_topic(kafka_bootstrap, names.vitals, lambda rs: len(rs) >= 4)
    patients = read_topic(kafka_bootstrap, names.patients, lambda rs: len(rs) >= 2)
    assert sorted(json.loads(r.value)["kind"] for r in vitals) == ["map", "sbp", "sbp", "sbp"]
    assert {r.key for r in vitals + patients} == {b"12345"}
    # the arrival order: in offset order within each topic, and a patient's records on two
    # topics never share a stamp (the worker could not tell which came first)
    for records in (vitals, patients):
        stamps = [r.timestamp for r in sorted(records, key=lambda r: (r.partition, r.offset))]
        assert stamps == sorted(stamps)
    assert not {r.timestamp for r in vitals} & {r.timestamp for r in patients}


def test_the_publisher_stamps_in_send_order_and_later_when_a_patient_changes_topic(
        kafka_bootstrap: str) -> None:
    """Never behind the stamp before it, whoever its patient: the worker's ordering merge
    reads a partition's timestamps as its arrival order (a patient's second message in the
    same ms was stamped a ms ahead, and the next patient's behind it). A patient's message on
    another topic than its previous one is stamped later (its topics merge in send order);
    within one topic an equal stamp keeps the order, so a fast producer is not held to one
    message per ms."""
    from streams.offline import publish

    publisher = publish.Publisher(kafka_bootstrap, clock=lambda: 1_800_000_000.0)  # no ms passes
    sent = [("A", "vitals"), ("A", "vitals"), ("B", "vitals"), ("A", "labs"), ("C", "labs"),
            ("C", "vitals"), ("B", "vitals"), ("A", None), ("A", None)]
    try:
        stamps = [publisher.next_timestamp(p, t) for p, t in sent]
    finally:
        publisher.close()
    assert stamps == sorted(stamps)
    base = 1_800_000_000_000
    assert [ts - base for ts in stamps] == [0, 0, 0, 1, 1, 2, 2, 2, 3]
