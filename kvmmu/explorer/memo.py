"""The memo engine of ``explore`` (``method="snapshot"``, the default).

Each actor is run as an automaton learned on the way: its local states are
interned (the state key of :mod:`kvmmu.explorer.frames`, computed once per
local state, not once per transition), and a *local transition* -- the
actor in local state ``s`` performs its pending step, receives value ``r``
and runs on to its next ``yield`` -- is remembered as ``(s, r) -> s'``.  A
transition of the search then costs the step itself on the restored world
(``Word.read`` is one attribute load) plus dictionary lookups; the Python
generator is resumed only the first time a ``(s, r)`` pair occurs.

That reuse is right when the actor's code between two yields depends on
nothing but its frames and ``r``, the rule of the package docstring ("touch
shared state only in steps").  The engine checks it every time it runs such
code: the world and its primitives are watched (:mod:`kvmmu.explorer.guard`)
and compared before and after.  Reading a plain attribute of the world that
no state has changed so far (a configuration such as ``w.order``) is
allowed: the attribute is taken as constant, and the search starts over
(``_Restart``) should a later state change it.  Anything else the code read
or wrote makes the step *live* (``_demote``): from then on it is run from a
real generator in the state at hand, as the legacy engine runs every step,
and its footprint is "everything".  A step that may change the actor's own
objects (``_closed`` says no: a step function closing over the actor's
lists, rebinding its variables) is live from the start.  A live generator
comes from a pool (the generators that reached the state) or is rebuilt by
sending a fresh one the values received on the way.

World states are tuples of the primitives' states (plus the frozen plain
attributes); a step of a built-in primitive changes one element, so the
next key shares all the others.  The world is restored by loading only the
primitives whose state object differs.
"""
from __future__ import annotations

import copy
import dis
import functools
import types
from dataclasses import fields, is_dataclass
from enum import Enum

from . import freeze as _freeze_mod
from .footprint import EVERYTHING, NOTHING, Footprint
from .frames import _FRAMES_OK, _gen_key
from .freeze import _freeze
from .guard import _Watch
from .ops import Op, Violation, _Diverged
from .por import _BUILTIN_ENABLED, _RUN_MODES, _declared_footprint, _enablers_of, _op_footprint
from .primitives import _Primitive
from .run import _as_op, _final_verdict, _first_line
from .world import _WORLD_INTERNALS, World, _immutable

__all__ = []

_DIRTY = object()       # the live world's plain attributes are in no known state


class _Unwatched:
    """A _Watch that watches nothing (for steps whose code is run live anyway)."""

    ok = True

    def start(self):
        pass

    def stop(self):
        return []


_UNWATCHED = _Unwatched()
_UNSEEN = ("unseen",)          # what code run unwatched touched: anything
_NO_PRIMS = frozenset()


