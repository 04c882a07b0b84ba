"""One pooled HTTP client per filter process (aiohttp), over TCP or a unix socket.

    client = HTTPClient("http://127.0.0.1:11333", timeout=15)   # or "/run/rspamd/normal.sock"
    reply = await client.post("/checkv2", body, [("Rcpt", a), ("Rcpt", b)])
    reply.status, reply.body

Why a layer of its own: a filter talks to one service for every message of
every session, so it wants one ``ClientSession`` with keep-alive connections,
created lazily inside the running loop (smtpd may start the filter long before
the service is up: nothing is contacted until the first request), with a total
time limit per request and failures folded into one exception type whose
``kind`` the filter's failure policy can act on:

* ``connect`` - refused, no such socket, unreachable;
* ``timeout`` - no complete answer within ``timeout`` seconds;
* ``status`` - an HTTP status other than 2xx (``HTTPError.status``);
* ``io`` - the connection broke mid-way, or the answer is not HTTP.

A POST is retried once, on a fresh connection, when a pooled keep-alive
connection turns out to have been closed by the server before any answer came
(aiohttp retries only idempotent methods by itself).  Repeated request headers
are kept (a list of pairs, not a dict).  Needs the ``rspamd`` extra (aiohttp).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["HTTPClient", "HTTPError", "HTTPReply", "is_unix_url"]


def is_unix_url(url: str) -> bool:
    """filter-rspamd's rule: a URL that does not start with ``http`` is a unix socket path."""
    return not url.startswith("http")


@dataclass(frozen=True, slots=True)
class HTTPReply:
    status: int
    body: bytes


class HTTPError(Exception):
    """A request that got no usable answer; ``kind``: connect | timeout | status | io."""

    def __init__(self, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.status = kind, detail, status


class HTTPClient:
    """Requests to one base URL (or unix socket) over one pooled session."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        connect_timeout: float | None = None,
        limit: int = 64,
        keepalive: float = 30.0,
        max_reply: int = 8 << 20,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.unix_path = url if is_unix_url(url) else None
        self.base = "http://localhost" if self.unix_path else url.rstrip("/")
        self.timeout = float(timeout)
        self.connect_timeout = min(self.timeout, connect_timeout if connect_timeout is not None else self.timeout)
        self.limit, self.keepalive, self.max_reply = limit, keepalive, max_reply
        self._session: Any = None  # aiohttp.ClientSession, made in the running loop
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"HTTPClient({self.unix_path or self.base!r}, timeout={self.timeout:g})"

    def _session_for_loop(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            if self.unix_path:
                connector: Any = aiohttp.UnixConnector(
                    path=self.unix_path, limit=self.limit, keepalive_timeout=self.keepalive
                )
            else:
                connector = aiohttp.TCPConnector(
                    limit=self.limit, keepalive_timeout=self.keepalive, ttl_dns_cache=300
                )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
            )
            self._loop = loop
        return self._session

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> HTTPReply:
        """POST ``body`` to ``base + path``; raises :class:`HTTPError`."""
        return await self.request("POST", path, body, headers)

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> HTTPReply:
        import aiohttp

        session = self._session_for_loop()
        url = self.base + path
        for attempt in (1, 2):
            answered = False
            try:
                async with session.request(method, url, data=body, headers=list(headers)) as resp:
                    answered = True
                    data = await resp.content.read(self.max_reply + 1)
                    if len(data) > self.max_reply:
                        raise HTTPError("io", f"answer larger than {self.max_reply} bytes")
                    if not 200 <= resp.status < 300:
                        raise HTTPError("status", f"HTTP {resp.status} {resp.reason or ''}".strip(), resp.status)
                    return HTTPReply(resp.status, data)
            except HTTPError:
                raise
            except asyncio.TimeoutError:
                raise HTTPError("timeout", f"no answer within {self.timeout:g}s") from None
            except aiohttp.ClientConnectorError as exc:
                raise HTTPError("connect", _describe(exc)) from None
            except aiohttp.ServerDisconnectedError as exc:
                # a pooled connection the server had closed: one fresh try
                if attempt == 1 and not answered:
                    continue
                raise HTTPError("io", _describe(exc)) from None
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise HTTPError("io", _describe(exc)) from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]
