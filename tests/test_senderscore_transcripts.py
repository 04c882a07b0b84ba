"""py-filter-senderscore against the transcripts of poolpOrg's
filter-senderscore test suite (its test/*.sh: initialisation, broken input,
blocking at each phase, junk, the score header, the allowlist, protocol 0.4
and 0.42), in our own words and data.

Each transcript is fed to ``py-filter-senderscore -testMode`` through a pipe
that closes right after the last line (so it also checks that every request
read before EOF is answered).  In test mode the score is the client
address's last octet; the Debian Go filter (0.1.1, no -testMode) gets the
same scores from our loopback DNS server: it runs, with that server, in a
private network namespace whose /etc/resolv.conf names 127.0.0.1 (it uses
the system resolver), so it can reach nothing else.  Where the Go filter is
installed, both get the same transcript and must write the same answers,
byte for byte.  The Go filter answers from goroutines, so its answers to
different requests can come in any order: they are compared as sorted lists
(ours are checked in order too).

Where we differ on purpose, the transcript says why and asserts ours:
registration (only the phases a configuration needs), broken input (logged,
never an exit), a malformed -blockPhase (a usage error at start), protocol
0.42 (compared as numbers: SID first, as poolpOrg fixed after the 0.1.1 that
Debian ships) and -allowlist (not in 0.1.1).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtpd_filter_sdk.testing.wire import Wire

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = "/usr/libexec/opensmtpd/filter-senderscore"
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)}
OURS = [sys.executable, "-m", "smtpd_filters.senderscore", "-testMode"]
TS = "1795218811.493169"
SID, SID2, SID3 = "5ba4c0f19e07a101", "5ba4c0f19e07a102", "5ba4c0f19e07a103"
TOK, TOK2 = "c0ffee15deadbe01", "c0ffee15deadbe02"
BLOCK = b"disconnect|550 your IP reputation is too low for this MX"
#: Client addresses and the score each has (test mode: the last octet; the
#: Go filter: what our DNS server answers for it).
LOW, HIGH, NONE, MID = "192.0.2.4", "192.0.2.100", "192.0.2.255", "198.51.100.42"


def link_connect(w: Wire, sid: str, src: str) -> bytes:
    return w.report(TS, "link-connect", sid, "client.example", "pass", f"{src}:41003", "192.0.2.254:25")


def connect(w: Wire, sid: str, src: str, token: str = TOK) -> list[bytes]:
    """link-connect and the connect request, as smtpd sends them."""
    return [link_connect(w, sid, src), w.connect(TS, sid, token, "client.example", src)]


def result(w: Wire, sid: str, decision: bytes, token: str = TOK) -> bytes:
    return w.result(sid, token, decision)


@dataclass
class Transcript:
    name: str
    flags: list[str]
    lines: list[bytes]  # after the handshake
    answers: list[bytes]  # what we write, in this order
    version: str = "0.5"
    #: None: the Go filter writes the same answers.  Otherwise why we differ
    #: (and what the Go filter does instead, asserted where it runs).
    differs: str | None = None
    go_answers: list[bytes] | None = None
    go_exits: bool = False  # the Go filter exits (non-zero) on this input
    files: dict[str, str] = field(default_factory=dict)


def transcripts() -> list[Transcript]:
    w, w4 = Wire("0.5"), Wire("0.4")
    out = [
        Transcript("block-low-score-at-connect", ["-blockBelow", "20"], connect(w, SID, LOW), [result(w, SID, BLOCK)]),
        Transcript("block-spares-a-good-score", ["-blockBelow", "20"], connect(w, SID, HIGH), [result(w, SID, b"proceed")]),
        Transcript("block-spares-an-unscored-client", ["-blockBelow", "20"], connect(w, SID, NONE), [result(w, SID, b"proceed")]),
        Transcript("block-phase-connect", ["-blockBelow", "20", "-blockPhase", "connect"], connect(w, SID, LOW), [result(w, SID, BLOCK)]),
        Transcript("junk-low-score", ["-junkBelow", "20"], connect(w, SID, LOW), [result(w, SID, b"junk")]),
        Transcript("junk-spares-a-good-score", ["-junkBelow", "20"], connect(w, SID, HIGH), [result(w, SID, b"proceed")]),
        Transcript(
            "score-header-on-an-empty-message",
            ["-scoreHeader"],
            [*connect(w, SID, MID), w.request(TS, "data-line", SID, TOK2, ".")],
            [result(w, SID, b"proceed"), w.dataline(SID, TOK2, "X-SenderScore: 42"), w.dataline(SID, TOK2, ".")],
        ),
        Transcript(
            "protocol-0.4-answers-token-first",
            ["-blockBelow", "20"],
            connect(w4, SID, HIGH),
            [b"filter-result|%s|%s|proceed" % (TOK.encode(), SID.encode())],
            version="0.4",
        ),
        Transcript(
            "protocol-0.42-is-after-0.5",
            ["-blockBelow", "20"],
            [line.replace(b"|0.5|", b"|0.42|", 1) for line in connect(w, SID, HIGH)],
            [b"filter-result|%s|%s|proceed" % (SID.encode(), TOK.encode())],
            differs="0.1.1 compares versions as strings ('0.42' < '0.5') and answers TOKEN|SESSION; poolpOrg fixed "
            "that after 0.1.1 (its own test expects SESSION|TOKEN), and versions are numbers",
            go_answers=[b"filter-result|%s|%s|proceed" % (TOK.encode(), SID.encode())],
        ),
    ]
    for phase in ("helo", "ehlo", "mail-from", "rcpt-to"):
        param = "client.example" if phase in ("helo", "ehlo") else "someone@example.org"
        out.append(
            Transcript(
                f"block-phase-{phase}",
                ["-blockBelow", "20", "-blockPhase", phase],
                [*connect(w, SID, LOW), w.request(TS, phase, SID, TOK2, param)],
                [result(w, SID, b"proceed"), result(w, SID, BLOCK, TOK2)],
            )
        )
    # Broken input: the Go filter exits; we log the line and go on (smtpd
    # would go down with an exiting filter).
    def broken(name: str, bad: bytes, why: str) -> Transcript:
        return Transcript(name, ["-blockBelow", "20"], [bad, *connect(w, SID2, HIGH)], [result(w, SID2, b"proceed")],
                          differs=f"the Go filter exits on {why}; we log it and answer what follows", go_exits=True)

    out += [
        broken("an-unknown-line-type", link_connect(w, SID, LOW).replace(b"report|", b"nonsense|", 1), "a line it does not know"),
        broken("an-unknown-report-event", link_connect(w, SID, LOW).replace(b"|link-connect|", b"|link-reconnect|", 1),
               "an event it did not register"),
        broken("a-report-with-too-few-fields", b"report|0.5|%s|smtp-in|link-connect" % TS.encode(), "a line with fewer than 6 fields"),
        Transcript(
            "a-request-for-a-session-never-reported",
            ["-blockBelow", "20"],
            [link_connect(w, SID, HIGH), w.connect(TS, SID2, TOK, "client.example", LOW)],
            [result(w, SID2, BLOCK)],
            differs="the Go filter crashes on a session it has no link-connect for (0.1.1: nil pointer; later: exit 1); "
            "we take the client address from the connect request itself",
            go_exits=True,
        ),
    ]
    # The allowlist (not in the Debian 0.1.1): addresses and networks.
    allow_hosts = "# scored 100, never looked up\n198.51.100.1\n203.0.113.3\n"
    out.append(
        Transcript(
            "allowlist-addresses",
            ["-blockBelow", "20", "-allowlist", "{allowlist}"],
            [*connect(w, SID, "198.51.100.1"), *connect(w, SID2, "198.51.100.2"), *connect(w, SID3, "203.0.113.3")],
            [result(w, SID, b"proceed"), result(w, SID2, BLOCK), result(w, SID3, b"proceed")],
            differs="-allowlist (-whitelist) came after 0.1.1",
            files={"allowlist": allow_hosts},
        )
    )
    allow_nets = "198.51.0.0/16\n192.0.2.0/24\n203.0.0.0/8\n"
    clients = ["198.51.1.1", "203.0.113.2", "100.64.0.3", "192.0.2.4", "192.0.3.3", "203.1.2.5"]
    sids = [f"5ba4c0f19e07a2{i:02x}" for i in range(len(clients))]
    out.append(
        Transcript(
            "allowlist-networks",
            ["-blockBelow", "20", "-allowlist", "{allowlist}"],
            [line for sid, ip in zip(sids, clients) for line in connect(w, sid, ip)],
            [result(w, sid, BLOCK if ip in ("100.64.0.3", "192.0.3.3") else b"proceed") for sid, ip in zip(sids, clients)],
            differs="-allowlist (-whitelist) came after 0.1.1",
            files={"allowlist": allow_nets},
        )
    )
    return out


TRANSCRIPTS = transcripts()
IDS = [t.name for t in TRANSCRIPTS]
#: Every address the transcripts use, for the Go filter's DNS zone.
ADDRESSES = {LOW, HIGH, NONE, MID, "198.51.100.1", "198.51.100.2", "203.0.113.3", "198.51.1.1", "203.0.113.2",
             "100.64.0.3", "192.0.2.4", "192.0.3.3", "203.1.2.5"}


def stream(t: Transcript) -> bytes:
    handshake = Wire("0.4" if t.version == "0.4" else "0.5").handshake()
    return b"".join(line + b"\n" for line in [*handshake, *t.lines])


def split_output(out: bytes) -> tuple[list[bytes], list[bytes]]:
    lines = [x for x in out.split(b"\n") if x]
    return [x for x in lines if x.startswith(b"register|")], [x for x in lines if not x.startswith(b"register|")]


def flags_for(t: Transcript, tmp_path: Path) -> list[str]:
    for name, text in t.files.items():
        (tmp_path / name).write_text(text)
    return [a.format(**{n: str(tmp_path / n) for n in t.files}) for a in t.flags]


def run_ours(t: Transcript, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*OURS, *flags_for(t, tmp_path)], input=stream(t), capture_output=True, env=ENV, timeout=30)


# -- ours --------------------------------------------------------------------------------


@pytest.mark.parametrize("t", TRANSCRIPTS, ids=IDS)
def test_our_answers(t, tmp_path):
    done = run_ours(t, tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    _, answers = split_output(done.stdout)
    assert answers == t.answers


def test_broken_lines_are_logged_not_fatal(tmp_path):
    logs = []
    for t in TRANSCRIPTS:
        if t.go_exits and "session-never-reported" not in t.name:
            logs.append(run_ours(t, tmp_path).stderr.decode())
    assert "ignoring unknown line: nonsense|0.5|" in logs[0]
    assert "ignoring malformed line (unknown report event 'link-reconnect')" in logs[1]
    assert "ignoring malformed line (a report needs at least 6 fields)" in logs[2]


@pytest.mark.parametrize(
    "flags, phases",
    [
        (["-blockBelow", "20"], ["connect"]),
        (["-junkBelow", "20"], ["connect"]),
        (["-blockBelow", "20", "-blockPhase", "mail-from"], ["connect", "mail-from"]),
        (["-scoreHeader"], ["commit", "connect", "data-line"]),
    ],
)
def test_we_register_only_what_the_configuration_needs(flags, phases):
    """The Go filter registers connect, helo, ehlo, starttls, auth,
    mail-from, rcpt-to, data, data-line, commit and quit whatever its flags
    (and link-connect, link-disconnect): every message line of every session
    goes through it.  We ask for what the flags need."""
    done = subprocess.run([*OURS, *flags], input=b"config|ready\n", capture_output=True, env=ENV, timeout=30)
    registration, _ = split_output(done.stdout)
    assert [x.split(b"|")[3].decode() for x in registration if x.startswith(b"register|filter|")] == phases
    assert registration[-1] == b"register|ready"


def test_a_block_phase_that_is_not_one_is_a_usage_error_at_start():
    """-blockPhase data-line: the Go filter (0.1.1) accepts it and never
    blocks; poolpOrg's later versions exit 1 when a session reaches it.  We
    refuse it at start, one usage line, exit 2 (smtpd logs it)."""
    done = subprocess.run([*OURS, "-blockBelow", "20", "-blockPhase", "data-line"], input=b"config|ready\n",
                          capture_output=True, env=ENV, timeout=30)
    assert done.returncode == 2 and done.stdout == b""
    assert len(done.stderr.decode().strip().splitlines()) == 1
    assert "-blockPhase" in done.stderr.decode()


# -- the Go filter, where it is installed ------------------------------------------------


class GoAnchor:
    """The Debian Go filter-senderscore in a private namespace whose only
    resolver is our loopback DNS server (scores: 127.0.4.<last octet>)."""

    def __init__(self, workdir: Path) -> None:
        sys.path.insert(0, str(ROOT / "tests" / "e2e"))
        from e2e_harness.netns import Namespace, have_namespaces

        from smtpd_filter_sdk.testing.dnsserver import DNSServerProcess, Zone

        why = have_namespaces()
        if why:
            raise RuntimeError(why)
        zone = Zone(ttl=300)
        for ip in ADDRESSES:
            last = int(ip.rsplit(".", 1)[1])
            if last <= 100:  # test mode's rule: .255 is no score (NXDOMAIN here)
                zone.add(".".join(reversed(ip.split("."))) + ".score.senderscore.com", "A", f"127.0.4.{last}")
        self.ns = Namespace(workdir / "ns").start()
        self.dns = DNSServerProcess(zone, workdir / "dns", port=53, argv_prefix=self.ns.nsenter_argv())
        try:
            self.dns.start()
        except BaseException:
            self.ns.stop()
            raise

    def run(self, flags: list[str], data: bytes, answers: int, timeout: float = 5.0) -> tuple[int | None, list[bytes], list[bytes]]:
        """Feed ``data``; keep stdin open until ``answers`` answers came (the
        Go filter drops answers its goroutines have not written at EOF), then
        EOF.  Returns its exit status, registration and answers."""
        proc = self.ns.popen([ANCHOR, *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(data)
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(split_output(out)[1]) < answers:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            status = proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = None
        out += proc.stdout.read()
        proc.stdout.close()
        registration, lines = split_output(out)
        return status, registration, lines

    def stop(self) -> None:
        self.dns.stop()
        self.ns.stop()


@pytest.fixture(scope="module")
def go(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from e2e_harness.prereq import skip_or_fail

    if not os.access(ANCHOR, os.X_OK):
        skip_or_fail(f"{ANCHOR} not installed (apt-get install opensmtpd-filter-senderscore)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        skip_or_fail("the Go filter uses the system resolver: it runs only in a private namespace (root, unshare)")
    try:
        anchor = GoAnchor(tmp_path_factory.mktemp("go-senderscore"))
    except (RuntimeError, OSError) as exc:
        skip_or_fail(f"no private namespace with a loopback DNS server: {exc}")
    yield anchor
    anchor.stop()


@pytest.mark.parametrize("t", [t for t in TRANSCRIPTS if not t.files], ids=[t.name for t in TRANSCRIPTS if not t.files])
def test_the_go_filter_writes_the_same_answers(t, go, tmp_path):
    status, _, go_lines = go.run(flags_for(t, tmp_path), stream(t), len(t.go_answers or t.answers) if not t.go_exits else 0)
    if t.go_exits:
        assert status not in (0, None), f"the Go filter was expected to exit on this input ({t.differs})"
        return
    assert status == 0
    expected = t.go_answers if t.go_answers is not None else t.answers
    assert sorted(go_lines) == sorted(expected)


def test_the_go_filter_registers_everything_whatever_its_flags(go):
    _, registration, _ = go.run(["-blockBelow", "20"], b"config|ready\n", 0, timeout=0.5)
    phases = sorted(x.split(b"|")[3].decode() for x in registration if x.startswith(b"register|filter|"))
    assert phases == sorted(["auth", "commit", "connect", "data", "data-line", "ehlo", "helo", "mail-from", "quit", "rcpt-to", "starttls"])
