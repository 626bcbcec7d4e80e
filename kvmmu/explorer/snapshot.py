"""The snapshot engine of ``explore``: restore the saved world, rebuild one actor.

A node carries the saved world, each actor's pending Op and the values each
actor received.  A transition restores the world in place and takes the
stepping actor's generator from a pool of suspended generators, or rebuilds it
by calling the actor afresh and sending it its history.  It raises
``_Diverged`` (and ``explore`` starts over by replay) when a rebuilt actor
does not come back to its recorded key, when an actor keeps across a step an
object a restore would replace, or when a custom primitive has no ``_load``.
"""
from __future__ import annotations

import copy
import types

from . import freeze as _freeze_mod
from .frames import _FRAMES_OK, _gen_key
from .freeze import _freeze
from .ops import Op, Violation, _Diverged
from .run import _as_op, _final_verdict, _first_line
from .world import World, _immutable, _noop, _wait_enabled

__all__ = []


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
    return Op(None, "wait", (op.args[0], copy_fn), _noop, _wait_enabled, op.footprint)


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

    method = "snapshot-legacy"
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
        if i is None:
            return self._plain_key(g, op, result, hist)
        _freeze_mod._COLLECT = met = []
        try:
            key = self._plain_key(g, op, result, hist)
        finally:
            _freeze_mod._COLLECT = None
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
