"""Per-session state, built from report events.

A ``Session`` is created lazily on the first line that names its id and freed
at ``link-disconnect``, so state never outlives the SMTP session.  Transaction
state lives in ``session.tx`` and is dropped at ``tx-reset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from . import protocol as p

#: The report events the SDK subscribes to for session tracking, whatever the
#: filter's own handlers need.
TRACKED_EVENTS = frozenset(
    {
        "link-connect",
        "link-greeting",
        "link-identify",
        "link-tls",
        "link-auth",
        "link-disconnect",
        "tx-begin",
        "tx-mail",
        "tx-rcpt",
        "tx-envelope",
        "tx-data",
        "tx-commit",
        "tx-rollback",
        "tx-reset",
        "filter-response",
    }
)

#: filter-response phases decided before a transaction exists: a junk there
#: marks the whole session (protocol.md §4.2).
_SESSION_JUNK_PHASES = frozenset({"connected", "helo", "ehlo", "tls", "auth", "mail-from"})


@dataclass(slots=True)
class Recipient:
    address: str
    result: str


@dataclass(slots=True)
class Transaction:
    msgid: str
    mail_from: str | None = None
    mail_from_result: str | None = None
    rcpts: list[Recipient] = field(default_factory=list)
    envelopes: list[str] = field(default_factory=list)
    data_result: str | None = None
    size: int | None = None
    junk: bool = False

    @property
    def accepted_rcpts(self) -> list[str]:
        return [r.address for r in self.rcpts if r.result == "ok"]


@dataclass(slots=True, eq=False)
class Session:
    """What the SDK knows about one SMTP session.

    ``data`` is the filter's own per-session storage; it goes away with the
    session.
    """

    id: str
    subsystem: str = "smtp-in"
    rdns: str | None = None
    fcrdns: str | None = None
    src: p.Address | None = None
    dest: p.Address | None = None
    greeting: str | None = None
    helo_method: str | None = None
    helo: str | None = None
    tls: str | None = None
    auth_user: str | None = None
    auth_result: str | None = None
    tx: Transaction | None = None
    junk: bool = False
    messages: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def authenticated(self) -> bool:
        return self.auth_result == "pass"

    @property
    def is_local(self) -> bool:
        return self.src is not None and self.src.is_local

    @property
    def has_rdns(self) -> bool:
        return self.rdns not in (None, "", "<unknown>")

    def remember_connect(self, rdns: str, src: p.Address) -> None:
        """The connect request repeats rdns/src; keep them if no report came."""
        if self.rdns is None:
            self.rdns = rdns
        if self.src is None:
            self.src = src


def _link_connect(s: Session, e: p.LinkConnect) -> None:
    s.rdns, s.fcrdns, s.src, s.dest = e.rdns, e.fcrdns, e.src, e.dest


def _link_greeting(s: Session, e: p.LinkGreeting) -> None:
    s.greeting = e.hostname


def _link_identify(s: Session, e: p.LinkIdentify) -> None:
    s.helo_method, s.helo = e.method, e.identity


def _link_tls(s: Session, e: p.LinkTLS) -> None:
    s.tls = e.tls


def _link_auth(s: Session, e: p.LinkAuth) -> None:
    s.auth_user, s.auth_result = e.username, e.result


def _tx(s: Session, msgid: str) -> Transaction:
    if s.tx is None or s.tx.msgid != msgid:
        s.tx = Transaction(msgid)
    return s.tx


def _tx_begin(s: Session, e: p.TxBegin) -> None:
    s.tx = Transaction(e.msgid)


def _tx_mail(s: Session, e: p.TxMail) -> None:
    tx = _tx(s, e.msgid)
    tx.mail_from, tx.mail_from_result = e.address, e.result


def _tx_rcpt(s: Session, e: p.TxRcpt) -> None:
    _tx(s, e.msgid).rcpts.append(Recipient(e.address, e.result))


def _tx_envelope(s: Session, e: p.TxEnvelope) -> None:
    _tx(s, e.msgid).envelopes.append(e.evpid)


def _tx_data(s: Session, e: p.TxData) -> None:
    _tx(s, e.msgid).data_result = e.result


def _tx_commit(s: Session, e: p.TxCommit) -> None:
    _tx(s, e.msgid).size = e.size
    s.messages += 1


def _tx_reset(s: Session, e: p.TxReset) -> None:
    s.tx = None


def _filter_response(s: Session, e: p.FilterResponse) -> None:
    # The chain's verdict (ours or another filter's) is what smtpd acts on.
    if e.response != "junk":
        return
    if e.phase in _SESSION_JUNK_PHASES:
        s.junk = True
    elif s.tx is not None:
        s.tx.junk = True


_APPLY: dict[type, Callable[[Session, Any], None]] = {
    p.LinkConnect: _link_connect,
    p.LinkGreeting: _link_greeting,
    p.LinkIdentify: _link_identify,
    p.LinkTLS: _link_tls,
    p.LinkAuth: _link_auth,
    p.TxBegin: _tx_begin,
    p.TxMail: _tx_mail,
    p.TxRcpt: _tx_rcpt,
    p.TxEnvelope: _tx_envelope,
    p.TxData: _tx_data,
    p.TxCommit: _tx_commit,
    p.TxReset: _tx_reset,
    p.FilterResponse: _filter_response,
}


def apply_report(session: Session, params: p.EventParams) -> None:
    """Fold one report event into the session's state."""
    apply = _APPLY.get(type(params))
    if apply is not None:
        apply(session, params)


class SessionTable:
    """Sessions by id: created on first sight, dropped at link-disconnect."""

    __slots__ = ("_sessions",)

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def get(self, sid: str, subsystem: str = "smtp-in") -> Session:
        session = self._sessions.get(sid)
        if session is None:
            session = self._sessions[sid] = Session(sid, subsystem)
        return session

    def peek(self, sid: str) -> Session | None:
        return self._sessions.get(sid)

    def drop(self, sid: str) -> Session | None:
        return self._sessions.pop(sid, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, sid: object) -> bool:
        return sid in self._sessions

    def ids(self) -> list[str]:
        return list(self._sessions)
