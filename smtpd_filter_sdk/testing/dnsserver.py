"""A small authoritative-looking DNS server for tests (loopback only).

It answers from a :class:`Zone` - plain Python data - over UDP and TCP, and can
be told to misbehave per name: answer NXDOMAIN, SERVFAIL or REFUSED, answer
with no data, answer late, or never answer at all ("drop").  It is what the
e2e tests put on ``127.0.0.1:53`` inside a private network namespace so that
smtpd's resolver (which reads ``/etc/resolv.conf``, no port) and the filters'
resolvers (dnspython) get deterministic answers; unit tests run it in-process
on a free port.

In-process (a background thread)::

    from smtpd_filter_sdk.testing.dnsserver import DNSServer, Zone

    zone = (Zone(ttl=60)
            .add_ptr("192.0.2.10", "mail.example.test")
            .add("mail.example.test", "A", "192.0.2.10")
            .add("*.score.senderscore.com", "A", "127.0.4.77")
            .add("sel._domainkey.example.test", "TXT", "v=DKIM1; k=rsa; p=MIIB...")
            .set_behaviour("10.2.0.192.score.senderscore.com", "drop"))
    with DNSServer(zone) as srv:           # 127.0.0.1, free port
        resolver.nameservers = [srv.host]; resolver.port = srv.port
        ...
        srv.update(zone.copy().add("new.example.test", "A", "192.0.2.1"))
        assert srv.queries[-1].name == "new.example.test."

As a process (e.g. inside a network namespace, on port 53)::

    python -m smtpd_filter_sdk.testing.dnsserver --port 53 --zone-file zone.json \\
        [--ready-file F] [--query-log F]

SIGHUP re-reads the zone file (a bad file keeps the old zone); ``--ready-file``
is rewritten after start-up and after every reload as ``PID GENERATION PORT``;
``--query-log`` gets one JSON object per query.  :class:`DNSServerProcess`
wraps all of that (start, ``update(zone)``, ``queries()``, ``stop()``).

Zone data (what :meth:`Zone.from_dict` reads and :meth:`Zone.to_dict` writes;
also the JSON zone-file format)::

    {
      "ttl": 60,                       # default TTL of every record
      "negative_ttl": null,            # if a number: SOA in negative answers
      "records": {
        "mail.example.test": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"],
                              "MX": ["10 mail.example.test"],
                              "TXT": ["v=spf1 -all", ["two", "strings"]]},
        "*.score.senderscore.com": {"A": ["127.0.4.77"]},
        "alias.example.test": {"CNAME": ["mail.example.test"]}
      },
      "ptr": {"192.0.2.10": "mail.example.test"},          # shorthand for PTR records
      "behaviours": {"bad.example.test": "servfail",
                     "*.slow.example.test": "delay:1.5"}
    }

Name matching: names are absolute and case-insensitive (a trailing dot is
optional).  A name that exists answers its records, NODATA for other types, or
follows a CNAME.  Otherwise the most specific ``*.suffix`` wildcard that covers
the name answers (with the queried name as owner).  Otherwise: NODATA if the
name has names below it (an empty non-terminal), else NXDOMAIN.  Behaviours are
looked up the same way (exact name, then most specific wildcard) and take
precedence over records, for every query type.

Behaviours: ``"nxdomain"``, ``"servfail"``, ``"refused"``, ``"nodata"``,
``"drop"`` (never answer, over UDP or TCP) and ``"delay:SECONDS"`` (answer
normally, late).

Values are in zone-file text form (``dns.rdata.from_text``) with names taken as
absolute, except TXT: a Python string is *one* character-string of any length
(split into 255-byte pieces on the wire, as a DKIM key needs), a list of strings
is several.  UDP answers that do not fit (512 bytes, or the client's EDNS size)
are sent truncated (TC) so the client retries over TCP.

The server only ever binds to loopback addresses.
"""

from __future__ import annotations

import argparse
import copy
import heapq
import ipaddress
import itertools
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import dns.reversename

__all__ = [
    "BEHAVIOURS",
    "DNSServer",
    "DNSServerProcess",
    "Query",
    "Zone",
    "main",
]

#: Behaviour names accepted by :meth:`Zone.set_behaviour` (plus ``"delay:SECONDS"``).
BEHAVIOURS = ("nxdomain", "servfail", "refused", "nodata", "drop")

