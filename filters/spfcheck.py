"""SPF verdicts (RFC 7208) for filters: pyspf, off the event loop, with a hard deadline.

    from smtpd_filters.spfcheck import SpfChecker

    spf = SpfChecker(timeout=5.0, nameservers=["127.0.0.1:5353"])   # None: resolv.conf's
    result = await spf.check(ip, sender, helo)
    # 'pass' 'fail' 'softfail' 'neutral' 'none' 'temperror' 'permerror' or 'timeout'

    verdict = await spf.evaluate(ip, sender, helo)   # the same, with why
    verdict.result, verdict.identity, verdict.domain, verdict.explanation

Which identity is checked (RFC 7208 §2.3, §2.4, §4.3): the MAIL FROM domain; for
the null sender (``""`` or ``"<>"``) the HELO name, as ``postmaster@HELO``.
A domain that is malformed, a single label or an address literal
(``[192.0.2.1]``) cannot have SPF: ``none``, without asking DNS.

``timeout`` bounds the whole check - every lookup of every include, and any
wait for a free worker thread - not each lookup: past it ``check`` returns
``timeout``, and so does a check whose DNS lookup ran out of time (a server
that drops queries).  A DNS error that is an answer (SERVFAIL, REFUSED) is
``temperror``, as RFC 7208 §5 says.  Nothing raises: an unusable client
address is ``none`` and a crash inside pyspf ``temperror``, with the reason in
``explanation``; what a result means is the calling filter's policy.

Why this lives with the filters and not in the SDK: it needs pyspf, an
optional dependency (``pip install 'smtpd-filters[spf]'``), and the SDK core
stays free of those; the SDK pieces it needs (``HOST[:PORT]`` nameservers,
resolv.conf) are reused from ``smtpd_filter_sdk.dns``.

How pyspf is steered: pyspf is synchronous and asks DNS through its module
function ``spf.DNSLookup`` (the documented hook its own tests replace), which
with dnspython uses the process-wide default resolver.  This module puts a
dispatcher there once: in the worker threads of a :class:`SpfChecker` it
answers from that checker's own ``dns.resolver.Resolver`` (its nameservers,
and the time left before the check's deadline); any other caller of pyspf in
the process gets pyspf's own lookup, unchanged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import spf as pyspf

from smtpd_filter_sdk.dns import parse_nameserver, system_nameservers

__all__ = ["RESULTS", "SpfChecker", "SpfVerdict", "spf_identity"]

#: Every value :meth:`SpfChecker.check` returns.
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "timeout")

#: Checks running at once per checker; more wait for a thread (inside their deadline).
WORKERS = 8

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SpfVerdict:
    """``result`` (one of :data:`RESULTS`); ``identity``: ``mailfrom`` or
    ``helo``; ``domain``: the domain checked (None if there was none);
    ``explanation``: pyspf's text, or why there is no verdict."""

    result: str
    identity: str
    domain: str | None
    explanation: str = ""


def _valid_domain(domain: str) -> bool:
    """A multi-label DNS name (RFC 7208 §4.3); not an address literal."""
    name = domain.rstrip(".")
    if not name or len(name) > 253 or "." not in name or name.startswith("["):
        return False
    labels = name.split(".")
    if labels[-1].isdigit():
        return False  # 192.0.2.1 is an address, not a domain
    return all(_LABEL.match(label) for label in labels)


def spf_identity(sender: str, helo: str) -> tuple[str, str, str]:
    """``(identity, sender for pyspf, domain)`` for a MAIL FROM and a HELO.

    ``<alice@example.com>`` -> ``("mailfrom", "alice@example.com", "example.com")``;
    the null sender ``<>`` -> ``("helo", "", HELO)``; a sender without a local
    part is ``postmaster`` there (RFC 7208 §4.3, done by pyspf)."""
    s = sender.strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1].strip()
    h = helo.strip().rstrip(".")
    if not s:
        return "helo", "", h
    domain = s.rpartition("@")[2] if "@" in s else s
    return "mailfrom", s, domain.rstrip(".")


# --------------------------------------------------------------------------
# pyspf's DNS, per checker


class _DeadlineExceeded(pyspf.TempError):
    """A lookup found no time left, or ran out of it: the check timed out."""


