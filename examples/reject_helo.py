#!/usr/bin/env python3
"""reject-helo: refuse HELO/EHLO names that match a pattern.

    filter "reject-helo" proc-exec "/usr/bin/python3 /path/to/reject_helo.py --pattern '^(localhost|\\[.*\\])$'"

By default it refuses ``localhost`` and bare address literals (``[1.2.3.4]``),
which no real mail server announces itself as.  The client may try again
with a better name; the session is not dropped.
"""

import argparse
import re

from smtpd_filter_sdk import Filter, reject

DEFAULT_PATTERN = r"^(localhost(\.localdomain)?|\[[0-9a-fA-F:.]+\]|\[IPv6:[0-9a-fA-F:.]+\])$"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default=DEFAULT_PATTERN, help="regex (case-insensitive)")
    args = parser.parse_args()
    try:
        pattern = re.compile(args.pattern, re.IGNORECASE)
    except re.error as exc:
        parser.error(f"bad --pattern: {exc}")

    f = Filter("reject-helo")

    @f.on("helo", "ehlo")
    def helo(session, identity):
        if pattern.search(identity):
            f.log(f"rejecting HELO {identity!r}", session.id)
            return reject(550, f"HELO {identity[:64]} not accepted here", enhanced="5.7.1")
        return None

    f.run()


if __name__ == "__main__":
    main()
