"""What the e2e tests need from the machine, and skip-or-fail when it is missing.

On a developer machine without smtpd (or without namespaces) the e2e tests
skip with a loud reason.  ``SMTPD_FILTERS_REQUIRE_E2E=1`` (set by .ci/run)
turns every such skip into a failure, so CI cannot go green by skipping.
"""

from __future__ import annotations

import os
import pwd
import shutil

import pytest

SMTPD = "/usr/sbin/smtpd"
REQUIRE_ENV = "SMTPD_FILTERS_REQUIRE_E2E"
APT_HINT = "apt-get install opensmtpd python3-venv gcc libc6-dev iproute2 openssl"


class PrerequisiteError(Exception):
    """Something the e2e tests need is missing on this machine."""


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def skip_or_fail(reason: str) -> None:
    """pytest.skip(reason), or pytest.fail when SMTPD_FILTERS_REQUIRE_E2E=1."""
    msg = f"E2E NOT RUN: {reason}"
    if required():
        pytest.fail(f"{msg} ({REQUIRE_ENV}=1 makes this a failure)", pytrace=False)
    pytest.skip(f"{msg} (set {REQUIRE_ENV}=1 to make this a failure)")


def missing_basics() -> list[str]:
    """Problems that make every e2e test impossible (empty list: all fine)."""
    from .netns import have_namespaces

    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (smtpd needs root; namespaces + bind mounts)")
    if not os.access(SMTPD, os.X_OK):
        problems.append(f"{SMTPD} not found ({APT_HINT})")
    for user in ("opensmtpd", "opensmtpq", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            problems.append(f"user {user!r} missing (created by the opensmtpd package)")
    for tool in ("runuser", "openssl"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` not found")
    if not os.access("/usr/bin/python3", os.X_OK):
        problems.append("/usr/bin/python3 not found (apt-get install python3 python3-venv)")
    if not problems:
        ns = have_namespaces()
        if ns:
            problems.append(ns)
    return problems
