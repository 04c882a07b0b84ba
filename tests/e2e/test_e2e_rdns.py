"""py-filter-rdns behind a real smtpd, named bare:

    filter "f1" proc-exec "py-filter-rdns -noRdns disconnect -dynamic junk -heloCheck reject
                           -header -authResults -timeout 1 -allowlist FILE -resolver 127.0.0.1:5353"

smtpd does its own PTR + forward lookups against the namespace's DNS server
on :53 and reports them in link-connect; the filter takes smtpd's ``pass``,
and resolves itself (against a second loopback server on :5353, so the two
can be told to fail differently) when smtpd says ``error`` or before acting on
a negative answer.  Each client connects from its own loopback address.

Found here: smtpd 6.8's resolver retries a dropped PTR query for ~75 s
(5+10+20+40) and then reports ``<unknown>``/``fcrdns=fail`` - "no PTR" - so
the builtin ``!rdns`` would refuse the client for good.  The filter's own
lookup times out after -timeout and it answers ``421`` instead.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from e2e_bare import BareSmtpdServer, filter_pids
from e2e_harness import DOMAIN, NsSMTP, default_zone, make_message, token
from e2e_harness.smtpd import server_pool
from smtpd_filter_sdk.testing.dnsserver import DNSServerProcess

pytestmark = pytest.mark.e2e

FROM = "alice@client.e2e.test"
TO = f"bob@{DOMAIN}"


def base_zone():
    return (
        default_zone()
        # 127.0.0.2: no PTR at all
        .add_ptr("127.0.0.3", "liar.e2e.test")
        .add("liar.e2e.test", "A", "127.0.0.99")  # the forward does not match
        .add_ptr("127.0.0.5", "127-0-0-5.dyn.isp.test")
        .add("127-0-0-5.dyn.isp.test", "A", "127.0.0.5")  # confirmed, but generic
        .add_ptr("127.0.0.6", "mail.partner.test")
        .add("mail.partner.test", "A", "127.0.0.6")
    )


def smtpd_zone():
    """What smtpd's resolver (:53) gets."""
    return (
        base_zone()
        .set_behaviour("4.0.0.127.in-addr.arpa", "servfail")  # smtpd: fcrdns=error, at once
        .set_behaviour("8.0.0.127.in-addr.arpa", "drop")  # smtpd: ~75 s, then "no PTR"
        .set_behaviour("9.0.0.127.in-addr.arpa", "servfail")
    )


def filter_zone():
    """What the filter's resolver (:5353) gets."""
    return (
        base_zone()
        .set_behaviour("4.0.0.127.in-addr.arpa", "drop")
        .set_behaviour("8.0.0.127.in-addr.arpa", "drop")
        .set_behaviour("9.0.0.127.in-addr.arpa", "drop")  # allowlisted: never asked
    )


def client(server, src: str, **kw) -> NsSMTP:
    kw.setdefault("timeout", 30)
    if ":" in src:
        return NsSMTP(server.ns, "::1", 25, local_hostname="localhost", **kw)
    return NsSMTP(server.ns, "127.0.0.1", 25, local_hostname="localhost", source_address=(src, 0), **kw)


def banner(server, src: str, timeout: float = 15) -> str:
    with server.ns.create_connection(("127.0.0.1", 25), timeout, (src, 0)) as s:
        return s.makefile("rb").readline().decode().rstrip("\r\n")


@pytest.fixture(scope="session")
def lists(e2e_runtime):
    d = e2e_runtime.new_dir("rdns-lists")
    (d / "allow").write_text("127.0.0.9  # a partner with broken DNS\n")
    (d / "allow").chmod(0o644)
    return d


@pytest.fixture(scope="session")
def server(lists, e2e_runtime):
    """One smtpd for the module, alive until the session ends: the slow case
    started here is checked by the session's last test (``run_last``), so
    smtpd's ~75 s of retries overlap the rest of the suite instead of
    holding it up."""
    cmd = (
        "py-filter-rdns -noRdns disconnect -noFcrdns junk -dynamic junk -heloCheck reject "
        f"-header -authResults -timeout 1 -allowlist {lists / 'allow'} -resolver 127.0.0.1:5353"
    )
    pool = server_pool(e2e_runtime, BareSmtpdServer)
    make = next(pool)
    try:
        srv = make([cmd], zone=smtpd_zone(), ipv6=True)
        ours = DNSServerProcess(filter_zone(), e2e_runtime.new_dir("rdns-dns2"), python=e2e_runtime.python,
                                port=5353, argv_prefix=srv.ns.nsenter_argv())
        ours.start()
        try:
            yield start_the_slow_case(srv)
        finally:
            srv.slow_thread.join(160)
            ours.stop()
    finally:
        next(pool, None)  # the pool's teardown: smtpd stopped by PID, and checked


def start_the_slow_case(srv):
    """A client from 127.0.0.8, in the background: smtpd alone takes ~75 s
    on it (``srv.slow_result`` when ``srv.slow_thread`` has ended)."""
    srv.slow_result = {}

    def slow():
        t = time.monotonic()
        try:
            srv.slow_result["banner"] = banner(srv, "127.0.0.8", timeout=150)
        except OSError as e:
            srv.slow_result["error"] = repr(e)
        srv.slow_result["took"] = time.monotonic() - t

    srv.slow_thread = threading.Thread(target=slow, daemon=True)
    srv.slow_thread.start()
    return srv


