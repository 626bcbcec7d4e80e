"""Watching an actor between two steps: does it read or write shared state there?

The memo engine (:mod:`kvmmu.explorer.memo`) runs an actor's code between
two ``yield``s once per local state and value received, and reuses the
outcome in every other world; that is right only if this code does not look
at the world.  While it runs, the world and its primitives are switched to
watching subclasses (``__class__`` assignment, undone afterwards) that note
every read or write of their state: a plain attribute of the world (not one
that only holds primitives), a field of a primitive (``Word.value``, a lock's
holder...).  Not state: a primitive's ``name`` and ``world``, a field that
holds another primitive (a file's ``invalidate_lock``: a reference), and the
fields a primitive class lists in ``_fixed_fields`` (configuration set when
it was built and left out of its ``_state()``, such as the EPT's SPTE
masks).  Methods are not state either: what they read through ``self`` is
seen in turn.
"""
from __future__ import annotations

from .primitives import _Primitive
from .world import _WORLD_INTERNALS, _only_primitives

__all__ = []

_SEEN: list = []       # what the code being watched touched: (verb, "world" | primitive, name)
_CLASSES: dict = {}    # original class -> watching subclass (None: cannot be watched)
_REFERENCE_FIELDS = frozenset({"name", "world", "__dict__", "__weakref__"})


def _world_fields_read(self, name):
    d = object.__getattribute__(self, "__dict__")
    if name in d:
        if name not in _WORLD_INTERNALS and not _only_primitives(d[name]):
            _SEEN.append(("reads", "world", name))


def _watch_world_class(cls):
    def __getattribute__(self, name):
        _world_fields_read(self, name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name, value):
        # A property (kvm.mmu_invalidate_seq) stores into a primitive: its
        # setter's accesses are seen in turn.
        if not isinstance(getattr(cls, name, None), property):
            _SEEN.append(("writes", "world", name))
        cls.__setattr__(self, name, value)

    def __delattr__(self, name):
        _SEEN.append(("deletes", "world", name))
        cls.__delattr__(self, name)
    return type(cls.__name__, (cls,), {"__slots__": (), "__getattribute__": __getattribute__,
                                       "__setattr__": __setattr__, "__delattr__": __delattr__,
                                       "__module__": cls.__module__})


def _fixed_fields(cls) -> frozenset:
    """Fields a primitive class declares fixed (``_fixed_fields``), over its MRO."""
    names = set(_REFERENCE_FIELDS)
    for klass in cls.__mro__:
        names.update(klass.__dict__.get("_fixed_fields", ()))
    return frozenset(names)


def _state_fields(cls) -> frozenset:
    names = set()
    for klass in cls.__mro__:
        for s in getattr(klass, "__slots__", ()):
            if isinstance(s, str):
                names.add(s)
    return frozenset(names - _fixed_fields(cls))


def _watch_prim_class(cls):
    fields = _state_fields(cls)
    fixed = _fixed_fields(cls)
    has_dict = hasattr(cls, "__dictoffset__") and cls.__dictoffset__ != 0

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if name in fields:
            if not isinstance(value, _Primitive):
                _SEEN.append(("reads", object.__getattribute__(self, "name"), name))
        elif has_dict and name not in fixed:
            d = object.__getattribute__(self, "__dict__")
            if name in d and not isinstance(value, _Primitive):
                _SEEN.append(("reads", object.__getattribute__(self, "name"), name))
        return value

    def __setattr__(self, name, value):
        _SEEN.append(("writes", object.__getattribute__(self, "name"), name))
        cls.__setattr__(self, name, value)
    return type(cls.__name__, (cls,), {"__slots__": (), "__getattribute__": __getattribute__,
                                       "__setattr__": __setattr__,
                                       "__module__": cls.__module__})


def _watcher(obj):
    cls = type(obj)
    w = _CLASSES.get(cls, False)
    if w is False:
        try:
            w = _watch_prim_class(cls) if isinstance(obj, _Primitive) else _watch_world_class(cls)
        except TypeError:       # a class that cannot be subclassed
            w = None
        _CLASSES[cls] = w
    return w


class _Watch:
    """Switch ``world`` and ``prims`` to watching classes; ``stop()`` switches back.

    ``ok`` is False when some object cannot be watched (its class cannot be
    subclassed or its layout refuses ``__class__`` assignment): the caller
    then cannot trust what it did not see.  ``start()`` watches again (the
    plan of which class goes where is made once).
    """

    __slots__ = ("plan", "ok")

    def __init__(self, world, prims):
        self.plan = []
        self.ok = True
        for obj in (world, *prims):
            w = _watcher(obj)
            if w is None:
                self.ok = False
                continue
            cls = type(obj)
            try:
                object.__setattr__(obj, "__class__", w)
                object.__setattr__(obj, "__class__", cls)
            except TypeError:
                self.ok = False
                continue
            self.plan.append((obj, cls, w))
        self.start()

    def start(self):
        del _SEEN[:]
        for obj, _cls, w in self.plan:
            object.__setattr__(obj, "__class__", w)

    def stop(self) -> list:
        """Switch back; return what was touched, as ``(verb, "world" or primitive name, name)``."""
        for obj, cls, _w in self.plan:
            object.__setattr__(obj, "__class__", cls)
        if not _SEEN:
            return []
        seen = list(_SEEN)
        del _SEEN[:]
        return seen
