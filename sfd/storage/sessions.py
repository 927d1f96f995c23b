"""The order page's sessions, in the database so every instance behind a load balancer knows
them. Only the SHA-256 of a session id is stored, as for API tokens."""

from __future__ import annotations

from datetime import datetime

import msgspec

from sfd.domain.clock import to_iso
from sfd.storage.database import Store, from_row
from sfd.storage.tokens import hash_token


class PageSession(msgspec.Struct, kw_only=True, frozen=True):
    """A signed-in person: which token they pasted (by id), its store, their CSRF token."""

    token_id: int
    token_name: str
    store_id: int
    csrf: str
    expires_at: datetime


class SessionStore(Store):
    """Create, find and end page sessions by their (secret) id."""

    async def create(self, session_id: str, session: PageSession, now: datetime, keep: int) -> None:
        """Store a new session; lapsed ones go, and beyond `keep` live ones the oldest go."""
        async with self.db.write() as tx:
            await tx.execute("DELETE FROM page_sessions WHERE expires_at <= $1", (to_iso(now),))
            # SQLite needs a LIMIT before OFFSET; PostgreSQL refuses LIMIT -1.
            limit = "LIMIT -1 " if self.db.scheme == "sqlite" else ""
            await tx.execute(
                "DELETE FROM page_sessions WHERE id_hash IN (SELECT id_hash FROM page_sessions "
                f"ORDER BY created_at DESC, id_hash {limit}OFFSET $1)",
                (max(0, keep - 1),),
            )
            await tx.execute(
                "INSERT INTO page_sessions (id_hash, token_id, token_name, store_id, csrf, "
                "created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                (
                    hash_token(session_id),
                    session.token_id,
                    session.token_name,
                    session.store_id,
                    session.csrf,
                    to_iso(now),
                    to_iso(session.expires_at),
                ),
            )

    async def get(self, session_id: str, now: datetime) -> PageSession | None:
        """The live session with this id, or None."""
        row = await self.db.fetchrow(
            "SELECT * FROM page_sessions WHERE id_hash = $1 AND expires_at > $2",
            (hash_token(session_id), to_iso(now)),
        )
        return None if row is None else from_row(PageSession, row)

    async def drop(self, session_id: str) -> None:
        """End a session."""
        await self.db.execute(
            "DELETE FROM page_sessions WHERE id_hash = $1", (hash_token(session_id),)
        )

    async def count(self, now: datetime) -> int:
        """Live sessions."""
        return int(
            await self.db.fetchval(
                "SELECT count(*) FROM page_sessions WHERE expires_at > $1", (to_iso(now),)
            )
        )
