"""Sessions of the order page, kept in the database: every instance behind a load balancer
knows them (no sticky sessions needed), and a restart signs nobody out.

The cookie carries a random session id; the database holds only its SHA-256, as for API
tokens. The CSRF token lives in the session row, so a form rendered by one instance is
accepted by another.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sfd.domain.clock import Clock, utcnow
from sfd.storage.sessions import PageSession, SessionStore
from sfd.storage.tokens import TokenIdentity

#: A session ends this long after sign-in, used or not.
LIFETIME = 12 * 3600.0
#: At most this many sessions at once; the oldest goes first.
MAX_SESSIONS = 1000


@dataclass(frozen=True)
class Session:
    """A signed-in person: which token they pasted (by id), its store, and their CSRF token."""

    id: str
    token_id: int
    token_name: str
    store_id: int
    csrf: str
    expires_at: datetime

    def csrf_matches(self, sent: str | None) -> bool:
        """Whether a form carried this session's CSRF token (constant-time comparison)."""
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


class Sessions:
    """Random session id → session, stored hashed in the database."""

    def __init__(
        self, store: SessionStore, lifetime: float = LIFETIME, *, clock: Clock = utcnow
    ) -> None:
        self.store = store
        self.lifetime = lifetime
        self.clock = clock

    async def create(self, identity: TokenIdentity) -> Session:
        """A new session for a verified token."""
        now = self.clock()
        session = Session(
            id=secrets.token_urlsafe(32),
            token_id=identity.id,
            token_name=identity.name,
            store_id=identity.store_id,
            csrf=secrets.token_urlsafe(32),
            expires_at=now + timedelta(seconds=self.lifetime),
        )
        stored = PageSession(
            token_id=session.token_id,
            token_name=session.token_name,
            store_id=session.store_id,
            csrf=session.csrf,
            expires_at=session.expires_at,
        )
        await self.store.create(session.id, stored, now, MAX_SESSIONS)
        return session

    async def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None."""
        if not session_id:
            return None
        found = await self.store.get(session_id, self.clock())
        if found is None:
            return None
        return Session(
            id=session_id,
            token_id=found.token_id,
            token_name=found.token_name,
            store_id=found.store_id,
            csrf=found.csrf,
            expires_at=found.expires_at,
        )

    async def drop(self, session_id: str) -> None:
        """End a session (sign-out, or its token was revoked)."""
        await self.store.drop(session_id)
