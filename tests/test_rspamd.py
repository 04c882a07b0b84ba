"""py-filter-rspamd: rspamd's answers (served by a real HTTP server on
loopback) applied to messages through the SDK harness; the parsing and
header placement as properties."""

from __future__ import annotations

import email.header
import json
import math
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from httpkit import HTTPTestServer
from smtpd_filter_sdk import Header, Headers, Message
from smtpd_filter_sdk.testing.harness import Harness
from smtpd_filters import rspamd as rs


@pytest.fixture(scope="module")
def srv():
    with HTTPTestServer() as s:
        yield s


def make(srv, *argv: str, dialect: str = "0.6") -> Harness:
    opts = rs.flags().parse_or_raise(["-url", srv.url, "-timeout", "2", *argv])
    return Harness(rs.build(opts), dialect=dialect, hang_timeout=15)


def answer(action="no action", score=0.0, required=15.0, symbols=None, **extra) -> dict:
    return {"action": action, "score": score, "required_score": required, "symbols": symbols or {}, **extra}


def send(srv, reply, *argv, headers=None, body=b"Hello.\n", **kw):
    """One message through a fresh filter; (MessageResult, harness stderr)."""
    if isinstance(reply, (bytes, str)):
        srv.answer(reply)
    else:
        srv.answer(json=reply)
    with make(srv, *argv) as h:
        s = h.session(**kw)
        m = s.send_message(headers=headers or {"Subject": "hello"}, body=body)
        return m, h.stderr


def head(m) -> list[bytes]:
    out = m.output_lines
    return out[: out.index(b"")]


# -- actions -------------------------------------------------------------------------------


def test_reject_is_550_with_rspamds_message_and_the_message_untouched(srv):
    m, err = send(srv, answer("reject", 15, messages={"smtp_message": "Gtube pattern"}))
    assert m.commit.decision == "reject"
    assert m.commit.decision.param == "550 5.7.1 Gtube pattern"
    assert m.output_lines == [l for l in m.input_lines if l != b"."]
    assert any("reject: 550 5.7.1 Gtube pattern" in l for l in err)


def test_soft_reject_is_451_and_never_421(srv):
    m, _ = send(srv, answer("soft reject", messages={"smtp_message": "Try again later"}))
    assert m.commit.decision.param == "451 4.7.1 Try again later"
    m, _ = send(srv, answer("soft reject"))
    assert m.commit.decision.param == "451 4.7.1 Try again later"


def test_reply_text_is_sanitised(srv):
    m, _ = send(srv, answer("reject", messages={"smtp_message": "bad\r\n250 forged\tline \x00é" + "x" * 900}))
    text = m.commit.decision.param
    assert text.startswith("550 5.7.1 bad 250 forged line ")
    assert text.isascii() and "\r" not in text and "\n" not in text and len(text) <= 410


@pytest.mark.parametrize("action", ["no action", "greylist", "some future action"])
def test_passing_actions_leave_the_message_as_it_came(srv, action):
    m, _ = send(srv, answer(action))
    assert m.commit.decision == "proceed"
    assert m.output_lines == [l for l in m.input_lines if l != b"."]


def test_add_header_writes_filter_rspamds_three_headers_first(srv):
    symbols = {name: {"score": sc} for name, sc in [
        ("GTUBE", 0.0), ("MISSING_DATE", 1.0), ("MID_RHS_NOT_FQDN", 0.5), ("MIME_GOOD", -0.1),
        ("RCPT_COUNT_ONE", 0.0), ("TO_DN_NONE", 0.0), ("FROM_EQ_ENVFROM", 0.0), ("ARC_NA", 0.0)]}
    m, _ = send(srv, answer("add header", 6.2, 15, symbols))
    assert m.commit.decision == "proceed"
    assert head(m)[:6] == [
        b"X-Spam: yes",
        b"X-Spam-Score: 6.2 / 15",
        b"X-Spam-Status: Yes, score=6.200 required=15.000",
        b"\ttests=[ARC_NA=0.000, FROM_EQ_ENVFROM=0.000, GTUBE=0.000,",
        b"\tMID_RHS_NOT_FQDN=0.500, MIME_GOOD=-0.100, MISSING_DATE=1.000,",
        b"\tRCPT_COUNT_ONE=0.000, TO_DN_NONE=0.000]",
    ]
    assert head(m)[6].startswith(b"Received: ")


