"""Share trapped clients between MX hosts through Redis (``-redis URL``).

    mirror = RedisMirror("redis://127.0.0.1:6379/0", store, log=f.log)
    store.on_recorded = mirror.recorded     # our hits go out
    f.on_start(mirror.run)                  # their hits come in

Redis holds one hash per trapped client, ``<prefix>ip:<key>`` with fields
``exp`` (blocked until, epoch seconds), ``hits``, ``first``, ``last``,
``trap``, ``host``; the key's TTL is the expiry, so Redis forgets expired
traps by itself.  The sorted set ``<prefix>expiry`` (member: the client key,
score: its expiry) is the index a host reads at (re)connection - one
ZRANGE BYSCORE per 5,000 clients instead of a SCAN and a read per client.  A hit is written by one Lua script (the expiry only ever
grows, the hit counted, the change published) so that two MX hosts trapping
the same client at once agree.

How a host learns of another's traps: **pub/sub**.  Every write publishes
``t <key> <exp>`` (``d <key>`` for an admin's delete) on ``<prefix>events``;
every filter subscribes and puts the entry into its in-memory cache (and its
local SQLite, the fallback), so the next session from that client is refused
without asking Redis - the connect path never does network I/O.  Messages
sent while a host was cut off are lost, so on every (re)connection it reads
the whole index (the clients still blocked) and pushes the hits it recorded while
Redis was away.

Redis unreachable: sessions are decided from the local store as before, the
outage is logged once (and its end), and the connection is retried with
back-off (1 s doubling to 30 s).  Nothing waits for Redis but this task.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smtpd_filters.trapcache import cache_key
from smtpd_filters.trapstore import Trap, TrapStore, parse_key

__all__ = ["RECORD_SCRIPT", "RedisMirror", "RedisNames", "check_url", "record"]

#: KEYS[1] hash, KEYS[2] index; ARGV: exp, now, hits to add, trap, host, channel, key
RECORD_SCRIPT = """
local old = tonumber(redis.call('HGET', KEYS[1], 'exp') or '0')
local exp = tonumber(ARGV[1])
if exp > old then
  redis.call('HSET', KEYS[1], 'exp', ARGV[1])
  redis.call('EXPIREAT', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], exp, ARGV[7])
else
  exp = old
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'hits', ARGV[3])
  redis.call('HSET', KEYS[1], 'last', ARGV[2], 'trap', ARGV[4], 'host', ARGV[5])
