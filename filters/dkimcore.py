"""DKIM signing mechanics (RFC 6376, RFC 8463) for py-filter-dkimsign.

Nothing here knows smtpd: a ``BodyHash`` eats the body in CRLF-terminated
pieces as they arrive, ``sign()`` turns a header block and a body hash into a
``DKIM-Signature`` field, laid out as Martijn van Duren's filter-dkimsign lays
it out (tags in its order, ``h=`` bottom-up, folded at 78 columns after its
rules), so that with the same key, message and flags both produce the same
bytes.  Keys are signed with through OpenSSL (``cryptography``): RSA
PKCS#1 v1.5 over SHA-256 in 0.2 ms, where dkimpy's pure-Python RSA takes 6.
"""

from __future__ import annotations

import base64
import bisect
import email.utils
import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

#: RFC 6376 §5.4.1, in filter-dkimsign's order: its default ``-h``.
DEFAULT_HEADERS = (
    "from reply-to subject date to cc resent-date resent-from resent-to resent-cc in-reply-to "
    "references list-id list-help list-unsubscribe list-subscribe list-post list-owner list-archive"
).split()
#: RFC 5322 §3.6 fields that occur at most once: what ``-oversign singletons`` means.
SINGLETONS = ("from", "sender", "reply-to", "to", "cc", "message-id", "in-reply-to", "references", "subject", "date")
FOLD_AT = 78  # filter-dkimsign's DKIM_SIGNATURE_LINELEN
CANONS = ("simple", "relaxed")

_WSP_RUN = re.compile(rb"[ \t]+")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext


class KeyFileError(ValueError):
    """A key file that cannot be used (the message names the file)."""


@dataclass(frozen=True)
class Key:
    """A private key and what it signs with: ``rsa`` or ``ed25519``."""

    path: str
    kind: str
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def algorithm(self) -> str:
        return f"{self.kind}-sha256"

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # RFC 8463 §3: Ed25519 signs the SHA-256 of the data, not the data
        return self.private.sign(hashlib.sha256(data).digest())


