"""smtpd_filter_sdk.testing.dnsserver: the loopback test DNS server, by itself.

In-process on a free port, queried with dnspython (the resolver our filters
use); one test runs it as a subprocess with SIGHUP reloads.  No root needed.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from smtpd_filter_sdk.testing.dnsserver import DNSServer, DNSServerProcess, Zone

REPO = Path(__file__).resolve().parents[2]
DKIM_KEY = "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 10


def zone() -> Zone:
    return (
        Zone(ttl=30)
        .add_ptr("127.0.0.1", "localhost")
        .add_ptr("2001:db8::25", "mx6.example.test")
        .add("localhost", "A", "127.0.0.1")
        .add("mail.example.test", "A", "192.0.2.10", "192.0.2.11")
        .add("mail.example.test", "AAAA", "2001:db8::10")
        .add("example.test", "MX", "10 mail.example.test")
        .add("example.test", "TXT", "v=spf1 -all", ["two", "strings"])
        .add("alias.example.test", "CNAME", "mail.example.test")
        .add("sel._domainkey.example.test", "TXT", DKIM_KEY)
        .add("*.score.senderscore.com", "A", "127.0.4.77")
        .add("5.0.0.127.score.senderscore.com", "A", "127.0.4.5")
        .set_behaviour("9.0.0.127.score.senderscore.com", "drop")
        .set_behaviour("servfail.example.test", "servfail")
        .set_behaviour("refused.example.test", "refused")
        .set_behaviour("nx.example.test", "nxdomain")
        .set_behaviour("mail.example.test", None)
        .set_behaviour("*.slow.example.test", "delay:0.3")
    )


@pytest.fixture
def srv():
    with DNSServer(zone()) as s:
        yield s


def resolver(s: DNSServer, lifetime: float = 2.0) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [s.host]
    r.port = s.port
    r.lifetime = lifetime
    return r


def ask(s: DNSServer | tuple[str, int], name: str, rdtype: str = "A", timeout: float = 2.0, tcp: bool = False):
    host, port = s if isinstance(s, tuple) else s.address
    q = dns.message.make_query(name, rdtype)
    fn = dns.query.tcp if tcp else dns.query.udp
    return fn(q, host, port=port, timeout=timeout)


def texts(answer) -> list[str]:
    return sorted(rr.to_text() for rr in answer)


def test_records_by_type(srv):
    r = resolver(srv)
    assert texts(r.resolve("mail.example.test", "A")) == ["192.0.2.10", "192.0.2.11"]
    assert texts(r.resolve("mail.example.test", "AAAA")) == ["2001:db8::10"]
    assert texts(r.resolve("example.test", "MX")) == ["10 mail.example.test."]
    assert texts(r.resolve("example.test", "TXT")) == ['"two" "strings"', '"v=spf1 -all"']
    assert texts(r.resolve_address("127.0.0.1")) == ["localhost."]
    assert texts(r.resolve_address("2001:db8::25")) == ["mx6.example.test."]
    assert r.resolve("mail.example.test", "A").rrset.ttl == 30


def test_names_are_case_insensitive_and_answers_authoritative(srv):
    m = ask(srv, "MAIL.Example.TEST.")
    assert m.flags & dns.flags.AA
    assert texts(m.answer[0]) == ["192.0.2.10", "192.0.2.11"]


def test_nxdomain_nodata_and_empty_non_terminals(srv):
    r = resolver(srv)
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("nothing.example.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("mail.example.test", "TXT")  # name exists, type does not
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("_domainkey.example.test", "TXT")  # only has names below it


def test_wildcards_like_senderscore(srv):
    r = resolver(srv)
    assert texts(r.resolve("4.3.2.1.score.senderscore.com", "A")) == ["127.0.4.77"]
    assert texts(r.resolve("x.score.senderscore.com", "A")) == ["127.0.4.77"]
    assert r.resolve("4.3.2.1.score.senderscore.com", "A").rrset.name.to_text() == "4.3.2.1.score.senderscore.com."
    # an existing name beats the wildcard; the wildcard does not cover its own apex
    assert texts(r.resolve("5.0.0.127.score.senderscore.com", "A")) == ["127.0.4.5"]
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("score.senderscore.com", "A")


def test_cname_is_followed(srv):
    m = ask(srv, "alias.example.test", "A")
    assert [rrset.rdtype for rrset in m.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert texts(resolver(srv).resolve("alias.example.test", "A")) == ["192.0.2.10", "192.0.2.11"]


@pytest.mark.parametrize(
    "name,rcode",
    [
        ("servfail.example.test", dns.rcode.SERVFAIL),
        ("refused.example.test", dns.rcode.REFUSED),
        ("nx.example.test", dns.rcode.NXDOMAIN),
    ],
)
def test_error_behaviours(srv, name, rcode):
    for tcp in (False, True):
        assert ask(srv, name, tcp=tcp).rcode() == rcode


def test_drop_never_answers_on_udp_or_tcp_and_the_server_carries_on(srv):
    with pytest.raises(dns.exception.Timeout):
        ask(srv, "9.0.0.127.score.senderscore.com", timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        ask(srv, "9.0.0.127.score.senderscore.com", timeout=0.3, tcp=True)
    assert texts(ask(srv, "1.0.0.127.score.senderscore.com").answer[0]) == ["127.0.4.77"]
    dropped = [q for q in srv.queries if q.outcome == "drop"]
    assert [(q.name, q.transport) for q in dropped] == [
        ("9.0.0.127.score.senderscore.com.", "udp"),
        ("9.0.0.127.score.senderscore.com.", "tcp"),
    ]


def test_delay_answers_late(srv):
    srv.update(zone().add("a.slow.example.test", "A", "192.0.2.99"))
    t0 = time.monotonic()
    m = ask(srv, "a.slow.example.test")
    assert time.monotonic() - t0 >= 0.28
    assert texts(m.answer[0]) == ["192.0.2.99"]


def test_a_long_txt_record_is_truncated_on_udp_and_whole_on_tcp(srv):
    m = ask(srv, "sel._domainkey.example.test", "TXT")
    assert m.flags & dns.flags.TC and not m.answer
    m = ask(srv, "sel._domainkey.example.test", "TXT", tcp=True)
    assert b"".join(m.answer[0][0].strings).decode() == DKIM_KEY
    # the resolver falls back to TCP by itself
    got = resolver(srv).resolve("sel._domainkey.example.test", "TXT")[0]
    assert b"".join(got.strings).decode() == DKIM_KEY


def test_update_swaps_the_zone_while_serving(srv):
    r = resolver(srv)
    assert texts(r.resolve("1.0.0.127.score.senderscore.com", "A")) == ["127.0.4.77"]
    srv.update(zone().set("*.score.senderscore.com", "A", "127.255.255.255"))
    assert texts(r.resolve("1.0.0.127.score.senderscore.com", "A")) == ["127.255.255.255"]
    srv.update(zone().set_behaviour("*.score.senderscore.com", "nxdomain"))
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("1.0.0.127.score.senderscore.com", "A")


def test_negative_ttl_adds_an_soa(srv):
    assert not ask(srv, "nothing.example.test").authority
    srv.update(Zone(negative_ttl=120).add("a.test", "A", "192.0.2.1"))
    m = ask(srv, "nothing.a.test")
    assert m.rcode() == dns.rcode.NXDOMAIN
    assert m.authority[0].rdtype == dns.rdatatype.SOA and m.authority[0][0].minimum == 120


def test_garbage_and_queries_log(srv):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\x01garbage", (srv.host, srv.port))
    assert texts(ask(srv, "localhost").answer[0]) == ["127.0.0.1"]
    outcomes = [(q.name, q.type, q.outcome) for q in srv.queries]
    assert ("", "", "unparsable") in outcomes
    assert ("localhost.", "A", "NOERROR") in outcomes
    srv.clear_queries()
    assert srv.queries == []


def test_loopback_only():
    for host in ("0.0.0.0", "192.0.2.1", "::", "example.test"):
        with pytest.raises(ValueError):
            DNSServer(Zone(), host=host)


def test_ipv6_loopback():
    with DNSServer(zone(), host="::1") as s:
        assert texts(ask(s, "localhost").answer[0]) == ["127.0.0.1"]


def test_zone_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError):
        Zone().set_behaviour("x.test", "explode")
    with pytest.raises(Exception):
        Zone().add("x.test", "A", "not-an-address")
    with pytest.raises(ValueError):
        Zone().add("a.*.x.test", "A", "192.0.2.1")
    with pytest.raises(ValueError):
        Zone.from_dict({"recods": {}})
    z = Zone.from_dict(
        {
            "ttl": 5,
            "records": {"a.test": {"A": ["192.0.2.1"]}, "t.test": {"TXT": "one string"}},
            "ptr": {"192.0.2.1": "a.test"},
            "behaviours": {"*.b.test": "servfail"},
        }
    )
    z.to_json(tmp_path / "z.json")
    again = Zone.from_json(tmp_path / "z.json")
    assert again.to_dict() == z.to_dict()
    assert again.records["1.2.0.192.in-addr.arpa."] == {"PTR": ["a.test"]}
    assert again.behaviours == {"*.b.test.": "servfail"}
    assert again.ttl == 5
    z.remove("a.test")
    assert "a.test." not in z.records and "a.test." in again.records


def test_as_a_subprocess_with_sighup_reload(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = DNSServerProcess(zone(), tmp_path, python=sys.executable, port=0, env=env)
    with proc:
        assert proc.port != 0
        s = ("127.0.0.1", proc.port)
        assert texts(ask(s, "1.0.0.127.score.senderscore.com").answer[0]) == ["127.0.4.77"]
        proc.update(zone().set("*.score.senderscore.com", "A", "127.0.4.12"))
        assert proc.generation == 1
        assert texts(ask(s, "1.0.0.127.score.senderscore.com").answer[0]) == ["127.0.4.12"]
        # a broken zone file is ignored on reload: the old zone keeps answering
        proc.zone_file.write_text("{ not json")
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(0.3)
        assert proc.alive()
        assert texts(ask(s, "1.0.0.127.score.senderscore.com").answer[0]) == ["127.0.4.12"]
        names = [(q.name, q.outcome) for q in proc.queries()]
        assert names.count(("1.0.0.127.score.senderscore.com.", "NOERROR")) == 3
        assert "failed, keeping the old zone" in proc.log_file.read_text()
        assert proc.ready_file.read_text().split() == [str(proc.pid), "1", str(proc.port)]
    assert not proc.alive()
