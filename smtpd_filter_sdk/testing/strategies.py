"""Hypothesis strategies for smtpd's side of the filter protocol.

Fuzz a filter with the same streams the SDK is tested with::

    from hypothesis import given
    from smtpd_filter_sdk.testing import strategies as sst

    @given(sst.streams(registered=my_filter))
    def test_my_filter(stream):
        ...feed stream.to_bytes() to an Engine, check stream.requests...

Everything here generates what a real smtpd writes to a filter (see
``shared/captures/plain.txt`` for the order of events), for every protocol
version and handshake dialect (``0.4``, ``0.5``, ``0.6``, ``0.7``,
``0.7/7.6``), built with ``testing.wire.Wire``:

* interleaved smtp-in sessions with every filter phase in smtpd's order and all
  19 report events; smtp-out sessions (reports only) when the dialect can
  announce them;
* user-controlled fields with ``|``, 8-bit bytes, ``<unknown>`` rdns, unix
  sockets (``unix:`` / ``local``), ``[v6]:port`` and scoped v6 addresses;
* messages with dot-stuffed lines, empty lines, bare CRs, lines around the
  1,997 / 2,047 / 65,485-byte limits and up to the 65,534 bytes smtpd accepts;
* sessions ending with QUIT, a disconnect, a timeout, a client that leaves in
  the middle of DATA (no final ``.``) or while a filter request is pending.

Only the phases and events a filter registered are sent (``registered=``).

``corrupted_streams()`` damages such streams: truncated lines, unknown events
and phases, bad and future versions, missing and swapped fields, garbage and
NUL bytes, CRs, empty lines, duplicated lines and config lines.  Every line
keeps its metadata (``Line``), so a test knows which requests are intact and
must be answered.

hypothesis is an optional dependency of the SDK: only this module imports it.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import strategies as st

from .. import protocol as p
from .wire import DIALECTS, Wire

__all__ = [
    "Line",
    "Stream",
    "MessageStream",
    "SessionScript",
    "Transaction",
    "dialects",
    "session_ids",
    "mail_addresses",
    "auth_usernames",
    "rdns_names",
    "helo_names",
    "client_endpoints",
    "content_lines",
    "data_lines",
    "messages",
    "session_scripts",
    "streams",
    "corrupted_streams",
    "registration_of",
]

ALL_PHASES = frozenset(p.FILTER_PHASES)
ALL_SMTP_IN = frozenset(("smtp-in", e) for e in p.REPORT_EVENTS)
ALL_SMTP_OUT = frozenset(("smtp-out", e) for e in p.REPORT_EVENTS)

#: Longest client line smtpd accepts (SMTP_LINE_MAX 65535 minus the newline);
#: a data-line payload (still dot-stuffed) is at most this long.
MAX_CLIENT_LINE = 65534

# --------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Line:
    """One line smtpd writes, with what a checker needs to know about it.

    ``kind``: ``config``, ``report``, ``request`` (a filter request other than
    data-line), ``data-line`` or ``garbage``.  ``name`` is the config key,
    event or phase.  ``waits``: smtpd writes this line only after the
    filter answered the session's pending request (everything in a session
    follows its request, except a client leaving and the report of the
    client's ``.``).  ``closes``: when smtpd writes this line it has already
    let go of the session (answers for it are ignored from here on).
    ``damaged``: changed by ``corrupted_streams`` (no expectation attached).
    """

    raw: bytes
    kind: str
    sid: str | None = None
    name: str | None = None
    token: str | None = None
    version: str | None = None
    subsystem: str = "smtp-in"
    waits: bool = True
    closes: bool = False
    damaged: bool = False
    #: what the line says, in the order of the SDK's records (whatever the
    #: version's field order): a report's fields after the session id, a
    #: request's parameters (``rdns, src`` for connect)
    fields: tuple[bytes, ...] = ()

    @property
    def payload(self) -> bytes | None:
        """A data-line's payload (still dot-stuffed)."""
        if self.kind != "data-line" or self.damaged:
            return None
        return self.raw.split(b"|", 7)[7]

    @property
    def param(self) -> bytes | None:
        if self.kind not in ("request", "data-line") or self.damaged:
            return None
        return self.raw.split(b"|", 7)[7]

    def __repr__(self) -> str:
        return f"Line({_short(self.raw)}{', damaged' if self.damaged else ''})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis' pretty printer
        printer.text(repr(self))


def _short(raw: bytes, keep: int = 120) -> str:
    if len(raw) <= keep:
        return repr(raw)
    return f"{raw[:keep]!r}...<{len(raw)} bytes>"


