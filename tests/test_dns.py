"""smtpd_filter_sdk.dns against the loopback test DNS server (never a real one)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import dns.reversename
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd_filter_sdk.dns import (
    Answer,
    Nameserver,
    Resolver,
    VerdictCache,
    _interpret,
    dnsbl_name,
    parse_nameserver,
    reverse_name,
)
from smtpd_filter_sdk.netaddr import normalize_ip
from smtpd_filter_sdk.testing.dnsserver import DNSServer, Zone


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def zone():
    return (
        Zone(ttl=120)
        .add_ptr("192.0.2.10", "mail.example.test")
        .add("mail.example.test", "A", "192.0.2.10")
        .add_ptr("192.0.2.11", "liar.example.test")
        .add("liar.example.test", "A", "192.0.2.99")
        .add_ptr("192.0.2.12", "first.example.test")
        .add_ptr("192.0.2.12", "second.example.test")
        .add("first.example.test", "A", "192.0.2.200")
        .add("second.example.test", "A", "192.0.2.12")
        .add_ptr("192.0.2.13", "nowhere.example.test")  # forward NXDOMAIN
        .add_ptr("192.0.2.14", "slowfwd.example.test")
        .set_behaviour("slowfwd.example.test", "drop")
        .set_behaviour("15.2.0.192.in-addr.arpa", "drop")
        .set_behaviour("16.2.0.192.in-addr.arpa", "servfail")
        .add_ptr("192.0.2.17", "cname.example.test")
        .add("cname.example.test", "CNAME", "mail2.example.test")
        .add("mail2.example.test", "A", "192.0.2.17")
        .add_ptr("2001:db8::25", "v6.example.test")
        .add("v6.example.test", "AAAA", "2001:db8:0:0::25")
        .add("v6.example.test", "A", "192.0.2.250")
        .add("big.example.test", "TXT", "x" * 700)
        .add("onlytxt.example.test", "TXT", "hello")
        .set_behaviour("refused.example.test", "refused")
        .set_behaviour("late.example.test", "delay:0.15")
        .add("late.example.test", "A", "192.0.2.77")
    )


@pytest.fixture(scope="module")
def server(zone):
    with DNSServer(zone) as srv:
        yield srv


@pytest.fixture
def resolver(server):
    return Resolver([f"127.0.0.1:{server.port}"], timeout=0.4)


# -- names ----------------------------------------------------------------------------


def test_reverse_and_dnsbl_names():
    assert reverse_name("192.0.2.10") == "10.2.0.192.in-addr.arpa"
    assert reverse_name("::ffff:192.0.2.10") == "10.2.0.192.in-addr.arpa"
    assert reverse_name("2001:db8::1").endswith(".8.b.d.0.1.0.0.2.ip6.arpa")
    assert dnsbl_name("1.2.3.4", "score.senderscore.com.") == "4.3.2.1.score.senderscore.com"
    assert dnsbl_name("2001:db8::1", "bl.test").startswith("1.0.0.0.")


@given(st.ip_addresses())
def test_reverse_name_agrees_with_dnspython(ip):
    ip = normalize_ip(ip)  # ::ffff:a.b.c.d is reversed as a.b.c.d
    assert reverse_name(ip) + "." == dns.reversename.from_address(str(ip)).to_text()
    base = reverse_name(ip).removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    assert dnsbl_name(ip, "zone.test") == base + ".zone.test"


# -- nameservers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("127.0.0.1", "127.0.0.1", 53),
        ("127.0.0.1:5353", "127.0.0.1", 5353),
        ("::1", "::1", 53),
        ("[::1]", "::1", 53),
        ("[::1]:5300", "::1", 5300),
        (" 127.0.0.53 ", "127.0.0.53", 53),
    ],
)
def test_parse_nameserver(text, host, port):
    assert parse_nameserver(text) == Nameserver(host, port)


@pytest.mark.parametrize(
    "text", ["", "localhost", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x", "[::1", "[::1]x", "[::1]:", "1.2.3.4.5"]
)
def test_parse_nameserver_refuses(text):
    with pytest.raises(ValueError):
        parse_nameserver(text)


@given(st.ip_addresses(), st.integers(1, 65535))
def test_nameserver_text_round_trip(ip, port):
    ns = Nameserver(str(ip), port)
    assert parse_nameserver(str(ns)) == ns


@given(st.text(max_size=30))
def test_parse_nameserver_never_crashes(text):
    try:
        ns = parse_nameserver(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        ipaddress.ip_address(ns.host)
        assert 0 < ns.port < 65536


def test_system_nameservers_come_from_resolv_conf(tmp_path):
    from smtpd_filter_sdk.dns import system_nameservers

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver ::1\noptions timeout:1\n")
    assert system_nameservers(str(conf)) == [Nameserver("127.0.0.53"), Nameserver("::1")]
    conf.write_text("# nothing\n")
    assert system_nameservers(str(conf)) == [Nameserver("127.0.0.1")]


# -- queries -------------------------------------------------------------------------------


def test_answers(resolver):
    async def go():
        a = await resolver.query("mail.example.test", "A")
        assert a == Answer("ok", ("192.0.2.10",), 120)
        assert (await resolver.query("MAIL.Example.Test.", "A")).values == ("192.0.2.10",)
        assert (await resolver.query("nope.example.test", "A")).status == "nxdomain"
        assert (await resolver.query("onlytxt.example.test", "A")).status == "nodata"
        assert (await resolver.ptr("192.0.2.10")).values == ("mail.example.test",)
        cname = await resolver.addresses("cname.example.test", 4)
        assert cname.status == "ok" and cname.values == ("192.0.2.17",)
        assert (await resolver.addresses("v6.example.test", 6)).values == ("2001:db8::25",)
        late = await resolver.query("late.example.test", "A")
        assert late.values == ("192.0.2.77",)

    run(go())


def test_a_truncated_answer_is_asked_again_over_tcp(server):
    r = Resolver([f"127.0.0.1:{server.port}"], timeout=0.5, edns_payload=0)  # 512-byte UDP
    big = run(r.query("big.example.test", "TXT"))
    assert big.ok and "x" * 200 in big.values[0]
    assert r.queries == 2
    assert [q.transport for q in server.queries if q.name == "big.example.test."][-2:] == ["udp", "tcp"]


def test_errors_and_timeouts_are_values_within_the_deadline(resolver):
    async def go():
        t = time.monotonic()
        a = await resolver.query("15.2.0.192.in-addr.arpa", "PTR")
        took = time.monotonic() - t
        assert a.status == "timeout" and a.temporary
        assert 0.35 < took < 0.55, took
        s = await resolver.query("16.2.0.192.in-addr.arpa", "PTR")
        assert s.status == "error" and "SERVFAIL" in s.detail and s.temporary
        r = await resolver.query("refused.example.test", "A")
        assert r.status == "error" and "REFUSED" in r.detail
        bad = await resolver.query("a" * 70 + ".test", "A")  # label too long: not even sent
        assert bad.status == "error"

    run(go())


def test_a_slow_answer_past_the_timeout_is_a_timeout(server):
    r = Resolver([f"127.0.0.1:{server.port}"], timeout=0.1)
    a = run(r.query("late.example.test", "A"))
    assert a.status == "timeout"


def test_next_nameserver_after_servfail_or_silence(server, zone):
    # a second server whose zone answers what the first one refuses
    z2 = Zone(ttl=30).add("refused.example.test", "A", "192.0.2.1").add_ptr("192.0.2.15", "back.example.test")
    with DNSServer(z2) as second:
        r = Resolver([f"127.0.0.1:{server.port}", f"127.0.0.1:{second.port}"], timeout=0.6)

        async def go():
            a = await r.query("refused.example.test", "A")
            assert a.values == ("192.0.2.1",)
            t = time.monotonic()
            b = await r.ptr("192.0.2.15")  # first one drops it: its share of the time, then the second
            assert b.values == ("back.example.test",)
            assert 0.25 < time.monotonic() - t < 0.5

        run(go())


def test_a_dead_port_is_an_error_or_timeout_not_a_crash():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: ICMP port unreachable
    a = run(Resolver([f"127.0.0.1:{port}"], timeout=0.3).query("x.test", "A"))
    assert a.temporary


@settings(max_examples=10)
@given(st.lists(st.binary(min_size=0, max_size=60), min_size=1, max_size=3))
def test_garbage_answers_are_ignored_until_the_deadline(garbage):
    """A server that answers junk (or answers with the wrong id) never makes
    the resolver raise: the junk is ignored and the lookup times out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    port = sock.getsockname()[1]

    def serve():
        try:
            data, peer = sock.recvfrom(2048)
            for g in garbage:
                sock.sendto(data[:2] + g if g[:1] == b"\x00" else g, peer)
        except OSError:
            pass

    t = threading.Thread(target=serve)
    t.start()
    try:
        a = run(Resolver([f"127.0.0.1:{port}"], timeout=0.2).query("x.test", "A"))
        assert a.status in ("timeout", "error")
    finally:
        t.join()
        sock.close()