@dataclass
class _Context:
    resolver: dns.resolver.Resolver
    deadline: float  # time.monotonic()
    timed_out: bool = False

    def lookup(self, name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
        """Answers in the shape pyspf's own dnspython lookup returns them."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.timed_out = True
            raise _DeadlineExceeded(f"DNS {qtype} {name}: no time left")
        try:
            answer = self.resolver.resolve(
                name, qtype, lifetime=remaining, raise_on_no_answer=False, search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            self.timed_out = True
            raise _DeadlineExceeded(f"DNS {qtype} {name}: no answer in time") from None
        except dns.resolver.NoNameservers:
            raise pyspf.TempError(f"DNS {qtype} {name}: server failure") from None
        except dns.exception.DNSException as exc:
            raise pyspf.TempError(f"DNS {qtype} {name}: {exc.__class__.__name__}") from None
        out: list[tuple[tuple[str, str], Any]] = []
        if answer.rrset is None:
            return out
        for rd in answer.rrset:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rd.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rd.preference, rd.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rd.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rd.strings))
        return out


_local = threading.local()
_pyspf_lookup = pyspf.DNSLookup


def _dispatch(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    ctx: _Context | None = getattr(_local, "ctx", None)
    if ctx is None:  # not one of our checks: pyspf's own lookup
        return _pyspf_lookup(name, qtype, strict, timeout)
    return ctx.lookup(name, qtype)


if getattr(pyspf.DNSLookup, "__module__", None) != __name__:
    pyspf.DNSLookup = _dispatch


def _make_resolver(nameservers: list[str] | None) -> dns.resolver.Resolver:
    servers = [parse_nameserver(n) for n in nameservers] if nameservers else system_nameservers()
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in servers]
    r.timeout = 2.0  # per try of one server; the check's deadline bounds it all
    r.cache = None  # pyspf caches within a check; across checks the filter does
    return r


# --------------------------------------------------------------------------
# The checker


class SpfChecker:
    """SPF checks against ``nameservers`` (``"HOST[:PORT]"``; None: resolv.conf's),
    each one finished - with a result or ``timeout`` - within ``timeout`` seconds."""

    def __init__(self, *, timeout: float = 5.0, nameservers: list[str] | None = None) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.timeout = float(timeout)
        self.resolver = _make_resolver(nameservers)
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="spf")

    def __repr__(self) -> str:
        servers = ", ".join(f"{ns.address}:{ns.port}" for ns in self.resolver.nameservers)  # type: ignore[union-attr]
        return f"SpfChecker({servers}, timeout={self.timeout:g})"

    async def check(self, ip: str, sender: str, helo: str) -> str:
        """The SPF result for a client ``ip``, MAIL FROM ``sender`` and HELO ``helo``."""
        return (await self.evaluate(ip, sender, helo)).result

    async def evaluate(self, ip: str, sender: str, helo: str) -> SpfVerdict:
        """Like :meth:`check`, with the identity, domain and explanation."""
        identity, s, domain = spf_identity(sender, helo)
        try:
            ipaddress.ip_address(ip.strip())
        except ValueError:
            return SpfVerdict("none", identity, domain or None, f"not an IP address: {ip!r}")
        if not _valid_domain(domain):
            why = f"no domain to check ({identity} {domain!r})" if domain else f"no {identity} identity"
            return SpfVerdict("none", identity, domain or None, why)
        deadline = time.monotonic() + self.timeout
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(self._pool, self._run, ip.strip(), s, helo.strip(), deadline)
        except RuntimeError:  # closed: a caller's bug, still not a verdict
            return SpfVerdict("temperror", identity, domain, "the checker is closed")
        try:
            async with asyncio.timeout(self.timeout):
                result, explanation = await job
        except TimeoutError:
            # the worker stops by itself: its lookups share this deadline
            return SpfVerdict("timeout", identity, domain, f"no verdict within {self.timeout:g}s")
        return SpfVerdict(result, identity, domain, explanation)

    def _run(self, ip: str, sender: str, helo: str, deadline: float) -> tuple[str, str]:
        """In a worker thread: pyspf's check with this checker's DNS."""
        ctx = _Context(self.resolver, deadline)
        _local.ctx = ctx
        try:
            q = pyspf.query(ip, sender, helo, timeout=self.timeout, querytime=0)
            result, _code, explanation = q.check()
        except Exception as exc:  # a bug or an input pyspf cannot take: never a verdict
            return "temperror", f"pyspf failed: {exc.__class__.__name__}: {exc}"
        finally:
            _local.ctx = None
        if ctx.timed_out and result == "temperror":
            return "timeout", explanation
        return result, explanation

    def close(self) -> None:
        """Stop the worker threads (running checks end by their deadline)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
