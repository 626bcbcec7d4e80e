"""The interleaving explorer: run concurrent actors under every schedule.

Four race chapters use this one instrument.  An *actor* is a generator
function that ``yield``s at every point where another CPU may act; each
shared-memory access and each lock operation is exactly one step.  The same
actors run three ways:

- ``run_schedule(scenario, "AABAB")``: one exact schedule, one letter per
  actor per step (OSTEP's ``-P`` flag);
- ``run_random(scenario, seed)``: a schedule drawn from ``random.Random(seed)``;
- ``explore(scenario)``: every interleaving, breadth-first by default, with
  visited-state hashing and an optional preemption bound.

After every step the invariants of the scenario are checked; a state where
nothing is runnable but not everything finished is a ``deadlock``; a run
longer than ``max_steps`` is a ``runaway``.  A run gives a ``Trace`` that
renders as the two-column (one column per CPU) table of
Documentation/virt/kvm/locking.rst, as snapshots for a slider, and as a
timeline figure (``kvmmu.viz.explorer.timeline``).

Models: include/linux/atomic/atomic-instrumented.h: try_cmpxchg64(), xchg()
Models: include/asm-generic/rwonce.h: READ_ONCE(), WRITE_ONCE()
Models: include/linux/rwlock.h: read_lock(), read_unlock(), write_lock(), write_unlock()
Models: include/linux/spinlock.h: spin_lock(), spin_unlock()
Models: include/linux/mutex.h: mutex_lock(), mutex_unlock()
Models: include/linux/srcu.h: srcu_read_lock(), srcu_read_unlock()
Models: kernel/rcu/srcutree.c: synchronize_srcu()
Models: include/linux/rcupdate.h: rcu_read_lock(), rcu_read_unlock()
Models: kernel/rcu/tree.c: synchronize_rcu()

The primitives and what they stand for
--------------------------------------
``Word``: a 64-bit slot such as an SPTE.  ``read``/``write`` are
``READ_ONCE``/``WRITE_ONCE``; ``xchg`` returns the old value;
``try_cmpxchg(expected, new)`` is ``try_cmpxchg64(ptr, &old, new)`` and
returns ``(ok, current)``: on failure ``current`` is the value found, which is
what the kernel writes back into the caller's ``old``.
``RWLock``: ``rwlock_t`` (``kvm->mmu_lock`` on x86).  ``SpinLock`` and
``Mutex``: ``spinlock_t`` and ``struct mutex`` (sleeping or spinning is the
same thing here: the waiter is simply not runnable).  ``SRCU`` and ``RCU``:
``srcu_read_lock``/``srcu_read_unlock``/``synchronize_srcu`` and the
``rcu_*`` equivalents.  ``step(label, fn)`` is any action the model treats as
indivisible (a remote TLB flush, a TLB fill); ``wait_until(label, pred)``
is a wait the model does not want to spin through (``cpu_relax()`` loops).

Writing actors
--------------
Touch shared state only in steps (a primitive's method, ``step()``,
``wait_until()``); keep names or handles, not objects taken from inside the
world's plain attributes, across steps; do not wrap ``yield``s in
``try/finally`` or ``with``: the explorer drops suspended generators, and
Python then runs those handlers.  Actors that break the first two rules are
still explored correctly, by the slower replay method (see below).

Where the model simplifies
--------------------------
- Memory is sequentially consistent: no store buffers, no reordering, no
  barriers.  A race the kernel closes with ``smp_wmb()``/``smp_rmb()`` pairs
  is out of reach; a race of interleaved whole accesses is in reach.
- The step is the grain of interleaving.  Everything an actor does between
  two ``yield``s (local computation) happens atomically with the step before.
- ``RWLock`` has no writer preference: a reader may enter while a writer
  waits (the kernel's queued rwlock makes new process-context readers wait).
- ``synchronize()`` is two steps: it *begins* (marking the read sections in
  progress at that moment) and *returns* (enabled once every marked section
  has ended).  Read sections that start after it began do not delay it, which
  is the grace-period guarantee of SRCU and RCU; how the kernel achieves it
  (the two counter sets of SRCU, quiescent states of RCU) is not modelled.
  The ``idx`` of ``SRCU.read_lock()`` is the model's token for the section
  (0 for an actor's outermost section, 1 for one nested inside it, ...), not
  the kernel's counter index; pass it back to ``read_unlock`` all the same.

Exhaustive search and why its state hashing is sound
-----------------------------------------------------
Python generators cannot be copied, so a state cannot simply be saved and
resumed twice.  ``explore`` has two ways to get back to a state; both explore
exactly the same states (the tests check it):

- ``method="snapshot"`` (default): the world is restored in place from the
  saved state of its primitives and attributes, and only the actor about to
  step needs a generator in the right state: a suspended generator from a
  pool (keyed by actor state), or a fresh one *rebuilt* by calling the actor
  again and sending it, one by one, the values it received on the way.  The
  search starts over with the replay method (``result.note`` says why) when
  this cannot be trusted: a rebuilt actor does not come back with exactly
  the recorded state key (it reads or writes shared state between two
  steps, outside a primitive, ``step()`` or ``wait_until()``); an actor keeps
  across a step an object that lives below the world's attributes (a restore
  replaces those by copies, so the actor would go on with a stale one;
  handles whose ``deepcopy`` is themselves and primitives are exempt); or a
  custom primitive cannot be restored (no ``_load``).
- ``method="replay"``: re-run the state's schedule from a fresh world (the
  run already in hand is extended when the schedule continues it).  Each
  replay checks that the rebuilt world has the key it had the first time, so
  a scenario that is not deterministic is reported, not explored wrongly.

Equal states are expanded once.  Two states are *equal* when their keys are
equal, and the key is:

- the world: the state of every primitive in registration order (a value,
  the holder of a lock, the readers of an SRCU domain with the synchronizers
  waiting on each) plus ``World.snapshot_extra()``, by default every
  non-primitive attribute of the world, frozen (see below);
- for each actor, either its return value (finished) or its *whole* local
  state: for the actor's generator and, recursively, every generator it is
  suspended in through ``yield from``: the code, the offset of the suspended
  instruction (``f_lasti``), the names of the bound locals and the frozen
  values of all locals, cells and the frame's value stack.  The value stack
  matters: it holds ``for`` loop iterators, the operands of a half-evaluated
  expression (``x = a + (yield from w.s.read())``) and the sub-generator of
  ``yield from``.  CPython 3.11 shows it to ``gc.get_referents(generator)``
  (checked at import by ``_probe_frames``; if that check fails the explorer
  falls back to keying each actor by the full history of values it received,
  which is sound but merges fewer states).  The frames of the primitives'
  own methods (``Word.read`` ...) hold only the primitive and the arguments,
  which the pending operation's key below already has, so only their
  position is kept;
- the operation each actor has yielded and waits to perform.

*Frozen* means converted into a canonical hashable value: ints and strings
as themselves, containers element by element (dicts in insertion order, sets
as frozensets), functions by code and closure contents, plain objects by
class and attributes, iterators by their pickling state; the world and its
primitives are replaced by their names, because their contents are already
in the world part.  No key holds an ``id()``.

Argument: a step changes only the world and the stepping actor, and what it
does is a function of the world, the operation yielded and the actor's frames
(actors must be deterministic and keep no state outside their frames and the
world: no globals, no unseeded randomness; an object an actor shares with
the world is in the world's part of the key).  The key contains all three, so
two states with equal keys have the same successors under every schedule,
produce the same invariant verdicts, and pruning the second is sound.  With
a preemption bound the key also holds the last actor to run, and a state
seen again with fewer preemptions used is expanded again.  ``max_steps``
cuts runs, not the verdict: a state first reached late (depth-first) is not
expanded again when reached earlier, so a search that reports no runaway has
expanded every reachable state and a reported runaway is a real run of that
length.

Order and counts.  ``order="bfs"`` (default) expands states by depth, so the
first counterexample found is a *shortest* one (fewest steps); ``"dfs"``
expands depth-first and reports the first it finds.  ``states`` counts
distinct states (world + actors) discovered, ``transitions`` the steps the
search executed (replays not included), ``complete_runs`` the distinct
states in which every actor had finished.
"""
from __future__ import annotations

import copy
import gc
import html
import operator
import random
import time
import types
from collections import deque
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from functools import partial
from typing import Any, Callable, NamedTuple

from .checks import check_bool, check_choice, check_int, check_u64

__all__ = [
    "World", "Word", "RWLock", "SpinLock", "Mutex", "SRCU", "RCU",
    "Op", "Violation", "step", "wait_until",
    "Actor", "Invariant", "Scenario", "Step", "Trace", "Result",
    "run_schedule", "run_random", "explore", "state_key",
    "lost_update", "abba_deadlock", "srcu_grace_period", "POISON",
]


