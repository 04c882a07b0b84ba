"""Client side and mailbox side of an e2e test: smtplib in the namespace, maildir."""

from __future__ import annotations

import email.parser
import email.policy
import smtplib
import socket
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .netns import Namespace


class NsSMTP(smtplib.SMTP):
    """smtplib.SMTP whose socket is created inside a network namespace."""

    def __init__(self, ns: "Namespace", host: str = "", port: int = 0, **kw: Any) -> None:
        self._ns = ns
        super().__init__(host, port, **kw)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:  # type: ignore[override]
        if timeout is not None and not timeout:
            raise ValueError("Non-blocking socket (timeout=0) is not supported")
        return self._ns.create_connection((host, port), timeout, self.source_address)


def token() -> str:
    """A unique marker to find one message among the delivered ones."""
    return uuid.uuid4().hex[:16]


def make_message(
    tok: str,
    *,
    subject: str | None = None,
    body: str | bytes = "Hello.\r\n",
    sender: str = "alice@client.e2e.test",
    to: str = "bob@e2e.test",
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    """A small RFC 5322 message (CRLF line ends) carrying ``tok`` in Message-ID and Subject."""
    hdrs = {
        "From": sender,
        "To": to,
        "Subject": subject if subject is not None else f"e2e {tok}",
        "Message-ID": f"<{tok}@client.e2e.test>",
        "Date": "Thu, 01 Jan 2026 00:00:00 +0000",
        **(extra_headers or {}),
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode()
    b = body.encode() if isinstance(body, str) else body
    return head + b"\r\n" + b


@dataclass
class Delivered:
    path: Path
    raw: bytes

    @property
    def msg(self) -> EmailMessage:
        return email.parser.BytesParser(policy=email.policy.default).parsebytes(self.raw)  # type: ignore[return-value]

    @property
    def header_block(self) -> bytes:
        return self.raw.split(b"\n\n", 1)[0]

    @property
    def body(self) -> bytes:
        parts = self.raw.split(b"\n\n", 1)
        return parts[1] if len(parts) > 1 else b""

    def header_lines(self) -> list[bytes]:
        """Header lines (unfolded continuation lines kept as their own entries)."""
        return self.header_block.split(b"\n")

    def headers(self, name: str) -> list[str]:
        return [str(v) for v in (self.msg.get_all(name) or [])]


class Maildir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def files(self) -> list[Path]:
        out: list[Path] = []
        for sub in ("new", "cur"):
            d = self.path / sub
            if d.is_dir():
                out += [p for p in d.iterdir() if p.is_file()]
        return sorted(out, key=lambda p: (p.stat().st_mtime, p.name))

    def messages(self) -> list[Delivered]:
        return [Delivered(p, p.read_bytes()) for p in self.files()]

    def find(self, tok: str) -> list[Delivered]:
        t = tok.encode()
        return [m for m in self.messages() if t in m.raw]

    def wait_for(self, tok: str, timeout: float = 15.0) -> Delivered:
        """The one delivered message containing ``tok`` (waits for delivery)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(tok)
            if found:
                assert len(found) == 1, f"{len(found)} messages contain {tok}: {[m.path for m in found]}"
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no message containing {tok} delivered to {self.path} within {timeout}s")
            time.sleep(0.05)

    def assert_not_delivered(self, tok: str, wait: float = 1.0) -> None:
        """Nothing containing ``tok`` arrives (within ``wait`` seconds)."""
        time.sleep(wait)
        found = self.find(tok)
        assert not found, f"message {tok} was delivered but should not have been: {[m.path for m in found]}"
