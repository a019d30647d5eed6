"""TLS and SASL against Apache Kafka with an authorizer: every command, as a user that may do
only what README's ACLs allow; a CA made by the session (``pki.py``, ``kafka_broker.py``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka_broker import KafkaEndpoint, SecureAccess
from notify_support import NotifierProcess, Receiver, run_cli
from pki import make_pki
from stream_support import WorkerProcess, fresh_prefix, replay_alert_ids

from streams.kafka.acls import Grant, required_acls
from streams.kafka.connection import KafkaConnection, KafkaSecurity
from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Publisher, cohort_messages
from streams.offline.simulator import cohort

pytestmark = pytest.mark.broker

COHORT = ("--patients", "4", "--seed", "11", "--hours", "72")


@pytest.fixture(scope="module")
def secure(kafka_broker: KafkaEndpoint) -> SecureAccess:
    if kafka_broker.secure is None:
        pytest.skip(f"TLS/SASL need the Apache Kafka test broker (CLSMON_TEST_BROKER=kafka); "
                    f"this session runs {kafka_broker.kind}")
    return kafka_broker.secure


def grant(secure: SecureAccess, principal: str, grants: list[Grant]) -> None:
    """Create the ACLs (as the PLAINTEXT listener's super user)."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    acls = [ACL(principal, "*", ACLOperation[op], ACLPermissionType.ALLOW,
                ResourcePattern(ResourceType[g.resource.upper()], g.name,
                                ACLResourcePatternType[g.pattern.upper()]))
            for g in grants for op in g.operations]
    admin = KafkaConnection.of(secure.plaintext).admin()
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    assert not result["failed"], result["failed"]


def sasl_env(secure: SecureAccess, user: str, mechanism: str) -> dict[str, str]:
    """The environment a clsmon command reads its SASL_SSL settings from."""
    return {"CLSMON_SECURITY_PROTOCOL": "SASL_SSL", "CLSMON_SASL_MECHANISM": mechanism,
            "CLSMON_SASL_USERNAME": user, "CLSMON_SASL_PASSWORD": secure.users[user],
            "CLSMON_SSL_CAFILE": str(secure.pki.ca_cert)}