class _Copy:
    """A mutable value an actor received, kept in a history (rebuilds send copies of it)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _Restart(Exception):
    """What the search relied on changed (a footprint grew, an assumption broke): start over."""


class _Rec:
    """One local state of one actor (see the module docstring)."""

    __slots__ = ("key", "op", "result", "parent", "recv", "pool", "memo", "closed",
                 "touch", "tainted", "fp", "learned", "base_fp", "simple", "pure", "done",
                 "enabled", "origin", "cont", "opm", "auto", "static", "seen_op", "pred",
                 "watch_pred")

    def __init__(self, key, op, result, parent, recv):
        self.key = key
        self.op = op
        self.result = result
        self.parent = parent      # (_Rec, value received) of the first path here, or None
        self.recv = recv
        self.pool = []            # live generators suspended in this state
        self.memo = {}            # frozen value received -> next _Rec
        self.closed = False
        self.touch = -1           # index of the only primitive the step changes, -1: any
        self.tainted = False      # its frames hold a container of the world
        self.fp = None            # effective footprint (set by the reducer)
        self.base_fp = None
        self.learned = False      # its footprint is in the actor's lifetime footprint
        self.done = True          # the actor has finished (``result`` is its return value)
        self.enabled = None       # (enabled, prim, args) of the pending step, None: always
        self.simple = False       # its frames hold no mutable object at all
        self.pure = False         # no code on the way here touched the world: a rebuild
        #                           needs no check
        self.origin = None        # (ps, saved): the world the code that led here ran in,
        #                           when it touched the world (a rebuild puts it back)
        self.cont = None          # what the code after this step was seen to touch
        self.opm = None           # _Keyed: the step's outcomes, by the states it touched
        self.auto = False         # its footprint is what its runs were seen to touch
        self.static = None        # the footprint its primitive or a declaration gives
        self.seen_op = None       # what its runs were seen to touch (auto), None: not yet
        self.pred = None          # what its enabled() was seen to read (auto), None: not yet
        self.watch_pred = False   # auto, and it may block: watch its enabled() too


class _Keyed:
    """The continuations of one ``(local state, value)`` whose code touched primitives.

    That code is a function of the frames, the value and the state of the
    primitives it touched (``touch``, their indices): ``table`` maps those
    states to ``(next _Rec, writes)``, ``writes`` the new states of the
    primitives it changed, as ``(index, state)``.
    """

    __slots__ = ("touch", "touchset", "table")

    def __init__(self, touch):
        self.touch = touch
        self.touchset = frozenset(touch)
        self.table = {}


class _MemoEngine:
    """Reach a state by restoring the world's primitives; step actors by their learned automata."""

    method = "snapshot"
    POOL_MAX = 50_000

    def __init__(self, sc):
        self.sc = sc
        self.res = None
        self.letters = sc.letters
        self.n = len(sc.actors)
        self.ids = [dict() for _ in range(self.n)]
        self.started = False
        self.failure = None
        self.pooled = 0
        self.finals: dict = {}        # state key -> final verdict (final checks run once)
        self._ample: dict = {}        # (actor states, runnable) -> actors to step
        self._ample_gen = -1
        self.reducer = None           # the _Reducer of a reduced search running, else None
        self.grew = False             # a footprint grew since the search last looked
        self.demoted = 0              # local states whose step became live (see _demote)
        self.varying: set = set()     # world attributes some state changed
        self.assumed: set = set()     # world attributes read between steps, taken as constant
        self._assumable: dict = {}    # attribute name -> whether it may be assumed constant

    # -- set-up ------------------------------------------------------------
    def start(self):
        if self.started:
            return self.failure
        self.started = True
        sc = self.sc
        w = self.world = sc.world()
        if not isinstance(w, World):
            raise TypeError(f"scenario {sc.name!r}: world() must return a kvmmu.explorer.World, "
                            f"got {type(w).__name__}")
        w._seal()
        self.prims = list(w._prims)
        self.prim_index = {id(p): k for k, p in enumerate(self.prims)}
        self.prim_by_name = {p.name: k for k, p in enumerate(self.prims)}
        self.watch = _Watch(w, self.prims)
        self.watch.stop()
        # Attributes the world leaves out of its state (``_extras``) are never
        # saved or restored, so they cannot change: configuration and handles.
        self.fixed_attrs = frozenset(k for k in vars(w) if k not in _WORLD_INTERNALS) \
            - frozenset(w._extras())
        gens = []
        for a in sc.actors:
            g = a.fn(w)
            if not isinstance(g, types.GeneratorType):
                raise TypeError(
                    f"scenario {sc.name!r}: actor {a.letter} ({a.title}) must be a generator "
                    f"function (one that yields), but calling it returned {type(g).__name__}")
            gens.append(g)
        recs = []
        watch = self.watch
        for i, g in enumerate(gens):
            before = (tuple([p._state() for p in self.prims]), w._save_extras())
            watch.start()
            try:
                y = next(g)
            except StopIteration as stop:
                watch.stop()
                recs.append(self._intern(i, None, None, stop.value, None, None, True))
                continue
            except AssertionError as e:
                watch.stop()
                self.failure = f"assertion failed in {self.letters[i]}: {_first_line(e)}"
                return self.failure
            except BaseException:
                watch.stop()
                raise
            # Code before the first yield that looks at the world runs again,
            # in another world, when the actor is rebuilt: check those rebuilds.
            pure = not watch.stop() and watch.ok
            op = _as_op(y, sc, i)
            rec = self._intern(i, g, op, None, None, None, pure, None if pure else before)
            self._pool(rec, g, op)
            recs.append(rec)
        ps = tuple([p._state() for p in self.prims])
        saved = w._save_extras()
        ekey = w._extras_key()
        self.root = (ps, saved, ekey, tuple(recs))
        self.root_items = _items(ekey) if type(w).snapshot_extra is World.snapshot_extra \
            else None
        self.cur_ps, self.cur_saved = ps, saved
        return None

    def initial(self):
        ps, saved, ekey, recs = self.root
        self._load(ps, saved)
        self._next = (ps, saved, ekey, recs)
        self._runnable = None
        return (ps, ekey, recs), None

    # -- actor states ------------------------------------------------------
    def _intern(self, i, g, op, result, parent, recv, pure, origin=None):
        """The _Rec of actor i in the state just reached (g suspended at op, or done).

        ``parent``/``recv``: the state it came from and the value it received;
        ``pure``: no code on that path touched the world; ``origin``: the
        world that code ran in, if it touched it (kept for exact rebuilds).
        """
        if op is None:
            key = ("done", _freeze(result))
            tainted, simple = False, True
        else:
            key, tainted, simple = self._actor_key(i, g, op)
        rec = self.ids[i].get(key)
        if rec is not None:
            return rec
        rec = _Rec(key, None, result, parent, recv)
        rec.simple = simple
        rec.pure = pure
        rec.origin = origin
        rec.done = op is None
        if op is None:
            pass
        elif (not tainted and op.prim is not None and op.run in _RUN_MODES and op.footprint is None
              and op.enabled in _BUILTIN_ENABLED and _plain(op.args)):
            # A built-in primitive's step: module-level functions, plain arguments.
            rec.closed = True
            rec.op = op
            rec.touch = self.prim_index.get(id(op.prim), -1)
            rec.base_fp = rec.static = _op_footprint(op)
        else:
            shared = self._shared_ids()
            rec.tainted = tainted
            rec.closed = not tainted and _closed(op, shared)
            rec.op = _detach(op, self.world, shared) if rec.closed else _detach_wait(
                op, self.world, shared)
            if rec.closed and op.prim is not None and op.run in _RUN_MODES \
                    and op.enabled in _BUILTIN_ENABLED:
                rec.touch = self.prim_index.get(id(op.prim), -1)
            elif rec.closed:
                rec.opm = _Keyed(())
            declared = None if tainted else _declared_footprint(op)
            if declared is None and rec.closed:
                # Nothing says what it touches: watch it (see _run_op and
                # _runnable_now, which watches what a blocking step waits on).
                rec.auto = True
                rec.watch_pred = op.enabled is not None
                rec.base_fp = None
            else:
                rec.static = EVERYTHING if tainted else _op_footprint(op)
                rec.base_fp = rec.static
        if rec.op is not None and rec.op.enabled is not None:
            rec.enabled = (rec.op.enabled, rec.op.prim, rec.op.args)
        self.ids[i][key] = rec
        return rec

    def _actor_key(self, i, g, op):
        # The key; whether the frames hold a way into the world (a container
        # of the world or a handle, whose deepcopy is itself: code between
        # steps could read the world through it unseen); whether they hold
        # no mutable object at all.  Anything deeper in the world is refused,
        # as the legacy engine's alias check does.
        if not _FRAMES_OK:
            raise _Diverged("this Python does not show generator frames to the explorer")
        _freeze_mod._COLLECT = met = []
        try:
            key = (_gen_key(g), op.key())
        finally:
            _freeze_mod._COLLECT = None
        tainted = False
        if met:
            nested = self.world._nested_ids()
            top = self._top_ids()
            for obj in met:
                if id(obj) in nested:
                    a = self.sc.actors[i]
                    raise _Diverged(
                        f"actor {a.letter} ({a.title}) keeps a {type(obj).__name__} that lives "
                        "inside the world across a step, which a restore would replace")
                if id(obj) in top or (_is_handle(obj) and not _is_value(obj)):
                    tainted = True
        return key, tainted, not met

    def _top_ids(self) -> set:
        return {id(v) for v in self.world._extras().values() if type(v) in (dict, list, set)}

    def _shared_ids(self) -> set:
        w = self.world
        return self._top_ids() | {id(w)} | {id(p) for p in self.prims}

    def _pool(self, rec, g, op):
        if self.pooled < self.POOL_MAX:
            rec.pool.append((g, op))
            self.pooled += 1

    def _history(self, rec):
        """The actor's first path to ``rec``: the _Recs from its first one, in order."""
        chain = [rec]
        while rec.parent is not None:
            rec = rec.parent
            chain.append(rec)
        chain.reverse()
        return chain

    def _generator(self, i, rec):
        """(generator, its Op) suspended in ``rec``: pooled, or rebuilt from its history."""
        if rec.pool:
            self.pooled -= 1
            self.res.pool_hits += 1
            return rec.pool.pop()
        self.res.rebuilds += 1
        a = self.sc.actors[i]
        # Each piece of code on the way runs in the world it first ran in, if
        # it touched the world: the rebuild is then exact, whatever it reads.
        chain = self._history(rec)
        try:
            self._put_back(chain[0].origin)
            g = a.fn(self.world)
            y = next(g)
            for link in chain[1:]:
                self._put_back(link.origin)
                v = link.recv
                y = g.send(copy.deepcopy(v.value) if type(v) is _Copy else v)
            op = _as_op(y, self.sc, i)
            same = rec.pure or self._actor_key(i, g, op)[0] == rec.key
        except _Diverged:
            raise
        except Exception as e:       # includes StopIteration: it ended early
            raise _Diverged(f"actor {a.letter} ({a.title}) raised {type(e).__name__} when "
                            "rebuilt from its own history") from e
        if not same:
            raise _Diverged(
                f"actor {a.letter} ({a.title}) does not come back to the same state when "
                "rebuilt from the values it received: does it read or write shared state "
                "between two steps (outside step(), wait_until() or a primitive's method)?")
        return g, op

    def _put_back(self, origin):
        # The world a rebuilt actor's code ran in the first time (None: any).
        if origin is not None:
            self._dirty()
            self._load(*origin)

    # -- the world ---------------------------------------------------------
    def _load(self, ps, saved):
        cur = self.cur_ps
        if cur is not ps:
            prims = self.prims
            if cur is None:
                for p, st in zip(prims, ps):
                    p._load(st)
            else:
                for k in range(len(ps)):
                    st = ps[k]
                    if cur[k] is not st:
                        prims[k]._load(st)
            self.cur_ps = ps
        if self.cur_saved is not saved:
            self.world._load_extras(saved)
            self.cur_saved = saved

    def _dirty(self):
        self.cur_ps = None
        self.cur_saved = _DIRTY

    def _capture(self, base_ps, base_saved, base_key):
        """The live world's state after a step that may have changed anything."""
        if len(self.world._prims) != len(self.prims):
            raise _Diverged("a shared object was created during the search: the memo engine "
                            "keeps the primitives the world had at the start")
        now = [p._state() for p in self.prims]
        for k, st in enumerate(now):
            if st == base_ps[k]:
                now[k] = base_ps[k]       # share the unchanged states (cheap restores)
        ps = tuple(now)
        w = self.world
        ekey = w._extras_key()
        if ekey == base_key:
            saved, ekey = base_saved, base_key
            self.cur_ps, self.cur_saved = ps, saved
        else:
            saved = w._save_extras()
            self.cur_ps, self.cur_saved = ps, saved
            self._note_changes(ekey)
        return ps, saved, ekey

    def _note_changes(self, ekey):
        # World attributes that differ from the start are not constant; if
        # code between steps was taken to read a constant one, start over.
        root = self.root_items
        if root is None:
            return
        items = _items(ekey)
        changed = {k for k in root.keys() | items.keys() if root.get(k) != items.get(k)}
        new = changed - self.varying
        if not new:
            return
        self.varying |= new
        broken = new & self.assumed
        if broken:
            self.assumed -= broken
            for ids in self.ids:
                for rec in ids.values():
                    rec.memo.clear()
                    rec.pure = False
            raise _Restart

    # -- one transition ----------------------------------------------------
    def runnable(self, payload):
        return payload[4]

    def child(self, payload, i):
        """Actor i steps in the state ``payload``: the new state's key, or a violation name."""
        ps, saved, ekey, recs, _ = payload
        self._load(ps, saved)
        rec = recs[i]
        if rec.closed:
            out = self._run_op(i, rec, ps, saved, ekey)
            if type(out) is str:
                return out
            r, nps, nsaved, nkey = out
            fr = r if r is None or type(r) is int else _freeze(r)
            entry = rec.memo.get(fr)
            out = None
            if type(entry) is _Rec:
                out = entry, nps, nsaved, nkey
            elif entry is not None:
                hit = entry.table.get(tuple([nps[j] for j in entry.touch]))
                if hit is not None:
                    out = (hit[0], self._apply(nps, hit[1]), nsaved, nkey)
            if out is None:
                out = self._continue_closed(i, rec, r, fr, (nps, nsaved, nkey))
                if type(out) is str:
                    return out
            nxt, nps, nsaved, nkey = out
        else:
            out = self._step_live(i, rec, payload)
            if type(out) is str:
                return out
            nxt, nps, nsaved, nkey = out
        nrecs = recs[:i] + (nxt,) + recs[i + 1:]
        self._next = (nps, nsaved, nkey, nrecs)
        self._runnable = None
        return (nps, nkey, nrecs)

    def _run_op(self, i, rec, ps, saved, ekey):
        """Take ``rec``'s step in the loaded world ``ps``: ``(r, ps, saved, key)`` after it.

        A built-in primitive's step changes its primitive alone.  Any other
        step is watched the first time it runs in a world like this one (the
        same states of the primitives it touched) and remembered: it is a
        function of those states, so the next time its outcome is loaded,
        not computed.  A step that touched something the watch does not see
        is run every time.  Returns a violation's name if the step raises one.
        """
        op = rec.op
        k = rec.touch
        if k >= 0:
            try:
                r = op.run(op.prim, op.args, self.letters[i], self.world)
            except Violation as bad:
                self._dirty()
                return bad.name
            nps = ps[:k] + (self.prims[k]._state(),) + ps[k + 1:]
            self.cur_ps = nps
            return r, nps, saved, ekey
        opm = rec.opm
        if opm is not None:
            hit = opm.table.get(tuple([ps[j] for j in opm.touch]))
            if hit is not None:
                return hit[0], self._apply(ps, hit[1]), saved, ekey
            watch = self.watch
        else:
            watch = _UNWATCHED
        watch.start()
        try:
            r = op.run(op.prim, op.args, self.letters[i], self.world)
        except Violation as bad:
            watch.stop()
            self._dirty()
            return bad.name
        except BaseException:
            watch.stop()
            raise
        seen = watch.stop()
        if not watch.ok:
            seen = _UNSEEN
        nps, nsaved, nkey = self._capture(ps, saved, ekey)
        if opm is None:
            return r, nps, nsaved, nkey
        kind, touched, fp = self._classify(seen)
        changed = [j for j in range(len(ps)) if nps[j] is not ps[j] and nps[j] != ps[j]]
        if kind != "dirty" and nkey == ekey and _shareable(r) \
                and all(j in touched for j in changed):
            self._remember(rec.opm, touched, ps, r, tuple((j, nps[j]) for j in changed))
            if rec.auto:
                fp = self._written(fp, changed)
                if rec.seen_op is None or not rec.seen_op.covers(fp):
                    rec.seen_op = fp if rec.seen_op is None else rec.seen_op.union(fp)
                    self._set_base(i, rec)
        else:
            # It cannot be remembered: run it every time, and it may touch anything.
            rec.opm = None
            if rec.auto:
                rec.auto = False
                rec.static = EVERYTHING
                self._set_base(i, rec)
        return r, nps, nsaved, nkey

    def _apply(self, ps, writes):
        """Load the primitive states a remembered continuation wrote; the new world tuple."""
        if not writes:
            return ps
        now = list(ps)
        prims = self.prims
        for j, st in writes:
            prims[j]._load(st)
            now[j] = st
        ps = tuple(now)
        self.cur_ps = ps
        return ps

    def _continue_closed(self, i, rec, r, fr, after_op):
        # First time (rec, r) in a world like this one: run the actor on from
        # a live generator, and remember what its code did.
        before_ps, before_saved, before_key = after_op
        if rec.pool:
            g = rec.pool.pop()[0]
            self.pooled -= 1
            self.res.pool_hits += 1
        elif rec.pure:
            # Nothing on its way here looked at the world: rebuilding it from
            # its history leaves the world (after the step) alone.
            g = self._generator(i, rec)[0]
        else:
            # A rebuild runs the actor's code in the worlds it first ran in:
            # then put the state after the step back.
            g = self._generator(i, rec)[0]
            self._dirty()
            self._load(before_ps, before_saved)
        out = self._resume(i, rec, g, r, (before_ps, before_saved))
        if type(out) is str:
            return out
        nxt, seen = out
        kind, touched, fp = self._classify(seen)
        plain_r = r is None or type(r) is int or _immutable(r)
        if kind == "clean":
            if rec.simple and plain_r:
                # Nothing but the watched world and primitives was in its reach:
                # what they saw is all it did.
                rec.memo[fr] = nxt
                return nxt, before_ps, before_saved, before_key
            after_ps, after_saved, after_key = self._capture(before_ps, before_saved, before_key)
            if after_ps == before_ps and after_key == before_key:
                rec.memo[fr] = nxt
                return nxt, before_ps, before_saved, before_key
        elif kind == "keyed":
            if rec.simple and plain_r:
                # Only what the watch saw can have changed.
                after = list(before_ps)
                for j in touched:
                    st = self.prims[j]._state()
                    if st != after[j]:
                        after[j] = st
                after_ps, after_saved, after_key = tuple(after), before_saved, before_key
                self.cur_ps = after_ps
            else:
                after_ps, after_saved, after_key = self._capture(before_ps, before_saved,
                                                                 before_key)
            changed = [j for j in range(len(before_ps)) if after_ps[j] is not before_ps[j]
                       and after_ps[j] != before_ps[j]]
            if after_key == before_key and all(j in touched for j in changed):
                self._remember_cont(rec, fr, touched, before_ps, nxt,
                                    tuple((j, after_ps[j]) for j in changed))
                self._widen(i, rec, fp, changed)
                return nxt, after_ps, after_saved, after_key
        else:
            after_ps, after_saved, after_key = self._capture(before_ps, before_saved, before_key)
        rec.memo.pop(fr, None)
        nxt.pure = False
        self._demote(i, rec)
        return nxt, after_ps, after_saved, after_key

    def _remember_cont(self, rec, fr, touched, before_ps, nxt, writes):
        """Remember a continuation that touched the primitives ``touched`` (see _Keyed)."""
        entry = rec.memo.get(fr)
        if type(entry) is not _Keyed:
            entry = rec.memo[fr] = _Keyed(())
        self._remember(entry, touched, before_ps, nxt, writes)

    def _remember(self, entry, touched, before_ps, outcome, writes):
        # What the code reads can depend on what it read: key every outcome
        # in ``entry`` on all it was ever seen to touch.
        if not touched <= entry.touchset:
            entry.touch = tuple(sorted(touched.union(entry.touch)))
            entry.touchset = frozenset(entry.touch)
            entry.table = {}
        entry.table[tuple([before_ps[j] for j in entry.touch])] = (outcome, writes)

    def _written(self, fp, changed):
        # A changed primitive counts as written wherever the code looked into
        # it (a change in place shows only as a read of the field holding it).
        if not changed:
            return fp
        names = {self.prims[j].name for j in changed}
        return Footprint((loc, "w" if loc[0] in names else m) for loc, m in fp.items)

    def _widen(self, i, rec, fp, changed):
        """Add what the code after ``rec``'s step touched to the step's footprint.

        That code runs atomically with the step.
        """
        fp = self._written(fp, changed)
        cont = rec.cont
        if cont is not None and cont.covers(fp):
            return
        rec.cont = fp if cont is None else cont.union(fp)
        self._set_base(i, rec)

    def _set_base(self, i, rec):
        """The step's footprint: its own (given, or seen) and its continuation's."""
        own = rec.seen_op if rec.auto else rec.static
        if own is not None and rec.auto and rec.watch_pred:
            own = None if rec.pred is None else own.union(rec.pred)
        if own is None:
            rec.base_fp = None            # not run yet: see _footprint_of
            return
        base = own if rec.cont is None or own is EVERYTHING else own.union(rec.cont)
        old = rec.base_fp
        rec.base_fp = base
        if old is None or old is base or (old is not EVERYTHING and old.covers(base)
                                          and base.covers(old)):
            return
        self._refootprint(i, rec)

    def _refootprint(self, i, rec):
        # The step's footprint grew: a reduced search that has already counted
        # on the smaller one expands its reduced states fully (``grew``).
        rec.fp = None
        rec.learned = False
        self._ample.clear()
        reducer = self.reducer
        if reducer is not None:
            rec.fp = reducer.effective(rec.base_fp)
            rec.learned = True
            reducer.learn(i, rec.fp)
            self.grew = True

    def _step_live(self, i, rec, payload):
        # A step that may change the actor's own objects: run it from a live
        # generator in this very state, as the legacy engine does.
        ps, saved, ekey, _recs, _ = payload
        if rec.pool:
            g, gop = rec.pool.pop()
            self.pooled -= 1
            self.res.pool_hits += 1
        else:
            g, gop = self._generator(i, rec)
            self._dirty()
            self._load(ps, saved)
        try:
            r = gop.run(gop.prim, gop.args, self.letters[i], self.world)
        except Violation as bad:
            self._dirty()
            return bad.name
        before = self._capture(ps, saved, ekey)
        if rec.base_fp is EVERYTHING:
            # Conflicts with everything and is never reused: what its code
            # between the steps touches is simply part of the step.
            out = self._resume(i, rec, g, r, before[:2], _UNWATCHED)
            if type(out) is str:
                return out
            return (out[0],) + self._capture(*before)
        out = self._resume(i, rec, g, r, before[:2])
        if type(out) is str:
            return out
        nxt, seen = out
        after_ps, after_saved, after_key = self._capture(*before)
        kind, touched, fp = self._classify(seen)
        changed = [j for j in range(len(after_ps)) if after_ps[j] is not before[0][j]
                   and after_ps[j] != before[0][j]]
        if kind == "dirty" or after_key != before[2] or not all(j in touched for j in changed):
            nxt.pure = False
            self._demote(i, rec)
        elif kind == "keyed":
            # Run live anyway: only the footprint must cover what its code touched.
            self._widen(i, rec, fp, changed)
        return nxt, after_ps, after_saved, after_key

    def _demote(self, i, rec):
        """Code after ``rec``'s step touched the world unseen: run that step live from now on.

        Live, the code runs in the right world each time, as the legacy
        engine runs it, and the step conflicts with every other: a reduced
        search that has already counted on a smaller footprint starts over.
        """
        self.demoted += 1
        rec.closed = False
        rec.touch = -1
        rec.memo.clear()
        rec.opm = None
        if rec.base_fp is not EVERYTHING:
            rec.auto = False
            rec.static = EVERYTHING
            self._set_base(i, rec)

    def _classify(self, seen):
        """What code between two steps touched (``seen``): ``(kind, primitives, footprint)``.

        ``kind`` is "clean" (nothing, or world attributes that are
        configuration), "keyed" (fields of primitives, whose indices come
        second: the code is remembered keyed on their states) or "dirty"
        (anything else, or code that ran unwatched: the step is demoted).  A
        plain attribute of the world that no state has changed so far is
        taken as constant (configuration); if a later state changes it the
        search starts over.
        """
        if not seen:
            return "clean", _NO_PRIMS, NOTHING
        if seen is _UNSEEN:
            return "dirty", _NO_PRIMS, EVERYTHING
        fixed = self.fixed_attrs
        touched = set()
        items = set()
        by_name = self.prim_by_name
        for verb, where, name in seen:
            if where == "world":
                if verb != "reads":
                    return "dirty", _NO_PRIMS, EVERYTHING
                if name not in fixed and not self._may_assume(name):
                    return "dirty", _NO_PRIMS, EVERYTHING
                continue
            j = by_name.get(where)
            if j is None:
                return "dirty", _NO_PRIMS, EVERYTHING
            touched.add(j)
            items.add((self.prims[j]._field_location(name), "r" if verb == "reads" else "w"))
        for _verb, where, name in seen:
            if where == "world" and name not in fixed:
                self.assumed.add(name)
        if not touched:
            return "clean", _NO_PRIMS, NOTHING
        return "keyed", frozenset(touched), Footprint(items)

    def _may_assume(self, name) -> bool:
        root = self.root_items
        if root is None or name in self.varying or name not in root:
            return False
        ok = self._assumable.get(name)
        if ok is None:
            # Its frozen value must show all it holds: no handle, whose
            # state lives elsewhere.
            _freeze_mod._COLLECT = met = []
            try:
                _freeze(getattr(self.world, name))
            finally:
                _freeze_mod._COLLECT = None
            ok = self._assumable[name] = not any(_is_handle(x) for x in met)
        return ok

    def _resume(self, i, rec, g, r, before, watch=None):
        """Send ``r`` to g under watch: ``(next _Rec, what the code touched)``, or a violation.

        ``before`` is the world the code runs in, kept as the new state's
        origin when the code touched the world (an exact rebuild puts it
        back); what was touched is a list of ``(verb, where, name)``, or
        ``_UNSEEN`` when the code ran unwatched.
        """
        cpu = self.letters[i]
        t = type(r)
        # What the history keeps: the value itself, or (mutable) a private copy
        # wrapped so that a rebuild sends a fresh copy of it.
        kept = r if (t is int or r is None or t is bool or t is str or _immutable(r)) \
            else _Copy(copy.deepcopy(r))
        unwatched = watch is _UNWATCHED
        watch = watch or self.watch
        watch.start()
        try:
            y = g.send(r)
        except StopIteration as stop:
            seen = watch.stop()
            if unwatched or not watch.ok:
                seen = _UNSEEN
            quiet = self._classify(seen)[0] == "clean"
            pure = rec.pure and rec.closed and quiet
            nxt = self._intern(i, None, None, stop.value, rec, kept, pure,
                               None if quiet else before)
            return nxt, seen
        except AssertionError as e:
            watch.stop()
            self._dirty()
            return f"assertion failed in {cpu}: {_first_line(e)}"
        except BaseException as e:
            watch.stop()
            e.add_note(f"kvmmu.explorer: raised by actor {cpu} ({self.sc.actors[i].title}) of "
                       f"scenario {self.sc.name!r}")
            raise
        seen = watch.stop()
        if unwatched or not watch.ok:
            seen = _UNSEEN
        op = _as_op(y, self.sc, i)
        quiet = self._classify(seen)[0] == "clean"
        pure = rec.pure and rec.closed and quiet
        nxt = self._intern(i, g, op, None, rec, kept, pure, None if quiet else before)
        self._pool(nxt, g, op)
        return nxt, seen

    # -- verdicts and payloads ---------------------------------------------
    def _runnable_now(self, recs):
        w, letters = self.world, self.letters
        out = []
        j = 0
        for rec in recs:
            if not rec.done:
                en = rec.enabled
                if en is None:
                    out.append(j)
                elif rec.watch_pred:
                    if self._watched_enabled(j, rec):
                        out.append(j)
                elif en[0](en[1], en[2], letters[j], w):
                    out.append(j)
            j += 1
        return tuple(out)

    def _watched_enabled(self, i, rec) -> bool:
        """Evaluate the enabled() of ``rec``'s step watched, learning what it reads."""
        en = rec.enabled
        watch = self.watch
        watch.start()
        try:
            ok = en[0](en[1], en[2], self.letters[i], self.world)
        finally:
            seen = watch.stop()
        if not watch.ok:
            seen = _UNSEEN
        kind, _touched, fp = self._classify(seen)
        if kind == "dirty" or fp.writes:
            # It reads what the watch cannot see, or writes: anything.
            rec.watch_pred = rec.auto = False
            rec.static = EVERYTHING
            self._set_base(i, rec)
        elif rec.pred is None or not rec.pred.covers(fp):
            rec.pred = fp if rec.pred is None else rec.pred.union(fp)
            self._set_base(i, rec)
        return bool(ok)

    def verdict(self, key):
        """(violation or None, every actor finished) for the state just reached."""
        recs = self._next[3]
        w = self.world
        self._runnable = run = self._runnable_now(recs)
        done = True
        for r in recs:
            if not r.done:
                done = False
                break
        for inv in self.sc.invariants:
            if not inv.fn(w):
                return inv.name, done
        if done:
            v = self.finals.get(key, self)
            if v is self:
                v = _final_verdict(self.sc, w, {self.letters[j]: r.result
                                                 for j, r in enumerate(recs)})
                self.finals[key] = v
            return v, True
        if not run:
            return "deadlock", False
        return None, False

    def payload(self):
        ps, saved, ekey, recs = self._next
        run = self._runnable
        if run is None:
            run = self._runnable_now(recs)
        return (ps, saved, ekey, recs, run)

    def full_key(self, key):
        """The state key as :func:`kvmmu.explorer.state_key` gives it."""
        ps, ekey, recs = key
        return ((ps, ekey), tuple(r.key for r in recs))

    # -- what the reduction needs ------------------------------------------
    def ample(self, payload, reducer):
        """The actors the reduced search steps in ``payload``'s state (see ``_Reducer.ample``)."""
        recs, run = payload[3], payload[4]
        ck = (recs, run)
        amp = self._ample.get(ck)
        if amp is not None and self._ample_gen == reducer.generation:
            return amp
        if self._ample_gen != reducer.generation:
            self._ample.clear()
            self._ample_gen = reducer.generation
        amp, asked = reducer.ample(*self.reduction_inputs(payload, reducer))
        amp = tuple(amp)
        if not asked:
            self._ample[ck] = amp
        return amp

    def reduction_inputs(self, payload, reducer):
        """(status, effective footprints, enablers) of the actors in ``payload``'s state."""
        ps, saved, _ekey, recs, run = payload
        self._load(ps, saved)
        status = [0] * self.n
        fps = [None] * self.n
        for j, rec in enumerate(recs):
            if rec.op is None:
                continue
            status[j] = 2
            fps[j] = self._footprint_of(j, rec, payload, reducer)
        self._load(ps, saved)
        for j in run:
            status[j] = 1
        w, letters, index = self.world, self.letters, self.sc._index

        def nes(j):
            return _enablers_of(recs[j].op, letters[j], w, index)
        return status, fps, nes

    def _footprint_of(self, i, rec, payload, reducer):
        """The effective footprint of ``rec``'s step, pending in ``payload``'s state.

        A step whose footprint comes from watching it and that never ran is
        run once here, in this state, watched (and remembered), and the world
        put back.
        """
        fp = rec.fp
        if fp is not None:
            return fp
        if rec.base_fp is None:
            ps, saved, ekey = payload[0], payload[1], payload[2]
            self._load(ps, saved)
            try:
                if rec.watch_pred and rec.pred is None:
                    self._watched_enabled(i, rec)
                out = self._run_op(i, rec, ps, saved, ekey) if rec.seen_op is None else 0
            except Exception:       # the search meets it, if it matters
                out = None
            if rec.base_fp is None or type(out) is str or out is None:
                # It failed, or could not be remembered: it may touch anything.
                rec.auto = False
                rec.static = EVERYTHING
                rec.base_fp = EVERYTHING
            self._dirty()
            self._load(ps, saved)
        fp = rec.fp = reducer.effective(rec.base_fp)
        return fp

    def stepped(self, i, reducer):
        """The effective footprint of actor i's pending step in the state just reached."""
        nxt = self._next
        rec = nxt[3][i]
        if rec.op is None or rec.learned:
            return None
        return self._footprint_of(i, rec, nxt, reducer)

    def stepped_in(self, payload, i, reducer):
        """The effective footprint of actor i's pending step in ``payload`` (None: done)."""
        rec = payload[3][i]
        if rec.op is None:
            return None
        return self._footprint_of(i, rec, payload, reducer)

    def mark_learned(self, i):
        self._next[3][i].learned = True

    def learn_all(self, reducer):
        """Teach ``reducer`` the footprint of every local state met so far (before a restart)."""
        for i, ids in enumerate(self.ids):
            for rec in ids.values():
                if rec.op is not None and not rec.learned and rec.base_fp is not None:
                    if rec.fp is None:
                        rec.fp = reducer.effective(rec.base_fp)
                    reducer.learn(i, rec.fp)
                    rec.learned = True


