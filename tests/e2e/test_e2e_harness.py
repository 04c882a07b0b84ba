"""The harness itself: namespace, fake DNS, smtpd, a raw-protocol control filter.

No SDK here: ``filters/raw_echo.py`` speaks the protocol by hand, so a failure
in this module points at the harness (or the machine), not at the SDK.
"""

from __future__ import annotations

import dns.message
import dns.query
import pytest

from e2e_harness import DOMAIN, default_zone, make_message

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def raw_server(smtpd_factory, e2e_runtime):
    srv = smtpd_factory(
        [e2e_runtime.test_filter("raw_echo.py", "--header", "X-Raw-Filter: seen", "--log", "-")],
        ipv6=True,
    )
    return srv


def test_namespace_has_only_loopback(raw_server):
    links = raw_server.ns.run(["ip", "-o", "link", "show"]).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"], links
    addrs = raw_server.ns.run(["ip", "-o", "addr", "show"]).stdout
    for ln in addrs.splitlines():
        addr = ln.split()[3]
        assert addr.startswith(("127.", "::1/")), ln
    assert raw_server.ns.run(["cat", "/etc/resolv.conf"]).stdout.startswith("nameserver 127.0.0.1\n")


def test_smtpd_runs_with_a_private_queue_and_control_socket(raw_server):
    r = raw_server.ns.run(["stat", "-c", "%U:%G %a", "/var/spool/smtpd", "/var/run/smtpd.sock"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "root:root 711"
    # the system's /var/spool is not the one smtpd uses
    assert not __import__("os").path.exists("/var/run/smtpd.sock")


def test_dns_server_answers_inside_the_namespace_and_reloads(raw_server):
    def ask(name: str, rdtype: str):
        q = dns.message.make_query(name, rdtype)
        sock = raw_server.ns.socket(type=__import__("socket").SOCK_DGRAM)
        with sock:
            return dns.query.udp(q, "127.0.0.1", port=53, timeout=3, sock=sock)

    r = ask("1.0.0.127.in-addr.arpa", "PTR")
    assert [rr.to_text() for rr in r.answer[0]] == ["localhost."]
    assert ask("nowhere.invalid", "A").rcode() == dns.rcode.NXDOMAIN

    raw_server.dns.update(default_zone().add("*.score.senderscore.com", "A", "127.0.4.77"))
    r = ask("1.0.0.127.score.senderscore.com", "A")
    assert [rr.to_text() for rr in r.answer[0]] == ["127.0.4.77"]
    names = [q.name for q in raw_server.dns.queries()]
    assert "1.0.0.127.score.senderscore.com." in names


def test_smtpd_resolves_the_client_with_the_namespace_dns(raw_server, tok):
    # smtpd looks the client up at connect: the PTR we serve ends up in Received:
    raw_server.dns.update(
        default_zone().set("1.0.0.127.in-addr.arpa", "PTR", "client-host.e2e.test").add(
            "client-host.e2e.test", "A", "127.0.0.1"
        )
    )
    try:
        with raw_server.smtp() as c:
            c.sendmail("alice@client.e2e.test", [f"bob@{DOMAIN}"], make_message(tok))
        m = raw_server.maildir.wait_for(tok)
        received = m.headers("Received")[0]
        assert "client-host.e2e.test" in received and "[127.0.0.1]" in received, received
    finally:
        raw_server.dns.update(default_zone())


def test_raw_filter_passes_a_message_through(raw_server, tok):
    # smtplib dot-stuffs on the wire; the delivered body must be what we sent
    body = "line one\r\n.leading dot\r\n.\r\n..two dots\r\nlast \xe9 line\r\n".encode("utf-8")
    with raw_server.smtp() as c:
        code, _ = c.ehlo("client.e2e.test")
        assert code == 250
        c.sendmail("alice@client.e2e.test", [f"bob@{DOMAIN}"], make_message(tok, body=body))
    m = raw_server.maildir.wait_for(tok)
    assert m.headers("X-Raw-Filter") == ["seen"]
    assert m.body == body.replace(b"\r\n", b"\n")
    # the filter's stderr is in smtpd's log, prefixed with the filter name
    assert raw_server.log_lines(r"f1: config\|ready")
    raw_server.assert_alive()


def test_ipv6_loopback_listener(raw_server, tok):
    with raw_server.smtp(host="::1") as c:
        c.ehlo("client.e2e.test")
        assert c.sendmail("alice@client.e2e.test", [f"bob@{DOMAIN}"], make_message(tok)) == {}
    received = raw_server.maildir.wait_for(tok).headers("Received")[0]
    assert "(localhost [::1])" in received, received
    assert raw_server.log_lines(r"f1: report\|0\.6\|.*\|link-connect\|.*\|localhost\|pass\|\[::1\]:\d+\|\[::1\]:25$")
