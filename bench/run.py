#!/usr/bin/env python3
"""Benchmark runner: drive any proc-exec filter the way smtpd does, no smtpd.

The filter is started like smtpd starts it: ``/bin/sh -c "exec CMD"``, stdin
and stdout are ONE end of an AF_UNIX socketpair, stderr is a second
socketpair, new session (setsid), environment ``PATH`` + ``LANG`` only (unless
``--inherit-env``).  The runner sends the handshake of the chosen protocol
version, reads the filter's ``register|`` lines, generates a stream
(gen_stream.py) with only what the filter registered, then times the stream:

* open loop (default): the stream is written as fast as the filter drains it;
  the socket stays open until every answer is in (the Go anchors exit on EOF
  and would drop answers still in flight);
* closed loop (``--window K``): at most K sessions in flight and each session
  advances only when smtpd would: after each filter request the next line is
  sent once its ``filter-result`` came back, and commit only after the filter
  echoed the final ``.``.

It reports input lines/s, MB/s and sessions/s (input protocol lines/bytes per
wall second, from the first byte written to the last answer received), the
filter's CPU (user+sys from wait4 rusage, whole life; and within the timed
window from /proc/PID/stat), its peak RSS (ru_maxrss and VmHWM) and checks
completeness (every request answered, every message's final "." echoed).

  run.py @echo                                  # bench/echo_loop.py
  run.py --size 102400 --sessions 1000 @passthrough --against @echo --repeats 5
  run.py --size 102400 @passthrough --against @senderscore
  run.py --window 8 --lines 50 "python3 my_filter.py -x"
  run.py --memory --memory-sessions 1e4,1e5,1e6 @passthrough
  run.py --suite [--quick]                      # the standard set, a few minutes
  run.py --small [--instructions]               # small messages, by time (or by instruction count)

Shortcuts: @echo, @passthrough, @senderscore (Debian anchor, needs the fake
DNS: run.py runs everything in a private network namespace whose only
interface is lo, /etc/resolv.conf -> 127.0.0.1 where bench/fakedns.py
answers; ``--isolate no`` to disable), @senderscore-loop (bench/senderscore_loop.py:
py-filter-senderscore's work hand-written, the floor), @dkimsign (generates a throw-away key),
@rspamd (not in the suite: run it with --isolate no against an rspamd
already listening on 127.0.0.1:11333; the namespace has no rspamd).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_stream  # noqa: E402

PY = sys.executable or "python3"
#: The interpreter the @echo/@passthrough filters run on (--python): by default
#: the system's python3, the one a packaged filter runs on (smtpd starts it
#: with a near-empty environment), else the one running this script.  Both
#: sides of an SDK-vs-echo comparison always run on the same one.
SYSTEM_PY = "/usr/bin/python3"
FILTER_PY = SYSTEM_PY if os.access(SYSTEM_PY, os.X_OK) else PY
LIBEXEC = "/usr/libexec/opensmtpd"
REPO = os.path.dirname(HERE)
NETNS_MARK = "SMTPD_BENCH_IN_NETNS"


def shortcut(cmd: str, tmpdir: str | None = None) -> tuple[str, str]:
    """'@name args' -> (display name, command line)."""
    if not cmd.startswith("@"):
        return (os.path.basename(shlex.split(cmd)[0]) if cmd.strip() else cmd), cmd
    name, _, extra = cmd[1:].partition(" ")
    extra = (" " + extra) if extra else ""
    if name in ("echo", "echo_loop"):
        return "echo_loop", "%s %s/echo_loop.py%s" % (FILTER_PY, HERE, extra)
    if name in ("senderscore-loop", "senderscore_loop"):  # py-filter-senderscore's work, no SDK
        return "senderscore_loop", "%s %s/senderscore_loop.py%s" % (FILTER_PY, HERE, extra)
    if name in ("passthrough", "sdk"):
        return "sdk-passthrough", "%s %s/passthrough.py%s" % (FILTER_PY, HERE, extra)
    if name in ("passthrough-lines", "sdk-lines"):
        return "sdk-per-line", "%s %s/passthrough.py --per-line%s" % (FILTER_PY, HERE, extra)
    if name in ("add_header", "add-header"):  # the header-tagging example, as users run it
        return "sdk-add_header", "env PYTHONPATH=%s %s %s/examples/add_header.py%s" % (
            REPO, FILTER_PY, REPO, extra)
    if name in ("py-senderscore", "py_senderscore"):
        return "py-filter-senderscore", "env PYTHONPATH=%s %s %s/filters/senderscore.py%s" % (
            REPO, FILTER_PY, REPO, extra or " -junkBelow 80 -scoreHeader")
    if name == "senderscore":
        return "filter-senderscore", "%s/filter-senderscore%s" % (
            LIBEXEC, extra or " -junkBelow 80 -scoreHeader")
    if name == "dkimsign":
        key = os.path.join(tmpdir or tempfile.gettempdir(), "bench-dkim-rsa.key")
        if not os.path.exists(key) and shutil.which("openssl"):
            subprocess.run(["openssl", "genrsa", "-out", key, "2048"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            os.chmod(key, 0o644)
        return "filter-dkimsign", "%s/filter-dkimsign -d rig.test -s rsa1 -k %s%s" % (
            LIBEXEC, key, extra)
    if name == "rspamd":
        return "filter-rspamd", "%s/filter-rspamd%s" % (
            LIBEXEC, extra or " -url http://127.0.0.1:11333")
    raise SystemExit("unknown shortcut @%s" % name)


def filter_env(a) -> dict:
    if a.inherit_env:
        env = dict(os.environ)
        env.pop(NETNS_MARK, None)
    else:
        env = gen_stream.default_env()
    for kv in a.env or []:
        k, _, v = kv.partition("=")
        env[k] = v
    return env


def missing_binary(cmd: str, env: dict) -> str | None:
    """The program CMD runs, if it does not exist (-> skip), else None."""
    try:
        prog = shlex.split(cmd)[0]
    except (ValueError, IndexError):
        return cmd
    if "/" in prog:
        return None if os.access(prog, os.X_OK) else prog
    return None if shutil.which(prog, path=env.get("PATH")) else prog


# --------------------------------------------------------------------------
# The filter process

class FilterProc:
    def __init__(self, cmd: str, env: dict, stderr_path: str | None = None):
        self.cmd = cmd
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.err, echild = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(["/bin/sh", "-c", "exec " + cmd], stdin=child,
                                     stdout=child, stderr=echild, env=env,
                                     start_new_session=True, close_fds=True)
        child.close()
        echild.close()
        self.pid = self.proc.pid
        self.err.setblocking(False)
        self.stderr_tail = b""
        self.stderr_bytes = 0
        self.stderr_file = open(stderr_path, "ab") if stderr_path else None
        self.rusage = None
        self.status = None
        self.hz = os.sysconf("SC_CLK_TCK")

    def read_stderr(self) -> None:
        while True:
            try:
                d = self.err.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                d = b""
            if not d:
                return
            self.stderr_bytes += len(d)
            self.stderr_tail = (self.stderr_tail + d)[-4096:]
            if self.stderr_file:
                self.stderr_file.write(d)

    def cpu(self) -> float:
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                x = f.read().rsplit(")", 1)[1].split()
            return (int(x[11]) + int(x[12])) / self.hz
        except (OSError, IndexError, ValueError):
            return float("nan")

    def status_kb(self) -> dict:
        r = {}
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        k, v = line.split(":", 1)
                        r[k] = int(v.split()[0])
        except OSError:
            pass
        return r

    def handshake(self, hs: bytes, timeout: float = 30.0) -> tuple[list[str], bytes]:
        self.sock.sendall(hs)
        buf = b""
        deadline = time.monotonic() + timeout
        while b"register|ready\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("no register|ready within %.0f s" % timeout)
            r, _, _ = select.select([self.sock, self.err], [], [], left)
            if self.err in r:
                self.read_stderr()
            if self.sock in r:
                d = self.sock.recv(65536)
                if not d:
                    self.read_stderr()
                    raise RuntimeError("filter exited during the handshake: %s"
                                       % self.stderr_tail.decode("utf-8", "replace")[-500:])
                buf += d
        i = buf.index(b"register|ready\n") + len(b"register|ready\n")
        return buf[:i].decode("utf-8", "replace").splitlines(), buf[i:]

    def finish(self, timeout: float = 10.0) -> None:
        """EOF to the filter, wait for it (kill it by pid after timeout)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.setblocking(False)
        deadline = time.monotonic() + timeout
        killed = False
        while True:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.status, self.rusage = status, ru
                break
            for s in (self.sock, self.err):     # keep draining so it can exit
                try:
                    while s.recv(1 << 16):
                        pass
                except (BlockingIOError, InterruptedError, OSError):
                    pass
            if time.monotonic() > deadline and not killed:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed = True
            time.sleep(0.01)
        self.proc.returncode = os.waitstatus_to_exitcode(self.status)
        self.read_stderr()
        self.sock.close()
        self.err.close()
        if self.stderr_file:
            self.stderr_file.close()
        self.killed = killed


