"""Where py-filter-spamtraps keeps trapped client addresses.

    store = TrapStore("/var/lib/spamtraps/traps.db", Policy(expiry=86400))
    store.blocked_until(["192.0.2.7"])       # connect: one dict probe, no I/O
    store.hit("192.0.2.7", "trap@example.org")  # rcpt-to: cache now, SQLite soon
    store.close()                            # at exit: pending writes are flushed

Data flows one way: the SQLite file is the record (first/last seen, hits,
expiry), the in-memory ``cache`` (key -> expiry, epoch seconds) is what
sessions read.  One worker thread owns the SQLite connection: it takes hits
from a queue and writes them in batches (one transaction per batch, WAL), so
a write never holds up a session; it computes the expiry (escalation needs the
old row) and puts it in the cache.  Every ``poll`` seconds it reads the rows
changed since last time (``seq``, a per-row change counter) so that entries
added or deleted by the admin CLI (``py-spamtraps``) or a second filter
process reach the cache (:mod:`smtpd_filters.trapcache`: compact, and safe
to share between the two threads).

A key is the client's address as text, or for IPv6 with ``v6prefix`` its
network (``2001:db8:1:2::/64``).  Deleting writes a tombstone (expiry 0) so
the change reaches every reader; ``purge()`` removes expired rows.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from smtpd_filters.trapcache import TrapCache, cache_key

__all__ = ["Policy", "Trap", "TrapStore", "apply_hit", "cache_key", "client_keys", "parse_key", "record_key"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS traps (
    key TEXT PRIMARY KEY,       -- client address, or IPv6 network
    first INTEGER NOT NULL,     -- first trap hit (epoch seconds)
    last INTEGER NOT NULL,      -- last trap hit
    hits INTEGER NOT NULL,      -- trap hits in all
    expires INTEGER NOT NULL,   -- blocked until (0: deleted)
    window_start INTEGER NOT NULL,  -- escalation window: its first hit
    window_hits INTEGER NOT NULL,   -- and the hits in it
    trap TEXT NOT NULL,         -- the last trap address hit (never shown to clients)
    host TEXT NOT NULL,         -- the host that recorded it
    seq INTEGER NOT NULL        -- change counter: readers poll seq > last seen
);
CREATE INDEX IF NOT EXISTS traps_seq ON traps(seq);
"""


@dataclass(frozen=True)
class Policy:
    """How long a hit blocks: ``expiry`` seconds; with ``escalate_hits`` > 0,
    that many hits within ``escalate_within`` seconds block for
    ``escalate_expiry`` seconds."""

    expiry: int = 86400
    escalate_hits: int = 0
    escalate_within: int = 3600
    escalate_expiry: int = 7 * 86400


@dataclass(slots=True)
class Trap:
    key: str
    first: int
    last: int
    hits: int
    expires: int
    window_start: int
    window_hits: int
    trap: str = ""
    host: str = ""

    FIELDS = ("key", "first", "last", "hits", "expires", "window_start", "window_hits", "trap", "host")

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.FIELDS)


def apply_hit(old: Trap | None, key: str, now: int, trap: str, host: str, policy: Policy) -> Trap:
    """The record after one more trap hit at ``now`` (a pure function)."""
    if old is None or old.expires == 0:
        t = Trap(key, now, now, 0, 0, now, 0, trap, host)
        if old is not None:  # a deleted entry comes back, keeping its history
            t.first, t.hits = old.first, old.hits
    else:
        t = Trap(*old.row())  # type: ignore[arg-type]
    t.hits += 1
    t.last, t.trap, t.host = now, trap, host
    if now - t.window_start > policy.escalate_within or t.window_hits == 0:
        t.window_start, t.window_hits = now, 0
    t.window_hits += 1
    until = now + policy.expiry
    if policy.escalate_hits > 0 and t.window_hits >= policy.escalate_hits:
        until = now + policy.escalate_expiry
    t.expires = max(t.expires, until)
    return t


def record_key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, v6prefix: int = 128) -> str:
    """The key a hit from ``ip`` is recorded under."""
    if ip.version == 6 and v6prefix < 128:
        return str(ipaddress.IPv6Network(f"{ip}/{v6prefix}", strict=False))
    return str(ip)