@dataclass(frozen=True)
class Stream:
    """A whole stream smtpd would write to one filter process, handshake first.

    ``lines`` in the order written.  ``phases``/``events``: what the filter
    registered (only those were sent).  ``tail``: bytes after the last
    newline (a line cut short by EOF; only in corrupted streams).
    """

    dialect: str
    lines: tuple[Line, ...]
    phases: frozenset[str]
    events: frozenset[tuple[str, str]]
    smtp_out: bool = False
    corrupted: bool = False
    mutations: tuple[str, ...] = ()
    tail: bytes = b""

    # -- bytes -------------------------------------------------------------

    @property
    def raw_lines(self) -> list[bytes]:
        return [line.raw for line in self.lines]

    def to_bytes(self) -> bytes:
        return b"".join(line.raw + b"\n" for line in self.lines) + self.tail

    def __len__(self) -> int:
        return len(self.lines)

    # -- metadata ----------------------------------------------------------

    @property
    def wire(self) -> Wire:
        return Wire(self.dialect, smtp_out=self.smtp_out)

    @property
    def version(self) -> str:
        return str(DIALECTS[self.dialect]["version"])

    @property
    def requests(self) -> list[tuple[int, Line]]:
        """Intact filter requests that need a ``filter-result`` (all phases but
        data-line), with their index in ``lines``."""
        return [(i, ln) for i, ln in enumerate(self.lines) if ln.kind == "request" and not ln.damaged]

    @property
    def sessions(self) -> list[str]:
        seen: dict[str, None] = {}
        for line in self.lines:
            if line.sid is not None and not line.damaged:
                seen.setdefault(line.sid, None)
        return list(seen)

    @property
    def disconnected(self) -> frozenset[str]:
        """Sessions whose (intact) ``link-disconnect`` the filter receives."""
        return frozenset(
            ln.sid for ln in self.lines
            if ln.kind == "report" and ln.name == "link-disconnect" and not ln.damaged and ln.sid
        )

    @property
    def ended(self) -> frozenset[str]:
        """Sessions smtpd let go of (whether or not the filter hears of it)."""
        return frozenset(ln.sid for ln in self.lines if ln.closes and not ln.damaged and ln.sid)

    @property
    def damaged_sids(self) -> frozenset[str]:
        return frozenset(ln.sid for ln in self.lines if ln.damaged and ln.sid)

    def messages(self) -> list["MessageStream"]:
        """Each message's data-line stream as sent (intact lines only)."""
        out: list[MessageStream] = []
        current: dict[str, MessageStream] = {}
        for i, line in enumerate(self.lines):
            if line.sid is None or line.damaged:
                continue
            if line.kind == "data-line":
                msg = current.get(line.sid)
                if msg is None:
                    msg = current[line.sid] = MessageStream(line.sid, line.token or "", line.version or "", i)
                    out.append(msg)
                payload = line.payload or b""
                if payload == b".":
                    msg.end = i
                    del current[line.sid]
                else:
                    msg.payloads.append(payload)
            elif line.closes and line.sid in current:
                current.pop(line.sid).aborted = i
        return out

    def __repr__(self) -> str:
        body = ",\n  ".join(repr(line) for line in self.lines)
        extra = f", mutations={self.mutations!r}" if self.corrupted else ""
        tail = f", tail={_short(self.tail)}" if self.tail else ""
        return (
            f"Stream(dialect={self.dialect!r}, phases={sorted(self.phases)!r}, "
            f"smtp_out={self.smtp_out}{extra}{tail}, lines=[\n  {body}])"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis' pretty printer
        printer.text(repr(self))


@dataclass
class MessageStream:
    sid: str
    token: str
    version: str
    first: int
    payloads: list[bytes] = field(default_factory=list)
    end: int | None = None  # index of the final "." line
    aborted: int | None = None  # index of the line that ended the session mid-DATA


@dataclass(frozen=True)
class Transaction:
    """One MAIL FROM ... transaction of a session script."""

    mail_from: bytes
    rcpts: tuple[tuple[bytes, str], ...]  # (address, ok|permfail|tempfail)
    ending: str  # data | rset | abort (client leaves mid-DATA) | open (session ends)
    message: tuple[bytes, ...] = ()  # content lines, unstuffed
    abort_after: int = 0  # content lines sent before the client leaves
    junk_header: bool = False  # smtpd's "X-Spam: Yes" first line
    late_354: bool = False  # 354 + tx-data reported after the first data lines


@dataclass(frozen=True)
class SessionScript:
    """What happens in one SMTP session, before it is rendered to lines."""

    subsystem: str
    rdns: bytes
    fcrdns: str
    src: str
    dest: str
    connect_src: str
    greeting: bytes
    commands: tuple[tuple[Any, ...], ...]
    end: str  # quit | disconnect | timeout | gone (client leaves while a request is pending)
    gone_at: int = 0  # which pending request the client leaves at (modulo their number)
    gone_timeout: bool = False


# --------------------------------------------------------------------------
# Small field strategies

_PRINTABLE = bytes(32 + (b % 95) for b in range(256))  # any byte -> printable ASCII
_ADDR_SAFE = bytes((b if b not in b"\n\r\0<> " else ord("x")) for b in range(256))


@functools.cache
def _printable(max_size: int = 40, min_size: int = 0) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=min_size, max_size=max_size).map(lambda b: b.translate(_PRINTABLE))


def _no_newline(b: bytes) -> bytes:
    return b.replace(b"\n", b"").replace(b"\0", b"")


@functools.cache
def dialects() -> st.SearchStrategy[str]:
    """Handshake dialects: ``0.4`` (6.6), ``0.5`` (never released), ``0.6``
    (6.7-7.3), ``0.7`` (7.4/7.5), ``0.7/7.6`` (with ``config|protocol``)."""
    return st.sampled_from(list(DIALECTS))


@functools.cache
def session_ids() -> st.SearchStrategy[str]:
    """16 lowercase hex digits, never zero (smtpd's ``%016x``)."""
    return st.integers(1, 2**64 - 1).map(lambda n: f"{n:016x}")


_DOMAINS = [b"example.org", b"rig.test", b"xn--bcher-kva.example", b"EXAMPLE.COM", b"[127.0.0.1]",
            b"[IPv6:::1]", b"a.b.c.d.e.f.g", b"localhost"]


@functools.cache
def mail_addresses() -> st.SearchStrategy[bytes]:
    """Envelope addresses as smtpd forwards them (between ``<`` and ``>``):
    ``|`` in the local part, 8-bit bytes, the null sender, odd cases."""
    local = st.one_of(
        _printable(24, 1),
        st.binary(min_size=1, max_size=24).map(lambda b: b.translate(_ADDR_SAFE)),
        st.sampled_from([b"bob", b"a|b", b"|", b"||x||", b"ab|c|d", b"user+tag", b"J\xc3\xb6rg", b"\xff\xfe",
                         b"CleaniX UVRaySanatizer", b"x" * 64]),
    )
    domain = st.sampled_from(_DOMAINS)
    address = st.builds(lambda lp, d: (lp.replace(b"@", b"") or b"x") + b"@" + d, local, domain)
    return st.one_of(address, st.sampled_from([b"", b"postmaster", b"a|b@c|d", b"bad address"]))


@functools.cache
def auth_usernames() -> st.SearchStrategy[bytes]:
    """link-auth user names: remote clients choose them (``VBA|spil...``); smtpd
    escapes white space and control characters as octal (strnvis)."""
    return st.one_of(
        st.sampled_from([b"rig", b"VBA|spil", b"|", b"a|pass", b"fail|", b"user\\040name", b"\xc3\xa9l\xc3\xa8ve",
                         b"", b"admin@example.org", b"x|y|z|pass|fail"]),
        _printable(32),
        st.binary(max_size=32).map(lambda b: b.translate(_ADDR_SAFE)),
    )


@functools.cache
def rdns_names() -> st.SearchStrategy[bytes]:
    """PTR names: ``<unknown>`` when none, ``localhost`` for local sessions;
    the one link-connect field that could hold ``|``."""
    return st.one_of(
        st.sampled_from([b"<unknown>", b"localhost", b"mail.example.org", b"dyn-1-2-3-4.pool.example",
                         b"odd|name.example", b"\xc3\xa9.example", b"x" * 253]),
        _printable(40, 1),
    )


