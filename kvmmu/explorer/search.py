"""Exhaustive search: ``explore`` checks a scenario over every interleaving.

Breadth-first by default (the counterexample is a shortest one) or
depth-first, with visited-state hashing and an optional preemption bound; the
soundness argument for the hashing is in the package docstring
(:mod:`kvmmu.explorer`).  ``Result`` is the verdict, the counterexample and the
counts.  A state is reached again by the snapshot engine
(:mod:`kvmmu.explorer.snapshot`) or, when that cannot be trusted, by the
replay engine (:mod:`kvmmu.explorer.replay`).
"""
from __future__ import annotations

import html
import time
from collections import deque

from ..checks import check_bool, check_choice, check_int
from .ops import _Diverged
from .replay import _ReplayEngine
from .scenario import Scenario
from .snapshot import _SnapshotEngine
from .trace import Trace, run_schedule


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


def explore(scenario: Scenario, preemption_bound: int | None = None, max_steps: int = 1000,
            stop_at_first: bool = True, order: str = "bfs", max_states: int = 1_000_000,
            record_states: bool = False, method: str = "snapshot") -> Result:
    """Check ``scenario`` over every interleaving (see the kvmmu.explorer docstring).

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
