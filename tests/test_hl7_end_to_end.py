"""End to end on the real broker: one simulated leak course sent as HL7 v2 over MLLP, the leak
alert out as IHE ACM ORU^R40 to a test alert manager (a small MLLP server in this test); the
ORU^R40 builder and the sender's retries against that alert manager."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from builders import run
from hl7.client import MLLPClient
from hl7_corpus import dtm, join, msh, pid
from notify_support import NotifierProcess, alert_doc, run_cli
from stream_support import WorkerProcess, fresh_prefix
from test_hl7_listener import ListenerProcess

from detectors.observation import parse_time_ms
from streams.interfaces.hl7.acm import AcmError, AcmSender, AcmSettings, acm_alert_id, report_alert
from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.simulator import make_patient

LOINC = {"sbp": "8480-6", "dbp": "8462-4", "map": "8478-0", "heart_rate": "8867-4",
         "hematocrit": "4544-3", "albumin": "1751-7", "leukocytes": "6690-2",
         "hemoglobin": "718-7", "weight": "29463-7"}
LABS = {"hematocrit", "albumin", "leukocytes", "hemoglobin"}


class AlertManager:
    """A test alert manager: an MLLP server that records each message and answers ACK^R40
    with the codes it is told to (``answers``, then AA)."""

    def __init__(self, answers: tuple[str, ...] = ()) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[hl7.Message] = []
        self.answers = list(answers)
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while not self._stop:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while b"\x1c\r" in buffer:
                    block, buffer = buffer.split(b"\x1c\r", 1)
                    msg = hl7.parse(block.lstrip(b"\x0b").decode())
                    self.received.append(msg)
                    code = self.answers.pop(0) if self.answers else "AA"
                    ack = msg.create_ack(code, application="AM", facility="HOSP")
                    conn.sendall(b"\x0b" + str(ack).encode() + b"\x1c\r")

    def stop(self) -> None:
        self._stop = True
        self.sock.close()


def facet(msg: hl7.Message, n: int) -> str:
    return next(str(s(5)) for s in msg.segments("OBX") if str(s(4)) == f"1.0.0.0.{n}")


def test_an_escalation_updates_the_same_alarm_and_a_phase_change_ends_the_last() -> None:
    leak = alert_doc("12345", phase="leak", severity="high", ward="ICU3", bed="BED07")
    critical = alert_doc("12345", phase="leak", severity="critical", previous_phase="leak")
    recovery = alert_doc("12345", phase="recovery", severity="warning", previous_phase="leak")
    settings = AcmSettings()
    (start,) = report_alert(leak, 0, settings)
    (escalate,) = report_alert(critical, 0, settings)
    end, begin = report_alert(recovery, 0, settings)
    (acked,) = report_alert({**leak, "ack": {"by": "Dr Grey"}}, 0, settings)
    parsed = {name: hl7.parse(m.text) for name, m in (("start", start), ("escalate", escalate),
                                                      ("end", end), ("begin", begin),
                                                      ("ack", acked))}
    leak_id = acm_alert_id("12345", 1, "leak")
    for name in ("start", "escalate", "end", "ack"):
        assert str(parsed[name].segment("OBR")(2)(1)(1)) == leak_id, name
    assert str(parsed["begin"].segment("OBR")(2)(1)(1)) == acm_alert_id("12345", 1, "recovery")
    assert [facet(parsed[n], 3) for n in ("start", "escalate", "end", "begin", "ack")] == [
        "start", "escalate", "end", "start", "update"]
    assert facet(parsed["ack"], 5) == "alert-acknowledged"
    assert facet(parsed["end"], 4) == "inactive"
    assert [facet(parsed[n], 6) for n in ("start", "escalate")] == ["PM", "PH"]
    assert str(parsed["start"].segment("PV1")(3)) == "ICU3^^BED07"
    assert len({m.control_id for m in (start, escalate, end, begin, acked)}) == 5


def test_the_sender_retries_a_busy_alert_manager_and_gives_up_on_a_content_error() -> None:
    manager = AlertManager(answers=("AR", "AR"))
    try:
        sender = AcmSender("127.0.0.1", manager.port, ack_timeout_s=2, retries=3,
                           sleep=lambda s: None)
        (message,) = report_alert(alert_doc("12345", severity="high"), 0, AcmSettings())
        assert sender.send(message) == ("AA", 3)
        # the same control id each time: the alert manager can drop repeats
        assert {str(m.segment("MSH")(10)) for m in manager.received} == {message.control_id}
        manager.answers = ["AE"]
        with pytest.raises(AcmError, match="content"):
            sender.send(message)
        sender.close()
    finally:
        manager.stop()
    nobody = AcmSender("127.0.0.1", manager.port, ack_timeout_s=0.5, retries=2,
                       sleep=lambda s: None)
    with pytest.raises(AcmError, match="after 3 attempts"):
        nobody.send(message)


def hl7_course(observations: list[dict[str, Any]], patient: str) -> Iterator[bytes]:
    """A patient's observations (arrival order) as the messages a monitor gateway and a
    laboratory would send: one ORU^R01 per vital-sign time, one per lab result."""
    n = 0
    vitals: list[dict[str, Any]] = []

    def flush() -> Iterator[bytes]:
        nonlocal n, vitals
        if vitals:
            n += 1
            at = _dt(vitals[0]["observed_at"])
            rows = [f"OBX|{i}|NM|{LOINC[o['kind']]}^{o['kind']}^LN||{o['value']:g}|"
                    f"{o.get('unit') or ''}^^UCUM|||||F|||{dtm(at)}"
                    for i, o in enumerate(vitals, 1)]
            yield join(msh(f"V{n}", "ORU^R01"), pid(patient), "PV1||I|ICU3^^BED07^HOSP",
                       f"OBR|1|||85354-9^vitals^LN|||{dtm(at)}", *rows)
            vitals = []

    for o in observations:
        if o["kind"] not in LOINC:
            continue
        if o["kind"] in LABS:
            yield from flush()
            n += 1
            at = _dt(o["observed_at"])
            yield join(msh(f"L{n}", "ORU^R01", app="LIS"), pid(patient),
                       f"OBR|1|||{LOINC[o['kind']]}^{o['kind']}^LN|||{dtm(at)}",
                       f"OBX|1|NM|{LOINC[o['kind']]}^{o['kind']}^LN||{o['value']:g}|"
                       f"{o.get('unit') or ''}^^UCUM|||||F")
            continue
        if vitals and vitals[0]["observed_at"] != o["observed_at"]:
            yield from flush()
        vitals.append(o)
    yield from flush()


def _dt(value: Any) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(parse_time_ms(value) / 1000, tz=UTC)


@pytest.mark.broker
def test_a_leak_course_in_as_hl7_comes_out_as_an_oru_r40(kafka_bootstrap: str,
                                                         tmp_path: Path) -> None:
    patient = make_patient("12345", "scls", seed=3, start_ms=1_795_000_000_000, hours=72,
                           vitals_every_min=15)
    kept = [o for o in patient.observations if o["kind"] in LOINC]
    alerts, _ = run(kept, {**patient.context(), "patient_id": "12345"})
    leak = next(a for a in alerts if a.phase == "leak")
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, 3)
    manager = AlertManager()
    config = tmp_path / "notify.toml"
    config.write_text(f'[sinks.am]\ntype = "hl7-acm"\nhost = "127.0.0.1"\nport = {manager.port}\n'
                      'ack_timeout_s = 5\n\n[default]\nsinks = ["am"]\n')
    listener = ListenerProcess(kafka_bootstrap, names.prefix, tmp_path)
    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    notifier = NotifierProcess(kafka_bootstrap, names.prefix, tmp_path, config)
    try:
        client = MLLPClient("127.0.0.1", listener.port)
        context = {**patient.context(), "patient_id": "12345"}
        sex = context.get("sex") or "F"
        admit = join(msh("ADT1", "ADT^A01", app="ADT"), pid(sex=sex), "PV1|1|I|ICU3^^BED07^HOSP")
        sent = 0
        for message in [admit, *hl7_course(kept, "12345")]:
            reply = hl7.parse(client.send_message(message).decode().strip("\x0b\x1c\r"))
            assert str(reply.segment("MSA")(1)) == "AA", reply
            sent += 1
        client.close()
        worker.wait_ready()
        notifier.wait_ready()
        deadline = time.monotonic() + 120
        wanted = acm_alert_id("12345", leak.episode, "leak")
        found = []
        while time.monotonic() < deadline and not found:
            # the high leak alert is a "start"; when the critical one supersedes it inside the
            # notifier's supersede window, the alarm arrives as that escalation (same id)
            found = [m for m in list(manager.received)
                     if str(m.segment("OBR")(2)(1)(1)) == wanted
                     and facet(m, 3) in ("start", "escalate")]
            time.sleep(0.2)
        assert found, (sent, [str(m.segment("OBR")(2)) for m in manager.received],
                       worker.output(), notifier.output())
        message = found[0]
        assert str(message.segment("MSH")(9)) == "ORU^R40^ORU_R40"
        assert str(message.segment("PID")(3)(1)(1)) == "12345"
        assert str(message.segment("PV1")(3)).startswith("ICU3")  # routed by ward and bed
        assert facet(message, 6) == {"start": "PM", "escalate": "PH"}[facet(message, 3)]
        assert facet(message, 7) == "SA"
        # a clinician's acknowledgement is an update of the same alarm at the alert manager
        last = [a for a in alerts if a.phase == "leak"][-1]  # delivered, never superseded
        done = run_cli("ack", last.alert_id, "--by", "Dr Grey", "--broker", kafka_bootstrap,
                       "--topic-prefix", names.prefix)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 60
        acked: list[hl7.Message] = []
        while time.monotonic() < deadline and not acked:
            acked = [m for m in list(manager.received)
                     if str(m.segment("OBR")(2)(1)(1)) == wanted and facet(m, 3) == "update"]
            time.sleep(0.2)
        assert acked and facet(acked[0], 5) == "alert-acknowledged", notifier.output()
    finally:
        for process in (listener, worker, notifier):
            process.stop()
        manager.stop()
