"""Every knob of a detection worker in one frozen object; the CLI fills it from flags and
``CLSMON_*`` environment variables (README, "Streaming")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.kafka.connection import KafkaConnection, KafkaSecurity
from streams.kafka.topics import TopicNames

TABLE_NAME = "patient-state"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Every knob of a worker; the CLI fills it from flags and ``CLSMON_*`` variables."""

    broker: str = "kafka://127.0.0.1:9092"
    #: TLS and SASL (``streams.kafka.connection``)
    security: KafkaSecurity = KafkaSecurity()
    #: replicas of the topics and changelogs this worker creates (3 on a production cluster)
    replication_factor: int = 1
    topic_prefix: str = "clsmon."
    partitions: int = 3
    web_port: int = 6066  # 0 = no HTTP server
    web_host: str = "0.0.0.0"  # noqa: S104
    data_dir: str | None = None  # None: a fresh temporary directory
    thresholds: str | None = None
    store: str = "memory://"
    #: Faust hard-codes a 1.5 s fetch wait, which sets end-to-end latency
    fetch_wait_ms: int = 100
    #: how much later than its timestamp a record may reach the log (streams.worker.ordering)
    grace_ms: int = 300
    tick_s: float = 0.25  # every tick is a broker record: see tick() in streams.worker.app
    lag_interval_s: float = 5.0
    #: re-read a partition whose fetched messages have not reached the agent for this long
    stall_after_s: float = 5.0
    #: after SIGTERM/SIGINT, exit anyway once the stop has taken this long
    #: (``streams.kafka.faust_app.serve_and_run``)
    stop_timeout_s: float = 20.0
    #: state is written (and its messages acknowledged) every tick or every this many messages
    write_batch: int = 500
    flush_idle_s: float = 3.0
    #: seconds; Tansu completes a group join after about half of it (60 s default -> 30 s start)
    session_timeout_s: float = 6.0
    #: 0 = aiokafka's batching. 1 = one record per produce batch, which the embedded Tansu
    #: broker needs: it reports a wrong end offset after batched sends, and Faust's table
    #: recovery stops there, losing the last state updates (measured).
    producer_max_batch_size: int = 0
    loglevel: str = "WARNING"
    #: a bed without data for this long counts as silent (clsmon_beds_silent{ward}) [D]: the
    #: ops rule's 15 minutes, three missed 5-minute vital sets
    silent_after_s: float = 900.0
    #: a bed silent this long is forgotten (a patient nobody discharged) [D]: one day
    silent_expire_s: float = 86_400.0
    #: a discharged patient's record (``streams.worker.store``) is dropped once the input
    #: offsets past it are committed, at the latest after this long [D]: 7 days, Kafka's default
    #: ``offsets.retention.minutes``: a group stopped for longer loses its commits and reads
    #: again from ``auto.offset.reset``, which no record of positions can tell from new data
    discharged_keep_s: float = 7 * 86_400.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    @property
    def connection(self) -> KafkaConnection:
        """The cluster: ``broker`` with ``security``."""
        return KafkaConnection.of(self.broker, self.security)

    @property
    def app_id(self) -> str:
        """Consumer group and changelog prefix: one per topic prefix."""
        return (self.topic_prefix.rstrip(".-_") or "clsmon") + "-worker"


def faust_settings(cfg: WorkerConfig, data_dir: str) -> dict[str, Any]:
    """The worker's Faust settings (``streams.kafka.faust_app.faust_settings`` from ``cfg``).

    Faust is imported here, not at the top: ``clsmon worker`` reads its configuration and checks
    the broker before Faust's ~0.7 s import (seconds on a loaded machine), so an unreachable
    broker is reported within its 10 s."""
    from streams.kafka import faust_app

    return faust_app.faust_settings(
        partitions=cfg.partitions, store=cfg.store, data_dir=data_dir,
        session_timeout_s=cfg.session_timeout_s,
        producer_max_batch_size=cfg.producer_max_batch_size,
        replication_factor=cfg.replication_factor, extra=cfg.extra)
