"""Time, always in UTC, always written in ISO 8601 with its offset."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def to_iso(moment: datetime) -> str:
    """Write a time as fixed-width UTC ISO 8601, so stored values sort as text."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: a time must carry its offset")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def from_iso(text: str) -> datetime:
    """Read a stored or received ISO 8601 time; a time without offset is taken as UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def to_api(moment: datetime) -> str:
    """Write a time as the API shows it: seconds, with its offset."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")
