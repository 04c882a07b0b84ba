"""py-filter-senderscore: SenderScore reputation for OpenSMTPD (a drop-in for
poolpOrg's filter-senderscore).

    filter "senderscore" proc-exec "py-filter-senderscore -blockBelow 10 -junkBelow 70 -slowFactor 2000"

The client's IPv4 address is looked up under ``score.senderscore.com``
(``4.3.2.1.score.senderscore.com``); an answer ``127.0.4.N`` is the score N
(0-100).  Then, as the Go filter does:

  -blockBelow N    score < N: ``disconnect|550 your IP reputation is too low
                   for this MX`` at the phase given by -blockPhase
  -blockPhase P    connect (default), helo, ehlo, starttls, auth, mail-from,
                   rcpt-to or quit
  -junkBelow N     score < N: the session is junked at connect (smtpd adds
                   ``X-Spam: Yes``)
  -slowFactor MS   wait MS*(100-score)/100 ms before every answer (never on
                   message lines)
  -scoreHeader     add ``X-SenderScore: N`` to every message of the session
  -allowlist FILE  IPs/CIDRs (IPv4 and IPv6, ``#`` comments) scored 100,
                   never looked up; re-read on SIGHUP (-whitelist: old name)
  -testMode        no DNS: the score is the address's last octet (.255: unknown)

And what the Go filter does not:

  -timeout SECONDS  a lookup gets this long (default 2), then the client is
                    simply unscored; lookups run concurrently and never hold up
                    other sessions (the lookup starts at link-connect)
  -cacheTTL SECONDS scores are cached per IP (default 3600; 0: off)
  -resolver HOST[:PORT]  ask this resolver instead of /etc/resolv.conf's
  -dryRun           decide and log, but always proceed, never delay

Only ``127.0.4.N`` (N <= 100) is a score.  ``127.255.255.255`` - Validity's
answer to unregistered or over-quota resolvers - and any other answer are
"unknown", never a score (the Go filter reads it as 127), and a warning is
logged at most once per 5 minutes.  NXDOMAIN means "no data".  An unscored
client is never blocked, junked or delayed.  IPv6 clients are not looked up
(SenderScore has no IPv6 data) but can be allowlisted; local (unix socket)
sessions are skipped.  An inbound ``X-SenderScore`` header from the client is
removed when -scoreHeader is on.

One log line per decision on stderr, keyed by session id.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

from smtpd_filter_sdk import Filter, disconnect, junk
from smtpd_filter_sdk.filter import REQUEST_PHASES
from smtpd_filter_sdk.dns import Resolver, VerdictCache, check_nameservers, dnsbl_name
from smtpd_filter_sdk.goflags import GoFlags, Options, lookup_timeout, non_negative
from smtpd_filter_sdk.netaddr import CIDRList, ListFile, ListFileError, client_ip

PROG = "py-filter-senderscore"

#: ``make demo`` runs it in test mode (score = the client address's last
#: octet, no DNS at all).
DEMO = {"args": ["-testMode", "-junkBelow", "50", "-scoreHeader"]}
ZONE = "score.senderscore.com"
BLOCK_PHASES = ("connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "quit")
#: every phase whose answer -slowFactor delays: all the SDK can be asked
#: about but data-line (smtpd never asks filters about HELP/WIZ)
DELAYED_PHASES = REQUEST_PHASES
BLOCK_TEXT = "your IP reputation is too low for this MX"
HEADER = "X-SenderScore"
SCORE_NET = ipaddress.ip_network("127.0.4.0/24")
BLOCKED_ANSWER = "127.255.255.255"
UNKNOWN_WARN_INTERVAL = 300.0
KEY = "senderscore"


@dataclass(frozen=True, slots=True)
class Score:
    """A client's score (``value`` None: not scored) and where it came from."""

    value: int | None
    source: str  # dns | allowlist | test | nodata | unknown | timeout | error | ipv6 | local | noaddr
    detail: str = ""

    def describe(self) -> str:
        if self.value is not None:
            return f"score={self.value} ({self.source})"
        why = {
            "nodata": "no data (NXDOMAIN)",
            "unknown": f"unknown answer {self.detail}",
            "timeout": f"lookup timed out: {self.detail}",
            "error": f"lookup failed: {self.detail}",
            "ipv6": "IPv6, not scored",
            "local": "local session, skipped",
            "noaddr": "no client address",
            "test": f"test mode: {self.detail}",
        }.get(self.source, self.source)
        return f"score=none ({why})"


