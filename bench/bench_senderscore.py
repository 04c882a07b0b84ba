#!/usr/bin/env python3
"""py-filter-senderscore against the Debian Go filter-senderscore.

    python3 bench/bench_senderscore.py [--quick] [--repeats 5] [--json-out FILE]

Runs in its own private network namespace (only ``lo``; /etc/resolv.conf ->
127.0.0.1) with a synthetic loopback DNS server on 127.0.0.1:53, because the
Go filter resolves through the system resolver:
``N.0.0.127.score.senderscore.com`` -> 127.0.4.77, and queries for
``*.113.0.203.score.senderscore.com`` are never answered.

1. throughput: the same stream (protocol 0.6, connect + EHLO + one 50-line
   message + QUIT per session, every client 127.0.0.1) through both filters
   with ``-junkBelow 80 -scoreHeader``, by run.py in closed loop (32 sessions
   in flight: each session advances only when smtpd would), alternating
   runs, medians.  Target: sessions/s ratio >= 1.0.
2. head-of-line: 200 sessions from 203.0.113.1-200 arrive at once (each
   link-connect followed by its connect request, as smtpd sends them) and
   their SenderScore queries are never answered.  Every one must get its
   connect answer within -timeout (2 s) + 0.5 s.  The Go filter looks up
   synchronously, one after the other: it is given 12 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import filterdrive as fd

ANCHOR = "/usr/libexec/opensmtpd/filter-senderscore"
FLAGS = "-junkBelow 80 -scoreHeader"
OURS = f"{fd.PY} {fd.REPO}/filters/senderscore.py"
HOL_SESSIONS = 200
HOL_TIMEOUT = 2.0
GO_WAIT = 12.0


def throughput(n: int, repeats: int) -> dict:
    return fd.compare(
        ["--isolate", "no", "--window", "32", "-n", str(n), "--repeats", str(repeats)],
        f"{OURS} {FLAGS}", f"{ANCHOR} {FLAGS}", ("py-filter-senderscore", "filter-senderscore"),
    )


def hol(cmd: str, wait: float) -> dict:
    d = fd.Driven(cmd)
    v = d.dialect.proto.encode()
    lines, sids = [], []
    for i in range(1, HOL_SESSIONS + 1):
        sid = b"%016x" % (0xA0000 + i)
        ip = b"203.0.113.%d" % i
        sids.append(sid)
        lines.append(b"report|%s|1.0|smtp-in|link-connect|%s|<unknown>|fail|%s:4000|127.0.0.1:25" % (v, sid, ip))
        lines.append(b"filter|%s|1.0|smtp-in|connect|%s|%016x|<unknown>|%s" % (v, sid, 0xC0000, ip))
    try:
        got = d.burst(lines, sids, timeout=wait)
    finally:
        d.proc.kill()  # the Go filter may be stuck in a lookup
        d.close()
    times = sorted(got.values())
    return {"sessions": HOL_SESSIONS, "answered": len(got), "waited_s": wait,
            "max_s": round(times[-1], 3) if times else None,
            "median_s": round(statistics.median(times), 3) if times else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json-out")
    a = ap.parse_args(argv)
    status = fd.isolate(os.path.abspath(__file__), sys.argv[1:] if argv is None else argv)
    if status is not None:
        return status
    if not os.access(ANCHOR, os.X_OK):
        print(f"{ANCHOR} not installed: comparison skipped")
    results: dict = {}
    with fd.SyntheticDNS(score=77, drop=("113.0.203.score.senderscore.com",), port=53):
        n = 1000 if a.quick else 3000
        if os.access(ANCHOR, os.X_OK):
            print(f"throughput, {n} sessions, closed loop (32 in flight), {a.repeats} alternating runs each:", flush=True)
            comp = results["throughput"] = throughput(n, a.repeats)
            ratio = comp.get("ratio_sessions_per_s")
            if ratio is not None:
                print(f"sessions/s ratio py-filter-senderscore / filter-senderscore: {ratio:.2f} "
                      f"({comp['a']['sessions_per_s']:,.0f} vs {comp['b']['sessions_per_s']:,.0f}; target >= 1.0): "
                      f"{'PASS' if ratio >= 1.0 and comp['a']['all_complete'] else 'FAIL'}", flush=True)
            else:
                print(f"throughput comparison failed: {comp}", flush=True)
        t = time.monotonic()
        r = results["hol_ours"] = hol(f"{OURS} -timeout {HOL_TIMEOUT}", HOL_TIMEOUT + 5)
        ok = r["answered"] == HOL_SESSIONS and r["max_s"] is not None and r["max_s"] <= HOL_TIMEOUT + 0.5
        print(f"head-of-line, py-filter-senderscore: {r['answered']}/{HOL_SESSIONS} connect answers, slowest "
              f"{r['max_s']} s, median {r['median_s']} s (limit {HOL_TIMEOUT + 0.5} s): {'PASS' if ok else 'FAIL'}",
              flush=True)
        if os.access(ANCHOR, os.X_OK):
            r = results["hol_go"] = hol(ANCHOR, GO_WAIT)
            print(f"head-of-line, filter-senderscore (Go): {r['answered']}/{HOL_SESSIONS} answered within "
                  f"{GO_WAIT:.0f} s (one lookup after the other)", flush=True)
        del t
    if a.json_out:
        with open(a.json_out, "a") as fh:
            fh.write(json.dumps({"bench": "senderscore", **results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
