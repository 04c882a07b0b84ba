"""The example filters (examples/*.py), driven through simulated smtpd
sessions as a client would see them.  DNS answers come from the loopback
test DNS server."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examplekit import example
from smtpd_filter_sdk.dns import Resolver, dnsbl_name
from smtpd_filter_sdk.testing.dnsserver import DNSServer, Zone
from smtpd_filter_sdk.testing.harness import Harness

DIALECTS = ["0.4", "0.6", "0.7", "0.7/7.6"]

add_header = example("add_header")
reject_helo = example("reject_helo")
dnsbl = example("dnsbl")
rate_limit = example("rate_limit")
subject_tag = example("subject_tag")
event_log = example("event_log")


# -- (1) add_header ---------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_add_header_tags_every_message_and_replaces_a_forged_one(dialect):
    with Harness(add_header.build("X-Filtered-By", "add-header"), dialect=dialect) as h:
        s = h.session()
        first = s.send_message(headers={"Subject": "one", "X-Filtered-By": "forged"}, body=b".\n..x\n")
        second = s.send_message(headers={"Subject": "two"})
        assert first.headers.get_all("X-Filtered-By") == ["add-header"]
        assert first.headers_removed() == ["X-Filtered-By: forged"]
        assert first.body == b".\r\n..x\r\n"  # dot lines as the client meant them
        assert second.headers.get_all("X-Filtered-By") == ["add-header"]
        assert h.phases == {"data-line", "commit"}  # nothing else is asked of it


def test_add_header_refuses_a_bad_header_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        add_header.main(["--header", "no colon here"])
    assert exit_.value.code == 2
    assert "--header must look like 'Name: value'" in capsys.readouterr().err


# -- (2) reject_helo ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "identity, reason",
    [
        ("localhost", "localhost"),
        ("LocalHost.LocalDomain", "localhost"),
        ("[192.0.2.1]", "an address literal"),
        ("[IPv6:2001:db8::1]", "an address literal"),
        ("192.0.2.1", "a bare address"),  # what bots say; smtpd lets it through (digits make a host name)
        ("mx.test", "our own name"),  # what the harness's smtpd greets with
        ("MX.Test.", "our own name"),
        ("backup.example.net", "our own name"),  # --our-name
        ("mail.example.org", None),
        ("localhost.example.org", None),
    ],
)
def test_reject_helo_refuses_what_no_real_server_says(identity, reason):
    with Harness(reject_helo.build(our_names=["backup.example.net"])) as h:
        s = h.session()
        step = s.ehlo(identity)
        if reason is None:
            assert step.decision == "proceed" and step.ok
        else:
            assert step.decision == f"reject|550 5.7.1 HELO {identity} not accepted here"
            assert not s.closed  # the client may try again
            assert s.ehlo("mail.example.org").ok
            assert h.stderr[0].endswith(f"rejecting HELO {identity!r}: {reason}")


def test_reject_helo_literals_and_patterns_are_options():
    f = reject_helo.build(allow_literals=True, pattern=re.compile(r"\.invalid$", re.I))
    with Harness(f) as h:
        s = h.session()
        assert s.helo("host.INVALID").code == 550
        assert s.helo("localhost").code == 550
        assert s.helo("[192.0.2.1]").ok  # (and smtpd takes one HELO per session)
        assert h.session().helo("192.0.2.1").code == 550  # a bare address is no literal: never allowed


@given(st.text(max_size=80).filter(lambda t: "\n" not in t and "\r" not in t))
def test_reject_helo_never_fails_on_any_name(identity):
    reason = reject_helo.why_refused(identity, {"mx.test"})
    assert reason in (None, "localhost", "an address literal", "a bare address", "our own name")


# -- (3) dnsbl ----------------------------------------------------------------------------

V6 = "2001:db8::1"


@pytest.fixture(scope="module")
def dns_server():
    zone = Zone(ttl=60)
    zone.add(dnsbl_name("192.0.2.2", "bl.test"), "A", "127.0.0.2")
    zone.add(dnsbl_name("192.0.2.2", "other.test"), "A", "127.0.0.4")
    zone.add(dnsbl_name("192.0.2.3", "other.test"), "A", "127.0.0.3")
    zone.add(dnsbl_name("192.0.2.4", "bl.test"), "A", "127.255.255.254")  # "use your own resolver"
    zone.add(dnsbl_name("192.0.2.5", "bl.test"), "A", "127.255.255.255")  # over quota
    zone.add(dnsbl_name("192.0.2.6", "bl.test"), "A", "198.51.100.7")  # a parked, wildcarded zone
    zone.set_behaviour(dnsbl_name("192.0.2.7", "bl.test"), "drop")  # never answered
    zone.add(dnsbl_name("192.0.2.7", "other.test"), "A", "127.0.0.2")
    zone.set_behaviour(dnsbl_name("192.0.2.8", "bl.test"), "servfail")
    zone.add(dnsbl_name(V6, "bl.test"), "A", "127.0.0.10")
    with DNSServer(zone) as srv:
        yield srv


def dnsbl_harness(srv, action, dialect="0.6"):
    resolver = Resolver([f"127.0.0.1:{srv.port}"], timeout=1.0)
    return Harness(dnsbl.build(["bl.test", "other.test"], action, resolver), dialect=dialect)


def test_ipv6_names_are_32_reversed_nibbles():
    name = dnsbl_name(V6, "bl.test")  # 2001:0db8:0000:...:0001, backwards
    assert name == "1.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.bl.test"
    assert len(name.split(".")) == 32 + 2
    assert dnsbl_name("::ffff:192.0.2.2", "bl.test") == "2.2.0.192.bl.test"


@pytest.mark.parametrize(
    "src, listed",
    [
        ("192.0.2.1", None),
        ("192.0.2.2", "bl.test=127.0.0.2, other.test=127.0.0.4"),
        ("192.0.2.3", "other.test=127.0.0.3"),
        ("192.0.2.4", None),  # 127.255.255.254 is the list refusing us, not a listing
        ("192.0.2.5", None),
        ("192.0.2.6", None),
        ("192.0.2.7", "other.test=127.0.0.2"),  # one zone silent: the other still counts
        ("192.0.2.8", None),
        (V6, "bl.test=127.0.0.10"),
    ],
)
def test_dnsbl_block_junk_and_header(dns_server, src, listed):
    with dnsbl_harness(dns_server, "block") as h:
        s = h.session(src=src)
        if listed:
            zone = listed.split("=")[0]
            assert s.connect.decision == f"disconnect|554 5.7.1 Service unavailable; client [{src}] listed in {zone}"
            assert s.closed
        else:
            assert s.connect.decision == "proceed" and s.send_message().accepted
    with dnsbl_harness(dns_server, "junk") as h:
        s = h.session(src=src)
        assert s.connect.decision == ("junk" if listed else "proceed")
        assert s.send_message().junk == bool(listed)
    with dnsbl_harness(dns_server, "header") as h:
        s = h.session(src=src)
        msg = s.send_message(headers={"Subject": "hi", "X-DNSBL": "forged"})
        assert s.connect.decision == "proceed" and msg.accepted
        assert msg.headers.get_all("X-DNSBL") == ([listed] if listed else [])


def test_dnsbl_queries_the_zones_in_parallel_and_logs_what_it_ignores(dns_server):
    with dnsbl_harness(dns_server, "junk") as h:
        s = h.session(src="192.0.2.7")  # bl.test never answers (1 s timeout)
        assert s.connect.decision == "junk"
        s = h.session(src="192.0.2.4")
        assert s.connect.decision == "proceed"
    log = "\n".join(h.stderr)
    assert "addr=192.0.2.7 bl.test: timeout" in log
    assert "addr=192.0.2.7 listed: other.test=127.0.0.2: junk" in log
    assert "addr=192.0.2.4 bl.test: ignored answer 127.255.255.254" in log
    # both zones were asked for 192.0.2.7, and the answer came within one timeout
    asked = {q.name.lower() for q in dns_server.queries}
    assert dnsbl_name("192.0.2.7", "other.test") + "." in asked


def test_dnsbl_skips_local_sessions(dns_server):
    before = len(dns_server.queries)
    with dnsbl_harness(dns_server, "block") as h:
        s = h.session(src="local")
        assert s.connect.decision == "proceed" and s.send_message().accepted
    assert len(dns_server.queries) == before


def test_dnsbl_registers_data_lines_only_for_the_header_action(dns_server):
    for action, phases in [("junk", {"connect"}), ("block", {"connect"}), ("header", {"connect", "data-line", "commit"})]:
        with dnsbl_harness(dns_server, action) as h:
            assert h.phases == phases


# -- (4) rate_limit ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_refuses_recipients_past_the_limit_until_the_window_moves():
    clock = Clock()
    with Harness(rate_limit.build(3, 60, clock=clock)) as h:
        s = h.session(src="192.0.2.1")
        msg = s.send_message(to=["a@example.net", "b@example.net"])
        assert msg.accepted and [r.decision.kind for r in msg.rcpts] == ["proceed", "proceed"]
        # a second session from the same address shares the budget
        s2 = h.session(src="192.0.2.1")
        msg = s2.send_message(to=["c@example.net", "d@example.net"])
        assert [r.reply for r in msg.rcpts][1] == "452 4.7.1 too many recipients from your address, try again later"
        assert msg.accepted  # c@ got through, d@ was deferred
        # another address has its own budget
        assert h.session(src="192.0.2.2").send_message(to=["e@example.net"]).accepted
        clock.now += 61  # the first three age out
        assert s2.send_message(to=["d@example.net"]).accepted
    assert "addr=192.0.2.1 rcpt=d@example.net over limit (3 in 60s): 452" in h.stderr[0]


def test_rate_limit_counts_an_ipv6_client_by_its_64_and_spares_authenticated_ones():
    clock = Clock()
    with Harness(rate_limit.build(1, 60, clock=clock)) as h:
        assert h.session(src="2001:db8:1:2::a").send_message(to=["a@example.net"]).accepted
        refused = h.session(src="2001:db8:1:2::b").send_message(to=["b@example.net"])
        assert not refused.accepted and refused.rcpts[0].code == 452
        assert h.session(src="2001:db8:1:3::a").send_message(to=["c@example.net"]).accepted
        s = h.session(src="2001:db8:1:2::c")
        s.ehlo("client.example.org")
        s.auth("alice")
        assert s.send_message(to=["d@example.net", "e@example.net"]).accepted


def test_the_small_examples_ask_smtpd_only_for_the_reports_they_read():
    freeing = {"link-disconnect", "tx-reset"}  # always: they end per-session state
    with Harness(rate_limit.build(3, 60)) as h:
        assert h.reports == freeing | {"link-connect", "link-auth"}
    with Harness(reject_helo.build()) as h:
        assert h.reports == freeing | {"link-greeting"}
    with Harness(dnsbl.build(["bl.test"], "junk", Resolver(["127.0.0.1:9"], timeout=0.1))) as h:
        assert h.reports == freeing | {"link-connect"}


def test_sliding_window_forgets_the_oldest_clients_first():
    clock = Clock()
    w = rate_limit.SlidingWindow(10, max_keys=2, clock=clock)
    for key in ("a", "b", "a", "c"):
        w.add(key)
    assert (w.count("a"), w.count("b"), w.count("c")) == (2, 0, 1)
    clock.now += 10
    assert w.count("a") == 0 and len(w.events) == 1


# -- (5) subject_tag ---------------------------------------------------------------------


def test_subject_tag_tags_junk_once_and_leaves_the_rest_alone():
    f = subject_tag.build("[SPAM]", re.compile("lottery", re.I))
    with Harness(f) as h:
        s = h.session()
        clean = s.send_message(headers={"Subject": "lunch?"}, body=b"Shall we?\n.\n")
        assert clean.headers["Subject"] == "lunch?" and clean.body == b"Shall we?\r\n.\r\n"
        won = s.send_message(headers={"Subject": "news"}, body=b"You won the LOTTERY\n")
        assert won.headers.get_all("Subject") == ["[SPAM] news"]
        again = s.send_message(headers={"Subject": "[SPAM] news"}, body=b"lottery\n")
        assert again.headers.get_all("Subject") == ["[SPAM] news"]
        bare = s.send_message(headers={"From": "a@example.org"}, body=b"lottery\n")
        assert bare.headers.get_all("Subject") == ["[SPAM]"]
    assert h.stderr[0].endswith("tagged (body matches 'lottery')")


def test_subject_tag_tags_what_an_earlier_filter_junked():
    # smtpd writes "X-Spam: Yes" on top of a junked session's messages
    with Harness(subject_tag.build()) as h:
        s = h.session()
        msg = s.send_message(lines=[b"X-Spam: Yes", b"Subject: =?utf-8?q?caf=C3=A9?=", b"", b"hi"])
        assert msg.headers.get_all("Subject") == ["[SPAM] =?utf-8?q?caf=C3=A9?="]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=10))
def test_subject_tag_keeps_any_body_byte_for_byte(lines):
    with Harness(subject_tag.build("[SPAM]", re.compile("spam"))) as h:
        msg = h.session().send_message(headers={"Subject": "x"}, body=lines)
        assert msg.accepted
        assert msg.body == b"".join(line + b"\r\n" for line in lines)


# -- (6) event_log -----------------------------------------------------------------------


def read_events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_event_log_writes_every_smtp_in_event_as_json(tmp_path, dialect):
    out = tmp_path / "events.jsonl"
    with Harness(event_log.build(event_log.Output(str(out))), dialect=dialect) as h:
        s = h.session(src="192.0.2.1", rdns="mx.example.org")
        s.ehlo("mx.example.org")
        s.send_message(from_="a|b@example.org", to=["bob@example.net"])
        s.quit()
        assert h.phases == set()  # it decides nothing
    events = read_events(out)
    names = [e["event"] for e in events]
    assert names[0] == "link-connect" and names[-1] == "link-disconnect"
    for name in ("link-greeting", "link-identify", "tx-begin", "tx-mail", "tx-rcpt", "tx-data", "tx-commit", "protocol-client"):
        assert name in names
    connect = events[0]
    assert (connect["subsystem"], connect["rdns"], connect["fcrdns"]) == ("smtp-in", "mx.example.org", "pass")
    assert connect["src"].startswith("192.0.2.1:")
    mail = next(e for e in events if e["event"] == "tx-mail")
    # the same fields in every dialect, whatever order smtpd wrote them in
    assert (mail["result"], mail["address"]) == ("ok", "a|b@example.org")
    assert {e["session"] for e in events} == {s.id}


def test_event_log_takes_smtp_out_where_smtpd_offers_it(tmp_path):
    out = tmp_path / "events.jsonl"
    with Harness(event_log.build(event_log.Output(str(out))), dialect="0.6", smtp_out=True) as h:
        assert "report|smtp-out|link-connect" in " ".join(x.decode() for x in h.registration).replace("register|", "")
        w = h.sim.wire
        h.feed(
            w.report("1.5", "link-connect", "0a", "mx.example.net", "pass", "192.0.2.1:4321", "198.51.100.5:25", subsystem="smtp-out"),
            w.report("1.6", "protocol-client", "0a", "AUTH PLAIN ********", subsystem="smtp-out"),
            w.report("1.7", "link-disconnect", "0a", subsystem="smtp-out"),
        )
    events = read_events(out)
    assert [(e["subsystem"], e["event"]) for e in events] == [
        ("smtp-out", "link-connect"),
        ("smtp-out", "protocol-client"),
        ("smtp-out", "link-disconnect"),
    ]
    assert events[0]["dest"] == "198.51.100.5:25" and events[1]["command"] == "AUTH PLAIN ********"


def test_event_log_without_smtp_out_registers_smtp_in_only():
    with Harness(event_log.build(event_log.Output("-")), dialect="0.4") as h:
        assert not [line for line in h.registration if b"smtp-out" in line]
        assert any(b"report|smtp-in|tx-mail" in line for line in h.registration)


def test_event_log_reopens_its_file_on_reload(tmp_path):
    out = tmp_path / "events.jsonl"
    output = event_log.Output(str(out))
    f = event_log.build(output)
    with Harness(f) as h:
        h.session().quit()
        out.rename(tmp_path / "events.jsonl.1")  # logrotate
        for handler in f.reload_handlers:  # what SIGHUP does
            handler()
        h.session().quit()
    assert read_events(tmp_path / "events.jsonl.1")[0]["event"] == "link-connect"
    assert read_events(out)[0]["event"] == "link-connect"
