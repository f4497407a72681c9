"""Fixtures for the security suite: keys made straight in Postgres, coordinators with auth on, a private CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.app import Coordinator
from coordinator.auth.keys import KeyRecord, format_token, hash_secret, new_key_id, new_salt, new_secret, parse_scopes
from coordinator.db.pool import create_pool
from coordinator.db.store import Store

# Keys reload this often in these tests, so that a revocation is seen within a fraction of a second.
TEST_KEY_REFRESH = timedelta(milliseconds=200)

MakeKey = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_key(dsn: str) -> Any:
    """make_key(name, "submit,read", queues=(...), rate=None, burst=None) -> the token, stored hashed."""
    pool = await create_pool(dsn, max_size=2)
    store = Store(pool)

    async def make(name: str, scopes: str, *, queues: tuple[str, ...] = (), rate: float | None = None,
                   burst: int | None = None) -> str:
        key_id, secret, salt = new_key_id(), new_secret(), new_salt()
        await store.api_key_insert(KeyRecord(key_id=key_id, name=name, salt=salt,
                                             secret_hash=hash_secret(salt, secret), scopes=parse_scopes(scopes),
                                             queues=queues, rate_per_s=rate, burst=burst))
        return format_token(key_id, secret)

    yield make
    await pool.close()


async def revoke(dsn: str, name: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        await con.execute("UPDATE faultline_api_keys SET revoked_at = now() WHERE name = $1", name)
    finally:
        await con.close()


@pytest.fixture
async def auth_coordinator(coordinator_factory: Callable[..., Awaitable[Coordinator]]) -> Coordinator:
    return await coordinator_factory(auth="required", key_refresh_interval=TEST_KEY_REFRESH)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, and client certificates, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    dir: Path

    def client(self, cn: str) -> tuple[Path, Path]:
        return self.dir / f"{cn}.crt", self.dir / f"{cn}.key"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, cn: str, *, server: bool
           ) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1)))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_pki(root: Path, clients: tuple[str, ...] = ("worker-1", "producer-1")) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "faultline test CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
          .not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (root / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert, key = _issue(ca_key, ca_name, "localhost", server=True)
    (root / "server.crt").write_bytes(cert)
    (root / "server.key").write_bytes(key)
    for cn in clients:
        cert, key = _issue(ca_key, ca_name, cn, server=False)
        (root / f"{cn}.crt").write_bytes(cert)
        (root / f"{cn}.key").write_bytes(key)
    return Pki(ca=root / "ca.crt", server_cert=root / "server.crt", server_key=root / "server.key", dir=root)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
