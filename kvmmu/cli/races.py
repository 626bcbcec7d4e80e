"""``kvmmu scenarios`` and ``kvmmu explore NAME``: the book's races, by name, from the shell.

The scenarios are whatever the registry holds (:func:`kvmmu.scenarios.all_scenarios`),
so a chapter that adds one adds it here too.  ``explore`` prints the entry's
summary, then one of:

- ``schedule``: the run of that exact schedule (OSTEP's ``-P``);
- ``random_runs`` N from ``seed`` S: one line per run (seeds S .. S+N-1),
  then the trace of the first run that broke a check, or of the first run;
- otherwise the exhaustive check (breadth-first, so a counterexample is a
  shortest one), what the book expects of it, and the counterexample.

Traces are the two-column table of Documentation/virt/kvm/locking.rst
(:meth:`kvmmu.explorer.Trace.table`), wrapped to ``width``.
"""
import textwrap

from ..checks import check_bool, check_int

__all__ = ["scenarios_text", "explore_text"]


def _entries() -> dict:
    from ..scenarios import all_scenarios
    return all_scenarios()


def scenarios_text(width: int = 84) -> str:
    """Return the table of every scenario: chapter, what the exhaustive check finds, name, summary."""
    check_int("width", width, 40, 1000)
    entries = _entries()
    if not entries:
        return "no scenarios are registered (kvmmu.scenarios holds none)\n"
    # A name longer than the column keeps its line; its summary starts below.
    name_w = min(max(len("NAME"), *(len(n) for n in entries)), max(12, width // 3))
    lead = 4 + 10 + name_w + 2
    lines = [f"CH  EXPECT    {'NAME':<{name_w}}  SUMMARY"]
    for name, e in entries.items():
        first = f"{e.chapter:>2}  {e.expect:<8}  {name:<{name_w}}  "
        if len(name) > name_w:
            lines.append(first.rstrip())
            first = " " * lead
        lines += textwrap.wrap(e.summary, max(width, lead + 20), initial_indent=first,
                               break_long_words=False,
                               subsequent_indent=" " * lead) or [first.rstrip()]
    return "\n".join(lines) + "\n"


def _entry(name: str):
    if not isinstance(name, str):
        raise TypeError(f"name must be a scenario name (text), got {type(name).__name__}")
    entries = _entries()
    if name not in entries:
        raise ValueError(f"no scenario named {name!r}; 'kvmmu scenarios' lists them: "
                         + ", ".join(entries))
    return entries[name]


def _random_runs(scenario, runs: int, seed: int, width: int) -> list:
    from ..explorer import run_random

    traces = [(seed + i, run_random(scenario, seed + i)) for i in range(runs)]
    lines = [f"{runs} random run{'s' if runs != 1 else ''} (run_random, seeds {seed}.."
             f"{seed + runs - 1}):"]
    for s, t in traces:
        lines += textwrap.wrap(f"seed {s}: {t.schedule!r} ({len(t.steps)} steps): {t.outcome}",
                               width, initial_indent="  ", subsequent_indent="    ")
    shown = next(((s, t) for s, t in traces if t.violation is not None), traces[0])
    lines += ["", f"the run of seed {shown[0]}:", shown[1].table(width=width)]
    return lines


def _exhaustive(scenario, expect: str, width: int) -> list:
    from ..explorer import explore

    result = explore(scenario)
    found = "violated" if result.violated else "holds"
    verdict = "as the book expects" if found == expect else f"but the book expects: {expect}"
    lines = []
    for line in result.summary().splitlines() + [f"  {found}, {verdict}"]:
        indent = " " * (len(line) - len(line.lstrip()) + 2)
        lines += textwrap.wrap(line, width, subsequent_indent=indent)
    if result.counterexample is not None:
        lines += ["", "the counterexample:", result.counterexample.table(width=width)]
    return lines


def explore_text(name: str, schedule: str | None = None, random_runs: int | None = None,
                 seed: int = 0, complete: bool = False, width: int = 84) -> str:
    """Return scenario ``name``'s summary and its run(s): a schedule, random runs, or the exhaustive check."""
    entry = _entry(name)
    if schedule is not None and not isinstance(schedule, str):
        raise TypeError(f"schedule must be a string of actor letters, got {type(schedule).__name__}")
    if random_runs is not None:
        check_int("random_runs", random_runs, 1, 1000)
        if schedule is not None:
            raise ValueError("give schedule or random_runs, not both")
    check_int("seed", seed, 0)
    check_bool("complete", complete)
    check_int("width", width, 40, 400)
    scenario = entry.build()
    lines = textwrap.wrap(f"{name} (chapter {entry.chapter}): {entry.summary}", width)
    cast = "; ".join(f"{a.letter}: {a.title}" for a in scenario.actors)
    lines += textwrap.wrap(f"actors: {cast}", width, subsequent_indent="  ") + [""]
    if schedule is not None:
        from ..explorer import run_schedule

        trace = run_schedule(scenario, schedule, complete=complete)
        lines += [f"schedule {schedule!r}:", trace.table(width=width)]
    elif random_runs is not None:
        lines += _random_runs(scenario, random_runs, seed, width)
    else:
        lines += _exhaustive(scenario, entry.expect, width)
    return "\n".join(lines) + "\n"
