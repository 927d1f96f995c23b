"""The HTTP plumbing every connector shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from sfd.connectors.http import MAX_RETRY_AFTER, parse_retry_after


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 2.5 ", 2.5),
        ("-5", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_in_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(minutes=10), usegmt=True)
    wait = parse_retry_after(later)
    assert wait is not None and 595 <= wait <= 600


@pytest.mark.parametrize("header", ["864000", "1e12"])
def test_a_retry_after_of_days_waits_an_hour_at_most(header: str) -> None:
    assert parse_retry_after(header) == MAX_RETRY_AFTER == 3600.0
    far = format_datetime(datetime.now(UTC) + timedelta(days=30), usegmt=True)
    assert parse_retry_after(far) == MAX_RETRY_AFTER
