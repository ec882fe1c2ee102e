"""A test certificate authority made at test time (never a key checked into the repo)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class CertAuthority:
    """A root and an intermediate; ``issue`` writes a server chain and key to a directory."""

    directory: Path

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self._now = now
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._cert(_name("sipgw test root"), self.root_key.public_key(),
                               _name("sipgw test root"), self.root_key, ca=True)
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = self._cert(_name("sipgw test intermediate"), self.inter_key.public_key(),
                                self.root.subject, self.root_key, ca=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.root_path = self.directory / "root.pem"
        self.root_path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))

    def _cert(self, subject, public_key, issuer, signer, *, ca: bool, sans=(), days: float = 1):
        after = self._now + datetime.timedelta(days=days)
        # An expired one (days < 0) was valid for a month before it ran out.
        before = min(self._now - datetime.timedelta(minutes=5), after - datetime.timedelta(days=30))
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(before)
            .not_valid_after(after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )  # fmt: skip
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)),
                                            critical=False)
        return builder.sign(signer, hashes.SHA256())

    def issue(self, name: str = "server", cn: str = "localhost",
              days: float = 1) -> tuple[Path, Path, int]:
        """``(chain.pem, key.pem, serial)`` for localhost and 127.0.0.1, valid for ``days``
        more days (negative: expired that long ago)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        cert = self._cert(_name(cn), key.public_key(), self.inter.subject, self.inter_key,
                          ca=False, sans=sans, days=days)
        chain = self.directory / f"{name}-chain.pem"
        key_path = self.directory / f"{name}-key.pem"
        chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                          + self.inter.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        return chain, key_path, cert.serial_number
