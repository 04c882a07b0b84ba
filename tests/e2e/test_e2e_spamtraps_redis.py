"""Two MX hosts sharing trapped clients through one real redis-server:

    mx1  127.0.0.1:25    py-filter-spamtraps -db mx1.db -redis redis://127.0.0.1:6379/0
    mx2  127.0.0.1:2525  py-filter-spamtraps -db mx2.db -redis redis://127.0.0.1:6379/0

Both smtpd instances run on one loopback (``share_net_with``), each with its
own mount namespace, queue and SQLite file; redis-server runs next to them.
A client trapped on mx1 is refused by mx2; with Redis killed, both keep
answering and trap from their own store.
"""

from __future__ import annotations

import time

import pytest

from e2e_bare import bare_smtpd_factory  # noqa: F401  (fixture)
from e2e_harness import DOMAIN, NsSMTP

pytestmark = pytest.mark.e2e

REFUSED = "421 4.7.0 Service temporarily unavailable, try again later"
REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def state(e2e_runtime):
    d = e2e_runtime.new_dir("spamtraps-redis")
    d.chmod(0o1777)
    (d / "traps").write_text(f"trap@{DOMAIN}\n")
    (d / "traps").chmod(0o644)
    return d


def cmd(state, host: str) -> str:
    return f"py-filter-spamtraps -traps {state / 'traps'} -db {state / host}.db -spf=false -redis {REDIS}"


@pytest.fixture(scope="module")
def redis(redis_factory):
    return redis_factory()


@pytest.fixture(scope="module")
def mx(bare_smtpd_factory, state, redis):
    mx1 = bare_smtpd_factory([cmd(state, "mx1")], services=[redis])
    mx2 = bare_smtpd_factory([cmd(state, "mx2")], share_net_with=mx1, port=2525)
    for s in (mx1, mx2):
        s.wait_log(r"f1: redis redis://127\.0\.0\.1:6379/0: connected")
    return mx1, mx2


def banner(server, src: str) -> str:
    with server.ns.create_connection(("127.0.0.1", server.port), 10, (src, 0)) as s:
        return s.makefile("rb").readline().decode().rstrip("\r\n")


def hit_trap(server, src: str) -> None:
    with NsSMTP(server.ns, "127.0.0.1", server.port, local_hostname="client.e2e.test",
                source_address=(src, 0), timeout=30) as c:
        c.ehlo("client.e2e.test")
        c.mail("spam@client.e2e.test")
        assert c.rcpt(f"trap@{DOMAIN}") == (550, f"Invalid recipient: <trap@{DOMAIN}>".encode())


def wait_banner(server, src: str, want: str, timeout: float = 5.0) -> float:
    t = time.monotonic()
    while not banner(server, src).startswith(want):
        assert time.monotonic() - t < timeout, f"{src} on port {server.port} never got {want!r}"
        time.sleep(0.05)
    return time.monotonic() - t


def test_trapped_on_mx1_is_refused_on_mx2(mx, redis):
    mx1, mx2 = mx
    assert banner(mx2, "127.0.0.2").startswith("220 ")
    hit_trap(mx1, "127.0.0.2")
    took = wait_banner(mx2, "127.0.0.2", REFUSED)
    assert took < 2.0  # pub/sub: no polling interval
    assert banner(mx2, "127.0.0.3").startswith("220 ")
    assert redis.cli("HGET", "spamtraps:ip:127.0.0.2", "hits") == "1"
    assert redis.cli("HGET", "spamtraps:ip:127.0.0.2", "trap") == f"trap@{DOMAIN}"
    assert 86000 < int(redis.cli("TTL", "spamtraps:ip:127.0.0.2")) <= 86400
    assert mx2.wait_log(r"f1: \S+ connect: addr=127\.0\.0\.2 is trapped")


def test_redis_killed_both_keep_answering_and_trap_locally(mx, redis):
    mx1, mx2 = mx
    redis.stop()
    for s in (mx1, mx2):
        s.wait_log(r"f1: redis redis://127\.0\.0\.1:6379/0: unreachable")
    hit_trap(mx2, "127.0.0.4")
    assert banner(mx2, "127.0.0.4") == REFUSED  # mx2's own store
    assert banner(mx1, "127.0.0.4").startswith("220 ")  # mx1 cannot know
    assert banner(mx1, "127.0.0.2") == REFUSED  # what it learnt before stays
    assert banner(mx2, "127.0.0.5").startswith("220 ")
    for s in (mx1, mx2):
        s.assert_alive()
