"""The runtime as smtpd sees it: one answer per request, whatever the handler
does; nothing fatal written; sessions forgotten at disconnect."""

import asyncio

import pytest

from enginekit import Driven
from smtpd_filter_sdk import Filter, junk, proceed, reject, rewrite
from smtpd_filter_sdk.protocol import is_fatal_output

SID, TOK = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
TS = "1795218811.493169"


def connect_lines(d: Driven, sid=SID, src="192.0.2.1", rdns="mx.example.org"):
    w = d.wire
    return [
        w.report(TS, "link-connect", sid, rdns, "pass", f"{src}:4242", "127.0.0.1:25"),
        w.connect(TS, sid, TOK, rdns, src),
    ]


def data_lines(d: Driven, payloads, sid=SID, token=TOK):
    return [d.wire.request(TS, "data-line", sid, token, p) for p in payloads]


# -- handshake and registration ------------------------------------------------------


def test_registration_follows_the_handlers():
    f = Filter("t")
    f.on("helo", "ehlo")(lambda s, name: None)
    f.on_report("protocol-client")(lambda s, r: None)
    d = Driven(f)
    reg = d.registration
    assert reg[-1] == b"register|ready"
    assert b"register|filter|smtp-in|helo" in reg and b"register|filter|smtp-in|ehlo" in reg
    assert b"register|report|smtp-in|protocol-client" in reg
    # the handlers read no session field: only link-disconnect (sessions are freed there)
    assert [x for x in reg if x.startswith(b"register|report|")] == [
        b"register|report|smtp-in|link-disconnect",
        b"register|report|smtp-in|protocol-client",
    ]
    f.on("mail-from")(lambda s, address: None if s.src else None)  # reads session.src
    assert b"register|report|smtp-in|link-connect" in Driven(f).registration
    assert b"register|filter|smtp-in|data-line" not in reg and b"register|filter|smtp-in|commit" not in reg
    assert len(reg) == len(set(reg))


def test_data_handlers_register_data_line_and_commit():
    f = Filter("t")
    f.on_data_line(lambda s, line: None)
    reg = Driven(f).registration
    assert b"register|filter|smtp-in|data-line" in reg and b"register|filter|smtp-in|commit" in reg


def test_smtp_out_reports_need_the_subsystem_announced():
    f = Filter("t")
    f.on_report("link-connect", subsystem="smtp-out")(lambda s, r: None)
    assert b"register|report|smtp-out|link-connect" not in Driven(f, dialect="0.4").registration
    d = Driven(f, handshake=False)
    d.wire = d.wire.__class__("0.6", smtp_out=True)
    assert b"register|report|smtp-out|link-connect" in d.send(*d.wire.handshake())


def test_nothing_is_written_before_config_ready():
    d = Driven(Filter("t"), handshake=False)
    assert d.send(b"config|smtpd-version|6.8.0p2", b"config|unknown|x") == []
    assert d.send(b"config|ready")[-1] == b"register|ready"


# -- answers -------------------------------------------------------------------------


@pytest.mark.parametrize("dialect, first", [("0.4", TOK), ("0.6", SID), ("0.7", SID), ("0.7/7.6", SID)])
def test_answer_id_order_per_version(dialect, first):
    f = Filter("t")
    f.on("helo")(lambda s, name: reject(550, "5.7.1 no"))
    d = Driven(f, dialect)
    out = d.send(d.wire.request(TS, "helo", SID, TOK, "localhost"))
    assert out == [b"filter-result|%s|%s|reject|550 5.7.1 no" % (first.encode(), (TOK if first == SID else SID).encode())]


