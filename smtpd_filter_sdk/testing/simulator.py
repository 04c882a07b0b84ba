"""A simulated smtpd: drives a filter the way OpenSMTPD does, and judges every
line the filter writes the way smtpd's ``lka_filter.c`` would.

Two halves live here:

* ``SimSession`` plays smtpd's SMTP engine for one client session: it emits
  report events and filter requests in smtpd's real order (compare
  ``captures/plain.txt``), only those the filter registered (an event
  registered twice is sent twice, as smtpd does), waits for each answer before
  that session continues, streams data lines (smtpd's own ``X-Spam``/
  ``Received`` lines first, then the client's dot-stuffed lines), holds the
  final ``.`` back until the filter is quiet (so a premature ``.`` is caught),
  waits for the filter's final ``.`` before ``commit``, and applies decisions
  as smtpd does (reject at rcpt-to -> ``tx-rcpt`` permfail/tempfail, 421 or an
  invalid reply text -> disconnect, reject at commit -> rollback, junk ->
  ``X-Spam: Yes`` in the data stream, ...).

* ``Lka`` is smtpd's reader of the filter's output: registration rules,
  response id order per version, decision syntax and phase rules, data-line
  stream rules, line length limits.  What smtpd would die of is a ``FATAL``
  finding, what would stall a session or the server is ``HANG``, what smtpd
  silently mangles is ``WARN``.  Each finding carries the text smtpd would log.

``Simulator`` ties both to a *transport* (the filter in-process, see
``harness.Harness``, or a child process on a socketpair, see
``harness.SubprocessHarness``) and schedules sessions: one at a time for the
step-by-step harness API, or interleaved (``run``) the way a busy smtpd
interleaves them.

Where a statement here comes from reading smtpd's source rather than from a
live run, the finding says "(code reading)".
"""

from __future__ import annotations

import base64
import random
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Protocol, Sequence

from .. import protocol as p
from ..message import Headers, unstuff
from .wire import DIALECTS, Wire

FATAL = "FATAL"
HANG = "HANG"
WARN = "WARN"
SEVERITIES = (FATAL, HANG, WARN)

#: smtpd's reader of filter output holds 65,536 bytes with the newline.
MAX_LINE = p.MAX_OUTPUT_LINE
#: smtpd <= 7.3 copies each filter line into a 2,048-byte buffer.
LEGACY_LINE = p.LEGACY_OUTPUT_LINE
#: The longest client line smtpd 6.8 forwards (protocol.md §9); longer -> 500.
SMTP_LINE_MAX = 65533

#: filter-response names the phases differently.
RESPONSE_PHASE = {"connect": "connected", "starttls": "tls"}
#: Junk before a transaction exists marks the whole session (protocol.md §4.2).
SESSION_JUNK_PHASES = frozenset({"connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rset", "quit", "noop"})
#: Phases smtpd accepts in register|filter (help/wiz never fire).
REGISTRABLE_PHASES = p.FILTER_PHASES + ("help", "wiz")

EHLO_EXTENSIONS = ("8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 36700160", "DSN")
DEFAULT_TLS = "TLSv1.3:TLS_AES_256_GCM_SHA384:256"


def show(line: bytes, limit: int = 160) -> str:
    """A printable rendering of a line (CR and control bytes escaped)."""
    text = line[:limit].decode("utf-8", "backslashreplace")
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    if len(line) > limit:
        text += f"... ({len(line):,} bytes)"
    return text


def valid_reply(text: str) -> bool:
    """smtpd's check of a reject/disconnect text (smtp_session.c): at least 5
    characters, three digits, a space, and a 4xx/5xx code."""
    return len(text) >= 5 and text[0] in "45" and text[1:3].isdigit() and text[3] == " "


_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")


def valid_helo(name: str) -> bool:
    if name.startswith("[") and name.endswith("]") and len(name) > 2:
        return True
    return bool(_DOMAIN.match(name))


# --------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Finding:
    """One problem smtpd would have with the filter."""

    severity: str  # FATAL | HANG | WARN
    rule: str  # short stable id, e.g. "junk-at-commit"
    message: str
    smtpd_log: tuple[str, ...] = ()
    session: str | None = None
    line: bytes | None = None

    def format(self) -> str:
        where = f" (session {self.session})" if self.session else ""
        out = [f"{self.severity} [{self.rule}]{where}: {self.message}"]
        if self.line is not None:
            out.append(f"    filter wrote: {show(self.line)}")
        for text in self.smtpd_log:
            out.append(f"    smtpd logs:   {text}")
        return "\n".join(out)

    __str__ = format

    def __repr__(self) -> str:
        where = f" {self.session}" if self.session else ""
        return f"<Finding {self.severity} {self.rule}{where}: {self.message[:80]}>"


