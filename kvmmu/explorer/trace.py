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

__all__ = ["Step", "Trace", "TraceView", "run_random", "run_schedule"]


class _StepRow(NamedTuple):
    actor: str
    label: str
    state: dict


class Step(_StepRow):
    """One row of a trace: who stepped, what it did, the shared state after."""

    __slots__ = ()

    def __new__(cls, actor: str, label: str, state: dict):
        if not (isinstance(actor, str) and len(actor) == 1):
            raise ValueError(f"actor must be one schedule letter, got {actor!r}")
        if not isinstance(label, str):
            raise TypeError(f"label must be a string, got {type(label).__name__}")
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of shown values, got {type(state).__name__}")
        return super().__new__(cls, actor, label, state)


class Trace:
    """One run: the steps in time order, the outcome, and its renderings."""

    def __init__(self, scenario: Scenario, initial: dict):
        if not isinstance(scenario, Scenario):
            raise TypeError(f"scenario must be a Scenario, got {type(scenario).__name__}")
        if not isinstance(initial, dict):
            raise TypeError(f"initial must be a dict of shown values, got {type(initial).__name__}")
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

    def rows(self, columns=None) -> list[tuple]:
        """The run in the locking.rst cut: ``(step, actor, label, changes)`` per step.

        ``changes`` lists the ``(name, value)`` pairs of the shared state
        (``columns``: which names; default all) that this step changed; the
        initial state is :attr:`initial`, shown once.
        """
        columns = self._check_columns(columns)
        out, prev = [], self.initial
        for n, s in enumerate(self.steps, 1):
            keys = list(s.state) if columns is None else columns
            changes = [(k, s.state[k]) for k in keys if k in s.state and prev.get(k) != s.state[k]]
            out.append((n, s.actor, s.label, changes))
            prev = s.state
        return out

    def table(self, columns=None, width: int = 84) -> str:
        """The run as a text table in the locking.rst cut, at most ``width`` characters wide.

        The state at the beginning once; then one row per step: its number,
        what the CPU that stepped did (in that CPU's column), and only the
        shared values the step changed; the step that broke a check is
        marked ``<<<``, and the last line says how the run ended.
        ``columns`` picks the shared-state names shown (default: all).
        """
        columns = self._check_columns(columns)
        check_int("width", width, 40, 400)
        ncpu = len(self.actors)
        rows = self.rows(columns)
        idx = {letter: n for n, (letter, _) in enumerate(self.actors)}
        widths = self._text_widths(rows, idx, width)
        def rule(ch="-"):
            return "+" + "+".join(ch * (w + 2) for w in widths) + "+"

        def row(texts):
            cols = [_wrap(t, w) for t, w in zip(texts, widths)]
            depth = max(len(c) for c in cols)
            return ["| " + " | ".join((c[i] if i < len(c) else "").ljust(w)
                                      for c, w in zip(cols, widths)) + " |"
                    for i in range(depth)]

        heads = ["#"] + [f"CPU {n} ({letter})" for n, (letter, _) in enumerate(self.actors)]
        lines = [rule()] + row(heads + ["changes"]) + [rule("=")]
        full = sum(widths) + 3 * len(widths) - 1     # inside the outer "|" and "|"
        init = _pairs(self.initial, columns)
        lines += ["| " + line.ljust(full - 2) + " |"
                  for line in _wrap("At the beginning: " + init, full - 2)]
        lines.append(rule())
        for n, actor, label, changes in rows:
            cells = [""] * ncpu
            mark = " <<<" if n - 1 == self.violation_step and not self.deadlock else ""
            cells[idx[actor]] = label + mark
            lines += row([str(n)] + cells + ["; ".join(f"{k}: {v}" for k, v in changes)])
            lines.append(rule())
        lines += ["| " + line.ljust(full - 2) + " |" for line in _wrap(self.outcome, full - 2)]
        lines.append("+" + "-" * full + "+")
        legend = "; ".join(f"CPU {n} ({letter}): {title}"
                           for n, (letter, title) in enumerate(self.actors))
        return "\n".join(_wrap(legend, full + 2) + lines)

    def _text_widths(self, rows, idx, width: int) -> list:
        # Each column as wide as its longest cell (and its header), shrunk
        # to fit ``width``: the changes column keeps at least a third.
        ncpu = len(self.actors)
        natural = [3] + [len(f"CPU {n} ({letter})") for n, (letter, _) in
                         enumerate(self.actors)] + [len("changes")]
        for n, actor, label, changes in rows:
            c = 1 + idx[actor]
            natural[c] = max(natural[c], len(label) + 4)
            natural[-1] = max(natural[-1], len("; ".join(f"{k}: {v}" for k, v in changes)))
        room = width - 1 - 3 * (ncpu + 2)          # what the cells may use in all
        if sum(natural) <= room:
            return natural
        changes_w = min(natural[-1], max(16, room // 3))
        left = room - 3 - changes_w
        total = sum(natural[1:-1])
        cpus = [max(10, left * w // total) for w in natural[1:-1]]
        return [3] + cpus + [changes_w]

    def __repr__(self):
        return self.table()

    def view(self, columns=None) -> "TraceView":
        """The run as a table for ``display()``: HTML in the book, the text table elsewhere.

        ``columns`` picks the shared-state names shown, as for :meth:`table`.
        Both are the locking.rst cut: a step column, the state at the
        beginning once, then only what each step changed.
        """
        return TraceView(self, self._check_columns(columns))

    def _repr_html_(self, columns=None) -> str:
        columns = self._check_columns(columns)
        esc = html.escape
        ncpu = len(self.actors)
        idx = {letter: n for n, (letter, _) in enumerate(self.actors)}
        td = 'style="border:1px solid #bbb;padding:2px 6px;vertical-align:top"'
        mono = "font-family:monospace;font-size:85%"
        out = [f'<table class="kvmmu-trace" style="border-collapse:collapse;width:100%;'
               f'table-layout:auto;{mono}">',
               f"<thead><tr><th {td}>#</th>"
               + "".join(f"<th {td}>CPU {n} ({esc(letter)}): {esc(title)}</th>"
                         for n, (letter, title) in enumerate(self.actors))
               + f"<th {td}>changes</th></tr></thead><tbody>"]
        init = "; ".join(f'<span style="white-space:nowrap">{esc(k)}: {esc(str(v))}</span>'
                         for k, v in _items(self.initial, columns))
        out.append(f'<tr><td {td} colspan="{ncpu + 2}"><i>At the beginning:</i> {init}</td></tr>')
        for n, actor, label, changes in self.rows(columns):
            bg = ' style="background:#fdd"' if n - 1 == self.violation_step else ""
            cells = [f"<td {td}></td>"] * ncpu
            cells[idx[actor]] = f"<td {td}>{esc(label)}</td>"
            ch = "; ".join(f'<span style="white-space:nowrap">{esc(k)}: {esc(str(v))}</span>'
                           for k, v in changes)
            out.append(f"<tr{bg}><td {td}>{n}</td>" + "".join(cells) + f"<td {td}>{ch}</td></tr>")
        color = "#b00" if self.violation is not None else "#060"
        out.append(f'<tr><td {td} colspan="{ncpu + 2}"><b style="color:{color}">'
                   f"{esc(self.outcome)}</b></td></tr></tbody></table>")
        return "".join(out)


def _items(state: dict, columns) -> list:
    keys = list(state) if columns is None else columns
    return [(k, state[k]) for k in keys if k in state]


def _pairs(state: dict, columns) -> str:
    return "; ".join(f"{k}: {v}" for k, v in _items(state, columns))


def _wrap(text: str, width: int) -> list:
    """Wrap ``text`` to ``width`` at spaces; a word longer than a line is cut to fit."""
    words, lines, line = text.split(" "), [], ""
    for w in words:
        while len(w) > width:                  # a word wider than the column: cut it
            if line:
                lines.append(line)
                line = ""
            lines.append(w[:width])
            w = w[width:]
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    return lines


class TraceView:
    """A trace with its shared-state columns chosen, for ``display()``."""

    def __init__(self, trace: Trace, columns):
        if not isinstance(trace, Trace):
            raise TypeError(f"trace must be a Trace, got {type(trace).__name__}")
        if columns is not None and not isinstance(columns, (list, tuple)):
            raise TypeError(f"columns must be a list of column names or None, got {columns!r}")
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
