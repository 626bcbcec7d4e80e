"""Views of explorer traces: a timeline figure (one lane per CPU), and its data.

``timeline(trace)`` draws the run of :class:`kvmmu.explorer.Trace` the way
the two-column tables read, turned on its side: time runs left to right, each
CPU has a lane, each step is a box in its CPU's lane, a hatched band marks a
CPU that was waiting (blocked) while another stepped, and a red marker shows
where the run broke.  ``timeline_rows(trace)`` is the data it draws, for a
checked cell beside the figure.  matplotlib is imported inside the function.
"""
from __future__ import annotations

import textwrap


def timeline_rows(trace) -> list[tuple]:
    """One row per step: ``(index, lane, actor, label, waiting, broke)``.

    ``lane`` is the CPU number (the actor's position), ``waiting`` the letters
    that were blocked during the step, ``broke`` True on the step where the
    violation showed.
    """
    lanes = {letter: n for n, (letter, _) in enumerate(trace.actors)}
    rows = []
    for n, step in enumerate(trace.steps):
        waiting = trace.waiting[n] if n < len(trace.waiting) else ""
        rows.append((n + 1, lanes[step.actor], step.actor, step.label, waiting,
                     n == trace.violation_step and not trace.deadlock))
    return rows


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def _boxed(text: str, width: int) -> str:
    # At most three lines of ``width`` characters, the last one cut if needed.
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > 3:
        lines = lines[:2] + [_short(" ".join(lines[2:]), width)]
    return "\n".join(lines)


def timeline(trace, ax=None, label_width: int = 16):
    """Draw ``trace`` as a timeline; return the Figure.

    ``ax``: draw into an existing Axes.  ``label_width``: characters per line
    of each step's label in its box (three lines at most; the full label is
    in the trace table).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Rectangle

    from ..checks import check_int
    check_int("label_width", label_width, 4, 200)
    rows = timeline_rows(trace)
    ncpu = len(trace.actors)
    nsteps = len(rows)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.45 * nsteps + 3.0), 1.4 + 1.0 * ncpu))
    else:
        fig = ax.figure
    lanes = {letter: n for n, (letter, _) in enumerate(trace.actors)}

    def y_of(lane):
        return ncpu - 1 - lane          # CPU 0 on top, as in the tables

    for n, (letter, title) in enumerate(trace.actors):
        ax.axhline(y_of(n), color="#dddddd", linewidth=0.8, zorder=0)
    for index, lane, actor, label, waiting, broke in rows:
        x = index
        for w in waiting:
            ax.add_patch(Rectangle((x - 0.5, y_of(lanes[w]) - 0.12), 1.0, 0.24, hatch="///",
                                   facecolor="none", edgecolor="#b0b0b0", linewidth=0, zorder=1))
        face = "#f8d7da" if broke else "#e8f1fa"
        edge = "#b00020" if broke else "#1d3557"
        ax.add_patch(FancyBboxPatch((x - 0.45, y_of(lane) - 0.3), 0.9, 0.6,
                                    boxstyle="round,pad=0.02", facecolor=face, edgecolor=edge,
                                    linewidth=1.4 if broke else 1.0, zorder=2))
        ax.text(x, y_of(lane), _boxed(label, label_width), ha="center", va="center",
                fontsize=7, zorder=3)
        if broke:
            ax.plot([x], [y_of(lane) + 0.42], marker="v", color="#b00020", markersize=10, zorder=4)
    title = f"{trace.scenario}: schedule {trace.schedule or '(none)'}"
    if trace.violation is not None:
        what = "deadlock" if trace.deadlock else trace.violation
        if trace.deadlock or trace.violation_step in (None, -1) or trace.runaway:
            ax.axvline(nsteps + 0.5, color="#b00020", linestyle="--", linewidth=1.2)
        title += "\nOOPS: " + _short(what, 90)
    ax.set_yticks([y_of(n) for n in range(ncpu)])
    ax.set_yticklabels([f"CPU {n} ({letter}: {_short(title, 24)})"
                        for n, (letter, title) in enumerate(trace.actors)])
    ax.set_xticks(range(1, nsteps + 1))
    ax.set_xlim(0.3, nsteps + 0.8)
    ax.set_ylim(-0.6, ncpu - 0.2)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=10, color="#b00020" if trace.violation is not None else "black")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig
