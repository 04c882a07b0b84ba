"""Async DNS for filters: lookups with a hard deadline, FCrDNS, a verdict cache.

    from smtpd_filter_sdk.dns import Resolver, VerdictCache

    resolver = Resolver(timeout=2.0)                 # nameservers from /etc/resolv.conf
    resolver = Resolver(["127.0.0.1:5353"], timeout=0.5)   # or explicit (``-resolver``)

    ans = await resolver.query("4.3.2.1.score.senderscore.com", "A")
    ans.status      # "ok" | "nxdomain" | "nodata" | "error" | "timeout"
    ans.values      # ("127.0.4.77",)  (names: lower case, no trailing dot)

    check = await resolver.fcrdns(ip)                # RFC 8601 iprev
    check.result    # "pass" | "fail" | "permerror" (no PTR) | "temperror"

    cache = VerdictCache(ttl=300)
    verdict = await cache.get(key, lambda: compute(key))   # single flight

Nothing here raises for a DNS outcome: NXDOMAIN, SERVFAIL, a timeout or a
garbled answer are all values, so a filter decides what each one means.  Every
lookup ends within ``timeout`` seconds (an ``asyncio.timeout`` around the whole
exchange, retries and TCP fallback included), however the server behaves.

Queries go out through ``dns.asyncquery`` (dnspython) directly, one fresh
UDP socket (random source port) and random id per query, TCP when the answer
is truncated.  That is about 2.5 times cheaper than ``dns.asyncresolver``
(measured: 5,300 vs 2,050 PTR queries/s against the loopback test server, 50
in flight) and keeps the deadline ours.  With several nameservers the time is
shared between them and a SERVFAIL/REFUSED moves on to the next one.

Derived verdicts (a score, an FCrDNS result) are cached by
:class:`VerdictCache`: TTL + LRU bound, and single flight - concurrent misses
for one key share one computation, which no waiter's cancellation stops.
(cachetools cannot cache coroutines, see research/ecosystem.md §8.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Hashable, Iterable, Sequence, TypeVar, Union

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from .netaddr import IP, normalize_ip

__all__ = [
    "Answer",
    "FCrDNS",
    "Nameserver",
    "Resolver",
    "VerdictCache",
    "dnsbl_name",
    "parse_nameserver",
    "reverse_name",
    "system_nameservers",
]

OK, NXDOMAIN, NODATA, ERROR, TIMEOUT = "ok", "nxdomain", "nodata", "error", "timeout"

#: At most this many PTR names are checked forward (RFC 8601 §3 suggests a cap).
MAX_PTR_NAMES = 10


# --------------------------------------------------------------------------
# Names


def _ip(value: IP | str) -> IP:
    if isinstance(value, str):
        value = ipaddress.ip_address(value.strip("[]").partition("%")[0])
    return normalize_ip(value)


def reverse_name(ip: IP | str) -> str:
    """``4.3.2.1.in-addr.arpa`` / ``…ip6.arpa`` (nibbles) for an address;
    IPv4-mapped IPv6 addresses are reversed as IPv4."""
    return _ip(ip).reverse_pointer


def dnsbl_name(ip: IP | str, zone: str) -> str:
    """The name a DNS list is asked for ``ip`` under ``zone``:
    ``4.3.2.1.score.senderscore.com`` (nibbles for IPv6)."""
    addr = _ip(ip)
    zone = zone.strip(".")
    if addr.version == 4:
        return ".".join(reversed(str(addr).split("."))) + "." + zone
    return ".".join(reversed(addr.exploded.replace(":", ""))) + "." + zone


# --------------------------------------------------------------------------
# Nameservers


@dataclass(frozen=True, slots=True)
class Nameserver:
    host: str
    port: int = 53

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_nameserver(text: str) -> Nameserver:
    """``HOST[:PORT]``: ``127.0.0.1``, ``127.0.0.1:5353``, ``::1``,
    ``[::1]:5353``.  HOST must be an IP address (a resolver cannot be found
    by name without a resolver).  Raises ValueError."""
    t = text.strip()
    port_text = ""
    if t.startswith("["):
        host, close, rest = t[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"bad resolver address {text!r}")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise ValueError(f"bad resolver address {text!r}: empty port")
    elif t.count(":") == 1:
        host, _, port_text = t.partition(":")
        if not port_text:
            raise ValueError(f"bad resolver address {text!r}: empty port")
    else:
        host = t
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad resolver address {text!r}: HOST must be an IP address") from None
    port = 53
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad resolver address {text!r}: port must be 1-65535")
        port = int(port_text)
    return Nameserver(str(addr), port)


def system_nameservers(filename: str = "/etc/resolv.conf") -> list[Nameserver]:
    """The nameservers of resolv.conf (port 53), as the C library would use
    them; ``127.0.0.1`` if there are none (the libc default too)."""
    try:
        r = dns.resolver.Resolver(filename=filename, configure=True)
        servers = [str(ns) for ns in r.nameservers]
    except (dns.resolver.NoResolverConfiguration, OSError):
        servers = []
    out = []
    for s in servers:
        try:
            out.append(Nameserver(str(ipaddress.ip_address(s)), 53))
        except ValueError:
            continue  # DoH/DoT URLs etc.: not for us
    return out or [Nameserver("127.0.0.1", 53)]


# --------------------------------------------------------------------------
# Answers


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one lookup.

    ``status``: ``ok`` (``values`` holds the data), ``nxdomain``, ``nodata``
    (the name exists, not that type), ``error`` (SERVFAIL, REFUSED, a garbled
    or unusable answer, a network error) or ``timeout``.  ``ttl`` is the
    smallest TTL of the answer (0 when there is none).
    """

    status: str
    values: tuple[str, ...] = ()
    ttl: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def negative(self) -> bool:
        """The name (or the type) conclusively does not exist."""
        return self.status in (NXDOMAIN, NODATA)

    @property
    def temporary(self) -> bool:
        """No conclusion: a retry later may answer."""
        return self.status in (ERROR, TIMEOUT)