@functools.cache
def helo_names() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from([b"client.example.org", b"[127.0.0.1]", b"[IPv6:::1]", b"localhost", b"EXAMPLE.ORG",
                         b"a", b"x" * 255, b"mx.rig.test"]),
        st.from_regex(rb"\A[a-z0-9][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,3}\Z").filter(lambda b: b"\n" not in b),
    )


_V4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_V6 = st.sampled_from(["::1", "2001:db8::1", "fe80::1%eth0", "::ffff:192.0.2.1", "2001:db8:0:0:1:0:0:1",
                       "fd00::abcd:1", "fe80::2%25"])
_PORT = st.integers(0, 65535)


@functools.cache
def client_endpoints() -> st.SearchStrategy[tuple[str, str, str]]:
    """``(link-connect src, link-connect dest, connect-request src)``:
    ``a.b.c.d:port``, ``[v6]:port``, or ``unix:<socket>`` / ``local``."""
    v4 = st.builds(lambda a, pa, b, pb: (f"{a}:{pa}", f"{b}:{pb}", a), _V4, _PORT, _V4, _PORT)
    v6 = st.builds(lambda a, pa, b, pb: (f"[{a}]:{pa}", f"[{b}]:{pb}", f"[{a}]"), _V6, _PORT, _V6, _PORT)
    unix = st.sampled_from(["/var/run/smtpd.sock", "/run/opensmtpd/smtpd.sock"]).map(
        lambda s: (f"unix:{s}", f"unix:{s}", "local"))
    return st.one_of(v4, v6, unix)


# --------------------------------------------------------------------------
# Message content

#: Payload lengths around the limits that matter: smtpd <= 7.3 keeps 2,047
#: bytes per output line (1,997 bytes of payload with 16-hex ids), smtpd jams
#: on output lines over 65,535 bytes (65,485 bytes of payload), clients may
#: send 65,534 bytes.
LENGTH_EDGES = (997, 998, 1996, 1997, 1998, 2046, 2047, 2048, 4096, 65400, 65483, 65484, 65485, 65486,
                65487, 65500, 65532, 65533)


_UNIT = st.binary(min_size=1, max_size=6).map(_no_newline).filter(bool)


@functools.cache
def _long_line(min_len: int = 60000, max_len: int = MAX_CLIENT_LINE - 1) -> st.SearchStrategy[bytes]:
    """A long line from a small draw: a short unit repeated (hypothesis caps
    drawn sizes far below 64 KiB)."""
    edges = [n for n in LENGTH_EDGES if min_len <= n <= max_len]
    size = st.one_of(st.sampled_from(edges), st.integers(min_len, max_len)) if edges else st.integers(min_len, max_len)
    return st.builds(_repeat, _UNIT, size)


def _repeat(unit: bytes, size: int) -> bytes:
    reps, rest = divmod(size, len(unit))
    return unit * reps + unit[:rest]


_KIND = st.integers(0, 99)
_DOTS = st.integers(1, 3)
_BIN60 = st.binary(max_size=60).map(lambda b: b.translate(None, b"\n\0"))
_HEADERISH = st.sampled_from([b"Subject: hi", b"X-H:", b"\tfolded", b" cont", b"From: <a|b@c>", b"Received: by x",
                              b"X-Spam: Yes", b"To: \xc3\xa9@x", b"no colon here"])
_ODD = st.sampled_from([b"|", b"a|b", b"||", b"|.", b".|", b"filter|0.6|x", b"\r", b"a\rb", b"trailing space ",
                        b"\t", b"..", b"."])


@functools.cache
def content_lines(long_lines: bool = True) -> st.SearchStrategy[bytes]:
    """One message line as the client meant it (unstuffed, no CRLF): text,
    8-bit bytes, empty lines, lines starting with dots, ``|``, header and
    continuation lines, a bare CR, lines of 1-4 KiB and of 60-65 KiB."""
    medium = _long_line(900, 4200)
    long = _long_line() if long_lines else medium

    @st.composite
    def line(draw: Any) -> bytes:
        kind = draw(_KIND)
        if kind < 40:
            return draw(_printable(60))
        if kind < 52:
            return draw(_BIN60)
        if kind < 60:
            return b""
        if kind < 70:
            return b"." * draw(_DOTS) + draw(_printable(12))
        if kind < 78:
            return draw(_HEADERISH)
        if kind < 84:
            return draw(_ODD)
        if kind < 96:
            return draw(medium)
        return draw(long)

    return line()


@functools.cache
def data_lines(long_lines: bool = True) -> st.SearchStrategy[bytes]:
    """A data-line payload as smtpd sends it: a content line, dot-stuffed
    (never the lone ``.`` that ends the message)."""
    return content_lines(long_lines).map(_stuff)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _stuff(line: bytes) -> bytes:
    return b"." + line if line[:1] == b"." else line


_EXTRA_HEADERS = st.lists(st.sampled_from([b"Subject: test", b"X-Long:", b"\tcontinued", b"Date: now",
                                           b"Message-ID: <x@y>", b"X-8bit: \xe9\xe8"]), max_size=3)
_TENTH = st.integers(0, 9)


@functools.cache
def messages(max_lines: int = 16, long_lines: bool = True) -> st.SearchStrategy[tuple[bytes, ...]]:
    """A message as content lines: usually headers, an empty line and a body."""
    body = st.lists(content_lines(long_lines), max_size=max_lines)

    @st.composite
    def message(draw: Any) -> tuple[bytes, ...]:
        lines: list[bytes] = []
        if draw(_TENTH) < 8:
            lines += [b"From: <bob@example.org>", b"To: <alice@rig.test>"]
            lines += draw(_EXTRA_HEADERS)
            if draw(st.booleans()):
                lines.append(b"")
        lines += draw(body)
        return tuple(lines)

    return message()


# --------------------------------------------------------------------------
# Session scripts


@functools.cache
def _tls_strings() -> st.SearchStrategy[bytes]:
    return st.sampled_from([b"TLSv1.3:TLS_AES_256_GCM_SHA384:256", b"TLSv1.2:ECDHE-RSA-AES128-GCM-SHA256:128"])


_RCPT_RESULT = st.sampled_from(["ok", "ok", "ok", "permfail", "tempfail"])
_TX_ENDING = st.sampled_from(["data", "data", "data", "data", "rset", "abort", "open"])


