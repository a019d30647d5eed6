"""How to reach the Kafka cluster: addresses and security, in one object every client is made from.

:class:`KafkaConnection` holds the bootstrap servers and the security settings (Kafka's
``security.protocol``, ``sasl.mechanism``, the SASL user and password, the CA and the client
certificate). Every client the project creates comes from it: kafka-python's producer, consumer
and admin client (:meth:`KafkaConnection.producer`, ...), aiokafka's (:meth:`aiokafka_options`)
and Faust's (:meth:`faust_options`). ``streams.cli`` fills it from the flags and environment
variables every Kafka command shares.

A broker address is ``HOST:PORT`` or ``kafka://HOST:PORT`` (several separated by ``,`` or
``;``); any other scheme (``SASL_SSL://``, ``kafka+ssl://``, ``ssl://``) is refused rather than
silently used in plaintext: security comes from ``--security-protocol``.

An unreachable broker, a refused login or a failed TLS handshake is a :class:`BrokerUnreachable`
with one line saying which, raised within ``connect_timeout_s`` (5 s).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class BrokerError(RuntimeError):
    """A broker could not be reached, started or used (a one-line message for the user)."""


class KafkaConfigError(BrokerError):
    """The connection settings cannot work (a bad address or scheme, a missing password...)."""


class BrokerUnreachable(BrokerError):
    """No broker answered in time, or it refused the login or the TLS handshake."""


@dataclass(frozen=True)
class KafkaSecurity:
    """Kafka's client security settings.

    Args:
        protocol: ``security.protocol``: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
        sasl_mechanism: ``sasl.mechanism``: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_*).
        username, password: the SASL user (SASL_*); the password is never printed.
        cafile: PEM file of the CA(s) that signed the brokers' certificates (SSL, SASL_SSL;
            None: the system's CAs).
        certfile, keyfile: the client certificate and its key (mutual TLS), PEM.
        key_password: the key file's password, if it is encrypted.
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    key_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        protocol = self.protocol.upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise KafkaConfigError(f"security protocol {self.protocol!r}: expected one of "
                                   f"{', '.join(SECURITY_PROTOCOLS)}")
        object.__setattr__(self, "protocol", protocol)
        if self.sasl:
            mechanism = (self.sasl_mechanism or "PLAIN").upper()
            if mechanism not in SASL_MECHANISMS:
                raise KafkaConfigError(f"SASL mechanism {self.sasl_mechanism!r}: expected one "
                                       f"of {', '.join(SASL_MECHANISMS)}")
            object.__setattr__(self, "sasl_mechanism", mechanism)
            if not self.username:
                raise KafkaConfigError(f"{protocol} needs a SASL user (--sasl-username)")
            if self.password is None:
                raise KafkaConfigError(f"{protocol} needs the SASL password: set "
                                       "CLSMON_SASL_PASSWORD or --sasl-password-file")
        elif self.sasl_mechanism or self.username:
            raise KafkaConfigError(f"a SASL user or mechanism was given but the security "
                                   f"protocol is {protocol}: use SASL_SSL or SASL_PLAINTEXT")
        files = {"CA file": self.cafile, "client certificate": self.certfile,
                 "client key": self.keyfile}
        if not self.tls and any(files.values()):
            raise KafkaConfigError(f"TLS files were given but the security protocol is "
                                   f"{protocol}: use SSL or SASL_SSL")
        for what, path in files.items():
            if path and not Path(path).is_file():
                raise KafkaConfigError(f"{what} {path} not found")
        if self.keyfile and not self.certfile:
            raise KafkaConfigError("a client key needs its certificate (--ssl-certfile)")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def describe(self) -> str:
        """One line for banners and errors, without the password."""
        if not self.sasl:
            return self.protocol
        return f"{self.protocol} {self.sasl_mechanism} as {self.username}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context trusting ``cafile`` (else the system's CAs) and presenting the client
        certificate; None without TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.cafile)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile, self.key_password)
        return context


