"""API tokens: only their SHA-256 is stored; the token itself is shown once, at creation."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime

import msgspec

from sfd.domain.clock import to_iso
from sfd.domain.tokens import TOKEN_PATTERN, TOKEN_PREFIX
from sfd.storage.database import StorageConflict, StorageError, Store, from_row

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
#: Compared against when no token has the digest, so a miss costs what a hit costs.
_NO_DIGEST = "0" * 64


class TokenError(StorageError):
    """A token cannot be created or revoked; the message says why."""


class TokenInfo(msgspec.Struct, kw_only=True, frozen=True):
    """A token as listed: never the token itself."""

    id: int
    name: str
    store_id: int
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenIdentity(msgspec.Struct, kw_only=True, frozen=True):
    """Who a valid token speaks for."""

    id: int
    name: str
    store_id: int


def hash_token(token: str) -> str:
    """The stored form of a token. Tokens carry 256 random bits, so a plain hash suffices."""
    # surrogatepass: whatever a client sent (a lone surrogate too) hashes, and never matches.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore(Store):
    """Create, list, revoke and verify API tokens."""

    async def create(self, store_id: int, name: str | None, now: datetime) -> tuple[str, str]:
        """Make a token for a store; return (name, token). The token is never stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        name = name or f"token-{secrets.token_hex(4)}"
        if not _NAME.fullmatch(name):
            raise TokenError(
                f"token name {name!r}: expected 1-64 letters, digits, '.', '_', '@' or '-'"
            )
        async with self.db.write() as tx:
            if await tx.fetchrow("SELECT 1 FROM stores WHERE id = $1", (store_id,)) is None:
                raise TokenError(
                    f"no store with id {store_id}; stores come from [[stores]] "
                    "in the config, and `sfd run` or `sfd db migrate` records them"
                )
            try:
                await tx.execute(
                    "INSERT INTO api_tokens (name, store_id, token_hash, created_at) "
                    "VALUES ($1, $2, $3, $4)",
                    (name, store_id, hash_token(token), to_iso(now)),
                )
            except StorageConflict:
                raise TokenError(
                    f"a token named {name!r} already exists; revoke it first or choose another name"
                ) from None
        return name, token

    async def all(self, *, include_revoked: bool = False) -> list[TokenInfo]:
        """Every token, newest last."""
        rows = await self.db.fetch(
            "SELECT * FROM api_tokens WHERE $1 OR revoked_at IS NULL ORDER BY id",
            (include_revoked,),
        )
        return [from_row(TokenInfo, r) for r in rows]

    async def is_active(self, token_id: int) -> bool:
        """Whether the token with this id still works (not revoked)."""
        row = await self.db.fetchrow(
            "SELECT 1 FROM api_tokens WHERE id = $1 AND revoked_at IS NULL", (token_id,)
        )
        return row is not None

    async def revoke(self, name: str, now: datetime) -> None:
        """Revoke the active token with this name; it stops working at once."""
        changed = await self.db.execute(
            "UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
            (to_iso(now), name),
        )
        if not changed:
            raise TokenError(f"no active token named {name!r}")

    async def verify(self, token: str, *, name: str | None = None) -> TokenIdentity | None:
        """Who the token speaks for, or None.

        Every token costs the same work: one SHA-256, one lookup of the digest, one constant-time
        comparison, whether it is malformed, unknown, revoked or one character off a real one.
        The lookup is by digest, so how close a guess is to a real token changes nothing.
        """
        well_formed = TOKEN_PATTERN.fullmatch(token) is not None
        digest = hash_token(token)
        row = await self.db.fetchrow(
            "SELECT id, name, store_id, token_hash FROM api_tokens "
            "WHERE token_hash = $1 AND revoked_at IS NULL",
            (digest,),
        )
        stored = row["token_hash"] if row is not None else _NO_DIGEST
        matches = hmac.compare_digest(stored, digest)
        if row is None or not matches or not well_formed:
            return None
        if name is not None and not hmac.compare_digest(row["name"], name):
            return None
        return TokenIdentity(id=row["id"], name=row["name"], store_id=row["store_id"])
