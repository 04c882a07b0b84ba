"""py-spamtraps: look at and change py-filter-spamtraps' trapped clients,
as spamdb(8) does for spamd.

    py-spamtraps [-db PATH] [-redis URL] [-redisPrefix P] list [-all]
    py-spamtraps [-db PATH] [-redis URL] add [-expire 24h] ADDRESS|NETWORK ...
    py-spamtraps [-db PATH] [-redis URL] del ADDRESS|NETWORK ...
    py-spamtraps [-db PATH] expire

``list`` prints one trapped client a line, tab-separated: key, blocked until,
hits, first and last hit (UTC), recording host, last trap address (``-all``:
expired ones and deletions too).  ``add`` takes what the filter looks a
client up by: an IPv4 address (never a network), an IPv6 address, its /64,
or a network of the filter's ``-ipv6Prefix`` length (noted).  With ``-redis`` it lists what Redis holds
(every MX host's traps).  ``add`` blocks a client (IPv6 networks as
``2001:db8:1:2::/64``), ``del`` unblocks it (and names a key that was
not blocked, with the network entry that blocks it if there is one), ``expire`` removes expired rows
from the SQLite file.  The running filter sees changes to its SQLite file
within ~2 s, and with ``-redis`` every MX host sees them at once (pub/sub).
"""

from __future__ import annotations

import ipaddress
import sys
import time
from typing import Sequence

from smtpd_filter_sdk.goflags import GoFlags, duration
from smtpd_filters.trapstore import Policy, Trap, TrapStore, parse_key

PROG = "py-spamtraps"
COMMANDS = ("list", "add", "del", "expire")