# --------------------------------------------------------------------------
# Output accounting

class Counter:
    """Counts answers in the filter's output (complete lines only)."""

    def __init__(self, token_first: bool, track: bool):
        self.carry = b""
        self.results = self.dots = self.datalines = self.lines = self.bytes = 0
        self.token_first = token_first
        self.track = track             # collect per-session events (closed loop)
        self.events: list[tuple[str, bytes]] = []

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        data = self.carry + chunk if self.carry else chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            self.carry = data
            return
        if cut < len(data):
            self.carry = data[cut:]
            data = data[:cut]
        else:
            self.carry = b""
        self.lines += data.count(b"\n")
        self.datalines += data.count(b"filter-dataline|")
        nres = data.count(b"filter-result|")
        ndot = data.count(b"|.\n")
        self.results += nres
        self.dots += ndot
        if not self.track:
            return
        if nres:
            pos = 0
            while True:
                j = data.find(b"filter-result|", pos)
                if j < 0:
                    break
                e = data.find(b"\n", j)
                ids = gen_stream.response_ids(data[j:e], self.token_first)
                if ids:
                    self.events.append(("result", ids[0]))
                pos = e
        if ndot:
            pos = 0
            while True:
                j = data.find(b"|.\n", pos)
                if j < 0:
                    break
                ls = data.rfind(b"\n", 0, j) + 1
                line = data[ls:j + 2]
                if line.startswith(b"filter-dataline|"):
                    ids = gen_stream.response_ids(line, self.token_first)
                    if ids:
                        self.events.append(("dot", ids[0]))
                pos = j + 3


class StreamCounter:
    """Open loop: counts answer patterns straight in the receive buffer
    (recv_into + bytearray.count with bounds: no copies, no line splitting);
    occurrences straddling two reads are counted from a small boundary string.

    The final-dot pattern includes the data-line token (constant per phase, as
    in smtpd) when responses are ``SID|TOK``: ``|TOKEN|.\n`` is much faster to
    search than ``|.\n``."""

    def __init__(self, dot_pattern: bytes, size: int = 1 << 18):
        self.pats = (b"\n", b"filter-result|", dot_pattern, b"filter-dataline|")
        self.k = max(len(p) for p in self.pats) - 1
        self.counts = [0, 0, 0, 0]
        self.tail = b""
        self.buf = bytearray(size)
        self.bytes = 0

    def recv(self, sock) -> int:
        n = sock.recv_into(self.buf)
        if n:
            self.feed_n(n)
        return n

    def feed(self, data: bytes) -> None:
        for i in range(0, len(data), len(self.buf)):
            part = data[i:i + len(self.buf)]
            self.buf[:len(part)] = part
            self.feed_n(len(part))

    def feed_n(self, n: int) -> None:
        buf, k, tail, counts = self.buf, self.k, self.tail, self.counts
        self.bytes += n
        head = bytes(buf[:min(k, n)])
        if tail:
            edge = tail + head
        for i, p in enumerate(self.pats):
            c = buf.count(p, 0, n)
            if tail:
                c += edge.count(p) - tail.count(p) - head.count(p)
            counts[i] += c
        self.tail = (tail + head)[-k:] if n < k else bytes(buf[n - k:n])

    lines = property(lambda self: self.counts[0])
    results = property(lambda self: self.counts[1])
    dots = property(lambda self: self.counts[2])
    datalines = property(lambda self: self.counts[3])


# --------------------------------------------------------------------------
# Stream cache (same registrations -> same bytes, generated once)

_CACHE: dict = {}
PREGEN_LIMIT = 1_500_000_000


def get_stream(a, regs: list[str], sessions: int | None = None) -> gen_stream.Stream:
    ev, ph = gen_stream.parse_registrations(regs)
    n = a.sessions if sessions is None else sessions
    key = ("stream", a.version, n, a.lines, a.size, a.messages, a.rcpts, a.tls, a.auth,
           a.interleave, a.seed, tuple(sorted(ev.items())), tuple(sorted(ph)))
    if key not in _CACHE:
        spec = gen_stream.StreamSpec(version=a.version, sessions=n, lines=a.lines,
                                     size=a.size, messages=a.messages, rcpts=a.rcpts,
                                     tls=a.tls, auth=a.auth, events=ev, phases=ph,
                                     interleave=a.interleave, seed=a.seed)
        _CACHE[key] = gen_stream.Stream(spec)
    return _CACHE[key]


def get_chunks(st: gen_stream.Stream, lazy: bool):
    """Pre-generated chunk list (cached) or a lazy iterator for huge streams."""
    if lazy or st.total()["bytes"] > PREGEN_LIMIT:
        return st.iter_chunks(1 << 20)
    key = ("chunks", id(st))
    if key not in _CACHE:
        _CACHE[key] = list(st.iter_chunks(1 << 20))
    return _CACHE[key]


# --------------------------------------------------------------------------
# One run

def needs_private_dns(cmd: str) -> bool:
    """Filters known to query DNS for every session (filter-senderscore looks
    up the client's score at link-connect)."""
    return "senderscore" in cmd


def resolvers_are_loopback(path: str = "/etc/resolv.conf") -> bool:
    import ipaddress
    try:
        with open(path) as f:
            ns = [l.split()[1] for l in f if l.split()[:1] == ["nameserver"] and len(l.split()) > 1]
    except OSError:
        return False
    try:
        return bool(ns) and all(ipaddress.ip_address(x.split("%")[0]).is_loopback for x in ns)
    except ValueError:
        return False


