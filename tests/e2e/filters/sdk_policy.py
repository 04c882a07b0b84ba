#!/usr/bin/env python3
"""An SDK filter for the e2e tests whose handlers misbehave on demand.

Every handler looks for a keyword in what it is given (HELO name, MAIL FROM /
RCPT TO address, the message's Subject):

  --raise KW      the handler raises RuntimeError when KW is present
  --hang KW       the (async) handler sleeps far past --deadline when KW is present
  --reject-rcpt KW  RCPT TO containing KW: ``550 5.1.1 no such mailbox``
  --tag 'N: v'    add this header to every message that gets through
  --on-error fail-open|fail-closed   the Filter's policy (default fail-open)
  --deadline S    handler deadline in seconds (default 1)
  --name NAME     filter name (default sdk-policy)
"""

import argparse
import asyncio

from smtpd_filter_sdk import Filter, reject


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raise", dest="raise_kw")
    ap.add_argument("--hang")
    ap.add_argument("--reject-rcpt")
    ap.add_argument("--tag")
    ap.add_argument("--on-error", default="fail-open")
    ap.add_argument("--deadline", type=float, default=1.0)
    ap.add_argument("--name", default="sdk-policy")
    a = ap.parse_args()

    f = Filter(a.name, on_error=a.on_error, deadline=a.deadline)

    async def check(what: str) -> None:
        if a.raise_kw and a.raise_kw in what:
            raise RuntimeError(f"handler told to fail on {what!r}")
        if a.hang and a.hang in what:
            await asyncio.sleep(3600)

    @f.on("helo", "ehlo")
    async def helo(session, identity):
        await check(identity)

    @f.on("mail-from")
    async def mail_from(session, address):
        await check(address)

    @f.on("rcpt-to")
    async def rcpt_to(session, address):
        if a.reject_rcpt and a.reject_rcpt in address:
            return reject(550, "no such mailbox", enhanced="5.1.1")
        await check(address)

    @f.on_message
    async def message(session, msg):
        await check(msg.headers.get("Subject") or "")
        if a.tag:
            name, _, value = a.tag.partition(":")
            msg.headers.add(name.strip(), value.strip())

    f.run()


if __name__ == "__main__":
    main()