def _utc(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else "-"


def global_flags() -> GoFlags:
    g = GoFlags(PROG, "Trapped clients of py-filter-spamtraps.", positional="list|add|del|expire [ARGS]")
    g.string("db", "/var/lib/py-filter-spamtraps/traps.db", "the filter's SQLite file", metavar="PATH")
    g.string("redis", "", "also Redis (list: what Redis holds; add/del: every MX host)", metavar="URL")
    g.string("redisPrefix", "spamtraps:", "prefix of the Redis keys and channel", metavar="PREFIX")
    return g


def command_flags(cmd: str) -> GoFlags:
    positional = {"list": None, "expire": None}.get(cmd, "ADDRESS|NETWORK ...")
    g = GoFlags(f"{PROG} {cmd}", positional=positional)
    if cmd == "list":
        g.bool("all", False, "expired entries and deletions too")
    if cmd == "add":
        g.string("expire", "24h", "how long the client is blocked", metavar="DURATION", validate=duration)
    return g


def format_row(t: Trap) -> str:
    return "\t".join([t.key, _utc(t.expires), str(t.hits), _utc(t.first), _utc(t.last), t.host or "-", t.trap or "-"])


def main(argv: Sequence[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    g = global_flags()
    opts = g.parse(argv)
    if not opts.args or opts.args[0] not in COMMANDS:
        g.fail(f"a command is required: one of {', '.join(COMMANDS)}")
    cmd = opts.args[0]
    cg = command_flags(cmd)
    copts = cg.parse(opts.args[1:])
    keys: list[str] = []
    for text in copts.args:
        try:
            keys.append(parse_key(text))
        except ValueError:
            cg.fail(f"not an IP address or network: {text!r}")
    if cmd in ("add", "del") and not keys:
        cg.fail("name at least one address")
    notes = []
    if cmd == "add":
        # what the filter looks up (trapstore.client_keys): an IPv4 client by
        # its address; an IPv6 one by its address, its /64, its -ipv6Prefix net
        for key in keys:
            if "/" not in key:
                continue
            if "." in key:
                cg.fail(f"{key}: the filter blocks IPv4 clients by address, not by network")
            plen = key.rpartition("/")[2]
            if plen != "64":
                notes.append(f"note: {key} blocks only where the filter runs with -ipv6Prefix {plen}")
    redis_errors: tuple[type[BaseException], ...] = ()
    if opts.redis:
        try:
            from redis.exceptions import RedisError

            from smtpd_filters.trapredis import redact
        except ImportError:
            print(f"{PROG}: -redis needs redis-py: pip install 'smtpd-filters[spamtraps]'", file=sys.stderr)
            return 1
        redis_errors = (RedisError, OSError)
    try:
        store = TrapStore(opts.db, Policy(), host="admin", worker=False)
    except Exception as exc:  # noqa: BLE001
        print(f"{PROG}: {opts.db}: {exc}", file=sys.stderr)
        return 1
    try:
        return _run(cmd, opts, copts, keys, notes, store, out)
    except redis_errors as exc:
        # one line, never the password; add/del wrote SQLite before Redis
        changed = " (the SQLite file was changed, Redis was not)" if cmd in ("add", "del") else ""
        print(f"{PROG}: redis {redact(opts.redis)}: {exc}{changed}", file=sys.stderr)
        return 1


def _run(cmd: str, opts, copts, keys: list[str], notes: list[str], store: TrapStore, out) -> int:
    now = int(time.time())
    if cmd == "list":
        rows = _redis_rows(opts, now, copts.all) if opts.redis else store.rows(include_expired=copts.all)
        for t in rows:
            print(format_row(t), file=out)
    elif cmd == "add":
        until = now + int(duration(str(copts.expire)))
        for key in keys:
            store.set_expiry(key, until)
        if opts.redis:
            _redis_add(opts, keys, until, now)
        print(f"{len(keys)} blocked until {_utc(until)}", file=out)
        for note in notes:
            print(note, file=out)
    elif cmd == "del":
        blocked = {t.key for t in store.rows()}
        done, missed = 0, []
        for key in keys:
            if key in blocked:
                store.set_expiry(key, 0)
                done += 1
                continue
            # e.g. the address from the log, where the filter records its /64
            nets = [k for k in blocked if _within(key, k)]
            missed.append(f"{key}: not blocked here" + (f" (blocked as part of {', '.join(nets)}: del that)" if nets else ""))
        if opts.redis:
            _redis_del(opts, keys)  # Redis may hold what this file does not
        print(f"{done} unblocked", file=out)
        for line in missed:
            print(line, file=out)
    else:
        print(f"{store.purge()} expired entries removed", file=out)
    return 0


def _within(key: str, net: str) -> bool:
    """Is the address or network ``key`` inside the network ``net``?"""
    if "/" not in net:
        return False
    try:
        outer, inner = ipaddress.ip_network(net), ipaddress.ip_network(key)
    except ValueError:
        return False
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def _redis(opts):
    import redis

    return redis.Redis.from_url(opts.redis, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)


def _redis_rows(opts, now: int, include_expired: bool) -> list[Trap]:
    from smtpd_filters.trapredis import RedisNames

    names, r, rows = RedisNames(opts.redisPrefix), _redis(opts), []
    for k in r.scan_iter(match=names.hkey("*"), count=1000):  # the hashes: expired ones are gone
        h = r.hgetall(k)
        exp = int(h.get("exp", 0))
        if exp > now or include_expired:
            first, last = int(h.get("first", 0)), int(h.get("last", h.get("first", 0)))
            rows.append(Trap(k[len(names.hkey("")):], first, last, int(h.get("hits", 0)), exp, 0, 0,
                             h.get("trap", ""), h.get("host", "")))
    return sorted(rows, key=lambda t: t.last, reverse=True)


def _redis_add(opts, keys: list[str], until: int, now: int) -> None:
    from smtpd_filters.trapredis import RECORD_SCRIPT, RedisNames

    names, r = RedisNames(opts.redisPrefix, "admin"), _redis(opts)
    script = r.register_script(RECORD_SCRIPT)
    for key in keys:
        script(keys=[names.hkey(key), names.index], args=[until, now, 0, "", "admin", names.channel, key])


def _redis_del(opts, keys: list[str]) -> None:
    from smtpd_filters.trapredis import RedisNames

    names, r = RedisNames(opts.redisPrefix), _redis(opts)
    for key in keys:
        r.delete(names.hkey(key))
        r.zrem(names.index, key)
        r.publish(names.channel, f"d {key}")


if __name__ == "__main__":
    sys.exit(main())
