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

The transaction is tracked by its parts: reading ``session.tx`` registers
tx-begin and tx-reset (the transaction exists, ``tx.msgid``), and each of its
attributes the code reads adds the event that fills it (``tx.mail_from``:
tx-mail, ``tx.rcpts``: tx-rcpt...; ``TX_FIELD_EVENTS``).  A class the code
refers to is looked into whole (all its methods): an ``on_message_stream``
handler's watcher gets the session through its constructor and reads it in
``end()``, which nothing calls by name.

When that cannot be told, everything is tracked, as before: a handler that
is not a plain Python function (no code object), or code that reads
attributes by computed name (``getattr(x, name)``, ``vars``, ``__dict__``...;
``getattr(x, "name")`` with the name written out is an ordinary read).  What
this cannot see: a session handed to code outside that reach (an object
received as an argument, a C extension).  Such a filter says what it reads:
``Filter(track=["src", "helo", "tx.mail_from"])``, or ``track="all"``.
"""

from __future__ import annotations

import difflib
import dis
import inspect
import types
from typing import Any, Callable, Iterable

#: The report events that set each session field (and the properties
#: computed from fields).  A filter that reads a field gets its events.
TX_EVENTS = frozenset(
    {"tx-begin", "tx-mail", "tx-rcpt", "tx-envelope", "tx-data", "tx-commit", "tx-reset", "filter-response"}
)
#: The transaction's parts (``session.tx.<name>``): the transaction itself
#: begins at tx-begin and is dropped at tx-reset; each part has its event.
_TX_LIFE = frozenset({"tx-begin", "tx-reset"})
TX_FIELD_EVENTS: dict[str, frozenset[str]] = {
    "msgid": _TX_LIFE,
    "mail_from": _TX_LIFE | {"tx-mail"},
    "mail_from_result": _TX_LIFE | {"tx-mail"},
    "rcpts": _TX_LIFE | {"tx-rcpt"},
    "accepted_rcpts": _TX_LIFE | {"tx-rcpt"},
    "envelopes": _TX_LIFE | {"tx-envelope"},
    "data_result": _TX_LIFE | {"tx-data"},
    "size": _TX_LIFE | {"tx-commit"},
    "junk": _TX_LIFE | {"filter-response"},
}
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
    "tx": TX_EVENTS,  # the whole transaction (given in track=); derived reads name its parts
    **{f"tx.{name}": events for name, events in TX_FIELD_EVENTS.items()},
    "messages": frozenset({"tx-commit"}),
    "junk": frozenset({"filter-response"}),
}

#: Session attributes no report event sets: fine to name in ``track``.
UNTRACKED_FIELDS = frozenset({"id", "subsystem", "data"})


#: Functions (by global name) and attributes that read attributes by
#: computed name: what they read cannot be told.
DYNAMIC_GLOBALS = frozenset({"getattr", "vars", "dir", "asdict", "astuple", "attrgetter"})
DYNAMIC_ATTRIBUTES = frozenset({"__dict__", "__getattribute__", "__slots__", "asdict", "astuple", "attrgetter"})

_ATTRIBUTE_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR", "DELETE_ATTR"})

#: How far calls are followed by name (handler -> helper -> its helper ...).
MAX_DEPTH = 6


class Unknown(Exception):
    """What the handlers read cannot be told."""


def check_fields(fields: Iterable[str]) -> frozenset[str]:
    """``fields`` as given to ``Filter(track=...)``; a name that is not a
    session field (a typo) is a ValueError that lists the ones there are."""
    if isinstance(fields, (str, bytes)):
        raise ValueError(f'track must be "all", None or a list of session fields, not {fields!r}')
    out = frozenset(fields)
    known = sorted(FIELD_EVENTS.keys() | UNTRACKED_FIELDS)
    unknown = sorted((name for name in out if name not in known), key=str)
    if unknown:
        guesses = [g for name in unknown if isinstance(name, str) for g in difflib.get_close_matches(name, known, 1)]
        raise ValueError(
            f"track: {', '.join(map(repr, unknown))} {'is not a session field' if len(unknown) == 1 else 'are not session fields'}"
            f"{' (did you mean ' + ', '.join(guesses) + '?)' if guesses else ''}; the fields are {', '.join(known)}"
        )
    return out


def events_for(fields: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for name in fields:
        out |= FIELD_EVENTS.get(name, frozenset())
    return out


def fields_read(handlers: Iterable[Callable[..., Any]]) -> set[str] | None:
    """The session fields (keys of ``FIELD_EVENTS``; the transaction as its
    parts, ``tx.mail_from``...) these handlers may read; None when that
    cannot be told (track everything)."""
    walker = _Walker()
    try:
        for fn in handlers:
            walker.function(fn, 0)
    except Unknown:
        return None
    fields = (walker.names & FIELD_EVENTS.keys()) - {"tx"}
    if "tx" in walker.names:
        fields |= {"tx.msgid"} | {f"tx.{name}" for name in walker.names & TX_FIELD_EVENTS.keys()}
    return fields


class _Walker:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self._seen: set[int] = set()
        self._classes: set[type] = set()

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
            ops = list(dis.get_instructions(c))
            attributes.update(i.argval for i in ops if i.opname in _ATTRIBUTE_OPS)
            named = _getattr_constants(ops)
            if named is None:
                raise Unknown(f"{code.co_name} reads attributes by computed name")
            attributes |= named
            stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        globals_used = names - attributes - {"getattr"}
        if globals_used & DYNAMIC_GLOBALS or attributes & DYNAMIC_ATTRIBUTES:
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
        if isinstance(obj, type):
            self._class(obj, depth)
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
            self._class(attr, depth)

    def _class(self, cls: type, depth: int) -> None:
        """A class the code refers to: every method of it may run on what
        the code hands it (a watcher's ``end()`` reads the session its
        constructor kept), so all of them are looked into."""
        for klass in cls.__mro__:
            if klass in self._classes or not _ours_to_read(klass):
                continue
            self._classes.add(klass)
            for attr in vars(klass).values():
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                elif isinstance(attr, property):
                    attr = attr.fget
                # (methods a decorator wrote, like dataclass's __getstate__, are not the class's own code)
                if isinstance(attr, types.FunctionType) and _ours_to_read(attr):
                    self.function(attr, depth + 1)


#: What may stand between ``getattr(`` and the attribute's name for the name
#: to count as written out: loading the object (``getattr(self.opts, "x")``).
_OBJECT_LOADS = frozenset(
    {"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW", "LOAD_DEREF", "LOAD_GLOBAL", "LOAD_NAME", "LOAD_ATTR", "PUSH_NULL",
     "EXTENDED_ARG"}
)
#: A default: one plain value (``getattr(x, "name", None)``).
_DEFAULT_LOADS = _OBJECT_LOADS | {"LOAD_CONST", "LOAD_SMALL_INT"}
_CALLS = frozenset({"PRECALL", "CALL", "CALL_FUNCTION"})


def _getattr_constants(ops: list[dis.Instruction]) -> set[str] | None:
    """The names ``getattr(obj, "name"[, default])`` calls in ``ops`` read;
    None if a ``getattr`` is used any other way (a computed name such as
    ``"x_" + kind``, or the function itself passed on)."""
    out: set[str] = set()
    for n, op in enumerate(ops):
        if op.argval != "getattr" or op.opname not in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF"):
            continue
        k = n + 1
        while k < len(ops) and ops[k].opname in _OBJECT_LOADS:
            k += 1
        name = ops[k] if n + 1 < k < len(ops) else None
        if name is None or name.opname != "LOAD_CONST" or not isinstance(name.argval, str):
            return None
        after = [o.opname for o in ops[k + 1 : k + 3]]
        if not (after[:1] and after[0] in _CALLS or len(after) == 2 and after[0] in _DEFAULT_LOADS and after[1] in _CALLS):
            return None
        out.add(name.argval)
    return out


def _ours_to_read(holder: types.ModuleType | type | types.FunctionType) -> bool:
    """Modules (classes, functions) of the standard library, builtins and
    the SDK read no session field: not worth walking."""
    module = holder.__name__ if isinstance(holder, types.ModuleType) else getattr(holder, "__module__", "") or ""
    return module.partition(".")[0] not in _SKIP_MODULES


_SKIP_MODULES = frozenset(
    {"builtins", "asyncio", "collections", "dataclasses", "enum", "functools", "typing", "os", "sys", "re", "time", "json",
     "logging", "socket", "ipaddress", "smtpd_filter_sdk"}
)