_IN = dns.rdataclass.IN


def _absolute(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.concatenate(dns.name.root)
    return dns.name.from_text(name, origin=dns.name.root)


def _check_behaviour(behaviour: str) -> str:
    b = behaviour.strip().lower()
    if b in BEHAVIOURS:
        return b
    if b.startswith("delay:"):
        try:
            secs = float(b.split(":", 1)[1])
        except ValueError:
            secs = -1.0
        if secs >= 0:
            return b
    raise ValueError(
        f"unknown DNS behaviour {behaviour!r}: expected one of {', '.join(BEHAVIOURS)} or 'delay:SECONDS'"
    )


# --------------------------------------------------------------------------- zone


class Zone:
    """Test DNS data: records per name and type, plus per-name behaviours.

    Mutating methods return ``self`` so calls chain.  A :class:`DNSServer`
    compiles the zone when it is given one, so changes made to a Zone object
    afterwards only take effect through :meth:`DNSServer.update`.
    """

    def __init__(
        self,
        records: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
        *,
        behaviours: Mapping[str, str] | None = None,
        ttl: int = 60,
        negative_ttl: int | None = None,
    ) -> None:
        self.ttl = int(ttl)
        self.negative_ttl = None if negative_ttl is None else int(negative_ttl)
        # canonical key: lower-case absolute name text ("mail.example.test.")
        self._records: dict[str, dict[str, list[Any]]] = {}
        self._behaviours: dict[str, str] = {}
        for name, types in (records or {}).items():
            for rdtype, values in types.items():
                if isinstance(values, (str, bytes)):
                    values = [values]
                self.add(name, rdtype, *values)
        for name, b in (behaviours or {}).items():
            self.set_behaviour(name, b)

    # -- building
    @staticmethod
    def _key(name: str | dns.name.Name) -> str:
        return _absolute(name).to_text().lower()

    def add(self, name: str, rdtype: str, *values: Any) -> "Zone":
        """Add records: ``zone.add("x.test", "A", "192.0.2.1", "192.0.2.2")``."""
        rdtype = dns.rdatatype.to_text(dns.rdatatype.from_text(rdtype.upper()))
        if not values:
            raise ValueError("Zone.add needs at least one value")
        key = self._key(name)
        if "*" in key.split(".")[1:]:
            raise ValueError(f"a wildcard label must be the leftmost one: {name!r}")
        for v in values:
            _make_rdata(rdtype, v)  # validate now, not at query time
        self._records.setdefault(key, {}).setdefault(rdtype, []).extend(
            copy.deepcopy(list(values))
        )
        return self

    def add_ptr(self, address: str, target: str) -> "Zone":
        """PTR for an IPv4/IPv6 address: ``zone.add_ptr("127.0.0.1", "localhost")``."""
        return self.add(dns.reversename.from_address(address).to_text(), "PTR", target)

    def set(self, name: str, rdtype: str, *values: Any) -> "Zone":
        """Replace the records of one type (no values: remove them)."""
        self.remove(name, rdtype)
        return self.add(name, rdtype, *values) if values else self

    def remove(self, name: str, rdtype: str | None = None) -> "Zone":
        """Remove one type of records of a name, or the whole name."""
        key = self._key(name)
        if rdtype is None:
            self._records.pop(key, None)
        elif key in self._records:
            t = dns.rdatatype.to_text(dns.rdatatype.from_text(rdtype.upper()))
            self._records[key].pop(t, None)
            if not self._records[key]:
                del self._records[key]
        return self

    def set_behaviour(self, name: str, behaviour: str | None) -> "Zone":
        """Make a name (or ``*.suffix``) misbehave; ``None`` clears it."""
        key = self._key(name)
        if behaviour is None:
            self._behaviours.pop(key, None)
        else:
            self._behaviours[key] = _check_behaviour(behaviour)
        return self

    # -- views / (de)serialisation
    @property
    def records(self) -> dict[str, dict[str, list[Any]]]:
        return copy.deepcopy(self._records)

    @property
    def behaviours(self) -> dict[str, str]:
        return dict(self._behaviours)

    def copy(self) -> "Zone":
        return Zone.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl,
            "negative_ttl": self.negative_ttl,
            "records": self.records,
            "behaviours": self.behaviours,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Zone":
        unknown = set(data) - {"ttl", "negative_ttl", "records", "ptr", "behaviours"}
        if unknown:
            raise ValueError(f"unknown zone keys: {sorted(unknown)}")
        z = cls(
            data.get("records") or {},
            behaviours=data.get("behaviours") or {},
            ttl=data.get("ttl", 60),
            negative_ttl=data.get("negative_ttl"),
        )
        for addr, target in (data.get("ptr") or {}).items():
            targets = [target] if isinstance(target, str) else list(target)
            for t in targets:
                z.add_ptr(addr, t)
        return z

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> "Zone":
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the zone file atomically (a reader never sees half a file)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)

    def __repr__(self) -> str:
        return f"Zone({len(self._records)} names, {len(self._behaviours)} behaviours, ttl={self.ttl})"