def dns_unsafe(cmd: str) -> bool:
    """True when CMD would send DNS queries to a non-loopback resolver: such a
    filter only runs inside the private namespace (fake DNS on 127.0.0.1) or
    when the system resolver itself is on loopback, whatever --isolate says."""
    return needs_private_dns(cmd) and not in_netns() and not resolvers_are_loopback()


def run_once(a, name: str, cmd: str, sessions: int | None = None,
             checkpoints: tuple[int, ...] = (), lazy: bool = False) -> dict:
    env = filter_env(a)
    miss = missing_binary(cmd, env)
    if miss:
        return {"name": name, "cmd": cmd, "skipped": "not installed (%s)" % miss}
    if dns_unsafe(cmd):
        # never let a benchmark send DNS queries to a non-loopback resolver
        return {"name": name, "cmd": cmd, "skipped": "queries DNS and the resolver is not "
                "on loopback: needs the private network namespace with the fake DNS "
                "(root + unshare, --isolate auto/yes)"}
    d = gen_stream.dialect(a.version)
    fp = FilterProc(cmd, env, a.stderr_file)
    try:
        regs, early = fp.handshake(("\n".join(d.handshake()) + "\n").encode(),
                                   a.handshake_timeout)
    except Exception as e:
        fp.finish(2)
        return {"name": name, "cmd": cmd, "error": str(e)}
    if a.warmup:  # a filter that loads state in the background after registering
        time.sleep(a.warmup)
    st = get_stream(a, regs, sessions)
    tot = st.total()
    n = st.spec.sessions
    if a.window:
        cnt = Counter(d.token_first, track=True)
    else:
        cnt = StreamCounter(b"|.\n" if d.token_first
                            else b"|" + st.tokens["data-line"].encode() + b"|.\n")
    if early:
        cnt.feed(early)
    samples: list[tuple[float, int, int]] = []
    cps: dict[int, int] = {}
    if a.window:
        ru_self0 = resource.getrusage(resource.RUSAGE_SELF)
        t0, t1, cpu0, cpu1, timed_out, eof, sent = _closed_loop(a, fp, st, cnt, samples)
    else:
        chunks = get_chunks(st, lazy)
        ru_self0 = resource.getrusage(resource.RUSAGE_SELF)
        t0, t1, cpu0, cpu1, timed_out, eof, sent = _open_loop(
            a, fp, st, chunks, cnt, samples, checkpoints, cps)
    ru_self1 = resource.getrusage(resource.RUSAGE_SELF)
    stat = fp.status_kb()
    fp.finish(a.exit_timeout)
    ru = fp.rusage
    wall = max(t1 - t0, 1e-9)
    complete = cnt.results >= tot["requests"] and cnt.dots >= tot["dots"] and sent
    res = {
        "name": name, "cmd": cmd, "version": d.name,
        "mode": "window=%d" % a.window if a.window else "open",
        "sessions": n, "message_lines": st.message_lines if a.messages else 0,
        "message_bytes": st.message_bytes if a.messages else 0,
        "lines_per_session": st.lines_per_session,
        "in_lines": tot["lines"], "in_bytes": tot["bytes"],
        "out_lines": cnt.lines, "out_bytes": cnt.bytes,
        "results": cnt.results, "expected_results": tot["requests"],
        "dots": cnt.dots, "expected_dots": tot["dots"],
        "datalines": cnt.datalines, "expected_datalines": tot["datalines"],
        "other_out_lines": cnt.lines - cnt.results - cnt.datalines,
        "complete": bool(complete), "exact": cnt.results == tot["requests"]
        and cnt.dots == tot["dots"],
        "timed_out": timed_out, "filter_eof": eof,
        "wall_s": round(wall, 4),
        "lines_per_s": round(tot["lines"] / wall),
        "MB_per_s": round(tot["bytes"] / wall / 1e6, 2),
        "sessions_per_s": round(n / wall, 1),
        "cpu_user_s": round(ru.ru_utime, 3), "cpu_sys_s": round(ru.ru_stime, 3),
        "cpu_window_s": round(cpu1 - cpu0, 2),
        "cpu_pct": round(100 * (cpu1 - cpu0) / wall, 1),
        # less sensitive to a noisy machine than lines/s: filter CPU per line
        "lines_per_cpu_s": round(tot["lines"] / (cpu1 - cpu0)) if cpu1 > cpu0 else None,
        # peak RSS = VmHWM of the exec'd filter, read just before EOF.  (wait4's
        # ru_maxrss is kept across execve and starts at the runner's own RSS
        # at spawn time, so it only serves as a fallback.)
        "max_rss_MB": round((stat.get("VmHWM") or ru.ru_maxrss) / 1024, 1),
        "vmhwm_MB": round(stat.get("VmHWM", 0) / 1024, 1),
        "ru_maxrss_MB": round(ru.ru_maxrss / 1024, 1),
        "vmrss_end_MB": round(stat.get("VmRSS", 0) / 1024, 1),
        "driver_cpu_s": round(ru_self1.ru_utime + ru_self1.ru_stime
                              - ru_self0.ru_utime - ru_self0.ru_stime, 2),
        "exit": fp.proc.returncode, "killed_at_exit": fp.killed,
        "stderr_bytes": fp.stderr_bytes,
        "registered": regs[:-1],
    }
    if not complete:
        res["stderr_tail"] = fp.stderr_tail.decode("utf-8", "replace")[-800:]
    if samples:
        res["rss_samples"] = samples
        res["rss_max_sampled_MB"] = round(max(s[2] for s in samples) / 1024, 1)
    if checkpoints:
        res["rss_at_sessions_MB"] = {str(k): round(v / 1024, 1) for k, v in cps.items()}
    return res


def _done_sessions(st, cnt) -> int:
    if st.dots_per_session:
        return cnt.dots // st.dots_per_session
    if st.requests_per_session:
        return cnt.results // st.requests_per_session
    return 0


def _open_loop(a, fp, st, chunks, cnt, samples, checkpoints, cps):
    tot = st.total()
    need_res, need_dots = tot["requests"], tot["dots"]
    sock = fp.sock
    sock.setblocking(False)
    fd, efd = sock.fileno(), fp.err.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLOUT)
    poller.register(efd, select.POLLIN)
    it = iter(chunks)
    cur = memoryview(b"")
    writing = True
    timed_out = eof = False
    pending_cps = sorted(checkpoints)
    sample_dt = a.sample_interval
    t_last = time.monotonic()
    cpu0 = fp.cpu()
    t0 = time.perf_counter()
    next_sample = t0 + sample_dt if sample_dt else float("inf")
    send = sock.send
    while True:
        if not writing and cnt.results >= need_res and cnt.dots >= need_dots:
            break
        evs = poller.poll(200)
        now = time.perf_counter()
        if now >= next_sample or (pending_cps and evs):
            done = _done_sessions(st, cnt)
            if now >= next_sample:
                next_sample = now + sample_dt
                rss = fp.status_kb().get("VmRSS", 0)
                samples.append((round(now - t0, 2), done, rss))
            while pending_cps and done >= pending_cps[0]:
                cps[pending_cps.pop(0)] = fp.status_kb().get("VmRSS", 0)
        if not evs:
            if time.monotonic() - t_last > a.idle_timeout:
                timed_out = True
                break
            continue
        for f, ev in evs:
            if f == efd:
                fp.read_stderr()
                if ev & (select.POLLHUP | select.POLLERR):
                    poller.unregister(efd)
                continue
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    k = cnt.recv(sock)
                except (BlockingIOError, InterruptedError):
                    k = None
                except OSError:
                    k = 0
                if k == 0:
                    eof = True
                    break
                if k:
                    t_last = time.monotonic()
            if writing and ev & select.POLLOUT:
                if not cur:
                    nxt = next(it, None)
                    if nxt is None:
                        writing = False
                        poller.modify(fd, select.POLLIN)
                        continue
                    cur = memoryview(nxt)
                try:
                    k = send(cur)
                    cur = cur[k:]
                    t_last = time.monotonic()
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    eof = True
                    break
        if eof:
            break
    t1 = time.perf_counter()
    cpu1 = fp.cpu()
    if pending_cps:
        done = _done_sessions(st, cnt)
        while pending_cps and done >= pending_cps[0]:
            cps[pending_cps.pop(0)] = fp.status_kb().get("VmRSS", 0)
    return t0, t1, cpu0, cpu1, timed_out, eof, not writing


