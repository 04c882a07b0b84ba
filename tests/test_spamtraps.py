"""py-filter-spamtraps through the SDK harness (a real SQLite file, an
injectable clock) and as a process."""

from __future__ import annotations

import subprocess
import sys

import pytest

import filterkit
from smtpd_filter_sdk.testing.dnsserver import DNSServer, Zone
from smtpd_filter_sdk.testing.harness import Harness
from smtpd_filters import spamtraps as sp
from smtpd_filters.trapstore import TrapStore

TRAPS = "trap@example.org\n*@honeypot.example.org\n/^old-[0-9]+@example\\.org$/\n"
BLOCK = "421 4.7.0 Service temporarily unavailable, try again later"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def dns_server():
    """SPF records on the loopback test DNS server (never a real resolver)."""
    zone = (
        Zone(ttl=300)
        .add("gmail.com", "TXT", "v=spf1 ip4:192.0.2.7 -all")
        .add("partner.example", "TXT", "v=spf1 ip4:192.0.2.7 ~all")
        .add("slow.example", "TXT", "v=spf1 ip4:192.0.2.7 -all")
        .set_behaviour("slow.example", "drop")
    )
    with DNSServer(zone) as srv:
        yield srv


@pytest.fixture
def files(tmp_path):
    (tmp_path / "traps").write_text(TRAPS)
    (tmp_path / "allow").write_text("198.51.100.0/24\n")
    return tmp_path


def make(files, *argv, clock=None, dns=None):
    args = ["-traps", str(files / "traps"), "-db", str(files / "traps.db"), *argv]
    if dns is None and "-spf=false" not in argv:
        args.append("-spf=false")
    if dns is not None:
        args += ["-resolver", f"127.0.0.1:{dns.port}", "-spfTimeout", "1"]
    opts = sp.flags().parse_or_raise(args)
    store = TrapStore(opts.db, sp.policy_of(opts), host="mx1", clock=clock or Clock(), poll=0.05)
    f = sp.build(opts, store=store)
    return Harness(f, hang_timeout=10), f


def hit_trap(h, src="192.0.2.7", rcpt="trap@example.org", sender="spam@spammer.test", **kw):
    s = h.session(src=src)
    s.ehlo("spammer.test")
    if kw.get("auth"):
        s.auth("alice")
    assert s.mail_from(sender).decision == "proceed"
    return s, s.rcpt_to(rcpt)


def test_a_trap_hit_is_rejected_like_an_unknown_user_and_the_ip_is_refused_later(files):
    h, f = make(files)
    with h:
        s, step = hit_trap(h)
        assert step.decision == "reject"
        assert step.decision.param == "550 Invalid recipient: <trap@example.org>"
        assert s.rcpt_to("bob@example.org").decision == "proceed"  # the session goes on
        s.quit()
        again = h.session(src="192.0.2.7")
        assert again.connect.decision == "disconnect" and again.connect.replies == [BLOCK]
        other = h.session(src="192.0.2.8")
        assert other.connect.decision == "proceed"
        log = "\n".join(h.stderr)
        assert f"{s.id} rcpt-to: trap trap@example.org hit by 192.0.2.7: reject, blocked until" in log
        assert f"{again.id} connect: addr=192.0.2.7 is trapped (86400s left): refused" in log
    f.spamtraps.store.close()


@pytest.mark.parametrize("rcpt", ["trap@EXAMPLE.ORG", "x@honeypot.example.org", "old-7@example.org"])
def test_every_kind_of_entry_traps(files, rcpt):
    h, f = make(files, "-action", "disconnect")
    with h:
        s, step = hit_trap(h, rcpt=rcpt)
        assert step.decision == "disconnect"
        assert step.decision.param == "421 4.3.0 Temporary failure, closing connection"
        assert "trap" not in step.decision.param.lower() and "honeypot" not in step.decision.param
        assert h.session(src="192.0.2.7").connect.decision == "disconnect"
    f.spamtraps.store.close()


