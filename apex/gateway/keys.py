"""API keys: created once, shown once, stored only as a salted hash.

A key reads ``apex_<key id>_<secret>``: the key id (12 hex digits) is public
and finds the row; the secret (32 random bytes, URL-safe base64) is never
stored. The row keeps a per-key random salt and ``sha256(salt || secret)``,
compared in constant time.

Why SHA-256 and not a slow password hash (scrypt, argon2): a slow hash exists
to make guessing *low-entropy* secrets expensive. These secrets are 256
random bits — no guessing attack gets anywhere whatever the hash costs — and
the gateway checks a key on every request, where a deliberately slow hash
would cost tens of milliseconds of CPU each time. (This is how GitHub and
Stripe store their tokens.) The salt makes equal secrets hash differently and
rules out precomputed tables anyway.

Each key has a tenant (:mod:`apex.gateway.tenancy`) and scopes:

=========  =================================================================
publish    start runs, send signals, cancel runs, publish business events
read       definitions, runs, a run's events, the result stream, the inbox
approve    approve and reject steps (and read the inbox)
admin      register workflow definitions (shared by every tenant)
=========  =================================================================

The table lives in the gateway's own schema (``APEX_GATEWAY_SCHEMA``), not in
the read models: a rebuild replaces the read-model schema wholesale, and keys
are not derived from the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from apex.gateway.tenancy import check_tenant
from apex.projections.schema import quote_ident

__all__ = ["ApiKey", "CreatedKey", "KeyStore", "Scope", "UnknownKey", "parse_key"]


class Scope(StrEnum):
    PUBLISH = "publish"
    READ = "read"
    APPROVE = "approve"
    ADMIN = "admin"


class UnknownKey(LookupError):
    """No key with that id (or it was revoked)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, without its secret."""

    key_id: str
    tenant: str
    scopes: frozenset[Scope]
    name: str
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    secret_key: str
    """The whole key (``apex_<id>_<secret>``): shown once, never stored."""


_KEY = re.compile(r"^apex_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def parse_key(presented: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key; ``None`` otherwise."""
    match = _KEY.match(presented.strip())
    return (match.group(1), match.group(2)) if match else None


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


class KeyStore:
    """The ``api_keys`` table: create, verify, list and revoke keys."""

    def __init__(self, engine: AsyncEngine, schema: str) -> None:
        self.engine = engine
        self.schema = schema
        self._table = f"{quote_ident(schema)}.api_keys"

    async def create_tables(self) -> None:
        """Create the schema and table if missing (idempotent; safe from several processes)."""
        q = quote_ident(self.schema)
        async with self.engine.begin() as connection:
            # Two gateways starting together would race on CREATE ... IF NOT EXISTS
            # (it is not atomic against a concurrent create); the lock serialises them.
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                {"name": f"apex-gateway-ddl:{self.schema}"},
            )
            await connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {q}"))
            await connection.execute(
                text(
                    f"""
                    CREATE TABLE IF NOT EXISTS {self._table} (
                        key_id     text PRIMARY KEY,
                        tenant     text NOT NULL,
                        scopes     text[] NOT NULL
                            CHECK (scopes <@ ARRAY['publish', 'read', 'approve', 'admin']),
                        name       text NOT NULL,
                        salt       bytea NOT NULL CHECK (octet_length(salt) = 16),
                        hash       bytea NOT NULL CHECK (octet_length(hash) = 32),
                        created_at timestamptz NOT NULL DEFAULT now(),
                        revoked_at timestamptz
                    )
                    """
                )
            )

    async def create(
        self, tenant: str, scopes: Collection[Scope | str], name: str = ""
    ) -> CreatedKey:
        """A new key; the returned ``secret_key`` is the only time the secret exists in full."""
        check_tenant(tenant)
        wanted = _scopes(scopes)
        if not wanted:
            raise ValueError("a key needs at least one scope: publish, read, approve or admin")
        key_id = secrets.token_hex(6)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        salt = secrets.token_bytes(16)
        name = name or f"key-{key_id}"
        async with self.engine.begin() as connection:
            row = (
                await connection.execute(
                    text(
                        f"INSERT INTO {self._table} (key_id, tenant, scopes, name, salt, hash) "
                        "VALUES (:key_id, :tenant, :scopes, :name, :salt, :hash) "
                        "RETURNING created_at"
                    ),
                    {
                        "key_id": key_id,
                        "tenant": tenant,
                        "scopes": sorted(s.value for s in wanted),
                        "name": name,
                        "salt": salt,
                        "hash": _digest(salt, secret),
                    },
                )
            ).one()
        key = ApiKey(key_id, tenant, wanted, name, row.created_at)
        return CreatedKey(key, f"apex_{key_id}_{secret}")

    async def verify(self, presented: str) -> ApiKey | None:
        """The active key ``presented`` is; ``None`` when it is malformed, unknown or revoked."""
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        f"SELECT key_id, tenant, scopes, name, salt, hash, created_at, revoked_at "
                        f"FROM {self._table} WHERE key_id = :key_id"
                    ),
                    {"key_id": key_id},
                )
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(_digest(bytes(row.salt), secret), bytes(row.hash)):
            return None
        return _key(row)

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        where = "WHERE tenant = :tenant" if tenant is not None else ""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                text(
                    f"SELECT key_id, tenant, scopes, name, created_at, revoked_at "
                    f"FROM {self._table} {where} ORDER BY tenant, created_at, key_id"
                ),
                {"tenant": tenant},
            )
            return [_key(row) for row in rows]

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key now; raises :class:`UnknownKey` when there is no active key of that id."""
        async with self.engine.begin() as connection:
            row = (
                await connection.execute(
                    text(
                        f"UPDATE {self._table} SET revoked_at = now() "
                        "WHERE key_id = :key_id AND revoked_at IS NULL "
                        "RETURNING key_id, tenant, scopes, name, created_at, revoked_at"
                    ),
                    {"key_id": key_id},
                )
            ).first()
        if row is None:
            raise UnknownKey(f"no active API key with id {key_id!r} (see `apex gateway keys list`)")
        return _key(row)


def _scopes(scopes: Collection[Scope | str]) -> frozenset[Scope]:
    found = set()
    for scope in scopes:
        try:
            found.add(Scope(scope))
        except ValueError:
            allowed = ", ".join(s.value for s in Scope)
            raise ValueError(f"unknown scope {scope!r}: use {allowed}") from None
    return frozenset(found)


def _key(row: object) -> ApiKey:
    m = row._mapping  # type: ignore[attr-defined]
    return ApiKey(
        key_id=m["key_id"],
        tenant=m["tenant"],
        scopes=frozenset(Scope(s) for s in m["scopes"]),
        name=m["name"],
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
    )
