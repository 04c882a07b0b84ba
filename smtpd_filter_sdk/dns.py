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

The lookups filters make by the thousand (A, AAAA, PTR) take a lean path:
the query is built and the answer read (CNAME chains followed, exactly as
dnspython's ``resolve_chaining`` does) by a small codec here, over a few
*connected* UDP sockets per nameserver that all queries share (the kernel only
delivers datagrams from that server; each query has a random id and its answer
must echo the question; the sockets are replaced every few thousand queries,
so source ports keep changing).  About 40 us of CPU per query instead of ~380
us through ``dns.asyncquery`` (one asyncio endpoint per query) and ~500 us
through ``dns.asyncresolver``.  Everything else - other types, a truncated
answer (then TCP), a name the codec does not take - goes through dnspython's
``dns.asyncquery``.  With several nameservers the time is shared between
them and a SERVFAIL/REFUSED moves on to the next one.

Derived verdicts (a score, an FCrDNS result) are cached by
:class:`VerdictCache`: TTL + LRU bound, and single flight - concurrent misses
for one key share one computation, which no waiter's cancellation stops.
(cachetools cannot cache coroutines, see research/ecosystem.md §8.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Hashable, Sequence, TypeVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.ipv6
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


# --------------------------------------------------------------------------
# The lean path: A / AAAA / PTR over shared connected UDP sockets

_FAST_TYPES = {1: "A", 28: "AAAA", 12: "PTR"}
_TYPE_CODES = {"A": 1, "AAAA": 28, "PTR": 12, "a": 1, "aaaa": 28, "ptr": 12}
_CNAME = 5
_MAX_CHAIN = 16  # as dnspython
_ESCAPED = frozenset(b'"().;\\@$')
_HEADER = struct.Struct(">HHHHHH")
_RR = struct.Struct(">HHIH")


class _Malformed(Exception):
    pass


def _encode_name(name: str) -> bytes | None:
    """Wire form of a plain ASCII name (lower case), or None if the lean
    path should not take it (escapes, non-ASCII, bad lengths)."""
    text = name[:-1] if name.endswith(".") else name
    if not text or "\\" in text or not text.isascii():
        return None
    out = bytearray()
    for label in text.lower().split("."):
        if not 0 < len(label) < 64:
            return None
        out.append(len(label))
        out += label.encode("ascii")
    out.append(0)
    return bytes(out) if len(out) <= 255 else None


def _label_text(label: bytes) -> str:
    if all(0x20 < c < 0x7F and c not in _ESCAPED for c in label):
        return label.decode("ascii")
    out = []
    for c in label:
        if c in _ESCAPED:
            out.append("\\" + chr(c))
        elif 0x20 < c < 0x7F:
            out.append(chr(c))
        else:
            out.append("\\%03d" % c)
    return "".join(out)


def _read_name(msg: bytes, off: int) -> tuple[str, int]:
    """(lower-case text without the final dot, offset after the name)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    total = 0
    n = len(msg)
    while True:
        if off >= n:
            raise _Malformed("name runs past the end")
        length = msg[off]
        if length == 0:
            off += 1
            break
        if length & 0xC0 == 0xC0:
            if off + 1 >= n:
                raise _Malformed("truncated pointer")
            if end < 0:
                end = off + 2
            jumps += 1
            if jumps > 64:
                raise _Malformed("pointer loop")
            off = ((length & 0x3F) << 8) | msg[off + 1]
            continue
        if length & 0xC0:
            raise _Malformed("bad label type")
        label = msg[off + 1 : off + 1 + length]
        if len(label) != length:
            raise _Malformed("label runs past the end")
        total += length + 1
        if total > 255:
            raise _Malformed("name too long")
        labels.append(_label_text(label))
        off += 1 + length
    text = ".".join(labels).lower() if labels else "."
    return text, (end if end >= 0 else off)


def _parse_response(msg: bytes, qname: str, qtype: int) -> Answer:
    """An answer to a question for (qname, qtype, IN), read like dnspython's
    ``from_wire`` + ``resolve_chaining``; _Malformed if it cannot be read."""
    if len(msg) < 12:
        raise _Malformed("short message")
    _, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(msg, 0)
    rcode = flags & 0x000F
    off = 12
    for _ in range(qdcount):
        _, off = _read_name(msg, off)
        off += 4
    if off > len(msg):
        raise _Malformed("question runs past the end")
    records: list[tuple[str, int, int, str]] = []  # owner, type, ttl, value
    for _ in range(ancount):
        owner, off = _read_name(msg, off)
        if off + 10 > len(msg):
            raise _Malformed("record header runs past the end")
        rtype, rclass, ttl, rdlength = _RR.unpack_from(msg, off)
        off += 10
        rdata_end = off + rdlength
        if rdata_end > len(msg):
            raise _Malformed("rdata runs past the end")
        if rclass == 1 and rtype in (1, 28, 12, _CNAME):
            if rtype == 1:
                if rdlength != 4:
                    raise _Malformed("bad A")
                value = "%d.%d.%d.%d" % tuple(msg[off:rdata_end])
            elif rtype == 28:
                if rdlength != 16:
                    raise _Malformed("bad AAAA")
                value = dns.ipv6.inet_ntoa(msg[off:rdata_end])
            else:
                value, name_end = _read_name(msg, off)
                if name_end != rdata_end:
                    raise _Malformed("bad name in rdata")
            records.append((owner, rtype, ttl if ttl < 0x80000000 else 0, value))
        off = rdata_end
    if rcode == 3:
        return Answer(NXDOMAIN)
    if rcode != 0:
        return Answer(ERROR, detail=dns.rcode.to_text(rcode))
    name = qname
    min_ttl: int | None = None
    for _ in range(_MAX_CHAIN):
        found = [(ttl, v) for (o, t, ttl, v) in records if o == name and t == qtype]
        if found:
            ttl = min(t for t, _ in found)
            min_ttl = ttl if min_ttl is None else min(min_ttl, ttl)
            values = tuple(dict.fromkeys(v for _, v in found))
            return Answer(OK, values, max(0, min_ttl))
        cname = [(ttl, v) for (o, t, ttl, v) in records if o == name and t == _CNAME]
        if not cname:
            return Answer(NODATA)
        ttl = min(t for t, _ in cname)
        min_ttl = ttl if min_ttl is None else min(min_ttl, ttl)
        # CNAME is a singleton type: dnspython keeps the last of several
        # (an invalid answer, but a server may send it), with the least TTL.
        name = cname[-1][1]
    return Answer(ERROR, detail="bad answer: ChainTooLong")


class _Channel:
    """One connected UDP socket to one nameserver, shared by many queries."""

    __slots__ = ("loop", "sock", "pending", "uses", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop, ns: Nameserver) -> None:
        family = socket.AF_INET6 if ":" in ns.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect((ns.host, ns.port))
        except OSError:
            self.sock.close()
            raise
        self.loop = loop
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.uses = 0
        self.closed = False
        loop.add_reader(self.sock.fileno(), self._readable)

    def ask(self, question: bytes, tail: bytes) -> tuple[int, asyncio.Future[bytes], bytes]:
        """Send ``header + question + tail``; the future gets the answer.
        Returns (id, future, packet) - the packet for retransmissions."""
        qid = random.getrandbits(16)
        while qid in self.pending:
            qid = random.getrandbits(16)
        future: asyncio.Future[bytes] = self.loop.create_future()
        packet = _HEADER.pack(qid, 0x0100, 1, 0, 0, 1 if tail else 0) + question + tail
        self.sock.send(packet)
        self.pending[qid] = (future, question)
        self.uses += 1
        return qid, future, packet

    def forget(self, qid: int) -> None:
        self.pending.pop(qid, None)

    def _readable(self) -> None:
        for _ in range(256):
            try:
                msg = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP unreachable and the like
                for future, _ in self.pending.values():
                    if not future.done():
                        future.set_exception(exc)
                self.pending.clear()
                return
            if len(msg) < 12 or not msg[2] & 0x80:
                continue
            entry = self.pending.get((msg[0] << 8) | msg[1])
            if entry is None:
                continue
            future, question = entry
            qdcount = (msg[4] << 8) | msg[5]
            # the answer must echo the question (0x20 case changes allowed)
            if qdcount != 1 or msg[12 : 12 + len(question)].lower() != question:
                continue
            del self.pending[(msg[0] << 8) | msg[1]]
            if not future.done():
                future.set_result(msg)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError, RuntimeError):
            pass
        self.sock.close()
        for future, _ in self.pending.values():
            if not future.done():  # an error for the lookup, not a cancellation of its task
                future.set_exception(ConnectionAbortedError("resolver closed"))
        self.pending.clear()


class _Channels:
    """A few channels per nameserver, replaced after ``ROTATE`` queries."""

    SIZE = 4
    ROTATE = 4096

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.by_server: dict[Nameserver, list[_Channel]] = {}
        self.retired: list[_Channel] = []
        self.turn = 0

    def get(self, ns: Nameserver) -> _Channel:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new event loop: the old sockets are useless
            self.close()
            self.loop = loop
        chans = self.by_server.setdefault(ns, [])
        if len(chans) < self.SIZE:
            chan = _Channel(loop, ns)
            chans.append(chan)
            return chan
        self.turn = (self.turn + 1) % len(chans)
        chan = chans[self.turn]
        if chan.uses >= self.ROTATE or chan.closed:
            self.retired.append(chan)
            chan = chans[self.turn] = _Channel(loop, ns)
        if self.retired:
            self.retired = [c for c in self.retired if c.pending or c.close()]
        return chan

    def close(self) -> None:
        for chans in self.by_server.values():
            for chan in chans:
                chan.close()
        for chan in self.retired:
            chan.close()
        self.by_server.clear()
        self.retired.clear()


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
        self._channels = _Channels()
        self.retransmit = max(0.1, self.timeout / 3)
        self._edns_tail = b"\x00" + _RR.pack(41, edns_payload, 0, 0) if edns_payload else b""

    def close(self) -> None:
        """Close the shared sockets (they are reopened when needed)."""
        self._channels.close()

    def __repr__(self) -> str:
        return f"Resolver({', '.join(map(str, self.nameservers))}, timeout={self.timeout})"

    async def query(self, name: str | dns.name.Name, rdtype: str | int = "A") -> Answer:
        """Look ``name`` up; never raises for a DNS outcome."""
        code = _TYPE_CODES.get(rdtype) if isinstance(rdtype, str) else rdtype
        if code in _FAST_TYPES and isinstance(name, str):
            wire = _encode_name(name)
            if wire is not None:
                try:
                    async with asyncio.timeout(self.timeout):
                        return await self._query_fast(name.rstrip(".").lower(), wire + struct.pack(">HH", code, 1), code)
                except TimeoutError:
                    return Answer(TIMEOUT, detail=f"no answer within {self.timeout:g}s")
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

    async def _query_fast(self, qname: str, question: bytes, qtype: int) -> Answer:
        servers = self.nameservers
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last = Answer(ERROR, detail="no nameserver answered")
        for i, ns in enumerate(servers):
            share = (deadline - loop.time()) / (len(servers) - i)
            try:
                return await asyncio.wait_for(self._ask_fast(ns, qname, question, qtype), share)
            except _Retry as retry:
                last = retry.answer
            except (TimeoutError, asyncio.TimeoutError):
                last = Answer(TIMEOUT, detail=f"{ns} did not answer")
        return last

    async def _ask_fast(self, ns: Nameserver, qname: str, question: bytes, qtype: int) -> Answer:
        try:
            chan = self._channels.get(ns)
            qid, future, packet = chan.ask(question, self._edns_tail)
        except OSError as exc:
            raise _Retry(Answer(ERROR, detail=f"{ns}: {exc.__class__.__name__}")) from None
        self.queries += 1
        try:
            while True:
                # UDP may lose a datagram (or a busy server drop it): send the
                # same query again every third of the timeout until answered
                while not future.done():
                    await asyncio.wait((future,), timeout=self.retransmit)
                    if not future.done() and not chan.closed:
                        try:
                            chan.sock.send(packet)
                        except OSError:
                            pass
                        self.queries += 1
                try:
                    msg = future.result()
                except OSError as exc:
                    raise _Retry(Answer(ERROR, detail=f"{ns}: {exc.__class__.__name__}")) from None
                if msg[2] & 0x02:  # truncated: dnspython over TCP
                    self.queries += 1
                    return await self._ask(ns, dns.name.from_text(qname), dns.rdatatype.RdataType.make(qtype), self.timeout)
                try:
                    answer = _parse_response(msg, qname, qtype)
                except _Malformed:
                    # garbage with the right id and question: ignore it, as
                    # dnspython does, and keep waiting for the real answer
                    future = chan.loop.create_future()
                    chan.pending[qid] = (future, question)
                    continue
                break
        finally:
            chan.forget(qid)
        if answer.status == ERROR:
            raise _Retry(Answer(ERROR, detail=f"{ns} answered {answer.detail}"))
        return answer

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


def check_nameservers(value: str) -> str:
    """A ``-resolver`` flag value, ``HOST[:PORT][,...]``; raises ValueError
    naming the bad part."""
    for part in value.split(","):
        parse_nameserver(part)
    return value
