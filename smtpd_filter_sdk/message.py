"""Message helpers: dot-(un)stuffing, and a header block you can edit.

Data lines arrive dot-stuffed as on the SMTP wire (``..x`` for a body line
``.x``) and must leave stuffed the same way (protocol.md §3.3, §4.6).  The
helpers here work on *unstuffed* lines, as bytes: mail is not text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

#: Fold injected headers before this many bytes per line (RFC 5322 §2.1.1).
FOLD_AT = 78
_CR, _LF, _COLON, _SPACE = b"\r\n: "


def unstuff(line: bytes) -> bytes:
    """The content of a dot-stuffed line."""
    return line[1:] if line[:1] == b"." else line


def stuff(line: bytes) -> bytes:
    """A content line as it must travel on the wire."""
    return b"." + line if line[:1] == b"." else line


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def fold(name: str | bytes, value: str | bytes, width: int = FOLD_AT) -> list[bytes]:
    """``Name: value`` as one or more lines, folded at white space before
    ``width`` bytes where possible (continuation lines start with a TAB).
    CR/LF in the value are refused: they would forge extra headers."""
    return list(_folded(name, value, width))


@functools.lru_cache(maxsize=256)
def _folded(name: str | bytes, value: str | bytes, width: int) -> tuple[bytes, ...]:
    # Remembered: a filter mostly adds the same few headers to every message
    # (a tag, a score out of 101), and folding costs more than the lookup;
    # unique values (a signature) just pass through the small cache.
    name_b, value_b = _as_bytes(name), _as_bytes(value)
    # (bytes as ints: "13 in value" is a byte search in C, b"\r" in value
    # first takes a buffer of the needle, several times as long)
    if _CR in value_b or _LF in value_b or _CR in name_b or _LF in name_b:
        raise ValueError("header name/value must not contain CR or LF")
    if not name_b or _COLON in name_b or _SPACE in name_b:
        raise ValueError(f"bad header name {name_b!r}")
    if len(name_b) + 2 + len(value_b) <= width:
        return (name_b + b": " + value_b,)  # fits: what the loop below would give
    words = value_b.split(b" ")
    lines: list[bytes] = []
    current = name_b + b":"
    for word in words:
        candidate = current + b" " + word
        if len(candidate) > width and current.strip() not in (name_b + b":", b""):
            lines.append(current)
            current = b"\t" + word
        else:
            current = candidate
    lines.append(current)
    return tuple(lines)


@dataclass
class Header:
    """One header field: its name and its raw lines (first line + continuations)."""

    name: str
    lines: list[bytes]

    @property
    def value(self) -> str:
        """Unfolded value, leading white space removed, as text."""
        raw = b"".join(
            # partition: a line in the block that is not a field (no colon;
            # kept, nameless) has an empty value rather than raising
            (line.partition(b":")[2] if i == 0 else line) for i, line in enumerate(self.lines)
        )
        return raw.strip().decode("utf-8", "surrogateescape")


def _header_name(line: bytes) -> str | None:
    name, colon, _ = line.partition(b":")
    if not colon or not name or name != name.rstrip() or b" " in name or b"\t" in name:
        return None
    return name.decode("ascii", "replace")


class Headers:
    """The header block.  Names compare case-insensitively; order is kept.

    ``fields`` (a list of ``Header``, yours to read, edit or replace) is
    parsed from the block's lines when first asked for.  Until then a block
    that is only prepended to (``add``) and cleared of names it does not
    hold (``remove``: a look over the lowered block, in C), as a header
    tagger does, is never split into fields: ``lines()`` gives the new
    headers, then the lines as they came.
    """

    __slots__ = ("_fields", "_raw", "_front")

    def __init__(self, fields: list[Header] | None = None) -> None:
        self._fields: list[Header] | None = [] if fields is None else fields
        self._raw: list[bytes] = []  # the lines not parsed yet (when _fields is None)
        self._front: list[Header] = []  # headers prepended before they were parsed

    @classmethod
    def parse(cls, lines: Iterable[bytes]) -> "Headers":
        headers = cls.__new__(cls)
        headers._fields, headers._raw, headers._front = None, list(lines), []
        return headers

    @staticmethod
    def _split(lines: list[bytes]) -> list[Header]:
        out: list[Header] = []
        for line in lines:
            if line[:1] in (b" ", b"\t") and out:
                out[-1].lines.append(line)
                continue
            name = _header_name(line)
            # A line that is no header at all is kept verbatim under an empty
            # name, so nothing the client sent is lost.
            out.append(Header(name or "", [line]))
        return out

    @property
    def fields(self) -> list[Header]:
        if self._fields is None:
            self._fields = self._front + self._split(self._raw)
            self._raw, self._front = [], []
        return self._fields

    @fields.setter
    def fields(self, value: list[Header]) -> None:
        self._fields, self._raw, self._front = value, [], []

    def __eq__(self, other: object) -> bool:
        return self.fields == other.fields if isinstance(other, Headers) else NotImplemented

    def __repr__(self) -> str:
        return f"Headers(fields={self.fields!r})"

    def __iter__(self) -> Iterator[Header]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if self._fields is None and name and name.isascii():
            lowered = name.lower()
            if not self._raw_may_hold(lowered):
                # Not in the lines as they came: only the prepended ones can
                # hold it, and the block stays unsplit (a tagger's "strip
                # the client's copy, if any" costs one look in C).
                return any(h.name.lower() == lowered for h in self._front) if self._front else False
        return self.get(name) is not None

    def _raw_may_hold(self, lowered: str) -> bool:
        """Whether a field named ``lowered`` (ASCII, lower case) may be among
        the unparsed lines.  False is certain: a parsed name is ASCII (else
        it holds U+FFFD), so such a field starts a line with these bytes,
        lowered, and a colon.  True may be wrong (a name holding ":")."""
        return (b"\n" + b"\n".join(self._raw)).lower().find(b"\n" + lowered.encode() + b":") >= 0

    def get(self, name: str, default: str | None = None) -> str | None:
        for header in self.fields:
            if header.name.lower() == name.lower():
                return header.value
        return default

    def get_all(self, name: str) -> list[str]:
        return [h.value for h in self.fields if h.name.lower() == name.lower()]

    def add(self, name: str, value: str | bytes, *, prepend: bool = True) -> None:
        """Add a header, folded.  Prepending (the default) is how trace and
        result headers are added (RFC 5321 §4.4)."""
        header = Header(name, fold(name, value))
        if prepend:
            (self._front if self._fields is None else self._fields).insert(0, header)
        else:
            self.fields.append(header)

    def remove(self, name: str) -> int:
        """Remove every header of that name; return how many were removed."""
        lowered = name.lower()
        if self._fields is None and name and name.isascii():
            if not self._raw_may_hold(lowered):
                before = len(self._front)
                self._front = [h for h in self._front if h.name.lower() != lowered]
                return before - len(self._front)
        fields = self.fields
        kept = [h for h in fields if h.name.lower() != lowered]
        self._fields = kept
        return len(fields) - len(kept)

    def replace(self, name: str, value: str | bytes) -> None:
        """Set the first header of that name in place (or append it)."""
        for i, header in enumerate(self.fields):
            if header.name.lower() == name.lower():
                self.fields[i] = Header(header.name, fold(header.name, value))
                return
        self.add(name, value, prepend=False)

    def lines(self) -> list[bytes]:
        if self._fields is None:
            return [line for header in self._front for line in header.lines] + self._raw
        return [line for header in self._fields for line in header.lines]


@dataclass
class Message:
    """A whole message, unstuffed: the header block and the body lines.

    ``separated`` records whether the client sent the empty line between
    headers and body, so an untouched message leaves byte for byte as it came.
    """

    headers: Headers
    body: list[bytes]
    separated: bool = True

    @classmethod
    def parse(cls, lines: list[bytes]) -> "Message":
        """From unstuffed lines (without the final ``.``)."""
        for i, line in enumerate(lines):
            if line == b"":
                return cls(Headers.parse(lines[:i]), lines[i + 1 :], True)
            if line[:1] not in (b" ", b"\t") and _header_name(line) is None:
                # No empty line before the first non-header line: the rest is body.
                return cls(Headers.parse(lines[:i]), lines[i:], False)
        return cls(Headers.parse(lines), [], False)

    def lines(self) -> list[bytes]:
        """Unstuffed lines again (without the final ``.``)."""
        out = self.headers.lines()
        if self.separated:
            out.append(b"")
        out.extend(self.body)
        return out

    def stuffed_lines(self) -> list[bytes]:
        return [stuff(line) for line in self.lines()]

    def as_bytes(self) -> bytes:
        """CRLF-terminated, as in a mailbox (handy for dkimpy and rspamd)."""
        return b"".join(line + b"\r\n" for line in self.lines())
