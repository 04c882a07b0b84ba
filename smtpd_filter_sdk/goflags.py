"""Go-style command-line flags, as the Go filters (poolpOrg's) parse them.

    flags = GoFlags("py-filter-senderscore", "SenderScore reputation filter")
    flags.int("blockBelow", -1, "disconnect clients scoring below N", metavar="N")
    flags.bool("scoreHeader", False, "add X-SenderScore: N to every message")
    flags.string("allowlist", "", "file of IPs/CIDRs never scored", aliases=["whitelist"])
    opts = flags.parse(sys.argv[1:])     # a bad flag: one line on stderr, exit 2
    opts.blockBelow, opts.scoreHeader, opts.allowlist

Accepted like Go's ``flag`` package: ``-name value``, ``-name=value``,
``--name`` forms; booleans as ``-name`` or ``-name=true|false`` (``1 0 t f T F
true false TRUE FALSE True False``); parsing stops at ``--`` or the first
argument that is not a flag.  Unlike Go, names are matched exactly (no
abbreviations), stray positional arguments are an error unless allowed, and
every error is a *single* line (smtpd copies a filter's stderr into the mail
log line by line): ``prog: flag provided but not defined: -x (usage: prog
[-a N] [-b] ...)`` and exit status 2.  ``-h``/``-help`` prints the full usage
and exits 0 (``-h`` only while no flag of that name is defined, as in Go: a
filter whose anchor has ``-h headers`` defines it).  ``flags.strings(...)``
is a repeatable flag (``-d a -d b``), collected in order into a list.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Sequence

__all__ = ["GoFlags", "Options", "UsageError"]

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


class UsageError(Exception):
    """A command line that cannot be used (the message is one line)."""


@dataclass
class _Flag:
    name: str
    kind: str  # int | float | string | bool | choice
    default: Any
    help: str
    metavar: str
    choices: tuple[str, ...] = ()
    validate: Callable[[Any], Any] | None = None
    aliases: tuple[str, ...] = ()
    hidden: bool = False


class Options:
    """Parsed flags as attributes; ``given`` holds the names set explicitly."""

    def __init__(self) -> None:
        self.given: set[str] = set()
        self.args: list[str] = []

    def __repr__(self) -> str:
        items = {k: v for k, v in vars(self).items() if k not in ("given", "args")}
        return f"Options({items}, args={self.args})"


@dataclass
class GoFlags:
    prog: str
    description: str = ""
    positional: str | None = None  # e.g. "[zone:weight ...]"; None: none allowed
    _flags: dict[str, _Flag] = field(default_factory=dict)
    _order: list[_Flag] = field(default_factory=list)

    # -- declaring -------------------------------------------------------

    def _add(self, flag: _Flag) -> None:
        for name in (flag.name, *flag.aliases):
            if not name or name.startswith("-") or "=" in name:
                raise ValueError(f"bad flag name {name!r}")
            if name in self._flags or name == "help":
                raise ValueError(f"flag -{name} defined twice")
            self._flags[name] = flag
        self._order.append(flag)

    def int(self, name: str, default: int, help: str, *, metavar: str = "N", **kw: Any) -> None:
        self._add(_Flag(name, "int", default, help, metavar, **kw))

    def float(self, name: str, default: float, help: str, *, metavar: str = "SECONDS", **kw: Any) -> None:
        self._add(_Flag(name, "float", default, help, metavar, **kw))

    def string(self, name: str, default: str, help: str, *, metavar: str = "VALUE", **kw: Any) -> None:
        self._add(_Flag(name, "string", default, help, metavar, **kw))

    def strings(self, name: str, help: str, *, metavar: str = "VALUE", **kw: Any) -> None:
        """Repeatable: every occurrence adds its value to a list (default [])."""
        self._add(_Flag(name, "strings", (), help, metavar, **kw))

    def bool(self, name: str, default: bool, help: str, **kw: Any) -> None:
        self._add(_Flag(name, "bool", default, help, "", **kw))

    def choice(self, name: str, default: str, choices: Sequence[str], help: str, **kw: Any) -> None:
        metavar = kw.pop("metavar", "|".join(choices))
        self._add(_Flag(name, "choice", default, help, metavar, tuple(choices), **kw))

    # -- usage -----------------------------------------------------------

    def synopsis(self) -> str:
        parts = []
        for flag in self._order:
            if flag.hidden:
                continue
            more = " ..." if flag.kind == "strings" else ""
            parts.append(f"[-{flag.name}]" if flag.kind == "bool" else f"[-{flag.name} {flag.metavar}{more}]")
        if self.positional:
            parts.append(self.positional)
        return " ".join([self.prog, *parts])

    def usage(self) -> str:
        lines = [f"usage: {self.synopsis()}"]
        if self.description:
            lines += ["", self.description]
        lines.append("")
        for flag in self._order:
            if flag.hidden:
                continue
            head = f"  -{flag.name}" + (f" {flag.metavar}" if flag.kind != "bool" else "")
            lines.append(head)
            text = flag.help
            if flag.kind == "choice" and flag.metavar != "|".join(flag.choices):
                text += ": " + ", ".join(flag.choices)
            if flag.aliases:
                text += " (also -" + ", -".join(flag.aliases) + ")"
            if flag.kind == "strings":
                text += " (repeatable)"
            elif flag.kind != "bool" and flag.default not in ("", None):
                text += f" (default {flag.default})"
            lines.append(f"        {text}")
        return "\n".join(lines)

    # -- parsing ---------------------------------------------------------

    def parse_or_raise(self, argv: Sequence[str]) -> Options:
        """Parse ``argv`` (without the program name); UsageError if bad.
        ``-h``/``-help`` raises SystemExit(0) after printing the usage."""
        opts = Options()
        for flag in self._order:
            setattr(opts, flag.name, [] if flag.kind == "strings" else flag.default)
        args = list(argv)
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                i += 1
                break
            if len(arg) < 2 or not arg.startswith("-"):
                break
            body = arg[2:] if arg.startswith("--") else arg[1:]
            if not body or body.startswith("-") or body.startswith("="):
                raise UsageError(f"bad flag syntax: {arg}")
            name, eq, value = body.partition("=")
            if name == "help" or (name == "h" and "h" not in self._flags):
                print(self.usage(), file=sys.stderr)
                raise SystemExit(0)
            flag = self._flags.get(name)
            if flag is None:
                raise UsageError(f"flag provided but not defined: -{name}")
            i += 1
            if flag.kind == "bool":
                if eq:
                    if value in _TRUE:
                        parsed: Any = True
                    elif value in _FALSE:
                        parsed = False
                    else:
                        raise UsageError(f'invalid boolean value "{value}" for -{name}')
                else:
                    parsed = True
            else:
                if not eq:
                    if i >= len(args):
                        raise UsageError(f"flag needs an argument: -{name}")
                    value = args[i]
                    i += 1
                parsed = self._convert(flag, name, value)
            if flag.validate is not None:
                try:
                    result = flag.validate(parsed)
                except (ValueError, TypeError) as exc:
                    raise UsageError(f'invalid value "{value if flag.kind != "bool" else parsed}" for flag -{name}: {exc}') from None
                if result is not None:
                    parsed = result
            if flag.kind == "strings":
                parsed = [*getattr(opts, flag.name), parsed]
            setattr(opts, flag.name, parsed)
            opts.given.add(flag.name)
        opts.args = args[i:]
        if opts.args and self.positional is None:
            raise UsageError(f"unexpected argument {opts.args[0]!r}")
        return opts

    def _convert(self, flag: _Flag, name: str, value: str) -> Any:
        try:
            if flag.kind == "int":
                return int(value, 10)
            if flag.kind == "float":
                number = float(value)
                if number != number or number in (float("inf"), float("-inf")):
                    raise ValueError("not a finite number")
                return number
        except ValueError:
            raise UsageError(f'invalid value "{value}" for flag -{name}: parse error') from None
        if flag.kind == "choice" and value not in flag.choices:
            raise UsageError(f'invalid value "{value}" for flag -{name}: one of {", ".join(flag.choices)}')
        return value

    def parse(self, argv: Sequence[str] | None = None) -> Options:
        """Parse, or exit 2 with a one-line error on stderr."""
        try:
            return self.parse_or_raise(sys.argv[1:] if argv is None else argv)
        except UsageError as exc:
            self.fail(str(exc))

    def fail(self, message: str) -> NoReturn:
        """One line on stderr (``prog: message (usage: …)``), exit status 2."""
        line = f"{self.prog}: {message} (usage: {self.synopsis()})"
        print(line.replace("\n", " "), file=sys.stderr, flush=True)
        raise SystemExit(2)


# -- validators shared by the filters' flags ------------------------------------


def lookup_timeout(value: float) -> float:
    """A per-lookup deadline in seconds: positive, and far below any SMTP
    client's patience."""
    if not 0 < value <= 60:
        raise ValueError("between 0 and 60 seconds")
    return value


def non_negative(value: float) -> float:
    if value < 0:
        raise ValueError("must not be negative")
    return value


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(value: str) -> float:
    """A Go-style duration (``24h``, ``1h30m``, ``90s``, ``500ms``; ``d`` for
    days too; a bare number is seconds) as seconds.  Use as a string flag's
    ``validate``: the option then holds the float, the usage shows the text."""
    import re

    text = value.strip()
    if not text:
        raise ValueError("empty duration")
    try:
        seconds = float(text)
    except ValueError:
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError("not a duration like 24h, 90m, 1h30m or 45s") from None
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError("must be a finite duration, not negative")
    return seconds