def test_junk_accepts_silently_and_still_traps(files):
    h, f = make(files, "-action", "junk")
    with h:
        s = h.session(src="192.0.2.7")
        m = s.send_message("spam@spammer.test", ["trap@example.org"])
        assert m.accepted and m.junk
        assert h.session(src="192.0.2.7").connect.decision == "disconnect"
    f.spamtraps.store.close()


def test_expiry_with_an_injected_clock(files):
    clock = Clock()
    h, f = make(files, "-expire", "2h", clock=clock)
    with h:
        hit_trap(h)
        assert h.session(src="192.0.2.7").connect.decision == "disconnect"
        clock.now += 7199
        assert h.session(src="192.0.2.7").connect.decision == "disconnect"
        clock.now += 1
        assert h.session(src="192.0.2.7").connect.decision == "proceed"
    f.spamtraps.store.close()


@pytest.mark.parametrize("who", ["auth", "local", "allowlisted"])
def test_never_trapped(files, who):
    h, f = make(files, "-allowlist", str(files / "allow"))
    with h:
        if who == "auth":
            s, step = hit_trap(h, auth=True)
            src = "192.0.2.7"
        elif who == "local":
            s, step = hit_trap(h, src="local")
            src = "local"
        else:
            s, step = hit_trap(h, src="198.51.100.5")
            src = "198.51.100.5"
        assert step.decision == "proceed"
        assert h.session(src=src).connect.decision == "proceed"
        reason = {"auth": "authenticated as alice", "local": "local session", "allowlisted": "allowlisted address"}[who]
        assert f"{s.id} rcpt-to: trap trap@example.org: not trapped ({reason})" in h.stderr
        f.spamtraps.store.flush()
        assert f.spamtraps.store.rows() == []
    f.spamtraps.store.close()


def test_an_allowlisted_address_already_trapped_is_not_refused(files):
    h, f = make(files)
    with h:
        f.spamtraps.store.hit("198.51.100.5", "trap@example.org")
        assert h.session(src="198.51.100.5").connect.decision == "disconnect"
    (files / "allow").write_text("198.51.100.0/24\n")
    h, f2 = make(files, "-allowlist", str(files / "allow"))
    with h:
        assert h.session(src="198.51.100.5").connect.decision == "proceed"
    f.spamtraps.store.close()
    f2.spamtraps.store.close()


def test_spf_pass_for_a_listed_domain_is_never_trapped(files, dns_server):
    h, f = make(files, dns=dns_server)
    with h:
        s, step = hit_trap(h, sender="typo@gmail.com")  # 192.0.2.7 is gmail.com's, says its SPF record
        assert step.decision == "proceed"
        assert f"{s.id} rcpt-to: trap trap@example.org: not trapped (SPF pass for gmail.com)" in h.stderr
        s2, step2 = hit_trap(h, src="192.0.2.8", sender="forged@gmail.com")  # fails SPF: trapped
        assert step2.decision == "reject"
        assert f"{s2.id} rcpt-to: trap trap@example.org: SPF fail for gmail.com" in h.stderr
        asked = len(dns_server.queries)
        s3, step3 = hit_trap(h, src="192.0.2.9", sender="x@unlisted.example")  # not on the list: no lookup
        assert step3.decision == "reject" and len(dns_server.queries) == asked
    f.spamtraps.store.close()


def test_spf_domains_file_replaces_the_default_and_spf_false_turns_it_off(files, dns_server):
    (files / "domains").write_text("partner.example\n")
    h, f = make(files, "-spfDomains", str(files / "domains"), dns=dns_server)
    with h:
        assert hit_trap(h, src="192.0.2.7", sender="a@partner.example")[1].decision == "proceed"
        assert hit_trap(h, src="192.0.2.7", sender="a@mx.partner.example")[1].decision == "reject"  # no SPF record
        assert hit_trap(h, src="192.0.2.8", sender="a@gmail.com")[1].decision == "reject"  # not on this list
    f.spamtraps.store.close()
    h, f = make(files, "-spf=false")
    with h:
        assert f.spamtraps.spf is None
        assert hit_trap(h, src="192.0.2.20", sender="a@gmail.com")[1].decision == "reject"
    f.spamtraps.store.close()


