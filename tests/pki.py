"""A PKI made by the test: a CA, the broker's certificate and a client certificate, as PEM.

Made with the ``cryptography`` package (no openssl or keytool). The broker reads them as
``ssl.keystore.type=PEM`` / ``ssl.truststore.type=PEM`` (``streams.kafka.apache.BrokerTls``);
clients get ``ca.pem`` (and ``client.pem`` / ``client.key`` for mutual TLS) through
``--ssl-cafile`` etc.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca_cert: Path  # CA certificate: broker truststore and clients' cafile
    server_keystore: Path  # server PKCS#8 key + certificate chain in one PEM file
    client_cert: Path  # client certificate (mTLS)
    client_key: Path  # client PKCS#8 key (mTLS)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Kafka's PEM keystore wants PKCS#8 ("BEGIN PRIVATE KEY"); unencrypted is accepted.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: str,
    issuer_cert: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool,
    sans: list[x509.GeneralName] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
    days: int = 30,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        # key_cert_sign, crl_sign
        usage_ca = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage_ca, critical=True)
    else:
        # digital_signature, key_encipherment
        usage_leaf = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
        builder = builder.add_extension(usage_leaf, critical=True)
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),
            critical=False,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def make_pki(directory: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Pki:
    """Write ca.pem, server.pem (key + chain), client.pem, client.key into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _issue("clsmon-test-ca", None, None, ca=True)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    srv_cert, srv_key = _issue(
        "kafka-broker",
        ca_cert,
        ca_key,
        ca=False,
        sans=sans,
        # CLIENT_AUTH too, so the same keystore works for an SSL inter-broker listener
        usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    cli_cert, cli_key = _issue(
        "clsmon-client", ca_cert, ca_key, ca=False, usage=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    pem = serialization.Encoding.PEM
    pki = Pki(out / "ca.pem", out / "server.pem", out / "client.pem", out / "client.key")
    pki.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    pki.server_keystore.write_bytes(
        _pem_key(srv_key) + srv_cert.public_bytes(pem) + ca_cert.public_bytes(pem)
    )
    pki.client_cert.write_bytes(cli_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    pki.client_key.write_bytes(_pem_key(cli_key))
    for path in (pki.server_keystore, pki.client_key):
        path.chmod(0o600)
    return pki
