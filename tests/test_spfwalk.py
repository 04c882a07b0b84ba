"""py-spf-walk: the SPF record parser, macros, and walks against the loopback DNS server."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import filterkit
from smtpd_filter_sdk.dns import Resolver
from smtpd_filter_sdk.netaddr import CIDRList
from smtpd_filter_sdk.testing.dnsserver import DNSServer, Zone
from smtpd_filters.spfwalk import (
    Mechanism,
    NeedsClient,
    Record,
    SpfSyntaxError,
    Walker,
    expand,
    format_network,
    parse_record,
)

net = ipaddress.ip_network


# -- the parser ------------------------------------------------------------------------------------


def test_a_record_parses_into_its_terms():
    r = parse_record(
        "v=spf1 ip4:192.0.2.1/24 -IP6:2001:DB8::/32 a mx/24 ~a:mail.example.com//64 "
        "?mx:example.com/26//48 include:_spf.example.com ptr exists:%{i}.x.example.com "
        "redirect=other.example exp=explain.%{d} moo.cow=%{o}  -all"
    )
    assert r.directives == (
        Mechanism("+", "ip4", network=net("192.0.2.0/24")),
        Mechanism("-", "ip6", network=net("2001:db8::/32")),
        Mechanism("+", "a"),
        Mechanism("+", "mx", cidr4=24),
        Mechanism("~", "a", "mail.example.com", cidr6=64),
        Mechanism("?", "mx", "example.com", 26, 48),
        Mechanism("+", "include", "_spf.example.com"),
        Mechanism("+", "ptr"),
        Mechanism("+", "exists", "%{i}.x.example.com"),
        Mechanism("-", "all"),
    )
    assert (r.redirect, r.exp, r.modifiers) == ("other.example", "explain.%{d}", (("moo.cow", "%{o}"),))
    assert str(r.directives[5]) == "?mx:example.com/26//48"


@pytest.mark.parametrize(
    "text",
    [
        "v=spf1",
        "V=SPF1 -ALL",
        "v=spf1 a:%{d}",  # a domain-spec may end in a macro
        "v=spf1 include:%{l1r-}.%{d2}.example.com.",
        "v=spf1 a:x.%%",
        "v=spf1 ip4:0.0.0.0/0 ip6:::/0 ip6:::ffff:192.0.2.1",
        "v=spf1 a/0//0 mx/32//128",
        "v=spf1 unknown-mod= -all",
    ],
)
def test_valid_records(text):
    r = parse_record(text)
    assert parse_record(str(r)) == r


@pytest.mark.parametrize(
    "text, why",
    [
        ("v=spf10 -all", "not an SPF record"),
        ("spf1 -all", "not an SPF record"),
        ("v=spf1 frobnicate", "unknown"),
        ("v=spf1 ip4:192.0.2.300", "bad address"),
        ("v=spf1 ip4:192.0.2.1/33", "CIDR"),
        ("v=spf1 ip4:192.0.2.1/024", "CIDR"),
        ("v=spf1 ip6:2001:db8::/129", "CIDR"),
        ("v=spf1 ip6:fe80::1%eth0", "bad address"),
        ("v=spf1 ip4:2001:db8::1", "bad address"),
        ("v=spf1 a/33", "CIDR"),
        ("v=spf1 mx//129", "CIDR"),
        ("v=spf1 include", "needs :domain"),
        ("v=spf1 include:localhost", "domain name"),
        ("v=spf1 a:192.0.2.1", "domain name"),  # an address is not a domain
        ("v=spf1 exists:%{z}.example.com", "unknown macro"),
        ("v=spf1 exists:%{c}.example.com", "unknown macro"),  # c, r, t: exp= text only
        ("v=spf1 exists:%{d0}.example.com", "transformer 0"),
        ("v=spf1 a:50%.example.com", "bad macro"),
        ("v=spf1 -all/24", "bad term"),
        ("v=spf1 redirect=a.example redirect=b.example", "more than one redirect"),
        ("v=spf1 exp=a.example exp=b.example", "more than one exp"),
        ("v=spf1 a:ex\u00e4mple.com", "bad character"),
        ("v=spf1 +=", "unknown term"),
    ],
)
def test_invalid_records(text, why):
    with pytest.raises(SpfSyntaxError, match=why):
        parse_record(text)


@given(st.text(max_size=200))
def test_anything_parses_or_is_a_syntax_error(text):
    for candidate in (text, "v=spf1 " + text):
        try:
            r = parse_record(candidate)
        except SpfSyntaxError as exc:
            assert "\n" not in str(exc)  # one line on stderr
        else:
            assert isinstance(r, Record)
            assert parse_record(str(r)) == r


SPF_ALPHABET = "v=spf1 aipmxnclude:exsts4.6/%{}dolr_-+~?0123456789ABDZ."


@given(st.text(alphabet=SPF_ALPHABET, max_size=80))
def test_spf_looking_noise_parses_or_is_a_syntax_error(text):
    try:
        r = parse_record("v=spf1 " + text)
    except SpfSyntaxError:
        return
    assert parse_record(str(r)) == r


# -- generated valid records -------------------------------------------------------------------------

qualifiers = st.sampled_from(["", "+", "-", "~", "?"])
labels = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=3).map(lambda ls: ".".join(ls) + ".test")
ip4_nets = st.tuples(st.ip_addresses(v=4), st.none() | st.integers(0, 32))
ip6_nets = st.tuples(st.ip_addresses(v=6), st.none() | st.integers(0, 128))


@st.composite
def ip_terms(draw):
    q = draw(qualifiers)
    if draw(st.booleans()):
        ip, bits = draw(ip4_nets)
        kind = "ip4"
    else:
        ip, bits = draw(ip6_nets)
        kind = "ip6"
    text = f"{q}{kind}:{ip}" + (f"/{bits}" if bits is not None else "")
    network = ipaddress.ip_network(f"{ip}/{ip.max_prefixlen if bits is None else bits}", strict=False)
    return text, network, q in ("", "+", "?")


@st.composite
def other_terms(draw):
    """Terms that list nothing here: they deny, or their names do not exist."""
    q = draw(st.sampled_from(["-", "~"]))
    kind = draw(st.sampled_from(["a", "mx", "include", "exists", "ptr"]))
    if kind in ("a", "mx"):
        spec = ":" + draw(domains) if draw(st.booleans()) else ""
        c4 = draw(st.none() | st.integers(0, 32))
        c6 = draw(st.none() | st.integers(0, 128))
        return q + kind + spec + (f"/{c4}" if c4 is not None else "") + (f"//{c6}" if c6 is not None else "")
    if kind == "ptr":
        return q + "ptr"
    return f"{q}{kind}:{draw(domains)}"


@st.composite
def records(draw):
    terms = draw(st.lists(st.one_of(ip_terms(), other_terms()), max_size=12))
    ending = draw(st.sampled_from(["", " -all", " ~all", " ?all"]))
    text = "v=spf1 " + " ".join(t if isinstance(t, str) else t[0] for t in terms) + ending
    listed = {t[1] for t in terms if not isinstance(t, str) and t[2]}
    return text, listed


@given(records())
def test_generated_records_round_trip(case):
    text, listed = case
    r = parse_record(text)
    assert parse_record(str(r)) == r
    found = {m.network for m in r.directives if m.kind in ("ip4", "ip6") and m.lists}
    assert found == listed


# -- macros --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("%{d}", "mail.example.com"),
        ("_spf.%{d}", "_spf.mail.example.com"),
        ("%{d2}.x.test", "example.com.x.test"),
        ("%{dr}.x.test", "com.example.mail.x.test"),
        ("%{d1r}.x.test", "mail.x.test"),
        ("%{o}.%{d}", "example.org.mail.example.com"),
        ("%{D}", "mail.example.com"),
        ("a%%b.%{d}", "a%b.mail.example.com"),
        ("a%_b%-c.test", "a b%20c.test"),
        ("%{d}.", "mail.example.com"),
    ],
)
def test_expand(spec, expected):
    assert expand(spec, domain="mail.example.com", sender_domain="example.org") == expected


def test_expand_delimiters_and_url_escaping():
    assert expand("%{dr-}.x.test", domain="a-b.c", sender_domain="o.test") == "b.c.a.x.test"  # split on "-" only
    assert expand("%{dr-.}.x.test", domain="a-b.c", sender_domain="o.test") == "c.b.a.x.test"
    assert expand("%{O}.x.test", domain="d.test", sender_domain="we ird.test") == "we%20ird.test.x.test"


@pytest.mark.parametrize("letter", list("slihpv"))
def test_client_macros_cannot_be_expanded(letter):
    with pytest.raises(NeedsClient) as info:
        expand(f"%{{{letter}}}.x.test", domain="d.test", sender_domain="d.test")
    assert info.value.letter == letter


def test_a_long_expansion_loses_labels_on_the_left():
    domain = ".".join(["abcdefghij"] * 24) + ".test"  # 268 characters
    out = expand("%{d}", domain=domain, sender_domain="x.test")
    assert len(out) <= 253 and out.endswith(".test") and domain.endswith(out)


# -- walking against the loopback DNS server --------------------------------------------------------


def zone() -> Zone:
    z = (
        Zone(ttl=60)
        # include, redirect, ip4/ip6, a and mx with CIDR lengths, -/~ skipped
        .add("example.test", "TXT",
             "v=spf1 ip4:192.0.2.0/24 include:_spf.example.test a/24 mx//64 "
             "-ip4:10.0.0.0/8 ~a:soft.example.test ?ip4:192.0.2.200 -all ip4:203.0.113.99")
        .add("example.test", "A", "203.0.113.5")
        .add("example.test", "MX", "10 mx1.example.test", "20 mx2.example.test")
        .add("mx1.example.test", "A", "203.0.113.25")
        .add("mx1.example.test", "AAAA", "2001:db8:1::25")
        .add("mx2.example.test", "AAAA", "2001:db8:2::25")
        .add("soft.example.test", "A", "198.51.100.66")
        .add("_spf.example.test", "TXT", "v=spf1 ip6:2001:db8::/32 redirect=r.example.test")
        .add("r.example.test", "TXT", "v=spf1 a:host.example.test/28//120 ~all")
        .add("host.example.test", "A", "198.51.100.20")
        .add("host.example.test", "AAAA", "2001:db8:ff::20")
        # a record in two character-strings, and next to other TXT records
        .add("split.test", "TXT", ["v=spf1 ip4:198.51.100.1", "28 -all"], "some-verification=xyz")
        # macros: %{d} and %{o} expand, client macros are skipped
        .add("macro.test", "TXT", "v=spf1 include:%{d}.spf.macro.test exists:%{i}.x.macro.test a:%{l}.macro.test ptr -all")
        .add("macro.test.spf.macro.test", "TXT", "v=spf1 ip4:192.0.2.77 include:%{o}.o.macro.test -all")
        .add("macro.test.o.macro.test", "TXT", "v=spf1 ip4:192.0.2.78 -all")
        # all ends the evaluation: redirect= and later terms are never reached
        .add("allfirst.test", "TXT", "v=spf1 ip4:192.0.2.1 ~all redirect=example.test")
        .add("plusall.test", "TXT", "v=spf1 ip4:192.0.2.2 +all")
        # /0 is every address of a family: +all by another name
        .add("slash0.test", "TXT", "v=spf1 ip4:192.0.2.3 ip6:::/0 a:host.example.test/0//120 -all")
        # a loop, and a tree past the lookup limit
        .add("loop1.test", "TXT", "v=spf1 ip4:192.0.2.31 include:loop2.test -all")
        .add("loop2.test", "TXT", "v=spf1 ip4:192.0.2.32 redirect=loop1.test")
        .add("diamond.test", "TXT", "v=spf1 include:side1.test include:side2.test -all")
        .add("side1.test", "TXT", "v=spf1 include:shared.test -all")
        .add("side2.test", "TXT", "v=spf1 include:shared.test -all")
        .add("shared.test", "TXT", "v=spf1 ip4:192.0.2.40 -all")
        # failures
        .add("twice.test", "TXT", "v=spf1 -all", "v=spf1 +all")
        .add("syntax.test", "TXT", "v=spf1 ip4:192.0.2.50 ipv4:192.0.2.51 -all")
        .add("broken.test", "TXT", "v=spf1 ip4:192.0.2.60 include:servfail.test include:drop.test a:gone.test -all")
        .set_behaviour("servfail.test", "servfail")
        .set_behaviour("drop.test", "drop")
        .add("noinclude.test", "TXT", "v=spf1 include:nothing.test ip4:192.0.2.61 -all")
        .add("nospf.test", "TXT", "hello")
        .add("nullmx.test", "TXT", "v=spf1 mx -all")
        .add("nullmx.test", "MX", "0 .")
        .add("deny.test", "TXT", "v=spf1 -include:chain0.test ip4:192.0.2.90 -all")
    )
    # chainN includes chainN+1: 12 includes deep, each listing one address
    for i in range(12):
        z.add(f"chain{i}.test", "TXT", f"v=spf1 ip4:10.0.0.{i} include:chain{i + 1}.test -all")
    z.add("chain12.test", "TXT", "v=spf1 ip4:10.0.0.12 -all")
    # an mx term whose MX has 11 names
    z.add("manymx.test", "TXT", "v=spf1 ip4:192.0.2.95 mx -all")
    z.add("manymx.test", "MX", *(f"{i} mx{i}.manymx.test" for i in range(11)))
    return z


@pytest.fixture(scope="module")
def server():
    with DNSServer(zone()) as srv:
        yield srv


def walk(server, domain, families=(4, 6), timeout=1.0):
    async def go():
        r = Resolver([f"127.0.0.1:{server.port}"], timeout=timeout)
        try:
            return await Walker(r, families=families).walk(domain)
        finally:
            r.close()

    return asyncio.run(go())


def nets(*texts):
    return {net(t, strict=False) for t in texts}


def test_include_redirect_a_mx_cidr_and_denials(server):
    w = walk(server, "example.test")
    assert w.ok, w.errors
    assert set(w.networks) == nets(
        "192.0.2.0/24",  # ip4
        "2001:db8::/32",  # include -> ip6
        "198.51.100.16/28", "2001:db8:ff::/120",  # include -> redirect -> a:host/28//120
        "203.0.113.0/24",  # a/24 (the domain's own A)
        "203.0.113.25/32", "2001:db8:1::/64", "2001:db8:2::/64",  # mx//64: both exchanges
        "192.0.2.200/32",  # ?ip4 is kept, as smtpctl does
    )  # not -ip4:10/8, ~a:soft, nor ip4:203.0.113.99 after -all
    assert w.lookups == 6  # include, redirect=, a:host (in r.example.test), a/24, mx, ~a:soft


def test_families(server):
    assert set(walk(server, "example.test", families=(4,)).networks) == nets(
        "192.0.2.0/24", "198.51.100.16/28", "203.0.113.0/24", "203.0.113.25", "192.0.2.200"
    )
    assert all(n.version == 6 for n in walk(server, "example.test", families=(6,)).networks)


def test_a_record_in_several_strings(server):
    w = walk(server, "split.test")
    assert w.ok and set(w.networks) == nets("198.51.100.128")


def test_macros_that_need_no_client_are_expanded_the_others_skipped(server):
    w = walk(server, "macro.test")
    assert w.ok, w.errors
    assert set(w.networks) == nets("192.0.2.77", "192.0.2.78")
    assert any("exists:%{i}.x.macro.test" in n and "client IP" in n for n in w.notes)
    assert any("a:%{l}.macro.test" in n and "local part" in n for n in w.notes)
    assert any(n.startswith("macro.test: ptr") for n in w.notes)


def test_all_ends_the_record(server):
    w = walk(server, "allfirst.test")
    assert w.ok and set(w.networks) == nets("192.0.2.1")  # redirect= not followed
    w = walk(server, "plusall.test")
    assert w.ok and set(w.networks) == nets("192.0.2.2")
    assert w.notes == ["plusall.test: all authorises every address, not listed"]


def test_a_loop_is_not_followed(server):
    w = walk(server, "loop1.test")
    assert set(w.networks) == nets("192.0.2.31", "192.0.2.32")
    assert w.errors == ["loop1.test -> loop2.test -> loop1.test: loop, not followed"]


def test_a_domain_included_twice_is_no_loop(server):
    w = walk(server, "diamond.test")
    assert w.ok and set(w.networks) == nets("192.0.2.40") and w.lookups == 4


def test_the_lookup_limit_stops_the_walk_where_evaluation_would(server):
    w = walk(server, "chain0.test")
    # chain0 .. chain10 are reached with 10 includes; chain10's include is the 11th
    assert set(w.networks) == {net(f"10.0.0.{i}/32") for i in range(11)}
    assert len(w.errors) == 1 and "more than 10 DNS lookups" in w.errors[0] and "chain10.test" in w.errors[0]


def test_a_denied_include_is_walked_for_the_count_only(server):
    w = walk(server, "deny.test")
    # -include:chain0 walks 12 includes below it: the limit is hit before ip4:192.0.2.90
    assert set(w.networks) == set()
    assert "more than 10 DNS lookups" in w.errors[0]


def test_too_many_mx_names(server):
    w = walk(server, "manymx.test")
    assert set(w.networks) == nets("192.0.2.95")
    assert w.errors == ["manymx.test: mx: 11 MX names, more than 10 (permerror)"]


def test_a_null_mx_lists_nothing(server):
    w = walk(server, "nullmx.test")
    assert w.ok and not w.networks


@pytest.mark.parametrize(
    "domain, error",
    [
        ("twice.test", "twice.test: 2 SPF records (permerror)"),
        ("syntax.test", "syntax.test: unknown mechanism 'ipv4:192.0.2.51': the record authorises nothing (permerror)"),
        ("nospf.test", "nospf.test: no SPF record"),
        ("nowhere.test", "nowhere.test: no such domain"),
        ("noinclude.test", "noinclude.test include:nothing.test -> nothing.test: no such domain"),
    ],
)
def test_records_that_authorise_nothing(server, domain, error):
    w = walk(server, domain)
    assert w.errors == [error]
    assert set(w.networks) <= nets("192.0.2.61")  # noinclude: the ip4 after the include


def test_dns_failures_are_errors_and_the_rest_is_still_walked(server):
    t0 = time.monotonic()
    w = walk(server, "broken.test", timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert set(w.networks) == nets("192.0.2.60")
    assert w.errors == [
        "broken.test include:servfail.test -> servfail.test: TXT lookup failed (error 127.0.0.1:%d answered SERVFAIL)" % server.port,
        "broken.test include:drop.test -> drop.test: TXT lookup failed (timeout no answer within 0.5s)",
    ]  # a:gone.test is NXDOMAIN: nothing to list, no error


# -- the command ----------------------------------------------------------------------------------------


def run_walk(server, stdin: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smtpd_filters.spfwalk", "-resolver", f"127.0.0.1:{server.port}", "-timeout", "0.5", *argv],
        input=stdin, capture_output=True, text=True, env=filterkit.env(), timeout=30,
        cwd=filterkit.REPO,
    )


def test_the_command_prints_an_allowlist(server, tmp_path):
    p = run_walk(server, "# providers\nexample.test\n\nsplit.test  # trailing comment\nEXAMPLE.test.\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "192.0.2.0/24", "192.0.2.200", "198.51.100.16/28", "198.51.100.128", "203.0.113.0/24", "203.0.113.25",
        "2001:db8::/32", "2001:db8:1::/64", "2001:db8:2::/64", "2001:db8:ff::/120",
    ]
    assert p.stderr == ""
    allow = tmp_path / "allowlist"
    allow.write_text(p.stdout)
    cidrs = CIDRList.load(str(allow))
    assert "198.51.100.30" in cidrs and "2001:db8:2::1" in cidrs and "198.51.100.66" not in cidrs


def test_one_failing_domain_fails_the_run_but_not_the_others(server):
    p = run_walk(server, "broken.test\nsplit.test\nnot a domain\nmacro.test\n", "-4")
    assert p.returncode == 1
    assert p.stdout.splitlines() == ["192.0.2.60", "192.0.2.77", "192.0.2.78", "198.51.100.128"]
    err = p.stderr.splitlines()
    assert "py-spf-walk: broken.test include:drop.test -> drop.test: TXT lookup failed (timeout no answer within 0.5s)" in err
    assert "py-spf-walk: stdin:3: not a domain name (label 'not a domain'): 'not a domain'" in err
    assert any(line.startswith("py-spf-walk: macro.test: exists:%{i}") for line in err)


def test_notes_alone_do_not_fail_the_run(server):
    p = run_walk(server, "plusall.test\n")
    assert (p.returncode, p.stdout) == (0, "192.0.2.2\n")
    assert p.stderr == "py-spf-walk: plusall.test: all authorises every address, not listed\n"


def test_a_slash_0_is_noted_like_plus_all_and_not_listed(server):
    """An allowlist with 0.0.0.0/0 exempts every client: the walk treats a
    /0 as it treats +all (a note, nothing listed)."""
    p = run_walk(server, "slash0.test\n")
    assert (p.returncode, p.stdout) == (0, "192.0.2.3\n2001:db8:ff::/120\n")
    assert p.stderr.splitlines() == [
        "py-spf-walk: slash0.test: ip6:::/0 authorises every IPv6 address, not listed",
        "py-spf-walk: slash0.test: a:host.example.test/0//120 authorises every IPv4 address, not listed",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-resolver", "dns.example"], 'invalid value "dns.example" for flag -resolver'),
        (["-timeout", "0"], 'invalid value "0" for flag -timeout'),
        (["-x"], "flag provided but not defined: -x"),
        (["example.test"], "unexpected argument 'example.test'"),
    ],
)
def test_usage_errors(server, argv, message):
    p = run_walk(server, "", *argv)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1 and message in p.stderr


def test_format_network():
    assert format_network(net("192.0.2.1/32")) == "192.0.2.1"
    assert format_network(net("2001:db8::/32")) == "2001:db8::/32"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records())
def test_walking_a_generated_record_lists_its_networks(server, case):
    text, listed = case
    server.update(Zone().add("gen.test", "TXT", text))
    try:
        w = walk(server, "gen.test")
    finally:
        server.update(zone())
    # what evaluation reaches: the terms before an "all" and before the 11th DNS-querying term
    reached, lookups = set(), 0
    for m in parse_record(text).directives:
        lookups += m.kind in ("a", "mx", "include", "exists", "ptr")
        if m.kind == "all" or lookups > 10:
            break
        if m.kind in ("ip4", "ip6") and m.lists and m.network.prefixlen > 0:  # a /0 is noted like +all
            reached.add(m.network)
    assert set(w.networks) == reached <= listed