def _closed_loop(a, fp, st, cnt, samples):
    """At most a.window sessions in flight; each waits where smtpd waits."""
    n = st.spec.sessions
    sock = fp.sock
    sock.setblocking(False)
    fd, efd = sock.fileno(), fp.err.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(efd, select.POLLIN)
    out = bytearray()
    active: dict[bytes, list] = {}     # sid -> [segments, next index, waiting kind]
    nxt = 0
    finished = 0
    timed_out = eof = False
    t_last = time.monotonic()

    def advance(sid: bytes, s: list) -> bool:
        segs = s[0]
        while s[1] < len(segs):
            data, wait = segs[s[1]]
            s[1] += 1
            out.extend(data)
            if wait:
                s[2] = wait
                return False
        s[2] = None
        return True                    # session fully sent and answered

    def start_more() -> None:
        nonlocal nxt, finished
        while nxt < n and len(active) < a.window:
            sid = st.ids(nxt)[0]
            s = [st.session_segments(nxt), 0, None]
            nxt += 1
            if advance(sid, s):
                finished += 1
            else:
                active[sid] = s

    sample_dt = a.sample_interval
    cpu0 = fp.cpu()
    t0 = time.perf_counter()
    next_sample = t0 + sample_dt if sample_dt else float("inf")
    start_more()
    while finished < n or out:
        poller.modify(fd, select.POLLIN | (select.POLLOUT if out else 0))
        evs = poller.poll(200)
        now = time.perf_counter()
        if now >= next_sample:
            next_sample = now + sample_dt
            samples.append((round(now - t0, 2), finished, fp.status_kb().get("VmRSS", 0)))
        if not evs:
            if time.monotonic() - t_last > a.idle_timeout:
                timed_out = True
                break
            continue
        for f, ev in evs:
            if f == efd:
                fp.read_stderr()
                if ev & (select.POLLHUP | select.POLLERR):
                    poller.unregister(efd)
                continue
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    data = sock.recv(1 << 18)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    eof = True
                    break
                if data:
                    t_last = time.monotonic()
                    cnt.feed(data)
                    evl, cnt.events = cnt.events, []
                    for kind, sid in evl:
                        s = active.get(sid)
                        if s is None or s[2] != kind:
                            continue
                        if advance(sid, s):
                            del active[sid]
                            finished += 1
                    start_more()
            if out and ev & select.POLLOUT:
                try:
                    k = sock.send(out)
                    del out[:k]
                    t_last = time.monotonic()
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    eof = True
                    break
        if eof:
            break
    t1 = time.perf_counter()
    cpu1 = fp.cpu()
    return t0, t1, cpu0, cpu1, timed_out, eof, finished >= n and not out


# --------------------------------------------------------------------------
# Reporting

def fmt_row(r: dict) -> str:
    if "skipped" in r:
        return "%-20s skipped: %s" % (r["name"], r["skipped"])
    if "error" in r:
        return "%-20s ERROR: %s" % (r["name"], r["error"])
    return ("%-20s %-9s %9s lines/s %7.1f MB/s %8.1f sess/s  cpu %5.2f+%5.2f s (%3.0f%%)"
            "  rss %5.1f MB  %s%s" % (
                r["name"], r["mode"], "{:,}".format(r["lines_per_s"]), r["MB_per_s"],
                r["sessions_per_s"], r["cpu_user_s"], r["cpu_sys_s"], r["cpu_pct"],
                r["max_rss_MB"], "complete" if r["complete"] else "INCOMPLETE",
                "" if r["complete"] else " (results %d/%d, dots %d/%d%s%s)" % (
                    r["results"], r["expected_results"], r["dots"], r["expected_dots"],
                    ", timed out" if r["timed_out"] else "",
                    ", filter EOF" if r["filter_eof"] else "")))


def median_of(runs: list[dict], key: str) -> float:
    vals = [r[key] for r in runs if "lines_per_s" in r]
    return statistics.median(vals) if vals else float("nan")


def summarize(name: str, runs: list[dict]) -> dict:
    ok = [r for r in runs if "lines_per_s" in r]
    if not ok:
        return runs[0] if runs else {"name": name, "error": "no runs"}
    s = {"name": name, "runs": len(ok), "all_complete": all(r["complete"] for r in ok),
         "mode": ok[0]["mode"], "version": ok[0]["version"], "sessions": ok[0]["sessions"],
         "in_lines": ok[0]["in_lines"], "in_bytes": ok[0]["in_bytes"],
         "lines_per_session": ok[0]["lines_per_session"]}
    for k in ("lines_per_s", "MB_per_s", "sessions_per_s", "wall_s", "cpu_user_s",
              "cpu_sys_s", "cpu_window_s", "cpu_pct", "max_rss_MB", "vmhwm_MB",
              "driver_cpu_s"):
        s[k] = round(median_of(ok, k), 3)
    lpc = [r["lines_per_cpu_s"] for r in ok if r.get("lines_per_cpu_s")]
    s["lines_per_cpu_s"] = round(statistics.median(lpc)) if lpc else None
    s["lines_per_s_all"] = [r["lines_per_s"] for r in ok]
    s["max_rss_MB_max"] = max(r["max_rss_MB"] for r in ok)
    return s


def fmt_summary(s: dict) -> str:
    if "lines_per_s" not in s:
        return fmt_row(s)
    return ("%-20s median of %d: %9s lines/s %7.1f MB/s %8.1f sess/s  cpu %5.2f+%5.2f s"
            "  %s lines/cpu-s  rss %5.1f MB  %s  [lines/s: %s]" % (
                s["name"], s["runs"], "{:,}".format(round(s["lines_per_s"])), s["MB_per_s"],
                s["sessions_per_s"], s["cpu_user_s"], s["cpu_sys_s"],
                "{:,}".format(s["lines_per_cpu_s"]) if s["lines_per_cpu_s"] else "?",
                s["max_rss_MB_max"],
                "complete" if s["all_complete"] else "INCOMPLETE",
                ", ".join("{:,}".format(v) for v in s["lines_per_s_all"])))


