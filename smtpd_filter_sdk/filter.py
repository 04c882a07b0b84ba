"""The public ``Filter`` object: handlers by decorator, registration derived.

    f = Filter("helo-policy", on_error="fail-open")

    @f.on("helo", "ehlo")
    def helo(session, identity): ...

    @f.on_message
    async def scan(session, msg): ...

    f.run()

What to register with smtpd follows from the handlers: their phases and
events, the events session tracking needs, and ``data-line`` + ``commit`` when
any handler looks at message content (so a message that could not be passed
through can be refused at commit).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Protocol, TypeVar

from . import protocol
from .log import Logger
from .responses import FAILURE_POLICIES
from .session import TRACKED_EVENTS
from .tracking import check_fields, events_for, fields_read

F = TypeVar("F", bound=Callable[..., Any])

#: Phases a handler can be attached to with ``@f.on`` (data lines and whole
#: messages have their own decorators).
REQUEST_PHASES = tuple(ph for ph in protocol.FILTER_PHASES if ph != "data-line")

#: What a message that cannot be passed through unharmed is refused with.
LINE_TOO_LONG = (552, "5.3.4 Message has a line too long to pass through the filter")
LEGACY_LINE_CUT = (552, "5.3.4 Message has a line longer than this smtpd can take from filters")


class MessageWatcher(Protocol):
    """What an ``on_message_stream`` handler returns for a message it wants
    to see while the SDK holds it (see ``Filter.on_message_stream``)."""

    def body(self, chunk: bytes) -> None:
        """The next piece of the body as in a mailbox: unstuffed lines, each
        ending in CRLF; pieces are cut at line ends, in arrival order."""

    def end(self, headers: Any) -> Any:
        """The final ``.`` arrived: edit ``headers`` (a ``Headers``) in place,
        return a decision for commit or None, or an awaitable that edits
        and gives that later (work done off the loop, e.g. on a thread)."""


@dataclass(frozen=True, slots=True)
class Handler:
    fn: Callable[..., Any]
    is_async: bool

    @classmethod
    def wrap(cls, fn: Callable[..., Any]) -> "Handler":
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        return cls(fn, inspect.iscoroutinefunction(fn))


def in_thread(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Make a blocking function safe to use as a handler: it runs in a worker
    thread (``asyncio.to_thread``) under the handler deadline, so it never
    stalls other sessions.  ``@f.on("connect") @in_thread def check(...)``."""

    @functools.wraps(fn)
    async def runner(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    return runner


class Filter:
    """A filter: a name, handlers, and the policy for when a handler fails.

    ``on_error``: ``"fail-open"`` (answer proceed) or ``"fail-closed"``
    (``reject|451 4.7.0 …``; ``disconnect|421 …`` at connect) when a handler
    raises, returns something that is not a decision, returns a decision smtpd
    would die on, or (async) runs past ``deadline`` seconds.

    ``legacy_long_lines``: smtpd before 7.4 (protocol < 0.7) silently cuts
    every filter output line after 2,047 bytes.  ``"warn"`` logs such
    messages, ``"reject"`` refuses them at commit.

    ``track``: which session fields the SDK keeps up to date, and so which
    report events it asks smtpd for (on small messages the 15 report lines
    a session would bring cost as much as its data lines).  By default
    (None) it finds out from the handlers' code, the watchers and helpers
    they reach included (``tracking.fields_read``).  ``"all"`` tracks every
    field.  A list of field names (``["src", "helo", "tx.mail_from"]``;
    ``"tx"`` is the whole transaction) replaces what the code shows: for a
    handler that hands the session to code the SDK cannot look into, or
    whose reads depend on flags.  A name that is not a field is a
    ValueError here.  link-disconnect (the session is freed there) and, for
    message handlers, tx-reset are always registered.

    ``max_message_size``: the most bytes (dot-stuffed lines + CRLF, as on
    the SMTP wire) the SDK buffers of one message for ``on_message``,
    ``on_message_stream`` or ``on_headers`` (None: no limit).  A message
    that grows past it stops being buffered: what was held goes out
    unchanged, the rest streams, the handler never sees it, and
    ``on_oversize`` is called (else the SDK logs it).  Settable after
    construction (from a flag), before ``run()``.
    """

    def __init__(
        self,
        name: str,
        *,
        on_error: str = "fail-open",
        deadline: float = 5.0,
        legacy_long_lines: str = "warn",
        max_message_size: int | None = None,
        track: str | Iterable[str] | None = None,
    ) -> None:
        if on_error not in FAILURE_POLICIES:
            raise ValueError(f"on_error must be one of {FAILURE_POLICIES}, not {on_error!r}")
        if legacy_long_lines not in ("warn", "reject"):
            raise ValueError("legacy_long_lines must be 'warn' or 'reject'")
        if not deadline > 0:
            raise ValueError("deadline must be positive")
        self.track = track if track is None or track == "all" else check_fields(track)
        self.name = name
        self.on_error = on_error
        self.deadline = float(deadline)
        self.legacy_long_lines = legacy_long_lines
        self.max_message_size = max_message_size
        self.log = Logger(name)
        self.phase_handlers: dict[str, list[Handler]] = {}
        self.report_handlers: dict[tuple[str, str], list[Handler]] = {}
        self.data_line_handler: Handler | None = None
        self.headers_handler: Handler | None = None
        self.message_handler: Handler | None = None
        self.stream_handler: Handler | None = None
        self.oversize_handler: Handler | None = None
        self.reload_handlers: list[Callable[[], Any]] = []
        self.config_handlers: list[Callable[[protocol.Config], Any]] = []
        self.shutdown_handlers: list[Callable[[], Any]] = []
        self.start_handlers: list[Callable[[], Awaitable[Any]]] = []

    # -- decorators --------------------------------------------------------

    def on(self, *phases: str) -> Callable[[F], F]:
        """Handle filter requests.  The handler gets ``(session, *params)``:
        connect ``(session, rdns, src)``; helo/ehlo ``(session, identity)``;
        auth ``(session, argument)``; mail-from/rcpt-to ``(session, address)``;
        the others ``(session)``.  It returns a decision, or None to proceed.

        ``async def`` handlers run as tasks under the filter's deadline.  A
        plain handler may also return an awaitable for its slow path (answer
        a cache hit at once, ``return self.lookup(...)`` on a miss): only the
        slow path then pays for a task."""
        if not phases:
            raise TypeError("name at least one phase")
        for phase in phases:
            if phase == "data-line":
                raise ValueError("use @f.on_data_line, @f.on_headers or @f.on_message")
            if phase not in REQUEST_PHASES:
                raise ValueError(f"unknown filter phase {phase!r}; one of {REQUEST_PHASES}")

        def decorate(fn: F) -> F:
            handler = Handler.wrap(fn)
            for phase in phases:
                self.phase_handlers.setdefault(phase, []).append(handler)
            return fn

        return decorate

    def on_report(self, *events: str, subsystem: str = "smtp-in") -> Callable[[F], F]:
        """Handle report events: ``handler(session, report)`` where
        ``report.params`` is the event's typed record.  ``"*"`` means all."""
        if subsystem not in protocol.SUBSYSTEMS:
            raise ValueError(f"subsystem must be one of {protocol.SUBSYSTEMS}")
        names = protocol.REPORT_EVENTS if "*" in events else events
        for event in names:
            if event not in protocol.REPORT_EVENTS:
                raise ValueError(f"unknown report event {event!r}")

        def decorate(fn: F) -> F:
            handler = Handler.wrap(fn)
            for event in names:
                self.report_handlers.setdefault((subsystem, event), []).append(handler)
            return fn

        return decorate

    def on_data_line(self, fn: F) -> F:
        """Stream every message line: ``handler(session, line) -> None | bytes
        | list[bytes]`` with ``line`` unstuffed bytes (no CRLF).  None passes
        the line on unchanged; bytes replaces it; a list replaces it with
        several lines (``[]`` drops it).  Must be a plain, quick function: it is
        on the hot path.  With ``on_headers`` it sees the body lines only."""
        if inspect.iscoroutinefunction(fn):
            raise TypeError("data-line handlers must be synchronous (use on_message for async work)")
        self._only_one("data_line_handler")
        if self.message_handler is not None or self.stream_handler is not None:
            raise ValueError("on_data_line excludes on_message and on_message_stream")
        self.data_line_handler = Handler.wrap(fn)
        return fn

    def on_headers(self, fn: F) -> F:
        """Edit each message's header block: ``handler(session, headers)``
        changes ``headers`` in place and may return a decision applied at
        commit.  Only the header block is buffered; the body streams."""
        self._only_one("headers_handler")
        if self.message_handler is not None or self.stream_handler is not None:
            raise ValueError("on_headers excludes on_message and on_message_stream")
        self.headers_handler = Handler.wrap(fn)
        return fn

    def on_message(self, fn: F) -> F:
        """See each whole message: ``handler(session, msg)`` with ``msg`` a
        ``Message`` (unstuffed lines, editable headers and body).  It may
        change ``msg`` and return a decision, applied at commit."""
        self._only_one("message_handler")
        if self.headers_handler is not None or self.data_line_handler is not None:
            raise ValueError("on_message excludes on_headers and on_data_line")
        if self.stream_handler is not None:
            raise ValueError("on_message and on_message_stream exclude each other")
        self.message_handler = Handler.wrap(fn)
        return fn

    def on_message_stream(self, fn: F) -> F:
        """Hold each message, but see it as it streams (a signer hashing the
        body as it arrives, then prepending a header, needs exactly this).

        ``handler(session, headers)`` is called when the header block is
        complete.  It returns None (the headers go out as it left them, the
        body streams on, nothing is held) or a ``MessageWatcher``: then the
        SDK holds the message and calls ``watcher.body(chunk)`` with each new
        piece of the body (unstuffed, CRLF-terminated lines, in batches), and
        ``watcher.end(headers)`` at the final ``.``, which edits the same
        ``headers`` and may return a decision for commit.  The header block
        goes out as edited, then the body exactly as it came.  Plain
        (synchronous) functions only: they run inline.  ``end`` may instead
        return an awaitable (a signature made on a worker thread): the
        message stays held, other sessions go on, and it is awaited under
        ``deadline``.  If the handler or the watcher raises (or its
        awaitable does, or runs past the deadline), or the message passes
        ``max_message_size``, the message goes out unchanged, without the
        watcher's edits, and the watcher hears no more."""
        if inspect.iscoroutinefunction(fn):
            raise TypeError("on_message_stream handlers must be synchronous")
        self._only_one("stream_handler")
        if self.message_handler or self.headers_handler or self.data_line_handler:
            raise ValueError("on_message_stream excludes on_message, on_headers and on_data_line")
        self.stream_handler = Handler.wrap(fn)
        return fn

    def on_oversize(self, fn: F) -> F:
        """A message grew past ``max_message_size``: ``handler(session,
        size)`` (``size``: bytes held when it passed) is told once, as the
        message goes on unchanged and unbuffered; it may log ("passed
        unsigned") and return a decision for commit (None: proceed)."""
        if inspect.iscoroutinefunction(fn):
            raise TypeError("on_oversize handlers must be synchronous")
        self._only_one("oversize_handler")
        self.oversize_handler = Handler.wrap(fn)
        return fn

    def on_reload(self, fn: F) -> F:
        """Called on SIGHUP (reload lists, keys).  Keep the old state if the
        new one is bad: raise, and the SDK logs it."""
        self.reload_handlers.append(fn)
        return fn

    def on_config(self, fn: F) -> F:
        """Called once with the ``Config`` smtpd announced, before registering."""
        self.config_handlers.append(fn)
        return fn

    def on_shutdown(self, fn: F) -> F:
        """Called once when smtpd has gone away, before the event loop closes
        (close pooled connections, flush state).  May be ``async``: it is
        awaited, under the filter's deadline."""
        self.shutdown_handlers.append(fn)
        return fn

    def on_start(self, fn: F) -> F:
        """An ``async def`` run once as a background task when the filter
        has registered with smtpd; cancelled when smtpd goes away (EOF).  For
        long-lived work no session waits for (a Redis subscription, a
        reconnect loop).  An exception ends it and is logged."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError("on_start handlers must be async functions")
        self.start_handlers.append(fn)
        return fn

    def _only_one(self, attr: str) -> None:
        if getattr(self, attr) is not None:
            raise ValueError(f"{attr.replace('_', ' ')} already set")

    # -- what to register --------------------------------------------------

    @property
    def handles_data(self) -> bool:
        return any(
            (self.data_line_handler, self.headers_handler, self.message_handler, self.stream_handler)
        )

    def tracked_events(self) -> set[str]:
        """The smtp-in events session state needs: those that fill the
        fields the handlers read (see ``track``), link-disconnect (the
        session is freed there) and, for message handlers, tx-reset (the
        message's state is dropped there)."""
        if self.track == "all":
            fields = None
        elif self.track is not None:
            fields = set(self.track)
        else:
            handlers = [h.fn for hs in (*self.phase_handlers.values(), *self.report_handlers.values()) for h in hs]
            handlers += [
                h.fn
                for h in (
                    self.data_line_handler, self.headers_handler, self.message_handler,
                    self.stream_handler, self.oversize_handler,
                )
                if h
            ]
            fields = fields_read(handlers)
        events = set(TRACKED_EVENTS) if fields is None else events_for(fields)
        events.add("link-disconnect")
        if self.handles_data:
            events.add("tx-reset")
        return events

    def registrations(self) -> tuple[set[tuple[str, str]], set[str]]:
        reports = {("smtp-in", event) for event in self.tracked_events()}
        reports.update(self.report_handlers)
        if any(sub == "smtp-out" for sub, _ in reports):
            # smtp-out reports create sessions too: free them at link-disconnect
            reports.add(("smtp-out", "link-disconnect"))
        phases = set(self.phase_handlers)
        if self.handles_data:
            phases.update(("data-line", "commit"))
        return reports, phases

    # -- running -----------------------------------------------------------

    def run(self) -> None:
        """Speak the protocol on stdin/stdout until smtpd goes away; exit 0."""
        from .runtime import run

        raise SystemExit(run(self))