def test_an_spf_timeout_is_no_pass(files, dns_server):
    (files / "domains").write_text("slow.example\n")
    h, f = make(files, "-spfDomains", str(files / "domains"), dns=dns_server)
    with h:
        assert hit_trap(h, sender="a@slow.example")[1].decision == "reject"
        assert any("SPF timeout for slow.example" in line for line in h.stderr)
    f.spamtraps.store.close()


def test_one_hit_per_session(files):
    h, f = make(files)
    with h:
        s, step = hit_trap(h)
        assert s.rcpt_to("x@honeypot.example.org").decision == "reject"
        f.spamtraps.store.flush()
        [t] = f.spamtraps.store.rows()
        assert t.hits == 1
    f.spamtraps.store.close()


def test_ipv6_by_prefix(files):
    h, f = make(files, "-ipv6Prefix", "64")
    with h:
        hit_trap(h, src="2001:db8:1:2::5")
        assert h.session(src="2001:db8:1:2::99").connect.decision == "disconnect"
        assert h.session(src="2001:db8:1:3::5").connect.decision == "proceed"
    f.spamtraps.store.close()
    h, f = make(files, "-db", str(files / "other.db"))
    with h:
        hit_trap(h, src="2001:db8:1:2::5")
        assert h.session(src="2001:db8:1:2::5").connect.decision == "disconnect"
        assert h.session(src="2001:db8:1:2::99").connect.decision == "proceed"
    f.spamtraps.store.close()


@pytest.mark.parametrize("phase", ["helo", "ehlo", "mail-from", "rcpt-to"])
def test_block_at_a_later_phase_lets_authenticated_users_through(files, phase):
    h, f = make(files, "-blockPhase", phase, "-blockReply", "perm")
    with h:
        f.spamtraps.store.hit("192.0.2.7", "trap@example.org")
        s = h.session(src="192.0.2.7")
        assert s.connect.decision == "proceed"
        if phase == "helo":
            step = s.helo("x.example")
        else:
            step = s.ehlo("x.example")
            if phase in ("mail-from", "rcpt-to"):
                step = s.mail_from("a@example.net")
            if phase == "rcpt-to":
                step = s.rcpt_to("bob@example.org")
        assert step.decision == "disconnect" and step.decision.param == "554 5.7.1 Service unavailable"
        if phase in ("mail-from", "rcpt-to"):
            s2 = h.session(src="192.0.2.7")
            s2.ehlo("x.example")
            s2.auth("alice")
            assert s2.mail_from("alice@example.org").decision == "proceed"
            assert s2.rcpt_to("bob@example.org").decision == "proceed"
    f.spamtraps.store.close()


def test_dry_run_logs_and_records_nothing(files):
    h, f = make(files, "-dryRun")
    with h:
        s, step = hit_trap(h)
        assert step.decision == "proceed"
        assert any("would reject and block for 86400s (dry run)" in line for line in h.stderr)
        f.spamtraps.store.flush()
        assert f.spamtraps.store.rows() == []
        assert h.session(src="192.0.2.7").connect.decision == "proceed"
    f.spamtraps.store.close()


def test_sighup_reloads_the_trap_list_and_a_bad_one_keeps_the_old(files):
    h, f = make(files)
    with h:
        (files / "traps").write_text("new@example.org\nbroken line\n")
        with pytest.raises(Exception, match=r"traps:2: "):
            for fn in f.reload_handlers:
                fn()
        assert hit_trap(h, src="192.0.2.1")[1].decision == "reject"  # old list
        (files / "traps").write_text("new@example.org\n")
        for fn in f.reload_handlers:
            fn()
        assert hit_trap(h, src="192.0.2.2")[1].decision == "proceed"
        assert hit_trap(h, src="192.0.2.3", rcpt="new@example.org")[1].decision == "reject"
    f.spamtraps.store.close()


