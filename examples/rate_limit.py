#!/usr/bin/env python3
"""rate-limit: at most N recipients per client address in a sliding window.

    filter "rate-limit" proc-exec "/usr/bin/python3 /path/to/rate_limit.py --max 100 --window 3600"

Every RCPT TO this filter lets through counts against the client's address
(IPv6 clients by their /64, which one host usually owns whole), also one
that smtpd then refuses as unknown: guessing addresses uses up the budget.  Past
``--max`` in the last ``--window`` seconds, RCPT TO gets ``452 4.7.1`` - a
temporary refusal that well-behaved senders retry later - until old
recipients age out of the window.  Authenticated and local (unix socket)
sessions are not limited.  The counters live in memory: a restart forgets
them, and at most ``--max-clients`` addresses are tracked (the oldest are
forgotten first).
"""

import argparse
import ipaddress
import time
from collections import OrderedDict, deque

from smtpd_filter_sdk import Filter, reject
from smtpd_filter_sdk.netaddr import client_ip

#: ``make demo``: one recipient per address, so the demo's two-recipient
#: message meets the limit
DEMO = {"args": ["--max", "1"]}


class SlidingWindow:
    """Event times per key, within ``window`` seconds, for at most ``max_keys`` keys."""

    def __init__(self, window, max_keys=100_000, clock=time.monotonic):
        self.window, self.max_keys, self.clock = window, max_keys, clock
        self.events = OrderedDict()  # key -> deque of times, least recently used first

    def count(self, key):
        times = self.events.get(key)
        if times is None:
            return 0
        horizon = self.clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self.events[key]
            return 0
        return len(times)

    def add(self, key):
        times = self.events.setdefault(key, deque())
        times.append(self.clock())
        self.events.move_to_end(key)
        while len(self.events) > self.max_keys:
            self.events.popitem(last=False)


def client_key(ip):
    """The unit that is limited: the address, or the /64 of an IPv6 address."""
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def build(limit, window, max_clients=100_000, clock=time.monotonic) -> Filter:
    # reads session.src and session.authenticated: the SDK sees that and asks
    # smtpd for link-connect and link-auth reports, no others
    f = Filter("rate-limit")
    seen = SlidingWindow(window, max_clients, clock)

    @f.on("rcpt-to")
    def rcpt(session, address):
        ip = client_ip(session.src)
        if ip is None or session.authenticated:
            return None
        key = client_key(ip)
        used = seen.count(key)
        if used >= limit:
            f.log(f"addr={key} rcpt={address} over limit ({used} in {window:g}s): 452", session.id)
            return reject(452, "too many recipients from your address, try again later", enhanced="4.7.1")
        seen.add(key)
        return None

    return f


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=100, help="recipients per window (default 100)")
    parser.add_argument("--window", type=float, default=3600, help="seconds (default 3600)")
    parser.add_argument("--max-clients", type=int, default=100_000, help="addresses tracked (default 100000)")
    args = parser.parse_args(argv)
    if args.max < 1 or args.window <= 0 or args.max_clients < 1:
        parser.error("--max, --window and --max-clients must be positive")
    build(args.max, args.window, args.max_clients).run()


if __name__ == "__main__":
    main()