end
redis.call('HSETNX', KEYS[1], 'first', ARGV[2])
redis.call('HSETNX', KEYS[1], 'hits', '0')
redis.call('PUBLISH', ARGV[6], 't ' .. ARGV[7] .. ' ' .. string.format('%d', exp))
return exp
"""


#: KEYS[1] index; ARGV: min score, offset, count.  One string "key exp key
#: exp ..." per batch: redis-py parses a reply element in ~10 us of pure
#: Python, so 10^5 elements would cost seconds at every (re)connection.
INDEX_SCRIPT = """
local r = redis.call('ZRANGE', KEYS[1], ARGV[1], '+inf', 'BYSCORE', 'LIMIT', ARGV[2], ARGV[3], 'WITHSCORES')
return {#r / 2, table.concat(r, ' ')}
"""
BATCH = 5000


def check_url(url: str) -> str:
    """A usable Redis URL (flag validation; nothing is connected)."""
    try:
        aioredis.from_url(url)
    except (ValueError, RedisError) as exc:
        raise ValueError(str(exc) or "not a Redis URL") from None
    return url


class RedisNames:
    """Key and channel names under one prefix."""

    def __init__(self, prefix: str = "spamtraps:", host: str = "") -> None:
        self.prefix, self.host, self.channel = prefix, host, prefix + "events"

        self.index = prefix + "expiry"

    def hkey(self, key: str) -> str:
        return f"{self.prefix}ip:{key}"


class RedisMirror(RedisNames):
    def __init__(
        self,
        url: str,
        store: TrapStore,
        *,
        prefix: str = "spamtraps:",
        log: Callable[[str], Any] = lambda msg: None,
        timeout: float = 2.0,
        retry_max: float = 30.0,
        host: str = "",
    ) -> None:
        super().__init__(prefix, host)
        self.url, self.store, self.log = url, store, log
        self.timeout, self.retry_max = timeout, retry_max
        self.connected = False
        #: hits not yet in Redis: key -> (trap, hits)
        self.pending: dict[str, tuple[Trap, int]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- from the store's worker thread ---------------------------------------

    def recorded(self, trap: Trap) -> None:
        """A hit the store wrote (any thread): send it to Redis soon."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._queue, trap)

    def _queue(self, trap: Trap) -> None:
        old = self.pending.get(trap.key)
        self.pending[trap.key] = (trap, (old[1] if old else 0) + 1)
        self._wake.set()

    # -- the background task ------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        delay = 1.0
        down_since: float | None = None
        while True:
            client = aioredis.from_url(
                self.url, decode_responses=True, socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout, health_check_interval=10,
            )
            try:
                synced = await self._connect(client)
                if down_since is not None:
                    self.log(f"redis {self.url}: reachable again after {time.monotonic() - down_since:.0f}s "
                             f"({synced} trapped clients read, {len(self.pending)} local hits to send)")
                else:
                    self.log(f"redis {self.url}: connected ({synced} trapped clients read)")
                self.connected, down_since, delay = True, None, 1.0
                await self._serve(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never give up: the local store decides meanwhile
                while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
                    exc = exc.exceptions[0]
                if down_since is None:
                    down_since = time.monotonic()
                    self.log(f"redis {self.url}: unreachable ({exc!r}); deciding from the local store, retrying")
            finally:
                self.connected = False
                try:
                    await client.aclose()
                except Exception:  # noqa: BLE001 - the connection is gone anyway
                    pass
            await asyncio.sleep(delay)
            delay = min(self.retry_max, delay * 2)

    async def _connect(self, client: Any) -> int:
        await client.ping()
        return await self.sync(client)

    async def sync(self, client: Any) -> int:
        """Every client Redis says is still blocked into the local store."""
        script = client.register_script(INDEX_SCRIPT)
        count, offset, now = 0, 0, int(time.time())
        while True:
            n, blob = await script(keys=[self.index], args=[now + 1, offset, BATCH])
            parts = blob.split(" ") if blob else []
            items = []
            for member, score in zip(parts[::2], parts[1::2]):
                try:
                    items.append((member if type(cache_key(member)) is int else parse_key(member), int(float(score))))
                except ValueError:
                    continue  # not ours (or damaged): never block on it
            self.store.merge_many(items)
            count += len(items)
            offset += int(n)
            if int(n) < BATCH:
                return count

    async def _serve(self, client: Any) -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        try:
            async with asyncio.TaskGroup() as tg:  # either failing ends both: reconnect
                tg.create_task(self._listen(pubsub))
                tg.create_task(self._write(client))
        finally:
            try:
                await pubsub.aclose()
            except Exception:  # noqa: BLE001
                pass

    async def _listen(self, pubsub: Any) -> None:
        while True:
            msg = await pubsub.get_message(timeout=1.0)
            if msg is None:
                continue
            self.apply(msg.get("data"))

    def apply(self, data: Any) -> None:
        """One pub/sub message into the store."""
        if not isinstance(data, str):
            return
        parts = data.split(" ")
        try:
            if parts[0] == "t" and len(parts) == 3:
                self.store.merge(parse_key(parts[1]), int(parts[2]))
            elif parts[0] == "d" and len(parts) == 2:
                self.store.forget(parse_key(parts[1]))
            else:
                raise ValueError("unknown message")
        except ValueError:
            self.log(f"redis: ignoring a bad message on {self.channel}: {data[:80]!r}")

    async def _write(self, client: Any) -> None:
        script = client.register_script(RECORD_SCRIPT)
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
            while self.pending:
                key, (trap, hits) = next(iter(self.pending.items()))
                await record(script, self, trap, hits)
                if self.pending.get(key, (None, 0))[0] is trap:
                    del self.pending[key]  # (a newer hit that came meanwhile stays)


async def record(script: Any, mirror: RedisNames, trap: Trap, hits: int) -> int:
    """Run the record script for one client: the expiry it has now."""
    return int(await script(
        keys=[mirror.hkey(trap.key), mirror.index],
        args=[trap.expires, trap.last, hits, trap.trap, trap.host or mirror.host, mirror.channel, trap.key],
    ))


async def _batches(it: Any, size: int):
    batch: list[str] = []
    async for item in it:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
