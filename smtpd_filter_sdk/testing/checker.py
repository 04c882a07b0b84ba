"""smtpd-filter-check: run a filter the way smtpd runs it and judge every line
it writes the way smtpd would.

    smtpd-filter-check [options] -- COMMAND [ARGS...]
    smtpd-filter-check --dialect all "python3 /path/to/filter.py -flag"

The filter is started like OpenSMTPD starts a ``proc-exec`` filter
(``/bin/sh -c "exec COMMAND"``, stdin and stdout on one AF_UNIX socketpair,
stderr on another, a new session, PATH and LANG only in the environment),
gets the handshake of the chosen dialect, registers, and is then driven
through simulated SMTP sessions (a seeded built-in set, ``--fuzz N`` streams
from the hypothesis strategies, and/or ``--replay FILE`` recordings).

Findings:

* FATAL: smtpd would exit (all mail stops): a line it cannot parse, a rule of
  the protocol broken, the filter exiting.
* HANG: a session or the whole smtpd would stall: an answer never sent or
  sent where smtpd ignores it, a missing final ``.``, a line over 65,535
  bytes, no ``register|ready``.
* WARN: smtpd goes on but not as the author meant: output cut at 2,047 bytes
  before 7.4, a reply text it replaces with ``421``, an event registered
  twice, a rewrite that fails the command...

Each finding shows what smtpd would log.  After a FATAL (smtpd gone) the
checker restarts the filter and goes on with the next scenario, so one run
shows every distinct problem.  The exit status is 1 when there is a FATAL or
HANG finding, 0 otherwise (2: usage error).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TextIO

from .harness import SMTPD_ENV, SubprocessHarness, default_name
from .scenarios import Scenario, builtin_scenarios, eof_sessions
from .simulator import FATAL, HANG, WARN, Finding
from .wire import DIALECTS

#: ``check(out=STDOUT)``: print to whatever sys.stdout is at the time.
STDOUT = object()

#: The dialects ``--dialect all`` means (every released one).
RELEASED_DIALECTS = ("0.4", "0.6", "0.7", "0.7/7.6")


@dataclass
class DialectResult:
    dialect: str
    findings: list[Finding] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)
    registration: list[bytes] = field(default_factory=list)
    restarts: int = 0
    sessions: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(f.severity in (FATAL, HANG) for f in self.findings)

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)


@dataclass
class CheckResult:
    command: str
    results: list[DialectResult] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.results for f in r.findings]

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.results)

    @property
    def exit_status(self) -> int:
        return 1 if self.failed else 0

    def rules(self, severity: str | None = None) -> set[str]:
        return {f.rule for f in self.findings if severity is None or f.severity == severity}


def load_capture(path: str | Path) -> tuple[list[bytes], list[bytes], str]:
    """A capture (raw smtpd->filter bytes, as in shared/captures): its config
    lines, the other lines, and the dialect it was recorded with."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    config = [x for x in lines if x.startswith(b"config|")]
    body = [x for x in lines if not x.startswith(b"config|")]
    version = "0.6"
    for line in body:
        parts = line.split(b"|", 2)
        if len(parts) >= 2 and parts[0] in (b"report", b"filter"):
            version = parts[1].decode("ascii", "replace")
            break
    if any(x.startswith(b"config|protocol|") for x in config):
        dialect = "0.7/7.6"
    elif version in DIALECTS:
        dialect = version
    else:
        dialect = "0.6"
    return config, body, dialect


class _Printer:
    def __init__(self, out: TextIO | None | object, verbosity: int) -> None:
        self.out = sys.stdout if out is STDOUT else out
        self.verbosity = verbosity

    def __call__(self, text: str, level: int = 1) -> None:
        if self.out is not None and self.verbosity >= level:
            print(text, file=self.out, flush=True)


def check(
    command: str | Sequence[str],
    dialects: Sequence[str] = ("0.6",),
    *,
    scenarios: Sequence[Scenario] | None = None,
    builtin: bool = True,
    replay: Sequence[str | Path] = (),
    rewrite_version: bool = False,
    fuzz: int = 0,
    seed: int = 0,
    hang_timeout: float = 10.0,
    quiet_time: float = 0.03,
    exit_timeout: float = 3.0,
    env: dict[str, str] | None = None,
    env_extra: dict[str, str] | None = None,
    cwd: str | None = None,
    name: str | None = None,
    smtp_out: bool = False,
    max_restarts: int = 8,
    out: TextIO | None | object = None,
    verbosity: int = 1,
) -> CheckResult:
    """Check a filter command for each dialect; see the module docstring.
    ``out``: where to print (None: nowhere, ``STDOUT``: sys.stdout);
    ``verbosity``: 0 findings and verdict only, 1 transcript too, 2 also
    the filter's stderr as smtpd would log it."""
    command_text = command if isinstance(command, str) else shlex.join(command)
    name = name or default_name(command_text)
    say = _Printer(out, verbosity)
    result = CheckResult(command_text)
    if scenarios is None:
        scenarios = builtin_scenarios(seed) if builtin else []
    for dialect in dialects:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; one of {', '.join(DIALECTS)}")
        d = _check_dialect(
            command_text, dialect, list(scenarios), list(replay), rewrite_version, fuzz, seed,
            hang_timeout, quiet_time, exit_timeout, env, env_extra, cwd, name, smtp_out, max_restarts, say,
        )
        result.results.append(d)
    _summary(result, say)
    return result


