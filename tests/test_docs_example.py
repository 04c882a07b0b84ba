"""docs/testing.md: the complete example runs as printed, and the rule
table covers every rule the checker can report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "testing.md"


def example_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    complete = [b for b in blocks if b.startswith("# test_my_filter.py")]
    assert len(complete) == 1, "the complete example must be one ```python block starting with '# test_my_filter.py'"
    return complete[0]


def test_complete_example_passes(tmp_path):
    (tmp_path / "test_my_filter.py").write_text(example_code(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_filter.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


def test_complete_example_can_fail(tmp_path):
    # The example's assertions bite: break the filter, the tests fail.
    broken = example_code().replace('headers.add("X-Checked", "no-free-mail")', 'headers.add("X-Checked", "oops")')
    (tmp_path / "test_my_filter.py").write_text(broken, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "test_my_filter.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1 and "1 failed" in run.stdout


def test_every_rule_is_documented():
    src = (ROOT / "smtpd_filter_sdk" / "testing" / "simulator.py").read_text() + (
        ROOT / "smtpd_filter_sdk" / "testing" / "harness.py"
    ).read_text()
    rules = set(re.findall(r'(?:_fatal\(\s*|finding\(\s*(?:FATAL|HANG|WARN),\s*)"([a-z0-9-]+[a-z0-9])"', src))
    rules |= {"param-after-proceed", "param-after-junk"}
    assert len(rules) > 35
    doc = DOC.read_text(encoding="utf-8")
    missing = sorted(r for r in rules if f"`{r}`" not in doc)
    assert missing == []


def test_readme_carries_the_same_complete_example():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert example_code() in blocks