def _make_rdata(rdtype: str, value: Any) -> dns.rdata.Rdata:
    t = dns.rdatatype.from_text(rdtype)
    if t == dns.rdatatype.TXT:
        parts = [value] if isinstance(value, (str, bytes)) else list(value)
        strings: list[bytes] = []
        for p in parts:
            b = p.encode("utf-8") if isinstance(p, str) else bytes(p)
            chunks = [b[i : i + 255] for i in range(0, len(b), 255)] or [b""]
            strings.extend(chunks)
        return dns.rdtypes.ANY.TXT.TXT(_IN, t, strings)
    if not isinstance(value, str):
        raise TypeError(f"{rdtype} value must be a string, not {type(value).__name__}")
    return dns.rdata.from_text(_IN, t, value, origin=dns.name.root, relativize=False)


class _Compiled:
    """Immutable lookup structure built from a Zone."""

    def __init__(self, zone: Zone) -> None:
        self.ttl = zone.ttl
        self.negative_ttl = zone.negative_ttl
        self.nodes: dict[dns.name.Name, dict[int, list[dns.rdata.Rdata]]] = {}
        self.wild: list[tuple[dns.name.Name, dict[int, list[dns.rdata.Rdata]]]] = []
        self.enclosers: set[dns.name.Name] = set()  # names with something below them
        for key, types in zone._records.items():
            name = dns.name.from_text(key)
            node = {
                dns.rdatatype.from_text(t): [_make_rdata(t, v) for v in vals]
                for t, vals in types.items()
            }
            if name.labels and name.labels[0] == b"*":
                self.wild.append((name.parent(), node))
            else:
                self.nodes[name] = node
            n = name
            while n != dns.name.root:
                n = n.parent()
                self.enclosers.add(n)
        # most specific wildcard first
        self.wild.sort(key=lambda item: -len(item[0].labels))
        self.bexact: dict[dns.name.Name, str] = {}
        self.bwild: list[tuple[dns.name.Name, str]] = []
        for key, b in zone._behaviours.items():
            name = dns.name.from_text(key)
            if name.labels and name.labels[0] == b"*":
                self.bwild.append((name.parent(), b))
            else:
                self.bexact[name] = b
        self.bwild.sort(key=lambda item: -len(item[0].labels))

    def behaviour(self, qname: dns.name.Name) -> str | None:
        b = self.bexact.get(qname)
        if b is not None:
            return b
        for suffix, b in self.bwild:
            if qname != suffix and qname.is_subdomain(suffix):
                return b
        return None

    def node(self, qname: dns.name.Name) -> dict[int, list[dns.rdata.Rdata]] | None:
        node = self.nodes.get(qname)
        if node is not None:
            return node
        if qname in self.enclosers:
            return None  # empty non-terminal: never covered by a wildcard
        for suffix, wnode in self.wild:
            if qname != suffix and qname.is_subdomain(suffix):
                return wnode
        return None


# --------------------------------------------------------------------------- server


@dataclass(frozen=True)
class Query:
    """One query the server received (and what it did with it)."""

    time: float
    name: str  # absolute, as asked (case preserved), e.g. "1.0.0.127.in-addr.arpa."
    type: str  # "A", "PTR", ...
    transport: str  # "udp" or "tcp"
    client: str  # client address
    outcome: str  # "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "drop", "FORMERR", ...

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "name": self.name,
            "type": self.type,
            "transport": self.transport,
            "client": self.client,
            "outcome": self.outcome,
        }


def _loopback_family(host: str) -> int:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"DNSServer binds to loopback IP addresses only, not {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"DNSServer binds to loopback IP addresses only, not {host!r}")
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