_NOADDR = Score(None, "noaddr")
_LOCAL = Score(None, "local")
_IPV6 = Score(None, "ipv6")
_ALLOWLISTED = Score(100, "allowlist")


def score_from_answer(status: str, values: Sequence[str], detail: str = "") -> Score:
    """What a SenderScore DNS answer means.  Only ``127.0.4.N`` with
    N <= 100 is a score; several answers must agree."""
    if status in ("nxdomain", "nodata"):
        return Score(None, "nodata")
    if status in ("timeout", "error"):
        return Score(None, status, detail)
    scores: set[int] = set()
    for text in values:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return Score(None, "unknown", repr(text)[:64])
        if ip.version != 4 or ip not in SCORE_NET or int(text.rsplit(".", 1)[1]) > 100:
            return Score(None, "unknown", text)
        scores.add(int(text.rsplit(".", 1)[1]))
    if len(scores) != 1:
        return Score(None, "unknown", ",".join(values)[:64] or "empty answer")
    return Score(scores.pop(), "dns")


def test_mode_score(ip: ipaddress.IPv4Address) -> Score:
    last = int(str(ip).rsplit(".", 1)[1])
    if last > 100:
        return Score(None, "test", f"last octet {last}")
    return Score(last, "test")


# --------------------------------------------------------------------------
# Flags


def slow_factor(value: int) -> int:
    if value > 600_000:
        raise ValueError("at most 600000 ms")
    return value


def flags() -> GoFlags:
    g = GoFlags(PROG, "SenderScore reputation filter for OpenSMTPD (drop-in for filter-senderscore).")
    g.int("blockBelow", -1, "disconnect clients whose score is below N (-1: never)")
    g.choice("blockPhase", "connect", BLOCK_PHASES, "phase at which to disconnect", metavar="PHASE")
    g.int("junkBelow", -1, "junk sessions whose score is below N (-1: never)")
    g.int("slowFactor", -1, "delay every answer by MS*(100-score)/100 ms (-1: never)", metavar="MS", validate=slow_factor)
    g.bool("scoreHeader", False, "add 'X-SenderScore: N' to every message")
    g.string("allowlist", "", "file of IPv4/IPv6 addresses and CIDRs scored 100, never looked up", metavar="FILE", aliases=("whitelist",))
    g.bool("testMode", False, "no DNS: the score is the client address's last octet (.255: unknown)")
    g.float("timeout", 2.0, "seconds a lookup may take", validate=lookup_timeout)
    g.float("cacheTTL", 3600.0, "seconds a score is cached per IP (0: no cache)", validate=non_negative)
    g.string("resolver", "", "resolver to ask, HOST[:PORT][,...] (default: /etc/resolv.conf)", metavar="HOST[:PORT]", validate=check_nameservers)
    g.bool("dryRun", False, "log decisions but always proceed, never delay")
    return g


# --------------------------------------------------------------------------
# The filter


