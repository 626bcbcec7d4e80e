"""Partial-order reduction: which actors must be tried in a state, and which may wait.

The argument is in the package docstring (:mod:`kvmmu.explorer`); this module
holds its pieces:

- ``_op_footprint``: what a pending step touches.  The built-in primitives
  know theirs (keyed by the function that performs the step, so a subclass
  that replaces a step gets no borrowed footprint); a custom primitive may
  answer ``_footprint(kind, args)``; ``step``/``wait_until`` may declare
  ``reads``/``writes``; everything else touches everything.
- ``enablers``: for a blocked step, the actors at least one of which must
  step before it can be enabled (the holder of a spinlock, ...), or None
  when that is not known.
- ``_Reducer``: the actors' lifetime footprints (learned during the search),
  the visibility of steps to the invariants, and ``ample(...)``: the
  stubborn set of a state.
"""
from __future__ import annotations

from .footprint import (EVERYTHING, NOTHING, READS_EVERYTHING, Footprint, conflict, declared,
                        from_hook, writes_into)
from .locks import (Mutex, RWLock, SpinLock, _lock_free, _lock_release, _lock_take,
                    _rw_no_writer, _rw_read_lock, _rw_read_unlock, _rw_unheld, _rw_write_lock,
                    _rw_write_unlock)
from .primitives import Word, _Primitive, _word_cmpxchg, _word_read, _word_write, _word_xchg
from .rcu import (RCU, SRCU, _srcu_read_lock, _srcu_read_unlock, _srcu_sync_begin,
                  _srcu_sync_done, _srcu_sync_end)
from .world import _noop, _wait_enabled

__all__ = []

#: How each built-in step touches its own primitive: "r" reads, "w" writes,
#: "s" commutes with the other "s" steps of the same primitive (two CPUs'
#: read_lock of one rwlock or srcu domain: the holders are a sorted tuple and
#: neither step can block).
_RUN_MODES = {
    _word_read: "r", _word_write: "w", _word_xchg: "w", _word_cmpxchg: "w",
    _lock_take: "w", _lock_release: "w",
    _rw_read_lock: "s", _rw_read_unlock: "s", _rw_write_lock: "w", _rw_write_unlock: "w",
    _srcu_read_lock: "s", _srcu_read_unlock: "s", _srcu_sync_begin: "w", _srcu_sync_end: "r",
}
_BUILTIN_ENABLED = frozenset({None, _lock_free, _rw_no_writer, _rw_unheld, _srcu_sync_done})
_BUILTIN_CLASSES = (SpinLock, RWLock, SRCU)     # Mutex is a SpinLock, RCU an SRCU
_OWN: dict = {}      # (primitive name, mode) -> its footprint


def _op_footprint(op) -> Footprint:
    """What the pending ``op`` reads and writes (see the module docstring)."""
    fp = op.footprint
    if fp is not None:
        return fp
    prim = op.prim
    if prim is None:
        if op.run is _noop:
            return NOTHING if op.enabled is None else READS_EVERYTHING
        return EVERYTHING
    mode = _RUN_MODES.get(op.run)
    if mode is not None and op.enabled in _BUILTIN_ENABLED:
        key = (prim.name, mode)
        fp = _OWN.get(key)
        if fp is None:
            fp = _OWN[key] = Footprint([((prim.name,), mode)])
        return fp
    hook = getattr(type(prim), "_footprint", None)
    if hook is not None and hook is not _Primitive._footprint:
        return from_hook(hook(prim, op.kind, op.args),
                         f"{type(prim).__name__}._footprint({op.kind!r})")
    return EVERYTHING


def _declared_footprint(op) -> Footprint | None:
    """What says what ``op`` touches: its declaration, its primitive; None if nothing does."""
    fp = op.footprint
    if fp is not None:
        return fp
    prim = op.prim
    if prim is None:
        if op.run is _noop and op.enabled is None:
            return NOTHING                # a bare yield
        return None
    if op.run in _RUN_MODES and op.enabled in _BUILTIN_ENABLED:
        return _op_footprint(op)
    hook = getattr(type(prim), "_footprint", None)
    if hook is not None and hook is not _Primitive._footprint:
        return _op_footprint(op)
    return None


def _enablers_of(op, letter: str, world, index: dict):
    """Actors (indices) one of which must step before the blocked ``op`` can run; None: unknown.

    An empty set means nobody can: the step stays blocked for good.
    """
    prim, en = op.prim, op.enabled
    if en is _wait_enabled:
        return "writers"                  # the caller knows who may write what it reads
    if prim is None:
        return None
    if en in _BUILTIN_ENABLED and isinstance(prim, _BUILTIN_CLASSES):
        # The built-in enabled() functions read only the lock's or domain's
        # own fields, whatever a subclass renames (IRQs off is an RCU).
        if en is _lock_free:
            return _held_by(prim.holder, letter, index)
        if en is _rw_no_writer:
            return _held_by(prim.writer, letter, index)
        if en is _rw_unheld:
            if prim.writer is not None:
                return _held_by(prim.writer, letter, index)
            return _one_of(prim.readers, letter, index)
        if en is _srcu_sync_done:
            return _one_of([c for c, _i, ws in prim.readers if letter in ws], letter, index)
        return None
    hook = getattr(type(prim), "_enablers", None)
    if hook is None:
        return None
    who = hook(prim, op.kind, op.args, letter)
    if who is None:
        return None
    return frozenset(index[c] for c in who if c in index and c != letter)


