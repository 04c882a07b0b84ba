"""The runtime: handshake, dispatch, answers, and the I/O loop.

``Engine`` is the whole protocol machine without I/O: bytes go in through
``feed()``, output collects in ``engine.out`` (``take_lines()`` for tests and
harnesses), async handlers run as tasks
on the engine's event loop and add their answers when done (calling
``wake()`` so the I/O side flushes).  ``run()`` wires an engine to smtpd's
socket (stdin and stdout are one AF_UNIX socket): read 64 KiB chunks, dispatch
every line, write everything a chunk produced in one write, before blocking
for input again.

Guarantees kept here, whatever a handler does:
* every filter request gets exactly one answer (a failure gets the filter's
  failure policy, logged);
* nothing smtpd treats as fatal is written (protocol.checks);
* input never ends the process; EOF on stdin (smtpd gone) does, with status
  0, once every request already read is answered (each handler under its
  deadline, the failure policy past it); EPIPE ends it at once.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import select
import signal
import sys
import threading
from itertools import chain
from operator import itemgetter, length_hint
from dataclasses import dataclass, field
from typing import Any, Callable

from . import protocol as p
from .filter import LEGACY_LINE_CUT, LINE_TOO_LONG, Filter, Handler
from .log import Logger, describe_line
from .message import Headers, Message, stuff, unstuff
from .responses import DECISION_TYPES, Decision, Proceed, Reject, failure_decision, is_decision, refusal
from .session import Session, SessionTable, apply_report

#: What one read takes at most.  (256 KiB was tried: no faster on small
#: messages, and 18 % slower on 100 KB ones, each read's buffer being
#: mapped and unmapped by the allocator: 6x the system time.)
READ_SIZE = 65536
#: The hot loop finds a stream by the ``SID|`` that starts a data-line
#: request's rest; smtpd's session ids are 16 hex digits.
_FAST_KEY = 17
#: Shortest run of one pass-through stream's lines answered as a block: below
#: that, the block's fixed costs outweigh the per-line loop's.
_RUN_MIN = 16
#: A new message still going on at the end of a read, at most this many lines
#: (and READ_SIZE bytes) long, is held back for the next read
#: (``_message_at_once``).
_HOLD_BACK_MAX = 256
#: Held messages (header blocks, whole messages, watched bodies) are taken
#: in runs by ``_held_block``; False sends their lines down the general path
#: one by one (the reference the differential tests compare against).
_HELD_BLOCKS = True
#: Every digit read as "0": two data-line heads of one stream differ only in
#: their digits (the timestamp), so they look alike through this table.
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0000000000")

#: A stream the hot loop knows: (b"SID|TOK|", b"SID|TOK|.", longest rest,
#: session (for the line handler) or None for
#: pass-through, stream).
_FastEntry = tuple[bytes, bytes, int, "Session | None", "_Stream"]


def _heads_match(run: list[bytes], model: bytes, marker: bytes) -> bool:
    """Whether every line of ``run`` starts like ``model``, a data-line head
    ``filter|VER|TS|smtp-in|data-line|SID|TOK|``, but for the value of its
    digits, with exactly the SID|TOK| that ends ``marker``
    (b"|data-line|SID|TOK|").

    Then ``line.split(b"|", 5)`` gives each line the head "filter", the phase
    "data-line" and a rest starting with SID|TOK|, as it gives ``model``: the
    facts the per-line loop checks.  Proven in C over the joined heads: with
    every digit read as 0 they are ``model`` k times (a head is a slice, never
    longer than ``model``, so each is exactly as long, with "|" and every
    other non-digit where ``model`` has it); and "|data-line|", which can then
    only sit at its place in each head, is followed by the right SID|TOK| in
    each.
    """
    k = len(run)
    width = len(model)
    heads = b"".join(map(itemgetter(slice(0, width)), run))
    return heads.translate(_DIGITS_AS_ZERO) == model.translate(_DIGITS_AS_ZERO) * k and heads.count(marker) == k


def _run_length(lines: list[bytes], at: int, marker: bytes, where: int) -> int:
    """How many lines from ``lines[at]`` on probably continue its stream
    (``marker``, b"|data-line|SID|TOK|", at ``where`` in each): up to the
    last line, or a boundary found by bisection (between the last of the
    lines 32, 64, 128, ... on that still matches and the next: most
    messages are short and a read holds many).  A guess when streams
    alternate; the caller's proof (``_heads_match``) decides."""
    end = len(lines) - 1
    if lines[end].startswith(marker, where):
        return end + 1 - at
    lo, step = at, 32
    while at + step < end and lines[at + step].startswith(marker, where):
        lo, step = at + step, step * 2
    hi = min(at + step, end)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if lines[mid].startswith(marker, where):
            lo = mid
        else:
            hi = mid
    return hi - at


#: The most bytes of SID|TOK and decision a filter-result line may carry.
_RESULT_ROOM = p.MAX_OUTPUT_LINE - len(b"filter-result||")

# Data stream modes
_PASS = 0  # echo lines unchanged (the fast path)
_LINES = 1  # call the data-line handler per line
_HEADERS = 2  # buffering the header block for on_headers
_MESSAGE = 3  # buffering the whole message for on_message
_WAIT = 4  # an async header/message handler is running: hold input
_WATCH = 5  # holding the body (raw) while a MessageWatcher sees it

#: A watcher is handed the held body once this many new lines arrived (and
#: at the end): one join and one replace per batch, not a call per line.
_WATCH_BATCH = 256


def _cut_at_final_dot(run: list[bytes], lens: list[int], width: int) -> bool:
    """Cut ``run`` (and its ``lens``) in front of the message's final ``.``,
    if it holds one: a one-byte payload (``width`` is the head's length)
    that is ``.``; other one-byte lines stay.  True if it was cut."""
    j = 0
    while True:
        try:
            j = lens.index(width + 1, j)
        except ValueError:
            return False
        if run[j].endswith(b"|."):
            del run[j:], lens[j:]
            return True
        j += 1


def _header_block(payloads: list[bytes]) -> tuple[list[bytes], int]:
    """The header block at the start of a message's raw (stuffed) lines,
    unstuffed, and how many lines it took: up to the first empty line, or a
    line that is neither a field nor a continuation (``_header_line``'s
    rule, for a block taken whole)."""
    try:
        n = payloads.index(b"")
    except ValueError:
        n = len(payloads)
    if n:
        # Most blocks end at an empty line, and their lines are fields or
        # continuations, none stuffed: seen in C over the joined block, a
        # continuation's leading white space read as a colon, then every
        # byte but colons and newlines dropped (no line may be left bare).
        block = payloads[:n]
        joined = b"\n".join(block)
        if joined[:1] != b"." and b"\n." not in joined:
            marks = (b":" + joined).replace(b"\n ", b"\n:").replace(b"\n\t", b"\n:")
            marks = marks.translate(None, _ALL_BUT_COLON_AND_NEWLINE)
            if b"\n\n" not in marks and marks[-1:] != b"\n":
                return block, n
    return _header_block_by_line(payloads)


def _header_block_by_line(payloads: list[bytes]) -> tuple[list[bytes], int]:
    """``_header_block``, a line at a time (the rule as ``_header_line``
    applies it)."""
    block: list[bytes] = []
    for payload in payloads:
        text = payload[1:] if payload[:1] == b"." else payload
        if text == b"" or (block and text[:1] not in (b" ", b"\t") and b":" not in text):
            break
        block.append(text)
    return block, len(block)


def _unbroken(lines: list[bytes]) -> list[bytes]:
    """A handler's edited lines, none holding a line break: one with LF (or
    CRLF) in it becomes several, as a data-line handler's line does
    (``_emit_content``).  Written whole, the break would start a protocol
    line of the handler's making: a forged answer, or one smtpd dies of."""
    if b"\n".join(lines).count(b"\n") == max(len(lines) - 1, 0):
        return lines
    out: list[bytes] = []
    for line in lines:
        out += line.replace(b"\r\n", b"\n").split(b"\n") if b"\n" in line else [line]
    return out


def _edited_block(headers: Headers, prefix: bytes, room: int) -> bytes | None:
    """An edited header block as answer lines under ``prefix``, joined (b""
    for an empty block); None when it needs the general path: a line that
    is not bytes (``_edited_lines`` logs it) or one over ``room``."""
    sep = b"\n" + prefix
    try:
        edited = headers.lines()
        written = prefix + sep.join(edited)
    except Exception:  # noqa: BLE001
        return None
    if not edited:
        return b""
    if written.count(b"\n") != len(edited) - 1:  # a line break inside a line
        edited = _unbroken(edited)
        written = prefix + sep.join(edited)
    if b"|." in written:  # maybe a line to stuff again (or just a "|." in a line)
        edited = [b"." + text if text[:1] == b"." else text for text in edited]
        written = prefix + sep.join(edited)
    # (A block shorter than smtpd's line limit holds no line over it.)
    if len(written) <= room or max(map(len, edited)) <= room:
        return written
    return None