def _check_dialect(
    command: str,
    dialect: str,
    scenarios: list[Scenario],
    replays: list[str | Path],
    rewrite_version: bool,
    fuzz: int,
    seed: int,
    hang_timeout: float,
    quiet_time: float,
    exit_timeout: float,
    env: dict[str, str] | None,
    env_extra: dict[str, str] | None,
    cwd: str | None,
    name: str,
    smtp_out: bool,
    max_restarts: int,
    say: _Printer,
) -> DialectResult:
    started = time.monotonic()
    res = DialectResult(dialect)
    smtpd = DIALECTS[dialect]["smtpd"]
    say(f"\n=== {name}: protocol {dialect} (as OpenSMTPD {smtpd}) ===", 0)
    say(f"command: /bin/sh -c {shlex.quote('exec ' + command)}", 1)

    def on_finding(f: Finding) -> None:
        res.findings.append(f)
        say("!! " + f.format().replace("\n", "\n   "), 0)

    def on_stderr(line: str) -> None:
        res.stderr.append(line)
        say(f"     log {name}: {line}", 2)

    def on_note(text: str) -> None:
        res.transcript.append(text)
        say(text, 1)

    def launch(dialect_: str = dialect, handshake: Sequence[bytes] | None = None) -> SubprocessHarness:
        return SubprocessHarness(
            command,
            dialect_,
            env=env,
            env_extra=env_extra,
            cwd=cwd,
            exit_timeout=exit_timeout,
            on_stderr=on_stderr,
            name=name,
            hang_timeout=hang_timeout,
            quiet_time=quiet_time,
            seed=seed,
            smtp_out=smtp_out,
            fail_on=(),
            handshake=handshake,
            on_note=on_note,
            on_finding=on_finding,
        )

    def finish(h: SubprocessHarness) -> None:
        h.close()
        if not res.registration:
            res.registration = list(h.registration)

    jobs: list[tuple[str, Callable[[SubprocessHarness], int]]] = []
    for sc in scenarios:
        jobs.append((f"scenario {sc.name}: {sc.description}", lambda hh, sc=sc: len(hh.run(*sc.sessions))))
    if fuzz:
        jobs.append((f"fuzz: {fuzz} generated streams (seed {seed})", lambda hh: _fuzz(hh, fuzz, seed, dialect)))

    if jobs or not replays:
        # One filter process for all jobs; after a FATAL (or a jam) a new one,
        # as an admin restarting smtpd would, and on with the next job.
        h = launch()
        if h.dead is not None:
            say("(the filter never got past registration: nothing else can be checked)", 0)
            jobs = []
        for title, job in jobs:
            if h.dead is not None:
                if res.restarts >= max_restarts:
                    say(f"(stopping: the filter was restarted {res.restarts} times)", 0)
                    break
                say("-- smtpd would have gone down here; restarting the filter to go on --", 0)
                finish(h)
                res.restarts += 1
                h = launch()
                if h.dead is not None:
                    break
            say(f"\n-- {title}", 1)
            res.sessions += job(h)
        if h.dead is None:
            # Last: smtpd goes away (EOF) while requests and a whole message
            # are in flight; the filter must answer them before it exits.
            say("\n-- eof: three sessions in flight when stdin closes", 1)
            res.sessions += len(h.eof_in_flight(*eof_sessions(seed)))
        finish(h)

    for path in replays:
        config, body, recorded = load_capture(path)
        if rewrite_version:
            rdialect, handshake = dialect, None
        else:
            rdialect, handshake = recorded, config or None
        say(f"\n-- replay {path} (recorded as {recorded}{', sent as ' + dialect if rewrite_version else ''})", 0)
        hr = launch(rdialect, handshake)
        if rewrite_version:
            hr.sim.rewrite_version = dialect
        if hr.dead is None:
            res.sessions += len(hr.replay(body))
        finish(hr)
    res.seconds = time.monotonic() - started
    return res


