"""Which session fields a filter's handlers read, so that the SDK registers
only the report events that fill them.

Every report event costs the filter a line to read and parse, per session:
a pass-through filter that tracked all 15 events spent more time on reports
than on a 50-line message.  So the SDK looks at the handlers' code: the
attribute names in each handler's code object, in the code nested in it
(lambdas, inner functions, comprehensions) and in the code it can reach by
name: functions and classes in its globals and closure, methods of the
objects there (``ss.score(session)`` with ``ss`` in a closure reaches
``SenderScore.score``), and, from a method, the other methods of its object
(``self.lookup``).  A name that is a session field (``src``, ``tx``,
``authenticated``...) means the events that set it are registered
(``FIELD_EVENTS``).  Names are matched wherever they appear: reading
``x.src`` of some other object counts too, which only ever registers more.

When that cannot be told, everything is tracked, as before: a handler that
is not a plain Python function (no code object), or code that reads
attributes by computed name (``getattr``, ``vars``, ``__dict__``...).  What
this cannot see: a session handed to code outside that reach (an object
received as an argument, a C extension).  Such a filter says what it reads:
``Filter(track=["src", "helo"])``, or ``track="all"``.
"""

from __future__ import annotations

import dis
import inspect
import types
from typing import Any, Callable, Iterable

#: The report events that set each session field (and the properties
#: computed from fields).  A filter that reads a field gets its events.
TX_EVENTS = frozenset(
    {"tx-begin", "tx-mail", "tx-rcpt", "tx-envelope", "tx-data", "tx-commit", "tx-rollback", "tx-reset", "filter-response"}
)
FIELD_EVENTS: dict[str, frozenset[str]] = {
    "rdns": frozenset({"link-connect"}),
    "fcrdns": frozenset({"link-connect"}),
    "src": frozenset({"link-connect"}),
    "dest": frozenset({"link-connect"}),
    "is_local": frozenset({"link-connect"}),
    "has_rdns": frozenset({"link-connect"}),
    "remember_connect": frozenset({"link-connect"}),
    "greeting": frozenset({"link-greeting"}),
    "helo_method": frozenset({"link-identify"}),
    "helo": frozenset({"link-identify"}),
    "tls": frozenset({"link-tls"}),
    "auth_user": frozenset({"link-auth"}),
    "auth_result": frozenset({"link-auth"}),
    "authenticated": frozenset({"link-auth"}),
    "tx": TX_EVENTS,
    "messages": frozenset({"tx-commit"}),
    "junk": frozenset({"filter-response"}),
}

#: Functions (by global name) and attributes that read attributes by
#: computed name: what they read cannot be told.
DYNAMIC_GLOBALS = frozenset({"getattr", "vars", "dir", "asdict", "astuple", "attrgetter"})
DYNAMIC_ATTRIBUTES = frozenset({"__dict__", "__getattribute__", "__slots__", "asdict", "astuple", "attrgetter"})

_ATTRIBUTE_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR", "DELETE_ATTR"})

#: How far calls are followed by name (handler -> helper -> its helper ...).
MAX_DEPTH = 6


class Unknown(Exception):
    """What the handlers read cannot be told."""


def events_for(fields: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for name in fields:
        out |= FIELD_EVENTS.get(name, frozenset())
    return out


def fields_read(handlers: Iterable[Callable[..., Any]]) -> set[str] | None:
    """The session fields (keys of ``FIELD_EVENTS``) these handlers may
    read; None when that cannot be told (track everything)."""
    walker = _Walker()
    try:
        for fn in handlers:
            walker.function(fn, 0)
    except Unknown:
        return None
    return walker.names & FIELD_EVENTS.keys()


class _Walker:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self._seen: set[int] = set()

    def function(self, fn: Any, depth: int, owner: Any = None) -> None:
        """A handler (or something it reaches).  ``owner``: the object whose
        method this is, so that ``self.other()`` is followed."""
        if isinstance(fn, types.MethodType):
            fn, owner = fn.__func__, fn.__self__
        fn = inspect.unwrap(fn)
        code = getattr(fn, "__code__", None)
        if not isinstance(code, types.CodeType):
            if depth == 0:
                raise Unknown(f"{fn!r} has no code to look at")
            return  # a builtin or C function reached by name: it reads no session field by name
        if id(code) in self._seen or depth > MAX_DEPTH:
            return
        self._seen.add(id(code))
        scope: list[Any] = [owner] if owner is not None else []
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                scope.append(cell.cell_contents)
            except ValueError:  # an empty cell (not assigned yet)
                continue
        names = self._code_names(code)
        env = getattr(fn, "__globals__", {})
        for name in names:
            if name in env:
                scope.append(env[name])
        for name in names:
            for obj in scope:
                self._follow(obj, name, depth)

    def _code_names(self, code: types.CodeType) -> set[str]:
        """Every name ``code`` and the code nested in it use; the attribute
        names among them (``x.name``, not a global ``name``) go to
        ``self.names``."""
        names: set[str] = set()
        attributes: set[str] = set()
        stack = [code]
        while stack:
            c = stack.pop()
            names.update(c.co_names)
            attributes.update(i.argval for i in dis.get_instructions(c) if i.opname in _ATTRIBUTE_OPS)
            stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        if (names - attributes) & DYNAMIC_GLOBALS or attributes & DYNAMIC_ATTRIBUTES:
            raise Unknown(f"{code.co_name} reads attributes by computed name")
        self.names |= attributes
        return names

    def _follow(self, obj: Any, name: str, depth: int) -> None:
        """``obj`` is in scope and ``name`` is used: follow ``obj`` itself
        if it is a function or class, and ``obj.name`` if that is code."""
        if isinstance(obj, (types.FunctionType, types.MethodType)):
            self.function(obj, depth + 1)
            return
        if isinstance(obj, (str, bytes, int, float, bool, type(None), tuple, list, dict, set, frozenset)):
            return
        holder = obj if isinstance(obj, (type, types.ModuleType)) else type(obj)
        if isinstance(holder, types.ModuleType) and not _ours_to_read(holder):
            return
        try:
            attr = inspect.getattr_static(holder, name)
        except AttributeError:
            return
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        elif isinstance(attr, property):
            attr = attr.fget
        if isinstance(attr, types.FunctionType):
            self.function(attr, depth + 1, owner=None if isinstance(obj, (type, types.ModuleType)) else obj)
        elif isinstance(attr, type):
            init = inspect.getattr_static(attr, "__init__", None)
            if isinstance(init, types.FunctionType):
                self.function(init, depth + 1)


def _ours_to_read(module: types.ModuleType) -> bool:
    """Modules of the standard library (and the SDK's own) read no session
    field: not worth walking."""
    name = module.__name__.partition(".")[0]
    return name not in _SKIP_MODULES


_SKIP_MODULES = frozenset({"asyncio", "os", "sys", "re", "time", "json", "logging", "socket", "ipaddress", "smtpd_filter_sdk"})
