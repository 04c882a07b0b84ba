"""Helpers for the DNS filter benchmarks (bench_senderscore.py, bench_rdns.py).

* ``isolate(argv)``: re-run the calling script in a private network + mount
  namespace (``unshare -n -m``, only ``lo``), where /etc/resolv.conf says
  ``nameserver 127.0.0.1`` - so a filter using the system resolver (the Go
  anchor) can only ever reach our loopback DNS server.
* ``SyntheticDNS``: a fast loopback DNS responder (stdlib, its own process)
  whose answers are computed from the question: PTR of a.b.c.d ->
  ``h-a-b-c-d.bench.test``, A of that name -> a.b.c.d, A of
  ``*.score.senderscore.com`` -> ``127.0.4.SCORE``; names under ``DROP``
  suffixes are never answered.  The test DNS server (testing.dnsserver) is
  exact but costs ~150 us per answer in Python; this one ~15 us, so the
  filter, not the server, is what gets measured.
* ``Driven``: a filter started like smtpd starts it (``/bin/sh -c "exec
  CMD"``, stdin+stdout one socketpair, setsid, PATH+LANG only), with the
  handshake done; ``closed_loop()`` drives sessions the way smtpd does (each
  session advances only when its request was answered, K in flight) and
  ``burst()`` sends many requests at once and times each answer.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import gen_stream  # noqa: E402

MARK = "SMTPD_FILTERS_DNSBENCH_NETNS"
PY = sys.executable


# --------------------------------------------------------------------------
# Namespace


def in_namespace() -> bool:
    return os.environ.get(MARK) == "1"


def isolate(script: str, argv: list[str]) -> int | None:
    """Re-exec ``script`` in a private netns unless already there (root only).
    Returns the child's exit status, or None when the caller should go on
    (already isolated)."""
    if in_namespace():
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        fd, path = tempfile.mkstemp(prefix="dnsbench-resolv.")
        os.write(fd, b"nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        os.close(fd)
        os.chmod(path, 0o644)
        subprocess.run(["mount", "--bind", path, "/etc/resolv.conf"], check=True)
        os.unlink(path)
        return None
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise SystemExit("needs root and unshare(1): the Go anchor resolves through /etc/resolv.conf, "
                         "which must point at the loopback DNS server of a private namespace")
    env = dict(os.environ, **{MARK: "1"})
    return subprocess.call(["unshare", "-n", "-m", "--propagation", "private", "--", PY, script, *argv], env=env)


# --------------------------------------------------------------------------
# A fast synthetic DNS responder

_RESPONDER = r'''
import socket, struct, sys
score, drops, port = int(sys.argv[1]), [d.encode() for d in sys.argv[2].split(",") if d], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("127.0.0.1", port))
print(s.getsockname()[1], flush=True)
SS = b".score.senderscore.com"
while True:
    q, peer = s.recvfrom(4096)
    if len(q) < 17:
        continue
    labels, off = [], 12
    try:
        while q[off]:
            n = q[off]; labels.append(q[off + 1:off + 1 + n]); off += 1 + n
        qtype = struct.unpack(">H", q[off + 1:off + 3])[0]
    except (IndexError, struct.error):
        continue
    name = b".".join(labels).lower()
    if any(name.endswith(d) for d in drops):
        continue
    end = off + 5
    rcode, rdata, rtype = 3, None, qtype
    if name.endswith(b".in-addr.arpa") and qtype == 12 and len(labels) == 6:
        d, c, b, a = (x.decode() for x in labels[:4])
        target = b"h-%s-%s-%s-%s.bench.test" % (a.encode(), b.encode(), c.encode(), d.encode())
        rdata = b"".join(bytes([len(p)]) + p for p in target.split(b".")) + b"\0"
        rcode = 0
    elif name.startswith(b"h-") and name.endswith(b".bench.test"):
        rcode = 0
        if qtype == 1:
            rdata = socket.inet_aton(name[2:-11].replace(b"-", b".").decode())
    elif name.endswith(SS):
        rcode = 0
        if qtype == 1:
            rdata = bytes([127, 0, 4, score])
    flags = 0x8000 | 0x0400 | (q[2] << 8 & 0x0100) | 0x0080 | rcode
    out = q[:2] + struct.pack(">HHHHH", flags, 1, 1 if rdata else 0, 0, 0) + q[12:end]
    if rdata:
        out += b"\xc0\x0c" + struct.pack(">HHIH", rtype, 1, 300, len(rdata)) + rdata
    s.sendto(out, peer)
'''


class SyntheticDNS:
    def __init__(self, score: int = 77, drop: tuple[str, ...] = (), port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [PY, "-c", _RESPONDER, str(score), ",".join(drop), str(port)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "SyntheticDNS":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# The filter process


def compare(run_args: list[str], ours: str, anchor: str, names: tuple[str, str]) -> dict:
    """``run.py RUN_ARGS OURS --against ANCHOR`` (alternating runs, medians):
    its console lines echoed indented, its comparison summary returned (or
    its "skipped" record, or {} if it failed)."""
    argv = [
        PY, os.path.join(HERE, "run.py"), *run_args, "--env", f"PYTHONPATH={REPO}", "--json",
        "--name", names[0], ours, "--against", anchor, "--against-name", names[1],
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    comp: dict = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            if "comparison_summary" in obj:
                comp = obj["comparison_summary"]
            elif "skipped" in obj:
                comp = obj
        else:
            print("   " + line, flush=True)
    if out.returncode != 0 and not comp:
        print(out.stderr[-2000:], file=sys.stderr)
    return comp


def filter_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": REPO}
    env.update(extra or {})
    return env


class Driven:
    def __init__(self, cmd: str, version: str = "0.6", env: dict[str, str] | None = None,
                 stderr_path: str | None = None) -> None:
        self.cmd = cmd
        self.dialect = gen_stream.dialect(version)
        ours, theirs = socket.socketpair()
        err = open(stderr_path, "ab") if stderr_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", "exec " + cmd], stdin=theirs, stdout=theirs, stderr=err,
            env=env or filter_env(), start_new_session=True, close_fds=True,
        )
        theirs.close()
        if stderr_path:
            err.close()  # type: ignore[union-attr]
        self.sock = ours
        self.buf = b""
        self.sock.sendall(("\n".join(self.dialect.handshake()) + "\n").encode())
        self.registrations = []
        deadline = time.monotonic() + 30
        while True:
            line = self._line(deadline)
            if line is None:
                raise RuntimeError(f"{cmd}: no register|ready")
            self.registrations.append(line.decode())
            if line == b"register|ready":
                break
        self.sock.setblocking(False)

    def _line(self, deadline: float) -> bytes | None:
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def lines(self, timeout: float) -> list[bytes]:
        """Whatever complete lines arrive within ``timeout`` (at least one wait)."""
        if select.select([self.sock], [], [], timeout)[0]:
            try:
                while True:
                    chunk = self.sock.recv(1 << 18)
                    if not chunk:
                        break
                    self.buf += chunk
                    if len(chunk) < (1 << 18):
                        break
            except BlockingIOError:
                pass
        *done, self.buf = self.buf.split(b"\n")
        return done

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
                view = view[n:]
            except BlockingIOError:
                select.select([], [self.sock], [], 1.0)

    def cpu(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return float("nan")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # -- patterns ----------------------------------------------------------------

    def burst(self, lines: list[bytes], sids: list[bytes], timeout: float) -> dict[bytes, float]:
        """Send ``lines`` at once; seconds until each session in ``sids`` got
        its first filter-result (sessions missing: not answered in time)."""
        want = set(sids)
        got: dict[bytes, float] = {}
        t0 = time.monotonic()
        self.send(b"".join(line + b"\n" for line in lines))
        while want and time.monotonic() - t0 < timeout:
            for line in self.lines(0.05):
                if line.startswith(b"filter-result|"):
                    parts = line.split(b"|", 3)
                    for sid in (parts[1], parts[2]):
                        if sid in want:
                            want.discard(sid)
                            got[sid] = time.monotonic() - t0
        return got

    def closed_loop(self, sessions: list[list[tuple[bytes, str | None]]], window: int,
                    sid_of: list[bytes], timeout: float = 60.0) -> dict:
        """smtpd's pace: each session's next segment goes out when the
        request that ended the previous one was answered (``result``) or the
        message's final ``.`` came back (``dot``)."""
        pending = deque(range(len(sessions)))
        active: dict[bytes, tuple[int, int]] = {}  # sid -> (session index, next segment)
        done = 0
        answers = 0
        t0 = time.monotonic()
        cpu0 = self.cpu()
        last_progress = t0

        def advance(i: int, seg: int) -> bytes:
            nonlocal done
            out = []
            segs = sessions[i]
            while seg < len(segs):
                data, wait = segs[seg]
                out.append(data)
                seg += 1
                if wait is not None:
                    active[sid_of[i]] = (i, seg)
                    return b"".join(out)
            active.pop(sid_of[i], None)
            done += 1
            return b"".join(out)

        batch = []
        while pending and len(active) < window:
            batch.append(advance(pending.popleft(), 0))
        self.send(b"".join(batch))
        while done < len(sessions):
            now = time.monotonic()
            if now - last_progress > timeout:
                break
            lines = self.lines(0.5)
            if not lines:
                continue
            last_progress = time.monotonic()
            batch = []
            for line in lines:
                if line.startswith(b"filter-result|"):
                    answers += 1
                    p = line.split(b"|", 3)
                    sid = p[1] if p[1] in active else p[2]
                elif line.startswith(b"filter-dataline|") and line.endswith(b"|."):
                    p = line.split(b"|", 3)
                    sid = p[1] if p[1] in active else p[2]
                else:
                    continue
                state = active.get(sid)
                if state is None:
                    continue
                batch.append(advance(*state))
                while pending and len(active) < window:
                    batch.append(advance(pending.popleft(), 0))
            if batch:
                self.send(b"".join(batch))
        wall = time.monotonic() - t0
        return {"sessions": done, "of": len(sessions), "answers": answers, "wall_s": round(wall, 3),
                "sessions_per_s": round(done / wall, 1) if wall else None,
                "cpu_s": round(self.cpu() - cpu0, 3), "complete": done == len(sessions)}


def session_stream(registrations: list[str], n: int, messages: int = 0, body_lines: int = 10,
                   version: str = "0.6") -> gen_stream.Stream:
    spec = gen_stream.StreamSpec.from_registrations(registrations, version=version, sessions=n,
                                                    messages=messages)
    spec.lines = body_lines
    return gen_stream.Stream(spec)


def with_client(segments: list[tuple[bytes, str | None]], ip: str, rdns: str = "<unknown>",
                fcrdns: str = "error") -> list[tuple[bytes, str | None]]:
    """The template's client (localhost, 127.0.0.1) replaced by ``ip``."""
    out = []
    for data, wait in segments:
        data = data.replace(b"|localhost|pass|127.0.0.1:", b"|%s|%s|%s:" % (rdns.encode(), fcrdns.encode(), ip.encode()))
        data = data.replace(b"|localhost|127.0.0.1\n", b"|%s|%s\n" % (rdns.encode(), ip.encode()))
        out.append((data, wait))
    return out
