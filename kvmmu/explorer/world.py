"""The World (the shared state of a scenario) and the free-form steps ``step``/``wait_until``.

A World registers the primitives it owns and may hold plain attributes; it
knows how to show itself (``snapshot``/``describe``), how to key itself for the
search (``_key``) and how to save and restore itself in place for the snapshot
engine (``_save``/``_load``, with ``_nested_ids`` naming the objects a restore
would replace).  ``step(label, fn)`` is any action the model treats as
indivisible; ``wait_until(label, pred)`` a wait the model does not spin through.

Simplifies: everything an actor does between two ``yield``s happens
atomically with the step before.
"""
from __future__ import annotations

import copy
import operator
import types
from enum import Enum
from typing import Any, Callable

from .footprint import declared
from .freeze import _freeze
from .locks import Mutex, RWLock, SpinLock
from .ops import Op
from .primitives import Word, _Primitive
from .rcu import RCU, SRCU

__all__ = ["World", "step", "wait_until"]

_BUILTIN_PRIMITIVES = frozenset({Word, SpinLock, Mutex, RWLock, SRCU, RCU})

_WORLD_INTERNALS = frozenset({"_prims", "_prim_names", "_refs", "_fast"})


class World:
    """The shared state of a scenario: primitives plus any plain attributes.

    Subclass it, call ``super().__init__()`` and create the shared objects
    with ``self.word(...)``, ``self.rwlock(...)`` and friends.  Plain
    attributes (``self.tlb = {}``) are shared state too: by default
    ``snapshot_extra()`` returns all of them, so they are part of the state
    key and of the table; override it to show a summary instead.
    """

    def __init__(self):
        self._prims = []
        self._prim_names = {}

    def _freeze_key(self):
        # In a key the world is a mark: its contents are the key's world part.
        return ("world",)

    def _register(self, prim):
        if prim.name in self._prim_names:
            raise ValueError(f"a shared object named {prim.name!r} already exists in this world")
        self._prim_names[prim.name] = prim
        self._prims.append(prim)
        return prim

    def word(self, name: str, value: int = 0) -> Word:
        """Create a shared 64-bit slot named ``name`` holding ``value``."""
        return self._register(Word(self, name, value))

    def spinlock(self, name: str) -> SpinLock:
        """Create a spinlock named ``name`` (free)."""
        return self._register(SpinLock(self, name))

    def mutex(self, name: str) -> Mutex:
        """Create a mutex named ``name`` (free)."""
        return self._register(Mutex(self, name))

    def rwlock(self, name: str) -> RWLock:
        """Create a reader-writer lock named ``name`` (free)."""
        return self._register(RWLock(self, name))

    def srcu_domain(self, name: str) -> SRCU:
        """Create an SRCU domain named ``name`` (no readers)."""
        return self._register(SRCU(self, name))

    def rcu_domain(self, name: str = "rcu") -> RCU:
        """Create an RCU domain (no readers)."""
        return self._register(RCU(self, name))

    def primitive(self, name: str):
        """Return the shared object called ``name``."""
        try:
            return self._prim_names[name]
        except KeyError:
            raise ValueError(
                f"no shared object named {name!r}; the world has {', '.join(self._prim_names)}"
            ) from None

    def describe(self, name: str, value) -> str:
        """Render one shared value for tables (override: hex SPTEs, names)."""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value) if -1024 < value < 1024 else hex(value)
        return _text(value)

    def snapshot_extra(self):
        """Shared state outside the primitives: a dict name -> value, or any value.

        The default returns every plain attribute of the world (attributes
        that only hold primitives, such as a list of Words, are left out: they
        are references, not state).  An override is frozen into the state key
        instead of the attributes, so it must cover all shared state the
        actors can change.
        """
        return {k: v for k, v in vars(self).items()
                if k not in _WORLD_INTERNALS and not _only_primitives(v)}

    def __setattr__(self, name, value):
        # Binding any attribute after _seal() ends the no-extras fast path.
        object.__setattr__(self, name, value)
        if name not in _WORLD_INTERNALS:
            object.__setattr__(self, "_fast", False)

    def _extras(self) -> dict:
        d = vars(self)
        refs = d.get("_refs") or {}
        if d.get("_fast"):
            # Sealed without plain attributes and nothing bound since: only the
            # lists of primitives could have changed (in place).
            for v, items in refs.values():
                if not _same_refs(v, items):
                    break
            else:
                return {}
        out = {}
        for k, v in vars(self).items():
            if k in _WORLD_INTERNALS or isinstance(v, _Primitive):
                continue
            r = refs.get(k)
            if r is not None and r[0] is v and _same_refs(v, r[1]):
                continue            # still the same list of primitives: not state
            out[k] = v
        return out

    def _seal(self):
        """Note the attributes that only hold primitives (lists of Words...).

        The explorer calls this on a fresh world; while such an attribute still
        holds exactly the same primitives it is left out of keys and saves.
        """
        refs = {}
        for k, v in vars(self).items():
            if (k not in _WORLD_INTERNALS and not isinstance(v, _Primitive)
                    and isinstance(v, (list, tuple, dict)) and _only_primitives(v)):
                refs[k] = (v, _ref_items(v))
        self._refs = refs
        self._fast = False
        self._fast = not self._extras()

    def snapshot(self) -> dict:
        """The shared state as readable text: name -> value."""
        out = {p.name: p._show() for p in self._prims}
        extra = self.snapshot_extra()
        if isinstance(extra, dict):
            for k, v in extra.items():
                out[str(k)] = self.describe(str(k), v)
        elif extra is not None:
            out["extra"] = _text(extra)
        return out

    def _key(self):
        return (tuple([p._state() for p in self._prims]), self._extras_key())

    def _extras_key(self):
        """The part of the key outside the primitives (see ``snapshot_extra``)."""
        # The default snapshot_extra is frozen straight from the attributes
        # (a list of primitives freezes to their names: constant, harmless).
        if type(self).snapshot_extra is World.snapshot_extra:
            return _freeze(self._extras())
        return _freeze(self.snapshot_extra())

    def _save_extras(self):
        """Copies of the plain attributes (None if there are none), for ``_load_extras``."""
        extras = self._extras()
        if not extras:
            return None
        return {k: self._copy_value(v) for k, v in extras.items()}

    def _save(self):
        """Everything needed to put this world back as it is now (for explore)."""
        extras = self._extras()
        if extras:
            extras = {k: self._copy_value(v) for k, v in extras.items()}
        return (tuple([p._state() for p in self._prims]), extras or None)

    def _copy_value(self, v):
        # Immutable values are shared; flat containers of immutable values are
        # copied shallowly; anything else deeply (the world and its primitives
        # excepted: they are never copied).
        if _immutable(v):
            return v
        t = type(v)
        if (t is dict and all(_immutable(k) and _immutable(x) for k, x in v.items())) or \
                ((t is list or t is set) and all(_immutable(x) for x in v)):
            return t(v)
        return copy.deepcopy(v, self._copy_memo())

    def _load(self, saved):
        """Put the world back to a state ``_save()`` returned, keeping object identities."""
        states, extras = saved
        for p, st in zip(self._prims, states):
            p._load(st)
        self._load_extras(extras)

    def _load_extras(self, extras):
        """Put the plain attributes back as ``_save_extras()`` (or ``_save()``) saved them."""
        current = self._extras()
        if extras is None:
            extras = {}
        else:
            extras = {k: self._copy_value(v) for k, v in extras.items()}
        for k in current:
            if k not in extras:
                delattr(self, k)
        for k, v in extras.items():
            cur = current.get(k)
            # Refill containers in place, so references actors hold stay valid.
            if type(cur) is dict and type(v) is dict:
                cur.clear()
                cur.update(v)
            elif type(cur) is list and type(v) is list:
                cur[:] = v
            elif type(cur) is set and type(v) is set:
                cur.clear()
                cur.update(v)
            else:
                setattr(self, k, v)

    def _nested_ids(self) -> set:
        """Ids of the mutable objects a ``_load`` replaces by copies.

        Those are everything below the plain attributes (an attribute holding
        a dict, list or set is refilled in place and keeps its identity, its
        contents do not) and whatever custom primitives hold.  An actor that
        keeps one of these across a step would, after a restore, work on a
        copy the world no longer holds: the snapshot engine checks for it.
        """
        extras = self._extras()
        if not extras and all(_sealed(p) for p in self._prims):
            return set()
        todo = []
        for v in extras.values():
            if type(v) in (dict, list, set):
                todo.extend(v.items() if type(v) is dict else v)
            else:
                todo.append(v)
        for p in self._prims:
            if not _sealed(p):
                todo.extend(_children(p))
        ids, kept = set(), set()
        memo = None
        while todo:
            x = todo.pop()
            if _immutable_scalar(x) or x is self or isinstance(x, (_Primitive, type)):
                continue
            if id(x) in ids or id(x) in kept:
                continue
            if getattr(type(x), "__deepcopy__", None) is not None:
                # A handle whose deepcopy is itself (and everything only it
                # reaches) survives a restore unchanged.
                memo = memo if memo is not None else self._copy_memo()
                if copy.deepcopy(x, memo) is x:
                    kept.add(id(x))
                    continue
            if not _value_like(x):
                ids.add(id(x))
            todo.extend(_children(x))
        return ids

    def _copy_memo(self) -> dict:
        # deepcopy must not copy the world or its primitives: map them to themselves.
        memo = {id(self): self}
        for p in self._prims:
            memo[id(p)] = p
        return memo


