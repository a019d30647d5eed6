"""``clsmon hl7 listen``: the MLLP server that takes HL7 v2 messages to the input topics.

python-hl7's asyncio MLLP streams (``hl7.mllp.start_hl7_server``) carry the blocks; per
connection, messages are handled one at a time (an MLLP sender waits for each ACK anyway):

    read a block (idle timeout) -> map it (``inbound.read_message``, pure) -> produce every
    record, and the raw message to ``dead-letters`` when anything was refused -> wait until
    Kafka acknowledged ALL of them (``acks=all``) -> only then write the ACK.

Kafka not acknowledging within ``produce_timeout_s`` answers AR with ERR 207: the sender sends
the message again, and the observation ids are deterministic, so a duplicate is harmless
downstream (the engine drops exact redeliveries). A block over ``max_bytes``, bytes outside a
block, or a connection idle for ``idle_timeout_s`` close the connection (the stream cannot be
resynchronised after an oversize block: python-hl7 clears its buffer mid-block). At most
``max_connections`` at once; more are closed at once and counted. TLS (optionally mutual) when
a certificate is given. Record timestamps are the wall clock, strictly increasing per patient:
the worker restores arrival order from them (docs/contract.md, "Arrival order").

Metrics (``/metrics`` on ``--web-port``): ``clsmon_hl7_messages_total{type,ack}``,
``clsmon_hl7_records_total{topic}``, ``clsmon_hl7_obx_skipped_total``,
``clsmon_dead_letters_total{reason}``, ``clsmon_hl7_connections``,
``clsmon_hl7_connections_closed_total{why}``, ``clsmon_hl7_ack_seconds``.
Log lines carry peers and control ids, never patient identifiers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hl7.mllp import InvalidBlockError, start_hl7_server
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.interfaces.hl7.ack import build_ack
from streams.interfaces.hl7.inbound import Err, Hl7Settings, Reading, read_message
from streams.kafka import codec
from streams.kafka.connection import Connectable, connect
from streams.kafka.stamps import SendOrderStamps
from streams.kafka.topics import TopicNames

log = logging.getLogger(__name__)
_KNOWN_TYPES = ("ORU^R01", "ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A08", "ADT^A11",
                "ADT^A13")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """``clsmon hl7 listen`` settings (each a flag with an environment variable)."""

    settings: Hl7Settings
    names: TopicNames
    host: str = "0.0.0.0"  # noqa: S104 - monitor gateways connect from the network
    port: int = 2575  # the IANA port for HL7 over MLLP
    max_bytes: int = 1 << 20
    idle_timeout_s: float = 300.0
    max_connections: int = 200
    produce_timeout_s: float = 10.0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None


class RecordSink(Protocol):
    """Where the records go: ``send_all`` returns once every record is acknowledged, and
    raises if any is not (Kafka in production, a list in unit tests)."""

    async def send_all(self, records: Sequence[tuple[str, bytes | None, bytes, int]],
                       timeout_s: float) -> None: ...


class KafkaRecords:
    """aiokafka producer with ``acks=all``: ``send_all`` waits for every delivery."""

    def __init__(self, bootstrap: Connectable, idempotence: bool = False,
                 **client_options: Any) -> None:
        # enable_idempotence is right for Apache Kafka; the embedded Tansu broker answers
        # InitProducerId with UnknownError, so it is a flag. Addresses, TLS and SASL come from
        # the one connection object (streams.kafka.connection).
        self._options = {**connect(bootstrap).aiokafka_options(), "acks": "all",
                         "enable_idempotence": idempotence, "linger_ms": 2, **client_options}
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(**self._options)  # in the running loop
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send_all(self, records: Sequence[tuple[str, bytes | None, bytes, int]],
                       timeout_s: float) -> None:
        async def deliver() -> None:
            futures = [await self._producer.send(topic, value=value, key=key, timestamp_ms=ts)
                       for topic, key, value, ts in records]
            await asyncio.gather(*futures)

        await asyncio.wait_for(deliver(), timeout_s)


class ListenerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter("clsmon_hl7_messages", "HL7 messages by type and ACK code",
                                ["type", "ack"], registry=registry)
        self.records = Counter("clsmon_hl7_records", "records produced from HL7 messages",
                               ["topic"], registry=registry)
        self.skipped = Counter("clsmon_hl7_obx_skipped", "OBX rows with an unmapped code or "
                               "no result (X, N, I, O)", registry=registry)
        self.dead_letters = Counter("clsmon_dead_letters", "messages dead-lettered, by reason",
                                    ["reason"], registry=registry)
        self.connections = Gauge("clsmon_hl7_connections", "open MLLP connections",
                                 registry=registry)
        self.closed = Counter("clsmon_hl7_connections_closed", "MLLP connections closed by "
                              "the listener, by why", ["why"], registry=registry)
        self.ack_seconds = Histogram("clsmon_hl7_ack_seconds", "block received to ACK written",
                                     buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10),
                                     registry=registry)


class Listener:
    """The per-connection loop and the per-message discipline (see the module docstring)."""

    def __init__(self, cfg: ListenerConfig, sink: RecordSink, metrics: ListenerMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.sink = sink
        self.metrics = metrics
        self.clock = clock
        self.open = 0
        self._stamps = SendOrderStamps()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> asyncio.AbstractServer:
        return await start_hl7_server(self.handle, self.cfg.host, self.cfg.port,
                                      limit=self.cfg.max_bytes, ssl=tls_context(self.cfg))

    async def drain(self, grace_s: float) -> None:
        """Let the connections finish the message in hand (their ACK), then cancel them."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()

    async def handle(self, reader: Any, writer: Any) -> None:
        task = asyncio.current_task()
        peer = _peer(writer)
        if self.open >= self.cfg.max_connections or task is None:
            self.metrics.closed.labels("too_many").inc()
            log.warning("%s refused: %d connections open already", peer, self.open)
            writer.close()
            return
        self.open += 1
        self._tasks.add(task)
        self.metrics.connections.set(self.open)
        try:
            await self._serve(reader, writer, peer)
        finally:
            self.open -= 1
            self._tasks.discard(task)
            self.metrics.connections.set(self.open)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: Any, writer: Any, peer: str) -> None:
        while True:
            why = None
            try:
                block = await asyncio.wait_for(reader.readblock(), self.cfg.idle_timeout_s)
            except TimeoutError:
                why = "idle"
            except asyncio.IncompleteReadError as exc:  # the sender closed
                if exc.partial.strip():
                    why = "closed_mid_message"
                else:
                    return
            except ValueError:  # python-hl7 turns asyncio's LimitOverrunError into this
                why = "oversize"
            except InvalidBlockError:
                why = "not_mllp"
            except (ConnectionError, ssl.SSLError):
                why = "connection_error"
            if why is not None:
                self.metrics.closed.labels(why).inc()
                log.info("%s: closing (%s)", peer, why)
                return
            started = time.perf_counter()
            ack = await self.on_message(block, peer)
            writer.writeblock(ack)
            await writer.drain()
            self.metrics.ack_seconds.observe(time.perf_counter() - started)

    async def on_message(self, raw: bytes, peer: str) -> bytes:
        """Map, produce, wait for Kafka, and return the ACK to send."""
        now_ms = int(self.clock() * 1000)
        reading = read_message(raw, self.cfg.settings)
        outgoing: list[tuple[str, bytes | None, bytes, int]] = [
            (getattr(self.cfg.names, r.role), r.patient_id.encode(), codec.encode(r.doc),
             self._stamp(r.patient_id, r.role, now_ms)) for r in reading.records]
        reason = reading.dead_letter_reason
        if reason is not None:
            outgoing.append((self.cfg.names.dead_letters, None,
                             _dead_letter(reading, raw, peer, self.cfg.port), now_ms))
        code, errs = reading.ack, reading.errs
        try:
            await self.sink.send_all(outgoing, self.cfg.produce_timeout_s)
        except Exception as exc:  # noqa: BLE001 - KafkaError, TimeoutError...: nothing acked
            log.error("%s: Kafka did not acknowledge message %s: %r", peer, reading.control_id,
                      exc)
            code, errs = "AR", [Err("MSH", 1, 10, None, "207", "the records were not "
                                    "acknowledged by Kafka; send the message again",
                                    reason="kafka_unavailable")]
        else:
            for r in reading.records:
                self.metrics.records.labels(r.role).inc()
            self.metrics.skipped.inc(reading.skipped)
            if reason is not None:
                self.metrics.dead_letters.labels(reason).inc()
        kind = reading.message_type if reading.message_type in _KNOWN_TYPES else "other"
        self.metrics.messages.labels(kind, code).inc()
        return build_ack(reading, now_ms, code, errs)

    def _stamp(self, patient_id: str, topic: str, now_ms: int) -> int:
        """Wall clock, in send order (``streams.kafka.stamps.SendOrderStamps``)."""
        ts = self._stamps.next(patient_id, topic, now_ms)
        if len(self._stamps) > 50_000:  # forget patients quiet for a minute
            self._stamps.forget_before(now_ms - 60_000)
        return ts


