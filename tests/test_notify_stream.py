"""The notifier against a real broker and a real HTTP webhook receiver (127.0.0.1).

Each test runs ``clsmon notify`` as a child process (Faust must own its main thread) on fresh
topics, publishes alerts and acks like the worker and ``clsmon ack`` do, and checks what the
receiver got: delivery with the Idempotency-Key, retries after 500s, routing per ward, no
duplicate after ``kill -9`` and a restart, escalation timing, and an ack stopping escalation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from notify_support import NotifierProcess, Receiver, alert_doc, run_cli
from stream_support import fresh_prefix, read_topic

from streams.kafka import codec
from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Publisher

pytestmark = pytest.mark.broker


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    yield r
    r.stop()


def _config(tmp_path: Path, receiver: Receiver, **webhook: Any) -> Path:
    options = "".join(f"{k} = {v}\n" for k, v in
                      {"timeout_s": 2, "retries": 3, "backoff_s": 0.1, **webhook}.items())
    path = tmp_path / "notify.toml"
    path.write_text(f"""
supersede_window_s = 0  # high alerts at once (the window is unit-tested)

[sinks.icu3]
type = "webhook"
url = "{receiver.url('/icu3')}"
{options}
[sinks.other]
type = "webhook"
url = "{receiver.url('/other')}"
{options}
[sinks.page]
type = "webhook"
url = "{receiver.url('/page')}"
{options}
[sinks.audit]
type = "audit"
path = "{tmp_path / 'audit.jsonl'}"

[default]
sinks = ["other", "audit"]

