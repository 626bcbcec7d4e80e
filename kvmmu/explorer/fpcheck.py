"""Checking footprints against what the steps do, state by state.

The partial-order reduction is as sound as the footprints it is given
(:mod:`kvmmu.explorer.por`).  ``check_footprints(scenario)`` explores the
scenario in full with the memo engine (which learns the footprints it
watches) and then, in every state reached (the first ``max_states``,
breadth-first), checks what the reduction relies on:

- **declared**: a step whose footprint is declared (``step(..., reads=,
  writes=)``, ``wait_until(..., reads=)``) or given by its primitive
  (``_footprint``) is run watched, and must touch only primitives its
  footprint names, and change only primitives it writes; a wait's predicate
  must read only what it declares; an invariant declaring ``reads=`` must
  read only that (field by field: :meth:`Primitive._field_location`);
- **commute**: two enabled steps whose footprints do not conflict reach the
  same state (world and actors) in either order, and neither disables the
  other;
- **invisible**: a step that is not visible (it writes nothing an invariant
  reads) leaves every invariant's verdict as it was;
- **enablers**: a blocked step stays blocked after a step of any actor
  outside its enablers (for a wait, of any actor that does not write what
  its predicate reads).

The watch sees a primitive's fields, so a declaration finer than a field
(one SPTE of the EPT) is checked by the commutation of the steps that use
it.  The result lists each problem once, with the steps involved.
"""
from __future__ import annotations

from collections import deque

from .footprint import EVERYTHING, Footprint, conflict, declared, writes_into
from .memo import _UNSEEN, _MemoEngine, _Restart
from .ops import Violation
from .por import _enablers_of, _Reducer
from .scenario import Scenario

__all__ = ["FootprintCheck", "check_footprints"]


