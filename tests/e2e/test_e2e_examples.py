"""The newer examples, chained behind one real smtpd, as clients see them:

    filter "f1" proc-exec "<python> examples/event_log.py --output SCRATCH/events.jsonl"
    filter "f2" proc-exec "<python> examples/reject_helo.py --our-name backup.e2e.test"
    filter "f3" proc-exec "<python> examples/dnsbl.py --zone block.test --action block --timeout 1"
    filter "f4" proc-exec "<python> examples/dnsbl.py --zone junk.test --zone slow.test --action junk --timeout 1"
    filter "f5" proc-exec "<python> examples/rate_limit.py --max 3 --window 3600"
    filter "f6" proc-exec "<python> examples/subject_tag.py --tag [SPAM] --body-pattern lottery"
    filter "e2echain" chain { "f1", ..., "f6" }
    action "out" relay host smtp://127.0.0.1:2526 filter "f1"    (back in on port 2526)

Each client connects from its own loopback address (127.0.0.N, or ::1), so
the rate limiter's counts and the DNS lists' answers are per test; the
namespace's DNS server holds the lists.  (add_header.py is in
test_e2e_sdk_examples.py.)
"""

from __future__ import annotations

import json
import smtplib
import time

import pytest

from e2e_harness import DOMAIN, NsSMTP, default_zone, make_message
from smtpd_filter_sdk.dns import dnsbl_name

pytestmark = pytest.mark.e2e

FROM = "alice@client.e2e.test"
TO = f"bob@{DOMAIN}"
OUT = "out.e2e.test"
OUT_HOST = "relay.e2e.test"


def zone():
    z = default_zone()
    z.add(dnsbl_name("127.0.0.2", "block.test"), "A", "127.0.0.2")
    z.add(dnsbl_name("127.0.0.3", "junk.test"), "A", "127.0.0.4")
    z.add(dnsbl_name("127.0.0.4", "junk.test"), "A", "127.255.255.254")  # "use your own resolver"
    z.add(dnsbl_name("::1", "junk.test"), "A", "127.0.0.10")  # the 32-nibble name
    z.set_behaviour("*.slow.test", "drop")  # one list never answers anybody
    return z


@pytest.fixture(scope="module")
def events_file(e2e_runtime):
    d = e2e_runtime.new_dir("event-log")
    d.chmod(0o1777)  # the filter runs as smtpd's user
    return d / "events.jsonl"


@pytest.fixture(scope="module")
def server(smtpd_factory, e2e_runtime, events_file):
    return smtpd_factory(
        [
            e2e_runtime.example("event_log.py", "--output", str(events_file)),
            e2e_runtime.example("reject_helo.py", "--our-name", "backup.e2e.test"),
            e2e_runtime.example("dnsbl.py", "--zone", "block.test", "--action", "block", "--timeout", "1"),
            e2e_runtime.example("dnsbl.py", "--zone", "junk.test", "--zone", "slow.test", "--action", "junk", "--timeout", "1"),
            e2e_runtime.example("rate_limit.py", "--max", "3", "--window", "3600"),
            e2e_runtime.example("subject_tag.py", "--tag", "[SPAM]", "--body-pattern", "lottery"),
        ],
        zone=zone(),
        ipv6=True,
        # mail for OUT leaves through smtp-out (the event log is attached to
        # the relay action too) and comes back in on port 2526
        extra_conf=(
            f'listen on 127.0.0.1 port 2526 hostname {OUT_HOST} tag back\n'
            f'action "out" relay host smtp://127.0.0.1:2526 filter "f1"\n'
            f'match tag back from any for domain "{OUT}" action "deliver"\n'
            f'match from any for domain "{OUT}" action "out"'
        ),
    )


def client(server, src: str) -> NsSMTP:
    if ":" in src:
        return NsSMTP(server.ns, "::1", 25, local_hostname="client.e2e.test", timeout=30)
    return NsSMTP(server.ns, "127.0.0.1", 25, local_hostname="client.e2e.test", source_address=(src, 0), timeout=30)


def events(events_file, **match) -> list[dict]:
    out = [json.loads(line) for line in events_file.read_text().splitlines()]
    return [e for e in out if all(e.get(k) == v for k, v in match.items())]


def test_a_clean_client_gets_through_untouched(server, tok):
    with client(server, "127.0.0.4") as c:  # junk.test answers 127.255.255.254: not a listing
        assert c.ehlo("client.e2e.test")[0] == 250
        assert c.sendmail(FROM, [TO], make_message(tok, subject=f"lunch {tok}")) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("Subject") == [f"lunch {tok}"]
    assert m.headers("X-Spam") == []
    assert server.log_lines(r"f4: \S+ addr=127\.0\.0\.4 junk\.test: ignored answer 127\.255\.255\.254")
    assert server.log_lines(r"f4: \S+ addr=127\.0\.0\.4 slow\.test: timeout")


def test_a_client_on_the_block_list_is_turned_away_at_connect(server):
    # smtpd sends the filter's reply instead of the banner, and hangs up
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        client(server, "127.0.0.2")
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error == b"5.7.1 Service unavailable; client [127.0.0.2] listed in block.test"
    assert server.log_lines(r"f3: \S+ addr=127\.0\.0\.2 listed: block\.test=127\.0\.0\.2: block")


def test_a_listed_client_is_junked_and_its_subject_tagged(server, tok):
    with client(server, "127.0.0.3") as c:
        assert c.ehlo("client.e2e.test")[0] == 250
        assert c.sendmail(FROM, [TO], make_message(tok, subject=f"offer {tok}")) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("X-Spam") == ["Yes"]
    assert m.headers("Subject") == [f"[SPAM] offer {tok}"]


