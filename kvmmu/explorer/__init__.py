"""The interleaving explorer: run concurrent actors under every schedule.

Four race chapters use this one instrument.  An *actor* is a generator
function that ``yield``s at every point where another CPU may act; each
shared-memory access and each lock operation is exactly one step.  The same
actors run three ways:

- ``run_schedule(scenario, "AABAB")``: one exact schedule, one letter per
  actor per step (OSTEP's ``-P`` flag);
- ``run_random(scenario, seed)``: a schedule drawn from ``random.Random(seed)``;
- ``explore(scenario)``: every interleaving, breadth-first by default, with
  visited-state hashing, partial-order reduction and an optional preemption
  bound.

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
still explored correctly, by slower means: live steps or the replay method
(see below).  To let the partial-order reduction skip orders that cannot
matter, say what a ``step()`` or ``wait_until()`` touches (``reads=``,
``writes=``) and what an invariant reads (see "Partial-order reduction").

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
resumed twice.  ``explore`` has three ways to get back to a state; all three
explore exactly the same states in the same order (the tests check it):

- ``method="snapshot"`` (default), the memo engine: the world is restored in
  place from the saved states of its primitives (only those whose state
  differs) and attributes, and each actor runs as an automaton learned on
  the way.  Its local states are interned, and a *local transition* -- in
  local state ``s`` it performs its pending step, receives ``r`` and runs on
  to its next ``yield`` -- is remembered as ``(s, r) -> s'``: the generator
  is resumed only the first time a pair ``(s, r)`` occurs, and the state key
  of the frames (below) is computed once per local state, not per
  transition.  This reuse relies on the rule above: the code between two
  ``yield``s depends only on the frames and ``r``.  The engine checks it
  every time it runs such code: the world and its primitives are switched to
  watching subclasses for the time (:mod:`kvmmu.explorer.guard`), and the
  world's state is compared before and after.  Code that read a plain
  attribute no state has changed so far (a configuration) is still reused:
  the attribute is taken as constant, and the search starts over should a
  later state change it.  Code that read or wrote anything else makes its
  step *live*: from then on that step is always run from a real generator in
  the state at hand, as the legacy engine runs it, and it conflicts with
  every other step.  A step whose function may change the actor's own
  objects (a closure over the actor's lists, a ``nonlocal``) is live from the
  start.  A live generator is taken from a pool or rebuilt from the values
  the actor received; a rebuilt actor that does not come back with exactly
  its recorded key, an actor that keeps an object from below the world's
  attributes across a step, or a custom primitive without ``_load`` make
  ``explore`` start over by replay (``result.note`` says why).
- ``method="snapshot-legacy"``, the engine before the memo engine: the same
  restores, but every transition resumes a generator (pooled or rebuilt)
  and freezes its frames.  Kept as the benchmark's reference.
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
length.  The memo engine uses the same keys, each actor's part interned (an
object per distinct local key): remembering ``(s, r) -> s'`` is sound
because ``s'`` is then a function of the frames and ``r`` alone (the code
between the two steps was seen to keep off the world), and a live step
computes ``s'`` anew in the world at hand.

Order and counts.  ``order="bfs"`` (default) expands states by depth, so the
first counterexample found is a *shortest* one (fewest steps); ``"dfs"``
expands depth-first and reports the first it finds.  ``states`` counts
distinct states (world + actors) discovered, ``transitions`` the steps the
search executed (replays not included), ``complete_runs`` the distinct
states in which every actor had finished; with the reduction, those of the
reduced search (``complete_runs`` is the same: every final state is
reached).

Partial-order reduction and why it is sound
--------------------------------------------
Interleavings that differ only in the order of independent steps (steps of
different actors that touch different state) reach the same states; the
reduction (``reduction=True``, the default; memo engine, no preemption
bound) explores one order of them.  Which steps are independent comes from
*footprints*: the locations a step reads and writes
(:mod:`kvmmu.explorer.footprint`).  The built-in primitives know theirs
(``Word.read`` reads the word, ``SpinLock.lock`` writes the lock, the
``read_lock`` calls of two CPUs on one rwlock or SRCU domain commute); a
custom primitive declares its own with ``_footprint(kind, args)``, a step with
``step(label, fn, reads=..., writes=...)``, a wait with
``wait_until(label, pred, reads=...)``.  Whatever declares nothing touches
everything: it conflicts with every other step, so a scenario that declares
nothing is explored as before.

In each state the search steps the enabled members of a *stubborn set*
(Valmari; Godefroid's persistent sets) instead of every enabled actor.  The
set is a set of actors closed under two rules: an enabled member's pending
step that conflicts with what another actor may *ever* do (its lifetime
footprint) brings that actor in; a member that is blocked brings in the
actors one of which must step before it can be enabled (a lock's holder,
the readers a ``synchronize()`` waits for, the writers of what a wait's
predicate reads: ``_enablers`` for custom primitives), and an actor blocked
that way need not come in itself: nothing outside the set can wake it.
Each enabled actor seeds one set; the smallest is used.  Then every step an
actor outside the set can take before a member moves is independent of the
members' pending steps, so the members' steps commute with such a run and
stay enabled along it: exploring only the members loses no state where the
search can end (Godefroid's theorem) -- every deadlock and every final state
of the full search is reached.

- Lifetime footprints are learned: the union of the footprints of every step
  each actor was seen to have pending (a first pass runs each actor first
  once).  Should a state show a step outside its actor's lifetime footprint
  after some state was reduced, the search starts over with the larger
  one.  The argument: until the first such step appears, the search is the
  search of a system where that step blocks forever and touches nothing, for
  which the sets are right; in that system the state where the step is
  pending is reached (a blocked actor is a local state that every ordering
  of the other steps still reaches), so it is met, here.
- Invariants are checked after every step, so a step that may change what
  an invariant reads is *visible*, and visible steps conflict with each
  other whatever their locations.  An invariant may declare what it reads
  (``Invariant(name, fn, reads=...)``); one that declares nothing reads
  everything, and every step that writes anything is visible.  Because
  visible steps keep their order, every run of the full search has a run of
  the reduced one with the same visible steps in the same order, hence the
  same sequence of invariant values: a violated invariant is found.  Final
  checks need no declaration: final states are reached exactly.
- With state caching a reduced set could postpone a step forever around a
  cycle of states (the "ignoring" problem).  The proviso: a state whose set
  led to a state seen before is expanded fully.  Every cycle of the reduced
  graph then holds a fully expanded state (along a cycle of reduced states
  each state would have been discovered after the one before it), which is
  the cycle condition of Peled's ample sets; two equal states are still
  expanded once, whichever path reached them.
- A violation the reduced search finds (any violation, a runaway included)
  is re-derived by the full search, whose verdict, counterexample (a
  shortest one, breadth-first) and counts are reported; the reduced search
  only ever *proves* that the checks hold.  A reduced search that completes
  without reaching ``max_steps`` proves it for runs of any length.
- ``result.search`` says which search the counts come from: "partial-order
  reduced" if some state was reduced, "full" otherwise (a reduced search
  that reduced nothing is the full search, state for state).
- A wrong declaration (a step that writes what it does not declare) makes
  the reduction unsound; ``reduction=False`` ignores every declaration.

Where the code lives
--------------------
``kvmmu.explorer`` is a package; everything above is importable from it
directly (``from kvmmu.explorer import World, explore``), including the
private names custom primitives use (``_Primitive``).  One module per piece:

- ``ops``: ``Op`` (what an actor yields), ``Violation``, ``_Diverged``;
- ``primitives``: the ``_Primitive`` base and ``Word``; ``locks``:
  ``SpinLock``, ``Mutex``, ``RWLock``; ``rcu``: ``SRCU``, ``RCU``;
- ``world``: ``World`` (keys, save/restore in place), ``step``, ``wait_until``;
- ``scenario``: ``Actor``, ``Invariant``, ``Scenario``;
- ``freeze`` and ``frames``: the state key (frozen values, generator frames);
- ``run``: one run (``_Run``, ``state_key``); ``trace``: ``Trace``,
  ``run_schedule``, ``run_random``;
- ``search``: ``explore`` and ``Result``, over the engines ``memo``
  (method "snapshot"), ``snapshot`` (method "snapshot-legacy") and
  ``replay``;
- ``footprint`` and ``por``: footprints, enablers and stubborn sets;
  ``guard``: watching the world while an actor runs between two steps;
- ``scenarios``: the teaching scenarios.
"""
from __future__ import annotations

