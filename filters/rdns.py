"""py-filter-rdns: reverse-DNS policy for OpenSMTPD, beyond ``!rdns``/``!fcrdns``.

    filter "rdns" proc-exec "py-filter-rdns -noRdns reject -noFcrdns junk -dynamic junk"

At connect the client's PTR name is checked forward (FCrDNS, RFC 8601 iprev).
smtpd has done that already (``link-connect``); its ``pass`` is used as is.
The filter resolves again itself when smtpd reports a DNS error, and before
acting on smtpd's "no PTR"/"no match": smtpd 6.8 reports a PTR lookup that
timed out (after ~75 s of retries) as no PTR, which must not become a
permanent refusal.  Then, per outcome, one of ``reject`` (550 at connect: the client sees
it instead of the banner), ``disconnect`` (550 and close), ``junk`` (smtpd
adds ``X-Spam: Yes``) or ``none`` (log only):

  -noRdns ACTION      no PTR record (default reject)
  -noFcrdns ACTION    a PTR name that does not resolve back (default junk)
  -dynamic ACTION     a generic/dynamic-looking PTR name (default none): the
                      address's octets in the name (1-2-3-4, 004003002001,
                      hex), words like dsl/dyn/dhcp/pool/ppp/cable/broadband,
                      and the patterns of -dynamicRegex FILE (one Python regex
                      per line, matched anywhere in the name, ignoring case)
  -heloCheck ACTION   HELO/EHLO must name the client: a PTR name, a name that
                      resolves to the client's address, or its address literal
                      (default none)
  -dnsError ACTION    a DNS error or timeout: tempfail (default: ``421 4.7.25``
                      and disconnect at connect - a 4xx reject there would trap
                      the client in 503s), junk or none.  Never a permanent
                      failure.

  -allowlist FILE     IPv4/IPv6 addresses and CIDRs never checked
  -allowDomains FILE  rDNS suffixes never checked (example.com covers
                      mx.example.com); only forward-confirmed names count
  -bypassAuth         hold the verdict until MAIL FROM and drop it if the
                      client authenticated (AUTH comes after connect)
  -header             add ``X-rDNS: RESULT; ip=IP; ptr=NAME``
  -authResults        add ``Authentication-Results: ADMD; iprev=RESULT
                      policy.iprev=IP (NAME)``, ADMD being smtpd's admd
  -timeout SECONDS    DNS lookups take at most this long (default 2)
  -cacheTTL SECONDS   our own FCrDNS results are cached per IP (default 300)
  -resolver HOST[:PORT]  resolver to ask (default: /etc/resolv.conf's)
  -dryRun             decide and log, always proceed

Local (unix socket) sessions are never checked.  Inbound ``X-rDNS`` headers
and ``Authentication-Results`` claiming smtpd's admd are removed when the
filter adds its own.  Allowlists and regex files are re-read on SIGHUP (a bad
file keeps the previous one, logged with file:line).  One log line per
decision on stderr, keyed by session id.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from smtpd_filter_sdk import Filter, disconnect, junk, reject
from smtpd_filter_sdk.dns import FCrDNS, Resolver, VerdictCache, check_nameservers
from smtpd_filter_sdk.goflags import GoFlags, Options, lookup_timeout, non_negative
from smtpd_filter_sdk.netaddr import (
    IP,
    CIDRList,
    DomainList,
    ListFile,
    ListFileError,
    client_ip,
    normalize_name,
)

PROG = "py-filter-rdns"

#: ``make demo`` runs it against a loopback port where nothing answers, so
#: every lookup of its own fails at once: a DNS error is a tempfail, never a
#: permanent refusal.
DEMO = {"args": ["-noRdns", "disconnect", "-header", "-resolver", "127.0.0.1:9", "-timeout", "0.5"]}
ACTIONS = ("reject", "disconnect", "junk", "none")
ERROR_ACTIONS = ("tempfail", "junk", "none")
#: how bad an action is, to pick the worst of several findings
SEVERITY = {"none": 0, "junk": 1, "tempfail": 2, "reject": 3, "disconnect": 4}
KEY = "rdns"
_UNSET: Any = object()

#: words that mark a generic/dynamic PTR name, as whole tokens of the host part
DYNAMIC_WORDS = frozenset(
    """dyn dynamic dynip dhcp dial dialup dialin dsl adsl vdsl xdsl sdsl ppp pppoe
    cable cablemodem modem pool broadband residential resnet cpe dip ftth fttx""".split()
)
_TOKEN_SPLIT = re.compile(r"[^a-z]+")
_QUAD = re.compile(r"(?<![0-9])(\d{1,3})[-._x](\d{1,3})[-._x](\d{1,3})[-._x](\d{1,3})(?![0-9])")


# --------------------------------------------------------------------------
# Generic / dynamic PTR names


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    where: str  # file:line


def parse_pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"bad regular expression: {exc}") from None


def load_patterns(lines: list[str], source: str) -> tuple[Pattern, ...]:
    """A regex file: one pattern per line; blank lines and lines starting
    with ``#`` are skipped (``#`` elsewhere belongs to the pattern)."""
    out = []
    for n, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            out.append(Pattern(parse_pattern(text), f"{source}:{n}"))
        except ValueError as exc:
            raise ListFileError(source, n, str(exc)) from None
    return tuple(out)


