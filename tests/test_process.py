"""A filter process run the way smtpd runs it: ``/bin/sh -c "exec CMD"``,
stdin and stdout one AF_UNIX socket, stderr another, a new session, and
smtpd's near-empty environment (no PYTHONUNBUFFERED to hide flush bugs)."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpd_filter_sdk.testing.wire import Wire

ROOT = Path(__file__).resolve().parent.parent
W = Wire("0.6")
SID, TOK = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"

RELOADING_FILTER = """
import sys
from smtpd_filter_sdk import Filter, reject
f = Filter("proc-test")
state = {"reloads": 0}

@f.on_reload
def reload():
    state["reloads"] += 1
    if state["reloads"] == 2:
        raise ValueError("bad list on line 3")

@f.on("helo")
def helo(session, name):
    return reject(550, f"5.7.1 reloads={state['reloads']}")

f.run()
"""


class Proc:
    def __init__(self, script: str, tmp_path: Path) -> None:
        path = tmp_path / "filter.py"
        path.write_text(script)
        self.sock, child = socket.socketpair()
        self.err, child_err = socket.socketpair()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)}
        self.p = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {sys.executable} {path}"],
            stdin=child,
            stdout=child,
            stderr=child_err,
            env=env,
            start_new_session=True,
        )
        child.close()
        child_err.close()
        self.buf = b""

    def send(self, *lines: bytes) -> None:
        self.sock.sendall(b"".join(line + b"\n" for line in lines))

    def read_lines(self, n: int, timeout: float = 10) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while self.buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise AssertionError(f"wanted {n} lines, have {self.buf!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"filter closed the socket; have {self.buf!r}")
            self.buf += chunk
        lines = self.buf.split(b"\n")
        out, self.buf = lines[:n], b"\n".join(lines[n:])
        return out

    def stderr_text(self) -> str:
        self.err.setblocking(False)
        data = b""
        try:
            while chunk := self.err.recv(65536):
                data += chunk
        except BlockingIOError:
            pass
        return data.decode(errors="replace")

    def handshake(self) -> list[bytes]:
        self.send(*W.handshake())
        lines: list[bytes] = []
        while not lines or lines[-1] != b"register|ready":
            lines += self.read_lines(1)
        return lines

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.sock.close()
        self.err.close()


@pytest.fixture
def proc(tmp_path):
    procs = []

    def start(script: str = RELOADING_FILTER) -> Proc:
        procs.append(Proc(script, tmp_path))
        return procs[-1]

    yield start
    for p in procs:
        p.close()


def helo(p: Proc, name: str = "x") -> bytes:
    p.send(W.request("1.0", "helo", SID, TOK, name))
    return p.read_lines(1)[0]


def test_answers_are_flushed_without_pythonunbuffered(proc):
    p = proc()
    assert p.handshake()[-1] == b"register|ready"
    assert helo(p) == b"filter-result|%s|%s|reject|550 5.7.1 reloads=0" % (SID.encode(), TOK.encode())


def test_exits_zero_on_eof_and_does_not_spin(proc):
    p = proc()
    p.handshake()
    p.sock.shutdown(socket.SHUT_WR)
    assert p.p.wait(timeout=10) == 0


def test_eof_during_handshake_exits_zero(proc):
    p = proc()
    p.send(b"config|smtpd-version|6.8.0p2")
    p.sock.shutdown(socket.SHUT_WR)
    assert p.p.wait(timeout=10) == 0


def test_sighup_reloads_and_a_bad_reload_keeps_running(proc):
    p = proc()
    p.handshake()
    os.kill(p.p.pid, signal.SIGHUP)
    time.sleep(0.3)
    assert helo(p).endswith(b"reloads=1")
    os.kill(p.p.pid, signal.SIGHUP)  # this reload raises
    time.sleep(0.3)
    assert helo(p).endswith(b"reloads=2")
    assert p.p.poll() is None
    assert "reload failed, keeping the previous state" in p.stderr_text()


def test_sighup_before_the_handshake_does_not_kill(proc):
    p = proc()
    time.sleep(0.5)  # interpreter up, handlers installed, waiting for config
    os.kill(p.p.pid, signal.SIGHUP)
    assert p.handshake()[-1] == b"register|ready"


def test_sigterm_is_a_clean_exit(proc):
    p = proc()
    p.handshake()
    os.kill(p.p.pid, signal.SIGTERM)
    assert p.p.wait(timeout=10) == 0


def test_peer_gone_while_writing_exits_zero(proc):
    p = proc()
    p.handshake()
    p.send(*[W.request("1.0", "helo", f"{i:016x}", TOK, "x") for i in range(2000)])
    p.sock.close()  # smtpd died: writes now fail with EPIPE
    assert p.p.wait(timeout=10) == 0


def test_input_from_a_regular_file(tmp_path):
    # epoll cannot watch regular files: the runtime falls back to a reader thread.
    script = tmp_path / "f.py"
    script.write_text(RELOADING_FILTER)
    stream = tmp_path / "in.txt"
    stream.write_bytes(b"".join(l + b"\n" for l in W.handshake() + [W.request("1.0", "helo", SID, TOK, "x")]))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    with stream.open("rb") as stdin:
        done = subprocess.run([sys.executable, str(script)], stdin=stdin, capture_output=True, env=env, timeout=20)
    assert done.returncode == 0
    assert done.stdout.splitlines()[-1].endswith(b"reloads=0")
