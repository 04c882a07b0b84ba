"""py-filter-senderscore behind a real smtpd, named bare as users write it:

    filter "f1" proc-exec "py-filter-senderscore -blockBelow 10 -junkBelow 60 -scoreHeader
                           -allowlist FILE -timeout 1"

Each client connects from its own loopback address (127.0.0.N), and the
namespace's DNS server answers ``N.0.0.127.score.senderscore.com`` with the
score (or NXDOMAIN, 127.255.255.255, SERVFAIL, silence) that address is about.
"""

from __future__ import annotations

import time

import pytest

from e2e_bare import bare_smtpd_factory, filter_pids  # noqa: F401  (fixture)
from e2e_harness import DOMAIN, NsSMTP, default_zone, make_message, token

pytestmark = pytest.mark.e2e

FROM = "alice@client.e2e.test"
TO = f"bob@{DOMAIN}"
BLOCK = "550 your IP reputation is too low for this MX"
ZONE = "score.senderscore.com"

#: client address -> (DNS answer or behaviour, expected header value)
CLIENTS = {
    "127.0.0.1": ("127.0.4.77", "77"),  # the harness's own probes come from here
    "127.0.0.2": ("127.0.4.0", None),  # blocked at connect
    "127.0.0.3": ("127.0.4.50", "50"),  # junked
    "127.0.0.4": ("127.0.4.77", "77"),
    "127.0.0.5": ("127.0.4.100", "100"),
    "127.0.0.6": ("nxdomain", None),
    "127.0.0.7": ("127.255.255.255", None),  # unregistered resolver: NOT a score of 127
    "127.0.0.8": ("servfail", None),
    "127.0.0.9": ("drop", None),  # never answered
    "127.0.0.10": ("127.0.4.0", "100"),  # allowlisted
}


