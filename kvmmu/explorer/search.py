"""Exhaustive search: ``explore`` checks a scenario over every interleaving.

Breadth-first by default (the counterexample is a shortest one) or
depth-first, with visited-state hashing, partial-order reduction (on by
default) and an optional preemption bound; the soundness arguments for the
hashing and the reduction are in the package docstring
(:mod:`kvmmu.explorer`).  ``Result`` is the verdict, the counterexample and
the counts.  A state is reached again by the memo engine
(:mod:`kvmmu.explorer.memo`), or, when that cannot be trusted, by the legacy
snapshot engine (:mod:`kvmmu.explorer.snapshot`) or the replay engine
(:mod:`kvmmu.explorer.replay`); ``_explore`` is the legacy engines' search
loop, kept as it was so that the benchmark can compare.
"""
from __future__ import annotations

import gc
import html
import time
from collections import deque

from ..checks import check_bool, check_choice, check_int
from .memo import _MemoEngine, _Restart
from .ops import _Diverged
from .por import _Reducer
from .replay import _ReplayEngine
from .scenario import Scenario
from .snapshot import _SnapshotEngine
from .trace import Trace, run_schedule

__all__ = ["METHODS", "Result", "explore"]

METHODS = ("snapshot", "snapshot-legacy", "replay")


class Result:
    """The outcome of ``explore``: verdict, counterexample, counts."""

    def __init__(self, scenario, order, preemption_bound, max_steps):
        if not isinstance(scenario, Scenario):
            raise TypeError(f"scenario must be a Scenario, got {type(scenario).__name__}")
        if order not in ("bfs", "dfs"):
            raise ValueError(f"order must be 'bfs' or 'dfs', got {order!r}")
        if preemption_bound is not None:
            check_int("preemption_bound", preemption_bound, 0)
        check_int("max_steps", max_steps, 1)
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
        self.final_states: tuple = ()
        self.reduced = False
        self.restarts = 0                 # searches started over (see memo._Restart)
        self.reduced_expansions = 0       # states where the reduction stepped fewer actors
        self.demoted = 0                  # local states whose step is run live (memo engine)

    @property
    def search(self) -> str:
        """Which search the counts come from: ``"partial-order reduced"`` or ``"full"``."""
        return "partial-order reduced" if self.reduced else "full"

    @property
    def transitions_per_second(self) -> float:
        return self.transitions / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        """A deterministic description (no timings; the engine is in ``.method`` and ``.note``).

        The counts line says which search they come from: the partial-order
        reduced one (a proof that the checks hold) or the full one (every
        interleaving; a violation is always reported from the full search).
        """
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
        lines.append(f"  {counts}, {self.search} search; {how}")
        return "\n".join(lines)

    def __repr__(self):
        return self.summary()

    def _repr_html_(self):
        body = f"<pre>{html.escape(self.summary())}</pre>"
        if self.counterexample is not None:
            body += self.counterexample._repr_html_()
        return body


