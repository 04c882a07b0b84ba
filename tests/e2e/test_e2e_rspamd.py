"""py-filter-rspamd behind a real smtpd, against a real rspamd + redis:

    filter "f1" proc-exec "py-filter-rspamd -url http://127.0.0.1:11333 -failMode closed"      (port 25, 587)
    filter "f1" proc-exec "py-filter-rspamd -url /…/rspamd/run/normal.sock -failMode open"     (port 2525)

Both smtpd share one loopback, one rspamd and its redis.  rspamd is the
Debian package with the e2e config (services.py) plus, for this module,
milter_headers routines and a small Lua rule: a message carrying
``X-E2E-Milter: <json>`` gets that JSON as its milter reply, so a test can
ask for any add_headers / remove_headers shape through the real rspamd.
The GTUBE test strings pick the action: X… reject, Y… add header,
Z… rewrite subject.  The last test stops rspamd.
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl

import pytest

from e2e_bare import bare_smtpd_factory  # noqa: F401  (fixture)
from e2e_harness import AUTH_PASSWORD, AUTH_USER, DOMAIN, make_message, token

pytestmark = pytest.mark.e2e

FROM = "alice@client.e2e.test"
TO = f"bob@{DOMAIN}"
GTUBE = "JS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
REJECT, ADD_HEADER, REWRITE = "X" + GTUBE, "Y" + GTUBE, "Z" + GTUBE

MILTER_HEADERS = """\
skip_local = false;
skip_authenticated = false;
use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", "authentication-results", "x-spamd-bar"];
"""
ECHO_LUA = """\
-- e2e: X-E2E-Milter: <json> becomes the task's milter reply;
-- X-E2E-Request: yes gets the request headers rspamd saw back as X-E2E-Seen
local ucl = require "ucl"
local SEEN = {"User", "Helo", "Hostname", "MTA-Name", "Queue-Id", "Deliver-To", "TLS-Version", "TLS-Cipher", "Settings-ID"}
rspamd_config:register_symbol({
  name = "E2E_MILTER",
  score = 0.0,
  callback = function(task)
    local hdr = task:get_header("X-E2E-Milter")
    if hdr then
      local parser = ucl.parser()
      if parser:parse_string(hdr) then
        task:set_milter_reply(parser:get_object())
      end
    end
    if task:get_header("X-E2E-Request") then
      local parts = {}
      for _, name in ipairs(SEEN) do
        local v = task:get_request_header(name)
        if v then table.insert(parts, name .. "=" .. tostring(v)) end
      end
      task:set_milter_reply({add_headers = {["X-E2E-Seen"] = {value = table.concat(parts, "; "), order = 0}}})
    end
  end,
})
"""


@pytest.fixture(scope="module")
def rspamd_local_d():
    return {"milter_headers.conf": MILTER_HEADERS, "rspamd.lua": ECHO_LUA}


@pytest.fixture(scope="module")
def world(bare_smtpd_factory, redis_factory, rspamd_factory):  # noqa: F811
    rspamd = rspamd_factory(override_d={
        "worker-normal.inc": 'bind_socket = ["127.0.0.1:11333", "$RUNDIR/normal.sock mode=0666"];\ncount = 1;\n',
    })
    closed = bare_smtpd_factory(
        ["py-filter-rspamd -url http://127.0.0.1:11333 -failMode closed -timeout 20"],
        services=[redis_factory(), rspamd], tls=True, submission=True,
    )
    sock = rspamd.dir / "run" / "normal.sock"
    opened = bare_smtpd_factory([f"py-filter-rspamd -url {sock} -failMode open"], share_net_with=closed, port=2525)
    return closed, opened, rspamd


def send(server, tok, body="Hello.\r\n", port=None, **kw):
    msg = make_message(tok, body=body, **kw)
    with server.smtp(port=port) as c:
        c.ehlo("client.e2e.test")
        return c.sendmail(FROM, [TO], msg)


def delivered_head(server, tok) -> list[bytes]:
    """The header lines the filter wrote (below smtpd's own delivery headers)."""
    lines = server.maildir.wait_for(tok).header_lines()
    return [ln for ln in lines if not ln.startswith((b"Return-Path:", b"Delivered-To:"))]


def names(head: list[bytes]) -> list[str]:
    return [ln.split(b":", 1)[0].decode() for ln in head if ln[:1] not in (b" ", b"\t")]


def test_gtube_is_rejected_with_rspamds_message(world, tok):
    closed, _, _ = world
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(closed, tok, body=f"Hello\r\n{REJECT}\r\n")
    assert (e.value.smtp_code, e.value.smtp_error) == (550, b"5.7.1 Gtube pattern")
    closed.maildir.assert_not_delivered(tok, wait=0.5)
    assert closed.wait_log(r"f1: \S+ qid=\S+ score=\S+ reject: 550 5\.7\.1 Gtube pattern")


def test_add_header_writes_exactly_filter_rspamds_headers(world, tok):
    closed, _, rspamd = world
    send(closed, tok, body=f"Hello\r\n{ADD_HEADER}\r\n")
    head = delivered_head(closed, tok)
    assert head[0] == b"X-Spam: yes"
    score = re.fullmatch(rb"X-Spam-Score: (\d+(?:\.\d+)?) / 15", head[1])
    assert score, head[1]
    assert head[2] == b"X-Spam-Status: Yes, score=%.3f required=15.000" % float(score.group(1))
    tests = []
    i = 3
    while head[i][:1] == b"\t":
        assert len(head[i]) <= 80
        tests.append(head[i][1:].decode())
        i += 1
    assert head[i].startswith(b"Received: ")
    listed = "".join(tests)
    assert listed.startswith("tests=[") and listed.endswith("]")
    symbols = [s.strip() for s in listed[len("tests=["):-1].split(",")]
    assert symbols == sorted(symbols) and "GTUBE=0.000" in symbols
    assert closed.wait_log(rf"f1: \S+ qid=\S+ score={float(score.group(1)):.2f}/15\.00 add header: proceed")


def test_rewrite_subject_replaces_a_folded_subject(world, tok):
    closed, _, _ = world
    send(closed, tok, body=f"Hello\r\n{REWRITE}\r\n", subject=f"a folded\r\n subject {tok}")
    m = closed.maildir.wait_for(tok)
    assert m.headers("Subject") == [f"*** SPAM *** a folded subject {tok}"]
    head = delivered_head(closed, tok)
    i = next(i for i, ln in enumerate(head) if ln.startswith(b"Subject:"))
    assert head[i] == f"Subject: *** SPAM *** a folded subject {tok}".encode()
    assert head[i + 1][:1] not in (b" ", b"\t")


def test_rspamds_milter_headers_are_all_written_in_their_places(world, tok):
    closed, _, _ = world
    send(closed, tok)
    head = delivered_head(closed, tok)
    order = names(head)
    assert order[0] == "Received" and order[1] == "Authentication-Results"  # order 1
    assert head[head.index(b"Authentication-Results: mx.e2e.test;") + 1] == b"\tnone"
    tail = order[-4:]
    assert sorted(tail) == ["X-Rspamd-Queue-Id", "X-Rspamd-Server", "X-Spamd-Bar", "X-Spamd-Result"]  # order -1
    result = head[head.index(next(ln for ln in head if ln.startswith(b"X-Spamd-Result: "))):]
    assert result[0].startswith(b"X-Spamd-Result: default: False [") and result[1][:1] == b"\t"
    m = closed.maildir.wait_for(tok)
    qid = closed.wait_log(rf"f1: \S+ qid=(\S+) score=\S+ no action").split("qid=")[1].split()[0]
    assert m.headers("X-Rspamd-Queue-Id") == [qid]  # the Queue-Id we sent


@pytest.mark.parametrize(
    "index, kept",
    [(0, []), (1, ["two", "three"]), (2, ["one", "three"]), (-1, ["one", "two"]), (-3, ["two", "three"]), (5, ["one", "two", "three"])],
)
def test_remove_headers_index_through_rspamd(world, index, kept):
    closed, _, _ = world
    tok = token()
    reply = json.dumps({"remove_headers": {"X-Del": index}, "add_headers": {"X-Added": {"value": "a\r\n\tb", "order": 0}}})
    three = f"X-Del: one\r\n\tcontinued {tok}\r\nX-Del: two\r\nx-del: three\r\nSubject:".encode()
    msg = make_message(tok, extra_headers={"X-E2E-Milter": reply}).replace(b"Subject:", three, 1)
    with closed.smtp() as c:
        c.ehlo("client.e2e.test")
        c.sendmail(FROM, [TO], msg)
    head = delivered_head(closed, tok)
    assert head[:2] == [b"X-Added: a", b"\tb"]
    left = [ln.split(b": ", 1)[1].decode() for ln in head if ln.lower().startswith(b"x-del:")]
    assert left == kept
    assert any(ln == f"\tcontinued {tok}".encode() for ln in head) == ("one" in kept)


def test_spoofed_verdict_headers_are_removed(world, tok):
    closed, _, _ = world
    send(closed, tok, extra_headers={"X-Spam": "no", "X-Spam-Status": "No, score=-100", "X-Rspamd-Server": "forged"})
    m = closed.maildir.wait_for(tok)
    assert m.headers("X-Spam") == [] and m.headers("X-Spam-Status") == []
    assert m.headers("X-Rspamd-Server") != ["forged"]


def test_unix_socket_url(world, tok):
    _, opened, _ = world
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(opened, tok, body=f"Hello\r\n{REJECT}\r\n", port=2525)
    assert e.value.smtp_code == 550
    assert opened.wait_log(r"f1: starting \(HTTPClient\('/.*normal\.sock'")


def test_authenticated_submission_sends_user_and_tls(world, tok):
    closed, _, rspamd = world
    ctx = ssl.create_default_context(cafile=str(closed.cert_path))
    with closed.submission_client() as c:
        c.starttls(context=ctx)
        c.ehlo("client.e2e.test")
        c.login(AUTH_USER, AUTH_PASSWORD)
        c.sendmail(FROM, [TO], make_message(tok, extra_headers={"X-E2E-Request": "yes"}))
    m = closed.maildir.wait_for(tok)
    log = rspamd.log_path.read_text(errors="replace")
    line = next(ln for ln in log.splitlines() if f"<{tok}@client.e2e.test>" in ln and "rspamd_task_write_log" in ln)
    assert f"user: {AUTH_USER}" in line
    seen = dict(kv.split("=", 1) for kv in m.headers("X-E2E-Seen")[0].split("; "))
    assert re.fullmatch(r"[0-9a-f]{8}", seen["Queue-Id"]) and closed.log_lines(rf"f1: \S+ qid={seen['Queue-Id']} ")
    assert seen["User"] == AUTH_USER and seen["Helo"] == "client.e2e.test"
    assert seen["MTA-Name"] == "mx.e2e.test" and seen["Deliver-To"] == TO
    assert seen["TLS-Version"].startswith("TLSv1.") and seen["TLS-Cipher"]
    assert seen["Hostname"] == "localhost"  # smtpd's rDNS of 127.0.0.1


def test_rspamd_stopped_mid_test_fail_closed_451_and_fail_open_passes(world):
    closed, opened, rspamd = world
    rspamd.stop()
    tok = token()
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(closed, tok)
    assert (e.value.smtp_code, e.value.smtp_error) == (451, b"4.7.1 Try again later (spam filter unavailable)")
    assert closed.wait_log(r"f1: \S+ qid=\S+ rspamd failed \(connect: .*\): 451 \(-failMode closed\)")
    tok = token()
    send(opened, tok, port=2525, extra_headers={"X-Spam-Status": "No, forged"})
    assert opened.maildir.wait_for(tok).headers("X-Spam-Status") == ["Unknown (not scanned: rspamd unavailable)"]
    assert opened.wait_log(r"f1: \S+ qid=\S+ rspamd failed \(connect: .*\): passed unscanned")
    closed.assert_alive()
    opened.assert_alive()
