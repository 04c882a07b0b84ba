"""``python -m smtpd_filter_sdk.testing.demo`` (``make demo``): the example
filters (and the production filters that declare a demo) against simulated
smtpd sessions, no smtpd needed.

For each filter: a short transcript (what the client sends, what the filter
decides, what smtpd answers, which headers the filter added), then the
verdict of ``smtpd-filter-check`` on every released protocol dialect.  Last,
a naive hand-written filter shows what the checker catches.

A production filter module in ``smtpd_filters`` takes part by defining
``DEMO = {"args": [...], "env": {...}}`` (it is then run as
``python -m smtpd_filters.NAME ARGS``); ``"files": {name: text}`` are written
to a fresh directory first, and ``{tmp}`` in ARGS is that directory.  An
example may define ``DEMO`` too (read from its source, not imported), with
``"zone"``: DNS data (the ``Zone.from_dict`` format) that a loopback DNS
server answers during its demo, at the address ``{dns}`` in its args stands
for.  Extra filter command lines can be
given as arguments: ``python -m smtpd_filter_sdk.testing.demo "python3 my.py"``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import pkgutil
import shlex
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import smtpd_filter_sdk

from .checker import RELEASED_DIALECTS, check
from .harness import SubprocessHarness, default_name
from .scenarios import builtin_scenarios
from .simulator import FATAL, HANG, WARN, MessageResult, Step

PACKAGE_ROOT = Path(smtpd_filter_sdk.__file__).resolve().parent.parent


@dataclass
class DemoFilter:
    title: str
    command: str
    description: str = ""
    env: dict[str, str] = field(default_factory=dict)
    zone: dict | None = None  # DNS data for a loopback server; "{dns}" in the command is its address


def _first_doc_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    for quote in ('"""', "'''"):
        if quote in text:
            body = text.split(quote, 2)[1].strip()
            return body.splitlines()[0] if body else ""
    return ""