class Output:
    def __init__(self, a):
        self.a = a
        self.records: list[dict] = []

    def run(self, r: dict, quiet: bool = False) -> dict:
        r = {k: v for k, v in r.items() if k != "rss_samples" or self.a.keep_samples}
        self.records.append(r)
        if not quiet:
            print(fmt_row(r), flush=True)
        if self.a.json:
            print(json.dumps(r), flush=True)
        if self.a.json_out:
            with open(self.a.json_out, "a") as f:
                f.write(json.dumps(r) + "\n")
        return r

    def note(self, obj: dict) -> None:
        self.records.append(obj)
        if self.a.json:
            print(json.dumps(obj), flush=True)
        if self.a.json_out:
            with open(self.a.json_out, "a") as f:
                f.write(json.dumps(obj) + "\n")


# --------------------------------------------------------------------------
# Modes

def describe(a) -> str:
    msg = ("%d x %s" % (a.messages, "%d B" % a.size if a.size else "%d lines" % a.lines)
           if a.messages else "no message")
    return "protocol %s, %d sessions, %s per session%s%s%s" % (
        gen_stream.dialect(a.version).name, a.sessions, msg,
        ", window %d" % a.window if a.window else ", open loop",
        ", interleave %d" % a.interleave if a.interleave > 1 else "",
        (", tls" if a.tls else "") + (", auth" if a.auth else ""))


def profiled(cmd: str, path: str) -> str:
    """Run a Python filter under cProfile (the profile is written at exit)."""
    words = shlex.split(cmd)
    if not words or "python" not in os.path.basename(words[0]):
        raise SystemExit("--profile needs a Python filter command (python3 script.py ...)")
    return " ".join(shlex.quote(w) for w in [words[0], "-m", "cProfile", "-o", path] + words[1:])


def print_profile(path: str, n: int = 25) -> None:
    import io
    import pstats
    if not os.path.exists(path):
        print("no profile written (did the filter exit normally on EOF?)")
        return
    buf = io.StringIO()
    pstats.Stats(path, stream=buf).sort_stats("tottime").print_stats(n)
    print(buf.getvalue())


def mode_single(a, out: Output, spec: str) -> list[dict]:
    name, cmd = shortcut(spec, a.tmpdir)
    name = a.name or name
    if a.profile:
        cmd = profiled(cmd, os.path.abspath(a.profile))
    print("# %s: %s" % (name, describe(a)), flush=True)
    runs = [out.run(run_once(a, name, cmd)) for _ in range(a.repeats)]
    if a.profile:
        print_profile(os.path.abspath(a.profile))
    if a.repeats > 1 and "lines_per_s" in runs[0]:
        s = summarize(name, runs)
        print(fmt_summary(s), flush=True)
        out.note({"summary": s})
    return runs


def mode_against(a, out: Output, spec_a: str, spec_b: str) -> dict:
    na, ca = shortcut(spec_a, a.tmpdir)
    nb, cb = shortcut(spec_b, a.tmpdir)
    na = a.name or na
    nb = a.against_name or nb
    if na == nb:
        nb += "(B)"
    print("# %s vs %s: %s, %d alternating repeats" % (na, nb, describe(a), a.repeats),
          flush=True)
    env = filter_env(a)
    for nm, cmd in ((na, ca), (nb, cb)):
        miss = missing_binary(cmd, env)
        why = ("%s not installed (%s)" % (nm, miss) if miss else
               "%s queries DNS: needs the private network namespace with the fake DNS" % nm
               if dns_unsafe(cmd) else None)
        if why:
            print("%s vs %s: skipped: %s" % (na, nb, why), flush=True)
            out.note({"comparison": [na, nb], "skipped": why})
            return {"skipped": why}
    ra, rb = [], []
    for i in range(a.repeats):
        order = [(na, ca, ra), (nb, cb, rb)]
        if i % 2:
            order.reverse()
        for nm, cmd, acc in order:
            acc.append(out.run(run_once(a, nm, cmd)))
    sa, sb = summarize(na, ra), summarize(nb, rb)
    print(fmt_summary(sa), flush=True)
    print(fmt_summary(sb), flush=True)
    comp = {"comparison": [na, nb], "a": sa, "b": sb, "desc": describe(a)}
    if "lines_per_s" in sa and "lines_per_s" in sb:
        pairs = [x["lines_per_s"] / y["lines_per_s"] for x, y in zip(ra, rb)
                 if "lines_per_s" in x and "lines_per_s" in y and y["lines_per_s"]]
        comp["ratio_lines_per_s"] = round(sa["lines_per_s"] / sb["lines_per_s"], 3)
        comp["ratio_sessions_per_s"] = round(sa["sessions_per_s"] / sb["sessions_per_s"], 3)
        comp["ratio_MB_per_s"] = round(sa["MB_per_s"] / sb["MB_per_s"], 3)
        comp["ratio_pairwise_median"] = round(statistics.median(pairs), 3) if pairs else None
        if sa.get("lines_per_cpu_s") and sb.get("lines_per_cpu_s"):
            comp["ratio_lines_per_cpu_s"] = round(sa["lines_per_cpu_s"] / sb["lines_per_cpu_s"], 3)
        print("ratio %s/%s: lines/s %.3f (median of pairwise %.3f), sessions/s %.3f, "
              "MB/s %.3f, lines per filter CPU-second %.3f%s" % (
                  na, nb, comp["ratio_lines_per_s"],
                  comp["ratio_pairwise_median"] or float("nan"),
                  comp["ratio_sessions_per_s"], comp["ratio_MB_per_s"],
                  comp.get("ratio_lines_per_cpu_s") or float("nan"),
                               "" if sa["all_complete"] and sb["all_complete"]
                               else "  (WARNING: incomplete runs)"), flush=True)
    out.note({"comparison_summary": comp})
    return comp


def mode_memory(a, out: Output, spec: str) -> dict:
    name, cmd = shortcut(spec, a.tmpdir)
    name = a.name or name
    sizes = sorted({int(float(x)) for x in a.memory_sessions.split(",") if x})
    print("# memory %s: protocol %s, %s per session, sessions %s, interleave %d"
          % (name, gen_stream.dialect(a.version).name,
             ("%d-line message" % a.lines) if a.messages else "no message",
             ", ".join("{:,}".format(s) for s in sizes), a.interleave), flush=True)
    per = {}
    big = None
    for n in sizes:
        r = run_once(a, name, cmd, sessions=n, lazy=True,
                     checkpoints=tuple(s for s in sizes if s <= n) if n == sizes[-1] else ())
        out.run(r)
        if "lines_per_s" not in r:
            return {"memory": name, "error": r.get("error") or r.get("skipped")}
        per[n] = r
        big = r
    hwm = {str(n): r["vmhwm_MB"] for n, r in per.items()}
    maxrss = {str(n): r["max_rss_MB"] for n, r in per.items()}
    growth = per[sizes[-1]]["max_rss_MB"] - per[sizes[0]]["max_rss_MB"]
    res = {"memory": name, "sizes": sizes, "vmhwm_MB": hwm, "max_rss_MB": maxrss,
           "rss_at_sessions_MB_in_largest_run": big.get("rss_at_sessions_MB"),
           "growth_MB": round(growth, 1), "flat_within_5MB": growth <= 5.0,
           "all_complete": all(r["complete"] for r in per.values())}
    print("peak RSS by sessions: %s; VmHWM: %s; VmRSS at checkpoints of the "
          "%s run: %s; growth %.1f MB -> %s" % (
              ", ".join("%s: %.1f MB" % (k, v) for k, v in maxrss.items()),
              ", ".join("%s: %.1f MB" % (k, v) for k, v in hwm.items()),
              "{:,}".format(sizes[-1]), big.get("rss_at_sessions_MB"), growth,
              "flat within 5 MB" if growth <= 5.0 else "NOT flat"), flush=True)
    out.note({"memory_summary": res})
    return res


