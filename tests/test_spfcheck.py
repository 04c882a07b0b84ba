"""smtpd_filters.spfcheck: pyspf verdicts against the loopback test DNS server.

Every answer comes from ``smtpd_filter_sdk.testing.dnsserver`` on 127.0.0.1
(a free port); nothing here can reach another resolver.
"""

from __future__ import annotations

import asyncio
import threading
import time

import dns.resolver
import pytest
import spf as pyspf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import filterkit  # noqa: F401  (smtpd_filters from a checkout that is not installed)
from smtpd_filter_sdk.testing.dnsserver import DNSServer, Zone
from smtpd_filters.spfcheck import RESULTS, SpfChecker, spf_identity

GOOD = "192.0.2.10"  # authorised by every domain below that authorises anything
BAD = "198.51.100.7"  # authorised by none


def zone() -> Zone:
    return (
        Zone(ttl=60)
        .add("pass.test", "TXT", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all")
        .add("soft.test", "TXT", "v=spf1 ip4:192.0.2.0/24 ~all")
        .add("neutral.test", "TXT", "v=spf1 ?all")
        .add("nospf.test", "TXT", "google-site-verification=abc")
        .add("perm.test", "TXT", "v=spf1 ip4:192.0.2.0/24 frobnicate -all")
        .add("two.test", "TXT", "v=spf1 -all")
        .add("two.test", "TXT", "v=spf1 +all")
        .add("temp.test", "TXT", "v=spf1 include:servfail.test -all")
        .set_behaviour("servfail.test", "servfail")
        .add("inc.test", "TXT", "v=spf1 include:pass.test -all")
        .add("long.test", "TXT", ["v=spf1 ip4:203.0.113.0/24 ", "include:pass.test -all"])
        .add("mx.test", "TXT", "v=spf1 mx a:relay.mx.test -all")
        .add("mx.test", "MX", "10 mail.mx.test")
        .add("mail.mx.test", "A", GOOD)
        .add("relay.mx.test", "AAAA", "2001:db8:25::1")
        .add("helo.test", "TXT", f"v=spf1 ip4:{GOOD} -all")
        .add("slow.test", "TXT", "v=spf1 include:drop.test -all")
        .set_behaviour("drop.test", "drop")
        .add("CaSe.test", "TXT", "V=SPF1 IP4:192.0.2.0/24 -ALL")
    )


@pytest.fixture(scope="module")
def server():
    with DNSServer(zone()) as srv:
        yield srv


@pytest.fixture(scope="module")
def checker(server):
    c = SpfChecker(timeout=2.0, nameservers=[f"127.0.0.1:{server.port}"])
    yield c
    c.close()


def check(checker: SpfChecker, ip: str, sender: str, helo: str = "client.example") -> str:
    return asyncio.run(checker.check(ip, sender, helo))


@pytest.mark.parametrize(
    "ip, sender, result",
    [
        (GOOD, "alice@pass.test", "pass"),
        ("2001:db8::1", "alice@pass.test", "pass"),
        ("::ffff:192.0.2.10", "alice@pass.test", "pass"),  # an IPv4-mapped client is its IPv4 address
        (BAD, "alice@pass.test", "fail"),
        (BAD, "<alice@pass.test>", "fail"),  # as smtpd may hand it over
        (BAD, "alice@soft.test", "softfail"),
        (GOOD, "alice@soft.test", "pass"),
        (BAD, "alice@neutral.test", "neutral"),
        (BAD, "alice@nospf.test", "none"),
        (BAD, "alice@nxdomain.test", "none"),
        (GOOD, "alice@perm.test", "permerror"),  # a syntax error spoils the whole record
        (GOOD, "alice@two.test", "permerror"),  # two SPF records
        (GOOD, "alice@temp.test", "temperror"),  # SERVFAIL is an answer, not a timeout
        (GOOD, "alice@inc.test", "pass"),
        (BAD, "alice@inc.test", "fail"),
        (GOOD, "alice@long.test", "pass"),  # a record in two character-strings
        (GOOD, "alice@mx.test", "pass"),
        ("2001:db8:25::1", "alice@mx.test", "pass"),
        ("2001:db8:25::2", "alice@mx.test", "fail"),
        (GOOD, "alice@CASE.TEST", "pass"),
    ],
)
def test_decisions(checker, ip, sender, result):
    assert check(checker, ip, sender) == result


def test_the_explanation_says_why(checker):
    v = asyncio.run(checker.evaluate(BAD, "alice@temp.test", "client.example"))
    assert (v.result, v.identity, v.domain) == ("temperror", "mailfrom", "temp.test")
    assert "servfail.test" in v.explanation
    v = asyncio.run(checker.evaluate(GOOD, "alice@perm.test", "client.example"))
    assert v.result == "permerror" and "frobnicate" in v.explanation


def test_null_sender_checks_the_helo_identity(checker, server):
    server.clear_queries()
    for sender in ("", "<>"):
        v = asyncio.run(checker.evaluate(GOOD, sender, "helo.test"))
        assert (v.result, v.identity, v.domain) == ("pass", "helo", "helo.test")
    assert check(checker, BAD, "<>", "helo.test") == "fail"
    assert {q.name for q in server.queries} == {"helo.test."}


@pytest.mark.parametrize("helo", ["[192.0.2.10]", "192.0.2.10", "localhost", "", "bad..name.test", "-x.test"])
def test_a_null_sender_with_an_unusable_helo_is_none_without_dns(checker, server, helo):
    server.clear_queries()
    v = asyncio.run(checker.evaluate(GOOD, "<>", helo))
    assert (v.result, v.identity) == ("none", "helo")
    assert server.queries == []


def test_an_unusable_client_address_is_none(checker):
    v = asyncio.run(checker.evaluate("unix:/var/run/smtpd.sock", "alice@pass.test", "x.test"))
    assert v.result == "none" and "not an IP address" in v.explanation


def test_a_dropped_query_is_a_timeout_within_the_bound_and_the_loop_keeps_running(server):
    c = SpfChecker(timeout=0.8, nameservers=[f"127.0.0.1:{server.port}"])
    ticks = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def scenario() -> tuple[list[str], float, int]:
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        t0 = time.monotonic()
        # more checks than worker threads: the queued ones time out as well
        results = await asyncio.gather(*(c.check(GOOD, f"u{i}@slow.test", "x.test") for i in range(12)))
        elapsed = time.monotonic() - t0
        during = len(ticks)
        stop.set()
        await t
        return results, elapsed, during

    try:
        results, elapsed, during = asyncio.run(scenario())
    finally:
        c.close()
    assert results == ["timeout"] * 12
    assert 0.7 <= elapsed < 0.8 + 1.5  # the bound, with room for a loaded machine
    assert during >= 10  # the event loop ran while the checks waited for DNS
    asked = [q for q in server.queries if q.name == "drop.test." and q.outcome == "drop"]
    assert asked, "the include was looked up"


def test_a_dns_timeout_inside_the_worker_is_reported_as_timeout(server):
    # The worker's lookups stop at the same deadline as the await; here the
    # worker runs alone (no asyncio bound around it), so it is pyspf's
    # temperror for the dropped include that must come back as "timeout".
    c = SpfChecker(timeout=5.0, nameservers=[f"127.0.0.1:{server.port}"])
    try:
        result, explanation = c._run(GOOD, "bob@slow.test", "x.test", time.monotonic() + 0.3)
        assert (result, "drop.test" in explanation) == ("timeout", True)
        # a SERVFAIL in the same position stays a temperror
        assert c._run(GOOD, "bob@temp.test", "x.test", time.monotonic() + 0.3)[0] == "temperror"
    finally:
        c.close()


def test_the_bound_holds_while_every_worker_is_busy(server):
    from smtpd_filters import spfcheck as spfmod

    c = SpfChecker(timeout=0.3, nameservers=[f"127.0.0.1:{server.port}"])
    release = threading.Event()
    for _ in range(spfmod.WORKERS):  # stuck workers: the check can only wait in the queue
        c._pool.submit(release.wait, 10)
    try:
        t0 = time.monotonic()
        assert asyncio.run(c.check(GOOD, "alice@pass.test", "x.test")) == "timeout"
        assert time.monotonic() - t0 < 5
    finally:
        release.set()
        c.close()


def test_a_silent_nameserver_is_a_timeout():
    with DNSServer(Zone().set_behaviour("*.test", "drop")) as srv:
        c = SpfChecker(timeout=0.4, nameservers=[f"127.0.0.1:{srv.port}"])
        try:
            assert asyncio.run(c.check(GOOD, "alice@pass.test", "x.test")) == "timeout"
        finally:
            c.close()


@pytest.mark.filterwarnings("ignore:please use dns.resolver.resolve:DeprecationWarning")
def test_each_checker_asks_its_own_nameservers_and_plain_pyspf_is_untouched(server):
    other = Zone().add("pass.test", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    with DNSServer(other) as srv2:
        c2 = SpfChecker(timeout=2.0, nameservers=[f"127.0.0.1:{srv2.port}"])
        c1 = SpfChecker(timeout=2.0, nameservers=[f"127.0.0.1:{server.port}"])

        async def both() -> list[str]:
            return await asyncio.gather(c1.check(BAD, "a@pass.test", "x.test"), c2.check(BAD, "a@pass.test", "x.test"))

        try:
            assert asyncio.run(both()) == ["fail", "pass"]
        finally:
            c1.close()
            c2.close()
        # pyspf called directly (no checker) still uses dnspython's default
        # resolver - pointed here at the second server, never a real one
        saved = dns.resolver.default_resolver
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = srv2.port
        dns.resolver.default_resolver = r
        try:
            box: dict[str, object] = {}
            t = threading.Thread(target=lambda: box.update(r=pyspf.check2(BAD, "a@pass.test", "x.test")))
            t.start()
            t.join(10)
        finally:
            dns.resolver.default_resolver = saved
        assert box["r"][0] == "pass"


def test_a_closed_checker_answers_temperror(server):
    c = SpfChecker(timeout=1.0, nameservers=[f"127.0.0.1:{server.port}"])
    c.close()
    v = asyncio.run(c.evaluate(GOOD, "alice@pass.test", "x.test"))
    assert (v.result, v.explanation) == ("temperror", "the checker is closed")


def test_bad_arguments():
    with pytest.raises(ValueError):
        SpfChecker(timeout=0)
    with pytest.raises(ValueError):
        SpfChecker(nameservers=["resolver.example"])


@pytest.mark.parametrize(
    "sender, helo, expected",
    [
        ("alice@example.com", "mx.test", ("mailfrom", "alice@example.com", "example.com")),
        ("<alice@Example.COM.>", "mx.test", ("mailfrom", "alice@Example.COM.", "Example.COM")),
        ("<>", "mx.test.", ("helo", "", "mx.test")),
        ("", " mx.test ", ("helo", "", "mx.test")),
        ("@example.com", "mx.test", ("mailfrom", "@example.com", "example.com")),
        ("example.com", "mx.test", ("mailfrom", "example.com", "example.com")),
    ],
)
def test_identity(sender, helo, expected):
    assert spf_identity(sender, helo) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ip=st.one_of(st.ip_addresses().map(str), st.text(max_size=20)),
    sender=st.text(max_size=40),
    helo=st.text(max_size=30),
)
def test_anything_gets_a_result_and_nothing_raises(checker, ip, sender, helo):
    assert check(checker, ip, sender, helo) in RESULTS