@functools.cache
def _transaction(long_lines: bool) -> st.SearchStrategy[Transaction]:
    rcpts_st = st.lists(st.tuples(mail_addresses(), _RCPT_RESULT), min_size=1, max_size=3)
    message_st = messages(long_lines=long_lines)

    @st.composite
    def transaction(draw: Any) -> Transaction:
        rcpts = draw(rcpts_st)
        ending = draw(_TX_ENDING)
        message: tuple[bytes, ...] = ()
        abort_after = 0
        if ending in ("data", "abort"):
            message = draw(message_st)
            if ending == "abort":
                abort_after = draw(st.integers(0, len(message)))
        return Transaction(
            mail_from=draw(mail_addresses()),
            rcpts=tuple(rcpts),
            ending=ending,
            message=message,
            abort_after=abort_after,
            junk_header=draw(_TENTH) == 0,
            late_354=draw(st.booleans()),
        )

    return transaction()


_COMMAND_KIND = st.sampled_from(["helo", "helo", "starttls", "auth", "noop", "unknown", "report", "mail-refused",
                                 "tx", "tx", "tx", "tx"])
_HELO_METHOD = st.sampled_from(["EHLO", "HELO"])
_AUTH_MECH = st.sampled_from([b"PLAIN AHJpZwB3cm9uZ3Bhc3M=", b"LOGIN", b"PLAIN", b"LOGIN dXNlcg==", b"CRAM-MD5",
                              b"PLAIN \xff|x"])
_AUTH_RESULT = st.sampled_from(["pass", "fail", "error"])
_REPORT_KIND = st.sampled_from([b"builtin", b"proc"])
_BIN40 = st.binary(max_size=40).map(_no_newline)
_FILTER_NAME = st.sampled_from([b"no-rdns", b"dnsbl-in", b"check_rdns", b"f1", b"x"])
_UNKNOWN_CMD = st.sampled_from([b"VRFY x", b"HELP", b"WIZ", b"EXPN y", b"", b"|"])


@functools.cache
def _command(long_lines: bool) -> st.SearchStrategy[tuple[Any, ...]]:
    unknown = st.one_of(_printable(40), _UNKNOWN_CMD, _long_line(60000, 65400) if long_lines else _printable(40))
    tx = _transaction(long_lines)

    @st.composite
    def command(draw: Any) -> tuple[Any, ...]:
        kind = draw(_COMMAND_KIND)
        if kind == "helo":
            return ("helo", draw(_HELO_METHOD), draw(helo_names()))
        if kind == "starttls":
            return ("starttls", draw(_tls_strings()))
        if kind == "auth":
            return ("auth", draw(_AUTH_MECH), draw(auth_usernames()), draw(_AUTH_RESULT))
        if kind == "noop":
            return ("noop",)
        if kind == "unknown":
            return ("unknown", draw(unknown))
        if kind == "report":
            # the filter's name comes from smtpd.conf (no "|"); the message is free text
            return ("report", draw(_REPORT_KIND), draw(_FILTER_NAME), draw(_BIN40))
        if kind == "mail-refused":
            return ("mail-refused", draw(mail_addresses()))
        return ("tx", draw(tx))

    return command()


_SESSION_END = st.sampled_from(["quit", "quit", "disconnect", "timeout", "gone"])
_FCRDNS = st.sampled_from(["pass", "fail", "error"])
_GREETING = st.sampled_from([b"mx.rig.test", b"mx.example.org", b""])
_GONE_AT = st.integers(0, 30)


@functools.cache
def session_scripts(subsystem: str = "smtp-in", max_commands: int = 6,
                    long_lines: bool = True) -> st.SearchStrategy[SessionScript]:
    """One SMTP session: connect, then HELO/EHLO, STARTTLS, AUTH, NOOP,
    unknown commands, builtin filter reports and transactions in any order,
    ending with QUIT, a disconnect, a timeout, or a client that leaves while
    a filter request is pending."""
    commands_st = st.lists(_command(long_lines), max_size=max_commands)

    @st.composite
    def script(draw: Any) -> SessionScript:
        src, dest, connect_src = draw(client_endpoints())
        if src.startswith("unix:") and draw(st.booleans()):
            rdns = b"localhost"
        else:
            rdns = draw(rdns_names())
        commands = draw(commands_st)
        end = draw(_SESSION_END)
        return SessionScript(
            subsystem=subsystem,
            rdns=rdns,
            fcrdns=draw(_FCRDNS),
            src=src,
            dest=dest,
            connect_src=connect_src,
            greeting=draw(_GREETING),
            commands=tuple(commands),
            end=end,
            gone_at=draw(_GONE_AT) if end == "gone" else 0,
            gone_timeout=draw(st.booleans()) if end == "gone" else False,
        )

    return script()


# --------------------------------------------------------------------------
# Rendering a script to lines


