"""The trap store: SQLite record, in-memory cache, expiry, escalation."""

from __future__ import annotations

import ipaddress
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

import filterkit  # noqa: F401
from smtpd_filters.trapstore import Policy, Trap, TrapStore, apply_hit, cache_key, client_keys, parse_key, record_key


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = TrapStore(str(tmp_path / "traps.db"), Policy(expiry=3600), host="mx1", clock=clock, poll=0.05)
    yield s
    s.close()


def test_a_hit_blocks_at_once_and_is_written(store, clock):
    assert store.blocked_until(["192.0.2.1"]) is None
    until = store.hit("192.0.2.1", "trap@example.org")
    assert until == clock.now + 3600
    assert store.blocked_until(["192.0.2.1"]) == until  # before the writer ran
    store.flush()
    [t] = store.rows()
    assert (t.key, t.hits, t.first, t.last, t.expires, t.trap, t.host) == (
        "192.0.2.1", 1, clock.now, clock.now, until, "trap@example.org", "mx1")
    assert store.blocked_until(["192.0.2.2"]) is None


def test_expiry(store, clock):
    store.hit("192.0.2.1", "trap@example.org")
    clock.now += 3599
    assert store.blocked_until(["192.0.2.1"]) is not None
    clock.now += 1
    assert store.blocked_until(["192.0.2.1"]) is None


def test_hits_count_and_the_block_is_extended(store, clock):
    store.hit("192.0.2.1", "a@example.org")
    clock.now += 600
    store.hit("192.0.2.1", "b@example.org")
    store.flush()
    [t] = store.rows()
    assert t.hits == 2 and t.first == clock.now - 600 and t.last == clock.now and t.trap == "b@example.org"
    assert t.expires == clock.now + 3600


def test_the_record_survives_a_restart(tmp_path, clock):
    path = str(tmp_path / "traps.db")
    a = TrapStore(path, Policy(expiry=3600), clock=clock)
    a.hit("2001:db8::/64", "trap@example.org")
    a.close()  # pending writes are flushed
    b = TrapStore(path, Policy(expiry=3600), clock=clock)
    try:
        assert b.blocked_until(["2001:db8::/64"]) == clock.now + 3600
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        b.close()


def test_changes_by_another_writer_reach_the_cache(tmp_path, clock):
    """The admin CLI writes the same file; the filter's worker polls it."""
    path = str(tmp_path / "traps.db")
    filt = TrapStore(path, Policy(expiry=3600), clock=clock, poll=0.05)
    admin = TrapStore(path, Policy(expiry=3600), clock=clock, worker=False)
    try:
        filt.hit("192.0.2.1", "trap@example.org")
        filt.flush()
        admin.set_expiry("198.51.100.7", int(clock.now) + 60)
        admin._db.execute("UPDATE traps SET expires = 0, seq = seq + 100 WHERE key = '192.0.2.1'")
        wait_for(lambda: filt.blocked_until(["198.51.100.7"]) and not filt.blocked_until(["192.0.2.1"]))
    finally:
        filt.close()


def wait_for(cond, timeout=5.0):
    import time

    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def test_forget_and_purge(store, clock):
    store.hit("192.0.2.1", "t@example.org")
    store.hit("192.0.2.2", "t@example.org")
    store.forget("192.0.2.1")
    assert store.blocked_until(["192.0.2.1"]) is None
    store.flush()
    assert [t.key for t in store.rows()] == ["192.0.2.2"]
    assert len(store.rows(include_expired=True)) == 2  # the tombstone
    clock.now += 7200
    assert store.purge() == 2


def test_merge_from_another_host_never_shortens(store, clock):
    store.hit("192.0.2.1", "t@example.org")
    store.merge("192.0.2.1", int(clock.now) + 60)
    store.merge("192.0.2.9", int(clock.now) + 60)
    store.flush()
    assert store.blocked_until(["192.0.2.1"]) == clock.now + 3600
    rows = {t.key: t for t in store.rows()}
    assert rows["192.0.2.9"].hits == 0 and rows["192.0.2.9"].host == "remote"


def test_escalation_n_hits_within_t(tmp_path, clock):
    s = TrapStore(str(tmp_path / "t.db"), Policy(3600, escalate_hits=3, escalate_within=600, escalate_expiry=86400), clock=clock)
    try:
        for _ in range(2):
            s.hit("192.0.2.1", "t@example.org")
            clock.now += 100
        s.flush()
        assert s.blocked_until(["192.0.2.1"]) == clock.now - 100 + 3600
        s.hit("192.0.2.1", "t@example.org")  # third within 600 s
        s.flush()
        assert s.blocked_until(["192.0.2.1"]) == clock.now + 86400
    finally:
        s.close()


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=30), st.integers(0, 5), st.integers(1, 3000))
def test_apply_hit_properties(gaps, n, within):
    policy = Policy(expiry=100, escalate_hits=n, escalate_within=within, escalate_expiry=10_000)
    t: Trap | None = None
    now = 1_000_000
    expires_seen = []
    for gap in gaps:
        now += gap
        t = apply_hit(t, "k", now, "trap", "h", policy)
        expires_seen.append(t.expires)
        assert t.expires >= now + 100  # a hit always blocks at least -expire
        assert 1 <= t.window_hits <= t.hits and t.window_start <= now
    assert t is not None and t.hits == len(gaps)
    assert expires_seen == sorted(expires_seen)  # a block is never shortened by a hit
    if n == 0:
        assert t.expires == now + 100  # no escalation: the last hit decides
    elif t.window_hits >= n:
        assert t.expires == now + 10_000


def test_keys_v4_v6_and_prefixes():
    v4, v6 = ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8:1:2:3::9")
    assert record_key(v4, 64) == "192.0.2.7"
    assert record_key(v6) == "2001:db8:1:2:3::9"
    assert record_key(v6, 64) == "2001:db8:1:2::/64"
    assert record_key(v6, 48) == "2001:db8:1::/48"
    assert client_keys(v4) == (int(v4),)  # the cache holds IPv4 as int
    assert cache_key("192.0.2.7") == int(v4) and cache_key("2001:db8::/64") == "2001:db8::/64"
    assert client_keys(v6) == ("2001:db8:1:2:3::9", "2001:db8:1:2::/64")
    assert client_keys(v6, 48)[-1] == "2001:db8:1::/48"
    assert parse_key("2001:db8:1:2:3::9/64") == "2001:db8:1:2::/64"
    assert parse_key("192.0.2.7/32") == "192.0.2.7"
    with pytest.raises(ValueError):
        parse_key("mx.example.org")
