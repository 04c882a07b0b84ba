"""py-filter-dkimsign behind a real smtpd, named bare as users write it:

    filter "f1" proc-exec "py-filter-dkimsign -c relaxed/relaxed
                           -K client.e2e.test:rsa1:RSA -K client.e2e.test:ed1:ED"

Mail from client.e2e.test leaves smtpd with two signatures (RSA-2048 and
Ed25519, RFC 8463 dual signing); the delivered message verifies with dkimpy,
with OpenDKIM's own verifier (``opendkim-testmsg``) and with rspamd's DKIM
module (``R_DKIM_ALLOW``), both asking the namespace's loopback DNS server
for the keys.
"""

from __future__ import annotations

import pwd
import shutil
import ssl

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

import filterkit  # noqa: F401  (filters/ as smtpd_filters)
from e2e_bare import bare_smtpd_factory  # noqa: F401  (fixture)
from e2e_harness import AUTH_PASSWORD, AUTH_USER, DOMAIN, default_zone, make_message, skip_or_fail, token
from smtpd_filters import dkimcore

pytestmark = pytest.mark.e2e

SIGNER = "client.e2e.test"
FROM = f"alice@{SIGNER}"
TO = f"bob@{DOMAIN}"
OPENDKIM_TESTMSG = shutil.which("opendkim-testmsg") or "/usr/sbin/opendkim-testmsg"


@pytest.fixture(scope="module")
def keys(e2e_runtime):
    d = e2e_runtime.new_dir("dkim-keys")
    user = pwd.getpwnam("opensmtpd")  # smtpd runs filters as this user
    records = {}
    for selector, key in (("rsa1", rsa.generate_private_key(65537, 2048)), ("ed1", ed25519.Ed25519PrivateKey.generate())):
        path = d / f"{selector}.key"
        path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        path.chmod(0o600)
        shutil.chown(path, user.pw_uid, user.pw_gid)
        records[f"{selector}._domainkey.{SIGNER}"] = dkimcore.public_record(dkimcore.load_key(str(path)))
    return d, records


def key_zone(records):
    zone = default_zone()
    for name, txt in records.items():
        zone.add(name, "TXT", txt)
    return zone


@pytest.fixture(scope="module")
def rspamd(rspamd_factory):
    # check signatures whatever the client address; no greylisting (it
    # would cut the second scan of the same message short)
    return rspamd_factory(
        local_d={"dkim.conf": "check_local = true;\ncheck_authed = true;\n", "greylist.conf": "enabled = false;\n"}
    )


@pytest.fixture(scope="module")
def server(bare_smtpd_factory, keys, redis_factory, rspamd):
    d, records = keys
    cmd = f"py-filter-dkimsign -c relaxed/relaxed -K {SIGNER}:rsa1:{d / 'rsa1.key'} -K {SIGNER}:ed1:{d / 'ed1.key'}"
    return bare_smtpd_factory([cmd], zone=key_zone(records), services=[redis_factory(), rspamd])


@pytest.fixture(scope="module")
def auth_server(bare_smtpd_factory, keys):
    """-authOnly on a server with port 25 (anyone) and 587 (STARTTLS + AUTH)."""
    d, records = keys
    cmd = f"py-filter-dkimsign -authOnly -d {SIGNER} -s rsa1 -k {d / 'rsa1.key'}"
    return bare_smtpd_factory([cmd], zone=key_zone(records), submission=True)


def dnsfunc_for(records):
    return lambda name, timeout=5: records.get(name.decode().rstrip(".")).encode() if name.decode().rstrip(".") in records else None


def send(server, msg: bytes, sender: str = FROM) -> None:
    with server.smtp() as c:
        assert c.sendmail(sender, [TO], msg) == {}


BODY = "Grüße aus dem Test.\r\n.\r\n..two dots\r\n.leading\r\n\r\n  spaced\t\tout  \r\n\r\n\r\n".encode()


def test_delivered_mail_carries_two_signatures_that_dkimpy_verifies(server, keys):
    tok = token()
    send(server, make_message(tok, sender=FROM, body=BODY))
    m = server.maildir.wait_for(tok)
    ours = [ln for ln in m.header_lines() if not ln.startswith((b"Return-Path:", b"Delivered-To:"))]
    assert ours[0].startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; s=rsa1;")
    signatures = [ln for ln in ours if ln.startswith(b"DKIM-Signature:")]
    assert len(signatures) == 2 and b"a=ed25519-sha256" in signatures[1]
    raw = m.raw.replace(b"\n", b"\r\n")
    dnsfunc = dnsfunc_for(keys[1])
    assert dkim.DKIM(raw).verify(idx=0, dnsfunc=dnsfunc)
    assert dkim.DKIM(raw).verify(idx=1, dnsfunc=dnsfunc)
    assert server.wait_log(rf"f1: \S+ signed d={SIGNER} s=rsa1 a=rsa-sha256, s=ed1 a=ed25519-sha256")


