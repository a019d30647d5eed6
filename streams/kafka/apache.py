"""Apache Kafka 4.x in KRaft mode, run from Maven Central jars on this machine: 1 or 3 nodes.

For ``clsmon broker --engine kafka``, ``make demo``, the integration tests and the benchmarks;
production runs its own cluster. :class:`KafkaCluster` formats each node's storage and starts
combined broker+controller nodes (``java -cp 'lib/*' kafka.Kafka server.properties``) on
loopback ports, waits until every broker is registered and unfenced, and stops them (SIGTERM,
then SIGKILL). Every node dies with the process that started it (``die_with_parent``).

Listeners of each node: ``INTERNAL`` (PLAINTEXT: between brokers, and the readiness probe),
``CONTROLLER`` (PLAINTEXT: the KRaft quorum), and for clients any of ``PLAINTEXT``,
``SASL_PLAINTEXT``, ``SASL_SSL`` (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN) and ``SSL`` (mutual
TLS). Measured here (2 cores, Java 17): format 2-3 s, start to ready 5-8 s for one node, about
300 MB RSS per node with ``-Xmx512m`` (README, "Apache Kafka on this machine").

Example:
    >>> with KafkaCluster(nodes=1) as cluster:                 # doctest: +SKIP
    ...     print(cluster.bootstrap)
    127.0.0.1:40123
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from streams.kafka.admin import BrokerError
from streams.kafka.jars import ensure_kafka_jars, kafka_version
from streams.kafka.local import (
    LOOPBACK,
    die_with_parent,
    free_port,
    port_open,
    run_in_foreground,
    tail,
)

log = logging.getLogger(__name__)

CLIENT_LISTENERS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")

_LOG4J2 = """\
status = warn
shutdownHook = disable
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""

#: JVM options for a broker that starts fast on a busy 2-core machine: the C1 compiler only and
#: the serial collector halve the start (45 s -> 16 s to ready with the test suite running
#: beside it, measured); a long benchmark run may prefer the JVM's defaults
FAST_START_JVM = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")

#: broker settings for a small cluster on one machine; each one is a documented broker config
SMALL_CLUSTER: dict[str, str] = {
    "num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",  # 3 s by default: every first join waits it out
    "offsets.topic.num.partitions": "3",  # 50 by default: a slow first group join
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.num.partitions": "1",
    "num.network.threads": "2",
    "num.io.threads": "2",
}


@dataclass(frozen=True)
class BrokerTls:
    """The broker's side of TLS, as PEM files: ``keystore`` holds its PKCS#8 key and certificate
    chain, ``ca_cert`` the CA that signs client certificates (mutual TLS on ``SSL``)."""

    keystore: Path
    ca_cert: Path


@dataclass
class Node:
    node_id: int
    dir: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes in URL-safe base64, never beginning with
    "-", which ``kafka-storage format --cluster-id`` would read as an option (one id in 64
    did: "expected one argument"). Kafka's own ``Uuid.randomUuid`` draws again the same way."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass
