"""goflags.duration: Go-style durations for string flags."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpd_filter_sdk.goflags import GoFlags, UsageError, duration


@pytest.mark.parametrize(
    "text, seconds",
    [("24h", 86400), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("500ms", 0.5), ("7d", 604800), ("10", 10), ("0", 0), ("1.5h", 5400)],
)
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "5x", "-1h", "1h 30m", "1h30", "nan", "inf", "24hours"])
def test_not_durations(text):
    with pytest.raises(ValueError):
        duration(text)


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["ms", "s", "m", "h", "d"])), min_size=1, max_size=4))
def test_any_sum_of_units(parts):
    text = "".join(f"{n}{u}" for n, u in parts)
    want = sum(n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)
    assert duration(text) == pytest.approx(want)


@given(st.text(max_size=12))
def test_any_text_is_a_duration_or_a_value_error(text):
    try:
        assert duration(text) >= 0
    except ValueError:
        pass


def test_as_a_flag_the_option_holds_seconds_and_the_usage_the_text():
    g = GoFlags("prog")
    g.string("expire", "24h", "how long", validate=duration)
    assert g.parse_or_raise(["-expire", "2h"]).expire == 7200
    assert "(default 24h)" in g.usage()
    with pytest.raises(UsageError, match='invalid value "2y" for flag -expire'):
        g.parse_or_raise(["-expire", "2y"])
