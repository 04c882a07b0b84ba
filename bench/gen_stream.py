#!/usr/bin/env python3
"""Synthetic smtpd -> filter protocol streams, for every protocol version.

The line formats are the ones OpenSMTPD writes to a proc-exec filter, taken
from real captures (OpenSMTPD 6.8.0p2, ``shared/captures/``) and, for the other
versions, from research/protocol.md §1-§4:

* handshake per dialect: 0.4 (6.6.x) has no ``config|subsystem`` and no
  ``config|admd``; 0.5 (never released, -current early 2020) as 0.4; 0.6 (6.8)
  and 0.7 (7.4/7.5) add ``subsystem`` and ``admd``; "0.7+" (7.6 and later)
  also sends ``config|protocol|0.7`` right after ``smtpd-version``;
* ``tx-mail``/``tx-rcpt`` are ``msgid|address|result`` below 0.6 and
  ``msgid|result|address`` from 0.6; ``link-auth`` is ``username|result``
  below 0.7 and ``result|username`` from 0.7;
* requests are always ``filter|VER|TS|smtp-in|PHASE|SID|TOK|PARAM``; the
  filter answers ``TOK|SID`` below 0.5 and ``SID|TOK`` from 0.5 on (the
  runner parses that, see ``response_ids``);
* tokens are per phase and constant across sessions (smtpd generates them once
  per chain position at start-up); session ids are random 16 hex digits;
* a message is sent as data-lines: smtpd's own ``Received:`` header first
  (before the 354 reply is reported), then the client's dot-stuffed lines, then
  the final ``.``;
* only what the filter registered is sent, like smtpd: reports for registered
  events (registered twice = sent twice, as smtpd does) and requests for
  registered phases.

Each session: link-connect, connect, banner, EHLO (+ optionally STARTTLS and a
second EHLO, AUTH PLAIN), then ``messages`` transactions (MAIL FROM, ``rcpts``
x RCPT TO, DATA, message, ``.``, commit), QUIT, link-disconnect, with every
report smtpd emits in the order smtpd emits them.

Generation is fast because a session is built once as a template with
fixed-width placeholders (session id, timestamp, message id, client port) and
stamped per session with ``bytes.replace``: offsets do not move, so the
closed-loop segment boundaries are computed once too.

Library::

    spec = StreamSpec(version="0.6", sessions=2000, size=102400,
                      events=ev, phases=ph)           # from parse_registrations()
    st = Stream(spec)
    st.handshake_bytes(); st.session(i); st.session_segments(i)
    for chunk in st.iter_chunks(): ...                # interleaving honoured
    st.summary()

CLI::

    gen_stream.py --version 0.6 --sessions 2000 --size 102400 \\
        --register-cmd '/usr/libexec/opensmtpd/filter-senderscore' -o big.txt
    gen_stream.py --version 0.4 --sessions 10 --lines 20 --register-file regs.txt
    gen_stream.py --version 0.7+ --sessions 3 --lines 5 --tls --auth --interleave 3

A summary (lines, bytes, expected answers) is printed to stderr as JSON.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import random
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

# --------------------------------------------------------------------------
# Protocol facts

ALL_EVENTS = (
    "link-connect", "link-greeting", "link-identify", "link-tls", "link-auth",
    "link-disconnect", "tx-reset", "tx-begin", "tx-mail", "tx-rcpt", "tx-envelope",
    "tx-data", "tx-commit", "tx-rollback", "protocol-client", "protocol-server",
    "filter-report", "filter-response", "timeout",
)
ALL_PHASES = (
    "connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "data",
    "data-line", "rset", "quit", "noop", "help", "wiz", "commit",
)


@dataclass(frozen=True)
class Dialect:
    name: str
    proto: str              # the VER field of every report/filter line
    smtpd_version: str
    subsystem: bool         # config|subsystem|smtp-in
    admd: bool              # config|admd|...
    protocol_line: bool     # config|protocol|0.7 (7.6+)

    @property
    def vtuple(self) -> tuple[int, int]:
        a, b = self.proto.split(".")
        return int(a), int(b)

    @property
    def token_first(self) -> bool:
        """Responses are ``TOK|SID`` (below 0.5)."""
        return self.vtuple < (0, 5)

    def handshake(self, admd: str = "mx.rig.test") -> list[str]:
        h = ["config|smtpd-version|" + self.smtpd_version]
        if self.protocol_line:
            h.append("config|protocol|" + self.proto)
        h.append("config|smtp-session-timeout|300")
        if self.subsystem:
            h.append("config|subsystem|smtp-in")
        if self.admd:
            h.append("config|admd|" + admd)
        h.append("config|ready")
        return h


DIALECTS = {
    "0.4": Dialect("0.4", "0.4", "6.6.4p1", False, False, False),
    "0.5": Dialect("0.5", "0.5", "6.6.0-current", False, False, False),
    "0.6": Dialect("0.6", "0.6", "6.8.0p2", True, True, False),
    "0.7": Dialect("0.7", "0.7", "7.5.0p0", True, True, False),
    "0.7+": Dialect("0.7+", "0.7", "7.8.0", True, True, True),
}
ALIASES = {"0.7-7.6": "0.7+", "7.6": "0.7+", "0.7-protocol": "0.7+", "6.6": "0.4",
           "6.8": "0.6", "7.4": "0.7"}
VERSIONS = tuple(DIALECTS)


def dialect(name: str) -> Dialect:
    name = ALIASES.get(name, name)
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError("unknown protocol version %r (known: %s)"
                         % (name, ", ".join(VERSIONS))) from None


def parse_registrations(lines) -> tuple[collections.Counter, set]:
    """``register|...`` lines -> (Counter of report events, set of phases).

    A report event registered n times (``*`` counts for every event) is sent n
    times by smtpd, so the Counter keeps multiplicity.  Only smtp-in is used.
    """
    ev: collections.Counter = collections.Counter()
    ph: set = set()
    for raw in lines:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        f = raw.strip().split("|")
        if len(f) != 4 or f[0] != "register" or f[2].lower() != "smtp-in":
            continue
        if f[1] == "report":
            if f[3] == "*":
                ev.update(ALL_EVENTS)
            elif f[3] in ALL_EVENTS:
                ev[f[3]] += 1
        elif f[1] == "filter" and f[3] in ALL_PHASES:
            ph.add(f[3])
    return ev, ph


def everything() -> tuple[collections.Counter, set]:
    return collections.Counter(ALL_EVENTS), set(ALL_PHASES)


def registrations_from_cmd(cmd: str, version: str = "0.6", timeout: float = 15,
                           env: dict | None = None) -> list[str]:
    """Start CMD like smtpd (one socketpair for stdin+stdout), send the
    handshake of ``version``, return its register lines (up to register|ready)."""
    d = dialect(version)
    parent, child = socket.socketpair()
    p = subprocess.Popen(["/bin/sh", "-c", "exec " + cmd], stdin=child, stdout=child,
                         stderr=subprocess.DEVNULL, start_new_session=True,
                         env=env if env is not None else default_env())
    child.close()
    buf = b""
    try:
        try:
            parent.sendall(("\n".join(d.handshake()) + "\n").encode())
            deadline = time.monotonic() + timeout
            while b"register|ready\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([parent], [], [], left)[0]:
                    break
                chunk = parent.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # CMD exited early: what it registered so far (nothing, mostly)
        return [l for l in buf.decode("utf-8", "replace").split("\n") if l]
    finally:
        parent.close()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def default_env() -> dict:
    """What a proc-exec filter typically gets: smtpd started from a clean env."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8"}


