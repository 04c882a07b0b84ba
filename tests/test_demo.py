"""`make demo` runs `python -m smtpd_filter_sdk.testing.demo`: it must work
without smtpd, show the transcript and pass the examples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_and_passes_the_examples():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "smtpd_filter_sdk.testing.demo"],
        capture_output=True, text=True, env=env, timeout=120, cwd="/",
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    # a transcript: client command -> filter decision -> smtpd's answer
    assert "C: EHLO localhost" in out
    assert "filter: reject|550 5.7.1 HELO localhost not accepted here" in out
    assert "+ header added:   X-Filtered-By: add-header" in out
    assert "- header removed: X-Filtered-By: forged" in out
    # the newer examples, with their DEMO args (dnsbl: a loopback DNS server)
    assert "S: 554 5.7.1 Service unavailable; client [203.0.113.9] listed in bl.demo.test" in out
    assert "filter: reject|452 4.7.1 too many recipients from your address, try again later" in out
    assert "+ header added:   Subject: [SPAM] test" in out
    assert '"subsystem": "smtp-in", "event": "link-connect"' in out
    # every example gets a verdict on every released dialect
    for example in sorted((ROOT / "examples").glob("*.py")):
        assert f"examples/{example.name}" in out
    # (the production filters take part too where the package is installed)
    shown = len(list((ROOT / "examples").glob("*.py"))) + out.count("\nsmtpd_filters.")
    assert out.count("PASS  0.7/7.6") == shown
    # and the naive filter shows what the checker catches
    assert "HANG swapped-ids" in out and "HANG line-too-long" in out
    assert out.rstrip().endswith("all demo filters pass")
