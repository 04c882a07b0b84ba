#!/usr/bin/env python3
"""reject-helo: refuse HELO/EHLO names no real mail server announces.

    filter "reject-helo" proc-exec "/usr/bin/python3 /path/to/reject_helo.py --our-name mx.example.org"

Refused (550 5.7.1; the client may say HELO again, the session stays):

  * ``localhost`` and ``localhost.localdomain``;
  * address literals, ``[192.0.2.1]`` and ``[IPv6:2001:db8::1]``
    (``--allow-literals`` lets them through);
  * bare addresses, ``192.0.2.1``: neither a name nor a literal (RFC 5321
    wants the brackets), but smtpd lets them through and bots send them;
  * our own name: the host name smtpd greets with (taken from the
    ``link-greeting`` report, so nothing to configure) and every
    ``--our-name``; a client that says it is us is lying;
  * whatever ``--pattern`` (a case-insensitive regex) matches.
"""

import argparse
import ipaddress
import re

from smtpd_filter_sdk import Filter, reject

LOCALHOST = re.compile(r"^localhost(\.localdomain)?\.?$", re.IGNORECASE)
LITERAL = re.compile(r"^\[(IPv6:)?[0-9a-fA-F:.]+\]$", re.IGNORECASE)


def why_refused(identity, our_names, allow_literals=False, pattern=None):
    """The reason to refuse this HELO name, or None.  Pure, so it is easy to test."""
    name = identity.strip().lower().rstrip(".")
    if LOCALHOST.match(identity.strip()):
        return "localhost"
    if LITERAL.match(identity.strip()) and not allow_literals:
        return "an address literal"
    try:
        ipaddress.ip_address(name)
        return "a bare address"
    except ValueError:
        pass
    if name and name in our_names:
        return "our own name"
    if pattern is not None and pattern.search(identity):
        return "matches --pattern"
    return None


def build(our_names=(), allow_literals=False, pattern=None) -> Filter:
    # reads session.greeting only: smtpd need send no other reports
    f = Filter("reject-helo", session_events={"link-greeting"})
    configured = {n.lower().rstrip(".") for n in our_names}

    @f.on("helo", "ehlo")
    def helo(session, identity):
        # session.greeting is the name smtpd greeted this client with
        ours = configured | ({session.greeting.lower().rstrip(".")} if session.greeting else set())
        reason = why_refused(identity, ours, allow_literals, pattern)
        if reason is None:
            return None  # proceed
        f.log(f"rejecting HELO {identity!r}: {reason}", session.id)
        return reject(550, f"HELO {identity[:64]} not accepted here", enhanced="5.7.1")

    return f


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--our-name", action="append", default=[], metavar="NAME", help="a name of ours (repeatable)")
    parser.add_argument("--allow-literals", action="store_true", help="let [address] literals through")
    parser.add_argument("--pattern", help="also refuse names matching this regex (case-insensitive)")
    args = parser.parse_args(argv)
    try:
        pattern = re.compile(args.pattern, re.IGNORECASE) if args.pattern else None
    except re.error as exc:
        parser.error(f"bad --pattern: {exc}")
    build(args.our_name, args.allow_literals, pattern).run()


if __name__ == "__main__":
    main()
