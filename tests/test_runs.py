"""Runs of one pass-through stream's data lines are answered as one block.

``Engine._run`` answers a long run of one message's lines without looking at
each line in Python; it must answer exactly what the per-line loop answers,
byte for byte, log the same, and give back to the loop every line that is not
plainly the next line of that message.  These tests read like transcripts of
such runs, then compare the two paths on generated runs with damage aimed at
what the block proof checks.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpd_filter_sdk import Filter
from smtpd_filter_sdk.log import Logger
from smtpd_filter_sdk.runtime import Engine
from smtpd_filter_sdk.testing.wire import Wire

from enginekit import fast_paths, interleave_in_blocks

SID, TOK = "a3785d2560151333", "e55e48d61a50a374"
OTHER = "7641df9771b4ed01"


def tagging_filter(logs: list[bytes]) -> Filter:
    """The shape of every header-tagging filter: headers seen, body streamed."""
    f = Filter("runs")
    f.log = Logger("runs", write=logs.append)

    @f.on_headers
    def look(session, headers):
        return None

    return f


class Fed:
    """An engine after its handshake, fed raw bytes; ``blocks`` counts the
    runs ``_run`` answered as one block."""

    def __init__(self, dialect: str = "0.6", run_min: int | None = None) -> None:
        self.logs: list[bytes] = []
        self.engine = Engine(tagging_filter(self.logs))
        self.wire = Wire(dialect)
        self.run_min = run_min
        self.blocks = 0
        run = self.engine._run

        def counted(*args):
            end = run(*args)
            self.blocks += end > args[1]
            return end

        self.engine._run = counted  # type: ignore[method-assign]
        self.feed(b"".join(line + b"\n" for line in self.wire.handshake()))
        self.registration = self.take()

    def feed(self, data: bytes) -> None:
        # The header block goes the general way, so the body is _scan's and
        # _run's (held runs answer it themselves: tests/test_held_runs.py).
        with fast_paths(run_min=self.run_min, held_blocks=False):
            self.engine.feed(data)

    def take(self) -> list[bytes]:
        out, self.engine.out = self.engine.out, []
        return b"\n".join(out).split(b"\n") if out else []


def stamp(i: int) -> str:
    return "1795218812.%06d" % (327272 + 37 * i)


def message(wire: Wire, sid: str, body: list[bytes], first: int = 0) -> list[bytes]:
    payloads = [b"From: <bob@example.org>", b"Subject: runs", b""] + body + [b"."]
    return [wire.request(stamp(first + i), "data-line", sid, TOK, p) for i, p in enumerate(payloads)]


def as_input(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def echoes(sid: str, body: list[bytes]) -> list[bytes]:
    payloads = [b"From: <bob@example.org>", b"Subject: runs", b""] + body + [b"."]
    return [b"filter-dataline|%s|%s|%s" % (sid.encode(), TOK.encode(), p) for p in payloads]


BODY = [b"line %d of a message long enough to be answered as a block" % i for i in range(200)]


def test_a_long_message_is_answered_line_for_line_in_blocks():
    fed = Fed()
    fed.feed(as_input(message(fed.wire, SID, BODY)))
    assert fed.take() == echoes(SID, BODY)
    assert fed.blocks >= 1
    assert fed.engine._streams == {} and fed.engine._fast == {}


def test_one_byte_lines_stay_in_the_block_and_the_final_dot_ends_it():
    body = BODY[:40] + [b"x", b"..", b"-", b""] + BODY[40:80]
    fed = Fed()
    fed.feed(as_input(message(fed.wire, SID, body)))
    assert fed.take() == echoes(SID, body)
    assert fed.blocks == 1


def test_chunks_cut_anywhere_give_the_same_answers():
    data = as_input(message(Wire("0.6"), SID, BODY))
    rng = random.Random(7)
    for _ in range(20):
        fed = Fed()
        at = 0
        while at < len(data):
            step = rng.choice((1, 7, 100, 4096, 65536))
            fed.feed(data[at : at + step])
            at += step
        assert fed.take() == echoes(SID, BODY)


def test_another_sessions_line_in_the_middle_is_answered_in_its_place():
    fed = Fed()
    mine = message(fed.wire, SID, BODY)
    theirs = message(fed.wire, OTHER, BODY[:30])
    # smtpd switches sessions between lines: 50 of mine, all of theirs, the rest of mine
    fed.feed(as_input(mine[:50] + theirs + mine[50:]))
    assert fed.take() == echoes(SID, BODY)[:50] + echoes(OTHER, BODY[:30]) + echoes(SID, BODY)[50:]
    assert fed.blocks >= 2


def test_a_timestamp_with_a_bar_for_a_dot_is_not_a_data_line_inside_a_run():
    fed = Fed()
    lines = message(fed.wire, SID, BODY)
    broken = lines[60].replace(b"1795218812.", b"1795218812|", 1)
    lines[60] = broken
    fed.feed(as_input(lines))
    answers = fed.take()
    expected = echoes(SID, BODY)
    del expected[60]
    assert answers == expected
    assert any(b"ignoring" in log for log in fed.logs)


def test_a_digit_in_the_head_is_not_a_filter_line_inside_a_run():
    fed = Fed()
    lines = message(fed.wire, SID, BODY)
    # same width: one digit moved from the timestamp into "filter"
    lines[70] = lines[70].replace(b"filter|0.6|1795218812", b"fil1ter|0.6|179521881", 1)
    fed.feed(as_input(lines))
    expected = echoes(SID, BODY)
    del expected[70]
    assert fed.take() == expected
    assert any(b"unknown line" in log for log in fed.logs)


def test_a_line_of_an_unknown_session_with_the_same_width_is_not_echoed_as_ours():
    fed = Fed()
    lines = message(fed.wire, SID, BODY)
    lines[80] = lines[80].replace(SID.encode(), b"a3785d2560151334", 1)  # one digit off
    fed.feed(as_input(lines))
    expected = echoes(SID, BODY)
    del expected[80]  # the other session's first line: its header block, held for on_headers
    assert fed.take() == expected
    assert set(fed.engine._streams) == {b"a3785d2560151334"}


def test_a_line_too_long_for_smtpd_6_inside_a_run_is_passed_and_warned_like_any():
    body = BODY[:50] + [b"y" * 3000] + BODY[50:100]
    fed = Fed("0.6")
    fed.feed(as_input(message(fed.wire, SID, body)))
    assert fed.take() == echoes(SID, body)
    assert any(b"will be cut at 2047 bytes" in log for log in fed.logs)


# -- the block path answers what the per-line loop answers --------------------


def _damage(rng: random.Random, line: bytes) -> bytes:
    """One change aimed at what the block proof checks, keeping the width."""
    kind = rng.randrange(8)
    if kind == 0:  # a bar for the timestamp's dot
        return line.replace(b".", b"|", 1) if line.count(b".") else line
    if kind == 1:  # a digit moved into "filter" (a line cut short before may have no bar left)
        head, _, rest = line.partition(b"|")
        return b"fil1ter|" + rest.replace(b"1", b"", 1) if head == b"filter" and b"1" in rest[:30] else line
    if kind == 2:  # another session id, one digit off
        return line.replace(SID.encode(), SID[:-1].encode() + b"4", 1)
    if kind == 3:  # another token
        return line.replace(TOK.encode(), TOK[:-1].encode() + b"b", 1)
    if kind == 4:  # a shorter timestamp
        return line.replace(b"|1795218812.", b"|179521881.", 1)
    if kind == 5:  # another phase of the same width
        return line.replace(b"|data-line|", b"|data-lime|", 1)
    if kind == 6:  # the subsystem with a digit
        return line.replace(b"smtp-in", b"smtp-1n", 1)
    return line[: rng.randrange(len(line) + 1)]  # cut short


@st.composite
def runs(draw):
    dialect = draw(st.sampled_from(["0.4", "0.5", "0.6", "0.7", "0.7/7.6"]))
    wire = Wire(dialect)
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    sids = [SID, OTHER, "0000000000000001"][: draw(st.integers(1, 3))]
    per_session = []
    t = 0
    for sid in sids:
        body = []
        for _ in range(draw(st.integers(0, 120))):
            body.append(
                rng.choice(
                    [b"", b".", b"..", b"x", b"-", b"a line of text %d" % rng.randrange(10**6),
                     b"8bit \xe9\xff|bar|", b".stuffed", b"z" * rng.choice((2047, 2048, 2100)), b"y" * 100]
                )
            )
        lines = message(wire, sid, body, first=t)
        t += len(lines)
        per_session.append(lines)
    # interleave in blocks, as smtpd switches between sessions
    merged = interleave_in_blocks(rng, per_session, (1, 3, 20, 200))
    for _ in range(draw(st.integers(0, 4))):
        i = rng.randrange(len(merged))
        merged[i] = _damage(rng, merged[i])
    if draw(st.booleans()):  # a report or a request of another session in between
        merged.insert(rng.randrange(len(merged) + 1), wire.report(stamp(5), "tx-data", OTHER, "1ef1c203", "ok"))
    data = as_input(merged)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return dialect, data, cuts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_blocks_answer_and_log_exactly_what_the_line_loop_does(case):
    dialect, data, cuts = case
    by_block = Fed(dialect, run_min=1)  # a block wherever one can start
    by_line = Fed(dialect, run_min=10**9)  # never
    for fed in (by_block, by_line):
        at = 0
        for cut in cuts + [len(data)]:
            fed.feed(data[at:cut])
            at = max(at, cut)
    assert by_block.take() == by_line.take()
    assert by_block.logs == by_line.logs
    assert by_block.engine._streams.keys() == by_line.engine._streams.keys()


@pytest.mark.parametrize("dialect", ["0.6", "0.7/7.6"])
def test_with_the_minimum_at_one_even_a_short_message_goes_as_a_block(dialect):
    # the knob the differential test above turns: it must really make blocks
    fed = Fed(dialect, run_min=1)
    fed.feed(as_input(message(fed.wire, SID, BODY[:5])))
    assert fed.take() == echoes(SID, BODY[:5])
    assert fed.blocks == 1


def test_sessions_interleaved_line_by_line_never_try_a_block(monkeypatch):
    # Many slow clients: smtpd alternates sessions on every line.  A look at
    # the next line must be enough to go on line by line.
    tries = []
    real_run = Engine._run

    def counting_run(self, *args):
        tries.append(args[0])
        return real_run(self, *args)

    monkeypatch.setattr(Engine, "_run", counting_run)
    fed = Fed()
    mine, theirs = message(fed.wire, SID, BODY), message(fed.wire, OTHER, BODY)
    fed.feed(as_input([line for pair in zip(mine, theirs) for line in pair]))
    answers = fed.take()
    assert [a for a in answers if SID.encode() in a] == echoes(SID, BODY)
    assert [a for a in answers if OTHER.encode() in a] == echoes(OTHER, BODY)
    assert tries == [] and fed.blocks == 0