def test_bare_name_and_a_confirmed_client_passes_with_result_headers(server):
    assert filter_pids(server, "py-filter-rdns")
    tok = token()
    with client(server, "127.0.0.1") as c:
        assert c.ehlo("localhost")[0] == 250
        msg = make_message(tok, extra_headers={"X-rDNS": "pass; forged", "Authentication-Results": "x; iprev=pass"})
        assert c.sendmail(FROM, [TO], msg) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("X-rDNS") == ["pass; ip=127.0.0.1; ptr=localhost"]
    ar = [re.sub(r"\s+", " ", v) for v in m.headers("Authentication-Results")]
    assert re.fullmatch(r"[^;\s]+; iprev=pass policy\.iprev=127\.0\.0\.1 \(localhost\)", ar[0]), ar
    assert m.headers("X-Spam") == []
    assert server.log_lines(r"f1: \S+ connect addr=127\.0\.0\.1 iprev=pass ptr=localhost \(smtpd\): proceed")


def test_no_ptr_is_disconnected(server):
    assert banner(server, "127.0.0.2") == "550 5.7.25 Client host rejected: cannot find your reverse hostname [127.0.0.2]"
    # smtpd said "no PTR"; before refusing for good the filter asked for itself
    assert server.wait_log(r"f1: \S+ connect addr=127\.0\.0\.2 iprev=permerror \(dns\): disconnect \(no PTR \(nxdomain\)\)")


def test_a_forward_that_does_not_match_is_junked(server):
    tok = token()
    with client(server, "127.0.0.3") as c:
        c.ehlo("liar.e2e.test")  # a HELO of its PTR name passes the HELO check
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("X-Spam") == ["Yes"]
    assert m.headers("X-rDNS") == ["fail; ip=127.0.0.3; ptr=liar.e2e.test"]
    assert server.log_lines(r"connect addr=127\.0\.0\.3 iprev=fail ptr=liar\.e2e\.test \(dns\): junk")


def test_a_dns_timeout_is_a_temporary_failure(server):
    t = time.monotonic()
    line = banner(server, "127.0.0.4")
    took = time.monotonic() - t
    assert line.startswith("421 4.7.25 Temporary DNS failure"), line
    # smtpd's lookup got SERVFAIL ("error"), ours timed out after -timeout 1
    assert 0.9 < took < 1 + 1.5, took
    assert server.wait_log(r"connect addr=127\.0\.0\.4 iprev=temperror \(dns\): tempfail \(DNS error \(PTR lookup: timeout")


def test_a_dynamic_ptr_is_junked(server):
    tok = token()
    with client(server, "127.0.0.5") as c:
        c.ehlo("127-0-0-5.dyn.isp.test")
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("X-Spam") == ["Yes"]
    assert m.headers("X-rDNS") == ["pass; ip=127.0.0.5; ptr=127-0-0-5.dyn.isp.test; dynamic=yes"]
    assert server.log_lines(r"connect addr=127\.0\.0\.5 .*: junk \(dynamic-looking PTR 127-0-0-5\.dyn\.isp\.test")


def test_a_helo_that_does_not_name_the_client_is_refused(server):
    with client(server, "127.0.0.6") as c:
        code, text = c.ehlo("mail.elsewhere.test")
        assert code == 550 and text.startswith(b"5.7.1 HELO/EHLO mail.elsewhere.test does not match"), (code, text)
        assert c.ehlo("mail.partner.test")[0] == 250  # the client may try again with its name
        tok = token()
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    assert server.maildir.wait_for(tok).headers("X-Spam") == []


def test_an_allowlisted_client_is_not_checked_even_when_dns_fails(server):
    tok = token()
    with client(server, "127.0.0.9") as c:
        c.ehlo("anything")
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("X-rDNS") == ["skipped; ip=127.0.0.9"]
    assert server.log_lines(r"connect addr=127\.0\.0\.9 .*proceed \(allowlisted address\)")


def test_ipv6_client(server):
    tok = token()
    with client(server, "::1") as c:
        assert c.ehlo("localhost")[0] == 250
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    assert server.maildir.wait_for(tok).headers("X-rDNS") == ["pass; ip=::1; ptr=localhost"]


def test_concurrent_dns_timeouts_do_not_queue(server):
    times: list[float] = []

    def one():
        t = time.monotonic()
        banner(server, "127.0.0.4")
        times.append(time.monotonic() - t)

    threads = [threading.Thread(target=one) for _ in range(8)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(times) == 8 and time.monotonic() - t0 < 1 + 1 + 2, times
    server.assert_alive()


@pytest.mark.run_last
def test_zz_a_ptr_query_smtpd_gave_up_on_is_not_a_permanent_refusal(server):
    """Both resolvers drop the PTR query of 127.0.0.8.  smtpd retries for
    ~75 s, then says <unknown>/fail; the filter checks for itself, times out,
    and the client is told to come back later (421), not refused (550).
    (Run last in the session: the client started with the server.)"""
    server.slow_thread.join(160)
    r = server.slow_result
    assert "banner" in r, r
    assert r["banner"].startswith("421 4.7.25 Temporary DNS failure"), r
    assert r["took"] > 60, r  # smtpd's own retries: the filter cannot shorten them
    assert server.log_lines(r"connect addr=127\.0\.0\.8 iprev=temperror \(dns\): tempfail")