# -- which steps may be reused: closed steps and detached copies ------------

def _items(ekey) -> dict:
    """The frozen plain attributes of a world, by name, from its frozen ``_extras()``."""
    return {k: v for k, v in ekey[1:]}


def _plain(args) -> bool:
    for a in args:
        t = type(a)
        if not (t is int or t is str or a is None):
            return False
    return True


def _is_handle(obj) -> bool:
    """An object whose deepcopy is itself: a reference into the world (a folio handle)."""
    if getattr(type(obj), "__deepcopy__", None) is None:
        return False
    try:
        return copy.deepcopy(obj) is obj
    except Exception:
        return True


def _shareable(r) -> bool:
    """Whether one object ``r`` may be handed to every actor that gets this result."""
    t = type(r)
    if r is None or t is int or t is bool or t is str or t is float or t is bytes:
        return True
    if isinstance(r, tuple):
        return all(map(_shareable, r))
    if isinstance(r, (Enum, frozenset)) or _is_value(r):
        return True
    return _is_handle(r)


def _is_value(obj) -> bool:
    """A frozen dataclass: a value, whatever its deepcopy returns (its fields are frozen too)."""
    params = getattr(type(obj), "__dataclass_params__", None)
    return params is not None and params.frozen


def _closed(op, shared) -> bool:
    """Whether ``op`` can only change the world, never the actor's own objects."""
    if op.prim is None:
        fn = op.args[1] if len(op.args) > 1 else None
        if op.kind == "wait":
            return True               # runs nothing; its predicate only reads
        return _callable_ok(fn, shared, 0)
    return (_value_ok(op.args, shared, 0) and _callable_ok(op.run, shared, 0)
            and _callable_ok(op.enabled, shared, 0))


