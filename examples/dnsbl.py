#!/usr/bin/env python3
"""dnsbl: look the client up in DNS blocklists, all zones at once.

    filter "dnsbl" proc-exec "/usr/bin/python3 /path/to/dnsbl.py --zone zen.spamhaus.org --zone bl.spamcop.net --action junk"

At connect, the client's address is asked of every ``--zone`` in parallel
(``192.0.2.1`` -> ``1.2.0.192.zen.spamhaus.org``; IPv6 as 32 reversed
nibbles).  The whole check ends within ``--timeout`` seconds, however the
resolver behaves.  What a listing does (``--action``):

  block   disconnect with ``554 5.7.1 ... listed in ZONE``
  junk    mark the session as junk (smtpd adds ``X-Spam: Yes``)
  header  only add ``X-DNSBL: ZONE=127.0.0.2, ...`` to each message

Only an answer in 127.0.0.0/8 is a listing.  ``127.255.255.0/24`` is how
lists say "not answering you" (Spamhaus: .254 public resolver, .255 over
quota, .252 bad query): logged, never a listing - otherwise one over-quota
day would block every client.  NXDOMAIN means not listed; a timeout or
SERVFAIL means "don't know", logged, and the client passes.  Local (unix
socket) sessions are not looked up.
"""

import argparse
import asyncio
import ipaddress

from smtpd_filter_sdk import Filter, disconnect, junk
from smtpd_filter_sdk.dns import Resolver, dnsbl_name
from smtpd_filter_sdk.netaddr import client_ip

LISTED = ipaddress.ip_network("127.0.0.0/8")
REFUSED = ipaddress.ip_network("127.255.255.0/24")  # the list refuses to answer us
HEADER = "X-DNSBL"

#: ``make demo``: two lists on a loopback DNS server, one of which lists the
#: demo's second client (203.0.113.9)
DEMO = {
    "args": ["--zone", "bl.demo.test", "--zone", "other.demo.test", "--action", "block", "--resolver", "{dns}", "--timeout", "1"],
    "zone": {"records": {"9.113.0.203.bl.demo.test": {"A": ["127.0.0.2"]}}},
}


def listing(answer):
    """(listed codes, complaint) for one zone's answer."""
    if answer.negative:
        return [], None
    if not answer.ok:
        return [], f"{answer.status} {answer.detail}".strip()
    codes, odd = [], []
    for value in answer.values:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            odd.append(value)
            continue
        (odd if ip.version != 4 or ip in REFUSED or ip not in LISTED else codes).append(value)
    return codes, (f"ignored answer {','.join(odd)}" if odd else None)


def build(zones, action="junk", resolver=None) -> Filter:
    resolver = resolver or Resolver(timeout=2.0)
    # the deadline covers the slowest zone: queries run in parallel
    f = Filter("dnsbl", on_error="fail-open", deadline=resolver.timeout + 1.0)

    async def lookup(ip):
        """{zone: [codes]} of the zones that list ip; problems are logged."""
        answers = await asyncio.gather(*(resolver.query(dnsbl_name(ip, zone), "A") for zone in zones))
        hits, problems = {}, []
        for zone, answer in zip(zones, answers):
            codes, complaint = listing(answer)
            if codes:
                hits[zone] = codes
            if complaint:
                problems.append(f"{zone}: {complaint}")
        return hits, problems

    @f.on("connect")
    async def connect(session, rdns, src):
        ip = client_ip(session.src or src)
        if ip is None:  # a local (unix socket) session
            return None
        hits, problems = await lookup(ip)
        for problem in problems:
            f.log(f"addr={ip} {problem}", session.id)
        if not hits:
            f.log(f"addr={ip} not listed", session.id)
            return None
        found = ", ".join(f"{zone}={'/'.join(codes)}" for zone, codes in hits.items())
        f.log(f"addr={ip} listed: {found}: {action}", session.id)
        if action == "block":
            return disconnect(554, f"Service unavailable; client [{ip}] listed in {next(iter(hits))}", enhanced="5.7.1")
        if action == "junk":
            return junk()
        session.data[HEADER] = found  # per-session storage, freed with the session
        return None

    if action == "header":  # only then does this filter look at messages

        @f.on_headers
        def tag(session, headers):
            headers.remove(HEADER)  # never trust the client's copy
            if HEADER in session.data:
                headers.add(HEADER, session.data[HEADER])

    return f


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zone", action="append", required=True, help="a DNSBL zone (repeatable)")
    parser.add_argument("--action", choices=("block", "junk", "header"), default="junk")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds for all lookups (default 2)")
    parser.add_argument("--resolver", action="append", metavar="HOST[:PORT]", help="default: /etc/resolv.conf")
    args = parser.parse_args(argv)
    if not 0 < args.timeout <= 30:
        parser.error("--timeout must be between 0 and 30 seconds")
    try:
        resolver = Resolver(args.resolver, timeout=args.timeout)
    except ValueError as exc:
        parser.error(f"--resolver: {exc}")
    build([z.strip(".").lower() for z in args.zone], args.action, resolver).run()


if __name__ == "__main__":
    main()
