"""The per-session request path, taken in fewer steps: addresses parsed
IPv4-first, request and report lines split once.  Each must give exactly
what the plain rules give."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtpd_filter_sdk.protocol import Address, parse_address, parse_request


def plain_rules(raw: str) -> Address:
    """How smtpd's address forms read: the first rule that fits, in order."""

    def port(text: str) -> int | None:
        return int(text) if text.isdigit() else None

    def bracketed() -> Address:
        inner, close, rest = raw[1:].partition("]")
        inner = inner[5:] if inner[:5].lower() == "ipv6:" else inner
        host, scope = inner.split("%", 1) if "%" in inner else (inner, "")
        if not close:
            return Address("unknown", raw, None, "", raw)
        return Address("inet6", host, port(rest[1:]) if rest[:1] == ":" else None, scope, raw)

    pieces = raw.split(".")
    rules = [
        (raw == "local", lambda: Address("local", "", None, "", raw)),
        (raw[:5] == "unix:", lambda: Address("unix", raw[5:], None, "", raw)),
        (raw[:1] == "[", bracketed),
        (raw.count(":") == 1, lambda: Address("inet", raw.split(":")[0], port(raw.split(":")[1]), "", raw)),
        (raw.count(":") >= 2, lambda: Address("inet6", raw.split("%")[0], None, "%".join(raw.split("%")[1:]), raw)),
        (len(pieces) == 4 and all(x.isdigit() for x in pieces), lambda: Address("inet", raw, None, "", raw)),
        (True, lambda: Address("unknown", raw, None, "", raw)),
    ]
    return next(build for fits, build in rules if fits)()


octet = st.integers(0, 255).map(str)
ipv4 = st.builds(".".join, st.lists(octet, min_size=4, max_size=4))
addresses = st.one_of(
    ipv4,
    st.builds("{}:{}".format, ipv4, st.integers(0, 99999)),
    st.builds("[{}]:{}".format, st.sampled_from(["::1", "fe80::1%eth0", "IPv6:2001:db8::1"]), st.integers(0, 65535)),
    st.text(alphabet="0123456789.:[]%abcdefilnoux/ \u00b2\u0663", max_size=16),
)


@given(addresses)
@example("unix:/var/run/smtpd.sock")
@example("unix:")
@example("local")
@example("1.2.3.4:\u00b2")  # isdigit but not int(): the plain rules raise, and so must we
@example("1.2..3")
@example("\u0663.1.1.1")
@example("[::1]:25")
@example("::1")
def test_an_address_reads_as_the_plain_rules_read_it(raw):
    try:
        expected: Address | type = plain_rules(raw)
    except ValueError:
        expected = ValueError
    try:
        got: Address | type = parse_address(raw)
    except ValueError:
        got = ValueError
    assert got == expected


@pytest.mark.parametrize("phase", ["connect", "helo", "commit", "data", "mail-from"])
def test_request_phases_are_known_by_their_bytes(phase):
    assert parse_request(b"filter|0.6|1|smtp-in|%s|s|t|x" % phase.encode()).phase == phase


def test_an_unknown_phase_is_named_as_it_came():
    with pytest.raises(ValueError, match=r"unknown filter phase 'conn\\udcffect'"):
        parse_request(b"filter|0.6|1|smtp-in|conn\xffect|s|t|x")