def explore(scenario: Scenario, preemption_bound: int | None = None, max_steps: int = 1000,
            stop_at_first: bool = True, order: str = "bfs", max_states: int = 1_000_000,
            record_states: bool = False, method: str = "snapshot",
            reduction: bool = True) -> Result:
    """Check ``scenario`` over every interleaving (see the kvmmu.explorer docstring).

    ``preemption_bound``: at most this many switches away from an actor that
    could still run (None: no bound).  ``stop_at_first``: stop at the first
    violation; otherwise every reachable state is explored and
    ``result.violations`` lists every kind found (name, shortest schedule).
    ``order``: ``"bfs"`` (the counterexample is a shortest one) or
    ``"dfs"``.  ``max_states``: give up (``result.exhaustive`` False) beyond
    this many states.  ``record_states``: keep the state keys in
    ``result.visited`` (discovery order) and those of the complete runs in
    ``result.final_states``.  ``method``: how a state is reached again,
    ``"snapshot"`` (the memo engine: restore the world, step actors by their
    learned automata; falls back when an actor touches shared state between
    steps), ``"snapshot-legacy"`` (the previous engine: restore the world,
    rebuild one actor) or ``"replay"`` (re-run the schedule); all three
    explore the same states.  ``reduction``: partial-order reduction (memo
    engine only, no preemption bound); a violation it finds is re-derived
    by the full search, so verdicts, counterexamples and the counts of a
    violated result are the full search's (``result.search`` says which).
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
    check_choice("method", method, METHODS)
    check_bool("reduction", reduction)
    args = (scenario, preemption_bound, max_steps, stop_at_first, order, max_states,
            record_states)
    if method == "replay":
        return _explore(_ReplayEngine, *args)
    if method == "snapshot-legacy":
        return _explore_legacy(args)
    # The memo engine keeps many small tuples alive and makes no reference
    # cycles of its own: the cyclic collector's full passes over them only
    # cost time, so it waits until the search is over.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _explore_memo(args, reduction and preemption_bound is None)
    except _Diverged as why:
        res = _explore(_ReplayEngine, *args)
        res.note = f"explored by replay: {why}"
        return res
    finally:
        if collecting:
            gc.enable()


def _explore_legacy(args) -> Result:
    try:
        return _explore(_SnapshotEngine, *args)
    except _Diverged as why:
        res = _explore(_ReplayEngine, *args)
        res.note = f"explored by replay: {why}"
        return res


def _explore_memo(args, reduce: bool) -> Result:
    engine = _MemoEngine(args[0])
    if not reduce:
        return _finish(_until_done(engine, args, None), args[0], True, args[2])
    reducer = _Reducer(args[0])
    _probe(engine, reducer, args[0], args[2])
    res = _until_done(engine, args, reducer)
    if not res.violations or not res.reduced:
        # Holds; or no state was reduced, so this was the full search itself.
        return _finish(res, args[0], res.violations, args[2])
    # A violation: the full search finds the same kinds (see the package
    # docstring), and the shortest counterexamples, with the full counts.
    restarts = res.restarts
    full = _until_done(engine, args, None)
    full.restarts += restarts
    full.note = "the partial-order reduced search found a violation: verdict, counterexample " \
                "and counts are the full search's"
    return _finish(full, args[0], True, args[2])


def _reduced_search(scenario, *, stop_at_first=False, order="bfs", max_steps=1000,
                    max_states=1_000_000, record_states=False) -> Result:
    """The partial-order reduced search alone, its violations not re-derived (for the tests)."""
    args = (scenario, None, max_steps, stop_at_first, order, max_states, record_states)
    engine = _MemoEngine(scenario)
    reducer = _Reducer(scenario)
    _probe(engine, reducer, scenario, max_steps)
    return _finish(_until_done(engine, args, reducer), scenario, True, max_steps)


def _until_done(engine, args, reducer) -> Result:
    """``_search`` again until nothing it relied on changes under it (see ``_Restart``)."""
    restarts = 0
    while True:
        try:
            res = _search(engine, *args, reducer)
        except _Restart:
            restarts += 1
            if reducer is not None:
                engine.learn_all(reducer)
            continue
        res.restarts = restarts
        return res


def _probe(engine, reducer, scenario, max_steps):
    """Teach ``reducer`` the footprints along one run per actor, that actor first.

    Restarts of the reduced search (when an actor shows a step outside its
    lifetime footprint) are then rare: most steps are met here, cheaply
    (the memo engine remembers these transitions for the search).
    """
    engine.res = Result(scenario, "bfs", None, max_steps)
    engine.reducer = None
    if engine.start() is not None:
        return
    k0, _ = engine.initial()
    if engine.verdict(k0)[0] is not None:
        return
    root = engine.payload()
    n = len(scenario.actors)
    for i in range(n):
        fp = engine.stepped_in(root, i, reducer)
        if fp is not None:
            reducer.learn(i, fp)
    for first in range(n):
        order = [first] + [j for j in range(n) if j != first]
        payload = root
        try:
            for _ in range(max_steps):
                run = payload[4]
                if not run:
                    break
                i = next(j for j in order if j in run)
                k = engine.child(payload, i)
                if type(k) is str or engine.verdict(k)[0] is not None:
                    break
                payload = engine.payload()
                fp = engine.stepped_in(payload, i, reducer)
                if fp is not None:
                    reducer.learn(i, fp)
        except _Restart:
            continue
        except Exception:       # an actor's error: the search meets it, if it is reachable
            engine._dirty()
            continue


def _search(engine, scenario, preemption_bound, max_steps, stop_at_first, order, max_states,
            record_states, reducer) -> Result:
    """The search loop of the memo engine, with the partial-order reduction when ``reducer``.

    The same loop as the legacy ``_explore`` (the same order of states and
    counts without reduction), with two changes: a node's schedule is a
    chain ``(parent chain, letter)`` spelled out only when it is recorded,
    and in a state the reduction reduces only the ample actors are stepped,
    all of them if one of their successors had been seen before.
    """
    started = time.perf_counter()
    res = Result(scenario, order, preemption_bound, max_steps)
    engine.res = res
    engine.reducer = reducer
    engine.grew = False
    res.method = engine.method
    res.reduced = reducer is not None
    letters = scenario.letters
    bounded = preemption_bound is not None
    bfs = order == "bfs"
    found: dict[str, str] = {}           # violation name -> shortest schedule found
    finals = []

    def record(name, sched):
        sched = _spell(sched, letters)
        if name not in found:
            found[name] = sched
            res.violations.append((name, sched))
        elif len(sched) < len(found[name]):
            found[name] = sched
            res.violations = [(k, found[k]) for k, _ in res.violations]

    EXPAND, FINISHED, BAD = 0, 1, 2
    seen: dict = {}      # state key -> EXPAND, FINISHED or BAD (a violation)
    best: dict = {}      # (bounded search) search key -> preemptions used when it was queued
    frontier: deque = deque()
    stop = False
    verdict, payload_of, child_of = engine.verdict, engine.payload, engine.child

    def classify(k, sched):
        # Status of a state seen for the first time; records its violation.
        nonlocal stop
        v, finished = verdict(k)
        if finished:
            res.complete_runs += 1
            if record_states:
                finals.append(k)
        if v is not None:
            seen[k] = BAD
            record(v, sched)
            stop = stop or stop_at_first
        else:
            seen[k] = FINISHED if finished else EXPAND
        if len(seen) > max_states:
            res.stopped_at_max_states = True
            stop = True
        return seen[k]

    failure = engine.start()
    if failure is not None:          # an actor's assert fired before its first step
        record(failure, None)
        stop = stop_at_first
    else:
        k0, _ = engine.initial()
        if reducer is not None:
            for i in range(len(letters)):
                fp = engine.stepped(i, reducer)
                if fp is not None:
                    reducer.learn(i, fp)
                    engine.mark_learned(i)
        if classify(k0, None) == EXPAND:
            best[(k0, None) if bounded else k0] = 0
            frontier.append((None, 0, k0, None, 0, payload_of()))

    def expand(node, who, children):
        # Step each actor of ``who``; True if a successor had been seen before.
        nonlocal stop
        _, depth, _, last, pre, payload = node
        runnable = payload[4]
        old = False
        for i in (who if bfs else reversed(who)):
            cost = pre
            if bounded and last is not None and i != last and last in runnable:
                cost += 1            # a preemption: `last` could have gone on
                if cost > preemption_bound:
                    continue
            res.transitions += 1
            k = child_of(payload, i)
            if type(k) is str:       # the step itself failed: misuse or an assert
                record(k, (node, letters[i]))
                stop = stop_at_first
                if stop:
                    break
                continue
            status = seen.get(k)
            if status is None:
                if reducer is not None:
                    fp = engine.stepped(i, reducer)
                    if fp is not None:
                        # A step outside the actor's lifetime footprint: the
                        # states reduced so far may have relied on it.
                        if reducer.learn(i, fp):
                            engine.grew = True
                        engine.mark_learned(i)
                status = classify(k, (node, letters[i]))
                if status == EXPAND:
                    if bounded:
                        best[(k, i)] = cost
                    children.append((node, depth + 1, k, i, cost, payload_of()))
                if stop:
                    break
                continue
            old = True
            if not bounded or status != EXPAND:
                continue
            # Seen before: expand again only with fewer preemptions used (BFS
            # reaches every state first at its smallest depth; in DFS a later,
            # shorter path adds nothing to the verdict: see the docstring).
            sk = (k, i)
            prev = best.get(sk)
            if prev is not None and prev <= cost:
                continue
            best[sk] = cost
            children.append((node, depth + 1, k, i, cost, payload_of()))
        return old

    reduced = []         # (node, the actors stepped there) of the states reduced so far
    ever = False

    def complete():
        # A footprint grew: the states reduced so far may have relied on the
        # smaller one.  Expanding them fully now is always allowed, and what
        # is reduced from here on uses the grown footprint.
        while engine.grew and not stop:
            engine.grew = False
            done, reduced[:] = list(reduced), []
            for node, who in done:
                rest = [j for j in node[5][4] if j not in who]
                extra = []
                expand(node, rest, extra)
                frontier.extend(extra)
                if stop:
                    break
            res.reduced_expansions = 0

    while frontier and not stop:
        node = frontier.popleft() if bfs else frontier.pop()
        if node[1] >= max_steps:
            record("runaway", node)
            stop = stop_at_first
            continue
        children = []
        runnable = node[5][4]
        who = runnable
        if reducer is not None and len(runnable) > 1 and not reducer.futile:
            ample = engine.ample(node[5], reducer)
            if len(ample) < len(runnable):
                who = ample
        old = expand(node, who, children)
        if who is not runnable:
            if old and not stop:
                # The cycle proviso: a reduced state whose successors are not
                # all new is expanded fully (see the package docstring).
                expand(node, [j for j in runnable if j not in who], children)
            else:
                res.reduced_expansions += 1
                reduced.append((node, who))
                ever = True
        frontier.extend(children)
        if engine.grew:
            complete()
    res.exhaustive = not stop
    res.states = len(seen)
    # A reduced search that reduced no state is the full search, state for
    # state (one that expanded its reduced states fully afterwards reached
    # the same states, in another order: its violations are re-derived too).
    res.reduced = ever
    res.demoted = engine.demoted
    res.seconds = time.perf_counter() - started
    if record_states:
        res.visited = tuple(engine.full_key(k) for k in seen)
        res.final_states = tuple(engine.full_key(k) for k in finals)
    return res


def _spell(sched, letters) -> str:
    """A schedule from its chain: None (the start), a node, or (node, letter)."""
    out = []
    if type(sched) is tuple and len(sched) == 2:
        sched, letter = sched
        out.append(letter)
    while sched is not None and sched[3] is not None:
        out.append(letters[sched[3]])
        sched = sched[0]
    return "".join(reversed(out))


def _finish(res, scenario, found, max_steps):
    """Verdict fields and the counterexample trace of a search that found ``found``."""
    if found and res.violations:
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


def _explore(engine_class, scenario, preemption_bound, max_steps, stop_at_first, order,
             max_states, record_states) -> Result:
    """The search loop of the legacy engines (snapshot-legacy and replay)."""
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
    finished_keys = set()

    def classify(k, sched):
        # Status of a state seen for the first time; records its violation.
        nonlocal stop
        v, finished = engine.verdict()
        res.complete_runs += finished
        if finished:
            finished_keys.add(k)
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
        res.final_states = tuple(k for k in seen if k in finished_keys)
    _finish(res, scenario, found, max_steps)
    return res
