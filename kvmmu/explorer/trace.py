"""Traces: one run, step by step, and its renderings.

A ``Trace`` renders as the two-column (one column per CPU) table of
Documentation/virt/kvm/locking.rst (text and HTML) and as snapshots for a
slider; ``kvmmu.viz.explorer.timeline`` draws it.  ``run_schedule`` follows
one exact schedule, ``run_random`` a schedule drawn from ``random.Random(seed)``.
"""
from __future__ import annotations

import html
import random
from typing import NamedTuple

from ..checks import check_bool, check_int
from .ops import Violation
from .run import _Run, _schedule_index
from .scenario import Scenario
from .world import _text


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

    def view(self, columns=None) -> "TraceView":
        """The run as a table for ``display()``: HTML in the book, the text grid elsewhere.

        ``columns`` picks the shared-state names shown, as for :meth:`table`.
        The HTML table wraps long labels to the page and marks each changed
        value in bold, so it stays readable where the text grid is too wide.
        """
        return TraceView(self, self._check_columns(columns))

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


class TraceView:
    """A trace with its shared-state columns chosen, for ``display()``."""

    def __init__(self, trace: Trace, columns):
        self.trace, self.columns = trace, columns

    def __repr__(self) -> str:
        return self.trace.table(self.columns)

    def _repr_html_(self) -> str:
        return self.trace._repr_html_(self.columns)


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
