"""The in-memory set of trapped clients that sessions read at connect.

    cache = TrapCache.build([("192.0.2.7", 1800000000), ("2001:db8::/64", 1800000600)])
    cache.get(cache_key("192.0.2.7"))     # blocked until (epoch seconds) or None
    cache.raise_to(cache_key("192.0.2.8"), 1800000000)

Why not a dict: 10^5 trapped IPv4 clients in a ``dict[str, int]`` take ~16 MB
(a ~60-byte str, a 32-byte int and a dict slot each), too much next to the
interpreter and redis-py within the 40 MB target.  IPv4 entries are packed
into one sorted ``array('Q')`` of ``address << 32 | expiry`` (8 bytes each,
0.8 MB for 10^5), looked up by bisection (~17 probes, about a microsecond);
IPv6 addresses and networks, rare, stay in a dict.  Inserting shifts the
array (a memmove of at most a few MB), which happens per trap hit, not per
session.

Two threads use it: the event loop (lookups, and the block of a new hit) and
the store's SQLite worker (expiries, changes by others).  Writers hold a lock;
a lookup takes none and checks that the entry it read is for its address, so
a lookup racing an insert can at worst miss an entry being added that moment.
"""

from __future__ import annotations

import ipaddress
import threading
from array import array
from bisect import bisect_left
from typing import Iterable

__all__ = ["TrapCache", "cache_key"]

_LOW = 0xFFFFFFFF  # expiry: epoch seconds fit 32 bits until 2106


def cache_key(key: str) -> int | str:
    """How the cache holds a key: an IPv4 address as its integer, anything
    else (IPv6 address, network) as its text."""
    if key.count(".") == 3 and "/" not in key:
        try:
            return int(ipaddress.IPv4Address(key))
        except ValueError:
            pass
    return key


class TrapCache:
    __slots__ = ("v4", "other", "_lock")

    def __init__(self) -> None:
        self.v4 = array("Q")
        self.other: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def build(cls, items: Iterable[tuple[str, int]]) -> "TrapCache":
        """From (key, expiry) pairs with distinct keys (a SELECT of the store)."""
        c = cls()
        packed = []
        for key, exp in items:
            ck = cache_key(key)
            if type(ck) is int:
                packed.append(ck << 32 | (exp & _LOW))
            else:
                c.other[ck] = exp
        packed.sort()
        c.v4 = array("Q", packed)
        return c

    def _find(self, v4: array, ck: int) -> int:
        """Index of ``ck``'s entry in ``v4``, or -1 - (where it would go)."""
        i = bisect_left(v4, ck << 32)
        if i < len(v4) and v4[i] >> 32 == ck:
            return i
        return -1 - i

    def get(self, ck: int | str, default: int | None = None) -> int | None:
        if type(ck) is not int:
            return self.other.get(ck, default)  # type: ignore[arg-type]
        v4 = self.v4
        i = bisect_left(v4, ck << 32)
        try:
            entry = v4[i]
        except IndexError:
            return default
        return entry & _LOW if entry >> 32 == ck else default

    def raise_to(self, ck: int | str, expires: int) -> bool:
        """Blocked until ``expires`` at least; True if that changed anything."""
        with self._lock:
            if type(ck) is not int:
                if self.other.get(ck, 0) >= expires:  # type: ignore[arg-type]
                    return False
                self.other[ck] = expires  # type: ignore[index]
                return True
            return self._set(ck, expires, only_longer=True)

    def set(self, ck: int | str, expires: int) -> None:
        with self._lock:
            if type(ck) is not int:
                self.other[ck] = expires  # type: ignore[index]
            else:
                self._set(ck, expires, only_longer=False)

    def _set(self, ck: int, expires: int, only_longer: bool) -> bool:
        v4 = self.v4
        i = self._find(v4, ck)
        if i >= 0:
            if only_longer and v4[i] & _LOW >= expires:
                return False
            v4[i] = ck << 32 | (expires & _LOW)
        else:
            v4.insert(-1 - i, ck << 32 | (expires & _LOW))
        return True

    def pop(self, ck: int | str) -> None:
        with self._lock:
            if type(ck) is not int:
                self.other.pop(ck, None)  # type: ignore[call-overload]
                return
            i = self._find(self.v4, ck)
            if i >= 0:
                del self.v4[i]

    def prune(self, now: float) -> int:
        """Drop expired entries; how many."""
        with self._lock:
            before = len(self)
            self.v4 = array("Q", (e for e in self.v4 if e & _LOW > now))
            self.other = {k: e for k, e in self.other.items() if e > now}
            return before - len(self)

    def __len__(self) -> int:
        return len(self.v4) + len(self.other)

    def items(self) -> list[tuple[str, int]]:
        """(key text, expiry) of every entry (for tests and the log)."""
        out = [(str(ipaddress.IPv4Address(e >> 32)), e & _LOW) for e in self.v4]
        return out + list(self.other.items())
