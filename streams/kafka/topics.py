"""Topic names and their creation: one place for the event contract's topic list.

Every topic is keyed by ``patient_id`` and has the same number of partitions, so partition ``p``
of ``vitals``, ``labs``, ``patients`` and ``interventions`` holds the same patients
(co-partitioning): the worker that owns partition ``p`` sees all of one patient's inputs and
can put them back in arrival order (``streams.worker.ordering``).
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.kafka.admin import create_topics, partition_counts
from streams.kafka.connection import Connectable, parse_servers

DEFAULT_PREFIX = "clsmon."
#: kinds published to the ``labs`` topic; every other kind is a bedside reading (``vitals``)
LAB_KINDS = frozenset({"hematocrit", "albumin", "leukocytes", "hemoglobin", "lactate"})


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The contract's topics under one prefix (``clsmon.`` by default)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def vitals(self) -> str:
        return self.prefix + "vitals"

    @property
    def labs(self) -> str:
        return self.prefix + "labs"

    @property
    def patients(self) -> str:
        return self.prefix + "patients"

    @property
    def interventions(self) -> str:
        """Blood products, albumin, fluids, pressors, diuretics (``detectors.interventions``)."""
        return self.prefix + "interventions"

    @property
    def alerts(self) -> str:
        return self.prefix + "alerts"

    @property
    def alert_acks(self) -> str:
        return self.prefix + "alert-acks"

    @property
    def patient_phase(self) -> str:
        """Compacted: each patient's current phase (the worker's), a tombstone at discharge."""
        return self.prefix + "patient-phase"

    @property
    def notifications(self) -> str:
        """Delivery outcomes of the notifier (delivered, failed, superseded, escalations)."""
        return self.prefix + "notifications"

    @property
    def dead_letters(self) -> str:
        return self.prefix + "dead-letters"

    @property
    def ticks(self) -> str:
        """Internal: the worker's clock, one message per partition and interval (see worker)."""
        return self.prefix + "ticks"

    @property
    def inputs(self) -> tuple[str, str, str, str]:
        """Topics the detection agent reads, in tie-break rank order (context first, then
        interventions, as in the replay: both apply before an observation of the same time)."""
        return (self.patients, self.interventions, self.vitals, self.labs)

    def all(self) -> tuple[str, ...]:
        return (self.vitals, self.labs, self.patients, self.interventions, self.alerts,
                self.alert_acks, self.notifications, self.patient_phase, self.dead_letters,
                self.ticks)

    def configs(self) -> dict[str, dict[str, str]]:
        """Topic configs that differ from the broker's defaults. ``patient-phase`` keeps the
        last record per patient (compaction) and drops a discharged patient's tombstone after a
        day (``delete.retention.ms``), so a reader starting from the beginning gets the ward's
        current picture, not its history."""
        return {self.patient_phase: {"cleanup.policy": "compact",
                                     "delete.retention.ms": str(24 * 3600 * 1000)}}

    def for_kind(self, kind: object) -> str:
        """The topic an observation of ``kind`` is published to (unknown kinds: vitals)."""
        return self.labs if isinstance(kind, str) and kind.strip().lower() in LAB_KINDS \
            else self.vitals


def ensure_topics(target: Connectable, names: TopicNames, partitions: int,
                  replication_factor: int = 1) -> list[str]:
    """Create the contract's topics if missing (idempotent); returns those created now.

    ``target``: a ``KafkaConnection`` or a plaintext ``host:port``."""
    return create_topics(target, names.all(), partitions=partitions,
                         replication_factor=replication_factor, configs=names.configs())


class HomePartitions:
    """The partition Kafka's default partitioner gives a key: ``murmur2(key) % partitions``, as
    the Java client and kafka-python compute it (librdkafka's default, ``consistent_random``,
    is CRC32-based and gives others). Memoised per key (a ward has few patients; the memo is
    dropped when it grows past ``max_keys``)."""

    def __init__(self, partitions: int, max_keys: int = 100_000) -> None:
        from kafka.partitioner.default import murmur2

        self._murmur2 = murmur2
        self.partitions = partitions
        self._max_keys = max_keys
        self._memo: dict[bytes, int] = {}

    def of(self, key: bytes) -> int:
        home = self._memo.get(key)
        if home is None:
            if len(self._memo) >= self._max_keys:
                self._memo.clear()
            home = self._memo[key] = (self._murmur2(key) & 0x7FFFFFFF) % self.partitions
        return home


class TopicLayoutError(ValueError):
    """The topics on the broker are not laid out as the contract says (a user's fix)."""


def check_co_partitioned(target: Connectable, names: TopicNames, partitions: int) -> None:
    """Refuse input topics with different partition counts, or a count that is not
    ``partitions`` (the worker's tables and ticks use it).

    Raises:
        TopicLayoutError: one line naming the topics and their counts.
    """
    counts = partition_counts(target, names.inputs)
    if set(counts.values()) <= {partitions}:
        return
    listed = ", ".join(f"{topic} {n}" for topic, n in sorted(counts.items()))
    if len(set(counts.values())) > 1:
        raise TopicLayoutError(
            f"input topics are not co-partitioned ({listed} partitions): one patient's "
            "inputs would reach different workers; give them all the same count")
    raise TopicLayoutError(f"input topics have {next(iter(counts.values()))} partitions "
                           f"({listed}) but --partitions is {partitions}; set it to match")


def bootstrap_of(broker_url: str) -> str:
    """``kafka://h:p[;kafka://h2:p2]`` (Faust's form) -> ``h:p[,h2:p2]`` (Kafka clients').

    Raises:
        KafkaConfigError: an unknown scheme or no address (``connection.parse_servers``).
    """
    return ",".join(parse_servers(broker_url))


def broker_url_of(address: str) -> str:
    """Accept ``host:port`` or ``kafka://host:port``; return Faust's ``kafka://`` form."""
    return ";".join(f"kafka://{h}" for h in parse_servers(address))
