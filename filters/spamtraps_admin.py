"""py-spamtraps: look at and change py-filter-spamtraps' trapped clients,
as spamdb(8) does for spamd.

    py-spamtraps [-db PATH] [-redis URL] [-redisPrefix P] list [-all]
    py-spamtraps [-db PATH] [-redis URL] add [-expire 24h] ADDRESS|NETWORK ...
    py-spamtraps [-db PATH] [-redis URL] del ADDRESS|NETWORK ...
    py-spamtraps [-db PATH] expire

``list`` prints one trapped client a line, tab-separated: key, blocked until,
hits, first and last hit (UTC), recording host, last trap address (``-all``:
expired ones and deletions too).  With ``-redis`` it lists what Redis holds
(every MX host's traps).  ``add`` blocks a client (IPv6 networks as
``2001:db8:1:2::/64``), ``del`` unblocks it, ``expire`` removes expired rows
from the SQLite file.  The running filter sees changes to its SQLite file
within ~2 s, and with ``-redis`` every MX host sees them at once (pub/sub).
"""

from __future__ import annotations

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
    try:
        store = TrapStore(opts.db, Policy(), host="admin", worker=False)
    except Exception as exc:  # noqa: BLE001
        print(f"{PROG}: {opts.db}: {exc}", file=sys.stderr)
        return 1
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
    elif cmd == "del":
        for key in keys:
            store.set_expiry(key, 0)
        if opts.redis:
            _redis_del(opts, keys)
        print(f"{len(keys)} unblocked", file=out)
    else:
        print(f"{store.purge()} expired entries removed", file=out)
    return 0


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
