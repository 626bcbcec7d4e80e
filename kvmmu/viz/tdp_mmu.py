"""Views of chapter 3: the race player, a run's table, and a figure of a run.

``race_view(...)`` is the pure function behind the player: it never raises
and returns a :class:`RaceView` (the steps of a schedule, the SPTE and each
vCPU's TLB at a chosen moment, whether the invariant holds, who may step
next), as text and as HTML.  ``race_player()`` only wires controls to it;
it needs ipywidgets and nothing else, so it also runs in the browser.
``race_table(trace)`` is a run in the cut of ``locking.rst``: the state at
the beginning once, then one row per step that matters, a run of steps
that changes nothing shown folded into one row.  ``race_figure(trace)``
draws a run for the book's column: one lane per actor, a band for the SPTE
and one per TLB, coloured by the pfn they map; ``race_rows(trace)`` is the
data it draws.
"""
import html as _html
import re
import textwrap
from dataclasses import dataclass

from .. import explorer as ex
from ..scenarios import tdp_mmu as R

__all__ = ["MAX_SCHEDULE", "SPTE_KEY", "SHOWN", "RaceView", "race_view",
           "race_player", "RaceTable", "race_table", "race_rows", "race_figure"]

#: The longest schedule the player runs.
MAX_SCHEDULE = 200
SPTE_KEY = R.SPTE_KEY
#: The parts of the VM's state the player shows: the SPTE, each TLB, mmu_lock.
SHOWN = (SPTE_KEY, "vCPU 0 TLB", "vCPU 1 TLB", "mmu_lock")
#: The invariant's name as the views print it.
INVARIANT = R.NO_STALE_TRANSLATION
#: What each actor letter is, in the player's buttons.
ACTOR_NAMES = {"A": "the zap", "B": "vCPU 1", "C": "vCPU 0", "D": "zap 2"}
_CELL = ("border:1px solid #bbb;padding:1px 4px;vertical-align:top;"
         "overflow-wrap:anywhere")


def run_length(schedule: str) -> str:
    """Spell a schedule in runs: ``"AAAB"`` -> ``"A3 B1"`` (empty: ``"(none)"``)."""
    runs = []
    for ch in schedule:
        if runs and runs[-1][0] == ch:
            runs[-1][1] += 1
        else:
            runs.append([ch, 1])
    return " ".join(f"{c}{n}" for c, n in runs) or "(none)"