def test_add_header_without_symbols_has_no_status_line(srv):
    m, _ = send(srv, answer("add header", 7, 15))
    assert head(m)[:3] == [b"X-Spam: yes", b"X-Spam-Score: 7 / 15", head(m)[2]]
    assert head(m)[2].startswith(b"Received:")


def test_rspamds_own_spam_headers_win_over_ours(srv):
    m, _ = send(srv, answer("add header", 7, 15, {"A": {"score": 7}},
                            milter={"add_headers": {"X-Spam-Status": {"value": "Yes, score=7.00", "order": -1}}}))
    status = [l for l in head(m) if l.startswith(b"X-Spam-Status")]
    assert status == [b"X-Spam-Status: Yes, score=7.00"]


def test_rewrite_subject_replaces_a_folded_subject_completely(srv):
    m, _ = send(srv, answer("rewrite subject", subject="*** SPAM *** hello there folded"),
                headers={"Subject": "hello there\r\n folded", "To": "x@y"})
    h = head(m)
    i = h.index(b"Subject: *** SPAM *** hello there folded")
    assert h[i + 1] == b"To: x@y"
    assert not any(l.strip() == b"folded" for l in h)


def test_rewritten_subject_is_rfc2047_when_not_ascii(srv):
    subject = "*** SPAM *** Grüße aus Köln, " + "sehr lang " * 12
    m, _ = send(srv, answer("rewrite subject", subject=subject))
    h = head(m)
    i = next(i for i, l in enumerate(h) if l.startswith(b"Subject:"))
    lines = [h[i]] + [l for l in h[i + 1:] if l[:1] in (b" ", b"\t")]
    assert all(l.isascii() and len(l) <= 78 for l in lines)
    raw = b"".join(lines).decode()[len("Subject:"):]
    decoded = "".join(
        part.decode(cs or "ascii") if isinstance(part, bytes) else part for part, cs in email.header.decode_header(raw)
    )
    assert " ".join(decoded.split()) == " ".join(subject.split())


@pytest.mark.parametrize("mode, decision", [("junk", "proceed"), ("reject", "reject")])
@pytest.mark.parametrize("how", ["action", "milter.reject"])
def test_discard_and_quarantine(srv, mode, decision, how):
    reply = answer("discard", 20, 15) if how == "action" else answer("reject", 20, 15, milter={"reject": "quarantine"})
    m, _ = send(srv, reply, "-discard", mode)
    assert m.commit.decision == decision
    if decision == "proceed":
        assert head(m)[0] == b"X-Spam: yes"
        assert f"X-Rspamd-Action: {reply['action']}".encode() in head(m)
    else:
        assert m.commit.decision.param.startswith("550 5.7.1 ")


def test_no_action_flag_adds_the_action_and_accepts(srv):
    m, _ = send(srv, answer("reject", 20, 15, milter={"no_action": True}))
    assert m.commit.decision == "proceed"
    assert b"X-Rspamd-Action: reject" in head(m)


# -- DKIM and milter headers ----------------------------------------------------------------


