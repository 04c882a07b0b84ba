#!/usr/bin/env python3
"""py-filter-rspamd against the Debian Go filter-rspamd, with a real rspamd.

    python3 bench/bench_rspamd.py [--quick] [--repeats 3] [--memory 1e4,1e5] [--json-out FILE]

Starts a private network namespace (only ``lo``) with redis and rspamd 3.4
in it, configured as shared/rig/start-rspamd.sh (the e2e services,
tests/e2e/e2e_harness/services.py: one normal worker on 127.0.0.1:11333,
milter_headers on) and the loopback DNS server (NXDOMAIN for everything),
then, inside that namespace, bench/run.py:

1. throughput: the same stream (protocol 0.6, one 50-line message per
   session, closed loop: 8 sessions in flight, each advancing only when smtpd
   would) through both filters, ``-url http://127.0.0.1:11333``, alternating
   runs, medians.  Targets: sessions/s ratio >= 1.0 (rspamd is the
   bottleneck: the filter must not add to it), filter CPU per message <= the
   Go filter's, peak RSS <= 40 MB.
2. memory (``--memory``): py-filter-rspamd alone over 10^4 and 10^5
   messages (same stream, 8 in flight); the peak RSS must stay flat (growth
   <= 5 MB).

The Go filter missing (no opensmtpd-filter-rspamd) skips the comparison;
rspamd or redis missing skips everything, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

ANCHOR = "/usr/libexec/opensmtpd/filter-rspamd"
URL = "http://127.0.0.1:11333"
PY = sys.executable
OURS = f"{PY} -m smtpd_filters.rspamd -url {URL}"
# run.py puts the repo on PYTHONPATH; smtpd_filters is the installed name of filters/
ENV = f"PYTHONPATH={REPO}"


def run_py(ns, args: list[str], timeout: float) -> list[dict]:
    argv = [PY, str(HERE / "run.py"), "--isolate", "no", "--json", "--env", ENV, *args]
    r = ns.run(argv, timeout=timeout)
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
    out = []
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
        else:
            print("   " + line, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=0, help="messages per throughput run (default 4000, quick 1000)")
    ap.add_argument("--memory", default="", help="session counts for the memory run, e.g. 1e4,1e5 (default: none)")
    ap.add_argument("--json-out")
    a = ap.parse_args()

    from e2e_harness.netns import Namespace
    from e2e_harness.services import RedisServer, RspamdServer
    from smtpd_filter_sdk.testing.dnsserver import DNSServerProcess, Zone

    problems = RedisServer.missing() + RspamdServer.missing()
    if os.geteuid() != 0:
        problems.append("must run as root (namespaces)")
    if problems:
        print(json.dumps({"bench": "rspamd", "skipped": "; ".join(problems)}))
        return 0
    # a world-traversable work dir: rspamd and redis drop to their own users
    work = Path(tempfile.mkdtemp(prefix="bench-rspamd-", dir="/var/tmp"))
    work.chmod(0o755)
    ns = Namespace(work / "ns").start()
    results: dict = {"bench": "rspamd"}
    # rspamd asks DNS for every message (RBLs, SPF, ...): the loopback DNS
    # server answers NXDOMAIN at once, as the rig's dnsmasq did; without one
    # each query waits for its 1 s timeout
    dns = DNSServerProcess(Zone(ttl=60), work / "dns", python=PY, port=53, argv_prefix=ns.nsenter_argv())
    try:
        dns.start()
        redis = RedisServer().start(ns, work)
        rspamd = RspamdServer().start(ns, work)
        n = a.sessions or (1000 if a.quick else 4000)
        flags = ["--window", "8", "--lines", "50", "-n", str(n), "--repeats", str(a.repeats)]
        if os.access(ANCHOR, os.X_OK):
            print(f"throughput: {n} x 50-line messages, 8 in flight, {a.repeats} alternating runs each", flush=True)
            objs = run_py(ns, [*flags, "--name", "py-filter-rspamd", OURS, "--against", f"{ANCHOR} -url {URL}",
                               "--against-name", "filter-rspamd"], timeout=3600)
            comp = next((o["comparison_summary"] for o in objs if "comparison_summary" in o), None)
            results["throughput"] = comp
            if comp:
                sa, sb = comp["a"], comp["b"]
                cpu_a = (sa["cpu_user_s"] + sa["cpu_sys_s"]) / n * 1000
                cpu_b = (sb["cpu_user_s"] + sb["cpu_sys_s"]) / n * 1000
                results["cpu_ms_per_msg"] = {"py-filter-rspamd": round(cpu_a, 3), "filter-rspamd": round(cpu_b, 3)}
                ratio = comp["ratio_sessions_per_s"]
                print(f"msg/s: {sa['sessions_per_s']:.0f} vs {sb['sessions_per_s']:.0f} (ratio {ratio:.2f}, target >= 1.0: "
                      f"{'PASS' if ratio >= 1.0 else 'FAIL'}); filter CPU/msg: {cpu_a:.2f} ms vs {cpu_b:.2f} ms "
                      f"({'PASS' if cpu_a <= cpu_b else 'FAIL'}); peak RSS {sa['max_rss_MB_max']} MB vs "
                      f"{sb['max_rss_MB_max']} MB (<= 40: {'PASS' if sa['max_rss_MB_max'] <= 40 else 'FAIL'})", flush=True)
        else:
            print(f"comparison skipped: {ANCHOR} not installed (opensmtpd-filter-rspamd)", flush=True)
        if a.memory:
            print(f"memory: py-filter-rspamd over {a.memory} messages, 8 in flight", flush=True)
            objs = run_py(ns, ["--memory", "--memory-sessions", a.memory, "--window", "8", "--lines", "50",
                               "--name", "py-filter-rspamd", OURS], timeout=7200)
            results["memory"] = next((o for o in objs if "growth_MB" in o), objs[-1] if objs else None)
        results["rspamd_log_tail"] = rspamd.log_tail(3)
        rspamd.stop()
        redis.stop()
    finally:
        dns.stop()
        ns.stop()
        shutil.rmtree(work, ignore_errors=True)
    if a.json_out:
        with open(a.json_out, "a") as fh:
            fh.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