class SenderScore:
    """Scores clients; shared by all sessions of the process."""

    def __init__(self, opts: Options, log: Any, resolver: Resolver | None = None) -> None:
        self.opts = opts
        self.log = log
        self.allowlist: ListFile[CIDRList] | None = (
            ListFile(opts.allowlist, CIDRList.parse) if opts.allowlist else None
        )
        if resolver is None and not opts.testMode:
            servers = opts.resolver.split(",") if opts.resolver else None
            resolver = Resolver(servers, timeout=opts.timeout)
        self.resolver = resolver
        self.cache: VerdictCache[str, Score] = VerdictCache(
            ttl=opts.cacheTTL, maxsize=200_000, ttl_for=self._ttl_for
        )
        self._ips: dict[str, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]] = {}
        self._last_warning = float("-inf")
        self._suppressed = 0

    def _ttl_for(self, score: Score) -> float:
        ttl = self.opts.cacheTTL
        if score.source in ("timeout", "error"):
            return min(ttl, 5.0)  # spare a failing resolver, but not for long
        if score.source == "unknown":
            return min(ttl, 60.0)
        return ttl

    def reload(self) -> None:
        if self.allowlist is not None:
            self.allowlist.reload()

    # -- scoring ---------------------------------------------------------

    def client(self, src: Any) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str] | None:
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

    def immediate(self, session: Any) -> Score | None:
        """The score if no lookup is needed (local, IPv6, allowlist, test
        mode, cached); None when DNS must be asked."""
        src = session.src
        if src is None:
            return _NOADDR
        if src.is_local:
            return _LOCAL
        found = self.client(src)
        if found is None:
            return Score(None, "noaddr", str(src))
        ip, key = found
        if self.allowlist is not None and ip in self.allowlist.current:
            return _ALLOWLISTED
        if ip.version == 6:
            return _IPV6
        if self.opts.testMode:
            return test_mode_score(ip)
        return self.cache.peek(key)

    def prefetch(self, session: Any) -> None:
        """Start the lookup at link-connect, so that it runs while smtpd
        gets to the connect phase (and never blocks anyone)."""
        known = self.immediate(session)
        if known is not None:
            session.data[KEY] = known  # connect answers with it, no second look
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # driven without a running loop (tests): connect looks it up
        found = self.client(session.src)
        if found is not None:
            key = found[1]
            self.cache.start(key, lambda: self.lookup(key))

    async def score(self, session: Any) -> Score:
        known = session.data.get(KEY)
        if known is not None:
            return known
        score = self.immediate(session)
        if score is None:
            key = self.client(session.src)[1]  # type: ignore[index]  (immediate() checked it)
            score = await self.cache.get(key, lambda: self.lookup(key))
        session.data[KEY] = score
        return score

    async def lookup(self, ip: str) -> Score:
        assert self.resolver is not None
        answer = await self.resolver.query(dnsbl_name(ip, ZONE), "A")
        score = score_from_answer(answer.status, answer.values, answer.detail)
        if score.source == "unknown":
            self.warn_unknown(ip, score)
        return score

    def warn_unknown(self, ip: str, score: Score) -> None:
        now = time.monotonic()
        if now - self._last_warning < UNKNOWN_WARN_INTERVAL:
            self._suppressed += 1
            return
        more = f"; {self._suppressed} more since the last warning" if self._suppressed else ""
        if score.detail == BLOCKED_ANSWER:
            why = (
                "SenderScore answered 127.255.255.255: this resolver's address is not registered "
                "with Validity or is over its quota, so no client gets a score"
            )
        else:
            why = f"SenderScore gave an answer that is not a score ({score.detail})"
        self.log(f"warning: {why} (first seen for {ip}; next warning in {UNKNOWN_WARN_INTERVAL:.0f}s at the earliest{more})")
        self._last_warning = now
        self._suppressed = 0

    # -- decisions -------------------------------------------------------

    def delay(self, score: Score) -> float:
        factor = self.opts.slowFactor
        if factor <= 0 or score.value is None or self.opts.dryRun:
            return 0.0
        return max(0.0, factor * (100 - score.value) / 100.0 / 1000.0)

    def blocked(self, score: Score) -> bool:
        return score.value is not None and self.opts.blockBelow >= 0 and score.value < self.opts.blockBelow

    def junked(self, score: Score) -> bool:
        return score.value is not None and self.opts.junkBelow >= 0 and score.value < self.opts.junkBelow


