"""A throw-away PKI made at test time with ``cryptography``: a CA, and server and
client certificates it signs, written as PEM files (the format dcmtk's ``+tls``/``+cf``
read by default, ``-pem``, and what ``ssl`` loads)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> rsa.RSAPrivateKey:
    # RSA: every dcmtk TLS profile (BCP 195) has ECDHE-RSA suites.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Axiom Flow tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


class CA:
    """A self-signed CA in ``folder``; :meth:`issue` signs leaf certificates."""

    def __init__(self, folder: Path, name: str = "Axiom Test CA"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = _key()
        now = dt.datetime.now(dt.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        slug = name.lower().replace(" ", "-")
        self.cert = _write_cert(self._cert, self.folder / f"{slug}.crt")

    def issue(self, common_name: str) -> Leaf:
        """A certificate for ``common_name`` usable by servers and clients, valid for
        127.0.0.1 and localhost."""
        key = _key()
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        slug = common_name.lower().replace(" ", "-")
        return Leaf(cert=_write_cert(cert, self.folder / f"{slug}.crt"), key=_write_key(key, self.folder / f"{slug}.key"))


@dataclass(frozen=True)
class Pki:
    """Two unrelated CAs: ``ca`` signs ``server`` and ``client``; ``other_ca`` signs
    ``stranger``, a client certificate nobody here should trust."""

    ca: CA
    server: Leaf
    client: Leaf
    other_ca: CA
    stranger: Leaf


def make_pki(folder: Path) -> Pki:
    ca = CA(Path(folder) / "ca", "Axiom Test CA")
    other = CA(Path(folder) / "other", "Other Test CA")
    return Pki(ca=ca, server=ca.issue("server"), client=ca.issue("client"), other_ca=other,
               stranger=other.issue("stranger"))


def tls_args(key: Path, cert: Path, ca: Path) -> list[str]:
    """storescu/storescp TLS options: our key and certificate (PEM, unencrypted, so
    ``-pw``: no password prompt), and the CA to verify the peer against."""
    return ["+tls", str(key), str(cert), "-pw", "+cf", str(ca)]