def test_opendkim_verifies_it_through_the_loopback_dns(server):
    if not shutil.which(OPENDKIM_TESTMSG):
        skip_or_fail(f"{OPENDKIM_TESTMSG} not installed (apt-get install opendkim-tools)")
    tok = token()
    send(server, make_message(tok, sender=FROM, body=BODY))
    m = server.maildir.wait_for(tok)
    r = server.ns.run([OPENDKIM_TESTMSG], input=m.raw.decode("utf-8", "surrogateescape"))
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.returncode, r.stdout, r.stderr)
    broken = m.raw.replace(b"two dots", b"2 dots")
    r = server.ns.run([OPENDKIM_TESTMSG], input=broken.decode("utf-8", "surrogateescape"))
    assert r.returncode != 0 and "Bad signature" in r.stderr  # a real check, not a no-op


def test_rspamd_finds_both_signatures_valid(server, rspamd):
    tok = token()
    send(server, make_message(tok, sender=FROM, body=BODY))
    m = server.maildir.wait_for(tok)
    envelope = {"Ip": "192.0.2.25", "From": FROM, "Rcpt": TO, "Helo": "client.e2e.test"}
    symbols = rspamd.check(m.raw, envelope)["symbols"]
    assert "R_DKIM_ALLOW" in symbols and "R_DKIM_REJECT" not in symbols, symbols
    assert sorted(symbols["R_DKIM_ALLOW"].get("options", [])) == [f"{SIGNER}:s=ed1", f"{SIGNER}:s=rsa1"]
    tampered = rspamd.check(m.raw.replace(b"two dots", b"2 dots"), envelope)["symbols"]
    assert "R_DKIM_REJECT" in tampered and "R_DKIM_ALLOW" not in tampered  # rspamd really checked


def test_mail_of_another_domain_passes_unsigned_and_is_logged(server):
    tok = token()
    send(server, make_message(tok, sender="carol@elsewhere.e2e.test"), sender="carol@elsewhere.e2e.test")
    m = server.maildir.wait_for(tok)
    assert m.headers("DKIM-Signature") == []
    assert server.wait_log(r"f1: \S+ not signed: From domain elsewhere\.e2e\.test has no signing domain")


def test_a_folded_to_arrives_folded_and_verified(server, keys):
    # research/protocol.md §4.6: smtpd's RFC 5322 pass after the filters may
    # unfold To/Cc/From; 6.8.0p2 leaves them as they are on this listener.
    tok = token()
    msg = make_message(tok, sender=FROM).replace(b"To: bob@e2e.test\r\n", b"To: Bob\r\n <bob@e2e.test>\r\n")
    send(server, msg)
    m = server.maildir.wait_for(tok)
    assert b"\nTo: Bob\n <bob@e2e.test>\n" in m.raw
    assert dkim.DKIM(m.raw.replace(b"\n", b"\r\n")).verify(idx=0, dnsfunc=dnsfunc_for(keys[1]))


def test_auth_only_signs_what_authenticated_users_submit(auth_server, keys):
    anonymous, submitted = token(), token()
    send(auth_server, make_message(anonymous, sender=FROM))
    with auth_server.submission_client() as c:
        c.starttls(context=ssl.create_default_context(cafile=str(auth_server.cert_path)))
        c.ehlo("client.e2e.test")
        assert c.login(AUTH_USER, AUTH_PASSWORD)[0] == 235
        assert c.sendmail(FROM, [TO], make_message(submitted, sender=FROM)) == {}
    assert auth_server.maildir.wait_for(anonymous).headers("DKIM-Signature") == []
    assert auth_server.wait_log(r"f1: \S+ not signed: session neither authenticated nor local \(-authOnly\)")
    m = auth_server.maildir.wait_for(submitted)
    assert len(m.headers("DKIM-Signature")) == 1
    assert dkim.DKIM(m.raw.replace(b"\n", b"\r\n")).verify(dnsfunc=dnsfunc_for(keys[1]))
