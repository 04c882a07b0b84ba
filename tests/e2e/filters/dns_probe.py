#!/usr/bin/env python3
"""SDK filter that resolves like a reputation filter would, for the e2e DNS tests.

At connect it looks up ``<reversed client IPv4>.<zone>`` (A, dnspython, the
system's /etc/resolv.conf - inside the test namespace that is the fake DNS on
127.0.0.1:53) and adds ``X-DNS-Probe: <answer>|NXDOMAIN|NOANSWER|SERVFAIL|TIMEOUT``
to each message of the session.

  --zone Z        default score.senderscore.com
  --timeout S     resolver lifetime (default 1)
"""

import argparse

import dns.exception
import dns.resolver
import dns.reversename

from smtpd_filter_sdk import Filter, in_thread


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zone", default="score.senderscore.com")
    ap.add_argument("--timeout", type=float, default=1.0)
    a = ap.parse_args()
    f = Filter("dns-probe", deadline=a.timeout + 2)
    resolver = dns.resolver.Resolver()  # /etc/resolv.conf
    resolver.lifetime = a.timeout

    def lookup(ip: str) -> str:
        rev = dns.reversename.from_address(ip).to_text(omit_final_dot=True)
        name = rev.removesuffix(".in-addr.arpa") + "." + a.zone
        try:
            return ",".join(sorted(rr.to_text() for rr in resolver.resolve(name, "A")))
        except dns.resolver.NXDOMAIN:
            return "NXDOMAIN"
        except dns.resolver.NoAnswer:
            return "NOANSWER"
        except dns.resolver.NoNameservers:
            return "SERVFAIL"
        except dns.exception.Timeout:
            return "TIMEOUT"

    @f.on("connect")
    @in_thread
    def connect(session, rdns, src):
        session.data["probe"] = lookup(src.host)

    @f.on_headers
    def tag(session, headers):
        headers.add("X-DNS-Probe", session.data.get("probe", "none"))

    f.run()


if __name__ == "__main__":
    main()