# property: whatever a server puts in its answer, interpretation is a value

_rtypes = st.sampled_from(["A", "AAAA", "PTR", "CNAME", "TXT"])


@st.composite
def responses(draw):
    q = dns.message.make_query("q.example.test", draw(_rtypes))
    r = dns.message.make_response(q)
    r.set_rcode(draw(st.sampled_from([0, 1, 2, 3, 4, 5])))
    for _ in range(draw(st.integers(0, 4))):
        owner = draw(st.sampled_from(["q.example.test.", "other.test.", "t.example.test."]))
        rtype = draw(_rtypes)
        value = {
            "A": draw(st.ip_addresses(v=4)).exploded,
            "AAAA": draw(st.ip_addresses(v=6)).exploded,
            "PTR": "n.example.test.",
            "CNAME": draw(st.sampled_from(["t.example.test.", "q.example.test.", "x.test."])),
            "TXT": '"txt"',
        }[rtype]
        r.answer.append(dns.rrset.from_text(owner, draw(st.integers(0, 2**31 - 1)), "IN", rtype, value))
    return q, r


@given(responses())
def test_interpret_any_response(qr):
    q, r = qr
    a = _interpret(q, r)
    assert a.status in ("ok", "nxdomain", "nodata", "error")
    assert (a.status == "ok") == bool(a.values)
    assert a.ttl >= 0


