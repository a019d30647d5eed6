"""Cluster administration the project needs: is a broker answering, create the topics.

Uses kafka-python's ``KafkaAdminClient`` (synchronous), so callers need no event loop, made from
the one ``KafkaConnection`` (``streams.kafka.connection``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from streams.kafka.connection import BrokerError, Connectable, connect

__all__ = ["BrokerError", "create_topics", "metadata_error"]

# Kafka error codes create_topics treats as success.
_NO_ERROR = 0
_TOPIC_ALREADY_EXISTS = 36


def metadata_error(bootstrap: str, timeout_s: float) -> str | None:
    """None when the broker answers a real Kafka metadata request, else what went wrong."""
    from kafka.errors import KafkaError

    try:
        probe = dataclasses.replace(connect(bootstrap), connect_timeout_s=timeout_s)
        admin = probe.admin(client_id="clsmon-broker-probe",
                                         request_timeout_ms=max(int(timeout_s * 1000), 500))
    except (BrokerError, KafkaError, OSError) as exc:
        return repr(exc)
    try:
        cluster = admin.describe_cluster()
    except (KafkaError, OSError) as exc:
        return repr(exc)
    finally:
        admin.close()
    return None if cluster.get("brokers") else f"no brokers in metadata: {cluster!r}"


def create_topics(
    target: Connectable,
    names: Iterable[str],
    partitions: int = 1,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
    configs: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Create topics that do not exist yet; existing ones are left as they are.

    Args:
        target: a ``KafkaConnection``, or ``host:port`` of any broker (plaintext).
        names: topic names.
        partitions: partitions of each new topic.
        replication_factor: replicas of each new topic (1 on a single broker).
        timeout_s: request timeout.
        configs: topic configs by name (e.g. ``{"cleanup.policy": "compact"}``) for new topics.

    Returns:
        The names that were created by this call.

    Raises:
        BrokerUnreachable: no broker answered, or the login failed.
        BrokerError: the broker refused to create a topic for another reason (e.g. the user
            may not: ``TopicAuthorizationFailed``).
    """
    from kafka.errors import KafkaError

    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    ms = int(timeout_s * 1000)
    connection = connect(target)
    admin = connection.admin(request_timeout_ms=ms)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        spec = {
            name: {"num_partitions": partitions, "replication_factor": replication_factor,
                   "configs": (configs or {}).get(name, {})}
            for name in missing
        }
        response = admin.create_topics(spec, timeout_ms=ms, raise_errors=False)
    except KafkaError as exc:
        raise BrokerError(f"cannot create topics on {connection.describe()}: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        admin.close()
    created: list[str] = []
    failures: list[str] = []
    for result in response.get("topics", []):
        code = result.get("error_code", _NO_ERROR)
        if code == _NO_ERROR:
            created.append(result["name"])
        elif code != _TOPIC_ALREADY_EXISTS:
            failures.append(f"{result['name']}: error {code} {result.get('error_message') or ''}")
    if failures:
        raise BrokerError("cannot create topics: " + "; ".join(failures))
    return created


def partition_counts(target: Connectable, names: Iterable[str],
                     timeout_s: float = 10.0) -> dict[str, int]:
    """How many partitions each existing topic among ``names`` has (missing ones left out).

    ``target``: a ``KafkaConnection``, or ``host:port`` of any broker (plaintext)."""
    admin = connect(target).admin(request_timeout_ms=int(timeout_s * 1000))
    try:
        described = admin.describe_topics(list(names))
    finally:
        admin.close()
    return {t["name"]: len(t["partitions"]) for t in described
            if t.get("error_code", _NO_ERROR) == _NO_ERROR and t.get("partitions")}