_BAR = ord("|")
_ALL_BUT_COLON_AND_NEWLINE = bytes(range(256)).translate(None, b":\n")


@dataclass(slots=True, eq=False)
class _Stream:
    """One session's data-line stream, from its first line to the final ``.``."""

    sid: bytes
    token: bytes
    rules: p.Rules
    prefix: bytes  # b"filter-dataline|SID|TOK|"
    room: int  # longest payload that can be echoed
    legacy_room: int  # longest payload smtpd < 7.4 keeps whole
    mode: int
    session: Session
    # For the hot path (SID-first versions): a request's ``TOK|payload`` rest
    # is echoed as ``fast_prefix + rest``, no re-splitting, no record.
    fast_prefix: bytes | None
    token_bar: bytes  # b"TOK|"
    dot_rest: bytes  # b"TOK|." : the end of the message
    rest_room: int  # longest ``TOK|payload`` that fits the output limits
    after_headers: int = _PASS  # mode once the header block is done
    buffer: list[bytes] = field(default_factory=list)  # unstuffed lines
    held: list[bytes] = field(default_factory=list)  # raw payloads during _WAIT
    too_long: bool = False
    legacy_cut: bool = False
    failed: bool = False
    verdict: Decision | None = None
    ended: bool = False
    size: int = 0  # bytes buffered so far (stuffed lines + CRLF), for the cap
    # on_message_stream: the watcher, the headers it edits, the original
    # header lines (what goes out if it fails), the raw body lines held and
    # how many of them the watcher has seen.
    watcher: Any = None
    headers: Headers | None = None
    original: list[bytes] = field(default_factory=list)
    kept: list[bytes] = field(default_factory=list)
    fed: int = 0


