"""Freezing values into hashable, ``id()``-free state keys.

ints and strings stay themselves, containers are frozen element by element
(dicts in insertion order, sets as frozensets), functions by code and closure
contents, plain objects by class and attributes, iterators by their pickling
state; the world and its primitives become their names (their contents are in
the world's part of the key); generators are keyed by their frames
(:mod:`kvmmu.explorer.frames`).  While ``_COLLECT`` is a list, every mutable
object met is appended to it (the snapshot engine's alias check).
"""
from __future__ import annotations

import types
from dataclasses import fields, is_dataclass
from enum import Enum
from functools import partial

__all__ = []

_ITER_TYPES = frozenset(type(x) for x in (
    iter([]), iter(()), iter(range(1)), iter(""), iter({}), iter({}.values()),
    iter({}.items()), iter(set()), reversed([]), reversed(range(1)),
    enumerate(()), zip(), map(abs, ()), filter(None, ()),
))

_FREEZE: dict = {}
_ACTIVE: set = set()   # ids of containers being frozen: cycle guard only, never in a key


def _freeze(x):
    t = type(x)
    if t is int or t is str or x is None:
        return x
    f = _FREEZE.get(t)
    if f is None:
        f = _freezer_for(t)
        _FREEZE[t] = f
    return f(x)


_COLLECT: list | None = None   # when a list: mutable objects met while freezing (alias check)


def _guarded(inner):
    def f(x):
        i = id(x)
        if i in _ACTIVE:
            return ("cycle",)
        if _COLLECT is not None:
            _COLLECT.append(x)
        _ACTIVE.add(i)
        try:
            return inner(x)
        finally:
            _ACTIVE.discard(i)
    return f


def _freeze_cell(c):
    try:
        return ("cell", _freeze(c.cell_contents))
    except ValueError:
        return ("cell",)


def _freeze_function(fn):
    code = fn.__code__
    return ("fn", code.co_qualname, code.co_firstlineno, _freeze(fn.__defaults__),
            _freeze(fn.__kwdefaults__),
            tuple(_freeze_cell(c) for c in fn.__closure__) if fn.__closure__ else ())


def _freeze_builtin(fn):
    owner = fn.__self__
    if owner is None or isinstance(owner, types.ModuleType):
        return ("builtin", getattr(owner, "__name__", ""), fn.__qualname__)
    return ("builtin", _freeze(owner), fn.__qualname__)


def _freeze_object(x):
    state = {}
    if hasattr(x, "__dict__"):
        state.update(vars(x))
    for klass in type(x).__mro__:
        for s in getattr(klass, "__slots__", ()):
            if s not in ("__dict__", "__weakref__") and hasattr(x, s):
                state[s] = getattr(x, s)
    return ("obj", _type_name(type(x)), _freeze(state))


def _type_name(t) -> str:
    return f"{t.__module__}.{t.__qualname__}"


#: Freezers the modules above this one register for their own types
#: (generators: :mod:`kvmmu.explorer.frames`), so that this module imports
#: none of them.
_TYPE_FREEZERS: dict = {}


def _freezer_for(t):
    own = _TYPE_FREEZERS.get(t)
    if own is not None:
        return own
    if t is bool:
        return lambda x: ("bool", x)
    if t is float:
        return lambda x: ("float", x)
    if t is bytes:
        return lambda x: ("bytes", x)
    if t is tuple:
        return lambda x: ("tuple",) + tuple(map(_freeze, x))
    if t is list:
        return _guarded(lambda x: ("list",) + tuple(map(_freeze, x)))
    if t is dict:
        return _guarded(lambda x: ("dict",) + tuple((_freeze(k), _freeze(v)) for k, v in x.items()))
    if t is set or t is frozenset:
        tag = t.__name__
        return _guarded(lambda x: (tag, frozenset(map(_freeze, x))))
    if t is range:
        return lambda x: ("range", x.start, x.stop, x.step)
    if t is types.FunctionType:
        return _guarded(_freeze_function)
    if t is types.CellType:
        return _freeze_cell
    if t is types.MethodType:
        return lambda x: ("method", _freeze(x.__self__), x.__func__.__qualname__)
    if t is types.BuiltinFunctionType or t is types.BuiltinMethodType:
        return _freeze_builtin
    if t is partial:
        return lambda x: ("partial", _freeze(x.func), _freeze(x.args), _freeze(x.keywords))
    if t is type or issubclass(t, type):
        return lambda x: ("type", _type_name(x))
    if t is types.ModuleType:
        return lambda x: ("module", x.__name__)
    if t in _ITER_TYPES:
        name = t.__name__
        if name in ("range_iterator", "list_iterator", "tuple_iterator"):
            # __reduce__ is (iter, (sequence,), position): the common loops, fast.
            def it(x):
                r = x.__reduce__()
                return ("iter", name, _freeze(r[1][0]) if r[1] else None, r[2] if len(r) > 2 else 0)
            # A range iterator holds only numbers: nothing to guard or to check for aliases.
            return it if name == "range_iterator" else _guarded(it)
        return _guarded(lambda x: ("iter", name, _freeze(x.__reduce__())))
    keyed = getattr(t, "_freeze_key", None)
    if keyed is not None:
        # The world ("world"), a primitive (its name), an Op (its key): their
        # classes say how they enter a key (their contents are elsewhere in it).
        return keyed
    if issubclass(t, Enum):
        return lambda x: ("enum", _type_name(type(x)), x.name)
    if issubclass(t, BaseException):
        return lambda x: ("exc", _type_name(type(x)), _freeze(x.args))
    if is_dataclass(t):
        names = tuple(f.name for f in fields(t))
        tname = _type_name(t)
        return _guarded(lambda x: ("dc", tname) + tuple(_freeze(getattr(x, n)) for n in names))
    if issubclass(t, tuple):
        return lambda x: ("tuple", _type_name(type(x))) + tuple(map(_freeze, x))
    if issubclass(t, (list, dict, set, frozenset)):
        base = next(b for b in (list, dict, set, frozenset) if issubclass(t, b))
        inner = _freezer_for(base)
        return lambda x: ("sub", _type_name(type(x)), inner(x))
    if t.__hash__ is not None and t.__eq__ is not object.__eq__:
        # A value type (Fraction, Decimal, ...): its own equality is value equality.
        return lambda x: ("val", _type_name(type(x)), x)
    if hasattr(t, "__dict__") or any(getattr(k, "__slots__", ()) for k in t.__mro__):
        return _guarded(_freeze_object)

    def refuse(x):
        raise TypeError(
            f"kvmmu.explorer cannot turn a {_type_name(type(x))} into a state key; keep actor "
            "locals and world attributes to numbers, strings, containers and plain objects")
    return refuse