class Violation(Exception):
    """Raised by an operation to end the run with a named violation.

    Primitives raise it for misuse (unlocking a lock the actor does not
    hold); an actor's own ``assert`` becomes one too.
    """

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class Op:
    """One step an actor asks for: ``run(prim, args, cpu, world)`` performs it.

    ``enabled(prim, args, cpu, world)`` (None: always) says whether the step
    can happen now; an actor whose pending step is not enabled is blocked.
    Actors never build these: they ``yield from`` the primitives' methods.
    """

    __slots__ = ("prim", "kind", "args", "run", "enabled")

    def __init__(self, prim, kind: str, args, run, enabled=None):
        self.prim = prim
        self.kind = kind
        self.args = args
        self.run = run
        self.enabled = enabled

    def key(self):
        """The hashable identity of this pending step (part of the state key)."""
        name = "" if self.prim is None else self.prim.name
        args = self.args
        for a in args:
            if type(a) is not int and type(a) is not str:
                return (name, self.kind, None, _freeze(args))
        return (name, self.kind, args)       # plain ints and strings: already a key

    def what(self) -> str:
        """What the step will do, before it runs: ``write_lock(mmu_lock)``."""
        if self.prim is None:
            return self.args[0]
        return self.prim._what(self.kind, self.args)

    def label(self, result, cpu: str, world) -> str:
        """What the step did, after it ran (the table's cell text)."""
        if self.prim is None:
            text = self.args[0]
            if self.kind == "step" and result is not None:
                text += f" -> {result!r}"
            return text
        return self.prim._label(self.kind, self.args, result, cpu)

    def why_blocked(self, cpu: str, world) -> str:
        """Why the step cannot happen now (for errors and deadlock reports)."""
        if self.prim is None:
            return f"waiting until {self.args[0]}"
        return self.prim._why_blocked(self.kind, self.args, cpu)


# --------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------

class _Primitive:
    """A shared object registered with a World; its state is part of every key."""

    __slots__ = ("world", "name")

    def __init__(self, world: "World", name: str):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.world = world
        self.name = name

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}: {self._show()}>"

    def _load(self, st):
        # A primitive that cannot be put back: explore() replays instead.
        raise _Diverged(f"{type(self).__name__} {self.name!r} has no _load(), so worlds "
                        "holding it cannot be restored")


#: The public name for building a custom primitive (chapters 3 and 5 do, for
#: an EPT memory, TLBs and pfn caches): subclass it, register the instance
#: with ``World._register``, and give it ``_state()`` (a hashable snapshot),
#: ``_load(state)`` (restore in place) and ``_show()`` (readable text).
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
        check_u64("value", value)
        return (yield Op(self, "write", (value,), _word_write))

    def xchg(self, value):
        """Store ``value`` and return the old value, atomically (one step).

        Models: include/linux/atomic/atomic-instrumented.h: xchg()
        """
        check_u64("value", value)
        return (yield Op(self, "xchg", (value,), _word_xchg))

    def try_cmpxchg(self, expected, new):
        """Store ``new`` if the slot holds ``expected``; return ``(ok, current)``.

        On success ``current`` is ``expected``; on failure it is the value
        found, as ``try_cmpxchg64`` writes it back into the caller's ``old``.

        Models: include/linux/atomic/atomic-instrumented.h: try_cmpxchg64()
        """
        check_u64("expected", expected)
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


class SpinLock(_Primitive):
    """A lock with one holder; a CPU spinning for it is not runnable."""

    __slots__ = ("holder",)
    _lock_name, _unlock_name = "spin_lock", "spin_unlock"

    def __init__(self, world, name):
        super().__init__(world, name)
        self.holder = None

    def _state(self):
        return self.holder

    def _load(self, st):
        self.holder = st

    def _show(self):
        return "free" if self.holder is None else f"held by {self.holder}"

    def lock(self):
        """Take the lock (one step); blocks while another CPU holds it.

        Models: include/linux/spinlock.h: spin_lock()
        """
        return (yield Op(self, "lock", (), _lock_take, _lock_free))

    def unlock(self):
        """Release the lock (one step); releasing a lock not held is a violation.

        Models: include/linux/spinlock.h: spin_unlock()
        """
        return (yield Op(self, "unlock", (), _lock_release))

    def _what(self, kind, args):
        return f"{self._lock_name if kind == 'lock' else self._unlock_name}({self.name})"

    def _label(self, kind, args, result, cpu):
        return self._what(kind, args)

    def _why_blocked(self, kind, args, cpu):
        return f"waiting in {self._what(kind, args)}: held by {self.holder}"


class Mutex(SpinLock):
    """A sleeping lock: in the model it behaves as a SpinLock."""

    __slots__ = ()
    _lock_name, _unlock_name = "mutex_lock", "mutex_unlock"

    def lock(self):
        """Take the mutex (one step); blocks while another CPU holds it.

        Models: include/linux/mutex.h: mutex_lock()
        """
        return (yield from SpinLock.lock(self))

    def unlock(self):
        """Release the mutex (one step).

        Models: include/linux/mutex.h: mutex_unlock()
        """
        return (yield from SpinLock.unlock(self))


def _lock_free(lk, args, cpu, world):
    return lk.holder is None


def _lock_take(lk, args, cpu, world):
    lk.holder = cpu


def _lock_release(lk, args, cpu, world):
    if lk.holder != cpu:
        raise Violation(f"{lk._unlock_name}({lk.name}) by {cpu}, which does not hold it")
    lk.holder = None


class RWLock(_Primitive):
    """A reader-writer lock: many readers or one writer.

    No writer preference (see the module docstring).  A CPU may hold the read
    side more than once (it is counted); asking for the write side while
    holding the read side deadlocks, as it does in the kernel.
    """

    __slots__ = ("writer", "readers")

    def __init__(self, world, name):
        super().__init__(world, name)
        self.writer = None
        self.readers = ()   # sorted tuple of letters, one entry per read hold

    def _state(self):
        return (self.writer, self.readers)

    def _load(self, st):
        self.writer, self.readers = st

    def _show(self):
        if self.writer is not None:
            return f"write {self.writer}"
        if self.readers:
            return "read " + ",".join(self.readers)
        return "free"

    def read_lock(self):
        """Take the lock for reading (one step); blocks while a writer holds it.

        Models: include/linux/rwlock.h: read_lock()
        """
        return (yield Op(self, "read_lock", (), _rw_read_lock, _rw_no_writer))

    def read_unlock(self):
        """Drop one read hold (one step).

        Models: include/linux/rwlock.h: read_unlock()
        """
        return (yield Op(self, "read_unlock", (), _rw_read_unlock))

    def write_lock(self):
        """Take the lock for writing (one step); blocks while anyone holds it.

        Models: include/linux/rwlock.h: write_lock()
        """
        return (yield Op(self, "write_lock", (), _rw_write_lock, _rw_unheld))

    def write_unlock(self):
        """Release the write side (one step).

        Models: include/linux/rwlock.h: write_unlock()
        """
        return (yield Op(self, "write_unlock", (), _rw_write_unlock))

    def _what(self, kind, args):
        return f"{kind}({self.name})"

    def _label(self, kind, args, result, cpu):
        return self._what(kind, args)

    def _why_blocked(self, kind, args, cpu):
        return f"waiting in {kind}({self.name}): {self._show()}"


def _rw_no_writer(lk, args, cpu, world):
    return lk.writer is None


def _rw_unheld(lk, args, cpu, world):
    return lk.writer is None and not lk.readers


def _rw_read_lock(lk, args, cpu, world):
    lk.readers = tuple(sorted(lk.readers + (cpu,)))


def _rw_read_unlock(lk, args, cpu, world):
    if cpu not in lk.readers:
        raise Violation(f"read_unlock({lk.name}) by {cpu}, which does not hold it for reading")
    r = list(lk.readers)
    r.remove(cpu)
    lk.readers = tuple(r)


def _rw_write_lock(lk, args, cpu, world):
    lk.writer = cpu


def _rw_write_unlock(lk, args, cpu, world):
    if lk.writer != cpu:
        raise Violation(f"write_unlock({lk.name}) by {cpu}, which does not hold it for writing")
    lk.writer = None