# The public API, and every private name the single-module explorer had (other
# modules and tests import some of them, e.g. _Primitive).  freeze._COLLECT is
# not re-exported: the snapshot engine rebinds it in kvmmu.explorer.freeze.
from .freeze import (_ACTIVE, _FREEZE, _ITER_TYPES, _freeze, _freeze_builtin,  # noqa: F401
                     _freeze_cell, _freeze_function, _freeze_object, _freezer_for, _guarded,
                     _type_name)
from .footprint import EVERYTHING, NOTHING, Footprint, declared  # noqa: F401
from .frames import _FRAMES_OK, _TRANSPARENT, _gen_key, _probe_frames  # noqa: F401
from .locks import (Mutex, RWLock, SpinLock, _lock_free, _lock_release,  # noqa: F401
                    _lock_take, _rw_no_writer, _rw_read_lock, _rw_read_unlock, _rw_unheld,
                    _rw_write_lock, _rw_write_unlock)
from .ops import Op, Violation, _Diverged  # noqa: F401
from .primitives import (Primitive, Word, _Primitive, _word_cmpxchg, _word_read,  # noqa: F401
                         _word_write, _word_xchg)
from .rcu import (RCU, SRCU, _srcu_read_lock, _srcu_read_unlock,  # noqa: F401
                  _srcu_sync_begin, _srcu_sync_done, _srcu_sync_end)