class _Renderer:
    """Writes one session's lines as smtpd would, for one dialect and one
    registration; remembers where smtpd would switch to another session
    (``cuts``) and which transaction is open after each line."""

    def __init__(self, wire: Wire, phases: frozenset[str], events: frozenset[tuple[str, str]],
                 tokens: dict[str, str], rng: random.Random) -> None:
        self.wire = wire
        self.phases = phases
        self.events = events
        self.tokens = tokens
        self.rng = rng
        self.version = wire.version.decode()

    def ts(self) -> str:
        return "0.000000"  # stamped after interleaving (see _restamp)

    def start(self, sid: str, subsystem: str) -> None:
        self.sid = sid
        self.subsystem = subsystem
        self.lines: list[Line] = []
        self.tx_after: list[str | None] = []  # msgid open after each line
        self.cuts: set[int] = set()  # smtpd may switch sessions after lines[i]
        self.pending: list[int] = []  # indices of requests the client could leave at
        self.tx: str | None = None

    def _add(self, line: Line) -> None:
        self.lines.append(line)
        self.tx_after.append(self.tx)

    def cut(self) -> None:
        if self.lines:
            self.cuts.add(len(self.lines) - 1)

    def report(self, event: str, *fields: bytes | str, waits: bool = True, closes: bool = False) -> None:
        if (self.subsystem, event) not in self.events:
            return
        if event in ("tx-mail", "tx-rcpt"):
            raw = self.wire.tx_address(self.ts(), event, self.sid, *fields)  # type: ignore[arg-type]
            raw = raw.replace(b"|smtp-in|", b"|" + self.subsystem.encode() + b"|", 1)
        elif event == "link-auth":
            raw = self.wire.link_auth(self.ts(), self.sid, fields[0], str(fields[1]))
            raw = raw.replace(b"|smtp-in|", b"|" + self.subsystem.encode() + b"|", 1)
        else:
            raw = self.wire.report(self.ts(), event, self.sid, *fields, subsystem=self.subsystem)
        self._add(Line(raw, "report", self.sid, event, None, self.version, self.subsystem, waits, closes,
                       fields=tuple(_bytes(f) for f in fields)))

    def request(self, phase: str, param: bytes = b"") -> None:
        if phase not in self.phases:
            return
        token = self.tokens[phase]
        raw = self.wire.request(self.ts(), phase, self.sid, token, param)
        if phase == "connect":
            fields = tuple(param.rsplit(b"|", 1))
        else:
            fields = () if phase in p.PARAMETERLESS_PHASES else (param,)
        self._add(Line(raw, "request", self.sid, phase, token, self.version, fields=fields))
        self.pending.append(len(self.lines) - 1)
        self.cut()

    def data_line(self, payload: bytes, waits: bool = True) -> None:
        token = self.tokens["data-line"]
        raw = self.wire.request(self.ts(), "data-line", self.sid, token, payload)
        self._add(Line(raw, "data-line", self.sid, "data-line", token, self.version, waits=waits))
        if payload == b".":
            self.pending.append(len(self.lines) - 1)
            self.cut()

    def server(self, *replies: bytes) -> None:
        for reply in replies:
            self.report("protocol-server", reply)

    def response(self, phase: str, result: bytes = b"proceed") -> None:
        self.report("filter-response", phase, result)

    # -- a session -----------------------------------------------------------

    def msgid(self) -> str:
        return f"{self.rng.getrandbits(32) | 1:08x}"

    def render(self, sid: str, s: SessionScript) -> tuple[list[Line], set[int]]:
        self.start(sid, s.subsystem)
        if s.subsystem == "smtp-out":
            self._render_out(s)
            return self.lines, self.cuts
        self.report("link-connect", s.rdns, s.fcrdns, s.src, s.dest)
        self.request("connect", s.rdns + b"|" + s.connect_src.encode())
        self.response("connected")
        self.server(b"220 " + s.greeting + b" ESMTP OpenSMTPD")
        self.report("link-greeting", s.greeting)
        self.cut()
        helo = b"client.example.org"
        over = False
        for cmd in s.commands:
            kind = cmd[0]
            if kind == "helo":
                _, method, helo = cmd
                self.report("protocol-client", method.encode() + b" " + helo)
                self.request(method.lower(), helo)
                self.response(method.lower())
                self.report("link-identify", method, helo)
                if method == "EHLO":
                    self.server(b"250-" + s.greeting + b" Hello " + helo + b", pleased to meet you",
                                b"250-8BITMIME", b"250-SIZE 36700160", b"250 HELP")
                else:
                    self.server(b"250 " + s.greeting + b" Hello " + helo)
            elif kind == "starttls":
                self.report("protocol-client", b"STARTTLS")
                self.request("starttls")
                self.response("tls")
                self.server(b"220 2.0.0 Ready to start TLS")
                self.report("link-tls", cmd[1])
            elif kind == "auth":
                _, mech, user, result = cmd
                name = mech.split(b" ", 1)[0]
                self.report("protocol-client", b"AUTH " + name + (b" ********" if b" " in mech else b""))
                self.request("auth", mech)
                self.response("auth")
                if b" " not in mech:
                    self.server(b"334 VXNlcm5hbWU6")
                    self.report("protocol-client", b"********")
                self.report("link-auth", user, result)
                self.server(b"235 2.0.0 Authentication succeeded" if result == "pass" else b"535 Authentication failed")
            elif kind == "noop":
                self.report("protocol-client", b"NOOP")
                self.request("noop")
                self.response("noop")
                self.server(b"250 2.0.0 Ok")
            elif kind == "unknown":
                self.report("protocol-client", cmd[1])
                self.server(b"500 5.5.1 Invalid command: Command unrecognized")
            elif kind == "report":
                self.report("filter-report", cmd[1], cmd[2], cmd[3])
            elif kind == "mail-refused":
                if self.tx is not None:
                    continue
                self.report("protocol-client", b"MAIL FROM:<" + cmd[1] + b">")
                self.request("mail-from", cmd[1])
                self.report("filter-response", "mail-from", b"reject", b"550 5.7.1 go away")
                self.server(b"550 5.7.1 go away")
            elif kind == "tx":
                if self.tx is not None:
                    continue
                over = self._transaction(cmd[1], helo, s)
            self.cut()
            if over:
                break
        if not over:
            self._end(s)
        if s.end == "gone" and self.pending:
            self._leave_pending(s)
        return self.lines, self.cuts

    def _transaction(self, t: Transaction, helo: bytes, s: SessionScript) -> bool:
        """Returns True when the session ended inside it (client left mid-DATA)."""
        self.report("protocol-client", b"MAIL FROM:<" + t.mail_from + b"> SIZE=100")
        self.request("mail-from", t.mail_from)
        self.response("mail-from")
        self.server(b"250 2.0.0 Ok")
        msgid = self.msgid()
        self.tx = msgid
        self.report("tx-begin", msgid)
        self.report("tx-mail", msgid, "ok", t.mail_from)
        self.cut()
        for rcpt, result in t.rcpts:
            self.report("protocol-client", b"RCPT TO:<" + rcpt + b">")
            self.request("rcpt-to", rcpt)
            self.response("rcpt-to")
            if result == "ok":
                self.report("tx-envelope", msgid, f"{msgid}{self.rng.getrandbits(32):08x}")
                self.server(b"250 2.1.5 Destination address valid: Recipient ok")
            else:
                self.server(b"550 Invalid recipient" if result == "permfail" else b"451 Temporary failure")
            self.report("tx-rcpt", msgid, result, rcpt)
            self.cut()
        if t.ending == "rset":
            self.report("protocol-client", b"RSET")
            self.request("rset")
            self.response("rset")
            self.server(b"250 2.0.0 Reset state")
            self.tx = None
            self.report("tx-rollback", msgid)
            self.report("tx-reset", msgid)
            return False
        if t.ending == "open":
            return False
        self.report("protocol-client", b"DATA")
        self.request("data")
        self.response("data")
        self.cut()
        streamed = "data-line" in self.phases
        if not (streamed and t.late_354):
            self.server(b'354 Enter mail, end with "." on a line by itself')
            self.report("tx-data", msgid, "ok")
        content = list(t.message)
        if t.ending == "abort":
            content = content[: t.abort_after]
        if streamed:
            header = [b"X-Spam: Yes"] if t.junk_header else []
            header += [b"Received: from " + helo + b" (" + s.rdns + b" [" + s.connect_src.encode() + b"])",
                       b"\tby mx.rig.test (OpenSMTPD) with ESMTP id " + msgid.encode(),
                       b"\tfor <" + t.rcpts[0][0] + b">;",
                       b"\tFri, 20 Nov 2026 23:51:30 +0000 (UTC)"]
            for i, line in enumerate(header):
                self.data_line(line)
                if i == len(header) - 1 and t.late_354:
                    self.server(b'354 Enter mail, end with "." on a line by itself')
                    self.report("tx-data", msgid, "ok")
            burst = self.rng.randint(1, 6)
            for i, line in enumerate(content):
                self.data_line(_stuff(line))
                if i % burst == burst - 1:
                    self.cut()
        if t.ending == "abort":
            # The client is gone: no final ".", smtpd tears the session down
            # without waiting for anything.
            before = len(self.lines)
            self._teardown(None)
            for i in range(before, len(self.lines)):
                self.lines[i] = replace(self.lines[i], waits=False)
            return True
        if streamed:
            self.data_line(b".")
        self.report("protocol-client", b".", waits=False)
        self.request("commit")
        self.response("commit")
        self.server(b"250 2.0.0 " + msgid.encode() + b" Message accepted for delivery")
        self.report("tx-commit", msgid, str(100 + sum(len(c) + 2 for c in content)))
        self.tx = None
        self.report("tx-reset", msgid)
        return False

    def _teardown(self, first: str | None) -> None:
        """smtpd freeing the session: [timeout,] [tx-rollback, tx-reset,] link-disconnect."""
        before = len(self.lines)
        if first == "timeout":
            self.report("timeout", closes=True)
        if self.tx is not None:
            msgid, self.tx = self.tx, None
            self.report("tx-rollback", msgid, closes=True)
            self.report("tx-reset", msgid)
        self.report("link-disconnect", closes=True)
        # Only the first line of the teardown is the moment smtpd lets go.
        seen = False
        for i in range(before, len(self.lines)):
            if self.lines[i].closes:
                if seen:
                    self.lines[i] = replace(self.lines[i], closes=False)
                seen = True
        if not seen and len(self.lines) > before:
            self.lines[before] = replace(self.lines[before], closes=True)

    def _end(self, s: SessionScript) -> None:
        if s.end == "quit":
            self.report("protocol-client", b"QUIT")
            self.request("quit")
            self.response("quit")
            self.server(b"221 2.0.0 Bye")
            self._teardown(None)
        elif s.end == "timeout":
            self._teardown("timeout")
        else:
            self._teardown(None)

    def _leave_pending(self, s: SessionScript) -> None:
        """The client leaves (or times out) while request ``gone_at`` waits for
        the filter: everything after it is replaced by smtpd's teardown, which
        does not wait for the answer."""
        at = self.pending[s.gone_at % len(self.pending)]
        self.tx = self.tx_after[at]
        del self.lines[at + 1:]
        del self.tx_after[at + 1:]
        self.cuts = {c for c in self.cuts if c < at} | {at}
        before = len(self.lines)
        self._teardown("timeout" if s.gone_timeout else None)
        for i in range(before, len(self.lines)):
            self.lines[i] = replace(self.lines[i], waits=False)

    def _render_out(self, s: SessionScript) -> None:
        """An smtp-out session (relay): reports only, never requests."""
        self.report("link-connect", s.rdns, "pass", s.dest, s.src)
        self.server(b"220 remote.example ESMTP")
        self.report("link-greeting", b"remote.example")
        self.report("protocol-client", b"EHLO mx.rig.test")
        self.server(b"250-remote.example", b"250 PIPELINING")
        self.report("link-identify", "EHLO", b"mx.rig.test")
        self.cut()
        for cmd in s.commands:
            if cmd[0] == "starttls":
                self.report("protocol-client", b"STARTTLS")
                self.server(b"220 go ahead")
                self.report("link-tls", cmd[1])
            elif cmd[0] == "auth":
                self.report("protocol-client", b"AUTH PLAIN ********")
                self.report("link-auth", cmd[2], cmd[3])
            elif cmd[0] == "tx":
                t = cmd[1]
                msgid = self.msgid()
                self.tx = msgid
                self.report("tx-begin", msgid)
                self.report("protocol-client", b"MAIL FROM:<" + t.mail_from + b">")
                self.server(b"250 Ok")
                self.report("tx-mail", msgid, "ok", t.mail_from)
                for rcpt, result in t.rcpts:
                    self.report("protocol-client", b"RCPT TO:<" + rcpt + b">")
                    self.report("tx-envelope", msgid, f"{msgid}{self.rng.getrandbits(32):08x}")
                    self.report("tx-rcpt", msgid, result, rcpt)
                self.report("protocol-client", b"DATA")
                self.server(b"354 go")
                self.report("tx-data", msgid, "ok")
                self.report("protocol-client", b".")
                self.server(b"250 queued")
                self.report("tx-commit", msgid, "1234")
                self.tx = None
                self.report("tx-reset", msgid)
            self.cut()
        if s.end == "timeout":
            self._teardown("timeout")
        else:
            self.report("protocol-client", b"QUIT")
            self.server(b"221 Bye")
            self._teardown(None)


