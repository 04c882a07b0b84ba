#!/usr/bin/env python3
"""py-filter-dkimsign against Debian's filter-dkimsign (C, libopensmtpd).

    python3 bench/bench_dkimsign.py [--quick] [--repeats 5] [--json-out FILE]

The same stream (protocol 0.6, connect + EHLO + one message + QUIT per
session) through both filters with the same key and flags, by run.py in open
loop, alternating runs, medians:

1. RSA-2048, simple/simple, 50-line messages   target: messages/s >= 1.0x
2. RSA-2048, simple/simple, 100 KB messages     target: messages/s >= 1.5x
3. Ed25519, 50-line messages                    target: >= 1.0x
4. Ed25519, 100 KB messages                     target: >= 1.5x

and the peak RSS of ours in every run (target <= 40 MB).  Ours runs on the
interpreter running this script: run it with the venv's python (filters/README's
install, pip's ``cryptography``) to bench the deployed form; ``--python
/usr/bin/python3`` runs ours on Debian's python3-cryptography instead.
``--only TEXT`` keeps the cases whose name contains TEXT.  Keys are made with
openssl in a temporary directory.  No DNS is involved (signing only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import filterdrive as fd

ANCHOR = "/usr/libexec/opensmtpd/filter-dkimsign"
CASES = (
    # name, key kind, -a, stream size args, target ratio
    ("rsa-2048 50 lines", "rsa", "rsa-sha256", ["--lines", "50"], 1.0),
    ("rsa-2048 100 KB", "rsa", "rsa-sha256", ["--size", "102400"], 1.5),
    ("ed25519 50 lines", "ed25519", "ed25519-sha256", ["--lines", "50"], 1.0),
    ("ed25519 100 KB", "ed25519", "ed25519-sha256", ["--size", "102400"], 1.5),
)
RSS_TARGET_MB = 40.0


def make_keys(d: str) -> dict[str, str]:
    keys = {"rsa": os.path.join(d, "rsa.key"), "ed25519": os.path.join(d, "ed.key")}
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", keys["rsa"]],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", keys["ed25519"]], check=True, capture_output=True)
    for path in keys.values():
        os.chmod(path, 0o600)
    return keys


def compare(python: str, flags: str, size: list[str], n: int, repeats: int) -> dict:
    return fd.compare(
        ["--isolate", "no", *size, "-n", str(n), "--repeats", str(repeats)],
        f"{python} {fd.REPO}/filters/dkimsign.py {flags}", f"{ANCHOR} {flags}", ("py-filter-dkimsign", "filter-dkimsign"),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json-out")
    ap.add_argument("--python", default=fd.PY, help="interpreter for ours (default: this one)")
    ap.add_argument("--only", default="", help="only the cases whose name contains this")
    a = ap.parse_args(argv)
    if not os.access(ANCHOR, os.X_OK):
        print(f"skipped: not installed ({ANCHOR})")
        return 0
    results: dict = {}
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="bench-dkim-") as d:
        keys = make_keys(d)
        print(f"ours on {a.python}", flush=True)
        for name, kind, alg, size, target in CASES:
            if a.only not in name:
                continue
            small = size[0] == "--lines"
            n = (1000 if a.quick else 3000) if small else (200 if a.quick else 600)
            flags = f"-a {alg} -d bench.example -s sel -k {keys[kind]}"
            print(f"{name}: {n} sessions, open loop, {a.repeats} alternating runs each:", flush=True)
            comp = results[name] = compare(a.python, flags, size, n, a.repeats)
            ratio = comp.get("ratio_sessions_per_s")
            if ratio is None:
                print(f"{name}: comparison failed: {comp}", flush=True)
                verdicts.append(False)
                continue
            rss = comp["a"].get("max_rss_MB_max")
            ok = ratio >= target and comp["a"]["all_complete"]
            verdicts.append(ok and (rss is None or rss <= RSS_TARGET_MB))
            print(f"{name}: messages/s py-filter-dkimsign / filter-dkimsign {ratio:.2f} "
                  f"({comp['a']['sessions_per_s']:,.0f} vs {comp['b']['sessions_per_s']:,.0f}; target >= {target}): "
                  f"{'PASS' if ok else 'FAIL'}; peak RSS {rss} MB (target <= {RSS_TARGET_MB:.0f}): "
                  f"{'PASS' if rss is not None and rss <= RSS_TARGET_MB else 'FAIL'}", flush=True)
    if a.json_out:
        with open(a.json_out, "a") as fh:
            fh.write(json.dumps({"bench": "dkimsign", **results}) + "\n")
    print("all targets met" if all(verdicts) else "some targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