class SRCU(_Primitive):
    """An SRCU domain: read sections and grace periods.

    ``readers`` is a sorted tuple of ``(cpu, idx, waiters)``: one entry per
    read section in progress, with the letters of the CPUs whose
    ``synchronize()`` began while it was in progress.
    """

    __slots__ = ("readers",)
    _rl, _ru, _sync = "srcu_read_lock", "srcu_read_unlock", "synchronize_srcu"

    def __init__(self, world, name):
        super().__init__(world, name)
        self.readers = ()

    def _state(self):
        return self.readers

    def _load(self, st):
        self.readers = st

    def _show(self):
        if not self.readers:
            return "no readers"
        parts = []
        for cpu, idx, waiters in self.readers:
            who = cpu if idx == 0 else f"{cpu}#{idx}"
            parts.append(f"{who} ({','.join(waiters)} waits)" if waiters else who)
        return "readers " + " ".join(parts)

    def read_lock(self):
        """Enter a read section (one step); return its ``idx`` token.

        Models: include/linux/srcu.h: srcu_read_lock()
        """
        return (yield Op(self, "read_lock", (), _srcu_read_lock))

    def read_unlock(self, idx):
        """Leave the read section ``idx`` (one step).

        Models: include/linux/srcu.h: srcu_read_unlock()
        """
        check_int("idx", idx, 0)
        return (yield Op(self, "read_unlock", (idx,), _srcu_read_unlock))

    def synchronize(self):
        """Wait for every read section in progress now to end (two steps).

        The first step marks the sections in progress; the second is enabled
        once all of them have ended.  Sections entered in between do not
        delay it.

        Models: kernel/rcu/srcutree.c: synchronize_srcu()
        """
        yield Op(self, "sync_begin", (), _srcu_sync_begin)
        yield Op(self, "sync_wait", (), _srcu_sync_end, _srcu_sync_done)

    def _what(self, kind, args):
        if kind == "read_lock":
            return f"{self._rl}({self.name})"
        if kind == "read_unlock":
            return f"{self._ru}({self.name}, {args[0]})" if self._ru == "srcu_read_unlock" \
                else f"{self._ru}()"
        if kind == "sync_begin":
            return f"{self._sync}({self.name}) begins"
        return f"{self._sync}({self.name}) returns"

    def _label(self, kind, args, result, cpu):
        if kind == "read_lock":
            return f"{self._what(kind, args)} = {result}" if self._rl == "srcu_read_lock" \
                else f"{self._rl}()"
        if kind == "sync_begin":
            marked = [c if i == 0 else f"{c}#{i}" for c, i, ws in self.readers if cpu in ws]
            waits = f": waits for {', '.join(marked)}" if marked else ": no readers to wait for"
            return self._what(kind, args) + waits
        return self._what(kind, args)

    def _why_blocked(self, kind, args, cpu):
        marked = [c for c, i, ws in self.readers if cpu in ws]
        return f"waiting in {self._sync}({self.name}): read section of {', '.join(marked)} in progress"


def _srcu_read_lock(d, args, cpu, world):
    used = {idx for c, idx, _ in d.readers if c == cpu}
    idx = 0
    while idx in used:
        idx += 1
    d.readers = tuple(sorted(d.readers + ((cpu, idx, ()),)))
    return idx


def _srcu_read_unlock(d, args, cpu, world):
    idx = args[0]
    if idx is None:   # RCU: the innermost section of this CPU
        mine = [i for c, i, _ in d.readers if c == cpu]
        if not mine:
            raise Violation(f"{d._ru}() by {cpu} outside a read section")
        idx = max(mine)
    kept = tuple(r for r in d.readers if not (r[0] == cpu and r[1] == idx))
    if len(kept) == len(d.readers):
        raise Violation(f"{d._ru}({d.name}, {idx}) by {cpu} without a matching {d._rl}")
    d.readers = kept


def _srcu_sync_begin(d, args, cpu, world):
    d.readers = tuple((c, i, tuple(sorted(ws + (cpu,)))) for c, i, ws in d.readers)


def _srcu_sync_done(d, args, cpu, world):
    for _c, _i, ws in d.readers:
        if cpu in ws:
            return False
    return True


def _srcu_sync_end(d, args, cpu, world):
    return None


class RCU(SRCU):
    """Plain RCU: the same grace-period model as SRCU, kernel names of RCU."""

    __slots__ = ()
    _rl, _ru, _sync = "rcu_read_lock", "rcu_read_unlock", "synchronize_rcu"

    def read_lock(self):
        """Enter a read section (one step).

        Models: include/linux/rcupdate.h: rcu_read_lock()
        """
        yield Op(self, "read_lock", (), _srcu_read_lock)

    def read_unlock(self):
        """Leave the innermost read section of this CPU (one step).

        Models: include/linux/rcupdate.h: rcu_read_unlock()
        """
        return (yield Op(self, "read_unlock", (None,), _srcu_read_unlock))

    def synchronize(self):
        """Wait for every read section in progress now to end (two steps).

        Models: kernel/rcu/tree.c: synchronize_rcu()
        """
        return (yield from SRCU.synchronize(self))


_BUILTIN_PRIMITIVES = frozenset({Word, SpinLock, Mutex, RWLock, SRCU, RCU})


# --------------------------------------------------------------------------
# The world, free-form steps
# --------------------------------------------------------------------------

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
        # The default snapshot_extra is frozen straight from the attributes
        # (a list of primitives freezes to their names: constant, harmless).
        if type(self).snapshot_extra is World.snapshot_extra:
            extra = _freeze(self._extras())
        else:
            extra = _freeze(self.snapshot_extra())
        return (tuple([p._state() for p in self._prims]), extra)

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
        if not extras and all(type(p) in _BUILTIN_PRIMITIVES for p in self._prims):
            return set()
        todo = []
        for v in extras.values():
            if type(v) in (dict, list, set):
                todo.extend(v.items() if type(v) is dict else v)
            else:
                todo.append(v)
        for p in self._prims:
            if type(p) not in _BUILTIN_PRIMITIVES:
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


def step(label: str, fn: Callable[[], Any] | None = None):
    """One indivisible step labelled ``label`` that runs ``fn()``; returns its result."""
    if not isinstance(label, str) or not label:
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    if fn is not None and not callable(fn):
        raise TypeError(f"fn must be callable or None, got {type(fn).__name__}")
    return (yield Op(None, "step", (label, fn), _step_run))


def wait_until(label: str, predicate: Callable[["World"], bool]):
    """A step that can only happen once ``predicate(world)`` is true (blocks till then)."""
    if not isinstance(label, str) or not label:
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    if not callable(predicate):
        raise TypeError(f"predicate must be callable, got {type(predicate).__name__}")
    return (yield Op(None, "wait", (label, predicate), _noop, _wait_enabled))


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Actor:
    """One CPU: its schedule letter, a title for tables, its generator function."""

    letter: str
    title: str
    fn: Callable[["World"], Any]


@dataclass(frozen=True)
class Invariant:
    """A named predicate over the world that must hold after every step."""

    name: str
    fn: Callable[["World"], bool]


class Scenario:
    """Actors, the world factory they share, and what must hold.

    ``world`` is a zero-argument factory (a World subclass works): every run
    starts from a fresh world.  ``final_check(world, results)`` runs once
    every actor has finished; ``results`` maps letters to return values; it
    returns True (holds), False (violation "final check") or a string (a
    violation, named by the string).
    """

    def __init__(self, name: str, world: Callable[[], World], actors, invariants=(),
                 final_check: Callable | None = None, description: str = ""):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if not callable(world):
            raise TypeError(f"scenario {name!r}: world must be a zero-argument factory of a World")
        actors = list(actors)
        if not actors:
            raise ValueError(f"scenario {name!r}: actors is empty; give at least one Actor")
        seen = {}
        for a in actors:
            if not isinstance(a, Actor):
                raise TypeError(f"scenario {name!r}: actors must be Actor(letter, title, fn), "
                                f"got {type(a).__name__}")
            if not (isinstance(a.letter, str) and len(a.letter) == 1 and a.letter.isalnum()):
                raise ValueError(f"scenario {name!r}: actor letter must be one letter or digit, "
                                 f"got {a.letter!r}")
            if a.letter in seen:
                raise ValueError(f"scenario {name!r}: two actors use the letter {a.letter!r}")
            if not callable(a.fn):
                raise TypeError(f"scenario {name!r}: actor {a.letter}'s fn is not callable")
            seen[a.letter] = a
        invariants = list(invariants)
        for inv in invariants:
            if not isinstance(inv, Invariant):
                raise TypeError(f"scenario {name!r}: invariants must be Invariant(name, fn), "
                                f"got {type(inv).__name__}")
        if final_check is not None and not callable(final_check):
            raise TypeError(f"scenario {name!r}: final_check must be callable or None")
        if not invariants and final_check is None:
            raise ValueError(
                f"scenario {name!r} has no invariants and no final_check: "
                "give at least one, or there is nothing to check but deadlock")
        self.name = name
        self.world = world
        self.actors = actors
        self.invariants = invariants
        self.final_check = final_check
        self.description = description
        self.letters = "".join(a.letter for a in actors)
        self._index = {a.letter: i for i, a in enumerate(actors)}

    def actor(self, letter: str) -> Actor:
        """The actor with this letter."""
        return self.actors[self._index[letter]]

    def __repr__(self):
        cast = ", ".join(f"{a.letter}: {a.title}" for a in self.actors)
        return f"<Scenario {self.name!r} ({cast})>"