# --------------------------------------------------------------------------
# Small messages: most mail (issue 13)

SMALL_FILTERS = ("@echo", "@add_header", "@py-senderscore", "@senderscore-loop", "@senderscore")
#: --instructions leaves out what valgrind cannot count well: Go programs
#: (their runtime's threads and signals) are compared by time only.
NOT_UNDER_VALGRIND = ("filter-senderscore",)


def small_filters(a, env: dict, counted: bool = False) -> list[tuple[str, str]]:
    """(name, command) of the --small filters that can run here; each one
    left out is said why.  ``counted``: for --instructions (no Go)."""
    filters = []
    for spec in SMALL_FILTERS:
        name, cmd = shortcut(spec, a.tmpdir)
        miss = missing_binary(cmd.replace("env PYTHONPATH=%s " % REPO, ""), env)
        why = ("not installed (%s)" % miss if miss else "needs the private namespace" if dns_unsafe(cmd)
               else "%s cannot import dnspython (run with --python .venv/bin/python)" % FILTER_PY
               if spec == "@py-senderscore" and subprocess.run([FILTER_PY, "-c", "import dns"]).returncode
               else "compared by time only (valgrind counts Go programs badly)"
               if counted and name in NOT_UNDER_VALGRIND else None)
        if why:
            print("%s: skipped: %s" % (name, why), flush=True)
            continue
        filters.append((name, cmd))
    return filters


def small_pairs(names: list[str], bases: tuple[str, ...]):
    """The (filter, baseline) pairs --small compares, baseline by baseline:
    each of ``names`` against each baseline among them, but the floor only
    against py-filter-senderscore (it is senderscore's work: the SDK's share
    of it)."""
    for base in bases:
        if base not in names:
            continue
        for n in names:
            if n != base and (base != "senderscore_loop" or n == "py-filter-senderscore"):
                yield n, base


def mode_small(a, out: Output) -> dict:
    """50-line and 10-line messages through echo_loop, the header-tagging
    example, py-filter-senderscore, its hand-written floor
    (senderscore_loop.py: the same answers without the SDK) and Debian's
    filter-senderscore (``-junkBelow 80 -scoreHeader``, fake DNS in the
    private namespace), in one run: open loop, runs rotated, medians.
    Targets on 50 lines: the SDK filters >= 0.6x echo_loop's sessions/s, and
    >= 3x filter-senderscore's."""
    env = filter_env(a)
    results = {}
    for nlines in (50, 10):
        b = argparse.Namespace(**vars(a))
        b.lines, b.size, b.window = nlines, None, 0
        filters = small_filters(a, env)
        print("# small messages: %s; %s; %d rotated repeats" % (
            describe(b), ", ".join(n for n, _ in filters), a.repeats), flush=True)
        runs: dict[str, list[dict]] = {n: [] for n, _ in filters}
        for i in range(a.repeats):
            k = i % len(filters)
            for name, cmd in filters[k:] + filters[:k]:
                runs[name].append(out.run(run_once(b, name, cmd)))
        summ = {n: summarize(n, r) for n, r in runs.items()}
        for s_ in summ.values():
            print(fmt_summary(s_), flush=True)
        res = {"lines": nlines, "summaries": summ, "ratios": {}}
        timed = [n for n, s_ in summ.items() if "sessions_per_s" in s_]
        for n, base in small_pairs(timed, ("echo_loop", "filter-senderscore", "senderscore_loop")):
            s_, bs = summ[n], summ[base]
            key = "%s/%s" % (n, base)
            mine, theirs = _per_cpu(s_), _per_cpu(bs)
            c = res["ratios"][key] = {
                "sessions_per_s": round(s_["sessions_per_s"] / bs["sessions_per_s"], 3),
                "sessions_per_cpu_s": round(mine / theirs, 3) if mine and theirs else None,
            }
            print("ratio %s, %d-line messages: sessions/s %.3f, sessions per filter CPU-second %s" % (
                key, nlines, c["sessions_per_s"], c["sessions_per_cpu_s"]), flush=True)
        results["%dl" % nlines] = res
    out.note({"small_results": results})
    print("# targets (50-line messages)", flush=True)
    r50 = results.get("50l", {}).get("ratios", {})
    for n in ("sdk-add_header", "py-filter-senderscore"):
        for base, target in (("echo_loop", 0.6), ("filter-senderscore", 3.0)):
            c = r50.get("%s/%s" % (n, base))
            if c:
                print("%s / %s, sessions/s: %.3f (target >= %g): %s" % (
                    n, base, c["sessions_per_s"], target, "PASS" if c["sessions_per_s"] >= target else "FAIL"))
    return results


def callgrind_ir(cmd: str, env: dict, data: bytes) -> int | None:
    """Instructions CMD executes (callgrind's Ir: user space, every
    thread) reading DATA through a pipe until it exits at EOF; None if
    valgrind reported none.  Repeatable: the same count whatever else the
    machine does, where seconds on a shared 2-core VM vary by 15 %."""
    argv = shlex.split(cmd)
    # One hash seed: dict and set layouts, hence counts, the same every run.
    env = dict(env, PYTHONHASHSEED="0")
    if argv[:1] == ["env"]:  # the shortcuts' "env PYTHONPATH=... python ...": count python, not env
        argv.pop(0)
        while argv and "=" in argv[0] and not argv[0].startswith("-"):
            key, _, value = argv.pop(0).partition("=")
            env[key] = value
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"] + argv,
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def feed() -> None:
        try:
            proc.stdin.write(data)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    err = proc.stderr.read()  # the filter's log lines too; valgrind's summary is last
    writer.join()
    proc.wait()
    found = re.findall(rb"Collected : (\d+)", err)
    return int(found[-1]) if found else None


def instructions_per_session(a, name: str, cmd: str, lines: int) -> dict:
    """Ir per session of CMD on the small-message stream of LINES-line
    messages: (all N sessions - the first N/2) / (N - N/2), so start-up,
    imports and what the first sessions alone cost (a first DNS lookup, code
    imported on first use) cancel out."""
    env = filter_env(a)
    regs = gen_stream.registrations_from_cmd(cmd, a.version, a.handshake_timeout, env)
    if "register|ready" not in regs:
        return {"name": name, "error": "handshake failed: no register|ready"}
    b = argparse.Namespace(**vars(a))
    b.lines, b.size = lines, None
    st = get_stream(b, regs)
    head, n = st.handshake_bytes(), st.spec.sessions
    half = n // 2
    base = callgrind_ir(cmd, env, head + b"".join(st.iter_chunks(stop=half)))
    whole = callgrind_ir(cmd, env, head + b"".join(st.iter_chunks()))
    if base is None or whole is None or n - half < 1:
        return {"name": name, "error": "valgrind counted nothing (is it installed?)"}
    return {"name": name, "lines": lines, "sessions": n - half,
            "ir_per_session": (whole - base) / (n - half)}