def test_every_command_works_on_a_locked_down_cluster_over_sasl_ssl_and_mutual_tls(
        secure: SecureAccess, tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    ensure_topics(secure.plaintext, names, partitions=3)  # the administrator's job
    acls = required_acls(names.prefix)
    for role, grants in acls.items():
        grant(secure, f"User:{role}", grants)
    grant(secure, "User:CN=clsmon-client", acls["oncall"])  # the client certificate's name
    expected = replay_alert_ids(list(cohort_messages(cohort(4, seed=11, hours=72), names)),
                                names, tmp_path)
    assert len(expected) >= 2

    # a gateway publishes (SCRAM-SHA-256); the worker detects (SCRAM-SHA-512)
    done = run_cli("simulate", "--broker", secure.sasl_ssl, "--topic-prefix", names.prefix,
                   "--speed", "0", "--quiet", *COHORT,
                   env=sasl_env(secure, "gateway", "SCRAM-SHA-256"))
    assert done.returncode == 0, done.stderr
    worker = WorkerProcess(secure.sasl_ssl, names.prefix, tmp_path,
                           env=sasl_env(secure, "worker", "SCRAM-SHA-512"))
    # the notifier logs in with PLAIN, its password read from a file
    password_file = tmp_path / "notifier.password"
    password_file.write_text(secure.users["notifier"] + "\n")
    receiver = Receiver().start()
    config = tmp_path / "notify.toml"
    config.write_text(f'supersede_window_s = 0\n\n[sinks.pager]\ntype = "webhook"\n'
                      f'url = "{receiver.url("/hook")}"\n\n'
                      '[default]\nsinks = ["pager"]\n')
    env = sasl_env(secure, "notifier", "PLAIN")
    del env["CLSMON_SASL_PASSWORD"]
    notifier = NotifierProcess(secure.sasl_ssl, names.prefix, tmp_path, config,
                               "--sasl-password-file", str(password_file), env=env)
    try:
        worker.wait_ready(timeout=90)
        notifier.wait_ready(timeout=90)
        receiver.wait(lambda: set(receiver.delivered_keys("/hook")) >= expected, timeout=120)
        assert set(receiver.delivered_keys("/hook")) == expected
        assert "SASL_SSL SCRAM-SHA-512 as worker" in worker.output()
    finally:
        receiver.stop()
        worker_code, notifier_code = worker.stop(), notifier.stop()
    assert (worker_code, notifier_code) == (0, 0), worker.output() + notifier.output()

    # on call: the alerts over mutual TLS (a client certificate, no password) ...
    shown = run_cli("alerts", "--broker", secure.ssl, "--topic-prefix", names.prefix,
                    "--security-protocol", "SSL", "--ssl-cafile", str(secure.pki.ca_cert),
                    "--ssl-certfile", str(secure.pki.client_cert),
                    "--ssl-keyfile", str(secure.pki.client_key))
    assert shown.returncode == 0, shown.stderr
    assert f"{len(expected)} alerts, 0 acknowledged" in shown.stdout
    # ... and an acknowledgement over SASL_SSL
    acked = run_cli("ack", sorted(expected)[0], "--by", "Dr Grey", "--broker", secure.sasl_ssl,
                    "--topic-prefix", names.prefix,
                    env=sasl_env(secure, "oncall", "SCRAM-SHA-256"))
    assert acked.returncode == 0, acked.stderr


def test_a_refused_login_or_a_missing_acl_is_one_line_and_exit_code_2(
        secure: SecureAccess, tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    ensure_topics(secure.plaintext, names, partitions=3)
    grant(secure, "User:gateway", required_acls(names.prefix)["gateway"])
    publisher = Publisher(secure.plaintext)  # an alert the gateway may not read
    publisher.send(names.alerts, "p1", b'{"alert_id": "0123456789abcdef"}')
    publisher.close()
    wrong = {**sasl_env(secure, "oncall", "SCRAM-SHA-512"), "CLSMON_SASL_PASSWORD": "wrong"}
    started = time.monotonic()
    refused = run_cli("alerts", "--broker", secure.sasl_ssl, "--topic-prefix", names.prefix,
                      env=wrong)
    assert time.monotonic() - started < 15
    # the gateway may publish inputs but not read alerts
    denied = run_cli("alerts", "--broker", secure.sasl_ssl, "--topic-prefix", names.prefix,
                     env=sasl_env(secure, "gateway", "SCRAM-SHA-256"))
    # a TLS client that trusts another CA
    other_ca = make_pki(tmp_path / "other").ca_cert
    untrusted = run_cli("alerts", "--broker", secure.sasl_ssl, "--topic-prefix", names.prefix,
                        env={**sasl_env(secure, "oncall", "SCRAM-SHA-256"),
                             "CLSMON_SSL_CAFILE": str(other_ca)})
    # a refused login is seen as such, or as the broker closing the connection during the
    # handshake (under load the failure can come only as a disconnect): both name the password
    for done, why in ((refused, "password"), (denied, "not authorized"),
                      (untrusted, "certificate")):
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert why in done.stderr, done.stderr


@pytest.mark.parametrize("address", ["SASL_SSL://127.0.0.1:9093", "kafka+ssl://127.0.0.1:9093",
                                     "ssl://127.0.0.1:9093"])
def test_a_broker_address_with_another_scheme_is_refused_not_used_in_plaintext(
        address: str) -> None:
    done = run_cli("alerts", "--broker", address)
    assert done.returncode == 2
    assert "unknown scheme" in done.stderr and "--security-protocol" in done.stderr


def test_security_settings_that_cannot_work_are_refused() -> None:
    from streams.kafka.connection import KafkaConfigError

    with pytest.raises(KafkaConfigError, match="SASL user"):
        KafkaSecurity("SASL_SSL", password="x")
    with pytest.raises(KafkaConfigError, match="CLSMON_SASL_PASSWORD"):
        KafkaSecurity("SASL_PLAINTEXT", username="u")
    with pytest.raises(KafkaConfigError, match="TLS files"):
        KafkaSecurity("PLAINTEXT", cafile="/etc/hostname")
    with pytest.raises(KafkaConfigError, match="SCRAM"):
        KafkaSecurity("SASL_SSL", "GSSAPI", "u", "p")
    secure = KafkaSecurity("sasl_ssl", "scram-sha-512", "u", "secret")
    assert "secret" not in repr(secure) and secure.describe() == "SASL_SSL SCRAM-SHA-512 as u"


def test_the_worker_may_write_its_inputs_because_it_forwards_misplaced_records() -> None:
    """A record on another partition than murmur2 of its key is re-produced to the right
    partition of the same input topic (streams.worker.outputs.forward): on a locked-down
    cluster the worker's role must hold WRITE on every input, or that forward is refused."""
    names = TopicNames("clsmon.")
    acls = required_acls(names.prefix)
    writable = {g.name for g in acls["worker"]
                if g.resource == "topic" and "WRITE" in g.operations}
    assert set(names.inputs) <= writable
    assert not any("READ" in g.operations for g in acls["gateway"])  # a gateway never reads