@pytest.mark.parametrize("dkim", ["v=1; a=rsa-sha256; d=e2e.test;\r\n\tb=AAAA", ["v=1; d=a.test; b=1", "v=1; d=b.test; b=2"]])
def test_dkim_signatures_come_first(srv, dkim):
    m, _ = send(srv, answer("add header", 6, 15, {"X": {"score": 6}}, **{"dkim-signature": dkim}))
    h = head(m)
    if isinstance(dkim, str):
        assert h[:3] == [b"DKIM-Signature: v=1; a=rsa-sha256; d=e2e.test;", b"\tb=AAAA", b"X-Spam: yes"]
    else:
        assert h[:3] == [b"DKIM-Signature: v=1; d=a.test; b=1", b"DKIM-Signature: v=1; d=b.test; b=2", b"X-Spam: yes"]


def test_every_add_headers_shape_is_written_where_it_belongs(srv):
    adds = {
        "X-Plain": "plain value",
        "X-Spamd-Result": {"order": -1, "value": "default: False [1.40 / 15.00];\r\n\tMISSING_DATE(1.00)[];\r\n\tARC_NA(0.00)[]"},
        "Authentication-Results": {"order": 1, "value": "mx.e2e.test;\r\n\tnone"},
        "ARC-Seal": {"order": 1, "value": "i=1; cv=none"},
        "X-Top": {"order": 0, "value": "top"},
        "X-List": ["one", {"value": "two", "order": -1}],
        "X-Second-Last": {"value": "before the last", "index": -2},
    }
    m, _ = send(srv, answer(milter={"add_headers": adds}), headers={"Subject": "s", "To": "t@x"})
    h = head(m)
    names = [l.split(b":")[0] for l in h if l[:1] not in (b" ", b"\t")]
    assert names == [
        b"X-Plain", b"X-List",                  # plain strings on top (as filter-rspamd)
        b"X-Top",                               # order 0: before the first field rspamd saw
        b"Received",                            # smtpd's
        b"ARC-Seal", b"Authentication-Results", # order 1: after it, ARC set first
        b"Subject",
        b"X-Second-Last",                       # -2: before the last field
        b"To",
        b"X-Spamd-Result", b"X-List",           # -1: at the bottom, in rspamd's order
    ]
    i = h.index(b"X-Spamd-Result: default: False [1.40 / 15.00];")
    assert h[i + 1:i + 3] == [b"\tMISSING_DATE(1.00)[];", b"\tARC_NA(0.00)[]"]
    assert h[h.index(b"Authentication-Results: mx.e2e.test;") + 1] == b"\tnone"


@pytest.mark.parametrize(
    "index, kept",
    [(0, []), (1, [b"two", b"three"]), (2, [b"one", b"three"]), (-1, [b"one", b"two"]),
     (-3, [b"two", b"three"]), (4, [b"one", b"two", b"three"]), (-4, [b"one", b"two", b"three"])],
)
def test_remove_headers_index(srv, index, kept):
    headers = [("X-Del", "one\r\n\tone-cont"), ("Subject", "s"), ("X-Del", "two"), ("x-del", "three")]
    m, _ = send(srv, answer(milter={"remove_headers": {"X-Del": index}}), headers=headers)
    h = head(m)
    left = [l.split(b": ", 1)[1] for l in h if l.lower().startswith(b"x-del:")]
    assert left == kept
    assert (b"\tone-cont" in h) == (b"one" in kept)  # continuation lines go with their field


def test_spoofed_verdict_headers_from_the_client_are_removed(srv):
    forged = [("X-Spam", "no"), ("X-Spam-Status", "No"), ("X-Spamd-Result", "clean"), ("X-Rspamd-Queue-Id", "x"),
              ("X-Spamassassin-Keep", "kept"), ("X-Spammy", "kept"), ("Subject", "s")]
    m, err = send(srv, answer(), headers=forged)
    names = [l.split(b":")[0].lower() for l in head(m)]
    assert b"x-spam" not in names and b"x-spam-status" not in names and b"x-spamd-result" not in names
    assert b"x-rspamd-queue-id" not in names and b"x-spammy" in names
    assert any("4 spoofed header(s) removed" in l for l in err)