def _tokens(rng: random.Random, avoid: set[str]) -> dict[str, str]:
    """One token per phase for the whole stream: smtpd makes one per (chain
    position, phase) at start-up, and every session gets the same ones."""
    tokens: dict[str, str] = {}
    for phase in p.FILTER_PHASES:
        while True:
            tok = f"{rng.getrandbits(64) | 1:016x}"
            if tok not in avoid and tok not in tokens.values():
                break
        tokens[phase] = tok
    return tokens


def registration_of(registered: Any) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """``(phases, events)`` from a ``Filter`` (its ``registrations()``), a
    ``(reports, phases)`` pair, a set of phase names, or None (everything)."""
    if registered is None:
        return ALL_PHASES, ALL_SMTP_IN | ALL_SMTP_OUT
    if hasattr(registered, "registrations"):
        reports, phases = registered.registrations()
        return frozenset(phases) & ALL_PHASES, frozenset(reports)
    if isinstance(registered, tuple) and len(registered) == 2:
        reports, phases = registered
        return frozenset(phases) & ALL_PHASES, frozenset(reports)
    return frozenset(registered) & ALL_PHASES, ALL_SMTP_IN | ALL_SMTP_OUT


def _restamp(lines: list[Line], rng: random.Random) -> list[Line]:
    """smtpd's ``%lld.%06ld`` timestamps, in stream order; report and request
    clocks are taken in different processes, so now and then one goes back."""
    now = 1795218690.0 + rng.random() * 1000
    out = []
    for line in lines:
        now += rng.choice((0.000003, 0.00001, 0.0002, 0.04, 1.5))
        stamp = now - (0.0005 if rng.random() < 0.05 else 0.0)
        sec = int(stamp)
        ts = b"%d.%06d" % (sec, int((stamp - sec) * 1e6))
        head, version, _, rest = line.raw.split(b"|", 3)
        out.append(replace(line, raw=b"|".join((head, version, ts, rest))))
    return out