def test_handler_arguments_per_phase_and_session_state():
    seen = {}
    f = Filter("t")

    @f.on("connect")
    def on_connect(session, rdns, src):
        seen["connect"] = (rdns, src.host, session.fcrdns)

    @f.on("mail-from", "rcpt-to")
    def on_addr(session, address):
        seen.setdefault("addr", []).append((address, session.helo))

    @f.on("data", "quit")
    def on_plain(session):
        seen.setdefault("plain", []).append(session.tx.mail_from if session.tx else None)

    d = Driven(f)
    w = d.wire
    out = d.send(
        *connect_lines(d),
        w.report(TS, "link-identify", SID, "EHLO", "client.example"),
        w.request(TS, "mail-from", SID, TOK, "a|b@example.org"),
        w.report(TS, "tx-begin", SID, "0a0b0c0d"),
        w.tx_address(TS, "tx-mail", SID, "0a0b0c0d", "ok", "a|b@example.org"),
        w.request(TS, "rcpt-to", SID, TOK, "c@example.org"),
        w.request(TS, "data", SID, TOK),
        w.request(TS, "quit", SID, TOK),
    )
    assert len(out) == 5 and all(line.endswith(b"|proceed") for line in out)
    assert seen["connect"] == ("mx.example.org", "192.0.2.1", "pass")
    assert seen["addr"] == [("a|b@example.org", "client.example"), ("c@example.org", "client.example")]
    assert seen["plain"] == ["a|b@example.org", "a|b@example.org"]


@pytest.mark.parametrize(
    "policy, expected",
    [("fail-open", b"proceed"), ("fail-closed", b"reject|451 4.7.0 Temporary filter failure, try again later")],
)
@pytest.mark.parametrize(
    "bad",
    [
        lambda s, a: 1 / 0,  # raises
        lambda s, a: "reject",  # garbage
        lambda s, a: junk() if False else rewrite("x\ty") and 42,  # garbage
    ],
)
def test_broken_sync_handler_gets_the_failure_policy(policy, expected, bad, capfd):
    f = Filter("t", on_error=policy)
    f.on("rcpt-to")(bad)
    d = Driven(f)
    out = d.send(d.wire.request(TS, "rcpt-to", SID, TOK, "x@example.org"))
    assert out == [b"filter-result|%s|%s|%s" % (SID.encode(), TOK.encode(), expected)]
    assert SID in capfd.readouterr().err


def test_refused_decisions_never_reach_smtpd(capfd):
    f = Filter("t")
    f.on("commit")(lambda s: junk())  # junk at commit kills smtpd
    f.on("data")(lambda s: rewrite("x"))
    f.on("connect")(lambda s, rdns, src: reject(450, "4.7.1 later"))  # 503 loop
    d = Driven(f)
    out = d.send(
        d.wire.request(TS, "commit", SID, TOK),
        d.wire.request(TS, "data", SID, TOK),
        d.wire.connect(TS, SID, TOK, "h", "1.2.3.4"),
    )
    assert [line.rsplit(b"|", 1)[1] for line in out] == [b"proceed"] * 3
    err = capfd.readouterr().err
    assert "junk refused" in err and "rewrite refused" in err and "503 loop" in err


def test_failure_at_connect_fail_closed_disconnects():
    f = Filter("t", on_error="fail-closed")
    f.on("connect")(lambda s, rdns, src: 1 / 0)
    d = Driven(f)
    out = d.send(d.wire.connect(TS, SID, TOK, "h", "1.2.3.4"))
    assert out[0].split(b"|")[3:5] == [b"disconnect", b"421 4.7.0 Temporary filter failure, try again later"]


def test_async_handlers_answer_out_of_order_and_never_block_others():
    order = []
    f = Filter("t", deadline=2)

    @f.on("helo")
    async def slow(session, name):
        await asyncio.sleep(0.2 if name == "slow" else 0)
        order.append(name)
        return reject(550, "5.7.1 " + name)

    d = Driven(f)
    out = d.send(
        d.wire.request(TS, "helo", "s1", TOK, "slow"),
        d.wire.request(TS, "helo", "s2", TOK, "fast"),
    )
    assert order == ["fast", "slow"]
    assert out == [
        b"filter-result|s2|" + TOK.encode() + b"|reject|550 5.7.1 fast",
        b"filter-result|s1|" + TOK.encode() + b"|reject|550 5.7.1 slow",
    ]


def test_async_handler_past_its_deadline_gets_the_policy(capfd):
    f = Filter("t", deadline=0.05, on_error="fail-closed")

    @f.on("mail-from")
    async def hang(session, address):
        await asyncio.sleep(60)

    d = Driven(f)
    out = d.send(d.wire.request(TS, "mail-from", SID, TOK, "a@b"))
    assert out == [b"filter-result|%s|%s|reject|451 4.7.0 Temporary filter failure, try again later" % (SID.encode(), TOK.encode())]
    assert "ran past 0.05s" in capfd.readouterr().err


