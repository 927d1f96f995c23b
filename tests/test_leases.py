"""Leases and page sessions in the database, on SQLite and PostgreSQL: one holder at a time,
lapsed leases taken over with the channel's left-over claims, sessions shared by instances."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from sfd.daemon.page.sessions import Sessions
from sfd.storage import Storage, channel_lease
from sfd.storage.leases import NEVER
from sfd.storage.tokens import TokenIdentity
from tests.conftest import NOW

pytestmark = pytest.mark.both_backends

TTL = timedelta(seconds=30)


async def test_a_lease_has_one_holder_until_it_lapses_or_is_given_back(
    storage: Storage, database_url: str
) -> None:
    leases = storage.leases
    if leases.exclusive:
        pytest.skip("SQLite has one instance per file: see the sqlite_only tests")
    names = [channel_lease(1), channel_lease(2), "shop:woo"]
    assert await leases.acquire("a", names, NOW, TTL, limit=2) == names[:2]
    # b finds a's two leases held, and takes only the free one.
    assert await leases.acquire("b", names, NOW, TTL, limit=3) == ["shop:woo"]
    assert {n: lease.holder for n, lease in (await leases.all()).items()} == {
        names[0]: "a",
        names[1]: "a",
        "shop:woo": "b",
    }
    assert await leases.renew("a", names, NOW, TTL) == set(names[:2])
    await leases.release("b", ["shop:woo"])
    assert await leases.acquire("a", ["shop:woo"], NOW, TTL, limit=1) == ["shop:woo"]

    later = NOW + TTL + timedelta(seconds=1)
    assert await leases.acquire("b", [names[0]], later, TTL, limit=1) == [names[0]]
    assert await leases.renew("a", names, later, TTL) == {names[1], "shop:woo"}


@pytest.mark.sqlite_only
async def test_sqlite_leases_never_lapse(storage: Storage) -> None:
    assert storage.leases.exclusive
    assert await storage.leases.live_instances(NOW, TTL) == 1
    await storage.leases.acquire("only", [channel_lease(1)], NOW, TTL, limit=1)
    lease = (await storage.leases.all())[channel_lease(1)]
    assert lease.expires_at.isoformat().startswith(NEVER[:10])


async def test_live_instances_count_heartbeats_within_the_ttl(storage: Storage) -> None:
    leases = storage.leases
    await leases.heartbeat("a", NOW)
    await leases.heartbeat("b", NOW - TTL - timedelta(seconds=1))  # silent for too long
    await leases.heartbeat("c", NOW)
    await leases.stopped("c", NOW)
    # Only a is alive: b was silent for too long, c stopped (SQLite counts one anyway).
    assert await leases.live_instances(NOW, TTL) == 1
    await leases.heartbeat("b", NOW)
    assert await leases.live_instances(NOW, TTL) == (1 if leases.exclusive else 2)


async def test_a_page_session_is_known_to_every_instance_and_stored_hashed(
    database_url: str, storage: Storage
) -> None:
    name, _token = await storage.tokens.create(1, "person", NOW)
    [info] = [t for t in await storage.tokens.all() if t.name == name]
    identity = TokenIdentity(id=info.id, name=name, store_id=1)
    first = Sessions(storage.sessions)
    session = await first.create(identity)
    if storage.scheme == "postgres":
        # Another instance on the same database: no sticky sessions needed.
        other_storage = await Storage.open(database_url)
    else:
        other_storage = storage
    try:
        second = Sessions(other_storage.sessions)
        found = await second.get(session.id)
        assert found is not None
        assert (found.token_id, found.store_id, found.csrf) == (info.id, 1, session.csrf)
        assert found.csrf_matches(session.csrf)
        stored = await storage.db.fetch("SELECT id_hash FROM page_sessions")
        assert [r["id_hash"] for r in stored] != [session.id]
        assert all(session.id not in str(dict(r)) for r in stored)
        await second.drop(session.id)
        assert await first.get(session.id) is None
        assert await first.get("not-a-session") is None
    finally:
        if other_storage is not storage:
            await other_storage.close()


async def test_two_instances_racing_for_the_same_leases_share_them(
    database_url: str, storage: Storage
) -> None:
    if storage.scheme != "postgres":
        pytest.skip("several instances share a database on PostgreSQL only")
    other = await Storage.open(database_url)
    try:
        names = [channel_lease(i) for i in range(1, 41)]
        got_a, got_b = await asyncio.gather(
            storage.leases.acquire("a", names, NOW, TTL, limit=40),
            other.leases.acquire("b", list(reversed(names)), NOW, TTL, limit=40),
        )
        assert not set(got_a) & set(got_b)
        assert set(got_a) | set(got_b) == set(names)
    finally:
        await other.close()


@pytest.mark.sqlite_only
async def test_a_restarted_sqlite_instance_takes_the_leases_a_killed_one_left(
    storage: Storage,
) -> None:
    names = [channel_lease(1), channel_lease(2)]
    assert await storage.leases.acquire("killed", names, NOW, TTL, limit=2) == names
    # The run lock proves the old holder is gone: its never-lapsing leases are taken at once.
    assert await storage.leases.acquire("restarted", names, NOW, TTL, limit=2) == names
    assert {lease.holder for lease in (await storage.leases.all()).values()} == {"restarted"}
