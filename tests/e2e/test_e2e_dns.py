"""A filter's own DNS lookups are answered by the namespace's fake DNS.

What the senderscore/rdns filters rely on: the filter (uid opensmtpd, clean
env) reads /etc/resolv.conf inside the namespace, gets 127.0.0.1:53, and the
test steers the answers at run time with ``server.dns.update(zone)``.

    filter "f1" proc-exec "<python> tests/e2e/filters/dns_probe.py --timeout 1"
"""

from __future__ import annotations

import time

import pytest

from e2e_harness import DOMAIN, default_zone, make_message

pytestmark = pytest.mark.e2e

NAME = "1.0.0.127.score.senderscore.com."


@pytest.fixture(scope="module")
def server(smtpd_factory, e2e_runtime):
    return smtpd_factory([e2e_runtime.test_filter("dns_probe.py", "--timeout", "1")])


def probe(server, tok) -> str:
    with server.smtp() as c:
        c.ehlo("client.e2e.test")
        assert c.sendmail("alice@client.e2e.test", [f"bob@{DOMAIN}"], make_message(tok)) == {}
    return server.maildir.wait_for(tok).headers("X-DNS-Probe")[0]


@pytest.mark.parametrize(
    "zone,expected",
    [
        (default_zone(), "NXDOMAIN"),
        (default_zone().add("*.score.senderscore.com", "A", "127.0.4.77"), "127.0.4.77"),
        (default_zone().add("*.senderscore.com", "A", "127.0.4.5")
                       .add(NAME, "A", "127.0.4.12"), "127.0.4.12"),
        (default_zone().add("score.senderscore.com", "TXT", "x"), "NXDOMAIN"),
        (default_zone().add("*.score.senderscore.com", "TXT", "x"), "NOANSWER"),
        (default_zone().set_behaviour("*.score.senderscore.com", "servfail"), "SERVFAIL"),
        (default_zone().set_behaviour(NAME, "refused"), "SERVFAIL"),
        (default_zone().set_behaviour("*.senderscore.com", "drop"), "TIMEOUT"),
    ],
    ids=["nothing", "wildcard", "exact-beats-wildcard", "apex-only", "nodata", "servfail", "refused", "drop"],
)
def test_the_filter_sees_what_the_zone_says(server, tok, zone, expected):
    server.dns.update(zone)
    try:
        before = len(server.dns.queries())
        t0 = time.monotonic()
        assert probe(server, tok) == expected
        if expected == "TIMEOUT":
            assert time.monotonic() - t0 >= 0.9  # the resolver's lifetime, not an instant failure
        asked = [q for q in server.dns.queries()[before:] if q.name == NAME and q.type == "A"]
        assert asked, "the filter did not query the namespace DNS"
    finally:
        server.dns.update(default_zone())


def test_smtpd_is_still_running(server):
    server.assert_alive()