# --------------------------------------------------------------------------
# Message bodies

WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod "
         "tempor incididunt ut labore et dolore magna aliqua").split()


def make_body(nlines: int | None = 50, size: int | None = None, seed: int = 1) -> list[str]:
    """The client's message (headers + body), NOT yet dot-stuffed.

    ``nlines`` = total lines, or ``size`` = bytes on the wire (each line + CRLF).
    Lines are ~72 characters; lines 6 and 12 of the body start with a dot.
    """
    rng = random.Random(seed)
    hdr = ["From: Bob Sender <bob@example.org>", "To: Alice <alice@rig.test>",
           "Subject: benchmark message", "Date: Fri, 20 Nov 2026 12:00:00 +0000",
           "Message-ID: <bench.%d@example.org>" % rng.randrange(1 << 30),
           "MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii", ""]

    def text_line() -> str:
        s, n = [], 0
        while n < 70:
            w = rng.choice(WORDS)
            s.append(w)
            n += len(w) + 1
        return " ".join(s)

    body: list[str] = []
    if size is not None:
        total = sum(len(h) + 2 for h in hdr)
        while total < size:
            body.append(text_line())
            total += len(body[-1]) + 2
    else:
        nlines = 50 if nlines is None else nlines
        if nlines < len(hdr) + 1:
            return (hdr[:max(nlines - 1, 0)] + ["hi"])[:nlines] if nlines > 0 else []
        for _ in range(nlines - len(hdr)):
            body.append(text_line())
    for k in (5, 11):
        if len(body) > k:
            body[k] = "." + body[k][1:]
    return hdr + body