# --------------------------------------------------------------------------
# The player: a pure function, then the widget.
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class RaceView:
    """What the race player shows.

    ``ok``: whether every input was taken as given (``message`` says what
    was not).  ``schedule``: the steps that took effect (the next call's
    input).  ``steps``: (number, actor, what it did) for every step of the
    schedule.  ``position``: the moment shown (0 = before any step).
    ``state``: (name, value) pairs at that moment (the names of
    :data:`SHOWN`).  ``holds``: whether the invariant holds there;
    ``violation``: what broke, if not.  ``runnable``: the letters that may
    step after the whole schedule.  ``outcome``: one line on how the
    schedule left the run (who may step, or how it ended).
    """

    ok: bool
    message: str
    fix: bool
    actors: int
    schedule: str
    position: int
    steps: tuple
    state: tuple
    holds: bool
    violation: str
    runnable: str
    outcome: str
    broken_at: int = 0

    def value(self, name: str) -> str:
        """One state value at the moment shown ('' if absent)."""
        return dict(self.state).get(name, "")

    def fix_text(self) -> str:
        return ("fix on (freeze, flush, non-present)" if self.fix else
                "fix off (non-present, then flush)")

    def verdict(self) -> str:
        """The invariant's line: holds, or where and what broke."""
        if self.holds:
            return f"invariant ({INVARIANT}): holds"
        if self.violation == INVARIANT:
            return f"invariant ({INVARIANT}): BROKEN at step {self.broken_at}"
        return f"BROKEN at step {self.broken_at}: {self.violation}"

    def __repr__(self) -> str:
        lines = [f"{'ok' if self.ok else 'refused'}: {self.message}",
                 f"{self.fix_text()}, {self.actors} actors; "
                 f"step {self.position} of {len(self.steps)}",
                 f"schedule: {run_length(self.schedule)}"]
        lines += [f"  {k}: {v}" for k, v in self.state]
        lines += [f"  {self.verdict()}", f"  {self.outcome}"]
        return "\n".join(textwrap.fill(line, 84, subsequent_indent="    ")
                         for line in lines)

    def html(self) -> str:
        esc = _html.escape
        td = f"style='{_CELL}'"
        letters = "ABCD"[:self.actors]
        head = "".join(f"<th {td}>{letter}: {esc(ACTOR_NAMES[letter])}</th>"
                       for letter in letters)
        body = []
        for n, actor, label in self.steps:
            style = (" style='background:#ffe8a3'" if n == self.position else
                     " style='color:#999'" if n > self.position else "")
            cells = "".join(f"<td {td}>{esc(label) if actor == letter else ''}</td>"
                            for letter in letters)
            body.append(f"<tr{style}><td {td}>{n}</td>{cells}</tr>")
        state = "".join(f"<tr><td style='padding:0 8px 0 0'><b>{esc(k)}</b></td>"
                        f"<td style='font-family:monospace'>{esc(v)}</td></tr>"
                        for k, v in self.state)
        said = esc(self.verdict())
        verdict = (f"<span style='color:#060'>{said}</span>" if self.holds
                   else f"<b style='color:#b00'>{said}</b>")
        colour = "#060" if self.ok else "#b00"
        steps = (f"<div style='max-height:16em;overflow-y:auto;margin-top:4px'>"
                 f"<table style='border-collapse:collapse;width:100%;margin:0;"
                 f"table-layout:fixed;font-size:90%'>"
                 f"<col style='width:2.5em'><tr><th {td}>#</th>{head}</tr>"
                 f"{''.join(body)}</table></div>") if self.steps else ""
        return (f"<div class='kvmmu-race-player' style='max-width:100%'>"
                f"<div style='color:{colour}'><b>{esc(self.message)}</b></div>"
                f"<div>{esc(self.fix_text())}; step {self.position} of "
                f"{len(self.steps)}</div>"
                f"<table style='border-collapse:collapse;margin:2px 0'>{state}"
                "</table>"
                f"<div>{verdict}</div><div>{esc(self.outcome)}</div>{steps}</div>")

    def _repr_html_(self) -> str:
        return self.html()


def _refused(message: str, fix=True, actors=2) -> RaceView:
    return RaceView(False, message, fix if isinstance(fix, bool) else True,
                    actors if actors in (2, 3) else 2, "", 0, (), (), True, "",
                    "", "")


def _valid_prefix(sc, schedule: str) -> tuple[str, str]:
    # Validity is prefix-closed: bisect for the longest valid prefix.
    try:
        ex.run_schedule(sc, schedule)
        return schedule, ""
    except ValueError:
        pass
    lo, hi = 0, len(schedule)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            ex.run_schedule(sc, schedule[:mid])
            lo = mid
        except ValueError:
            hi = mid - 1
    try:
        ex.run_schedule(sc, schedule[:lo + 1])
        why = ""
    except ValueError as exc:
        why = str(exc)
    return schedule[:lo], why


def _outcome(trace) -> str:
    """Who may step after ``trace``, or how it ended, in one short line."""
    if trace.violation is not None:
        return f"stopped at step {trace.violation_step + 1}: nobody steps on"
    if not trace.unfinished:
        return "finished: " + "; ".join(f"{k} returned {v}"
                                        for k, v in trace.results.items())
    waiting = [a for a in trace.unfinished if a not in trace.runnable]
    when = f"after step {len(trace.steps)}" if trace.steps else "next"
    text = f"{when}: " + " or ".join(trace.runnable) + " may step"
    if trace.results:
        text += "; " + "; ".join(f"{k} returned {v}"
                                 for k, v in trace.results.items())
    return text + (f"; {', '.join(waiting)} waiting" if waiting else "")


