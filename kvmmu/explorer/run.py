"""One run: a fresh world and the actors' generators, advanced one step at a time.

``_Run`` is what ``run_schedule``, ``run_random``, ``state_key`` and the replay
engine drive: it performs an actor's pending Op, resumes the actor to its next
yield, and gives the verdict (invariants, final check, deadlock) and the
state key of the current state.
"""
from __future__ import annotations

import types

from .frames import _FRAMES_OK, _gen_key
from .freeze import _freeze
from .ops import Op, Violation
from .scenario import Scenario
from .world import World, _noop

__all__ = ["state_key"]

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


def _first_line(e: BaseException) -> str:
    # An assert's message names the violation: its first line is enough.
    text = str(e).strip()
    return text.splitlines()[0] if text else "assert"


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


def _final_verdict(sc, world, results):
    fc = sc.final_check
    if fc is None:
        return None
    r = fc(world, results)
    if isinstance(r, str):
        return r or "final check"
    return None if r else "final check"