from .memo import _MemoEngine  # noqa: F401
from .por import _enablers_of, _op_footprint, _Reducer  # noqa: F401
from .replay import _ReplayEngine  # noqa: F401
from .run import (_NOOP_KIND, _Run, _as_op, _final_verdict, _first_line,  # noqa: F401
                  _run_checked, _schedule_index, state_key)
from .scenario import Actor, Invariant, Scenario
from .scenarios import (POISON, CounterWorld, MemslotsWorld, TwoLockWorld,  # noqa: F401
                        _counter_is_two, _locks_free, _reader_saw_live_memory, abba_deadlock,
                        inc_cmpxchg, inc_read_write, lost_update, srcu_grace_period,
                        srcu_reader, srcu_updater, take_both)
from .search import METHODS, Result, _explore, explore  # noqa: F401
from .snapshot import _detached, _SnapshotEngine  # noqa: F401
from .trace import Step, Trace, TraceView, _short, _traced_run, run_random, run_schedule  # noqa: F401
from .world import (_BUILTIN_PRIMITIVES, _WORLD_INTERNALS, World, _children,  # noqa: F401
                    _immutable, _immutable_scalar, _noop, _only_primitives, _ref_items,
                    _same_refs, _step_run, _text, _value_like, _wait_enabled, step, wait_until)

__all__ = [
    "World", "Word", "RWLock", "SpinLock", "Mutex", "SRCU", "RCU",
    "Op", "Violation", "step", "wait_until",
    "Actor", "Invariant", "Scenario", "Step", "Trace", "Result",
    "run_schedule", "run_random", "explore", "state_key",
    "lost_update", "abba_deadlock", "srcu_grace_period", "POISON",
]