# --------------------------------------------------------------------------
# Freezing values into hashable, id()-free keys
# --------------------------------------------------------------------------

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


def _freezer_for(t):
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
    if t is types.GeneratorType:
        return _gen_key
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
    if issubclass(t, World):
        return lambda x: ("world",)
    if issubclass(t, _Primitive):
        return lambda x: ("prim", x.name)
    if t is Op:
        return lambda x: x.key()
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


def _gen_key(gen):
    """The whole local state of a suspended generator (see the module docstring)."""
    fr = gen.gi_frame
    code = gen.gi_code
    if fr is None:
        return ("gen", code.co_qualname, "finished")
    if code in _TRANSPARENT:
        # A primitive's method: its locals are the primitive and the arguments,
        # which the pending Op's key holds; only the position is left.
        return ("call", code.co_qualname, fr.f_lasti)
    names = tuple(sorted(fr.f_locals))   # the bound locals (this refreshes the frame's
    #                                      locals dict, whose order depends on history: sort)
    refs = gc.get_referents(gen)     # code, name, qualname, [frame, locals dict], func, code,
    i = 1                            # then locals, cells and the value stack
    while refs[i] is not code:
        i += 1
    return ("gen", code.co_qualname, code.co_firstlineno, fr.f_lasti, names,
            tuple(map(_freeze, refs[i + 1:])))


def _probe_frames() -> bool:
    """Check that this CPython shows a generator's value stack to gc.get_referents."""
    def sub():
        return (yield None)

    def probe():
        for v in ["loop-item-1", "loop-item-2"]:
            yield from sub()
        total = 40 + (yield from sub())
        return total

    try:
        g = probe()
        next(g)
        first = _gen_key(g)
        g.send(None)
        second = _gen_key(g)        # same f_lasti, same locals: only the iterator moved
        g.send(None)
        third = _gen_key(g)
        return (first != second and first[3] == second[3] and first[4] == second[4]
                and 40 in third[5])
    except Exception:   # pragma: no cover - only on an unexpected interpreter
        return False


#: Code of the primitives' generator methods (see _gen_key).
_TRANSPARENT = frozenset(
    f.__code__ for f in (
        Word.read, Word.write, Word.xchg, Word.try_cmpxchg, SpinLock.lock, SpinLock.unlock,
        Mutex.lock, Mutex.unlock, RWLock.read_lock, RWLock.read_unlock, RWLock.write_lock,
        RWLock.write_unlock, SRCU.read_lock, SRCU.read_unlock, SRCU.synchronize,
        RCU.read_lock, RCU.read_unlock, RCU.synchronize, step, wait_until))

_FRAMES_OK = _probe_frames()


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------

_NOOP_KIND = "noop"


class _Run:
    """A world and the actors' generators, advanced one step at a time."""

    __slots__ = ("sc", "world", "letters", "gens", "ops", "results", "done", "hist",
                 "failure", "taken")

    def __init__(self, sc: Scenario):
        w = sc.world()
        if not isinstance(w, World):
            raise TypeError(f"scenario {sc.name!r}: world() must return a kvmmu.explorer.World, "
                            f"got {type(w).__name__}")
        w._seal()
        self.sc = sc
        self.world = w
        self.letters = sc.letters
        n = len(sc.actors)
        self.gens = [None] * n
        self.ops = [None] * n
        self.results = [None] * n
        self.done = [False] * n
        self.hist = None if _FRAMES_OK else [[] for _ in range(n)]
        self.failure = None
        self.taken = []
        for i, a in enumerate(sc.actors):
            g = a.fn(w)
            if not isinstance(g, types.GeneratorType):
                raise TypeError(
                    f"scenario {sc.name!r}: actor {a.letter} ({a.title}) must be a generator "
                    f"function (one that yields), but calling it returned {type(g).__name__}")
            self.gens[i] = g
        for i in range(n):
            try:
                self._advance(i, None)
            except Violation as v:
                self.failure = v.name
                break

    def _advance(self, i, value):
        try:
            y = self.gens[i].send(value)
        except StopIteration as stop:
            self.ops[i] = None
            self.done[i] = True
            self.results[i] = stop.value
            return
        except AssertionError as e:
            self.ops[i] = None
            msg = _first_line(e)
            raise Violation(f"assertion failed in {self.letters[i]}: {msg}") from None
        except Exception as e:
            e.add_note(f"kvmmu.explorer: raised by actor {self.letters[i]} "
                       f"({self.sc.actors[i].title}) of scenario {self.sc.name!r} "
                       f"after schedule {''.join(self.taken)!r}")
            raise
        self.ops[i] = y if type(y) is Op else _as_op(y, self.sc, i)

    def enabled(self, i) -> bool:
        op = self.ops[i]
        if op is None:
            return False
        return op.enabled is None or op.enabled(op.prim, op.args, self.letters[i], self.world)

    def runnable(self) -> list:
        return [i for i in range(len(self.ops)) if self.enabled(i)]

    def perform(self, i):
        """Run actor i's pending operation; return its result. May raise Violation."""
        op = self.ops[i]
        self.taken.append(self.letters[i])
        result = op.run(op.prim, op.args, self.letters[i], self.world)
        if self.hist is not None:
            self.hist[i].append(_freeze(result))
        return result

    def step(self, i):
        """Perform actor i's pending step and run it to its next yield. May raise Violation."""
        self._advance(i, self.perform(i))

    def verdict(self):
        """The violation the current state shows, or None."""
        w = self.world
        for inv in self.sc.invariants:
            if not inv.fn(w):
                return inv.name
        if all(self.done):
            return _final_verdict(self.sc, w, self.results_dict())
        if not self.runnable():
            return "deadlock"
        return None

    def results_dict(self) -> dict:
        return {self.letters[i]: self.results[i] for i in range(len(self.letters)) if self.done[i]}

    def actor_key(self, i):
        op = self.ops[i]
        if op is None:
            return ("done", _freeze(self.results[i]))
        if self.hist is not None:
            return ("hist", tuple(self.hist[i]), op.key())
        return (_gen_key(self.gens[i]), op.key())

    def key(self):
        return (self.world._key(), tuple(self.actor_key(i) for i in range(len(self.ops))))

    def blocked_reasons(self) -> dict:
        out = {}
        for i, op in enumerate(self.ops):
            if op is not None and not self.enabled(i):
                out[self.letters[i]] = op.why_blocked(self.letters[i], self.world)
        return out


def state_key(scenario: Scenario, schedule: str = ""):
    """The explorer's key of the state reached by ``schedule`` (for tests and teaching)."""
    trace_run = _run_checked(scenario, schedule)
    return trace_run.key()


def _run_checked(scenario, schedule):
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, got {type(scenario).__name__}")
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a string of actor letters, got {type(schedule).__name__}")
    run = _Run(scenario)
    for pos, ch in enumerate(schedule):
        i = _schedule_index(scenario, run, schedule, pos, ch)
        run.step(i)
    return run


def _schedule_index(scenario, run, schedule, pos, ch):
    i = scenario._index.get(ch)
    where = f"schedule {schedule!r}, position {pos} (counting from 0)"
    if i is None:
        cast = ", ".join(f"{a.letter} ({a.title})" for a in scenario.actors)
        raise ValueError(f"{where}: {ch!r} is not an actor letter; the actors are {cast}")
    if run.ops[i] is None:
        title = scenario.actors[i].title
        if run.done[i]:
            raise ValueError(f"{where}: actor {ch} ({title}) has already finished "
                             f"(returned {run.results[i]!r})")
        raise ValueError(f"{where}: actor {ch} ({title}) has stopped (the run already failed)")
    if not run.enabled(i):
        title = scenario.actors[i].title
        why = run.ops[i].why_blocked(ch, run.world)
        raise ValueError(f"{where}: actor {ch} ({title}) is blocked, {why}")
    return i


# --------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------

class Step(NamedTuple):
    """One row of a trace: who stepped, what it did, the shared state after."""

    actor: str
    label: str
    state: dict