def _held_by(holder, letter, index):
    # Only the holder releases (a release by anyone else is a violation and
    # changes nothing).  A lock held by itself or by no actor is never released.
    if holder is None or holder == letter or holder not in index:
        return frozenset()
    return frozenset((index[holder],))


def _one_of(holders, letter, index):
    # Every holder must leave before the step is enabled: any one of them is a
    # necessary enabling set.
    for h in holders:
        if h != letter and h in index:
            return frozenset((index[h],))
    return frozenset()


class _Reducer:
    """The reduction's state for one scenario: visibility, lifetime footprints, ample sets.

    ``lifetime[j]`` is the union of the footprints of every step actor j was
    seen to have pending so far.  ``learn`` grows it and says whether it
    grew: then the search starts over, because ample sets chosen before may
    have relied on the smaller footprint (see the package docstring).
    """

    def __init__(self, scenario):
        self.n = len(scenario.actors)
        self.index = scenario._index
        self.letters = scenario.letters
        invs = scenario.invariants
        self.watch = None
        if invs:
            watch = NOTHING
            for inv in invs:
                fp = READS_EVERYTHING if inv.reads is None else \
                    declared(inv.reads, (), f"invariant {inv.name!r}")
                watch = watch.union(fp)
            self.watch = watch
        self.lifetime = [NOTHING] * self.n
        self._effective: dict = {}
        self._rows: dict = {}         # footprint -> actors whose lifetime it conflicts with
        self.generation = 0           # grows with every change of a lifetime footprint
        self._seen = [set() for _ in range(self.n)]   # each actor's distinct footprints
        self._futile = None           # None: to be worked out (see ``futile``)

    def effective(self, base: Footprint) -> Footprint:
        """``base`` marked visible if it may change what an invariant reads."""
        fp = self._effective.get(base)
        if fp is None:
            visible = self.watch is not None and writes_into(base, self.watch)
            fp = self._effective[base] = base.with_visible(visible)
        return fp

    def learn(self, j: int, fp: Footprint) -> bool:
        """Add ``fp`` to actor j's lifetime footprint; True if that changed it."""
        seen = self._seen[j]
        if fp not in seen:
            seen.add(fp)
            self._futile = None
        life = self.lifetime[j]
        if life.covers(fp):
            return False
        self.lifetime[j] = life.union(fp)
        self._rows.clear()
        self.generation += 1
        return True

    @property
    def futile(self) -> bool:
        """Whether no state can be reduced, as far as the footprints learned go.

        True when every step each actor was seen to take conflicts with what
        every other actor may do: then a stubborn set seeded by any enabled
        actor takes in every other enabled one.  (Learning a new footprint
        asks again.)
        """
        if self._futile is None:
            life, n = self.lifetime, self.n
            self._futile = all(conflict(fp, life[j]) for i in range(n) for fp in self._seen[i]
                               for j in range(n) if j != i)
        return self._futile

    def _row(self, fp):
        row = self._rows.get(fp)
        if row is None:
            life = self.lifetime
            row = self._rows[fp] = frozenset(j for j in range(self.n) if conflict(fp, life[j]))
        return row

    def ample(self, status, fps, nes):
        """The actors to try, and whether that depended on the enablers of a blocked step.

        The actors are the enabled members of the smallest stubborn set found
        (each enabled actor seeds one candidate).  ``status[j]``: 0 finished,
        1 enabled, 2 blocked; ``fps[j]`` the effective footprint of j's
        pending step; ``nes(j)`` the enablers of j's blocked step.  When the
        enablers were not asked, the answer depends on the actors' local
        states alone and the caller may remember it.
        """
        n = self.n
        enabled = [j for j in range(n) if status[j] == 1]
        # Every enabled step conflicting with every other enabled actor: any
        # stubborn set holds them all (the common case of contention).
        rows = [self._row(fps[j]) for j in enabled]
        if all(k == j or k in row for j, row in zip(enabled, rows) for k in enabled):
            return enabled, False
        asked = [False]

        def ask(j):
            asked[0] = True
            return nes(j)
        best = None
        for seed in enabled:
            cand = self._stubborn(seed, status, fps, ask)
            if best is None or len(cand) < len(best):
                best = cand
                if len(best) == 1:
                    break
        return best, asked[0]

    def _stubborn(self, seed, status, fps, nes):
        n = self.n
        members = {seed}
        todo = [seed]
        while todo:
            a = todo.pop()
            if status[a] == 1:
                for j in self._row(fps[a]):
                    if j in members or status[j] == 0:
                        continue
                    if status[j] == 1:
                        members.add(j)
                        todo.append(j)
                    else:
                        # Blocked: its enablers join, so it stays blocked on
                        # every path outside the set (it is "frozen").
                        self._add_enablers(j, status, fps, nes, members, todo)
            else:
                self._add_enablers(a, status, fps, nes, members, todo)
        return [j for j in range(n) if j in members and status[j] == 1]

    def _add_enablers(self, j, status, fps, nes, members, todo):
        who = nes(j)
        if who == "writers":
            # wait_until: only an actor that may write what the predicate reads
            # can make it true.
            life = self.lifetime
            who = [k for k in range(self.n) if k != j and writes_into(life[k], fps[j])]
        elif who is None:
            who = range(self.n)
        for k in who:
            if k not in members and status[k] != 0:
                members.add(k)
                todo.append(k)
