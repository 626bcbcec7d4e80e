"""Footprints: what a pending step reads and writes, for the partial-order reduction.

A *location* names a piece of shared state: a primitive (or its name), a
string naming a plain attribute of the world (``"tlb"``), or a tuple that
names a part of one (``("tlb", 0)``, ``("EPT", pfn, index)``).  Locations
nest by prefix: ``("tlb",)`` covers ``("tlb", 0)``; the empty tuple covers
everything.  A footprint is a set of ``(location, mode)`` items, the mode
``"r"`` (reads), ``"w"`` (writes) or ``"s"`` (a *commuting* update: two of
them on the same location commute and neither disables the other, such as
two CPUs' ``read_lock`` of one rwlock).  Two footprints conflict when they
share a location (one a prefix of the other) and not both only read and not
both only commute.

``visible`` marks a step that may change what an invariant reads (see
:mod:`kvmmu.explorer.por`): visible steps conflict with each other, whatever
their locations.
"""
from __future__ import annotations

from .primitives import _Primitive

__all__ = [
    "Footprint", "conflict", "declared", "from_hook", "location", "writes_into", "EVERYTHING",
    "NOTHING", "READS_EVERYTHING",
]

_COVERS = {"w": frozenset("rws"), "s": frozenset("s"), "r": frozenset("r")}


class Footprint:
    """A set of ``(location, mode)`` items, plus the visibility flag."""

    __slots__ = ("items", "roots", "wild", "visible", "writes")

    def __init__(self, items=(), visible: bool = False):
        self.items = frozenset(items)
        self.roots = frozenset(loc[0] for loc, _ in self.items if loc)
        self.wild = any(not loc for loc, _ in self.items)
        self.visible = visible
        self.writes = any(m != "r" for _, m in self.items)

    def __eq__(self, other):
        return (type(other) is Footprint and self.items == other.items
                and self.visible == other.visible)

    def __hash__(self):
        return hash((self.items, self.visible))

    def __repr__(self):
        parts = sorted(f"{m}:{'/'.join(map(str, loc)) or '*'}" for loc, m in self.items)
        return f"<Footprint {' '.join(parts) or 'nothing'}{' visible' if self.visible else ''}>"

    def with_visible(self, visible: bool) -> "Footprint":
        if visible == self.visible:
            return self
        return Footprint(self.items, visible)

    def union(self, other: "Footprint") -> "Footprint":
        return Footprint(self.items | other.items, self.visible or other.visible)

    def covers(self, other: "Footprint") -> bool:
        """Whether every access of ``other`` is one this footprint allows."""
        if other.visible and not self.visible:
            return False
        for loc, mode in other.items:
            if (loc, mode) in self.items:
                continue
            if not any(_prefix(big, loc) and mode in _COVERS[m] for big, m in self.items):
                return False
        return True


def _prefix(a: tuple, b: tuple) -> bool:
    return len(a) <= len(b) and b[:len(a)] == a


def _overlap(a: tuple, b: tuple) -> bool:
    return _prefix(a, b) or _prefix(b, a)


def _check_footprint(name: str, fp) -> None:
    if type(fp) is not Footprint:
        raise TypeError(f"{name} must be a Footprint, got {type(fp).__name__}")


def _check_what(what) -> None:
    if not isinstance(what, str):
        raise TypeError(f"what must be a string (the label of messages), got {type(what).__name__}")


def conflict(a: Footprint, b: Footprint) -> bool:
    """Whether steps with footprints ``a`` and ``b`` may not commute."""
    if type(a) is not Footprint or type(b) is not Footprint:
        _check_footprint("a", a)
        _check_footprint("b", b)
    if a.visible and b.visible:
        return True
    if not (a.writes or b.writes):
        return False
    if not (a.wild or b.wild) and a.roots.isdisjoint(b.roots):
        return False
    for la, ma in a.items:
        for lb, mb in b.items:
            if ma == mb and ma != "w":
                continue            # read/read, commute/commute
            if _overlap(la, lb):
                return True
    return False


def writes_into(fp: Footprint, reads: Footprint) -> bool:
    """Whether ``fp`` writes (or updates) a location ``reads`` reads."""
    if type(fp) is not Footprint or type(reads) is not Footprint:
        _check_footprint("fp", fp)
        _check_footprint("reads", reads)
    for la, ma in fp.items:
        if ma == "r":
            continue
        for lb, _ in reads.items:
            if _overlap(la, lb):
                return True
    return False


def location(x, what: str) -> tuple:
    """A location as a tuple whose first element is a name (see the module docstring)."""
    _check_what(what)
    if isinstance(x, _Primitive):
        return (x.name,)
    if isinstance(x, str):
        if not x:
            raise ValueError(f"{what}: a location name must not be empty")
        return (x,)
    if isinstance(x, tuple) and x:
        head = x[0]
        if isinstance(head, _Primitive):
            head = head.name
        if not isinstance(head, str) or not head:
            raise TypeError(f"{what}: a location tuple starts with a primitive or a name, "
                            f"got {x!r}")
        try:
            hash(x[1:])
        except TypeError:
            raise TypeError(f"{what}: the parts of a location must be hashable, got {x!r}") \
                from None
        return (head,) + tuple(x[1:])
    raise TypeError(f"{what}: a location is a primitive, a name or a tuple starting with one, "
                    f"got {type(x).__name__} {x!r}")


def _locations(xs, what: str):
    # One location (a name or a primitive), or a collection of them; a tuple
    # is a collection: write a tuple location inside a list, [("tlb", 0)].
    if isinstance(xs, (str, _Primitive)):
        xs = [xs]
    try:
        items = list(xs)
    except TypeError:
        raise TypeError(f"{what} must be a location or an iterable of locations, "
                        f"got {type(xs).__name__}") from None
    return [location(x, what) for x in items]


def declared(reads=None, writes=None, what: str = "footprint") -> Footprint | None:
    """The footprint of a step declaring ``reads`` and ``writes`` (None if neither is given)."""
    _check_what(what)
    if reads is None and writes is None:
        return None
    items = [(loc, "r") for loc in _locations(reads or (), f"{what} reads")]
    items += [(loc, "w") for loc in _locations(writes or (), f"{what} writes")]
    return Footprint(items)


def from_hook(value, what: str) -> Footprint:
    """A custom primitive's ``_footprint`` answer: None (everything) or ``(reads, writes)``."""
    _check_what(what)
    if value is None:
        return EVERYTHING
    if isinstance(value, Footprint):
        return value
    if not (isinstance(value, tuple) and len(value) == 2):
        raise TypeError(f"{what} must return None or a (reads, writes) pair of location "
                        f"lists, got {value!r}")
    return declared(value[0] or (), value[1] or (), what)


#: Touches nothing shared (a bare ``yield``).
NOTHING = Footprint()
#: May read and write anything: the default for what declares nothing.
EVERYTHING = Footprint([((), "w")])
#: Reads anything, writes nothing (a ``wait_until`` predicate that declares nothing).
READS_EVERYTHING = Footprint([((), "r")])