class Trace:
    """One run: the steps in time order, the outcome, and its renderings."""

    def __init__(self, scenario: Scenario, initial: dict):
        self.scenario = scenario.name
        self.actors = [(a.letter, a.title) for a in scenario.actors]
        self.initial = initial
        self.steps: list[Step] = []
        self.waiting: list[str] = []     # per step: the letters that were blocked then
        self.results: dict = {}
        self.violation: str | None = None
        self.violation_step: int | None = None   # index into steps; -1 = initial state
        self.deadlock = False
        self.runaway = False
        self.unfinished: list[str] = []
        self.runnable: list[str] = []
        self.blocked: dict = {}
        self.unused = ""

    @property
    def schedule(self) -> str:
        return "".join(s.actor for s in self.steps)

    @property
    def outcome(self) -> str:
        """One line: how the run ended (the table's last row)."""
        if self.violation is not None:
            if self.deadlock:
                why = "; ".join(f"{k} {v}" for k, v in sorted(self.blocked.items()))
                return f"OOPS!!! deadlock: {why}"
            if self.runaway:
                return f"OOPS!!! runaway: still running after {len(self.steps)} steps"
            return f"OOPS!!! {self.violation}"
        if not self.unfinished:
            res = ", ".join(f"{k} returned {_short(v)}" for k, v in self.results.items())
            return f"All finished ({res}); every check holds"
        nxt = ", ".join(self.unfinished)
        return f"Stopped after the schedule; not finished: {nxt}"

    def snapshots(self) -> list[dict]:
        """One dict per moment, initial state first: for a slider.

        Keys: ``index`` (0 = at the beginning), ``actor`` (None first),
        ``label``, ``state`` (name -> readable value), ``violation`` (the
        violation name on the step that broke it, else None).
        """
        out = [{"index": 0, "actor": None, "label": "At the beginning",
                "state": dict(self.initial),
                "violation": self.violation if self.violation_step == -1 else None}]
        for n, s in enumerate(self.steps):
            out.append({"index": n + 1, "actor": s.actor, "label": s.label,
                        "state": dict(s.state),
                        "violation": self.violation if self.violation_step == n else None})
        return out

    def _state_text(self, state: dict, columns) -> str:
        keys = list(state) if columns is None else columns
        return ", ".join(f"{k}={state[k]}" for k in keys if k in state)

    def _headers(self):
        return [f"CPU {n} ({letter}: {title})" for n, (letter, title) in enumerate(self.actors)]

    def _check_columns(self, columns):
        if columns is None:
            return None
        if isinstance(columns, str):
            columns = [columns]
        columns = list(columns)
        known = list(self.initial)
        for c in columns:
            if c not in known:
                raise ValueError(f"columns: {c!r} is not a shared-state name; "
                                 f"choose from {', '.join(known)}")
        return columns

    def table(self, columns=None) -> str:
        """The run as a text grid table, one column per CPU (locking.rst style).

        ``columns`` picks which shared-state names the last column shows
        (default: all).
        """
        columns = self._check_columns(columns)
        heads = self._headers()
        ncpu = len(heads)
        idx = {letter: n for n, (letter, _) in enumerate(self.actors)}
        cells = [s.label for s in self.steps]
        states = [self._state_text(s.state, columns) for s in self.steps]
        init_state = self._state_text(self.initial, columns)
        widths = [len(h) for h in heads]
        for s, text in zip(self.steps, cells):
            c = idx[s.actor]
            widths[c] = max(widths[c], len(text) + (4 if self.violation_step is not None
                                                    and text is cells[-1] else 0))
        sw = max([len("shared state"), len(init_state)] + [len(x) for x in states])
        first = "At the beginning:"
        span = sum(widths) + 3 * (ncpu - 1)
        if len(first) > span:
            widths[-1] += len(first) - span
            span = len(first)
        full = span + 3 + sw
        outcome = self.outcome
        if len(outcome) > full:
            sw += len(outcome) - full
            full = len(outcome)

        def rule(ch="-"):
            return "+" + "+".join(ch * (w + 2) for w in widths + [sw]) + "+"

        def row(texts):
            return "| " + " | ".join(t.ljust(w) for t, w in zip(texts, widths + [sw])) + " |"

        lines = [rule(), row(heads + ["shared state"]), rule("="),
                 "| " + first.ljust(span) + " | " + init_state.ljust(sw) + " |", rule()]
        for n, (s, text, st) in enumerate(zip(self.steps, cells, states)):
            row_cells = [""] * ncpu
            mark = " <<<" if n == self.violation_step and not self.deadlock else ""
            row_cells[idx[s.actor]] = text + mark
            lines.append(row(row_cells + [st]))
            lines.append(rule())
        lines.append("| " + outcome.ljust(full) + " |")
        lines.append("+" + "-" * (full + 2) + "+")
        return "\n".join(lines)

    def __repr__(self):
        return self.table()

    def _repr_html_(self, columns=None) -> str:
        columns = self._check_columns(columns)
        esc = html.escape
        heads = self._headers()
        ncpu = len(heads)
        idx = {letter: n for n, (letter, _) in enumerate(self.actors)}
        td = 'style="border:1px solid #999;padding:2px 6px;font-family:monospace;text-align:left"'
        out = ['<table class="kvmmu-trace" style="border-collapse:collapse">',
               "<thead><tr>" + "".join(f"<th {td}>{esc(h)}</th>" for h in heads)
               + f"<th {td}>shared state</th></tr></thead><tbody>"]
        out.append(f'<tr><td {td} colspan="{ncpu}"><i>At the beginning:</i></td>'
                   f"<td {td}>{esc(self._state_text(self.initial, columns))}</td></tr>")
        prev = self.initial
        for n, s in enumerate(self.steps):
            bg = ' style="background:#fdd"' if n == self.violation_step else ""
            cells = [f"<td {td}></td>"] * ncpu
            cells[idx[s.actor]] = f"<td {td}>{esc(s.label)}</td>"
            keys = list(s.state) if columns is None else columns
            parts = []
            for k in keys:
                if k not in s.state:
                    continue
                text = esc(f"{k}={s.state[k]}")
                parts.append(f"<b>{text}</b>" if prev.get(k) != s.state[k] else text)
            out.append(f"<tr{bg}>" + "".join(cells) + f"<td {td}>{', '.join(parts)}</td></tr>")
            prev = s.state
        color = "#b00" if self.violation is not None else "#060"
        out.append(f'<tr><td {td} colspan="{ncpu + 1}"><b style="color:{color}">'
                   f"{esc(self.outcome)}</b></td></tr></tbody></table>")
        return "".join(out)


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