def _value_ok(x, shared, depth) -> bool:
    # A value the step may keep: immutable, or a shared object (the world, a
    # primitive, a container of the world, a handle whose deepcopy is itself).
    t = type(x)
    if t is int or t is str or x is None or t is bool or t is float or t is bytes or t is range:
        return True
    if depth > 6:
        return False
    if t is tuple or t is frozenset:
        return all(_value_ok(v, shared, depth + 1) for v in x)
    if id(x) in shared or isinstance(x, (World, _Primitive, Enum, type)):
        return True
    if isinstance(x, tuple):          # a NamedTuple
        return all(_value_ok(v, shared, depth + 1) for v in x)
    if callable(x) and _callable_ok(x, shared, depth + 1):
        return True
    params = getattr(t, "__dataclass_params__", None)
    if params is not None and params.frozen and is_dataclass(x):
        return all(_value_ok(getattr(x, f.name), shared, depth + 1) for f in fields(x))
    if getattr(t, "__deepcopy__", None) is not None:
        try:
            return copy.deepcopy(x) is x
        except Exception:
            return False
    return False


def _callable_ok(fn, shared, depth) -> bool:
    if fn is None or isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        return fn is None or fn.__self__ is None or isinstance(fn.__self__, types.ModuleType) \
            or _value_ok(fn.__self__, shared, depth + 1)
    if depth > 6:
        return False
    t = type(fn)
    if t is types.FunctionType:
        if _rebinds(fn.__code__):
            return False
        for c in fn.__closure__ or ():
            try:
                v = c.cell_contents
            except ValueError:
                continue
            if not _value_ok(v, shared, depth + 1):
                return False
        return (_value_ok(fn.__defaults__, shared, depth + 1)
                and _value_ok(tuple((fn.__kwdefaults__ or {}).values()), shared, depth + 1))
    if t is functools.partial:
        return (_callable_ok(fn.func, shared, depth + 1) and _value_ok(fn.args, shared, depth + 1)
                and _value_ok(tuple(fn.keywords.values()), shared, depth + 1))
    if t is types.MethodType:
        return _value_ok(fn.__self__, shared, depth + 1) and \
            _callable_ok(fn.__func__, shared, depth + 1)
    return False