def load_key(path: str) -> Key:
    """A PEM private key (RSA or Ed25519, PKCS#1 or PKCS#8, as openssl
    genpkey writes them), or dkimpy's raw base64 Ed25519 seed."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise KeyFileError(f"can't read key file {path}: {exc.strerror or exc}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        seed = _raw_ed25519_seed(data)
        if seed is None:
            raise KeyFileError(f"key file {path} holds no usable private key ({exc})") from None
        private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < 1024:
            raise KeyFileError(f"key file {path}: RSA key of {private.key_size} bits (verifiers want >= 1024)")
        return Key(path, "rsa", private)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return Key(path, "ed25519", private)
    raise KeyFileError(f"key file {path}: {type(private).__name__} keys cannot sign DKIM (rsa or ed25519)")


def throwaway_key(kind: str) -> Key:
    """A fresh key held only in memory (demos and tests; nobody can verify it)."""
    if kind == "rsa":
        return Key("(throw-away)", "rsa", rsa.generate_private_key(65537, 2048))
    return Key("(throw-away)", "ed25519", ed25519.Ed25519PrivateKey.generate())


def _raw_ed25519_seed(data: bytes) -> bytes | None:
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        return None
    return seed if len(seed) == 32 else None


def public_record(key: Key) -> str:
    """The DNS TXT record for ``key`` (``v=DKIM1; k=...; p=...``)."""
    pub = key.private.public_key()
    if key.kind == "rsa":
        der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        der = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k={key.kind}; p={base64.b64encode(der).decode()}"


# -- canonicalisation ------------------------------------------------------------


def parse_canon(text: str) -> tuple[str, str]:
    """``simple``, ``relaxed``, ``hdr/body``; one word means body simple."""
    head, slash, body = text.partition("/")
    if head not in CANONS or (slash and body not in CANONS):
        raise ValueError("simple or relaxed, as header[/body]")
    return head, body if slash else "simple"


def canon_header(lines: Sequence[bytes], how: str) -> bytes:
    """One header field (its raw lines), canonicalised, CRLF-terminated."""
    if how == "simple":
        return b"\r\n".join(lines) + b"\r\n"
    name, _, value = b"".join(lines).partition(b":")
    value = _WSP_RUN.sub(b" ", value).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


class BodyHash:
    """The body hash of RFC 6376 §3.4.3/§3.4.4, fed piece by piece.

    Pieces are whole lines, each ending in CRLF.  Empty lines at the end of
    the body do not count, so a run of them is held back (as a count) until
    a line with content follows."""

    __slots__ = ("relaxed", "_hash", "_blank", "_any")

    def __init__(self, how: str) -> None:
        self.relaxed = how == "relaxed"
        self._hash = hashlib.sha256()
        self._blank = 0  # empty lines seen and not hashed yet
        self._any = False  # a line with content was hashed

    def update(self, chunk: bytes) -> None:
        if self.relaxed:
            if b"\t" in chunk or b"  " in chunk:
                chunk = _WSP_RUN.sub(b" ", chunk)
            if b" \r\n" in chunk:
                chunk = chunk.replace(b" \r\n", b"\r\n")
        end = len(chunk)
        # drop empty lines at the end of this piece: the last line is empty
        # when the piece ends in CRLF CRLF (or is a lone CRLF)
        while end >= 2 and chunk.endswith(b"\r\n", 0, end) and (end == 2 or chunk.endswith(b"\r\n", 0, end - 2)):
            end -= 2
        if end == 0:
            self._blank += len(chunk) // 2
            return
        if self._blank:
            self._hash.update(b"\r\n" * self._blank)
        self._hash.update(memoryview(chunk)[:end] if end < len(chunk) else chunk)
        self._blank = (len(chunk) - end) // 2
        self._any = True

    def digest(self) -> bytes:
        h = self._hash.copy()
        if not self._any and not self.relaxed:
            h.update(b"\r\n")  # an empty body is one CRLF in simple (§3.4.3)
        return h.digest()


# -- the signature field -------------------------------------------------------------


def _zcopy(line: bytes) -> str:
    """A header line as filter-dkimsign copies it into z=: printable
    characters but ``;``, ``=``, ``|`` as they are, the rest ``=XX``, and
    ``=0D=0A`` after each line."""
    out = []
    for byte in line:
        if 0x21 <= byte <= 0x3A or byte == 0x3C or 0x3E <= byte <= 0x7B or 0x7D <= byte <= 0x7E:
            out.append(chr(byte))
        else:
            out.append(f"={byte:02X}")
    return "".join(out) + "=0D=0A"


def zvalue(lines: Iterable[bytes]) -> str:
    """z= from header lines: new fields separated by ``|``, continuation
    lines glued on."""
    parts = []
    for line in lines:
        if parts and line[:1] not in (b" ", b"\t"):
            parts.append("|")
        parts.append(_zcopy(line))
    return "".join(parts)


def _break_points(text: str) -> list[int]:
    """Where filter-dkimsign may break a line (after these indices): the
    ``:`` after the field name, every ``;``, every ``:`` of h=, and every
    character of b=, bh= and z= (from the ``=`` on; after ``bh=``)."""
    colon = text.index(":")
    points = [colon]
    at = colon + 1
    n = len(text)
    while at < n:
        end = text.find(";", at)
        if end < 0:
            end = n
        t = at
        while t < end and text[t] in " \t":
            t += 1
        if t < end:
            if text.startswith("bh=", t):
                points.extend(range(t + 3, end))
            elif text[t] in "bz":
                points.extend(range(t + 1, end))
            elif text[t] == "h":
                points.extend(i for i in range(t + 1, end) if text[i] == ":")
        if end < n:
            points.append(end)
        at = end + 1
    return points


def fold(text: str, width: int = FOLD_AT) -> list[str]:
    """Fold a ``DKIM-Signature: ...`` field as filter-dkimsign does: once a
    character would pass ``width`` columns, the line breaks after the last
    break point before it (or, if there is none, after the first one
    following), white space there is dropped and the next line starts with
    a TAB (8 columns)."""
    return _lines(text, _fold_spans(text, width))


def _lines(text: str, spans: Sequence[tuple[int, int]]) -> list[str]:
    return [("\t" if i else "") + text[start:end] for i, (start, end) in enumerate(spans)]


def _fold_spans(text: str, width: int = FOLD_AT) -> list[tuple[int, int]]:
    """``fold()``'s lines as (start, end) slices of ``text``."""
    points = _break_points(text)
    spans: list[tuple[int, int]] = []
    start, col, n = 0, 0, len(text)
    while True:
        over = start + width - col  # the first index past the width
        if over >= n:
            break
        k = bisect.bisect_left(points, over) - 1
        if k >= 0 and points[k] >= start:
            cut = points[k]
        else:
            k = bisect.bisect_left(points, over)
            if k >= len(points) or points[k] >= n - 1:
                break
            cut = points[k]
        spans.append((start, cut + 1))
        start = cut + 1
        while start < n and text[start] in " \t":
            start += 1
        col = 8
    spans.append((start, n))
    return spans


#: Fold layouts by the field's text with its bh= value blanked: every
#: character of bh= is a break point and its length is fixed (SHA-256), so
#: fields that differ only in the body hash - most of a stream's - fold
#: alike.  Bounded: t= and z= make new texts.
_FOLDS: dict[str, list[tuple[int, int]]] = {}
_FOLDS_MAX = 512


