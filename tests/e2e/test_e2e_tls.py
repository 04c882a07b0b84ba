"""STARTTLS on port 25 and an authenticated submission port 587, filters attached.

Debian's 6.8.0p2 cannot complete a TLS handshake with OpenSSL 3 on its own;
the harness preloads tests/e2e/tlsfix (from shared/rig/tlsfix) into smtpd,
which also strips itself from the environment before filters are spawned.
"""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import pytest

from e2e_harness import AUTH_PASSWORD, AUTH_USER, DOMAIN, make_message

pytestmark = pytest.mark.e2e

FROM = "alice@client.e2e.test"
TO = f"bob@{DOMAIN}"


@pytest.fixture(scope="module")
def server(smtpd_factory, e2e_runtime):
    return smtpd_factory(
        [e2e_runtime.example("add_header.py"), e2e_runtime.test_filter("raw_echo.py", "--log", "-")],
        tls=True,
        submission=True,
    )


def tls_context(server) -> ssl.SSLContext:
    # smtplib checks the certificate against the host it connected to,
    # 127.0.0.1: the self-signed cert has that IP in its subjectAltName
    return ssl.create_default_context(cafile=str(server.cert_path))


def test_starttls_on_port_25_then_mail_through_the_filters(server, tok):
    with server.smtp() as c:
        c.ehlo("client.e2e.test")
        assert c.has_extn("starttls")
        code, _ = c.starttls(context=tls_context(server))
        assert code == 220
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
        c.ehlo("client.e2e.test")
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("X-Filtered-By") == ["add-header"]
    assert "TLS" in m.headers("Received")[0]
    # the filters saw the session go TLS, and none of them got the preload
    assert server.log_lines(r"f2: report\|0\.6\|.*\|link-tls\|"), server.log_tail()


def test_submission_requires_tls_before_auth(server):
    with server.submission_client() as c:
        c.ehlo("client.e2e.test")
        assert not c.has_extn("auth")
        code, reply = c.mail(FROM)
        assert code == 530, reply


def test_submission_with_wrong_password_is_refused(server):
    with server.submission_client() as c:
        c.starttls(context=tls_context(server))
        c.ehlo("client.e2e.test")
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            c.login(AUTH_USER, "wrong")
        assert e.value.smtp_code == 535


def test_authenticated_submission_delivers_through_the_filters(server, tok):
    with server.submission_client() as c:
        c.starttls(context=tls_context(server))
        c.ehlo("client.e2e.test")
        assert c.has_extn("auth")
        code, _ = c.login(AUTH_USER, AUTH_PASSWORD)
        assert code == 235
        assert c.sendmail(FROM, [TO], make_message(tok)) == {}
    m = server.maildir.wait_for(tok)
    assert m.headers("X-Filtered-By") == ["add-header"]
    assert server.log_lines(rf"f2: report\|0\.6\|.*\|link-auth\|.*\|{AUTH_USER}\|pass"), server.log_tail()


def test_filters_run_without_the_tls_preload(server):
    # every filter process in the namespace: no LD_PRELOAD in its environment
    filters = [p for p in server.ns.pids() if b"raw_echo.py" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert filters, "raw_echo.py filter process not found"
    for p in filters:
        env = Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
        assert not [e for e in env if e.startswith(b"LD_PRELOAD=")], env
        assert b"LANG=C.UTF-8" in env


def test_smtpd_is_still_running(server):
    server.assert_alive()