def dot_stuff(line: str) -> str:
    return "." + line if line.startswith(".") else line


# --------------------------------------------------------------------------
# Stream spec and session templates

# fixed-width placeholders (never occur in generated text)
P_SID = "<<SID@@@@@@@@@>>"   # 16
P_TS = "<<TS@@@@@@@@@@@>>"   # 17 = len("1795218690.000000")
P_MSG = "<<MSG@>>"           # 8
P_PORT = "<PRT>"             # 5
assert (len(P_SID), len(P_TS), len(P_MSG), len(P_PORT)) == (16, 17, 8, 5)

PHASE_TOKEN_BASE = 0xF7E89AF9B7F40000


@dataclass
class StreamSpec:
    version: str = "0.6"
    sessions: int = 1000
    lines: int | None = 50          # message lines (headers + body) ...
    size: int | None = None         # ... or message bytes (overrides lines)
    messages: int = 1               # transactions per session (0 = connect/EHLO/QUIT only)
    rcpts: int = 1
    tls: bool = False               # STARTTLS + link-tls + second EHLO
    auth: bool = False              # AUTH PLAIN + link-auth (pass)
    events: collections.Counter = field(default_factory=lambda: everything()[0])
    phases: set = field(default_factory=lambda: everything()[1])
    interleave: int = 1             # round-robin K sessions line by line
    seed: int = 42
    t0: float = 1795218690.0        # first session's timestamp

    @classmethod
    def from_registrations(cls, lines, **kw) -> "StreamSpec":
        ev, ph = parse_registrations(lines)
        return cls(events=ev, phases=ph, **kw)


@dataclass
class Segment:
    start: int
    end: int
    wait: str | None   # "result": ends with a filter request; "dot": ends with the final "."