def embeds_address(name: str, ip: IP) -> bool:
    """Does the name carry the client's address: ``1-2-3-4``, ``4.3.2.1``,
    ``001002003004``, ``01020304`` (hex), either order; for IPv6 the last 32
    or 64 bits in hex?"""
    n = name.lower()
    if ip.version == 4:
        octets = [int(x) for x in str(ip).split(".")]
        for m in _QUAD.finditer(n):
            got = [int(x) for x in m.groups()]
            if got == octets or got == octets[::-1]:
                return True
        forward, backward = octets, octets[::-1]
        for seq in (forward, backward):
            if "".join(f"{o:03d}" for o in seq) in n:
                return True
            if "".join(f"{o:02x}" for o in seq) in n.replace("-", "").replace(".", ""):
                return True
        return False
    hexed = ip.exploded.replace(":", "")
    compact = n.replace("-", "").replace(".", "").replace("_", "")
    return hexed[-16:] in compact or (hexed[-8:] in compact and hexed[-8:] != "00000001")


def dynamic_reason(name: str, ip: IP, patterns: Sequence[Pattern] = ()) -> str | None:
    """Why ``name`` looks like a generic/dynamic PTR of ``ip``, or None."""
    n = normalize_name(name)
    if not n:
        return None
    for p in patterns:
        if p.regex.search(n):
            return f"matches /{p.regex.pattern}/ ({p.where})"
    if embeds_address(n, ip):
        return "the name embeds the address"
    labels = n.split(".")
    host = labels[:-2] if len(labels) > 2 else labels[:1]
    for label in host:
        for token in _TOKEN_SPLIT.split(label):
            if token in DYNAMIC_WORDS:
                return f"dynamic-looking word {token!r}"
    return None


# --------------------------------------------------------------------------
# Verdicts


@dataclass
class Verdict:
    """What the connect-time checks found for a session."""

    ip: IP | None
    iprev: FCrDNS
    source: str  # smtpd | dns | allowlist | allowdomain | local | noaddr
    action: str = "none"
    reason: str = "ok"
    dynamic: str | None = None
    deferred: list[tuple[str, str, str]] = field(default_factory=list)  # (action, what, reply)

    @property
    def checked(self) -> bool:
        return self.source in ("smtpd", "dns")


_V4_CHARS = frozenset("0123456789.")


def _is_ip_literal(name: str) -> bool:
    text = name.strip("[]")
    if ":" not in text and not _V4_CHARS.issuperset(text):
        return False  # the common case, without an exception
    try:
        ipaddress.ip_address(text.partition("%")[0])
        return True
    except ValueError:
        return False


def iprev_from_smtpd(rdns: str | None, fcrdns: str | None) -> FCrDNS | None:
    """smtpd's own link-connect result as an iprev result, when conclusive
    (``pass``, or ``fail`` of a name or of no name); None for ``error``."""
    if rdns is None or fcrdns is None:
        return None
    name = normalize_name(rdns) if rdns not in ("", "<unknown>") else ""
    if name and _is_ip_literal(name):
        return FCrDNS("permerror", detail=f"no PTR name (smtpd: the PTR is the address literal {name})")
    if fcrdns == "pass" and name:
        return FCrDNS("pass", (name,), name)
    if fcrdns == "fail":
        if not name:
            return FCrDNS("permerror", detail="no PTR (smtpd)")
        return FCrDNS("fail", (name,), None, "smtpd: the name does not resolve back")
    return None


