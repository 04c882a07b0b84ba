"""Trap address lists for py-filter-spamtraps.

One entry per line, ``#`` comment lines and blank lines skipped:

    trap@example.org              an exact address
    *@honeypot.example.org        every local part at that domain (not below it)
    /^old-[0-9]+@example\\.org$/i  a regex, rspamd map syntax: /PATTERN/FLAGS

Domains compare case-insensitively (``trap@EXAMPLE.org`` is
``trap@example.org``); local parts compare exactly, as RFC 5321 says they may
be case-sensitive.  A regex is matched (``re.search``) against the address
with its domain lower-cased; flags ``i m s x`` are Python's, ``u`` is
accepted and means nothing (Python's patterns are Unicode already).  Exact
and wildcard lines may end in ``  # comment``; regex lines may not (``#`` can
be part of a pattern), so a regex line ends with its ``/FLAGS``.

A bad line is a :class:`~smtpd_filter_sdk.netaddr.ListFileError` naming
``file:line``; several files are read as one list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from smtpd_filter_sdk.netaddr import ListFileError, _read_text, read_list

__all__ = ["ListFileError", "TrapList", "normalize_address", "parse_entry"]

_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}
_REGEX_LINE = re.compile(r"^/(?P<pattern>.*)/(?P<flags>[A-Za-z]*)\s*$", re.DOTALL)
_DOMAIN = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")
_LOCAL_BAD = re.compile(r"[\s<>,;]")


def normalize_address(address: str) -> str | None:
    """``local@domain`` as the list compares it (angle brackets and a
    trailing dot dropped, domain lower-cased), or None when it has no ``@``
    or an empty part (``<>``, postmaster without a domain)."""
    a = address.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1].strip()
    local, at, domain = a.rpartition("@")
    domain = domain.rstrip(".").lower()
    if not at or not local or not domain:
        return None
    return f"{local}@{domain}"


def _check_domain(domain: str) -> str:
    d = domain.rstrip(".").lower()
    if len(d) > 253 or not _DOMAIN.match(d):
        raise ValueError(f"not a domain name: {domain!r}")
    return d


@dataclass(frozen=True)
class Entry:
    kind: str  # exact | domain | regex
    value: str
    regex: re.Pattern[str] | None = None


def parse_entry(text: str) -> Entry:
    """One list line (comments already stripped for non-regex lines)."""
    if text.startswith("/"):
        m = _REGEX_LINE.match(text)
        if m is None:
            raise ValueError("a regex line is /PATTERN/FLAGS (nothing after the flags)")
        flags = 0
        for ch in m["flags"]:
            if ch not in _FLAGS:
                raise ValueError(f"unknown regex flag {ch!r} (known: {''.join(_FLAGS)})")
            flags |= _FLAGS[ch]
        if not m["pattern"]:
            raise ValueError("empty regex")
        try:
            rx = re.compile(m["pattern"], flags)
        except re.error as exc:
            raise ValueError(f"bad regex: {exc}") from None
        return Entry("regex", text.strip(), rx)
    text = text.split(" #", 1)[0].split("\t#", 1)[0].strip()
    local, at, domain = text.rpartition("@")
    if not at:
        raise ValueError("not an address (no @)")
    if not local:
        raise ValueError("empty local part")
    if local == "*":
        return Entry("domain", _check_domain(domain))
    if _LOCAL_BAD.search(local) or ("@" in local and not (local.startswith('"') and local.endswith('"'))):
        raise ValueError(f"bad local part {local!r}")
    return Entry("exact", f"{local}@{_check_domain(domain)}")


@dataclass
class TrapList:
    """Trap addresses: ``list.match(address)`` is the entry that matched
    (for the log, never for the client) or None."""

    exact: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    regexes: tuple[Entry, ...] = ()
    sources: tuple[str, ...] = field(default=())

    @classmethod
    def from_entries(cls, entries: Iterable[Entry], sources: Sequence[str] = ()) -> "TrapList":
        exact, domains, regexes = set(), set(), []
        for e in entries:
            if e.kind == "exact":
                exact.add(e.value)
            elif e.kind == "domain":
                domains.add(e.value)
            else:
                regexes.append(e)
        return cls(frozenset(exact), frozenset(domains), tuple(regexes), tuple(sources))

    @classmethod
    def parse(cls, lines: Iterable[str] | str, source: str = "<list>") -> "TrapList":
        if isinstance(lines, str):
            lines = lines.splitlines()
        # inline comments are the entry parser's business: '#' may be in a regex
        entries = read_list(lines, parse_entry, source, inline_comments=False)
        return cls.from_entries(entries, (source,))  # type: ignore[arg-type]

    @classmethod
    def load(cls, paths: Sequence[str]) -> "TrapList":
        """All files as one list; ListFileError names the bad file:line."""
        entries: list[Entry] = []
        for path in paths:
            entries.extend(read_list(_read_text(path), parse_entry, path, inline_comments=False))  # type: ignore[arg-type]
        return cls.from_entries(entries, tuple(paths))

    def match(self, address: str) -> str | None:
        a = normalize_address(address)
        if a is None:
            return None
        if a in self.exact:
            return a
        domain = a.rpartition("@")[2]
        if domain in self.domains:
            return f"*@{domain}"
        for e in self.regexes:
            assert e.regex is not None
            if e.regex.search(a):
                return e.value
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.domains) + len(self.regexes)
