"""API keys: created once, shown once, stored as SHA-256 hashes.

A key reads `rhp_<prefix>_<secret>`: the prefix (public, 12 hex digits) finds the row, the
SHA-256 of the whole key is compared in constant time. Keys carry 192 bits of randomness, so a
plain (unsalted, fast) hash is as strong as the key itself; a slow password hash would only
cost every request time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from revhpo.service.db import db_epoch, session_scope
from revhpo.service.models import ApiKey
from sqlalchemy import Engine, select

KEY_PREFIX = "rhp_"
ANONYMOUS_OWNER = "local"
"""The owner an anonymous caller of a loopback-bound server acts as (a user, never a worker)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner of their jobs and datasets, and whether they may run jobs.

    Only a worker key (`revhpo keys create --worker`) gives `is_worker`; an anonymous caller
    (`anonymous=True`, owner `local`) never has it.
    """

    owner: str
    is_worker: bool
    anonymous: bool = False


def hash_key(key: str) -> str:
    """The stored form of a key (hex SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _split(key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    parts = key[len(KEY_PREFIX) :].split("_", 1)
    if len(parts) != 2 or len(parts[0]) != 12:
        return None
    return parts[0]


def create_key(engine: Engine, owner: str, *, is_worker: bool = False) -> str:
    """Create and store (hashed) a new key for `owner`; returns the key (shown once).

    Raises:
        ValueError: an empty or over-long owner name.
    """
    if not owner or len(owner) > 64:
        raise ValueError(f"`owner` must be 1-64 characters. Received: owner={owner!r}")
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(24)}"
    with session_scope(engine) as s:
        s.add(ApiKey(prefix=prefix, key_hash=hash_key(key), owner=owner, is_worker=is_worker))
    return key


def key_prefix(key_or_prefix: str) -> str:
    """The public prefix of a key (``rhp_<prefix>_<secret>``), or the prefix itself."""
    if key_or_prefix.startswith(KEY_PREFIX):
        return key_or_prefix[len(KEY_PREFIX) :].split("_", 1)[0]
    return key_or_prefix


def list_keys(engine: Engine) -> list[dict]:
    """Every key's public facts (never a secret): prefix, owner, worker, created, revoked."""
    with session_scope(engine) as s:
        rows = s.scalars(select(ApiKey).order_by(ApiKey.id)).all()
        return [
            {
                "prefix": r.prefix,
                "owner": r.owner,
                "worker": bool(r.is_worker),
                "created_at": r.created_at,
                "revoked_at": r.revoked_at,
            }
            for r in rows
        ]


def revoke_key(engine: Engine, prefix: str) -> bool:
    """Revoke the key with `prefix` (or the key itself); returns whether one was found.

    API processes cache a verified key for up to 10 s, so a revocation made from another
    process takes effect within that time.
    """
    prefix = key_prefix(prefix)
    with session_scope(engine) as s:
        row = s.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
        if row is None:
            return False
        row.revoked_at = s.scalar(select(db_epoch()))
    _cache.clear()
    return True


class _TTLCache:
    """Verified keys for a few seconds, so a burst of requests costs one lookup."""

    def __init__(self, ttl: float = 10.0, size: int = 1024):
        self.ttl, self.size = ttl, size
        self._d: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        with self._lock:
            hit = self._d.get(digest)
            if hit and hit[0] > time.monotonic():
                return hit[1]
            return None

    def put(self, digest: str, p: Principal) -> None:
        with self._lock:
            if len(self._d) >= self.size:
                self._d.clear()
            self._d[digest] = (time.monotonic() + self.ttl, p)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


_cache = _TTLCache()


def authenticate(engine: Engine, key: str) -> Principal | None:
    """The principal of a presented key, or None if it is unknown, malformed or revoked."""
    prefix = _split(key)
    if prefix is None:
        return None
    digest = hash_key(key)
    cached = _cache.get(digest)
    if cached is not None:
        return cached
    with session_scope(engine, write=False) as s:
        row = s.scalars(
            select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        ).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        p = Principal(owner=row.owner, is_worker=row.is_worker)
    _cache.put(digest, p)
    return p
