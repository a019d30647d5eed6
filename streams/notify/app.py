"""The notifier as a Faust app: its own consumer group (``<prefix>-notifier``), one agent
reading ``alerts`` and ``alert-acks`` (both keyed by patient_id, so co-partitioned), the
``notified`` table (``streams.notify.ledger``), and a timer that starts due deliveries and
escalations (``Notifier.dispatch``). Delivery outcomes go to ``notifications`` for the board.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import faust

from streams.kafka import codec, consumer, faust_app
from streams.kafka.connection import KafkaConnection, KafkaSecurity
from streams.kafka.topics import TopicNames, ensure_topics
from streams.notify.ledger import TableLedger
from streams.notify.notifier import Incoming, Notifier, NotifyMetrics
from streams.notify.routing import DEFAULT_ESCALATE_AFTER, Routing, load_routing

log = logging.getLogger(__name__)
TABLE_NAME = "notified"


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    broker: str = "kafka://127.0.0.1:9092"
    security: KafkaSecurity = KafkaSecurity()  # TLS and SASL (streams.kafka.connection)
    replication_factor: int = 1  # of the topics and the changelog it creates
    topic_prefix: str = "clsmon."
    partitions: int = 3
    config: str | None = None  # TOML routing; None: console only
    #: critical alerts' escalation delay; None: from the config file, else 600 s
    escalate_after_s: float | None = None
    #: high alerts' escalation delay; None: from the config file, else none
    escalate_high_after_s: float | None = None
    escalation_check_s: float = 0.5
    web_port: int = 6067  # 0 = no HTTP server
    web_host: str = "127.0.0.1"
    data_dir: str | None = None  # None: a temporary directory, removed at exit
    store: str = "memory://"
    fetch_wait_ms: int = 100
    #: re-read a partition whose fetched messages have not reached the agent for this long
    stall_after_s: float = 5.0
    session_timeout_s: float = 6.0
    #: after SIGTERM/SIGINT, exit anyway once the stop has taken this long
    stop_timeout_s: float = 20.0
    producer_max_batch_size: int = 0  # the embedded Tansu needs 1 for exact recovery
    commit_interval_s: float = 0.5
    loglevel: str = "WARNING"

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    @property
    def app_id(self) -> str:
        return (self.topic_prefix.rstrip(".-_") or "clsmon") + "-notifier"

    @property
    def connection(self) -> KafkaConnection:
        """The cluster: ``broker`` with ``security``."""
        return KafkaConnection.of(self.broker, self.security)

    def faust_settings(self, data_dir: str) -> dict[str, Any]:
        """The shared tuned settings (``streams.kafka.faust_app``), with the notifier's commit
        interval."""
        return faust_app.faust_settings(
            partitions=self.partitions, store=self.store, data_dir=data_dir,
            session_timeout_s=self.session_timeout_s,
            producer_max_batch_size=self.producer_max_batch_size,
            replication_factor=self.replication_factor,
            extra={"broker_commit_interval": self.commit_interval_s})

    def escalate_after(self, routing: Routing) -> dict[str, float]:
        """Severity -> seconds: the flags over the config file over the default."""
        after = dict(routing.escalate_after_s or DEFAULT_ESCALATE_AFTER)
        if self.escalate_after_s:
            after["critical"] = self.escalate_after_s
        if self.escalate_high_after_s:
            after["high"] = self.escalate_high_after_s
        return after


@dataclass
class NotifierApp:
    app: faust.App
    notifier: Notifier
    metrics: NotifyMetrics
    ready: threading.Event
    temporary_dir: str | None = None


def build(cfg: NotifyConfig, routing: Routing | None = None,
          metrics: NotifyMetrics | None = None) -> NotifierApp:
    routing = routing or load_routing(cfg.config)
    metrics = metrics or NotifyMetrics()
    temporary = None if cfg.data_dir else tempfile.mkdtemp(prefix="clsmon-notify-")
    data_dir = cfg.data_dir or temporary or ""
    app = faust_app.new_app(cfg.app_id, cfg.connection, cfg.faust_settings(data_dir),
                            cfg.fetch_wait_ms)
    names = cfg.names
    inputs = app.topic(names.alerts, names.alert_acks, **faust_app.RAW)
    dead_topic = app.topic(names.dead_letters, **faust_app.RAW)
    outcomes = app.topic(names.notifications, **faust_app.RAW)
    table = faust_app.raw_table(app, TABLE_NAME, cfg.partitions)

    def dead_letter(key: bytes | None, value: bytes | None, topic: str, partition: int,
                    offset: int, reason: str, detail: str) -> None:
        dead_topic.send_soon(key=key, value=codec.dead_letter(
            key=key, value=value, topic=topic, partition=partition, offset=offset,
            reason=reason, detail=detail))

    notifier = Notifier(routing, names, TableLedger(table), metrics, dead_letter,
                        escalate_after=cfg.escalate_after(routing),
                        supersede_window_s=routing.supersede_window_s,
                        publish=lambda key, value: outcomes.send_soon(key=key, value=value),
                        undecodable=consumer.undecodable_probe(app))
    ready = threading.Event()

    guard = consumer.watch(app, {names.alerts, names.alert_acks}, "notify", cfg.stall_after_s,
                           metrics.rereads)

    @app.agent(inputs, name="notify")
    async def notify(stream: Any) -> None:
        async for event in stream.noack().events():
            m = event.message
            guard.seen(m.tp, m.offset)
            await notifier.on_message(Incoming(m.topic, m.partition, m.offset, event.key,
                                               event.value, event.ack))

    def owns(partition: int) -> bool:
        from faust.types import TP

        return TP(names.alerts, partition) in app.consumer.assignment()

    @app.timer(cfg.escalation_check_s)
    async def dispatch() -> None:
        if app.rebalancing or getattr(app, "in_recovery", False):
            return  # the table may be half recovered: an ack may not be in it yet
        try:
            await notifier.dispatch(owns)
        except Exception:  # noqa: BLE001 - retried at the next check
            log.exception("dispatch failed")

    @app.task
    async def started() -> None:
        ready.set()
        metrics.ready.set(1)

    return NotifierApp(app, notifier, metrics, ready, temporary)


def run(cfg: NotifyConfig) -> int:
    """Create the topics, start /metrics and run the notifier until SIGTERM/SIGINT."""
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # thread stacks on demand, for a stuck notifier
    ensure_topics(cfg.connection, cfg.names, cfg.partitions, cfg.replication_factor)
    built = build(cfg)
    after = ", ".join(f"{s} {v:g} s" for s, v in sorted(built.notifier.escalate_after.items()))
    banner = (f"clsmon notify: broker {cfg.connection.describe()}, "
              f"topics {cfg.topic_prefix}alerts/alert-acks, escalation after {after}")
    try:
        return faust_app.serve_and_run(built.app, built.metrics, built.ready, banner,
                                       cfg.web_port, cfg.web_host, cfg.loglevel,
                                       cfg.stop_timeout_s, built.temporary_dir)
    finally:
        built.notifier.deliverer.close()
