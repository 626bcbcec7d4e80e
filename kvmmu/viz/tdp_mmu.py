"""Views of chapter 3: the race player, and a race figure of the SPTE and the TLBs.

``race_view(...)`` is the pure function behind the widget: it never raises
and returns a :class:`RaceView` (the steps of a schedule, the SPTE and every
vCPU's TLB at a chosen moment, whether the invariant holds, who may step
next).  ``race_player()`` only wires controls to it.  ``race_rows(trace)``
is the data of ``race_figure(trace)``: one lane per actor, then a band for
the SPTE and one per vCPU TLB, coloured by the pfn they map.
"""
import html as _html
import re
from dataclasses import dataclass

from .. import explorer as ex
from ..scenarios import tdp_mmu as R

__all__ = ["MAX_SCHEDULE", "SPTE_KEY", "SHOWN", "RaceView", "race_view", "race_player",
           "race_rows", "race_rows_text", "race_figure"]

#: The schedule letters the player accepts, longest schedule it runs.
MAX_SCHEDULE = 200
SPTE_KEY = R.SPTE_KEY
#: The parts of the VM's state the player shows: the SPTE, each TLB, mmu_lock.
SHOWN = (SPTE_KEY, "vCPU 0 TLB", "vCPU 1 TLB", "mmu_lock")


