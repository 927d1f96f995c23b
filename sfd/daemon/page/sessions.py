"""Sessions of the order page, kept in the daemon's memory: a restart signs everyone out."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

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
    expires_at: float

    def csrf_matches(self, sent: str | None) -> bool:
        """Whether a form carried this session's CSRF token (constant-time comparison)."""
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


class Sessions:
    """Random session id → session. Monotonic time, so a clock change does not end them."""

    def __init__(
        self, lifetime: float = LIFETIME, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.lifetime = lifetime
        self.monotonic = monotonic
        self._by_id: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, identity: TokenIdentity) -> Session:
        """A new session for a verified token."""
        now = self.monotonic()
        for sid in [s.id for s in self._by_id.values() if s.expires_at <= now]:
            del self._by_id[sid]
        while len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[next(iter(self._by_id))]  # dicts keep insertion order: the oldest
        session = Session(
            id=secrets.token_urlsafe(32),
            token_id=identity.id,
            token_name=identity.name,
            store_id=identity.store_id,
            csrf=secrets.token_urlsafe(32),
            expires_at=now + self.lifetime,
        )
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self.monotonic():
            del self._by_id[session_id]
            return None
        return session

    def drop(self, session_id: str) -> None:
        """End a session (sign-out, or its token was revoked)."""
        self._by_id.pop(session_id, None)
