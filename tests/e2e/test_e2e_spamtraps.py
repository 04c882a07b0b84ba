"""py-filter-spamtraps behind a real smtpd, named bare as users write it:

    filter "f1" proc-exec "py-filter-spamtraps -traps FILE -db DIR/traps.db -expire 1h"

Each client connects from its own loopback address (127.0.0.N; the
namespace's ``lo`` owns all of 127/8), so one address can be trapped while
the others are not.
"""

from __future__ import annotations

import smtplib
import time

import pytest

from e2e_bare import bare_smtpd_factory  # noqa: F401  (fixture)
from e2e_harness import AUTH_PASSWORD, AUTH_USER, DOMAIN, NsSMTP, make_message, token

pytestmark = pytest.mark.e2e

TRAPS = f"trap@{DOMAIN}\n*@honeypot.{DOMAIN}\n/^old-[0-9]+@e2e\\.test$/\n"
REFUSED = "421 4.7.0 Service temporarily unavailable, try again later"
FROM = "alice@client.e2e.test"


@pytest.fixture(scope="module")
def state(e2e_runtime):
    """Trap list and database directory, shared by every smtpd of the module
    (the filter runs as opensmtpd: the directory is world-writable)."""
    d = e2e_runtime.new_dir("spamtraps")
    d.chmod(0o1777)
    (d / "traps").write_text(TRAPS)
    (d / "traps").chmod(0o644)
    return d


def cmd(state, *args: str, db: str = "traps.db") -> str:
    return " ".join(["py-filter-spamtraps", "-traps", str(state / "traps"), "-db", str(state / db), "-spf=false", *args])


@pytest.fixture(scope="module")
def server(bare_smtpd_factory, state):
    return bare_smtpd_factory([cmd(state, "-expire", "1h")], tls=True, submission=True)


def client(server, src: str, port: int = 25) -> NsSMTP:
    return NsSMTP(server.ns, "127.0.0.1", port, local_hostname="client.e2e.test", source_address=(src, 0), timeout=30)


def banner(server, src: str) -> str:
    """The first line a new session from ``src`` gets (and whether it stays open)."""
    with server.ns.create_connection(("127.0.0.1", 25), 10, (src, 0)) as s:
        f = s.makefile("rb")
        line = f.readline().decode().rstrip("\r\n")
        if line.startswith("421"):
            assert f.readline() == b""  # closed by smtpd after the refusal
        return line


def test_a_trap_recipient_is_refused_exactly_like_an_unknown_user(server):
    """The reply to the trap is smtpd's own unknown-recipient reply, word for
    word, so nothing tells a harvester which address was the trap."""
    with client(server, "127.0.0.2") as c:
        c.ehlo("client.e2e.test")
        assert c.mail(FROM)[0] == 250
        trap = c.rcpt(f"trap@{DOMAIN}")
        unknown = c.rcpt("nobody@unknown-domain.example")  # smtpd itself says this
        assert trap == (550, f"Invalid recipient: <trap@{DOMAIN}>".encode())
        assert unknown == (550, b"Invalid recipient: <nobody@unknown-domain.example>")
        assert c.rcpt(f"bob@{DOMAIN}")[0] == 250  # the session goes on
    assert server.wait_log(rf"f1: \S+ rcpt-to: trap trap@{DOMAIN} hit by 127\.0\.0\.2: reject, blocked until ")


def test_the_trapped_address_is_refused_at_connect_and_others_are_not(server):
    assert banner(server, "127.0.0.2") == REFUSED
    assert banner(server, "127.0.0.3").startswith("220 ")
    assert server.wait_log(r"f1: \S+ connect: addr=127\.0\.0\.2 is trapped \(\d+s left\): refused")
    tok = token()
    with client(server, "127.0.0.3") as c:
        c.ehlo("client.e2e.test")
        assert c.sendmail(FROM, [f"bob@{DOMAIN}"], make_message(tok)) == {}
    server.maildir.wait_for(tok)


def test_an_authenticated_submission_to_a_trap_is_not_trapped(server):
    import ssl

    tok = token()
    c = client(server, "127.0.0.4", port=server.submission_port)
    with c:
        ctx = ssl.create_default_context(cafile=str(server.cert_path))
        ctx.check_hostname = False
        c.ehlo("client.e2e.test")
        c.starttls(context=ctx)
        c.ehlo("client.e2e.test")
        c.login(AUTH_USER, AUTH_PASSWORD)
        assert c.sendmail(FROM, [f"trap@{DOMAIN}"], make_message(tok, to=f"trap@{DOMAIN}")) == {}
    server.maildir.wait_for(tok)
    assert server.wait_log(rf"f1: \S+ rcpt-to: trap trap@{DOMAIN}: not trapped \(authenticated as {AUTH_USER}\)")
    assert banner(server, "127.0.0.4").startswith("220 ")


