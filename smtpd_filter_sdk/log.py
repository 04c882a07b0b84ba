"""Logging to stderr, which smtpd copies into the mail log line by line.

One line per event, keyed by session id, never longer than ``MAX_LOG_LINE``,
never carrying CR/LF (a forged second line would look like smtpd's own).
"""

from __future__ import annotations

import os
from typing import Callable

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
    """``log(msg, session=sid)`` writes ``<sid> <msg>`` (or ``<msg>``) to stderr."""

    def __init__(self, name: str, write: Callable[[bytes], object] | None = None) -> None:
        self.name = name
        self._write = write or _write_stderr

    def __call__(self, message: str, session: str | None = None) -> None:
        text = _clean(f"{session} {message}" if session else message)
        data = text.encode("utf-8", "backslashreplace")
        if len(data) > MAX_LOG_LINE:
            data = data[: MAX_LOG_LINE - 16] + b"... (truncated)"
        try:
            self._write(data + b"\n")
        except OSError:
            pass  # smtpd gone: nothing left to tell


def _write_stderr(data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(2, view)
        view = view[written:]
