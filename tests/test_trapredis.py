"""Sharing trapped clients through a real redis-server (loopback, free port):
two stores, each with its mirror, as two MX hosts."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

import filterkit  # noqa: F401
from rediskit import RedisProcess, free_port, redis_or_skip
from smtpd_filters.trapredis import RECORD_SCRIPT, RedisMirror
from smtpd_filters.trapstore import Policy, TrapStore


@pytest.fixture(scope="module")
def server():
    redis_or_skip()
    with RedisProcess() as r:
        yield r


@pytest.fixture
def prefix(request):
    return f"t{abs(hash(request.node.name)) % 10**8}:"


class Host:
    def __init__(self, tmp_path, name, url, prefix):
        self.log: list[str] = []
        self.store = TrapStore(str(tmp_path / f"{name}.db"), Policy(expiry=3600), host=name, poll=0.05)
        self.mirror = RedisMirror(url, self.store, prefix=prefix, log=self.log.append, host=name, timeout=0.5, retry_max=0.5)
        self.store.on_recorded = self.mirror.recorded

    def close(self):
        self.store.close()


async def until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.02)


def run_hosts(tmp_path, url, prefix, scenario, n=2):
    hosts = [Host(tmp_path, f"mx{i + 1}", url, prefix) for i in range(n)]

    async def main():
        tasks = [asyncio.create_task(h.mirror.run()) for h in hosts]
        try:
            await scenario(*hosts)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        for h in hosts:
            h.close()
    return hosts


def test_trapped_on_mx1_is_known_on_mx2(tmp_path, server, prefix):
    async def scenario(mx1, mx2):
        await until(lambda: mx1.mirror.connected and mx2.mirror.connected)
        until_ = mx1.store.hit("192.0.2.7", "trap@example.org")
        await until(lambda: mx2.store.blocked_until(["192.0.2.7"]) is not None)
        assert mx2.store.blocked_until(["192.0.2.7"]) == until_
        assert mx2.store.blocked_until(["192.0.2.8"]) is None

    mx1, mx2 = run_hosts(tmp_path, server.url, prefix, scenario)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    h = r.hgetall(f"{prefix}ip:192.0.2.7")
    assert h["hits"] == "1" and h["host"] == "mx1" and h["trap"] == "trap@example.org"
    assert 3500 < r.ttl(f"{prefix}ip:192.0.2.7") <= 3600
    rows = {t.key: t for t in TrapStore(str(tmp_path / "mx2.db"), worker=False).rows()}
    assert rows["192.0.2.7"].host == "remote"  # mirrored into mx2's own SQLite: its fallback


def test_a_new_host_reads_what_is_already_trapped(tmp_path, server, prefix):
    r = redis.Redis.from_url(server.url, decode_responses=True)
    exp = int(time.time()) + 600
    r.hset(f"{prefix}ip:2001:db8::/64", mapping={"exp": exp, "hits": 3})
    r.expireat(f"{prefix}ip:2001:db8::/64", exp)
    r.zadd(f"{prefix}expiry", {"2001:db8::/64": exp, "not-an-address": exp, "192.0.2.99": exp - 700})

    async def scenario(mx1):
        await until(lambda: mx1.store.blocked_until(["2001:db8::/64"]) == exp)

    (mx1,) = run_hosts(tmp_path, server.url, prefix, scenario, n=1)
    assert any("connected (1 trapped clients read)" in line for line in mx1.log)


def test_redis_down_at_start_then_up_the_local_hits_are_sent(tmp_path, prefix):
    redis_or_skip()
    late = RedisProcess(free_port())

    async def scenario(mx1, mx2):
        await until(lambda: any("unreachable" in line for line in mx1.log))
        mx1.store.hit("192.0.2.9", "trap@example.org")  # decided locally meanwhile
        assert mx1.store.blocked_until(["192.0.2.9"])
        await asyncio.to_thread(late.start)
        await until(lambda: mx2.store.blocked_until(["192.0.2.9"]) is not None)

    try:
        mx1, mx2 = run_hosts(tmp_path, late.url, prefix, scenario)
    finally:
        late.stop()
    assert sum("unreachable" in line for line in mx1.log) == 1  # logged once per outage
    assert any("reachable again" in line and "1 local hits to send" in line for line in mx1.log)


def test_redis_killed_mid_run_the_store_goes_on_and_resyncs(tmp_path, prefix):
    redis_or_skip()
    srv = RedisProcess().start()

    async def scenario(mx1, mx2):
        await until(lambda: mx1.mirror.connected and mx2.mirror.connected)
        srv.stop()
        await until(lambda: not mx1.mirror.connected and not mx2.mirror.connected)
        mx1.store.hit("192.0.2.10", "trap@example.org")
        assert mx1.store.blocked_until(["192.0.2.10"])  # the local store decides
        assert mx2.store.blocked_until(["192.0.2.10"]) is None
        await asyncio.to_thread(srv.start)  # empty: no persistence
        await until(lambda: mx2.store.blocked_until(["192.0.2.10"]) is not None)

    try:
        run_hosts(tmp_path, srv.url, prefix, scenario)
    finally:
        srv.stop()


def test_an_admin_delete_reaches_every_host(tmp_path, server, prefix):
    async def scenario(mx1, mx2):
        await until(lambda: mx1.mirror.connected and mx2.mirror.connected)
        mx1.store.hit("192.0.2.11", "trap@example.org")
        await until(lambda: mx2.store.blocked_until(["192.0.2.11"]) is not None)
        r = redis.Redis.from_url(server.url, decode_responses=True)
        r.delete(f"{prefix}ip:192.0.2.11")
        r.zrem(f"{prefix}expiry", "192.0.2.11")
        r.publish(f"{prefix}events", "d 192.0.2.11")
        await until(lambda: mx1.store.blocked_until(["192.0.2.11"]) is None and mx2.store.blocked_until(["192.0.2.11"]) is None)
        mx2.mirror.apply("t not-a-number")  # garbage on the channel is logged, not fatal
        assert mx2.log[-1].startswith("redis: ignoring a bad message")

    run_hosts(tmp_path, server.url, prefix, scenario)


def test_the_record_script_never_shortens_and_counts_hits(server, prefix):
    r = redis.Redis.from_url(server.url, decode_responses=True)
    script = r.register_script(RECORD_SCRIPT)
    key, chan, index = f"{prefix}ip:192.0.2.1", f"{prefix}events", f"{prefix}expiry"
    now = int(time.time())
    p = r.pubsub(ignore_subscribe_messages=True)
    p.subscribe(chan)
    assert int(script(keys=[key, index], args=[now + 1000, now, 1, "a@x", "mx1", chan, "192.0.2.1"])) == now + 1000
    assert int(script(keys=[key, index], args=[now + 10, now + 5, 1, "b@x", "mx2", chan, "192.0.2.1"])) == now + 1000
    assert int(script(keys=[key, index], args=[now + 5000, now + 6, 0, "", "admin", chan, "192.0.2.1"])) == now + 5000
    h = r.hgetall(key)
    assert h == {"exp": str(now + 5000), "hits": "2", "first": str(now), "last": str(now + 5), "trap": "b@x", "host": "mx2"}
    assert 4990 < r.ttl(key) <= 5000
    assert r.zrange(index, 0, -1, withscores=True) == [("192.0.2.1", now + 5000)]
    msgs = []
    end = time.monotonic() + 2
    while len(msgs) < 3 and time.monotonic() < end:
        m = p.get_message(timeout=0.2)
        if m:
            msgs.append(m["data"])
    assert msgs == [f"t 192.0.2.1 {now + 1000}", f"t 192.0.2.1 {now + 1000}", f"t 192.0.2.1 {now + 5000}"]
    p.close()