class Engine:
    """The protocol machine for one filter, driven by ``feed()``."""

    def __init__(
        self,
        filt: Filter,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.filter = filt
        self.log = filt.log
        self.loop = loop
        self.wake = wake or (lambda: None)
        self.config = p.Config()
        self.sessions = SessionTable()
        # What is to be written, without newlines: one line per element, or a
        # block of lines joined by b"\n" (a run answered by ``_run``).
        self.out: list[bytes] = []
        self.registered = False
        self._carry = b""
        # The lines of a new message the last read ended in, taken with the
        # rest of it from the next read (or at EOF); see _message_at_once.
        self._held_back: list[bytes] = []
        self._holding = True
        self._streams: dict[bytes, _Stream] = {}
        # b"SID|" -> (b"SID|TOK|", b"SID|TOK|.", longest rest, session or
        # None for pass-through, stream) for the streams whose lines the hot
        # loop in feed() handles; kept in step by _set_mode.
        self._fast: dict[bytes, _FastEntry] = {}
        # b"SID|" -> (b"SID|TOK|", b"SID|TOK|.", longest rest, stream) for
        # streams whose message the SDK holds (header block, whole message,
        # watched body): the hot loop hands their lines to _held_block, in
        # runs, without the general path's split and checks.
        self._held_lane: dict[bytes, tuple[bytes, bytes, int, _Stream]] = {}
        self._verdicts: dict[str, Decision] = {}  # sid -> decision for commit
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {}
        self._background: set[asyncio.Task[Any]] = set()  # on_start tasks, alive until EOF
        # Requests whose answer an async task owes: the task -> (request,
        # session).  Popped when the task answers; a task that ends without
        # answering (cancelled before it ran, an internal error) gets the
        # failure policy's answer from its done callback, so every request
        # read gets exactly one answer.
        self._owed: dict[asyncio.Task[Any], tuple[p.Request, Session]] = {}
        # decision (None: proceed) -> its wire, once an answer with it
        # passed is_fatal_output (see _answer)
        self._safe_wires: dict[Decision | None, bytes] = {}
        self._phase_handlers = filt.phase_handlers
        self._report_handlers = filt.report_handlers
        self._quiet_events = {b"link-disconnect", b"tx-reset"} - {e.encode() for _, e in filt.report_handlers}
        reports, phases = filt.registrations()
        self._reports, self._phases = reports, phases
        #: registered phases without a handler: answered proceed at once
        self._unhandled = {ph.encode() for ph in phases if ph not in filt.phase_handlers and ph != "data-line"}
        self._data_mode = (
            _MESSAGE
            if filt.message_handler
            else _HEADERS
            if filt.headers_handler or filt.stream_handler
            else _LINES
            if filt.data_line_handler
            else _PASS
        )
        self._body_mode = _LINES if filt.data_line_handler else _PASS
        # A filter that at most edits the header block (a plain on_headers)
        # has a message that arrives whole in one chunk (most mail) taken by
        # _message_at_once, without the per-stream bookkeeping.
        headers = filt.headers_handler
        self._at_once = (
            self._body_mode == _PASS
            and filt.message_handler is None
            and filt.stream_handler is None
            and (headers is None or not headers.is_async)
        )
        cap = filt.max_message_size
        self._max_size = cap if cap is not None and cap > 0 else float("inf")
        self._capped = self._max_size < float("inf")

    # -- input -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """A chunk of input, split into lines (the last partial one is kept).

        Data lines of an open stream in pass-through or line-handler mode are
        handled without a method call or a record per line (``_scan``), and a
        long run of one pass-through stream's lines is answered as one block
        (``_run``): smtpd sends every line of every message, so this caps the
        server.  A new message that is all in this chunk is taken at once
        (``_message_at_once``), and the lines of one the chunk ends in wait
        for the next (``_held_back``).  Anything unusual falls through to
        ``handle_line``.
        """
        lines = data.split(b"\n")
        if self._carry:  # the line cut by the previous read (not a copy of the chunk)
            lines[0] = self._carry + lines[0]
        self._carry = lines.pop()
        if self._held_back:
            lines[:0] = self._held_back
            self._held_back = []
        end = len(lines)
        at, fast, model = self._scan(lines, 0, None)
        while at < end:
            assert fast is not None
            at, fast, model = self._scan(lines, self._run(lines, at, fast, model), fast)

    def _scan(
        self, lines: list[bytes], at: int, fast: _FastEntry | None
    ) -> tuple[int, _FastEntry | None, bytes]:
        """Answer ``lines[at:]`` one by one, continuing the stream ``fast``
        (a whole new message at once, a commit or a closing report without
        a second split).

        Stops early when a pass-through stream's second line in a row is
        followed by what looks like a run of its lines that ``_run`` may
        answer as a block: returns where that run starts, the stream, and the
        head (``filter|...|SID|TOK|``) of the line before it, parsed the slow
        way.  Otherwise returns ``len(lines)``.
        """
        handle = self.handle_line
        fast_get = self._fast.get
        lane_get = self._held_lane.get
        held_block = self._held_block
        held_blocks = _HELD_BLOCKS
        at_once = self._message_at_once if self._at_once else None
        streams = self._streams
        quiet, quiet_report = self._quiet_events, self._quiet_report
        unhandled, proceed = self._unhandled, self._proceed
        out_append = self.out.append
        line_handler = self.filter.data_line_handler
        line_fn = line_handler.fn if line_handler is not None else None
        # The stream of the previous data line: consecutive lines mostly
        # belong to one message, so the dict lookup is skipped for them.
        # Forgotten after anything that may change stream state; b"\n" can
        # never start a line's rest, so it matches nothing.
        if fast is None:
            ids, dot_rest, rest_room, session, stream = b"\n", b"", 0, None, None
        else:
            ids, dot_rest, rest_room, session, stream = fast
        # A list iterator knows where it is (length_hint: lines left), so no
        # index is counted per line; __setstate__ starts it at ``at``.
        it = iter(lines)
        it.__setstate__(at)  # type: ignore[attr-defined]
        end = len(lines)
        last = end - _RUN_MIN
        fresh = False  # the line before was the first of a pass-through run
        for line in it:
            # filter|VER|TS|smtp-in|data-line|SID|TOK|payload: the answer is
            # b"filter-dataline|" + everything after the 5th "|" (SID-first
            # versions), so one bounded split is all the parsing needed.
            try:
                head, ver, _, sub, phase, rest = line.split(b"|", 5)
            except ValueError:  # fewer fields: config lines, garbage
                ids = b"\n"
                handle(line)
                continue
            if phase == b"data-line" and head == b"filter":
                if not rest.startswith(ids):
                    key = rest[:_FAST_KEY]
                    fast = fast_get(key)
                    if fast is None or not rest.startswith(fast[0]):
                        ids = b"\n"
                        lane = lane_get(key)
                        if (
                            lane is not None
                            and held_blocks
                            and rest.startswith(lane[0])
                            and len(rest) <= lane[2]
                            and rest != lane[1]
                        ):
                            at = end - length_hint(it)  # the line after this one
                            after = held_block(lines, at - 1, len(line) - len(rest), lane)
                            if after > at:
                                it.__setstate__(after)  # type: ignore[attr-defined]
                        elif at_once and held_blocks and rest[:16] not in streams:
                            at = end - length_hint(it) - 1  # this line
                            after = at_once(lines, at, len(line) - len(rest))
                            if after > at:
                                it.__setstate__(after)  # type: ignore[attr-defined]
                            else:
                                handle(line)
                        else:
                            handle(line)
                        continue
                    ids, dot_rest, rest_room, session, stream = fast
                    if session is None and len(rest) <= rest_room and rest != dot_rest:
                        out_append(b"filter-dataline|" + rest)
                        fresh = True
                        continue
                if len(rest) <= rest_room and rest != dot_rest:
                    if session is None:  # pass-through
                        out_append(b"filter-dataline|" + rest)
                        if fresh:
                            # The stream's second line in a row: a block may
                            # follow if the next line and the one _RUN_MIN on
                            # have this SID|TOK| in the same place too.  Looked
                            # at once per run, so sessions interleaved line by
                            # line cost nothing.
                            fresh = False
                            at = end - length_hint(it)  # the next line
                            cut = len(line) - len(rest)
                            if (
                                at <= last
                                and lines[at].startswith(ids, cut)
                                and lines[at + _RUN_MIN - 1].startswith(ids, cut)
                            ):
                                return at, fast, line[: cut + len(ids)]
                        continue
                    if line_fn is not None:
                        payload = rest[len(ids) :]
                        try:
                            result = line_fn(session, payload[1:] if payload[:1] == b"." else payload)
                        except Exception as exc:  # noqa: BLE001
                            assert stream is not None
                            self._data_failure(stream, f"data-line handler raised {exc!r}")
                            result = None
                            ids = b"\n"
                        if result is None:
                            out_append(b"filter-dataline|" + rest)
                        else:
                            assert stream is not None
                            self._line_result(stream, payload, result)
                            ids = b"\n"
                        continue
            elif head == b"report":
                # The commit and the two reports that close every message
                # and session, answered here: no second split, no record.
                if phase in quiet and quiet_report(ver, sub, phase, rest):
                    ids = b"\n"
                    continue
            elif phase in unhandled and head == b"filter":
                bars = rest.split(b"|", 2)
                if len(bars) == 3 and proceed(ver, bars[0], bars[1]):
                    continue
            ids = b"\n"
            handle(line)
        return len(lines), None, b""

    def _held_block(self, lines: list[bytes], at: int, cut: int, lane: tuple[bytes, bytes, int, _Stream]) -> int:
        """Take ``lines[at]``, a line of a message the SDK holds (a stream in
        the held lane: its header block for on_headers / on_message_stream,
        the whole message for on_message, a watched body; the line's head
        ``filter|...|data-line|`` is ``cut`` bytes long), and the lines of
        that stream right after it, as a block; returns the index of the
        next line to look at.

        The run is found and proven like ``_run``'s (``_heads_match``), so
        each line costs a slice, not a split, two lookups and a call.  It
        stops before a line too long to echo (the general path handles
        those) and takes the final ``.`` only as the general path would
        (``_end_stream``).  A header block ends as ``_header_line`` says;
        the handler runs there, and when it leaves the body to pass through
        (a plain on_headers), the rest of the run is answered as one block
        too.  Held lines are counted against ``max_message_size`` as a
        block; a run that would pass the cap goes line by line
        (``_buffer``), so the cut falls where it always did."""
        ids, _, _, stream = lane
        width = cut + len(ids)
        marker = b"|data-line|" + ids
        where = width - len(marker)
        k = _run_length(lines, at, marker, where)
        run = lines[at : at + k] if k > 1 else [lines[at]]
        if len(run) > 1 and not _heads_match(run, lines[at][:width], marker):
            run = run[:1]
        lens = list(map(len, run))
        # The final "." ends the run.  A line too long to echo: the run
        # stops before it.
        dot = _cut_at_final_dot(run, lens, width)
        limit = width + stream.room
        if run and max(lens) > limit:
            n = next(i for i, size in enumerate(lens) if size > limit)
            del run[n:], lens[n:]
            dot = False
        taken = len(run)
        payloads = list(map(itemgetter(slice(width, None)), run))
        mode = stream.mode
        if mode == _HEADERS:
            return self._header_run(at, width, stream, payloads, lens, dot)
        size = stream.size + sum(lens) + (2 - width) * taken
        if size > self._max_size:  # the cap falls inside: line by line
            for i, payload in enumerate(payloads):
                if not self._buffer(stream, payload):
                    return at + i + 1
            return at + taken
        if mode == _MESSAGE:
            stream.size = size
            if payloads:
                joined = b"\n" + b"\n".join(payloads)
                stream.buffer += joined.replace(b"\n.", b"\n")[1:].split(b"\n")
        else:  # _WATCH: kept as they came; the watcher sees every _WATCH_BATCH
            kept = stream.kept
            i = 0
            while i < taken:
                room = _WATCH_BATCH - (len(kept) - stream.fed)
                stream.size += sum(lens[i : i + room]) + (2 - width) * len(lens[i : i + room])
                kept += payloads[i : i + room]
                i += room
                if len(kept) - stream.fed >= _WATCH_BATCH:
                    self._feed_watcher(stream)
                    if stream.mode != _WATCH:  # the watcher failed: the rest streams
                        return at + min(i, taken)
        if dot:
            self._end_stream(stream)
            return at + taken + 1
        return at + taken

    def _message_at_once(self, lines: list[bytes], at: int, cut: int) -> int:
        """Take a whole message from ``lines[at]``, the first data-line of a
        stream not open yet (its head ``filter|...|data-line|`` is ``cut``
        bytes long), to its final ``.`` when all of it is in ``lines``, the
        chunk just read: most mail is small and arrives whole.  Returns the
        index after the ``.``, or ``at`` when it took nothing (the message is
        not all here, a line is too long for the block, the size cap falls
        inside, the run proof fails): the general path takes it then.

        Only for filters whose handling of a message is at most a plain
        on_headers (``_at_once``).  The run is found and proven like
        ``_run``'s; the header block ends as ``_header_line`` says; the
        handler sees what the general path shows it.  When it returns None
        and its edited block fits, the message goes out as one block and no
        ``_Stream`` is built.  Anything else (a verdict, an exception, a
        line smtpd < 7.4 would cut) is answered by the general path's
        bookkeeping from there on, on a stream opened for it."""
        line = lines[at]
        parts = line.split(b"|", 7)
        if len(parts) != 8:
            return at
        sid, token = parts[5], parts[6]
        rules = p.rules_for(parts[1])
        if rules is None or not sid or not token or p.CR in sid or p.CR in token or sid in self._streams:
            return at
        ids = sid + b"|" + token + b"|"
        width = cut + len(ids)
        marker = b"|data-line|" + ids
        k = _run_length(lines, at, marker, width - len(marker))
        if k < 2:
            return at
        run = lines[at : at + k]
        last = run[-1]
        # The message is all here if its final "." ends the run.
        if len(last) != width + 1 or last[-1:] != b".":
            # It goes on in the next read.  When nothing follows it in this
            # one, its lines wait for the rest (a read mostly cuts a small
            # message smtpd is still writing): smtpd does not wait for
            # data-line answers, and EOF answers them (end_of_input).
            if (
                self._holding
                and at + k == len(lines)
                and k <= _HOLD_BACK_MAX
                and sum(map(len, run)) <= READ_SIZE
                and _heads_match(run, line[:width], marker)
            ):
                self._held_back = run
                self.sessions.get(p.decode_field(sid))  # created on any line naming it
                return at + k
            return at
        if not _heads_match(run, line[:width], marker):
            return at
        # Every payload, the final "." last (and no other: the general path
        # would end the message at the first).
        payloads = list(map(itemgetter(slice(width, None)), run))
        if payloads.count(b".") > 1:
            return at
        prefix = b"filter-dataline|" + (token + b"|" + sid + b"|" if rules.token_first else ids)  # response_ids
        legacy_room = (p.MAX_OUTPUT_LINE if rules.since >= (0, 7) else p.LEGACY_OUTPUT_LINE) - len(prefix)
        if max(map(len, payloads)) > legacy_room:
            return at
        if self._capped and sum(map(len, payloads)) + 2 * (k - 1) - 1 > self._max_size:
            return at
        sep = b"\n" + prefix
        handler = self.filter.headers_handler
        if handler is None:  # nothing to hold: the lines as they came
            self.out.append(prefix + sep.join(payloads))
            self.sessions.get(p.decode_field(sid))  # created on any line naming it
            return at + k
        block, n = _header_block(payloads)
        session = self.sessions.get(p.decode_field(sid))
        headers = Headers.parse(block)
        try:
            result = handler.fn(session, headers)
        except Exception as exc:  # noqa: BLE001
            result, raised = None, exc
        else:
            raised = None
            if result is None:
                written = _edited_block(headers, prefix, legacy_room)
                if written is not None:
                    rest = payloads[n:]  # the body, or what ended the block, and the "."
                    self.out.append(sep.join(chain((written,), rest)) if written else prefix + sep.join(rest))
                    return at + k
        stream = self._open_stream(parts)
        assert stream is not None
        stream.ended, stream.size = True, sum(map(len, payloads[: n + 1])) + 2 * (n + 1)
        self._handled(stream, session, headers, block, payloads[n:], result, raised)
        return at + k

    def _header_run(
        self, at: int, width: int, stream: _Stream, payloads: list[bytes], lens: list[int], dot: bool
    ) -> int:
        """``_held_block`` for a header block: buffer up to its end (the
        rule and the cap of ``_header_line`` / ``_buffer``, per line), run
        the handler there, then answer the rest of the run as one block when
        the body passes through."""
        buffer, cap = stream.buffer, self._max_size
        taken = len(payloads)
        size = stream.size
        for k, payload in enumerate(payloads):
            size += len(payload) + 2
            if size > cap:
                stream.size = size
                self._oversize(stream, payload)
                return at + k + 1
            text = payload[1:] if payload[:1] == b"." else payload
            if text == b"" or (buffer and text[:1] not in (b" ", b"\t") and b":" not in text):
                stream.size = size
                self._run_message_handler(stream, pending=[payload])
                k += 1
                break
            buffer.append(text)
        else:
            stream.size = size
            if dot:
                self._end_stream(stream)
                return at + taken + 1
            return at + taken
        if stream.mode != _PASS:
            return at + k  # a line handler, a watcher, an async handler: the loop goes on
        if k < taken:
            if max(lens[k:]) > width + stream.legacy_room:
                return at + k  # a line smtpd < 7.4 cuts: logged by the general path
            prefix = stream.prefix
            self.out.append(prefix + (b"\n" + prefix).join(payloads[k:]))
        if dot:
            self._end_stream(stream)
            return at + taken + 1
        return at + taken

    def _run(self, lines: list[bytes], at: int, fast: _FastEntry, model: bytes) -> int:
        """Answer the run of ``lines`` from ``at`` on that continue
        pass-through stream ``fast`` as one block; returns where it ended.

        Every line of such a run has the shape of ``model``, the head of the
        line before the run, which ``_scan`` parsed: ``filter|VER|TS|smtp-in|
        data-line|SID|TOK|`` with only the digits differing (smtpd writes fixed-width
        timestamps), so the answers are the lines' tails after
        ``filter|VER|TS|smtp-in|data-line|``, joined under b"filter-dataline|".
        That every line has that shape is proven for the whole run at once by
        ``_heads_match``; a run that fails the proof, or is short, goes back to
        ``_scan``, line by line.
        """
        ids, _, rest_room, _, _ = fast
        width = len(model)
        start = width - len(ids)  # where the answer's SID|TOK|payload begins
        marker = b"|data-line|" + ids
        where = width - len(marker)  # where the marker sits in each line of the run
        k = _run_length(lines, at, marker, where)
        if k < _RUN_MIN:
            return at
        run = lines[at : at + k]
        lens = list(map(len, run))
        # Stop in front of the final "." (the only line that ends the stream).
        if _cut_at_final_dot(run, lens, width):
            k = len(run)
        if k < _RUN_MIN or max(lens) > start + rest_room or not _heads_match(run, model, marker):
            return at
        # One join, with the first answer's prefix in its first element (not
        # added to the joined block: that would copy it again).
        tails = map(itemgetter(slice(start, None)), run)
        first = b"filter-dataline|" + next(tails)
        self.out.append(b"\nfilter-dataline|".join(chain((first,), tails)))
        return at + k

    def take_lines(self) -> list[bytes]:
        """The lines written since the last take, one element each."""
        out, self.out = self.out, []
        return b"\n".join(out).split(b"\n") if out else []

    def handle_line(self, line: bytes) -> None:
        """One input line, without its newline.  Never raises."""
        try:
            if line[:7] == b"filter|":
                parts = line.split(b"|", 7)
                if len(parts) == 8 and parts[4] == b"data-line":
                    self._data_line(parts)
                elif len(parts) == 8 and parts[4] in self._unhandled and self._proceed(parts[1], parts[5], parts[6]):
                    pass
                else:
                    self._request(parts)
            elif line[:7] == b"report|":
                self._report(line)
            elif line[:7] == b"config|":
                self._config(line)
            else:
                self.log(f"ignoring unknown line: {describe_line(line)}")
        except p.ProtocolError as exc:
            self.log(f"ignoring malformed line ({exc}): {describe_line(line)}")
        except Exception as exc:  # noqa: BLE001 - the process must not die of input
            self.log(f"internal error on line {describe_line(line)}: {exc!r}")

    def eof(self) -> None:
        """Stop everything still running, at once (nothing more can be
        written: EPIPE, SIGTERM, a harness torn down).  At EOF of input use
        ``end_of_input()`` and ``drain()``, which answer first."""
        for tasks in list(self._tasks.values()):
            for task in list(tasks):
                task.cancel()
        self._tasks.clear()

    async def shutdown(self) -> None:
        """Run the filter's on_shutdown handlers (after eof); errors are logged."""
        for fn in self.filter.shutdown_handlers:
            try:
                result = fn()
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, self.filter.deadline)
            except Exception as exc:  # noqa: BLE001 - exiting anyway
                self.log(f"shutdown handler {getattr(fn, '__name__', fn)!r} failed: {exc!r}")

    def end_of_input(self) -> None:
        """No more input will come: the lines held back for the rest of
        their message are answered now.  A line cut off by EOF (no newline)
        is not acted on: it may be a truncated request."""
        self._holding = False
        if self._held_back:
            carry, self._carry = self._carry, b""
            self.feed(b"")
            self._carry = carry
        if self._carry:
            self.log(f"ignoring an incomplete last line at EOF: {describe_line(self._carry)}")
            self._carry = b""

    async def drain(self, grace: float = 1.0) -> None:
        """EOF: let every running handler finish.  Each runs under the
        filter's deadline, so this takes at most ``deadline + grace``
        seconds; whatever still runs then is cancelled, and a request still
        owed an answer gets the failure policy's (logged)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.filter.deadline + grace
        while tasks := self._running():
            left = until - loop.time()
            if left <= 0:
                break
            await asyncio.wait(tasks, timeout=left)
        tasks = self._running()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task in list(self._owed):
            self._pay(task, "still running at EOF")

    def _running(self) -> list[asyncio.Task[Any]]:
        return [t for ts in self._tasks.values() for t in ts if not t.done()]

    def _pay(self, task: asyncio.Task[Any], why: str) -> None:
        """Answer the request ``task`` owes, by the failure policy."""
        owed = self._owed.pop(task, None)
        if owed is not None:
            req, session = owed
            self._answer(req, session, self._failure(req, session, why))
            self.wake()

    @property
    def busy(self) -> bool:
        return any(self._tasks.values())

    async def settle(self) -> None:
        """Wait until no handler task is running (for harnesses and tests)."""
        while True:
            tasks = [t for ts in self._tasks.values() for t in ts]
            if not tasks:
                return
            await asyncio.wait(tasks)

    # -- handshake ---------------------------------------------------------

    def _config(self, line: bytes) -> None:
        key, value = p.parse_config(line)
        if self.registered:
            self.log(f"config line after registration ignored: {describe_line(line)}")
            return
        self.config.apply(key, value)
        if self.config.ready:
            self._register()

    def _register(self) -> None:
        for fn in self.filter.config_handlers:
            try:
                fn(self.config)
            except Exception as exc:  # noqa: BLE001
                self.log(f"config handler failed: {exc!r}")
        wanted_out = {e for (sub, e) in self._reports if sub == "smtp-out"}
        if wanted_out and "smtp-out" not in self.config.subsystems:
            self.log("smtp-out reports not announced by smtpd: not registered")
        self.out.extend(p.registration_lines(self._reports, self._phases, self.config))
        self.registered = True
        for start in self.filter.start_handlers:
            self._start_background(start)

    def _start_background(self, fn: Callable[[], Any]) -> None:
        if self.loop is None:
            self.log(f"no event loop: background task {fn.__name__} not started")
            return

        async def guarded() -> None:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self.log(f"background task {fn.__name__} failed: {exc!r}")

        self._background.add(self.loop.create_task(guarded()))

    # -- reports -----------------------------------------------------------

    def _quiet_report(self, version: bytes, subsystem: bytes, event: bytes, rest: bytes) -> bool:
        """``link-disconnect`` or ``tx-reset`` (an event in ``_quiet_events``:
        every session brings them, no handler wants them, and the state
        needs none of their fields), ``rest`` its fields from the session
        id on: applied without a record.  False: the general path takes it."""
        if not p.rules_for(version):
            return False
        if event == b"link-disconnect":
            if _BAR in rest:
                return False
            self._forget(p.decode_field(rest))
            return True
        raw, bar, _ = rest.partition(b"|")
        if not bar or subsystem != b"smtp-in":
            return False
        sid = p.decode_field(raw)
        self.sessions.get(sid).tx = None
        self._verdicts.pop(sid, None)
        self._drop_stream(raw)
        return True

    def _report(self, line: bytes) -> None:
        parts = line.split(b"|", 5)
        if (
            len(parts) == 6
            and parts[4] in self._quiet_events
            and parts[0] == b"report"
            and self._quiet_report(parts[1], parts[3], parts[4], parts[5])
        ):
            return
        parts, subsystem, event, params = p.split_report(line)
        sid = p.decode_field(parts[5])
        session = self.sessions.get(sid, subsystem)
        if subsystem == "smtp-in":
            apply_report(session, params)
        handlers = self._report_handlers.get((subsystem, event))
        if handlers:  # the full record only when someone looks at it
            report = p.Report(
                p.decode_field(parts[1]), p.decode_field(parts[2]), subsystem, event, sid, params
            )
            for handler in handlers:
                self._call_report_handler(handler, session, report)
        if event == "link-disconnect":
            self._forget(sid)
        elif event == "tx-reset":
            self._verdicts.pop(sid, None)
            self._drop_stream(parts[5])

    def _call_report_handler(self, handler: Handler, session: Session, report: p.Report) -> None:
        if handler.is_async:
            self._spawn(session.id, self._guard_report(handler, session, report))
            return
        try:
            handler.fn(session, report)
        except Exception as exc:  # noqa: BLE001
            self.log(f"{report.event} handler failed: {exc!r}", session.id)

    async def _guard_report(self, handler: Handler, session: Session, report: p.Report) -> None:
        try:
            await asyncio.wait_for(handler.fn(session, report), self.filter.deadline)
        except asyncio.TimeoutError:
            self.log(f"{report.event} handler ran past {self.filter.deadline}s", session.id)
        except Exception as exc:  # noqa: BLE001
            self.log(f"{report.event} handler failed: {exc!r}", session.id)

    def _forget(self, sid: str) -> None:
        """link-disconnect: the session's state goes.  Its running handlers
        do not: each request read is answered (under the deadline) even if
        smtpd no longer waits for it (see ``_finish_chain``)."""
        self.sessions.drop(sid)
        self._verdicts.pop(sid, None)
        self._drop_stream(sid.encode())

    # -- requests ----------------------------------------------------------

    def _proceed(self, version: bytes, sid: bytes, token: bytes) -> bool:
        """A request of a phase registered without a handler (commit, for a
        message filter): ``proceed``, unless the message was refused; no
        record.  False: take the general path."""
        rules = p.rules_for(version)
        if rules is None or not sid or not token or p.CR in sid or p.CR in token:
            return False
        key = p.decode_field(sid)
        if key in self._verdicts:
            return False
        self.sessions.get(key)  # created on any line naming it
        self.out.append(b"filter-result|" + p.response_ids(rules, sid, token) + b"|proceed")
        return True

    def _request(self, parts: list[bytes]) -> None:
        """A filter request, split (``line.split(b"|", 7)``)."""
        req = p.request_fields(parts)
        session = self.sessions.get(req.session)
        try:
            self._dispatch(req, session)
        except Exception as exc:  # noqa: BLE001 - a request that names its ids gets its answer
            self._answer(req, session, self._failure(req, session, f"unusable request ({exc})"))

    def _dispatch(self, req: p.Request, session: Session) -> None:
        """Run the phase's handlers; raises only before anything was answered."""
        if req.phase == "connect":
            params = req.connect_params()
            session.remember_connect(params.rdns, params.src)
            args: tuple[Any, ...] = (params.rdns, params.src)
        elif req.phase in p.PARAMETERLESS_PHASES:
            args = ()
        else:
            args = (req.text,)
        handlers = list(self._phase_handlers.get(req.phase, ()))
        verdict = self._verdicts.pop(req.session, None) if req.phase == "commit" else None
        if verdict is not None and not isinstance(verdict, Proceed):
            self._answer(req, session, verdict)  # the message was already refused
            return
        self._run_chain(req, session, handlers, args)

    def _run_chain(
        self, req: p.Request, session: Session, handlers: list[Handler], args: tuple[Any, ...]
    ) -> None:
        """Ask the handlers in order; the first decision that is not proceed
        answers.  Plain handlers run inline.  At the first ``async def``
        handler, or a plain handler that returns an awaitable (its slow
        path), the rest of the chain continues as a task under the deadline,
        so a filter can answer its fast path (a cache hit) without a task."""
        for i, handler in enumerate(handlers):
            try:
                result = handler.fn(session, *args)
                # (a decision or None, the usual answer, is never awaitable)
                if result is not None and type(result) not in DECISION_TYPES and inspect.isawaitable(result):
                    task = self._spawn(
                        session.id,
                        self._finish_chain(req, session, result, handlers[i + 1 :], args),
                        also_close=result,
                    )
                    self._owed[task] = (req, session)
                    return
                decision = self._checked(req, session, result)
            except Exception as exc:  # noqa: BLE001
                self._answer(req, session, self._failure(req, session, f"handler raised {exc!r}"))
                return
            if decision is not None and not isinstance(decision, Proceed):
                self._answer(req, session, decision)
                return
        self._answer(req, session, None)

    async def _finish_chain(
        self,
        req: p.Request,
        session: Session,
        pending: Any,
        handlers: list[Handler],
        args: tuple[Any, ...],
    ) -> None:
        decision: Decision | None = None
        try:
            async with asyncio.timeout(self.filter.deadline):
                decision = self._checked(req, session, await pending)
                for handler in handlers:
                    if decision is not None and not isinstance(decision, Proceed):
                        break
                    result = handler.fn(session, *args)
                    if inspect.isawaitable(result):
                        result = await result
                    decision = self._checked(req, session, result)
        except asyncio.CancelledError:
            decision = self._failure(req, session, "handler cancelled")
        except TimeoutError:
            decision = self._failure(req, session, f"handler ran past {self.filter.deadline}s")
        except Exception as exc:  # noqa: BLE001
            decision = self._failure(req, session, f"handler raised {exc!r}")
        if self._owed.pop(asyncio.current_task(), None) is None:  # type: ignore[arg-type]
            return  # already answered by the failure policy (drain)
        if self.sessions.peek(req.session) is not session:
            # smtpd ignores an answer for a session it closed (lka_filter:
            # unknown session, no error), so writing it is harmless; a driver
            # that sent the session's later lines ahead of this answer
            # (a transcript, a benchmark) still gets one answer per request.
            kind = decision.kind if decision is not None else "proceed"
            self.log(f"{req.phase}: answering {kind} after the session disconnected (smtpd ignores it)", session.id)
        self._answer(req, session, decision)
        self.wake()

    def _checked(self, req: p.Request, session: Session, result: Any) -> Decision | None:
        """A handler's return value as a decision smtpd can take, or the failure
        policy's (logged) when it is not one."""
        if result is None:
            return None
        if not is_decision(result):
            return self._failure(req, session, f"handler returned {result!r}, not a decision")
        reason = refusal(result, req.phase, self.config)
        if reason:
            return self._failure(req, session, f"{result.kind} refused: {reason}")
        return result

    def _failure(self, req: p.Request, session: Session, why: str) -> Decision:
        decision = failure_decision(self.filter.on_error, req.phase)
        self.log(f"{req.phase}: {why}; answering {decision.kind} ({self.filter.on_error})", session.id)
        return decision

    def _answer(self, req: p.Request, session: Session, decision: Decision | None) -> None:
        ids = req.ids
        try:
            known = self._safe_wires.get(decision)
        except TypeError:  # a decision holding something unhashable: the full look
            known = None
        if (
            known is not None
            and len(ids) + len(known) <= _RESULT_ROOM
            and ids.count(b"|") == 1
            and p.CR not in ids
            and p.LF not in ids
        ):
            # A decision whose answer passed is_fatal_output (below) passes
            # it with any SID|TOK that is two fields without CR/LF and
            # leaves the line short enough: no need to look again.
            self.out.append(b"filter-result|" + ids + b"|" + known)
            return
        wire = decision.wire if decision is not None else b"proceed"
        line = b"filter-result|" + ids + b"|" + wire
        reason = p.is_fatal_output(line)
        if not reason and ids.count(b"|") == 1:
            if len(self._safe_wires) >= 1024:  # reply texts may vary: keep it bounded
                self._safe_wires.clear()
            try:
                self._safe_wires[decision] = wire
            except TypeError:
                pass
        if reason:  # cannot happen with checked decisions; never let it reach smtpd
            self.log(f"{req.phase}: not writing {describe_line(line)} ({reason})", session.id)
            line = b"filter-result|" + req.ids + b"|" + failure_decision(self.filter.on_error, req.phase).wire
            if p.is_fatal_output(line):  # the ids themselves are unusable: no answer at all
                return
        self.out.append(line)

    def _spawn(self, sid: str, coro: Any, also_close: Any = None) -> asyncio.Task[Any]:
        """Run ``coro`` as the session's task.  ``also_close``: a handler's
        coroutine ``coro`` will await; closed if the task ends before it ran
        (session gone), so it is not reported as never awaited."""
        if self.loop is None:
            coro.close()
            if inspect.iscoroutine(also_close):
                also_close.close()
            raise RuntimeError("async handlers need an event loop (Engine(loop=...))")
        task = self.loop.create_task(coro)
        tasks = self._tasks.setdefault(sid, set())
        tasks.add(task)

        def done(t: asyncio.Task[Any], sid: str = sid) -> None:
            live = self._tasks.get(sid)
            if live is not None:
                live.discard(t)
                if not live:
                    del self._tasks[sid]
            if inspect.iscoroutine(also_close):
                also_close.close()
            if not t.cancelled() and t.exception() is not None:
                self.log(f"internal error in handler task: {t.exception()!r}", sid)
            if t in self._owed:  # ended without answering (cancelled before it ran)
                self._pay(t, "handler cancelled")

        task.add_done_callback(done)
        return task

    # -- data lines --------------------------------------------------------

    def _data_line(self, parts: list[bytes]) -> None:
        sid, payload = parts[5], parts[7]
        stream = self._streams.get(sid)
        if stream is None or stream.ended:
            stream = self._open_stream(parts)
            if stream is None:
                return
        if payload == b".":
            self._end_stream(stream)
            return
        mode = stream.mode
        if mode == _PASS:
            if len(payload) > stream.legacy_room:
                self._emit(stream, payload)
            else:
                self.out.append(stream.prefix + payload)
        elif mode == _LINES:
            self._line_through_handler(stream, payload)
        elif mode == _WAIT:
            stream.held.append(payload)
        elif len(payload) > stream.room:
            self._too_long(stream, len(payload))  # never buffered, never handed over
        else:
            self._buffer(stream, payload)

    def _buffer(self, stream: _Stream, payload: bytes) -> bool:
        """A line (raw, stuffed) of a message the SDK holds: the header block
        (on_headers, on_message_stream), the whole message (on_message) or a
        watched body.  False once the stream is held differently (header
        block done, past the cap, watcher failed)."""
        mode = stream.mode
        if mode == _WATCH:
            return self._hold(stream, payload)
        stream.size += len(payload) + 2
        if stream.size > self._max_size:
            self._oversize(stream, payload)
            return False
        if mode == _HEADERS:
            self._header_line(stream, payload)
            return stream.mode == _HEADERS
        stream.buffer.append(unstuff(payload))
        return True

    def _open_stream(self, parts: list[bytes]) -> _Stream | None:
        rules = p.rules_for(parts[1])
        sid, token = parts[5], parts[6]
        if rules is None or not sid or not token or p.CR in sid or p.CR in token:
            raise p.ProtocolError("data-line with bad version or ids")
        prefix = b"filter-dataline|" + p.response_ids(rules, sid, token) + b"|"
        room = p.MAX_OUTPUT_LINE - len(prefix)
        legacy_room = min(room, p.LEGACY_OUTPUT_LINE - len(prefix)) if rules.since < (0, 7) else room
        stream = _Stream(
            sid=sid,
            token=token,
            rules=rules,
            prefix=prefix,
            room=room,
            legacy_room=legacy_room,
            mode=self._data_mode,
            session=self.sessions.get(p.decode_field(sid)),  # created on any line naming it
            fast_prefix=None if rules.token_first else b"filter-dataline|" + sid + b"|",
            token_bar=token + b"|",
            dot_rest=token + b"|.",
            rest_room=legacy_room + len(token) + 1,
            after_headers=self._body_mode,
        )
        self._streams[sid] = stream
        self._set_mode(stream, stream.mode)
        return stream

    def _set_mode(self, stream: _Stream, mode: int) -> None:
        stream.mode = mode
        key = stream.sid + b"|"
        # The hot loop takes pass-through and line-handler streams through
        # _fast; a message the SDK holds (header block, whole message,
        # watched body) has its own lane, taken in runs by _held_block.
        if stream.fast_prefix is not None and len(key) == _FAST_KEY and mode in (_PASS, _LINES):
            ids = key + stream.token_bar
            self._fast[key] = (
                ids,
                ids + b".",
                stream.rest_room + len(key),
                None if mode == _PASS else stream.session,
                stream,
            )
        else:
            self._fast.pop(key, None)
        if stream.fast_prefix is not None and len(key) == _FAST_KEY and mode in (_HEADERS, _MESSAGE, _WATCH):
            ids = key + stream.token_bar
            self._held_lane[key] = (ids, ids + b".", len(ids) + stream.room, stream)
        else:
            self._held_lane.pop(key, None)

    def _drop_stream(self, sid: bytes) -> None:
        self._streams.pop(sid, None)
        if self._fast or self._held_lane:  # (mostly empty between messages)
            key = sid + b"|"
            self._held_lane.pop(key, None)
            self._fast.pop(key, None)

    def _session(self, stream: _Stream) -> Session:
        return stream.session

    def _emit(self, stream: _Stream, line: bytes) -> None:
        """Write one stuffed line, unless smtpd could not take it."""
        if len(line) > stream.legacy_room:
            if len(line) > stream.room:
                self._too_long(stream, len(line))
                return
            self._legacy_cut(stream, len(line))
        self.out.append(stream.prefix + line)

    def _too_long(self, stream: _Stream, size: int) -> None:
        if not stream.too_long:
            stream.too_long = True
            self.log(
                f"dropping a {size}-byte message line (smtpd jams on output lines over "
                f"{p.MAX_OUTPUT_LINE} bytes); the message will be refused at commit",
                self._session(stream).id,
            )

    def _legacy_cut(self, stream: _Stream, size: int) -> None:
        # Fits smtpd >= 7.4, but this smtpd (protocol < 0.7) keeps 2,047 bytes.
        if not stream.legacy_cut:
            stream.legacy_cut = True
            action = "refusing the message" if self.filter.legacy_long_lines == "reject" else "passing it on"
            self.log(
                f"a {size}-byte message line will be cut at {p.LEGACY_OUTPUT_LINE} bytes by "
                f"smtpd < 7.4; {action}",
                self._session(stream).id,
            )

    def _line_through_handler(self, stream: _Stream, payload: bytes) -> None:
        handler = self.filter.data_line_handler
        assert handler is not None
        if stream.failed:
            self._emit(stream, payload)
            return
        try:
            result = handler.fn(stream.session, unstuff(payload))
        except Exception as exc:  # noqa: BLE001
            self._data_failure(stream, f"data-line handler raised {exc!r}")
            result = None
        self._line_result(stream, payload, result)

    def _line_result(self, stream: _Stream, payload: bytes, result: Any) -> None:
        """Emit what a data-line handler made of ``payload`` (stuffed input)."""
        if result is None:
            self._emit(stream, payload)
        elif isinstance(result, bytes):
            self._emit_content(stream, result)
        elif isinstance(result, (list, tuple)) and all(isinstance(x, bytes) for x in result):
            for line in result:
                self._emit_content(stream, line)
        else:
            self._data_failure(stream, f"data-line handler returned {type(result).__name__}")
            self._emit(stream, payload)

    def _emit_content(self, stream: _Stream, line: bytes) -> None:
        """An unstuffed line from a handler; lines with CR/LF are split."""
        if b"\n" in line or b"\r" in line:
            for piece in line.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
                self._emit(stream, stuff(piece))
        else:
            self._emit(stream, stuff(line))

    def _data_failure(self, stream: _Stream, why: str) -> None:
        stream.failed = True
        if stream.mode == _LINES:
            self._set_mode(stream, _PASS)  # the rest of the message passes unchanged
        session = self._session(stream)
        self.log(f"{why}; message passed on unchanged ({self.filter.on_error})", session.id)

    def _header_line(self, stream: _Stream, payload: bytes) -> None:
        line = unstuff(payload)
        if line == b"" or (
            stream.buffer and line[:1] not in (b" ", b"\t") and b":" not in line
        ):
            # End of the header block: hand it over, then the body streams.
            self._run_message_handler(stream, pending=[payload])
            return
        stream.buffer.append(line)

    def _end_stream(self, stream: _Stream) -> None:
        stream.ended = True
        if stream.mode in (_HEADERS, _MESSAGE):
            self._run_message_handler(stream, pending=[b"."])
        elif stream.mode == _WATCH:
            self._finish_watch(stream)
        elif stream.mode == _WAIT:
            stream.held.append(b".")
        else:
            self._close_stream(stream)

    def _close_stream(self, stream: _Stream) -> None:
        """The final ``.``, exactly once, and the verdict for commit."""
        self.out.append(stream.prefix + b".")
        sid = p.decode_field(stream.sid)
        verdict = stream.verdict
        if stream.too_long:
            verdict = Reject(*LINE_TOO_LONG)
        elif stream.legacy_cut and self.filter.legacy_long_lines == "reject":
            verdict = Reject(*LEGACY_LINE_CUT)
        elif stream.failed and self.filter.on_error == "fail-closed":
            verdict = failure_decision("fail-closed", "commit")
        if verdict is not None:
            self._verdicts[sid] = verdict
        if self._streams.get(stream.sid) is stream:
            self._drop_stream(stream.sid)

    # -- header / message handlers -------------------------------------------

    def _run_message_handler(self, stream: _Stream, pending: list[bytes]) -> None:
        """Call on_headers / on_message with what was buffered; ``pending``
        holds raw payloads that came after it (the line that ended the header
        block, or the final ``.``)."""
        whole = stream.mode == _MESSAGE
        handler = self.filter.message_handler if whole else self.filter.headers_handler
        session = self._session(stream)
        original, stream.buffer = stream.buffer, []
        if stream.too_long:
            # The message is refused at commit anyway; don't spend work on it.
            self._release(stream, None, pending, original, original)
            return
        if handler is None:
            self._start_watch(stream, session, pending, original)
            return
        target: Message | Headers = Message.parse(original) if whole else Headers.parse(original)
        if handler.is_async:
            self._set_mode(stream, _WAIT)
            stream.held = pending
            self._spawn(session.id, self._async_message(stream, session, handler, target, original))
            return
        try:
            result = handler.fn(session, target)
        except Exception as exc:  # noqa: BLE001
            self._handled(stream, session, target, original, pending, None, exc)
            return
        self._handled(stream, session, target, original, pending, result, None)

    def _handled(
        self,
        stream: _Stream,
        session: Session,
        target: Message | Headers,
        original: list[bytes],
        pending: list[bytes],
        result: Any,
        raised: Exception | None,
    ) -> None:
        """A sync header / message handler returned ``result`` (or raised):
        its verdict, then the (edited) lines and ``pending`` go out."""
        if raised is not None:
            self._message_failed(stream, session, f"raised {raised!r}")
            self._release(stream, None, pending, original, original)
            return
        verdict = self._message_result(stream, session, result)
        self._release(stream, verdict, pending, original if stream.failed else target, original)

    async def _async_message(
        self,
        stream: _Stream,
        session: Session,
        handler: Handler,
        target: Message | Headers,
        original: list[bytes],
    ) -> None:
        result: Any = None
        try:
            result = await asyncio.wait_for(handler.fn(session, target), self.filter.deadline)
        except asyncio.CancelledError:
            if self.sessions.peek(session.id) is None:
                raise
            self._message_failed(stream, session, "was cancelled")
        except asyncio.TimeoutError:
            self._message_failed(stream, session, f"ran past {self.filter.deadline}s")
        except Exception as exc:  # noqa: BLE001
            self._message_failed(stream, session, f"raised {exc!r}")
        verdict = self._message_result(stream, session, result)
        held, stream.held = stream.held, []
        self._release(stream, verdict, held, original if stream.failed else target, original)
        self.wake()

    def _message_failed(self, stream: _Stream, session: Session, why: str) -> None:
        stream.failed = True
        kind = "headers" if self.filter.headers_handler else "message"
        self.log(f"{kind} handler {why}; message passed on unchanged ({self.filter.on_error})", session.id)

    def _message_result(self, stream: _Stream, session: Session, result: Any) -> Decision | None:
        if result is None or stream.failed:
            return None
        if not is_decision(result):
            self._message_failed(stream, session, f"returned {result!r}, not a decision")
            return None
        reason = refusal(result, "commit", self.config)
        if reason:
            self._message_failed(stream, session, f"returned {result.kind}, refused: {reason}")
            return None
        return result

    # -- on_message_stream and the size cap -----------------------------------

    def _start_watch(self, stream: _Stream, session: Session, pending: list[bytes], original: list[bytes]) -> None:
        """The header block is complete: ask the stream handler for a watcher.
        ``pending`` is the raw line that ended the block (the empty line, the
        first body line, or the final ``.``)."""
        handler = self.filter.stream_handler
        assert handler is not None
        headers = Headers.parse(original)
        try:
            watcher = handler.fn(session, headers)
        except Exception as exc:  # noqa: BLE001
            watcher, why = None, f"raised {exc!r}"
        else:
            why = "" if watcher is None or _is_watcher(watcher) else f"returned {watcher!r}, not a watcher"
        if why:
            self._message_failed(stream, session, why)
            self._release(stream, None, pending, original, original)
            return
        if watcher is None:  # not interested: nothing is held
            self._release(stream, None, pending, headers, original)
            return
        stream.watcher, stream.headers, stream.original = watcher, headers, original
        self._set_mode(stream, _WATCH)
        if stream.ended:  # no body at all (pending is the final ".")
            self._finish_watch(stream)
            return
        stream.kept = pending
        stream.fed = 1 if pending[0] == b"" else 0  # the empty line is no body

    def _hold(self, stream: _Stream, payload: bytes) -> bool:
        """A body line of a watched message: kept for output as it came,
        shown to the watcher a batch at a time."""
        stream.size += len(payload) + 2
        if stream.size > self._max_size:
            self._oversize(stream, payload)
            return False
        kept = stream.kept
        kept.append(payload)
        if len(kept) - stream.fed >= _WATCH_BATCH:
            self._feed_watcher(stream)
            return stream.mode == _WATCH
        return True

    def _feed_watcher(self, stream: _Stream) -> None:
        """Hand the watcher the body lines it has not seen, as one chunk:
        CRLF-joined, and unstuffed at once (every line that starts with "."
        on the wire had one more)."""
        kept, start = stream.kept, stream.fed
        if start >= len(kept):
            return
        stream.fed = len(kept)
        joined = b"\r\n" + b"\r\n".join(kept[start:] if start else kept) + b"\r\n"
        chunk = joined.replace(b"\r\n.", b"\r\n")[2:]
        try:
            stream.watcher.body(chunk)
        except Exception as exc:  # noqa: BLE001
            self._message_failed(stream, self._session(stream), f"watcher raised {exc!r}")
            self._unwatch(stream)

    def _finish_watch(self, stream: _Stream) -> None:
        """The final ``.`` of a watched message: the watcher's last chunk and
        end(), then the (edited) headers, the body as it came, the ``.``."""
        self._feed_watcher(stream)
        if stream.mode != _WATCH:  # the watcher failed on that last chunk
            self._close_stream(stream)
            return
        session = self._session(stream)
        watcher, headers = stream.watcher, stream.headers
        assert headers is not None
        stream.watcher = stream.headers = None
        try:
            result = watcher.end(headers)
        except Exception as exc:  # noqa: BLE001
            self._message_failed(stream, session, f"watcher raised {exc!r}")
            result = None
        if inspect.isawaitable(result):
            # end() finishes elsewhere (a signature made on a worker thread):
            # the message stays held, other sessions go on, and the answer
            # comes under the deadline.  smtpd sends commit only after the
            # final "." it gets from us, so the verdict is set before commit.
            self._set_mode(stream, _WAIT)
            self._spawn(session.id, self._await_watch_end(stream, session, headers, result), also_close=result)
            return
        self._release_watched(stream, session, headers, result)

    async def _await_watch_end(self, stream: _Stream, session: Session, headers: Headers, pending: Any) -> None:
        result: Any = None
        try:
            async with asyncio.timeout(self.filter.deadline):
                result = await pending
        except asyncio.CancelledError:
            if self.sessions.peek(session.id) is None:
                raise
            self._message_failed(stream, session, "watcher was cancelled")
        except TimeoutError:
            self._message_failed(stream, session, f"watcher ran past {self.filter.deadline}s")
        except Exception as exc:  # noqa: BLE001
            self._message_failed(stream, session, f"watcher raised {exc!r}")
        self._release_watched(stream, session, headers, result)
        self.wake()

    def _release_watched(self, stream: _Stream, session: Session, headers: Headers, result: Any) -> None:
        """The watched message goes out: the edited headers (the original
        ones if anything failed), the body as it came, the ``.``."""
        verdict = self._message_result(stream, session, result)
        if verdict is not None:
            stream.verdict = verdict
        lines = None if stream.failed else self._edited_lines(stream, headers)
        if lines is None:
            lines, stream.verdict = stream.original, None
        for line in lines:
            self._emit(stream, stuff(line))
        self._emit_raw(stream, stream.kept)
        stream.kept = stream.original = []
        self._close_stream(stream)

    def _unwatch(self, stream: _Stream) -> None:
        """Stop holding: the original header lines and the held body go out
        as they came, the rest of the message streams."""
        stream.watcher = stream.headers = None
        for line in stream.original:
            self._emit(stream, stuff(line))
        self._emit_raw(stream, stream.kept)
        stream.kept = stream.original = []
        self._set_mode(stream, _PASS)

    def _emit_raw(self, stream: _Stream, payloads: list[bytes]) -> None:
        """Held raw (stuffed) payloads as they came: one joined block when
        every line fits, else line by line through the length checks."""
        if not payloads:
            return
        if max(map(len, payloads)) <= stream.legacy_room:
            prefix = stream.prefix
            self.out.append(prefix + (b"\n" + prefix).join(payloads))
        else:
            for payload in payloads:
                self._emit(stream, payload)

    def _oversize(self, stream: _Stream, payload: bytes) -> None:
        """The message passed ``max_message_size``: flush what was held
        unchanged, let the rest stream, tell the filter."""
        session = self._session(stream)
        if stream.mode == _WATCH:
            self._unwatch(stream)
        else:
            held, stream.buffer = stream.buffer, []
            for line in held:
                self._emit(stream, stuff(line))
            # The rest streams: a data-line handler (with on_headers) sees it.
            self._set_mode(stream, stream.after_headers if stream.mode == _HEADERS else _PASS)
        if stream.mode == _LINES:
            self._line_through_handler(stream, payload)
        else:
            self._emit(stream, payload)
        handler = self.filter.oversize_handler
        if handler is None:
            self.log(
                f"message over {self.filter.max_message_size} bytes: passed on unchanged, "
                "not handed to the message handler",
                session.id,
            )
            return
        try:
            result = handler.fn(session, stream.size)
        except Exception as exc:  # noqa: BLE001
            self.log(f"oversize handler raised {exc!r}", session.id)
            return
        verdict = self._message_result(stream, session, result)
        if verdict is not None:
            stream.verdict = verdict

    def _edited_lines(self, stream: _Stream, content: Message | Headers | list[bytes]) -> list[bytes] | None:
        """The lines a handler left to write, none holding a line break; None
        (the handler failed, logged) when they are not lines of bytes (a
        ``Header`` built by hand with text in it): they must not take the
        stream down."""
        try:
            return _unbroken(content if isinstance(content, list) else content.lines())
        except Exception as exc:  # noqa: BLE001
            self._message_failed(stream, self._session(stream), f"left lines that cannot be written ({exc!r})")
            return None

    def _release(
        self,
        stream: _Stream,
        verdict: Decision | None,
        pending: list[bytes],
        content: Message | Headers | list[bytes],
        unchanged: list[bytes],
    ) -> None:
        """Emit the (edited) buffered lines, then replay what came meanwhile.
        ``unchanged``: the lines as they came, written instead when a
        handler left ``content`` unwritable."""
        lines = self._edited_lines(stream, content)
        if lines is None:
            lines, verdict = unchanged, None
        if verdict is not None:
            stream.verdict = verdict
        stuffed = [b"." + line if line[:1] == b"." else line for line in lines]
        if stuffed and max(map(len, stuffed)) <= stream.legacy_room:
            # Every line fits: no per-line checks, one block.
            prefix = stream.prefix
            self.out.append(prefix + (b"\n" + prefix).join(stuffed))
        else:
            for line in stuffed:
                self._emit(stream, line)
        self._set_mode(stream, stream.after_headers)
        for payload in pending:
            if payload == b"." and stream.ended:
                self._close_stream(stream)
                return
            if stream.mode == _LINES:
                self._line_through_handler(stream, payload)
            else:
                self._emit(stream, payload)