# -- FCrDNS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip, result, names, confirmed",
    [
        ("192.0.2.10", "pass", ("mail.example.test",), "mail.example.test"),
        ("192.0.2.11", "fail", ("liar.example.test",), None),
        ("192.0.2.12", "pass", None, "second.example.test"),  # the second PTR confirms
        ("192.0.2.13", "fail", ("nowhere.example.test",), None),  # forward NXDOMAIN: fail
        ("192.0.2.14", "temperror", ("slowfwd.example.test",), None),  # forward timeout
        ("192.0.2.15", "temperror", (), None),  # PTR dropped
        ("192.0.2.16", "temperror", (), None),  # PTR SERVFAIL
        ("192.0.2.17", "pass", ("cname.example.test",), "cname.example.test"),  # via CNAME
        ("192.0.2.99", "permerror", (), None),  # no PTR
        ("2001:db8::25", "pass", ("v6.example.test",), "v6.example.test"),  # AAAA, not A
        ("::ffff:192.0.2.10", "pass", ("mail.example.test",), "mail.example.test"),
    ],
)
def test_fcrdns(resolver, ip, result, names, confirmed):
    t = time.monotonic()
    r = run(resolver.fcrdns(ip))
    assert time.monotonic() - t < 2 * resolver.timeout + 0.2  # PTR + forward, each bounded
    assert r.result == result, r
    if names is not None:
        assert r.names == names
    assert r.confirmed == confirmed
    assert r.has_ptr == bool(r.names)


# -- the verdict cache ---------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_cache_single_flight_and_ttl():
    clock = Clock()
    cache: VerdictCache[str, int] = VerdictCache(ttl=10, timer=clock)
    calls = []

    async def compute():
        calls.append(1)
        await asyncio.sleep(0.01)
        return 42

    async def go():
        got = await asyncio.gather(*(cache.get("k", compute) for _ in range(50)))
        assert got == [42] * 50 and len(calls) == 1
        assert cache.joined == 49 and cache.misses == 1
        assert await cache.get("k", compute) == 42 and len(calls) == 1
        assert cache.peek("k") == 42 and "k" in cache
        clock.now += 10.5
        assert cache.peek("k") is None and "k" not in cache
        assert await cache.get("k", compute) == 42 and len(calls) == 2

    run(go())


