"""Which broker this machine runs for development, the demo and the tests: Apache Kafka
(``streams.kafka.apache``) where Java 17+ is, else the embedded Tansu broker
(``streams.kafka.tansu``).

``clsmon broker --engine`` and ``clsmon demo --engine`` take ``auto`` (the default), ``kafka``
or ``tansu``; ``CLSMON_BROKER_ENGINE`` sets the default.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from streams.kafka.admin import BrokerError
from streams.kafka.local import LocalBroker

ENGINES = ("auto", "kafka", "tansu")
ENV_VAR = "CLSMON_BROKER_ENGINE"


def default_engine() -> str:
    return os.environ.get(ENV_VAR, "auto")


def resolve_engine(engine: str, out: TextIO | None = sys.stderr) -> str:
    """``kafka`` or ``tansu`` for ``engine``; ``auto`` picks Apache Kafka where it can run and
    says why when it cannot."""
    if engine not in ENGINES:
        raise BrokerError(f"unknown broker engine {engine!r}: expected one of {ENGINES}")
    if engine != "auto":
        return engine
    from streams.kafka.jars import kafka_runnable

    reason = kafka_runnable()
    if reason is None:
        return "kafka"
    if out is not None:
        print(f"clsmon: the embedded Tansu broker, not Apache Kafka: {reason}", file=out,
              flush=True)
    return "tansu"


def local_broker(engine: str, port: int = 0, log_path: str | None = None) -> LocalBroker:
    """An unstarted single-node broker of ``engine`` (``kafka`` or ``tansu``) on ``port``
    (0: a free one). Both have ``bootstrap`` and ``url``."""
    if engine == "kafka":
        from streams.kafka.apache import FAST_START_JVM, KafkaCluster, env_heap

        return KafkaCluster(nodes=1, ports=(port,) if port else None, heap=env_heap(),
                            jvm_opts=FAST_START_JVM)
    from streams.kafka.tansu import EmbeddedBroker

    return EmbeddedBroker(port or None, log_path=log_path)


def run_broker(engine: str, port: int, nodes: int) -> int:
    """``clsmon broker``: the chosen engine in the foreground."""
    engine = resolve_engine(engine)
    if engine == "kafka":
        from streams.kafka.apache import run_kafka_forever

        return run_kafka_forever(port, nodes)
    if nodes != 1:
        raise BrokerError("--nodes 3 needs --engine kafka (the embedded broker is one node)")
    from streams.kafka.tansu import run_broker_forever

    return run_broker_forever(port)