def _is_watcher(obj: Any) -> bool:
    return callable(getattr(obj, "body", None)) and callable(getattr(obj, "end", None))


# --------------------------------------------------------------------------
# I/O


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


class _Driver:
    """Connects an Engine to smtpd's socket on an asyncio loop."""

    def __init__(self, filt: Filter, rfd: int = 0, wfd: int = 1) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(filt, loop=self.loop, wake=self._schedule_flush)
        self.filter = filt
        self._flush_pending = False
        self.closed = False
        self.draining = False

    def _schedule_flush(self) -> None:
        if not self._flush_pending and not self.closed:
            self._flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        out = self.engine.out
        if not out or self.closed:
            return
        self.engine.out = []
        out.append(b"")  # the last newline, without copying the joined block
        try:
            _write_all(self.wfd, b"\n".join(out))
        except (BrokenPipeError, ConnectionResetError):
            self.stop()

    def on_input(self, data: bytes) -> None:
        if self.draining:
            return
        if not data:
            self.end_of_input()
            return
        self.engine.feed(data)
        self.flush()

    def end_of_input(self) -> None:
        """EOF on stdin: read no more, answer every request already read
        (each handler under its deadline), write it all, then stop."""
        self.draining = True
        self._stop_reading()
        self.engine.end_of_input()
        self.flush()
        if self.closed:
            return  # EPIPE while writing: nobody reads any more
        if not self.engine.busy:
            self.stop()
            return
        self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        drain = self.loop.create_task(self.engine.drain())
        while not drain.done():
            await asyncio.wait([drain], timeout=0.1)
            if self._peer_gone():
                break  # smtpd closed the socket: nobody will read the answers
        self.flush()
        self.stop()

    def _peer_gone(self) -> bool:
        """Whether our output can no longer be read (the socket's peer
        closed it, a pipe lost its reader): what a write would learn from
        EPIPE, without writing."""
        poller = select.poll()
        poller.register(self.wfd, select.POLLOUT)
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))

    def _readable(self) -> None:
        try:
            data = os.read(self.rfd, READ_SIZE)
        except BlockingIOError:
            return
        except (ConnectionResetError, OSError):
            data = b""
        self.on_input(data)

    def stop(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_reading()
        self.engine.eof()
        self.loop.stop()

    def _stop_reading(self) -> None:
        try:
            self.loop.remove_reader(self.rfd)
        except (ValueError, OSError):
            pass

    def _reader_thread(self) -> None:
        """Fallback for inputs epoll cannot watch (regular files)."""
        while True:
            try:
                data = os.read(self.rfd, READ_SIZE)
            except OSError:
                data = b""
            self.loop.call_soon_threadsafe(self.on_input, data)
            if not data:
                return

    def reload(self) -> None:
        for fn in self.filter.reload_handlers:
            try:
                fn()
                self.filter.log("reloaded")
            except Exception as exc:  # noqa: BLE001 - a bad reload keeps the old state
                self.filter.log(f"reload failed, keeping the previous state: {exc!r}")

    def run(self) -> int:
        loop = self.loop
        asyncio.set_event_loop(loop)
        log = self.filter.log
        holds = isinstance(log, Logger)  # a harness may have swapped in a plain function
        if holds:
            log.hold(loop)  # a chunk's log lines in one write
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        try:
            loop.add_reader(self.rfd, self._readable)
        except (PermissionError, OSError):
            threading.Thread(target=self._reader_thread, daemon=True).start()
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(self.engine.shutdown())
            loop.close()
            if holds:
                log.unhold()
        return 0


def _early_signals() -> None:
    # smtpd resets SIGHUP/SIGPIPE/SIGTERM to their defaults before exec: a
    # SIGHUP would kill the filter, and smtpd with it.  Until the loop takes
    # over, ignore HUP and let a write to a closed socket raise, not kill.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def run(filt: Filter, rfd: int = 0, wfd: int = 1) -> int:
    """Run the filter on smtpd's socket until EOF; returns the exit status."""
    _early_signals()
    status = _Driver(filt, rfd, wfd).run()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        # A blocking handler (@in_thread) still runs past its deadline: the
        # interpreter would wait for it at exit.  Everything is written.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
