"""The e2e services: redis and rspamd inside a test's namespace, on loopback.

One smtpd with redis + rspamd (config extended through ``rspamd_local_d``),
and a second smtpd sharing the first one's loopback and so its redis."""

from __future__ import annotations

import pytest

from e2e_harness import make_message

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def rspamd_local_d() -> dict[str, str]:
    # this module's extension: a milter_headers list of its own (replaces the default)
    return {"milter_headers.conf": 'skip_local = false;\nuse = ["x-spamd-bar", "x-spam-level"];\n'}


@pytest.fixture(scope="module")
def world(smtpd_factory, redis_factory, rspamd_factory):
    redis = redis_factory()
    rspamd = rspamd_factory(override_d={
        "worker-normal.inc": 'bind_socket = ["127.0.0.1:11333", "$RUNDIR/normal.sock mode=0666"];\ncount = 1;\n',
    })
    first = smtpd_factory([], services=[redis, rspamd])
    second = smtpd_factory([], share_net_with=first, port=2525)
    return first, second, redis, rspamd


def test_rspamd_rejects_gtube_and_uses_the_module_config(world, tok):
    first, _, _, rspamd = world
    msg = make_message(tok, body=b"Hello\r\n" + GTUBE + b"\r\n")
    result = rspamd.check(msg, {"IP": "127.0.0.1", "From": "alice@client.e2e.test", "Rcpt": "bob@e2e.test"})
    assert result["action"] == "reject"
    assert "GTUBE" in result["symbols"]
    result = rspamd.check(make_message(tok), {"IP": "127.0.0.1", "From": "alice@client.e2e.test"})
    added = result["milter"]["add_headers"]
    assert "X-Spamd-Bar" in added and "X-Rspamd-Server" not in added  # rspamd_local_d of this module


def test_rspamd_override_d_adds_a_unix_socket(world, tok):
    first, _, _, rspamd = world
    sock = rspamd.dir / "run" / "normal.sock"
    r = first.ns.run(["python3", "-c", (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        "s.sendall(b'GET /ping HTTP/1.0\\r\\n\\r\\n'); print(s.recv(4096).decode())"), str(sock)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HTTP/1.") and " 200 " in r.stdout.splitlines()[0]


def test_two_smtpd_share_one_redis(world, tok):
    first, second, redis, _ = world
    redis.cli("SET", f"e2e:{tok}", "from-first")
    r = second.ns.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "GET", f"e2e:{tok}"])
    assert r.stdout.strip() == "from-first"
    for server in (first, second):
        with server.smtp() as c:
            c.sendmail("alice@client.e2e.test", ["bob@e2e.test"], make_message(tok + str(server.port)))
        server.maildir.wait_for(tok + str(server.port))
    # each smtpd sees only its own processes although they share one network
    assert redis.pid not in second.ns.pids() and redis.pid in first.ns.pids()


def test_services_stop_by_pid(smtpd_factory, redis_factory):
    redis = redis_factory(port=6380)
    server = smtpd_factory([], services=[redis])
    pid = redis.pid
    assert redis.alive() and server.ns.listening(6380)
    server.stop()
    assert not redis.alive() and not server.leftovers
    import os
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