class Stream:
    """One protocol stream; sessions are stamped from one template."""

    def __init__(self, spec: StreamSpec):
        self.spec = spec
        self.dialect = dialect(spec.version)
        self.body = make_body(spec.lines if spec.size is None else None, spec.size,
                              seed=spec.seed + 1)
        self._build_template()
        self._rng = random.Random(spec.seed)
        self._ids: list[tuple[bytes, bytes]] = []

    # ---- template ------------------------------------------------------
    def _build_template(self) -> None:
        s, d = self.spec, self.dialect
        ver = d.proto
        out: list[str] = []
        seg_marks: list[tuple[int, str]] = []   # (line index after which to cut, kind)
        nreq = 0
        ndl = 0
        tokens = {ph: "%016x" % (PHASE_TOKEN_BASE + 0x1d3 * i + 0x5a5a)
                  for i, ph in enumerate(ALL_PHASES)}
        events, phases = s.events, s.phases

        def rep(ev: str, *params: str) -> None:
            for _ in range(events.get(ev, 0)):
                out.append("report|%s|%s|smtp-in|%s|%s%s" % (
                    ver, P_TS, ev, P_SID, "".join("|" + x for x in params)))

        def flt(ph: str, param: str = "") -> None:
            nonlocal nreq, ndl
            if ph not in phases:
                return
            out.append("filter|%s|%s|smtp-in|%s|%s|%s|%s" % (
                ver, P_TS, ph, P_SID, tokens[ph], param))
            if ph == "data-line":
                ndl += 1
                if param == ".":
                    seg_marks.append((len(out), "dot"))
            else:
                nreq += 1
                seg_marks.append((len(out), "result"))

        def resp(name: str) -> None:
            rep("filter-response", name, "proceed")

        def tx(msgid: str, result: str, addr: str) -> tuple[str, ...]:
            return (msgid, addr, result) if d.vtuple < (0, 6) else (msgid, result, addr)

        client, server = "client.example.org", "mx.rig.test"
        rep("link-connect", "localhost", "pass", "127.0.0.1:" + P_PORT, "127.0.0.1:10025")
        flt("connect", "localhost|127.0.0.1")
        resp("connected")
        rep("protocol-server", "220 %s ESMTP OpenSMTPD" % server)
        rep("link-greeting", server)

        def ehlo(with_tls_ext: bool, with_auth_ext: bool) -> None:
            rep("protocol-client", "EHLO " + client)
            flt("ehlo", client)
            resp("ehlo")
            rep("link-identify", "EHLO", client)
            ext = ["250-%s Hello %s [127.0.0.1], pleased to meet you" % (server, client),
                   "250-8BITMIME", "250-ENHANCEDSTATUSCODES", "250-SIZE 36700160", "250-DSN"]
            if with_tls_ext:
                ext.append("250-STARTTLS")
            if with_auth_ext:
                ext.append("250-AUTH PLAIN LOGIN")
            ext.append("250 HELP")
            for l in ext:
                rep("protocol-server", l)

        ehlo(s.tls, s.auth and not s.tls)
        tlsinfo = "TLSv1.3:TLS_AES_256_GCM_SHA384:256"
        if s.tls:
            rep("protocol-client", "STARTTLS")
            flt("starttls")
            resp("tls")
            rep("protocol-server", "220 2.0.0 Ready to start TLS")
            rep("link-tls", tlsinfo)
            ehlo(False, s.auth)
        if s.auth:
            rep("protocol-client", "AUTH PLAIN ********")
            flt("auth", "PLAIN AHJpZwByaWdwYXNz")
            resp("auth")
            rep("link-auth", *(("pass", "rig") if d.vtuple >= (0, 7) else ("rig", "pass")))
            rep("protocol-server", "235 2.0.0 Authentication succeeded")

        sender = "rig@rig.test" if s.auth else "bob@example.org"
        stuffed = [dot_stuff(l) for l in self.body]
        msg_bytes = sum(len(l) + 2 for l in self.body)
        with_kind = "ESMTP" + ("S" if s.tls else "") + ("A" if s.auth else "")
        for m in range(s.messages):
            msgid = P_MSG[:-2] + "%02x" % (m % 256) if s.messages > 1 else P_MSG
            rep("protocol-client", "MAIL FROM:<%s>" % sender)
            flt("mail-from", sender)
            resp("mail-from")
            rep("protocol-server", "250 2.0.0 Ok")
            rep("tx-begin", msgid)
            rep("tx-mail", *tx(msgid, "ok", sender))
            rcpts = ["alice@rig.test"] + ["user%d@rig.test" % k for k in range(1, s.rcpts)]
            for k, rcpt in enumerate(rcpts):
                rep("protocol-client", "RCPT TO:<%s>" % rcpt)
                flt("rcpt-to", rcpt)
                resp("rcpt-to")
                rep("tx-envelope", msgid, "%s%08x" % (msgid, 0x9c135c02 + k))
                rep("protocol-server", "250 2.1.5 Destination address valid: Recipient ok")
                rep("tx-rcpt", *tx(msgid, "ok", rcpt))
            rep("protocol-client", "DATA")
            flt("data")
            resp("data")
            received = ["Received: from %s (localhost [127.0.0.1])" % client,
                        "\tby %s (OpenSMTPD) with %s id %s%s" % (
                            server, with_kind, msgid,
                            " (%s:NO)" % tlsinfo if s.tls else "")]
            if len(rcpts) == 1:
                received.append("\tfor <%s>;" % rcpts[0])
            received.append("\tFri, 20 Nov 2026 23:51:30 +0000 (UTC)")
            for l in received:
                flt("data-line", l)
            rep("protocol-server", '354 Enter mail, end with "." on a line by itself')
            rep("tx-data", msgid, "ok")
            for l in stuffed:
                flt("data-line", l)
            flt("data-line", ".")
            rep("protocol-client", ".")
            flt("commit")
            resp("commit")
            rep("protocol-server", "250 2.0.0 %s Message accepted for delivery" % msgid)
            rep("tx-commit", msgid, str(msg_bytes + sum(len(l) + 1 for l in received)))
            rep("tx-reset", msgid)
        rep("protocol-client", "QUIT")
        flt("quit")
        resp("quit")
        rep("protocol-server", "221 2.0.0 Bye")
        rep("link-disconnect")

        lines_b = [(l + "\n").encode("utf-8", "surrogateescape") for l in out]
        self.template = b"".join(lines_b)
        offs = [0]
        for lb in lines_b:
            offs.append(offs[-1] + len(lb))
        segs: list[Segment] = []
        prev = 0
        for idx, kind in seg_marks:
            segs.append(Segment(offs[prev], offs[idx], kind))
            prev = idx
        if prev < len(lines_b) or not segs:
            segs.append(Segment(offs[prev], offs[-1], None))
        self.segments = segs
        self.tokens = tokens
        self.lines_per_session = len(lines_b)
        self.bytes_per_session = len(self.template)
        self.requests_per_session = nreq
        self.dots_per_session = s.messages if "data-line" in phases else 0
        self.datalines_per_session = ndl
        self.message_lines = len(self.body)
        self.message_bytes = msg_bytes

    # ---- per-session stamping -----------------------------------------
    def ids(self, i: int) -> tuple[bytes, bytes]:
        """(session id, message id) of session i (deterministic per seed)."""
        while len(self._ids) <= i:
            r = self._rng.getrandbits(96)
            self._ids.append((b"%016x" % (r >> 32), b"%08x" % (r & 0xFFFFFFFF)))
        return self._ids[i]

    def session(self, i: int) -> bytes:
        sid, msgid = self.ids(i)
        us = int(self.spec.t0 * 1000000) + i * 1000
        ts = b"%d.%06d" % divmod(us, 1000000)
        b = self.template.replace(P_SID.encode(), sid).replace(P_TS.encode(), ts)
        if self.spec.messages > 1:
            b = b.replace(P_MSG[:-2].encode(), msgid[:6])
        else:
            b = b.replace(P_MSG.encode(), msgid)
        return b.replace(P_PORT.encode(), b"%05d" % (10000 + i % 50000))

    def session_segments(self, i: int) -> list[tuple[bytes, str | None]]:
        """Session i cut where smtpd waits for the filter: after each filter
        request (wait for its filter-result) and after the final data-line
        "." (wait for the echoed "." before sending commit)."""
        b = self.session(i)
        return [(b[sg.start:sg.end], sg.wait) for sg in self.segments]

    # ---- whole stream --------------------------------------------------
    def handshake_bytes(self) -> bytes:
        return ("\n".join(self.dialect.handshake()) + "\n").encode()

    def iter_sessions_bytes(self, start: int = 0, stop: int | None = None):
        stop = self.spec.sessions if stop is None else stop
        k = max(1, self.spec.interleave)
        if k == 1:
            for i in range(start, stop):
                yield self.session(i)
            return
        for g in range(start, stop, k):
            group = [self.session(i).splitlines(keepends=True)
                     for i in range(g, min(g + k, stop))]
            yield b"".join(l for tup in itertools.zip_longest(*group) for l in tup if l)

    def iter_chunks(self, target: int = 1 << 20, start: int = 0, stop: int | None = None):
        """The sessions (no handshake) as ~``target``-byte chunks, lazily."""
        buf: list[bytes] = []
        n = 0
        for b in self.iter_sessions_bytes(start, stop):
            buf.append(b)
            n += len(b)
            if n >= target:
                yield b"".join(buf)
                buf, n = [], 0
        if buf:
            yield b"".join(buf)

    def total(self) -> dict:
        n = self.spec.sessions
        return {"lines": self.lines_per_session * n, "bytes": self.bytes_per_session * n,
                "requests": self.requests_per_session * n, "dots": self.dots_per_session * n,
                "datalines": self.datalines_per_session * n}

    def summary(self) -> dict:
        s = self.spec
        t = self.total()
        return {
            "version": self.dialect.name, "proto": self.dialect.proto,
            "sessions": s.sessions, "messages_per_session": s.messages,
            "lines": t["lines"], "bytes": t["bytes"],
            "lines_per_session": self.lines_per_session,
            "bytes_per_session": self.bytes_per_session,
            "message_lines": self.message_lines if s.messages else 0,
            "message_bytes": self.message_bytes if s.messages else 0,
            "expected_filter_results": t["requests"], "expected_final_dots": t["dots"],
            "events": sorted(s.events.elements()), "phases": sorted(s.phases),
            "interleave": s.interleave,
        }