class FootprintCheck:
    """What :func:`check_footprints` found: ``problems`` (text) and what it checked."""

    def __init__(self, scenario: str):
        if not isinstance(scenario, str) or not scenario:
            raise ValueError(f"scenario must be the scenario's name, got {scenario!r}")
        self.scenario = scenario
        self.problems: list[str] = []
        self.states = 0
        self.steps_watched = 0
        self.pairs = 0
        self.invisible = 0
        self.blocked = 0
        self.invariants_watched = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def note(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def __repr__(self):
        head = (f"check_footprints {self.scenario!r}: {self.states} states, "
                f"{self.steps_watched} steps watched, {self.pairs} independent pairs, "
                f"{self.invisible} invisible steps, {self.blocked} blocked steps, "
                f"{self.invariants_watched} invariant runs")
        if not self.problems:
            return head + ": every footprint holds"
        return head + ":\n" + "\n".join(f"  {p}" for p in self.problems)


def check_footprints(scenario: Scenario, max_states: int = 2000,
                     max_steps: int = 1000) -> FootprintCheck:
    """Check every footprint of ``scenario`` in its first ``max_states`` states (see above)."""
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, got {type(scenario).__name__}")
    for _attempt in range(5):
        try:
            return _check(scenario, max_states, max_steps)
        except _Restart:            # a configuration the engine took as constant changed
            continue
    raise RuntimeError(f"scenario {scenario.name!r}: the footprint check kept starting over")


def _check(sc, max_states, max_steps):
    from .search import Result
    engine = _MemoEngine(sc)
    reducer = _Reducer(sc)
    engine.res = Result(sc, "bfs", None, max_steps)
    engine.reducer = reducer
    out = FootprintCheck(sc.name)
    if engine.start() is not None:
        return out
    payloads = _reach(engine, reducer, max_states, max_steps)
    out.states = len(payloads)
    # Checking runs steps in new worlds, and what is learned there can widen
    # a footprint: check again until nothing grows.
    for _round in range(4):
        generation = reducer.generation
        out.problems.clear()
        for payload in payloads:
            _check_state(engine, reducer, sc, payload, out)
        if reducer.generation == generation:
            break
    return out


def _reach(engine, reducer, max_states, max_steps):
    """The payloads of the states reached breadth-first (at most ``max_states``)."""
    k0, _ = engine.initial()
    engine.verdict(k0)
    first = engine.payload()
    _learn(engine, reducer, first)
    seen = {k0}
    payloads = [first]
    frontier = deque([(first, 0)])
    while frontier and len(payloads) < max_states:
        payload, depth = frontier.popleft()
        if depth >= max_steps:
            continue
        for i in payload[4]:
            k = engine.child(payload, i)
            if type(k) is str or k in seen:
                continue
            seen.add(k)
            v, _done = engine.verdict(k)
            p = engine.payload()
            _learn(engine, reducer, p)
            payloads.append(p)
            if v is None:
                frontier.append((p, depth + 1))
            if len(payloads) >= max_states:
                break
    return payloads


def _learn(engine, reducer, payload):
    for j in range(engine.n):
        fp = engine.stepped_in(payload, j, reducer)
        if fp is not None:
            reducer.learn(j, fp)


def _what(engine, payload, j) -> str:
    return f"{engine.letters[j]}: {payload[3][j].op.what()}"


def _check_state(engine, reducer, sc, payload, out):
    ps, saved, _ekey, recs, run = payload
    fps = [None if r.op is None else engine.stepped_in(payload, j, reducer)
           for j, r in enumerate(recs)]
    engine._load(ps, saved)
    verdicts = _invariants(engine, sc, out)
    after = {}
    for i in run:
        _watch_declared(engine, payload, i, out)
        engine._load(ps, saved)
        k = engine.child(payload, i)
        if type(k) is str:
            continue
        after[i] = (k, engine.payload())
        if not fps[i].visible and verdicts:
            out.invisible += 1
            p = after[i][1]
            engine._load(p[0], p[1])
            now = [inv.fn(engine.world) for inv in sc.invariants]
            if now != verdicts:
                out.note(f"invisible step {_what(engine, payload, i)} changes an invariant's "
                         "verdict (it writes what the invariant reads)")
    for a in run:
        for b in run:
            if b <= a or a not in after or b not in after or conflict(fps[a], fps[b]):
                continue
            out.pairs += 1
            _commute(engine, payload, a, b, after, out)
    for j, rec in enumerate(recs):
        if rec.op is not None and j not in run:
            out.blocked += 1
            _stays_blocked(engine, payload, j, fps, after, out)


def _commute(engine, payload, a, b, after, out):
    ends = []
    for x, y in ((a, b), (b, a)):
        px = after[x][1]
        if y not in px[4]:
            out.note(f"{_what(engine, payload, x)} disables {_what(engine, payload, y)}, "
                     "yet their footprints do not conflict")
            return
        k = engine.child(px, y)
        if type(k) is str:
            return
        ends.append(k)
    if ends[0] != ends[1]:
        out.note(f"{_what(engine, payload, a)} and {_what(engine, payload, b)} do not "
                 "commute, yet their footprints do not conflict")


def _stays_blocked(engine, payload, j, fps, after, out):
    rec = payload[3][j]
    engine._load(payload[0], payload[1])
    who = _enablers_of(rec.op, engine.letters[j], engine.world, engine.sc._index)
    for k, (_key, pk) in after.items():
        if j not in pk[4]:
            continue
        if who is None:
            continue
        if who == "writers":
            if writes_into(fps[k], fps[j]):
                continue
        elif k in who:
            continue
        out.note(f"{_what(engine, payload, k)} enables {_what(engine, payload, j)}, "
                 "which does not count it among its enablers")


def _watch_declared(engine, payload, i, out):
    # A step whose footprint someone declared: run it watched, here.
    rec = payload[3][i]
    fp = rec.static
    if rec.auto or fp is None or fp is EVERYTHING or not rec.closed:
        return
    op = rec.op
    ps, saved, ekey = payload[0], payload[1], payload[2]
    engine._load(ps, saved)
    watch = engine.watch
    out.steps_watched += 1
    if op.enabled is not None:
        watch.start()
        try:
            op.enabled(op.prim, op.args, engine.letters[i], engine.world)
        finally:
            seen = watch.stop()
        _covered(engine, seen if watch.ok else _UNSEEN, fp, (), f"the wait of {_what(engine, payload, i)}", out)
    watch.start()
    try:
        op.run(op.prim, op.args, engine.letters[i], engine.world)
    except Violation:
        pass
    finally:
        seen = watch.stop()
    nps, _nsaved, nkey = engine._capture(ps, saved, ekey)
    changed = [engine.prims[j].name for j in range(len(ps))
               if nps[j] is not ps[j] and nps[j] != ps[j]]
    if nkey != ekey:
        changed.append("the world's attributes")
    _covered(engine, seen if watch.ok else _UNSEEN, fp, changed, _what(engine, payload, i), out)
    engine._dirty()
    engine._load(ps, saved)


def _covered(engine, seen, fp, changed, what, out):
    # Primitive by primitive: the field-level watch cannot name one SPTE.
    if fp.wild:
        return
    if seen is _UNSEEN:
        out.note(f"{what}: touched something the watch cannot see")
        return
    roots = {loc[0] for loc, _m in fp.items}
    written = {loc[0] for loc, m in fp.items if m != "r"}
    for verb, where, name in seen:
        if where == "world":
            if name in engine.fixed_attrs:
                continue
            where = name
        if where not in roots:
            out.note(f"{what}: {verb} {where}.{name}, outside its footprint {fp!r}")
    for name in changed:
        if name not in written:
            out.note(f"{what}: changes {name}, which its footprint {fp!r} does not write")


def _invariants(engine, sc, out):
    # Each invariant's verdict here; one that declares what it reads is watched.
    w = engine.world
    verdicts = []
    for inv in sc.invariants:
        if inv.reads is None:
            verdicts.append(inv.fn(w))
            continue
        reads = declared(inv.reads, (), f"invariant {inv.name!r}")
        watch = engine.watch
        watch.start()
        try:
            verdicts.append(inv.fn(w))
        finally:
            seen = watch.stop()
        out.invariants_watched += 1
        if not watch.ok:
            out.note(f"invariant {inv.name!r}: touched something the watch cannot see")
            continue
        for _verb, where, name in seen:
            if where == "world":
                if name in engine.fixed_attrs:
                    continue
                loc = (name,)
            else:
                loc = engine.prims[engine.prim_by_name[where]]._field_location(name)
            if not reads.covers(Footprint([(loc, "r")])):
                out.note(f"invariant {inv.name!r} reads {'/'.join(map(str, loc))} "
                         f"({where}.{name}), which its reads= does not name")
    return verdicts
