"""Go-style flags: what Go's flag package accepts, errors on one line, exit 2."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpd_filter_sdk.goflags import GoFlags, UsageError


def make() -> GoFlags:
    g = GoFlags("prog", "a test program")
    g.int("blockBelow", -1, "block below N")
    g.float("timeout", 2.0, "seconds", validate=lambda v: v if v > 0 else (_ for _ in ()).throw(ValueError("must be positive")))
    g.string("allowlist", "", "a file", metavar="FILE", aliases=("whitelist",))
    g.bool("scoreHeader", False, "add a header")
    g.choice("blockPhase", "connect", ("connect", "helo", "mail-from"), "phase", metavar="PHASE")
    return g


def test_defaults():
    o = make().parse_or_raise([])
    assert (o.blockBelow, o.timeout, o.allowlist, o.scoreHeader, o.blockPhase) == (-1, 2.0, "", False, "connect")
    assert o.given == set() and o.args == []


@pytest.mark.parametrize(
    "argv",
    [
        ["-blockBelow", "10", "-scoreHeader", "-allowlist", "/f", "-blockPhase", "helo", "-timeout", "0.5"],
        ["--blockBelow=10", "--scoreHeader", "-allowlist=/f", "-blockPhase=helo", "-timeout=.5"],
        ["-blockBelow", "10", "-scoreHeader=true", "-whitelist", "/f", "-blockPhase", "helo", "-timeout", "5e-1"],
    ],
)
def test_go_forms(argv):
    o = make().parse_or_raise(argv)
    assert (o.blockBelow, o.timeout, o.allowlist, o.scoreHeader, o.blockPhase) == (10, 0.5, "/f", True, "helo")
    assert "allowlist" in o.given


def test_bool_values_and_negative_numbers():
    g = make()
    for text in ("1", "t", "T", "true", "TRUE", "True"):
        assert g.parse_or_raise([f"-scoreHeader={text}"]).scoreHeader is True
    for text in ("0", "f", "F", "false", "FALSE", "False"):
        assert g.parse_or_raise([f"-scoreHeader={text}"]).scoreHeader is False
    assert g.parse_or_raise(["-blockBelow", "-5"]).blockBelow == -5
    assert g.parse_or_raise(["-blockBelow=-5"]).blockBelow == -5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-nope"], "flag provided but not defined: -nope"),
        (["-blockBelow"], "flag needs an argument: -blockBelow"),
        (["-blockBelow", "ten"], 'invalid value "ten" for flag -blockBelow: parse error'),
        (["-timeout", "nan"], 'invalid value "nan" for flag -timeout: parse error'),
        (["-timeout", "0"], 'invalid value "0" for flag -timeout: must be positive'),
        (["-blockPhase", "data"], 'invalid value "data" for flag -blockPhase: one of connect, helo, mail-from'),
        (["-scoreHeader=yes"], 'invalid boolean value "yes" for -scoreHeader'),
        (["---x"], "bad flag syntax: ---x"),
        (["-=x"], "bad flag syntax: -=x"),
        (["stray"], "unexpected argument 'stray'"),
        (["-scoreHeader", "stray"], "unexpected argument 'stray'"),
    ],
)
def test_errors(argv, message):
    with pytest.raises(UsageError) as exc:
        make().parse_or_raise(argv)
    assert str(exc.value) == message


def test_parse_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        make().parse(["-blockBelow", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith('prog: invalid value "x" for flag -blockBelow: parse error (usage: prog [-blockBelow N]')
    assert "[-scoreHeader]" in err and "[-allowlist FILE]" in err


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        make().parse(["-h"])
    assert exc.value.code == 0
    err = capsys.readouterr().err
    assert "usage: prog" in err and "-allowlist FILE" in err and "(also -whitelist)" in err


def test_double_dash_ends_flags():
    g = GoFlags("p", positional="[ARGS]")
    g.bool("x", False, "x")
    o = g.parse_or_raise(["-x", "--", "-y"])
    assert o.x and o.args == ["-y"]


def test_duplicate_definition_is_a_bug():
    g = GoFlags("p")
    g.bool("x", False, "x")
    with pytest.raises(ValueError):
        g.int("x", 0, "again")
    with pytest.raises(ValueError):
        g.bool("help", False, "help is taken")


def test_h_is_help_unless_the_filter_defines_it(capsys):
    g = GoFlags("p")
    g.string("h", "from", "headers to sign", metavar="h1:h2")
    assert g.parse_or_raise(["-h", "from:to"]).h == "from:to"
    with pytest.raises(SystemExit) as exc:
        g.parse_or_raise(["-help"])
    assert exc.value.code == 0 and "-h h1:h2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make().parse_or_raise(["-h"])


def test_repeatable_flag_collects_values_in_order():
    g = GoFlags("p")
    g.strings("d", "signing domain", metavar="DOMAIN")
    assert g.parse_or_raise([]).d == []
    o = g.parse_or_raise(["-d", "b.example", "-d=a.example"])
    assert o.d == ["b.example", "a.example"] and "d" in o.given
    assert "[-d DOMAIN ...]" in g.synopsis() and "(repeatable)" in g.usage()


@given(st.lists(st.text(max_size=12), max_size=6))
def test_any_argv_parses_or_gives_one_usage_line(argv):
    try:
        make().parse_or_raise(argv)
    except UsageError as exc:
        assert "\n" not in str(exc).strip() or "\n" in "".join(argv)
    except SystemExit as exc:  # -h / -help
        assert exc.code == 0