def _short(v) -> str:
    if type(v) is int and not -1024 < v < 1024:
        return hex(v)
    text = _text(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _traced_run(scenario: Scenario, choose, max_steps: int) -> Trace:
    """Drive one run with ``choose(run, n) -> actor index | None`` and record it."""
    run = _Run(scenario)
    trace = Trace(scenario, run.world.snapshot())
    letters = scenario.letters

    def finish(violation=None, at=None):
        trace.results = run.results_dict()
        trace.unfinished = [letters[i] for i in range(len(letters)) if not run.done[i]]
        if violation is None and run.failure is None:
            violation = run.verdict()
            at = len(trace.steps) - 1 if violation is not None else None
        if violation == "deadlock":
            trace.deadlock = True
        trace.violation = violation
        trace.violation_step = at
        trace.blocked = run.blocked_reasons()
        trace.runnable = [] if violation is not None else [letters[i] for i in run.runnable()]
        return trace

    if run.failure is not None:
        return finish(run.failure, -1)
    v = run.verdict()
    if v is not None:
        return finish(v, -1)
    n = 0
    while True:
        if n >= max_steps and run.runnable():
            trace.runaway = True
            return finish("runaway", len(trace.steps) - 1)
        i = choose(run, n)
        if i is None:
            return finish()
        waiting = "".join(letters[j] for j in range(len(letters))
                          if run.ops[j] is not None and j != i and not run.enabled(j))
        op = run.ops[i]
        try:
            result = run.perform(i)
        except Violation as bad:       # misuse: the operation did not happen
            trace.steps.append(Step(letters[i], f"{op.what()} [{bad.name}]", run.world.snapshot()))
            trace.waiting.append(waiting)
            return finish(bad.name, len(trace.steps) - 1)
        label = op.label(result, letters[i], run.world)
        try:
            run._advance(i, result)
        except Violation as bad:       # the actor's own assert, after the operation
            trace.steps.append(Step(letters[i], f"{label}, then {bad.name}", run.world.snapshot()))
            trace.waiting.append(waiting)
            return finish(bad.name, len(trace.steps) - 1)
        trace.steps.append(Step(letters[i], label, run.world.snapshot()))
        trace.waiting.append(waiting)
        n += 1
        v = run.verdict()
        if v is not None:
            return finish(v, len(trace.steps) - 1)
        if all(run.done):
            return finish()


def run_schedule(scenario: Scenario, schedule: str, complete: bool = False,
                 max_steps: int = 1000) -> Trace:
    """Run ``scenario`` under the exact ``schedule`` (one actor letter per step).

    An unknown letter, or a letter naming a finished or blocked actor, raises
    ValueError naming the position, the letter and the actor's state.  When
    the schedule is used up the run stops, unless ``complete=True``: then the
    first runnable actor in letter order keeps going until all finish.  A
    violation ends the run early; ``trace.unused`` keeps the letters not run.
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, got {type(scenario).__name__}")
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a string of actor letters, got {type(schedule).__name__}")
    check_bool("complete", complete)
    check_int("max_steps", max_steps, 1)

    def choose(run, n):
        if n < len(schedule):
            return _schedule_index(scenario, run, schedule, n, schedule[n])
        if complete:
            r = run.runnable()
            return r[0] if r else None
        return None

    trace = _traced_run(scenario, choose, max_steps)
    trace.unused = schedule[len(trace.steps):]
    return trace


def run_random(scenario: Scenario, seed: int, max_steps: int = 1000) -> Trace:
    """Run ``scenario`` choosing each step uniformly among the runnable actors.

    The choices come from ``random.Random(seed)``, so a seed names a schedule.
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, got {type(scenario).__name__}")
    check_int("seed", seed)
    check_int("max_steps", max_steps, 1)
    rng = random.Random(seed)

    def choose(run, n):
        r = run.runnable()
        return rng.choice(r) if r else None

    return _traced_run(scenario, choose, max_steps)


# --------------------------------------------------------------------------
# Exhaustive search
# --------------------------------------------------------------------------

class Result:
    """The outcome of ``explore``: verdict, counterexample, counts."""

    def __init__(self, scenario, order, preemption_bound, max_steps):
        self.scenario = scenario.name
        self.order = order
        self.preemption_bound = preemption_bound
        self.max_steps = max_steps
        self.violated = False
        self.invariant: str | None = None
        self.schedule: str | None = None
        self.counterexample: Trace | None = None
        self.violations: list[tuple[str, str]] = []
        self.states = 0
        self.transitions = 0
        self.complete_runs = 0
        self.exhaustive = False
        self.stopped_at_max_states = False
        self.method = "snapshot"
        self.note = ""
        self.replays = 0
        self.replayed_steps = 0
        self.rebuilds = 0
        self.pool_hits = 0
        self.seconds = 0.0
        self.visited: tuple = ()

    @property
    def transitions_per_second(self) -> float:
        return self.transitions / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        """A deterministic description (no timings; the search method is in ``.note``)."""
        scope = "every interleaving"
        if self.preemption_bound is not None:
            p = self.preemption_bound
            scope = f"every interleaving with at most {p} preemption{'s' if p != 1 else ''}"
        runs = f"{self.complete_runs} complete run{'s' if self.complete_runs != 1 else ''}"
        counts = (f"{self.states} states, {self.transitions} transitions, {runs} "
                  "(distinct final states)")
        lines = [f"explore {self.scenario!r} ({self.order}, {scope}, max {self.max_steps} steps):"]
        if self.violated:
            kind = ("shortest, breadth-first" if self.order == "bfs"
                    else "first found, depth-first")
            lines.append(f"  VIOLATED: {self.invariant}")
            lines.append(f"  counterexample ({kind}): {self.schedule!r}, "
                         f"{len(self.schedule)} steps")
            if len(self.violations) > 1:
                others = "; ".join(f"{n} ({s!r})" for n, s in self.violations
                                   if n != self.invariant)
                lines.append(f"  also: {others}")
        else:
            lines.append("  holds: no invariant broken, no deadlock, no runaway")
        how = ("exhaustive" if self.exhaustive else
               "stopped at max_states: NOT a proof" if self.stopped_at_max_states else
               "stopped at the first violation")
        lines.append(f"  {counts}; {how}")
        return "\n".join(lines)

    def __repr__(self):
        return self.summary()

    def _repr_html_(self):
        body = f"<pre>{html.escape(self.summary())}</pre>"
        if self.counterexample is not None:
            body += self.counterexample._repr_html_()
        return body


class _Diverged(Exception):
    """An actor rebuilt from its own history did not come back to the same state."""


def _first_line(e: BaseException) -> str:
    # An assert's message names the violation: its first line is enough.
    text = str(e).strip()
    return text.splitlines()[0] if text else "assert"


def _immutable(v) -> bool:
    t = type(v)
    if t is int or t is str or t is bool or v is None or t is float or t is bytes:
        return True
    return t is tuple and all(_immutable(x) for x in v)


def _as_op(y, sc, i):
    # What an actor yielded, as an Op: a bare yield or a string is a no-op step.
    if type(y) is Op:
        return y
    if y is None or isinstance(y, str):
        return Op(None, _NOOP_KIND, (y or "(yield)", None), _noop)
    a = sc.actors[i]
    raise TypeError(
        f"actor {a.letter} ({a.title}) yielded {type(y).__name__} {y!r}; actors yield from the "
        "primitives' methods, step() or wait_until() (a bare yield or a string is a no-op step)")


def _detached(op):
    # A wait_until predicate is evaluated while its actor is suspended, so its
    # closure cells cannot change meanwhile: a copy with fresh cells holding the
    # same values behaves the same, and stays valid after the generator moves on.
    if op is None or op.kind != "wait":
        return op
    fn = op.args[1]
    if type(fn) is not types.FunctionType or not fn.__closure__:
        return op
    cells = []
    for c in fn.__closure__:
        try:
            cells.append(types.CellType(c.cell_contents))
        except ValueError:
            cells.append(types.CellType())
    copy_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                                 tuple(cells))
    copy_fn.__kwdefaults__ = fn.__kwdefaults__
    return Op(None, "wait", (op.args[0], copy_fn), _noop, _wait_enabled)


class _ReplayEngine:
    """Reach a state by re-running its schedule from a fresh world."""

    method = "replay"

    def __init__(self, sc, res):
        self.sc, self.res = sc, res
        self.live = None
        self.live_sched = None

    def start(self):
        self.live = _Run(self.sc)
        self.live_sched = ""
        if self.live.failure is not None:
            return self.live.failure
        return None

    def initial(self):
        live = self.live
        n = len(live.ops)
        return live.world._key(), tuple(live.actor_key(i) for i in range(n)), None

    def _restore(self, sched, wkey):
        live = self.live
        if self.live_sched is not None and sched.startswith(self.live_sched):
            start = len(self.live_sched)
        else:
            live = self.live = _Run(self.sc)
            start = 0
            self.res.replays += 1
        index = self.sc._index
        for ch in sched[start:]:
            live.step(index[ch])
        self.res.replayed_steps += len(sched) - start
        self.live_sched = sched
        if live.world._key() != wkey:
            raise RuntimeError(
                f"scenario {self.sc.name!r} is not deterministic: replaying schedule "
                f"{sched!r} gave a different world than the first time (do the actors or "
                "the world use unseeded randomness, globals or set order?)")

    def runnable(self, node):
        if self.live_sched != node[0]:
            self._restore(node[0], node[1])
        return self.live.runnable()

    def child(self, node, i):
        sched, wkey, akeys = node[0], node[1], node[2]
        if self.live_sched != sched:
            self._restore(sched, wkey)
        live = self.live
        try:
            live.step(i)
        except Violation as bad:
            self.live_sched = None
            return bad.name
        self.live_sched = sched + self.sc.letters[i]
        ak = akeys[:i] + (live.actor_key(i),) + akeys[i + 1:]
        return live.world._key(), ak

    def verdict(self):
        return self.live.verdict(), all(self.live.done)

    def payload(self):
        return None


