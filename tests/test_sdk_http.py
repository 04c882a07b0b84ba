"""smtpd_filter_sdk.http: one pooled client against real servers on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from httpkit import HTTPTestServer
from smtpd_filter_sdk.http import HTTPClient, HTTPError, is_unix_url


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


async def posts(client: HTTPClient, n: int, body: bytes = b"x", headers=()):
    try:
        return [await client.post("/checkv2", body, headers) for _ in range(n)]
    finally:
        await client.close()


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_posts_reuse_one_connection_and_keep_repeated_headers(unix):
    with HTTPTestServer(unix=unix) as srv:
        srv.answer(json={"action": "reject"})
        client = HTTPClient(srv.url, timeout=5)
        replies = run(posts(client, 3, b"line1\r\nline2\r\n", [("Rcpt", "a@x"), ("Rcpt", "b@x"), ("IP", "192.0.2.1")]))
        assert [r.status for r in replies] == [200, 200, 200]
        assert replies[0].body == b'{"action": "reject"}'
        seen = srv.requests[-1]
        assert (seen.method, seen.path, seen.body) == ("POST", "/checkv2", b"line1\r\nline2\r\n")
        assert seen.all("Rcpt") == ["a@x", "b@x"] and seen.get("IP") == "192.0.2.1"
        assert seen.get("User-Agent") is None and seen.get("Accept-Encoding") is None
        assert srv.connections == 1


def test_unix_rule_is_filter_rspamds():
    assert is_unix_url("/run/rspamd/normal.sock") and is_unix_url("rspamd.sock")
    assert not is_unix_url("http://localhost:11333") and not is_unix_url("https://r.example:1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_and_missing_socket_are_connect_errors(tmp_path):
    for url in (f"http://127.0.0.1:{free_port()}", str(tmp_path / "nothing.sock")):
        with pytest.raises(HTTPError) as e:
            run(posts(HTTPClient(url, timeout=2), 1))
        assert e.value.kind == "connect", e.value


def test_slow_server_is_a_timeout_within_the_limit():
    with HTTPTestServer() as srv:
        srv.answer(delay=3)
        t = time.monotonic()
        with pytest.raises(HTTPError) as e:
            run(posts(HTTPClient(srv.url, timeout=0.5), 1))
        assert e.value.kind == "timeout"
        assert time.monotonic() - t < 2.0


def test_http_error_status():
    with HTTPTestServer() as srv:
        srv.answer(b"oops", status=500)
        with pytest.raises(HTTPError) as e:
            run(posts(HTTPClient(srv.url, timeout=2), 1))
        assert (e.value.kind, e.value.status) == ("status", 500)


def test_an_answer_too_large_is_refused():
    with HTTPTestServer() as srv:
        srv.answer(b"x" * 5000)
        with pytest.raises(HTTPError) as e:
            run(posts(HTTPClient(srv.url, timeout=2, max_reply=4096), 1))
        assert e.value.kind == "io"


class RawServer:
    """Speaks raw bytes: the first connection answers one request, keeps the
    connection open, then closes it when the next request arrives (a stale
    keep-alive connection); later connections answer normally."""

    def __init__(self, first_reply: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.first_reply = first_reply
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _read_request(c: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next((ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")), b"0"))
        while len(body) < length:
            body += c.recv(65536)
        return True

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with c:
                self._handle(c)

    def _handle(self, c: socket.socket) -> None:
        self._read_request(c)
        if self.accepted == 1:
            c.sendall(self.first_reply)
            self._read_request(c)  # the reused connection's request: dropped
            return
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecond")

    def close(self) -> None:
        self.sock.close()


def test_a_stale_keepalive_connection_is_retried_once_on_a_fresh_one():
    srv = RawServer()
    try:
        replies = run(posts(HTTPClient(f"http://127.0.0.1:{srv.port}", timeout=3), 2))
        assert [r.body for r in replies] == [b"ok", b"second"]
        assert srv.accepted == 2
    finally:
        srv.close()


def test_garbage_instead_of_http_is_an_io_error():
    srv = RawServer(first_reply=b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    try:
        with pytest.raises(HTTPError) as e:
            run(posts(HTTPClient(f"http://127.0.0.1:{srv.port}", timeout=3), 1))
        assert e.value.kind == "io"
    finally:
        srv.close()


def test_bad_arguments():
    with pytest.raises(ValueError):
        HTTPClient("http://127.0.0.1:1", timeout=0)


class OneShot(RawServer):
    """Answers every connection's first request with fixed bytes, then closes."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(first_reply=reply)
        self.url = f"http://127.0.0.1:{self.port}"

    def _handle(self, c: socket.socket) -> None:
        self._read_request(c)
        c.sendall(self.first_reply)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.mark.parametrize("reply, body", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n", b"hello world"),
    (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"read\": \"to close\"}", b'{"read": "to close"}'),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b""),
    (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok", b"ok"),
], ids=["chunked", "read-to-close", "empty", "folded-header"])
def test_answer_bodies(reply, body):
    with OneShot(reply) as srv:
        got = run(posts(HTTPClient(srv.url, timeout=3), 1))[0]
    assert got.body == body


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",              # closed mid-body
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",       # bad chunk size
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n",
    b"",                                                                   # closed at once
], ids=["short-body", "bad-chunk", "bad-length", "bad-header", "nothing"])
def test_broken_answers_are_io_errors(reply):
    with OneShot(reply) as srv:
        with pytest.raises(HTTPError) as e:
            run(posts(HTTPClient(srv.url, timeout=3), 1))
    assert e.value.kind == "io"