def _example_demo(path: Path) -> dict:
    """An example's ``DEMO = {...}``, read without running the script."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["DEMO"]:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def discover(extra: Sequence[str] = ()) -> list[DemoFilter]:
    """examples/*.py next to the package, production filters with a DEMO,
    and any extra command lines."""
    env = {"PYTHONPATH": str(PACKAGE_ROOT)}
    out: list[DemoFilter] = []
    examples = PACKAGE_ROOT / "examples"
    if examples.is_dir():
        for path in sorted(examples.glob("*.py")):
            if path.name.startswith("_"):
                continue
            demo = _example_demo(path)
            command = shlex.join([sys.executable, str(path), *demo.get("args", [])])
            out.append(DemoFilter(f"examples/{path.name}", command, _first_doc_line(path), env, demo.get("zone")))
    try:
        package = importlib.import_module("smtpd_filters")
    except ImportError:
        package = None
    if package is not None:
        for info in pkgutil.iter_modules(package.__path__):
            try:
                module = importlib.import_module(f"smtpd_filters.{info.name}")
            except Exception:  # noqa: BLE001 - a filter with missing extras is simply not shown
                continue
            demo = getattr(module, "DEMO", None)
            if not isinstance(demo, dict):
                continue
            args = list(demo.get("args", []))
            if demo.get("files"):
                tmp = Path(tempfile.mkdtemp(prefix=f"demo-{info.name}-"))
                for fname, text in demo["files"].items():
                    (tmp / fname).write_text(text)
                args = [a.replace("{tmp}", str(tmp)) for a in args]
            command = shlex.join([sys.executable, "-m", f"smtpd_filters.{info.name}", *args])
            out.append(DemoFilter(f"smtpd_filters.{info.name}", command, _first_doc_line(Path(module.__file__ or "")), {**env, **demo.get("env", {})}))
    for command in extra:
        out.append(DemoFilter(default_name(command), command, "", env))
    return out


# --------------------------------------------------------------------------
# Printing


def _step_line(step: Step, said: str | None = None) -> str:
    said = said or step.command
    decided = f"filter: {step.decision}" if step.decision.asked else ""
    answered = step.reply or ""
    if step.hung:
        answered = "(no answer: the session hangs)"
    parts = [f"C: {said:<38}"]
    if decided:
        parts.append(f"{decided}")
    if answered:
        parts.append(f"S: {answered}")
    return "   " + "  ->  ".join(parts)


def _message_lines(msg: MessageResult) -> list[str]:
    out = []
    for step in msg.steps:
        said = f"DATA + {len(msg.input_lines)} lines" if step.command == "DATA" and msg.input_lines else None
        out.append(_step_line(step, said))
    for header in msg.headers_added():
        out.append(f"        + header added:   {header[:100]}")
    for header in msg.headers_removed():
        out.append(f"        - header removed: {header[:100]}")
    return out


def _print(text: str = "") -> None:
    print(text, flush=True)


def demo_sessions(h: SubprocessHarness) -> list[str]:
    """A few sessions a reader can follow; returns the transcript lines."""
    lines: list[str] = []

    s = h.session(src="192.0.2.10", rdns="mail.example.org")
    lines.append(f"session 1: a client from 192.0.2.10 (mail.example.org) connects  ->  S: {s.connect.reply if s.connect else ''}")
    step = s.ehlo("localhost")
    lines.append(_step_line(step))
    if not step.ok and not s.closed:
        lines.append(_step_line(s.ehlo("mail.example.org")))
    msg = s.send_message(
        "alice@example.org",
        ["bob@example.net"],
        headers={"From": "Alice <alice@example.org>", "To": "<bob@example.net>", "Subject": "lunch?", "X-Filtered-By": "forged"},
        body=b"Shall we?\n.\n..a dot line\n",
    )
    lines.extend(_message_lines(msg))
    if not s.closed:
        lines.append(_step_line(s.quit()))

    s = h.session(src="203.0.113.9", rdns="<unknown>", fcrdns="fail")
    lines.append(f"session 2: a client without reverse DNS (203.0.113.9)  ->  S: {s.connect.reply if s.connect else ''}")
    if not s.closed:
        lines.append(_step_line(s.ehlo("[203.0.113.9]")))
    if not s.closed:
        msg = s.send_message("x|y@example.com", ["a@example.net", "b@example.net"], body="8-bit: Grüße\n")
        lines.extend(_message_lines(msg))
    if not s.closed:
        lines.append(_step_line(s.quit()))
    return lines


@contextlib.contextmanager
def _dns_for(f: DemoFilter):
    """The filter's command, with a loopback DNS server for its zone if it has one."""
    if f.zone is None:
        yield f.command
        return
    from .dnsserver import DNSServer, Zone

    with DNSServer(Zone.from_dict(f.zone)) as srv:
        yield f.command.replace("{dns}", f"127.0.0.1:{srv.port}")


def run_demo(f: DemoFilter, *, hang_timeout: float = 5.0) -> bool:
    with _dns_for(f) as command:
        return _run_demo(f, command, hang_timeout)


def _run_demo(f: DemoFilter, command: str, hang_timeout: float) -> bool:
    _print("=" * 78)
    _print(f"{f.title}" + (f" - {f.description}" if f.description else ""))
    _print("-" * 78)
    with SubprocessHarness(command, "0.6", env_extra=f.env, hang_timeout=hang_timeout, fail_on=()) as h:
        registered = ", ".join(sorted(h.phases)) or "no filter phase"
        _print(f"registers: {registered}")
        if h.dead is None:
            try:
                for line in demo_sessions(h):
                    _print(line)
            except RuntimeError:
                pass
    for log in h.stderr[:6]:
        _print(f"   smtpd log: {h.sim.name}: {log[:110]}")
    for finding in h.findings:
        if finding.severity in (FATAL, HANG):
            _print("   " + finding.format().replace("\n", "\n   "))
    result = check(command, RELEASED_DIALECTS, env_extra=f.env, hang_timeout=hang_timeout, out=None)
    _print("verdict of smtpd-filter-check (built-in sessions, every released dialect):")
    for r in result.results:
        rules = sorted({x.rule for x in r.findings if x.severity in (FATAL, HANG)})
        warns = sorted({x.rule for x in r.findings if x.severity == WARN})
        detail = ", ".join(rules) if rules else "no fatal or hang"
        if warns:
            detail += f"; warnings: {', '.join(warns)}"
        _print(f"   {'FAIL' if r.failed else 'PASS'}  {r.dialect:<8} {r.sessions} sessions, {detail}")
    _print()
    return not result.failed


NAIVE_FILTER = '''\
    """What many hand-written filters look like (do not copy)."""
    import sys

    for line in sys.stdin:
        fields = line.rstrip("\\n").split("|")
        if line.startswith("config|ready"):
            print("register|filter|smtp-in|rcpt-to", flush=True)
            print("register|filter|smtp-in|data-line", flush=True)
            print("register|ready", flush=True)
        elif fields[0] == "filter" and fields[4] == "data-line":
            print("filter-dataline|%s|%s|%s" % (fields[5], fields[6], fields[7]), flush=True)
        elif fields[0] == "filter":
            print("filter-result|%s|%s|proceed" % (fields[5], fields[6]), flush=True)
'''


def run_naive() -> None:
    _print("=" * 78)
    _print("a naive 12-line filter (the way many are written by hand)")
    _print("-" * 78)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "naive.py"
        path.write_text(textwrap.dedent(NAIVE_FILTER))
        for line in textwrap.dedent(NAIVE_FILTER).splitlines()[1:]:
            _print("   | " + line)
        scenarios = [sc for sc in builtin_scenarios(0) if sc.name in ("plain", "long-lines")]
        result = check(shlex.join([sys.executable, str(path)]), ("0.4", "0.6"), scenarios=scenarios, hang_timeout=0.5, out=None)
    for r in result.results:
        _print(f"   {'FAIL' if r.failed else 'PASS'}  protocol {r.dialect}:")
        seen = set()
        for x in r.findings:
            if x.rule in seen:
                continue
            seen.add(x.rule)
            _print(f"      {x.severity} {x.rule}: {x.message[:150]}")
            for log in x.smtpd_log[:1]:
                _print(f"         smtpd logs: {log[:120]}")
    _print()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smtpd_filter_sdk.testing.demo", description=__doc__.splitlines()[0])
    parser.add_argument("commands", nargs="*", help="more filter command lines to demo")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive filter at the end")
    args = parser.parse_args(argv)
    filters = discover(args.commands)
    if not filters:
        _print("no example filters found (examples/ is next to the package in a source checkout)")
    ok = True
    for f in filters:
        ok = run_demo(f) and ok
    if not args.no_naive:
        run_naive()
    _print("all demo filters pass" if ok else "some demo filters FAIL (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