def _position(position, last: int, messages: list) -> int:
    if position is None:
        return last
    if isinstance(position, bool) or not isinstance(position, int):
        messages.append("position must be a whole number, got "
                        f"{type(position).__name__}; showing the last step")
        return last
    if not 0 <= position <= last:
        messages.append(f"position must be in [0, {last}], got {position}; "
                        "showing the nearest")
        return min(max(position, 0), last)
    return position


def race_view(fix=True, schedule="", position=None, actors=2) -> RaceView:
    """The player's view of the zap-vs-fault race under ``schedule``; never raises.

    ``fix``: True runs the freezing zap (6.12 and earlier), False the unsafe
    one.  ``schedule``: actor letters, one per step (spaces and case
    ignored); letters past an illegal one are dropped with a message.
    ``position``: the moment to show, 0 (the start) to the number of steps
    (None: the last).  ``actors``: 2 (zap, vCPU 1) or 3 (and vCPU 0).
    """
    try:
        if not isinstance(fix, bool):
            return _refused(f"fix must be True or False, got {type(fix).__name__}",
                            True, actors)
        if isinstance(actors, bool) or actors not in (2, 3):
            return _refused(f"actors must be 2 or 3, got {actors!r}", fix, 2)
        if not isinstance(schedule, str):
            return _refused("schedule must be text (actor letters), got "
                            f"{type(schedule).__name__}", fix, actors)
        sc = R.zap_vs_fault(fix, actors)
        messages = []
        clean = "".join(schedule.split()).upper()
        if len(clean) > MAX_SCHEDULE:
            messages.append(f"schedule cut to its first {MAX_SCHEDULE} steps")
            clean = clean[:MAX_SCHEDULE]
        clean, why = _valid_prefix(sc, clean)
        if why:
            messages.append(f"not taken: {why}")
        trace = ex.run_schedule(sc, clean)
        if trace.unused:
            messages.append(f"the run stopped at step {len(trace.steps)} "
                            f"({trace.violation}); the rest was not run")
            clean = clean[:len(trace.steps)]
        snaps = trace.snapshots()
        position = _position(position, len(snaps) - 1, messages)
        broken_at = (None if trace.violation_step is None
                     else trace.violation_step + 1)
        holds = broken_at is None or position < broken_at
        steps = tuple((n, s.actor, s.label)
                      for n, s in enumerate(trace.steps, start=1))
        message = "; ".join(messages) if messages else (
            "at the start: step an actor" if not clean else
            f"{len(clean)} step{'s' if len(clean) != 1 else ''} run")
        shown = tuple((k, snaps[position]["state"][k]) for k in SHOWN)
        return RaceView(not messages, message, fix, actors, clean, position, steps,
                        shown, holds, "" if holds else trace.violation,
                        "".join(trace.runnable), _outcome(trace), broken_at or 0)
    except Exception as exc:  # never raise: the player reports
        return _refused(f"internal error: {type(exc).__name__}: {exc}",
                        fix if isinstance(fix, bool) else True, actors)