@dataclass(frozen=True, slots=True)
class FCrDNS:
    """Forward-confirmed reverse DNS, as RFC 8601's ``iprev`` method.

    ``result``: ``pass`` (a PTR name resolves back to the address), ``fail``
    (PTR names exist, none resolves back), ``permerror`` (no PTR: NXDOMAIN or
    no data) or ``temperror`` (a lookup timed out or failed, and nothing
    passed).  ``names``: the PTR names (lower case, at most 10);
    ``confirmed``: the first name that resolves back, if any.
    """

    result: str
    names: tuple[str, ...] = ()
    confirmed: str | None = None
    detail: str = ""

    @property
    def has_ptr(self) -> bool:
        return bool(self.names)

    @property
    def name(self) -> str | None:
        """The best name for the client: the confirmed one, else the first PTR."""
        return self.confirmed or (self.names[0] if self.names else None)


def _name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _rdata_text(rd: Any) -> str:
    target = getattr(rd, "target", None)
    if isinstance(target, dns.name.Name):
        return _name_text(target)
    address = getattr(rd, "address", None)
    if isinstance(address, str):
        return address
    return rd.to_text()


def _interpret(q: dns.message.Message, r: dns.message.Message) -> Answer:
    rcode = r.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Answer(NXDOMAIN)
    if rcode != dns.rcode.NOERROR:
        return Answer(ERROR, detail=dns.rcode.to_text(rcode))
    try:
        chain = r.resolve_chaining()  # type: ignore[attr-defined]
    except dns.exception.DNSException as exc:
        return Answer(ERROR, detail=f"bad answer: {exc.__class__.__name__}")
    if chain.answer is None:
        return Answer(NODATA)
    values = tuple(_rdata_text(rd) for rd in chain.answer)
    ttl = min(chain.minimum_ttl, chain.answer.ttl) if chain.minimum_ttl is not None else chain.answer.ttl
    return Answer(OK, values, max(0, int(ttl)))