def mode_instructions(a, out: Output) -> dict:
    """--small --instructions: the small-message filters' instructions per
    session (callgrind), each against echo_loop's in the same stream, and
    py-filter-senderscore against its floor.  The ratio is sessions per
    instruction, comparable with --small's sessions/s ratios: where the two
    differ, the filter's instructions run slower (fewer per cycle) than the
    loop's."""
    if shutil.which("valgrind") is None:
        print("--instructions: skipped: valgrind is not installed", flush=True)
        return {}
    env = filter_env(a)
    results: dict = {}
    for nlines in (50, 10):
        counts: dict[str, float] = {}
        for name, cmd in small_filters(a, env, counted=True):
            r = instructions_per_session(a, name, cmd, nlines)
            if "error" in r:
                print("%s: %s" % (name, r["error"]), flush=True)
                continue
            counts[name] = r["ir_per_session"]
            print("%-22s %d-line messages: %10.0f instructions/session  (the last %d sessions)" % (
                name, nlines, counts[name], r["sessions"]), flush=True)
        ratios = {"%s/%s" % (n, base): round(counts[base] / counts[n], 3)
                  for n, base in small_pairs(list(counts), ("echo_loop", "senderscore_loop"))}
        for key, ratio in ratios.items():
            print("ratio %s, %d-line messages: sessions per instruction %.3f" % (key, nlines, ratio), flush=True)
        results["%dl" % nlines] = {"ir_per_session": counts, "ratios": ratios}
    out.note({"instruction_results": results})
    return results


def _per_cpu(s: dict) -> float | None:
    """Sessions per filter CPU-second (user + sys over the filter's life)."""
    cpu = (s.get("cpu_user_s") or 0) + (s.get("cpu_sys_s") or 0)
    return s["sessions"] / cpu if cpu and s.get("sessions") else None


# --------------------------------------------------------------------------
# Suite

def sdk_available() -> str | None:
    try:
        r = subprocess.run([FILTER_PY, "-c", "import sys; sys.path.insert(0, %r); "
                            "from smtpd_filter_sdk import Filter" % os.path.dirname(HERE)],
                           capture_output=True, timeout=30)
    except Exception as e:  # pragma: no cover
        return str(e)
    return None if r.returncode == 0 else r.stderr.decode(errors="replace").strip()[-300:]


def python_version(python: str) -> str:
    try:
        r = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip() or "?"
    except Exception:  # noqa: BLE001
        return "?"


