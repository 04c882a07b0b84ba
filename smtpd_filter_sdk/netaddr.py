"""Client addresses and the lists filters check them against.

    from smtpd_filter_sdk.netaddr import client_ip, CIDRList, DomainList, ListFile

    ip = client_ip(session.src)          # IPv4Address | IPv6Address | None (unix/local)
    allow = ListFile(path, CIDRList.parse)
    f.on_reload(allow.reload)            # SIGHUP: a bad file keeps the old list
    if ip in allow.current: ...

List files are one entry per line; ``#`` starts a comment (to the end of the
line, unless the list says otherwise); blank lines are ignored.  A bad entry is
a :class:`ListFileError` whose text names ``file:line`` - at start-up that is
the filter's one-line error, on reload it is logged and the old list kept.

* :class:`CIDRList`: IPv4 and IPv6 addresses and networks (``192.0.2.7``,
  ``198.51.100.0/24``, ``2001:db8::/32``, ``[2001:db8::1]``).  Host bits are
  allowed (``10.1.2.3/8`` is ``10.0.0.0/8``), as the Go filters' ``ParseCIDR``
  allows them.  An IPv4-mapped IPv6 client (``::ffff:192.0.2.7``) matches the
  IPv4 entries.  Lookups cost one dict probe per distinct prefix length.
* :class:`DomainList`: domain names; an entry matches the name itself and
  every name below it (``example.com`` matches ``mx1.example.com``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Iterator, TypeVar, Union

from .protocol import Address, parse_address

IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

__all__ = [
    "IP",
    "CIDRList",
    "DomainList",
    "ListFile",
    "ListFileError",
    "client_ip",
    "is_local",
    "normalize_ip",
    "parse_network",
    "read_list",
]


# --------------------------------------------------------------------------
# Client addresses


def normalize_ip(ip: IP) -> IP:
    """An IPv4-mapped IPv6 address (``::ffff:192.0.2.7``) as the IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_ip(addr: Address | str | None) -> IP | None:
    """The client's IP address, or None for unix-socket/local sessions and
    anything that is not an address.  Scope ids (``fe80::1%eth0``) are
    dropped; IPv4-mapped IPv6 addresses come back as IPv4."""
    if addr is None:
        return None
    if isinstance(addr, str):
        addr = parse_address(addr)
    if not addr.is_ip:
        return None
    try:
        return normalize_ip(ipaddress.ip_address(addr.host))
    except ValueError:
        return None


def is_local(addr: Address | str | None) -> bool:
    """A session over smtpd's unix socket (``unix:…`` in link-connect,
    ``local`` in the connect request)."""
    if addr is None:
        return False
    if isinstance(addr, str):
        addr = parse_address(addr)
    return addr.is_local


# --------------------------------------------------------------------------
# List files


