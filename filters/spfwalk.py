"""py-spf-walk: the networks that domains' SPF records authorise, as an allowlist.

    py-spf-walk [-resolver HOST[:PORT]] [-timeout SECONDS] [-4] [-6] < domains > allowlist

Like OpenSMTPD's ``smtpctl spf walk``: domains are read on stdin, one per line
(``#`` comments and blank lines ignored), and every IPv4/IPv6 network their SPF
records authorise is printed, one per line, deduplicated and sorted - a list
file for ``smtpd_filter_sdk.netaddr.CIDRList`` (``-allowlist`` of the filters).

What is followed, term by term in evaluation order (RFC 7208 §4.6, §5):

* ``ip4:`` / ``ip6:`` networks as written (host bits cleared);
* ``a``, ``a:DOMAIN``, ``mx``, ``mx:DOMAIN`` with their CIDR lengths
  (``a/24``, ``mx//64``, ``a:host/24//64``): the A/AAAA addresses (MX: of
  each exchange, at most 10 of them, RFC 7208 §4.6.4), widened to the length;
* ``include:`` and ``redirect=`` (the latter only if no ``all`` ends the
  record), recursively.

What is not listed:

* mechanisms qualified ``-`` or ``~`` (they deny; ``smtpctl`` skips them too);
  an ``-include:`` is still walked for the lookup count, not listed;
* ``ptr`` and ``exists:`` (what they match depends on the client), ``+all``
  / ``?all`` and any ``/0`` (``ip4:0.0.0.0/0``, ``a/0``: every address, so
  an allowlist with it would exempt every client: a note on stderr), terms
  after an ``all``;
* a term whose macros need a client (``%{i}``, ``%{s}``, ``%{l}``, ``%{h}``,
  ``%{p}``, ``%{v}``): a note on stderr.  ``%{d}`` (the domain being
  walked), ``%{o}`` (the domain given on stdin), ``%%``, ``%_`` and ``%-``
  are expanded, with transformers (``%{d2r}``) and delimiters.

Bounds: the RFC's 10 DNS-querying terms per domain tree (include, a, mx, ptr,
exists, redirect) - past it the walk of that domain stops, as evaluation would
stop with permerror (what came before is printed: it would pass) - and a loop
of include/redirect is not followed.  Each lookup ends within ``-timeout``
seconds; domains are walked concurrently.

Errors - a DNS failure or timeout, no SPF record or two of them, a syntax error
(the whole record then authorises nothing), the lookup limit, a loop: one line
``py-spf-walk: DOMAIN: what`` on stderr; the other domains go on, and the exit
status is 1 at the end.  Notes (things skipped) are on stderr too and do not
change the status.  Bad flags: one line, status 2.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Sequence, TextIO

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from smtpd_filter_sdk.dns import Resolver, check_nameservers
from smtpd_filter_sdk.goflags import GoFlags, lookup_timeout
from smtpd_filter_sdk.netaddr import Network, parse_domain

PROG = "py-spf-walk"

#: DNS-querying terms per domain tree (RFC 7208 §4.6.4).
MAX_LOOKUPS = 10
#: MX exchanges whose addresses an ``mx`` term may look up (RFC 7208 §4.6.4).
MAX_MX = 10
#: Domains walked at once.
CONCURRENCY = 16

QUALIFIERS = "+-~?"
LOOKUP_KINDS = frozenset({"include", "a", "mx", "ptr", "exists"})
_SPF_VERSION = re.compile(r"^v=spf1( |$)", re.IGNORECASE)
_MODIFIER = re.compile(r"^([a-z][a-z0-9_.\-]*)=(.*)$", re.IGNORECASE | re.DOTALL)
_MECHANISM = re.compile(r"^([a-z][a-z0-9]*)(.*)$", re.IGNORECASE | re.DOTALL)
# "/24", "//64", "/24//64" after an a/mx domain-spec (or alone)
_DUAL_CIDR = re.compile(r"^(?:/(0|[1-9][0-9]?))?(?://(0|[1-9][0-9]{0,2}))?$")
_CIDR4 = re.compile(r"^/(0|[1-9][0-9]?)$")
_CIDR6 = re.compile(r"^/(0|[1-9][0-9]{0,2})$")
_MACRO = re.compile(r"%\{([a-zA-Z])([0-9]*)([rR]?)([.\-+,/_=]*)\}|%%|%_|%-|%")
_MACRO_LETTERS = "slodiphcrtv"
_TOPLABEL = re.compile(
    r"^(?:[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9-]*[a-z0-9])$", re.IGNORECASE
)
# letters whose value needs a client connection (%{c} %{r} %{t}: exp= only)
_CLIENT_LETTERS = {"s": "sender", "l": "local part", "i": "client IP", "p": "client name",
                   "v": "client IP family", "h": "HELO"}


class SpfSyntaxError(ValueError):
    """A record that RFC 7208's grammar does not allow (a permerror)."""


