"""The base of every shared object, and ``Word``: a 64-bit slot such as an SPTE.

``Word.read``/``write`` are ``READ_ONCE``/``WRITE_ONCE``; ``xchg`` returns the
old value; ``try_cmpxchg(expected, new)`` is ``try_cmpxchg64(ptr, &old, new)``
and returns ``(ok, current)``: on failure ``current`` is the value found.
Custom primitives (chapters 3 and 5) subclass ``_Primitive`` / ``Primitive``.

Models: include/linux/atomic/atomic-instrumented.h: try_cmpxchg64(), xchg()
Models: include/asm-generic/rwonce.h: READ_ONCE(), WRITE_ONCE()

Simplifies: memory is sequentially consistent (no store buffers, no
reordering, no barriers); each access is one step.
"""
from __future__ import annotations

from ..checks import check_u64
from .ops import Op, _Diverged

__all__ = ["Primitive", "Word"]

_U64_MAX = (1 << 64) - 1     # checked inline first: actors step these methods very often


class _Primitive:
    """A shared object registered with a World; its state is part of every key."""

    __slots__ = ("world", "name")

    def __init__(self, world, name: str):
        # ``world`` is a World (not imported here: the world module builds on this one).
        if not callable(getattr(world, "_register", None)):
            raise TypeError(f"world must be a kvmmu.explorer.World, got {world!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.world = world
        self.name = name

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}: {self._show()}>"

    def _freeze_key(self):
        # In a key a primitive is its name: its state is in the world's part.
        return ("prim", self.name)

    def _load(self, st):
        # A primitive that cannot be put back: explore() replays instead.
        raise _Diverged(f"{type(self).__name__} {self.name!r} has no _load(), so worlds "
                        "holding it cannot be restored")

    def _footprint(self, kind, args):
        """What the pending step ``kind(*args)`` reads and writes, for the reduction.

        Return None (the default: it may touch anything, so it conflicts with
        every other step) or a pair ``(reads, writes)`` of location lists: a
        location is this primitive (or any other), a world attribute's name,
        or a tuple naming a part of one, such as ``(self, pfn, index)`` for
        one entry (see :mod:`kvmmu.explorer.footprint`).  It must cover what
        the step's ``run`` and ``enabled`` functions read and write.  A
        subclass may also define ``_enablers(kind, args, cpu)``: the letters
        of the CPUs one of which must step before a blocked step can run
        (None: anyone), which lets the reduction leave a blocked CPU alone.
        """
        return None

    #: Locations of parts of this primitive's state, by field: the code an
    #: actor runs between two steps is watched field by field, and what it
    #: touched joins the step's footprint under these names (a field not
    #: listed: the whole primitive).  Values are location suffixes, tuples.
    _field_locations: dict = {}

    def _field_location(self, field: str) -> tuple:
        """The location of this primitive's field ``field`` (see ``_field_locations``)."""
        suffix = self._field_locations.get(field)
        return (self.name,) if suffix is None else (self.name,) + suffix


#: The public name for building a custom primitive (the model does, for its
#: EPT memory, TLBs, host memory, memslots...): subclass it, register the
#: instance with ``World._register``, and give it ``_state()`` (a hashable
#: snapshot), ``_load(state)`` (restore in place) and ``_show()`` (readable
#: text); for the partial-order reduction, optionally ``_footprint(kind,
#: args)``.  A primitive that sets the class attribute ``_sealed = True``
#: promises that no actor ever keeps an object from inside it across a step
#: (actors keep ints, tuples and handles), which spares the snapshot engine
#: from walking its contents when it checks actors for stale references.
Primitive = _Primitive


class Word(_Primitive):
    """A shared 64-bit slot (an SPTE, a counter, a pointer).

    Invariants and final checks read ``.value`` directly; actors must use the
    yielding methods, so that every access is a step.
    """

    __slots__ = ("value",)

    def __init__(self, world, name, value=0):
        super().__init__(world, name)
        self.value = check_u64(f"initial value of {name}", value)

    def _state(self):
        return self.value

    def _load(self, st):
        self.value = st

    def _show(self):
        return self.world.describe(self.name, self.value)

    def _d(self, v):
        return self.world.describe(self.name, v)

    # Each method yields one Op; the runner performs it when the actor is scheduled.
    def read(self):
        """Read the slot atomically (one step) and return its value.

        Models: include/asm-generic/rwonce.h: READ_ONCE()
        """
        return (yield Op(self, "read", (), _word_read))

    def write(self, value):
        """Store ``value`` in the slot atomically (one step).

        Models: include/asm-generic/rwonce.h: WRITE_ONCE()
        """
        if type(value) is not int or not 0 <= value <= _U64_MAX:
            check_u64("value", value)
        return (yield Op(self, "write", (value,), _word_write))

    def xchg(self, value):
        """Store ``value`` and return the old value, atomically (one step).

        Models: include/linux/atomic/atomic-instrumented.h: xchg()
        """
        if type(value) is not int or not 0 <= value <= _U64_MAX:
            check_u64("value", value)
        return (yield Op(self, "xchg", (value,), _word_xchg))

    def try_cmpxchg(self, expected, new):
        """Store ``new`` if the slot holds ``expected``; return ``(ok, current)``.

        On success ``current`` is ``expected``; on failure it is the value
        found, as ``try_cmpxchg64`` writes it back into the caller's ``old``.

        Models: include/linux/atomic/atomic-instrumented.h: try_cmpxchg64()
        """
        if type(expected) is not int or not 0 <= expected <= _U64_MAX:
            check_u64("expected", expected)
        if type(new) is not int or not 0 <= new <= _U64_MAX:
            check_u64("new", new)
        return (yield Op(self, "try_cmpxchg", (expected, new), _word_cmpxchg))

    def _what(self, kind, args):
        if kind == "read":
            return f"read {self.name}"
        if kind == "try_cmpxchg":
            return f"try_cmpxchg {self.name} {self._d(args[0])} -> {self._d(args[1])}"
        return f"{kind} {self.name} = {self._d(args[0])}"

    def _label(self, kind, args, result, cpu):
        if kind == "read":
            return f"read {self.name} = {self._d(result)}"
        if kind == "write":
            return f"write {self.name} = {self._d(args[0])}"
        if kind == "xchg":
            return f"xchg {self.name} = {self._d(args[0])}, old {self._d(result)}"
        ok, cur = result
        head = f"try_cmpxchg {self.name} {self._d(args[0])} -> {self._d(args[1])}"
        return f"{head}: ok" if ok else f"{head}: fails, found {self._d(cur)}"

    def _why_blocked(self, kind, args, cpu):  # pragma: no cover - words never block
        return "never blocks"


def _word_read(w, args, cpu, world):
    return w.value


def _word_write(w, args, cpu, world):
    w.value = args[0]


def _word_xchg(w, args, cpu, world):
    old = w.value
    w.value = args[0]
    return old


def _word_cmpxchg(w, args, cpu, world):
    cur = w.value
    if cur == args[0]:
        w.value = args[1]
        return (True, cur)
    return (False, cur)
