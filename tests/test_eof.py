"""EOF on stdin: every request read before it is answered, then the filter
exits 0.

A transcript fed from a regular file (``filter < session.txt``: the runtime
reads it from a thread, epoll cannot watch files) or from a pipe that closes
at once (``cat session.txt | filter``) ends right after a request.  The filter
must answer it (a sync handler, an async one, one that hangs: its deadline
and the failure policy answer it), answer a message whose final ``.`` it read
in full, write and flush all of it, and exit 0.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpd_filter_sdk.testing.wire import Wire

ROOT = Path(__file__).resolve().parent.parent
W = Wire("0.6")
TS = "1795218811.493169"
SID, TOK, DTOK = "7641df9771b4ed00", "1ef1c203cc576e5d", "2ef1c203cc576e5d"
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)}

SYNC = """
from smtpd_filter_sdk import Filter, reject
f = Filter("sync")

@f.on("helo")
def helo(session, name):
    return reject(550, f"5.7.1 no {name}")

f.run()
"""

ASYNC = """
import asyncio
from smtpd_filter_sdk import Filter, junk
f = Filter("async")

@f.on("helo")
async def helo(session, name):
    await asyncio.sleep(0.2)   # still running when EOF arrives
    f.log(f"helo {name}: junk", session.id)
    return junk()

@f.on_message
async def tag(session, msg):
    await asyncio.sleep(0.2)
    msg.headers.add("X-Seen", "yes")

f.run()
"""

HANGS = """
import asyncio
from smtpd_filter_sdk import Filter
f = Filter("hangs", deadline=0.5, on_error="fail-closed")

@f.on("helo")
async def helo(session, name):
    await asyncio.sleep(3600)

f.run()
"""

HANGS_IN_THREAD = """
import time
from smtpd_filter_sdk import Filter, in_thread
f = Filter("hangs-in-thread", deadline=0.5, on_error="fail-closed")

@f.on("helo")
@in_thread
def helo(session, name):
    time.sleep(3600)   # blocking code in a worker thread, never returns

f.run()
"""


def transcript(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in [*W.handshake(), *lines])


HELO = W.request(TS, "helo", SID, TOK, "client.example")
MESSAGE = [W.request(TS, "data-line", SID, DTOK, x) for x in (b"Subject: hi", b"", b"..dot line", b"body", b".")]


def answers(out: bytes) -> list[bytes]:
    return [x for x in out.split(b"\n") if x and not x.startswith(b"register|")]


def run_filter(script: str, data: bytes, how: str, tmp_path: Path, timeout: float = 20) -> tuple[int, list[bytes], str, float]:
    path = tmp_path / "filter.py"
    path.write_text(script)
    cmd = [sys.executable, str(path)]
    started = time.monotonic()
    if how == "file":
        stream = tmp_path / "session.txt"
        stream.write_bytes(data)
        with stream.open("rb") as stdin:
            done = subprocess.run(cmd, stdin=stdin, capture_output=True, env=ENV, timeout=timeout)
    else:  # a pipe: everything written at once, then closed
        done = subprocess.run(cmd, input=data, capture_output=True, env=ENV, timeout=timeout)
    took = time.monotonic() - started
    return done.returncode, answers(done.stdout), done.stderr.decode(), took


@pytest.fixture(params=["file", "pipe"])
def how(request):
    return request.param


def test_sync_filter_answers_the_last_request(how, tmp_path):
    rc, out, _, _ = run_filter(SYNC, transcript(HELO), how, tmp_path)
    assert rc == 0
    assert out == [b"filter-result|%s|%s|reject|550 5.7.1 no client.example" % (SID.encode(), TOK.encode())]


def test_async_filter_answers_the_last_request_and_logs_it(how, tmp_path):
    rc, out, err, _ = run_filter(ASYNC, transcript(HELO), how, tmp_path)
    assert rc == 0
    assert out == [b"filter-result|%s|%s|junk" % (SID.encode(), TOK.encode())]
    assert f"{SID} helo client.example: junk" in err


def test_async_message_handler_answers_the_whole_message_read_before_eof(how, tmp_path):
    rc, out, _, _ = run_filter(ASYNC, transcript(*MESSAGE), how, tmp_path)
    assert rc == 0
    prefix = b"filter-dataline|%s|%s|" % (SID.encode(), DTOK.encode())
    assert out == [prefix + x for x in (b"X-Seen: yes", b"Subject: hi", b"", b"..dot line", b"body", b".")]


def test_a_message_cut_by_eof_before_its_final_dot_is_not_finished(how, tmp_path):
    # No '.' read: the message is incomplete, smtpd would discard it; nothing
    # is invented for it (the header block was never handed over).
    rc, out, _, _ = run_filter(ASYNC, transcript(*MESSAGE[:2]), how, tmp_path)
    assert rc == 0 and out == []


TAGGER = """
from smtpd_filter_sdk import Filter
f = Filter("tagger")