def flags() -> GoFlags:
    g = GoFlags(PROG, "Reverse-DNS (FCrDNS) policy filter for OpenSMTPD.")
    g.choice("noRdns", "reject", ACTIONS, "what to do when the client has no PTR", metavar="ACTION")
    g.choice("noFcrdns", "junk", ACTIONS, "what to do when the PTR name does not resolve back", metavar="ACTION")
    g.choice("dynamic", "none", ACTIONS, "what to do when the PTR name looks generic/dynamic", metavar="ACTION")
    g.string("dynamicRegex", "", "file of extra dynamic-name regexes, one per line", metavar="FILE")
    g.choice("heloCheck", "none", ACTIONS, "what to do when HELO/EHLO does not name the client", metavar="ACTION")
    g.choice("dnsError", "tempfail", ERROR_ACTIONS, "what to do on a DNS error or timeout", metavar="ACTION")
    g.string("allowlist", "", "file of IPv4/IPv6 addresses and CIDRs never checked", metavar="FILE")
    g.string("allowDomains", "", "file of rDNS suffixes never checked (forward-confirmed names only)", metavar="FILE")
    g.bool("bypassAuth", False, "apply the verdict at MAIL FROM, and not to authenticated sessions")
    g.bool("header", False, "add 'X-rDNS: RESULT; ip=IP; ptr=NAME' to every message")
    g.bool("authResults", False, "add 'Authentication-Results: ADMD; iprev=RESULT ...' to every message")
    g.float("timeout", 2.0, "seconds a DNS lookup may take", validate=lookup_timeout)
    g.float("cacheTTL", 300.0, "seconds our own FCrDNS results are cached per IP (0: no cache)", validate=non_negative)
    g.string("resolver", "", "resolver to ask, HOST[:PORT][,...] (default: /etc/resolv.conf)", metavar="HOST[:PORT]", validate=check_nameservers)
    g.bool("dryRun", False, "log decisions but always proceed")
    return g