class ListFileError(ValueError):
    """A list file that cannot be used; ``str()`` is ``file:line: what``."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source, self.line, self.message = source, line, message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


def read_list(
    lines: Iterable[str],
    parse_entry: Callable[[str], object],
    source: str = "<list>",
    *,
    inline_comments: bool = True,
) -> list[object]:
    """Entries of a list, one per line: comments and blank lines skipped,
    ``parse_entry`` raising ValueError becomes ``ListFileError(source, n, …)``.
    Without ``inline_comments`` only lines *starting* with ``#`` are comments
    (for regex files, where ``#`` may be part of a pattern)."""
    out: list[object] = []
    for n, raw in enumerate(lines, 1):
        text = raw.rstrip("\r\n")
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if inline_comments:
            text = text.split("#", 1)[0]
        entry = text.strip()
        if not entry:
            continue
        try:
            out.append(parse_entry(entry))
        except ValueError as exc:
            raise ListFileError(source, n, f"{exc} (in {_show(entry)})") from None
    return out


def _show(entry: str, limit: int = 80) -> str:
    shown = entry if len(entry) <= limit else entry[:limit] + "..."
    return repr(shown)


def _read_text(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            return fh.read().splitlines()
    except UnicodeDecodeError as exc:
        raise ListFileError(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ListFileError(path, None, exc.strerror or str(exc)) from None


# --------------------------------------------------------------------------
# CIDR lists


def parse_network(text: str) -> Network:
    """``192.0.2.7``, ``198.51.100.0/24``, ``2001:db8::/32`` or ``[2001:db8::1]``
    (optionally ``[2001:db8::]/32``) as a network; host bits are cleared.
    Raises ValueError with a short reason."""
    t = text.strip()
    if not t:
        raise ValueError("empty entry")
    if t.startswith("["):
        inner, close, rest = t[1:].partition("]")
        if not close or (rest and not rest.startswith("/")):
            raise ValueError("not an IP address or CIDR")
        t = inner + rest
    addr, slash, plen = t.partition("/")
    if "%" in addr:
        raise ValueError("scoped IPv6 addresses cannot be listed")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError("not an IP address or CIDR") from None
    if slash:
        if not plen.isdigit() or len(plen) > 3:
            raise ValueError(f"bad prefix length {plen!r}")
        bits = int(plen)
        if bits > ip.max_prefixlen:
            raise ValueError(f"prefix length {bits} is longer than {ip.max_prefixlen}")
    else:
        bits = ip.max_prefixlen
    return ipaddress.ip_network(f"{ip}/{bits}", strict=False)


class CIDRList:
    """A set of IPv4/IPv6 networks; ``ip in cidrs`` (IP object or text)."""

    __slots__ = ("networks", "_v4", "_v6")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(networks)
        # prefix length -> set of network addresses (as int), longest first
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        for net in self.networks:
            table = v4 if net.version == 4 else v6
            table.setdefault(net.prefixlen, set()).add(int(net.network_address))
        self._v4 = self._masks(v4, 32)
        self._v6 = self._masks(v6, 128)

    @staticmethod
    def _masks(table: dict[int, set[int]], width: int) -> tuple[tuple[int, frozenset[int]], ...]:
        full = (1 << width) - 1
        return tuple(
            (full ^ ((1 << (width - plen)) - 1), frozenset(nets))
            for plen, nets in sorted(table.items(), reverse=True)
        )

    @classmethod
    def parse(cls, lines: Iterable[str] | str, source: str = "<list>") -> "CIDRList":
        if isinstance(lines, str):
            lines = lines.splitlines()
        return cls(read_list(lines, parse_network, source))  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str) -> "CIDRList":
        return cls.parse(_read_text(path), path)

    def __contains__(self, ip: object) -> bool:
        if isinstance(ip, str):
            try:
                ip = ipaddress.ip_address(ip.strip("[]").partition("%")[0])
            except ValueError:
                return False
        if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return False
        ip = normalize_ip(ip)
        value = int(ip)
        for mask, nets in self._v4 if ip.version == 4 else self._v6:
            if value & mask in nets:
                return True
        return False

    def __len__(self) -> int:
        return len(self.networks)

    def __iter__(self) -> Iterator[Network]:
        return iter(self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"CIDRList({len(self.networks)} networks)"


# --------------------------------------------------------------------------
# Domain lists

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def normalize_name(name: str) -> str:
    """A DNS name for comparison: lower case, no trailing dot."""
    return name.strip().rstrip(".").lower()


def parse_domain(text: str) -> str:
    """A domain name entry (``example.com``, ``.example.com`` or
    ``*.example.com`` all mean the name and everything below it)."""
    t = normalize_name(text)
    if t.startswith("*."):
        t = t[2:]
    elif t.startswith("."):
        t = t[1:]
    if not t:
        raise ValueError("empty domain name")
    if len(t) > 253:
        raise ValueError("domain name longer than 253 characters")
    for label in t.split("."):
        if not _LABEL.match(label):
            raise ValueError(f"not a domain name (label {label!r})")
    return t


class DomainList:
    """Domain suffixes: ``name in domains`` when the name is listed or lies
    below a listed name (case-insensitive, trailing dots ignored)."""

    __slots__ = ("names",)

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names = frozenset(parse_domain(n) for n in names)

    @classmethod
    def parse(cls, lines: Iterable[str] | str, source: str = "<list>") -> "DomainList":
        if isinstance(lines, str):
            lines = lines.splitlines()
        return cls(read_list(lines, parse_domain, source))  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str) -> "DomainList":
        return cls.parse(_read_text(path), path)

    def match(self, name: str | None) -> str | None:
        """The listed suffix ``name`` falls under, or None."""
        if not name or not self.names:
            return None
        n = normalize_name(name)
        while n:
            if n in self.names:
                return n
            _, dot, n = n.partition(".")
            if not dot:
                return None
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.match(name) is not None

    def __len__(self) -> int:
        return len(self.names)

    def __bool__(self) -> bool:
        return bool(self.names)

    def __repr__(self) -> str:
        return f"DomainList({len(self.names)} names)"


# --------------------------------------------------------------------------
# A list backed by a file, reloadable

T = TypeVar("T")


@dataclass
class ListFile(Generic[T]):
    """A list loaded from ``path`` by ``parse(lines, source)``.

    Loading happens at construction (a bad file raises ListFileError: give
    the user ``str(exc)`` and exit).  :meth:`reload` re-reads the file and
    swaps the list in only if the whole file is good; otherwise it raises
    ListFileError and :attr:`current` keeps the previous list (hook it to
    ``@f.on_reload``: the SDK logs the error).
    """

    path: str
    parse: Callable[[list[str], str], T]

    def __post_init__(self) -> None:
        self.path = os.fspath(self.path)
        self.current: T = self.read()

    def read(self) -> T:
        """Parse the file now (ListFileError if bad), without swapping it in."""
        return self.parse(_read_text(self.path), self.path)

    def reload(self) -> T:
        new = self.read()
        self.current = new
        return new
