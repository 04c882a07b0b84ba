"""smtpd's side of the pipe, for the property and stateful tests.

``Oracle`` is a model of what OpenSMTPD's lookup process does with a
filter's output (research/protocol.md §1.2-§1.5, §4, §9), written from the
protocol notes and independent of ``smtpd_filter_sdk.protocol`` (which is
only consulted as a second opinion, ``is_fatal_output``).  It is told each
input line as the filter receives it and each output line as the filter
writes it, and records every violation: a line smtpd would die or jam on, an
answer for nothing, a second answer, a request left unanswered, a data-line
out of its phase, a missing or premature final ``.``.

``Driver`` feeds a ``testing.strategies.Stream`` to an ``Engine`` the way
smtpd would: in arbitrary chunks, but never sending a session's next line
before the filter answered that session's pending request (smtpd waits),
except where smtpd does not wait (a client leaving).  Output made while a
chunk is fed is attributed to the earliest input line that explains it.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from smtpd_filter_sdk import protocol as sdk_protocol
from smtpd_filter_sdk.log import Logger
from smtpd_filter_sdk.runtime import Engine
from smtpd_filter_sdk.testing.strategies import Line, Stream
from smtpd_filter_sdk.testing.wire import DIALECTS

#: Generated protocol lines fed through an Engine in this test session
#: (printed, and checked against the ci profile's floor, by conftest.py).
LINES_FED = [0]

# The protocol, written down again (not imported): smtpd-filters(7), lka_filter.c.
EVENTS = frozenset(
    "link-connect link-greeting link-identify link-tls link-auth link-disconnect tx-reset tx-begin "
    "tx-mail tx-rcpt tx-envelope tx-data tx-commit tx-rollback protocol-client protocol-server "
    "filter-report filter-response timeout".split()
)
REGISTRABLE_PHASES = frozenset(
    "connect helo ehlo starttls auth mail-from rcpt-to data data-line rset quit noop help wiz commit".split()
)
MAX_LINE = 65535  # smtpd's reader of filter output jams beyond this (protocol.md §9)
_REPLY = re.compile(rb"\A[45][0-9][0-9] ")
#: rewrite makes the command fail (or is meaningless) in these phases (§4.2)
_NO_REWRITE = frozenset({"starttls", "data", "commit", "rset", "quit", "noop", "data-line"})
#: the 7.6 report decision is used as the command's parameter elsewhere (§4.4)
_REPORT_OK = frozenset({"connect", "starttls", "data", "commit", "rset", "quit", "noop"})


def version_tuple(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    major, dot, minor = text.partition(".")
    if not dot or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def token_first(version: str | None) -> bool:
    v = version_tuple(version)
    return v is not None and v < (0, 5)


@dataclass
class Pending:
    line: Line
    answers: list[bytes] = field(default_factory=list)
    released: bool = False  # smtpd let go of the session while it was pending

    @property
    def phase(self) -> str:
        return self.line.name or ""


@dataclass
class Msg:
    """One message's data-line stream, as seen from both sides."""

    sid: str
    token: str
    version: str
    inputs: list[bytes] = field(default_factory=list)  # stuffed payloads fed
    input_ended: bool = False
    outputs: list[bytes] = field(default_factory=list)  # stuffed payloads written (without ".")
    output_ended: bool = False
    aborted: bool = False
    commit: Pending | None = None

    @property
    def open(self) -> bool:
        return not self.output_ended and not self.aborted


@dataclass
class SessionState:
    sid: str
    queue: deque[Pending] = field(default_factory=deque)
    released: list[Pending] = field(default_factory=list)
    msg: Msg | None = None
    closed: bool = False


