"""The wire: parse smtpd's lines and format the filter's, for every protocol version.

No I/O and no state live here.  Everything is bytes in, small typed records out
(and the other way round).  Version differences are data: one table,
``PROTOCOL_RULES``, looked up by the version field of each line (see
research/protocol.md §0.2, §2, §3, §4).

Strings handed to users are decoded as UTF-8 with ``surrogateescape`` so that
8-bit input survives a round trip through ``encode_field``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Union

# --------------------------------------------------------------------------
# Versions as data


@dataclass(frozen=True, slots=True)  # built once, at import
class Rules:
    """How one protocol version lays out the fields that moved over time."""

    since: tuple[int, int]
    token_first: bool  # responses are ``TOK|SID`` (0.4) instead of ``SID|TOK``
    tx_address_middle: bool  # tx-mail/tx-rcpt are ``msgid|address|result`` (< 0.6)
    auth_result_first: bool  # link-auth is ``result|username`` (0.7+)


#: One row per change of the wire format; a version uses the newest row whose
#: ``since`` is not above it.  Unknown newer versions get the last row.
PROTOCOL_RULES: tuple[Rules, ...] = (
    Rules(since=(0, 4), token_first=True, tx_address_middle=True, auth_result_first=False),
    Rules(since=(0, 5), token_first=False, tx_address_middle=True, auth_result_first=False),
    Rules(since=(0, 6), token_first=False, tx_address_middle=False, auth_result_first=False),
    Rules(since=(0, 7), token_first=False, tx_address_middle=False, auth_result_first=True),
)
NEWEST_RULES = PROTOCOL_RULES[-1]


def parse_version(raw: bytes | str) -> tuple[int, int] | None:
    """``b"0.6"`` -> ``(0, 6)``; compare versions as integer tuples, never as text."""
    if isinstance(raw, str):
        raw = raw.encode("ascii", "replace")
    major, dot, minor = raw.partition(b".")
    if not dot or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


@functools.lru_cache(maxsize=64)
def rules_for(raw_version: bytes) -> Rules | None:
    """The rules for a line's version field, or None when it is not a version."""
    version = parse_version(raw_version)
    if version is None:
        return None
    chosen = PROTOCOL_RULES[0]
    for rules in PROTOCOL_RULES:
        if version >= rules.since:
            chosen = rules
    return chosen


# --------------------------------------------------------------------------
# Names

SUBSYSTEMS = ("smtp-in", "smtp-out")

REPORT_EVENTS = (
    "link-connect",
    "link-greeting",
    "link-identify",
    "link-tls",
    "link-auth",
    "link-disconnect",
    "tx-reset",
    "tx-begin",
    "tx-mail",
    "tx-rcpt",
    "tx-envelope",
    "tx-data",
    "tx-commit",
    "tx-rollback",
    "protocol-client",
    "protocol-server",
    "filter-report",
    "filter-response",
    "timeout",
)

#: Phases smtpd sends requests for (``help``/``wiz`` are registrable but never fire).
FILTER_PHASES = (
    "connect",
    "helo",
    "ehlo",
    "starttls",
    "auth",
    "mail-from",
    "rcpt-to",
    "data",
    "data-line",
    "commit",
    "rset",
    "quit",
    "noop",
)

#: Filter requests whose parameter is always empty.
PARAMETERLESS_PHASES = frozenset({"starttls", "data", "commit", "rset", "quit", "noop"})

#: Lines longer than this are never written: smtpd's reader of filter output
#: holds 65,536 bytes including the newline and spins forever on a longer line
#: (protocol.md §9).
MAX_OUTPUT_LINE = 65535
#: smtpd <= 7.3 (protocol < 0.7) silently keeps only this much of each line.
LEGACY_OUTPUT_LINE = 2047

# --------------------------------------------------------------------------
# Helpers for fields


