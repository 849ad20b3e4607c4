"""Local TLS certificates and SuperNode authentication keys for a federation.

For runs on one machine ``privmesh train`` generates, once per data directory:

* a private certificate authority (``ca.pem``; its key never leaves ``pki/``),
* the SuperLink's server certificate for its host names and loopback addresses,
* one EC P-384 key pair per domain in OpenSSH format: the SuperNode signs with the
  private key, and its public key is registered with the SuperLink
  (``flwr supernode register``), which then refuses any SuperNode it does not know.

On real clusters the certificates come from the organisation's PKI and each domain
generates its own key on its own host (docs/federation.md); nothing here is needed.
Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365


@dataclass(frozen=True)
class ServerPki:
    """Paths of the CA certificate and the SuperLink's certificate and key."""

    ca_certificate: Path
    certificate: Path
    key: Path


@dataclass(frozen=True)
class NodeKeys:
    """Paths of one SuperNode's authentication key pair."""

    private_key: Path
    public_key: Path


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def server_pki(directory: Path, hosts: list[str]) -> ServerPki:
    """The CA and the SuperLink certificate under ``directory`` (made if missing or if
    the certificate does not cover ``hosts``)."""
    paths = ServerPki(
        directory / "ca.pem", directory / "superlink.pem", directory / "superlink.key"
    )
    if paths.ca_certificate.exists() and paths.certificate.exists() and paths.key.exists():
        current = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
        if _covers(current, hosts) and current.not_valid_after_utc > _now() + dt.timedelta(days=1):
            return paths
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privmesh local federation CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    certificate = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privmesh superlink")]),
            ca_name,
            key.public_key(),
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    paths.ca_certificate.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.key, _pem_key(key))
    _write_private(directory / "ca.key", _pem_key(ca_key))
    return paths


def node_keys(directory: Path, domain: str) -> NodeKeys:
    """The SuperNode key pair of ``domain`` (made once)."""
    paths = NodeKeys(directory / f"{domain}.key", directory / f"{domain}.pub")
    if paths.private_key.exists() and paths.public_key.exists():
        return paths
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        paths.private_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    paths.public_key.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return paths


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=VALID_DAYS))
    )


def _covers(certificate: x509.Certificate, hosts: list[str]) -> bool:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    covered = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    covered |= set(names.get_values_for_type(x509.DNSName))
    return set(hosts) <= covered