# -- the process ----------------------------------------------------------------------------


def run_main(*argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(filterkit.REPO / "filters" / "spamtraps.py"), *argv],
        input=b"", capture_output=True, env=filterkit.env(), timeout=timeout,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "-traps FILE is required"),
        (["-traps", "t", "-action", "drop"], 'invalid value "drop" for flag -action'),
        (["-traps", "t", "-expire", "1y"], 'invalid value "1y" for flag -expire'),
        (["-traps", "t", "-ipv6Prefix", "8"], 'invalid value "8" for flag -ipv6Prefix'),
        (["-traps", "t", "-blockPhase", "data"], 'invalid value "data" for flag -blockPhase'),
        (["-traps", "t", "-learnMaxHeld", "0"], 'invalid value "0" for flag -learnMaxHeld'),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv, message):
    r = run_main(*argv)
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1 and message in err, err
    assert "(usage: py-filter-spamtraps [-traps FILE[,FILE]]" in err


def test_a_bad_trap_line_is_a_one_line_startup_error(files):
    (files / "traps").write_text("ok@example.org\n\n/unclosed(/\n")
    r = run_main("-traps", str(files / "traps"), "-db", str(files / "t.db"), "-spf=false")
    assert r.returncode == 1
    assert r.stderr.decode().startswith(f"py-filter-spamtraps: {files / 'traps'}:3: bad regex")
    assert r.stderr.decode().count("\n") == 1


def test_an_unusable_database_is_a_one_line_startup_error(files):
    """The default -db directory does not exist after pip install: the line
    in smtpd's log says what to do, not only SQLite's words."""
    where = files / "no" / "such" / "dir"
    r = run_main("-traps", str(files / "traps"), "-db", str(where / "t.db"), "-spf=false")
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1
    assert r.stderr.decode() == (f"py-filter-spamtraps: {where / 't.db'}: unable to open database file "
                                 f"(the directory {where} does not exist: create it, writable by smtpd's filter user)\n")