def race_player(fix: bool = False, actors: int = 2, schedule: str = ""):
    """The race player: a fix toggle, a step button per actor, undo/reset, a slider.

    A thin shell over :func:`race_view`; the HTML is exactly its view.
    """
    import ipywidgets as W

    first = race_view(fix, schedule, None, actors)
    holder = {"schedule": first.schedule}
    toggle = W.Checkbox(value=first.fix, indent=False,
                        description="the fix: freeze before the flush",
                        layout=W.Layout(width="auto"))
    slider = W.IntSlider(value=first.position, min=0, max=max(len(first.steps), 1),
                         description="moment", continuous_update=True,
                         layout=W.Layout(width="300px"))
    out = W.HTML(first.html())
    busy = {"on": False}

    def show(position=None):
        view = race_view(toggle.value, holder["schedule"], position, first.actors)
        holder["schedule"] = view.schedule
        busy["on"] = True
        slider.max = max(len(view.steps), 1)
        slider.value = view.position
        busy["on"] = False
        out.value = view.html()

    def stepper(letter):
        def click(_b):
            holder["schedule"] += letter
            show()
        return click

    buttons = []
    for letter in "ABC"[:first.actors]:
        b = W.Button(description=f"step {letter} ({ACTOR_NAMES[letter]})",
                     layout=W.Layout(width="150px"))
        b.add_class(f"kvmmu-race-step-{letter.lower()}")
        b.on_click(stepper(letter))
        buttons.append(b)
    undo = W.Button(description="undo", layout=W.Layout(width="70px"))
    reset = W.Button(description="reset", button_style="warning",
                     layout=W.Layout(width="70px"))

    def do_undo(_b):
        holder["schedule"] = holder["schedule"][:-1]
        show()

    def do_reset(_b=None):
        holder["schedule"] = ""
        show()

    # CSS classes let the browser tests find each control.
    for control, name in ((toggle, "fix"), (slider, "moment"), (undo, "undo"),
                          (reset, "reset"), (out, "out")):
        control.add_class(f"kvmmu-race-{name}")
    undo.on_click(do_undo)
    reset.on_click(do_reset)
    toggle.observe(lambda _c: show(), names="value")
    slider.observe(lambda c: None if busy["on"] else show(c["new"]), names="value")
    box = W.VBox([toggle, W.HBox(buttons), W.HBox([undo, reset, slider]), out],
                 layout=W.Layout(max_width="100%"))
    box.add_class("kvmmu-race-widget")
    return box


# --------------------------------------------------------------------------
# A run in the locking.rst cut
# --------------------------------------------------------------------------
_CAPTIONS = {"read_lock(mmu_lock)": "lock", "read_unlock(mmu_lock)": "unlock",
             "allocate": "alloc", "memslot": "memslot",
             "kvm_mmu_faultin_pfn": "faultin", "is_page_fault_stale?": "stale?"}


def _caption(label: str) -> str:
    """A step in one word or two, for a folded row or a figure's box."""
    if label.startswith("vCPU"):
        return "EPT violation" if "EPT violation" in label else "TLB hit"
    word = label.split()[0]
    if word == "cmpxchg":
        return "cmpxchg" if ": ok" in label else "cmpxchg fails"
    return _CAPTIONS.get(word, word)


def _compress(words: list[str]) -> str:
    """``["read", "read", "lock"]`` -> ``"read x2, lock"``."""
    out = []
    for w in words:
        if out and out[-1][0] == w:
            out[-1][1] += 1
        else:
            out.append([w, 1])
    return ", ".join(w if n == 1 else f"{w} x{n}" for w, n in out)


def _race_entry(label: str) -> bool:
    # Steps on the race's own 4K entry, flushes and the CPUs' accesses keep a row.
    return (f"L1[{R.RACE_GFN & 0x1ff:#x}]" in label or label.startswith("flush")
            or label.startswith("vCPU"))


