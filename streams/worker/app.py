"""The stream worker as a Faust app: one detection agent, a state table with a changelog, and
the timers that keep it moving.

One agent reads ``patients``, ``vitals``, ``labs`` (co-partitioned by patient_id) and the
worker's own ``ticks`` topic, and hands every message to ``streams.worker.detector.Detector``:
a fetched batch at a time, through an in-memory channel (``streams.kafka.consumer``, 11.).
The agent reads with acknowledgements off: the detector acknowledges a message only after its
effects were handed to the producer, and Faust flushes the producer before it commits offsets.

``ticks``: Faust only lets an agent act when a message arrives, and a table may only be written
from the stream. The worker therefore sends itself a tick every ``tick_s`` for each partition it
holds that has work waiting (``Detector.has_work``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import faust

from detectors.config import load_thresholds
from streams.kafka import consumer, faust_app
from streams.kafka.topics import check_co_partitioned, ensure_topics
from streams.ops.engine import label as engine_label
from streams.worker.config import TABLE_NAME, WorkerConfig, faust_settings
from streams.worker.detector import Detector
from streams.worker.metrics import Metrics
from streams.worker.outputs import Outputs
from streams.worker.store import StateStore

log = logging.getLogger(__name__)

#: batches waiting for the agent (each up to ~100 messages: one fetch, or the part of it read
#: between two yields of the delivery loop); a full buffer makes the delivery loop wait
BATCHES_BUFFERED = 16


@dataclass
class Worker:
    app: faust.App
    detector: Detector
    metrics: Metrics
    ready: threading.Event
    data_dir: str
    temporary_dir: str | None = None  # data_dir when it was made here: removed at exit


def build(cfg: WorkerConfig, metrics: Metrics | None = None) -> Worker:
    """The Faust app with its topics, table, agent and timers (not started)."""
    th = load_thresholds(cfg.thresholds)
    metrics = metrics or Metrics()
    temporary = None if cfg.data_dir else tempfile.mkdtemp(prefix="clsmon-worker-")
    data_dir = cfg.data_dir or temporary or ""
    os.makedirs(data_dir, exist_ok=True)
    app = faust_app.new_app(cfg.app_id, cfg.connection, faust_settings(cfg, data_dir),
                            cfg.fetch_wait_ms)
    names = cfg.names
    raw = faust_app.RAW
    inputs = app.topic(*names.inputs, names.ticks, **raw)
    app.topics.add(inputs)  # subscribed, though no stream reads it: see the agent below
    ticks_topic = app.topic(names.ticks, **raw)
    table = faust_app.raw_table(app, TABLE_NAME, cfg.partitions)
    outputs = Outputs(app.topic(names.alerts, **raw), app.topic(names.dead_letters, **raw),
                      metrics, app.topic(names.patient_phase, **raw),
                      {name: app.topic(name, **raw) for name in names.inputs})
    detector = Detector(cfg, th, metrics, StateStore(table, metrics.state_size.observe),
                        outputs)
    ready = threading.Event()

    guard = consumer.watch(app, {*names.inputs, names.ticks}, "detect", cfg.stall_after_s,
                           metrics.rereads, idle=lambda tp: not detector.has_work(tp.partition))
    detector.caught_up = consumer.caught_up_probe(app, guard)
    detector.undecodable = consumer.undecodable_probe(app)
    detector.held = consumer.held_probe(app, names.vitals)  # co-partitioned: one stands for all
    detector.commit_head = consumer.commit_head_probe(app)

    # the inputs reach the agent as batches (streams.kafka.consumer, 11.): Faust's path per
    # message (an event, a queue, the stream's bookkeeping) cost more than our detection
    batches = app.channel(maxsize=BATCHES_BUFFERED)
    consumer.deliver_in_batches(app, {*names.inputs, names.ticks}, batches)

    @app.agent(batches, name="detect")
    async def detect(stream: Any) -> None:
        async for batch in stream.noack():
            detector.on_batch(consumer.received(app, batch, guard))

    @app.timer(cfg.tick_s)
    async def tick() -> None:
        # only to the partitions this worker holds (another worker ticks its own), and only
        # when there is something to release, write or flush: every tick is a record on the
        # broker, and on the embedded Tansu broker a partition's fetch cost grows with its
        # record count (README, "Embedded broker limits")
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == names.vitals}
        for partition in sorted(owned):
            if detector.has_work(partition):
                await ticks_topic.send(value=b"", partition=partition)
        detector.refresh_gauges()  # e.g. patients by phase right after the table's recovery

    lag_topics = set(names.inputs)

    @app.timer(cfg.lag_interval_s)
    async def measure_lag() -> None:
        """Consumer lag per input partition; measuring must never disturb processing."""
        try:
            app_consumer = app.consumer
            for tp in app_consumer.assignment():
                if tp.topic not in lag_topics:
                    continue
                highwater = app_consumer.highwater(tp)
                position = await app_consumer.position(tp)
                if highwater is not None and highwater >= 0 and position is not None:
                    metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                        max(0, highwater - position))
        except Exception:  # noqa: BLE001 - a metric is not worth a stalled worker
            log.debug("consumer lag not measured", exc_info=True)

    @app.task
    async def started() -> None:  # runs after the table has been recovered
        ready.set()
        metrics.ready.set(1)

    async def revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        detector.on_revoked()

    consumer.on_revoked(app, revoked)

    return Worker(app, detector, metrics, ready, data_dir, temporary)


def run(cfg: WorkerConfig) -> int:
    """Create the topics, start the HTTP server and run the worker until SIGTERM/SIGINT.

    Must run in the main thread (Faust installs signal handlers).
    """
    ensure_topics(cfg.connection, cfg.names, cfg.partitions, cfg.replication_factor)
    check_co_partitioned(cfg.connection, cfg.names, cfg.partitions)  # TopicLayoutError: exit 2
    worker = build(cfg)
    banner = (f"clsmon worker: broker {cfg.connection.describe()}, topics {cfg.topic_prefix}*, "
              f"{cfg.partitions} partitions, engine: {engine_label()}")
    return faust_app.serve_and_run(worker.app, worker.metrics, worker.ready, banner,
                                   cfg.web_port, cfg.web_host, cfg.loglevel,
                                   cfg.stop_timeout_s, worker.temporary_dir)