class _Retry(Exception):
    """This nameserver gave no usable answer: try the next one."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer


# --------------------------------------------------------------------------
# The resolver


class Resolver:
    """Lookups against ``nameservers`` (``Nameserver`` or ``"HOST[:PORT]"``;
    default: /etc/resolv.conf), each ending within ``timeout`` seconds."""

    def __init__(
        self,
        nameservers: Sequence[Nameserver | str] | None = None,
        timeout: float = 2.0,
        *,
        edns_payload: int = 1232,
    ) -> None:
        """``edns_payload``: the UDP answer size offered with EDNS (0: no
        EDNS, 512 bytes); larger answers come truncated and go over TCP."""
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if nameservers is None or len(nameservers) == 0:
            servers = system_nameservers()
        else:
            servers = [ns if isinstance(ns, Nameserver) else parse_nameserver(ns) for ns in nameservers]
        self.nameservers: tuple[Nameserver, ...] = tuple(servers)
        self.timeout = float(timeout)
        self.edns_payload = edns_payload
        self.queries = 0  # sent (counting retries), for tests and stats

    def __repr__(self) -> str:
        return f"Resolver({', '.join(map(str, self.nameservers))}, timeout={self.timeout})"

    async def query(self, name: str | dns.name.Name, rdtype: str | int = "A") -> Answer:
        """Look ``name`` up; never raises for a DNS outcome."""
        try:
            qname = name if isinstance(name, dns.name.Name) else dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            return Answer(ERROR, detail=f"bad name: {exc.__class__.__name__}")
        try:
            async with asyncio.timeout(self.timeout):
                return await self._query(qname, dns.rdatatype.RdataType.make(rdtype))
        except TimeoutError:
            return Answer(TIMEOUT, detail=f"no answer within {self.timeout:g}s")

    async def _query(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Answer:
        servers = self.nameservers
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last = Answer(ERROR, detail="no nameserver answered")
        for i, ns in enumerate(servers):
            # share what is left between the servers not tried yet
            remaining = deadline - loop.time()
            share = remaining / (len(servers) - i)
            try:
                return await asyncio.wait_for(self._ask(ns, qname, rdtype, share), share)
            except _Retry as retry:
                last = retry.answer
            except (TimeoutError, asyncio.TimeoutError):
                last = Answer(TIMEOUT, detail=f"{ns} did not answer")
        return last

    async def _ask(self, ns: Nameserver, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, budget: float) -> Answer:
        if self.edns_payload:
            q = dns.message.make_query(qname, rdtype, use_edns=0, payload=self.edns_payload)
        else:
            q = dns.message.make_query(qname, rdtype)  # no EDNS: 512-byte UDP answers
        q.id = random.getrandbits(16)
        self.queries += 1
        try:
            r = await dns.asyncquery.udp(
                q, ns.host, timeout=budget, port=ns.port, ignore_unexpected=True, ignore_errors=True
            )
            if r.flags & dns.flags.TC:
                self.queries += 1
                r = await dns.asyncquery.tcp(q, ns.host, timeout=budget, port=ns.port)
        except dns.exception.Timeout:
            raise _Retry(Answer(TIMEOUT, detail=f"{ns} did not answer")) from None
        except (dns.exception.DNSException, OSError, EOFError, ValueError) as exc:
            raise _Retry(Answer(ERROR, detail=f"{ns}: {exc.__class__.__name__}")) from None
        answer = _interpret(q, r)
        if answer.status == ERROR:
            raise _Retry(Answer(ERROR, detail=f"{ns} answered {answer.detail}"))
        return answer

    # -- helpers -------------------------------------------------------------

    async def ptr(self, ip: IP | str) -> Answer:
        """PTR names of an address (lower case, no trailing dot)."""
        return await self.query(reverse_name(ip), "PTR")

    async def addresses(self, name: str, version: int = 4) -> Answer:
        """A (``version=4``) or AAAA (``6``) records of a name."""
        return await self.query(name, "A" if version == 4 else "AAAA")

    async def fcrdns(self, ip: IP | str, max_names: int = MAX_PTR_NAMES) -> FCrDNS:
        """Forward-confirmed reverse DNS (RFC 8601 §3 ``iprev``): the PTR
        names of ``ip``, each looked up forward (A or AAAA, concurrently);
        pass if one of them gives back ``ip``."""
        addr = _ip(ip)
        ptr = await self.ptr(addr)
        if ptr.negative:
            return FCrDNS("permerror", detail=f"no PTR ({ptr.status})")
        if ptr.temporary:
            return FCrDNS("temperror", detail=f"PTR lookup: {ptr.status} {ptr.detail}".rstrip())
        names = tuple(dict.fromkeys(n for n in ptr.values if n))[:max_names]
        if not names:
            return FCrDNS("permerror", detail="empty PTR")
        forward = await asyncio.gather(*(self.addresses(n, addr.version) for n in names))
        temporary = []
        for name, ans in zip(names, forward):
            if ans.ok and any(_same_ip(v, addr) for v in ans.values):
                return FCrDNS("pass", names, name)
            if ans.temporary:
                temporary.append(f"{name}: {ans.status}")
        if temporary:
            return FCrDNS("temperror", names, None, "forward lookup " + ", ".join(temporary))
        return FCrDNS("fail", names, None, "no PTR name resolves back to the address")


def _same_ip(text: str, addr: IP) -> bool:
    try:
        return normalize_ip(ipaddress.ip_address(text)) == addr
    except ValueError:
        return False


# --------------------------------------------------------------------------
# Verdict cache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING: Any = object()


class VerdictCache(Generic[K, V]):
    """An async TTL + LRU cache with single flight.

    ``await cache.get(key, compute)``: a fresh cached value is returned at
    once; otherwise ``compute()`` (a coroutine function) runs as its own task
    and every concurrent ``get`` for the same key awaits that one task.  The
    value is stored for ``ttl_for(value)`` seconds (default: ``ttl``; 0 or
    less: not stored).  An exception is passed to every waiter and never
    cached.  Cancelling a waiter does not cancel the computation (others may
    be waiting; it ends by its own deadline).  ``peek(key)`` is the
    synchronous look at a fresh value.
    """

    def __init__(
        self,
        ttl: float = 300.0,
        maxsize: int = 65536,
        *,
        ttl_for: Callable[[Any], float] | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.ttl = float(ttl)
        self.maxsize = maxsize
        self.ttl_for = ttl_for
        self.timer = timer
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._inflight: dict[K, asyncio.Future[V]] = {}
        self.hits = self.misses = self.joined = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return self.peek(key, _MISSING) is not _MISSING  # type: ignore[arg-type]

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def peek(self, key: K, default: Any = None) -> V | Any:
        item = self._data.get(key)
        if item is None:
            return default
        expires, value = item
        if expires <= self.timer():
            del self._data[key]
            return default
        self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        if ttl is None:
            ttl = self.ttl_for(value) if self.ttl_for is not None else self.ttl
        if ttl <= 0:
            self._data.pop(key, None)
            return
        self._data[key] = (self.timer() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        value = self.peek(key, _MISSING)
        if value is not _MISSING:
            self.hits += 1
            return value  # type: ignore[no-any-return]
        task = self._inflight.get(key)
        if task is None:
            self.misses += 1
            task = asyncio.ensure_future(self._compute(key, compute))
            task.add_done_callback(_consume)
            self._inflight[key] = task
        else:
            self.joined += 1
        return await asyncio.shield(task)

    async def _compute(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await compute()
            self.put(key, value)
            return value
        finally:
            self._inflight.pop(key, None)

    def start(self, key: K, compute: Callable[[], Awaitable[V]]) -> None:
        """Begin computing ``key`` in the background if it is neither cached
        nor in flight (needs a running event loop)."""
        if self.peek(key, _MISSING) is not _MISSING or key in self._inflight:
            return
        self.misses += 1
        task = asyncio.ensure_future(self._compute(key, compute))
        self._inflight[key] = task
        task.add_done_callback(_consume)


def _consume(task: asyncio.Future[Any]) -> None:
    # A background computation nobody awaited must not log "exception never
    # retrieved": its waiters (if any) got the exception already.
    if not task.cancelled():
        task.exception()
