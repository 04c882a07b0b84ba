"""Trap address lists: exact, *@domain, /regex/flags (rspamd map syntax)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import filterkit  # noqa: F401
from smtpd_filters.traplist import ListFileError, TrapList, normalize_address

LIST = """\
# spam traps
trap@example.org
Exact.Local@Example.NET   # local parts keep their case
*@honeypot.example.org
/^old-[0-9]+@example\\.org$/
/^SALES@/i
"""


@pytest.mark.parametrize(
    "address, entry",
    [
        ("trap@example.org", "trap@example.org"),
        ("<trap@EXAMPLE.org>", "trap@example.org"),
        ("trap@example.org.", "trap@example.org"),
        ("Trap@example.org", None),  # local part: exact
        ("Exact.Local@example.net", "Exact.Local@example.net"),
        ("exact.local@example.net", None),
        ("anyone@honeypot.example.org", "*@honeypot.example.org"),
        ("anyone@HoneyPot.Example.Org", "*@honeypot.example.org"),
        ("anyone@sub.honeypot.example.org", None),  # not below the domain
        ("old-42@example.org", "/^old-[0-9]+@example\\.org$/"),
        ("old-42@EXAMPLE.ORG", "/^old-[0-9]+@example\\.org$/"),  # regexes see the lower-cased domain
        ("old-x@example.org", None),
        ("sales@anywhere.test", "/^SALES@/i"),
        ("bob@example.org", None),
        ("", None),
        ("<>", None),
        ("postmaster", None),
    ],
)
def test_matches(address, entry):
    assert TrapList.parse(LIST, "traps").match(address) == entry


@pytest.mark.parametrize(
    "line, message",
    [
        ("not-an-address", "traps:3: not an address (no @)"),
        ("@example.org", "empty local part"),
        ("a@-bad-.example", "not a domain name"),
        ("a b@example.org", "bad local part"),
        ("a@b@example.org", "bad local part"),
        ("/unterminated", "a regex line is /PATTERN/FLAGS"),
        ("/a(/", "bad regex"),
        ("/a/q", "unknown regex flag 'q'"),
        ("/a/ # comment", "a regex line is /PATTERN/FLAGS"),
        ("//", "empty regex"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(line, message):
    with pytest.raises(ListFileError) as exc:
        TrapList.parse(f"ok@example.org\n# fine\n{line}\n", "traps")
    assert str(exc.value).startswith("traps:3: ")
    assert message in str(exc.value)


def test_several_files_are_one_list_and_errors_name_the_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a@example.org\n")
    b.write_text("*@b.example\n")
    traps = TrapList.load([str(a), str(b)])
    assert traps.match("a@example.org") and traps.match("x@b.example") and len(traps) == 2
    b.write_text("\n\nbroken\n")
    with pytest.raises(ListFileError, match=rf"^{b}:3: "):
        TrapList.load([str(a), str(b)])
    with pytest.raises(ListFileError, match="No such file"):
        TrapList.load([str(tmp_path / "missing")])


# -- properties ---------------------------------------------------------------------------

local_parts = st.from_regex(r"\A[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,20}\Z").filter(lambda s: s != "*" and "#" not in s)
labels = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)


def recase(draw, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c for c, f in zip(text, flips))


@given(st.data(), local_parts, domains)
def test_an_exact_entry_matches_itself_whatever_the_domains_case(data, local, domain):
    traps = TrapList.parse(f"{local}@{domain}\n")
    shown = f"{local}@{recase(data.draw, domain)}"
    assert traps.match(shown) == f"{local}@{domain}"
    assert traps.match(f"<{shown}>") == f"{local}@{domain}"
    assert traps.match(f"{local}x@{domain}") is None


@given(st.data(), local_parts, domains)
def test_a_wildcard_matches_every_local_part_and_nothing_below(data, local, domain):
    traps = TrapList.parse(f"*@{domain}\n")
    assert traps.match(f"{local}@{recase(data.draw, domain)}") == f"*@{domain}"
    assert traps.match(f"{local}@sub.{domain}") is None


@given(local_parts, domains)
def test_an_escaped_address_as_regex_matches_like_the_exact_entry(local, domain):
    pattern = "^" + re.escape(f"{local}@{domain}") + "$"
    traps = TrapList.parse(f"/{pattern}/\n")
    assert traps.match(f"{local}@{domain.upper()}") == f"/{pattern}/"


@given(st.lists(st.text(max_size=40), max_size=6))
def test_any_text_is_a_list_or_a_file_line_error(lines):
    try:
        traps = TrapList.parse(lines, "f")
    except ListFileError as exc:
        assert re.match(r"^f:\d+: ", str(exc))
        return
    entries = [ln for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    assert len(traps) <= len(entries)  # duplicates collapse; nothing is invented


@given(st.text(max_size=60))
def test_normalize_never_raises(text):
    a = normalize_address(text)
    assert a is None or ("@" in a and a == normalize_address(a))