def test_a_request_whose_session_disconnects_first_is_still_answered_and_logged(capfd):
    # smtpd ignores an answer for a session it closed; a driver that sent the
    # session's later lines ahead of the answer still gets one per request.
    f = Filter("t", deadline=5)

    @f.on("connect")
    async def slow(session, rdns, src):
        await asyncio.sleep(0.05)
        return junk()

    d = Driven(f)
    d.engine.feed(b"\n".join(connect_lines(d)) + b"\n")
    out = d.send(d.wire.report(TS, "link-disconnect", SID))
    assert out == [b"filter-result|%s|%s|junk" % (SID.encode(), TOK.encode())]
    assert not d.engine.busy and len(d.engine.sessions) == 0
    assert f"{SID} connect: answering junk after the session disconnected (smtpd ignores it)" in capfd.readouterr().err


def test_a_hung_request_of_a_disconnected_session_gets_the_policy_after_its_deadline(capfd):
    f = Filter("t", deadline=0.1, on_error="fail-closed")

    @f.on("helo")
    async def hang(session, name):
        await asyncio.sleep(3600)

    d = Driven(f)
    out = d.send(d.wire.request(TS, "helo", SID, TOK, "x"), d.wire.report(TS, "link-disconnect", SID))
    assert out == [b"filter-result|%s|%s|reject|451 4.7.0 Temporary filter failure, try again later" % (SID.encode(), TOK.encode())]
    err = capfd.readouterr().err
    assert "helo: handler ran past 0.1s; answering reject (fail-closed)" in err
    assert "helo: answering reject after the session disconnected" in err


def test_answer_exactly_once_even_if_a_chain_has_several_handlers():
    f = Filter("t")
    calls = []
    f.on("rcpt-to")(lambda s, a: calls.append(1))
    f.on("rcpt-to")(lambda s, a: reject(550, "5.1.1 no such user"))
    f.on("rcpt-to")(lambda s, a: calls.append(3))
    d = Driven(f)
    out = d.send(d.wire.request(TS, "rcpt-to", SID, TOK, "x@y"))
    assert len(out) == 1 and out[0].endswith(b"reject|550 5.1.1 no such user") and calls == [1]


# -- reports and sessions ---------------------------------------------------------------


def test_sessions_are_created_lazily_and_freed_at_disconnect():
    f = Filter("t")
    d = Driven(f)
    d.send(d.wire.report(TS, "protocol-client", "s1", "NOOP"))  # not tracked, still names s1
    d.send(d.wire.report(TS, "tx-reset", "s2", "0a0b0c0d"))
    assert len(d.engine.sessions) == 2
    d.send(d.wire.report(TS, "link-disconnect", "s1"), d.wire.report(TS, "link-disconnect", "s2"))
    assert len(d.engine.sessions) == 0


def test_session_state_from_reports():
    f = Filter("t")
    d = Driven(f, "0.7")
    w = d.wire
    d.send(
        w.report(TS, "link-connect", SID, "<unknown>", "fail", "[2001:db8::1]:2525", "[::1]:25"),
        w.report(TS, "link-greeting", SID, "mx.example.org"),
        w.report(TS, "link-identify", SID, "EHLO", "client"),
        w.report(TS, "link-tls", SID, "TLSv1.3:TLS_AES_256_GCM_SHA384:256"),
        w.link_auth(TS, SID, "us|er", "pass"),
        w.report(TS, "filter-response", SID, "connected", "junk"),
        w.report(TS, "tx-begin", SID, "0a0b0c0d"),
        w.tx_address(TS, "tx-mail", SID, "0a0b0c0d", "ok", "a@b"),
        w.tx_address(TS, "tx-rcpt", SID, "0a0b0c0d", "ok", "c@d"),
        w.tx_address(TS, "tx-rcpt", SID, "0a0b0c0d", "permfail", "e@f"),
        w.report(TS, "tx-envelope", SID, "0a0b0c0d", "0a0b0c0d00000001"),
    )
    s = d.engine.sessions.peek(SID)
    assert (s.rdns, s.has_rdns, s.fcrdns, s.src.host) == ("<unknown>", False, "fail", "2001:db8::1")
    assert (s.greeting, s.helo_method, s.helo, s.tls) == ("mx.example.org", "EHLO", "client", "TLSv1.3:TLS_AES_256_GCM_SHA384:256")
    assert (s.auth_user, s.authenticated, s.junk) == ("us|er", True, True)
    assert s.tx.mail_from == "a@b" and s.tx.accepted_rcpts == ["c@d"] and s.tx.envelopes == ["0a0b0c0d00000001"]
    d.send(w.report(TS, "tx-reset", SID, "0a0b0c0d"))
    assert s.tx is None and s.junk