def qname(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + "." + ZONE


def zone():
    z = default_zone()
    for ip, (answer, _) in CLIENTS.items():
        if answer in ("nxdomain", "servfail", "drop"):
            z.set_behaviour(qname(ip), answer)
        else:
            z.add(qname(ip), "A", answer)
    return z


def client(server, src: str, **kw) -> NsSMTP:
    kw.setdefault("timeout", 30)
    if ":" in src:
        return NsSMTP(server.ns, "::1", 25, local_hostname="client.e2e.test", **kw)
    return NsSMTP(server.ns, "127.0.0.1", 25, local_hostname="client.e2e.test", source_address=(src, 0), **kw)


def send(server, src: str, tok: str, **msg_kw) -> None:
    with client(server, src) as c:
        assert c.ehlo("client.e2e.test")[0] == 250
        assert c.sendmail(FROM, [TO], make_message(tok, **msg_kw)) == {}


@pytest.fixture(scope="module")
def lists(e2e_runtime):
    d = e2e_runtime.new_dir("senderscore-lists")
    allow = d / "allowlist"
    allow.write_text("# e2e\n127.0.0.10/32   # a friend whose score is 0\n2001:db8::/32\n")
    allow.chmod(0o644)
    return d


@pytest.fixture(scope="module")
def server(bare_smtpd_factory, lists):
    cmd = f"py-filter-senderscore -blockBelow 10 -junkBelow 60 -scoreHeader -allowlist {lists / 'allowlist'} -timeout 1"
    return bare_smtpd_factory([cmd], zone=zone(), ipv6=True)


def test_the_filter_runs_under_its_bare_name_from_libexec(server):
    server.assert_alive()
    pids = filter_pids(server, "py-filter-senderscore")
    assert pids, "no py-filter-senderscore process in the namespace"
    assert server.log_lines(r"f1: starting \(Resolver\(127\.0\.0\.1:53")  # resolv.conf of the namespace


@pytest.mark.parametrize("src", ["127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.10"])
def test_scores_and_non_scores(server, src):
    tok = token()
    send(server, src, tok)
    m = server.maildir.wait_for(tok)
    want = CLIENTS[src][1]
    assert m.headers("X-SenderScore") == ([want] if want else [])
    assert m.headers("X-Spam") == []
    ours = [ln for ln in m.header_lines() if not ln.startswith((b"Return-Path:", b"Delivered-To:"))]
    assert ours[0].startswith(b"X-SenderScore: " if want else b"Received: ")  # on top, as the Go filter
    decision = server.wait_log(rf"f1: \S+ connect addr={src} score=")
    assert decision.endswith(": proceed")


def test_score_0_is_disconnected_at_connect_with_the_anchors_text(server):
    s = server.ns.create_connection(("127.0.0.1", 25), 10, ("127.0.0.2", 0))
    with s:
        f = s.makefile("rb")
        assert f.readline().decode().rstrip("\r\n") == BLOCK
        assert f.readline() == b""  # and the connection is closed
    assert server.wait_log(r"f1: \S+ connect addr=127\.0\.0\.2 score=0 \(dns\): disconnect \(below 10\)")


def test_a_low_score_is_junked_every_message_gets_x_spam(server):
    toks = [token(), token()]
    with client(server, "127.0.0.3") as c:
        c.ehlo("client.e2e.test")
        for t in toks:
            assert c.sendmail(FROM, [TO], make_message(t)) == {}
    for t in toks:
        m = server.maildir.wait_for(t)
        assert m.headers("X-Spam") == ["Yes"]
        assert m.headers("X-SenderScore") == ["50"]


def test_the_header_goes_on_every_message_of_a_session_and_spoofs_are_removed(server):
    toks = [token(), token(), token()]
    with client(server, "127.0.0.4") as c:
        c.ehlo("client.e2e.test")
        for t in toks:
            msg = make_message(t, extra_headers={"X-SenderScore": "100"})
            assert c.sendmail(FROM, [TO], msg) == {}
    for t in toks:
        assert server.maildir.wait_for(t).headers("X-SenderScore") == ["77"]


def test_127_255_255_255_is_unknown_and_logged(server):
    assert server.wait_log(r"f1: warning: SenderScore answered 127\.255\.255\.255: this resolver's address is not registered")
    assert server.log_lines(r"connect addr=127\.0\.0\.7 score=none \(unknown answer 127\.255\.255\.255\): proceed")


def test_a_dropped_query_costs_at_most_the_timeout(server):
    tok = token()
    t = time.monotonic()
    with client(server, "127.0.0.9") as c:  # the banner comes after the connect answer
        banner_after = time.monotonic() - t
        c.ehlo("client.e2e.test")
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    assert 0.9 < banner_after < 1.0 + 0.5 + 1.0, banner_after  # filter timeout 1 s (+ smtpd's own DNS)
    m = server.maildir.wait_for(tok)
    assert m.headers("X-SenderScore") == []
    assert server.log_lines(r"connect addr=127\.0\.0\.9 score=none \(lookup timed out")


def test_ipv6_client_is_not_looked_up(server):
    before = [q for q in server.dns.queries() if q.name.endswith(ZONE + ".")]
    tok = token()
    send(server, "::1", tok)
    m = server.maildir.wait_for(tok)
    assert m.headers("X-SenderScore") == []
    after = [q for q in server.dns.queries() if q.name.endswith(ZONE + ".")]
    assert len(after) == len(before)
    assert server.log_lines(r"connect addr=::1 score=none \(IPv6, not scored\): proceed")


def test_concurrent_sessions_with_unanswered_lookups_do_not_wait_for_each_other(server):
    """Ten sessions from the silent address at once: each banner arrives after
    about one timeout, not ten (the lookups are shared and run concurrently)."""
    import threading

    times: list[float] = []

    def one():
        t = time.monotonic()
        with client(server, "127.0.0.9") as c:
            times.append(time.monotonic() - t)
            c.quit()

    threads = [threading.Thread(target=one) for _ in range(10)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(times) == 10
    assert time.monotonic() - t0 < 1.0 + 0.5 + 1.5, times


@pytest.mark.parametrize("length", [65_500, 65_533])
def test_very_long_lines_through_the_header_path(server, length):
    """-scoreHeader puts the filter on the data-line path: a body line smtpd
    forwards but no filter can echo (smtpd jams on output over 65,535 bytes)
    is refused, the client gets its answer, and smtpd keeps serving."""
    tok = token()
    line = (b"0123456789abcdef" * (length // 16 + 1))[:length]
    with client(server, "127.0.0.4") as c:
        c.ehlo("client.e2e.test")
        assert c.mail(FROM)[0] == 250 and c.rcpt(TO)[0] == 250
        code, reply = c.data(make_message(tok, body=b"before\r\n" + line + b"\r\nafter\r\n"))
        assert code == 552 and reply.startswith(b"5.3.4 "), (code, reply)
        assert c.noop()[0] == 250
    server.assert_alive()
    server.maildir.assert_not_delivered(tok, wait=0.2)
    after = token()
    send(server, "127.0.0.4", after)
    assert server.maildir.wait_for(after).headers("X-SenderScore") == ["77"]


def test_one_log_line_per_decision_keyed_by_session(server):
    lines = server.log_lines(r"f1: [0-9a-f]{16} connect addr=")
    assert len(lines) >= 8
    sids = [ln.split("f1: ", 1)[1].split()[0] for ln in lines]
    assert len(set(sids)) == len(sids)


# -- blocking at each phase: one smtpd per phase, all from 127.0.0.2 (score 0) ----------


def _expect_block(reply: tuple[int, bytes]) -> None:
    code, text = reply
    assert code == 550 and text == b"your IP reputation is too low for this MX", reply


@pytest.mark.parametrize("phase", ["helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "quit"])
def test_block_at_each_phase(bare_smtpd_factory, phase):
    """Score 0 < 10: everything before -blockPhase proceeds, then the anchor's
    disconnect text."""
    import base64
    import smtplib
    import ssl

    from e2e_harness import AUTH_PASSWORD, AUTH_USER

    tls, submission = phase == "starttls", phase == "auth"
    cmd = f"py-filter-senderscore -blockBelow 10 -blockPhase {phase} -timeout 1"
    srv = bare_smtpd_factory([cmd], zone=zone(), tls=tls, submission=submission)
    try:
        port = srv.submission_port if submission else 25
        c = NsSMTP(srv.ns, "127.0.0.1", port, local_hostname="client.e2e.test",
                   source_address=("127.0.0.2", 0), timeout=30)
        try:
            if phase == "helo":
                reply = c.helo("client.e2e.test")
            else:
                reply = c.ehlo("client.e2e.test")
                if phase != "ehlo":
                    assert reply[0] == 250
            if phase == "starttls":
                reply = c.docmd("STARTTLS")
            elif phase == "auth":
                ctx = ssl.create_default_context(cafile=str(srv.cert_path))
                ctx.check_hostname = False
                c.starttls(context=ctx)
                assert c.ehlo("client.e2e.test")[0] == 250
                cred = base64.b64encode(f"\0{AUTH_USER}\0{AUTH_PASSWORD}".encode()).decode()
                reply = c.docmd("AUTH", f"PLAIN {cred}")
            elif phase in ("mail-from", "rcpt-to", "quit"):
                reply = c.mail(FROM)
                if phase != "mail-from":
                    assert reply[0] == 250
                    reply = c.rcpt(TO)
                if phase == "quit":
                    assert reply[0] == 250
                    reply = c.docmd("QUIT")
            _expect_block(reply)
        finally:
            try:
                c.close()
            except (OSError, smtplib.SMTPException):
                pass
        assert srv.wait_log(rf"f1: \S+ {phase}: score=0 \(dns\) below 10: disconnect")
        srv.assert_alive()
    finally:
        srv.stop()


def test_an_unknown_flag_is_a_one_line_usage_error_in_smtpds_log(bare_smtpd_factory):
    with pytest.raises(RuntimeError) as exc:
        bare_smtpd_factory(["py-filter-senderscore -junkbelow 5"])
    text = str(exc.value)
    assert "f1: py-filter-senderscore: flag provided but not defined: -junkbelow (usage: py-filter-senderscore" in text


def test_a_bad_allowlist_line_is_named_in_smtpds_log(bare_smtpd_factory, e2e_runtime):
    d = e2e_runtime.new_dir("senderscore-bad")
    bad = d / "allowlist"
    bad.write_text("192.0.2.0/24\n# fine so far\n192.0.2.0/40\n")
    bad.chmod(0o644)
    with pytest.raises(RuntimeError) as exc:
        bare_smtpd_factory([f"py-filter-senderscore -allowlist {bad}"])
    assert f"f1: py-filter-senderscore: {bad}:3: prefix length 40 is longer than 32" in str(exc.value)