#: Bytes as ints, for membership tests on short fields: ``CR in field`` is a
#: byte search in C, where ``b"\r" in field`` first takes a buffer of the
#: needle (about 8 times as long on a session id).
CR, LF = ord("\r"), ord("\n")


def decode_field(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_field(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class ProtocolError(ValueError):
    """A line that does not follow the protocol; the runtime logs and skips it."""


# --------------------------------------------------------------------------
# Addresses (link-connect src/dest, connect src)


@dataclass(slots=True)
class Address:
    """A client or listener address as smtpd prints it.

    ``family`` is ``inet``, ``inet6``, ``unix`` (link-connect of a local
    session: ``unix:/var/run/smtpd.sock``) or ``local`` (the connect request's
    form of the same).  ``host`` is the bare IP (no brackets, no scope) for
    inet/inet6, the socket path for unix, empty for local.
    """

    family: str
    host: str
    port: int | None = None
    scope: str = ""
    raw: str = ""

    @property
    def is_local(self) -> bool:
        return self.family in ("unix", "local")

    @property
    def is_ip(self) -> bool:
        return self.family in ("inet", "inet6")

    def __str__(self) -> str:
        return self.raw or self.host


def parse_address(raw: str) -> Address:
    """Parse ``1.2.3.4:25``, ``[::1]:25``, ``[fe80::1%eth0]``, ``1.2.3.4``,
    ``unix:/path`` or ``local``.  Anything else comes back as family ``unknown``
    (a new format must not take the filter down)."""
    # Every session brings two or three of these: an IPv4 ``host:port`` or a
    # bare IPv4 address (the connect request's) is taken first, in one
    # partition; the rest goes through the rules in order.
    host, colon, port_text = raw.partition(":")
    if colon:
        if ":" not in port_text and raw[:1] != "[" and host != "unix":
            return Address("inet", host, _port(port_text), "", raw)
    elif len(octets := raw.split(".")) == 4 and all(map(str.isdigit, octets)):
        return Address("inet", raw, None, "", raw)
    if raw == "local":
        return Address("local", "", None, "", raw)
    if raw.startswith("unix:"):
        return Address("unix", raw[5:], None, "", raw)
    if raw.startswith("["):
        inner, close, rest = raw[1:].partition("]")
        if not close:
            return Address("unknown", raw, None, "", raw)
        if inner.lower().startswith("ipv6:"):  # HELO-literal style, harmless to accept
            inner = inner[5:]
        host, _, scope = inner.partition("%")
        port = _port(rest[1:]) if rest.startswith(":") else None
        return Address("inet6", host, port, scope, raw)
    if raw.count(":") > 1:  # an unbracketed IPv6 literal
        host, _, scope = raw.partition("%")
        return Address("inet6", host, None, scope, raw)
    return Address("unknown", raw, None, "", raw)


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() else None


# --------------------------------------------------------------------------
# Handshake


@dataclass(slots=True)
class Config:
    """What smtpd said in the ``config|`` block."""

    smtpd_version: str = ""
    #: Present only from 7.6 on (``config|protocol|0.7``): the only sign that the
    #: ``report`` decision will not kill smtpd.
    protocol: str | None = None
    session_timeout: int | None = None
    subsystems: list[str] = field(default_factory=list)
    admd: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    ready: bool = False

    @property
    def protocol_version(self) -> tuple[int, int] | None:
        return parse_version(self.protocol) if self.protocol else None

    @property
    def report_decision_allowed(self) -> bool:
        return self.protocol is not None

    def apply(self, key: str, value: str) -> None:
        if key == "smtpd-version":
            self.smtpd_version = value
        elif key == "protocol":
            self.protocol = value
        elif key == "smtp-session-timeout":
            self.session_timeout = int(value) if value.isdigit() else None
        elif key == "subsystem":
            if value not in self.subsystems:
                self.subsystems.append(value)
        elif key == "admd":
            self.admd = value
        elif key == "ready":
            self.ready = True
        else:
            self.extra[key] = value


def parse_config(line: bytes) -> tuple[str, str]:
    """``config|KEY|VALUE`` (VALUE may hold ``|``) or ``config|ready``."""
    parts = line.split(b"|", 2)
    if len(parts) < 2 or parts[0] != b"config":
        raise ProtocolError("not a config line")
    return decode_field(parts[1]), decode_field(parts[2]) if len(parts) == 3 else ""


def registration_lines(
    reports: set[tuple[str, str]] | frozenset[tuple[str, str]],
    phases: set[str] | frozenset[str],
    config: Config,
) -> list[bytes]:
    """The registration block: each event and phase exactly once (smtpd sends a
    twice-registered event twice), smtp-out reports only where announced (fatal
    on 0.4), ``register|ready`` last."""
    out: list[bytes] = []
    for subsystem, event in sorted(reports):
        if event not in REPORT_EVENTS:
            raise ValueError(f"unknown report event {event!r}")
        if subsystem == "smtp-out" and "smtp-out" not in config.subsystems:
            continue
        if subsystem not in SUBSYSTEMS:
            raise ValueError(f"unknown subsystem {subsystem!r}")
        out.append(b"register|report|%s|%s" % (subsystem.encode(), event.encode()))
    for phase in sorted(phases):
        if phase not in FILTER_PHASES:
            raise ValueError(f"unknown filter phase {phase!r}")
        out.append(b"register|filter|smtp-in|%s" % phase.encode())
    out.append(b"register|ready")
    return out


# --------------------------------------------------------------------------
# Report events: one small record per event.  Records are built for every
# line, so they are plain slots classes: a frozen dataclass pays an
# object.__setattr__ per field, which doubled the cost of a report.


@dataclass(slots=True)
class LinkConnect:
    rdns: str  # PTR name, or "<unknown>"
    fcrdns: str  # pass | fail | error
    src: Address
    dest: Address


@dataclass(slots=True)
class LinkGreeting:
    hostname: str


@dataclass(slots=True)
class LinkIdentify:
    method: str  # HELO | EHLO (smtp-out: LHLO too)
    identity: str


@dataclass(slots=True)
class LinkTLS:
    tls: str  # version:cipher:bits


@dataclass(slots=True)
class LinkAuth:
    username: str
    result: str  # pass | fail | error


@dataclass(slots=True)
class LinkDisconnect:
    pass


@dataclass(slots=True)
class TxReset:
    msgid: str


@dataclass(slots=True)
class TxBegin:
    msgid: str


@dataclass(slots=True)
class TxMail:
    msgid: str
    result: str  # ok | permfail | tempfail
    address: str


@dataclass(slots=True)
class TxRcpt:
    msgid: str
    result: str
    address: str


@dataclass(slots=True)
class TxEnvelope:
    msgid: str
    evpid: str


@dataclass(slots=True)
class TxData:
    msgid: str
    result: str


@dataclass(slots=True)
class TxCommit:
    msgid: str
    size: int | None


@dataclass(slots=True)
class TxRollback:
    msgid: str


@dataclass(slots=True)
class ProtocolClient:
    command: str


@dataclass(slots=True)
class ProtocolServer:
    response: str


@dataclass(slots=True)
class FilterReport:
    kind: str
    name: str
    message: str


@dataclass(slots=True)
class FilterResponse:
    phase: str  # note: "connected" and "tls", not "connect"/"starttls"
    response: str
    param: str | None


@dataclass(slots=True)
class Timeout:
    pass


EventParams = Union[
    LinkConnect,
    LinkGreeting,
    LinkIdentify,
    LinkTLS,
    LinkAuth,
    LinkDisconnect,
    TxReset,
    TxBegin,
    TxMail,
    TxRcpt,
    TxEnvelope,
    TxData,
    TxCommit,
    TxRollback,
    ProtocolClient,
    ProtocolServer,
    FilterReport,
    FilterResponse,
    Timeout,
]


@dataclass(slots=True)
class Report:
    version: str
    timestamp: str
    subsystem: str
    event: str
    session: str
    params: EventParams


def _fields(rest: bytes | None, count: int, *, from_right: bool = False) -> list[str]:
    """Exactly ``count`` fields, the free-text one split last."""
    if rest is None:
        raise ProtocolError(f"expected {count} fields, got none")
    parts = rest.rsplit(b"|", count - 1) if from_right else rest.split(b"|", count - 1)
    if len(parts) != count:
        raise ProtocolError(f"expected {count} fields, got {len(parts)}")
    return [decode_field(p) for p in parts]


def _one(rest: bytes | None) -> str:
    if rest is None:
        raise ProtocolError("expected a field, got none")
    return decode_field(rest)


def _none(rest: bytes | None) -> None:
    if rest is not None:
        raise ProtocolError("unexpected fields")


def _link_connect(rest: bytes | None, rules: Rules) -> LinkConnect:
    # rdns comes from DNS, so it is the one field that could hold "|".
    if rest is None:
        raise ProtocolError("expected 4 fields, got none")
    parts = rest.rsplit(b"|", 3)
    if len(parts) != 4:
        raise ProtocolError(f"expected 4 fields, got {len(parts)}")
    rdns, fcrdns, src, dest = parts
    return LinkConnect(
        decode_field(rdns), decode_field(fcrdns), parse_address(decode_field(src)), parse_address(decode_field(dest))
    )


def _link_identify(rest: bytes | None, rules: Rules) -> LinkIdentify:
    method, identity = _fields(rest, 2)
    return LinkIdentify(method, identity)


def _link_auth(rest: bytes | None, rules: Rules) -> LinkAuth:
    if rules.auth_result_first:
        result, username = _fields(rest, 2)
    else:  # the username is first and may hold "|": the result is the last field
        username, result = _fields(rest, 2, from_right=True)
    return LinkAuth(username, result)


def _tx_address(rest: bytes | None, rules: Rules) -> tuple[str, str, str]:
    if rules.tx_address_middle:
        if rest is None:
            raise ProtocolError("expected 3 fields, got none")
        head = rest.split(b"|", 1)
        tail = head[-1].rsplit(b"|", 1) if len(head) == 2 else []
        if len(tail) != 2:
            raise ProtocolError("expected 3 fields")
        return decode_field(head[0]), decode_field(tail[1]), decode_field(tail[0])
    msgid, result, address = _fields(rest, 3)
    return msgid, result, address


def _tx_mail(rest: bytes | None, rules: Rules) -> TxMail:
    return TxMail(*_tx_address(rest, rules))


def _tx_rcpt(rest: bytes | None, rules: Rules) -> TxRcpt:
    return TxRcpt(*_tx_address(rest, rules))


def _tx_commit(rest: bytes | None, rules: Rules) -> TxCommit:
    msgid, size = _fields(rest, 2)
    return TxCommit(msgid, int(size) if size.isdigit() else None)


def _filter_response(rest: bytes | None, rules: Rules) -> FilterResponse:
    if rest is None:
        raise ProtocolError("expected fields, got none")
    parts = rest.split(b"|", 2)
    if len(parts) < 2:
        raise ProtocolError("expected phase|response")
    param = decode_field(parts[2]) if len(parts) == 3 else None
    return FilterResponse(decode_field(parts[0]), decode_field(parts[1]), param)


def _two(cls: Callable[..., EventParams]) -> Callable[[bytes | None, Rules], EventParams]:
    return lambda rest, rules: cls(*_fields(rest, 2))


def _single(cls: Callable[..., EventParams]) -> Callable[[bytes | None, Rules], EventParams]:
    return lambda rest, rules: cls(_one(rest))


def _empty(cls: Callable[..., EventParams]) -> Callable[[bytes | None, Rules], EventParams]:
    def parse(rest: bytes | None, rules: Rules) -> EventParams:
        _none(rest)
        return cls()

    return parse


#: event name -> parser(rest-after-session-id, rules) -> record
EVENT_PARSERS: dict[str, Callable[[bytes | None, Rules], EventParams]] = {
    "link-connect": _link_connect,
    "link-greeting": _single(LinkGreeting),
    "link-identify": _link_identify,
    "link-tls": _single(LinkTLS),
    "link-auth": _link_auth,
    "link-disconnect": _empty(LinkDisconnect),
    "tx-reset": _single(TxReset),
    "tx-begin": _single(TxBegin),
    "tx-mail": _tx_mail,
    "tx-rcpt": _tx_rcpt,
    "tx-envelope": _two(TxEnvelope),
    "tx-data": _two(TxData),
    "tx-commit": _tx_commit,
    "tx-rollback": _single(TxRollback),
    "protocol-client": _single(ProtocolClient),
    "protocol-server": _single(ProtocolServer),
    "filter-report": lambda rest, rules: FilterReport(*_fields(rest, 3)),
    "filter-response": _filter_response,
    "timeout": _empty(Timeout),
}
assert set(EVENT_PARSERS) == set(REPORT_EVENTS)


#: Names as they arrive, decoded once.
_EVENT_NAMES = {name.encode(): name for name in REPORT_EVENTS}
_SUBSYSTEM_NAMES = {name.encode(): name for name in SUBSYSTEMS}


def split_report(line: bytes) -> tuple[list[bytes], str, str, EventParams]:
    """The fields of a report line, its subsystem, event and typed params,
    without building a ``Report`` (the runtime's path for events only the
    session state needs)."""
    return report_fields(line.split(b"|", 6))


def report_fields(parts: list[bytes]) -> tuple[list[bytes], str, str, EventParams]:
    """``split_report`` of a line already split (``line.split(b"|", 6)``)."""
    if len(parts) < 6 or parts[0] != b"report":
        raise ProtocolError("a report needs at least 6 fields")
    rules = rules_for(parts[1])
    if rules is None:
        raise ProtocolError("bad protocol version")
    event = _EVENT_NAMES.get(parts[4])
    if event is None:
        raise ProtocolError(f"unknown report event {decode_field(parts[4])!r}")
    subsystem = _SUBSYSTEM_NAMES.get(parts[3]) or decode_field(parts[3])
    params = EVENT_PARSERS[event](parts[6] if len(parts) == 7 else None, rules)
    return parts, subsystem, event, params


def parse_report(line: bytes) -> Report:
    """``report|VER|TS|SUBSYSTEM|EVENT|SID[|PARAMS…]``."""
    parts, subsystem, event, params = split_report(line)
    return Report(
        decode_field(parts[1]),
        decode_field(parts[2]),
        subsystem,
        event,
        decode_field(parts[5]),
        params,
    )


# --------------------------------------------------------------------------
# Filter requests


@dataclass(slots=True)
class ConnectParams:
    rdns: str
    src: Address


@dataclass(slots=True)
class Request:
    """``filter|VER|TS|smtp-in|PHASE|SID|TOK|PARAM``.

    ``param`` is the raw parameter (bytes; possibly empty, possibly holding
    ``|``).  Use ``connect_params()`` for the connect phase's ``rdns|src``.
    """

    version: str
    timestamp: str
    subsystem: str
    phase: str
    session: str
    token: str
    param: bytes
    rules: Rules
    ids: bytes = b""  # ``SID|TOK`` or ``TOK|SID`` as the answer must carry them

    @property
    def text(self) -> str:
        return decode_field(self.param)

    def connect_params(self) -> ConnectParams:
        parts = self.param.rsplit(b"|", 1)
        if len(parts) != 2:
            raise ProtocolError("connect needs rdns|src")
        return ConnectParams(decode_field(parts[0]), parse_address(decode_field(parts[1])))


def parse_request(line: bytes) -> Request:
    return request_fields(line.split(b"|", 7))


#: Phase names as they arrive, decoded once.
_PHASE_NAMES = {name.encode(): name for name in FILTER_PHASES}


def request_fields(parts: list[bytes]) -> Request:
    """``parse_request`` of a line already split (``line.split(b"|", 7)``)."""
    if len(parts) != 8 or parts[0] != b"filter":
        raise ProtocolError("a filter request needs 8 fields")
    rules = rules_for(parts[1])
    if rules is None:
        raise ProtocolError("bad protocol version")
    phase = _PHASE_NAMES.get(parts[4])
    if phase is None:
        raise ProtocolError(f"unknown filter phase {decode_field(parts[4])!r}")
    sid, token = parts[5], parts[6]
    if not sid or not token or CR in sid or CR in token:
        raise ProtocolError("empty session id or token, or a CR in one")
    return Request(
        decode_field(parts[1]),
        decode_field(parts[2]),
        _SUBSYSTEM_NAMES.get(parts[3]) or decode_field(parts[3]),
        phase,
        decode_field(sid),
        decode_field(token),
        parts[7],
        rules,
        token + b"|" + sid if rules.token_first else sid + b"|" + token,  # response_ids
    )


# --------------------------------------------------------------------------
# Output


def response_ids(rules: Rules, session: bytes, token: bytes) -> bytes:
    """``SID|TOK`` (or ``TOK|SID`` below 0.5), chosen from the request's version."""
    return token + b"|" + session if rules.token_first else session + b"|" + token


def format_result(rules: Rules, session: bytes, token: bytes, decision: bytes) -> bytes:
    """One ``filter-result`` line (no newline).  ``decision`` is already checked
    (see responses.py)."""
    return b"filter-result|" + response_ids(rules, session, token) + b"|" + decision


def format_dataline(rules: Rules, session: bytes, token: bytes, payload: bytes) -> bytes:
    return b"filter-dataline|" + response_ids(rules, session, token) + b"|" + payload


def dataline_room(session: bytes, token: bytes) -> int:
    """The longest data-line payload that can be echoed for this session/token
    without writing a line over ``MAX_OUTPUT_LINE`` (65,485 for 16-hex ids)."""
    return MAX_OUTPUT_LINE - len(b"filter-dataline|||") - len(session) - len(token)


def is_fatal_output(line: bytes) -> str | None:
    """Why smtpd would die (or jam) on this output line after ``register|ready``;
    None when it is acceptable.  A last line of defence: the runtime never
    writes a line this returns a reason for."""
    if b"\n" in line:
        return "LF inside an output line"
    if len(line) > MAX_OUTPUT_LINE:
        return "output line over 65,535 bytes jams smtpd"
    if line.startswith(b"filter-dataline|"):
        parts = line.split(b"|", 3)
        if len(parts) < 4:
            return "filter-dataline without a payload field"
        if b"\r" in parts[1] or b"\r" in parts[2]:
            return "CR inside the ids of an output line"
        # A CR in the payload is message content: smtpd forwards bare CRs
        # from clients and stores them back (protocol.md §4.1, §5.4).
        return None
    if b"\r" in line:
        return "CR inside an output line"
    if line.startswith(b"filter-result|"):
        parts = line.split(b"|", 4)
        if len(parts) < 4:
            return "filter-result without a decision"
        decision = parts[3]
        param = parts[4] if len(parts) == 5 else None
        if decision in (b"proceed", b"junk"):
            return None if param is None else "parameter after proceed/junk"
        if decision in (b"reject", b"disconnect"):
            if param is None or not _valid_reply(param):
                return "reject/disconnect text is not [45]xx<space>..."
            return None
        if decision in (b"rewrite", b"report"):
            return None if param is not None else "missing parameter"
        return "unknown decision"
    return "not a filter-result or filter-dataline line"


def _valid_reply(text: bytes) -> bool:
    return (
        len(text) >= 5
        and text[0:1] in (b"4", b"5")
        and text[1:3].isdigit()
        and text[3:4] == b" "
    )