class _SnapshotEngine:
    """Reach a state by restoring its saved world and rebuilding one actor alone.

    A node carries the saved world, each actor's pending Op and the values
    each actor has received.  A transition needs the world (restored in place
    from the saved primitive states and attributes) and the stepping actor's
    generator in the node's state: taken from a pool of suspended generators
    keyed by actor state, or rebuilt by calling the actor afresh and sending
    it its history.  A rebuilt actor must come back with exactly the state key
    recorded; if not (it touched shared state between steps), the search
    starts over with the replay engine.
    """

    method = "snapshot"
    POOL_MAX = 50_000

    def __init__(self, sc, res):
        self.sc, self.res = sc, res
        self.letters = sc.letters
        self.pool: dict = {}
        self.pooled = 0
        self.world = None
        self.world_at = None        # the payload whose state the world holds, untouched

    def start(self):
        sc = self.sc
        w = self.world = sc.world()
        if not isinstance(w, World):
            raise TypeError(f"scenario {sc.name!r}: world() must return a kvmmu.explorer.World, "
                            f"got {type(w).__name__}")
        w._seal()
        n = len(sc.actors)
        gens, ops, results = [], [], [None] * n
        for a in sc.actors:
            g = a.fn(w)
            if not isinstance(g, types.GeneratorType):
                raise TypeError(
                    f"scenario {sc.name!r}: actor {a.letter} ({a.title}) must be a generator "
                    f"function (one that yields), but calling it returned {type(g).__name__}")
            gens.append(g)
        for i, g in enumerate(gens):
            try:
                ops.append(_as_op(next(g), sc, i))
            except StopIteration as stop:
                ops.append(None)
                results[i] = stop.value
            except AssertionError as e:
                return f"assertion failed in {self.letters[i]}: {_first_line(e)}"
        self._gens0 = gens
        self._ops0 = ops
        self._results0 = tuple(results)
        return None

    def _actor_key(self, g, op, result, hist, i=None):
        # With ``i``: also check that the actor keeps no reference to an object
        # a restore would replace (see World._nested_ids).
        global _COLLECT
        if i is None:
            return self._plain_key(g, op, result, hist)
        _COLLECT = met = []
        try:
            key = self._plain_key(g, op, result, hist)
        finally:
            _COLLECT = None
        if met:
            nested = self.world._nested_ids()
            for obj in met:
                if id(obj) in nested:
                    a = self.sc.actors[i]
                    raise _Diverged(
                        f"actor {a.letter} ({a.title}) keeps a {type(obj).__name__} that lives "
                        "inside the world across a step, which a restore would replace")
        return key

    @staticmethod
    def _plain_key(g, op, result, hist):
        if op is None:
            return ("done", _freeze(result))
        if not _FRAMES_OK:
            return ("hist", tuple(map(_freeze, hist)), op.key())
        return (_gen_key(g), op.key())

    def _runnable(self, ops):
        w, letters = self.world, self.letters
        return tuple(j for j, op in enumerate(ops) if op is not None and (
            op.enabled is None or op.enabled(op.prim, op.args, letters[j], w)))

    def initial(self):
        n = len(self.sc.actors)
        hists = ((),) * n
        akeys = tuple(self._actor_key(g, op, r, (), i) for i, (g, op, r)
                      in enumerate(zip(self._gens0, self._ops0, self._results0)))
        for g, op, ak in zip(self._gens0, self._ops0, akeys):
            if op is not None:
                self._pool_put(ak, g, op)
        ops = tuple(_detached(op) for op in self._ops0)
        wk = self.world._key()
        self._next = (ops, hists, self._results0)
        self._set_verdict(ops, self._results0)
        return wk, akeys, self.payload()

    def _pool_put(self, ak, g, op):
        if self.pooled < self.POOL_MAX:
            self.pool.setdefault(ak, []).append((g, op))
            self.pooled += 1

    def _obtain(self, i, ak, hist):
        lst = self.pool.get(ak)
        if lst:
            pair = lst.pop()
            if not lst:
                del self.pool[ak]
            self.pooled -= 1
            self.res.pool_hits += 1
            return pair
        self.res.rebuilds += 1
        self.world_at = None
        a = self.sc.actors[i]
        try:
            g = a.fn(self.world)
            y = next(g)
            for r in hist:
                y = g.send(r if _immutable(r) else copy.deepcopy(r))
            op = _as_op(y, self.sc, i)
            same = self._actor_key(g, op, None, hist, i) == ak
        except Exception as e:       # includes StopIteration: it ended early
            raise _Diverged(f"actor {a.letter} ({a.title}) raised {type(e).__name__} when "
                            "rebuilt from its own history") from e
        if not same:
            raise _Diverged(
                f"actor {a.letter} ({a.title}) does not come back to the same state when "
                "rebuilt from the values it received: does it read or write shared state "
                "between two steps (outside step(), wait_until() or a primitive's method)?")
        return g, op

    def runnable(self, node):
        return list(node[5][4])

    def child(self, node, i):
        saved, ops, hists, results, _ = node[5]
        akeys = node[2]
        g, op = self._obtain(i, akeys[i], hists[i])
        w = self.world
        if self.world_at is not node[5]:
            w._load(saved)
        self.world_at = None
        cpu = self.letters[i]
        try:
            result = op.run(op.prim, op.args, cpu, w)
        except Violation as bad:
            return bad.name
        kept = result if _immutable(result) else copy.deepcopy(result)
        hist = hists[i] + (kept,)
        new_result = None
        try:
            new_op = _as_op(g.send(result), self.sc, i)
        except StopIteration as stop:
            new_op = None
            new_result = stop.value
        except AssertionError as e:
            return f"assertion failed in {cpu}: {_first_line(e)}"
        except Exception as e:
            e.add_note(f"kvmmu.explorer: raised by actor {cpu} ({self.sc.actors[i].title}) of "
                       f"scenario {self.sc.name!r} after schedule {node[0] + cpu!r}")
            raise
        ak = self._actor_key(g, new_op, new_result, hist, i)
        if new_op is not None:
            self._pool_put(ak, g, new_op)
        new_ops = ops[:i] + (_detached(new_op),) + ops[i + 1:]
        new_results = results if new_op is not None else \
            results[:i] + (new_result,) + results[i + 1:]
        self._next = (new_ops, hists[:i] + (hist,) + hists[i + 1:], new_results)
        self._verdict = None
        return w._key(), akeys[:i] + (ak,) + akeys[i + 1:]

    def _set_verdict(self, ops, results):
        sc, w = self.sc, self.world
        done = [op is None for op in ops]
        self._runnable_next = self._runnable(ops)
        v = None
        for inv in sc.invariants:
            if not inv.fn(w):
                v = inv.name
                break
        else:
            if all(done):
                v = _final_verdict(sc, w, {self.letters[j]: results[j] for j in range(len(ops))})
            elif not self._runnable_next:
                v = "deadlock"
        self._verdict = (v, all(done))

    def verdict(self):
        if self._verdict is None:
            self._set_verdict(self._next[0], self._next[2])
        return self._verdict

    def payload(self):
        ops, hists, results = self._next
        if self._verdict is None:
            self._set_verdict(ops, results)
        p = (self.world._save(), ops, hists, results, self._runnable_next)
        self.world_at = p
        return p


def _final_verdict(sc, world, results):
    fc = sc.final_check
    if fc is None:
        return None
    r = fc(world, results)
    if isinstance(r, str):
        return r or "final check"
    return None if r else "final check"


