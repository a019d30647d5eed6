"""A real broker for the integration tests, behind one interface: Apache Kafka by default.

``CLSMON_TEST_BROKER`` chooses (``make test`` and CI set ``kafka``):

- ``kafka``: Apache Kafka 4 (KRaft, one node) run from Maven Central jars by
  ``streams.kafka.apache.KafkaCluster``; the first session fetches the jars with Maven
  (``~/.cache/clsmon``). Needs Java 17+. Besides its PLAINTEXT listener (every test but the
  security ones) it has SASL_SSL (SCRAM and PLAIN users, one per role of
  ``streams.kafka.acls``) and SSL (mutual TLS) listeners, a CA made by the session
  (``pki.py``) and Kafka's authorizer: PLAINTEXT clients are super users, SASL users may do
  only what an ACL allows (``SecureAccess``).
- ``embedded``: the embedded Tansu broker (``streams.kafka.tansu``), for machines without Java.
  The session then sets ``CLSMON_PRODUCER_MAX_BATCH_SIZE=1`` for every worker and notifier the
  tests start: Tansu reports wrong end offsets after batched sends (README, "Embedded broker").
- ``docker``: testcontainers' Kafka, where a Docker engine runs.
- ``auto`` (the default when unset): ``kafka`` where Java 17+ is, else ``embedded``.
- ``HOST:PORT``: a broker that is already running (left running afterwards).

One broker per test session (``kafka_bootstrap`` in ``conftest.py``); the broker-failure test
starts its own 3-node cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pki import Pki, make_pki

log = logging.getLogger(__name__)

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
ENV_VAR = "CLSMON_TEST_BROKER"
CHOICES = ("auto", "kafka", "embedded", "docker")


@dataclass(frozen=True, slots=True)
class SecureAccess:
    """The session broker's TLS and SASL listeners, its CA and client certificate, and its
    users (password per name; ``admin`` is a super user, the others have no ACL yet)."""

    sasl_ssl: str
    ssl: str
    plaintext: str
    pki: Pki
    users: dict[str, str]


@dataclass(frozen=True, slots=True)
class KafkaEndpoint:
    """Where the test broker listens and what it is (``kafka``, ``embedded``, ``docker`` or
    ``external``); ``secure`` on Apache Kafka only."""

    bootstrap: str
    kind: str
    secure: SecureAccess | None = None

    @property
    def url(self) -> str:
        """``kafka://host:port`` for Faust."""
        return f"kafka://{self.bootstrap}"


def docker_available(timeout_s: float = 3.0) -> bool:
    """True when a Docker engine answers a ping."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=int(max(timeout_s, 1)))
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False
    finally:
        with contextlib.suppress(Exception):
            client.close()


@contextlib.contextmanager
def own_kafka(nodes: int = 1, **config: str) -> Iterator[Any]:
    """An Apache Kafka cluster of the test's own (``KafkaCluster``, plaintext, small heap), for
    what the session's broker must not go through (a broker stopped or killed, a coordinator
    elected, a broken offsets topic); the test is skipped where Apache Kafka cannot run."""
    from streams.kafka.apache import FAST_START_JVM, KafkaCluster
    from streams.kafka.jars import kafka_runnable

    reason = kafka_runnable()
    if reason is not None:
        pytest.skip(f"a Kafka cluster of the test's own is Apache Kafka: {reason}")
    with KafkaCluster(nodes=nodes, heap="384m", jvm_opts=FAST_START_JVM,
                      config=config) as cluster:
        yield cluster


@contextlib.contextmanager
def _apache_kafka() -> Iterator[KafkaEndpoint]:
    from streams.kafka.acls import ROLES
    from streams.kafka.apache import FAST_START_JVM, BrokerTls, KafkaCluster, env_heap
    from streams.kafka.jars import ensure_kafka_jars

    ensure_kafka_jars(out=sys.stderr)  # a first session says what it fetches
    with tempfile.TemporaryDirectory(prefix="clsmon-test-pki-") as tmp:
        pki = make_pki(Path(tmp))
        users = {name: secrets.token_urlsafe(12) for name in ("admin", *ROLES)}
        cluster = KafkaCluster(nodes=1, listeners=("PLAINTEXT", "SASL_SSL", "SSL"),
                               tls=BrokerTls(pki.server_keystore, pki.ca_cert), users=users,
                               acls=True, superusers=("User:admin",), heap=env_heap(),
                               jvm_opts=FAST_START_JVM)
        with cluster:
            log.info("Apache Kafka ready in %s", cluster.timings)
            secure = SecureAccess(cluster.addresses("SASL_SSL"), cluster.addresses("SSL"),
                                  cluster.bootstrap, pki, users)
            yield KafkaEndpoint(cluster.bootstrap, "kafka", secure)


@contextlib.contextmanager
def _embedded_kafka() -> Iterator[KafkaEndpoint]:
    from streams.kafka.tansu import EmbeddedBroker

    previous = os.environ.get("CLSMON_PRODUCER_MAX_BATCH_SIZE")
    os.environ["CLSMON_PRODUCER_MAX_BATCH_SIZE"] = "1"
    try:
        with EmbeddedBroker() as broker:
            yield KafkaEndpoint(broker.bootstrap, "embedded")
    finally:
        if previous is None:
            os.environ.pop("CLSMON_PRODUCER_MAX_BATCH_SIZE", None)
        else:
            os.environ["CLSMON_PRODUCER_MAX_BATCH_SIZE"] = previous


@contextlib.contextmanager
def _docker_kafka() -> Iterator[KafkaEndpoint]:
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
        yield KafkaEndpoint(container.get_bootstrap_server(), "docker")


def resolve(choice: str | None = None) -> str:
    """The broker kind ``choice`` (default ``$CLSMON_TEST_BROKER``) stands for."""
    choice = (choice or os.environ.get(ENV_VAR) or "auto").strip()
    if choice == "auto":
        from streams.kafka.jars import kafka_runnable

        reason = kafka_runnable()
        if reason is None:
            return "kafka"
        print(f"{ENV_VAR}=auto: the embedded broker ({reason})", file=sys.stderr)
        return "embedded"
    if choice in CHOICES or ":" in choice:
        return choice
    raise ValueError(f"{ENV_VAR}={choice!r}: expected one of {', '.join(CHOICES)} or host:port")


@contextlib.contextmanager
def kafka_endpoint(choice: str | None = None) -> Iterator[KafkaEndpoint]:
    """Start the session's broker and stop it afterwards (see the module docstring)."""
    kind = resolve(choice)
    if ":" in kind:
        yield KafkaEndpoint(kind, "external")
        return
    factory = {"kafka": _apache_kafka, "embedded": _embedded_kafka, "docker": _docker_kafka}[kind]
    with factory() as endpoint:
        log.info("test broker: %s at %s", endpoint.kind, endpoint.bootstrap)
        yield endpoint
