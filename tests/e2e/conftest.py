"""Fixtures for end-to-end tests against a real OpenSMTPD (see README.md here).

* ``e2e_runtime`` (session): checks the machine (root, /usr/sbin/smtpd,
  ``unshare -n -m``, ...) - skips loudly, or fails under
  ``SMTPD_FILTERS_REQUIRE_E2E=1`` - and builds the world-readable Python the
  filters run with (``e2e_runtime.python``, ``.example(name, *args)``,
  ``.test_filter(name, *args)``, ``.module(mod, *args)``).
* ``smtpd_factory`` (module): ``smtpd_factory(filters, tls=..., submission=...,
  zone=...)`` starts a private smtpd (own namespace + DNS server) and returns an
  :class:`~e2e_harness.SmtpdServer`; everything is stopped by PID when the
  module ends, and the teardown fails if smtpd died during the module (unless
  the test said ``server.expect_exit = True``) or if filter processes did not
  exit on EOF.

A failing test gets the tail of each running smtpd's log in its report.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from e2e_harness import (
    PrerequisiteError,
    Runtime,
    build_runtime,
    missing_basics,
    skip_or_fail,
)
from e2e_harness import smtpd as _smtpd_mod
from e2e_harness.smtpd import server_pool


@pytest.fixture(scope="session")
def e2e_runtime() -> Iterator[Runtime]:
    problems = missing_basics()
    if problems:
        skip_or_fail("; ".join(problems))
    try:
        rt = build_runtime()
    except PrerequisiteError as e:
        skip_or_fail(str(e))
    try:
        yield rt
    finally:
        rt.cleanup()


@pytest.fixture(scope="module")
def smtpd_factory(e2e_runtime: Runtime):
    yield from server_pool(e2e_runtime)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _smtpd_mod.ACTIVE:
        for s in list(_smtpd_mod.ACTIVE):
            rep.sections.append((f"smtpd {s.dir.name} (alive={s.alive()})", s.log_tail(60)))


@pytest.fixture
def tok() -> str:
    """A unique token for one test's message."""
    from e2e_harness import token

    return token()