def test_folded_values_cannot_forge_headers_or_end_the_block(srv):
    evil = {"X-A": "one\nX-Forged: yes", "X-B": {"value": "two\r\n\r\nbody?", "order": 0}}
    m, _ = send(srv, answer(milter={"add_headers": evil}))
    h = head(m)
    assert b"\tX-Forged: yes" in h and b"X-Forged: yes" not in h
    assert b"\tbody?" in h


# -- the request ------------------------------------------------------------------------------


def test_request_carries_the_whole_envelope(srv):
    srv.answer(json=answer())
    with make(srv, "-settings-id", "inbound", "-mtaTag", "edge") as h:
        s = h.session(src="192.0.2.7", rdns="mail.example.org")
        s.ehlo("client.example.org")
        s.starttls("TLSv1.3:TLS_AES_256_GCM_SHA384:256")
        s.ehlo("client.example.org")
        s.auth("alice", result="pass")
        m = s.send_message("", ["a@example.net", "b@example.net", "nobody@invalid"], headers={"Subject": "s"})
        assert m.accepted
    seen = srv.requests[-1]
    assert seen.get("IP") == "192.0.2.7" and seen.get("Hostname") == "mail.example.org"
    assert seen.get("Helo") == "client.example.org"
    assert seen.get("From") == "<>"
    rcpts = seen.all("Rcpt")
    assert rcpts[:2] == ["a@example.net", "b@example.net"]
    assert seen.get("Deliver-To") is None  # several recipients
    assert seen.get("User") == "alice" and seen.get("Queue-Id") == m.msgid
    assert seen.get("Settings-ID") == "inbound" and seen.get("MTA-Tag") == "edge"
    assert seen.get("TLS-Version") == "TLSv1.3" and seen.get("TLS-Cipher") == "TLS_AES_256_GCM_SHA384"
    assert seen.get("MTA-Name") and seen.get("Pass") == "All"
    assert seen.body.endswith(b"\r\n") and b"\r\nSubject: s\r\n" in seen.body


def test_request_without_rdns_auth_or_tls(srv):
    srv.answer(json=answer())
    with make(srv) as h:
        s = h.session(src="local", rdns="<unknown>")
        s.ehlo()
        s.auth("mallory", result="fail")
        s.send_message("a@example.org", ["one@example.net"])
    seen = srv.requests[-1]
    assert seen.get("IP") == "127.0.0.1"
    assert seen.get("Hostname") is None and seen.get("User") is None and seen.get("TLS-Version") is None
    assert seen.get("From") == "a@example.org" and seen.get("Deliver-To") == "one@example.net"


