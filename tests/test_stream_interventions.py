"""Interventions on the real broker: the worker reads the `interventions` topic, folds the good
ones into the patient's state and dead-letters the bad ones with their reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stream_support import WorkerProcess, fresh_prefix, read_topic

from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Publisher

GOOD = {"patient_id": "bed01", "kind": "red_cells", "amount": 375, "amount_unit": "mL",
        "started_at": "2026-11-25T04:10:00Z", "ended_at": "2026-11-25T05:10:00Z"}


def _j(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


BAD = [
    (b"bed01", _j(kind="leeches"), "unknown_kind"),
    (b"bed01", _j(amount_unit="pints"), "unknown_unit"),
    (b"bed01", _j(ended_at="2026-11-25T03:00:00Z"), "inconsistent"),
    (b"bed01", _j(amount=250_000), "out_of_range"),
    (b"bed01", _j(started_at="2026-11-25T04:10:00"), "bad_time"),
    (b"bed02", _j(), "inconsistent"),  # a key that is not the patient
    (b"bed01", b"{not json", "malformed_json"),
]


@pytest.mark.broker
def test_the_worker_reads_interventions_and_dead_letters_bad_ones(kafka_bootstrap: str,
                                                                  tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        worker.wait_ready()
        publisher = Publisher(kafka_bootstrap)
        good = [_j(started_at=f"2026-11-25T0{h}:00:00Z", ended_at="") for h in range(4, 8)]
        good.append(_j(kind="vasopressor", amount=None, amount_unit=None, rate=0.1,
                       rate_unit="mcg/kg/min", agent="norepinephrine", mode="infusion"))
        for value in good:
            publisher.send(names.interventions, "bed01", value, patient_id="bed01")
        for key, value, _ in BAD:
            publisher.send(names.interventions, key, value, patient_id="bed01")
        publisher.send(names.interventions, "bed01", good[0], patient_id="bed01")  # again
        publisher.close()
        sent = len(good) + len(BAD) + 1
        worker.wait_for("clsmon_observations_total", sent, kind="intervention")
        records = read_topic(kafka_bootstrap, names.dead_letters,
                             lambda rs: len(rs) >= len(BAD))
        dead = [json.loads(r.value) for r in records]
        assert sorted(d["reason"] for d in dead) == sorted(b[2] for b in BAD)
        assert all(d["topic"] == names.interventions and d["detail"] for d in dead)
        assert worker.total("clsmon_observations_total", kind="intervention",
                            outcome="accepted") == len(good)
        assert worker.total("clsmon_observations_total", kind="intervention",
                            outcome="duplicate") == 1
        assert worker.total("clsmon_observations_total", kind="intervention",
                            outcome="dead_letter") == len(BAD)
        assert worker.proc.poll() is None
    finally:
        assert worker.stop() == 0, worker.output()


@pytest.mark.broker
def test_publish_with_the_replays_side_files_gives_the_replays_alerts(kafka_bootstrap: str,
                                                                      tmp_path: Path) -> None:
    """``clsmon publish OBS --patients P --interventions I`` into a running worker: the same
    alert ids (and times) as ``clsmon replay`` of the same three files. The stays matter: the
    replay without them raises other ids, so a publish that dropped or misplaced them fails."""
    from test_interventions import _two_stays_and_a_transfusion

    from streams.cli import main

    files = _two_stays_and_a_transfusion(tmp_path)
    replayed, without = tmp_path / "replay.jsonl", tmp_path / "without.jsonl"
    assert main(["replay", *files, "--out", str(replayed), "--quiet"]) == 0
    assert main(["replay", files[0], "--out", str(without), "--quiet"]) == 0

    def ids(path: Path) -> list[tuple[str, str]]:
        return sorted((d["alert_id"], d["raised_at"])
                      for d in map(json.loads, path.read_text().splitlines()))

    expected = ids(replayed)
    assert expected and expected != ids(without)
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        worker.wait_ready()
        assert main(["publish", *files, "--broker", kafka_bootstrap,
                     "--topic-prefix", names.prefix]) == 0
        worker.wait_for("clsmon_observations_total", 2, kind="intervention", outcome="accepted")
        records = read_topic(kafka_bootstrap, names.alerts,
                             lambda rs: len(rs) >= len(expected), timeout=60)
        got = sorted({(d["alert_id"], d["raised_at"]) for d in map(
            lambda r: json.loads(r.value), records)})
        assert got == expected, worker.output()
    finally:
        assert worker.stop() == 0, worker.output()