def fold_with_bh(head: str, bh: str, tail: str) -> list[str]:
    """``fold(head + bh + tail)``, ``bh`` the base64 body hash."""
    key = head + "A" * len(bh) + tail
    spans = _FOLDS.get(key)
    if spans is None:
        if len(_FOLDS) >= _FOLDS_MAX:
            _FOLDS.clear()
        spans = _FOLDS[key] = _fold_spans(key)
    return _lines(head + bh + tail, spans)


def append_b(lines: list[str], b: str, width: int = FOLD_AT) -> list[str]:
    """``fold(text + b)`` from ``lines = fold(text)``, ``text`` ending in
    ``b=``: every character of b= is a break point, so its value just fills
    the last line up to ``width`` columns, then TAB-led lines (a last line
    already past the width breaks after its ``=``)."""
    last = lines[-1]
    col = 8 + len(last) - 1 if len(lines) > 1 else len(last)
    room = max(0, width - col)
    out = lines[:-1] + [last + b[:room]]
    step = width - 8
    out += ["\t" + b[i : i + step] for i in range(room, len(b), step)]
    return out


@dataclass(frozen=True)
class Identity:
    """Who signs: domain (d=), selector (s=) and key."""

    domain: str
    selector: str
    key: Key


@dataclass(frozen=True)
class Options:
    """The signature's shape, from the flags."""

    header_canon: str = "simple"
    body_canon: str = "simple"
    sign_headers: tuple[str, ...] = tuple(DEFAULT_HEADERS)
    oversign: tuple[str, ...] = ()
    timestamp: bool = False
    expire: int = 0  # x= seconds after signing; 0: none
    copies: int = 0  # z=: 1 the signed headers, 2 all headers
    sign_set: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sign_set", frozenset(self.sign_headers))


def signed_fields(fields: Sequence[tuple[str, list[bytes]]], opts: Options) -> list[tuple[str, list[bytes]]]:
    """The fields to sign, bottom-up (the order of ``h=``, as filter-dkimsign
    writes it), then an empty entry per oversigned name (a field of that
    name added later breaks the signature)."""
    chosen = [(name.lower(), lines) for name, lines in fields if name.lower() in opts.sign_set]
    chosen.reverse()
    chosen += [(name, []) for name in opts.oversign]
    return chosen


def sign(
    fields: Sequence[tuple[str, list[bytes]]],
    body_hash: bytes,
    identity: Identity,
    opts: Options,
    now: int = 0,
) -> list[bytes]:
    """The ``DKIM-Signature`` field's lines (no CRLF) for a header block
    (``(name, raw lines)`` in message order) and the body's hash."""
    chosen = signed_fields(fields, opts)
    text = (
        f"DKIM-Signature: v=1; a={identity.key.algorithm}; c={opts.header_canon}/{opts.body_canon}; "
        f"s={identity.selector}; "
    )
    if opts.copies:
        copied = [line for name, lines in fields for line in lines if opts.copies > 1 or name.lower() in opts.sign_set]
        text += f"z={zvalue(copied)}; "
    if opts.timestamp:
        text += f"t={now}; "
    if opts.expire:
        text += f"x={now + opts.expire}; "
    text += "bh="
    tail = f"; h={':'.join(name for name, _ in chosen)}; d={identity.domain}; b="
    unsigned = fold_with_bh(text, base64.b64encode(body_hash).decode(), tail)
    data = b"".join(canon_header(lines, opts.header_canon) for _, lines in chosen if lines)
    # the signature field itself, b= empty, without its final CRLF (§3.7)
    data += canon_header([line.encode() for line in unsigned], opts.header_canon)[:-2]
    b = base64.b64encode(identity.key.sign(data)).decode()
    return [line.encode() for line in append_b(unsigned, b)]


# -- the signing domain ------------------------------------------------------------


#: ``addr@domain`` or ``Plain Name <addr@domain>``: most From fields, read
#: without the full RFC 5322 parser.
_SIMPLE_FROM = re.compile(r"\s*(?:[\w .'-]*<)?[\w.+'=-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)\.?>?\s*")


def from_domain(value: str) -> str | None:
    """The domain of the first mailbox of a From field's value (RFC 5322
    ``mailbox-list``, comments and quoted display names allowed), lower
    case; None if there is none."""
    simple = _SIMPLE_FROM.fullmatch(value)
    if simple is not None and (("<" in value) == (">" in value)):
        return simple.group(1).lower()
    return parsed_from_domain(value)


def parsed_from_domain(value: str) -> str | None:
    """``from_domain`` by the standard library's RFC 5322 address parser."""
    for _name, addr in email.utils.getaddresses([value]):
        local, at, domain = addr.rpartition("@")
        domain = domain.strip().rstrip(".").lower()
        if at and local and domain and "@" not in domain and " " not in domain:
            return domain
        return None
    return None


def valid_field_name(name: str) -> bool:
    return bool(_FIELD_NAME.fullmatch(name))