def response_ids(line: bytes, token_first: bool) -> tuple[bytes, bytes] | None:
    """``filter-result|A|B|...`` / ``filter-dataline|A|B|...`` -> (sid, token)."""
    f = line.split(b"|", 3)
    if len(f) < 4:
        return None
    return (f[2], f[1]) if token_first else (f[1], f[2])


# --------------------------------------------------------------------------
# CLI

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", "-V", default="0.6",
                    help="protocol dialect: %s (0.7+ = 7.6+ with config|protocol; "
                         "alias 0.7-7.6)" % ", ".join(VERSIONS))
    ap.add_argument("--sessions", "-n", type=int, default=1000)
    ap.add_argument("--lines", type=int, default=50, help="message lines incl. headers")
    ap.add_argument("--size", type=int, default=None, help="message bytes (instead of --lines)")
    ap.add_argument("--messages", type=int, default=1, help="transactions per session (0: none)")
    ap.add_argument("--rcpts", type=int, default=1)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--auth", action="store_true")
    ap.add_argument("--interleave", type=int, default=1, help="round-robin K sessions line by line")
    ap.add_argument("--register-file", default="", help="file with the filter's register| lines")
    ap.add_argument("--register-cmd", default="", help="run CMD, handshake, read its register| lines")
    ap.add_argument("--register", default="",
                    help="inline, e.g. 'filter:data-line,filter:commit,report:link-connect'")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-handshake", action="store_true")
    ap.add_argument("-o", "--output", default="-")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.register_file:
        with open(a.register_file) as f:
            ev, ph = parse_registrations(f)
    elif a.register_cmd:
        ev, ph = parse_registrations(registrations_from_cmd(a.register_cmd, a.version))
    elif a.register:
        lines = []
        for item in a.register.split(","):
            kind, _, name = item.strip().partition(":")
            lines.append("register|%s|smtp-in|%s" % (kind, name))
        ev, ph = parse_registrations(lines)
    else:
        ev, ph = everything()
    spec = StreamSpec(version=a.version, sessions=a.sessions, lines=a.lines, size=a.size,
                      messages=a.messages, rcpts=a.rcpts, tls=a.tls, auth=a.auth,
                      events=ev, phases=ph, interleave=a.interleave, seed=a.seed)
    st = Stream(spec)
    out = sys.stdout.buffer if a.output == "-" else open(a.output, "wb")
    try:
        if not a.no_handshake:
            out.write(st.handshake_bytes())
        for chunk in st.iter_chunks():
            out.write(chunk)
        out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    sys.stderr.write(json.dumps(st.summary()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
