"""``clsmon hl7 listen``: ACK only after Kafka, bad messages told and dead-lettered, connection
limits; with Debian's ``mllp_send`` (a sender nobody here wrote) against the real broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import hl7
import pytest
from debian_tools import require
from hl7.mllp import open_hl7_connection
from hl7_corpus import (
    T,
    adt,
    bad_messages,
    frame,
    lab_panel,
    lab_retraction,
    monitor_loinc,
    monitor_mdc,
)
from prometheus_client import CollectorRegistry
from stream_support import ROOT, fresh_prefix, read_topic

from streams.interfaces.codes import load_tables
from streams.interfaces.hl7.inbound import Hl7Settings
from streams.interfaces.hl7.listener import Listener, ListenerConfig, ListenerMetrics
from streams.kafka.local import free_port
from streams.kafka.topics import TopicNames

SETTINGS = Hl7Settings(load_tables(), id_authority="HOSP")


class HeldSink:
    """Records what would go to Kafka; holds the acknowledgement until released (or fails)."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def send_all(self, records: Sequence[tuple[str, bytes | None, bytes, int]],
                       timeout_s: float) -> None:
        await asyncio.wait_for(self.release.wait(), timeout_s)
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.sent.extend(records)


async def _listener(sink: HeldSink, **options: Any) -> tuple[Listener, asyncio.AbstractServer,
                                                              int]:
    port = free_port()
    cfg = ListenerConfig(SETTINGS, TopicNames("t."), host="127.0.0.1", port=port, **options)
    listener = Listener(cfg, sink, ListenerMetrics(CollectorRegistry()))
    return listener, await listener.start(), port


def _code(ack: bytes) -> str:
    return str(hl7.parse(ack.decode()).segment("MSA")(1))


def test_the_ack_waits_for_kafka_and_is_ar_when_kafka_fails() -> None:
    async def scenario() -> None:
        sink = HeldSink()
        listener, server, port = await _listener(sink)
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        writer.writeblock(monitor_mdc("M1", T, 84, 42, 56, 118))
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readblock(), 0.5)  # Kafka has not acknowledged
        sink.release.set()
        assert _code(await asyncio.wait_for(reader.readblock(), 5)) == "AA"
        assert len(sink.sent) == 4
        failing = HeldSink(fail=True)
        failing.release.set()
        listener.sink = failing
        writer.writeblock(monitor_mdc("M2", T, 84, 42, 56, 118))
        await writer.drain()
        reply = hl7.parse((await asyncio.wait_for(reader.readblock(), 5)).decode())
        assert str(reply.segment("MSA")(1)) == "AR"
        assert str(reply.segment("ERR")(3)(1)(1)) == "207"
        writer.close()
        server.close()

    asyncio.run(scenario())


def test_stamps_are_in_send_order_and_later_when_a_patient_changes_topic() -> None:
    """The worker orders a partition's topics by timestamp: a later record must never carry an
    earlier stamp than the one before it, whoever its patient (a monitor sends several values
    in the same ms; the next patient's were stamped behind them), and a patient's record on
    another topic than its previous one must carry a later stamp (an admission, then its
    vitals). Within one topic an equal stamp keeps the order (offsets)."""
    async def scenario() -> None:
        sink = HeldSink()
        sink.release.set()
        port = free_port()
        cfg = ListenerConfig(SETTINGS, TopicNames("t."), host="127.0.0.1", port=port)
        listener = Listener(cfg, sink, ListenerMetrics(CollectorRegistry()),
                            clock=lambda: 1_800_000_000.0)  # a clock that stands still
        server = await listener.start()
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        for block in (adt("A1", "A01", patient="111"),
                      monitor_mdc("M1", T, 84, 42, 56, 118, patient="111"),
                      monitor_mdc("M2", T, 84, 42, 56, 118, patient="222"),
                      adt("A2", "A08", patient="111"),
                      monitor_mdc("M3", T, 84, 42, 56, 118, patient="111")):
            writer.writeblock(block)
            await writer.drain()
            assert _code(await asyncio.wait_for(reader.readblock(), 5)) == "AA"
        writer.close()
        server.close()
        stamps = [ts for _, _, _, ts in sink.sent]
        assert len(stamps) >= 14 and stamps == sorted(stamps)
        for patient in (b"111", b"222"):
            mine = [(topic, ts) for topic, key, _, ts in sink.sent if key == patient]
            for (topic, ts), (next_topic, next_ts) in itertools.pairwise(mine):
                assert next_ts > ts if next_topic != topic else next_ts >= ts
        assert stamps[-1] - stamps[0] <= 4  # one ms per change of topic, not per record

    asyncio.run(scenario())