# --------------------------------------------------------------------------
# The player: a pure function, then the widget.
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class RaceView:
    """What the race player shows.

    ``schedule``: the steps that took effect (the next call's input).
    ``ok``: whether every input was taken as given.  ``steps``: (number,
    actor, what it did) for every step of the schedule.  ``position``: the
    moment shown (0 = before any step).  ``state``: (name, value) pairs at
    that moment (the names of :data:`SHOWN`).  ``holds``: whether the invariant holds there.
    ``runnable``: the letters that may step after the whole schedule.
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

    def value(self, name: str) -> str:
        """One state value at the moment shown ('' if absent)."""
        return dict(self.state).get(name, "")

    def __repr__(self) -> str:
        lines = [f"{'ok' if self.ok else 'refused'}: {self.message}",
                 f"fix {'on' if self.fix else 'off'}, {self.actors} actors, schedule "
                 f"{self.schedule or '(none)'}, showing step {self.position} of {len(self.steps)}"]
        lines += [f"  {k}: {v}" for k, v in self.state]
        lines.append(f"  invariant ({R.NO_STALE_TRANSLATION}): "
                     + ("holds" if self.holds else f"BROKEN: {self.violation}"))
        lines.append(f"  next: {', '.join(self.runnable) or 'nobody'}; {self.outcome}")
        return "\n".join(lines)

    def html(self) -> str:
        esc = _html.escape
        td = "style='border:1px solid #bbb;padding:1px 6px;font-family:monospace'"
        colour = "#060" if self.ok else "#b00"
        letters = "ABC"[:self.actors]
        head = "".join(f"<th {td}>{letter}</th>" for letter in letters)
        body = []
        for n, actor, label in self.steps:
            style = " style='background:#ffe8a3'" if n == self.position else (
                " style='color:#999'" if n > self.position else "")
            cells = "".join(f"<td {td}>{esc(label) if actor == letter else ''}</td>"
                            for letter in letters)
            body.append(f"<tr{style}><td {td}>{n}</td>{cells}</tr>")
        state = "".join(f"<tr><td style='padding:1px 8px'><b>{esc(k)}</b></td>"
                        f"<td style='padding:1px 8px;font-family:monospace'>{esc(v)}</td></tr>"
                        for k, v in self.state)
        verdict = ("<span style='color:#060'>holds</span>" if self.holds else
                   f"<span style='color:#b00'><b>BROKEN</b>: {esc(self.violation)}</span>")
        return (f"<div class='kvmmu-race-player'>"
                f"<div style='color:{colour}'><b>{esc(self.message)}</b></div>"
                f"<div>fix {'on (freeze, flush, non-present)' if self.fix else 'off (non-present, flush)'}"
                f"; step {self.position} of {len(self.steps)}</div>"
                f"<table style='border-collapse:collapse'>{state}"
                f"<tr><td style='padding:1px 8px'><b>invariant</b></td>"
                f"<td style='padding:1px 8px'>{verdict}</td></tr></table>"
                f"<div>next: {esc(', '.join(self.runnable) or 'nobody')} &mdash; {esc(self.outcome)}</div>"
                f"<table style='border-collapse:collapse;margin-top:4px'>"
                f"<tr><th {td}>#</th>{head}</tr>{''.join(body)}</table></div>")

    def _repr_html_(self) -> str:
        return self.html()


def _refused(message: str, fix=True, actors=2) -> RaceView:
    return RaceView(False, message, fix if isinstance(fix, bool) else True,
                    actors if actors in (2, 3) else 2, "", 0, (), (), True, "", "", "")


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


def race_view(fix=True, schedule="", position=None, actors=2) -> RaceView:
    """The race player's view of the zap-vs-fault race under ``schedule``; never raises.

    ``fix``: True runs the freezing zap (6.12 and earlier), False the unsafe
    one.  ``schedule``: actor letters, one per step (spaces ignored, case
    ignored); letters past an illegal one are dropped with a message.
    ``position``: the moment to show, 0 (the start) to the number of steps
    (None: the last).  ``actors``: 2 (zap, vCPU 1) or 3 (and vCPU 0).
    """
    try:
        if not isinstance(fix, bool):
            return _refused(f"fix must be True or False, got {type(fix).__name__}", True, actors)
        if isinstance(actors, bool) or actors not in (2, 3):
            return _refused(f"actors must be 2 or 3, got {actors!r}", fix, 2)
        if not isinstance(schedule, str):
            return _refused(f"schedule must be text (actor letters), got {type(schedule).__name__}",
                            fix, actors)
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
            messages.append(f"the run ended at step {len(trace.steps)} "
                            f"({trace.violation}); the rest was not run")
            clean = clean[:len(trace.steps)]
        snaps = trace.snapshots()
        last = len(snaps) - 1
        if position is None:
            position = last
        elif isinstance(position, bool) or not isinstance(position, int):
            messages.append(f"position must be a whole number, got {type(position).__name__}; "
                            "showing the last step")
            position = last
        elif not 0 <= position <= last:
            messages.append(f"position must be in [0, {last}], got {position}; "
                            "showing the nearest")
            position = min(max(position, 0), last)
        snap = snaps[position]
        broken_at = None if trace.violation_step is None else trace.violation_step + 1
        holds = broken_at is None or position < broken_at
        steps = tuple((n, s.actor, s.label) for n, s in enumerate(trace.steps, start=1))
        ok = not messages
        message = "; ".join(messages) if messages else (
            "at the start: click an actor to step it" if not clean else
            f"{len(clean)} step{'s' if len(clean) != 1 else ''} run")
        return RaceView(ok, message, fix, actors, clean, position, steps,
                        tuple((k, snap["state"][k]) for k in SHOWN), holds,
                        "" if holds else trace.violation, "".join(trace.runnable),
                        trace.outcome)
    except Exception as exc:  # never raise: the player reports
        return _refused(f"internal error: {type(exc).__name__}: {exc}",
                        fix if isinstance(fix, bool) else True, actors)


def race_player(fix: bool = False, actors: int = 2, schedule: str = ""):
    """The race player: a fix toggle, one step button per actor, undo/reset, a slider.

    A thin shell over :func:`race_view`; the HTML is exactly its view.
    """
    import ipywidgets as W

    first = race_view(fix, schedule, None, actors)
    sc = R.zap_vs_fault(first.fix, first.actors)        # for the actors' letters and titles
    holder = {"schedule": first.schedule}
    toggle = W.Checkbox(value=first.fix, description="the fix: freeze before the flush")
    slider = W.IntSlider(value=first.position, min=0, max=max(len(first.steps), 1),
                         description="moment", continuous_update=True,
                         layout=W.Layout(width="420px"))
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

    names = {"A": "the zap", "B": "vCPU 1", "C": "vCPU 0"}
    buttons = []
    for a in sc.actors:
        b = W.Button(description=f"step {a.letter} ({names[a.letter]})", tooltip=a.title,
                     layout=W.Layout(width="160px"))
        b.add_class(f"kvmmu-race-step-{a.letter.lower()}")
        b.on_click(stepper(a.letter))
        buttons.append(b)
    undo = W.Button(description="undo", layout=W.Layout(width="80px"))
    reset = W.Button(description="reset", button_style="warning", layout=W.Layout(width="80px"))

    def do_undo(_b):
        holder["schedule"] = holder["schedule"][:-1]
        show()

    def do_reset(_b=None):
        holder["schedule"] = ""
        show()

    # CSS classes let the browser tests find each control.
    for control, name in ((toggle, "fix"), (slider, "moment"), (undo, "undo"), (reset, "reset"),
                          (out, "out")):
        control.add_class(f"kvmmu-race-{name}")
    undo.on_click(do_undo)
    reset.on_click(do_reset)
    toggle.observe(lambda _c: show(), names="value")
    slider.observe(lambda c: None if busy["on"] else show(c["new"]), names="value")
    box = W.VBox([toggle, W.HBox(buttons), W.HBox([undo, reset, slider]), out])
    box.add_class("kvmmu-race-widget")
    return box


# --------------------------------------------------------------------------
# The race figure
# --------------------------------------------------------------------------
def _short(label: str) -> str:
    """A box caption: the operation, without the details."""
    if label.startswith("vCPU"):
        return "access" if "EPT violation" not in label else "EPT viol."
    word = label.split()[0]
    if word == "cmpxchg":
        return "cmpxchg" if ": ok" in label else "cmpxchg✗"
    return {"read_lock(mmu_lock)": "lock", "read_unlock(mmu_lock)": "unlock",
            "allocate": "alloc", "memslot": "slot", "kvm_mmu_faultin_pfn": "faultin",
            "is_page_fault_stale?": "stale?"}.get(word, word)


def _check_trace(trace, spte_key) -> None:
    if not isinstance(trace, ex.Trace):
        raise TypeError(f"trace must be a kvmmu.explorer Trace, got {type(trace).__name__}")
    if not isinstance(spte_key, str):
        raise TypeError(f"spte_key must be a shared-state name, got {type(spte_key).__name__}")


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
        rows.append((snap["index"], snap["actor"], _short(snap["label"]),
                     state.get(spte_key, ""), state.get("vCPU 0 TLB", ""),
                     state.get("vCPU 1 TLB", ""), snap["violation"] is not None))
    return rows


def race_rows_text(trace, spte_key: str = SPTE_KEY) -> str:
    """:func:`race_rows` as an aligned text table, for a checked cell beside the figure."""
    head = ("#", "actor", "step", "SPTE", "vCPU 0 TLB", "vCPU 1 TLB", "invariant")
    body = [(str(n), actor, caption, spte, tlb0, tlb1, "BROKEN" if broken else "holds")
            for n, actor, caption, spte, tlb0, tlb1, broken in race_rows(trace, spte_key)]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in [head, *body])


_OLD, _NEW = re.compile(rf"{R.OLD_PFN:#x}\b"), re.compile(rf"{R.NEW_PFN:#x}\b")


def _colour(text: str) -> str:
    if _OLD.search(text):
        return "#8ecae6"      # the old pfn
    if _NEW.search(text):
        return "#ffb703"      # the new pfn
    if "FROZEN" in text:
        return "#adb5bd"
    return "#ffffff"


def race_figure(trace, title: str | None = None, spte_key: str = SPTE_KEY):
    """Draw a run of the zap-vs-fault race: actor lanes, the SPTE, the TLBs; return the Figure.

    Each step is a captioned box in its actor's lane.  Below, the SPTE and
    each vCPU's TLB entry for the gfn are coloured by the pfn they map
    (blue: the old pfn, amber: the new one, grey: FROZEN_SPTE, white:
    nothing).  A red line marks the step that broke the invariant.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    rows = race_rows(trace, spte_key)
    letters = [a for a, _ in trace.actors]
    titles = dict(trace.actors)
    bands = ["vCPU 1 TLB", "vCPU 0 TLB", "SPTE"]
    lanes = {name: y for y, name in enumerate(bands)}
    for n, letter in enumerate(reversed(letters)):
        lanes[letter] = len(bands) + n
    fig, ax = plt.subplots(figsize=(min(2 + 0.55 * len(rows), 16), 0.55 * len(lanes) + 1.6))
    for n, actor, caption, spte, tlb0, tlb1, broken in rows:
        x = n - 0.5                      # step n is the column centred on tick n
        for name, text in (("SPTE", spte), ("vCPU 0 TLB", tlb0), ("vCPU 1 TLB", tlb1)):
            ax.add_patch(plt.Rectangle((x, lanes[name] - 0.35), 1, 0.7,
                                       facecolor=_colour(text), edgecolor="#ddd", lw=0.5))
        y = lanes[actor]
        ax.add_patch(plt.Rectangle((x + 0.05, y - 0.32), 0.9, 0.64, facecolor="white",
                                   edgecolor="#1d3557", lw=1))
        ax.text(x + 0.5, y, caption, ha="center", va="center", fontsize=6, rotation=90)
        if broken:
            ax.axvline(x + 1, color="#d00000", lw=2)
            ax.text(x + 1.1, len(lanes) - 0.5, "invariant\nbroken", color="#d00000",
                    fontsize=8, va="top")
    ax.set_xlim(0.5, len(rows) + 2.5)
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ticks = sorted(lanes.items(), key=lambda kv: kv[1])
    ax.set_yticks([y for _, y in ticks],
                  [f"{k}: {titles[k]}" if k in titles else k for k, _ in ticks], fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_title(title or trace.scenario, fontsize=10)
    old, new = f"{R.OLD_PFN:#x}", f"{R.NEW_PFN:#x}"
    handles = [Patch(facecolor=_colour(t), edgecolor="#999", label=lab) for t, lab in
               ((old, f"old pfn {old}"), (new, f"new pfn {new}"),
                ("FROZEN", "FROZEN_SPTE"), ("", "non-present / empty"))]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return fig
