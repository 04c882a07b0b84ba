"""Whole sessions through the runtime's fast paths answer what one line at
a time through the general path answers.

The reference is an Engine fed ONE LINE PER ``feed()`` call with the fast
paths off: ``runtime._HELD_BLOCKS = False`` (no ``_held_block`` /
``_header_run`` / ``_message_at_once`` / held-back message), ``runtime.
_RUN_MIN`` huge (no ``_run`` block), no stream in ``Engine._fast`` (every
data line goes to ``handle_line``, not ``_scan``'s echo or its data-line
handler call), and neither quiet events nor unhandled phases (tx-reset and
link-disconnect go through ``_report``'s record, commit through
``_request``, not ``_quiet_report`` / ``_proceed``).
The other side is the default engine fed the same bytes cut into chunks at
random byte offsets (inside lines too, at line ends, or the whole stream as
one chunk), so ``_scan``'s hot loop, ``_run``,
``_message_at_once`` and the lines it holds back at the end of a read,
``_held_block`` / ``_header_run``, ``_quiet_report`` and ``_proceed`` all
get their turn.  Both must write exactly the same lines (``take_lines()``),
log the same lines and be left in the same state after ``end_of_input()``
and ``drain()``.

What this adds to ``test_runs.py`` and ``test_held_runs.py`` (which compare
the block paths against the line loop fed in the *same* chunks, on one
message per session with damage aimed at the run proofs):

* the reference is fed line by line, so where a read ends never matters to
  it: the held-back message at the end of a read (and its answer at EOF)
  is checked against a side that never holds anything back;
* whole sessions: link-connect, connect, several messages per session, each
  closed by commit and tx-reset (``_proceed`` and ``_quiet_report``), several
  sessions interleaved in blocks;
* tx-reset or link-disconnect in the middle of a message (no final ``.``),
  tx-reset after the ``.`` without a commit (a verdict left for nothing),
  empty messages (just ``.``), header-only messages (with and without the
  empty line), messages without headers, dot-stuffed lines, payloads of
  exactly the output line limit (65,535 bytes written) and one byte over
  it, and smtpd < 7.4's 2,047 and one over;
* the stream cut short at any byte (EOF inside a message or a line);
* the production filters: examples/add_header.py and py-filter-senderscore
  (``-testMode -junkBelow 50 -scoreHeader``, a link-connect report handler
  and a connect handler beside its on_headers), next to a pass-through
  filter, a sync on_headers that adds a header and one that removes,
  replaces, refuses or raises; each with ``max_message_size`` unset, 200 and
  3000 bytes, and with ``legacy_long_lines`` warn or reject (a verdict that
  ``_proceed`` must leave to the general path); an on_message filter and an
  on_message_stream watcher beside them (``_held_block``'s other modes), a
  data-line handler and an async on_headers.

Damaged lines are left to the two tests above.  ``SMTPD_FASTPATH_EXAMPLES``
sets how many examples to run (default 200).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Callable

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from smtpd_filter_sdk import Filter, reject, runtime
from smtpd_filter_sdk import protocol as p
from smtpd_filter_sdk.log import Logger
from smtpd_filter_sdk.runtime import Engine
from smtpd_filter_sdk.testing import strategies as sst
from smtpd_filter_sdk.testing.wire import Wire

import filterkit  # noqa: F401  (maps filters/ to smtpd_filters when not installed)
from enginekit import Driven, fast_paths, interleave_in_blocks
from examplekit import example
from smtpd_filters import senderscore

EXAMPLES = int(os.environ.get("SMTPD_FASTPATH_EXAMPLES", "200"))
ADD_HEADER = example("add_header")

SIDS = ["a3785d2560151333", "7641df9771b4ed01", "0000000000000001", "ffffffffffffffff"]
DATA_TOK, COMMIT_TOK, CONNECT_TOK = "e55e48d61a50a374", "1bd5b3c2f8e0a9d7", "0c4f3e2d1b0a9988"
PREFIX = len(b"filter-dataline|") + 16 + 1 + 16 + 1  # b"filter-dataline|SID|TOK|"
ROOM = p.MAX_OUTPUT_LINE - PREFIX  # the longest payload smtpd takes back
LEGACY_ROOM = p.LEGACY_OUTPUT_LINE - PREFIX  # the longest smtpd < 7.4 keeps whole

HEADER_LINES = [
    b"Received: from client (localhost [127.0.0.1])", b"\tby mx.test (OpenSMTPD)", b"From: <bob@example.org>",
    b"To: <alice@rig.test>", b"Subject: review", b"Subject: refuse me", b"Subject: break me", b"X-Tag: forged",
    b"X-SenderScore: 100", b"X-Filtered-By: forged", b"\tfolded on", b" folded", b"..Dotted: header",
    b"Name : spaced", b"8bit: \xe9\xff|bar|", b"not a header",
]
BODY_LINES = [
    b"", b"", b"..", b"...", b"..stuffed", b"x", b"-", b"a line of the body", b"a line of the body", b"|",
    b"8bit \xe9\xff|bar|", b"From: a body line", b"\tindented", b"y" * 100, b"trailing space ",
]
#: around the output limits (rare: one body line in about 150)
EDGE_LINES = [b"e" * LEGACY_ROOM, b"e" * (LEGACY_ROOM + 1), b"E" * ROOM, b"E" * (ROOM + 1)]


# -- the filters ------------------------------------------------------------------


def passing() -> Filter:
    """No data handler: every data line is echoed as it came."""
    f = Filter("pass")
    f.on("connect")(lambda session, rdns, src: None)
    return f


def adding() -> Filter:
    f = Filter("adds")
    f.on_headers(lambda session, headers: headers.add("X-Review", "seen"))
    return f


def editing() -> Filter:
    """Removes and replaces fields; refuses or raises when the subject says so."""
    f = Filter("edits")

    @f.on_headers
    def edit(session, headers):
        subject = headers.get("Subject")
        if subject == "refuse me":
            return reject(550, "refused")
        if subject == "break me":
            raise RuntimeError("broken")
        headers.remove("X-Tag")
        headers.remove("Received")
        if subject is not None:
            headers.replace("Subject", "[reviewed] " + subject)
        return None

    return f


def add_header() -> Filter:
    return ADD_HEADER.build("X-Filtered-By", "add-header")


def scoring() -> Filter:
    return senderscore.build(senderscore.flags().parse(["-testMode", "-junkBelow", "50", "-scoreHeader"]))


def whole() -> Filter:
    """on_message: the SDK holds the whole message (``_held_block``'s other mode)."""
    f = Filter("whole")
    f.on_message(lambda session, message: message.headers.add("X-Body-Lines", str(len(message.body))))
    return f


def watching() -> Filter:
    """on_message_stream: each chunk the watcher is shown is logged, so both
    sides must show the body in the same batches."""
    f = Filter("watch")

    class Sizes:
        def __init__(self, sid: str) -> None:
            self.sid, self.sizes = sid, []

        def body(self, chunk: bytes) -> None:
            self.sizes.append(len(chunk))
            f.log(f"shown {len(chunk)} bytes", self.sid)

        def end(self, headers) -> None:
            headers.add("X-Chunks", " ".join(map(str, self.sizes)) or "none")

    f.on_message_stream(lambda session, headers: Sizes(session.id))
    return f


def per_line() -> Filter:
    """on_data_line (``_scan``'s handler branch): edits some lines (dotted
    ones too: they must reach it unstuffed), splits some, fails on "-" (the
    rest of that message passes unchanged)."""
    f = Filter("lines")

    @f.on_data_line
    def line(session, line):
        if line == b"-":
            raise RuntimeError("dash")
        if line.startswith(b"a line"):
            return line.upper()
        if line.startswith(b"."):  # unstuffed: b".x" on the wire was b"..x"
            return line + b" (dotted)"
        return [line, b"." + line] if line.startswith(b"x") else None

    return f


def later() -> Filter:
    """An async on_headers: the message waits for it (``_WAIT``), answered at drain."""
    f = Filter("later")

    @f.on_headers
    async def add(session, headers):
        headers.add("X-Later", "yes")

    return f


FILTERS: dict[str, Callable[[], Filter]] = {
    "pass": passing, "adds": adding, "edits": editing, "add_header": add_header, "senderscore": scoring,
    "whole": whole, "watch": watching, "lines": per_line, "later": later,
}


# -- the streams ------------------------------------------------------------------


@dataclass
class Case:
    dialect: str
    data: bytes  # the whole stream after the handshake (cut short when eof)
    cuts: list[int]  # where the fast side's reads end
    lines: int  # how many lines the stream had before EOF cut it
    eof: int | None  # where EOF cut it

    def __repr__(self) -> str:  # the lines are in the note above it
        return (f"Case({self.dialect!r}, {self.lines} lines, cut short to {self.eof} bytes, cuts={self.cuts})"
                if self.eof is not None else f"Case({self.dialect!r}, {self.lines} lines, cuts={self.cuts})")

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # hypothesis' pretty printer
        printer.text(repr(self))


class Stamps:
    """smtpd's fixed-width timestamps, one later each call."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return "1795218812.%06d" % (100000 + 37 * self.n % 900000)


def message_payloads(draw, palette: list[bytes]) -> list[bytes]:
    """One message's payloads as smtpd sends them (stuffed), without the ".":
    a header block of some shape and a body of some length (its lines from
    a seed of its own, so that the shrinker can drop other messages)."""
    shape = draw(st.sampled_from(["full", "full", "full", "empty", "headers-only", "headers-blank",
                                  "no-blank", "no-headers"]))
    if shape == "empty":
        return []
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    headers = [rng.choice(HEADER_LINES) for _ in range(rng.randrange(0, 9))]
    if shape == "headers-only":
        return headers
    if shape == "headers-blank":
        return headers + [b""]
    n = draw(st.one_of(st.integers(0, 20), st.integers(14, 60), st.integers(240, 300)))
    body = [rng.choice(EDGE_LINES) if rng.randrange(150) == 0 else rng.choice(palette) for _ in range(n)]
    if shape == "no-headers":
        return body
    return headers + ([] if shape == "no-blank" else [b""]) + body


def session_lines(draw, wire: Wire, sid: str, stamp: Stamps, palette: list[bytes]) -> list[bytes]:
    """One session: link-connect, connect, messages each ended by its "."
    (commit, tx-reset; or no commit), by a tx-reset or by a link-disconnect
    in its middle."""
    octet = draw(st.sampled_from([1, 20, 49, 50, 99, 255]))
    src = f"192.0.2.{octet}"
    lines = [wire.report(stamp(), "link-connect", sid, "mail.example.org", "pass", f"{src}:4321", "192.0.2.1:25"),
             wire.connect(stamp(), sid, CONNECT_TOK, "mail.example.org", src)]
    for m in range(draw(st.integers(1, 4))):
        msgid = "%08x" % (0x1EF1C203 + m)
        lines.append(wire.report(stamp(), "tx-begin", sid, msgid))
        payloads = message_payloads(draw, palette)
        ending = draw(st.sampled_from(["dot", "dot", "dot", "dot, no commit", "reset", "disconnect"]))
        if ending in ("reset", "disconnect"):
            payloads = payloads[: draw(st.integers(0, len(payloads)))]
        lines += [wire.request(stamp(), "data-line", sid, DATA_TOK, payload) for payload in payloads]
        if ending == "disconnect":
            lines.append(wire.report(stamp(), "link-disconnect", sid))
            return lines
        if ending.startswith("dot"):
            lines.append(wire.request(stamp(), "data-line", sid, DATA_TOK, b"."))
        if ending == "dot":
            lines.append(wire.request(stamp(), "commit", sid, COMMIT_TOK))
        else:  # the client left (after its "." too: smtpd asks no commit then)
            lines.append(wire.report(stamp(), "tx-rollback", sid, msgid))
        lines.append(wire.report(stamp(), "tx-reset", sid, msgid))
    if draw(st.booleans()):
        lines.append(wire.report(stamp(), "link-disconnect", sid))
    return lines


def _snap(data: bytes, at: int, where: str) -> int:
    """``at`` moved to the end of its line (its newline read or not)."""
    end = data.find(b"\n", at)
    if where == "raw" or end < 0:
        return at
    return min(len(data), end + 1 + {"after": 0, "before-newline": -1, "next": 1}[where])


@st.composite
def cases(draw) -> Case:
    dialect = draw(st.sampled_from(["0.4", "0.5", "0.6", "0.7", "0.7/7.6"]))
    wire = Wire(dialect)
    palette = BODY_LINES + draw(st.lists(sst.data_lines(long_lines=False), max_size=3))
    stamp = Stamps()
    per_session = [session_lines(draw, wire, sid, stamp, palette) for sid in SIDS[: draw(st.integers(1, 4))]]
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    merged = interleave_in_blocks(rng, per_session, draw(st.sampled_from([(1, 3), (5, 40), (20, 400), (10**6,)])))
    note("\n".join(repr(line if len(line) < 200 else line[:120] + b"...<%d>" % len(line)) for line in merged))
    data = b"".join(line + b"\n" for line in merged)
    eof = draw(st.integers(0, len(data))) if draw(st.integers(0, 2)) == 0 else None
    if eof is not None:  # EOF anywhere: inside a message, a line, a request
        data = data[:eof]
    spots = draw(st.lists(st.tuples(st.integers(0, len(data)),
                                    st.sampled_from(["raw", "after", "before-newline", "next"])), max_size=8))
    cuts = sorted({_snap(data, at, where) for at, where in spots})
    return Case(dialect, data, cuts, len(merged), eof)


# -- driving ----------------------------------------------------------------------


class Unlisted(dict):
    """An ``Engine._fast`` that never lists a stream: ``_scan`` hands every
    data line to ``handle_line``."""

    def __setitem__(self, key, value) -> None:
        pass


def drive(name: str, cap: int | None, legacy: str, dialect: str, pieces: list[bytes], reference: bool):
    logs: list[bytes] = []
    f = FILTERS[name]()
    f.log = Logger(f.name, write=logs.append)
    f.max_message_size = cap
    f.legacy_long_lines = legacy
    driven = Driven(f, dialect)
    engine = driven.engine
    if reference:  # commit, tx-reset, link-disconnect and data lines the general way too
        engine._quiet_events, engine._unhandled, engine._fast = set(), set(), Unlisted()
    # The reference: no held block, no message at once, no run.
    with fast_paths(run_min=10**9, held_blocks=False) if reference else contextlib.nullcontext():
        for piece in pieces:
            engine.feed(piece)
        engine.end_of_input()
    driven.loop.run_until_complete(engine.drain())
    out = driven.registration + engine.take_lines()
    state = (sorted(engine._streams), engine._verdicts, sorted(engine.sessions.ids()), engine._held_back,
             sorted(engine._held_lane))  # (the reference lists no _fast stream)
    driven.close()
    return out, logs, state


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(name=st.sampled_from(sorted(FILTERS)), cap=st.sampled_from([None, None, 200, 3000]),
       legacy=st.sampled_from(["warn", "warn", "reject"]), case=cases())
def test_chunked_fast_paths_answer_what_one_line_at_a_time_answers(name, cap, legacy, case):
    data = case.data
    lines = data.split(b"\n")
    by_line = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    chunks = [data[a:b] for a, b in zip([0] + case.cuts, case.cuts + [len(data)]) if b > a]
    expected_out, expected_logs, expected_state = drive(name, cap, legacy, case.dialect, by_line, reference=True)
    out, logs, state = drive(name, cap, legacy, case.dialect, chunks, reference=False)
    assert out == expected_out
    assert logs == expected_logs
    assert state == expected_state


def test_the_generated_sessions_take_every_fast_path(monkeypatch):
    """The comparison above is only worth what the fast side takes: each
    fast path must answer lines (not hand them back) on a fixed batch."""
    took: dict[str, int] = dict.fromkeys(["_run", "_message_at_once", "_held_block", "_header_run",
                                          "_quiet_report", "_proceed", "held back", "held back at EOF"], 0)

    def counted(name: str, real: Callable, moved: Callable) -> Callable:
        def method(self, *args):
            result = real(self, *args)
            took[name] += runtime._HELD_BLOCKS and bool(moved(args, result))
            return result

        return method

    for name, moved in [("_run", lambda a, r: r > a[1]), ("_message_at_once", lambda a, r: r > a[1]),
                        ("_held_block", lambda a, r: r > a[1] + 1), ("_header_run", lambda a, r: True),
                        ("_quiet_report", lambda a, r: r), ("_proceed", lambda a, r: r)]:
        monkeypatch.setattr(Engine, name, counted(name, getattr(Engine, name), moved))
    end_of_input, feed = Engine.end_of_input, Engine.feed

    def held(at_eof: bool, real: Callable) -> Callable:
        def method(self, *args):
            if runtime._HELD_BLOCKS and self._held_back and self._holding:
                took["held back at EOF" if at_eof else "held back"] += 1
            return real(self, *args)

        return method

    monkeypatch.setattr(Engine, "end_of_input", held(True, end_of_input))
    monkeypatch.setattr(Engine, "feed", held(False, feed))

    @settings(max_examples=120, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(name=st.sampled_from(sorted(FILTERS)), case=cases())
    def some(name, case):
        test_chunked_fast_paths_answer_what_one_line_at_a_time_answers.hypothesis.inner_test(name, None, "warn", case)

    some()
    assert all(took.values()), took