def _interleave(per_session: list[tuple[list[Line], set[int]]], rng: random.Random) -> list[Line]:
    """Merge sessions block by block (a block ends where smtpd may switch)."""
    queues: list[list[list[Line]]] = []
    for lines, cuts in per_session:
        blocks, current = [], []
        for i, line in enumerate(lines):
            current.append(line)
            if i in cuts:
                blocks.append(current)
                current = []
        if current:
            blocks.append(current)
        blocks.reverse()
        queues.append(blocks)
    out: list[Line] = []
    live = [q for q in queues if q]
    sticky = rng.random() < 0.3  # sometimes sessions run mostly one after the other
    current_q = None
    while live:
        if sticky and current_q is not None and current_q in live and rng.random() < 0.9:
            q = current_q
        else:
            q = rng.choice(live)
        current_q = q
        out.extend(q.pop())
        if not q:
            live.remove(q)
    return out


_FUTURE_CONFIG = st.sampled_from([b"config|x-future-key|a|b|c", b"config|smtp-max-line|65535", b"config|empty|",
                                  b"config|tls|TLSv1.3:ECDHE|x"])


@st.composite
def streams(
    draw: Any,
    dialect: str | st.SearchStrategy[str] | None = None,
    registered: Any = None,
    sessions: int | st.SearchStrategy[int] | None = None,
    smtp_out: bool | None = None,
    long_lines: bool = True,
    max_commands: int = 6,
) -> Stream:
    """A valid stream smtpd could write to a filter: the handshake, then
    ``sessions`` interleaved sessions (default 1-4) rendered for ``dialect``
    (default: any), sending only what ``registered`` (a Filter, a
    ``(reports, phases)`` pair or a set of phases; default everything)
    asked for.  ``smtp_out``: announce smtp-out and add relay sessions
    (default: drawn, where the dialect can announce it)."""
    if dialect is None:
        dialect = draw(dialects())
    elif not isinstance(dialect, str):
        dialect = draw(dialect)
    phases, events = registration_of(registered)
    can_out = bool(DIALECTS[dialect]["subsystems"])
    if smtp_out is None:
        smtp_out = can_out and draw(st.integers(0, 3)) == 0
    smtp_out = bool(smtp_out and can_out)
    if sessions is None:
        n = draw(st.integers(1, 4))
    elif isinstance(sessions, int):
        n = sessions
    else:
        n = draw(sessions)
    n_out = draw(st.integers(0, 2)) if smtp_out and (events & ALL_SMTP_OUT) else 0
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    scripts = [draw(session_scripts("smtp-in", max_commands, long_lines)) for _ in range(n)]
    scripts += [draw(session_scripts("smtp-out", 3, False)) for _ in range(n_out)]
    sids: list[str] = []
    while len(sids) < len(scripts):
        sid = f"{rng.getrandbits(64) | 1:016x}"
        if sid not in sids:
            sids.append(sid)
    tokens = _tokens(rng, set(sids))
    wire = Wire(dialect, smtp_out=smtp_out)
    renderer = _Renderer(wire, phases, events, tokens, rng)
    per_session = [renderer.render(sid, script) for sid, script in zip(sids, scripts)]
    for lines, _ in per_session:
        for line in lines:
            if line.kind in ("request", "data-line") and line.name != "data-line":
                assert line.name in phases
    body = _restamp(_interleave(per_session, rng), rng)
    handshake = wire.handshake()
    if draw(_TENTH) == 0:  # a newer smtpd may announce keys nobody knows yet (protocol.md §1.1)
        handshake.insert(len(handshake) - 1, draw(_FUTURE_CONFIG))
    head = [Line(raw, "config", name=raw.split(b"|")[1].decode(), waits=False) for raw in handshake]
    return Stream(dialect, tuple(head + body), phases, events, smtp_out)


# --------------------------------------------------------------------------
# Corruption

_UNKNOWN_NAMES = [b"link-foo", b"data-lines", b"CONNECT", b"tx-rset", b"", b"link-reset", b"help", b"wiz",
                  b"report", b"filter", b"data-line ", b"x" * 300]
_BAD_VERSIONS = [b"", b"0", b"x.y", b"0.x", b"0.6.1", b"-0.6", b"0.6 ", b" 0.6", b"0,6", b"v0.6", b"\xff", b"."]
#: Versions that are not released yet but well-formed: parsed with the newest
#: rules (never compared as text: "0.10" > "0.7").
FUTURE_VERSIONS = [b"0.8", b"0.10", b"0.42", b"1.0", b"2.3", b"0.07"]
MUTATIONS = ("truncate", "unknown-name", "bad-version", "future-version", "drop-field", "swap-fields",
             "garbage", "cr", "crlf", "empty", "dup-line", "dup-config", "config-after-ready", "nul",
             "long-garbage", "tail", "prefix-only", "missing-payload")


def _damage(line: Line, raw: bytes) -> Line:
    return replace(line, raw=raw, damaged=True, waits=False)  # closes: see _keep_closes