def test_report_handlers_sync_and_async_and_failures_do_not_matter(capfd):
    got = []
    f = Filter("t")

    @f.on_report("protocol-client")
    def sync(session, report):
        got.append(report.params.command)
        raise RuntimeError("boom")

    @f.on_report("protocol-client")
    async def later(session, report):
        got.append("async " + report.params.command)

    d = Driven(f)
    assert d.send(d.wire.report(TS, "protocol-client", SID, "EHLO x")) == []
    assert got == ["EHLO x", "async EHLO x"]
    assert "boom" in capfd.readouterr().err


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"garbage",
        b"",
        b"filter|0.6|1|smtp-in|bogus|s|t|",
        b"report|0.6|1|smtp-in|tx-mail|s|only",
        b"filter|0.6|1|smtp-in|helo",
        b"\xff\xfe|\x00",
    ],
)
def test_bad_lines_are_logged_and_skipped(line, capfd):
    f = Filter("t")
    f.on("helo")(lambda s, n: None)
    d = Driven(f)
    assert d.send(line) == []
    # and the next good request is still answered
    assert d.send(d.wire.request(TS, "helo", SID, TOK, "ok")) == [b"filter-result|%s|%s|proceed" % (SID.encode(), TOK.encode())]
    assert "ignoring" in capfd.readouterr().err


def test_auth_credentials_never_reach_the_log(capfd):
    f = Filter("t")
    f.on("auth")(lambda s, arg: 1 / 0)
    d = Driven(f)
    d.send(d.wire.request(TS, "auth", SID, TOK, "PLAIN AHJpZwB3cm9uZ3Bhc3M="))
    d.send(b"filter|0.6|1|smtp-in|auth|s|t")  # malformed: logged
    err = capfd.readouterr().err
    assert "AHJpZwB3cm9uZ3Bhc3M" not in err and "auth" in err


# -- data lines -----------------------------------------------------------------------------


def test_passthrough_echoes_dot_stuffed_lines_and_one_final_dot():
    f = Filter("t")
    f.on_data_line(lambda s, line: None)
    d = Driven(f)
    out = d.send(*data_lines(d, [b"Subject: x", b"", b"..dot", b"a|b", b"\xff8bit", b"."]))
    assert [line.split(b"|", 3)[3] for line in out] == [b"Subject: x", b"", b"..dot", b"a|b", b"\xff8bit", b"."]


def test_data_line_handler_sees_unstuffed_lines_and_may_replace_or_drop():
    f = Filter("t")

    @f.on_data_line
    def transform(session, line):
        if line == b".secret":
            return []
        if line == b"x":
            return [b".one", b"two"]
        return line.upper() if line.startswith(b"sub") else None

    d = Driven(f)
    out = d.send(*data_lines(d, [b"subject: a", b"..secret", b"x", b"..keep", b"."]))
    assert [line.split(b"|", 3)[3] for line in out] == [b"SUBJECT: A", b"..one", b"two", b"..keep", b"."]


def test_on_headers_buffers_only_the_header_block():
    f = Filter("t")

    @f.on_headers
    def tag(session, headers):
        headers.remove("X-Spam-Score")
        headers.add("X-Checked", "yes")

    d = Driven(f)
    first = d.send(*data_lines(d, [b"Received: x", b"X-Spam-Score: -100", b"Subject: s"]))
    assert first == []  # still in the header block
    out = d.send(*data_lines(d, [b"", b"body", b".."]))
    assert [line.split(b"|", 3)[3] for line in out] == [b"X-Checked: yes", b"Received: x", b"Subject: s", b"", b"body", b".."]
    assert d.send(*data_lines(d, [b"."]))[0].endswith(b"|.")


