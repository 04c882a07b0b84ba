"""One pooled HTTP/1.1 client per filter process, over TCP or a unix socket.

    client = HTTPClient("http://127.0.0.1:11333", timeout=15)   # or "/run/rspamd/normal.sock"
    reply = await client.post("/checkv2", body, [("Rcpt", a), ("Rcpt", b)])
    reply.status, reply.body

Why a layer of its own: a filter talks to one service for every message of
every session.  It wants connections kept alive where the server allows it,
created lazily in the running loop (smtpd may start the filter long before
the service is up: nothing is contacted until the first request), a total
time limit per request, and failures folded into one exception whose
``kind`` the filter's failure policy can act on:

* ``connect`` - refused, no such socket, unreachable, connect timed out;
* ``timeout`` - no complete answer within ``timeout`` seconds;
* ``status`` - an HTTP status other than 2xx (``HTTPError.status``);
* ``io`` - the connection broke mid-way, or the answer is not HTTP.

Why not aiohttp (the first version used one pooled aiohttp session):
measured on this project's rspamd bench, aiohttp cost ~0.25 ms more CPU per
request than asyncio streams (0.43 vs 0.19 ms for a POST + answer on
loopback, client and server in one process) and ~13 MB of RSS on import;
rspamd closes the connection after every answer, so nothing of aiohttp's
pooling is used there, and the filter's CPU per message is a target
(bench/README.md).  This client speaks the little of HTTP/1.1 a JSON API
needs: ``Content-Length`` request bodies; answers with ``Content-Length``,
``chunked`` or read-to-close bodies; keep-alive unless either side says
``close``; a request on a reused connection that the server had closed
before answering is retried once on a fresh one.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

__all__ = ["HTTPClient", "HTTPError", "HTTPReply", "is_unix_url", "parse_head"]

MAX_HEAD = 64 * 1024
ADDRESS_TTL = 60.0
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def is_unix_url(url: str) -> bool:
    """filter-rspamd's rule: a URL that does not start with ``http`` is a unix socket path."""
    return not url.startswith("http")


@dataclass(frozen=True, slots=True)
class HTTPReply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)


