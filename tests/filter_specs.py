"""Filters built from drawn specs, for the property and stateful tests.

A ``Spec`` says, per filter phase, how its handler(s) behave (sync or async,
returning a decision, None, garbage or a decision smtpd would die on,
raising, hanging past the deadline), which report handlers exist (smtp-in and
smtp-out), and what the filter does with message content (``on_data_line``
transforms, ``on_headers`` / ``on_message`` edits and verdicts).
``build(spec)`` makes the ``Filter`` (deadline 0.05 s);
``expected_lines(spec, content)`` predicts the message content where that is
possible.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from hypothesis import strategies as st

from smtpd_filter_sdk import Filter, disconnect, junk, proceed, reject, report, rewrite
from smtpd_filter_sdk.filter import REQUEST_PHASES
from smtpd_filter_sdk.message import Headers, Message, fold
from smtpd_filter_sdk.protocol import REPORT_EVENTS
from smtpd_filter_sdk.responses import Decision

@dataclass(frozen=True, slots=True)
class Evil(Decision):
    """A decision subclass whose wire form is broken (its kind is honest)."""

    k: str
    w: bytes

    @property
    def kind(self) -> str:
        return self.k

    @property
    def wire(self) -> bytes:
        return self.w


EVIL = [
    ("proceed", b"proceed|"), ("proceed", b"proceed\r"), ("junk", b"junk|x"), ("reject", b"reject|250 ok"),
    ("reject", b"reject|55 x"), ("reject", b"reject|550-multi"), ("disconnect", b"disconnect"),
    ("bogus", b"bogus"), ("proceed", b"proceed\nfilter-result|a|b|proceed"), ("rewrite", b"rewrite"),
    ("rewrite", b"rewrite|" + b"r" * 70000), ("proceed", b""), ("report", b"report"),
]
GARBAGE = ["proceed", 42, b"junk", [None], (proceed(),), object(), True, 3.5, {"decision": "proceed"}]

_text = st.one_of(st.text(max_size=24), st.sampled_from(["5.7.1 go away", "a|b", "\u00e9t\u00e9", "x" * 600]))
_decision = st.one_of(
    st.sampled_from([("proceed",), ("junk",), ("none",), ("echo",)]),
    st.tuples(st.sampled_from(["reject", "disconnect"]), st.integers(400, 599), _text),
    st.tuples(st.just("bad-code"), st.integers(0, 999), _text),
    st.tuples(st.just("rewrite"), st.one_of(_text, st.just("<a|b@c>"))),
    st.tuples(st.just("report"), _text),
)
_how = st.sampled_from(["sync"] * 6 + ["async"] * 4 + ["raise", "araise", "garbage", "agarbage", "evil", "hang"])


@st.composite
def behaviours(draw: Any) -> tuple[Any, ...]:
    how = draw(_how)
    if how in ("sync", "async"):
        return (how, draw(_decision))
    if how in ("garbage", "agarbage"):
        return (how, draw(st.integers(0, len(GARBAGE) - 1)))
    if how == "evil":
        return (how, draw(st.integers(0, len(EVIL) - 1)))
    return (how,)


LINE_KINDS = ["identity", "same", "upper", "double", "drop-x", "dotify", "grow", "huge", "split-crlf",
              "garbage", "raise-on-dot", "list-garbage"]
#: kinds whose output the test predicts exactly (see expected_lines)
PURE_LINE_KINDS = {"identity", "same", "upper", "double", "drop-x", "dotify", "grow", "huge", "split-crlf"}
BLOCK_KINDS = ["add", "noop", "remove-received", "body-dots", "reject", "junk", "rewrite", "raise",
               "async-add", "async-hang", "garbage", "huge-line", "add-long"]
PURE_BLOCK_KINDS = {"add", "noop", "body-dots", "reject", "junk", "rewrite", "raise", "async-add",
                    "async-hang", "garbage"}


@dataclass
class Spec:
    on_error: str
    legacy: str
    phases: dict[str, list[tuple[Any, ...]]]
    reports: dict[tuple[str, str], tuple[str, ...]]
    data: tuple[str, str] | None  # ("line"|"headers"|"message", kind)
    record: bool = False
    seen: list[tuple[Any, ...]] = field(default_factory=list)

    def short(self) -> str:
        return (f"Spec(on_error={self.on_error}, legacy={self.legacy}, data={self.data}, "
                f"phases={self.phases}, reports={sorted(self.reports.items())})")


@st.composite
def specs(draw: Any, data_kinds: bool = True, reports: bool = True) -> Spec:
    phases = draw(st.lists(st.sampled_from(REQUEST_PHASES), unique=True, max_size=len(REQUEST_PHASES)))
    behaviour_map = {ph: draw(st.lists(behaviours(), min_size=1, max_size=2)) for ph in phases}
    report_map: dict[tuple[str, str], tuple[str, ...]] = {}
    if reports:
        for event in draw(st.lists(st.sampled_from(REPORT_EVENTS), unique=True, max_size=4)):
            sub = draw(st.sampled_from(["smtp-in", "smtp-in", "smtp-out"]))
            report_map[(sub, event)] = (draw(st.sampled_from(["sync", "async", "raise", "araise", "ahang"])),)
    data = None
    if data_kinds:
        family = draw(st.sampled_from([None, "line", "line", "headers", "message"]))
        if family == "line":
            data = ("line", draw(st.sampled_from(LINE_KINDS)))
        elif family is not None:
            data = (family, draw(st.sampled_from(BLOCK_KINDS)))
    return Spec(
        on_error=draw(st.sampled_from(["fail-open", "fail-closed"])),
        legacy=draw(st.sampled_from(["warn", "reject"])),
        phases=behaviour_map,
        reports=report_map,
        data=data,
    )


def _decide(spec: tuple[Any, ...], args: tuple[Any, ...]) -> Any:
    kind = spec[0]
    if kind == "proceed":
        return proceed()
    if kind == "junk":
        return junk()
    if kind == "none":
        return None
    if kind == "echo":  # rewrite with what smtpd sent (addresses with |, 8-bit, ...)
        value = args[-1] if args and isinstance(args[-1], str) else "x"
        return rewrite(f"<{value}>")
    if kind == "reject":
        return reject(spec[1], spec[2])
    if kind == "disconnect":
        return disconnect(spec[1], spec[2])
    if kind == "bad-code":
        return reject(spec[1], spec[2])  # raises DecisionError for codes outside 400-599
    if kind == "rewrite":
        return rewrite(spec[1])
    if kind == "report":
        return report(spec[1])
    raise AssertionError(kind)


def phase_handler(b: tuple[Any, ...]) -> Callable[..., Any]:
    how = b[0]
    if how == "sync":
        return lambda session, *args: _decide(b[1], args)
    if how == "async":
        async def decide(session: Any, *args: Any) -> Any:
            await asyncio.sleep(0)
            return _decide(b[1], args)
        return decide
    if how == "raise":
        def boom(session: Any, *args: Any) -> Any:
            raise ValueError("handler bug")
        return boom
    if how == "araise":
        async def aboom(session: Any, *args: Any) -> Any:
            await asyncio.sleep(0)
            raise KeyError("async handler bug")
        return aboom
    if how == "garbage":
        return lambda session, *args: GARBAGE[b[1]]
    if how == "agarbage":
        async def agarbage(session: Any, *args: Any) -> Any:
            return GARBAGE[b[1]]
        return agarbage
    if how == "evil":
        return lambda session, *args: Evil(*EVIL[b[1]])
    if how == "hang":
        async def hang(session: Any, *args: Any) -> Any:
            await asyncio.sleep(30)
        return hang
    raise AssertionError(how)


def report_handler(kind: str, seen: list[tuple[Any, ...]] | None) -> Callable[..., Any]:
    if kind == "sync":
        def ok(session: Any, rep: Any) -> None:
            if seen is not None:
                seen.append((rep.subsystem, rep.event, rep.session, rep.params))
        return ok
    if kind == "async":
        async def aok(session: Any, rep: Any) -> None:
            await asyncio.sleep(0)
        return aok
    if kind == "raise":
        def boom(session: Any, rep: Any) -> None:
            raise RuntimeError("report handler bug")
        return boom
    if kind == "araise":
        async def aboom(session: Any, rep: Any) -> None:
            raise RuntimeError("async report handler bug")
        return aboom

    async def ahang(session: Any, rep: Any) -> None:
        await asyncio.sleep(30)
    return ahang


def line_handler(kind: str) -> Callable[[Any, bytes], Any]:
    def handle(session: Any, line: bytes) -> Any:
        if kind == "identity":
            return None
        if kind == "same":
            return line
        if kind == "upper":
            return line.upper()
        if kind == "double":
            return [line, line]
        if kind == "drop-x":
            return [] if b"x" in line else None
        if kind == "dotify":
            return b"." + line
        if kind == "grow":
            return line * 2
        if kind == "huge":
            return b"y" * 70000 if b"y" in line else None
        if kind == "split-crlf":
            return line + b"\r\nX"
        if kind == "garbage":
            return "not bytes" if b"e" in line else None
        if kind == "raise-on-dot":
            if line.startswith(b"."):
                raise ValueError("dot")
            return None
        if kind == "list-garbage":
            return [line, "x"]
        raise AssertionError(kind)
    return handle


def _split_lines(line: bytes) -> list[bytes]:
    return line.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def expected_lines(spec: Spec, content: list[bytes]) -> list[bytes] | None:
    """The unstuffed lines the filter should write for a message (before
    over-long lines are dropped), or None when the test does not predict it."""
    if spec.data is None:
        return list(content)
    family, kind = spec.data
    if family == "line":
        if kind not in PURE_LINE_KINDS:
            return None
        out: list[bytes] = []
        for line in content:
            result = line_handler(kind)(None, line)
            pieces = [line] if result is None else [result] if isinstance(result, bytes) else list(result)
            for piece in pieces:
                out.extend(_split_lines(piece) if (b"\r" in piece or b"\n" in piece) and result is not None
                           else [piece])
        return out
    if kind not in PURE_BLOCK_KINDS:
        return None
    if kind in ("add", "async-add"):
        return fold("X-Prop", "checked") + list(content)
    if kind == "body-dots":
        return list(content) + [b".", b".."] if family == "message" else None
    return list(content)


def block_handler(family: str, kind: str) -> Callable[..., Any]:
    def edit(session: Any, target: Any) -> Any:
        headers: Headers = target.headers if isinstance(target, Message) else target
        if kind == "add":
            headers.add("X-Prop", "checked")
        elif kind == "add-long":
            headers.add("X-Long", "w" * 70000)
        elif kind == "remove-received":
            headers.remove("Received")
        elif kind == "body-dots":
            if isinstance(target, Message):
                target.body.extend([b".", b".."])
        elif kind == "reject":
            return reject(554, "5.7.1 no thanks")
        elif kind == "junk":
            return junk()  # refused at commit: fatal for smtpd
        elif kind == "rewrite":
            return rewrite("nope")
        elif kind == "raise":
            raise ValueError("block handler bug")
        elif kind == "garbage":
            return "reject"
        elif kind == "huge-line":
            if isinstance(target, Message):
                target.body.append(b"z" * 70000)
            else:
                headers.add("X-Huge", "z" * 70000)
        return None

    if kind in ("async-add", "async-hang"):
        async def aedit(session: Any, target: Any) -> Any:
            if kind == "async-hang":
                await asyncio.sleep(30)
            await asyncio.sleep(0)
            headers = target.headers if isinstance(target, Message) else target
            headers.add("X-Prop", "checked")
        return aedit
    return edit


def build(spec: Spec) -> Filter:
    # Half the specs track every session field, so smtpd's streams carry all
    # the report events (the oracle checks state against them); the other
    # half register what their handlers read, as real filters do.
    track = "all" if spec.record or len(spec.phases) % 2 else None
    f = Filter("prop", on_error=spec.on_error, deadline=0.05, legacy_long_lines=spec.legacy, track=track)
    for phase, bs in spec.phases.items():
        for b in bs:
            f.on(phase)(phase_handler(b))
    for (sub, event), (kind,) in spec.reports.items():
        f.on_report(event, subsystem=sub)(report_handler(kind, spec.seen if spec.record else None))
    if spec.data is not None:
        family, kind = spec.data
        if family == "line":
            f.on_data_line(line_handler(kind))
        elif family == "headers":
            f.on_headers(block_handler(family, kind))
        else:
            f.on_message(block_handler(family, kind))
    return f
