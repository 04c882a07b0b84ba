"""Decisions are checked before they reach the wire; message helpers keep
every byte they do not mean to change."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtpd_filter_sdk import Headers, Message, fold, stuff, unstuff
from smtpd_filter_sdk.protocol import Config
from smtpd_filter_sdk.responses import (
    DecisionError,
    disconnect,
    failure_decision,
    junk,
    proceed,
    refusal,
    reject,
    report,
    rewrite,
)

# -- decisions -------------------------------------------------------------------


def test_decisions_on_the_wire():
    assert proceed().wire == b"proceed"
    assert junk().wire == b"junk"
    assert reject(550, "5.7.1 go away").wire == b"reject|550 5.7.1 go away"
    assert reject(550, "go away", enhanced="5.7.1").wire == b"reject|550 5.7.1 go away"
    assert disconnect(421, "4.7.0 later").wire == b"disconnect|421 4.7.0 later"
    assert rewrite("<a@b>").wire == b"rewrite|<a@b>"


@pytest.mark.parametrize(
    "make",
    [
        lambda: reject(250, "ok"),
        lambda: reject(600, "x"),
        lambda: reject(550, ""),
        lambda: reject(550, "two\r\nlines"),
        lambda: reject(550, "nul\0"),
        lambda: reject(550, "x" * 600),
        lambda: reject(550, "go", enhanced="5.7"),
        lambda: disconnect("550", "text"),
        lambda: rewrite("a\nb"),
        lambda: report(""),
    ],
)
def test_invalid_decisions_cannot_be_built(make):
    with pytest.raises(DecisionError):
        make()


def test_phase_rules_refuse_what_smtpd_dies_or_misbehaves_on():
    old, new = Config(), Config(protocol="0.7")
    assert refusal(junk(), "commit", new)  # fatal: junk after DATA
    assert refusal(junk(), "mail-from", new) is None
    for phase in ("data", "commit", "starttls"):
        assert refusal(rewrite("x"), phase, new)
    assert refusal(rewrite("<a@b>"), "mail-from", new) is None
    assert refusal(report("seen"), "data", old)  # fatal before 7.6
    assert refusal(report("seen"), "data", new) is None
    assert refusal(report("seen"), "helo", new)  # would become the HELO name
    assert refusal(reject(451, "4.7.1 later"), "connect", new)  # 503 loop
    assert refusal(reject(421, "4.7.1 bye"), "connect", new) is None  # smtpd disconnects on 421
    assert refusal(reject(554, "5.7.1 no"), "connect", new) is None
    assert refusal(disconnect(421, "4.7.1 bye"), "connect", new) is None
    assert refusal(proceed(), "data-line", new)


def test_failure_policy():
    assert failure_decision("fail-open", "rcpt-to").wire == b"proceed"
    assert failure_decision("fail-closed", "rcpt-to").wire.startswith(b"reject|451 4.7.0 ")
    assert failure_decision("fail-closed", "connect").wire.startswith(b"disconnect|421 4.7.0 ")


# -- dot-stuffing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, wire", [(b".", b".."), (b"..x", b"...x"), (b"x.", b"x."), (b"", b""), (b".\xff", b"..\xff")]
)
def test_stuffing_round_trip(content, wire):
    assert stuff(content) == wire
    assert unstuff(wire) == content


# -- headers -------------------------------------------------------------------------

RAW = [
    b"Received: from a (b [127.0.0.1])",
    b"\tby mx (OpenSMTPD) with ESMTP id 1",
    b"Subject: a very long",
    b" folded subject",
    b"From: Bob <bob@example.org>",
    b"X-Spam: yes",
    b"x-spam: YES",
    b"",
    b"body line 1",
    b".dot line",
    b"",
    b"\xe9t\xe9",
]


def test_message_parse_and_untouched_round_trip():
    msg = Message.parse(RAW)
    assert [h.name for h in msg.headers] == ["Received", "Subject", "From", "X-Spam", "x-spam"]
    assert msg.headers.get("subject") == "a very long folded subject"
    assert msg.headers.get_all("X-SPAM") == ["yes", "YES"]
    assert msg.body == [b"body line 1", b".dot line", b"", b"\xe9t\xe9"]
    assert msg.lines() == RAW
    assert msg.stuffed_lines()[9] == b"..dot line"


def test_header_edits():
    msg = Message.parse(RAW)
    assert msg.headers.remove("X-Spam") == 2
    msg.headers.add("X-Checked", "yes")
    msg.headers.add("X-Last", "z", prepend=False)
    msg.headers.replace("Subject", "new")
    lines = msg.lines()
    assert lines[0] == b"X-Checked: yes"
    assert b"Subject: new" in lines and b" folded subject" not in lines
    assert lines[lines.index(b"") - 1] == b"X-Last: z"
    assert "X-Spam" not in msg.headers


def test_message_without_blank_line_or_body():
    msg = Message.parse([b"Subject: x", b"not a header line", b"more"])
    assert msg.body == [b"not a header line", b"more"] and not msg.separated
    assert msg.lines() == [b"Subject: x", b"not a header line", b"more"]
    assert Message.parse([b"Subject: only"]).lines() == [b"Subject: only"]


def test_fold_keeps_lines_short_and_refuses_injection():
    lines = fold("Authentication-Results", "mx.example.org; " + "; ".join(f"dkim=pass header.d=d{i}.example" for i in range(6)))
    assert len(lines) > 1 and all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b"\t") for line in lines[1:])
    assert b" ".join(line.strip() for line in lines).startswith(b"Authentication-Results: mx.example.org;")
    with pytest.raises(ValueError):
        fold("X-Evil", "a\r\nBcc: victim@example.org")
    with pytest.raises(ValueError):
        fold("Bad Name", "x")


@given(
    st.sampled_from(["X-SenderScore", "Authentication-Results", "X"]),
    st.lists(st.text(alphabet="ab; \t=\u00e9", max_size=30), max_size=8).map(" ".join),
    st.integers(10, 100),
)
@example("X-SenderScore", "4", 78)
@example("X", "a" * 75, 78)  # exactly the width
@example("X", "a" * 76, 78)  # one over: a single word is not cut
@example("X", "a" * 37 + " " + "a" * 38, 78)  # one over, with a space: two lines
@example("X", "aa " * 30, 20)
def test_fold_unfolds_to_the_field_and_breaks_only_lines_that_do_not_fit(name, value, width):
    lines = fold(name, value, width)
    field = f"{name}: {value}".encode()
    assert b" ".join([lines[0]] + [line[1:] for line in lines[1:]]) == field  # a break is a space
    assert all(line[:1] == b"\t" for line in lines[1:])
    if len(field) <= width:
        assert lines == [field]
    for i, line in enumerate(lines):  # longer only where one word (blank ones aside) is
        if len(line) > width:
            words = (line[len(name) + 2 :] if i == 0 else line[1:]).split(b" ")
            assert len([word for word in words if word.strip()]) <= 1
    for line, after in zip(lines, lines[1:]):  # each break was needed: the next word did not fit
        assert len(line) + 1 + len(after[1:].split(b" ")[0]) > width


def test_headers_parse_keeps_non_header_lines():
    h = Headers.parse([b"Received: x", b"garbage without colon"])
    assert h.lines() == [b"Received: x", b"garbage without colon"]


def test_a_block_that_starts_with_a_line_that_is_no_field_can_still_be_asked():
    # smtpd passes whatever the client sent: a first line without a colon is
    # kept in the block, nameless; asking for a name must not raise.
    h = Headers.parse([b"garbage without colon", b"Subject: hi"])
    assert h.get("") == ""
    assert h.get("subject") == "hi"
    assert h.get_all("") == [""]
    assert h.lines() == [b"garbage without colon", b"Subject: hi"]
