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
  exit on EOF.  ``services=[...]`` starts daemons in its namespace before
  smtpd (after the DNS server) and stops them after it; ``share_net_with=server,
  port=N`` puts a second smtpd on the first one's loopback (its DNS, services).
* ``redis_factory`` / ``rspamd_factory`` (module): ``redis_factory(port=6379)``,
  ``rspamd_factory(local_d={...}, override_d={...}, redis="127.0.0.1:6379")``
  return unstarted :mod:`e2e_harness.services` objects for ``services=``; the
  fixture skips (fails under ``SMTPD_FILTERS_REQUIRE_E2E=1``) if the daemon is
  not installed.  ``rspamd_local_d`` (module, default ``{}``) is merged into
  every ``rspamd_factory`` config: override it in a test module to extend
  rspamd's local.d for that module.

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
from e2e_harness.services import RedisServer, RspamdServer, Service
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


def _service_factory(cls: type[Service]):
    problems = cls.missing()
    if problems:
        skip_or_fail("; ".join(problems))
    return cls


@pytest.fixture(scope="module")
def redis_factory(e2e_runtime: Runtime):
    return _service_factory(RedisServer)


@pytest.fixture(scope="module")
def rspamd_local_d() -> dict[str, str]:
    """Extra rspamd local.d snippets for every rspamd of a module (override it there)."""
    return {}


@pytest.fixture(scope="module")
def rspamd_factory(e2e_runtime: Runtime, rspamd_local_d: dict[str, str]):
    cls = _service_factory(RspamdServer)

    def make(local_d: dict[str, str] | None = None, **kw) -> RspamdServer:
        return cls(local_d={**rspamd_local_d, **(local_d or {})}, **kw)

    return make


def pytest_collection_modifyitems(config, items):
    """Tests marked ``run_last`` check on something a fixture started long
    before (smtpd's ~75 s of PTR retries in test_e2e_rdns): they run after
    everything else, so the wait overlaps the rest of the suite."""
    last = [item for item in items if item.get_closest_marker("run_last")]
    if last:
        items[:] = [item for item in items if not item.get_closest_marker("run_last")] + last


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _smtpd_mod.ACTIVE:
        for s in list(_smtpd_mod.ACTIVE):
            rep.sections.append((f"smtpd {s.dir.name} (alive={s.alive()})", s.log_tail(60)))
            for svc in s.services:
                rep.sections.append((f"{svc.name} of smtpd {s.dir.name} (alive={svc.alive()})", svc.log_tail(30)))


@pytest.fixture
def tok() -> str:
    """A unique token for one test's message."""
    from e2e_harness import token

    return token()