def test_oversize_blocks_idle_senders_and_too_many_connections_are_closed() -> None:
    async def scenario() -> None:
        sink = HeldSink()
        sink.release.set()
        listener, server, port = await _listener(sink, max_bytes=4096, idle_timeout_s=0.5,
                                                 max_connections=2)
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        writer.writeblock(b"MSH|" + b"x" * 10_000)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        idle_reader, _ = await open_hl7_connection("127.0.0.1", port)
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # closed after 0.5 s
        held = [await open_hl7_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        third, _ = await open_hl7_connection("127.0.0.1", port)
        assert await asyncio.wait_for(third.read(), 5) == b""  # over the limit
        closed = {s.labels["why"]: s.value for m in listener.metrics.closed.collect()
                  for s in m.samples if s.name.endswith("_total")}
        assert closed == {"oversize": 1, "idle": 1, "too_many": 1}
        for _, w in held:
            w.close()
        server.close()

    asyncio.run(scenario())


def test_many_connections_at_once_are_all_acknowledged() -> None:
    async def scenario() -> None:
        sink = HeldSink()
        sink.release.set()
        _, server, port = await _listener(sink)

        async def sender(n: int) -> list[str]:
            reader, writer = await open_hl7_connection("127.0.0.1", port)
            codes = []
            for i in range(3):
                writer.writeblock(monitor_loinc(f"C{n}-{i}", T + timedelta(minutes=i), 84, 56,
                                                patient=f"p{n}"))
                await writer.drain()
                codes.append(_code(await asyncio.wait_for(reader.readblock(), 10)))
            writer.close()
            return codes

        results = await asyncio.gather(*(sender(n) for n in range(40)))
        assert all(codes == ["AA"] * 3 for codes in results)
        assert len(sink.sent) == 40 * 3 * 2
        stamps: dict[bytes | None, list[tuple[str, int]]] = {}
        for topic, key, _, ts in sink.sent:
            stamps.setdefault(key, []).append((topic, ts))
        for mine in stamps.values():  # per patient: never earlier, later on a change of topic
            assert all(b[1] > a[1] if b[0] != a[0] else b[1] >= a[1]
                       for a, b in itertools.pairwise(mine)), mine
        server.close()

    asyncio.run(scenario())


class ListenerProcess:
    """``clsmon hl7 listen`` in a child process."""

    def __init__(self, bootstrap: str, prefix: str, tmp: Path, *extra: str) -> None:
        self.port, self.web = free_port(), free_port()
        self.log_path = tmp / f"hl7-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "hl7", "listen", "--broker", bootstrap,
             "--topic-prefix", prefix, "--host", "127.0.0.1", "--port", str(self.port),
             "--web-port", str(self.web), "--web-host", "127.0.0.1", "--id-authority", "HOSP",
             *extra],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while b"MLLP on" not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(self.log_path.read_text(errors="replace"))
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        return self.proc.returncode