class Oracle:
    def __init__(self, stream: Stream, expect_registration: bool = True) -> None:
        self.stream = stream
        self.strict = not stream.corrupted
        self.dialect = DIALECTS[stream.dialect]
        self.report_allowed = bool(self.dialect["protocol"])
        self.violations: list[str] = []
        self.registration: list[bytes] = []
        self.registered = False
        self.ready_fed = False
        self.sessions: dict[str, SessionState] = {}
        self.messages: list[Msg] = []
        self.pendings: list[Pending] = []
        self.extra_answers: list[bytes] = []
        self.damaged_sids = stream.damaged_sids
        self.expect_registration = expect_registration
        self.outputs = 0

    # -- helpers -------------------------------------------------------------

    def fail(self, why: str, line: bytes | None = None) -> None:
        if line is not None:
            shown = line if len(line) < 200 else line[:200] + b"...<%d bytes>" % len(line)
            why = f"{why}: {shown!r}"
        self.violations.append(why)

    def state(self, sid: str) -> SessionState:
        st = self.sessions.get(sid)
        if st is None:
            st = self.sessions[sid] = SessionState(sid)
        return st

    def _intact(self, sid: str) -> bool:
        """No corrupted line named this session (its streams are as generated)."""
        return self.strict or sid not in self.damaged_sids

    def busy(self, sid: str) -> bool:
        """smtpd waits on the filter for this session."""
        st = self.sessions.get(sid)
        if st is None or st.closed:
            return False
        if st.queue:
            return True
        msg = st.msg
        return msg is not None and msg.input_ended and msg.open

    # -- driving -------------------------------------------------------------

    def feed(self, lines: Sequence[Line], outputs: Iterable[bytes]) -> None:
        """``lines`` were completed by one ``Engine.feed`` call, which wrote
        ``outputs``: place each output after the earliest input explaining it."""
        i = 0
        for out in outputs:
            while i < len(lines) and not self._explained(out):
                self.input(lines[i])
                i += 1
            self.output(out)
        while i < len(lines):
            self.input(lines[i])
            i += 1

    def after(self, outputs: Iterable[bytes]) -> None:
        """Output written while the event loop ran (async handlers)."""
        for out in outputs:
            self.output(out)

    def _ids(self, a: bytes, b: bytes) -> tuple[SessionState | None, bytes, bytes, bool]:
        """(session, sid, token, token_first_as_written)."""
        sa = self.sessions.get(a.decode("latin-1"))
        if sa is not None:
            return sa, a, b, False
        sb = self.sessions.get(b.decode("latin-1"))
        if sb is not None:
            return sb, b, a, True
        return None, a, b, False

    def _explained(self, out: bytes) -> bool:
        if not self.registered:
            return self.ready_fed
        parts = out.split(b"|", 4)
        if len(parts) < 4:
            return True
        st, _, tok, _ = self._ids(parts[1], parts[2])
        if st is None:
            return False
        if parts[0] == b"filter-result":
            return any(p.line.token == tok.decode("latin-1") for p in st.queue) or any(
                p.line.token == tok.decode("latin-1") and not p.answers for p in st.released)
        if parts[0] == b"filter-dataline":
            msg = st.msg
            if msg is None or not msg.open:
                return False
            payload = out.split(b"|", 3)[3] if out.count(b"|") >= 3 else b""
            return payload != b"." or msg.input_ended
        return True

    # -- input ---------------------------------------------------------------

    def input(self, line: Line) -> None:
        if line.kind == "config":
            if line.raw == b"config|ready":
                self.ready_fed = True
            return
        if line.sid is None:
            return
        if line.damaged:
            st = self.sessions.get(line.sid)
            if st is not None and st.queue:
                # fed while a request is pending: smtpd only does that when the
                # session ends, and a damaged line may still end it for the
                # filter (a link-disconnect with a CR in its timestamp...):
                # the answer becomes optional
                while st.queue:
                    pending = st.queue.popleft()
                    pending.released = True
                    st.released.append(pending)
            return
        st = self.state(line.sid)
        if line.kind == "request":
            if self.strict and st.queue:
                self.fail(f"test driver sent a request while another one was pending ({line.name})")
            pending = Pending(line)
            self.pendings.append(pending)
            if st.closed:
                pending.released = True
                st.released.append(pending)
            else:
                st.queue.append(pending)
            if line.name == "commit" and st.msg is not None and st.msg.input_ended and st.msg.commit is None:
                st.msg.commit = pending
        elif line.kind == "data-line":
            payload = line.payload or b""
            msg = st.msg
            if msg is None or msg.input_ended or msg.aborted:
                msg = st.msg = Msg(line.sid, line.token or "", line.version or "")
                self.messages.append(msg)
            if payload == b".":
                msg.input_ended = True
            else:
                msg.inputs.append(payload)
        if (line.closes or (line.kind == "report" and line.name == "link-disconnect")) and not st.closed:
            st.closed = True
            while st.queue:
                pending = st.queue.popleft()
                pending.released = True
                st.released.append(pending)
            if st.msg is not None and not st.msg.input_ended:
                st.msg.aborted = True

    # -- output --------------------------------------------------------------

    def output(self, out: bytes) -> None:
        self.outputs += 1
        if len(out) > MAX_LINE:
            self.fail(f"output line of {len(out)} bytes (smtpd jams over {MAX_LINE})", out)
        if b"\n" in out:
            self.fail("LF inside an output line", out)
        if not self.registered:
            self._registration_line(out)
            return
        if out.startswith(b"register|"):
            self.fail("register line after register|ready", out)
            return
        reason = sdk_protocol.is_fatal_output(out)
        if reason:
            self.fail(f"protocol.is_fatal_output: {reason}", out)
        if out.startswith(b"filter-result|"):
            self._result(out)
        elif out.startswith(b"filter-dataline|"):
            self._dataline(out)
        else:
            self.fail("smtpd accepts only filter-result|/filter-dataline| after registration", out)

    def _registration_line(self, out: bytes) -> None:
        if not out.startswith(b"register|"):
            self.fail("non-register line before register|ready (fatal)", out)
            return
        if not self.ready_fed:
            self.fail("registered before config|ready", out)
        self.registration.append(out)
        if out == b"register|ready":
            self.registered = True
            self._check_registration()

    def _check_registration(self) -> None:
        announced_out = bool(self.dialect["subsystems"]) and self.stream.smtp_out
        reports: dict[str, list[str]] = {"smtp-in": [], "smtp-out": []}
        phases: list[str] = []
        for raw in self.registration[:-1]:
            parts = raw.split(b"|")
            if len(parts) == 4 and parts[1] == b"report":
                sub, event = parts[2].decode("latin-1"), parts[3].decode("latin-1")
                if sub not in reports:
                    self.fail("report registration for an unknown subsystem (fatal)", raw)
                    continue
                if sub == "smtp-out" and not announced_out:
                    self.fail("smtp-out registered but not announced (fatal on 0.4)", raw)
                if event != "*" and event not in EVENTS:
                    self.fail("unknown report event registered (fatal)", raw)
                reports[sub].append(event)
            elif len(parts) == 4 and parts[1] == b"filter":
                if parts[2].lower() != b"smtp-in":
                    self.fail("filter registration outside smtp-in (fatal)", raw)
                if parts[3].decode("latin-1") not in REGISTRABLE_PHASES:
                    self.fail("unknown filter phase registered (fatal)", raw)
                phases.append(parts[3].decode("latin-1"))
            else:
                self.fail("invalid register line (fatal)", raw)
        for sub, events in reports.items():
            if len(events) != len(set(events)) or ("*" in events and len(events) > 1):
                self.fail(f"{sub} event registered twice (smtpd would send it twice): {sorted(events)}")
        if self.registration.count(b"register|ready") != 1:
            self.fail("register|ready more than once")
        if self.expect_registration:
            want_phases = set(self.stream.phases)
            if set(phases) - {"help", "wiz"} != want_phases:
                self.fail(f"registered phases {sorted(set(phases))} != the filter's {sorted(want_phases)}")
            want_in = {e for (s, e) in self.stream.events if s == "smtp-in"}
            if set(reports["smtp-in"]) != want_in and "*" not in reports["smtp-in"]:
                self.fail(f"registered smtp-in events {sorted(reports['smtp-in'])} != {sorted(want_in)}")
            want_out = {e for (s, e) in self.stream.events if s == "smtp-out"} if announced_out else set()
            if set(reports["smtp-out"]) != want_out and "*" not in reports["smtp-out"]:
                self.fail(f"registered smtp-out events {sorted(reports['smtp-out'])} != {sorted(want_out)}")

    def _result(self, out: bytes) -> None:
        if b"\r" in out:
            self.fail("CR in a filter-result (fatal: 'proceed\\r' is not 'proceed')", out)
        parts = out.split(b"|", 4)
        if len(parts) < 4:
            self.fail("filter-result without a decision", out)
            return
        decision = parts[3]
        param = parts[4] if len(parts) == 5 else None
        if decision in (b"proceed", b"junk"):
            if param is not None:
                self.fail("parameter after proceed/junk (fatal)", out)
        elif decision in (b"reject", b"disconnect"):
            if param is None or len(param) < 5 or not _REPLY.match(param):
                self.fail("reject/disconnect text is not '[45]xx <text>' (smtpd turns it into 421)", out)
        elif decision in (b"rewrite", b"report"):
            if param is None:
                self.fail("rewrite/report without a parameter (fatal)", out)
            if decision == b"report" and not self.report_allowed:
                self.fail("report decision before OpenSMTPD 7.6 (fatal)", out)
        else:
            self.fail("unknown decision (fatal)", out)
        st, sid, tok, written_token_first = self._ids(parts[1], parts[2])
        token = tok.decode("latin-1")
        pending = None
        if st is not None:
            for cand in st.queue:
                if cand.line.token == token:
                    pending = cand
                    break
            if pending is not None:
                if self.strict and pending is not st.queue[0]:
                    self.fail("answer out of order within a session", out)
                st.queue.remove(pending)
            else:
                pending = next((c for c in st.released if c.line.token == token and not c.answers), None)
                if pending is None and st.closed:
                    # an answer for a session smtpd already let go of: ignored by smtpd
                    if self.strict and any(c.line.token == token for c in st.released):
                        self.fail("second answer for a request (after the session ended)", out)
                    return
        if pending is None:
            if self.strict or (st is not None and st.sid not in self.damaged_sids and sid.decode("latin-1")
                               in {ln.sid for ln in self.stream.lines if not ln.damaged}):
                self.fail("filter-result for no pending request (misbehaving filter: fatal)", out)
            self.extra_answers.append(out)
            return
        pending.answers.append(out)
        if written_token_first != token_first(pending.line.version):
            self.fail(f"id order wrong for protocol {pending.line.version}", out)
        phase = pending.phase
        if st is not None and not st.closed and st.msg is not None and st.msg.open and self._intact(st.sid):
            self.fail("filter-result while the session's data-line stream is open (fatal)", out)
        if decision == b"junk" and phase == "commit":
            self.fail("junk at commit (fatal)", out)
        if decision == b"rewrite" and phase in _NO_REWRITE:
            self.fail(f"rewrite at {phase}", out)
        if decision == b"report" and phase not in _REPORT_OK:
            self.fail(f"report decision at {phase} breaks the command", out)

    def _dataline(self, out: bytes) -> None:
        parts = out.split(b"|", 3)
        if len(parts) != 4:
            self.fail("filter-dataline without a payload field", out)
            return
        st, sid, tok, written_token_first = self._ids(parts[1], parts[2])
        payload = parts[3]
        if st is None:
            if self.strict:
                self.fail("filter-dataline for an unknown session", out)
            return
        if st.closed:
            return  # smtpd already let go of the session: ignored
        msg = st.msg
        if not self._intact(st.sid):
            # a damaged line of this session may have started or ended a
            # stream: keep count, expect nothing
            if msg is not None and msg.open:
                if payload == b".":
                    msg.output_ended = True
                else:
                    msg.outputs.append(payload)
            return
        if msg is None or not msg.open or not (msg.inputs or msg.input_ended):
            self.fail("filter-dataline out of the data-line phase (fatal)", out)
            return
        if tok.decode("latin-1") != msg.token:
            self.fail("filter-dataline with the wrong token (fatal)", out)
        if written_token_first != token_first(msg.version):
            self.fail(f"id order wrong for protocol {msg.version}", out)
        if payload == b".":
            if not msg.input_ended:
                self.fail("final '.' before smtpd sent the message's '.'", out)
            msg.output_ended = True
            return
        if payload[:1] == b"." and payload[:2] != b"..":
            self.fail("data line not dot-stuffed (smtpd would strip its dot)", out)
        msg.outputs.append(payload)

    # -- end -----------------------------------------------------------------

    def finish(self, engine: Engine | None = None) -> None:
        if not self.registered:
            self.fail("the filter never sent register|ready")
        for st in self.sessions.values():
            for pending in st.queue:
                self.fail(f"request never answered: {pending.line.raw[:120]!r}")
        for pending in self.pendings:
            if len(pending.answers) > 1:
                self.fail(f"request answered {len(pending.answers)} times: {pending.answers}")
        for msg in self.messages:
            if msg.input_ended and not msg.output_ended and not self.sessions[msg.sid].closed \
                    and self._intact(msg.sid):
                self.fail(f"message of {msg.sid} never ended with '.'")
        if engine is not None:
            left = set(engine.sessions.ids())
            if self.strict:
                if left:
                    self.fail(f"session state left after every session ended: {sorted(left)}")
            else:
                clean_gone = self.stream.disconnected - self.damaged_sids
                leaked = left & clean_gone
                if leaked:
                    self.fail(f"session state left after link-disconnect: {sorted(leaked)}")

    def check(self) -> None:
        if self.violations:
            shown = "\n  ".join(self.violations[:20])
            raise AssertionError(f"{len(self.violations)} violation(s):\n  {shown}")


