"""A real HTTP server on loopback (or a unix socket) for client tests.

    with HTTPTestServer() as srv:                 # aiohttp, own thread + loop
        srv.answer(json={"action": "reject"})     # what every request gets now
        srv.url, srv.requests[-1].headers         # what the client sent

``answer(body=..., status=..., delay=..., json=...)`` changes the reply;
``srv.requests`` records method, path, headers (all, repeated ones too) and
body.  ``srv.connections`` counts the connections requests came on.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None


@dataclass
class _Answer:
    body: bytes = b'{"action": "no action", "score": 0, "required_score": 15, "symbols": {}}'
    status: int = 200
    delay: float = 0.0


@dataclass
class HTTPTestServer:
    unix: bool = False
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._answer = _Answer()
        self._transports: set[int] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.port = 0
        self.path: str | None = None

    # -- configuring
    def answer(self, body: bytes | str | None = None, *, status: int = 200, delay: float = 0.0, json: Any = None) -> None:
        if json is not None:
            body = jsonlib.dumps(json)
        if isinstance(body, str):
            body = body.encode()
        self._answer = _Answer(body if body is not None else _Answer().body, status, delay)

    @property
    def url(self) -> str:
        return self.path if self.unix else f"http://127.0.0.1:{self.port}"

    # -- the server
    async def _handle(self, request: web.Request) -> web.Response:
        self._transports.add(id(request.transport))
        self.connections = len(self._transports)
        self.requests.append(Seen(request.method, request.path, list(request.headers.items()), await request.read()))
        a = self._answer
        if a.delay:
            await asyncio.sleep(a.delay)
        return web.Response(body=a.body, status=a.status, content_type="application/json")

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        loop.run_until_complete(self._runner.setup())
        if self.unix:
            self._tmp = tempfile.TemporaryDirectory(prefix="httpkit-")
            self.path = str(Path(self._tmp.name) / "http.sock")
            site: Any = web.UnixSite(self._runner, self.path)
        else:
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        if not self.unix:
            self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def __enter__(self) -> "HTTPTestServer":
        self._thread = threading.Thread(target=self._run, daemon=True, name="httpkit")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test HTTP server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if self._tmp is not None:
            self._tmp.cleanup()