class KafkaCluster:
    """1 or 3 combined broker+controller nodes with a static KRaft quorum on loopback ports.

    Args:
        nodes: number of nodes (every node is a voter: 1 or 3).
        listeners: client listeners, any of ``CLIENT_LISTENERS``.
        ports: the client port of each node for the first client listener (None: free ports).
        tls: the broker's certificate (needed by ``SSL`` and ``SASL_SSL``).
        users: SCRAM and PLAIN users and their passwords (needed by ``SASL_*``).
        superusers: with ``acls``, principals allowed everything (``User:admin``).
        acls: turn on Kafka's StandardAuthorizer (``allow.everyone.if.no.acl.found=false``);
            the INTERNAL listener (``User:ANONYMOUS``) stays a super user for the brokers.
        heap: JVM ``-Xmx`` per node.
        config: extra ``server.properties`` entries (override the defaults).
        workdir: parent of the node directories (None: a temporary one, removed on stop).
    """

    nodes: int = 1
    listeners: tuple[str, ...] = ("PLAINTEXT",)
    ports: tuple[int, ...] | None = None
    tls: BrokerTls | None = None
    users: Mapping[str, str] = field(default_factory=dict)
    superusers: tuple[str, ...] = ()
    acls: bool = False
    heap: str = "512m"
    jvm_opts: tuple[str, ...] = ()
    config: Mapping[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    start_timeout: float = 120.0
    stop_timeout: float = 20.0
    version: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.listeners) - set(CLIENT_LISTENERS)
        if unknown or not self.listeners:
            raise ValueError(f"client listeners must be among {CLIENT_LISTENERS}: {unknown}")
        if {"SSL", "SASL_SSL"} & set(self.listeners) and self.tls is None:
            raise ValueError("SSL and SASL_SSL listeners need tls=BrokerTls(...)")
        if any(n.startswith("SASL") for n in self.listeners) and not self.users:
            raise ValueError("SASL listeners need users")
        self._own_workdir = self.workdir is None
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="clsmon-kafka-"))
        self.cluster_id = new_cluster_id()
        self.lib: Path | None = None
        self.timings: dict[str, float] = {}
        self._nodes: list[Node] = []
        for i in range(1, self.nodes + 1):
            ports = {name: free_port() for name in ("INTERNAL", "CONTROLLER", *self.listeners)}
            if self.ports is not None:
                ports[self.listeners[0]] = self.ports[i - 1]
            self._nodes.append(Node(i, self.workdir / f"node-{i}", ports))

    # --- addresses ---------------------------------------------------------------------------

    @property
    def all_nodes(self) -> list[Node]:
        return list(self._nodes)

    def node(self, node_id: int) -> Node:
        return self._nodes[node_id - 1]

    def addresses(self, listener: str | None = None, nodes: Iterable[Node] | None = None) -> str:
        """``host:port,host:port`` of ``listener`` (default: the first client listener) on
        every node (or on ``nodes``)."""
        name = listener or self.listeners[0]
        return ",".join(f"{LOOPBACK}:{n.ports[name]}" for n in (nodes or self._nodes))

    @property
    def bootstrap(self) -> str:
        """``host:port,...`` of the first client listener, for Kafka clients."""
        return self.addresses()

    @property
    def url(self) -> str:
        """Faust's form of the first client listener: ``kafka://h:p;h:p``."""
        return ";".join(f"kafka://{hp}" for hp in self.bootstrap.split(","))

    # --- configuration -----------------------------------------------------------------------

    def properties(self, node: Node) -> dict[str, str]:
        """``server.properties`` of ``node``."""
        names = list(node.ports)
        protocol = {"INTERNAL": "PLAINTEXT", "CONTROLLER": "PLAINTEXT"}
        protocol |= {n: n for n in CLIENT_LISTENERS}
        replicas = str(min(3, self.nodes))
        min_isr = str(min(2, self.nodes))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": ",".join(
                f"{n.node_id}@{LOOPBACK}:{n.ports['CONTROLLER']}" for n in self._nodes),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "INTERNAL",
            "listeners": ",".join(f"{n}://{LOOPBACK}:{node.ports[n]}" for n in names),
            "advertised.listeners": ",".join(f"{n}://{LOOPBACK}:{node.ports[n]}"
                                             for n in names if n != "CONTROLLER"),
            "listener.security.protocol.map": ",".join(f"{n}:{protocol[n]}" for n in names),
            "log.dirs": str(node.dir / "data"),
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            **SMALL_CLUSTER,
        }
        if self.tls is not None:
            props |= {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(self.tls.keystore),
                      "ssl.truststore.type": "PEM",
                      "ssl.truststore.location": str(self.tls.ca_cert)}
        if "SSL" in node.ports:
            props["listener.name.ssl.ssl.client.auth"] = "required"
        sasl = [n for n in self.listeners if n.startswith("SASL")]
        if sasl:
            props["sasl.enabled.mechanisms"] = ",".join((*SCRAM_MECHANISMS, "PLAIN"))
            plain_users = " ".join(f'user_{u}="{p}"' for u, p in self.users.items())
            for listener in sasl:
                prefix = f"listener.name.{listener.lower()}"
                props[f"{prefix}.plain.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f"{plain_users};")
                for mech in SCRAM_MECHANISMS:
                    props[f"{prefix}.{mech.lower()}.sasl.jaas.config"] = (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;")
        if self.acls:
            props |= {
                "authorizer.class.name":
                    "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "allow.everyone.if.no.acl.found": "false",
                # the brokers and controllers talk over the PLAINTEXT loopback listeners
                "super.users": ";".join(("User:ANONYMOUS", *self.superusers)),
            }
        return props | dict(self.config)

    def _write_config(self, node: Node) -> Path:
        node.dir.mkdir(parents=True, exist_ok=True)
        path = node.dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.properties(node).items()))
        (node.dir / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _java(self, node: Node, main: str, *args: str, heap: str) -> list[str]:
        assert self.lib is not None
        return ["java", f"-Xmx{heap}", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={node.dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={node.dir}", *self.jvm_opts, "-cp", f"{self.lib}/*", main, *args]

    # --- lifecycle ---------------------------------------------------------------------------

    def format(self) -> None:
        """Format every node's log directory (SCRAM users are stored at format time)."""
        started = time.monotonic()
        scram = [arg for mech in SCRAM_MECHANISMS for user, password in self.users.items()
                 for arg in ("--add-scram", f"{mech}=[name={user},password={password}]")]
        running: list[tuple[Node, subprocess.Popen[bytes], IO[bytes]]] = []
        for node in self._nodes:
            cfg = self._write_config(node)
            cmd = self._java(node, "kafka.tools.StorageTool", "format", "-c", str(cfg),
                             "--cluster-id", self.cluster_id, *scram, heap="256m")
            log_file: IO[bytes] = open(node.dir / "format.out", "wb")  # noqa: SIM115
            running.append((node, subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL), log_file))
        for node, proc, log_file in running:
            code = proc.wait()
            log_file.close()
            if code != 0:
                raise BrokerError(f"formatting Kafka node {node.node_id} failed:\n"
                                  f"{tail(node.dir / 'format.out')}")
        self.timings["format_s"] = time.monotonic() - started

    def start_node(self, node: Node) -> None:
        cmd = self._java(node, "kafka.Kafka", str(node.dir / "server.properties"),
                         heap=self.heap)
        with open(node.dir / "stdout.log", "ab") as out:
            node.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=die_with_parent)

    def start(self) -> Self:
        """Fetch the jars if needed, format, start every node and wait until all are ready.

        Raises:
            KafkaJarsError: no Java 17+, no Maven, or the fetch failed.
            BrokerError: a port is taken, or a node failed to format, exited or was not ready
                in ``start_timeout`` (the tail of its log in the message).
        """
        for node in self._nodes:
            taken = [p for p in node.ports.values() if port_open(LOOPBACK, p)]
            if taken:
                raise BrokerError(f"{LOOPBACK}:{taken[0]} is already in use; choose another "
                                  "port")
        self.lib = ensure_kafka_jars(self.version)
        try:
            self.format()
            started = time.monotonic()
            for node in self._nodes:
                self.start_node(node)
            self.wait_ready()
            self.timings["start_to_ready_s"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        log.info("kafka ready on %s: %s", self.bootstrap, self.timings)
        return self

    def wait_ready(self, nodes: Iterable[Node] | None = None,
                   timeout: float | None = None) -> float:
        """Block until each of ``nodes`` (default all) answers and the cluster's metadata lists
        every broker unfenced; returns the seconds waited."""
        from kafka import KafkaAdminClient

        want = {n.node_id for n in self._nodes}
        targets = list(nodes or self._nodes)
        started = time.monotonic()
        deadline = started + (timeout or self.start_timeout)
        for node in targets:
            while not port_open(LOOPBACK, node.ports["INTERNAL"]):
                self._check_alive(node, deadline)
                time.sleep(0.05)
        for node in targets:
            while True:
                self._check_alive(node, deadline)
                try:
                    admin = KafkaAdminClient(bootstrap_servers=self.addresses("INTERNAL", [node]),
                                             request_timeout_ms=2000, bootstrap_timeout_ms=2000,
                                             client_id="clsmon-ready-probe")
                    try:
                        cluster = admin.describe_cluster()
                    finally:
                        admin.close()
                    up = {b["broker_id"] for b in cluster["brokers"] if not b.get("is_fenced")}
                    if up >= want:
                        break
                except Exception:  # noqa: BLE001 - any failure means "not yet"
                    pass
                time.sleep(0.1)
        return time.monotonic() - started

    def _check_alive(self, node: Node, deadline: float) -> None:
        if not node.running():
            code = node.proc.returncode if node.proc is not None else None
            raise BrokerError(f"Kafka node {node.node_id} exited (code {code}):\n"
                              f"{self.output_tail(node)}")
        if time.monotonic() > deadline:
            raise BrokerError(f"Kafka node {node.node_id} not ready in time:\n"
                              f"{self.output_tail(node)}")

    def output_tail(self, node: Node | None = None) -> str:
        node = node or self._nodes[0]
        return (tail(node.dir / "stdout.log", 1500) + "\n" + tail(node.log_file, 2500)).strip()

    def is_running(self) -> bool:
        """True while every node runs."""
        return all(n.running() for n in self._nodes)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one node (SIGKILL: a crash) and wait for it to exit."""
        node = self.node(node_id)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            node.proc.wait()

    def stop_node(self, node_id: int) -> float:
        """SIGTERM (a controlled shutdown), SIGKILL after ``stop_timeout``; seconds taken."""
        node = self.node(node_id)
        started = time.monotonic()
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()
            try:
                node.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("kafka node %d ignored SIGTERM; killing it", node_id)
                node.proc.kill()
                node.proc.wait()
        return time.monotonic() - started

    def restart_node(self, node_id: int, timeout: float | None = None) -> float:
        """Stop one node (if running), start it again on its ports and data, wait until the
        whole cluster is ready; seconds from the start to ready."""
        self.stop_node(node_id)
        node = self.node(node_id)
        self.start_node(node)
        return self.wait_ready([node], timeout)

    def stop(self) -> None:
        """Stop every node (in parallel: SIGTERM to all first) and remove a temporary workdir."""
        for node in self._nodes:
            if node.running() and node.proc is not None:
                node.proc.terminate()
        for node in self._nodes:
            with contextlib.suppress(Exception):
                self.stop_node(node.node_id)
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def rss_mb(self) -> dict[int, float]:
        """Resident memory of each running node in MB."""
        out: dict[int, float] = {}
        for node in self._nodes:
            if node.running() and node.proc is not None:
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            out[node.node_id] = int(line.split()[1]) / 1024
        return out

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def leader_of(bootstrap: str, topic: str, partition: int, **client: object) -> int:
    """The node id leading ``topic[partition]`` (kafka-python metadata)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **client)
    try:
        for described in admin.describe_topics([topic]):
            for part in described["partitions"]:  # Metadata response fields
                if part.get("partition_index", part.get("partition")) == partition:
                    return int(part.get("leader_id", part.get("leader", -1)))
    finally:
        admin.close()
    raise BrokerError(f"{topic}[{partition}] not found")


def env_heap(default: str = "512m") -> str:
    """``$CLSMON_KAFKA_HEAP`` or ``default``."""
    return os.environ.get("CLSMON_KAFKA_HEAP", default)


def run_kafka_forever(port: int = 9092, nodes: int = 1) -> int:
    """``clsmon broker --engine kafka``: Apache Kafka in the foreground until SIGTERM or SIGINT;
    node ``i`` listens on ``port + i - 1`` (``port`` 0: free ports). Prints the bootstrap
    address once every node is ready. Returns the exit code (0 after a signal, 1 if a node
    died by itself)."""
    ports = tuple(port + i for i in range(nodes)) if port else None
    cluster = KafkaCluster(nodes=nodes, ports=ports, heap=env_heap(), jvm_opts=FAST_START_JVM)

    def ready() -> str:
        rss = sum(cluster.rss_mb().values())
        return (f"Apache Kafka {cluster.version or kafka_version()} ready ({nodes} "
                f"node{'s' if nodes > 1 else ''}, KRaft): bootstrap {cluster.bootstrap} "
                f"({cluster.url}); started in {cluster.timings.get('start_to_ready_s', 0):.0f} s"
                f", {rss:.0f} MB")

    return run_in_foreground(cluster, "Apache Kafka", ready)
