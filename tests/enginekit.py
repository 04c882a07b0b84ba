"""A few lines to drive the SDK's Engine in-process from tests."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Iterable, Iterator

from smtpd_filter_sdk import Filter, runtime
from smtpd_filter_sdk.runtime import Engine
from smtpd_filter_sdk.testing.wire import Wire


@contextlib.contextmanager
def fast_paths(*, run_min: int | None = None, held_blocks: bool | None = None) -> Iterator[None]:
    """The runtime's switches for its block paths (``_RUN_MIN``,
    ``_HELD_BLOCKS``) set for a while, as the differential tests set them
    for one side; None leaves one as it is."""
    saved = runtime._RUN_MIN, runtime._HELD_BLOCKS
    if run_min is not None:
        runtime._RUN_MIN = run_min
    if held_blocks is not None:
        runtime._HELD_BLOCKS = held_blocks
    try:
        yield
    finally:
        runtime._RUN_MIN, runtime._HELD_BLOCKS = saved


class Driven:
    """An Engine on a private event loop; ``send`` returns what it wrote."""

    def __init__(self, filt: Filter, dialect: str = "0.6", handshake: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(filt, loop=self.loop)
        self.wire = Wire(dialect)
        self.registration: list[bytes] = []
        if handshake:
            self.registration = self.send(*self.wire.handshake())

    def send(self, *lines: bytes) -> list[bytes]:
        for line in lines:
            self.engine.feed(line + b"\n")
        return self.take()

    def feed(self, data: bytes) -> list[bytes]:
        self.engine.feed(data)
        return self.take()

    def take(self) -> list[bytes]:
        self.loop.run_until_complete(self.engine.settle())
        return self.engine.take_lines()

    def close(self) -> None:
        self.engine.eof()
        self.loop.close()


def requests_in(lines: Iterable[bytes]) -> list[bytes]:
    return [line for line in lines if line.startswith(b"filter|") and line.split(b"|")[4] != b"data-line"]


def interleave_in_blocks(rng, per_session: list[list[bytes]], takes: tuple[int, ...]) -> list[bytes]:
    """The sessions' lines merged as smtpd switches between sessions: a
    block of ``rng.choice(takes)`` lines of one session at a time, each
    session's lines in order."""
    merged: list[bytes] = []
    queues = [list(lines) for lines in per_session]
    while any(queues):
        q = rng.choice([q for q in queues if q])
        take = rng.choice(takes)
        merged += q[:take]
        del q[:take]
    return merged