@f.on_headers
def tag(session, headers):
    headers.add("X-Seen", "yes")

f.run()
"""


def test_a_pass_through_body_cut_by_eof_is_echoed_as_far_as_it_was_read(how, tmp_path):
    # The runtime holds a small message's lines back for the rest of it
    # (the next read); at EOF they are answered as the line path would.
    # The header block, complete here, is handed over and tagged.
    rc, out, _, _ = run_filter(TAGGER, transcript(*MESSAGE[:4]), how, tmp_path)
    assert rc == 0
    prefix = b"filter-dataline|%s|%s|" % (SID.encode(), DTOK.encode())
    assert out == [prefix + x for x in (b"X-Seen: yes", b"Subject: hi", b"", b"..dot line", b"body")]


@pytest.mark.parametrize("script", [HANGS, HANGS_IN_THREAD], ids=["async", "in_thread"])
def test_a_hung_handler_is_answered_by_the_policy_after_its_deadline_then_exit(script, how, tmp_path):
    rc, out, err, took = run_filter(script, transcript(HELO), how, tmp_path)
    assert rc == 0
    assert out == [b"filter-result|%s|%s|reject|451 4.7.0 Temporary filter failure, try again later" % (SID.encode(), TOK.encode())]
    assert "helo: handler ran past 0.5s; answering reject (fail-closed)" in err
    assert took < 10  # bounded by the deadline, not by the hung handler


def test_an_incomplete_last_line_is_logged_not_acted_on(how, tmp_path):
    rc, out, err, _ = run_filter(SYNC, transcript(HELO)[:-1], how, tmp_path)
    assert rc == 0 and out == []
    assert "ignoring an incomplete last line at EOF" in err


def test_senderscore_transcript_ending_after_connect(how, tmp_path):
    """The issue's report: ``cat session.txt | py-filter-senderscore -testMode
    -blockBelow 20`` with input ending right after the connect request."""
    data = transcript(
        W.report(TS, "link-connect", SID, "", "pass", "192.0.2.4:33174", "192.0.2.1:25"),
        W.connect(TS, SID, TOK, "", "192.0.2.4"),
    )
    cmd = [sys.executable, "-m", "smtpd_filters.senderscore", "-testMode", "-blockBelow", "20"]
    if how == "file":
        stream = tmp_path / "session.txt"
        stream.write_bytes(data)
        with stream.open("rb") as stdin:
            done = subprocess.run(cmd, stdin=stdin, capture_output=True, env=ENV, timeout=20)
    else:
        done = subprocess.run(cmd, input=data, capture_output=True, env=ENV, timeout=20)
    assert done.returncode == 0
    assert answers(done.stdout) == [
        b"filter-result|%s|%s|disconnect|550 your IP reputation is too low for this MX" % (SID.encode(), TOK.encode())
    ]
    assert f"{SID} connect addr=192.0.2.4 score=4 (test): disconnect (below 20)" in done.stderr.decode()


def test_epipe_while_answering_at_eof_exits_zero_at_once(tmp_path):
    """EOF, then the reader is gone too: writing fails with EPIPE, the
    filter stops at once (exit 0) instead of waiting out its handlers."""
    import socket

    path = tmp_path / "filter.py"
    path.write_text(HANGS.replace("deadline=0.5", "deadline=30"))
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, str(path)], stdin=theirs, stdout=theirs, stderr=subprocess.DEVNULL, env=ENV)
    theirs.close()
    lines = [W.request(TS, "helo", f"{i:016x}", TOK, "x") for i in range(3)]
    ours.sendall(transcript(*lines))
    time.sleep(0.5)
    ours.close()  # EOF and EPIPE together: smtpd died
    started = time.monotonic()
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5  # not the 30 s deadline