def parse_servers(address: str) -> tuple[str, ...]:
    """``HOST:PORT`` or ``kafka://HOST:PORT``, several separated by ``,`` or ``;`` ->
    ``("HOST:PORT", ...)``.

    Raises:
        KafkaConfigError: an unknown scheme (``SASL_SSL://``, ``kafka+ssl://``...), no port,
            or no address at all.
    """
    servers: list[str] = []
    for part in address.replace(",", ";").split(";"):
        part = part.strip().rstrip("/")
        if not part:
            continue
        if "://" in part:
            scheme, part = part.split("://", 1)
            if scheme.lower() != "kafka":
                raise KafkaConfigError(
                    f"broker address {address!r}: unknown scheme {scheme + '://'!r}; write "
                    "kafka://HOST:PORT or HOST:PORT and choose TLS/SASL with "
                    "--security-protocol")
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise KafkaConfigError(f"broker address {address!r}: expected HOST:PORT")
        servers.append(part)
    if not servers:
        raise KafkaConfigError(f"no broker address in {address!r}")
    return tuple(servers)


@dataclass(frozen=True)
class KafkaConnection:
    """Where the cluster is and how to log in: the one object every Kafka client is made from.

    Args:
        servers: bootstrap ``HOST:PORT`` addresses.
        security: TLS and SASL settings (default PLAINTEXT).
        connect_timeout_s: how long a command waits for the first broker answer before it
            reports the broker unreachable.
        client_id: the client id clients present (Kafka quotas and logs).
    """

    servers: tuple[str, ...]
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    connect_timeout_s: float = 5.0
    client_id: str = "clsmon"

    @classmethod
    def of(cls, address: str | KafkaConnection, security: KafkaSecurity | None = None
           ) -> KafkaConnection:
        """A connection from an address (plaintext unless ``security``), or ``address`` itself
        when it is one already."""
        if isinstance(address, KafkaConnection):
            return address if security is None else replace(address, security=security)
        return cls(parse_servers(address), security or KafkaSecurity())

    @property
    def bootstrap(self) -> str:
        """``host:port,host:port`` (Kafka clients' form)."""
        return ",".join(self.servers)

    @property
    def url(self) -> str:
        """``kafka://host:port;kafka://host:port`` (Faust's form)."""
        return ";".join(f"kafka://{s}" for s in self.servers)

    def describe(self) -> str:
        return f"{self.bootstrap} ({self.security.describe()})"

    # --- kafka-python ---------------------------------------------------------------------

    def _auth_options(self) -> dict[str, Any]:
        """SASL and TLS arguments; kafka-python and aiokafka name them alike."""
        sec = self.security
        options: dict[str, Any] = {}
        if sec.sasl:
            options |= {"sasl_mechanism": sec.sasl_mechanism,
                        "sasl_plain_username": sec.username,
                        "sasl_plain_password": sec.password}
        if sec.tls:
            options["ssl_context"] = sec.ssl_context()
        return options

    def kafka_python_options(self) -> dict[str, Any]:
        """Keyword arguments every kafka-python client takes."""
        sec = self.security
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.servers),
            "client_id": self.client_id,
            "security_protocol": sec.protocol,
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
        }
        return options | self._auth_options()

    def producer(self, **options: Any) -> Any:
        """A kafka-python ``KafkaProducer`` (idempotent, ``acks=all`` unless overridden)."""
        from kafka import KafkaProducer

        return self._make(KafkaProducer, options)

    def consumer(self, *topics: str, **options: Any) -> Any:
        """A kafka-python ``KafkaConsumer``."""
        from kafka import KafkaConsumer

        return self._make(KafkaConsumer, options, topics)

    def admin(self, **options: Any) -> Any:
        """A kafka-python ``KafkaAdminClient``."""
        from kafka import KafkaAdminClient

        options.setdefault("request_timeout_ms", int(max(self.connect_timeout_s, 10) * 1000))
        return self._make(KafkaAdminClient, options)

    def check(self) -> None:
        """Return once a broker answered (and took the login); else raise
        ``BrokerUnreachable`` within ``connect_timeout_s``. Commands call it before their slow
        start (Faust's import, a cohort's generation) so a wrong address fails fast."""
        self.admin().close()

    def _make(self, factory: Any, options: Mapping[str, Any], args: tuple[str, ...] = ()
              ) -> Any:
        from kafka.errors import KafkaError

        seen = _BootstrapFailures()
        manager_log = logging.getLogger("kafka.net.manager")
        manager_log.addHandler(seen)
        try:
            return factory(*args, **{**self.kafka_python_options(), **options})
        except (KafkaError, OSError, ssl.SSLError) as exc:
            raise self.unreachable(seen.reasons or [f"{type(exc).__name__}: {exc}"]) from exc
        finally:
            manager_log.removeHandler(seen)

    def unreachable(self, reasons: list[str]) -> BrokerUnreachable:
        """The one-line error for a client that could not connect; ``reasons``: the failures
        the client saw (kafka-python's words), turned into what to check."""
        return BrokerUnreachable(f"cannot connect to Kafka at {self.describe()} within "
                                 f"{self.connect_timeout_s:g} s: {explain_failure(reasons)}")

    def failure(self, exc: BaseException, doing: str) -> BrokerError:
        """A Kafka error while ``doing`` something (after the connection), in one line."""
        from kafka.errors import AuthorizationError

        if isinstance(exc, AuthorizationError):
            return BrokerError(f"{doing} on {self.describe()}: not authorized "
                               f"({type(exc).__name__} {exc}); the principal needs the ACLs "
                               "in README, 'Locked-down cluster'")
        return BrokerError(f"{doing} on {self.describe()}: {type(exc).__name__}: {exc}")

    # --- aiokafka and Faust ---------------------------------------------------------------

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        sec = self.security
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap,
                                   "client_id": self.client_id,
                                   "security_protocol": sec.protocol}
        return options | self._auth_options()

    def faust_options(self) -> dict[str, Any]:
        """Faust app settings: ``broker`` and, with TLS or SASL, ``broker_credentials``."""
        sec = self.security
        options: dict[str, Any] = {"broker": self.url}
        if sec.sasl:
            import faust

            options["broker_credentials"] = faust.SASLCredentials(
                username=sec.username, password=sec.password,
                mechanism=sec.sasl_mechanism, ssl_context=sec.ssl_context())
        elif sec.tls:
            import faust

            options["broker_credentials"] = faust.SSLCredentials(sec.ssl_context())
        return options