class NeedsClient(Exception):
    """A macro whose value depends on the client; ``letter`` names it."""

    def __init__(self, letter: str) -> None:
        super().__init__(letter)
        self.letter = letter


# --------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Mechanism:
    """One directive: ``qualifier`` (``+ - ~ ?``), ``kind`` (``all include a mx
    ptr ip4 ip6 exists``), ``domain`` (an unexpanded domain-spec or None),
    CIDR lengths (a/mx; ip4/ip6 keep theirs in ``network``), ``network``."""

    qualifier: str
    kind: str
    domain: str | None = None
    cidr4: int | None = None
    cidr6: int | None = None
    network: Network | None = None

    def __str__(self) -> str:
        q = "" if self.qualifier == "+" else self.qualifier
        if self.network is not None:
            return f"{q}{self.kind}:{self.network}"
        text = q + self.kind + (f":{self.domain}" if self.domain is not None else "")
        if self.cidr4 is not None:
            text += f"/{self.cidr4}"
        if self.cidr6 is not None:
            text += f"//{self.cidr6}"
        return text

    @property
    def lists(self) -> bool:
        """Does a match authorise (``+``, and ``?`` as smtpctl keeps it)?"""
        return self.qualifier in "+?"


@dataclass(frozen=True)
class Record:
    """A parsed ``v=spf1`` record: its directives in order, ``redirect``
    and ``exp`` (domain-specs or None), and the other modifiers."""

    directives: tuple[Mechanism, ...] = ()
    redirect: str | None = None
    exp: str | None = None
    modifiers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        terms = ["v=spf1", *map(str, self.directives)]
        if self.redirect is not None:
            terms.append(f"redirect={self.redirect}")
        if self.exp is not None:
            terms.append(f"exp={self.exp}")
        terms += [f"{k}={v}" for k, v in self.modifiers]
        return " ".join(terms)


def is_spf_record(text: str) -> bool:
    """Is this TXT string an SPF record (``v=spf1`` then a space or the end)?"""
    return bool(_SPF_VERSION.match(text))


def check_domain_spec(spec: str, *, exp: bool = False) -> str:
    """Validate a domain-spec (macro-string + domain-end, RFC 7208 §7.1);
    returns it unchanged.  SpfSyntaxError if it is not one."""
    if not spec:
        raise SpfSyntaxError("empty domain-spec")
    pos = 0
    last_macro_end = -1
    for m in _MACRO.finditer(spec):
        literal = spec[pos : m.start()]
        if any(not 0x21 <= ord(ch) <= 0x7E for ch in literal):
            raise SpfSyntaxError(f"bad character in {spec!r}")
        token = m.group(0)
        if token == "%":
            raise SpfSyntaxError(f"bad macro in {spec!r}")
        if token.startswith("%{"):
            letter = m.group(1).lower()
            if letter not in _MACRO_LETTERS or (letter in "crt" and not exp):
                raise SpfSyntaxError(f"unknown macro %{{{m.group(1)}}} in {spec!r}")
            if m.group(2) and int(m.group(2)) == 0:
                raise SpfSyntaxError(f"macro transformer 0 in {spec!r}")
        pos = m.end()
        last_macro_end = pos
    tail = spec[pos:]
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in tail):
        raise SpfSyntaxError(f"bad character in {spec!r}")
    if exp:
        return spec
    if last_macro_end == len(spec):
        return spec  # domain-end = macro-expand
    # domain-end = "." toplabel [ "." ]
    body = tail[:-1] if tail.endswith(".") else tail
    if "." not in body:
        raise SpfSyntaxError(f"{spec!r} does not end in a domain name")
    top = body.rsplit(".", 1)[1]
    if not _TOPLABEL.match(top):
        raise SpfSyntaxError(f"{spec!r} does not end in a domain name")
    return spec


