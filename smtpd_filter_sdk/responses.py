"""Decisions as values, checked before they reach the wire.

A handler returns one of these (or None, which means proceed).  Construction
validates what can be validated alone (reply code and text); ``refusal()``
checks what depends on the phase and the smtpd dialect (protocol.md §4.2-§4.4).
A refused decision never reaches smtpd: the runtime logs it and answers with
the filter's failure policy instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .protocol import Config, encode_field

#: smtpd builds replies in a 4 KiB buffer; a reply this long is already odd.
MAX_REPLY_TEXT = 512

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


class DecisionError(ValueError):
    """A decision smtpd would reject, mangle or die on."""


def _check_text(text: str, what: str) -> None:
    if "\r" in text or "\n" in text or "\0" in text:
        raise DecisionError(f"{what} must not contain CR, LF or NUL")


@dataclass(frozen=True, slots=True)
class Decision:
    """Base of every decision; ``wire`` is the part after ``SID|TOK|``."""

    @property
    def kind(self) -> str:
        raise NotImplementedError

    @property
    def wire(self) -> bytes:
        return self.kind.encode()


@dataclass(frozen=True, slots=True)
class Proceed(Decision):
    @property
    def kind(self) -> str:
        return "proceed"


@dataclass(frozen=True, slots=True)
class Junk(Decision):
    @property
    def kind(self) -> str:
        return "junk"


@dataclass(frozen=True, slots=True)
class _Reply(Decision):
    code: int
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.code, int) or not 400 <= self.code <= 599:
            raise DecisionError(f"reply code must be 4xx or 5xx, not {self.code!r}")
        if not isinstance(self.text, str) or not self.text.strip():
            raise DecisionError("reply text must be a non-empty string")
        _check_text(self.text, "reply text")
        if len(self.message.encode("utf-8", "surrogateescape")) > MAX_REPLY_TEXT:
            raise DecisionError(f"reply longer than {MAX_REPLY_TEXT} bytes")

    @property
    def message(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def wire(self) -> bytes:
        return self.kind.encode() + b"|" + encode_field(self.message)


@dataclass(frozen=True, slots=True)
class Reject(_Reply):
    @property
    def kind(self) -> str:
        return "reject"


@dataclass(frozen=True, slots=True)
class Disconnect(_Reply):
    @property
    def kind(self) -> str:
        return "disconnect"


@dataclass(frozen=True, slots=True)
class Rewrite(Decision):
    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise DecisionError("rewrite value must be a string")
        _check_text(self.value, "rewrite value")

    @property
    def kind(self) -> str:
        return "rewrite"

    @property
    def wire(self) -> bytes:
        return b"rewrite|" + encode_field(self.value)


@dataclass(frozen=True, slots=True)
class Report(Decision):
    """The 7.6+ ``report`` decision: proceed and log the text in smtpd's
    ``filter-response``.  Fatal before 7.6; corrupts the command in phases that
    carry a parameter, so it is only accepted in parameter-less ones."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text:
            raise DecisionError("report text must be a non-empty string")
        _check_text(self.text, "report text")

    @property
    def kind(self) -> str:
        return "report"

    @property
    def wire(self) -> bytes:
        return b"report|" + encode_field(self.text)


#: The decisions the SDK writes.  Only these exact types are taken from a
#: handler: a subclass could carry a ``wire`` that disagrees with its
#: ``kind`` and slip past the phase rules.
DECISION_TYPES = (Proceed, Junk, Reject, Disconnect, Rewrite, Report)


def is_decision(value: object) -> bool:
    return type(value) in DECISION_TYPES


# --------------------------------------------------------------------------
# Constructors (the public, readable way to make decisions)

_PROCEED = Proceed()
_JUNK = Junk()


def proceed() -> Proceed:
    return _PROCEED


def junk() -> Junk:
    return _JUNK


def _reply_text(text: str, enhanced: str | None) -> str:
    if enhanced is None:
        return text
    if not _ENHANCED.match(enhanced):
        raise DecisionError(f"not an enhanced status code: {enhanced!r}")
    return f"{enhanced} {text}"


def reject(code: int, text: str, *, enhanced: str | None = None) -> Reject:
    """``reject(550, "5.7.1 go away")`` or ``reject(550, "go away", enhanced="5.7.1")``."""
    return Reject(code, _reply_text(text, enhanced))


def disconnect(code: int, text: str, *, enhanced: str | None = None) -> Disconnect:
    return Disconnect(code, _reply_text(text, enhanced))


def rewrite(value: str) -> Rewrite:
    return Rewrite(value)


def report(text: str) -> Report:
    return Report(text)


# --------------------------------------------------------------------------
# Phase rules (data, from protocol.md §4.2)

#: Phases in which a decision kind is refused, and why.
_REFUSED: dict[str, dict[str, str]] = {
    "junk": {"commit": "junk at commit kills smtpd (filter-reponse junk after DATA)"},
    "rewrite": {
        phase: f"rewrite at {phase} fails the command or is ignored"
        for phase in ("connect", "starttls", "data", "commit", "rset", "quit", "noop")
    },
    "report": {
        phase: f"report at {phase} is used as the command's parameter and breaks it"
        for phase in ("helo", "ehlo", "auth", "mail-from", "rcpt-to")
    },
}


def refusal(decision: Decision, phase: str, config: Config | None) -> str | None:
    """Why this decision must not be sent for this phase, or None when it may."""
    if phase == "data-line":
        return "data-line takes no decision (refuse the message at commit)"
    kind = decision.kind
    reason = _REFUSED.get(kind, {}).get(phase)
    if reason:
        return reason
    if kind == "report" and (config is None or not config.report_decision_allowed):
        return "the report decision is fatal before OpenSMTPD 7.6 (no config|protocol seen)"
    if kind == "reject" and phase == "connect" and isinstance(decision, Reject):
        if 400 <= decision.code < 500 and decision.code != 421:
            return "a 4xx reject at connect leaves the client in a 503 loop: use disconnect"
    return None


def failure_decision(policy: str, phase: str) -> Decision:
    """What a failed handler answers: fail-open proceeds, fail-closed tempfails
    (at connect by disconnecting: a 4xx reject there would strand the client)."""
    if policy == "fail-open":
        return _PROCEED
    if phase == "connect":
        return Disconnect(421, "4.7.0 Temporary filter failure, try again later")
    return Reject(451, "4.7.0 Temporary filter failure, try again later")


FAILURE_POLICIES = ("fail-open", "fail-closed")
