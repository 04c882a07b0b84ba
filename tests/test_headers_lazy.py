"""``Headers`` parses its block into fields only when asked: a tagger's
``remove`` + ``add`` + ``lines()`` never splits it.  Whatever is done with a
block, the lazy one must give exactly what one parsed at once gives."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from smtpd_filter_sdk.message import Header, Headers

LINES = [b"Received: from a", b"\tby b", b"From: <bob@example.org>", b"X-Tag: one", b"x-tag: two", b"X-TAG:three",
         b" continued", b"not a header", b"X-Tag : spaced", b"X-Ta\xe9g: 8bit", b"\xe9: x", b":", b"", b"Subject: s",
         b"X-Tag\r: cr", b"Kelvin: k"]
NAMES = ["X-Tag", "x-tag", "From", "Subject", "", "\u212aelvin", "Kelvin", "X-Ta\ufffdg", "\ufffd", "Missing", "a:b"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("remove"), st.sampled_from(NAMES)),
        st.tuples(st.just("add"), st.sampled_from([n for n in NAMES if n and ":" not in n]), st.booleans()),
        st.tuples(st.just("get"), st.sampled_from(NAMES)),
        st.tuples(st.just("contains"), st.sampled_from(NAMES)),
        st.tuples(st.just("lines")),
        st.tuples(st.just("replace"), st.sampled_from(["X-Tag", "New"])),
        st.tuples(st.just("set")),
    ),
    max_size=8,
)


def apply(headers: Headers, op: tuple) -> object:
    try:
        return _apply(headers, op)
    except Exception as exc:  # the same failure both ways (get("") of a non-header line)
        return type(exc)


def _apply(headers: Headers, op: tuple) -> object:
    kind = op[0]
    if kind == "remove":
        return headers.remove(op[1])
    if kind == "add":
        return headers.add(op[1], "value of " + op[1], prepend=op[2])
    if kind == "get":
        return headers.get(op[1]), headers.get_all(op[1]), op[1] in headers, len(headers)
    if kind == "contains":
        return op[1] in headers
    if kind == "lines":
        return headers.lines()
    if kind == "replace":
        return headers.replace(op[1], "replaced")
    headers.fields = [Header("Set", [b"Set: by hand"])] + headers.fields[1:]
    return None


@settings(max_examples=500)
@given(st.lists(st.sampled_from(LINES), max_size=12), ops)
@example([b"X-Ta\xe9g: 8bit"], [("remove", "X-Ta\ufffdg")])  # a name decoded with U+FFFD
@example([b"Kelvin: k"], [("remove", "\u212aelvin")])  # lowers to ASCII
@example([b"a:b: x"], [("contains", "a:b")])  # the byte look finds it, the field is "a"
@example([b"X-Tag: one"], [("add", "Kelvin", True), ("contains", "kelvin")])  # only among the added
def test_a_lazy_block_answers_what_a_parsed_one_does(block, steps):
    lazy = Headers.parse(block)
    eager = Headers.parse(block)
    eager.fields  # parsed at once
    for op in steps:
        assert apply(lazy, op) == apply(eager, op)
    assert lazy.lines() == eager.lines()
    assert lazy == eager and lazy.fields == eager.fields


def test_a_tagger_never_splits_the_block():
    headers = Headers.parse([b"Received: from a", b"\tby b", b"Subject: s"])
    assert headers.remove("X-Filtered-By") == 0
    headers.add("X-Filtered-By", "add-header")
    assert headers.lines() == [b"X-Filtered-By: add-header", b"Received: from a", b"\tby b", b"Subject: s"]
    assert headers._fields is None  # still the lines as they came
    assert headers.remove("x-filtered-by") == 1 and headers.lines()[0] == b"Received: from a"


def test_asking_for_a_header_the_block_lacks_does_not_split_it():
    headers = Headers.parse([b"Received: from a", b"\tby b", b"Subject: s", b"X-Score-Not: 1"])
    assert "X-Score" not in headers
    headers.add("X-Score", "4")
    assert "x-score" in headers  # the added one
    assert headers._fields is None  # still the lines as they came
    assert "subject" in headers and headers.get("X-Score") == "4"
