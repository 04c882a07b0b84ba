"""py-filter-rdns through the SDK harness, DNS from the loopback test server."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import filterkit
from smtpd_filter_sdk.dns import FCrDNS
from smtpd_filter_sdk.netaddr import ListFileError
from smtpd_filter_sdk.testing.dnsserver import DNSServer, Zone
from smtpd_filter_sdk.testing.harness import Harness
from smtpd_filter_sdk.testing.wire import Wire
from smtpd_filters import rdns


@pytest.fixture(scope="module")
def dns_server():
    zone = (
        Zone(ttl=60)
        .add_ptr("192.0.2.10", "mail.example.test")
        .add("mail.example.test", "A", "192.0.2.10")
        .add_ptr("192.0.2.11", "liar.example.test")
        .add("liar.example.test", "A", "192.0.2.99")
        .add_ptr("192.0.2.20", "dsl-192-0-2-20.pool.isp.test")
        .add("dsl-192-0-2-20.pool.isp.test", "A", "192.0.2.20")
        .add_ptr("192.0.2.21", "mx.partner.test")
        .add("mx.partner.test", "A", "192.0.2.21")
        .add("helo.example.test", "A", "192.0.2.10")
        .set_behaviour("12.2.0.192.in-addr.arpa", "drop")
        .set_behaviour("13.2.0.192.in-addr.arpa", "servfail")
        .set_behaviour("slowhelo.example.test", "drop")
        .set_behaviour("*.113.0.203.in-addr.arpa", "drop")
        .add_ptr("2001:db8::10", "v6.example.test")
        .add("v6.example.test", "AAAA", "2001:db8::10")
    )
    with DNSServer(zone) as srv:
        yield srv


def make(*argv: str, server: DNSServer, **kw) -> tuple[Harness, object]:
    opts = rdns.flags().parse_or_raise([*argv, "-resolver", f"127.0.0.1:{server.port}", "-timeout", "0.3"])
    f = rdns.build(opts)
    return Harness(f, hang_timeout=15, **kw), f


def ptr_queries(server, ip: str) -> int:
    rev = ipaddress.ip_address(ip).reverse_pointer + "."
    return sum(1 for q in server.queries if q.name.lower() == rev)


# -- connect: smtpd's own answer when it is conclusive ------------------------------------------


@pytest.mark.parametrize(
    "src, rdns_, fcrdns, flags, kind, code, confirm",
    [
        ("192.0.2.10", "mail.example.test", "pass", (), "proceed", None, False),
        ("192.0.2.99", "<unknown>", "fail", (), "reject", 550, True),  # no PTR: default reject
        ("192.0.2.99", "<unknown>", "fail", ("-noRdns", "disconnect"), "disconnect", 550, True),
        ("192.0.2.99", "<unknown>", "fail", ("-noRdns", "junk"), "junk", None, True),
        ("192.0.2.99", "<unknown>", "fail", ("-noRdns", "none"), "proceed", None, False),
        ("192.0.2.11", "liar.example.test", "fail", (), "junk", None, True),  # FCrDNS fails: default junk
        ("192.0.2.11", "liar.example.test", "fail", ("-noFcrdns", "reject"), "reject", 550, True),
        ("192.0.2.11", "liar.example.test", "fail", ("-noFcrdns", "disconnect"), "disconnect", 550, True),
        ("192.0.2.11", "liar.example.test", "fail", ("-noFcrdns", "none"), "proceed", None, False),
        ("192.0.2.99", "192.0.2.99", "pass", (), "reject", 550, False),  # a PTR that is an address literal
    ],
)
def test_connect_policies_from_smtpds_answer(dns_server, src, rdns_, fcrdns, flags, kind, code, confirm):
    """smtpd's pass is taken as is; a negative answer that would cost the
    client something is confirmed by our own lookup first (smtpd 6.8 reports
    a timed-out PTR query as no PTR), once per IP (cached)."""
    h, f = make(*flags, server=dns_server)
    with h:
        before = ptr_queries(dns_server, src)
        for _ in range(2):
            s = h.session(src=src, rdns=rdns_, fcrdns=fcrdns)
            assert s.connect.decision == kind
            assert s.connect.decision.code == code
            if code:
                assert " 5.7.25 Client host rejected: " in s.connect.decision.param
            log = [l for l in h.stderr if l.startswith(s.id)]
            assert len(log) == 1 and "connect addr=" in log[0]
            assert ("(dns)" in log[0]) == confirm
        assert ptr_queries(dns_server, src) == before + (1 if confirm else 0)


def test_smtpds_no_ptr_that_was_a_timeout_is_a_temporary_failure(dns_server):
    # smtpd says <unknown>/fail after its own lookup timed out; ours times out too
    h, f = make(server=dns_server)
    with h:
        s = h.session(src="192.0.2.12", rdns="<unknown>", fcrdns="fail")
        assert s.connect.decision == "disconnect" and s.connect.decision.code == 421


def test_dns_error_from_smtpd_is_resolved_again(dns_server):
    h, f = make(server=dns_server)
    with h:
        # smtpd's lookup failed, ours works: the real answer decides
        s = h.session(src="192.0.2.10", rdns="<unknown>", fcrdns="error")
        assert s.connect.decision == "proceed"
        assert "iprev=pass ptr=mail.example.test (dns)" in h.stderr[-1]
        s = h.session(src="192.0.2.11", rdns="liar.example.test", fcrdns="error")
        assert s.connect.decision == "junk"


@pytest.mark.parametrize("src", ["192.0.2.12", "192.0.2.13"])  # PTR dropped / SERVFAIL
def test_dns_failure_is_a_temporary_failure_never_permanent(dns_server, src):
    h, f = make("-noRdns", "disconnect", "-noFcrdns", "disconnect", server=dns_server)
    with h:
        t = time.monotonic()
        s = h.session(src=src, rdns="<unknown>", fcrdns="error")
        assert time.monotonic() - t < 0.3 + 0.5
        d = s.connect.decision
        # at connect a 4xx *reject* would trap the client in 503s: disconnect 421
        assert d == "disconnect" and d.code == 421 and d.param.startswith("421 4.7.25 ")
        assert s.closed


def test_dns_error_can_junk_or_pass(dns_server):
    for action, kind in (("junk", "junk"), ("none", "proceed")):
        h, f = make("-dnsError", action, server=dns_server)
        with h:
            assert h.session(src="192.0.2.12", rdns="<unknown>", fcrdns="error").connect.decision == kind


def test_a_temporary_verdict_is_not_cached_a_final_one_is(dns_server):
    h, f = make(server=dns_server)
    with h:
        n = ptr_queries(dns_server, "192.0.2.12")
        h.session(src="192.0.2.12", rdns="<unknown>", fcrdns="error")
        first = ptr_queries(dns_server, "192.0.2.12") - n  # the query and its retransmissions
        assert first >= 1
        h.session(src="192.0.2.12", rdns="<unknown>", fcrdns="error")
        assert ptr_queries(dns_server, "192.0.2.12") - n == 2 * first  # asked again
        n = ptr_queries(dns_server, "192.0.2.10")
        for _ in range(3):
            h.session(src="192.0.2.10", rdns="<unknown>", fcrdns="error")
        assert ptr_queries(dns_server, "192.0.2.10") == n + 1


def test_unanswered_ptr_queries_do_not_queue(dns_server):
    """50 sessions whose PTR queries are dropped all get their 421 within
    timeout + 0.5 s."""
    h, f = make(server=dns_server)
    w = Wire("0.6")
    with h:
        lines = []
        sessions = [(f"{i:016x}", f"203.0.113.{i}") for i in range(1, 51)]
        for sid, ip in sessions:
            lines.append(w.report("1.0", "link-connect", sid, "<unknown>", "error", f"{ip}:4000", "127.0.0.1:25"))
        for sid, ip in sessions:
            lines.append(w.connect("1.0", sid, "aaaaaaaaaaaaaaaa", "<unknown>", ip))
        t = time.monotonic()
        out = h.feed(*lines)
        took = time.monotonic() - t
    answers = [l for l in out if l.startswith(b"filter-result|")]
    assert len(answers) == 50 and all(b"|disconnect|421 4.7.25 " in a for a in answers)
    assert took < 0.3 + 0.5, took


# -- dynamic / generic names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ip, dynamic",
    [
        ("dsl-192-0-2-20.pool.isp.test", "192.0.2.20", True),
        ("20.2.0.192.in-addr.isp.test", "192.0.2.20", True),
        ("host192.000.002.020.isp.test", "192.0.2.20", True),
        ("c0000214.cust.isp.test", "192.0.2.20", True),  # hex
        ("192000002020.isp.test", "192.0.2.20", True),
        ("x1-2-3-4.example.test", "192.0.2.20", False),
        ("ppp-7.isp.test", "192.0.2.20", True),
        ("adsl.example.test", "192.0.2.20", True),
        ("mail.example.test", "192.0.2.20", False),
        ("mx1.dslreports.test", "192.0.2.20", False),  # the word must stand alone, not in the domain
        ("smtp.pool.test", "192.0.2.20", False),  # 'pool' is the registered domain here
        ("dynamic.mx.isp.test", "192.0.2.20", True),
        ("2001-db8--10.v6.isp.test", "2001:db8::10", False),
        ("ip6-20010db8000000000000000000000010.isp.test", "2001:db8::10", True),
    ],
)
def test_dynamic_names(name, ip, dynamic):
    assert (rdns.dynamic_reason(name, ipaddress.ip_address(ip)) is not None) == dynamic


def test_dynamic_regex_file(tmp_path):
    f = tmp_path / "dyn.re"
    f.write_text("# generic names of our ISP\n^cust[0-9]+\\.\n\n(^|\\.)gw#[0-9]\\.\n")
    pats = rdns.load_patterns(f.read_text().splitlines(), str(f))
    assert [p.where for p in pats] == [f"{f}:2", f"{f}:4"]
    ip = ipaddress.ip_address("192.0.2.1")
    assert "matches /^cust[0-9]+\\./" in rdns.dynamic_reason("CUST77.isp.test", ip, pats)
    assert rdns.dynamic_reason("a.gw#1.isp.test", ip, pats).endswith(f"({f}:4)")
    f.write_text("ok\n(unclosed\n")
    with pytest.raises(ListFileError, match=rf"^{f}:2: bad regular expression"):
        rdns.load_patterns(f.read_text().splitlines(), str(f))


@given(st.ip_addresses(v=4), st.sampled_from(["-", ".", "_"]), st.booleans())
def test_any_ipv4_embedded_in_a_name_is_seen(ip, sep, reverse):
    octets = str(ip).split(".")
    if reverse:
        octets.reverse()
    name = "host" + sep.join(octets) + ".isp.test" if sep != "." else "h-" + ".".join(octets) + ".isp.test"
    name = name.replace("host", "host-")
    assert rdns.embeds_address(name, ip)


@given(st.text(max_size=60), st.ip_addresses())
def test_dynamic_reason_never_crashes(name, ip):
    r = rdns.dynamic_reason(name, ip)
    assert r is None or isinstance(r, str)


def test_dynamic_policy_at_connect(dns_server):
    h, f = make("-dynamic", "reject", server=dns_server)
    with h:
        s = h.session(src="192.0.2.20", rdns="dsl-192-0-2-20.pool.isp.test", fcrdns="pass")
        assert s.connect.decision == "reject"
        assert "looks like a dynamic address" in s.connect.decision.param
        ok = h.session(src="192.0.2.10", rdns="mail.example.test", fcrdns="pass")
        assert ok.connect.decision == "proceed"


# -- HELO ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src, rdns_, verb, name, kind, code",
    [
        ("192.0.2.10", "mail.example.test", "EHLO", "MAIL.example.test.", "proceed", None),  # the PTR name
        ("192.0.2.10", "mail.example.test", "EHLO", "helo.example.test", "proceed", None),  # resolves to the client
        ("192.0.2.10", "mail.example.test", "HELO", "[192.0.2.10]", "proceed", None),  # its address literal
        ("2001:db8::10", "v6.example.test", "EHLO", "[IPv6:2001:db8::10]", "proceed", None),
        ("192.0.2.10", "mail.example.test", "EHLO", "other.example.test", "reject", 550),
        ("192.0.2.10", "mail.example.test", "HELO", "[192.0.2.77]", "reject", 550),
        ("192.0.2.10", "mail.example.test", "EHLO", "localhost", "reject", 550),  # not a FQDN
        ("192.0.2.10", "mail.example.test", "EHLO", "slowhelo.example.test", "reject", 451),  # DNS timeout
    ],
)
def test_helo_check(dns_server, src, rdns_, verb, name, kind, code):
    h, f = make("-heloCheck", "reject", server=dns_server)
    with h:
        s = h.session(src=src, rdns=rdns_, fcrdns="pass")
        step = s.ehlo(name) if verb == "EHLO" else s.helo(name)
        assert step.decision == kind and step.decision.code == code
        if code == 550:
            assert step.decision.param.startswith(f"550 5.7.1 HELO/EHLO {name} does not match")
        if code == 451:
            assert step.decision.param.startswith("451 4.7.1 ")


def test_helo_check_skips_local_and_allowlisted(dns_server, tmp_path):
    allow = tmp_path / "allow"
    allow.write_text("192.0.2.0/24\n")
    h, f = make("-heloCheck", "disconnect", "-allowlist", str(allow), server=dns_server)
    with h:
        assert h.session(src="192.0.2.11", rdns="liar.example.test", fcrdns="fail").ehlo("x").decision == "proceed"
        assert h.session(src="local", rdns="localhost").ehlo("x").decision == "proceed"


# -- allowlists, bypass -----------------------------------------------------------------------------


def test_allowlists(dns_server, tmp_path):
    cidrs = tmp_path / "cidrs"
    cidrs.write_text("192.0.2.96/28\n2001:db8:ff::/48\n")
    domains = tmp_path / "domains"
    domains.write_text("partner.test\nliar.example.test\n")
    h, f = make("-noRdns", "disconnect", "-noFcrdns", "disconnect", "-allowlist", str(cidrs), "-allowDomains", str(domains), server=dns_server)
    with h:
        assert h.session(src="192.0.2.99", rdns="<unknown>", fcrdns="fail").connect.decision == "proceed"
        assert h.session(src="2001:db8:ff::1", rdns="<unknown>", fcrdns="fail").connect.decision == "proceed"
        assert h.session(src="192.0.2.21", rdns="mx.partner.test", fcrdns="pass").connect.decision == "proceed"
        assert "under allowed domain partner.test" in h.stderr[-1]
        # a listed name that is not forward-confirmed does not count
        assert h.session(src="192.0.2.11", rdns="liar.example.test", fcrdns="fail").connect.decision == "disconnect"


def test_local_sessions_are_never_checked(dns_server):
    h, f = make("-noRdns", "disconnect", server=dns_server)
    with h:
        s = h.session(src="local", rdns="localhost")
        assert s.connect.decision == "proceed"


def test_bypass_auth_defers_to_mail_from(dns_server):
    h, f = make("-noRdns", "reject", "-heloCheck", "reject", "-bypassAuth", server=dns_server)
    with h:
        user = h.session(src="192.0.2.99", rdns="<unknown>", fcrdns="fail")
        assert user.connect.decision == "proceed"
        assert user.ehlo("whatever.example.test").decision == "proceed"
        assert user.auth("alice").ok
        m = user.send_message()
        assert m.mail.decision == "proceed" and m.accepted
        assert "held verdict dropped" in "\n".join(h.stderr)

        stranger = h.session(src="192.0.2.99", rdns="<unknown>", fcrdns="fail")
        assert stranger.connect.decision == "proceed"
        stranger.ehlo("whatever.example.test")
        step = stranger.mail_from("x@example.org")
        assert step.decision == "reject" and step.decision.param.startswith("550 5.7.25 ")

        temp = h.session(src="192.0.2.12", rdns="<unknown>", fcrdns="error")
        assert temp.connect.decision == "proceed"
        assert temp.ehlo("[192.0.2.12]").decision == "proceed"
        step = temp.mail_from("x@example.org")
        assert step.decision == "reject" and step.decision.code == 451  # 4xx reject: fine at MAIL


def test_dry_run(dns_server):
    h, f = make("-noRdns", "disconnect", "-dynamic", "reject", "-heloCheck", "reject", "-dryRun", server=dns_server)
    with h:
        s = h.session(src="192.0.2.99", rdns="<unknown>", fcrdns="fail")
        assert s.connect.decision == "proceed" and h.stderr[-1].endswith("(dry run)")
        assert s.ehlo("nope.example.test").decision == "proceed" and h.stderr[-1].endswith("(dry run)")


# -- headers ----------------------------------------------------------------------------------------


def test_result_headers(dns_server):
    h, f = make("-header", "-authResults", "-noFcrdns", "none", server=dns_server)
    with h:
        s = h.session(src="192.0.2.10", rdns="mail.example.test", fcrdns="pass")
        spoof = [("X-rDNS", "pass; ip=1.2.3.4"), ("Authentication-Results", "mx.test; iprev=pass"),
                 ("Authentication-Results", "other.example; dkim=pass")]
        for _ in range(2):
            m = s.send_message(headers=spoof)
            assert m.headers.get_all("X-rDNS") == ["pass; ip=192.0.2.10; ptr=mail.example.test"]
            ar = m.headers.get_all("Authentication-Results")
            assert ar[0].replace("\t", " ").replace("  ", " ") == "mx.test; iprev=pass policy.iprev=192.0.2.10 (mail.example.test)"
            assert ar[1:] == ["other.example; dkim=pass"]  # someone else's: kept
        s2 = h.session(src="192.0.2.11", rdns="liar.example.test", fcrdns="fail")
        m = s2.send_message()
        assert m.headers.get("X-rDNS") == "fail; ip=192.0.2.11; ptr=liar.example.test"
        assert "iprev=fail policy.iprev=192.0.2.11" in m.headers.get("Authentication-Results")
        s3 = h.session(src="192.0.2.20", rdns="dsl-192-0-2-20.pool.isp.test", fcrdns="pass")
        assert s3.send_message().headers.get("X-rDNS").endswith("dynamic=yes")


def test_iprev_from_smtpd():
    assert rdns.iprev_from_smtpd("mx.example.test", "pass") == FCrDNS("pass", ("mx.example.test",), "mx.example.test")
    assert rdns.iprev_from_smtpd("<unknown>", "fail").result == "permerror"
    assert rdns.iprev_from_smtpd("mx.example.test", "fail").result == "fail"
    assert rdns.iprev_from_smtpd("<unknown>", "error") is None
    assert rdns.iprev_from_smtpd("mx.example.test", "error") is None
    assert rdns.iprev_from_smtpd("1.2.3.4", "pass").result == "permerror"
    assert rdns.iprev_from_smtpd(None, None) is None


# -- the process -------------------------------------------------------------------------------------


def run_main(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(filterkit.REPO / "filters" / "rdns.py"), *argv],
        input=b"", capture_output=True, env=filterkit.env(), timeout=20,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-noRdns", "tempfail"], 'invalid value "tempfail" for flag -noRdns: one of reject, disconnect, junk, none'),
        (["-dnsError", "reject"], 'invalid value "reject" for flag -dnsError'),
        (["-fcrdns"], "flag provided but not defined: -fcrdns"),
        (["-timeout", "-1"], 'invalid value "-1" for flag -timeout'),
    ],
)
def test_usage_errors(argv, message):
    r = run_main(*argv)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("py-filter-rdns: ") and message in err


@pytest.mark.parametrize(
    "flag, content, where",
    [
        ("-allowlist", "192.0.2.0/24\n# x\n192.0.2.0/99\n", ":3: "),
        ("-allowDomains", "example.com\nbad domain\n", ":2: "),
        ("-dynamicRegex", "ok\n\n[\n", ":3: bad regular expression"),
    ],
)
def test_bad_list_files_at_start(tmp_path, flag, content, where):
    path = tmp_path / "list"
    path.write_text(content)
    r = run_main(flag, str(path), "-resolver", "127.0.0.1:9")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith(f"py-filter-rdns: {path}{where}"), err


def test_reload_is_all_or_nothing(dns_server, tmp_path):
    allow = tmp_path / "allow"
    allow.write_text("192.0.2.99\n")
    dyn = tmp_path / "dyn"
    dyn.write_text("^nothing$\n")
    h, f = make("-noRdns", "disconnect", "-allowlist", str(allow), "-dynamicRegex", str(dyn), server=dns_server)
    with h:
        assert h.session(src="192.0.2.99", rdns="<unknown>", fcrdns="fail").connect.decision == "proceed"
        allow.write_text("# nobody\n")
        dyn.write_text("(\n")
        with pytest.raises(ListFileError):
            f.reload_handlers[0]()
        # neither file was swapped in: the allowlist still holds 192.0.2.99
        assert h.session(src="192.0.2.99", rdns="<unknown>", fcrdns="fail").connect.decision == "proceed"
        dyn.write_text("^nothing$\n")
        f.reload_handlers[0]()
        assert h.session(src="192.0.2.99", rdns="<unknown>", fcrdns="fail").connect.decision == "disconnect"


@pytest.mark.parametrize(
    "flags",
    [
        ("-dynamic", "junk", "-heloCheck", "junk", "-header", "-authResults"),
        ("-noRdns", "disconnect", "-noFcrdns", "reject", "-bypassAuth", "-heloCheck", "reject", "-header"),
    ],
)
def test_smtpd_filter_check_is_clean_for_every_dialect(dns_server, flags):
    from smtpd_filter_sdk.testing.checker import RELEASED_DIALECTS, check

    cmd = filterkit.command("rdns", *flags, "-resolver", f"127.0.0.1:{dns_server.port}", "-timeout", "0.3")
    result = check(cmd, RELEASED_DIALECTS, env_extra={"PYTHONPATH": str(filterkit.REPO)}, out=None, fuzz=5)
    bad = [f.format() for f in result.findings if f.severity in ("FATAL", "HANG")]
    assert not bad, bad
    assert {f.rule for f in result.findings} <= {"legacy-truncation"}


@given(st.lists(st.text(max_size=30), max_size=8))
def test_any_regex_file_loads_or_names_its_bad_line(lines):
    try:
        pats = rdns.load_patterns(lines, "re.txt")
    except ListFileError as exc:
        assert exc.source == "re.txt" and 1 <= exc.line <= len(lines)
        assert str(exc).startswith(f"re.txt:{exc.line}: bad regular expression")
    else:
        assert all(p.where.startswith("re.txt:") for p in pats)
        assert len(pats) <= len(lines)