def _parse_directive(term: str) -> Mechanism:
    qualifier = "+"
    body = term
    if body[:1] in QUALIFIERS:
        qualifier, body = body[0], body[1:]
    m = _MECHANISM.match(body)
    if not m:
        raise SpfSyntaxError(f"unknown term {term!r}")
    kind, rest = m.group(1).lower(), m.group(2)
    if kind == "all":
        if rest:
            raise SpfSyntaxError(f"bad term {term!r}")
        return Mechanism(qualifier, kind)
    if kind in ("include", "exists"):
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"{term!r} needs :domain")
        return Mechanism(qualifier, kind, check_domain_spec(rest[1:]))
    if kind == "ptr":
        if not rest:
            return Mechanism(qualifier, kind)
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"bad term {term!r}")
        return Mechanism(qualifier, kind, check_domain_spec(rest[1:]))
    if kind in ("a", "mx"):
        domain = None
        cidr = rest
        if rest.startswith(":"):
            # the CIDR suffix is what follows the last "/" outside a macro
            spec, cidr = _split_cidr(rest[1:])
            domain = check_domain_spec(spec)
        c = _DUAL_CIDR.match(cidr)
        if not c:
            raise SpfSyntaxError(f"bad term {term!r}")
        c4 = int(c.group(1)) if c.group(1) is not None else None
        c6 = int(c.group(2)) if c.group(2) is not None else None
        if (c4 is not None and c4 > 32) or (c6 is not None and c6 > 128):
            raise SpfSyntaxError(f"CIDR length out of range in {term!r}")
        return Mechanism(qualifier, kind, domain, c4, c6)
    if kind in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"{term!r} needs :network")
        addr, slash, plen = rest[1:].partition("/")
        if slash and not (_CIDR4 if kind == "ip4" else _CIDR6).match("/" + plen):
            raise SpfSyntaxError(f"bad CIDR length in {term!r}")
        if "%" in addr or not addr:
            raise SpfSyntaxError(f"bad address in {term!r}")
        try:
            ip = ipaddress.IPv4Address(addr) if kind == "ip4" else ipaddress.IPv6Address(addr)
        except ValueError:
            raise SpfSyntaxError(f"bad address in {term!r}") from None
        bits = int(plen) if slash else ip.max_prefixlen
        if bits > ip.max_prefixlen:
            raise SpfSyntaxError(f"CIDR length out of range in {term!r}")
        return Mechanism(qualifier, kind, network=ipaddress.ip_network(f"{ip}/{bits}", strict=False))
    raise SpfSyntaxError(f"unknown mechanism {term!r}")