class CapturingLog(Logger):
    """The filter's log, kept in memory (and checked for internal errors)."""

    def __init__(self, name: str) -> None:
        self.lines: list[bytes] = []
        super().__init__(name, write=self.lines.append)

    @property
    def internal_errors(self) -> list[bytes]:
        return [line for line in self.lines if b"internal error" in line]


def is_barrier(line: Line) -> bool:
    """After this line smtpd waits for the filter before the session goes on."""
    if line.damaged or line.sid is None:
        return False
    return line.kind == "request" or (line.kind == "data-line" and line.payload == b".")


class Driver:
    """Feeds a Stream to a fresh Engine like smtpd would (see module doc)."""

    def __init__(self, filt: Any, stream: Stream, *, expect_registration: bool = True) -> None:
        self.log = CapturingLog(filt.name)
        filt.log = self.log
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(filt, loop=self.loop)
        self.stream = stream
        self.oracle = Oracle(stream, expect_registration=expect_registration)
        self.forced: set[str] = set()
        self.fed = 0
        self.written: list[bytes] = []  # everything the filter wrote, in order

    def _take(self) -> list[bytes]:
        out = self.engine.take_lines()
        self.written.extend(out)
        return out

    def _feed(self, chunk: bytes, lines: Sequence[Line]) -> None:
        self.engine.feed(chunk)
        self.oracle.feed(lines, self._take())
        self.fed += len(lines)
        LINES_FED[0] += len(lines)

    def settle(self) -> None:
        self.loop.run_until_complete(self.engine.settle())
        self.oracle.after(self._take())

    def tick(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))
        self.oracle.after(self._take())

    def run(self, chunks: Sequence[int] = (65536,), ticks: Sequence[bool] = (False,)) -> Oracle:
        """Feed the whole stream in chunks of the given sizes (cycled),
        running the event loop one step after a chunk where ``ticks`` says so;
        then let every handler finish and check the end state."""
        self.push(self.stream.lines, chunks, ticks)
        if self.stream.tail:
            self.engine.feed(self.stream.tail)
            self.oracle.after(self._take())
        return self.finish()

    def push(self, lines: Sequence[Line], chunks: Sequence[int] = (65536,),
             ticks: Sequence[bool] = (False,)) -> None:
        """Feed these lines now, as smtpd would: a line that waits for its
        session's pending request is only sent once the filter answered it
        (the event loop runs until then)."""
        data = b"".join(line.raw + b"\n" for line in lines)
        ends: list[int] = []
        offset = 0
        for line in lines:
            offset += len(line.raw) + 1
            ends.append(offset)
        pos, li, ci = 0, 0, 0
        while pos < len(data):
            target = min(len(data), pos + max(1, chunks[ci % len(chunks)]))
            tick = ticks[ci % len(ticks)]
            ci += 1
            busy = {sid for sid in self.oracle.sessions if self.oracle.busy(sid)} - self.forced
            blocked: str | None = None
            j = li
            while j < len(lines) and ends[j] <= target:
                line = lines[j]
                if line.sid is not None and line.waits and not line.damaged and line.sid in busy:
                    target = ends[j] - 1  # everything but this line's newline
                    blocked = line.sid
                    break
                if is_barrier(line):
                    busy.add(line.sid or "")
                j += 1
            if target > pos:
                self._feed(data[pos:target], lines[li:j])
                pos, li = target, j
                if tick:
                    self.tick()
            if blocked is not None:
                self.settle()
                if self.oracle.busy(blocked):
                    self.oracle.fail(f"{blocked}: smtpd would wait forever (no answer after every handler finished)")
                    self.forced.add(blocked)

    def finish(self) -> Oracle:
        """Let every handler finish, then check the end state."""
        self.settle()
        self.oracle.finish(self.engine)
        self.check_log()
        return self.oracle

    def check_log(self) -> None:
        if self.log.internal_errors:
            self.oracle.fail(f"internal errors logged: {self.log.internal_errors[:3]}")
            self.log.lines.clear()

    def close(self) -> None:
        self.engine.eof()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