def _sealed(p) -> bool:
    # A built-in primitive, or a custom one that declares ``_sealed = True``:
    # its ``_load`` restores it in place and no actor ever holds an object
    # from inside it, so a restore cannot leave an actor with a stale copy.
    return type(p) in _BUILTIN_PRIMITIVES or getattr(type(p), "_sealed", False)


def _immutable_scalar(x) -> bool:
    t = type(x)
    return t is int or t is str or t is bool or x is None or t is float or t is bytes \
        or t is range or isinstance(x, (types.FunctionType, types.BuiltinFunctionType,
                                        types.ModuleType, Enum))


def _value_like(x) -> bool:
    # Objects that cannot change: sharing one with the world is harmless.
    if isinstance(x, (tuple, frozenset, Enum)):
        return True
    params = getattr(type(x), "__dataclass_params__", None)
    return params is not None and params.frozen


def _children(x) -> list:
    """The objects ``x`` refers to as data (for the alias check)."""
    t = type(x)
    if t is dict:
        out = []
        for k, v in x.items():
            out.append(k)
            out.append(v)
        return out
    if t in (list, tuple, set, frozenset):
        return list(x)
    out = []
    d = getattr(x, "__dict__", None)
    if d is not None:
        out.extend(d.values())
    for klass in t.__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and slot != "world" and hasattr(x, slot):
                out.append(getattr(x, slot))
    return out