def git_head() -> str:
    try:
        r = subprocess.run(["git", "-C", os.path.dirname(HERE), "log", "-1",
                            "--format=%h %cd", "--date=format:%Y-%m-%d %H:%M"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "?"
    except Exception:  # noqa: BLE001
        return "?"


def mode_suite(a, out: Output) -> int:
    q = a.quick
    n100k = a.suite_sessions_100k or (200 if q else 1000)
    n50 = a.suite_sessions_50 or (2000 if q else 20000)
    rep = a.repeats if a.repeats_given else (3 if q else 5)
    mem = a.memory_sessions if a.memory_given else ("1e4,1e5" if q else "1e4,1e5,1e6")
    t_start = time.time()
    print("# suite: %s, %s, filters on %s (python %s), %d CPUs, repo %s" % (
        time.strftime("%Y-%m-%d %H:%M:%S"), os.uname().nodename, FILTER_PY,
        python_version(FILTER_PY), os.cpu_count(), git_head()), flush=True)
    sdk_err = sdk_available()
    have_sdk = sdk_err is None
    if not have_sdk:
        print("SDK passthrough: skipped: smtpd_filter_sdk not importable (%s)" % sdk_err,
              flush=True)
    results = {}

    def with_(base=None, **kw):
        b = argparse.Namespace(**vars(a))
        for k, v in {**(base or {}), **kw}.items():
            setattr(b, k, v)
        return b

    big = dict(size=102400, lines=None, sessions=n100k, repeats=rep, window=0)
    small = dict(size=None, lines=50, sessions=n50, repeats=rep, window=0)
    if have_sdk:
        results["100k_sdk_vs_echo"] = mode_against(with_(big), out, "@passthrough", "@echo")
        results["100k_sdk_per_line_vs_echo"] = mode_against(
            with_(big, repeats=max(3, rep - 2)), out, "@passthrough-lines", "@echo")
        results["100k_sdk_vs_senderscore"] = mode_against(  # a target: as many repeats as target 1
            with_(big), out, "@passthrough", "@senderscore")
    results["100k_echo_vs_senderscore"] = mode_against(
        with_(big, repeats=max(3, rep - 2)), out, "@echo", "@senderscore")
    if have_sdk:
        results["50l_sdk_vs_echo"] = mode_against(with_(small), out, "@passthrough", "@echo")
        results["50l_w8_sdk_vs_echo"] = mode_against(
            with_(small, window=8, sessions=n50 // 4, repeats=3), out,
            "@passthrough", "@echo")
        for v in ("0.4", "0.5", "0.7", "0.7+"):
            results["versions_%s" % v] = mode_single(
                with_(size=None, lines=20, sessions=500, repeats=1, version=v,
                      tls=True, auth=True, interleave=4), out, "@passthrough")
        results["memory_sdk"] = mode_memory(
            with_(size=None, lines=5, messages=1, interleave=max(a.interleave, 8),
                  memory_sessions=mem, window=0), out, "@passthrough")
    results["memory_echo"] = mode_memory(
        with_(size=None, lines=5, messages=1, interleave=max(a.interleave, 8),
              memory_sessions="1e4,1e5", window=0),
        out, "@echo")
    print("# suite done in %.0f s" % (time.time() - t_start), flush=True)
    if q:
        print("# --quick: runs of ~0.2 s, too short and too few for the targets on a noisy "
              "machine; quote the full suite", flush=True)
    print_targets(results)
    out.note({"suite_results": results})
    return 0


def print_targets(results: dict) -> None:
    print("# targets", flush=True)

    def ratio(key):
        c = results.get(key) or {}
        return c.get("ratio_lines_per_s"), c

    r, c = ratio("100k_sdk_vs_echo")
    if r is not None:
        print("SDK passthrough / echo_loop, 100 KB stream, lines/s: %.3f (target >= 0.70): %s"
              % (r, "PASS" if r >= 0.70 else "FAIL"))
    r, c = ratio("100k_sdk_per_line_vs_echo")
    if r is not None:
        print("SDK with a Python callback per line / echo_loop, 100 KB stream, lines/s: %.3f "
              "(no target: the price of calling user code for every line)" % r)
    r, c = ratio("100k_sdk_vs_senderscore")
    if c.get("skipped"):
        print("SDK passthrough / filter-senderscore: skipped: %s" % c["skipped"])
    elif r is not None:
        print("SDK passthrough / filter-senderscore, 100 KB stream, lines/s: %.2f "
              "(target >= 5): %s" % (r, "PASS" if r >= 5 else "FAIL"))
    m = results.get("memory_sdk")
    if m and "growth_MB" in m:
        peak = max(m["max_rss_MB"].values())
        print("SDK peak RSS %.1f MB (target <= 40): %s; growth %s -> %s sessions: %.1f MB "
              "(target <= 5): %s" % (peak, "PASS" if peak <= 40 else "FAIL",
                                     "{:,}".format(m["sizes"][0]), "{:,}".format(m["sizes"][-1]),
                                     m["growth_MB"], "PASS" if m["flat_within_5MB"] else "FAIL"))
    peaks = [v["a"]["max_rss_MB_max"] for k, v in results.items()
             if k.startswith(("100k_sdk", "50l_sdk")) and isinstance(v, dict) and "a" in v
             and "max_rss_MB_max" in v["a"]]
    if peaks:
        print("SDK peak RSS over the throughput runs: %.1f MB (target <= 40): %s"
              % (max(peaks), "PASS" if max(peaks) <= 40 else "FAIL"))


# --------------------------------------------------------------------------
# Isolation: private network namespace (lo only) + fake DNS

def in_netns() -> bool:
    return os.environ.get(NETNS_MARK) == "1"


def want_isolation(a) -> bool:
    if a.isolate == "no" or in_netns():
        return False
    possible = os.geteuid() == 0 and shutil.which("unshare") is not None
    if a.isolate == "yes" and not possible:
        raise SystemExit("--isolate yes needs root and unshare(1)")
    return possible


def reexec_isolated(argv: list[str]) -> int:
    env = dict(os.environ)
    env[NETNS_MARK] = "1"
    cmd = ["unshare", "-n", "-m", "--propagation", "private", "--", PY,
           os.path.abspath(__file__)] + argv
    return subprocess.call(cmd, env=env)


def setup_netns(a) -> subprocess.Popen | None:
    """Inside the namespace: lo up, resolv.conf -> 127.0.0.1, fake DNS."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    fd, path = tempfile.mkstemp(prefix="bench-resolv.", dir=a.tmpdir)
    os.write(fd, b"nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    os.close(fd)
    os.chmod(path, 0o644)
    subprocess.run(["mount", "--bind", path, "/etc/resolv.conf"], check=True)
    os.unlink(path)
    p = subprocess.Popen([PY, os.path.join(HERE, "fakedns.py"), "--score", str(a.dns_score)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if p.stdout.readline().strip() != b"ready":
        print("warning: fake DNS did not start", file=sys.stderr)
    return p


# --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", nargs="?", help="filter command line, or @echo/@passthrough/"
                    "@senderscore/@dkimsign/@rspamd")
    ap.add_argument("--against", metavar="CMD2", help="compare with CMD2 (alternating runs)")
    ap.add_argument("--suite", action="store_true", help="run the standard set")
    ap.add_argument("--small", action="store_true",
                    help="50- and 10-line messages: echo_loop, add_header.py, py-filter-senderscore, "
                         "its hand-written floor (senderscore_loop.py), "
                         "filter-senderscore side by side")
    ap.add_argument("--instructions", action="store_true",
                    help="with --small: instructions per session (valgrind's callgrind) instead "
                         "of time: repeatable on a noisy machine; Go anchors left out; use the "
                         "default 1000 sessions or more (with a few, the sessions that wait for the "
                         "first DNS answer are counted too)")
    ap.add_argument("--quick", action="store_true", help="smaller suite (~1 min)")
    ap.add_argument("--memory", action="store_true", help="peak RSS at several session counts")
    ap.add_argument("--memory-sessions", default="1e4,1e5,1e6")
    g = ap.add_argument_group("stream")
    g.add_argument("--version", "-V", default="0.6",
                   help="protocol: %s (0.7+ = 7.6+ handshake)" % ", ".join(gen_stream.VERSIONS))
    g.add_argument("--sessions", "-n", type=int, default=1000)
    g.add_argument("--lines", type=int, default=50, help="message lines (headers included)")
    g.add_argument("--size", type=int, default=None, help="message bytes (instead of --lines)")
    g.add_argument("--messages", type=int, default=1, help="messages per session (0 = none)")
    g.add_argument("--rcpts", type=int, default=1)
    g.add_argument("--tls", action="store_true")
    g.add_argument("--auth", action="store_true")
    g.add_argument("--interleave", type=int, default=1,
                   help="open loop: round-robin K sessions line by line")
    g.add_argument("--seed", type=int, default=42)
    g = ap.add_argument_group("run")
    g.add_argument("--window", type=int, default=0, help="closed loop, K sessions in flight")
    g.add_argument("--repeats", "-r", type=int, default=None)
    g.add_argument("--name")
    g.add_argument("--against-name")
    g.add_argument("--idle-timeout", type=float, default=30.0,
                   help="give up after this long without progress")
    g.add_argument("--handshake-timeout", type=float, default=30.0)
    g.add_argument("--warmup", type=float, default=0.0, metavar="SECONDS",
                   help="wait after the handshake before the stream (background start-up work)")
    g.add_argument("--exit-timeout", type=float, default=10.0,
                   help="after EOF, wait this long for the filter to exit, then kill it")
    g.add_argument("--sample-interval", type=float, default=0.25,
                   help="VmRSS sampling period (0 = off)")
    g.add_argument("--keep-samples", action="store_true", help="keep RSS samples in JSON")
    g.add_argument("--env", action="append", metavar="K=V", help="add to the filter's env")
    g.add_argument("--inherit-env", action="store_true", help="filter gets our environment")
    g.add_argument("--stderr-file", help="append the filter's stderr here")
    g.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                   help="private netns (lo only) + fake DNS (default: when root)")
    g.add_argument("--dns-score", type=int, default=77)
    g.add_argument("--tmpdir", default=None)
    g.add_argument("--python", default=None, metavar="PATH",
                   help="interpreter for @echo/@passthrough (default: %s if present, else this one)"
                   % SYSTEM_PY)
    g.add_argument("--profile", metavar="FILE",
                   help="run a Python filter under cProfile, print the top functions")
    g = ap.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object per run")
    g.add_argument("--json-out", metavar="FILE", help="append JSON lines to FILE")
    g = ap.add_argument_group("suite sizes")
    g.add_argument("--suite-sessions-100k", type=int, default=0)
    g.add_argument("--suite-sessions-50", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = build_parser()
    a = ap.parse_args(argv)
    a.repeats_given = a.repeats is not None
    if a.python:
        global FILTER_PY
        FILTER_PY = a.python
    a.memory_given = "--memory-sessions" in " ".join(argv)
    if a.repeats is None:
        a.repeats = 3 if a.small else 1 if not a.against else 5
    if not (a.suite or a.cmd or a.small):
        ap.error("a filter command (or --suite) is needed")
    if a.instructions and not a.small:
        ap.error("--instructions counts the --small set only: add --small")
    if a.size is not None:
        a.lines = None
    if want_isolation(a):
        return reexec_isolated(argv)
    dns = None
    if in_netns():
        dns = setup_netns(a)
    out = Output(a)
    try:
        if a.suite:
            return mode_suite(a, out)
        if a.small and a.instructions:
            mode_instructions(a, out)
            return 0
        if a.small:
            mode_small(a, out)
            return 0
        if a.memory:
            r = mode_memory(a, out, a.cmd)
            return 0 if r.get("all_complete") else 1
        if a.against:
            c = mode_against(a, out, a.cmd, a.against)
            return 0 if c.get("skipped") or (c.get("a", {}).get("all_complete")
                                              and c.get("b", {}).get("all_complete")) else 1
        runs = mode_single(a, out, a.cmd)
        return 0 if all(r.get("complete") or r.get("skipped") for r in runs) else 1
    finally:
        if dns is not None:
            dns.kill()
            dns.wait()


if __name__ == "__main__":
    sys.exit(main())
