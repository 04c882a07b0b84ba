"""The per-session request path, taken in fewer steps: addresses parsed
IPv4-first, request and report lines split once, an answer whose decision
already passed the output check not checked again.  Each must give exactly
what the plain rules give."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtpd_filter_sdk import Filter, disconnect, junk, proceed, reject
from smtpd_filter_sdk.protocol import Address, is_fatal_output, parse_address, parse_request
from smtpd_filter_sdk.responses import Decision, failure_decision, rewrite
from smtpd_filter_sdk.runtime import Engine


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


def _engine() -> Engine:
    f = Filter("answers")
    f.log = lambda *a: None  # type: ignore[method-assign]
    return Engine(f)


def _forged(kind: str) -> Decision:
    """A decision changed after its checks (object.__setattr__ gets past
    frozen): what the last line of defence is there for."""
    d = reject(550, "go away")
    object.__setattr__(d, "text", "go\r\naway" if kind == "crlf" else "x" * 70000)
    return d


decisions = st.one_of(
    st.sampled_from([None, proceed(), junk(), reject(550, "5.7.1 no"), disconnect(421, "bye"), rewrite("a|b")]),
    st.sampled_from(["crlf", "long"]).map(_forged),
)
ids = st.one_of(
    st.sampled_from([b"06671ad11c80317f|f7e89af9b7f45a5a", b"s|t", b"s|t|u", b"s\r|t", b"s|t\n", b"st"]),
    st.binary(max_size=12),
    st.integers(65400, 65540).map(lambda n: b"s|" + b"t" * n),
)


def checked_answer(ids_: bytes, decision: Decision | None) -> list[bytes]:
    """What the output check lets through: the answer, else the failure
    policy's, else nothing."""
    line = b"filter-result|" + ids_ + b"|" + (decision.wire if decision is not None else b"proceed")
    if not is_fatal_output(line):
        return [line]
    line = b"filter-result|" + ids_ + b"|" + failure_decision("fail-open", "connect").wire
    return [] if is_fatal_output(line) else [line]


@given(st.lists(st.tuples(ids, decisions), min_size=1, max_size=6))
@example([(b"s|t", junk()), (b"s|t|u", junk()), (b"s\r|t", junk()), (b"s|" + b"t" * 65530, junk())])
def test_every_answer_is_what_the_output_check_allows_first_time_or_again(answers):
    engine = _engine()
    for ids_, decision in answers:
        req = dataclasses.replace(parse_request(b"filter|0.6|1|smtp-in|connect|s|t|localhost|local"), ids=ids_)
        engine.out.clear()
        engine._answer(req, engine.sessions.get("s"), decision)
        assert engine.out == checked_answer(ids_, decision)


@pytest.mark.parametrize("phase", ["connect", "helo", "commit", "data", "mail-from"])
def test_request_phases_are_known_by_their_bytes(phase):
    assert parse_request(b"filter|0.6|1|smtp-in|%s|s|t|x" % phase.encode()).phase == phase


def test_an_unknown_phase_is_named_as_it_came():
    with pytest.raises(ValueError, match=r"unknown filter phase 'conn\\udcffect'"):
        parse_request(b"filter|0.6|1|smtp-in|conn\xffect|s|t|x")