def test_on_message_edits_and_decides_at_commit():
    f = Filter("t")

    @f.on_message
    async def scan(session, msg):
        await asyncio.sleep(0)
        msg.headers.add("X-Scanned", "1")
        msg.body.append(b".sig")
        if b"GTUBE" in b"".join(msg.body):
            return reject(550, "5.7.1 spam")

    d = Driven(f)
    out = d.send(*data_lines(d, [b"Subject: s", b"", b"hello", b"."]))
    assert [line.split(b"|", 3)[3] for line in out] == [b"X-Scanned: 1", b"Subject: s", b"", b"hello", b"..sig", b"."]
    assert d.send(d.wire.request(TS, "commit", SID, TOK))[0].endswith(b"|proceed")
    d.send(d.wire.report(TS, "tx-reset", SID, "0a0b0c0d"))
    out = d.send(*data_lines(d, [b"Subject: s", b"", b"GTUBE", b"."]))
    assert out[-1].endswith(b"|.")
    assert d.send(d.wire.request(TS, "commit", SID, TOK))[0].endswith(b"|reject|550 5.7.1 spam")


@pytest.mark.parametrize("policy", ["fail-open", "fail-closed"])
def test_failing_message_handler_passes_the_message_unchanged(policy):
    f = Filter("t", on_error=policy, deadline=0.05)

    @f.on_message
    async def scan(session, msg):
        msg.headers.add("X-Half", "done")
        await asyncio.sleep(10)

    d = Driven(f)
    out = d.send(*data_lines(d, [b"Subject: s", b"", b"..x", b"."]))
    assert [line.split(b"|", 3)[3] for line in out] == [b"Subject: s", b"", b"..x", b"."]
    commit = d.send(d.wire.request(TS, "commit", SID, TOK))[0]
    assert commit.endswith(b"|proceed" if policy == "fail-open" else b"|reject|451 4.7.0 Temporary filter failure, try again later")


@pytest.mark.parametrize("dialect", ["0.6", "0.7"])
@pytest.mark.parametrize("size, refused", [(65485, False), (65486, True), (65500, True), (65533, True)])
def test_lines_too_long_to_echo_are_dropped_and_the_message_refused(dialect, size, refused, capfd):
    f = Filter("t")
    f.on_data_line(lambda s, line: None)
    d = Driven(f, dialect)
    out = d.send(*data_lines(d, [b"Subject: s", b"", b"x" * size, b"after", b"."]))
    assert all(len(line) <= 65535 and is_fatal_output(line) is None for line in out)
    assert out[-1].endswith(b"|.") and sum(line.endswith(b"|.") for line in out) == 1
    assert any(len(line) > 60000 for line in out) is not refused
    commit = d.send(d.wire.request(TS, "commit", SID, TOK))[0]
    assert commit.endswith(b"|reject|552 5.3.4 Message has a line too long to pass through the filter") is refused
    err = capfd.readouterr().err
    if dialect == "0.6" and not refused:
        assert "cut at 2047 bytes" in err


def test_legacy_long_lines_can_be_refused():
    f = Filter("t", legacy_long_lines="reject")
    f.on_data_line(lambda s, line: None)
    d = Driven(f, "0.6")
    d.send(*data_lines(d, [b"x" * 3000, b"."]))
    assert d.send(d.wire.request(TS, "commit", SID, TOK))[0].split(b"|")[3:5] == [
        b"reject",
        b"552 5.3.4 Message has a line longer than this smtpd can take from filters",
    ]


def test_long_line_in_buffered_mode_is_refused_without_calling_the_handler():
    calls = []
    f = Filter("t")
    f.on_message(lambda s, m: calls.append(m))
    d = Driven(f, "0.7")
    out = d.send(*data_lines(d, [b"Subject: s", b"", b"y" * 70000, b"."]))
    assert calls == [] and out[-1].endswith(b"|.") and max(map(len, out)) < 100
    assert b"reject|552" in d.send(d.wire.request(TS, "commit", SID, TOK))[0]


def test_long_lines_split_across_reads_are_reassembled():
    f = Filter("t")
    f.on_data_line(lambda s, line: None)
    d = Driven(f, "0.7")
    line = d.wire.request(TS, "data-line", SID, TOK, b"z" * 60000) + b"\n"
    out = []
    for i in range(0, len(line), 4096):
        out += d.feed(line[i : i + 4096])
    assert len(out) == 1 and out[0].endswith(b"z" * 60000)