def test_cache_errors_propagate_and_are_not_cached():
    cache: VerdictCache[str, int] = VerdictCache(ttl=10)
    n = [0]

    async def boom():
        n[0] += 1
        await asyncio.sleep(0)
        raise RuntimeError("x")

    async def go():
        res = await asyncio.gather(*(cache.get("k", boom) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in res) and n[0] == 1
        with pytest.raises(RuntimeError):
            await cache.get("k", boom)
        assert n[0] == 2 and len(cache) == 0 and cache.inflight == 0

    run(go())


def test_cancelling_one_waiter_does_not_cancel_the_lookup():
    cache: VerdictCache[str, str] = VerdictCache(ttl=10)

    async def slow():
        await asyncio.sleep(0.05)
        return "done"

    async def go():
        a = asyncio.ensure_future(cache.get("k", slow))
        b = asyncio.ensure_future(cache.get("k", slow))
        await asyncio.sleep(0.01)
        a.cancel()
        assert await b == "done"
        assert a.cancelled()
        assert cache.peek("k") == "done"

    run(go())


def test_cache_ttl_for_lru_and_background_start():
    cache: VerdictCache[int, int] = VerdictCache(ttl=10, maxsize=3, ttl_for=lambda v: 0 if v < 0 else 10)

    async def value(v):
        return v

    async def go():
        assert await cache.get(1, lambda: value(-1)) == -1
        assert len(cache) == 0  # ttl_for said 0: not stored
        for k in (1, 2, 3):
            await cache.get(k, lambda k=k: value(k))
        cache.peek(1)  # 1 is now the most recently used
        await cache.get(4, lambda: value(4))
        assert cache.peek(2) is None and cache.peek(1) == 1 and len(cache) == 3
        cache.start(9, lambda: value(9))
        cache.start(9, lambda: value(99))  # in flight already: ignored
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert cache.peek(9) == 9

    run(go())


# -- the lean codec (A/AAAA/PTR) agrees with dnspython ----------------------------------------

from smtpd_filter_sdk.dns import _Malformed, _encode_name, _parse_response  # noqa: E402


@st.composite
def fast_responses(draw):
    qtype = draw(st.sampled_from(["A", "AAAA", "PTR"]))
    q = dns.message.make_query("q.example.test", qtype)
    r = dns.message.make_response(q)
    r.set_rcode(draw(st.sampled_from([0, 0, 0, 2, 3, 5])))
    for _ in range(draw(st.integers(0, 5))):
        owner = draw(st.sampled_from(["q.example.test.", "Q.Example.TEST.", "other.test.", "t.example.test.", "u.test."]))
        rtype = draw(st.sampled_from(["A", "AAAA", "PTR", "CNAME", "TXT", "MX"]))
        value = {
            "A": draw(st.ip_addresses(v=4)).exploded,
            "AAAA": draw(st.ip_addresses(v=6)).exploded,
            "PTR": draw(st.sampled_from(["n.example.test.", "N.Example.Test.", "we\\.ird\\\\name.test.", "\\200x.test."])),
            "CNAME": draw(st.sampled_from(["t.example.test.", "q.example.test.", "u.test.", "x.test."])),
            "TXT": '"txt"',
            "MX": "10 mx.test.",
        }[rtype]
        r.answer.append(dns.rrset.from_text(owner, draw(st.integers(0, 2**31 - 1)), "IN", rtype, value))
    return qtype, q, r


@given(fast_responses())
def test_the_lean_codec_reads_answers_as_dnspython_does(qr):
    qtype, q, r = qr
    wire = r.to_wire()
    theirs = _interpret(q, dns.message.from_wire(wire))
    ours = _parse_response(wire, "q.example.test", dns.rdatatype.from_text(qtype))
    assert ours.status == theirs.status
    if ours.status == "ok":
        assert set(ours.values) == set(theirs.values)
        assert ours.ttl == theirs.ttl
    if ours.status == "error":
        assert ours.detail == theirs.detail


@given(st.binary(max_size=300), st.sampled_from([1, 28, 12]))
def test_the_lean_codec_never_raises_on_garbage(data, qtype):
    try:
        a = _parse_response(data, "q.example.test", qtype)
    except _Malformed:
        return
    assert a.status in ("ok", "nxdomain", "nodata", "error")


@given(fast_responses(), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6))
def test_the_lean_codec_survives_corrupted_answers(qr, flips):
    qtype, q, r = qr
    wire = bytearray(r.to_wire())
    for pos, value in flips:
        if pos < len(wire):
            wire[pos] = value
    try:
        a = _parse_response(bytes(wire), "q.example.test", dns.rdatatype.from_text(qtype))
    except _Malformed:
        return
    assert a.status in ("ok", "nxdomain", "nodata", "error")


def test_encode_name():
    assert _encode_name("Mail.Example.TEST.") == b"\x04mail\x07example\x04test\x00"
    for bad in ("", ".", "a..b", "x" * 64 + ".test", "caf\u00e9.test", "we\\.ird.test", ("a." * 128) + "test"):
        assert _encode_name(bad) is None, bad


def test_answers_with_another_question_are_ignored():
    """A datagram from the server's address with the right id but another
    question (a spoofing attempt) is not taken as the answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    port = sock.getsockname()[1]

    def serve():
        try:
            data, peer = sock.recvfrom(2048)
            q = dns.message.from_wire(data)
            other = dns.message.make_query("evil.test", "A")
            other.id = q.id
            spoof = dns.message.make_response(other)
            spoof.answer.append(dns.rrset.from_text("evil.test.", 60, "IN", "A", "6.6.6.6"))
            sock.sendto(spoof.to_wire(), peer)
            real = dns.message.make_response(q)
            real.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.1"))
            sock.sendto(real.to_wire(), peer)
        except OSError:
            pass

    t = threading.Thread(target=serve)
    t.start()
    try:
        a = run(Resolver([f"127.0.0.1:{port}"], timeout=0.5).query("good.test", "A"))
        assert a.values == ("192.0.2.1",)
    finally:
        t.join()
        sock.close()


def test_many_concurrent_queries_share_a_few_sockets(server):
    r = Resolver([f"127.0.0.1:{server.port}"], timeout=1)

    async def go():
        got = await asyncio.gather(*(r.ptr("192.0.2.10") for _ in range(300)))
        assert all(a.values == ("mail.example.test",) for a in got)
        assert sum(len(c) for c in r._channels.by_server.values()) <= 4
        r.close()

    run(go())