class RDNS:
    """The policy, shared by every session of the process."""

    def __init__(self, opts: Options, log: Any, resolver: Resolver | None = None) -> None:
        self.opts = opts
        self.log = log
        self.allowlist = ListFile(opts.allowlist, CIDRList.parse) if opts.allowlist else None
        self.domains = ListFile(opts.allowDomains, DomainList.parse) if opts.allowDomains else None
        self.patterns = ListFile(opts.dynamicRegex, load_patterns) if opts.dynamicRegex else None
        if resolver is None:
            resolver = Resolver(opts.resolver.split(",") if opts.resolver else None, timeout=opts.timeout)
        self.resolver = resolver
        self.cache: VerdictCache[str, FCrDNS] = VerdictCache(
            ttl=opts.cacheTTL, maxsize=200_000, ttl_for=self._ttl_for
        )
        self.admd: str | None = None
        self._ips: dict[str, tuple[IP, str]] = {}
        self._views: dict[tuple[str | None, str | None], FCrDNS | None] = {}

    def _ttl_for(self, result: FCrDNS) -> float:
        return 0.0 if result.result == "temperror" else self.opts.cacheTTL

    def reload(self) -> None:
        # all or nothing: check every file before swapping any
        new = [(lf, lf.read()) for lf in (self.allowlist, self.domains, self.patterns) if lf is not None]
        for lf, value in new:
            lf.current = value

    # -- connect -----------------------------------------------------------

    def needs_dns(self, session: Any, iprev: FCrDNS | None = _UNSET) -> bool:  # type: ignore[assignment]
        """Must we resolve ourselves?  When smtpd says ``error``, and when it
        says no PTR / no match and that would cost the client something:
        smtpd 6.8 reports a PTR query that timed out (after ~75 s of retries)
        as ``<unknown>``/``fail``, indistinguishable from a real NXDOMAIN, so
        a permanent refusal is only made on our own conclusive answer."""
        if iprev is _UNSET:
            iprev = self.smtpd_view(session)
        if iprev is None:
            return True
        if iprev.result == "permerror" and not iprev.detail.startswith("no PTR name"):
            return self.opts.noRdns != "none"
        if iprev.result == "fail":
            return self.opts.noFcrdns != "none"
        return False

    def smtpd_view(self, session: Any) -> FCrDNS | None:
        """smtpd's link-connect result as iprev (None: it had a DNS error)."""
        data = session.data
        if "rdns.smtpd" not in data:
            key = (session.rdns, session.fcrdns)
            view = self._views.get(key, _UNSET)
            if view is _UNSET:
                if len(self._views) >= 65536:
                    self._views.clear()
                view = self._views[key] = iprev_from_smtpd(*key)
            data["rdns.smtpd"] = view
        return data["rdns.smtpd"]

    def client(self, src: Any) -> tuple[IP, str] | None:
        """(address, cache key) of a session's source, memoised by its text."""
        host = src.host
        found = self._ips.get(host)
        if found is None:
            ip = client_ip(src)
            if ip is None:
                return None
            if len(self._ips) >= 65536:
                self._ips.clear()
            found = self._ips[host] = (ip, str(ip))
        return found

    def prefetch(self, session: Any) -> None:
        src = session.src
        if src is None or src.is_local or not self.needs_dns(session):
            return
        found = self.client(src)
        if found is None:
            return
        ip, key = found
        if self.allowlist is not None and ip in self.allowlist.current:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # driven without a running loop (tests): connect resolves
        self.cache.start(key, lambda: self.resolver.fcrdns(key))

    def verdict_now(self, session: Any) -> Verdict | None:
        """The verdict, or None when it waits for a DNS answer not cached yet."""
        return self._verdict(session, None)

    async def verdict(self, session: Any) -> Verdict:
        v = self.verdict_now(session)
        if v is not None:
            return v
        key = self.client(session.src)[1]  # type: ignore[index]  # verdict_now checked it
        iprev = await self.cache.get(key, lambda: self.resolver.fcrdns(key))
        result = self._verdict(session, iprev)
        assert result is not None
        return result

    def _verdict(self, session: Any, looked_up: FCrDNS | None) -> Verdict | None:
        src = session.src
        if src is None:
            return Verdict(None, FCrDNS("temperror", detail="no client address"), "noaddr")
        if src.is_local:
            return Verdict(None, FCrDNS("pass"), "local", reason="local session")
        found = self.client(src)
        if found is None:
            return Verdict(None, FCrDNS("temperror", detail=f"unusable address {src}"), "noaddr")
        ip, key = found
        if self.allowlist is not None and ip in self.allowlist.current:
            return Verdict(ip, FCrDNS("none"), "allowlist", reason="allowlisted address")
        iprev = self.smtpd_view(session)
        source = "smtpd"
        if self.needs_dns(session, iprev):
            iprev = looked_up or self.cache.peek(key)
            if iprev is None:
                return None
            source = "dns"
        assert iprev is not None
        v = Verdict(ip, iprev, source)
        if iprev.result == "pass" and self.domains is not None:
            hit = self.domains.current.match(iprev.confirmed)
            if hit:
                v.source, v.reason = "allowdomain", f"{iprev.confirmed} is under allowed domain {hit}"
                return v
        self.judge(v)
        return v

    def judge(self, v: Verdict) -> None:
        """The action for a checked session: the worst of its findings."""
        o = self.opts
        ip = v.ip
        findings: list[tuple[str, str]] = []
        r = v.iprev
        if r.result == "temperror":
            findings.append((o.dnsError, f"DNS error ({r.detail})"))
        elif r.result == "permerror":
            findings.append((o.noRdns, r.detail or "no PTR"))
        elif r.result == "fail":
            findings.append((o.noFcrdns, f"{r.names[0]} does not resolve back to {ip}"))
        if r.names and ip is not None and (o.dynamic != "none" or o.header):
            patterns = self.patterns.current if self.patterns is not None else ()
            for name in r.names:
                why = dynamic_reason(name, ip, patterns)
                if why:
                    v.dynamic = f"{name}: {why}"
                    findings.append((o.dynamic, f"dynamic-looking PTR {name} ({why})"))
                    break
        if not findings:
            return
        findings.sort(key=lambda a: SEVERITY[a[0]], reverse=True)
        v.action, v.reason = findings[0]
        if v.action == "none":
            v.reason = "; ".join(reason for _, reason in findings) + " (no action)"

    # -- replies -----------------------------------------------------------

    def reply(self, v: Verdict, phase: str) -> Any:
        """The decision for ``v.action`` at ``phase`` (connect or mail-from)."""
        ip = f"[{v.ip}]" if v.ip is not None else ""
        r = v.iprev
        if v.action == "junk":
            return junk()
        if v.action == "tempfail":
            text = f"Temporary DNS failure looking up your reverse hostname {ip}, try again later"
            if phase == "connect":
                return disconnect(421, text, enhanced="4.7.25")
            return reject(451, text, enhanced="4.7.25")
        if r.result == "permerror":
            text = f"Client host rejected: cannot find your reverse hostname {ip}"
        elif r.result == "fail":
            text = f"Client host rejected: reverse hostname {r.names[0]} does not resolve to {ip}"
        else:
            name = v.dynamic.split(":", 1)[0] if v.dynamic else (r.name or "?")
            text = f"Client host rejected: {name} looks like a dynamic address {ip}, use your provider's relay"
        if v.action == "disconnect":
            return disconnect(550, text, enhanced="5.7.25")
        if v.action == "reject":
            return reject(550, text, enhanced="5.7.25")
        return None

    # -- HELO --------------------------------------------------------------

    async def helo_mismatch(self, v: Verdict, helo: str) -> tuple[str, str] | None:
        """(action, why) when HELO does not name the client, else None."""
        ip = v.ip
        if ip is None:
            return None
        name = normalize_name(helo)
        if name.startswith("[") and name.endswith("]"):
            literal = name[1:-1]
            if literal.startswith("ipv6:"):
                literal = literal[5:]
            try:
                same = ipaddress.ip_address(literal) == ip
            except ValueError:
                same = False
            return None if same else (self.opts.heloCheck, f"HELO literal {helo} is not the client's address")
        if name in v.iprev.names:
            return None
        if not name or "." not in name or _is_ip_literal(name):
            return (self.opts.heloCheck, f"HELO {helo!r} is not a fully qualified name")
        key = f"helo {name} {ip}"

        async def forward() -> FCrDNS:
            ans = await self.resolver.addresses(name, ip.version)
            if ans.temporary:
                return FCrDNS("temperror", detail=f"{ans.status} {ans.detail}".strip())
            ok = ans.ok and any(_same(a, ip) for a in ans.values)
            return FCrDNS("pass" if ok else "fail")

        res = await self.cache.get(key, forward)
        if res.result == "pass":
            return None
        if res.result == "temperror":
            return (self.opts.dnsError, f"DNS error looking up HELO {helo} ({res.detail})")
        return (self.opts.heloCheck, f"HELO {helo} is neither the PTR name nor resolves to {ip}")

    # -- headers -----------------------------------------------------------

    def header_value(self, v: Verdict) -> str:
        r = v.iprev
        result = {"allowlist": "skipped", "local": "skipped"}.get(v.source, r.result)
        parts = [result, f"ip={v.ip}" if v.ip is not None else "ip=local"]
        name = r.name
        if name:
            parts.append(f"ptr={name}")
        if v.dynamic:
            parts.append("dynamic=yes")
        return "; ".join(parts)

    def auth_results(self, v: Verdict) -> str | None:
        if v.ip is None or v.source in ("allowlist", "local", "noaddr"):
            return None
        r = v.iprev
        admd = self.admd or socket.gethostname()
        value = f"{admd}; iprev={r.result} policy.iprev={v.ip}"
        if r.name:
            value += f" ({r.name})"
        return value