def test_body_is_unstuffed(srv):
    srv.answer(json=answer())
    with make(srv) as h:
        h.session().send_message(lines=[b"Subject: dots", b"", b"..leading dot", b"..", b"end"], stuffed=True)
    assert srv.requests[-1].body.endswith(b"\r\nSubject: dots\r\n\r\n.leading dot\r\n.\r\nend\r\n")


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, status", [(b"{not json", 200), (b'{"score": 3}', 200), (b"[1, 2]", 200), (b"oops", 500)])
def test_bad_answers_fail_closed_with_451(srv, reply, status):
    srv.answer(reply, status=status)
    with make(srv) as h:
        m = h.session().send_message()
        assert m.commit.decision.param == "451 4.7.1 Try again later (spam filter unavailable)"
        assert any("rspamd failed" in l and "-failMode closed" in l for l in h.stderr)


def test_refused_connection_fails_open_with_a_status_header():
    opts = rs.flags().parse_or_raise(["-url", "http://127.0.0.1:9", "-failMode", "open"])
    with Harness(rs.build(opts)) as h:
        m = h.session().send_message(headers={"Subject": "s", "X-Spam-Status": "No, forged"})
        assert m.commit.decision == "proceed"
        assert head(m)[0] == b"X-Spam-Status: Unknown (not scanned: rspamd unavailable)"
        assert not any(l.startswith(b"X-Spam-Status: No") for l in head(m))
        assert any("connect" in l and "passed unscanned" in l for l in h.stderr)


def test_a_hung_rspamd_times_out_per_flag(srv):
    srv.answer(json=answer("reject"), delay=3)
    with make(srv, "-timeout", "0.5") as h:
        m = h.session().send_message()
        assert m.commit.decision.param.startswith("451 4.7.1")
        assert any("no answer within 0.5s" in l for l in h.stderr)


def test_unix_socket_url():
    with HTTPTestServer(unix=True) as srv:
        srv.answer(json=answer("reject", messages={"smtp_message": "via unix"}))
        with make(srv) as h:
            m = h.session().send_message()
        assert m.commit.decision.param == "550 5.7.1 via unix"


# -- skipping -------------------------------------------------------------------------------------


def test_max_size_passes_larger_messages_unscanned(srv):
    srv.answer(json=answer("reject"))
    before = len(srv.requests)
    with make(srv, "-maxSize", "1000") as h:
        m = h.session().send_message(body=b"x" * 1000 + b"\n")
        assert m.commit.decision == "proceed"
        assert any("larger than -maxSize 1000" in l and "passed unscanned" in l for l in h.stderr)
        assert h.session().send_message(body=b"short\n").commit.decision == "reject"
    assert len(srv.requests) == before + 1


def test_skip_auth_passes_authenticated_senders_unscanned(srv):
    srv.answer(json=answer("reject"))
    before = len(srv.requests)
    with make(srv, "-skipAuth") as h:
        s = h.session()
        s.ehlo()
        s.auth("alice", result="pass")
        assert s.send_message().commit.decision == "proceed"
        assert h.session().send_message().commit.decision == "reject"
    assert len(srv.requests) == before + 1


def test_dry_run_scans_logs_and_changes_nothing(srv):
    m, err = send(srv, answer("reject", messages={"smtp_message": "no"}), "-dryRun")
    assert m.commit.decision == "proceed"
    assert m.output_lines == [l for l in m.input_lines if l != b"."]
    assert any("550 5.7.1 no" in l and "(dry run)" in l for l in err)


def test_bad_flags_are_one_usage_line():
    for argv in (["-failMode", "maybe"], ["-url", "http://"], ["-url", ""], ["-maxSize", "-1"], ["-timeout", "0"]):
        r = subprocess.run([sys.executable, "-m", "smtpd_filters.rspamd", *argv], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("py-filter-rspamd: ")


# -- formatting and parsing as properties ----------------------------------------------------------


@pytest.mark.parametrize("value, text", [
    (6, "6"), (6.2, "6.2"), (15, "15"), (0.1, "0.1"), (100, "100"), (-2.5, "-2.5"), (1e-05, "1e-05"),
    (123456.79, "123456.79"), (1e21, "1e+21"), (0, "0"), (5.55, "5.55"),
])
def test_go_float32_v(value, text):
    assert rs.go_float(value) == text


f32s = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(f32s)
def test_go_float_reads_back_as_the_same_float32(x):
    text = rs.go_float(x)
    assert struct.unpack("f", struct.pack("f", float(text)))[0] == x or x == 0
    assert "e" not in text or abs(x) < 1e-4 or abs(x) >= 1e21


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
header_names = st.sampled_from(["X-A", "Authentication-Results", "ARC-Seal", "Subject", "X-Spam", "bad name", ""])
milter = st.fixed_dictionaries({}, optional={
    "add_headers": st.dictionaries(header_names, json_values | st.fixed_dictionaries(
        {"value": st.text(max_size=40)}, optional={"order": st.integers(-8, 8)}), max_size=5),
    "remove_headers": st.dictionaries(header_names, st.integers(-5, 5) | json_values, max_size=4),
    "reject": st.sampled_from(["discard", "quarantine", "other"]),
    "no_action": st.booleans(),
})
replies = st.fixed_dictionaries(
    {"action": st.sampled_from(["reject", "soft reject", "add header", "rewrite subject", "no action", "greylist", "discard", "x"])},
    optional={
        "score": json_values, "required_score": json_values, "subject": json_values | st.text(),
        "symbols": st.dictionaries(st.text(max_size=10), json_values, max_size=6),
        "dkim-signature": json_values, "milter": milter | json_values,
        "messages": st.fixed_dictionaries({}, optional={"smtp_message": json_values | st.text()}),
    },
)
header_blocks = st.lists(
    st.tuples(header_names, st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20),
              st.booleans()), max_size=8)


def _message(block) -> Message:
    fields = [Header("Received", [b"Received: from x", b"\tby mx"])]
    for name, value, folded in block:
        if not name or " " in name:
            continue
        lines = [f"{name}: {value}".encode()] + ([b"\tcont"] if folded else [])
        fields.append(Header(name, lines))
    return Message(Headers(fields), [b"body"], True)


@settings(max_examples=300, deadline=None)
@given(replies, header_blocks, st.sampled_from(["junk", "reject"]))
def test_any_answer_yields_a_well_formed_header_block_or_a_refusal(reply, block, discard):
    opts = rs.flags().parse_or_raise(["-discard", discard])
    parsed = rs.parse_reply(json.dumps(reply))
    msg = _message(block)
    verdict = rs.decide(parsed, msg, opts)
    if verdict.decision is not None:
        assert verdict.decision.kind == "reject" and verdict.decision.code in (550, 451)
        return
    lines = msg.headers.lines()
    assert lines and lines[0][:1] not in (b" ", b"\t")
    for line in lines:
        assert line.strip() and b"\r" not in line and b"\n" not in line
        if line[:1] not in (b" ", b"\t"):
            name = line.split(b":", 1)[0]
            assert b":" in line and name and b" " not in name
    assert [h.name for h in msg.headers.fields].count("Received") == 1


@given(st.binary(max_size=200) | json_values.map(json.dumps))
def test_garbage_is_a_reply_error_or_a_reply(data):
    try:
        r = rs.parse_reply(data)
    except rs.ReplyError:
        return
    assert isinstance(r.action, str) and math.isfinite(r.score) and math.isfinite(r.required)
    assert all(isinstance(a.value, str) for a in r.add)


# -- the drop-in claim: the Go filter and ours on the same transcript ---------------------------

GO_FILTER = "/usr/libexec/opensmtpd/filter-rspamd"
SYMBOLS = {"GTUBE": {"score": 0.0}, "MISSING_DATE": {"score": 1.0}, "ARC_NA": {"score": 0.0}}


def both(srv, reply: dict, dialect: str = "0.6", auth: str | None = None, **msg_kw):
    """(Go's MessageResult, ours) for one message against the same rspamd
    answer; ``auth``: the client authenticates as that user first."""
    import os

    from smtpd_filter_sdk.testing.harness import SubprocessHarness

    if not os.access(GO_FILTER, os.X_OK):
        pytest.skip(f"{GO_FILTER} not installed (opensmtpd-filter-rspamd)")
    srv.answer(json=reply)
    out = []
    for h in (SubprocessHarness(f"{GO_FILTER} -url {srv.url}", dialect, hang_timeout=15), make(srv, dialect=dialect)):
        with h:
            s = h.session()
            if auth:
                s.ehlo()
                s.auth(auth, result="pass")
            out.append(s.send_message(**msg_kw))
            out[-1].user_sent = srv.requests[-1].get("User")
    return out


@pytest.mark.parametrize("reply", [
    answer("no action", 1, 15, SYMBOLS),
    answer("greylist", 5, 15, SYMBOLS),
    answer("add header", 6.2, 15, SYMBOLS, **{"dkim-signature": ["v=1; d=a.test; b=1", "v=1; d=b.test;\n\tb=2"]}),
    answer("rewrite subject", 8, 15, SYMBOLS, subject="*** SPAM *** same"),
], ids=["no-action", "greylist", "add-header+dkim", "rewrite-subject"])
def test_same_transcript_as_the_go_filter(srv, reply):
    go, ours = both(srv, reply, headers={"Subject": "same", "To": "rcpt@example.net"})
    assert ours.output_lines == go.output_lines
    assert (ours.commit.decision.kind, go.commit.decision.kind) == ("proceed", "proceed")


def test_reject_texts_gain_only_the_enhanced_code(srv):
    for action, code, enhanced in (("reject", 550, "5.7.1"), ("soft reject", 451, "4.7.1")):
        go, ours = both(srv, answer(action, 15, 15, messages={"smtp_message": "Gtube pattern"}))
        assert go.commit.decision.param == f"{code} Gtube pattern"
        assert ours.commit.decision.param == f"{code} {enhanced} Gtube pattern"
        assert ours.output_lines == go.output_lines  # the message is written back unchanged


def test_where_the_go_filter_loses_milter_headers_we_keep_them(srv):
    """filter-rspamd issue #51: object-form headers other than the ARC/A-R
    set are dropped; and it ignores remove_headers' index."""
    reply = answer(milter={
        "add_headers": {"X-Spamd-Result": {"value": "default: False [1.00 / 15.00]", "order": -1},
                        "Authentication-Results": {"value": "mx; none", "order": 1}},
        "remove_headers": {"X-Del": 1},
    })
    go, ours = both(srv, reply, headers=[("X-Del", "one"), ("X-Del", "two"), ("Subject", "s")])
    assert not any(l.startswith(b"X-Spamd-Result") for l in go.output_lines)
    assert any(l.startswith(b"X-Spamd-Result") for l in ours.output_lines)
    assert [l for l in go.output_lines if l.startswith(b"X-Del")] == []
    assert [l for l in ours.output_lines if l.startswith(b"X-Del")] == [b"X-Del: two"]


def test_a_client_gone_mid_message_leaves_nothing_behind(srv):
    srv.answer(json=answer("reject"))
    before = len(srv.requests)
    with make(srv) as h:
        s = h.session()
        m = s.send_message(body=b"line\n" * 50, abort_after=20)
        assert m.commit is None and s.closed
        engine = h.transport.engine
        assert s.state is None and not engine._streams and not engine.busy  # freed at disconnect
        assert h.session().send_message().commit.decision == "reject"  # the next one is scanned
    assert len(srv.requests) == before + 1  # nothing was sent for the half message


@pytest.mark.parametrize("dialect", ["0.5", "0.6", "0.7"])
def test_user_is_sent_after_auth_on_every_protocol_version(srv, dialect):
    """link-auth changed its field order in 0.7; the Go filter reads it wrong there."""
    srv.answer(json=answer())
    with make(srv, dialect=dialect) as h:
        s = h.session()
        s.ehlo()
        s.auth("carol|with|bars", result="pass")
        assert s.send_message().accepted
    assert srv.requests[-1].get("User") == "carol|with|bars"


def test_on_protocol_0_7_the_go_filter_loses_the_user_and_we_do_not(srv):
    go, ours = both(srv, answer(), dialect="0.7", auth="alice")
    assert ours.user_sent == "alice"
    assert go.user_sent != "alice"
    go, ours = both(srv, answer(), dialect="0.6", auth="alice")
    assert go.user_sent == ours.user_sent == "alice"


def test_dry_run_with_rspamd_down_proceeds_and_says_what_it_would_do():
    opts = rs.flags().parse_or_raise(["-url", "http://127.0.0.1:9", "-dryRun"])
    with Harness(rs.build(opts)) as h:
        m = h.session().send_message()
        assert m.commit.decision == "proceed"
        assert m.output_lines == [l for l in m.input_lines if l != b"."]
        assert any("rspamd failed" in l and "451 (-failMode closed) (dry run)" in l for l in h.stderr)