def _ref_items(v) -> tuple:
    return tuple(v.items()) if isinstance(v, dict) else tuple(v)


def _same_refs(v, items) -> bool:
    if type(v) is dict:
        now = tuple(v.items())
        return len(now) == len(items) and all(
            k == k2 and x is y for (k, x), (k2, y) in zip(now, items))
    return len(v) == len(items) and all(map(operator.is_, v, items))


def _only_primitives(v) -> bool:
    # Attributes holding primitives (or lists of them) are references, not state.
    if isinstance(v, _Primitive):
        return True
    if isinstance(v, (list, tuple)) and v:
        return all(_only_primitives(x) for x in v)
    if isinstance(v, dict) and v:
        return all(_only_primitives(x) for x in v.values())
    return False


def _step_run(prim, args, cpu, world):
    fn = args[1]
    return None if fn is None else fn()


def _wait_enabled(prim, args, cpu, world):
    return bool(args[1](world))


def _noop(prim, args, cpu, world):
    return None


def step(label: str, fn: Callable[[], Any] | None = None, *, reads=None, writes=None):
    """One indivisible step labelled ``label`` that runs ``fn()``; returns its result.

    ``reads``/``writes`` (optional) declare the shared state ``fn`` reads and
    writes, as locations (a primitive, the name of a world attribute, or a
    tuple naming a part of one: see :mod:`kvmmu.explorer.footprint`), so
    that the partial-order reduction may treat the step as independent of
    steps touching other locations.  Declare nothing and the step conflicts
    with every other step; declare one of the two and the other is empty.
    """
    if not isinstance(label, str) or not label:
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    if fn is not None and not callable(fn):
        raise TypeError(f"fn must be callable or None, got {type(fn).__name__}")
    fp = declared(reads, writes, f"step {label!r}")
    return (yield Op(None, "step", (label, fn), _step_run, None, fp))


def wait_until(label: str, predicate: Callable[["World"], bool], *, reads=None):
    """A step that can only happen once ``predicate(world)`` is true (blocks till then).

    ``reads`` (optional) declares the locations the predicate reads (see
    :func:`step`); by default it may read anything.
    """
    if not isinstance(label, str) or not label:
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    if not callable(predicate):
        raise TypeError(f"predicate must be callable, got {type(predicate).__name__}")
    fp = None if reads is None else declared(reads, (), f"wait_until {label!r}")
    return (yield Op(None, "wait", (label, predicate), _noop, _wait_enabled, fp))


def _text(v) -> str:
    """repr(), but sets print sorted: table text must not depend on hash order."""
    t = type(v)
    if t is set or t is frozenset:
        inner = ", ".join(sorted(_text(x) for x in v))
        if not inner:
            return f"{t.__name__}()"
        return "{" + inner + "}" if t is set else "frozenset({" + inner + "})"
    if t is list:
        return "[" + ", ".join(_text(x) for x in v) + "]"
    if t is tuple:
        return "(" + ", ".join(_text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if t is dict:
        return "{" + ", ".join(f"{_text(k)}: {_text(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _immutable(v) -> bool:
    t = type(v)
    if t is int or t is str or t is bool or v is None or t is float or t is bytes:
        return True
    return t is tuple and all(_immutable(x) for x in v)