class DNSServer:
    """UDP+TCP DNS server answering from a :class:`Zone`, in a background thread.

    ``port=0`` picks a free port (UDP and TCP get the same one); read it from
    :attr:`port` after :meth:`start`.  Use as a context manager, or call
    :meth:`start` / :meth:`stop`; :meth:`serve_forever` runs the loop in the
    calling thread instead (the command-line entry point does that).

    :meth:`update` swaps the zone atomically while serving.  :attr:`queries`
    lists every query received (also the dropped ones); ``on_query`` is called
    (in the server thread) with each :class:`Query`.
    """

    def __init__(
        self,
        zone: Zone | Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        udp: bool = True,
        tcp: bool = True,
        on_query: Callable[[Query], None] | None = None,
        max_queries_kept: int = 100_000,
    ) -> None:
        self.host = host
        self._family = _loopback_family(host)
        self._want_port = int(port)
        self._udp_enabled, self._tcp_enabled = udp, tcp
        if not (udp or tcp):
            raise ValueError("enable at least one of udp/tcp")
        self._zone = Zone() if zone is None else (zone if isinstance(zone, Zone) else Zone.from_dict(zone))
        self._compiled = _Compiled(self._zone)
        self.on_query = on_query
        self._queries: list[Query] = []
        self._max_queries = max_queries_kept
        self._qlock = threading.Lock()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._conns: dict[socket.socket, bytearray] = {}
        self.port = 0

    # -- zone
    @property
    def zone(self) -> Zone:
        """A copy of the zone being served."""
        return self._zone.copy()

    def update(self, zone: Zone | Mapping[str, Any]) -> None:
        """Serve ``zone`` from now on (atomic swap; in-flight delays keep the old answer)."""
        z = zone if isinstance(zone, Zone) else Zone.from_dict(zone)
        compiled = _Compiled(z)  # raises on bad data before anything changes
        self._zone, self._compiled = z.copy(), compiled

    # -- query log
    @property
    def queries(self) -> list[Query]:
        with self._qlock:
            return list(self._queries)

    def clear_queries(self) -> None:
        with self._qlock:
            self._queries.clear()

    def _log(self, q: Query) -> None:
        with self._qlock:
            self._queries.append(q)
            if len(self._queries) > self._max_queries:
                del self._queries[: len(self._queries) - self._max_queries]
        if self.on_query is not None:
            try:
                self.on_query(q)
            except Exception as e:  # a broken callback must not stop the server
                print(f"dnsserver: on_query callback failed: {e!r}", file=sys.stderr)

    # -- lifecycle
    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def bind(self) -> "DNSServer":
        """Create and bind the sockets (done by :meth:`start`/:meth:`serve_forever`)."""
        if self._sel is not None:
            return self
        last_err: OSError | None = None
        for _ in range(20 if self._want_port == 0 else 1):
            udp = tcp = None
            try:
                port = self._want_port
                if self._udp_enabled:
                    udp = socket.socket(self._family, socket.SOCK_DGRAM)
                    udp.bind((self.host, port))
                    port = udp.getsockname()[1]
                if self._tcp_enabled:
                    tcp = socket.socket(self._family, socket.SOCK_STREAM)
                    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    tcp.bind((self.host, port))
                    tcp.listen(64)
                    port = tcp.getsockname()[1]
            except OSError as e:
                for s in (udp, tcp):
                    if s is not None:
                        s.close()
                last_err = e
                continue
            self._udp, self._tcp, self.port = udp, tcp, port
            break
        else:
            assert last_err is not None
            raise last_err
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self._udp is not None:
            self._udp.setblocking(False)
            self._sel.register(self._udp, selectors.EVENT_READ, "udp")
        if self._tcp is not None:
            self._tcp.setblocking(False)
            self._sel.register(self._tcp, selectors.EVENT_READ, "accept")
        return self

    def start(self) -> "DNSServer":
        """Bind and serve in a daemon thread; returns self."""
        if self._thread is not None:
            return self
        self.bind()
        self._thread = threading.Thread(target=self._loop, name=f"dnsserver:{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Bind (if needed) and serve in the calling thread until :meth:`stop`."""
        self.bind()
        try:
            self._loop()
        finally:
            self._close_all()

    def stop(self) -> None:
        """Stop serving and close every socket (idempotent)."""
        self._stopping = True
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
            self._thread = None
            self._close_all()

    def __enter__(self) -> "DNSServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_all(self) -> None:
        for s in [*self._conns, self._udp, self._tcp, self._wake_r, self._wake_w]:
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._conns.clear()
        if self._sel is not None:
            self._sel.close()
        self._sel = None
        self._udp = self._tcp = self._wake_r = self._wake_w = None

    # -- event loop
    def _loop(self) -> None:
        sel = self._sel
        assert sel is not None
        while not self._stopping:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            for key, _ in sel.select(timeout):
                if key.data == "wake":
                    try:
                        self._wake_r.recv(4096)  # type: ignore[union-attr]
                    except OSError:
                        pass
                elif key.data == "udp":
                    self._on_udp()
                elif key.data == "accept":
                    self._on_accept()
                else:
                    self._on_tcp(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                fn()

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def _on_udp(self) -> None:
        assert self._udp is not None
        for _ in range(64):
            try:
                data, peer = self._udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            delay, wire = self.handle(data, "udp", peer[0])
            if wire is None:
                continue
            udp = self._udp

            def send(wire: bytes = wire, peer: Any = peer) -> None:
                try:
                    udp.sendto(wire, peer)
                except OSError:
                    pass

            if delay:
                self._later(delay, send)
            else:
                send()

    def _on_accept(self) -> None:
        assert self._tcp is not None and self._sel is not None
        try:
            conn, _ = self._tcp.accept()
        except OSError:
            return
        conn.settimeout(2.0)  # recv only when readable; sendall may wait a little
        self._conns[conn] = bytearray()
        self._sel.register(conn, selectors.EVENT_READ, "conn")

    def _close_conn(self, conn: socket.socket) -> None:
        if conn in self._conns:
            del self._conns[conn]
            try:
                self._sel.unregister(conn)  # type: ignore[union-attr]
            except (KeyError, ValueError):
                pass
            conn.close()

    def _on_tcp(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65535)
        except OSError:
            data = b""
        if not data:
            self._close_conn(conn)
            return
        buf = self._conns[conn]
        buf += data
        try:
            peer = conn.getpeername()[0]
        except OSError:
            peer = "?"
        while len(buf) >= 2:
            (n,) = struct.unpack(">H", buf[:2])
            if len(buf) < 2 + n:
                break
            msg = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            delay, wire = self.handle(msg, "tcp", peer)
            if wire is None:
                continue  # keep the connection, never answer this one

            def send(wire: bytes = wire) -> None:
                if conn not in self._conns:
                    return
                try:
                    conn.sendall(struct.pack(">H", len(wire)) + wire)
                except OSError:
                    self._close_conn(conn)

            if delay:
                self._later(delay, send)
            else:
                send()

    # -- answering
    def handle(self, wire: bytes, transport: str = "udp", client: str = "") -> tuple[float, bytes | None]:
        """Answer one DNS message: returns ``(delay_seconds, response_wire or None)``.

        A bug or bad data never stops the server: the query is answered
        SERVFAIL (if it parses) and the error printed on stderr.
        """
        try:
            return self._handle(wire, transport, client)
        except Exception as e:
            print(f"dnsserver: error answering a {transport} query from {client}: {e!r}", file=sys.stderr)
            try:
                q = dns.message.from_wire(wire)
                r = dns.message.make_response(q)
                r.set_rcode(dns.rcode.SERVFAIL)
                return 0.0, r.to_wire()
            except Exception:
                return 0.0, None

    def _handle(self, wire: bytes, transport: str, client: str) -> tuple[float, bytes | None]:
        try:
            q = dns.message.from_wire(wire)
        except Exception:
            self._log(Query(time.time(), "", "", transport, client, "unparsable"))
            return 0.0, None
        zone = self._compiled
        r = dns.message.make_response(q, our_payload=4096)
        r.flags |= dns.flags.AA | dns.flags.RA
        if q.opcode() != dns.opcode.QUERY or len(q.question) != 1:
            r.set_rcode(dns.rcode.NOTIMP if q.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR)
            self._log(Query(time.time(), "", "", transport, client, dns.rcode.to_text(r.rcode())))
            return 0.0, r.to_wire()
        question = q.question[0]
        qname, qtype = question.name, question.rdtype
        behaviour = zone.behaviour(qname)
        delay = 0.0
        outcome: str
        if behaviour == "drop":
            outcome = "drop"
            self._log(Query(time.time(), qname.to_text(), dns.rdatatype.to_text(qtype), transport, client, outcome))
            return 0.0, None
        if behaviour is not None and behaviour.startswith("delay:"):
            delay = float(behaviour.split(":", 1)[1])
            behaviour = None
        if behaviour in ("nxdomain", "servfail", "refused"):
            r.set_rcode(dns.rcode.from_text(behaviour.upper()))
            if behaviour == "nxdomain":
                self._add_soa(r, zone)
        elif behaviour == "nodata":
            self._add_soa(r, zone)
        else:
            self._answer(r, zone, qname, qtype)
        outcome = dns.rcode.to_text(r.rcode())
        self._log(Query(time.time(), qname.to_text(), dns.rdatatype.to_text(qtype), transport, client, outcome))
        if transport == "udp":
            max_size = max(512, q.payload) if q.edns >= 0 else 512
            try:
                return delay, r.to_wire(max_size=max_size)
            except dns.exception.TooBig:
                t = dns.message.make_response(q, our_payload=4096)
                t.flags |= dns.flags.AA | dns.flags.RA | dns.flags.TC
                return delay, t.to_wire()
        return delay, r.to_wire(max_size=65535)  # TCP: the client's EDNS size does not apply

    @staticmethod
    def _add_soa(r: dns.message.Message, zone: _Compiled) -> None:
        if zone.negative_ttl is None:
            return
        ttl = zone.negative_ttl
        soa = dns.rrset.from_text(
            dns.name.root, ttl, "IN", "SOA", f"ns.test. hostmaster.test. 1 3600 600 86400 {ttl}"
        )
        r.authority.append(soa)

    def _answer(self, r: dns.message.Message, zone: _Compiled, qname: dns.name.Name, qtype: int) -> None:
        name = qname
        for _ in range(8):  # CNAME chain limit
            node = zone.node(name)
            if node is None:
                if name == qname:
                    if qname in zone.enclosers:
                        self._add_soa(r, zone)  # NODATA (empty non-terminal)
                    else:
                        r.set_rcode(dns.rcode.NXDOMAIN)
                        self._add_soa(r, zone)
                return  # a CNAME pointing outside the zone: answer what we have
            types = [t for t in node if t == qtype] if qtype != dns.rdatatype.ANY else list(node)
            if types:
                for t in types:
                    rrset = dns.rrset.RRset(name, _IN, t)
                    for rd in node[t]:
                        rrset.add(rd, zone.ttl)
                    r.answer.append(rrset)
                return
            cname = node.get(dns.rdatatype.CNAME)
            if cname and qtype != dns.rdatatype.CNAME:
                rrset = dns.rrset.RRset(name, _IN, dns.rdatatype.CNAME)
                rrset.add(cname[0], zone.ttl)
                r.answer.append(rrset)
                name = cname[0].target  # type: ignore[attr-defined]
                continue
            if name == qname:
                self._add_soa(r, zone)  # NODATA
            return


# --------------------------------------------------------------------------- process


class DNSServerProcess:
    """Run the server as a subprocess (``python -m smtpd_filter_sdk.testing.dnsserver``).

    ``argv_prefix`` is prepended to the command line, e.g.
    ``["nsenter", "-t", PID, "-n", "-m", "--"]`` to run it in a network
    namespace; ``python`` must be able to import this module and dnspython.
    ``workdir`` receives ``zone.json``, ``ready`` and ``queries.jsonl`` (and
    ``dnsserver.log``, the server's stderr).
    """

    def __init__(
        self,
        zone: Zone | Mapping[str, Any] | None,
        workdir: str | os.PathLike[str],
        *,
        python: str = sys.executable,
        host: str = "127.0.0.1",
        port: int = 0,
        argv_prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        _loopback_family(host)
        self.zone = Zone() if zone is None else (zone if isinstance(zone, Zone) else Zone.from_dict(zone))
        self.workdir = Path(workdir)
        self.python, self.host, self.port = python, host, int(port)
        self.argv_prefix = list(argv_prefix)
        self.env = dict(env) if env is not None else None
        self.zone_file = self.workdir / "zone.json"
        self.ready_file = self.workdir / "ready"
        self.query_log = self.workdir / "queries.jsonl"
        self.log_file = self.workdir / "dnsserver.log"
        self.proc: Any = None  # subprocess.Popen
        self.generation = -1

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def _read_ready(self) -> tuple[int, int, int] | None:
        try:
            pid, gen, port = self.ready_file.read_text().split()
            return int(pid), int(gen), int(port)
        except (OSError, ValueError):
            return None

    def _wait_generation(self, gen: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self._read_ready()
            if st is not None and st[0] == self.pid and st[1] >= gen:
                self.generation, self.port = st[1], st[2]
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsserver exited with {self.proc.returncode}: {self.log_tail()}")
            time.sleep(0.01)
        raise TimeoutError(f"dnsserver did not report generation {gen} in {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self, timeout: float = 15.0) -> "DNSServerProcess":
        import subprocess

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.zone.to_json(self.zone_file)
        for f in (self.ready_file, self.query_log):
            f.unlink(missing_ok=True)
        argv = [
            *self.argv_prefix,
            self.python,
            "-m",
            "smtpd_filter_sdk.testing.dnsserver",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--zone-file",
            str(self.zone_file),
            "--ready-file",
            str(self.ready_file),
            "--query-log",
            str(self.query_log),
        ]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, start_new_session=True
            )
        try:
            self._wait_generation(0, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def update(self, zone: Zone | Mapping[str, Any], timeout: float = 10.0) -> None:
        """Replace the zone: rewrite the zone file, SIGHUP, wait for the reload."""
        z = zone if isinstance(zone, Zone) else Zone.from_dict(zone)
        _Compiled(z)  # validate here: a bad zone would be ignored by the server
        self.zone = z.copy()
        self.zone.to_json(self.zone_file)
        want = self.generation + 1
        os.kill(self.proc.pid, signal.SIGHUP)
        self._wait_generation(want, timeout)

    def queries(self) -> list[Query]:
        out = []
        try:
            lines = self.query_log.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                out.append(Query(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line being written
        return out

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        import subprocess

        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)

    def __enter__(self) -> "DNSServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- CLI


def _write_ready(path: str, generation: int, port: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{os.getpid()} {generation} {port}\n")
    os.replace(tmp, path)


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m smtpd_filter_sdk.testing.dnsserver",
        description="Loopback-only test DNS server (UDP+TCP) answering from a JSON zone file. "
        "SIGHUP reloads the zone file.",
    )
    ap.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=53, help="port (default 53; 0 = any free port)")
    ap.add_argument("--zone-file", help="JSON zone (see module docs); none = empty zone (all NXDOMAIN)")
    ap.add_argument("--ready-file", help="write 'PID GENERATION PORT' here when serving / after each reload")
    ap.add_argument("--query-log", help="append one JSON object per query to this file")
    ap.add_argument("--no-tcp", action="store_true", help="UDP only")
    a = ap.parse_args(list(argv) if argv is not None else None)

    zone = Zone.from_json(a.zone_file) if a.zone_file else Zone()
    qlog = open(a.query_log, "a", buffering=1, encoding="utf-8") if a.query_log else None

    def on_query(q: Query) -> None:
        if qlog is not None:
            qlog.write(json.dumps(q.to_dict()) + "\n")

    srv = DNSServer(zone, a.host, a.port, tcp=not a.no_tcp, on_query=on_query, max_queries_kept=1000)
    srv.bind()
    generation = 0

    def reload(signum: int, frame: object) -> None:
        nonlocal generation
        if not a.zone_file:
            return
        try:
            srv.update(Zone.from_json(a.zone_file))
        except Exception as e:
            print(f"dnsserver: reload of {a.zone_file} failed, keeping the old zone: {e}", file=sys.stderr)
            return
        generation += 1
        if a.ready_file:
            _write_ready(a.ready_file, generation, srv.port)
        print(f"dnsserver: reloaded {a.zone_file} (generation {generation})", file=sys.stderr)

    def terminate(signum: int, frame: object) -> None:
        srv.stop()

    signal.signal(signal.SIGHUP, reload)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    if a.ready_file:
        _write_ready(a.ready_file, generation, srv.port)
    print(f"dnsserver: serving {a.host} port {srv.port} (pid {os.getpid()})", file=sys.stderr)
    try:
        srv.serve_forever()
    finally:
        if qlog is not None:
            qlog.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
