"""Logging to stderr, which smtpd copies into the mail log line by line.

One line per event, keyed by session id, never longer than ``MAX_LOG_LINE``,
never carrying CR/LF (a forged second line would look like smtpd's own).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

MAX_LOG_LINE = 2048
_SHOW_RAW = 160


def _clean(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def describe_line(line: bytes) -> str:
    """A short, safe rendering of an input line for a log message.  The auth
    phase's parameter carries base64 credentials: it is never shown."""
    head = line.split(b"|", 7)
    if len(head) == 8 and head[0] == b"filter" and head[4] == b"auth":
        line = b"|".join(head[:7]) + b"|********"
    text = line[:_SHOW_RAW].decode("utf-8", "backslashreplace")
    more = f"... ({len(line)} bytes)" if len(line) > _SHOW_RAW else ""
    return _clean(text) + more


class Logger:
    """``log(msg, session=sid)`` writes ``<sid> <msg>`` (or ``<msg>``) to stderr.

    While the runtime runs, lines logged on its event loop's thread are
    held and written together once the loop is done with the current input
    chunk (``hold(loop)``): a filter that logs a line per message pays one
    write per chunk, not a system call per line."""

    def __init__(self, name: str, write: Callable[[bytes], object] | None = None) -> None:
        self.name = name
        self._write = write or _write_stderr
        self._held: list[bytes] | None = None  # lines waiting, while holding
        self._loop: Any = None
        self._thread = 0

    def __call__(self, message: str, session: str | None = None) -> None:
        text = _clean(f"{session} {message}" if session else message)
        data = text.encode("utf-8", "backslashreplace")
        if len(data) > MAX_LOG_LINE:
            data = data[: MAX_LOG_LINE - 16] + b"... (truncated)"
        held = self._held
        if held is not None and threading.get_ident() == self._thread:
            if held or self._write_soon():
                held.append(data + b"\n")
                return
        self._emit(data + b"\n")

    def _emit(self, data: bytes) -> None:
        try:
            self._write(data)
        except OSError:
            pass  # smtpd gone: nothing left to tell

    def _write_soon(self) -> bool:
        """The first line since the last write: have the loop write them
        soon; False if it cannot (closing)."""
        try:
            self._loop.call_soon(self.release)
        except RuntimeError:
            return False
        return True

    def hold(self, loop: Any) -> None:
        """Hold lines logged on this thread; ``loop`` writes them as soon as
        it gets to it (``call_soon``)."""
        self._loop, self._thread, self._held = loop, threading.get_ident(), []

    def release(self) -> None:
        """Write the held lines now (in one write)."""
        held = self._held
        if held:
            self._held = []
            self._emit(b"".join(held))

    def unhold(self) -> None:
        """Write what is held and write every line at once again."""
        self.release()
        self._held = self._loop = None


def _write_stderr(data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(2, view)
        view = view[written:]
