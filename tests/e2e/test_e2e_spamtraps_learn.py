"""py-filter-spamtraps -learnSpam: a trapped session's message goes to the
real rspamd's controller (/learnspam, Bayes in the real redis), others do not.

    filter "f1" proc-exec "py-filter-spamtraps -traps FILE -db FILE -action junk -learnSpam http://127.0.0.1:11334"
"""

from __future__ import annotations

import json

import pytest

from e2e_bare import bare_smtpd_factory  # noqa: F401  (fixture)
from e2e_harness import DOMAIN, NsSMTP, make_message, token

pytestmark = pytest.mark.e2e

BODY = "".join(
    f"Dear friend number {i}, cheap watches and miracle pills are waiting for you at our store today.\r\n"
    for i in range(20)
)


@pytest.fixture(scope="module")
def world(bare_smtpd_factory, e2e_runtime, redis_factory, rspamd_factory):  # noqa: F811
    d = e2e_runtime.new_dir("spamtraps-learn")
    d.chmod(0o1777)
    (d / "traps").write_text(f"trap@{DOMAIN}\n")
    (d / "traps").chmod(0o644)
    rspamd = rspamd_factory()
    server = bare_smtpd_factory(
        [f"py-filter-spamtraps -traps {d / 'traps'} -db {d / 't.db'} -spf=false -action junk "
         f"-learnSpam http://127.0.0.1:{rspamd.controller_port}"],
        services=[redis_factory(), rspamd],
    )
    return server, rspamd


def learned(rspamd) -> int:
    status, body = rspamd.request("GET", "/stat", port=rspamd.controller_port)
    assert status == 200, body
    return int(json.loads(body)["learned"])


def send(server, src: str, tok: str, rcpts: list[str]) -> None:
    with NsSMTP(server.ns, "127.0.0.1", 25, local_hostname="client.e2e.test", source_address=(src, 0), timeout=30) as c:
        c.ehlo("client.e2e.test")
        msg = make_message(tok, body=BODY, subject=f"offer {tok}")
        assert c.sendmail("spam@client.e2e.test", rcpts, msg) == {}


def test_the_trapped_message_is_learnt_as_spam_and_others_are_not(world):
    server, rspamd = world
    before = learned(rspamd)
    clean = token()
    send(server, "127.0.0.2", clean, [f"bob@{DOMAIN}"])
    server.maildir.wait_for(clean)
    tok = token()
    send(server, "127.0.0.3", tok, [f"trap@{DOMAIN}"])  # junk: accepted silently
    m = server.maildir.wait_for(tok)
    assert m.headers("X-Spam") == ["Yes"]
    line = server.wait_log(r"f1: \S+ learnspam: \d+ bytes learnt as spam \(HTTP 200\)", timeout=30)
    assert learned(rspamd) == before + 1
    assert not server.log_lines(r"learnspam: .*failed")