def _peer(writer: Any) -> str:
    address = writer.get_extra_info("peername") or ("?", "?")
    return f"{address[0]}:{address[1]}"


def _dead_letter(reading: Reading, raw: bytes, peer: str, port: int) -> bytes:
    detail = "; ".join(f"{e.location()}: {e.text}" for e in reading.errs)
    return codec.dead_letter(
        key=None, value=raw, topic=f"hl7-mllp:{port}", partition=-1, offset=-1,
        reason=reading.dead_letter_reason or "unusable_message",
        detail=f"HL7 {reading.message_type or '?'} {reading.control_id or '?'} from {peer}, "
               f"ACK {reading.ack}: {detail}")


def tls_context(cfg: ListenerConfig) -> ssl.SSLContext | None:
    """Server TLS (1.2+) from a certificate and key; client certificates required when a CA
    is given (mutual TLS). None without a certificate."""
    if not cfg.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    if cfg.tls_client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cfg.tls_client_ca)
    return ctx


async def serve(cfg: ListenerConfig, sink: KafkaRecords, registry: CollectorRegistry,
                ready: threading.Event, stop: asyncio.Event | None = None,
                grace_s: float = 10.0) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``): start the producer, listen, and on the way out
    stop accepting, let connections finish the message in hand, stop the producer."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    await sink.start()
    listener = Listener(cfg, sink, ListenerMetrics(registry))
    try:
        server = await listener.start()
        ready.set()
        tls = " (TLS)" if cfg.tls_cert else ""
        print(f"clsmon hl7 listen: MLLP on {cfg.host}:{cfg.port}{tls}", flush=True)
        await stop.wait()
        server.close()
        await listener.drain(grace_s)
        await server.wait_closed()
    finally:
        ready.clear()
        await sink.stop()


def run(cfg: ListenerConfig, bootstrap: Connectable, *, partitions: int = 3,
        idempotence: bool = False, web_port: int = 6068, web_host: str = "0.0.0.0") -> int:  # noqa: S104
    """``clsmon hl7 listen``: create the topics if missing, serve until SIGTERM; exit code."""
    from streams.kafka.topics import ensure_topics
    from streams.ops.http import serve as serve_http

    ensure_topics(bootstrap, cfg.names, partitions)
    registry = CollectorRegistry()
    ready = threading.Event()
    http = serve_http(registry, ready, web_port, web_host) if web_port else None
    try:
        asyncio.run(serve(cfg, KafkaRecords(bootstrap, idempotence), registry, ready))
    finally:
        if http is not None:
            http.shutdown()
    return 0