def mllp_send(port: int, messages: Sequence[bytes], tmp: Path) -> list[hl7.Message]:
    """Debian's mllp_send (python3-hl7) with an MLLP-framed file; the ACKs it printed."""
    binary = require("mllp_send", "python3-hl7")
    path = tmp / f"batch-{time.monotonic_ns()}.hl7"
    path.write_bytes(frame(*messages))
    done = subprocess.run(["timeout", "60", binary, "--port", str(port), "--file", str(path),
                           "127.0.0.1"], capture_output=True, timeout=90)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    blocks = [b.strip(b"\r\n\x0b") for b in done.stdout.split(b"\x1c")]
    return [hl7.parse(b.decode().replace("\n", "\r")) for b in blocks if b.strip()]


@pytest.mark.broker
def test_mllp_send_corpus_to_topics_and_bad_messages_to_dead_letters(kafka_bootstrap: str,
                                                                     tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    listener = ListenerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        good = [adt("A1", "A01"), monitor_mdc("M1", T, 84, 42, 56, 118),
                monitor_loinc("L1", T + timedelta(minutes=5), 82, 55, unit="mmHg"),
                lab_panel("LAB1", T, 58, 2.1), lab_retraction("LAB2", T, 58)]
        acks = mllp_send(listener.port, good, tmp_path)
        assert [(str(a.segment("MSA")(1)), str(a.segment("MSA")(2))) for a in acks] == [
            ("AA", "A1"), ("AA", "M1"), ("AA", "L1"), ("AA", "LAB1"), ("AA", "LAB2")]
        bad = bad_messages()
        acks = mllp_send(listener.port, [raw for _, raw, _, _ in bad], tmp_path)
        assert [str(a.segment("MSA")(1)) for a in acks] == [code for _, _, code, _ in bad]
        assert all(str(a.segment("ERR")(8)) for a in acks)
    finally:
        assert listener.stop() == 0
    vitals = read_topic(kafka_bootstrap, names.vitals, lambda rs: len(rs) >= 6)
    labs = read_topic(kafka_bootstrap, names.labs, lambda rs: len(rs) >= 3)
    patients = read_topic(kafka_bootstrap, names.patients, lambda rs: len(rs) >= 1)
    dead = read_topic(kafka_bootstrap, names.dead_letters, lambda rs: len(rs) >= len(bad))
    assert sorted(json.loads(r.value)["kind"] for r in vitals) == [
        "dbp", "heart_rate", "map", "map", "sbp", "sbp"]
    assert [json.loads(r.value).get("status") for r in labs] == [
        "final", "final", "entered-in-error"]
    assert {r.key for r in vitals + labs + patients} == {b"12345"}
    assert json.loads(patients[0].value)["ward"] == "ICU3"
    letters = [json.loads(r.value) for r in dead]
    assert sorted(d["reason"] for d in letters) == sorted(reason for *_, reason in bad)
    for d in letters:  # the raw message, byte for byte, and a reason a person can read
        assert d["value"] and d["detail"] and d["topic"].startswith("hl7-mllp:")


def test_mllp_over_tls_with_a_certificate(tmp_path: Path) -> None:
    import ssl

    openssl = require("openssl", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True, timeout=60)

    async def scenario() -> None:
        sink = HeldSink()
        sink.release.set()
        listener, server, port = await _listener(sink, tls_cert=str(cert), tls_key=str(key))
        client = ssl.create_default_context(cafile=str(cert))
        client.check_hostname = False
        reader, writer = await open_hl7_connection("127.0.0.1", port, ssl=client)
        writer.writeblock(monitor_mdc("T1", T, 84, 42, 56, 118))
        await writer.drain()
        assert _code(await asyncio.wait_for(reader.readblock(), 10)) == "AA"
        writer.close()
        plain_reader, plain = await open_hl7_connection("127.0.0.1", port)  # no TLS: refused
        plain.writeblock(monitor_mdc("T2", T, 84, 42, 56, 118))
        await plain.drain()
        assert await asyncio.wait_for(plain_reader.read(), 10) == b""
        assert len(sink.sent) == 4
        server.close()

    asyncio.run(scenario())
