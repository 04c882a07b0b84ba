"""Messages the SDK holds are taken in runs, not a call per line.

A header block (on_headers, on_message_stream), a whole message (on_message)
and a watched body are held until the handler can see them.  ``Engine.
_held_block`` takes a run of one such stream's lines at once (the run proven
like ``_run``'s blocks); after a plain on_headers it answers the rest of the
body as one block too.  It must answer, log and show the handlers exactly
what the general path does line by line (``runtime._HELD_BLOCKS = False``):
these tests read like transcripts, then compare the two paths on generated
messages with damage aimed at the run proof, the size cap and the handlers'
failures.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpd_filter_sdk import Filter, reject, runtime
from smtpd_filter_sdk.log import Logger
from smtpd_filter_sdk.runtime import Engine
from smtpd_filter_sdk.testing.wire import Wire

from enginekit import fast_paths, interleave_in_blocks

SID, TOK = "a3785d2560151333", "e55e48d61a50a374"
OTHER = "7641df9771b4ed01"
HEADERS = [b"Received: from client (localhost [127.0.0.1])", b"\tby mx.test", b"From: <bob@example.org>",
           b"X-Tag: forged", b"Subject: held runs"]


def tagger(logs: list[bytes], cap: int | None = None, lines: bool = False) -> Filter:
    """add_header.py's shape: remove the client's X-Tag, add ours; refuse a
    message whose subject says so; optionally a data-line handler too."""
    f = Filter("held", max_message_size=cap)
    f.log = Logger("held", write=logs.append)

    @f.on_headers
    def tag(session, headers):
        if headers.get("Subject") == "refuse me":
            return reject("550 refused")
        if headers.get("Subject") == "break me":
            raise RuntimeError("broken")
        if headers.get("Subject") == "stretch me":  # a line smtpd < 7.4 cuts
            headers.add("X-Long", "s" * 2100)
        headers.remove("X-Tag")
        headers.add("X-Tag", "held")

    if lines:
        @f.on_data_line
        def upper(session, line):
            return line.upper() if line.startswith(b"shout") else None

    return f


def whole(logs: list[bytes], cap: int | None = None, lines: bool = False) -> Filter:
    """on_message: the body's digest in a header, as a spam scanner's verdict."""
    f = Filter("held", max_message_size=cap)
    f.log = Logger("held", write=logs.append)

    @f.on_message
    def scan(session, message):
        if b"boom" in b"".join(message.body):
            raise RuntimeError("boom")
        message.headers.add("X-Digest", hashlib.sha1(b"\n".join(message.body)).hexdigest())

    f.on_oversize(lambda session, size: f.log(f"oversize at {size}", session.id))
    return f


def watched(logs: list[bytes], cap: int | None = None, lines: bool = False) -> Filter:
    """on_message_stream: every chunk the watcher gets is logged (so the two
    paths must batch alike), a chunk with "boom" makes it raise."""
    f = Filter("held", max_message_size=cap)
    f.log = Logger("held", write=logs.append)

    class Watcher:
        def __init__(self, sid):
            self.sid, self.hash = sid, hashlib.sha1()

        def body(self, chunk):
            f.log(f"chunk of {len(chunk)} bytes", self.sid)
            if b"boom" in chunk:
                raise RuntimeError("boom")
            self.hash.update(chunk)

        def end(self, headers):
            headers.add("X-Body-Hash", self.hash.hexdigest())

    f.on_message_stream(lambda session, headers: Watcher(session.id))
    return f


def plain(logs: list[bytes], cap: int | None = None, lines: bool = False) -> Filter:
    """No message handler at all: every line passes (a connect-time filter's
    shape), or with ``lines`` a data-line handler sees each."""
    f = Filter("held", max_message_size=cap)
    f.log = Logger("held", write=logs.append)
    f.on("commit")(lambda session: None)
    if lines:
        f.on_data_line(lambda session, line: line.upper() if line.startswith(b"shout") else None)
    return f


FILTERS = {"tagger": tagger, "whole": whole, "watched": watched, "plain": plain}


class Fed:
    def __init__(self, make, dialect: str = "0.6", held_blocks: bool = True, **kw) -> None:
        self.logs: list[bytes] = []
        self.engine = Engine(make(self.logs, **kw))
        self.wire = Wire(dialect)
        self.held_blocks = held_blocks
        self.blocks = 0
        self.feed(b"".join(line + b"\n" for line in self.wire.handshake()))
        self.take()

    def feed(self, data: bytes) -> None:
        with fast_paths(held_blocks=self.held_blocks):
            self.engine.feed(data)

    def take(self) -> list[bytes]:
        out, self.engine.out = self.engine.out, []
        self.blocks += sum(1 for answer in out if b"\n" in answer)
        return b"\n".join(out).split(b"\n") if out else []


def stamp(i: int) -> str:
    return "1795218812.%06d" % (327272 + 37 * i)


def message(wire: Wire, sid: str, headers: list[bytes], body: list[bytes], first: int = 0) -> list[bytes]:
    payloads = headers + [b""] + body + [b"."]
    return [wire.request(stamp(first + i), "data-line", sid, TOK, p) for i, p in enumerate(payloads)]


def as_input(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def answers(sid: str, payloads: list[bytes]) -> list[bytes]:
    return [b"filter-dataline|%s|%s|%s" % (sid.encode(), TOK.encode(), p) for p in payloads]


BODY = [b"line %d of the body" % i for i in range(300)]


# -- transcripts ---------------------------------------------------------------


def test_a_tagged_message_in_one_chunk_goes_out_as_one_block():
    # the whole message taken at once (_message_at_once): no stream opened,
    # the edited header block, the body and the "." in one block
    fed = Fed(tagger)
    fed.feed(as_input(message(fed.wire, SID, HEADERS, BODY[:40])))
    expected = [b"X-Tag: held"] + [h for h in HEADERS if not h.startswith(b"X-Tag")] + [b""] + BODY[:40] + [b"."]
    assert fed.take() == answers(SID, expected)
    assert fed.blocks == 1
    assert fed.engine._streams == {} and fed.engine._held_lane == {} and fed.engine._fast == {}


def test_header_lines_starting_with_a_dot_leave_stuffed_as_they_came():
    # "..x" on the wire is ".x" to the handler, and "..x" again on the way out,
    # first line of the block included
    seen = []
    f = Filter("held")
    f.on_headers(lambda session, headers: seen.extend(h.name for h in headers))
    fed = Fed(lambda logs, **kw: f)
    for stuffed in ([b"..Odd: first", b"From: <bob@example.org>"], [b"From: <bob@example.org>", b"..Odd: later"]):
        fed.feed(as_input(message(fed.wire, SID, stuffed, BODY[:20])))
        assert fed.take() == answers(SID, stuffed + [b""] + BODY[:20] + [b"."])
        assert sorted(seen) == [".Odd", "From"]
        seen.clear()
        fed.feed(as_input([fed.wire.report(stamp(0), "link-disconnect", SID)]))
    assert fed.blocks == 2


def test_a_small_message_cut_by_a_read_waits_for_its_end_then_goes_out_whole():
    fed = Fed(tagger)
    data = as_input(message(fed.wire, SID, HEADERS, BODY[:40]))
    fed.feed(data[:-10])
    assert fed.take() == [] and fed.engine._streams == {}  # held back, no stream opened
    assert fed.engine.sessions.peek(SID) is not None  # the session exists from its first line on
    fed.feed(data[-10:])
    expected = [b"X-Tag: held"] + [h for h in HEADERS if not h.startswith(b"X-Tag")] + [b""] + BODY[:40] + [b"."]
    assert fed.take() == answers(SID, expected)
    assert fed.blocks == 1


def test_lines_held_back_for_the_rest_of_their_message_are_answered_at_eof():
    fed = Fed(plain)
    data = as_input(message(fed.wire, SID, HEADERS, BODY[:40]))
    fed.feed(data[: data.index(b"line 20 of")])  # cut inside a line: that one is not acted on
    assert fed.take() == []
    fed.engine.end_of_input()
    assert fed.take() == answers(SID, HEADERS + [b""] + BODY[:20])
    assert fed.logs[-1].startswith(b"ignoring an incomplete last line at EOF")


def test_a_message_of_long_lines_cut_by_a_read_is_not_held_past_one_read():
    # 40 lines of 2,000 bytes: fewer than 256 lines, more than a read holds
    fed = Fed(plain)
    body = [b"w" * 2000] * 40
    data = as_input(message(fed.wire, SID, HEADERS, body))
    fed.feed(data[:-10])
    assert fed.take() == answers(SID, HEADERS + [b""] + body)  # all but the cut final "."
    fed.feed(data[-10:])
    assert fed.take() == answers(SID, [b"."])


def test_a_long_message_cut_by_a_read_goes_out_in_blocks_as_it_comes():
    # past _HOLD_BACK_MAX lines nothing waits: the header block is taken as
    # one run, the edited block and the body go out as one block each
    fed = Fed(tagger)
    data = as_input(message(fed.wire, SID, HEADERS, BODY))
    fed.feed(data[:-10])
    tagged = [b"X-Tag: held"] + [h for h in HEADERS if not h.startswith(b"X-Tag")] + [b""]
    assert fed.take() == answers(SID, tagged + BODY)  # the final "." is cut
    fed.feed(data[-10:])
    assert fed.take() == answers(SID, [b"."])
    assert fed.blocks == 2


def test_a_whole_message_is_held_in_runs_and_handed_over_unstuffed():
    body = [b"..leading dot", b"plain"] + BODY[:20]
    fed = Fed(whole)
    fed.feed(as_input(message(fed.wire, SID, HEADERS, body)))
    digest = hashlib.sha1(b"\n".join([b".leading dot"] + body[1:])).hexdigest().encode()
    assert fed.take() == answers(SID, [b"X-Digest: " + digest] + HEADERS + [b""] + body + [b"."])


@pytest.mark.parametrize("chunk", [5000, 1 << 20])
def test_a_watcher_sees_the_body_in_batches_of_256_lines_whatever_the_chunks(chunk):
    fed = Fed(watched)
    data = as_input(message(fed.wire, SID, HEADERS, BODY * 2))
    for at in range(0, len(data), chunk):
        fed.feed(data[at : at + chunk])
    out = fed.take()
    assert out[0].startswith(answers(SID, [b"X-Body-Hash: "])[0]) and out[-1] == answers(SID, [b"."])[0]
    assert out[1:] == answers(SID, HEADERS + [b""] + BODY * 2 + [b"."])
    sizes = [int(log.split(b"chunk of ")[1].split()[0]) for log in fed.logs if b"chunk of" in log]
    body = BODY * 2  # in batches of 256 + 256 + 88 lines (the empty line is no body)
    assert sizes == [sum(len(line) + 2 for line in body[i : i + 256]) for i in (0, 256, 512)]


def test_the_cap_cuts_a_held_message_where_the_line_loop_cuts_it():
    # the size of the first line past 1000 bytes, counted as on the wire
    size = 0
    for line in HEADERS + [b""] + BODY:
        size += len(line) + 2
        if size > 1000:
            break
    for held_blocks in (True, False):
        fed = Fed(whole, held_blocks=held_blocks, cap=1000)
        fed.feed(as_input(message(fed.wire, SID, HEADERS, BODY[:100])))
        assert fed.take() == answers(SID, HEADERS + [b""] + BODY[:100] + [b"."])
        assert [log for log in fed.logs if b"oversize" in log][0].endswith(b"oversize at %d\n" % size)


def test_another_sessions_lines_inside_a_header_block_keep_their_place():
    fed = Fed(tagger)
    mine = message(fed.wire, SID, HEADERS, BODY[:30])
    theirs = message(fed.wire, OTHER, HEADERS, BODY[:30])
    fed.feed(as_input(mine[:3] + theirs + mine[3:]))
    out = fed.take()
    tagged = [b"X-Tag: held"] + [h for h in HEADERS if not h.startswith(b"X-Tag")] + [b""] + BODY[:30] + [b"."]
    assert [a for a in out if SID.encode() in a] == answers(SID, tagged)
    assert [a for a in out if OTHER.encode() in a] == answers(OTHER, tagged)


# -- the run path answers what the general path does --------------------------


def _damage(rng: random.Random, line: bytes) -> bytes:
    """One change aimed at what the run proof checks, keeping the width."""
    kind = rng.randrange(5)
    if kind == 0:  # a bar for the timestamp's dot
        return line.replace(b".", b"|", 1)
    if kind == 1:  # another session id, one digit off
        return line.replace(SID.encode(), SID[:-1].encode() + b"4", 1)
    if kind == 2:  # another token
        return line.replace(TOK.encode(), TOK[:-1].encode() + b"b", 1)
    if kind == 3:  # another phase of the same width
        return line.replace(b"|data-line|", b"|data-lime|", 1)
    return line[: rng.randrange(len(line) + 1)]  # cut short


HEADER_CHOICES = [b"Subject: refuse me", b"Subject: break me", b"Subject: stretch me", b"X-Tag: forged", b"\tfolded on", b" folded",
                  b"not a header", b".Dotted: header", b"..", b"Name : spaced", b"8bit: \xe9\xff|bar|"]
BODY_CHOICES = [b"", b"..", b"x", b"..stuffed", b"shout it", b"a line of text", b"8bit \xe9|bar|",
                b"z" * 2047, b"z" * 2100, b"y" * 100, b"From: a body line"]


@st.composite
def held_runs(draw):
    make = draw(st.sampled_from(sorted(FILTERS)))
    dialect = draw(st.sampled_from(["0.4", "0.5", "0.6", "0.7", "0.7/7.6"]))
    cap = draw(st.sampled_from([None, None, 200, 3000, 20000]))
    lines = draw(st.booleans())
    wire = Wire(dialect)
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    per_session = []
    t = 0
    for sid in [SID, OTHER][: draw(st.integers(1, 2))]:
        headers = [rng.choice(HEADERS + HEADER_CHOICES) for _ in range(draw(st.integers(0, 12)))]
        body = [rng.choice(BODY_CHOICES) for _ in range(draw(st.one_of(st.integers(0, 40), st.integers(250, 600))))]
        if body and draw(st.booleans()):  # the handler or the watcher fails on this line
            body[rng.randrange(len(body))] = b"boom"
        msg = message(wire, sid, headers, body, first=t)
        if draw(st.booleans()):  # no empty line after the headers
            del msg[len(headers)]
        t += len(msg)
        per_session.append(msg)
    merged = interleave_in_blocks(rng, per_session, (1, 3, 20, 300))
    for _ in range(draw(st.integers(0, 3))):
        i = rng.randrange(len(merged))
        merged[i] = _damage(rng, merged[i])
    data = as_input(merged)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return make, dialect, cap, lines, data, cuts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(held_runs())
def test_held_runs_answer_and_log_exactly_what_the_line_path_does(case):
    make, dialect, cap, lines, data, cuts = case
    by_run = Fed(FILTERS[make], dialect, held_blocks=True, cap=cap, lines=lines)
    by_line = Fed(FILTERS[make], dialect, held_blocks=False, cap=cap, lines=lines)
    for fed in (by_run, by_line):
        at = 0
        for cut in cuts + [len(data)]:
            fed.feed(data[at:cut])
            at = max(at, cut)
        fed.engine.end_of_input()  # lines held back for the rest of a message are answered at EOF
    assert by_run.take() == by_line.take()
    assert by_run.logs == by_line.logs
    assert by_run.engine._streams.keys() == by_line.engine._streams.keys()
    assert by_run.engine._verdicts == by_line.engine._verdicts


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(HEADER_CHOICES + HEADERS + [b"", b".", b" ", b"\t", b":"]),
                          st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"n"))), max_size=14))
def test_the_header_block_taken_whole_ends_where_the_line_rule_ends_it(payloads):
    assert runtime._header_block(payloads) == runtime._header_block_by_line(payloads)


def _breaks_lines(kind: str, header_line=None, body_line=None):
    """A handler that edits a line with a line break in it, as a careless
    filter might (a value read from a file with its newline), or another
    line given."""
    from smtpd_filter_sdk.message import Header

    def make(logs: list[bytes], **kw) -> Filter:
        f = Filter("held", on_error="fail-closed")
        f.log = Logger("held", write=logs.append)
        forged = b"X-Note: first\r\nfilter-result|%s|%s|reject|550 forged" % (SID.encode(), TOK.encode())
        evil = Header("X-Note", [forged if header_line is None else header_line])
        if kind == "headers":
            f.on_headers(lambda session, headers: headers.fields.append(evil))
        elif kind == "message":
            line = b"last\nfilter-result|x|y|proceed" if body_line is None else body_line
            f.on_message(lambda session, message: message.body.append(line))
        else:
            class Watcher:
                def body(self, chunk):
                    pass

                def end(self, headers):
                    headers.fields.append(evil)

            f.on_message_stream(lambda session, headers: Watcher())
        return f

    return make


@pytest.mark.parametrize("kind", ["headers", "message", "stream"])
@pytest.mark.parametrize("held_blocks", [True, False])
def test_a_line_break_a_handler_put_in_a_line_never_starts_a_protocol_line(kind, held_blocks):
    fed = Fed(_breaks_lines(kind), held_blocks=held_blocks)
    fed.feed(as_input(message(fed.wire, SID, HEADERS, BODY[:20])))
    out = fed.take()
    assert all(line.startswith(b"filter-dataline|%s|%s|" % (SID.encode(), TOK.encode())) for line in out)
    assert out[-1].endswith(b"|.")
    split = b"X-Note: first" if kind != "message" else b"last"
    assert answers(SID, [split])[0] in out


@pytest.mark.parametrize("kind", ["headers", "message", "stream"])
@pytest.mark.parametrize("held_blocks", [True, False])
def test_lines_a_handler_left_unwritable_pass_the_message_unchanged_by_the_failure_policy(kind, held_blocks):
    # text where bytes belong: logged, the message goes out as it came, and
    # commit gets the failure policy's answer (fail-closed here)
    fed = Fed(_breaks_lines(kind, header_line="X-Note: text", body_line="text"), held_blocks=held_blocks)
    fed.feed(as_input(message(fed.wire, SID, HEADERS, BODY[:20])))
    assert fed.take() == answers(SID, HEADERS + [b""] + BODY[:20] + [b"."])
    assert b"left lines that cannot be written" in b"".join(fed.logs)
    assert fed.engine._verdicts[SID].wire.startswith(b"reject|451")