class SmtpdGone(Exception):
    """smtpd would not go on: it exited (FATAL) or its filter reader jammed (HANG)."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.format())
        self.finding = finding


class FilterGone(Exception):
    """Raised by a transport: the filter closed its output (``exited`` tells
    whether the process is gone too)."""

    def __init__(self, exited: bool, status: int | None = None) -> None:
        super().__init__(f"filter gone (exited={exited}, status={status})")
        self.exited = exited
        self.status = status


class FilterDecision:
    """A decision parsed back from the filter's ``filter-result`` line.

    Compares equal to its kind: ``decision == "reject"``.  ``asked`` is False
    when smtpd did not ask the filter (phase not registered): that is an
    implicit proceed.
    """

    __slots__ = ("kind", "param", "line")

    def __init__(self, kind: str, param: str | None = None, line: bytes | None = None) -> None:
        self.kind = kind
        self.param = param
        self.line = line

    @property
    def asked(self) -> bool:
        return self.line is not None

    @property
    def code(self) -> int | None:
        if self.kind in ("reject", "disconnect") and self.param and self.param[:3].isdigit():
            return int(self.param[:3])
        return None

    @property
    def text(self) -> str | None:
        """The reply text after the code (reject/disconnect), else the parameter."""
        if self.code is not None and self.param is not None:
            return self.param[4:]
        return self.param

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.kind == other or str(self) == other
        if isinstance(other, FilterDecision):
            return (self.kind, self.param) == (other.kind, other.param)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.kind, self.param))

    def __str__(self) -> str:
        return self.kind if self.param is None else f"{self.kind}|{self.param}"

    def __repr__(self) -> str:
        return f"<decision {self}{'' if self.asked else ' (not asked)'}>"


NOT_ASKED = FilterDecision("proceed")


def parse_result_line(line: bytes, token_first: bool = False) -> tuple[str, str, FilterDecision] | None:
    """``filter-result|SID|TOK|decision[|param]`` -> (sid, token, decision);
    None when the line is not a well-formed filter-result."""
    parts = line.split(b"|", 3)
    if len(parts) != 4 or parts[0] != b"filter-result":
        return None
    first, second, rest = p.decode_field(parts[1]), p.decode_field(parts[2]), parts[3]
    sid, tok = (second, first) if token_first else (first, second)
    kind, sep, param = rest.partition(b"|")
    return sid, tok, FilterDecision(p.decode_field(kind), p.decode_field(param) if sep else None, line)


@dataclass
class Step:
    """What happened for one client command."""

    command: str  # what the client sent (or an event like "connect")
    phase: str | None = None  # the filter phase smtpd asked about (None: not filtered)
    decision: FilterDecision = NOT_ASKED
    replies: list[str] = field(default_factory=list)  # what smtpd answered the client
    closed: bool = False  # the session is over after this step
    hung: bool = False  # the filter never answered (HANG finding)
    output: list[bytes] = field(default_factory=list)  # the filter's lines for this step

    @property
    def reply(self) -> str | None:
        return self.replies[-1] if self.replies else None

    @property
    def code(self) -> int | None:
        r = self.reply
        return int(r[:3]) if r and r[:3].isdigit() else None

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 400


class ResultHeaders(Headers):
    """The header block of a delivered message; ``headers["X-Foo"]`` works."""

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def names(self) -> list[str]:
        return [h.name for h in self.fields]


@dataclass
class MessageResult:
    """One transaction: MAIL, RCPTs, DATA, data lines and commit."""

    mail: Step | None = None
    rcpts: list[Step] = field(default_factory=list)
    data: Step | None = None
    commit: Step | None = None
    msgid: str | None = None
    input_lines: list[bytes] = field(default_factory=list)  # stuffed, as smtpd fed them
    output_lines: list[bytes] = field(default_factory=list)  # stuffed, as the filter wrote them
    junk: bool = False  # smtpd put "X-Spam: Yes" at the top of the data stream
    data_filtered: bool = False  # the filter took part in the data-line stream

    @property
    def steps(self) -> list[Step]:
        return [s for s in [self.mail, *self.rcpts, self.data, self.commit] if s is not None]

    @property
    def accepted(self) -> bool:
        return self.commit is not None and self.commit.ok

    @property
    def closed(self) -> bool:
        return any(s.closed for s in self.steps)

    @property
    def hung(self) -> bool:
        return any(s.hung for s in self.steps)

    @property
    def decision(self) -> FilterDecision:
        """The first decision that was not a proceed (else the commit's)."""
        for step in self.steps:
            if step.decision.kind != "proceed":
                return step.decision
        return self.commit.decision if self.commit is not None else NOT_ASKED

    @property
    def reply(self) -> str | None:
        steps = self.steps
        return steps[-1].reply if steps else None

    @property
    def lines(self) -> list[bytes]:
        """The message as smtpd queues it: unstuffed lines."""
        source = self.output_lines if self.data_filtered else self.input_lines
        return [unstuff(line) for line in source]

    @property
    def message(self) -> bytes:
        return b"".join(line + b"\r\n" for line in self.lines)

    @property
    def headers(self) -> ResultHeaders:
        lines = self.lines
        end = lines.index(b"") if b"" in lines else len(lines)
        return ResultHeaders(Headers.parse(lines[:end]).fields)

    @property
    def body(self) -> bytes:
        lines = self.lines
        if b"" not in lines:
            return b""
        return b"".join(line + b"\r\n" for line in lines[lines.index(b"") + 1 :])

    @property
    def input_headers(self) -> ResultHeaders:
        lines = [unstuff(x) for x in self.input_lines]
        end = lines.index(b"") if b"" in lines else len(lines)
        return ResultHeaders(Headers.parse(lines[:end]).fields)

    def headers_added(self) -> list[str]:
        """Header lines in the output that were not in smtpd's input."""
        before = Counter(b"\n".join(h.lines) for h in self.input_headers)
        added = []
        for h in self.headers:
            key = b"\n".join(h.lines)
            if before[key]:
                before[key] -= 1
            else:
                added.append(key.decode("utf-8", "backslashreplace").replace("\n", " / "))
        return added

    def headers_removed(self) -> list[str]:
        after = Counter(b"\n".join(h.lines) for h in self.headers)
        removed = []
        for h in self.input_headers:
            key = b"\n".join(h.lines)
            if after[key]:
                after[key] -= 1
            else:
                removed.append(key.decode("utf-8", "backslashreplace").replace("\n", " / "))
        return removed


# --------------------------------------------------------------------------
# Client actions (a session script is a list of these)


@dataclass(frozen=True)
class Connect:
    """A client connects.  ``src``: ``192.0.2.10``, ``2001:db8::1`` (or
    ``[::1]``), or ``local`` (a unix-socket session: rdns ``localhost``)."""

    src: str = "192.0.2.10"
    rdns: str = "mail.example.org"
    fcrdns: str = "pass"
    port: int | None = None
    dest: str | None = None


@dataclass(frozen=True)
class Helo:
    name: str


@dataclass(frozen=True)
class Ehlo:
    name: str


@dataclass(frozen=True)
class StartTLS:
    tls: str = DEFAULT_TLS


@dataclass(frozen=True)
class Auth:
    username: str
    password: str = "secret"
    mechanism: str = "PLAIN"
    result: str = "pass"  # what smtpd's auth backend says: pass | fail | error


@dataclass(frozen=True)
class Mail:
    address: str
    params: str = ""


@dataclass(frozen=True)
class Rcpt:
    address: str
    params: str = ""


@dataclass(frozen=True)
class Data:
    """DATA and the message.  ``lines`` are content lines (the client
    dot-stuffs them) unless ``stuffed`` is set.  ``abort_after``: the client
    drops the connection after that many lines (no final ``.``)."""

    lines: tuple[bytes, ...]
    stuffed: bool = False
    abort_after: int | None = None


@dataclass(frozen=True)
class Message:
    """MAIL FROM, RCPT TO for each recipient, DATA: one transaction."""

    mail_from: str
    rcpts: tuple[str, ...]
    lines: tuple[bytes, ...]
    mail_params: str = ""
    stuffed: bool = False
    abort_after: int | None = None


@dataclass(frozen=True)
class Rset:
    pass


@dataclass(frozen=True)
class Noop:
    pass


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Command:
    """A command smtpd answers without asking filters (HELP, VRFY, junk...)."""

    text: str


@dataclass(frozen=True)
class Drop:
    """The client closes the connection."""


@dataclass(frozen=True)
class Idle:
    """The client stays silent until smtpd's session timeout."""


Action = Any  # one of the dataclasses above


def message_lines(
    mail_from: str,
    rcpts: Sequence[str],
    body: bytes | str | Sequence[bytes] = b"Hello.\n",
    headers: dict[str, str] | Sequence[tuple[str, str]] | None = None,
    subject: str = "test",
) -> tuple[bytes, ...]:
    """Content lines of a simple message: default headers (From, To, Subject,
    Date, Message-ID) unless ``headers`` is given, an empty line, the body."""
    if headers is None:
        pairs: list[tuple[str, str]] = [
            ("From", f"<{mail_from}>"),
            ("To", ", ".join(f"<{r}>" for r in rcpts) or "undisclosed-recipients:;"),
            ("Subject", subject),
            ("Date", "Fri, 20 Nov 2026 12:00:00 +0000"),
            ("Message-ID", "<sim.1@example.org>"),
        ]
    elif isinstance(headers, dict):
        pairs = list(headers.items())
    else:
        pairs = list(headers)
    out = [line for k, v in pairs for line in p.encode_field(f"{k}: {v}").replace(b"\r\n", b"\n").split(b"\n")]
    out.append(b"")
    out.extend(split_lines(body))
    return tuple(out)


def split_lines(body: bytes | str | Sequence[bytes]) -> list[bytes]:
    if isinstance(body, str):
        body = p.encode_field(body)
    if isinstance(body, bytes):
        body = body.replace(b"\r\n", b"\n")
        lines = body.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return lines
    return list(body)


# --------------------------------------------------------------------------
# Transports


class Transport(Protocol):
    """How the simulator talks to a filter."""

    def send(self, data: bytes) -> None:
        """Queue bytes for the filter's stdin."""

    def recv(self, timeout: float) -> list[bytes]:
        """Lines the filter wrote (without ``\\n``), waiting up to ``timeout``
        seconds for the first one.  Raises ``FilterGone`` at EOF."""

    @property
    def idle(self) -> bool:
        """True when the filter cannot write anything more without new input
        (known in-process; a process never says so)."""

    def close(self) -> None:
        """EOF on the filter's stdin; wait (bounded) for it to exit.  What
        it wrote after EOF is in ``after_eof``."""


# --------------------------------------------------------------------------
# Waits (what a session generator yields)


class _Wait:
    __slots__ = ("kind", "session", "started", "phase")

    def __init__(self, kind: str, session: "SimSession", phase: str | None = None) -> None:
        self.kind = kind  # "answer" | "data" | "quiet"
        self.session = session
        self.phase = phase
        self.started = time.monotonic()


class _Hung(Exception):
    pass


@dataclass
class _Stream:
    input: list[bytes] = field(default_factory=list)
    output: list[bytes] = field(default_factory=list)
    input_done: bool = False
    done: bool = False


class _Task:
    __slots__ = ("gen", "value", "wait", "done", "result", "session", "throw")

    def __init__(self, gen: Generator[_Wait, Any, Any], session: "SimSession") -> None:
        self.gen = gen
        self.session = session
        self.value: Any = None
        self.throw: BaseException | None = None
        self.wait: _Wait | None = None
        self.done = False
        self.result: Any = None


# --------------------------------------------------------------------------
# The simulated SMTP engine, one session


class SimSession:
    """smtpd's side of one client session (engine state + lka state)."""

    def __init__(self, sim: "Simulator", sid: str, label: str, connect: Connect) -> None:
        self.sim = sim
        self.sid = sid
        self.sid_int = int(sid, 16)
        self.label = label
        self.conn = connect
        self.alive = False
        self.closed = False
        # lka side
        self.lka_phase: str | None = None
        self.pending: str | None = None  # phase of the outstanding request
        self.stream: _Stream | None = None
        self.task: _Task | None = None
        self.current: Step | None = None  # collects the filter's lines
        # engine side
        self.identified = False
        self.helo_tried = False
        self.helo: str | None = None
        self.helo_method: str | None = None
        self.tls: str | None = None
        self.auth_user: str | None = None
        self.junk = False
        self.tx: dict[str, Any] | None = None
        self.banner_rejected = False
        self.steps: list[Step] = []
        self.messages: list[MessageResult] = []
        self._address_forms()

    # -- addresses -------------------------------------------------------

    def _address_forms(self) -> None:
        c = self.conn
        port = c.port if c.port is not None else self.sim.next_port()
        if c.src == "local":
            self.rdns = "localhost" if c.rdns == Connect.rdns else c.rdns
            self.link_src = self.link_dest = "unix:/var/run/smtpd.sock"
            self.connect_src = "local"
            self.ip_text = "local"
            return
        self.rdns = c.rdns
        host = c.src[1:-1] if c.src.startswith("[") else c.src
        if ":" in host:
            self.link_src = f"[{host}]:{port}"
            self.connect_src = f"[{host}]"
            self.ip_text = f"IPv6:{host}"
            self.link_dest = c.dest or "[::1]:25"
        else:
            self.link_src = f"{host}:{port}"
            self.connect_src = host
            self.ip_text = host
            self.link_dest = c.dest or "192.0.2.1:25"

    # -- output helpers ----------------------------------------------------

    def _report(self, event: str, *fields: str | bytes) -> None:
        count = self.sim.report_count(event)
        if not count:
            return
        w = self.sim.wire
        if event in ("tx-mail", "tx-rcpt"):
            line = w.tx_address(self.sim.ts(), event, self.sid, *fields)  # type: ignore[arg-type]
        elif event == "link-auth":
            line = w.link_auth(self.sim.ts(), self.sid, fields[0], fields[1])  # type: ignore[arg-type]
        else:
            line = w.report(self.sim.ts(), event, self.sid, *fields)
        for _ in range(count):
            self.sim.emit(line)

    def _client(self, text: str) -> None:
        self.sim.note(self, "C", text)
        self._report("protocol-client", text)

    def _server(self, step: Step, *replies: str) -> None:
        for reply in replies:
            step.replies.append(reply)
            self._report("protocol-server", reply)
        if replies:
            self.sim.note(self, "S", replies[-1] if len(replies) == 1 else f"{replies[-1]} ({len(replies)} lines)")

    def _ask(self, step: Step, phase: str, param: str | bytes) -> Generator[_Wait, Any, FilterDecision]:
        """Send a filter request if the filter registered the phase; wait."""
        if phase not in self.sim.phases:
            return NOT_ASKED
        self.lka_phase = phase
        self.pending = phase
        step.phase = phase
        self.current = step
        self.sim.emit(self.sim.wire.request(self.sim.ts(), phase, self.sid, self.sim.token(phase), param))
        decision = yield _Wait("answer", self, phase)
        step.decision = decision
        self.sim.note(self, "F", f"{phase} -> {decision}")
        return decision

    def _response(self, phase: str, kind: str, param: str | None = None) -> None:
        fields = [RESPONSE_PHASE.get(phase, phase), kind] + ([param] if param is not None else [])
        self._report("filter-response", *fields)

    def _refusal(self, step: Step, phase: str, decision: FilterDecision) -> str | None:
        """Apply reject/disconnect like smtpd: returns None when it was not one,
        else the reply sent (the session may be closed)."""
        if decision.kind not in ("reject", "disconnect"):
            return None
        text = decision.param or ""
        kind = decision.kind
        if not valid_reply(text):
            self.sim.finding(
                WARN,
                "invalid-reply",
                f"{kind} text {text!r} at {phase} is not '4xx/5xx<space>text': smtpd replaces it with "
                "'421 Internal server error' and drops the client",
                session=self.sid,
                line=decision.line,
            )
            text = "421 Internal server error"
        if text.startswith("421"):
            kind = "disconnect"
        self._response(phase, kind, text)
        self._server(step, text)
        if kind == "disconnect":
            self._end(step)
        return text

    def _end(self, step: Step | None, event: str | None = None) -> None:
        """The session ends (disconnect, quit, drop, timeout)."""
        if event:
            self._report(event)
        if self.tx is not None:
            self._report("tx-rollback", self.tx["msgid"])
            self._report("tx-reset", self.tx["msgid"])
            self.tx = None
        self._report("link-disconnect")
        self.closed = True
        if step is not None:
            step.closed = True
        self.sim.session_ended(self)

    def _check_open(self, command: str) -> Step | None:
        if self.closed:
            step = Step(command, closed=True)
            self.sim.note(self, "C", f"{command} (session already closed: not sent)")
            return step
        return None

    # -- the commands --------------------------------------------------------

    def perform(self, action: Action) -> Generator[_Wait, Any, Any]:
        """Run one client action; returns a Step (MessageResult for Message)."""
        try:
            handler = getattr(self, "_do_" + type(action).__name__.lower())
        except AttributeError:
            raise TypeError(f"unknown action {action!r}") from None
        try:
            result = yield from handler(action)
        except _Hung:
            step = self.current or Step(type(action).__name__.lower())
            step.hung = True
            self.pending = None
            if not self.closed:
                self._end(step)
            result = step
            if isinstance(action, (Message, Data)) and self.messages:
                result = self.messages[-1]
        return result

    def play(self, actions: Iterable[Action]) -> Generator[_Wait, Any, list[Any]]:
        """A whole script: connect first (unless the script starts with one)."""
        results: list[Any] = []
        actions = list(actions)
        if not actions or not isinstance(actions[0], Connect):
            actions.insert(0, self.conn)
        for action in actions:
            if self.closed and not isinstance(action, Connect):
                break
            results.append((yield from self.perform(action)))
        if not self.closed:
            results.append((yield from self.perform(Drop())))
        return results

    def _do_connect(self, action: Connect) -> Generator[_Wait, Any, Step]:
        step = Step("connect")
        self.current = step
        self.sim.session_started(self)
        self.sim.note(self, "C", f"connect from {self.connect_src} (rdns {self.rdns}, fcrdns {self.conn.fcrdns})")
        self._report("link-connect", self.rdns, self.conn.fcrdns, self.link_src, self.link_dest)
        decision = yield from self._ask(step, "connect", f"{self.rdns}|{self.connect_src}")
        self.steps.append(step)
        if self._refusal(step, "connect", decision) is not None:
            if not self.closed:
                self.banner_rejected = True
            return step
        if decision.kind == "junk":
            self.junk = True
        elif decision.kind == "rewrite":
            self.sim.finding(WARN, "rewrite-ignored", "rewrite at connect is ignored by smtpd (treated as proceed)", session=self.sid, line=decision.line)
        self._response("connect", decision.kind, decision.param)
        self._server(step, f"220 {self.sim.hostname} ESMTP OpenSMTPD")
        self._report("link-greeting", self.sim.hostname)
        return step

    def _unfiltered(self, command: str, *replies: str) -> Step:
        step = Step(command)
        self._client(command)
        self._server(step, *replies)
        self.steps.append(step)
        return step

    def _do_helo(self, action: Helo | Ehlo) -> Generator[_Wait, Any, Step]:
        method = "EHLO" if isinstance(action, Ehlo) else "HELO"
        phase = method.lower()
        command = f"{method} {action.name}"
        early = self._check_open(command)
        if early:
            return early
        if self.banner_rejected:
            return self._unfiltered(command, "503 5.5.1 Invalid command: Polite people say hello first")
        if self.identified:
            return self._unfiltered(command, "503 5.5.1 Invalid command: Already identified")
        self.helo_tried = True
        if not valid_helo(action.name):
            return self._unfiltered(command, f"501 5.5.4 Syntax: {method} hostname")
        step = Step(command)
        self._client(command)
        decision = yield from self._ask(step, phase, action.name)
        self.steps.append(step)
        if self._refusal(step, phase, decision) is not None:
            return step
        identity = action.name
        if decision.kind in ("rewrite", "report"):
            identity = decision.param or ""
            if decision.kind == "report":
                self.sim.finding(WARN, "report-corrupts", f"the report decision at {phase} makes smtpd use the report text as the HELO name (code reading, 7.6+)", session=self.sid, line=decision.line)
            elif not valid_helo(identity):
                self._response(phase, "rewrite", identity)
                self.sim.finding(WARN, "rewrite-invalid", f"rewrite value {identity!r} at {phase} is not a valid HELO name: the client gets a 501", session=self.sid, line=decision.line)
                self._server(step, f"501 5.5.4 Syntax: {method} hostname")
                return step
        if decision.kind == "junk":
            self.junk = True
        self._response(phase, decision.kind, decision.param)
        self.identified = True
        self.helo = identity
        self.helo_method = method
        self._report("link-identify", method, identity)
        if method == "EHLO":
            ext = list(EHLO_EXTENSIONS)
            ext.append("AUTH PLAIN LOGIN" if self.tls else "STARTTLS")
            lines = [f"250-{self.sim.hostname} Hello {identity} [{self.ip_text}], pleased to meet you"]
            lines += [f"250-{e}" for e in ext] + ["250 HELP"]
            self._server(step, *lines)
        else:
            self._server(step, f"250 {self.sim.hostname} Hello {identity} [{self.ip_text}], pleased to meet you")
        return step

    _do_ehlo = _do_helo

    def _do_starttls(self, action: StartTLS) -> Generator[_Wait, Any, Step]:
        command = "STARTTLS"
        early = self._check_open(command)
        if early:
            return early
        if self.tls or self.banner_rejected:
            return self._unfiltered(command, "503 5.5.1 Invalid command: Command not allowed at this point.")
        step = Step(command)
        self._client(command)
        decision = yield from self._ask(step, "starttls", "")
        self.steps.append(step)
        if self._refusal(step, "starttls", decision) is not None:
            return step
        if decision.kind == "rewrite":
            self._response("starttls", "rewrite", decision.param)
            self.sim.finding(WARN, "rewrite-fails", "rewrite at starttls fails the command (501 No parameters allowed)", session=self.sid, line=decision.line)
            self._server(step, "501 5.5.4 No parameters allowed")
            return step
        if decision.kind == "junk":
            self.junk = True
        self._response("starttls", decision.kind, decision.param)
        self._server(step, "220 2.0.0 Ready to start TLS")
        self.tls = action.tls
        self._report("link-tls", action.tls)
        self.identified = False  # the client must say EHLO again
        return step

    def _do_auth(self, action: Auth) -> Generator[_Wait, Any, Step]:
        mech = action.mechanism.upper()
        command = f"AUTH {mech} ********" if mech == "PLAIN" else f"AUTH {mech}"
        early = self._check_open(command)
        if early:
            return early
        if not self.identified or self.auth_user is not None:
            return self._unfiltered(command, "503 5.5.1 Invalid command: Command not allowed at this point.")
        if mech == "PLAIN":
            creds = b"\0" + p.encode_field(action.username) + b"\0" + p.encode_field(action.password)
            param = "PLAIN " + base64.b64encode(creds).decode()
        else:
            param = mech
        step = Step(command)
        self._client(command)
        decision = yield from self._ask(step, "auth", param)
        self.steps.append(step)
        if self._refusal(step, "auth", decision) is not None:
            return step
        if decision.kind == "report":
            self.sim.finding(WARN, "report-corrupts", "the report decision at auth makes smtpd parse the report text as the AUTH argument (code reading, 7.6+)", session=self.sid, line=decision.line)
        if decision.kind == "junk":
            self.junk = True
        self._response("auth", decision.kind, decision.param)
        if mech == "LOGIN":
            self._server(step, "334 VXNlcm5hbWU6")
            self._client("********")
            self._server(step, "334 UGFzc3dvcmQ6")
            self._client("********")
        self._report("link-auth", action.username, action.result)
        if action.result == "pass":
            self.auth_user = action.username
            self._server(step, "235 2.0.0 Authentication succeeded")
        elif action.result == "error":
            self._server(step, "421 Temporary failure")
        else:
            self._server(step, "535 Authentication failed")
        return step

    def _do_mail(self, action: Mail) -> Generator[_Wait, Any, Step]:
        command = f"MAIL FROM:<{action.address}>" + (f" {action.params}" if action.params else "")
        early = self._check_open(command)
        if early:
            return early
        if not self.identified:
            return self._unfiltered(command, "503 5.5.1 Invalid command: Polite people say hello first")
        if self.tx is not None:
            return self._unfiltered(command, "503 5.5.1 Invalid command: Only one MAIL FROM allowed")
        step = Step(command)
        self._client(command)
        decision = yield from self._ask(step, "mail-from", action.address)
        self.steps.append(step)
        if self._refusal(step, "mail-from", decision) is not None:
            return step
        if decision.kind == "rewrite":
            value = decision.param or ""
            if not (value.startswith("<") and ">" in value):
                self._response("mail-from", "rewrite", value)
                self.sim.finding(WARN, "rewrite-invalid", f"rewrite value {value!r} at mail-from needs <brackets>: the client gets 553", session=self.sid, line=decision.line)
                self._server(step, "553 5.1.7 Sender address syntax error")
                return step
        if decision.kind == "report":
            self.sim.finding(WARN, "report-corrupts", "the report decision at mail-from makes smtpd parse the report text as the MAIL FROM argument (code reading, 7.6+)", session=self.sid, line=decision.line)
            self._response("mail-from", "report", decision.param)
            self._server(step, "553 5.1.7 Sender address syntax error")
            return step
        if decision.kind == "junk":
            self.junk = True  # no transaction yet: the whole session is junked
        self._response("mail-from", decision.kind, decision.param)
        self._server(step, "250 2.0.0 Ok")
        msgid = self.sim.msgid()
        self.tx = {"msgid": msgid, "mail_from": action.address, "rcpts": [], "junk": False, "evp": 0}
        self._report("tx-begin", msgid)
        # tx-mail shows the client's original address, even after a rewrite (#1259)
        self._report("tx-mail", msgid, "ok", action.address)
        return step

    def _do_rcpt(self, action: Rcpt) -> Generator[_Wait, Any, Step]:
        command = f"RCPT TO:<{action.address}>" + (f" {action.params}" if action.params else "")
        early = self._check_open(command)
        if early:
            return early
        if self.tx is None:
            return self._unfiltered(command, "503 5.5.1 Invalid command: Need MAIL before RCPT")
        step = Step(command)
        self._client(command)
        decision = yield from self._ask(step, "rcpt-to", action.address)
        self.steps.append(step)
        tx = self.tx
        text = self._refusal(step, "rcpt-to", decision)
        if text is not None:
            if not self.closed and tx is not None:
                self._report("tx-rcpt", tx["msgid"], "tempfail" if text[:1] == "4" else "permfail", action.address)
            return step
        address = action.address
        if decision.kind in ("rewrite", "report"):
            value = decision.param or ""
            if decision.kind == "report" or not (value.startswith("<") and ">" in value):
                self._response("rcpt-to", decision.kind, value)
                rule = "report-corrupts" if decision.kind == "report" else "rewrite-invalid"
                self.sim.finding(WARN, rule, f"{decision.kind} value {value!r} at rcpt-to is not '<address>': the client gets 501", session=self.sid, line=decision.line)
                self._server(step, "501 5.1.3 Recipient address syntax error")
                self._report("tx-rcpt", tx["msgid"], "permfail", action.address)
                return step
        if decision.kind == "junk":
            tx["junk"] = True
        self._response("rcpt-to", decision.kind, decision.param)
        tx["evp"] += 1
        self._report("tx-envelope", tx["msgid"], tx["msgid"] + f"{self.sim.rng.getrandbits(32):08x}")
        self._server(step, "250 2.1.5 Destination address valid: Recipient ok")
        tx["rcpts"].append(address)
        self._report("tx-rcpt", tx["msgid"], "ok", action.address)
        return step

    def _received(self) -> list[bytes]:
        """smtpd's own Received header, as the first data lines (plain.txt)."""
        tx = self.tx or {}
        proto = "ESMTP" if self.helo_method == "EHLO" else "SMTP"
        if self.tls:
            proto += "S"
        if self.auth_user:
            proto += "A"
        by = f"\tby {self.sim.hostname} (OpenSMTPD) with {proto} id {tx.get('msgid', '00000000')}"
        if self.tls:
            by += f" ({self.tls}:NO)"
        lines = [f"Received: from {self.helo or 'unknown'} ({self.rdns} [{self.ip_text}])", by]
        if len(tx.get("rcpts", ())) == 1:
            lines.append(f"\tfor <{tx['rcpts'][0]}>;")
        lines.append("\t" + time.strftime("%a, %d %b %Y %H:%M:%S +0000 (UTC)", time.gmtime(self.sim.clock)))
        return [p.encode_field(x) for x in lines]

    def _do_data(self, action: Data, result: MessageResult | None = None) -> Generator[_Wait, Any, MessageResult]:
        """DATA, the data-line stream and commit; returns the transaction's
        MessageResult (its ``data`` step tells how far it got)."""
        command = "DATA"
        msg = result if result is not None else MessageResult()
        early = self._check_open(command)
        if early:
            msg.data = early
            return msg
        tx = self.tx
        if tx is None or not tx["rcpts"]:
            why = "No transaction in progress" if tx is None else "No recipient specified"
            msg.data = self._unfiltered(command, f"503 5.5.4 Invalid command arguments: {why}")
            return msg
        step = Step(command)
        msg.data = step
        self.current = step
        self._take_message(msg)
        self._client(command)
        decision = yield from self._ask(step, "data", "")
        self.steps.append(step)
        text = self._refusal(step, "data", decision)
        if text is not None:
            if not self.closed:
                self._report("tx-data", tx["msgid"], "tempfail" if text[:1] == "4" else "permfail")
            return msg
        if decision.kind == "rewrite":
            self._response("data", "rewrite", decision.param)
            self.sim.finding(WARN, "rewrite-fails", "rewrite at data fails the command (500: command does not accept arguments)", session=self.sid, line=decision.line)
            self._server(step, "500 5.5.1 Invalid command: command does not accept arguments")
            return msg
        if decision.kind == "junk":
            tx["junk"] = True
        self._response("data", decision.kind, decision.param)

        # The data-line stream: smtpd's lines first, then the client's.
        junked = self.junk or tx["junk"]
        head = ([b"X-Spam: Yes"] if junked else []) + self._received()
        if action.stuffed:
            client = list(action.lines)
        else:
            client = [b"." + line if line[:1] == b"." else line for line in action.lines]
        aborted = action.abort_after is not None
        if aborted:
            client = client[: action.abort_after]
        too_long = next((i for i, line in enumerate(client) if len(line) > SMTP_LINE_MAX), None)
        if too_long is not None:
            client = client[:too_long]
        msg.junk = junked
        msg.msgid = tx["msgid"]
        msg.input_lines = head + client
        filtered = "data-line" in self.sim.phases
        msg.data_filtered = filtered
        stream = _Stream()
        if filtered:
            self.stream = stream
            self.lka_phase = "data-line"
            self.current = step
            for line in head:
                self._data_line(stream, line)
        self._server(step, '354 Enter mail, end with "." on a line by itself')
        self._report("tx-data", tx["msgid"], "ok")
        if filtered:
            for line in client:
                self._data_line(stream, line)
        size = sum(len(x) + 2 for x in head + client)
        self.sim.note(self, "C", f"<{len(client)} message lines, {size:,} bytes>")
        if aborted or too_long is not None:
            if too_long is not None:
                self._server(step, "500 5.5.1 Invalid command: Line too long")
            self.sim.note(self, "C", "<connection closed in the middle of DATA>")
            self._end(step)
            self.pending = None
            self._take_message(msg)
            return msg
        if filtered:
            # Hold the final "." back until the filter is quiet: a "." it
            # writes before getting ours is premature.
            yield _Wait("quiet", self)
            self._data_line(stream, b".")
            stream.input_done = True
            self._client(".")
            self.pending = "data-line"
            yield _Wait("data", self, "data-line")
            self.pending = None
            msg.output_lines = list(stream.output)
            self.sim.note(self, "F", f"data-line -> {len(stream.output)} lines back, then '.'")
        else:
            self._client(".")
        self._take_message(msg)
        added = msg.headers_added() if filtered else []
        for h in added:
            self.sim.note(self, "F", f"header added: {h}")
        for h in msg.headers_removed() if filtered else []:
            self.sim.note(self, "F", f"header removed: {h}")

        cstep = Step(".")
        msg.commit = cstep
        decision = yield from self._ask(cstep, "commit", "")
        self.steps.append(cstep)
        text = self._refusal(cstep, "commit", decision)
        if text is not None:
            if not self.closed and self.tx is not None:
                self._report("tx-data", tx["msgid"], "tempfail" if text[:1] == "4" else "permfail")
                self._report("tx-rollback", tx["msgid"])
                self._report("tx-reset", tx["msgid"])
                self.tx = None
            return msg
        if decision.kind == "rewrite":
            self._response("commit", "rewrite", decision.param)
            self.sim.finding(WARN, "rewrite-fails", "rewrite at commit fails with 500 and leaves the transaction undefined", session=self.sid, line=decision.line)
            self._server(cstep, "500 5.5.1 Invalid command: command does not accept arguments")
            self._report("tx-rollback", tx["msgid"])
            self._report("tx-reset", tx["msgid"])
            self.tx = None
            return msg
        self._response("commit", decision.kind, decision.param)
        self._server(cstep, f"250 2.0.0 {tx['msgid']} Message accepted for delivery")
        out = msg.lines
        self._report("tx-commit", tx["msgid"], str(sum(len(x) + 1 for x in out)))
        self._report("tx-reset", tx["msgid"])
        self.tx = None
        return msg

    def _take_message(self, msg: MessageResult) -> None:
        if not self.messages or self.messages[-1] is not msg:
            self.messages.append(msg)

    def _data_line(self, stream: _Stream, payload: bytes) -> None:
        stream.input.append(payload)
        self.sim.emit(self.sim.wire.request(self.sim.ts(), "data-line", self.sid, self.sim.token("data-line"), payload))

    def _do_message(self, action: Message) -> Generator[_Wait, Any, MessageResult]:
        if not self.closed and not self.helo_tried and not self.banner_rejected:
            yield from self.perform(Ehlo("client.example.org"))
        mail = yield from self.perform(Mail(action.mail_from, action.mail_params))
        result = MessageResult(mail=mail)
        self._take_message(result)
        if self.tx is None or self.closed:
            return result
        for rcpt in action.rcpts:
            result.rcpts.append((yield from self.perform(Rcpt(rcpt))))
            if self.closed:
                return result
        yield from self._do_data(Data(action.lines, action.stuffed, action.abort_after), result)
        return result

    def _do_rset(self, action: Rset) -> Generator[_Wait, Any, Step]:
        return (yield from self._simple("RSET", "rset", "250 2.0.0 Reset state"))

    def _do_noop(self, action: Noop) -> Generator[_Wait, Any, Step]:
        return (yield from self._simple("NOOP", "noop", "250 2.0.0 Ok"))

    def _do_quit(self, action: Quit) -> Generator[_Wait, Any, Step]:
        return (yield from self._simple("QUIT", "quit", "221 2.0.0 Bye"))

    def _simple(self, command: str, phase: str, ok: str) -> Generator[_Wait, Any, Step]:
        early = self._check_open(command)
        if early:
            return early
        step = Step(command)
        self._client(command)
        decision = yield from self._ask(step, phase, "")
        self.steps.append(step)
        text = self._refusal(step, phase, decision)
        if text is not None:
            if phase == "quit" and not self.closed:
                self.sim.note(self, "C", "<client closes the connection>")
                self._end(step)
            return step
        if decision.kind == "rewrite":
            self._response(phase, "rewrite", decision.param)
            self.sim.finding(WARN, "rewrite-fails", f"rewrite at {phase} fails the command (500: command does not accept arguments)", session=self.sid, line=decision.line)
            self._server(step, "500 5.5.1 Invalid command: command does not accept arguments")
            return step
        if decision.kind == "junk":
            self.junk = True
        self._response(phase, decision.kind, decision.param)
        self._server(step, ok)
        if phase == "rset" and self.tx is not None:
            self._report("tx-rollback", self.tx["msgid"])
            self._report("tx-reset", self.tx["msgid"])
            self.tx = None
        if phase == "quit":
            self._end(step)
        return step

    def _do_command(self, action: Command) -> Generator[_Wait, Any, Step]:
        early = self._check_open(action.text)
        if early:
            return early
        verb = action.text.split(" ", 1)[0].upper()
        if verb == "HELP":
            replies = (
                "214-2.0.0 This is OpenSMTPD",
                "214-2.0.0 To report bugs in the implementation, please contact bugs@openbsd.org",
                "214-2.0.0 with full details",
                "214 2.0.0 End of HELP info",
            )
        elif verb == "WIZ":
            replies = ("500 5.5.1 Invalid command: this feature is not supported yet ;-)",)
        else:
            replies = ("500 5.5.1 Invalid command: Command unrecognized",)
        return self._unfiltered(action.text, *replies)
        yield  # pragma: no cover - makes this a generator

    def _do_drop(self, action: Drop) -> Generator[_Wait, Any, Step]:
        step = Step("<disconnect>")
        if not self.closed:
            self.sim.note(self, "C", "<client closes the connection>")
            self._end(step)
        return step
        yield  # pragma: no cover

    def _do_idle(self, action: Idle) -> Generator[_Wait, Any, Step]:
        step = Step("<idle until smtpd's session timeout>")
        if not self.closed:
            self.sim.note(self, "C", "<client idle: session timeout>")
            self._end(step, "timeout")
        return step
        yield  # pragma: no cover

    # -- replay of recorded traffic ---------------------------------------------

    def replay(self, lines: Sequence[bytes]) -> Generator[_Wait, Any, list[Step]]:
        """Send one session's recorded lines, only what the filter registered,
        waiting for each answer (and for the final ``.`` of each message)."""
        steps: list[Step] = []
        sim = self.sim
        skip_to_end = False
        i = 0
        try:
            while i < len(lines):
                line = sim.convert(lines[i])
                i += 1
                parts = line.split(b"|", 7)
                if line.startswith(b"report|") and len(parts) >= 6:
                    event = p.decode_field(parts[4])
                    if event == "link-connect" and not self.alive:
                        sim.session_started(self)
                    if skip_to_end and event != "link-disconnect":
                        continue
                    if event == "protocol-client" and len(parts) > 6:
                        sim.note(self, "C", p.decode_field(b"|".join(parts[6:])))
                    for _ in range(sim.reports.get((p.decode_field(parts[3]), event), 0)):
                        sim.emit(line)
                    if event == "link-disconnect":
                        self.closed = True
                        sim.session_ended(self)
                        break
                    continue
                if not (line.startswith(b"filter|") and len(parts) == 8):
                    continue
                if not self.alive:
                    sim.session_started(self)
                if skip_to_end:
                    continue
                phase = p.decode_field(parts[4])
                if phase not in sim.phases:
                    continue
                token = sim.token(phase)
                fixed = b"|".join(parts[:6] + [token.encode(), parts[7]])
                if phase == "data-line":
                    if self.stream is None or self.stream.done:
                        self.stream = _Stream()
                        self.lka_phase = "data-line"
                        self.current = Step("DATA (replayed)", phase="data-line")
                    if parts[7] == b".":
                        yield _Wait("quiet", self)
                        self.stream.input.append(b".")
                        sim.emit(fixed)
                        self.stream.input_done = True
                        self.pending = "data-line"
                        yield _Wait("data", self, "data-line")
                        self.pending = None
                        sim.note(self, "F", f"data-line -> {len(self.stream.output)} lines back, then '.'")
                        msg = MessageResult(input_lines=self.stream.input[:-1], output_lines=list(self.stream.output), data_filtered=True)
                        self._take_message(msg)
                        for h in msg.headers_added():
                            sim.note(self, "F", f"header added: {h}")
                        for h in msg.headers_removed():
                            sim.note(self, "F", f"header removed: {h}")
                    else:
                        self.stream.input.append(parts[7])
                        sim.emit(fixed)
                    continue
                step = Step(f"({phase} request)", phase=phase)
                self.lka_phase = phase
                self.pending = phase
                self.current = step
                sim.emit(fixed)
                decision = yield _Wait("answer", self, phase)
                step.decision = decision
                steps.append(step)
                sim.note(self, "F", f"{phase} -> {decision}")
                if decision.kind == "disconnect" or (decision.kind == "reject" and (decision.param or "")[:3] == "421"):
                    skip_to_end = True  # smtpd drops the client: only link-disconnect follows
                elif decision.kind == "reject" and decision.param is not None and not valid_reply(decision.param):
                    sim.finding(WARN, "invalid-reply", f"reject text {decision.param!r} is not '4xx/5xx<space>text': smtpd replaces it with '421 Internal server error' and drops the client", session=self.sid, line=decision.line)
                    skip_to_end = True
            if not self.closed and self.alive:
                self._end(None)
        except _Hung:
            self.pending = None
            if not self.closed:
                self._end(None)
        return steps


# --------------------------------------------------------------------------
# smtpd's reader of filter output (lka_filter.c, lka_proc.c)


def _hex(field_: bytes) -> int | None:
    """strtoull(field, 16) with smtpd's checks (non-empty, nothing left over)."""
    text = field_.lstrip(b" \t\n\v\f\r")
    if text[:2].lower() == b"0x":
        text = text[2:]
    if not text or not all(c in b"0123456789abcdefABCDEF" for c in text):
        return None
    value = int(text, 16)
    return value if value < 2**64 else None


class Lka:
    """Judges the filter's output lines as smtpd's lookup process would."""

    def __init__(self, sim: "Simulator") -> None:
        self.sim = sim
        version = p.parse_version(str(DIALECTS[sim.dialect]["version"])) or (0, 6)
        self.version = version
        self.token_first = version < (0, 5)
        self.legacy = version < (0, 7)  # 2,047-byte cut, "Unexpected parameter" texts
        self.strip_cr = version < (0, 5)  # 6.6 strips a trailing CR in its I/O layer
        self.smtp_out_ok = version >= (0, 5)
        self.report_ok = bool(DIALECTS[sim.dialect]["protocol"])
        self.ready = False
        self._cut = False  # the line being judged was cut at 2,047 bytes
        self._stripped_cr = False  # ... or lost a trailing CR (6.6)
        self.reports: Counter[tuple[str, str]] = Counter()
        self.phases: set[str] = set()

    def _crlf(self, raw: bytes) -> None:
        self.sim.finding(
            WARN,
            "crlf",
            "line ends in CR LF: smtpd 6.6 (protocol 0.4) strips the CR, but 6.7+ keep it and die on it",
            line=raw,
            once="crlf",
        )

    def _fatal(self, rule: str, message: str, log: str | Sequence[str], line: bytes | None, session: str | None = None) -> None:
        logs = (log,) if isinstance(log, str) else tuple(log)
        if line is not None and b"\r" in line:
            message += " (the line holds a CR, which smtpd keeps as part of the line: end lines with \\n only)"
        finding = self.sim.finding(FATAL, rule, message, log=logs, line=line, session=session)
        raise SmtpdGone(finding)

    def output(self, raw: bytes) -> None:
        sim = self.sim
        if len(raw) > MAX_LINE:
            finding = sim.finding(
                HANG,
                "line-too-long",
                f"a {len(raw):,}-byte line (over {MAX_LINE:,} bytes): smtpd's reader of filter output never "
                "takes it; the lookup process spins, this session and every later one stall",
                log=("(nothing is logged: lookup spins at ~95% CPU, new clients get no banner)",),
                line=raw,
            )
            raise SmtpdGone(finding)
        line = raw
        self._stripped_cr = False
        if self.strip_cr and line.endswith(b"\r"):
            line = line[:-1]
            self._stripped_cr = True
            if not line.startswith(b"filter-dataline|"):  # data lines: see _dataline
                self._crlf(raw)
        text = p.decode_field(line)
        if not self.ready:
            self._registration(line, text)
            return
        if line.startswith(b"filter-result|") or line.startswith(b"filter-dataline|"):
            if self.legacy and len(line) > LEGACY_LINE:
                sid = line.split(b"|", 3)[2 if self.token_first else 1] if line.count(b"|") >= 2 else b""
                sim.finding(
                    WARN,
                    "legacy-truncation",
                    f"a {len(line):,}-byte output line: smtpd before 7.4 (protocol {self.version[0]}.{self.version[1]}) "
                    f"keeps only the first {LEGACY_LINE:,} bytes and silently drops the rest",
                    line=raw,
                    session=p.decode_field(sid) or None,
                    once=("legacy-truncation", sid),
                )
                line = line[:LEGACY_LINE]
            self._cut = len(raw) > len(line)
            self._response(line, raw)
            return
        if line.startswith(b"report|"):
            log = "lookup: unexpected direction: " if re.match(rb"^report\|\d+\.\d+\|", line) else "lookup: Invalid report: invalid time"
            self._fatal("report-line", "a report| line: smtpd's parser of filter reports is broken (6.6 to 7.8) and exits", log, raw)
        if line.startswith(b"register|"):
            self._fatal("register-after-ready", "a register| line after register|ready", f"lookup: Invalid filter message type: {text}", raw)
        self._fatal("invalid-message-type", "a line that is not filter-result|, filter-dataline| or report|" + (" (an empty line)" if not line else ""), f"lookup: Invalid filter message type: {text}", raw)

    # -- registration ----------------------------------------------------------

    def _registration(self, line: bytes, text: str) -> None:
        sim = self.sim
        if not line.startswith(b"register|"):
            self._fatal("non-register-before-ready", "a line that is not register|... before register|ready", f"lookup: Non-register message before register|ready: {text}", line)
        if line == b"register|ready":
            self.ready = True
            sim.registration_done(self.reports, self.phases)
            return
        if line.startswith(b"register|report|"):
            hook = line[16:]
            if hook.startswith(b"smtp-in|"):
                subsystem, event = "smtp-in", hook[8:]
            elif hook.startswith(b"smtp-out|") and self.smtp_out_ok:
                subsystem, event = "smtp-out", hook[9:]
            else:
                why = "smtp-out reports do not exist in protocol 0.4 (OpenSMTPD 6.6)" if hook.startswith(b"smtp-out|") else "reports are smtp-in or smtp-out"
                self._fatal("invalid-direction", f"bad subsystem in a report registration: {why}", f"lookup: Invalid message direction: {p.decode_field(hook)}", line)
            name = p.decode_field(event)
            if name == "*":
                events = list(p.REPORT_EVENTS)
            elif name in p.REPORT_EVENTS:
                events = [name]
            else:
                self._fatal("unknown-event", f"unknown report event {name!r}", f"lookup: Unrecognized report name: {name}", line)
            for ev in events:
                self.reports[(subsystem, ev)] += 1
                if self.reports[(subsystem, ev)] == 2:
                    sim.finding(
                        WARN,
                        "duplicate-report-registration",
                        f"report {subsystem}|{ev} registered twice: smtpd sends every such event twice",
                        line=line,
                    )
            if subsystem == "smtp-out" and not sim.wire.smtp_out:
                sim.finding(
                    WARN,
                    "smtp-out-unannounced",
                    "smtp-out reports registered although smtpd did not announce config|subsystem|smtp-out: "
                    "no events come, and the same registration is fatal on OpenSMTPD 6.6 (protocol 0.4)",
                    line=line,
                    once="smtp-out-unannounced",
                )
            return
        if line.startswith(b"register|filter|"):
            hook = line[16:]
            if hook[:8].lower() != b"smtp-in|":
                self._fatal("invalid-direction", "filters exist only for smtp-in", f"lookup: Invalid message direction: {p.decode_field(hook)}", line)
            name = p.decode_field(hook[8:])
            if name not in REGISTRABLE_PHASES:
                self._fatal("unknown-phase", f"unknown filter phase {name!r}", f"lookup: Unrecognized report name: {name}", line)
            self.phases.add(name)
            return
        self._fatal("invalid-register-line", "a register| line that is neither report, filter nor ready", f"lookup: Invalid register line received: {text}", line)

    # -- responses ---------------------------------------------------------------

    def _response(self, line: bytes, raw: bytes) -> None:
        sim = self.sim
        text = p.decode_field(line)
        kind, _, rest = line.partition(b"|")
        first, sep1, rest = rest.partition(b"|")
        names = ("token", "reqid") if self.token_first else ("reqid", "token")
        if not sep1:
            self._fatal("bad-ids", f"no {names[1]} field", f"lookup: Missing {names[1]}: {text}", raw)
        second, sep2, response = rest.partition(b"|")
        if not sep2:
            self._fatal("bad-ids", "no decision field", f"lookup: Missing directive: {text}", raw)
        a, b = _hex(first), _hex(second)
        if a is None:
            self._fatal("bad-ids", f"the {names[0]} field is not hex", f"lookup: Invalid {names[0]}: {text}", raw)
        if b is None:
            self._fatal("bad-ids", f"the {names[1]} field is not hex", f"lookup: Invalid {names[1]}: {text}", raw)
        tok, sid = (a, b) if self.token_first else (b, a)
        session = sim.live.get(sid)
        if session is None:
            if sid in sim.ended:
                return  # "session can legitimately disappear": ignored, and right so
            order = "TOKEN|SESSION" if self.token_first else "SESSION|TOKEN"
            if sid in sim.token_phases and (tok in sim.live or tok in sim.ended):
                sim.finding(
                    HANG,
                    "swapped-ids",
                    f"session id and token are swapped: protocol {self.version[0]}.{self.version[1]} answers are "
                    f"{kind.decode(errors='replace')}|{order}|...; smtpd finds no session {sid:016x}, ignores the answer, "
                    "and the session waits forever",
                    log=("(nothing is logged: answers for unknown sessions are ignored)",),
                    line=raw,
                    once=("swapped-ids",),
                )
            else:
                sim.finding(
                    HANG,
                    "unknown-session",
                    f"answer for unknown session {sid:016x}: smtpd ignores it silently, so the session that "
                    "waits for an answer never gets one",
                    log=("(nothing is logged: answers for unknown sessions are ignored)",),
                    line=raw,
                    once=("unknown-session", sid),
                )
            return
        if session.current is not None:
            session.current.output.append(raw)
        if kind == b"filter-dataline":
            self._dataline(session, tok, response, raw)
        else:
            self._result(session, tok, response, raw, text)

    def _dataline(self, s: SimSession, tok: int, payload: bytes, raw: bytes) -> None:
        sim = self.sim
        stream = s.stream
        if stream is not None and stream.done and s.lka_phase in ("data-line", "commit"):
            self._fatal(
                "dataline-after-final-dot",
                "a data line after the message's final '.': smtpd is in the commit phase by then",
                "lookup: filter-dataline out of dataline phase",
                raw,
                s.sid,
            )
        if s.lka_phase != "data-line" or stream is None:
            self._fatal("dataline-out-of-phase", f"filter-dataline while the session is in the {s.lka_phase or 'connect'} phase", "lookup: filter-dataline out of dataline phase", raw, s.sid)
        if tok != sim.token_int("data-line"):
            self._fatal("misbehaving-filter", f"token {tok:016x} is not the data-line token {sim.token('data-line')}", "lookup: misbehaving filter", raw, s.sid)
        if payload == b".":
            if not stream.input_done:
                self._fatal(
                    "premature-final-dot",
                    "the final '.' before smtpd sent the message's last line: smtpd commits a truncated "
                    "message while the client is still sending, and the next data line it gets back is out of phase",
                    "lookup: filter-dataline out of dataline phase",
                    raw,
                    s.sid,
                )
            stream.done = True
            sim.resolve(s, list(stream.output), "data")
            return
        if self._stripped_cr or b"\r" in payload:
            # CRs the client sent are the client's business: only judge the filter's own.
            echo = (
                payload in stream.input
                or payload + b"\r" in stream.input
                or (self._cut and any(x.startswith(payload) for x in stream.input))
            )
            if self._stripped_cr and not echo:
                self._crlf(raw)
            if b"\r" in payload and not echo:
                sim.finding(WARN, "cr-in-output", "CR inside a data line the client did not send: smtpd stores it in the message", line=raw, session=s.sid, once=("cr-data", s.sid))
        stream.output.append(payload)

    def _result(self, s: SimSession, tok: int, response: bytes, raw: bytes, text: str) -> None:
        sim = self.sim
        if s.lka_phase == "data-line":
            self._fatal("result-in-dataline", "filter-result while the session is streaming data lines", "lookup: filter-result in dataline phase", raw, s.sid)
        decision, sep, param_b = response.partition(b"|")
        param = p.decode_field(param_b) if sep else None
        kind = p.decode_field(decision)
        expected = sim.token_int(s.lka_phase) if s.lka_phase else None
        if kind in ("proceed", "junk"):
            if param is not None:
                log = f"lookup: Unexpected parameter after {kind}: {text}" if self.legacy else f"lookup: Invalid directive: {text}"
                self._fatal("param-after-" + kind, f"'{kind}' takes no parameter", log, raw, s.sid)
            if kind == "junk" and s.lka_phase == "commit":
                self._fatal("junk-at-commit", "junk at the commit phase", "lookup: filter-reponse junk after DATA", raw, s.sid)
            if kind == "proceed" and tok != expected:
                other = sim.token_phases.get(tok)
                hint = f" (it is the {other} token: an answer sent twice, or late?)" if other else ""
                self._fatal("misbehaving-filter", f"token {tok:016x} is not the token of this session's {s.lka_phase} request{hint}", "lookup: misbehaving filter", raw, s.sid)
        else:
            if param is None:
                self._fatal("missing-parameter", f"decision {kind!r} without a parameter", f"lookup: Missing parameter: {text}", raw, s.sid)
            if kind == "report" and not self.report_ok:
                self._fatal("report-decision", "the report decision exists only from OpenSMTPD 7.6 (announced by config|protocol)", f"lookup: Invalid directive: {text}", raw, s.sid)
            if kind not in ("rewrite", "reject", "disconnect", "report"):
                self._fatal("invalid-directive", f"unknown decision {kind!r}", f"lookup: Invalid directive: {text}", raw, s.sid)
        if s.pending is None or s.pending == "data-line":
            self._fatal(
                "answer-without-request",
                "an answer for a session with no request pending (answered twice?)",
                f"pony: tree_xpop(0x..., 0x{s.sid}) (the SMTP engine finds no pending request; code reading)",
                raw,
                s.sid,
            )
        if tok != expected:
            sim.finding(WARN, "token-mismatch", f"token {tok:016x} is not the token of the {s.lka_phase} request (smtpd does not check it for {kind}, but a proceed with it is fatal)", line=raw, session=s.sid)
        if b"\r" in response and kind in ("reject", "disconnect", "rewrite", "report"):
            sim.finding(WARN, "cr-in-output", f"CR inside a {kind} parameter: smtpd keeps it", line=raw, session=s.sid)
        if kind == "reject" and s.lka_phase == "connect" and param is not None and param[:1] == "4" and not param.startswith("421"):
            sim.finding(WARN, "reject-4xx-at-connect", "a 4xx reject at connect replaces the banner but keeps the client connected, answering 503 to everything: use disconnect", line=raw, session=s.sid)
        if kind == "report" and s.lka_phase in ("helo", "ehlo", "auth", "mail-from", "rcpt-to"):
            pass  # the engine side reports what it does with the text
        s.pending = None
        sim.resolve(s, FilterDecision(kind, param, raw), "answer")


# --------------------------------------------------------------------------
# The simulator


class Simulator:
    """smtpd around one filter: handshake, sessions, judgement.

    ``transport`` talks to the filter; ``dialect`` is a key of
    ``wire.DIALECTS`` (``0.4``, ``0.5``, ``0.6``, ``0.7``, ``0.7/7.6``).
    ``hang_timeout``: seconds without the answer a session waits for before
    a HANG finding (smtpd itself waits forever).  ``quiet_time``: how long the
    filter must stay silent before the final ``.`` of a message is sent.
    """

    def __init__(
        self,
        transport: Transport,
        dialect: str = "0.6",
        *,
        name: str = "filter",
        hang_timeout: float = 10.0,
        quiet_time: float = 0.03,
        seed: int = 0,
        smtp_out: bool = False,
        hostname: str = "mx.test",
        on_finding: Callable[[Finding], None] | None = None,
        on_note: Callable[[str], None] | None = None,
        handshake: Sequence[bytes] | None = None,
        record: bool = False,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; one of {', '.join(DIALECTS)}")
        self.transport = transport
        self.dialect = dialect
        self.name = name
        self.hostname = hostname
        self.hang_timeout = hang_timeout
        self.quiet_time = quiet_time
        self.rng = random.Random(seed)
        self.wire = Wire(dialect, admd=hostname, smtp_out=smtp_out)
        self.custom_handshake = list(handshake) if handshake is not None else None
        self.lka = Lka(self)
        self.on_finding = on_finding
        self.on_note = on_note
        self.findings: list[Finding] = []
        self.transcript: list[str] = []
        self.registration: list[bytes] = []
        self.reports: Counter[tuple[str, str]] = Counter()
        self.phases: set[str] = set()
        self.live: dict[int, SimSession] = {}
        self.ended: set[int] = set()
        self.sessions: list[SimSession] = []
        self.dead: Finding | None = None
        self.clock = 1795218690.0
        self._once: set[Any] = set()
        self._outbox: list[bytes] = []
        self._tasks: dict[SimSession, _Task] = {}
        self._ready: deque[_Task] = deque()
        self._last_output = time.monotonic()
        self._port = 40000 + self.rng.randrange(20000)
        self._sid_counter = self.rng.getrandbits(32) | 1
        token_base = self.rng.getrandbits(64) | (1 << 63)
        self._tokens: dict[str, str] = {}
        self.token_phases: dict[int, str] = {}
        for i, phase in enumerate(REGISTRABLE_PHASES):
            value = (token_base + i * 0x1_0000_1234) % 2**64
            self._tokens[phase] = f"{value:016x}"
            self.token_phases[value] = phase
        self.rewrite_version: str | None = None  # for replays: convert lines to this dialect
        #: With ``record``: every line both ways, ``(">", line)`` to the filter,
        #: ``("<", line)`` from it.
        self.wire_log: list[tuple[str, bytes]] | None = [] if record else None

    # -- identifiers, time ------------------------------------------------------

    def ts(self) -> str:
        self.clock += 0.000037
        return f"{self.clock:.6f}"

    def token(self, phase: str) -> str:
        return self._tokens[phase]

    def token_int(self, phase: str | None) -> int | None:
        return int(self._tokens[phase], 16) if phase in self._tokens else None

    def new_sid(self) -> str:
        self._sid_counter = (self._sid_counter + 1) % 2**32
        sid = f"{self._sid_counter:08x}{self.rng.getrandbits(32):08x}"
        return sid

    def msgid(self) -> str:
        return f"{self.rng.getrandbits(32):08x}"

    def next_port(self) -> int:
        self._port += 1
        return self._port

    # -- registration knowledge ---------------------------------------------------

    def report_count(self, event: str) -> int:
        return self.reports.get(("smtp-in", event), 0)

    def registration_done(self, reports: Counter[tuple[str, str]], phases: set[str]) -> None:
        self.reports = reports
        self.phases = phases

    # -- findings and notes ------------------------------------------------------

    def finding(
        self,
        severity: str,
        rule: str,
        message: str,
        *,
        log: Sequence[str] = (),
        line: bytes | None = None,
        session: str | None = None,
        once: Any = None,
    ) -> Finding:
        f = Finding(severity, rule, message, tuple(log), session, line)
        if once is not None:
            if once in self._once:
                return f
            self._once.add(once)
        self.findings.append(f)
        self.transcript.append("!! " + f.format().replace("\n", "\n   "))
        if self.on_finding:
            self.on_finding(f)
        return f

    def note(self, session: SimSession | None, who: str, text: str) -> None:
        label = session.label if session is not None else "--"
        entry = f"{label:>4} {who}: {text}"
        self.transcript.append(entry)
        if self.on_note:
            self.on_note(entry)

    # -- lines out ---------------------------------------------------------------

    def emit(self, line: bytes) -> None:
        self._outbox.append(line)

    def flush(self) -> None:
        if self._outbox:
            if self.wire_log is not None:
                self.wire_log.extend((">", line) for line in self._outbox)
            data = b"\n".join(self._outbox) + b"\n"
            self._outbox = []
            self.transport.send(data)

    def convert(self, line: bytes) -> bytes:
        """A recorded line in this simulator's dialect (version field and
        the fields whose order changed), when ``rewrite_version`` is set."""
        if not self.rewrite_version:
            return line
        parts = line.split(b"|", 6)
        if len(parts) < 6 or parts[0] not in (b"report", b"filter"):
            return line
        version = self.wire.version
        if parts[0] == b"report" and parts[4] in (b"tx-mail", b"tx-rcpt", b"link-auth"):
            try:
                rep = p.parse_report(line)
            except p.ProtocolError:
                return b"|".join([parts[0], version] + parts[2:])
            ts, sid = rep.timestamp, rep.session
            if isinstance(rep.params, (p.TxMail, p.TxRcpt)):
                return self.wire.tx_address(ts, rep.event, sid, rep.params.msgid, rep.params.result, rep.params.address)
            if isinstance(rep.params, p.LinkAuth):
                return self.wire.link_auth(ts, sid, rep.params.username, rep.params.result)
        return b"|".join([parts[0], version] + parts[2:])

    # -- sessions -----------------------------------------------------------------

    def new_session(self, connect: Connect | None = None, sid: str | None = None) -> SimSession:
        sid = sid or self.new_sid()
        s = SimSession(self, sid, f"s{len(self.sessions) + 1}", connect or Connect())
        self.sessions.append(s)
        return s

    def session_started(self, s: SimSession) -> None:
        s.alive = True
        self.live[s.sid_int] = s

    def session_ended(self, s: SimSession) -> None:
        self.live.pop(s.sid_int, None)
        self.ended.add(s.sid_int)
        s.alive = False

    def resolve(self, s: SimSession, value: Any, kind: str) -> None:
        """The filter answered what session ``s`` waits for."""
        task = self._tasks.get(s)
        if task is None or task.wait is None or task.wait.kind != kind:
            return
        task.wait = None
        task.value = value
        self._ready.append(task)

    # -- handshake ---------------------------------------------------------------------

    def start(self) -> list[bytes]:
        """Send the handshake, read the registration up to ``register|ready``."""
        lines = self.custom_handshake if self.custom_handshake is not None else self.wire.handshake()
        self.note(None, ">", f"handshake: {len(lines)} config lines ({self.dialect})")
        for line in lines:
            self.emit(line)
        self.flush()
        started = time.monotonic()
        while not self.lka.ready:
            remaining = started + self.hang_timeout - time.monotonic()
            if remaining <= 0 or self.transport.idle:
                finding = self.finding(
                    HANG,
                    "no-register-ready",
                    f"no register|ready within {self.hang_timeout:g}s: smtpd opens its port but never greets a "
                    "client (an unflushed registration looks the same)",
                    log=("(nothing is logged)",),
                )
                self._die(finding)
            try:
                out = self.transport.recv(remaining)
            except FilterGone as gone:
                self._gone(gone)
            for line in out:
                if self.wire_log is not None:
                    self.wire_log.append(("<", line))
                if not self.lka.ready:
                    self.registration.append(line)
                try:
                    self.lka.output(line)
                except SmtpdGone as exc:
                    self._die(exc.finding)
        phases = ", ".join(sorted(self.phases)) or "none"
        events = ", ".join(sorted({e for (_, e) in self.reports})) or "none"
        self.note(None, "<", f"registered filter phases: {phases}")
        self.note(None, "<", f"registered report events: {events}")
        return list(self.registration)

    # -- the scheduler -------------------------------------------------------------------

    def _die(self, finding: Finding) -> None:
        self.dead = finding
        for task in list(self._tasks.values()):
            task.gen.close()
        self._tasks.clear()
        self._ready.clear()
        raise SmtpdGone(finding)

    def _gone(self, gone: FilterGone) -> None:
        if gone.exited:
            status = f" (status {gone.status})" if gone.status is not None else ""
            last = list(getattr(self.transport, "stderr", ()))[-3:]
            logs = [f"{self.name}: {line}" for line in last]
            finding = self.finding(
                FATAL,
                "filter-exited",
                f"the filter exited{status}: smtpd never restarts a filter, it shuts down",
                log=(*logs, f"warn: lost processor: {self.name} exited abnormally", "Exiting"),
            )
        else:
            finding = self.finding(
                HANG,
                "stdout-closed",
                "the filter closed its output but keeps running: every session waiting for it hangs",
                log=("(nothing is logged)",),
            )
        self._die(finding)

    def drive(self, gen: Generator[_Wait, Any, Any], session: SimSession) -> Any:
        """Run one session generator to its end (other sessions' output is
        still judged meanwhile)."""
        return self.run_tasks([(gen, session)])[0]

    def run(self, scripts: Sequence[Sequence[Action]]) -> list[SimSession]:
        """Run whole session scripts interleaved; returns the sessions."""
        pairs = []
        for script in scripts:
            script = list(script)
            connect = script[0] if script and isinstance(script[0], Connect) else None
            s = self.new_session(connect)
            pairs.append((s.play(script), s))
        self.run_tasks(pairs)
        return [s for _, s in pairs]

    def replay(self, lines: Sequence[bytes]) -> list[SimSession]:
        """Replay recorded smtpd->filter lines (handshake excluded), sessions
        interleaved, only what the filter registered."""
        by_sid: dict[str, list[bytes]] = {}
        for line in lines:
            if not (line.startswith(b"report|") or line.startswith(b"filter|")):
                continue
            parts = line.split(b"|", 6)
            if len(parts) < 6:
                continue
            by_sid.setdefault(p.decode_field(parts[5]), []).append(line)
        pairs = []
        for sid, session_lines in by_sid.items():
            if _hex(sid.encode()) is None:
                continue
            s = self.new_session(Connect(), sid=sid)
            pairs.append((s.replay(session_lines), s))
        self.run_tasks(pairs)
        return [s for _, s in pairs]

    def run_tasks(self, pairs: Sequence[tuple[Generator[_Wait, Any, Any], SimSession]]) -> list[Any]:
        if self.dead is not None:
            raise SmtpdGone(self.dead)
        if not self.lka.ready:
            raise RuntimeError("call start() first")
        tasks = []
        for gen, session in pairs:
            task = _Task(gen, session)
            session.task = task
            self._tasks[session] = task
            tasks.append(task)
            self._ready.append(task)
        try:
            while not all(t.done for t in tasks):
                self._step_ready()
                self.flush()
                if all(t.done for t in tasks):
                    break
                if not self._ready:
                    self._pump()
        except SmtpdGone as exc:
            self._die(exc.finding)
        finally:
            for task in tasks:
                if self._tasks.get(task.session) is task:
                    del self._tasks[task.session]
        return [t.result for t in tasks]

    def eof_in_flight(self, scripts: Sequence[Sequence[Action]]) -> list[SimSession]:
        """Sessions sent up to their first wait for the filter (the lines of
        a message go ahead whole, final ``.`` included), then EOF at once,
        as a transcript piped into the filter ends, or smtpd going away
        mid-session.  Every request and message the filter read must be
        answered before it exits; each one that is not is a HANG finding
        (``dropped-at-eof``): a driver feeding a transcript waits forever
        (smtpd itself, gone, would not care).  The transport is closed."""
        if self.dead is not None:
            raise SmtpdGone(self.dead)
        tasks = []
        for script in scripts:
            script = list(script)
            connect = script[0] if script and isinstance(script[0], Connect) else None
            s = self.new_session(connect)
            task = _Task(s.play(script), s)
            s.task = task
            self._tasks[s] = task
            tasks.append(task)
            self._ready.append(task)
        while self._ready:
            self._step_ready()
            for t in tasks:
                if t.wait is not None and t.wait.kind == "quiet":  # send the final '.' ahead too
                    t.wait = None
                    self._ready.append(t)
        self.flush()
        owed = [(t, t.wait) for t in tasks if not t.done and t.wait is not None]
        self.transport.close()
        try:
            for line in getattr(self.transport, "after_eof", ()):
                if self.wire_log is not None:
                    self.wire_log.append(("<", line))
                self.lka.output(line)
        except SmtpdGone as exc:
            self.dead = exc.finding
        for t, wait in owed:
            if t.wait is wait:  # not resolved by anything written after EOF
                what = "the final '.' of the message" if wait.kind == "data" else f"the answer to the {wait.phase} request"
                self.finding(
                    HANG,
                    "dropped-at-eof",
                    f"the filter exited at EOF without writing {what} it had read: a driver feeding a "
                    "transcript (cat session.txt | filter) waits forever, and the decision is lost",
                    log=("(nothing is logged)",),
                    session=t.session.sid,
                )
                self.note(t.session, "F", f"{wait.phase or 'data-line'} -> (dropped at EOF)")
            elif wait.kind == "data":
                self.note(t.session, "F", f"data-line -> {len(t.session.stream.output) if t.session.stream else 0} lines back, then '.' (after EOF)")
            else:
                self.note(t.session, "F", f"{wait.phase} -> {t.value} (after EOF)")
        for t in tasks:
            t.gen.close()
            self._tasks.pop(t.session, None)
        self._ready.clear()
        return [t.session for t in tasks]

    def _step_ready(self) -> None:
        while self._ready:
            task = self._ready.popleft()
            if task.done:
                continue
            try:
                if task.throw is not None:
                    exc, task.throw = task.throw, None
                    wait = task.gen.throw(exc)
                else:
                    value, task.value = task.value, None
                    wait = task.gen.send(value)
            except StopIteration as stop:
                task.done = True
                task.result = stop.value
                continue
            wait.started = time.monotonic()
            task.wait = wait

    def _waits(self) -> list[_Task]:
        return [t for t in self._tasks.values() if not t.done and t.wait is not None]

    def _pump(self) -> None:
        """Wait for filter output and judge it; time out waits."""
        waiting = self._waits()
        if not waiting:
            return
        now = time.monotonic()
        quiet = [t for t in waiting if t.wait.kind == "quiet"]  # type: ignore[union-attr]
        others = [t for t in waiting if t.wait.kind != "quiet"]  # type: ignore[union-attr]
        deadline = min((t.wait.started + self.hang_timeout for t in others), default=now + self.hang_timeout)  # type: ignore[union-attr]
        timeout = max(0.0, deadline - now)
        if quiet:
            quiet_due = min(max(t.wait.started, self._last_output) + self.quiet_time for t in quiet)  # type: ignore[union-attr]
            timeout = min(timeout, max(0.0, quiet_due - now))
        try:
            lines = self.transport.recv(timeout)
        except FilterGone as gone:
            self._gone(gone)
        if lines:
            self._last_output = time.monotonic()
            for line in lines:
                if self.wire_log is not None:
                    self.wire_log.append(("<", line))
                self.lka.output(line)
            return
        now = time.monotonic()
        idle = self.transport.idle
        released = False
        for t in quiet:
            if idle or now >= max(t.wait.started, self._last_output) + self.quiet_time:  # type: ignore[union-attr]
                t.wait = None
                self._ready.append(t)
                released = True
        if released:
            return
        for t in others:
            if t.wait is None:
                continue
            if idle or now >= t.wait.started + self.hang_timeout:
                self._hang(t)

    def _hang(self, task: _Task) -> None:
        wait = task.wait
        assert wait is not None
        s = wait.session
        waited = time.monotonic() - wait.started
        after = "at once: the filter is idle" if self.transport.idle else f"after {waited:.1f}s"
        if wait.kind == "data":
            self.finding(
                HANG,
                "missing-final-dot",
                f"no final '.' for the message ({after}): smtpd waits for the end of the filtered message "
                "forever; the client times out",
                log=("(nothing is logged)",),
                session=s.sid,
            )
        else:
            self.finding(
                HANG,
                "unanswered",
                f"no answer to the {wait.phase} request ({after}): smtpd has no timeout for filters, the session "
                "waits until the client gives up",
                log=("(nothing is logged)",),
                session=s.sid,
            )
        self.note(s, "C", "<client gives up and disconnects>")
        task.wait = None
        task.throw = _Hung()
        self._ready.append(task)

    # -- the end -------------------------------------------------------------------------

    def close(self) -> None:
        self.transport.close()
