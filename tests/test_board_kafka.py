"""The board as its own process on a real broker, next to a real notifier and a real webhook
receiver, in a real browser: an alert produced to the broker appears on two open boards within
2 s; an acknowledgement made on one appears on the other within 2 s and stops the notifier's
escalation (it never fires); "Escalate now" makes the notifier page at once; delivery outcomes
show on the detail page; a board restarted with SIGTERM while browsers are open comes back
with the same picture (read again from Kafka) and the browsers reconnect by themselves."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from board_support import (
    BoardProcess,
    ack_latency_ms,
    launch_browser,
    make_alert,
    make_users,
    record,
    sign_in,
)
from notify_support import NotifierProcess, Receiver
from stream_support import fresh_prefix

from streams.kafka import codec
from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Publisher

pytestmark = pytest.mark.broker
ESCALATE_AFTER_S = 4.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


def _config(tmp_path: Path, receiver: Receiver) -> Path:
    path = tmp_path / "notify.toml"
    path.write_text(f"""
supersede_window_s = 0

[sinks.ward-hook]
type = "webhook"
url = "{receiver.url('/ward')}"
timeout_s = 2
retries = 1

[sinks.page]
type = "webhook"
url = "{receiver.url('/page')}"
timeout_s = 2
retries = 1

[default]
sinks = ["ward-hook"]
escalation = ["page"]
""")
    return path


def _send(bootstrap: str, topic: str, key: str, doc: dict[str, Any]) -> None:
    publisher = Publisher(bootstrap)
    publisher.send(topic, key, codec.encode(doc))
    publisher.flush()
    publisher.close()


def test_board_and_notifier_on_kafka(browser: Any, kafka_bootstrap: str, tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    receiver = Receiver().start()
    users = make_users(tmp_path / "users.toml")
    notifier = NotifierProcess(kafka_bootstrap, names.prefix, tmp_path,
                               _config(tmp_path, receiver), "--escalate-after",
                               str(ESCALATE_AFTER_S))
    board = BoardProcess(kafka_bootstrap, names.prefix, users, tmp_path / "audit.jsonl",
                         tmp_path / "board.log")
    try:
        record("board_start_to_healthy_s", round(board.start(), 2))
        notifier.wait_ready()
        clin = sign_in(browser, board.url, "alice")
        view = sign_in(browser, board.url, "victor")
        for p in (clin, view):
            p.wait_for_selector("#live.on", timeout=5000)

        alert = make_alert("icu3-bed07", "leak", "critical")
        _send(kafka_bootstrap, names.alerts, "icu3-bed07", alert)  # acknowledged by the broker
        t0 = time.monotonic()
        clin.wait_for_selector("#bed-icu3-bed07.unacked", timeout=2000)
        record("kafka_alert_produced_to_board_s", round(time.monotonic() - t0, 3))
        view.wait_for_selector("#bed-icu3-bed07.unacked", timeout=2000)
        # the same alert again (at-least-once upstream): still one row; a bed known only from
        # the worker's compacted phase topic
        _send(kafka_bootstrap, names.alerts, "icu3-bed07", alert)
        _send(kafka_bootstrap, names.patient_phase, "icu3-bed12", {
            "patient_id": "icu3-bed12", "phase": "prodromal", "severity": "warning",
            "since": alert["raised_at"], "episode": 1,
            "last_evidence": "Rapid weight gain: 3.4 kg (limit >= 3 % or 2 kg in 48 h)"})
        view.wait_for_selector("#bed-icu3-bed12", timeout=2000)
        assert view.locator("#beds > li#bed-icu3-bed07").count() == 1
        receiver.wait(lambda: len(receiver.delivered("/ward")) == 1)

        clin.click("#bed-icu3-bed07 a.open-detail")
        clin.fill("#note", "fluids started")
        ms = ack_latency_ms(clin, view, "bed-icu3-bed07", "form.ack button[type=submit]")
        record("kafka_ack_click_to_other_board_ms", ms)
        assert ms < 2000
        assert "fluids started" in clin.locator("table.acks").inner_text()
        notifier.wait_for("clsmon_acks_total", 1, outcome="stopped_escalation")
        # the delivery outcome, from the notifier through the notifications topic
        clin.reload()
        clin.wait_for_selector("table.outcomes tr.outcome-delivered", timeout=5000)
        assert "ward-hook" in clin.locator("table.outcomes").inner_text()

        # escalate now: another critical alert, escalated from the page, paged at once
        other = make_alert("icu3-bed08", "leak", "critical")
        _send(kafka_bootstrap, names.alerts, "icu3-bed08", other)
        view.wait_for_selector("#bed-icu3-bed08.unacked", timeout=2000)
        clin.goto(f"{board.url}/alerts/{other['alert_id']}")
        t1 = time.monotonic()
        clin.click("form.escalate button")
        receiver.wait(lambda: len(receiver.delivered("/page")) == 1, timeout=10)
        record("kafka_escalate_click_to_page_s", round(time.monotonic() - t1, 3))
        [page] = receiver.delivered("/page")
        assert page.key == other["alert_id"] + "-escalation"
        assert page.doc["escalation"]["reason"] == "requested"
        assert page.doc["escalation"]["requested_by"] == "Dr Alice Grey"

        # the acknowledged alert's escalation never fires
        time.sleep(ESCALATE_AFTER_S + 2)
        assert [r.key for r in receiver.delivered("/page")] == [page.key]

        # restart with two live streams open
        code, took = board.stop()
        record("board_sigterm_with_open_streams_exit_s", round(took, 2))
        assert code == 0, board.log.read_text()[-3000:]
        view.wait_for_selector("#live.off", timeout=5000)
        t2 = time.monotonic()
        board.start()
        view.wait_for_selector("#live.on", timeout=15000)  # EventSource reconnects by itself
        record("board_restart_to_browser_live_s", round(time.monotonic() - t2, 2))
        text = view.locator("#bed-icu3-bed07").inner_text()
        assert "Acknowledged by Dr Alice Grey" in text, text
        assert view.locator("#bed-icu3-bed12").count() == 1
        assert "Escalated to page" in view.locator("#bed-icu3-bed08").inner_text()

        audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert [(a["event"], a["user"]) for a in audit if a["event"] in ("ack", "escalate")] == [
            ("ack", "alice"), ("escalate", "alice")]
        ada = sign_in(browser, board.url, "ada")
        r = ada.request.get(board.url + "/audit")
        assert r.status == 200 and '"event":"ack"' in r.text()
        assert view.request.get(board.url + "/audit").status == 403
        with urllib.request.urlopen(f"http://127.0.0.1:{board.metrics_port}/metrics") as r:
            scraped = r.read().decode()
        streams = [line for line in scraped.splitlines()
                   if line.startswith("clsmon_board_live_streams ")]
        assert streams and float(streams[0].split()[1]) >= 1  # the viewer's, reconnected
        assert 'clsmon_board_actions_total{action="forbidden"} 1.0' in scraped  # /audit
        # not signed in, no browser (curl): 401, saying where to sign in
        try:
            urllib.request.urlopen(board.url + "/")
            raise AssertionError("the board answered a request that was not signed in")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
            assert exc.read().decode().strip() == (
                f"sign in first: open {board.url}/login in a browser")
    finally:
        if board.proc and board.proc.poll() is None:
            board.stop()
        assert notifier.stop() == 0, notifier.output()
        receiver.stop()
    log = board.log.read_text()
    assert "Traceback" not in log, log[-3000:]