def test_a_restarted_filter_keeps_the_block(bare_smtpd_factory, server, state):
    """smtpd and its filter stop; a new pair on the same database still
    refuses the client trapped before."""
    with client(server, "127.0.0.5") as c:
        c.ehlo("client.e2e.test")
        c.mail(FROM)
        assert c.rcpt(f"x@honeypot.{DOMAIN}")[0] == 550
    server.wait_log(r"hit by 127\.0\.0\.5")
    server.stop()  # EOF: the filter writes what is pending and exits
    again = bare_smtpd_factory([cmd(state, "-expire", "1h")])
    assert banner(again, "127.0.0.5") == REFUSED
    assert banner(again, "127.0.0.2") == REFUSED
    assert banner(again, "127.0.0.6").startswith("220 ")
    assert again.log_lines(r"f1: starting \(3 traps, [2-9] trapped clients in ")


def test_disconnect_action_and_expiry(bare_smtpd_factory, state):
    """-action disconnect, and a block of 2 s that ends on its own."""
    srv = bare_smtpd_factory([cmd(state, "-action", "disconnect", "-expire", "2s", db="short.db")])
    with client(srv, "127.0.0.7") as c:
        c.ehlo("client.e2e.test")
        c.mail(FROM)
        code, text = c.rcpt(f"old-12@{DOMAIN}")
        assert (code, text) == (421, b"4.3.0 Temporary failure, closing connection")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.noop()
    t = time.monotonic()
    assert banner(srv, "127.0.0.7") == REFUSED
    while banner(srv, "127.0.0.7") == REFUSED:
        assert time.monotonic() - t < 5, "still refused long after the 2 s expiry"
        time.sleep(0.2)
    assert banner(srv, "127.0.0.7").startswith("220 ")
    srv.assert_alive()


def test_a_bad_trap_line_is_named_in_smtpds_log(bare_smtpd_factory, e2e_runtime):
    d = e2e_runtime.new_dir("spamtraps-bad")
    d.chmod(0o1777)
    (d / "traps").write_text("ok@e2e.test\n/[unclosed/\n")
    (d / "traps").chmod(0o644)
    with pytest.raises(RuntimeError) as exc:
        bare_smtpd_factory([f"py-filter-spamtraps -traps {d / 'traps'} -db {d / 't.db'} -spf=false"])
    assert f"f1: py-filter-spamtraps: {d / 'traps'}:2: bad regex" in str(exc.value)


def test_a_sender_passing_spf_for_a_listed_domain_is_not_trapped(bare_smtpd_factory, state):
    """SPF on (the default), the namespace's DNS server publishes
    ``client.e2e.test TXT "v=spf1 ip4:127.0.0.9 -all"``: 127.0.0.9 sending as
    @client.e2e.test to a trap passes, 127.0.0.10 with the same sender is
    trapped."""
    from e2e_harness import default_zone

    (state / "spf-domains").write_text("client.e2e.test\n")
    (state / "spf-domains").chmod(0o644)
    zone = default_zone().add("client.e2e.test", "TXT", "v=spf1 ip4:127.0.0.9 -all")
    srv = bare_smtpd_factory(
        [f"py-filter-spamtraps -traps {state / 'traps'} -db {state / 'spf.db'} -spfDomains {state / 'spf-domains'}"],
        zone=zone,
    )
    tok = token()
    with client(srv, "127.0.0.9") as c:
        c.ehlo("client.e2e.test")
        assert c.sendmail(FROM, [f"trap@{DOMAIN}"], make_message(tok, to=f"trap@{DOMAIN}")) == {}
    srv.maildir.wait_for(tok)
    assert srv.wait_log(rf"f1: \S+ rcpt-to: trap trap@{DOMAIN}: not trapped \(SPF pass for client\.e2e\.test\)")
    assert banner(srv, "127.0.0.9").startswith("220 ")
    with client(srv, "127.0.0.10") as c:
        c.ehlo("client.e2e.test")
        c.mail(FROM)
        assert c.rcpt(f"trap@{DOMAIN}")[0] == 550
    assert srv.wait_log(rf"f1: \S+ rcpt-to: trap trap@{DOMAIN}: SPF fail for client\.e2e\.test")
    assert banner(srv, "127.0.0.10") == REFUSED
