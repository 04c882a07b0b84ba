"""The in-process harness (and the simulator behind it), as a filter author
uses it: each test reads like an SMTP transcript.

    client says              ->  filter decides            ->  smtpd does
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from smtpd_filter_sdk import Filter, disconnect, junk, proceed, reject, rewrite
from smtpd_filter_sdk.filter import REQUEST_PHASES
from smtpd_filter_sdk.testing.harness import (
    Connect,
    Ehlo,
    FilterCheckFailed,
    Harness,
    Mail,
    Message,
    Quit,
    Rcpt,
    SubprocessHarness,
    decisions_in,
    message_lines,
)
from smtpd_filter_sdk.testing.simulator import FATAL, HANG, WARN, FilterDecision
from smtpd_filter_sdk.testing.wire import DIALECTS

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = Path(__file__).resolve().parent / "data"
DIALECT_NAMES = list(DIALECTS)


def helo_policy() -> Filter:
    f = Filter("helo-policy", track=["helo"])  # the tests read session.helo from outside

    @f.on("helo", "ehlo")
    def helo(session, identity):
        if identity == "localhost":
            return reject(550, "5.7.1 bad HELO")
        if identity.startswith("spam."):
            return junk()
        return None

    return f


def everything() -> Filter:
    """A filter registered for every event and phase (like the rig's recorder)."""
    f = Filter("everything")
    f.on_report("*")(lambda s, r: None)
    f.on(*REQUEST_PHASES)(lambda s, *a: None)
    f.on_data_line(lambda s, line: None)
    return f


def names(lines):
    """(report|filter, event|phase) of each line, repeats collapsed."""
    out = []
    for line in lines:
        parts = line.split(b"|")
        if parts[0] in (b"report", b"filter"):
            item = (parts[0].decode(), parts[4].decode())
            if not out or out[-1] != item:
                out.append(item)
    return out


def session_names(capture: Path, index: int = 0):
    lines = capture.read_bytes().splitlines()
    sids = []
    for line in lines:
        parts = line.split(b"|")
        if parts[0] in (b"report", b"filter") and parts[5] not in sids:
            sids.append(parts[5])
    return names(line for line in lines if line.split(b"|")[5:6] == [sids[index]])


# -- smtpd's order of things ---------------------------------------------------


def test_plain_session_matches_the_real_capture():
    h = Harness(everything(), "0.6", record=True)
    s = h.session(src="127.0.0.1", rdns="localhost")
    s.ehlo("client.example.org")
    s.send_message("bob@example.org", ["alice@rig.test"], body=b"Hello Alice,\n\njust a plain message.\n-- \nBob\n")
    s.quit()
    assert names(h.sent) == session_names(CAPTURES / "plain.txt")
    assert h.findings == []


def test_rset_noop_and_null_sender_match_the_real_capture():
    h = Harness(everything(), "0.6", record=True)
    s = h.session(src="127.0.0.1", rdns="localhost")
    s.ehlo("client.example.org")
    s.mail_from("bob@example.org")
    s.rcpt_to("alice@rig.test")
    assert s.rset().reply == "250 2.0.0 Reset state"
    assert s.noop().reply == "250 2.0.0 Ok"
    assert s.send_message("bob@example.org", "alice@rig.test").accepted
    assert s.send_message("", "carol@rig.test").accepted
    s.quit()
    assert names(h.sent) == session_names(CAPTURES / "rset.txt")


def test_helo_and_unfiltered_commands_match_the_real_capture():
    h = Harness(everything(), "0.6", record=True)
    s = h.session(src="127.0.0.1", rdns="localhost")
    assert s.command("HELP").reply == "214 2.0.0 End of HELP info"
    s.helo("plain-helo.example.org")
    s.noop()
    for cmd in ("WIZ", "VRFY alice", "EXPN list", "FOOBAR unknown command"):
        assert s.command(cmd).code == 500
    s.send_message("Bob@Example.ORG", ["alice@rig.test"])
    s.quit()
    assert names(h.sent) == session_names(CAPTURES / "helo.txt")


def test_only_registered_events_and_phases_are_sent():
    f = helo_policy()
    h = Harness(f, "0.6", record=True)
    s = h.session()
    s.ehlo("mx.example.org")
    s.send_message()
    s.quit()
    sent = names(h.sent)
    reports, phases = f.registrations()
    assert {n for k, n in sent if k == "filter"} == {"ehlo"}
    assert {n for k, n in sent if k == "report"} <= {e for _, e in reports}
    assert ("report", "protocol-client") not in sent  # not registered


# -- decisions, as the client sees them ------------------------------------------


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_reject_helo_then_try_again(dialect):
    h = Harness(helo_policy(), dialect)
    s = h.session(src="192.0.2.1", rdns="mx.example.org")

    step = s.ehlo("localhost")
    assert step.decision == "reject"
    assert step.decision.code == 550 and step.decision.text == "5.7.1 bad HELO"
    assert step.reply == "550 5.7.1 bad HELO"
    assert s.state.helo is None  # smtpd sent no link-identify

    step = s.ehlo("mx.example.org")
    assert step.decision == "proceed" and step.ok
    assert step.replies[0].startswith("250-mx.test Hello mx.example.org [192.0.2.1]")
    assert s.state.helo == "mx.example.org"

    assert s.quit().reply == "221 2.0.0 Bye"
    assert s.closed and h.findings == []


def test_junk_at_ehlo_puts_x_spam_on_every_message_of_the_session():
    h = Harness(helo_policy())
    s = h.session()
    assert s.ehlo("spam.example.org").decision == "junk"
    first = s.send_message("a@example.org", ["b@example.net"])
    second = s.send_message("a@example.org", ["b@example.net"])
    for msg in (first, second):
        assert msg.accepted and msg.junk
        assert msg.lines[0] == b"X-Spam: Yes"
        assert msg.lines[1].startswith(b"Received: from spam.example.org")
        assert msg.headers["X-Spam"] == "Yes"


def test_reject_at_rcpt_is_a_permfail_and_the_message_goes_to_the_rest():
    f = Filter("rcpt-policy")
    seen = []

    @f.on("rcpt-to")
    def rcpt(session, address):
        if address.startswith("nobody@"):
            return reject(550, "5.1.1 no such user")
        if address.startswith("later@"):
            return reject(451, "4.7.1 try later")
        return None

    @f.on_report("tx-rcpt")
    def tx_rcpt(session, rep):
        seen.append((rep.params.result, rep.params.address))

    h = Harness(f)
    s = h.session()
    msg = s.send_message("a@example.org", ["nobody@example.net", "later@example.net", "ok@example.net"])
    assert [r.decision.kind for r in msg.rcpts] == ["reject", "reject", "proceed"]
    assert [r.reply[:3] for r in msg.rcpts] == ["550", "451", "250"]
    assert seen == [("permfail", "nobody@example.net"), ("tempfail", "later@example.net"), ("ok", "ok@example.net")]
    assert msg.accepted
    assert b"\tfor <ok@example.net>;" in msg.lines  # smtpd's Received names a single recipient


def test_no_accepted_recipient_means_no_data():
    f = Filter("deny-all")
    f.on("rcpt-to")(lambda s, a: reject(550, "5.7.1 no"))
    f.on("data")(lambda s: pytest.fail("DATA must not be filtered without a recipient"))
    s = Harness(f).session()
    msg = s.send_message("a@example.org", ["b@example.net"])
    assert msg.data.reply == "503 5.5.4 Invalid command arguments: No recipient specified"
    assert not msg.accepted and msg.decision == "reject"


def test_disconnect_at_mail_from_ends_the_session():
    f = Filter("bouncer")
    events = []
    f.on("mail-from")(lambda s, a: disconnect(550, "5.7.1 go away") if a.endswith("@spam.example") else None)
    f.on_report("link-disconnect", "tx-rollback", "tx-begin")(lambda s, r: events.append(r.event))

    h = Harness(f)
    s = h.session()
    msg = s.send_message("x@spam.example", ["b@example.net"])
    assert msg.mail.decision == "disconnect" and msg.mail.reply == "550 5.7.1 go away"
    assert msg.closed and s.closed and not msg.accepted
    assert msg.rcpts == []  # smtpd dropped the client: nothing more was sent
    assert events == ["link-disconnect"]  # no transaction was open
    assert s.rcpt_to("b@example.net").closed  # the client cannot go on


def test_421_reject_disconnects_and_rolls_back():
    f = Filter("overload")
    f.on("rcpt-to")(lambda s, a: reject(421, "4.3.2 too busy"))
    events = []
    f.on_report("tx-rollback", "tx-reset", "link-disconnect")(lambda s, r: events.append(r.event))
    s = Harness(f).session()
    msg = s.send_message("a@example.org", ["b@example.net"])
    assert msg.rcpts[0].reply == "421 4.3.2 too busy"
    assert s.closed
    assert events == ["tx-rollback", "tx-reset", "link-disconnect"]


def test_reject_at_commit_rolls_the_transaction_back():
    f = Filter("content")

    @f.on_message
    def scan(session, msg):
        if any(b"GTUBE" in line for line in msg.body):
            return reject(550, "5.7.1 spam")
        msg.headers.add("X-Scanned", "clean")
        return None

    results = []
    f.on_report("tx-data", "tx-rollback", "tx-commit")(lambda s, r: results.append(r.event + ":" + getattr(r.params, "result", "")))
    h = Harness(f)
    s = h.session()
    spam = s.send_message("a@example.org", ["b@example.net"], body=b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD\n")
    assert spam.commit.decision == "reject" and spam.reply == "550 5.7.1 spam"
    assert not spam.accepted
    ham = s.send_message("a@example.org", ["b@example.net"], body=b"hello\n")
    assert ham.accepted and ham.headers["X-Scanned"] == "clean"
    assert ham.headers_added() == ["X-Scanned: clean"]
    assert results == ["tx-data:ok", "tx-data:permfail", "tx-rollback:", "tx-data:ok", "tx-commit:"]


def test_rewrite_mail_from_keeps_the_original_in_tx_mail():
    f = Filter("rewriter")
    f.on("mail-from")(lambda s, a: rewrite("<bounces@example.org>"))
    seen = []
    f.on_report("tx-mail", "filter-response")(lambda s, r: seen.append(r.params))
    s = Harness(f).session()
    msg = s.send_message("user@example.org", ["b@example.net"])
    assert msg.mail.decision == "rewrite|<bounces@example.org>"
    assert msg.accepted
    tx_mail = [x for x in seen if hasattr(x, "address")]
    assert tx_mail[0].address == "user@example.org"  # issue #1259: reports show the original


def test_data_line_handler_sees_unstuffed_lines_and_output_is_restuffed():
    f = Filter("upper")
    got = []

    @f.on_data_line
    def line(session, data):
        got.append(data)
        return data.upper() if not data.startswith(b".") else None

    s = Harness(f).session()
    msg = s.send_message("a@example.org", ["b@example.net"], body=b".hidden\n..two\nplain\n")
    assert b".hidden" in got and b"..two" in got  # the handler sees content
    assert [b"..hidden", b"...two", b"PLAIN"] == msg.output_lines[-3:]  # the wire is stuffed
    assert msg.body.endswith(b".hidden\r\n..two\r\nPLAIN\r\n")


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_link_auth_and_tx_fields_parse_in_every_dialect(dialect):
    # The field order of link-auth (0.7) and tx-mail/tx-rcpt (0.6) moved; a
    # '|' in the username or address must still come through whole.
    s = Harness(Filter("plain", track="all"), dialect).session()  # no handler: track="all" keeps the state
    s.ehlo("client.example.org")
    s.starttls()
    s.ehlo("client.example.org")
    assert s.auth("VBA|spil|x", "pw").reply == "235 2.0.0 Authentication succeeded"
    assert s.state.auth_user == "VBA|spil|x" and s.state.authenticated
    assert s.state.tls == "TLSv1.3:TLS_AES_256_GCM_SHA384:256"
    s.mail_from("a|b@example.org")
    s.rcpt_to("c|d@example.net")
    assert s.state.tx.mail_from == "a|b@example.org"
    assert s.state.tx.accepted_rcpts == ["c|d@example.net"]


def test_auth_phase_gets_the_credentials():
    f = Filter("auth")
    args = []
    f.on("auth")(lambda s, arg: args.append(arg))
    s = Harness(f).session()
    s.ehlo()
    s.auth("alice", "wonderland")
    assert args == ["PLAIN AGFsaWNlAHdvbmRlcmxhbmQ="]


def test_local_and_ipv6_sessions():
    f = Filter("where", track=["src", "rdns"])  # read from outside, below
    seen = {}
    f.on("connect")(lambda s, rdns, src: seen.setdefault(s.id, (rdns, src.family, src.host)))
    h = Harness(f)
    local = h.session(src="local")
    v6 = h.session(src="2001:db8::5", rdns="<unknown>", fcrdns="fail")
    assert seen[local.id] == ("localhost", "local", "")
    assert seen[v6.id] == ("<unknown>", "inet6", "2001:db8::5")
    assert v6.state.src.port is not None and not v6.state.has_rdns


def test_long_lines_are_dropped_and_the_message_refused_at_commit():
    f = Filter("pass")
    f.on_data_line(lambda s, line: None)
    h = Harness(f, "0.7")
    s = h.session()
    fits = s.send_message("a@example.org", ["b@example.net"], body=[b"x" * 65400])
    assert fits.accepted and fits.lines[-1] == b"x" * 65400
    too_long = s.send_message("a@example.org", ["b@example.net"], body=[b"y" * 65533])
    assert too_long.commit.decision == "reject" and too_long.reply.startswith("552 5.3.4")
    assert any("dropping a 65533-byte message line" in line for line in h.stderr)
    assert h.findings == []


def test_client_leaving_mid_data_gets_no_final_dot_and_no_answer_needed():
    f = Filter("m")
    f.on_message(lambda s, m: None)
    h = Harness(f, record=True)
    s = h.session()
    msg = s.send_message("a@example.org", ["b@example.net"], body=b"1\n2\n3\n", abort_after=3)
    assert msg.closed and not msg.accepted and msg.commit is None
    data_lines = [x for x in h.sent if b"|data-line|" in x]
    assert not data_lines[-1].endswith(b"|.")
    assert h.sent[-1].split(b"|")[4] == b"link-disconnect"
    assert h.findings == []


def test_async_handlers_and_interleaved_sessions():
    f = Filter("slow")

    @f.on("connect")
    async def slow(session, rdns, src):
        await asyncio.sleep(0.02 if src.host.endswith(".1") else 0.001)
        return junk() if src.host.endswith(".3") else proceed()

    h = Harness(f)
    scripts = [
        [Connect(f"198.51.100.{i}"), Ehlo("c.example"), Message("a@example.org", ("b@example.net",), message_lines("a@example.org", ["b@example.net"], b"hi\n")), Quit()]
        for i in (1, 2, 3)
    ]
    sessions = h.run(*scripts)
    assert [s.messages[0].accepted for s in sessions] == [True, True, True]
    assert [s.messages[0].junk for s in sessions] == [False, False, True]
    # the slow first session finished after the others started: interleaved
    starts = [h.transcript.index(next(t for t in h.transcript if t.strip().startswith(f"s{i} C: connect"))) for i in (1, 2, 3)]
    ends = [max(j for j, t in enumerate(h.transcript) if t.strip().startswith(f"s{i} S: 221")) for i in (1, 2, 3)]
    assert starts[1] < ends[0] and starts[2] < ends[0]


def test_feed_raw_lines_and_decisions_in():
    h = Harness(helo_policy(), "0.4")
    out = h.feed(
        b"report|0.4|1.0|smtp-in|link-connect|00000000000000aa|rdns|pass|192.0.2.1:1|192.0.2.2:25",
        b"filter|0.4|1.1|smtp-in|ehlo|00000000000000aa|00000000000000bb|localhost",
    )
    assert out == [b"filter-result|00000000000000bb|00000000000000aa|reject|550 5.7.1 bad HELO"]  # 0.4: token first
    assert decisions_in(out, "0.4") == [FilterDecision("reject", "550 5.7.1 bad HELO")]


def test_filter_errors_become_the_failure_policy_not_a_hang():
    f = Filter("buggy", on_error="fail-closed", deadline=0.05)

    @f.on("mail-from")
    def boom(session, address):
        raise RuntimeError("bug")

    @f.on("rcpt-to")
    async def stuck(session, address):
        await asyncio.sleep(10)

    h = Harness(f)
    s = h.session()
    s.ehlo()
    assert s.mail_from("a@example.org").reply == "451 4.7.0 Temporary filter failure, try again later"
    f2 = Filter("buggy2", deadline=0.05)
    f2.on("rcpt-to")(stuck)
    s2 = Harness(f2).session()
    s2.ehlo()
    s2.mail_from("a@example.org")
    assert s2.rcpt_to("b@example.net").decision == "proceed"  # fail-open after the deadline


def test_strict_harness_fails_at_the_step_smtpd_would_die_on():
    # A subprocess filter that junks at commit: the harness raises right at
    # the message, with smtpd's log line.
    h = SubprocessHarness(f"{sys.executable} {ROOT / 'tests' / 'broken_filters' / 'junk_at_commit.py'}", hang_timeout=2)
    s = h.session()
    s.ehlo()
    with pytest.raises(FilterCheckFailed, match="filter-reponse junk after DATA"):
        s.send_message()
    assert h.dead is not None and h.dead.severity == FATAL
    with pytest.raises(RuntimeError, match="smtpd would have exited"):
        s.quit()
    h.close()


def test_non_strict_harness_collects_findings():
    h = SubprocessHarness(
        f"{sys.executable} {ROOT / 'tests' / 'broken_filters' / 'unanswered.py'}",
        hang_timeout=0.3,
        fail_on=(),
    )
    s = h.session()
    s.ehlo()
    s.mail_from("a@example.org")
    step = s.rcpt_to("b@example.net")
    assert step.hung and step.closed and s.closed
    assert [f.rule for f in h.findings_of(HANG)] == ["unanswered"]
    h.close()
    assert h.findings_of(WARN) == []


def test_subprocess_harness_runs_an_example_like_smtpd():
    with SubprocessHarness(f"{sys.executable} {ROOT / 'examples' / 'add_header.py'} --header 'X-Test: 1'", "0.7", env_extra={"PYTHONPATH": str(ROOT)}) as h:
        s = h.session()
        msg = s.send_message("a@example.org", ["b@example.net"], headers={"Subject": "hi", "X-Test": "forged"})
        assert msg.accepted
        assert msg.headers.get_all("X-Test") == ["1"]  # the forged one is gone
        assert msg.headers_removed() == ["X-Test: forged"]
        s.quit()
    assert h.transport.exited_on_eof is True and h.transport.exit_status == 0


# -- EOF with requests in flight ---------------------------------------------------------


def test_eof_in_flight_the_sdk_answers_what_it_read_before_exiting():
    f = Filter("slow-junk")

    @f.on("connect")
    async def slow(session, rdns, src):
        await asyncio.sleep(0.1)
        return junk()

    @f.on_headers
    def tag(session, headers):
        headers.add("X-Seen", "1")

    h = Harness(f)
    sessions = h.eof_in_flight(
        [Connect("192.0.2.1"), Ehlo("a.example"), Quit()],
        [Connect("192.0.2.2"), Ehlo("b.example"), Quit()],
    )
    assert len(sessions) == 2 and h.findings_of(HANG) == []
    assert sum("connect -> junk (after EOF)" in line for line in h.transcript) == 2


def test_eof_in_flight_a_whole_message_read_is_answered_in_full():
    f = Filter("tagger")

    @f.on_message
    async def tag(session, msg):
        await asyncio.sleep(0.05)
        msg.headers.add("X-Seen", "1")

    h = Harness(f, record=True)
    body = message_lines("a@example.org", ["b@example.net"], b"hello\n")
    h.eof_in_flight([Connect(), Ehlo("a.example"), Message("a@example.org", ("b@example.net",), body), Quit()])
    assert h.findings_of(HANG) == []
    sent = [line.split(b"|", 7)[7] for line in h.sent if line.split(b"|", 5)[4:5] == [b"data-line"]]
    out = [line.split(b"|", 3)[3] for line in h.received if line.startswith(b"filter-dataline|")]
    assert sent[-1] == b"." and out == [b"X-Seen: 1", *sent]


def test_eof_in_flight_a_filter_that_drops_answers_at_eof_is_caught():
    h = SubprocessHarness(f"{sys.executable} {ROOT / 'tests' / 'broken_filters' / 'drops_at_eof.py'}", fail_on=())
    h.eof_in_flight([Connect("192.0.2.1"), Ehlo("a.example"), Quit()])
    dropped = h.findings_of(HANG)
    assert [f.rule for f in dropped] == ["dropped-at-eof"]
    assert "without writing the answer to the connect request" in dropped[0].message
    assert h.transport.exit_status == 0