def _same(text: str, ip: IP) -> bool:
    try:
        other = ipaddress.ip_address(text)
    except ValueError:
        return False
    if other.version == 6 and other.ipv4_mapped is not None:
        other = other.ipv4_mapped
    return other == ip


def build(opts: Options, resolver: Resolver | None = None) -> Filter:
    f = Filter("rdns", on_error="fail-open", deadline=2 * opts.timeout + 2.0)
    rd = RDNS(opts, lambda *a: f.log(*a), resolver)  # f.log may be swapped (harnesses)
    f.rdns = rd  # type: ignore[attr-defined]  (for tests)
    dry = " (dry run)" if opts.dryRun else ""

    @f.on_config
    def config(cfg):
        rd.admd = cfg.admd

    @f.on_reload
    def reload():
        rd.reload()

    @f.on_report("link-connect")
    def start_lookup(session, report):
        rd.prefetch(session)

    @f.on("connect")
    def connect(session, rdns, src):
        # Known at once (smtpd's answer, a cached check, an allowlist hit):
        # answer inline; otherwise the SDK awaits the lookup under its deadline.
        v = rd.verdict_now(session)
        return decide(session, v) if v is not None else decide_later(session)

    async def decide_later(session):
        return decide(session, await rd.verdict(session))

    def decide(session, v):
        session.data[KEY] = v
        r = v.iprev
        what = f"iprev={r.result}" + (f" ptr={r.name}" if r.name else "") + f" ({v.source})"
        if not v.checked or v.action == "none":
            f.log(f"connect addr={v.ip or 'local'} {what}: proceed ({v.reason})", session.id)
            return None
        if opts.bypassAuth:
            v.deferred.append((v.action, v.reason, "connect"))
            f.log(f"connect addr={v.ip} {what}: {v.action} held until MAIL FROM unless authenticated ({v.reason}){dry}", session.id)
            return None
        f.log(f"connect addr={v.ip} {what}: {v.action} ({v.reason}){dry}", session.id)
        return None if opts.dryRun else rd.reply(v, "connect")

    if opts.heloCheck != "none":

        @f.on("helo", "ehlo")
        async def helo(session, identity):
            v = session.data.get(KEY)
            if v is None or not v.checked or session.authenticated:
                return None
            found = await rd.helo_mismatch(v, identity)
            if found is None:
                return None
            action, why = found
            if action == "none":
                f.log(f"helo {identity}: proceed ({why}, no action)", session.id)
                return None
            if opts.bypassAuth:
                v.deferred.append((action, why, "helo"))
                f.log(f"helo {identity}: {action} held until MAIL FROM unless authenticated ({why}){dry}", session.id)
                return None
            f.log(f"helo {identity}: {action} ({why}){dry}", session.id)
            if opts.dryRun:
                return None
            return helo_reply(action, why, identity)

    def helo_reply(action: str, why: str, identity: str) -> Any:
        if action == "junk":
            return junk()
        if action == "tempfail":
            return reject(451, f"Temporary DNS failure checking HELO {identity}, try again later", enhanced="4.7.1")
        text = f"HELO/EHLO {identity} does not match your address"
        if action == "disconnect":
            return disconnect(550, text, enhanced="5.7.1")
        return reject(550, text, enhanced="5.7.1")

    if opts.bypassAuth:

        @f.on("mail-from")
        def mail_from(session, address):
            v = session.data.get(KEY)
            if v is None or not v.deferred:
                return None
            if session.authenticated:
                f.log(f"mail-from: authenticated as {session.auth_user}: held verdict dropped", session.id)
                v.deferred.clear()
                return None
            worst = max(v.deferred, key=lambda d: SEVERITY[d[0]])
            action, why, where = worst
            f.log(f"mail-from: {action} (held from {where}: {why}){dry}", session.id)
            if opts.dryRun:
                return None
            if where == "helo":
                decision = helo_reply(action, why, session.helo or "")
            else:
                v.action = action
                decision = rd.reply(v, "mail-from")
            if decision is not None and decision.kind == "junk":
                v.deferred.clear()  # junk at MAIL marks the whole session once
            return decision

    if opts.header or opts.authResults:

        @f.on_headers
        def headers(session, hdrs):
            v = session.data.get(KEY)
            first_received = next((i for i, h in enumerate(hdrs.fields) if h.name.lower() == "received"), -1)
            keep = hdrs.fields[: first_received + 1]
            admd = (rd.admd or "").lower()

            def spoofed(h: Any) -> bool:
                name = h.name.lower()
                if opts.header and name == "x-rdns":
                    return True
                if opts.authResults and name == "authentication-results":
                    return h.value.split(";", 1)[0].strip().lower() == admd
                return False

            hdrs.fields = keep + [h for h in hdrs.fields[first_received + 1 :] if not spoofed(h)]
            if v is None:
                return None
            if opts.authResults:
                ar = rd.auth_results(v)
                if ar:
                    hdrs.add("Authentication-Results", ar)
            if opts.header:
                hdrs.add("X-rDNS", rd.header_value(v))
            return None

    return f


def main(argv: Sequence[str] | None = None) -> int:
    g = flags()
    opts = g.parse(argv)
    try:
        f = build(opts)
    except ListFileError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 1
    rd = f.rdns  # type: ignore[attr-defined]
    f.log(
        f"starting ({rd.resolver!r}; noRdns={opts.noRdns} noFcrdns={opts.noFcrdns} dynamic={opts.dynamic} "
        f"heloCheck={opts.heloCheck} dnsError={opts.dnsError}{' bypassAuth' if opts.bypassAuth else ''}"
        f"{' dry run' if opts.dryRun else ''})"
    )
    f.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