def explore(scenario: Scenario, preemption_bound: int | None = None, max_steps: int = 1000,
            stop_at_first: bool = True, order: str = "bfs", max_states: int = 1_000_000,
            record_states: bool = False, method: str = "snapshot") -> Result:
    """Check ``scenario`` over every interleaving (see the module docstring).

    ``preemption_bound``: at most this many switches away from an actor that
    could still run (None: no bound).  ``stop_at_first``: stop at the first
    violation; otherwise every reachable state is explored and
    ``result.violations`` lists every kind found (name, shortest schedule).
    ``order``: ``"bfs"`` (the counterexample is a shortest one) or
    ``"dfs"``.  ``max_states``: give up (``result.exhaustive`` False) beyond
    this many states.  ``record_states``: keep the state keys in
    ``result.visited`` (discovery order).  ``method``: how a state is reached
    again, ``"snapshot"`` (restore the world, rebuild one actor; falls back
    to replay if an actor touches shared state between steps) or
    ``"replay"`` (re-run the schedule); both explore the same states.
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, got {type(scenario).__name__}")
    if preemption_bound is not None:
        check_int("preemption_bound", preemption_bound, 0)
    check_int("max_steps", max_steps, 1)
    check_bool("stop_at_first", stop_at_first)
    check_choice("order", order, ("bfs", "dfs"))
    check_int("max_states", max_states, 1)
    check_bool("record_states", record_states)
    check_choice("method", method, ("snapshot", "replay"))
    args = (scenario, preemption_bound, max_steps, stop_at_first, order, max_states,
            record_states)
    if method == "snapshot":
        try:
            return _explore(_SnapshotEngine, *args)
        except _Diverged as why:
            res = _explore(_ReplayEngine, *args)
            res.note = f"explored by replay: {why}"
            return res
    return _explore(_ReplayEngine, *args)


def _explore(engine_class, scenario, preemption_bound, max_steps, stop_at_first, order,
             max_states, record_states) -> Result:
    started = time.perf_counter()
    res = Result(scenario, order, preemption_bound, max_steps)
    engine = engine_class(scenario, res)
    res.method = engine.method
    letters = scenario.letters
    bounded = preemption_bound is not None
    bfs = order == "bfs"
    found: dict[str, str] = {}           # violation name -> shortest schedule found

    def record(name, sched):
        if name not in found:
            found[name] = sched
            res.violations.append((name, sched))
        elif len(sched) < len(found[name]):
            found[name] = sched
            res.violations = [(k, found[k]) for k, _ in res.violations]

    EXPAND, FINISHED, BAD = 0, 1, 2
    seen: dict = {}      # state key -> EXPAND, FINISHED or BAD (a violation)
    best: dict = {}      # search key -> preemptions used when it was queued
    frontier: deque = deque()
    stop = False

    def classify(k, sched):
        # Status of a state seen for the first time; records its violation.
        nonlocal stop
        v, finished = engine.verdict()
        res.complete_runs += finished
        seen[k] = BAD if v is not None else FINISHED if finished else EXPAND
        if v is not None:
            record(v, sched)
            stop = stop or stop_at_first
        if len(seen) > max_states:
            res.stopped_at_max_states = True
            stop = True
        return seen[k]

    failure = engine.start()
    if failure is not None:          # an actor's assert fired before its first step
        record(failure, "")
        stop = stop_at_first
    else:
        wk0, ak0, payload0 = engine.initial()
        k0 = (wk0, ak0)
        if classify(k0, "") == EXPAND:
            best[(k0, None) if bounded else k0] = 0
            frontier.append(("", wk0, ak0, None, 0, payload0))

    while frontier and not stop:
        node = frontier.popleft() if bfs else frontier.pop()
        sched, _, _, last, pre, _ = node
        runnable = engine.runnable(node)
        if len(sched) >= max_steps:
            record("runaway", sched)
            stop = stop_at_first
            continue
        children = []
        # DFS takes the children last-letter-first so that the first letter ends
        # on top of the stack (the replay engine then still holds its run).
        for i in (runnable if bfs else reversed(runnable)):
            cost = pre
            if bounded and last is not None and i != last and last in runnable:
                cost += 1            # a preemption: `last` could have gone on
                if cost > preemption_bound:
                    continue
            child = sched + letters[i]
            res.transitions += 1
            out = engine.child(node, i)
            if type(out) is str:     # the step itself failed: misuse or an assert
                record(out, child)
                stop = stop_at_first
                if stop:
                    break
                continue
            wk, ak = out
            k = (wk, ak)
            status = seen.get(k)
            if status is None:
                status = classify(k, child)
                if stop:
                    break
            if status != EXPAND:
                continue
            # Seen before: expand again only with fewer preemptions used (BFS
            # reaches every state first at its smallest depth; in DFS a later,
            # shorter path adds nothing to the verdict: see the docstring).
            sk = (k, i) if bounded else k
            prev = best.get(sk)
            if prev is not None and prev <= cost:
                continue
            best[sk] = cost
            children.append((child, wk, ak, i, cost, engine.payload()))
        frontier.extend(children)
    res.exhaustive = not stop
    res.states = len(seen)
    res.seconds = time.perf_counter() - started
    if record_states:
        res.visited = tuple(seen)
    if found:
        res.violated = True
        name, sched = min(res.violations, key=lambda nv: len(nv[1]))
        res.invariant = name
        res.schedule = sched
        trace = run_schedule(scenario, sched, max_steps=max_steps)
        if trace.violation != name:
            raise RuntimeError(
                f"scenario {scenario.name!r} is not deterministic: the counterexample "
                f"{sched!r} broke {name!r} during the search but {trace.violation!r} on replay")
        res.counterexample = trace
    return res


# --------------------------------------------------------------------------
# Teaching scenarios (small enough to count by hand; tests do)
# --------------------------------------------------------------------------

class CounterWorld(World):
    """One shared counter."""

    def __init__(self):
        super().__init__()
        self.counter = self.word("counter", 0)


def inc_read_write(w: CounterWorld):
    """counter++ as a load and a store: two steps, so an update can be lost."""
    v = yield from w.counter.read()
    yield from w.counter.write(v + 1)
    return v + 1


def inc_cmpxchg(w: CounterWorld):
    """counter++ with a try_cmpxchg loop: a lost race retries from the value found."""
    old = yield from w.counter.read()
    while True:
        ok, old = yield from w.counter.try_cmpxchg(old, old + 1)
        if ok:
            return old + 1


def _counter_is_two(w, results):
    return True if w.counter.value == 2 else f"lost update: counter is {w.counter.value}, not 2"


def lost_update(atomic: bool = False) -> Scenario:
    """Two CPUs increment one counter; with ``atomic`` they use try_cmpxchg."""
    check_bool("atomic", atomic)
    fn = inc_cmpxchg if atomic else inc_read_write
    how = "try_cmpxchg" if atomic else "read, write"
    return Scenario(
        f"lost update ({how})", CounterWorld,
        [Actor("A", f"counter++ ({how})", fn), Actor("B", f"counter++ ({how})", fn)],
        final_check=_counter_is_two,
        description="Both increments must land: the counter ends at 2.")


class TwoLockWorld(World):
    """Two spinlocks and a count of critical sections completed."""

    def __init__(self):
        super().__init__()
        self.l1 = self.spinlock("L1")
        self.l2 = self.spinlock("L2")


def take_both(first: str, second: str):
    """An actor taking two locks in the order given, then releasing them."""
    def actor(w: TwoLockWorld):
        a, b = w.primitive(first), w.primitive(second)
        yield from a.lock()
        yield from b.lock()
        yield from b.unlock()
        yield from a.unlock()
    actor.__qualname__ = f"take_both_{first}_{second}"
    return actor


def _locks_free(w, results):
    return True if w.l1.holder is None and w.l2.holder is None else "a lock is still held"


def abba_deadlock(ordered: bool = False) -> Scenario:
    """A takes L1 then L2; B takes L2 then L1 (or, ``ordered``, L1 then L2 too)."""
    check_bool("ordered", ordered)
    b_order = ("L1", "L2") if ordered else ("L2", "L1")
    return Scenario(
        "lock order " + ("L1 -> L2 everywhere" if ordered else "ABBA"), TwoLockWorld,
        [Actor("A", "lock L1, L2", take_both("L1", "L2")),
         Actor("B", f"lock {b_order[0]}, {b_order[1]}", take_both(*b_order))],
        final_check=_locks_free,
        description="Both CPUs must get through; taking locks in opposite orders can deadlock.")


#: What the updater writes into the old memslots array when it frees it.
POISON = 0xDEAD


class MemslotsWorld(World):
    """An SRCU-protected pointer to one of two arrays, in the style of kvm->memslots."""

    def __init__(self):
        super().__init__()
        self.srcu = self.srcu_domain("kvm->srcu")
        self.memslots = self.word("memslots", 1)       # 1: the old array, 2: the new one
        self.old = self.word("old.slot", 0x1000)
        self.new = self.word("new.slot", 0x2000)

    def describe(self, name, value):
        if value == POISON and name == "old.slot":
            return "POISON (freed)"
        return super().describe(name, value)


def srcu_reader(w: MemslotsWorld):
    """A vCPU: enter SRCU, read the memslots pointer, use the array, leave."""
    idx = yield from w.srcu.read_lock()
    which = yield from w.memslots.read()
    slot = w.old if which == 1 else w.new
    val = yield from slot.read()
    yield from w.srcu.read_unlock(idx)
    return val


def srcu_updater(w: MemslotsWorld, synchronize: bool = True):
    """Publish the new array, wait for readers (if ``synchronize``), free the old one."""
    yield from w.memslots.write(2)
    if synchronize:
        yield from w.srcu.synchronize()
    yield from w.old.write(POISON)


def _reader_saw_live_memory(w, results):
    return True if results["A"] != POISON else "use after free: the vCPU read the freed array"


def srcu_grace_period(synchronize: bool = True) -> Scenario:
    """A vCPU reads memslots under SRCU while an update frees the old array."""
    check_bool("synchronize", synchronize)
    title = "publish, synchronize_srcu, free" if synchronize else "publish, free"
    return Scenario(
        "memslots update " + ("with" if synchronize else "without") + " synchronize_srcu",
        MemslotsWorld,
        [Actor("A", "vCPU (SRCU reader)", srcu_reader),
         Actor("B", title, partial(srcu_updater, synchronize=synchronize))],
        final_check=_reader_saw_live_memory,
        description="The old array may be freed only after every reader that could see it left.")