def _split_cidr(text: str) -> tuple[str, str]:
    """``host.test/24//64`` -> (``host.test``, ``/24//64``); slashes inside
    ``%{...}`` belong to the macro (delimiters)."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif ch == "/" and depth == 0:
            return text[:i], text[i:]
    return text, ""


def parse_record(text: str) -> Record:
    """Parse an SPF record (``v=spf1 ...``); SpfSyntaxError if RFC 7208 does
    not allow it (then the record as a whole is a permerror, §4.6)."""
    if not is_spf_record(text):
        raise SpfSyntaxError("not an SPF record (v=spf1)")
    directives: list[Mechanism] = []
    redirect = exp = None
    modifiers: list[tuple[str, str]] = []
    for term in text[6:].split(" "):
        if not term:
            continue  # terms are separated by one or more spaces
        if any(not 0x21 <= ord(ch) <= 0x7E for ch in term):
            raise SpfSyntaxError(f"bad character in {term!r}")
        mod = _MODIFIER.match(term)
        if mod:
            name, value = mod.group(1).lower(), mod.group(2)
            if name == "redirect":
                if redirect is not None:
                    raise SpfSyntaxError("more than one redirect=")
                redirect = check_domain_spec(value)
            elif name == "exp":
                if exp is not None:
                    raise SpfSyntaxError("more than one exp=")
                exp = check_domain_spec(value)
            else:
                if value:
                    check_domain_spec(value, exp=True)  # a macro-string
                modifiers.append((mod.group(1), value))
            continue
        directives.append(_parse_directive(term))
    return Record(tuple(directives), redirect, exp, tuple(modifiers))


# --------------------------------------------------------------------------
# Macros


def expand(spec: str, *, domain: str, sender_domain: str) -> str:
    """Expand a domain-spec's macros without a client (RFC 7208 §7):
    ``%{d}`` is ``domain``, ``%{o}`` ``sender_domain``; ``%%``, ``%_``,
    ``%-`` are literals.  NeedsClient for any other letter.  An expansion
    longer than 253 characters loses labels on the left (§7.3)."""

    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "%%":
            return "%"
        if token == "%_":
            return " "
        if token == "%-":
            return "%20"
        if token == "%":
            raise SpfSyntaxError(f"bad macro in {spec!r}")
        letter = m.group(1)
        low = letter.lower()
        if low == "d":
            value = domain
        elif low == "o":
            value = sender_domain
        else:
            raise NeedsClient(low)
        parts = re.split("[" + re.escape(m.group(4) or ".") + "]", value)
        if m.group(3):
            parts.reverse()
        if m.group(2):
            parts = parts[-int(m.group(2)) :]
        out = ".".join(parts)
        return urllib.parse.quote(out, safe="~") if letter != low else out

    result = _MACRO.sub(one, spec).rstrip(".")
    while len(result) > 253 and "." in result:
        result = result.split(".", 1)[1]
    return result


# --------------------------------------------------------------------------
# The walk


@dataclass
class Walk:
    """What walking one domain found: ``networks`` (in order, no
    duplicates), ``errors`` (each makes the run fail) and ``notes``."""

    domain: str
    networks: dict[Network, None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lookups: int = 0
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


class Walker:
    """Walks SPF trees with ``resolver`` (an SDK :class:`Resolver`)."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        families: Sequence[int] = (4, 6),
        max_lookups: int = MAX_LOOKUPS,
    ) -> None:
        self.resolver = resolver
        self.families = tuple(families)
        self.max_lookups = max_lookups

    async def walk(self, domain: str) -> Walk:
        w = Walk(domain)
        await self._record(w, domain, (), collect=True, how=None)
        return w

    async def _txt_record(self, w: Walk, domain: str, how: str | None) -> Record | None:
        """The domain's SPF record, parsed; None (with an error) if unusable."""
        where = f"{how} -> " if how else ""
        ans = await self.resolver.query(domain, "TXT")
        if ans.temporary:
            w.errors.append(f"{where}{domain}: TXT lookup failed ({ans.status}{' ' + ans.detail if ans.detail else ''})")
            return None
        records = [t for t in (_txt_text(v) for v in ans.values) if is_spf_record(t)] if ans.ok else []
        if not records:
            what = "no such domain" if ans.status == "nxdomain" else "no SPF record"
            w.errors.append(f"{where}{domain}: {what}")
            return None
        if len(records) > 1:
            w.errors.append(f"{where}{domain}: {len(records)} SPF records (permerror)")
            return None
        try:
            return parse_record(records[0])
        except SpfSyntaxError as exc:
            w.errors.append(f"{where}{domain}: {exc}: the record authorises nothing (permerror)")
            return None

    def _count(self, w: Walk, term: object, domain: str) -> bool:
        """Count one DNS-querying term; False (and stop) past the limit."""
        w.lookups += 1
        if w.lookups > self.max_lookups:
            w.errors.append(
                f"{domain}: {term}: more than {self.max_lookups} DNS lookups, "
                "evaluation stops here (permerror); the rest is not listed"
            )
            w.stopped = True
            return False
        return True

    async def _record(self, w: Walk, domain: str, path: tuple[str, ...], *, collect: bool, how: str | None) -> None:
        name = domain.lower().rstrip(".")
        if name in path:
            w.errors.append(f"{' -> '.join(path)} -> {name}: loop, not followed")
            return
        path = (*path, name)
        record = await self._txt_record(w, name, how)
        if record is None:
            return
        for mech in record.directives:
            if w.stopped:
                return
            if mech.kind == "all":
                if collect and mech.qualifier == "+":
                    w.notes.append(f"{name}: {mech} authorises every address, not listed")
                return  # evaluation ends here: later terms and redirect= are never reached
            if mech.kind in LOOKUP_KINDS and not self._count(w, mech, name):
                return
            if mech.kind in ("ip4", "ip6"):
                if collect and mech.lists and mech.network is not None:
                    self._add(w, mech.network, f"{name}: {mech}")
                continue
            target = name
            if mech.domain is not None:
                try:
                    target = expand(mech.domain, domain=name, sender_domain=w.domain)
                except NeedsClient as nc:
                    if collect and mech.lists:
                        w.notes.append(f"{name}: {mech}: needs the {_CLIENT_LETTERS.get(nc.letter, nc.letter)} (%{{{nc.letter}}}), skipped")
                    continue
                if not target:
                    w.notes.append(f"{name}: {mech}: expands to nothing, skipped")
                    continue
            if mech.kind == "include":
                await self._record(w, target, path, collect=collect and mech.lists, how=f"{name} include:{target}")
            elif mech.kind in ("a", "mx") and collect and mech.lists:
                await self._addresses(w, name, mech, target)
            elif mech.kind in ("ptr", "exists") and collect and mech.lists:
                w.notes.append(f"{name}: {mech}: depends on the client, skipped")
        if record.redirect is not None and not w.stopped:
            try:
                target = expand(record.redirect, domain=name, sender_domain=w.domain)
            except NeedsClient as nc:
                w.notes.append(f"{name}: redirect={record.redirect}: needs the client (%{{{nc.letter}}}), skipped")
                return
            if self._count(w, f"redirect={record.redirect}", name):
                await self._record(w, target, path, collect=collect, how=f"{name} redirect={target}")

    async def _addresses(self, w: Walk, domain: str, mech: Mechanism, target: str) -> None:
        hosts = [target]
        if mech.kind == "mx":
            ans = await self.resolver.query(target, "MX")
            if ans.temporary:
                w.errors.append(f"{domain}: {mech}: MX lookup of {target} failed ({ans.status})")
                return
            exchanges = [_mx_exchange(v) for v in ans.values] if ans.ok else []
            hosts = [h for h in dict.fromkeys(exchanges) if h]  # "0 ." is a null MX
            if len(hosts) > MAX_MX:
                w.errors.append(f"{domain}: {mech}: {len(hosts)} MX names, more than {MAX_MX} (permerror)")
                w.stopped = True
                return
        for host in hosts:
            for version in self.families:
                ans = await self.resolver.addresses(host, version)
                if ans.temporary:
                    w.errors.append(f"{domain}: {mech}: {'A' if version == 4 else 'AAAA'} lookup of {host} failed ({ans.status})")
                    continue
                bits = mech.cidr4 if version == 4 else mech.cidr6
                for value in ans.values if ans.ok else ():
                    try:
                        ip = ipaddress.ip_address(value)
                    except ValueError:
                        continue
                    self._add(w, ipaddress.ip_network(f"{ip}/{ip.max_prefixlen if bits is None else bits}", strict=False),
                              f"{domain}: {mech}")

    def _add(self, w: Walk, net: Network, where: str) -> None:
        if net.version not in self.families:
            return
        if net.prefixlen == 0:
            # every address of the family: +all by another name, and an
            # allowlist with it would exempt every client
            note = f"{where} authorises every IPv{net.version} address, not listed"
            if note not in w.notes:
                w.notes.append(note)
            return
        w.networks[net] = None


