"""py-filter-spamtraps: spamtrap addresses for OpenSMTPD, in the spirit of
OpenBSD spamd's greytrapping and rspamd's spamtrap module.

    filter "spamtraps" proc-exec "py-filter-spamtraps -traps /etc/mail/spamtraps -db /var/lib/spamtraps/traps.db"

A client that sends to a trap address (RCPT TO) is a spammer: that recipient
gets the answer -action says, and the client's address is *trapped* - its
later sessions are refused (-blockPhase, default at connect) until the trap
expires (-expire, default 24h).  The reply never reveals the trap:

  -action reject      (default) ``550 Invalid recipient: <addr>``, word for
                      word what smtpd says for an unknown user
  -action disconnect  ``421 4.3.0 Temporary failure, closing connection``
  -action junk        accept silently; smtpd marks the message ``X-Spam: Yes``

  -traps FILE[,FILE]  trap addresses: ``trap@example.org``, ``*@example.org``,
                      ``/regex/flags`` (rspamd map syntax); re-read on SIGHUP
  -expire D           how long a trap hit blocks (default 24h)
  -escalateHits N     N hits within -escalateWithin block for -escalateExpire
  -blockPhase P       connect (default), helo, ehlo, mail-from or rcpt-to;
                      authenticated sessions pass at mail-from and later
  -blockReply R       temp (default: ``421 4.7.0 Service temporarily
                      unavailable, try again later``) or perm (``554 5.7.1
                      Service unavailable``)
  -ipv6Prefix N       trap IPv6 clients by their /N (default 128: the address)
  -allowlist FILE     IPs/CIDRs never trapped (nor blocked); SIGHUP re-reads it
  -spf                never trap a sender whose domain is on -spfDomains and
                      passes SPF (default on; -spf=false)
  -spfDomains FILE    those domains (default: big providers, see SPF_DOMAINS)
  -spfTimeout S       an SPF check's deadline (default 3); -resolver HOST[:PORT]
  -db PATH            the SQLite record (WAL), read by ``py-spamtraps``
  -redis URL          share trapped addresses with other MX hosts
  -learnSpam URL      teach rspamd (its controller, /learnspam) the messages
                      trapped sessions send; -learnPassword if it asks for one;
                      -learnMaxHeld BYTES bounds what all of them hold at once
                      (default 16 MiB; a message that would pass it is not sent)
  -dryRun             decide and log, always proceed

Never trapped: authenticated and local sessions, allowlisted addresses,
SPF-passing senders of -spfDomains.  A sender can be trapped once per
session (further trap recipients get the same answer).  One log line per
decision on stderr, keyed by session id; the log names the trap, the client
never sees it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import sys
import time
from typing import Any, Sequence

from smtpd_filter_sdk import Filter, disconnect, junk, reject
from smtpd_filter_sdk.dns import check_nameservers
from smtpd_filter_sdk.goflags import GoFlags, Options, duration, lookup_timeout
from smtpd_filter_sdk.netaddr import CIDRList, DomainList, ListFile, ListFileError, client_ip

from smtpd_filters.traplist import TrapList
from smtpd_filters.trapstore import Policy, TrapStore, client_keys, record_key

PROG = "py-filter-spamtraps"
KEY = "spamtraps"
#: set once this session was checked against the trapped clients
CHECKED = "spamtraps.checked"

#: Senders from these domains that pass SPF are never trapped: a typo by a
#: big provider's user must not block the provider's outbound MX.
SPF_DOMAINS = (
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com",
    "yahoo.com", "aol.com", "icloud.com", "me.com", "mac.com", "gmx.net", "gmx.de", "web.de",
    "mail.ru", "yandex.ru", "proton.me", "protonmail.com", "fastmail.com", "zoho.com",
)
BLOCK_PHASES = ("connect", "helo", "ehlo", "mail-from", "rcpt-to")
BLOCK_REPLIES = {
    "temp": (421, "Service temporarily unavailable, try again later", "4.7.0"),
    "perm": (554, "Service unavailable", "5.7.1"),
}
#: what -action disconnect says: neutral, and temporary, so that a sender
#: caught by mistake retries (and is refused until the trap expires)
DISCONNECT_REPLY = (421, "Temporary failure, closing connection", "4.3.0")

#: ``make demo``: session 1 writes to the trap bob@example.net (550, as for
#: an unknown user) and is trapped; session 2 writes to other addresses.
DEMO = {
    "args": ["-traps", "{tmp}/traps", "-db", "{tmp}/traps.db", "-spf=false"],
    "files": {"traps": "bob@example.net\n*@honeypot.example.org\n/^old-[0-9]+@example\\.org$/i\n"},
}


class StartupError(Exception):
    """Something the filter cannot start without (one line for smtpd's log)."""


def flags() -> GoFlags:
    g = GoFlags(PROG, "Spamtrap addresses for OpenSMTPD: a client that writes to one is blocked for a while.")
    g.string("traps", "", "trap address files, comma-separated (exact, *@domain, /regex/)", metavar="FILE[,FILE]")
    g.choice("action", "reject", ("reject", "disconnect", "junk"), "answer to the trap recipient itself")
    g.string("expire", "24h", "how long a trap hit blocks the client", metavar="DURATION", validate=duration)
    g.int("escalateHits", 0, "this many hits within -escalateWithin block for -escalateExpire (0: off)", validate=_non_negative_int)
    g.string("escalateWithin", "7d", "window for -escalateHits", metavar="DURATION", validate=duration)
    g.string("escalateExpire", "30d", "block after -escalateHits", metavar="DURATION", validate=duration)
    g.choice("blockPhase", "connect", BLOCK_PHASES, "phase at which trapped clients are refused", metavar="PHASE")
    g.choice("blockReply", "temp", tuple(BLOCK_REPLIES), "refuse trapped clients with 421 (temp) or 554 (perm)")
    g.int("ipv6Prefix", 128, "trap IPv6 clients by their /N network", validate=_v6prefix)
    g.string("allowlist", "", "file of IPs/CIDRs never trapped nor blocked", metavar="FILE")
    g.bool("spf", True, "never trap senders of -spfDomains whose SPF passes")
    g.string("spfDomains", "", "file of such domains (default: large mail providers)", metavar="FILE")
    g.float("spfTimeout", 3.0, "seconds an SPF check may take", validate=lookup_timeout)
    g.string("resolver", "", "resolver for SPF, HOST[:PORT][,...] (default: /etc/resolv.conf)", metavar="HOST[:PORT]", validate=check_nameservers)
    g.string("db", "/var/lib/py-filter-spamtraps/traps.db", "SQLite file of trapped clients", metavar="PATH")
    g.string("redis", "", "share trapped clients through Redis (redis://host:port/db, unix:///path)", metavar="URL", validate=_redis_url)
    g.string("redisPrefix", "spamtraps:", "prefix of the Redis keys and channel", metavar="PREFIX")
    g.string("learnSpam", "", "rspamd controller to teach trapped messages as spam (POST /learnspam)", metavar="URL")
    g.string("learnPassword", "", "the controller's password (Password header), if it asks for one", metavar="PASSWORD")
    g.float("learnTimeout", 10.0, "seconds a /learnspam request may take", validate=lookup_timeout)
    g.int("learnMaxHeld", LEARN_HELD, "bytes of trapped messages held for or being sent to rspamd, all sessions together; a message that would pass it is not sent", metavar="BYTES", validate=_positive_int)
    g.bool("dryRun", False, "log decisions but always proceed, record nothing")
    return g


def _positive_int(value: int) -> int:
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _non_negative_int(value: int) -> int:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _redis_url(url: str) -> str:
    try:
        from smtpd_filters.trapredis import check_url  # redis-py is needed only with -redis
    except ImportError:
        return url  # not a flag error: build() says what to install
    return check_url(url)


def _extra(flag: str, module: str, package: str, extra: str, alternative: str = "") -> None:
    """A flag's optional dependency, or a StartupError saying what to install."""
    try:
        __import__(module)
    except ImportError:
        raise StartupError(f"{flag} needs {package}: pip install 'smtpd-filters[{extra}]'{alternative}") from None


def _v6prefix(value: int) -> int:
    if not 16 <= value <= 128:
        raise ValueError("between 16 and 128")
    return value


def seconds(value: Any) -> int:
    """A duration flag's value (its default is still the text) in seconds."""
    return int(duration(str(value)))


def policy_of(opts: Options) -> Policy:
    return Policy(seconds(opts.expire), opts.escalateHits, seconds(opts.escalateWithin), seconds(opts.escalateExpire))


class SpamTraps:
    """The decisions; shared by all sessions of the process."""

    def __init__(self, opts: Options, log: Any, store: TrapStore, spf: Any = None) -> None:
        self.opts = opts
        self.log = log
        self.store = store
        self.spf = spf
        self.trap_files = [p for p in opts.traps.split(",") if p]
        self.traps = TrapList.load(self.trap_files)
        self.allowlist: ListFile[CIDRList] | None = ListFile(opts.allowlist, CIDRList.parse) if opts.allowlist else None
        self.spf_domains: ListFile[DomainList] | None = None
        self.default_spf_domains = DomainList(SPF_DOMAINS)
        if opts.spfDomains:
            self.spf_domains = ListFile(opts.spfDomains, DomainList.parse)
        self._keys: dict[str, tuple[Any, tuple[str, ...]] | None] = {}

    def reload(self) -> None:
        # all or nothing: a bad second file keeps every old list
        traps = TrapList.load(self.trap_files)
        allow = self.allowlist.read() if self.allowlist else None
        domains = self.spf_domains.read() if self.spf_domains else None
        self.traps = traps
        if self.allowlist is not None and allow is not None:
            self.allowlist.current = allow
        if self.spf_domains is not None and domains is not None:
            self.spf_domains.current = domains

    def client(self, session: Any) -> tuple[Any, tuple[str, ...]] | None:
        """(address, keys that block it), memoised by the source text; None
        for local sessions and unusable addresses."""
        src = session.src
        if src is None or src.is_local:
            return None
        host = src.host
        try:
            return self._keys[host]
        except KeyError:
            pass
        ip = client_ip(src)
        found = (ip, client_keys(ip, self.opts.ipv6Prefix)) if ip is not None else None
        if len(self._keys) >= 4096:  # a small memo: ~250 bytes an entry, and the memory target is tight
            self._keys.clear()
        self._keys[host] = found
        return found

    def allowlisted(self, ip: Any) -> bool:
        return self.allowlist is not None and ip in self.allowlist.current

    def blocked_until(self, session: Any) -> int | None:
        found = self.client(session)
        if found is None:
            return None
        ip, keys = found
        until = self.store.blocked_until(keys)
        if until is None or self.allowlisted(ip):
            return None
        return until

    def exempt(self, session: Any) -> str | None:
        """Why this session is never trapped (before any SPF check), or None."""
        if session.is_local:
            return "local session"
        if session.authenticated:
            return f"authenticated as {session.auth_user}"
        found = self.client(session)
        if found is None:
            return "no client address"
        if self.allowlisted(found[0]):
            return "allowlisted address"
        return None

    def spf_domain(self, session: Any) -> str | None:
        """The sender domain to check SPF for, if it is on the list."""
        if not self.opts.spf:
            return None
        tx = session.tx
        sender = (tx.mail_from if tx is not None else None) or ""
        domain = sender.rpartition("@")[2] if "@" in sender else (session.helo or "")
        domains = self.spf_domains.current if self.spf_domains is not None else self.default_spf_domains
        return domain if domains.match(domain) else None


def build(opts: Options, *, store: TrapStore | None = None, spf: Any = None) -> Filter:
    """The filter for parsed flags (``store``, ``spf``: for tests)."""
    f = Filter("spamtraps", on_error="fail-open", deadline=max(opts.spfTimeout, opts.learnTimeout) + 2.0)
    log = lambda *a: f.log(*a)  # noqa: E731  (f.log may be swapped by harnesses)
    if store is None:
        try:
            store = TrapStore(opts.db, policy_of(opts), host=socket.gethostname(), log=log)
        except (sqlite3.Error, OSError) as exc:
            raise StartupError(f"{opts.db}: {exc}{_db_hint(opts.db)}") from None
    if spf is None and opts.spf:
        _extra("-spf", "smtpd_filters.spfcheck", "pyspf", "spf", " (or -spf=false)")
        from smtpd_filters.spfcheck import SpfChecker

        spf = SpfChecker(timeout=opts.spfTimeout, nameservers=opts.resolver.split(",") if opts.resolver else None)
    st = SpamTraps(opts, log, store, spf)
    f.spamtraps = st  # type: ignore[attr-defined]  (for tests)
    if opts.redis:
        _extra("-redis", "redis", "redis-py", "spamtraps")
        from smtpd_filters.trapredis import RedisMirror

        mirror = RedisMirror(opts.redis, store, prefix=opts.redisPrefix, log=log, host=store.host)
        store.on_recorded = mirror.recorded  # our hits go out from the store's writer
        f.on_start(mirror.run)  # theirs come in; sessions never wait for it
        f.redis = mirror  # type: ignore[attr-defined]
    dry = " (dry run)" if opts.dryRun else ""
    code, text, enhanced = BLOCK_REPLIES[opts.blockReply]

    @f.on_reload
    def reload():
        st.reload()

    def refuse(session: Any, phase: str) -> Any:
        """A trapped client at -blockPhase: the neutral refusal."""
        session.data[CHECKED] = True
        if phase != "connect" and session.authenticated:
            return None
        until = st.blocked_until(session)
        if until is None:
            return None
        left = until - int(store.clock())
        f.log(f"{phase}: addr={session.src.host} is trapped ({left}s left): refused{dry}", session.id)
        return None if opts.dryRun else disconnect(code, text, enhanced=enhanced)

    if opts.blockPhase == "connect":

        @f.on("connect")
        def connect(session, rdns, src):
            return refuse(session, "connect")

    elif opts.blockPhase not in ("mail-from", "rcpt-to"):
        f.on(opts.blockPhase)(lambda session, *args: refuse(session, opts.blockPhase))

    # In a chain, any answer but proceed ends a phase's round: a client an
    # earlier filter junked at connect (or HELO) never reaches our check
    # there (research/protocol.md 4.7).  Such a session is checked at MAIL
    # FROM, or at its first RCPT TO.
    if opts.blockPhase != "rcpt-to":

        @f.on("mail-from")
        def mail_from(session, address):
            if opts.blockPhase == "mail-from" or not session.data.get(CHECKED):
                return refuse(session, "mail-from")
            return None

    def answer(address: str) -> Any:
        if opts.dryRun:
            return None
        if opts.action == "reject":
            return reject(550, f"Invalid recipient: <{address}>")  # smtpd's own words for an unknown user
        if opts.action == "disconnect":
            c, t, e = DISCONNECT_REPLY
            return disconnect(c, t, enhanced=e)
        return junk()

    def trap(session: Any, address: str, entry: str) -> Any:
        ip, _ = st.client(session)  # type: ignore[misc]  (exempt() checked it)
        data = session.data
        if data.get(KEY):
            f.log(f"rcpt-to: trap {entry} again: {opts.action}{dry}", session.id)
            return answer(address)
        data[KEY] = entry
        key = record_key(ip, opts.ipv6Prefix)
        if opts.dryRun:
            f.log(f"rcpt-to: trap {entry} hit by {key}: would {opts.action} and block for {seconds(opts.expire)}s{dry}", session.id)
            return None
        until = store.hit(key, entry)
        f.log(f"rcpt-to: trap {entry} hit by {key}: {opts.action}, blocked until {_utc(until)}", session.id)
        return answer(address)

    async def spf_then_trap(session: Any, address: str, entry: str, domain: str) -> Any:
        tx = session.tx
        sender = (tx.mail_from if tx is not None else None) or ""
        try:
            result = await st.spf.check(session.src.host, sender, session.helo or "")
        except Exception as exc:  # noqa: BLE001 - a broken check is no pass
            result = f"error ({exc!r})"
        if result == "pass":
            f.log(f"rcpt-to: trap {entry}: not trapped (SPF pass for {domain})", session.id)
            return None
        f.log(f"rcpt-to: trap {entry}: SPF {result} for {domain}", session.id)
        return trap(session, address, entry)

    @f.on("rcpt-to")
    def rcpt_to(session, address):
        if opts.blockPhase == "rcpt-to" or not session.data.get(CHECKED):
            refused = refuse(session, "rcpt-to")
            if refused is not None:
                return refused
        entry = st.traps.match(address)
        if entry is None:
            return None
        why = st.exempt(session)
        if why is not None:
            f.log(f"rcpt-to: trap {entry}: not trapped ({why})", session.id)
            return None
        domain = st.spf_domain(session) if st.spf is not None else None
        if domain is not None:
            return spf_then_trap(session, address, entry, domain)
        return trap(session, address, entry)

    if opts.learnSpam and not opts.dryRun:
        learn_spam(f, opts)

    return f


#: a trapped message larger than this is passed on but not sent to rspamd
LEARN_MAX = 10 << 20
#: -learnMaxHeld's default: what the trapped messages of every session may
#: hold at once, while they arrive and while rspamd is being sent them.  A
#: botnet writing to traps from many clients would otherwise hold up to
#: LEARN_MAX per session, and a slow rspamd keep every body in flight.
LEARN_HELD = 16 << 20
LEARN = "spamtraps.learn"


def learn_spam(f: Filter, opts: Options) -> None:
    """Send the messages of trapped sessions to rspamd's /learnspam, after
    smtpd committed them; asynchronous, failures only logged."""
    from smtpd_filter_sdk.http import HTTPClient, HTTPError

    client = HTTPClient(opts.learnSpam, timeout=opts.learnTimeout)
    headers = [("Password", opts.learnPassword)] if opts.learnPassword else []

    # Bytes of trapped messages held (arriving) or in flight (being sent),
    # every session together: what -learnMaxHeld bounds.
    held = [0]

    @f.on_data_line
    def collect(session, line):
        # Only a trapped session's lines are kept (the trap was hit at RCPT,
        # before DATA); everyone else's pass by untouched.  A message is
        # [size, line, line, ...]; [] once it was given up (logged).
        if session.data.get(KEY):
            buf = session.data.setdefault(LEARN, [0])
            if not buf:
                return None
            cost = len(line) + 2
            if buf[0] + cost > LEARN_MAX:
                why = f"message over {LEARN_MAX} bytes"
            elif held[0] + cost > opts.learnMaxHeld:
                why = f"{held[0]} bytes of trapped mail already held for rspamd (-learnMaxHeld {opts.learnMaxHeld})"
            else:
                buf.append(line)
                buf[0] += cost
                held[0] += cost
                return None
            f.log(f"learnspam: {why}: this message is not sent", session.id)
            held[0] -= buf[0]
            buf.clear()  # its lines go now, not at the end of the message
        return None

    # smtpd sends tx-reset after every commit and rollback, before any
    # link-disconnect of a session with a transaction open (protocol.md
    # 7.14): a handler at link-disconnect too would cost every session.
    @f.on_report("tx-rollback", "tx-reset")
    def forget(session, report):
        buf = session.data.pop(LEARN, None)
        if buf:
            held[0] -= buf[0]

    sending: set[asyncio.Task[None]] = set()

    @f.on_report("tx-commit")
    def committed(session, report):
        # Taken now: tx-reset follows in the same read and would drop it.
        buf = session.data.pop(LEARN, None)
        if not buf:
            return
        size = buf[0]
        try:
            task = asyncio.get_running_loop().create_task(learn(session.id, b"\r\n".join(buf[1:]) + b"\r\n"))
        except RuntimeError:  # no event loop (driven in-process by a test): nothing sends it
            held[0] -= size
            raise
        sending.add(task)

        def sent(task: asyncio.Task[None]) -> None:
            sending.discard(task)
            held[0] -= size  # counted until rspamd has answered (or not)

        task.add_done_callback(sent)

    async def learn(sid: str, body: bytes) -> None:
        try:
            reply = await client.post("/learnspam", body, headers)
        except HTTPError as exc:
            f.log(f"learnspam: {opts.learnSpam} failed ({exc})", sid)
            return
        f.log(f"learnspam: {len(body)} bytes learnt as spam (HTTP {reply.status})", sid)

    @f.on_shutdown
    async def close_client():
        await client.close()


def _db_hint(path: str) -> str:
    """Why SQLite could not open ``path``, in the admin's terms (SQLite says
    only "unable to open database file")."""
    where = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(where):
        return f" (the directory {where} does not exist: create it, writable by smtpd's filter user)"
    if not os.access(where, os.W_OK | os.X_OK):
        return f" (the directory {where} is not writable by uid {os.getuid()}, smtpd's filter user: WAL needs it)"
    return ""


def _utc(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def main(argv: Sequence[str] | None = None) -> int:
    g = flags()
    opts = g.parse(argv)
    if not opts.traps:
        g.fail("-traps FILE is required")
    try:
        f = build(opts)
    except (ListFileError, StartupError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 1
    st = f.spamtraps  # type: ignore[attr-defined]
    shown = f.redis.shown if opts.redis else ""  # type: ignore[attr-defined]  (no password in the log)
    f.on_shutdown(st.store.close)  # smtpd gone: write the pending hits, then exit
    f.log(
        f"starting ({len(st.traps)} traps, {len(st.store.cache)} trapped clients in {opts.db}; "
        f"action={opts.action} expire={seconds(opts.expire)}s blockPhase={opts.blockPhase}"
        f"{' redis=' + shown if shown else ''}{' dry run' if opts.dryRun else ''})"
    )
    f.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