Connectable = str | KafkaConnection

#: kafka-python's words for a failed bootstrap -> what the user should check
_FAILURES = (
    ("ECONNREFUSED", "connection refused: is the broker running, and is --broker right?"),
    ("SaslAuthenticationFailed", "the login was refused: check the SASL user, password and "
                                 "mechanism"),
    ("CERTIFICATE_VERIFY_FAILED", "the broker's TLS certificate is not trusted: check "
                                  "--ssl-cafile"),
    ("BAD_CERTIFICATE", "the broker refused the client certificate (mutual TLS: "
                        "--ssl-certfile, --ssl-keyfile)"),
    ("CERTIFICATE_REQUIRED", "the broker wants a client certificate (mutual TLS: "
                             "--ssl-certfile, --ssl-keyfile)"),
    ("UNEXPECTED_EOF", "TLS handshake failed: is this a TLS listener? check "
                       "--security-protocol"),
    ("WRONG_VERSION_NUMBER", "TLS handshake failed: is this a TLS listener? check "
                             "--security-protocol"),
    ("socket disconnected", "the broker closed the connection: does this listener want TLS or "
                            "SASL? check --security-protocol (and the SASL user, password and "
                            "mechanism)"),
    ("Request timed out", "no Kafka answer: something accepts connections there but does not "
                          "answer (a TLS listener? another service?); check --broker and "
                          "--security-protocol"),
    ("UnsupportedSaslMechanism", "the broker does not offer this SASL mechanism: check "
                                 "--sasl-mechanism"),
)


def explain_failure(reasons: list[str]) -> str:
    """What bootstrap failures (kafka-python's messages, in order) mean for the user, in words:
    the most telling one (a refused login says more than the disconnects that follow it)."""
    for needle, meaning in _FAILURES:
        if any(needle in reason for reason in reasons):
            return meaning
    last = reasons[-1] if reasons else ""
    if not last or "Unable to bootstrap" in last or "NoBrokersAvailable" in last:
        return ("no broker answered: is it running, and are --broker and --security-protocol "
                "right?")
    return last


class _BootstrapFailures(logging.Handler):
    """Keeps each "Bootstrap connection ... failed: REASON" kafka-python logs: its exception
    only says it timed out."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Bootstrap connection to") and "failed:" in message:
            self.reasons.append(message.split("failed:", 1)[1].strip())


def connect(target: Connectable) -> KafkaConnection:
    """``target`` as a connection (an address string is plaintext)."""
    return KafkaConnection.of(target)
