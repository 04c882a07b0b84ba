"""py-filter-dkimsign as smtpd drives it: every signature it writes verifies
with dkimpy (the reference), and with the same key and flags it writes what
Debian's filter-dkimsign writes, byte for byte."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import dkim  # dkimpy: the reference verifier
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import filterkit  # noqa: F401  (maps filters/ to smtpd_filters)
from enginekit import Driven
from smtpd_filter_sdk.message import stuff, unstuff
from smtpd_filters import dkimcore, dkimsign

SID, TOK = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
TS = "1795218811.493169"
ANCHOR = "/usr/libexec/opensmtpd/filter-dkimsign"


# -- keys and their DNS records -------------------------------------------------------


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    pem = serialization.Encoding.PEM
    for name, key, fmt in (
        ("rsa.key", rsa.generate_private_key(65537, 2048), serialization.PrivateFormat.TraditionalOpenSSL),
        ("rsa2.key", rsa.generate_private_key(65537, 2048), serialization.PrivateFormat.PKCS8),
        ("ed.key", ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.PKCS8),
    ):
        path = d / name
        path.write_bytes(key.private_bytes(pem, fmt, serialization.NoEncryption()))
        path.chmod(0o600)
    return d


RECORDS: dict[bytes, bytes] = {}


def publish(keydir, entries):
    """TXT records for (selector, domain, keyfile) entries."""
    for selector, domain, name in entries:
        key = dkimcore.load_key(str(keydir / name))
        RECORDS[f"{selector}._domainkey.{domain}.".encode()] = dkimcore.public_record(key).encode()


def dnsfunc(name, timeout=5):
    return RECORDS.get(name)


def verifies(message: bytes, idx: int = 0) -> bool:
    return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)


# -- driving the filter ---------------------------------------------------------------


def make_filter(keydir, *args: str):
    argv = [a.replace("KEYS/", f"{keydir}/") for a in args]
    opts = dkimsign.flags().parse_or_raise(argv)
    return dkimsign.build(opts, dkimsign.Keys(opts, lambda *a: None))


class Run:
    """One session through the filter: what left it and what commit said."""

    def __init__(self, filt, lines, *, src="192.0.2.7:4242", auth=None, mail_from="bob@example.org", dialect="0.6"):
        d = Driven(filt, dialect)
        w = d.wire
        d.send(w.report(TS, "link-connect", SID, "client.example", "pass", src, "127.0.0.1:25"))
        if auth:
            d.send(w.link_auth(TS, SID, auth, "pass"))
        d.send(w.report(TS, "tx-begin", SID, "0a0b0c0d"), w.tx_address(TS, "tx-mail", SID, "0a0b0c0d", "ok", mail_from))
        out = d.send(*[w.request(TS, "data-line", SID, TOK, stuff(x)) for x in lines], w.request(TS, "data-line", SID, TOK, "."))
        self.payloads = [line.split(b"|", 3)[3] for line in out]
        self.commit = d.send(w.request(TS, "commit", SID, TOK))[0].split(b"|", 3)[3]
        assert self.payloads[-1] == b"." and self.payloads.count(b".") == 1 + sum(x == b"." for x in self.payloads[:-1])

    @property
    def lines(self) -> list[bytes]:
        return [unstuff(x) for x in self.payloads[:-1]]

    @property
    def message(self) -> bytes:
        return b"".join(x + b"\r\n" for x in self.lines)

    @property
    def signatures(self) -> list[bytes]:
        return [line for line in self.lines if line.startswith(b"DKIM-Signature:")]


RECEIVED = [
    b"Received: from client.example (client.example [192.0.2.7])",
    b"\tby mx.example.org (OpenSMTPD) with ESMTP id 0a0b0c0d",
    b"\tfor <alice@example.net>;",
    b"\tThu, 3 Dec 2026 17:00:00 +0000 (UTC)",
]


def message(*headers: bytes, body: list[bytes] = (b"Hello Alice,", b"", b"-- bob")) -> list[bytes]:
    head = list(headers) or [b"From: Bob <bob@example.org>", b"To: <alice@example.net>", b"Subject: plain", b"Date: Thu, 3 Dec 2026 17:00:00 +0000"]
    return RECEIVED + head + [b""] + list(body)


SHAPES = {
    "plain": message(),
    "dot lines": message(body=[b".", b"..", b".leading dot", b"x", b"."]),
    "8-bit body": message(body=["Grüße, 日本語 ".encode(), b"\xff\xfe raw bytes\t\t tabbed  "]),
    "folded headers": message(
        b"From: Bob", b" Builder <bob@example.org>", b"Subject: a subject folded", b"\tover  two lines  ", b"To: alice@example.net"
    ),
    "empty body": message(body=[]),
    "trailing blank lines": message(body=[b"text", b"", b"  ", b"", b""]),
    "only blank lines": message(body=[b"", b"", b""]),
    "header block only": message()[: message().index(b"")],  # not even the empty line
    "multiple From domains": message(b"From: bob@example.org, carol@other.example", b"Subject: two authors"),
}


@pytest.fixture(scope="module")
def published(keydir):
    publish(keydir, [("rsa1", "example.org", "rsa.key"), ("ed1", "example.org", "ed.key"), ("rsa2", "example.org", "rsa2.key")])
    publish(keydir, [("rsa1", domain, "rsa.key") for domain in ("fallback.example", "other.example", "first.example")])
    return keydir


ALGS = {"rsa": ("-a", "rsa-sha256", "-s", "rsa1", "-k", "KEYS/rsa.key"), "ed25519": ("-a", "ed25519-sha256", "-s", "ed1", "-k", "KEYS/ed.key")}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("canon", ["simple/simple", "relaxed/relaxed", "relaxed/simple", "simple/relaxed"])
@pytest.mark.parametrize("alg", ALGS)
def test_every_signature_verifies_with_dkimpy(published, alg, canon, shape):
    run = Run(make_filter(published, *ALGS[alg], "-c", canon, "-d", "example.org"), SHAPES[shape])
    assert len(run.signatures) == 1 and run.lines[0].startswith(b"DKIM-Signature: v=1; a=")
    assert run.lines[len(run.lines) - len(SHAPES[shape]) :] == SHAPES[shape]  # the message itself untouched
    assert verifies(run.message), run.message.decode("latin-1")
    assert run.commit == b"proceed"


line = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.sampled_from(["Subject", "To", "Cc", "Reply-To", "X-Other", "subject"]), line), max_size=6),
    st.lists(st.one_of(line, st.sampled_from([b"", b".", b" ", b"\t", b"..x", b"a  b\t"])), max_size=30),
    st.sampled_from(["simple/simple", "relaxed/relaxed"]),
    st.sampled_from(list(ALGS)),
)
def test_property_any_message_verifies(published, headers, body, canon, alg):
    head = [b"From: bob@example.org"] + [n.encode() + b": " + v.strip() for n, v in headers]
    run = Run(make_filter(published, *ALGS[alg], "-c", canon, "-d", "example.org"), RECEIVED + head + [b""] + body)
    assert verifies(run.message)


tagvalue = st.text(alphabet="abcdefghij0123456789+/=.-:", max_size=90)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["s", "d", "h", "z", "t", "bh", "i"]), tagvalue), max_size=8), st.text(alphabet="AZaz09+/=", max_size=400))
def test_property_the_signature_value_folds_like_the_whole_field(tags, b):
    # sign() folds the field without b=, signs that, then adds b= to the
    # folded lines: the same lines as folding the finished field at once
    text = "DKIM-Signature: v=1; a=rsa-sha256; " + "".join(f"{t}={v}; " for t, v in tags) + "b="
    lines = dkimcore.fold(text + b)
    assert dkimcore.append_b(dkimcore.fold(text), b) == lines
    assert "".join(x.lstrip("\t") for x in lines).replace(" ", "") == (text + b).replace(" ", "")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["s", "d", "z", "t", "i"]), tagvalue), max_size=6),
    st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=3),
    st.lists(st.sampled_from(["from", "to", "subject", "date", "reply-to"]), max_size=8),
)
def test_property_a_field_folds_alike_whatever_its_body_hash(tags, hashes, names):
    # fold_with_bh reuses the layout of a field that differed only in bh=
    head = "DKIM-Signature: v=1; a=rsa-sha256; " + "".join(f"{t}={v}; " for t, v in tags) + "bh="
    tail = f"; h={':'.join(names)}; d=example.org; b="
    for digest in hashes:
        bh = base64.b64encode(digest).decode()
        assert dkimcore.fold_with_bh(head, bh, tail) == dkimcore.fold(head + bh + tail)


# -- same bytes as filter-dkimsign ---------------------------------------------------------


def anchor_signature(keydir, args, lines):
    """Feed filter-dkimsign the same transcript; its DKIM-Signature lines."""
    d = Driven(make_filter(keydir, "-d", "x.example", "-s", "x", "-k", "KEYS/rsa.key"))
    w = d.wire
    transcript = w.handshake() + [
        w.report(TS, "link-connect", SID, "client.example", "pass", "192.0.2.7:4242", "127.0.0.1:25"),
        w.report(TS, "tx-begin", SID, "0a0b0c0d"),
        *[w.request(TS, "data-line", SID, TOK, stuff(x)) for x in lines],
        w.request(TS, "data-line", SID, TOK, "."),
        w.request(TS, "commit", SID, TOK),
    ]
    proc = subprocess.run(
        [ANCHOR, *[a.replace("KEYS/", f"{keydir}/") for a in args]],
        input=b"".join(x + b"\n" for x in transcript),
        capture_output=True,
        timeout=20,
    )
    out = [x.split(b"|", 3)[3] for x in proc.stdout.splitlines() if x.startswith(b"filter-dataline|")]
    assert out and out[-1] == b".", proc.stderr
    sig = [out[0]]
    for x in out[1:]:
        if x[:1] != b"\t":
            break
        sig.append(x)
    return sig


GOLDEN = {
    "rsa simple": ("-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org"),
    "rsa relaxed": ("-c", "relaxed/relaxed", "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org"),
    "ed25519 relaxed/simple": ("-a", "ed25519-sha256", "-c", "relaxed", "-s", "ed1", "-k", "KEYS/ed.key", "-d", "example.org"),
    "headers and z=": ("-h", "from:subject:to:x-other", "-z", "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org"),
    "all headers z=": ("-zz", "-c", "relaxed/simple", "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org"),
    "parent domain": ("-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "other.example", "-d", "org", "-d", "example.org"),
    "fallback domain": ("-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "fallback.example", "-d", "other.example"),
}


@pytest.fixture(scope="module")
def anchor():
    """Debian's filter-dkimsign: a skip where it is not installed, a failure
    in CI (SMTPD_FILTERS_REQUIRE_E2E=1, where .ci/run installs it)."""
    if not os.access(ANCHOR, os.X_OK):
        why = f"{ANCHOR} not installed (apt-get install opensmtpd-filter-dkimsign)"
        if os.environ.get("SMTPD_FILTERS_REQUIRE_E2E", "") not in ("", "0"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return ANCHOR


@pytest.mark.parametrize("flags", GOLDEN)
@pytest.mark.parametrize("shape", ["plain", "dot lines", "folded headers", "trailing blank lines", "empty body"])
def test_same_signature_as_filter_dkimsign(published, anchor, flags, shape):
    lines = SHAPES[shape] if "x-other" not in GOLDEN[flags][1] else message(b"From: b@example.org", b"X-Other: 1", b"Subject: s", b"To: a@b.example", b"Date: x")
    ours = Run(make_filter(published, *GOLDEN[flags]), lines)
    theirs = anchor_signature(published, GOLDEN[flags], lines)
    our_sig = ours.lines[: len(theirs)]
    tag = lambda sig, name: b"".join(sig).replace(b"\t", b"").split(name + b"=")[1].split(b";")[0]  # noqa: E731
    assert tag(our_sig, b"bh") == tag(theirs, b"bh")
    assert our_sig == theirs
    assert verifies(ours.message)


# -- choosing the domain and the key --------------------------------------------------------


def d_tag(run: Run, i: int = 0) -> bytes:
    joined = b"".join(l.strip() for l in run.lines).split(b"DKIM-Signature:")[i + 1]
    return joined.split(b" d=")[1].split(b";")[0]


@pytest.mark.parametrize(
    "author, expected",
    [
        ("bob@example.org", b"example.org"),  # exact
        ("bob@mail.sub.example.org", b"example.org"),  # nearest configured parent
        ("bob@deep.other.example", b"other.example"),
        ("bob@unrelated.test", b"first.example"),  # else the first -d
        ('"Bob, Jr." (the boss) <BOB@Example.ORG>', b"example.org"),
    ],
)
def test_domain_is_chosen_as_filter_dkimsign_does(published, tmp_path, author, expected):
    dfile = tmp_path / "domains"
    dfile.write_text("# signing domains\nexample.org\nother.example  # ours too\n")
    f = make_filter(published, "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "first.example", "-D", str(dfile))
    run = Run(f, message(b"From: " + author.encode(), b"Subject: s"))
    assert d_tag(run) == expected


atom = st.text(alphabet="abcXYZ019.-_+'=", min_size=1, max_size=8)
display = st.one_of(st.just(""), st.text(alphabet="ab Cé.'-\"(),", max_size=12))


@settings(max_examples=500, deadline=None)
@given(display, atom, st.lists(atom, min_size=1, max_size=3), st.sampled_from(["{d} <{a}>", "{a}", "{a} ({d})", "<{a}>, x@y.z", " {d}<{a}> "]))
def test_property_from_domain_agrees_with_the_rfc5322_parser(name, local, labels, form):
    value = form.format(d=name, a=f"{local}@{'.'.join(labels)}")
    assert dkimcore.from_domain(value) == dkimcore.parsed_from_domain(value)


def test_per_domain_keys_and_dual_signing(published):
    publish(published, [("ed1", "second.example", "ed.key")])
    f = make_filter(
        published,
        "-K", "example.org:rsa1:KEYS/rsa.key",
        "-K", "example.org:ed1:KEYS/ed.key",
        "-K", "second.example:ed1:KEYS/ed.key",
    )  # fmt: skip
    run = Run(f, message())
    assert len(run.signatures) == 2 and b"a=rsa-sha256" in run.signatures[0] and b"a=ed25519-sha256" in run.signatures[1]
    assert verifies(run.message, 0) and verifies(run.message, 1)
    other = Run(f, message(b"From: x@second.example", b"Subject: s"))
    assert len(other.signatures) == 1 and d_tag(other) == b"second.example" and verifies(other.message)
    nobody = Run(f, message(b"From: x@elsewhere.example", b"Subject: s"))  # no -d: no fallback
    assert nobody.signatures == [] and nobody.lines == message(b"From: x@elsewhere.example", b"Subject: s")


def test_oversigned_from_breaks_when_a_from_is_added_later(published):
    run = Run(make_filter(published, "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org", "-oversign", "singletons"), message())
    assert verifies(run.message)
    assert b"h=date:subject:to:from:from:sender:reply-to:to:cc" in b"".join(run.signatures[0:1] + [l for l in run.lines[1:6] if l[:1] == b"\t"]).replace(b"\t", b"")
    forged = run.message.replace(b"\r\n\r\n", b"\r\nFrom: mallory@evil.example\r\n\r\n", 1)
    assert not verifies(forged)
    plain = Run(make_filter(published, "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org"), message())
    assert verifies(plain.message.replace(b"\r\n\r\n", b"\r\nReply-To: mallory@evil.example\r\n\r\n", 1))  # not oversigned


@pytest.mark.parametrize(
    "src, auth, signed",
    [("192.0.2.7:4242", None, False), ("192.0.2.7:4242", "bob", True), ("unix:/var/run/smtpd.sock", None, True)],
)
def test_auth_only(published, src, auth, signed, capfd):
    f = make_filter(published, "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org", "-authOnly")
    assert {("smtp-in", "link-connect"), ("smtp-in", "link-auth")} <= f.registrations()[0]  # smtpd must send them
    run = Run(f, message(), src=src, auth=auth)
    assert bool(run.signatures) is signed
    if not signed:
        assert run.lines == message() and "not signed: session neither authenticated nor local" in capfd.readouterr().err


@pytest.mark.parametrize("sender, signed", [("bob@example.org", True), ("bob@lists.example.org", True), ("", True), ("x@evil.example", False)])
def test_aligned(published, sender, signed):
    f = make_filter(published, "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org", "-aligned")
    assert ("smtp-in", "tx-mail") in f.registrations()[0]
    assert bool(Run(f, message(), mail_from=sender).signatures) is signed


def test_auth_only_and_aligned_get_what_they_read_from_the_reports_they_register(published):
    # the simulator sends only the report events the filter registered, as smtpd does
    from smtpd_filter_sdk.testing.harness import Harness

    f = make_filter(published, "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org", "-authOnly", "-aligned")
    headers = {"From": "bob@example.org", "Subject": "s"}
    with Harness(f) as h:
        s = h.session(src="192.0.2.7")
        s.ehlo("client.example")
        assert s.auth("bob").ok
        signed = s.send_message("bob@example.org", ["alice@example.net"], headers=headers)
        elsewhere = s.send_message("bob@evil.example", ["alice@example.net"], headers=headers)
        anonymous = h.session(src="192.0.2.8").send_message("bob@example.org", ["alice@example.net"], headers=headers)
    assert [bool([x for x in m.headers_added() if x.startswith("DKIM-Signature:")]) for m in (signed, elsewhere, anonymous)] == [True, False, False]


def test_plain_signing_asks_smtpd_for_no_report_it_does_not_need(published):
    reports, phases = make_filter(published, "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org").registrations()
    assert {event for _, event in reports} == {"link-disconnect", "tx-reset"} and phases == {"data-line", "commit"}


def test_dry_run_decides_and_adds_nothing(published, capfd):
    run = Run(make_filter(published, "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org", "-dryRun"), message())
    assert run.lines == message() and f"{SID} would sign d=example.org (dry run)" in capfd.readouterr().err


# -- never break the message ------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines, why",
    [
        (message(b"Subject: no author"), "no From header"),
        (message(b"From: undisclosed-recipients:;"), "From domain (unparsable) has no signing domain"),
    ],
)
def test_unsignable_messages_pass_unchanged(published, lines, why, capfd):
    f = make_filter(published, "-K", "example.org:rsa1:KEYS/rsa.key")
    run = Run(f, lines)
    assert run.lines == lines and run.commit == b"proceed"
    assert f"{SID} not signed: {why}" in capfd.readouterr().err


def test_oversize_passes_unsigned_and_unbuffered(published, capfd):
    f = make_filter(published, "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org", "-maxSize", "2000")
    body = [b"x" * 70] * 40
    run = Run(f, message(body=body))
    assert run.lines == message(body=body) and run.commit == b"proceed"
    assert "not signed: message over 2000 bytes (-maxSize), passed on unsigned" in capfd.readouterr().err
    assert Run(f, message()).signatures  # the next message is signed again


def test_long_lines_are_signed_and_the_old_smtpd_cut_is_logged(published, capfd):
    body = [b"y" * 3000, b"short"]
    run = Run(make_filter(published, "-s", "rsa1", "-k", "KEYS/rsa.key", "-d", "example.org"), message(body=body), dialect="0.6")
    assert verifies(run.message) and run.lines[-2] == b"y" * 3000
    assert "will be cut at 2047 bytes by smtpd < 7.4" in capfd.readouterr().err


# -- keys: at start, on SIGHUP ----------------------------------------------------------------


def start(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smtpd_filters.dkimsign", *args], input=b"", capture_output=True, timeout=30, env=filterkit.env()
    )


@pytest.mark.parametrize(
    "args, message_part",
    [
        (["-d", "example.org", "-s", "s", "-k", "/nonexistent/key.pem"], "can't read key file /nonexistent/key.pem"),
        (["-d", "example.org", "-s", "s", "-k", "KEYS/../keys-garbage"], "holds no usable private key"),
        (["-a", "ed25519-sha256", "-d", "example.org", "-s", "s", "-k", "KEYS/rsa.key"], "is a rsa key, not for -a ed25519-sha256"),
        (["-h", "subject:to", "-d", "example.org", "-s", "s", "-k", "KEYS/rsa.key"], "the From header must be included"),
        (["-d", "example.org", "-s", "s"], "no key"),
        (["-c", "loose", "-K", "example.org:s:KEYS/rsa.key"], 'invalid value "loose" for flag -c'),
        (["-d", "example.org", "-s", "a; b=x", "-k", "KEYS/rsa.key"], "is not a DNS name"),
        (["-K", "example.org:bad selector:KEYS/rsa.key"], "is not a DNS name"),
    ],
)
def test_bad_start_is_one_usage_line(published, args, message_part):
    (published.parent / "keys-garbage").write_text("not a key\n")
    proc = start(*[a.replace("KEYS/", f"{published}/") for a in args])
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and message_part in err and err.startswith("py-filter-dkimsign: ")


def test_world_readable_key_is_a_warning(published, tmp_path):
    key = tmp_path / "open.key"
    key.write_bytes((published / "rsa.key").read_bytes())
    key.chmod(0o644)
    proc = start("-d", "example.org", "-s", "rsa1", "-k", str(key))
    assert proc.returncode == 0 and f"key file {key} is readable by other users" in proc.stderr.decode()


def test_sighup_reloads_the_key_table_and_a_bad_one_keeps_the_old(published, tmp_path):
    table = tmp_path / "keytable"
    table.write_text(f"example.org:rsa1:{published}/rsa.key\n")
    f = make_filter(published, "-keyTable", str(table))
    assert b"s=rsa1" in Run(f, message()).signatures[0]
    table.write_text(f"# rotated\nexample.org:rsa2:{published}/rsa2.key\n")
    f.reload_handlers[0]()
    run = Run(f, message())
    assert b"s=rsa2" in run.signatures[0] and verifies(run.message)
    table.write_text("example.org:rsa3:/nonexistent.key\n")
    with pytest.raises(ValueError):
        f.reload_handlers[0]()
    assert b"s=rsa2" in Run(f, message()).signatures[0]


# -- the process, as smtpd runs it ------------------------------------------------------------


def test_the_process_survives_every_dialect_and_the_fuzzer(published):
    from smtpd_filter_sdk.testing.checker import RELEASED_DIALECTS, check

    cmd = filterkit.command("dkimsign", "-c", "relaxed/relaxed", "-K", f"example.org:rsa1:{published}/rsa.key",
                            "-K", f"example.org:ed1:{published}/ed.key", "-d", "example.org")
    result = check(cmd, RELEASED_DIALECTS, env_extra={"PYTHONPATH": str(filterkit.REPO)}, out=None, fuzz=5)
    bad = [f.format() for f in result.findings if f.severity in ("FATAL", "HANG")]
    assert not bad, bad


def test_the_process_sighup_swaps_keys_and_a_bad_table_keeps_the_old(published, tmp_path):
    import signal
    import time

    from smtpd_filter_sdk.testing.harness import SubprocessHarness

    table = tmp_path / "keytable"
    table.write_text(f"example.org:rsa1:{published}/rsa.key\n")

    def selector(h) -> str:
        msg = h.session().send_message("bob@example.org", ["alice@example.net"], headers={"From": "bob@example.org", "Subject": "s"})
        sig = [line for line in msg.headers_added() if line.startswith("DKIM-Signature:")]
        assert len(sig) == 1, msg.headers_added()
        return sig[0].split(" s=")[1].split(";")[0]

    def wait_log(h, text):
        deadline = time.monotonic() + 5
        while not any(text in line for line in h.stderr) and time.monotonic() < deadline:
            h.transport.recv(0.05)
        assert any(text in line for line in h.stderr), h.stderr

    cmd = filterkit.command("dkimsign", "-keyTable", str(table))
    with SubprocessHarness(cmd, env_extra={"PYTHONPATH": str(filterkit.REPO)}) as h:
        assert selector(h) == "rsa1"
        table.write_text(f"example.org:rsa2:{published}/missing.key\n")
        os.kill(h.transport.proc.pid, signal.SIGHUP)
        wait_log(h, "reload failed")
        assert selector(h) == "rsa1"
        table.write_text(f"example.org:rsa2:{published}/rsa2.key\n")
        os.kill(h.transport.proc.pid, signal.SIGHUP)
        wait_log(h, "reloaded")
        assert selector(h) == "rsa2"
