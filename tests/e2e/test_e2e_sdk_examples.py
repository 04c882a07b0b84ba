"""The example filters, chained behind a real smtpd, as a client sees them.

    filter "f1" proc-exec "<python> examples/reject_helo.py"
    filter "f2" proc-exec "<python> examples/add_header.py"
    filter "f3" proc-exec "<python> tests/e2e/filters/sdk_policy.py --reject-rcpt trap"
    filter "e2echain" chain { "f1", "f2", "f3" }
"""

from __future__ import annotations

import threading

import pytest

from e2e_harness import DOMAIN, make_message, token

pytestmark = pytest.mark.e2e

FROM = "alice@client.e2e.test"
TO = f"bob@{DOMAIN}"


@pytest.fixture(scope="module")
def server(smtpd_factory, e2e_runtime):
    return smtpd_factory(
        [
            e2e_runtime.example("reject_helo.py"),
            e2e_runtime.example("add_header.py"),
            e2e_runtime.test_filter("sdk_policy.py", "--reject-rcpt", "trap"),
        ]
    )


def test_a_message_gets_the_header_and_arrives_byte_for_byte(server, tok):
    body = (
        b"Dot lines, as the client means them:\r\n"
        b".\r\n"
        b"..\r\n"
        b".starts with a dot\r\n"
        b"pipes | in | the | line |\r\n"
        b"8-bit: caf\xc3\xa9 \xe2\x82\xac and a raw latin-1 byte \xe9 and \xff\r\n"
        b"trailing spaces   \r\n"
        b"\r\n"
        + b"x" * 1900 + b"\r\n"
        b"last line\r\n"
    )
    with server.smtp() as c:
        assert c.ehlo("client.e2e.test")[0] == 250
        assert c.mail(FROM) == (250, b"2.0.0 Ok")
        assert c.rcpt(TO) == (250, b"2.1.5 Destination address valid: Recipient ok")
        code, reply = c.data(make_message(tok, body=body))
        assert code == 250, reply
        assert reply.startswith(b"2.0.0 ") and reply.endswith(b" Message accepted for delivery")
    m = server.maildir.wait_for(tok)
    assert m.headers("X-Filtered-By") == ["add-header"]
    assert m.body == body.replace(b"\r\n", b"\n"), "the body must arrive unchanged"
    assert m.headers("Subject") == [f"e2e {tok}"]
    assert m.headers("Received")[0].startswith("from client.e2e.test (localhost [127.0.0.1])")


def test_a_forged_header_from_the_client_is_replaced(server, tok):
    msg = make_message(tok, extra_headers={"X-Filtered-By": "forged-by-client"})
    with server.smtp() as c:
        c.ehlo("client.e2e.test")
        assert c.sendmail(FROM, [TO], msg) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("X-Filtered-By") == ["add-header"]


def test_two_messages_in_one_session_both_get_the_header_once(server):
    toks = [token(), token()]
    with server.smtp() as c:
        c.ehlo("client.e2e.test")
        for t in toks:
            assert c.sendmail(FROM, [TO], make_message(t)) == {}
    for t in toks:
        assert server.maildir.wait_for(t).headers("X-Filtered-By") == ["add-header"]


def send_concurrently(server, toks: list[str], body_of, timeout: float = 60) -> None:
    """One session per token, all at once: EHLO client-TOK, one message."""
    errors: list[BaseException] = []

    def send(t: str) -> None:
        try:
            with server.smtp() as c:
                c.ehlo(f"client-{t}.e2e.test")
                c.sendmail(FROM, [TO], make_message(t, body=body_of(t)))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(t,)) for t in toks]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    assert not errors, errors


def test_concurrent_sessions_are_kept_apart(server):
    toks = [token() for _ in range(8)]
    send_concurrently(server, toks, lambda t: f"body of {t}\r\n" * 50)
    for t in toks:
        m = server.maildir.wait_for(t)
        assert m.headers("X-Filtered-By") == ["add-header"]
        assert m.body == f"body of {t}\n".encode() * 50
        assert f"client-{t}.e2e.test" in m.headers("Received")[0]


def test_big_messages_in_concurrent_sessions_arrive_byte_for_byte(server):
    # Thousands of lines per message: the SDK answers long runs of one
    # message as blocks, and smtpd interleaves the four sessions' lines.
    def body_of(t: str) -> bytes:
        lines = []
        for i in range(3000):
            lines.append(
                (b".", b"..", b"x", b"", b".dot %d" % i, b"%s line %d | with a bar" % (t.encode(), i))[i % 6]
                if i % 7 == 0
                else b"%s %d " % (t.encode(), i) + b"y" * (i % 90)
            )
        return b"".join(line + b"\r\n" for line in lines)

    toks = [token() for _ in range(4)]
    send_concurrently(server, toks, body_of, timeout=120)
    for t in toks:
        m = server.maildir.wait_for(t)
        assert m.headers("X-Filtered-By") == ["add-header"]
        assert m.body == body_of(t).replace(b"\r\n", b"\n")


def test_localhost_helo_is_refused_and_the_client_may_retry(server, tok):
    with server.smtp() as c:
        code, reply = c.ehlo("localhost")
        assert code == 550, reply
        assert reply.startswith(b"5.7.1 ") and b"localhost" in reply
        code, reply = c.helo("[127.0.0.1]")
        assert code == 550, reply
        assert c.ehlo("client.e2e.test")[0] == 250
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    assert server.maildir.wait_for(tok).headers("X-Filtered-By") == ["add-header"]
    assert server.log_lines(r"f1: .*rejecting HELO 'localhost'"), server.log_tail()


def test_a_recipient_refused_by_a_filter_and_one_refused_by_smtpd(server, tok):
    with server.smtp() as c:
        c.ehlo("client.e2e.test")
        assert c.mail(FROM)[0] == 250
        assert c.rcpt(f"trap@{DOMAIN}") == (550, b"5.1.1 no such mailbox")
        code, reply = c.rcpt("carol@elsewhere.test")  # not our domain: smtpd itself says no
        assert code == 550 and b"Invalid recipient" in reply, reply
        assert c.rcpt(TO)[0] == 250
        code, _ = c.data(make_message(tok))
        assert code == 250
    m = server.maildir.wait_for(tok)
    assert m.headers("X-Filtered-By") == ["add-header"]
    assert "trap@" not in m.headers("Received")[0]


def test_smtpd_is_still_running(server):
    server.assert_alive()
