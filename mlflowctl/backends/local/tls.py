"""The head's own small certificate authority, for `mlwf up --listen ADDR`.

Traffic that leaves loopback (remote workers to the broker, the metadata database and the
execution API) is encrypted, and the workers verify whom they talk to: against this CA, whose
certificate travels in the join file. One server certificate serves Redis, PostgreSQL and the
api-server's TLS front; its names are 127.0.0.1, localhost and ADDR, so it is issued again when
ADDR changes. The keys stay in <home>/tls/ (0600); the CA key never leaves it.

    tls/ca.pem  ca.key  server.pem  server.key
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

FOLDER = "tls"
CA_DAYS = 3650
SERVER_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def files(home: Path) -> TlsFiles:
    folder = Path(home) / FOLDER
    return TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")


def _names(listen: str) -> set[str]:
    return {"127.0.0.1", "localhost", listen}


def ensure(home: Path, listen: str) -> TlsFiles:
    """The CA (made once) and a server certificate valid for `listen`; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    found = files(home)
    found.ca.parent.mkdir(mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key_path = found.ca.parent / "ca.key"
    if found.ca.is_file() and ca_key_path.is_file():
        ca_cert = x509.load_pem_x509_certificate(found.ca.read_bytes())
        ca_key = _load_key(ca_key_path)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlwf stack CA")])
        ca_cert = (
            _builder(name, name, ca_key.public_key(), now, CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(ca_key, _sha256())
        )
        _write_key(ca_key_path, ca_key)
        _write(found.ca, _pem(ca_cert))
    if _current(found, ca_cert, listen, now):
        return found
    key = ec.generate_private_key(ec.SECP256R1())
    alt = [x509.DNSName("localhost")] + [
        x509.IPAddress(ipaddress.ip_address(n)) for n in sorted(_names(listen) - {"localhost"})
    ]
    cert = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, listen)]), ca_cert.subject, key.public_key(), now,
                 SERVER_DAYS)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, _sha256())
    )
    _write_key(found.key, key)
    _write(found.cert, _pem(cert))
    return found


def _current(found: TlsFiles, ca_cert, listen: str, now) -> bool:
    """The server certificate exists, was signed by this CA, names `listen` and has a year left."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(found.cert.read_bytes())
        if not found.key.is_file() or cert.issuer != ca_cert.subject:
            return False
        ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, cert.signature_algorithm_parameters)
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # missing, damaged or foreign: issue a new one
        return False
    names = {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)} | set(alt.get_values_for_type(x509.DNSName))
    return _names(listen) <= names and cert.not_valid_after_utc - now > datetime.timedelta(days=365)


def _builder(subject, issuer, public_key, now, days):
    from cryptography import x509

    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _load_key(path: Path):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _write(path: Path, data: bytes) -> None:
    from mlflowctl.state import write_durably

    write_durably(path, data.decode(), mode=0o600)
