"""The board on Kafka: one process, one asyncio loop running uvicorn *and* an aiokafka consumer.

- The consumer has no group (manual assignment, nothing committed). It reads ``alerts``,
  ``alert-acks``, ``notifications`` and the compacted ``patient-phase`` from the beginning, and
  ``vitals`` and ``labs`` from ``keep_hours`` ago (``offsets_for_times``), at every start: a
  restarted board shows the same picture, with no store of its own.
- "Caught up" is 1 s without a record (end offsets are not trusted: the embedded Tansu broker
  reports wrong ones); until then ``/healthz`` answers 503 and the page says "reading history".
- Acknowledgements and escalation requests are produced (acks=all) to ``alert-acks`` and come
  back through the consumer, so every open board, this one included, sees them the same way.
- uvicorn's own signal capture is switched off (``BoardServer``); SIGTERM/SIGINT set ``closing``
  (which ends every live stream, so uvicorn can stop) and ``server.should_exit``; then the
  consumer and producer are stopped. Measured: exit 0 within about 1 s with streams open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from detectors.observation import Observation, normalise
from streams.board.app import create_app
from streams.board.metrics import BoardMetrics
from streams.board.state import BoardState
from streams.kafka import codec
from streams.kafka.connection import Connectable, connect
from streams.kafka.topics import TopicNames
from streams.ops.http import serve

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BoardConfig:
    bootstrap: Connectable  # a KafkaConnection (TLS, SASL) or a plaintext host:port
    users_file: str
    secret: str
    port: int = 8080
    host: str = "127.0.0.1"
    topic_prefix: str = "clsmon."
    audit_path: str | None = None
    secure_cookies: bool = True
    display_tz: str = "UTC"
    keep_hours: float = 72.0
    silent_after_s: float = 900.0
    grace_s: int = 5
    metrics_port: int = 6068  # 0 = none
    metrics_host: str = "127.0.0.1"


def client_options(bootstrap: Connectable) -> dict[str, Any]:
    """aiokafka connection options: addresses, TLS and SASL from the one connection object
    (``streams.kafka.connection``)."""
    return {**connect(bootstrap).aiokafka_options(), "client_id": "clsmon-board"}


class KafkaPublisher:
    """Acknowledgements and escalation requests to ``alert-acks``, keyed by patient."""

    def __init__(self, producer: AIOKafkaProducer, names: TopicNames) -> None:
        self.producer, self.names = producer, names

    async def publish(self, patient_id: str, doc: dict[str, Any]) -> None:
        await self.producer.send_and_wait(self.names.alert_acks, codec.encode(doc),
                                          key=patient_id.encode())


def apply(state: BoardState, names: TopicNames, record: Any) -> None:
    """Fold one record of any topic the board reads into its state (bad input is skipped:
    the worker and the notifier dead-letter it)."""
    topic, key = record.topic, codec.key_text(record.key)
    if topic == names.patient_phase:
        if key is not None:
            doc = codec.decode_object(record.value) if record.value is not None else None
            state.apply_phase(key, doc if isinstance(doc, dict) else None)
        return
    doc = codec.decode_object(record.value)
    if not isinstance(doc, dict):
        return
    if topic == names.alerts:
        state.apply_alert(doc)
    elif topic == names.alert_acks:
        state.apply_ack(doc, key)
    elif topic == names.notifications:
        state.apply_outcome(doc)
    elif topic in (names.vitals, names.labs):
        obs = normalise(doc)
        if isinstance(obs, Observation) and obs.patient_id == key:
            state.apply_observation(key, obs.kind, obs.observed_at_ms, obs.value,
                                    (record.timestamp or time.time() * 1000) / 1000)


async def _seek(consumer: AIOKafkaConsumer, names: TopicNames, keep_hours: float) -> None:
    topics = (names.alerts, names.alert_acks, names.notifications, names.patient_phase,
              names.vitals, names.labs)
    # the cluster's metadata, not the consumer's cache: that holds only the topics it already
    # tracks, so on Apache Kafka (which answers for the topics asked) a fresh reader found no
    # partitions and read nothing (on Tansu it happened to hold them all)
    cluster = await consumer._client.fetch_all_metadata()
    tps = [TopicPartition(t, p) for t in topics
           for p in sorted(cluster.partitions_for_topic(t) or ())]
    consumer.assign(tps)
    history = [tp for tp in tps if tp.topic not in (names.vitals, names.labs)]
    recent = [tp for tp in tps if tp.topic in (names.vitals, names.labs)]
    if history:
        await consumer.seek_to_beginning(*history)
    if recent:
        since_ms = int((time.time() - keep_hours * 3600) * 1000)
        try:
            found = await consumer.offsets_for_times(dict.fromkeys(recent, since_ms))
        except Exception:  # noqa: BLE001 - a broker without the API: read it all
            log.warning("offsets_for_times failed; reading vitals and labs from the start")
            found = {}
        for tp in recent:
            at = found.get(tp)
            if at is None and tp in found:
                await consumer.seek_to_end(tp)  # nothing that recent
            elif at is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, at.offset)


async def consume(state: BoardState, bootstrap: Connectable, names: TopicNames, keep_hours: float,
                  idle_s: float = 1.0, caught_up: Callable[[], None] = lambda: None) -> None:
    consumer = AIOKafkaConsumer(**client_options(bootstrap), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=100)
    await consumer.start()
    try:
        await _seek(consumer, names, keep_hours)
        last = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            for records in batches.values():
                for rec in records:
                    apply(state, names, rec)
            if batches:
                last = time.monotonic()
            elif not state.caught_up and time.monotonic() - last >= idle_s:
                state.caught_up = True
                caught_up()
                log.info("history read: %s", state.snapshot())
    finally:
        await consumer.stop()


class BoardServer(uvicorn.Server):
    """uvicorn without its own signal handling: run_board owns SIGTERM/SIGINT (uvicorn's
    capture_signals would re-raise the signal after serve() returns: exit -15, not 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def run_board(cfg: BoardConfig) -> int:
    """Serve the board until SIGTERM/SIGINT; 0 on a clean stop, 1 if the reader failed."""
    names = TopicNames(cfg.topic_prefix)
    state = BoardState(keep_hours=cfg.keep_hours)
    metrics = BoardMetrics()
    ready = threading.Event()
    http = serve(metrics.registry, ready, cfg.metrics_port, cfg.metrics_host) \
        if cfg.metrics_port else None

    def on_caught_up() -> None:
        ready.set()
        metrics.ready.set(1)

    closing = asyncio.Event()
    producer = AIOKafkaProducer(**client_options(cfg.bootstrap), acks="all")
    await producer.start()
    app = create_app(state, KafkaPublisher(producer, names), cfg.users_file, cfg.secret,
                     secure_cookies=cfg.secure_cookies, audit_path=cfg.audit_path,
                     closing=closing, display_tz=cfg.display_tz,
                     silent_after_s=cfg.silent_after_s, metrics=metrics)
    server = BoardServer(uvicorn.Config(app, host=cfg.host, port=cfg.port, lifespan="off",
                                        timeout_graceful_shutdown=int(cfg.grace_s),
                                        log_level="warning", proxy_headers=True))
    loop = asyncio.get_running_loop()
    failed = False

    def stop() -> None:
        closing.set()
        server.should_exit = True

    def consumer_done(task: asyncio.Task[None]) -> None:
        nonlocal failed
        if not task.cancelled() and task.exception() is not None:
            log.error("reading the topics failed: %r", task.exception())
            failed = True
            stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    consumer_task = asyncio.create_task(consume(state, cfg.bootstrap, names, cfg.keep_hours,
                                                caught_up=on_caught_up))
    consumer_task.add_done_callback(consumer_done)
    try:
        await server.serve()
    finally:
        closing.set()
        consumer_task.cancel()
        await asyncio.gather(consumer_task, return_exceptions=True)
        await producer.stop()
        app.state.close()
        if http is not None:
            http.shutdown()
    if not server.started and not failed:
        return 2  # the port could not be bound (uvicorn logged why)
    return 1 if failed else 0
