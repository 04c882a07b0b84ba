"""Handlers that raise or hang: smtpd stays up and every client gets an answer.

Without the SDK a filter exception kills the filter, and smtpd with it
(``lost processor: f1 exited abnormally``, shared/rig/NOTES.md).  Here two
copies of tests/e2e/filters/sdk_policy.py are chained, one fail-open and one
fail-closed, each failing only on its own keyword:

    f1: sdk_policy.py --name open   --on-error fail-open   --raise boom-open   --hang hang-open
    f2: sdk_policy.py --name closed --on-error fail-closed --raise boom-closed --hang hang-closed
    f3: examples/add_header.py
"""

from __future__ import annotations

import time

import pytest

from e2e_harness import DOMAIN, make_message

pytestmark = pytest.mark.e2e

FROM = "alice@client.e2e.test"
TO = f"bob@{DOMAIN}"
DEADLINE = 0.5


@pytest.fixture(scope="module")
def server(smtpd_factory, e2e_runtime):
    def policy(name, policy):
        return e2e_runtime.test_filter(
            "sdk_policy.py", "--name", name, "--on-error", policy, "--deadline", str(DEADLINE),
            "--raise", f"boom-{name}", "--hang", f"hang-{name}",
        )

    return smtpd_factory([policy("open", "fail-open"), policy("closed", "fail-closed"),
                          e2e_runtime.example("add_header.py")])


def test_fail_open_helo_handler_raises_and_the_session_goes_on(server, tok):
    with server.smtp() as c:
        code, reply = c.ehlo("boom-open.client.e2e.test")
        assert code == 250, reply
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    assert server.maildir.wait_for(tok).headers("X-Filtered-By") == ["add-header"]
    # the traceback went to smtpd's log through the filter's stderr
    assert server.log_lines(r"f1: .*RuntimeError.*boom-open"), server.log_tail()


def test_fail_closed_helo_handler_raises_and_the_client_gets_a_4xx(server):
    with server.smtp() as c:
        code, reply = c.ehlo("boom-closed.client.e2e.test")
        assert code == 451, reply
        assert reply.startswith(b"4.7.0 "), reply
        assert c.ehlo("client.e2e.test")[0] == 250  # the session is still usable
    assert server.log_lines(r"f2: .*RuntimeError.*boom-closed"), server.log_tail()


def test_fail_closed_mail_from_and_rcpt_to(server):
    with server.smtp() as c:
        c.ehlo("client.e2e.test")
        code, reply = c.mail("boom-closed@client.e2e.test")
        assert code == 451 and reply.startswith(b"4.7.0 "), reply
        assert c.mail(FROM)[0] == 250
        code, reply = c.rcpt(f"boom-closed@{DOMAIN}")
        assert code == 451 and reply.startswith(b"4.7.0 "), reply
        assert c.rcpt(f"boom-open@{DOMAIN}")[0] == 250  # fail-open f1 raised: proceed
        c.rset()


def test_message_handler_raises_fail_open_delivers(server, tok):
    with server.smtp() as c:
        c.ehlo("client.e2e.test")
        assert c.sendmail(FROM, [TO], make_message(tok, subject=f"boom-open {tok}")) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("Subject") == [f"boom-open {tok}"]
    assert m.headers("X-Filtered-By") == ["add-header"]


def test_message_handler_raises_fail_closed_refuses_at_end_of_data(server, tok):
    with server.smtp() as c:
        c.ehlo("client.e2e.test")
        assert c.mail(FROM)[0] == 250
        assert c.rcpt(TO)[0] == 250
        code, reply = c.data(make_message(tok, subject=f"boom-closed {tok}"))
        assert code == 451 and reply.startswith(b"4.7.0 "), reply
        # and the session goes on
        assert c.noop()[0] == 250
    server.maildir.assert_not_delivered(tok, wait=0.5)


def test_a_hanging_async_handler_is_cut_at_its_deadline(server, tok):
    with server.smtp() as c:
        t0 = time.monotonic()
        code, _ = c.ehlo("hang-open.client.e2e.test")
        took = time.monotonic() - t0
        assert code == 250
        assert DEADLINE * 0.8 <= took < DEADLINE + 5, took
        t0 = time.monotonic()
        code, reply = c.mail("hang-closed@client.e2e.test")
        assert code == 451 and reply.startswith(b"4.7.0 "), reply
        assert time.monotonic() - t0 < DEADLINE + 5
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    server.maildir.wait_for(tok)


def test_smtpd_and_every_filter_are_still_running(server):
    server.assert_alive()
    assert not server.log_lines(r"lost processor|exited abnormally"), server.log_tail()
