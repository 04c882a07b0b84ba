"""Shared pytest configuration.

Hypothesis profiles (select with ``--hypothesis-profile NAME``):

* ``dev`` (default): quick, for every local run.
* ``ci`` (default when the ``CI`` environment variable is set; replaces
  hypothesis' own ``ci`` profile): derandomized, no deadline, no example
  database, and enough examples that one run feeds at least
  ``CI_MIN_PROTOCOL_LINES`` generated protocol lines through the runtime.
  The count is printed at the end of the run and the run fails below the
  floor (only for full runs that include ``test_properties.py``;
  ``SMTPD_FILTERS_MIN_LINES=N`` sets another floor, ``0`` switches it off).
* ``fuzz``: long runs (nightly, or by hand before a release).
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

# Streams carry 64 KiB lines and handlers that run into their deadline on
# purpose: size and speed health checks do not apply.
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
             HealthCheck.filter_too_much]

settings.register_profile("dev", max_examples=20, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile(
    "ci",
    settings.get_profile("ci"),
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile("fuzz", max_examples=5000, stateful_step_count=200, deadline=None,
                          suppress_health_check=_SUPPRESS)

CI_MIN_PROTOCOL_LINES = int(os.environ.get("SMTPD_FILTERS_MIN_LINES", "100000") or 0)
#: test modules that count the protocol lines they feed
_LINE_COUNTING = ("test_properties.py", "test_stateful.py")


def _in_ci() -> bool:
    try:  # the same detection hypothesis uses for its own ci profile
        from hypothesis._settings import is_in_ci
    except ImportError:  # pragma: no cover - older/newer hypothesis
        return bool(os.environ.get("CI"))
    return is_in_ci()


def _wanted_profile(config: pytest.Config) -> str:
    chosen = config.getoption("--hypothesis-profile", default=None)
    return chosen or ("ci" if _in_ci() else "dev")


# Loaded at import too, so modules imported before pytest_configure see it.
settings.load_profile("ci" if _in_ci() else "dev")


def pytest_configure(config: pytest.Config) -> None:
    # hypothesis loads its own "ci" profile when CI is set; ours wins, and an
    # explicit --hypothesis-profile wins over both.
    settings.load_profile(_wanted_profile(config))
    config._smtpd_line_tests = {"collected": 0, "deselected": 0, "main": False}  # type: ignore[attr-defined]


def _counts_lines(item: pytest.Item) -> bool:
    return os.path.basename(str(item.fspath)) in _LINE_COUNTING


def pytest_deselected(items: list[pytest.Item]) -> None:
    if not items:
        return
    counts = items[0].config._smtpd_line_tests  # type: ignore[attr-defined]
    counts["deselected"] += sum(1 for item in items if _counts_lines(item))


def pytest_collection_finish(session: pytest.Session) -> None:
    counts = session.config._smtpd_line_tests  # type: ignore[attr-defined]
    counts["collected"] = sum(1 for item in session.items if _counts_lines(item))
    # test_properties.py alone clears the floor; other modules only add to it
    counts["main"] = any(os.path.basename(str(item.fspath)) == _LINE_COUNTING[0] for item in session.items)


def _lines_fed() -> int:
    oracle = sys.modules.get("smtpd_oracle")
    return oracle.LINES_FED[0] if oracle is not None else 0


def _floor_applies(config: pytest.Config) -> bool:
    counts = config._smtpd_line_tests  # type: ignore[attr-defined]
    return (
        settings.get_current_profile_name() == "ci"
        and CI_MIN_PROTOCOL_LINES > 0
        and counts.get("main", False)
        and counts["deselected"] == 0
        and not any("::" in str(arg) for arg in config.args)
        and not config.getoption("keyword", default="")
        and not config.getoption("markexpr", default="")
        and not config.getoption("collectonly", default=False)
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _floor_applies(session.config) and _lines_fed() < CI_MIN_PROTOCOL_LINES and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    fed = _lines_fed()
    if not fed and not _floor_applies(config):
        return
    profile = settings.get_current_profile_name()
    terminalreporter.section("protocol lines", sep="-")
    terminalreporter.write_line(f"hypothesis profile {profile!r}: {fed:,} generated protocol lines "
                                f"fed through the runtime")
    if _floor_applies(config):
        if fed < CI_MIN_PROTOCOL_LINES:
            terminalreporter.write_line(
                f"FAILED: the ci profile must feed at least {CI_MIN_PROTOCOL_LINES:,} lines", red=True)
        else:
            terminalreporter.write_line(f"ci floor of {CI_MIN_PROTOCOL_LINES:,} lines: ok", green=True)
