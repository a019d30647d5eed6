"""A real Kafka-protocol broker for the integration tests, behind one interface.

With a reachable Docker engine: testcontainers' ``KafkaContainer`` in KRaft mode. Without one:
the embedded Tansu broker (``streams.kafka.tansu.EmbeddedBroker``). Either way the caller gets a
``KafkaEndpoint`` and the broker is stopped when the context exits. Used by the session fixture
``kafka_bootstrap`` in ``conftest.py``.

``CLSMON_TEST_BROKER`` overrides the choice: ``auto`` (default), ``docker``, ``embedded``, or a
``host:port`` of a broker that is already running (left running afterwards).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from streams.kafka.tansu import EmbeddedBroker

log = logging.getLogger(__name__)

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
ENV_VAR = "CLSMON_TEST_BROKER"


@dataclass(frozen=True, slots=True)
class KafkaEndpoint:
    """Where the test broker listens and what it is (``docker``, ``embedded`` or ``external``)."""

    bootstrap: str
    kind: str

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
def _docker_kafka() -> Iterator[KafkaEndpoint]:
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
        yield KafkaEndpoint(container.get_bootstrap_server(), "docker")


@contextlib.contextmanager
def _embedded_kafka() -> Iterator[KafkaEndpoint]:
    with EmbeddedBroker() as broker:
        yield KafkaEndpoint(broker.bootstrap, "embedded")


@contextlib.contextmanager
def kafka_endpoint(choice: str | None = None) -> Iterator[KafkaEndpoint]:
    """Start a broker for the test session and stop it afterwards.

    Args:
        choice: ``auto``, ``docker``, ``embedded`` or ``host:port``; default from
            ``$CLSMON_TEST_BROKER``, else ``auto`` (Docker if reachable, else embedded).
    """
    choice = (choice or os.environ.get(ENV_VAR) or "auto").strip()
    if choice == "auto":
        choice = "docker" if docker_available() else "embedded"
    if choice == "docker":
        factory = _docker_kafka
    elif choice == "embedded":
        factory = _embedded_kafka
    elif ":" in choice:
        yield KafkaEndpoint(choice, "external")
        return
    else:
        raise ValueError(f"{ENV_VAR}={choice!r}: expected auto, docker, embedded or host:port")
    with factory() as endpoint:
        log.info("test broker: %s at %s", endpoint.kind, endpoint.bootstrap)
        yield endpoint
