"""py-spf-walk next to OpenSMTPD's ``smtpctl spf walk``, on the same zone.

Both run inside a private network + mount namespace whose only interface is
``lo`` and whose ``/etc/resolv.conf`` names 127.0.0.1, where the loopback test
DNS server answers on port 53: smtpctl (libasr) can ask nothing else.  Our
walker runs there too, without ``-resolver``, so it reads the same resolv.conf.

On the terms smtpctl handles, both must print the same set of networks
(smtpctl prints host bits as written, ``192.0.2.1/27``; compared as networks).
Where smtpctl 6.8 differs, the differences are asserted as what they are.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import pytest

from e2e_harness import Namespace, skip_or_fail
from e2e_harness.netns import have_namespaces
from smtpd_filter_sdk.netaddr import parse_network
from smtpd_filter_sdk.testing.dnsserver import DNSServerProcess, Zone

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SMTPCTL = "/usr/sbin/smtpctl"

# Terms smtpctl 6.8 handles the way RFC 7208 (and we) do.  A bare "a"/"mx"
# appears once only: smtpctl deduplicates terms by their text across domains.
SAME = {
    "top1.test": "v=spf1 ip4:192.0.2.0/25 IP4:192.0.2.130 include:inc.top1.test "
    "a:host.top1.test/27 mx:mx.top1.test//64 -ip4:10.0.0.0/8 ~a:soft.top1.test ?ip4:198.51.100.99 ptr -all",
    "inc.top1.test": "v=spf1 ip4:203.0.113.0/24 redirect=red.top1.test",
    "red.top1.test": "v=spf1 a mx -all",
    "top2.test": "v=spf1 include:%{i}.mac.top2.test exists:%{i}.ex.top2.test ip4:192.0.2.250 -all",
    "top3.test": "V=SPF1 +a:both.top3.test//56 +mx:top3.test/28 -include:deny.top3.test ~all",
    "deny.top3.test": "v=spf1 ip4:10.9.9.9 -all",
}


def zone() -> Zone:
    z = Zone(ttl=60)
    for name, text in SAME.items():
        z.add(name, "TXT", text)
    return (
        z.add("top4.test", "TXT", "v=spf1 ip4:192.0.2.44 -all", "site-verification=abc")
        .add("top5.test", "TXT", ["v=spf1 ip4:198.51.100.1", "28 -all"])  # one record, two strings
        .add("host.top1.test", "A", "198.51.100.33")
        .add("host.top1.test", "AAAA", "2001:db8:33::1")
        .add("mx.top1.test", "MX", "10 mail1.top1.test", "20 mail2.top1.test")
        .add("mail1.top1.test", "A", "198.51.100.41")
        .add("mail1.top1.test", "AAAA", "2001:db8:41::1")
        .add("mail2.top1.test", "AAAA", "2001:db8:42::1")
        .add("soft.top1.test", "A", "198.51.100.50")
        .add("red.top1.test", "A", "198.51.100.60")
        .add("red.top1.test", "MX", "10 mail1.top1.test")
        .add("both.top3.test", "A", "198.51.100.177")
        .add("both.top3.test", "AAAA", "2001:db8:77::7")
        .add("top3.test", "MX", "5 mx.top3.test")
        .add("mx.top3.test", "A", "198.51.100.200")
        # where smtpctl 6.8 differs
        .add("diff.test", "TXT", "v=spf1 a/24 include:%{d}.d.diff.test exists:ex.diff.test "
             "ip6:2001:db8:10::/48 a:both.diff.test/25//56 -all")
        .add("both.diff.test", "A", "192.0.2.200")
        .add("both.diff.test", "AAAA", "2001:db8:200::1")
        .add("diff.test", "A", "192.0.2.180")
        .add("diff.test.d.diff.test", "TXT", "v=spf1 ip4:192.0.2.181 -all")
        .add("ex.diff.test", "A", "127.0.0.2")
    )


@pytest.fixture(scope="module")
def ns(tmp_path_factory):
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (namespaces, port 53)")
    if not os.access(SMTPCTL, os.X_OK):
        problems.append(f"{SMTPCTL} not found (apt-get install opensmtpd)")
    if not problems:
        why = have_namespaces()
        if why:
            problems.append(why)
    if problems:
        skip_or_fail("; ".join(problems))
    work = tmp_path_factory.mktemp("spfwalk")
    space = Namespace(work / "ns").start()
    dns = DNSServerProcess(
        zone(), work / "dns", python=sys.executable, port=53,
        argv_prefix=space.nsenter_argv(), env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        dns.start()
        # smtpctl must never see another resolver than ours
        conf = space.run(["cat", "/etc/resolv.conf"]).stdout
        assert [ln.split() for ln in conf.splitlines() if ln.startswith("nameserver")] == [["nameserver", "127.0.0.1"]]
        yield space, dns
    finally:
        dns.stop()
        space.stop()


def smtpctl(space: Namespace, domains: list[str]):
    p = space.run([SMTPCTL, "spf", "walk"], input="".join(d + "\n" for d in domains), timeout=60)
    assert p.returncode == 0, p.stderr
    return {parse_network(line) for line in p.stdout.split()}, p.stderr


def ours(space: Namespace, domains: list[str], *argv: str):
    p = space.run(
        [sys.executable, str(REPO / "filters" / "spfwalk.py"), "-timeout", "2", *argv],
        input="".join(d + "\n" for d in domains), timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)},
    )
    return {parse_network(line) for line in p.stdout.split()}, p


def nets(*texts: str) -> set:
    return {ipaddress.ip_network(t, strict=False) for t in texts}


def test_the_same_networks_as_smtpctl(ns):
    space, dns = ns
    domains = ["top1.test", "top2.test", "top3.test", "top4.test", "top5.test"]
    theirs, their_err = smtpctl(space, domains)
    mine, p = ours(space, domains)
    assert p.returncode == 0, p.stderr
    assert mine == theirs
    assert mine == nets(
        "192.0.2.0/25", "192.0.2.130", "198.51.100.99",
        "203.0.113.0/24", "198.51.100.60", "198.51.100.41", "2001:db8:41::1",  # include -> redirect -> a mx
        "198.51.100.32/27", "2001:db8:33::1",  # a:host/27
        "198.51.100.41", "2001:db8:41::/64", "2001:db8:42::/64",  # mx:...//64
        "192.0.2.250",
        "198.51.100.177", "2001:db8:77::/56", "198.51.100.192/28",
        "192.0.2.44", "198.51.100.128",
    )
    assert "contains macros" in their_err and "needs the client IP" in p.stderr
    asked = {q.name for q in dns.queries()}
    assert {"top1.test.", "red.top1.test.", "mx.top3.test."} <= asked  # both asked our server


def test_where_smtpctl_differs(ns):
    space, _ = ns
    theirs, _ = smtpctl(space, ["diff.test"])
    mine, p = ours(space, ["diff.test"])
    assert p.returncode == 0, p.stderr
    # smtpctl ignores "a/24" (it knows "a" and "a:" only) and every macro;
    # on glibc its inet_net_pton() takes AF_INET only, so every ip6: term is
    # lost; "a:host/25//56" (both lengths) fails its CIDR parser and is skipped
    # whole ("a:host//56" works).  It prints the address exists: resolves to,
    # which authorises nothing.
    assert mine - theirs == nets(
        "192.0.2.0/24", "192.0.2.181", "2001:db8:10::/48", "192.0.2.128/25", "2001:db8:200::/56"
    )
    assert theirs - mine == nets("127.0.0.2")