[[route]]
ward = "icu3"
sinks = ["icu3", "audit"]
escalation = ["page"]
""")
    return path


def _publish(bootstrap: str, topic: str, docs: list[dict[str, Any]],
             key: str = "patient_id") -> None:
    # batched, as any producer sends (on the embedded Tansu broker, which reports wrong end
    # offsets after batched sends, this was one record per request)
    publisher = Publisher(bootstrap)
    for doc in docs:
        publisher.send(topic, doc[key], codec.encode(doc))
    publisher.close()


def _setup(kafka_bootstrap: str) -> TopicNames:
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    return names


def test_delivery_routing_retries_and_dead_letters(kafka_bootstrap: str, tmp_path: Path,
                                                   receiver: Receiver) -> None:
    names = _setup(kafka_bootstrap)
    icu3 = [alert_doc(f"icu3-bed{i:02d}", severity="high") for i in range(4)]
    by_ward = alert_doc("bed-x", severity="warning", phase="prodromal", ward="icu3")
    elsewhere = alert_doc("er-07", severity="high")
    receiver.fail_first[icu3[0]["alert_id"]] = 2  # fails twice, then 200
    docs = [*icu3, by_ward, elsewhere]
    _publish(kafka_bootstrap, names.alerts, docs + docs[:2])  # + redeliveries
    publisher = Publisher(kafka_bootstrap)
    publisher.send(names.alerts, "icu3-bed77", b"{not json")
    publisher.send(names.alert_acks, "icu3-bed01", codec.encode({"alert_id": "x"}))
    publisher.close()

    notifier = NotifierProcess(kafka_bootstrap, names.prefix, tmp_path,
                               _config(tmp_path, receiver))
    try:
        notifier.wait_ready()
        receiver.wait(lambda: len(receiver.delivered()) >= len(docs))
        notifier.wait_for("clsmon_notifications_total", 2, outcome="duplicate")
        notifier.wait_for("clsmon_notify_dead_letters_total", 2)
        time.sleep(0.5)
        icu3_keys = receiver.delivered_keys("/icu3")
        assert icu3_keys == {d["alert_id"]: 1 for d in [*icu3, by_ward]}
        assert receiver.delivered_keys("/other") == {elsewhere["alert_id"]: 1}
        got = {r.key: r.doc for r in receiver.delivered()}
        assert all(got[d["alert_id"]] == d for d in docs)  # the alert as published
        retried = [r.status for r in receiver.requests if r.key == icu3[0]["alert_id"]]
        assert retried == [500, 500, 200]
        assert notifier.total("clsmon_notifications_total", sink="icu3",
                              outcome="delivered") == 5
        assert notifier.total("clsmon_notifications_total", outcome="failed") == 0
    finally:
        assert notifier.stop() == 0, notifier.output()
    dead = [json.loads(r.value) for r in read_topic(kafka_bootstrap, names.dead_letters,
                                                   lambda rs: len(rs) >= 2, timeout=10)]
    assert sorted(d["reason"] for d in dead) == ["invalid_ack", "malformed_json"]
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sorted(a["alert_id"] for a in audit) == sorted(d["alert_id"] for d in docs)


def test_no_duplicate_after_kill_9_and_restart(kafka_bootstrap: str, tmp_path: Path,
                                               receiver: Receiver) -> None:
    names = _setup(kafka_bootstrap)
    docs = [alert_doc(f"icu3-bed{i:02d}", severity="high") for i in range(10)]
    receiver.hold_at = 5  # the 5th request hangs: the notifier is killed while it waits
    _publish(kafka_bootstrap, names.alerts, docs)
    config = _config(tmp_path, receiver, timeout_s=20)
    # offsets are committed rarely, so the restarted notifier reads delivered alerts again:
    # only the table can keep it from notifying them twice
    first = NotifierProcess(kafka_bootstrap, names.prefix, tmp_path, config,
                            "--commit-interval", "60")
    try:
        first.wait_ready()
        assert receiver.held.wait(30), first.output()
        # the other nine are delivered meanwhile (a held sink slot holds nothing else up) ...
        receiver.wait(lambda: len(receiver.delivered_keys("/icu3")) == 9)
        first.wait_for("clsmon_notifications_total", 9, sink="icu3", outcome="delivered")
        time.sleep(1.0)  # ... and their outcomes reach the table's changelog
    finally:
        first.kill()
    receiver.release.set()  # the held request is answered to a dead client: not delivered

    second = NotifierProcess(kafka_bootstrap, names.prefix, tmp_path, config,
                             "--commit-interval", "60")
    try:
        second.wait_ready()
        receiver.wait(lambda: len(receiver.delivered_keys("/icu3")) >= len(docs), timeout=30)
        # it did read the delivered alerts again (else this test could not fail) ...
        second.wait_for("clsmon_notifications_total", 9, sink="icu3", outcome="duplicate")
        time.sleep(1.0)
        # ... and each alert reached the receiver exactly once
        assert receiver.delivered_keys("/icu3") == {d["alert_id"]: 1 for d in docs}
        assert second.total("clsmon_notifications_total", sink="icu3", outcome="delivered") == 1
    finally:
        assert second.stop() == 0, second.output()


def test_escalation_timing_ack_stops_it_and_survives_restart(kafka_bootstrap: str,
                                                            tmp_path: Path,
                                                            receiver: Receiver) -> None:
    names = _setup(kafka_bootstrap)
    config = _config(tmp_path, receiver)
    unacked = alert_doc("icu3-bed01")
    acked = alert_doc("icu3-bed02")
    not_critical = alert_doc("icu3-bed03", severity="high")
    # long enough for three `clsmon ack` runs (each reads the topics) on a loaded machine
    after = 8.0
    notifier = NotifierProcess(kafka_bootstrap, names.prefix, tmp_path, config,
                               "--escalate-after", str(after))
    try:
        notifier.wait_ready()
        _publish(kafka_bootstrap, names.alerts, [unacked, acked, not_critical])
        receiver.wait(lambda: len(receiver.delivered_keys("/icu3")) == 3)
        sent_at = {r.key: r.at for r in receiver.delivered("/icu3")}
        # the on-call command finds the patient on the alerts topic and publishes the ack
        done = run_cli("ack", acked["alert_id"], "--by", "dr grey", "--note", "on it",
                       "--broker", kafka_bootstrap, "--topic-prefix", names.prefix)
        assert done.returncode == 0, done.stderr
        assert "icu3-bed02" in done.stdout
        # a second clinician, and an alert that does not exist: said so, exit 1, not published
        again = run_cli("ack", acked["alert_id"], "--by", "dr who", "--broker", kafka_bootstrap,
                        "--topic-prefix", names.prefix)
        assert again.returncode == 1, again.stdout + again.stderr
        assert "already acknowledged by dr grey" in again.stderr
        unknown = run_cli("ack", "deadbeefdeadbeef", "--by", "dr grey", "--broker",
                          kafka_bootstrap, "--topic-prefix", names.prefix)
        assert unknown.returncode == 1 and "no alert deadbeefdeadbeef" in unknown.stderr
        assert "acknowledged alert" not in again.stdout + unknown.stdout
        notifier.wait_for("clsmon_acks_total", 1, outcome="stopped_escalation")
        receiver.wait(lambda: len(receiver.delivered("/page")) >= 1, timeout=after + 10)
        [page] = receiver.delivered("/page")
        assert page.key == unacked["alert_id"] + "-escalation"
        waited = page.at - sent_at[unacked["alert_id"]]
        assert after - 0.2 <= waited <= after + 2.5, waited
        assert page.doc["escalation"]["reason"] == "unacknowledged"
        time.sleep(1.0)
        assert len(receiver.delivered("/page")) == 1  # the acked and the high ones: never

        # a pending escalation survives kill -9: a new critical alert, kill, restart
        later = alert_doc("icu3-bed04")
        _publish(kafka_bootstrap, names.alerts, [later])
        receiver.wait(lambda: later["alert_id"] in receiver.delivered_keys("/icu3"))
        delivered_at = receiver.delivered("/icu3")[-1].at
        # counted once recorded: killed after that, it is not notified again
        notifier.wait_for("clsmon_notifications_total", 4, sink="icu3", outcome="delivered")
    finally:
        notifier.kill()
    restarted = NotifierProcess(kafka_bootstrap, names.prefix, tmp_path, config,
                                "--escalate-after", str(after))
    try:
        restarted.wait_ready()
        receiver.wait(lambda: len(receiver.delivered("/page")) == 2, timeout=30)
        page2 = receiver.delivered("/page")[-1]
        assert page2.key == later["alert_id"] + "-escalation"
        assert page2.at - delivered_at >= after - 0.2
        time.sleep(1.0)
        assert receiver.delivered_keys("/page") == {
            unacked["alert_id"] + "-escalation": 1, later["alert_id"] + "-escalation": 1}
        assert receiver.delivered_keys("/icu3")[later["alert_id"]] == 1
    finally:
        assert restarted.stop() == 0, restarted.output()

    shown = run_cli("alerts", "--broker", kafka_bootstrap, "--topic-prefix", names.prefix)
    assert shown.returncode == 0, shown.stderr
    assert "acknowledged by dr grey" in shown.stdout and "NOT ACKNOWLEDGED" in shown.stdout
    assert "4 alerts, 1 acknowledged" in shown.stdout
    one = run_cli("alerts", "--broker", kafka_bootstrap, "--topic-prefix", names.prefix,
                  "--patient", "icu3-bed03")
    assert "1 alerts" in one.stdout and "\033[" not in one.stdout  # no colour when piped