def build(opts: Options, resolver: Resolver | None = None) -> Filter:
    """The filter for parsed flags (``resolver`` for tests)."""
    max_delay = max(0, opts.slowFactor) / 1000.0
    f = Filter("senderscore", on_error="fail-open", deadline=opts.timeout + max_delay + 2.0)
    ss = SenderScore(opts, lambda *a: f.log(*a), resolver)  # f.log may be swapped (harnesses)
    f.senderscore = ss  # type: ignore[attr-defined]  (for tests)
    dry = " (dry run)" if opts.dryRun else ""

    @f.on_report("link-connect")
    def start_lookup(session, report):
        ss.prefetch(session)

    @f.on_reload
    def reload():
        ss.reload()

    async def answer(session, phase: str, decision: Any, score: Score) -> Any:
        wait = ss.delay(score)
        if wait:
            await asyncio.sleep(wait)
        return decision

    # What a score means at connect (the decision, the log line after the
    # client's address, the delay) is the same for every session with that
    # score: worked out once per score, not per session.
    outcomes: dict[Score, tuple[Any, str | None, float]] = {}

    def outcome(score: Score) -> tuple[Any, str | None, float]:
        found = outcomes.get(score)
        if found is not None:
            return found
        decision: Any = None
        verdict = "proceed"
        if ss.opts.blockPhase == "connect" and ss.blocked(score):
            decision, verdict = disconnect(550, BLOCK_TEXT), f"disconnect (below {ss.opts.blockBelow})"
        elif ss.junked(score):
            decision, verdict = junk(), f"junk (below {ss.opts.junkBelow})"
        elif ss.blocked(score):
            verdict = f"proceed, disconnect at {ss.opts.blockPhase} (below {ss.opts.blockBelow})"
        wait = ss.delay(score)
        slow = f", delay {wait * 1000:.0f}ms" if wait else ""
        tail = None if score.source == "local" else f"{score.describe()}: {verdict}{slow}{dry}"
        if len(outcomes) >= 4096:  # error details vary: keep it bounded
            outcomes.clear()
        found = outcomes[score] = (None if opts.dryRun else decision, tail, wait)
        return found

    def decide(session, score: Score) -> Any:
        """The connect answer for a score: the decision, or (with a
        -slowFactor delay) an awaitable that waits, then gives it."""
        session.data[KEY] = score
        decision, tail, wait = outcome(score)
        if tail is not None:  # local sessions are not logged
            src = session.src
            f.log(f"connect addr={src.host if src else '?'} {tail}", session.id)
        return answer(session, "connect", decision, score) if wait else decision

    async def look_up_then_decide(session) -> Any:
        result = decide(session, await ss.score(session))
        return await result if inspect.isawaitable(result) else result

    @f.on("connect")
    def connect(session, rdns, src):
        # A score known without asking DNS (cache, allowlist, test mode,
        # local, IPv6) is answered at once; only a lookup costs a task.
        score = session.data.get(KEY) or ss.immediate(session)
        if score is None:
            return look_up_then_decide(session)
        return decide(session, score)

    def phase_handler(phase: str):
        blocking = phase == ss.opts.blockPhase and phase != "connect"

        async def handler(session, *args):
            score = session.data.get(KEY) or Score(None, "noaddr")
            decision = None
            if blocking and ss.blocked(score):
                f.log(f"{phase}: {score.describe()} below {ss.opts.blockBelow}: disconnect{dry}", session.id)
                if not opts.dryRun:
                    decision = disconnect(550, BLOCK_TEXT)
            return await answer(session, phase, decision, score)

        handler.__name__ = f"on_{phase.replace('-', '_')}"
        return handler

    phases = set()
    if opts.slowFactor > 0 and not opts.dryRun:
        phases.update(DELAYED_PHASES)
    if opts.blockBelow >= 0 and opts.blockPhase != "connect":
        phases.add(opts.blockPhase)
    phases.discard("connect")
    for phase in sorted(phases):
        f.on(phase)(phase_handler(phase))

    if opts.scoreHeader:

        @f.on_headers
        def header(session, headers):
            # What the client sent comes after smtpd's own Received header;
            # headers above it were added by smtpd or earlier filters.
            # A block without one is never split into fields (the lazy test).
            if HEADER in headers:
                first_received = next((i for i, h in enumerate(headers.fields) if h.name.lower() == "received"), -1)
                keep = headers.fields[: first_received + 1]
                client = [h for h in headers.fields[first_received + 1 :] if h.name.lower() != HEADER.lower()]
                headers.fields = keep + client
            # The connect answer normally came first (smtpd waits for it);
            # a stream sent ahead of the answers (a transcript) may bring the
            # message before: then a score known without a lookup counts.
            score = session.data.get(KEY) or ss.immediate(session)
            if score is not None and score.value is not None:
                headers.add(HEADER, str(score.value))

    return f


def main(argv: Sequence[str] | None = None) -> int:
    g = flags()
    opts = g.parse(argv)
    if opts.testMode and opts.resolver:
        g.fail("-testMode does not query DNS: -resolver makes no sense with it")
    try:
        f = build(opts)
    except ListFileError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 1
    if opts.blockPhase == "quit" and opts.blockBelow >= 0:
        f.log("warning: -blockPhase quit: the client has already sent its mail when it is disconnected")
    mode = "test mode" if opts.testMode else repr(f.senderscore.resolver)  # type: ignore[attr-defined]
    f.log(f"starting ({mode}, blockBelow={opts.blockBelow} at {opts.blockPhase}, junkBelow={opts.junkBelow}, "
          f"slowFactor={opts.slowFactor}, scoreHeader={opts.scoreHeader}{', dry run' if opts.dryRun else ''})")
    f.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