def test_an_ipv6_client_is_looked_up_by_its_nibbles(server, tok):
    with client(server, "::1") as c:
        assert c.ehlo("client.e2e.test")[0] == 250
        assert c.sendmail(FROM, [TO], make_message(tok, subject=f"v6 {tok}")) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("X-Spam") == ["Yes"]
    assert m.headers("Subject") == [f"[SPAM] v6 {tok}"]
    asked = {q.name.lower().rstrip(".") for q in server.dns.queries()}
    assert dnsbl_name("::1", "junk.test") in asked


def test_a_body_that_matches_gets_the_tag(server, tok):
    with client(server, "127.0.0.6") as c:
        c.ehlo("client.e2e.test")
        assert c.sendmail(FROM, [TO], make_message(tok, subject=f"news {tok}", body=b"You won the lottery!\r\n")) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("Subject") == [f"[SPAM] news {tok}"] and m.headers("X-Spam") == []
    assert m.body == b"You won the lottery!\n"


def test_recipients_past_the_limit_are_deferred(server, tok):
    with client(server, "127.0.0.5") as c:
        c.ehlo("client.e2e.test")
        assert c.mail(FROM)[0] == 250
        for n in range(3):
            assert c.rcpt(f"user{n}@{DOMAIN}")[0] == 250
        assert c.rcpt(f"user3@{DOMAIN}") == (452, b"4.7.1 too many recipients from your address, try again later")
        assert c.data(make_message(tok))[0] == 250
    with client(server, "127.0.0.5") as c:  # a new session: the same budget
        c.ehlo("client.e2e.test")
        c.mail(FROM)
        assert c.rcpt(TO)[0] == 452
    for n in range(3):  # the three accepted recipients got their copy
        assert server.wait_log(rf"to=<user{n}@e2e\.test> rcpt=<user{n}@e2e\.test> .*stat=Delivered")
    assert server.log_lines(r"f5: \S+ addr=127\.0\.0\.5 rcpt=user3@e2e\.test over limit \(3 in 3600s\): 452")


def test_our_own_name_as_helo_is_refused(server):
    with client(server, "127.0.0.7") as c:
        for name in ("mx.e2e.test", "backup.e2e.test", "[127.0.0.7]", "127.0.0.7"):  # smtpd passes a bare address on
            code, reply = c.ehlo(name)
            assert (code, reply) == (550, f"5.7.1 HELO {name} not accepted here".encode())
        assert c.ehlo("client.e2e.test")[0] == 250


def test_every_event_is_in_the_json_log(server, events_file, tok):
    with client(server, "127.0.0.8") as c:
        assert c.ehlo("localhost")[0] == 550
        assert c.ehlo("client.e2e.test")[0] == 250
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    server.maildir.wait_for(tok)
    connect = [e for e in events(events_file, event="link-connect") if e["src"].startswith("127.0.0.8:")]
    assert len(connect) == 1
    deadline = time.monotonic() + 10
    while not events(events_file, session=connect[0]["session"], event="link-disconnect"):
        assert time.monotonic() < deadline, "no link-disconnect in the log"
        time.sleep(0.05)
    mine = events(events_file, session=connect[0]["session"])
    names = [e["event"] for e in mine]
    assert names[0] == "link-connect"
    for name in ("link-greeting", "link-identify", "tx-begin", "tx-mail", "tx-rcpt", "tx-data", "tx-commit", "protocol-client", "protocol-server"):
        assert name in names, names
    assert connect[0]["dest"] == "127.0.0.1:25" and connect[0]["fcrdns"] in ("fail", "error")
    assert [e["hostname"] for e in mine if e["event"] == "link-greeting"] == ["mx.e2e.test"]
    refused = [e for e in mine if e["event"] == "filter-response" and e["response"] == "reject"]
    assert [(e["phase"], e["param"]) for e in refused] == [("ehlo", "550 5.7.1 HELO localhost not accepted here")]
    assert [e["address"] for e in mine if e["event"] == "tx-mail"] == [FROM]
    assert {e["subsystem"] for e in mine} == {"smtp-in"}


def test_relayed_mail_is_logged_as_smtp_out(server, events_file, tok):
    with client(server, "127.0.0.9") as c:
        c.ehlo("client.e2e.test")
        assert c.sendmail(FROM, [f"carol@{OUT}"], make_message(tok, to=f"carol@{OUT}")) == {}
    server.maildir.wait_for(tok)  # out through smtp-out, back in on port 2526
    # (smtpd keeps the outgoing connection open a while for more mail: its
    # link-disconnect comes seconds later, so wait for the commit only)
    deadline = time.monotonic() + 10
    while not events(events_file, subsystem="smtp-out", event="tx-commit"):
        assert time.monotonic() < deadline, "no smtp-out tx-commit in the log"
        time.sleep(0.05)
    out = events(events_file, subsystem="smtp-out")
    names = [e["event"] for e in out]
    for name in ("link-connect", "link-greeting", "link-identify", "tx-begin", "tx-mail", "tx-rcpt", "tx-commit", "protocol-client", "protocol-server"):
        assert name in names, names
    connect = out[names.index("link-connect")]
    assert connect["dest"] == "127.0.0.1:2526"
    assert [e["hostname"] for e in out if e["event"] == "link-greeting"] == [OUT_HOST]
    assert [e["address"] for e in out if e["event"] == "tx-rcpt"] == [f"carol@{OUT}"]


def test_smtpd_is_still_running(server):
    server.assert_alive()