@dataclass(frozen=True)
class RaceTable:
    """A run as rows: ``(first, last, actor, what, changes, broke)``.

    ``changes`` maps the columns shown to the values a row's last step left
    where they changed; ``what`` is the step's label, or for a folded run
    of steps the steps in a word each.
    """

    actors: tuple
    columns: tuple
    initial: tuple
    rows: tuple
    outcome: str

    def _steps(self, first: int, last: int) -> str:
        return str(first) if first == last else f"{first}-{last}"

    def __repr__(self) -> str:
        letters = [a for a, _ in self.actors]
        heads = ["#"] + [f"CPU {n} ({a})" for n, a in enumerate(letters)] + [
            c.replace(f" of {R.RACE_GFN:#x}", "") for c in self.columns]
        width = 84 - 3 * len(heads) - 1
        fixed = 6
        share = (width - fixed) // (len(heads) - 1)
        widths = [fixed] + [share] * (len(heads) - 1)

        def row(cells):
            cols = [textwrap.wrap(c, w, break_long_words=True) or [""]
                    for c, w in zip(cells, widths)]
            return ["| " + " | ".join((col[i] if i < len(col) else "").ljust(w)
                                      for col, w in zip(cols, widths)) + " |"
                    for i in range(max(len(c) for c in cols))]

        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        lines = [rule] + row(heads) + [rule]
        lines += row(["", "at the beginning"] + [""] * (len(letters) - 1)
                     + [v for _, v in self.initial]) + [rule]
        for first, last, actor, what, changes, broke in self.rows:
            cells = [self._steps(first, last)] + [
                (what + (" <<<" if broke else "")) if a == actor else ""
                for a in letters] + [changes.get(c, "") for c in self.columns]
            lines += row(cells)
        lines += [rule] + [f"  {line}" for line in textwrap.wrap(self.outcome, 80)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = _html.escape
        td = f"style='{_CELL}'"
        letters = [a for a, _ in self.actors]
        head = ("<tr>" + f"<th {td}>#</th>"
                + "".join(f"<th {td}>CPU {n} ({esc(a)}): {esc(t)}</th>"
                          for n, (a, t) in enumerate(self.actors))
                + "".join(f"<th {td}>{esc(c)}</th>" for c in self.columns)
                + "</tr>")
        rows = [f"<tr><td {td}></td><td {td} colspan='{len(letters)}'><i>At the "
                "beginning</i></td>" + "".join(f"<td {td}>{esc(v)}</td>"
                                               for _, v in self.initial) + "</tr>"]
        for first, last, actor, what, changes, broke in self.rows:
            bg = " style='background:#fdd'" if broke else ""
            mark = " <b>OOPS!</b>" if broke else ""
            text = f"<i>{esc(what)}</i>" if first != last else esc(what)
            cells = "".join(f"<td {td}>{text}{mark}</td>" if a == actor
                            else f"<td {td}></td>" for a in letters)
            rows.append(f"<tr{bg}><td {td}>{self._steps(first, last)}</td>{cells}"
                        + "".join(f"<td {td}>{esc(changes.get(c, ''))}</td>"
                                  for c in self.columns) + "</tr>")
        colour = "#b00" if "OOPS" in self.outcome else "#060"
        span = 1 + len(letters) + len(self.columns)
        rows.append(f"<tr><td {td} colspan='{span}'>"
                    f"<b style='color:{colour}'>{esc(self.outcome)}</b></td></tr>")
        return ("<table class='kvmmu-trace kvmmu-race-table' "
                "style='border-collapse:collapse;width:100%;table-layout:fixed'>"
                f"<col style='width:3.2em'>{head}{''.join(rows)}</table>")


def race_table(trace, columns=(SPTE_KEY, "vCPU 0 TLB")) -> RaceTable:
    """``trace`` in the cut of locking.rst, for ``display()``.

    A step keeps a row of its own when it changes a value in ``columns``,
    breaks a check, or touches the race's 4K entry (a read, a
    compare-exchange, a write), flushes, or is a vCPU's access; the steps
    of one actor between two such steps are folded into one row that names
    them in a word each.
    """
    _check_trace(trace)
    if isinstance(columns, str) or not all(c in trace.initial for c in columns):
        raise ValueError(f"columns must be shared-state names of the trace, "
                         f"from {', '.join(trace.initial)}; got {columns!r}")
    columns = tuple(columns)
    rows, prev, run = [], trace.initial, []

    def close():
        if run:
            words = [_caption(s.label) for _, s in run]
            rows.append((run[0][0], run[-1][0], run[0][1].actor, _compress(words),
                         {}, False))
            run.clear()

    for n, step in enumerate(trace.steps, 1):
        changes = {c: step.state[c] for c in columns if step.state[c] != prev[c]}
        broke = n - 1 == trace.violation_step and not trace.deadlock
        prev = step.state
        if run and run[-1][1].actor != step.actor:
            close()
        if changes or broke or _race_entry(step.label):
            close()
            rows.append((n, n, step.actor, step.label, changes, broke))
        else:
            run.append((n, step))
    close()
    return RaceTable(tuple(trace.actors), columns,
                     tuple((c, trace.initial[c]) for c in columns), tuple(rows),
                     trace.outcome)


# --------------------------------------------------------------------------
# The race figure
# --------------------------------------------------------------------------
def _check_trace(trace, spte_key: str = SPTE_KEY) -> None:
    if not isinstance(trace, ex.Trace):
        raise TypeError("trace must be a kvmmu.explorer Trace, got "
                        f"{type(trace).__name__}")
    if not isinstance(spte_key, str):
        raise TypeError("spte_key must be a shared-state name, got "
                        f"{type(spte_key).__name__}")


def race_rows(trace, spte_key: str = SPTE_KEY) -> list[tuple]:
    """The data of :func:`race_figure`: one row per step.

    ``(number, actor, caption, SPTE, vCPU 0 TLB, vCPU 1 TLB, broken)``,
    where the three values are the readable state after the step and
    ``broken`` says whether the invariant was broken by that step.
    """
    _check_trace(trace, spte_key)
    rows = []
    for snap in trace.snapshots()[1:]:
        state = snap["state"]
        rows.append((snap["index"], snap["actor"], _caption(snap["label"]),
                     state.get(spte_key, ""), state.get("vCPU 0 TLB", ""),
                     state.get("vCPU 1 TLB", ""), snap["violation"] is not None))
    return rows


_OLD, _NEW = re.compile(rf"{R.OLD_PFN:#x}\b"), re.compile(rf"{R.NEW_PFN:#x}\b")
#: Band colours: the old pfn, the new pfn, FROZEN_SPTE, nothing.
COLOURS = {"old": "#8ecae6", "new": "#ffb703", "frozen": "#adb5bd",
           "none": "#ffffff"}


def _colour(text: str) -> str:
    if _OLD.search(text):
        return COLOURS["old"]
    if _NEW.search(text):
        return COLOURS["new"]
    if "FROZEN" in text:
        return COLOURS["frozen"]
    return COLOURS["none"]


def _segments(values: list[str]) -> list[tuple[int, int, str]]:
    """Runs of equal values: (first step, last step, value), steps from 1."""
    out = []
    for n, v in enumerate(values, 1):
        if out and out[-1][2] == v:
            out[-1][1] = n
        else:
            out.append([n, n, v])
    return [tuple(s) for s in out]


def _run_caption(captions: list[str], labels: list[str]) -> str:
    """What a run of one actor's steps did, in a few words (the figure's boxes)."""
    words = []
    for caption, label in zip(captions, labels):
        if caption in ("read", "lock", "unlock") and "FROZEN_SPTE" not in label:
            word = "walk" if caption == "read" else ""
        elif caption == "read":
            word = "reads FROZEN_SPTE"
        elif caption == "cmpxchg":
            word = ("freeze" if "-> FROZEN_SPTE" in label else
                    "clear" if "-> non-present" in label else "install")
        elif caption in ("memslot", "faultin", "stale?"):
            word = "fault"
        elif caption == "write":
            word = "clear"
        else:
            word = caption
        if word and word not in words:
            words.append(word)
    return ", ".join(words)


def _fit(text: str, width_in: float, font_pt: float = 8,
         lines: int = 3) -> str | None:
    # Wrap ``text`` to the box; None if it cannot fit in ``lines`` lines.
    chars = int(width_in / (font_pt * 0.62 / 72))
    if chars < 4:
        return None
    wrapped = textwrap.wrap(text, chars, break_long_words=False)
    return "\n".join(wrapped) if wrapped and len(wrapped) <= lines and \
        max(map(len, wrapped)) <= chars else None


def race_figure(trace, title: str | None = None, spte_key: str = SPTE_KEY):
    """Draw a run of the zap-vs-fault race for the book's column; return the Figure.

    Each run of one actor's steps is a box in its lane, saying what the run
    did.  Below, the SPTE and each vCPU's TLB entry for the gfn are
    coloured by the pfn they map (blue: the old pfn, amber: the new one,
    grey: FROZEN_SPTE, white: nothing), with the value written where it
    fits.  A red line marks the step that broke the invariant.
    """
    from matplotlib.patches import Patch, Rectangle

    from .style import column_figure

    rows = race_rows(trace, spte_key)
    letters = [a for a, _ in trace.actors]
    bands = [("SPTE", 3), ("vCPU 0 TLB", 4), ("vCPU 1 TLB", 5)]
    lane = {name: len(bands) - 1 - i for i, (name, _) in enumerate(bands)}
    for i, letter in enumerate(letters):
        lane[letter] = len(bands) + len(letters) - 1 - i
    # Margins in inches: lane names on the left, the title above, the step
    # axis and the legend below; each lane 0.45 in.
    left, right, top, bottom = 1.15, 0.1, 0.3 if title else 0.1, 0.75
    height = 0.45 * len(lane) + top + bottom
    fig = column_figure(height)
    width = fig.get_figwidth()
    inner = (width - left - right, height - top - bottom)
    ax = fig.add_axes((left / width, bottom / height, inner[0] / width,
                       inner[1] / height))
    n = len(rows)
    step_in = inner[0] / max(n, 1)
    for name, col in bands:                          # the state bands
        for first, last, value in _segments([r[col] for r in rows]):
            ax.add_patch(Rectangle((first - 0.5, lane[name] - 0.4),
                                   last - first + 1, 0.8, facecolor=_colour(value),
                                   edgecolor="#888", lw=0.5))
            shown = "" if value in ("-", "") else value
            text = _fit(shown, (last - first + 1) * step_in, lines=1)
            if text:
                ax.text((first + last) / 2, lane[name], text, ha="center",
                        va="center", fontsize=8)
    runs = []                                         # the actors' runs of steps
    for r in rows:
        if runs and runs[-1][2] == r[1]:
            runs[-1][1] = r[0]
        else:
            runs.append([r[0], r[0], r[1]])
    labels = [s.label for s in trace.steps]
    for first, last, actor in runs:
        ax.add_patch(Rectangle((first - 0.45, lane[actor] - 0.4),
                               last - first + 0.9, 0.8, facecolor="#e8f1fa",
                               edgecolor="#1d3557", lw=1))
        caption = _run_caption([r[2] for r in rows[first - 1:last]],
                               labels[first - 1:last])
        text = _fit(caption, (last - first + 0.9) * step_in)
        if text:
            ax.text((first + last) / 2, lane[actor], text, ha="center", va="center",
                    fontsize=8, linespacing=1.0)
    for number, *_rest, broken in rows:
        if broken:
            ax.axvline(number + 0.5, color="#d00000", lw=2)
            ax.text(number + 0.4, len(lane) - 0.5, "invariant broken ",
                    color="#d00000", fontsize=8, va="bottom", ha="right")
    ax.set_xlim(0.5, n + 0.5)
    ax.set_ylim(-0.5, len(lane) - 0.5)
    titles = dict(trace.actors)
    ax.set_yticks(sorted(lane.values()),
                  [k if k not in titles else f"{k}: {ACTOR_NAMES[k]}"
                   for k, _ in sorted(lane.items(), key=lambda kv: kv[1])])
    ax.set_xticks(range(1, n + 1), [str(i) if i == 1 or i % 5 == 0 else ""
                                    for i in range(1, n + 1)])
    ax.tick_params(length=2)
    ax.set_xlabel("step", labelpad=1)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    old, new = f"{R.OLD_PFN:#x}", f"{R.NEW_PFN:#x}"
    drawn = {_colour(r[col]) for r in rows for _, col in bands}
    handles = [Patch(facecolor=COLOURS[k], edgecolor="#888", label=lab)
               for k, lab in (("old", f"old pfn {old}"), ("new", f"new pfn {new}"),
                              ("frozen", "FROZEN_SPTE"), ("none", "nothing"))
               if COLOURS[k] in drawn]
    fig.legend(handles=handles, loc="lower left", ncol=len(handles), fontsize=8,
               frameon=False, bbox_to_anchor=(left / width - 0.01, 0.0),
               handlelength=1.5, columnspacing=1.2)
    return fig