def _fuzz(h: SubprocessHarness, count: int, seed: int, dialect: str) -> int:
    """Replay ``count`` streams drawn from the hypothesis strategies (if that
    module and hypothesis are available) through the running filter."""
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hseed

        from . import strategies as sst
    except ImportError as exc:
        h.sim.note(None, "!", f"fuzzing skipped: {exc}")
        return 0
    registered = (set(h.sim.reports), set(h.sim.phases))
    strategy = sst.streams(dialect=dialect, registered=registered, smtp_out=h.sim.wire.smtp_out)
    sessions = 0

    @hseed(seed)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def one(stream: "sst.Stream") -> None:
        nonlocal sessions
        if h.dead is not None:
            return
        lines = [line.raw for line in stream.lines if line.kind != "config"]
        sessions += len(h.replay(lines))

    one()
    return sessions


def _summary(result: CheckResult, say: _Printer) -> None:
    say("\n=== verdict ===", 0)
    for r in result.results:
        fatal, hang, warn = r.count(FATAL), r.count(HANG), r.count(WARN)
        verdict = "FAIL" if r.failed else "PASS"
        extra = f", restarted {r.restarts}x" if r.restarts else ""
        say(
            f"{verdict}  protocol {r.dialect:<8} {fatal} fatal, {hang} hang, {warn} warn "
            f"({r.sessions} sessions, {r.seconds:.1f}s{extra})",
            0,
        )
        seen: set[tuple[str, str]] = set()
        for f in r.findings:
            if (f.severity, f.rule) in seen:
                continue
            seen.add((f.severity, f.rule))
            n = sum(1 for g in r.findings if (g.severity, g.rule) == (f.severity, f.rule))
            more = f" (x{n})" if n > 1 else ""
            say(f"      {f.severity} {f.rule}{more}: {f.message}", 0)
            for text in f.smtpd_log:
                say(f"           smtpd logs: {text}", 0)


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    """The ``smtpd-filter-check`` command; returns the exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="smtpd-filter-check",
        description="Run an OpenSMTPD proc-exec filter the way smtpd does and report what would kill or stall smtpd.",
        epilog="Exit status: 1 if any FATAL or HANG finding, 0 otherwise, 2 on usage errors.",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the filter command line (as in smtpd.conf's proc-exec)")
    parser.add_argument(
        "-d", "--dialect", action="append", choices=[*DIALECTS, "all"],
        help="protocol dialect to speak (repeatable; 'all' = 0.4, 0.6, 0.7, 0.7/7.6); default 0.6",
    )
    parser.add_argument("--replay", action="append", default=[], metavar="FILE", help="replay a capture (raw smtpd->filter bytes); repeatable")
    parser.add_argument("--rewrite-version", action="store_true", help="send replayed captures in --dialect instead of their recorded version")
    parser.add_argument("--no-builtin", action="store_true", help="skip the built-in sessions")
    parser.add_argument("--fuzz", type=int, default=0, metavar="N", help="also replay N streams from the hypothesis strategies")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in sessions and of --fuzz (default 0)")
    parser.add_argument("--hang-timeout", type=float, default=10.0, metavar="S", help="seconds before an unanswered request is a HANG (default 10)")
    parser.add_argument("--exit-timeout", type=float, default=3.0, metavar="S", help="seconds the filter gets to exit after EOF (default 3)")
    parser.add_argument("--name", help="filter name as in smtpd.conf (for log lines); default: the script's name")
    parser.add_argument("--env", action="append", type=_env_pair, default=[], metavar="KEY=VALUE", help="add to the filter's environment (default: PATH and LANG only)")
    parser.add_argument("--inherit-env", action="store_true", help="give the filter this process's whole environment")
    parser.add_argument("--cwd", help="working directory of the filter")
    parser.add_argument("--smtp-out", action="store_true", help="announce config|subsystem|smtp-out")
    parser.add_argument("-q", "--quiet", action="store_true", help="findings and verdict only")
    parser.add_argument("-v", "--verbose", action="store_true", help="also show the filter's stderr (as smtpd logs it)")
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no filter command given")
    command_text = command[0] if len(command) == 1 else shlex.join(command)
    dialects: list[str] = []
    for d in args.dialect or ["0.6"]:
        for x in RELEASED_DIALECTS if d == "all" else [d]:
            if x not in dialects:
                dialects.append(x)
    for path in args.replay:
        if not Path(path).is_file():
            parser.error(f"--replay: no such file: {path}")
    env = None
    if args.inherit_env:
        import os

        env = dict(os.environ)
    result = check(
        command_text,
        dialects,
        builtin=not args.no_builtin,
        replay=args.replay,
        rewrite_version=args.rewrite_version,
        fuzz=args.fuzz,
        seed=args.seed,
        hang_timeout=args.hang_timeout,
        exit_timeout=args.exit_timeout,
        env=env,
        env_extra=dict(args.env) or None,
        cwd=args.cwd,
        name=args.name,
        smtp_out=args.smtp_out,
        verbosity=0 if args.quiet else (2 if args.verbose else 1),
        out=STDOUT,
    )
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["CheckResult", "DialectResult", "RELEASED_DIALECTS", "SMTPD_ENV", "STDOUT", "check", "load_capture", "main"]
