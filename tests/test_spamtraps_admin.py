"""py-spamtraps: list/add/del/expire on the filter's store (and Redis)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time

import pytest
import redis

import filterkit
from rediskit import RedisProcess, redis_or_skip
from smtpd_filters import spamtraps_admin as admin
from smtpd_filters.trapredis import RedisMirror
from smtpd_filters.trapstore import Policy, TrapStore


def run(*argv: str) -> tuple[int, list[str]]:
    out = io.StringIO()
    rc = admin.main(list(argv), out=out)
    return rc, out.getvalue().splitlines()


def test_add_list_del_expire(tmp_path):
    db = str(tmp_path / "traps.db")
    filt = TrapStore(db, Policy(expiry=3600), host="mx1", poll=0.05)  # the running filter
    try:
        filt.hit("192.0.2.7", "trap@example.org")
        filt.flush()
        rc, lines = run("-db", db, "add", "-expire", "2h", "198.51.100.9", "2001:db8:1:2::77/64")
        assert rc == 0 and len(lines) == 1 and lines[0].startswith("2 blocked until 20")
        rc, lines = run("-db", db, "list")
        rows = {ln.split("\t")[0]: ln.split("\t") for ln in lines}
        assert set(rows) == {"192.0.2.7", "198.51.100.9", "2001:db8:1:2::/64"}
        assert rows["192.0.2.7"][2] == "1" and rows["192.0.2.7"][5:] == ["mx1", "trap@example.org"]
        assert rows["198.51.100.9"][2] == "0" and rows["198.51.100.9"][5] == "admin"
        wait_for(lambda: filt.blocked_until(["2001:db8:1:2::/64"]))  # the filter saw the add
        assert run("-db", db, "del", "192.0.2.7") == (0, ["1 unblocked"])
        wait_for(lambda: filt.blocked_until(["192.0.2.7"]) is None)  # and the delete
        assert sorted(ln.split("\t")[0] for ln in run("-db", db, "list")[1]) == ["198.51.100.9", "2001:db8:1:2::/64"]
        assert len(run("-db", db, "list", "-all")[1]) == 3
        assert run("-db", db, "expire") == (0, ["1 expired entries removed"])  # the deletion
    finally:
        filt.close()


def test_add_blocks_only_what_the_filter_refuses(tmp_path):
    """The filter looks up a client by its address (IPv4-mapped IPv6 as the
    IPv4 address) and, for IPv6, by its /64 and its -ipv6Prefix network:
    ``add`` of anything else would say "blocked" and block nobody."""
    from smtpd_filters.trapstore import client_keys
    import ipaddress

    db = str(tmp_path / "traps.db")
    filt = TrapStore(db, Policy(expiry=3600), host="mx1", poll=0.05)  # the running filter
    try:
        assert run("-db", db, "add", "::ffff:192.0.2.9")[0] == 0
        assert [ln.split("\t")[0] for ln in run("-db", db, "list")[1]] == ["192.0.2.9"]
        wait_for(lambda: filt.blocked_until(client_keys(ipaddress.ip_address("192.0.2.9"))))
    finally:
        filt.close()
    r = subprocess.run([sys.executable, "-m", "smtpd_filters.spamtraps_admin", "-db", db, "add", "192.0.2.0/24"],
                       capture_output=True, env=filterkit.env(), timeout=20)
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1, err
    assert "py-spamtraps add: 192.0.2.0/24: the filter blocks IPv4 clients by address, not by network" in err
    rc, lines = run("-db", db, "add", "2001:db8:1::/48", "2001:db8:2::/64")
    assert rc == 0 and lines[0].startswith("2 blocked until")
    assert lines[1:] == ["note: 2001:db8:1::/48 blocks only where the filter runs with -ipv6Prefix 48"]


def test_del_says_what_it_did_not_unblock(tmp_path):
    """With -ipv6Prefix 64 the filter records the client's /64: deleting
    the address the admin sees in the log unblocks nothing, and del says so
    (and which entry blocks it) instead of '1 unblocked'."""
    db = str(tmp_path / "traps.db")
    assert run("-db", db, "add", "2001:db8:1:2::/64", "192.0.2.7")[0] == 0
    rc, lines = run("-db", db, "del", "2001:db8:1:2::5", "192.0.2.99", "192.0.2.7")
    assert (rc, lines) == (0, [
        "1 unblocked",
        "2001:db8:1:2::5: not blocked here (blocked as part of 2001:db8:1:2::/64: del that)",
        "192.0.2.99: not blocked here",
    ])
    assert [ln.split("\t")[0] for ln in run("-db", db, "list")[1]] == ["2001:db8:1:2::/64"]
    assert [ln.split("\t")[0] for ln in run("-db", db, "list", "-all")[1]] == ["2001:db8:1:2::/64", "192.0.2.7"]


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end
        time.sleep(0.02)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "a command is required"),
        (["frob"], "a command is required"),
        (["add"], "name at least one address"),
        (["add", "mx.example.org"], "not an IP address or network: 'mx.example.org'"),
        (["add", "-expire", "soon", "192.0.2.1"], 'invalid value "soon" for flag -expire'),
        (["list", "-bogus"], "flag provided but not defined: -bogus"),
    ],
)
def test_usage_errors(tmp_path, argv, message):
    r = subprocess.run([sys.executable, "-m", "smtpd_filters.spamtraps_admin", "-db", str(tmp_path / "t.db"), *argv],
                       capture_output=True, env=filterkit.env(), timeout=20)
    assert r.returncode == 2 and message in r.stderr.decode() and r.stderr.decode().count("\n") == 1, r.stderr


@pytest.mark.parametrize("argv", [["list"], ["add", "192.0.2.7"], ["del", "192.0.2.7"]])
def test_redis_unreachable_is_one_line_and_status_1(tmp_path, capsys, argv):
    from rediskit import free_port

    db = str(tmp_path / "traps.db")
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"  # nobody listens there
    rc, lines = run("-db", db, "-redis", url, *argv)
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith(f"py-spamtraps: redis redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}: ")
    assert "s3cret-pw" not in err
    if argv[0] == "add":  # the local file was changed: say so
        assert "Connection refused" in err and "(the SQLite file was changed, Redis was not)" in err
        assert [ln.split("\t")[0] for ln in run("-db", db, "list")[1]] == ["192.0.2.7"]


def test_redis_without_redis_py_is_one_line(tmp_path):
    hide = tmp_path / "hide" / "redis"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'redis'\")\n")
    r = subprocess.run([sys.executable, "-m", "smtpd_filters.spamtraps_admin", "-db", str(tmp_path / "t.db"),
                        "-redis", "redis://127.0.0.1:6379/0", "list"],
                       capture_output=True, env={**filterkit.env(), "PYTHONPATH": str(hide.parent)}, timeout=20)
    assert (r.returncode, r.stderr.decode()) == (1, "py-spamtraps: -redis needs redis-py: pip install 'smtpd-filters[spamtraps]'\n")


def test_with_redis_every_host_learns_of_add_and_del(tmp_path):
    redis_or_skip()
    with RedisProcess() as srv:
        store = TrapStore(str(tmp_path / "mx2.db"), Policy(), poll=0.05)
        mirror = RedisMirror(srv.url, store, prefix="p:", timeout=0.5)

        async def scenario():
            task = asyncio.create_task(mirror.run())
            try:
                while not mirror.connected:
                    await asyncio.sleep(0.02)
                rc, _ = await asyncio.to_thread(run, "-db", str(tmp_path / "mx1.db"), "-redis", srv.url, "-redisPrefix", "p:", "add", "192.0.2.50")
                assert rc == 0
                await until(lambda: store.blocked_until(["192.0.2.50"]) is not None)
                rows = (await asyncio.to_thread(run, "-db", str(tmp_path / "x.db"), "-redis", srv.url, "-redisPrefix", "p:", "list"))[1]
                assert [r.split("\t")[0] for r in rows] == ["192.0.2.50"]
                await asyncio.to_thread(run, "-db", str(tmp_path / "mx1.db"), "-redis", srv.url, "-redisPrefix", "p:", "del", "192.0.2.50")
                await until(lambda: store.blocked_until(["192.0.2.50"]) is None)
                assert redis.Redis.from_url(srv.url).keys("p:ip:*") == []
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        try:
            asyncio.run(scenario())
        finally:
            store.close()


async def until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end
        await asyncio.sleep(0.02)