def _mutate(lines: list[Line], kind: str, rng: random.Random, junk: bytes) -> tuple[list[Line], bytes]:
    """Apply one mutation; returns the new lines and an EOF tail."""
    body = [i for i, ln in enumerate(lines) if ln.kind != "config"]
    config = [i for i, ln in enumerate(lines) if ln.kind == "config"]
    ready = next((i for i in config if lines[i].raw == b"config|ready"), len(config))
    pick = rng.choice(body) if body else None
    tail = b""
    if kind in ("truncate", "drop-field", "swap-fields", "cr", "crlf", "nul", "unknown-name", "bad-version",
                "missing-payload") and pick is None:
        kind = "garbage"
    if kind == "truncate":
        raw = lines[pick].raw
        lines[pick] = _damage(lines[pick], raw[: rng.randrange(len(raw))] if raw else b"")
    elif kind == "unknown-name":
        fields = lines[pick].raw.split(b"|")
        if len(fields) > 4:
            fields[4] = rng.choice(_UNKNOWN_NAMES)
        lines[pick] = _damage(lines[pick], b"|".join(fields))
    elif kind == "bad-version":
        fields = lines[pick].raw.split(b"|")
        if len(fields) > 1:
            fields[1] = rng.choice(_BAD_VERSIONS)
        lines[pick] = _damage(lines[pick], b"|".join(fields))
    elif kind == "future-version":
        # A request in a version this SDK does not know yet stays a request
        # that must be answered (newest rules: SID|TOK).
        candidates = [i for i in body if lines[i].kind == "request" and not lines[i].damaged]
        if candidates:
            i = rng.choice(candidates)
            fields = lines[i].raw.split(b"|", 2)
            version = rng.choice(FUTURE_VERSIONS)
            lines[i] = replace(lines[i], raw=b"|".join([fields[0], version, fields[2]]), version=version.decode())
    elif kind == "drop-field":
        fields = lines[pick].raw.split(b"|")
        if len(fields) > 1:
            del fields[rng.randrange(1, len(fields))]
        lines[pick] = _damage(lines[pick], b"|".join(fields))
    elif kind == "missing-payload":
        # a data-line (or any request) without its last field
        candidates = [i for i in body if lines[i].kind in ("data-line", "request")] or [pick]
        i = rng.choice(candidates)
        lines[i] = _damage(lines[i], lines[i].raw.rsplit(b"|", 1)[0])
    elif kind == "swap-fields":
        fields = lines[pick].raw.split(b"|")
        if len(fields) > 2:
            a, b = rng.sample(range(len(fields)), 2)
            fields[a], fields[b] = fields[b], fields[a]
        lines[pick] = _damage(lines[pick], b"|".join(fields))
    elif kind == "cr":
        lines[pick] = _damage(lines[pick], lines[pick].raw + b"\r")
    elif kind == "crlf":
        raw = lines[pick].raw
        at = rng.randrange(len(raw) + 1)
        lines[pick] = _damage(lines[pick], raw[:at] + b"\r" + raw[at:])
    elif kind == "nul":
        raw = lines[pick].raw
        at = rng.randrange(len(raw) + 1)
        lines[pick] = _damage(lines[pick], raw[:at] + b"\0" + raw[at:])
    elif kind == "garbage":
        at = rng.randrange(ready + 1, len(lines) + 1) if len(lines) > ready else len(lines)
        lines.insert(at, Line(junk, "garbage", damaged=True, waits=False))
    elif kind == "long-garbage":
        at = rng.randrange(ready + 1, len(lines) + 1) if len(lines) > ready else len(lines)
        prefix = rng.choice([b"", b"filter|0.6|1.0|smtp-in|data-line|", b"report|0.7|1.0|smtp-in|protocol-client|"])
        lines.insert(at, Line(prefix + (junk or b"x") * (70000 // max(1, len(junk)) + 1), "garbage",
                              damaged=True, waits=False))
    elif kind == "empty":
        at = rng.randrange(ready + 1, len(lines) + 1) if len(lines) > ready else len(lines)
        lines.insert(at, Line(rng.choice([b"", b"|", b"||||||||", b" "]), "garbage", damaged=True, waits=False))
    elif kind == "prefix-only":
        at = rng.randrange(ready + 1, len(lines) + 1) if len(lines) > ready else len(lines)
        lines.insert(at, Line(rng.choice([b"filter|", b"report|", b"config|", b"filter", b"report|0.6",
                                          b"filter|0.6|1.0|smtp-in|commit|"]), "garbage", damaged=True, waits=False))
    elif kind == "dup-line":
        if pick is not None:
            lines.insert(pick + 1, _damage(lines[pick], lines[pick].raw))
    elif kind == "dup-config":
        # smtpd never repeats its config block; an SDK must still register once.
        if config:
            i = rng.choice(config)
            lines.insert(i + 1, _damage(lines[i], lines[i].raw))
    elif kind == "config-after-ready":
        at = rng.randrange(ready + 1, len(lines) + 1) if len(lines) > ready else len(lines)
        raw = rng.choice([b"config|ready", b"config|subsystem|smtp-out", b"config|protocol|0.7",
                          b"config|smtp-session-timeout|x", b"config|new-key|a|b", b"config|"])
        lines.insert(at, Line(raw, "garbage", damaged=True, waits=False))
    elif kind == "tail":
        tail = rng.choice([b"filter|0.6|1.0|smtp-in|connect|", b"report|0.6", b"x" * 1000, junk])
    return lines, tail


@st.composite
def corrupted_streams(draw: Any, dialect: str | st.SearchStrategy[str] | None = None, registered: Any = None,
                      sessions: int | st.SearchStrategy[int] | None = None,
                      mutations: int | st.SearchStrategy[int] | None = None) -> Stream:
    """A valid stream (see ``streams``) with 1-6 mutations applied
    (``MUTATIONS``).  ``config|ready`` is never damaged (smtpd always sends
    it) and ``config`` lines are only duplicated or added after it.  Damaged
    lines carry ``damaged=True``; intact requests keep their metadata."""
    base = draw(streams(dialect=dialect, registered=registered, sessions=sessions,
                        max_commands=4))
    if mutations is None:
        count = draw(st.integers(1, 6))
    elif isinstance(mutations, int):
        count = mutations
    else:
        count = draw(mutations)
    kinds = draw(st.lists(st.sampled_from(MUTATIONS), min_size=count, max_size=count))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    junk = draw(st.binary(max_size=80)).replace(b"\n", b"")
    lines = list(base.lines)
    tail = b""
    for kind in kinds:
        lines, new_tail = _mutate(lines, kind, rng, junk)
        tail = tail or new_tail
    return replace(base, lines=tuple(_keep_closes(lines)), corrupted=True, mutations=tuple(kinds),
                   tail=tail)


def _keep_closes(after: list[Line]) -> list[Line]:
    """smtpd let go of a session when it wrote the first line of its
    teardown; if that line got damaged, the moment is still there: the
    session's next intact line carries ``closes`` (damaged lines carry none)."""
    out: list[Line] = []
    moving: set[str] = set()
    for line in after:
        if line.damaged and line.closes:
            moving.add(line.sid or "")
            line = replace(line, closes=False)
        elif line.sid in moving and not line.damaged:
            moving.discard(line.sid)
            line = replace(line, closes=True)
        out.append(line)
    return out


# --------------------------------------------------------------------------
# Plugin hook


def _hypothesis_setup_hook() -> None:
    """Entry point for ``[project.entry-points.hypothesis]``: lets
    ``st.from_type(Stream)`` and ``st.builds`` find these strategies."""
    st.register_type_strategy(Stream, streams())
    st.register_type_strategy(SessionScript, session_scripts())
    st.register_type_strategy(Transaction, _transaction(True))