@pytest.mark.parametrize(
    "missing, flags, message",
    [
        ("redis", ["-redis", "redis://127.0.0.1:6379/0"], "-redis needs redis-py: pip install 'smtpd-filters[spamtraps]'"),
        ("spf", ["-spf=true"], "-spf needs pyspf: pip install 'smtpd-filters[spf]' (or -spf=false)"),
    ],
)
def test_a_flag_whose_package_is_not_installed_is_a_one_line_startup_error(files, tmp_path, missing, flags, message):
    """A venv with the base install only (no extras): the flag that needs
    the package stops the start with one line, not a traceback at start nor
    one per trapped message later."""
    hide = tmp_path / "hide"
    (hide / missing).mkdir(parents=True)
    (hide / missing / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{missing}'\")\n")
    env = {**filterkit.env(), "PYTHONPATH": str(hide)}
    r = subprocess.run(  # as the console script runs it (not from filters/, where spf.py is ours)
        [sys.executable, "-m", "smtpd_filters.spamtraps", "-traps", str(files / "traps"),
         "-db", str(files / "t.db"), "-spf=false", *flags],
        input=b"", capture_output=True, env=env, timeout=10,
    )
    err = r.stderr.decode()
    assert r.returncode == 1 and err == f"py-filter-spamtraps: {message}\n", err


def test_the_start_line_never_shows_the_redis_password(files):
    pytest.importorskip("redis")
    r = run_main("-traps", str(files / "traps"), "-db", str(files / "t.db"), "-spf=false",
                 "-redis", "redis://alice:s3cret-pw@127.0.0.1:1/0")
    err = r.stderr.decode()
    assert r.returncode == 0 and "starting (" in err, err
    assert "s3cret-pw" not in err and "redis=redis://alice:***@127.0.0.1:1/0" in err


@pytest.mark.parametrize("action", ["reject", "disconnect", "junk"])
def test_smtpd_filter_check_is_clean_for_every_dialect(tmp_path, action):
    """The SDK's checker (built-in sessions + fuzzed streams, every released
    protocol dialect), with every recipient a trap and the clients trapped
    from the second session on."""
    from smtpd_filter_sdk.testing.checker import RELEASED_DIALECTS, check

    (tmp_path / "traps").write_text("*@example.net\n*@example.org\n/@example\\.com$/\n")
    cmd = filterkit.command("spamtraps", "-traps", str(tmp_path / "traps"), "-db", str(tmp_path / "t.db"),
                            "-spf=false", "-action", action, "-blockPhase", "mail-from")
    result = check(cmd, RELEASED_DIALECTS, env_extra={"PYTHONPATH": str(filterkit.REPO)}, out=None, fuzz=5)
    bad = [f.format() for f in result.findings if f.severity in ("FATAL", "HANG")]
    assert not bad, bad
    assert {f.rule for f in result.findings} <= {"legacy-truncation"}


def test_the_process_sighup_reloads_and_a_bad_file_keeps_the_old_list_and_eof_flushes(tmp_path):
    import os
    import signal
    import time

    from smtpd_filter_sdk.testing.harness import SubprocessHarness
    from smtpd_filters.trapstore import TrapStore

    traps = tmp_path / "traps"
    traps.write_text("old@example.org\n")
    cmd = filterkit.command("spamtraps", "-traps", str(traps), "-db", str(tmp_path / "t.db"), "-spf=false")

    def wait_log(h, text):
        deadline = time.monotonic() + 5
        while not any(text in line for line in h.stderr) and time.monotonic() < deadline:
            h.transport.recv(0.05)
        assert any(text in line for line in h.stderr), h.stderr

    with SubprocessHarness(cmd, env_extra={"PYTHONPATH": str(filterkit.REPO)}) as h:
        traps.write_text("new@example.org\n/(unclosed/\n")
        os.kill(h.transport.proc.pid, signal.SIGHUP)
        wait_log(h, "reload failed")
        assert any(f"{traps}:2: bad regex" in line for line in h.stderr)
        assert hit_trap(h, src="192.0.2.1", rcpt="old@example.org")[1].decision == "reject"
        traps.write_text("new@example.org\n")
        os.kill(h.transport.proc.pid, signal.SIGHUP)
        wait_log(h, "reloaded")
        assert hit_trap(h, src="192.0.2.2", rcpt="old@example.org")[1].decision == "proceed"
        assert hit_trap(h, src="192.0.2.3", rcpt="new@example.org")[1].decision == "reject"
    # smtpd gone (EOF): the process wrote its pending hits before it exited
    rows = TrapStore(str(tmp_path / "t.db"), worker=False).rows()
    assert sorted(t.key for t in rows) == ["192.0.2.1", "192.0.2.3"]


def test_escalation_the_third_hit_within_a_week_blocks_for_a_month(files):
    clock = Clock()
    h, f = make(files, "-expire", "1d", "-escalateHits", "3", clock=clock)
    store = f.spamtraps.store
    with h:
        for n in range(3):
            assert h.session(src="192.0.2.7").connect.decision == "proceed"
            hit_trap(h)
            store.flush()
            until = store.blocked_until(["192.0.2.7"])
            assert until == clock.now + (30 * 86400 if n == 2 else 86400)
            clock.now += 2 * 86400  # the block is over; still within the week
        [t] = store.rows()
        assert t.hits == 3
    store.close()


@pytest.mark.parametrize("skipped", ["connect", "connect+mail-from"])
def test_a_client_an_earlier_filter_junked_is_still_refused_later(files, skipped):
    """In a chain, an earlier filter's junk at connect ends that round: smtpd
    never asks us about the connect (research/protocol.md 4.7).  The
    trapped client is then refused at MAIL FROM, or at its first RCPT TO."""
    from smtpd_filter_sdk.testing.wire import Wire

    h, f = make(files)
    f.spamtraps.store.hit("192.0.2.7", "trap@example.org")
    w = Wire("0.6")
    sid, tok = "00000000000000a1", "00000000000000b2"
    with h:
        out = h.feed(w.report("1.0", "link-connect", sid, "x.example", "pass", "192.0.2.7:4000", "127.0.0.1:25"))
        assert out == []
        if skipped == "connect":
            out = h.feed(w.request("1.1", "mail-from", sid, tok, "a@x.example"))
        else:
            out = h.feed(w.request("1.2", "rcpt-to", sid, tok, "bob@example.org"))
        phase = "mail-from" if skipped == "connect" else "rcpt-to"
        assert out == [w.result(sid, tok, f"disconnect|{BLOCK}")]
        assert f"{sid} {phase}: addr=192.0.2.7 is trapped (86400s left): refused" in h.stderr
    f.spamtraps.store.close()


def test_learning_holds_at_most_learn_max_held_bytes_across_sessions(files):
    """-learnSpam keeps a trapped session's message while it arrives and
    while rspamd is sent it; all of them together stay under -learnMaxHeld.
    As a process, against a loopback HTTP server that answers /learnspam
    after three seconds: the second trapped message would pass the bound while
    the first is in flight, so it is passed on, not sent, and logged; once
    rspamd has answered the first, the third fits again."""
    import time

    from httpkit import HTTPTestServer
    from smtpd_filter_sdk.testing.harness import SubprocessHarness

    lines = [b"Subject: buy now", b""] + [b"x" * 98] * 20  # ~2,100 bytes with CRLFs

    def wait_for(h, what, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not what() and time.monotonic() < deadline:
            h.transport.recv(0.05)
        return what()

    with HTTPTestServer() as rspamd:
        rspamd.answer(json={"success": True}, delay=3.0)
        cmd = filterkit.command(
            "spamtraps", "-traps", str(files / "traps"), "-db", str(files / "traps.db"), "-spf=false",
            "-action", "junk", "-learnSpam", rspamd.url, "-learnMaxHeld", "3000",
        )
        with SubprocessHarness(cmd, env_extra={"PYTHONPATH": str(filterkit.REPO)}) as h:

            def trapped_message(src: str, token: bytes):
                s, step = hit_trap(h, src=src)
                assert step.decision == "junk"
                s.data(lines=[b"X-Token: " + token, *lines])
                s.quit()
                return s

            first = trapped_message("192.0.2.11", b"first")
            assert wait_for(h, lambda: len(rspamd.requests) == 1)  # in flight for 3 s
            second = trapped_message("192.0.2.12", b"second")
            refused = [line for line in h.stderr if "this message is not sent" in line]
            assert len(refused) == 1 and refused[0].startswith(second.id), h.stderr
            assert "bytes of trapped mail already held for rspamd (-learnMaxHeld 3000)" in refused[0]
            assert wait_for(h, lambda: any("bytes learnt as spam (HTTP 200)" in line for line in h.stderr), 10.0)
            third = trapped_message("192.0.2.13", b"third")
            assert wait_for(h, lambda: len(rspamd.requests) == 2)
    sent = [r.body for r in rspamd.requests]
    assert [r.path for r in rspamd.requests] == ["/learnspam", "/learnspam"]
    assert b"X-Token: first\r\n" in sent[0] and b"X-Token: third\r\n" in sent[1], sent
    assert not any(b"X-Token: second" in body for body in sent)
    for s in (first, second, third):  # sent or not, every message passed on untouched
        message = s.messages[0]
        assert message.accepted and message.output_lines == message.input_lines
