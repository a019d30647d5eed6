"""Bad input never crashes the worker and never disappears: it is dead-lettered and counted."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from stream_support import WorkerProcess, fresh_prefix, read_topic

from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Publisher

GOOD = {"patient_id": "bed01", "kind": "sbp", "value": 120, "unit": "mm[Hg]",
        "observed_at": "2026-11-25T04:10:00Z"}


def _j(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


# (topic attribute, key, value, expected reason)
BAD: list[tuple[str, bytes | None, bytes, str]] = [
    ("vitals", b"bed01", b'{"patient_id": "bed01", "kind": ', "malformed_json"),
    ("vitals", b"bed01", b"\xff\xfe\x00garbage", "malformed_json"),
    ("labs", b"bed01", b"[1, 2, 3]", "not_an_object"),
    ("vitals", b"bed01", _j(kind="blood_sugar"), "unknown_kind"),
    ("vitals", b"bed01", _j(unit="furlongs"), "unknown_unit"),
    ("vitals", b"bed01", _j(value=0), "out_of_range"),
    ("vitals", b"bed01", _j(value="high"), "bad_value"),
    ("vitals", b"bed01", _j(observed_at="yesterday"), "bad_time"),
    ("vitals", b"bed01", _j(observed_at="2026-11-25T04:10:00"), "bad_time"),
    ("vitals", b"bed02", _j(), "inconsistent"),
    ("labs", b"bed01", _j(kind="hematocrit", value=140, unit="%"), "out_of_range"),
    ("patients", b"bed01", b'{"patient_id": "bed01", "sex": "X"}', "bad_context"),
    ("vitals", b"bed01", _j(patient_id=""), "missing_field"),
]


@pytest.mark.broker
def test_bad_inputs_go_to_dead_letters_with_reason_and_nothing_is_lost(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        worker.wait_ready()
        publisher = Publisher(kafka_bootstrap)
        good = 0
        for i, (topic, key, value, _) in enumerate(BAD):
            publisher.send(getattr(names, topic), key, value, patient_id="bed01")
            t = f"2026-11-25T05:{i:02d}:00Z"  # good readings between the bad ones
            publisher.send(names.vitals, "bed01", _j(observed_at=t), patient_id="bed01")
            good += 1
        publisher.close()
        sent = len(BAD) + good

        worker.wait_for("clsmon_observations_total", sent)
        records = read_topic(kafka_bootstrap, names.dead_letters,
                             lambda rs: len(rs) >= len(BAD))
        assert worker.proc.poll() is None  # still running
        dead = [json.loads(r.value) for r in records]
        assert sorted(d["reason"] for d in dead) == sorted(b[3] for b in BAD)

        # count in == processed + dead-lettered, per the metrics
        assert worker.total("clsmon_observations_total") == sent
        assert worker.total("clsmon_observations_total", outcome="dead_letter") == len(BAD)
        assert worker.total("clsmon_observations_total", outcome="accepted") == good
        for reason in {b[3] for b in BAD}:
            expected = sum(1 for b in BAD if b[3] == reason)
            assert worker.total("clsmon_dead_letters_total", reason=reason) == expected

        # each record carries the original key and bytes, topic, partition and offset
        by_value = {d["value"] if d["value_encoding"] == "utf-8"
                    else base64.b64decode(d["value"]): d for d in dead}
        for topic, key, value, reason in BAD:
            d = by_value[value.decode() if value.startswith(b"{") or value.startswith(b"[")
                         else value]
            assert d["reason"] == reason and d["detail"]
            assert d["topic"] == getattr(names, topic)
            assert d["key"] == key.decode()
            assert isinstance(d["partition"], int) and isinstance(d["offset"], int)
        binary = by_value[b"\xff\xfe\x00garbage"]
        assert binary["value_encoding"] == "base64"
        assert all(r.key is not None for r in records)
    finally:
        assert worker.stop() == 0, worker.output()