def _txt_text(value: str) -> str:
    """One TXT record (dnspython's text form) as the SPF text: its
    character-strings concatenated (RFC 7208 §3.3)."""
    try:
        rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, value)
    except dns.exception.DNSException:
        return ""
    return b"".join(rd.strings).decode("latin-1")  # type: ignore[attr-defined]


def _mx_exchange(value: str) -> str:
    parts = value.split()
    return parts[-1].rstrip(".").lower() if parts else ""


def format_network(net: Network) -> str:
    """A host as a bare address (as smtpctl prints it), a network as CIDR."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


# --------------------------------------------------------------------------
# Command line


def flags() -> GoFlags:
    g = GoFlags(PROG, "Print the IPv4/IPv6 networks that the SPF records of the domains on stdin authorise.")
    g.string("resolver", "", "resolver to ask, HOST[:PORT][,...] (default: /etc/resolv.conf)", metavar="HOST[:PORT]", validate=check_nameservers)
    g.float("timeout", 5.0, "seconds a DNS lookup may take", validate=lookup_timeout)
    g.bool("4", False, "IPv4 networks only")
    g.bool("6", False, "IPv6 networks only")
    return g


def read_domains(lines: Sequence[str], errors: list[str]) -> list[str]:
    """Domains, one per line, ``#`` comments; bad lines go to ``errors``."""
    out: dict[str, None] = {}
    for n, raw in enumerate(lines, 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            if text.startswith((".", "*")):
                raise ValueError("not a domain name")
            out[parse_domain(text)] = None
        except ValueError as exc:
            errors.append(f"stdin:{n}: {exc}: {text[:80]!r}")
    return list(out)


async def walk_all(walker: Walker, domains: Sequence[str]) -> list[Walk]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(d: str) -> Walk:
        async with gate:
            return await walker.walk(d)

    return await asyncio.gather(*(one(d) for d in domains))


def run(opts: object, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    errors: list[str] = []
    domains = read_domains(stdin.read().splitlines(), errors)
    families = [v for v, on in ((4, getattr(opts, "4")), (6, getattr(opts, "6"))) if on] or [4, 6]
    servers = opts.resolver.split(",") if opts.resolver else None  # type: ignore[attr-defined]
    resolver = Resolver(servers, timeout=opts.timeout)  # type: ignore[attr-defined]
    walker = Walker(resolver, families=families)
    try:
        walks = asyncio.run(walk_all(walker, domains))
    finally:
        resolver.close()
    networks: dict[Network, None] = {}
    for w in walks:
        for note in w.notes:
            print(f"{PROG}: {note}", file=stderr)
        for err in w.errors:
            # errors start with the domain they are about; name the one given too
            given = err.startswith((w.domain + ":", w.domain + " "))
            print(f"{PROG}: {err}" if given else f"{PROG}: {w.domain}: {err}", file=stderr)
        networks.update(w.networks)
    for err in errors:
        print(f"{PROG}: {err}", file=stderr)
    ordered = sorted(networks, key=lambda n: (n.version, n.network_address, n.prefixlen))
    stdout.write("".join(format_network(n) + "\n" for n in ordered))
    stdout.flush()
    failed = bool(errors) or any(not w.ok for w in walks)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    opts = flags().parse(argv)
    try:
        return run(opts, sys.stdin, sys.stdout, sys.stderr)
    except BrokenPipeError:  # e.g. piped into head
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