def client_keys(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, v6prefix: int = 128) -> tuple[int | str, ...]:
    """The cache keys that block ``ip`` (see :func:`cache_key`): its address,
    and for IPv6 its network (an entry for the /64 blocks every address in
    it, whatever the flag)."""
    if ip.version == 4:
        return (int(ip),)
    keys = [str(ip), str(ipaddress.IPv6Network(f"{ip}/64", strict=False))]
    if v6prefix not in (64, 128):
        keys.append(record_key(ip, v6prefix))
    return tuple(keys)


def parse_key(text: str) -> str:
    """An address or network from the admin CLI, as a key (ValueError if bad)."""
    t = text.strip()
    if "/" in t:
        net = ipaddress.ip_network(t, strict=False)
        if net.prefixlen == net.max_prefixlen:
            return str(net.network_address)
        return str(net)
    return str(ipaddress.ip_address(t))


_STOP = object()


class TrapStore:
    """The SQLite record plus the in-memory cache sessions read."""

    def __init__(
        self,
        path: str,
        policy: Policy = Policy(),
        *,
        host: str = "",
        clock: Callable[[], float] = time.time,
        log: Callable[[str], Any] = lambda msg: None,
        poll: float = 2.0,
        on_recorded: Callable[[Trap], Any] | None = None,
        worker: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.policy = policy
        self.host = host
        self.clock = clock
        self.log = log
        self.poll = poll
        #: called in the worker thread with each written hit (the Redis mirror)
        self.on_recorded = on_recorded
        #: cache_key(key) -> blocked until (epoch seconds)
        self.cache = TrapCache()
        self._seq = 0
        self._pruned = time.monotonic()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._db = self._connect()  # created here, then used only by the worker thread
        self._load()
        self._thread: threading.Thread | None = None
        if worker:  # the admin CLI writes synchronously, without one
            self._thread = threading.Thread(target=self._worker, name="trapstore", daemon=True)
            self._thread.start()

    # -- reading (any thread; sessions call it on the event loop) ----------

    def blocked_until(self, keys: Sequence[int | str], now: float | None = None) -> int | None:
        """The latest expiry of ``keys`` (:func:`client_keys`, or text keys)
        still in the future, or None."""
        if now is None:
            now = self.clock()
        cache = self.cache
        found = None
        for key in keys:
            exp = cache.get(key if type(key) is int else cache_key(key))
            if exp is not None and exp > now and (found is None or exp > found):
                found = exp
        return found

    # -- writing -----------------------------------------------------------

    def hit(self, key: str, trap: str, now: float | None = None) -> int:
        """Record a trap hit: blocked at once (the cache), written soon."""
        t = int(self.clock() if now is None else now)
        provisional = t + self.policy.expiry
        self._raise(key, provisional)
        self._queue.put(("hit", key, t, trap))
        return provisional

    def merge(self, key: str, expires: int) -> None:
        """A trap learnt from elsewhere (another MX via Redis): blocked until
        ``expires`` at least; mirrored into SQLite (no hit counted)."""
        self.merge_many([(key, int(expires))])

    def merge_many(self, items: Sequence[tuple[str, int]]) -> int:
        """Several at once (a resync); only what lengthens a block is
        queued for SQLite, as one operation.  Returns how many were new."""
        cache, news = self.cache, []
        for key, expires in items:
            ck = cache_key(key)
            if (cache.get(ck) or 0) < expires and cache.raise_to(ck, expires):  # the lock only for news
                news.append((key, expires))
        if news:
            self._queue.put(("merge", news))
        return len(news)

    def forget(self, key: str) -> None:
        """Unblock ``key`` (tombstone in SQLite)."""
        self.cache.pop(cache_key(key))
        self._queue.put(("forget", key))

    def _raise(self, key: str, expires: int) -> None:
        self.cache.raise_to(cache_key(key), expires)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written."""
        done = threading.Event()
        self._queue.put(("sync", done))
        if self._thread is None:
            self._drain(block=False)
        elif not done.wait(timeout):
            raise TimeoutError("trap store writer did not catch up")

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending, stop the worker (called at exit)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        self._thread = None

    # -- the worker --------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-512")  # KiB: rows are read by key, the cache holds what sessions need
        db.executescript(SCHEMA)
        return db

    def _load(self) -> None:
        now = int(self.clock())
        cur = self._db.execute("SELECT key, expires FROM traps WHERE expires > ?", (now,))
        self.cache = TrapCache.build(cur)
        self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM traps").fetchone()[0]

    def _worker(self) -> None:
        last_poll = time.monotonic()
        while True:
            try:
                stop = self._drain(block=True, timeout=self.poll)
                if time.monotonic() - last_poll >= self.poll:
                    self._refresh()
                    last_poll = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop the filter
                self.log(f"trap store error: {exc!r}")
                stop = False
                time.sleep(0.5)
            if stop:
                return

    def _drain(self, block: bool, timeout: float | None = None) -> bool:
        """Write one batch of queued operations; True when told to stop."""
        ops: list[Any] = []
        try:
            ops.append(self._queue.get(block=block, timeout=timeout))
            while len(ops) < 1000:
                ops.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        if not ops:
            return False
        stop = False
        events: list[threading.Event] = []
        recorded: list[Trap] = []
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                if op is _STOP:
                    stop = True
                elif op[0] == "sync":
                    events.append(op[1])
                elif op[0] == "hit":
                    _, key, now, trap = op
                    t = apply_hit(self._row(key), key, now, trap, self.host, self.policy)
                    self._write(t)
                    recorded.append(t)
                elif op[0] == "merge":
                    for key, expires in op[1]:
                        old = self._row(key)
                        if old is None:
                            now = int(self.clock())
                            self._write(Trap(key, now, now, 0, expires, now, 0, "", "remote"))
                        elif old.expires < expires:
                            old.expires = expires
                            self._write(old)
                elif op[0] == "forget":
                    old = self._row(op[1])
                    if old is not None and old.expires:
                        old.expires = 0
                        self._write(old)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            for e in events:
                e.set()
        for t in recorded:
            self._raise(t.key, t.expires)  # escalation lengthens the provisional block
            if self.on_recorded is not None:
                self.on_recorded(t)
        return stop

    def _row(self, key: str) -> Trap | None:
        r = self._db.execute(f"SELECT {', '.join(Trap.FIELDS)} FROM traps WHERE key = ?", (key,)).fetchone()
        return Trap(*r) if r else None

    def _write(self, t: Trap) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO traps ({', '.join(Trap.FIELDS)}, seq) "
            f"VALUES ({', '.join('?' * len(Trap.FIELDS))}, (SELECT COALESCE(MAX(seq), 0) + 1 FROM traps))",
            t.row(),
        )

    def _refresh(self) -> None:
        """Rows changed since the last look (by anyone) into the cache."""
        rows = self._db.execute(
            "SELECT key, expires, seq FROM traps WHERE seq > ? ORDER BY seq", (self._seq,)
        ).fetchall()
        now = self.clock()
        cache = self.cache
        for key, expires, seq in rows:
            if expires > now:
                cache.set(cache_key(key), expires)
            else:
                cache.pop(cache_key(key))
            self._seq = seq
        if time.monotonic() - self._pruned > 600:  # expired entries cost memory, not correctness
            cache.prune(now)
            self._pruned = time.monotonic()

    # -- admin (the CLI; synchronous, own connection) ------------------------

    def rows(self, include_expired: bool = False) -> list[Trap]:
        self._ensure_stopped_or_flushed()
        sql = f"SELECT {', '.join(Trap.FIELDS)} FROM traps"
        args: tuple[Any, ...] = ()
        if not include_expired:
            sql += " WHERE expires > ?"
            args = (int(self.clock()),)
        return [Trap(*r) for r in self._db.execute(sql + " ORDER BY last DESC", args)]

    def set_expiry(self, key: str, expires: int) -> None:
        """Admin ``add``: blocked until ``expires`` (history kept)."""
        now = int(self.clock())
        old = self._row(key)
        t = old or Trap(key, now, now, 0, 0, now, 0, "", self.host or "admin")
        t.expires = expires
        self.cache.set(cache_key(key), expires)
        self._write(t)

    def purge(self) -> int:
        """Delete expired rows and tombstones; their number."""
        return self._db.execute("DELETE FROM traps WHERE expires <= ?", (int(self.clock()),)).rowcount

    def _ensure_stopped_or_flushed(self) -> None:
        if self._thread is not None:
            self.flush()