class HTTPError(Exception):
    """A request that got no usable answer; ``kind``: connect | timeout | status | io."""

    def __init__(self, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.status = kind, detail, status


class _Broken(Exception):
    """The connection failed; ``fresh``: before any byte of an answer came."""

    def __init__(self, detail: str, fresh: bool) -> None:
        super().__init__(detail)
        self.fresh = fresh


def parse_head(head: bytes) -> tuple[int, str, str, list[tuple[str, str]]]:
    """An answer's status line and header block (without the final empty
    line): ``(status, reason, version, [(name, value), ...])``.  ValueError
    if it is not HTTP/1.x."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and headers:  # obsolete folding
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip().decode('latin-1')}")
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise ValueError(f"bad header line: {line[:80]!r}")
        headers.append((name.decode("ascii"), value.strip().decode("latin-1")))
    return int(code), reason.decode("latin-1"), version.decode("ascii"), headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


class _Conn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class HTTPClient:
    """Requests to one base URL (or unix socket), idle connections kept."""

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
        if self.unix_path:
            self.host, self.port, self.prefix, self.host_header = "", 0, "", "localhost"
        else:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"only http://HOST[:PORT][/PATH] URLs (or a unix socket path): {url!r}")
            self.host, self.port = parts.hostname, parts.port or 80
            self.prefix = parts.path.rstrip("/")
            self.host_header = parts.netloc
        self.url = url
        self.timeout = float(timeout)
        self.connect_timeout = min(self.timeout, connect_timeout if connect_timeout is not None else self.timeout)
        self.keepalive, self.max_reply = keepalive, max_reply
        self.limit = limit
        self._idle: list[_Conn] = []
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._addrs: tuple[float, list[str]] | None = None

    def __repr__(self) -> str:
        return f"HTTPClient({self.url!r}, timeout={self.timeout:g})"

    # -- connections ---------------------------------------------------------

    def _bind_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._slots is None:
            self._idle = []  # connections of another loop are unusable
            self._slots = asyncio.Semaphore(self.limit)
            self._loop = loop
        return self._slots

    async def _addresses(self) -> list[str]:
        """The host's addresses, looked up once a minute: asyncio resolves a
        name (``localhost``, the default URL's) in a worker thread on every
        connect, and the service gets a new connection per request."""
        now = time.monotonic()
        if self._addrs is None or now - self._addrs[0] > ADDRESS_TTL:
            infos = await asyncio.get_running_loop().getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self._addrs = (now, list(dict.fromkeys(info[4][0] for info in infos)))
        return self._addrs[1]

    async def _connect(self) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.unix_path:
                    reader, writer = await asyncio.open_unix_connection(self.unix_path, limit=MAX_HEAD)
                else:
                    reader, writer = await self._open_tcp()
        except TimeoutError:
            raise HTTPError("connect", f"no connection within {self.connect_timeout:g}s") from None
        except (OSError, ValueError) as exc:
            raise HTTPError("connect", _describe(exc)) from None
        return _Conn(reader, writer)

    async def _open_tcp(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addrs = await self._addresses()
        error: OSError | None = None
        for addr in addrs:
            try:
                return await asyncio.open_connection(addr, self.port, limit=MAX_HEAD)
            except OSError as exc:
                error = exc
        self._addrs = None  # look the name up again next time
        raise error or OSError(f"{self.host} has no address")

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self.keepalive and not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    # -- requests ------------------------------------------------------------

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> HTTPReply:
        """POST ``body`` to the base URL + ``path``; raises :class:`HTTPError`."""
        return await self.request("POST", path, body, headers)

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> HTTPReply:
        head = self._request_head(method, path, body, headers)
        slots = self._bind_loop()
        try:
            async with asyncio.timeout(self.timeout):
                async with slots:
                    conn = self._take_idle()
                    reused = conn is not None
                    while True:
                        if conn is None:
                            conn = await self._connect()
                        try:
                            reply, keep = await self._exchange(conn, head, body)
                        except _Broken as exc:
                            conn.close()
                            if reused and exc.fresh:  # the server had closed an idle connection
                                conn, reused = None, False
                                continue
                            raise HTTPError("io", str(exc)) from None
                        except BaseException:  # timed out or cancelled mid-exchange: never reuse it
                            conn.close()
                            raise
                        break
                    if keep:
                        conn.idle_since = time.monotonic()
                        self._idle.append(conn)
                    else:
                        conn.close()
        except TimeoutError:
            raise HTTPError("timeout", f"no answer within {self.timeout:g}s") from None
        if not 200 <= reply.status < 300:
            raise HTTPError("status", f"HTTP {reply.status}", reply.status)
        return reply

    def _request_head(self, method: str, path: str, body: bytes | None, headers: Sequence[tuple[str, str]]) -> bytes:
        parts = [f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        for name, value in headers:
            if not _TOKEN.match(name.encode("latin-1", "replace")) or "\r" in value or "\n" in value:
                raise ValueError(f"bad request header {name!r}: {value!r}")
            parts.append(f"{name}: {value}\r\n")
        if body is not None:
            parts.append(f"Content-Length: {len(body)}\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    async def _exchange(self, conn: _Conn, head: bytes, body: bytes | None) -> tuple[HTTPReply, bool]:
        reader = conn.reader
        try:
            conn.writer.write(head + body if body else head)
            await conn.writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise _Broken("connection closed before an answer", not exc.partial) from None
        except asyncio.LimitOverrunError:
            raise _Broken(f"answer head larger than {MAX_HEAD} bytes", False) from None
        except OSError as exc:
            raise _Broken(_describe(exc), True) from None
        try:
            status, _, version, headers = parse_head(raw[:-4])
        except ValueError as exc:
            raise _Broken(str(exc), False) from None
        connection = (_header(headers, "connection") or "").lower()
        keep = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        try:
            if "chunked" in (_header(headers, "transfer-encoding") or "").lower():
                data = await self._read_chunked(reader)
            elif (length := _header(headers, "content-length")) is not None:
                if not length.isdigit():
                    raise _Broken(f"bad Content-Length {length[:20]!r}", False)
                if int(length) > self.max_reply:
                    raise _Broken(f"answer larger than {self.max_reply} bytes", False)
                data = await reader.readexactly(int(length))
            else:
                data = await reader.read(self.max_reply + 1)
                while len(data) <= self.max_reply and (more := await reader.read(self.max_reply + 1 - len(data))):
                    data += more
                if len(data) > self.max_reply:
                    raise _Broken(f"answer larger than {self.max_reply} bytes", False)
                keep = False
        except asyncio.IncompleteReadError:
            raise _Broken("connection closed in the middle of the answer", False) from None
        except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
            raise _Broken(_describe(exc), False) from None
        return HTTPReply(status, data, tuple(headers)), keep

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while True:
            size_line = (await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0].strip()
            size = int(size_line, 16)  # ValueError: not HTTP
            if size < 0 or len(out) + size > self.max_reply:
                raise _Broken(f"answer larger than {self.max_reply} bytes", False)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle = []


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]
