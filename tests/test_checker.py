"""smtpd-filter-check against deliberately broken filters (tests/broken_filters/,
one raw-protocol script per rule) and against every example filter.

Each broken filter must be caught with the right class (FATAL: smtpd exits,
HANG: a session or smtpd stalls, WARN: smtpd mangles something) and the
text smtpd would log; the correct controls and the SDK examples must pass
on every released dialect.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smtpd_filter_sdk.testing.checker import RELEASED_DIALECTS, check, load_capture, main
from smtpd_filter_sdk.testing.harness import FilterCheckFailed, SubprocessHarness
from smtpd_filter_sdk.testing.scenarios import builtin_scenarios
from smtpd_filter_sdk.testing.simulator import FATAL, HANG, WARN

ROOT = Path(__file__).resolve().parent.parent
BROKEN = ROOT / "tests" / "broken_filters"
CAPTURES = ROOT / "tests" / "data"
SCENARIOS = {s.name: s for s in builtin_scenarios(0)}
FAST = dict(hang_timeout=1.0, exit_timeout=2.0, out=None, max_restarts=2)


def run(script: str, dialect: str = "0.6", scenarios=("plain",), **kw):
    kw = {**FAST, **kw}
    return check(
        f"{sys.executable} {BROKEN / script}",
        [dialect],
        scenarios=[SCENARIOS[n] for n in scenarios],
        **kw,
    )


# (script, dialect, severity, rule, text in smtpd's log or in the message)
CASES = [
    ("swapped_ids.py", "0.6", HANG, "swapped-ids", "answers for unknown sessions are ignored"),
    ("swapped_ids.py", "0.4", HANG, "swapped-ids", "answers for unknown sessions are ignored"),
    ("proceed_with_param.py", "0.6", FATAL, "param-after-proceed", "lookup: Unexpected parameter after proceed: filter-result|"),
    ("proceed_with_param.py", "0.7", FATAL, "param-after-proceed", "lookup: Invalid directive: filter-result|"),
    ("junk_at_commit.py", "0.6", FATAL, "junk-at-commit", "lookup: filter-reponse junk after DATA"),
    ("result_during_dataline.py", "0.6", FATAL, "result-in-dataline", "lookup: filter-result in dataline phase"),
    ("premature_dot.py", "0.6", FATAL, "premature-final-dot", "lookup: filter-dataline out of dataline phase"),
    ("missing_dot.py", "0.6", HANG, "missing-final-dot", "no final '.'"),
    ("dataline_after_dot.py", "0.6", FATAL, "dataline-after-final-dot", "lookup: filter-dataline out of dataline phase"),
    ("dataline_outside.py", "0.6", FATAL, "dataline-out-of-phase", "lookup: filter-dataline out of dataline phase"),
    ("no_flush.py", "0.6", HANG, "no-register-ready", "never greets"),
    ("no_ready.py", "0.6", HANG, "no-register-ready", "never greets"),
    ("crlf.py", "0.6", FATAL, "unknown-event", "lookup: Unrecognized report name: link-connect\r"),
    ("crlf.py", "0.4", WARN, "crlf", "strips the CR"),
    ("exit_at_mail_from.py", "0.6", FATAL, "filter-exited", "warn: lost processor: exit_at_mail_from exited abnormally"),
    ("long_output_line.py", "0.7", HANG, "line-too-long", "lookup spins"),
    ("legacy_long_header.py", "0.6", WARN, "legacy-truncation", "first 2,047 bytes"),
    ("unknown_event.py", "0.6", FATAL, "unknown-event", "lookup: Unrecognized report name: link-reset"),
    ("unknown_phase.py", "0.6", FATAL, "unknown-phase", "lookup: Unrecognized report name: data-lines"),
    ("filter_smtp_out.py", "0.6", FATAL, "invalid-direction", "lookup: Invalid message direction: smtp-out|connect"),
    ("smtp_out_always.py", "0.4", FATAL, "invalid-direction", "lookup: Invalid message direction: smtp-out|link-connect"),
    ("smtp_out_always.py", "0.6", WARN, "smtp-out-unannounced", "fatal on OpenSMTPD 6.6"),
    ("duplicate_registration.py", "0.6", WARN, "duplicate-report-registration", "sends every such event twice"),
    ("non_register_before_ready.py", "0.6", FATAL, "non-register-before-ready", "lookup: Non-register message before register|ready: hello smtpd"),
    ("register_after_ready.py", "0.6", FATAL, "register-after-ready", "lookup: Invalid filter message type: register|filter|smtp-in|rset"),
    ("garbage_line.py", "0.6", FATAL, "invalid-message-type", "lookup: Invalid filter message type: this is garbage|"),
    ("report_line.py", "0.6", FATAL, "report-line", "lookup: unexpected direction: "),
    ("report_decision.py", "0.6", FATAL, "report-decision", "lookup: Invalid directive: filter-result|"),
    ("report_decision.py", "0.7", FATAL, "report-decision", "lookup: Invalid directive: filter-result|"),
    ("answers_twice.py", "0.6", FATAL, "answer-without-request", "tree_xpop"),
    ("wrong_token.py", "0.6", FATAL, "misbehaving-filter", "lookup: misbehaving filter"),
    ("missing_param.py", "0.6", FATAL, "missing-parameter", "lookup: Missing parameter: filter-result|"),
    ("bad_reply_text.py", "0.6", WARN, "invalid-reply", "421 Internal server error"),
    ("unknown_session.py", "0.6", HANG, "unknown-session", "answers for unknown sessions are ignored"),
    ("unanswered.py", "0.6", HANG, "unanswered", "no answer to the rcpt-to request"),
    ("bad_hex.py", "0.6", FATAL, "bad-ids", "lookup: Invalid reqid: filter-result|session-"),
    ("stdout_closed.py", "0.6", HANG, "stdout-closed", "closed its output"),
    ("no_exit_on_eof.py", "0.6", WARN, "no-exit-on-eof", "did not exit"),
    ("drops_at_eof.py", "0.6", HANG, "dropped-at-eof", "without writing the answer to the connect request"),
]


@pytest.mark.parametrize(("script", "dialect", "severity", "rule", "text"), CASES, ids=[f"{c[0][:-3]}-{c[1]}" for c in CASES])
def test_broken_filter_is_caught(script, dialect, severity, rule, text):
    kw: dict = {"quiet_time": 0.3} if script == "premature_dot.py" else {}
    if script in ("no_exit_on_eof.py", "stdout_closed.py"):
        kw["exit_timeout"] = 0.5  # they never exit: don't wait long to kill them
    result = run(script, dialect, **kw)
    found = [f for f in result.findings if f.rule == rule]
    assert found, f"{rule} not reported; got {result.findings}"
    f = found[0]
    assert f.severity == severity
    assert any(text in x for x in (f.message, *f.smtpd_log)), f.format()
    # exit status: non-zero on FATAL or HANG only
    worst = {x.severity for x in result.findings}
    assert result.exit_status == (1 if worst & {FATAL, HANG} else 0)
    if severity == WARN:
        assert result.exit_status == 0


def test_fatal_is_reported_once_then_the_filter_is_restarted():
    # smtpd would be gone after the first FATAL: the checker restarts the
    # filter for the next scenario, so every scenario still gets checked.
    result = run("exit_at_mail_from.py", scenarios=("plain", "pipes", "helo-rset"), max_restarts=5)
    r = result.results[0]
    assert r.restarts == 2
    assert [f.rule for f in r.findings] == ["filter-exited"] * 3


def test_report_decision_is_fine_on_7_6():
    result = run("report_decision.py", "0.7/7.6")
    assert result.findings == []
    assert result.exit_status == 0


@pytest.mark.parametrize("dialect", RELEASED_DIALECTS)
def test_correct_raw_filters_pass(dialect):
    everything_but_long_lines = tuple(n for n in SCENARIOS if n != "long-lines")
    for script in ("good_raw.py", "strict_raw.py"):
        result = run(script, dialect, scenarios=everything_but_long_lines)
        assert not result.failed, [f.format() for f in result.findings]
        bad = [f for f in result.findings if f.rule != "legacy-truncation"]
        assert bad == []


def test_naive_echo_jams_smtpd_on_the_longest_lines():
    # protocol.md §9: a client line of 65,501 bytes echoed with its
    # "filter-dataline|SID|TOK|" prefix is over 65,535 bytes.
    result = run("good_raw.py", "0.7", scenarios=("long-lines",))
    assert result.rules() == {"line-too-long"}
    f = result.findings[0]
    assert f.severity == HANG and len(f.line) > 65535
    assert result.exit_status == 1


def test_legacy_truncation_only_before_7_4():
    assert {f.rule for f in run("legacy_long_header.py", "0.7").findings} == set()
    assert {f.rule for f in run("legacy_long_header.py", "0.4").findings} == {"legacy-truncation"}


def test_smtpd_start_conditions():
    """The filter runs as smtpd runs it: PATH and LANG only, stdin and stdout
    one socket, stderr another, its own session."""
    with SubprocessHarness(f"{sys.executable} {BROKEN / 'env_probe.py'}", hang_timeout=2) as h:
        s = h.session()
        s.quit()
    env_line = next(x for x in h.stderr if x.startswith("env="))
    assert set(env_line[4:].split(",")) <= {"PATH", "LANG", "PWD", "LC_CTYPE"}
    assert "fd0-is-fd1=True fd0-socket=True fd2-socket=True fd2-is-fd0=False session-leader=True" in h.stderr


def test_strict_harness_raises_with_smtpd_log_text():
    with pytest.raises(FilterCheckFailed) as err:
        with SubprocessHarness(f"{sys.executable} {BROKEN / 'junk_at_commit.py'}", hang_timeout=1) as h:
            s = h.session()
            s.send_message("a@example.org", ["b@example.net"])
    assert "lookup: filter-reponse junk after DATA" in str(err.value)
    assert err.value.findings[0].severity == FATAL


# -- replay -------------------------------------------------------------------


def test_replay_capture_sends_only_what_was_registered():
    result = check(
        f"{sys.executable} {BROKEN / 'strict_raw.py'}",
        ["0.6"],
        builtin=False,
        replay=[CAPTURES / "rset.txt", CAPTURES / "multi.txt", CAPTURES / "auth.txt"],
        **FAST,
    )
    assert not result.failed, [f.format() for f in result.findings]
    assert result.results[0].sessions == 4


@pytest.mark.parametrize("dialect", RELEASED_DIALECTS)
def test_replay_rewritten_to_each_dialect(dialect):
    # auth.txt carries link-auth and tx-mail, whose field order depends on the
    # version: rewritten, the SDK example must still pass.
    config, body, recorded = load_capture(CAPTURES / "auth.txt")
    assert recorded == "0.6" and config[-1] == b"config|ready"
    result = check(
        f"{sys.executable} {ROOT / 'examples' / 'add_header.py'}",
        [dialect],
        builtin=False,
        replay=[CAPTURES / "auth.txt", CAPTURES / "plain.txt"],
        rewrite_version=True,
        env_extra={"PYTHONPATH": str(ROOT)},
        **FAST,
    )
    assert not result.failed
    assert any("header added: X-Filtered-By: add-header" in x for x in result.results[0].transcript)


def test_replay_catches_junk_at_commit():
    result = check(f"{sys.executable} {BROKEN / 'junk_at_commit.py'}", ["0.6"], builtin=False, replay=[CAPTURES / "plain.txt"], **FAST)
    assert result.rules(FATAL) == {"junk-at-commit"}


def test_fuzz_with_hypothesis_strategies():
    pytest.importorskip("smtpd_filter_sdk.testing.strategies")
    result = check(f"{sys.executable} {BROKEN / 'good_raw.py'}", ["0.7"], builtin=False, fuzz=15, seed=3, **FAST)
    assert not result.failed, [f.format() for f in result.findings]
    assert result.results[0].sessions >= 15
    bad = check(f"{sys.executable} {BROKEN / 'missing_dot.py'}", ["0.6"], builtin=False, fuzz=4, seed=3, **{**FAST, "hang_timeout": 0.3})
    assert "missing-final-dot" in bad.rules(HANG)


# -- the command line -------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "smtpd_filter_sdk.testing.checker", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )


def test_cli_exit_status_and_log_text():
    bad = _cli("--hang-timeout", "0.5", "--", sys.executable, str(BROKEN / "junk_at_commit.py"))
    assert bad.returncode == 1
    assert "FATAL [junk-at-commit]" in bad.stdout
    assert "smtpd logs:   lookup: filter-reponse junk after DATA" in bad.stdout
    assert "C: MAIL FROM:<" in bad.stdout  # the transcript
    assert "FAIL  protocol 0.6" in bad.stdout

    warn_only = _cli("-q", "--hang-timeout", "0.5", f"{sys.executable} {BROKEN / 'bad_reply_text.py'}")
    assert warn_only.returncode == 0, warn_only.stdout
    assert "PASS  protocol 0.6" in warn_only.stdout and "WARN invalid-reply" in warn_only.stdout
    assert "C: MAIL FROM" not in warn_only.stdout  # -q: no transcript

    usage = _cli("--dialect", "0.9", "true")
    assert usage.returncode == 2


def test_cli_all_dialects_and_env():
    ok = _cli("-q", "-d", "all", "--env", f"PYTHONPATH={ROOT}", "--", sys.executable, str(ROOT / "examples" / "reject_helo.py"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for d in RELEASED_DIALECTS:
        assert f"PASS  protocol {d}" in ok.stdout


def test_main_in_process(capsys):
    assert main(["-q", "--no-builtin", "--replay", str(CAPTURES / "plain.txt"), "--", sys.executable, str(BROKEN / "good_raw.py")]) == 0
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize("dialect", ["0.4", "0.6"])
def test_echoed_client_crs_are_not_the_filters_fault(dialect):
    # A client line ending in CR (it sent CR CR LF), a bare CR inside a line,
    # and a 3,000-byte line of CRs that smtpd < 7.4 cuts: echoing them is
    # right, so no crlf / cr-in-output warning (only the truncation).
    from smtpd_filter_sdk.testing.scenarios import Scenario
    from smtpd_filter_sdk.testing.simulator import Connect, Ehlo, Message, Quit, message_lines

    lines = [b"ends in cr\r", b"bare \r inside", b"\r" * 3000]
    sc = Scenario("crs", "CRs from the client", ((Connect(), Ehlo("c.example"), Message("a@example.org", ("b@example.net",), message_lines("a@example.org", ["b@example.net"], lines)), Quit()),))
    result = check(f"{sys.executable} {BROKEN / 'good_raw.py'}", [dialect], scenarios=[sc], **FAST)
    assert result.rules() == {"legacy-truncation"}


def test_a_filter_that_dies_at_start_shows_its_last_words():
    # A usage error (or a traceback) at start: smtpd logs the filter's stderr,
    # then loses the processor and exits.
    result = check(f"{sys.executable} -c \"import sys; sys.exit('usage: bad flag -x')\"", ["0.6"], **FAST)
    (f,) = result.findings
    assert f.rule == "filter-exited" and f.severity == FATAL
    assert f.smtpd_log == ("filter: usage: bad flag -x", "warn: lost processor: filter exited abnormally", "Exiting")
    assert result.exit_status == 1