def test_headers_that_would_split_the_request_are_refused():
    client = HTTPClient("http://127.0.0.1:9", timeout=1)
    for name, value in (("X-A", "a\r\nX-Evil: 1"), ("Bad Name", "v"), ("X-B", "b\nc")):
        with pytest.raises(ValueError):
            run(client.post("/", b"", [(name, value)]))


def test_only_http_urls_or_socket_paths():
    for bad in ("https://127.0.0.1:11333", "http://", "http:///path"):
        with pytest.raises(ValueError):
            HTTPClient(bad, timeout=1)
    assert HTTPClient("http://127.0.0.1:11333/base/", timeout=1).prefix == "/base"


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from smtpd_filter_sdk.http import parse_head  # noqa: E402

tokens = st.text(st.sampled_from("abcXYZ-_0123456789!#$%&'*+.^`|~"), min_size=1, max_size=12)
values = st.text(st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"), max_size=30).map(str.strip)


@given(st.sampled_from(["HTTP/1.0", "HTTP/1.1"]), st.integers(100, 599), values, st.lists(st.tuples(tokens, values), max_size=6))
def test_parse_head_reads_back_what_a_server_writes(version, status, reason, headers):
    head = f"{version} {status} {reason}".encode("latin-1") + b"".join(
        f"\r\n{k}: {v}".encode("latin-1") for k, v in headers)
    got = parse_head(head)
    assert got[0] == status and got[2] == version
    assert got[3] == [(k, v) for k, v in headers]


@given(st.binary(max_size=200))
def test_parse_head_on_garbage_is_a_value_error_or_a_status(data):
    try:
        status, _, version, headers = parse_head(data)
    except ValueError:
        return
    assert 0 <= status <= 999 and version in ("HTTP/1.0", "HTTP/1.1")


def test_a_host_name_is_resolved_cached_and_every_address_tried():
    with HTTPTestServer() as srv:
        client = HTTPClient(f"http://localhost:{srv.port}", timeout=3)  # ::1 may come first: nothing listens there
        replies = run(posts(client, 3))
        assert [r.status for r in replies] == [200] * 3
        assert client._addrs is not None and "127.0.0.1" in client._addrs[1]


def test_a_request_cancelled_mid_exchange_closes_its_connection():
    with HTTPTestServer() as srv:
        srv.answer(delay=2)
        client = HTTPClient(srv.url, timeout=5)

        async def cancelled():
            task = asyncio.ensure_future(client.post("/checkv2", b"x"))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            srv.answer()
            return await client.post("/checkv2", b"y")

        assert run(cancelled()).status == 200
        assert client._idle and srv.connections == 2  # the cancelled one was not put back
        run(client.close())