_REBINDS: dict = {}


def _rebinds(code) -> bool:
    """Whether a function with this code rebinds a variable of an enclosing function."""
    hit = _REBINDS.get(code)
    if hit is None:
        hit = _REBINDS[code] = _rebinds_names(code, frozenset(code.co_freevars))
    return hit


def _rebinds_names(code, outer) -> bool:
    if not outer:
        return False
    for ins in dis.get_instructions(code):
        if ins.opname in ("STORE_DEREF", "DELETE_DEREF") and ins.argval in outer:
            return True
    for c in code.co_consts:
        if isinstance(c, types.CodeType) and _rebinds_names(c, outer & frozenset(c.co_freevars)):
            return True
    return False


def _fresh(fn, memo):
    # A copy of a function whose cells hold what the actor's cells hold now
    # (deep copies of its own objects when ``memo`` is given), so that it
    # stays right after the actor moves on and rebinds its variables.
    if type(fn) is functools.partial:
        return functools.partial(_fresh(fn.func, memo), *fn.args, **fn.keywords)
    if type(fn) is not types.FunctionType or not fn.__closure__:
        return fn
    cells = []
    for c in fn.__closure__:
        try:
            v = c.cell_contents
        except ValueError:
            cells.append(types.CellType())
            continue
        if memo is not None and not _immutable(v) and id(v) not in memo:
            v = copy.deepcopy(v, memo)
        cells.append(types.CellType(v))
    out = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                             tuple(cells))
    out.__kwdefaults__ = fn.__kwdefaults__
    return out


def _detach(op, world, shared):
    """A copy of the closed ``op`` that no longer shares cells with the actor's frames."""
    if op.prim is None:
        if op.kind == "wait":
            return _detach_wait(op, world, shared)
        # (label, fn) for step(); cpu.step_when() adds its predicate: detach each.
        rest = tuple(_fresh(a, None) if callable(a) else a
                     for a in op.args[1:])
        return Op(None, op.kind, (op.args[0],) + rest, op.run, op.enabled, op.footprint)
    return Op(op.prim, op.kind, op.args, _fresh(op.run, None), _fresh(op.enabled, None),
              op.footprint)


def _detach_wait(op, world, shared):
    if op.kind != "wait":
        return op
    # deepcopy's memo maps id -> copy: the world, its primitives and its
    # containers map to themselves (the predicate must read the live ones).
    memo = world._copy_memo()
    for v in world._extras().values():
        memo[id(v)] = v
    pred = _fresh(op.args[1], memo)
    return Op(None, "wait", (op.args[0], pred), op.run, op.enabled, op.footprint)