def test_client_disconnect_mid_data_leaves_nothing_behind():
    f = Filter("t")
    f.on_message(lambda s, m: None)
    d = Driven(f)
    w = d.wire
    d.send(*data_lines(d, [b"Subject: s", b"", b"partial"]))
    out = d.send(
        w.report(TS, "tx-rollback", SID, "0a0b0c0d"),
        w.report(TS, "tx-reset", SID, "0a0b0c0d"),
        w.report(TS, "link-disconnect", SID),
    )
    assert out == [] and len(d.engine.sessions) == 0 and d.engine._streams == {}


def test_proceed_decision_is_the_same_object():
    assert proceed() is proceed()


def test_blocking_code_in_a_thread_does_not_hold_up_other_sessions():
    import time as _time

    from smtpd_filter_sdk import in_thread

    f = Filter("t", deadline=5)

    @f.on("helo")
    @in_thread
    def blocking(session, name):
        _time.sleep(0.3 if name == "slow" else 0)
        return reject(550, "5.7.1 " + name)

    d = Driven(f)
    out = d.send(d.wire.request(TS, "helo", "s1", TOK, "slow"), d.wire.request(TS, "helo", "s2", TOK, "fast"))
    assert [line.split(b"|")[1] for line in out] == [b"s2", b"s1"]


def test_config_handlers_see_the_handshake():
    seen = []
    f = Filter("t")
    f.on_config(seen.append)
    Driven(f, "0.7/7.6")
    assert seen[0].protocol == "0.7" and seen[0].admd == "mx.test" and seen[0].ready


@pytest.mark.parametrize(
    "make",
    [
        lambda: Filter("t", on_error="maybe"),
        lambda: Filter("t", deadline=0),
        lambda: Filter("t", legacy_long_lines="truncate"),
        lambda: Filter("t").on("data-line"),
        lambda: Filter("t").on("bogus"),
        lambda: Filter("t").on_report("link-reset"),
    ],
)
def test_filter_misconfiguration_fails_at_definition_time(make):
    with pytest.raises(ValueError):
        make()


def test_async_data_line_handler_is_refused():
    async def line(session, data):
        return None

    with pytest.raises(TypeError):
        Filter("t").on_data_line(line)


def test_a_request_with_usable_ids_but_a_broken_parameter_is_still_answered(capfd):
    f = Filter("t", on_error="fail-closed")
    f.on("connect")(lambda s, rdns, src: None)
    d = Driven(f)
    out = d.send(d.wire.request(TS, "connect", SID, TOK, "no-pipe-here"))
    assert out == [b"filter-result|%s|%s|disconnect|421 4.7.0 Temporary filter failure, try again later" % (SID.encode(), TOK.encode())]
    assert "unusable request" in capfd.readouterr().err


def test_a_plain_handler_may_return_an_awaitable_for_its_slow_path():
    cache = {"hit.example": reject(550, "5.7.1 cached")}

    async def slow(name):
        await asyncio.sleep(0.01)
        return None if name == "second.example" else reject(550, "5.7.1 looked up " + name)

    f = Filter("t", deadline=1)

    @f.on("helo")
    def helo(session, name):
        return cache.get(name) or slow(name)

    @f.on("helo")
    def second(session, name):  # the chain goes on after the awaited result
        return reject(550, "5.7.1 second") if name == "second.example" else None

    d = Driven(f)
    d.engine.feed(d.wire.request(TS, "helo", "s1", TOK, "hit.example") + b"\n")
    assert d.engine.out and not d.engine.busy  # answered inline: no task for a cache hit
    out = d.take() + d.send(
        d.wire.request(TS, "helo", "s2", TOK, "miss.example"),
        d.wire.request(TS, "helo", "s3", TOK, "second.example"),
    )
    assert [line.rsplit(b"|", 1)[1] for line in out] == [
        b"550 5.7.1 cached",
        b"550 5.7.1 looked up miss.example",
        b"550 5.7.1 second",
    ]


def test_a_decision_subclass_cannot_smuggle_another_wire(capfd):
    from smtpd_filter_sdk.responses import Proceed

    class Sneaky(Proceed):
        @property
        def wire(self):
            return b"junk"  # junk at commit would kill smtpd

    f = Filter("t")
    f.on("commit")(lambda s: Sneaky())
    d = Driven(f)
    assert d.send(d.wire.request(TS, "commit", SID, TOK))[0].endswith(b"|proceed")
    assert "not a decision" in capfd.readouterr().err
