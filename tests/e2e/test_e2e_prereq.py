"""Skip loudly on a machine without smtpd; fail instead under SMTPD_FILTERS_REQUIRE_E2E=1."""

from __future__ import annotations

import pytest

from e2e_harness import prereq


def test_missing_smtpd_is_reported(monkeypatch):
    monkeypatch.setattr(prereq, "SMTPD", "/nonexistent/smtpd")
    problems = prereq.missing_basics()
    assert any("/nonexistent/smtpd not found" in p and "apt-get install opensmtpd" in p for p in problems)


def test_skip_without_the_variable(monkeypatch):
    monkeypatch.delenv(prereq.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="E2E NOT RUN: no smtpd"):
        prereq.skip_or_fail("no smtpd")


@pytest.mark.parametrize("value,fails", [("1", True), ("0", False), ("", False)])
def test_fail_with_the_variable(monkeypatch, value, fails):
    monkeypatch.setenv(prereq.REQUIRE_ENV, value)
    expected = pytest.fail.Exception if fails else pytest.skip.Exception
    with pytest.raises(expected, match="E2E NOT RUN: no smtpd"):
        prereq.skip_or_fail("no smtpd")
