"""Views of chapter 6: the prefault console, race timelines, the selftest's map.

``prefault_console(...)`` is the pure function behind the widget: it never
raises and returns a :class:`PrefaultConsoleView` (the steps taken, SRCU
readers, the slot's flags and generation, the vCPU's root, what each thread
is doing or returned).  ``prefault_console_widget()`` only wires controls to
it.  ``race_timeline(traces)`` draws explorer traces of a prefault racing a
memslot update, one panel each; ``race_timeline_rows(trace)`` is its data.
``selftest_map_figure()`` draws the three selftest cases over slot 10;
``selftest_map_rows()`` is its data.
"""
import html as _html
import re
from dataclasses import dataclass

from .. import explorer as ex
from ..checks import parse_int_text
from ..cpu import run_alone
from ..errno import errno_name
from ..kvm_host import PREFAULT_POLICIES
from ..levels import KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PAGE_SIZE, level_name
from ..scenarios import prefault as P

__all__ = ["ZAP_CHOICES", "ACTIONS", "PrefaultConsoleView", "prefault_console",
           "prefault_console_widget", "race_timeline_rows", "race_timeline",
           "selftest_map_rows", "selftest_map_figure"]

U64_MAX = (1 << 64) - 1
ZAP_CHOICES = {"fast zap (default VM)": True, "slot zap only (TDX, quirk off)": False}
ACTIONS = ("", "A", "B", "finish")
#: The console's default range: the whole 2 MiB huge page of slot 10.
DEFAULT_OFFSET = "0"
DEFAULT_SIZE = "0x200000"


# --------------------------------------------------------------------------
# The console: a pure function, then the widget.
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefaultConsoleView:
    """What the console shows.

    ``schedule``: the steps that took effect (the next call's input).
    ``ok``: whether the requested action took effect.  ``rows``: (actor,
    what it did) per step.  ``status``: (name, value) pairs.
    """

    ok: bool
    message: str
    policy: str
    schedule: str
    rows: tuple
    status: tuple

    def field(self, name: str) -> str:
        """The value of one status line ('' if absent)."""
        return dict(self.status).get(name, "")

    def __repr__(self) -> str:
        lines = [f"{'ok' if self.ok else 'refused'}: {self.message}",
                 f"policy {self.policy}, schedule {self.schedule or '(none)'}"]
        lines += [f"  {k}: {v}" for k, v in self.status]
        return "\n".join(lines)

    def html(self) -> str:
        esc = _html.escape
        colour = "#060" if self.ok else "#b00"
        status = "".join(
            f"<tr><td style='padding:1px 8px'><b>{esc(k)}</b></td>"
            f"<td style='padding:1px 8px;font-family:monospace'>{esc(str(v))}</td></tr>"
            for k, v in self.status)
        td = "style='border:1px solid #bbb;padding:1px 6px;font-family:monospace'"
        steps = "".join(
            f"<tr><td {td}>{n}</td><td {td}>{esc(lab) if a == 'A' else ''}</td>"
            f"<td {td}>{esc(lab) if a == 'B' else ''}</td></tr>"
            for n, (a, lab) in enumerate(self.rows, start=1))
        return (f"<div class='kvmmu-prefault-console'>"
                f"<div style='color:{colour}'><b>{esc(self.message)}</b></div>"
                f"<table style='border-collapse:collapse'>{status}</table>"
                f"<table style='border-collapse:collapse;margin-top:4px'>"
                f"<tr><th {td}>#</th><th {td}>A: prefault</th><th {td}>B: delete slot 10</th>"
                f"</tr>{steps}</table></div>")

    def _repr_html_(self) -> str:
        return self.html()


def _error(message: str, policy) -> PrefaultConsoleView:
    return PrefaultConsoleView(False, message, str(policy)[:40], "", (), ())


def _scenario(policy: str, offset: int, size: int, fast_zap: bool):
    return P.prefault_race(policy, "delete", "one call", slot="selftest", gpa_offset=offset,
                           size=size, slot_zap_all=fast_zap)


def _valid_prefix(sc, schedule: str) -> str:
    # Validity is prefix-closed, so the longest valid prefix can be bisected.
    lo, hi = 0, len(schedule)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            ex.run_schedule(sc, schedule[:mid])
            lo = mid
        except ValueError:
            hi = mid - 1
    return schedule[:lo]


def _thread_status(trace, letter: str) -> str:
    if letter in trace.results:
        res = trace.results[letter]
        if isinstance(res, P.PrefaultResult):
            return f"returned {errno_name(res.ret)}; gpa={res.gpa:#x} size={res.size:#x}"
        return f"returned {errno_name(res) if isinstance(res, int) else res}"
    if letter in trace.blocked:
        return "blocked: " + trace.blocked[letter]
    return "runnable" if letter in trace.runnable else "stopped"


def _status(trace, base_gpa: int, offset: int, size: int) -> tuple:
    state = trace.steps[-1].state if trace.steps else trace.initial
    out = [("range", f"gpa {(base_gpa + offset) & U64_MAX:#x} (slot 10 + {offset:#x}), "
                     f"size {size:#x}"),
           ("SRCU readers", state.get("kvm->srcu", "")),
           ("slots_lock", state.get("kvm->slots_lock", "")),
           ("memslots", state.get("memslots", "")),
           ("vCPU", state.get("vcpus", "")),
           ("A (prefault)", _thread_status(trace, "A")),
           ("B (delete)", _thread_status(trace, "B"))]
    if trace.deadlock:
        out.append(("verdict", "DEADLOCK: nothing can run"))
    elif trace.violation:
        out.append(("verdict", trace.violation))
    elif not trace.unfinished:
        out.append(("verdict", "both finished; every check holds"))
    return tuple(out)


def prefault_console(offset_text: str = DEFAULT_OFFSET, size_text: str = DEFAULT_SIZE,
                     policy: str = "6.17", schedule: str = "", action: str = "",
                     zap: str = "fast zap (default VM)") -> PrefaultConsoleView:
    """Step a one-call prefault (A) of slot 10 and a deletion of slot 10 (B).

    ``offset_text``/``size_text``: the range, from slot 10's start (decimal or
    0x hex; the *ioctl* judges alignment and may answer -EINVAL).
    ``schedule``: the steps so far; ``action``: "" (show), "A" or "B" (one
    step of that thread) or "finish" (run the rest, A first whenever both
    can).  Pure and never raises: bad text, an unknown policy or a step of a
    blocked or finished thread comes back as a message.
    """
    try:
        if not isinstance(policy, str) or policy not in PREFAULT_POLICIES:
            return _error(f"policy must be one of {', '.join(PREFAULT_POLICIES)}; "
                          f"got {policy!r}", policy)
        if zap not in ZAP_CHOICES:
            return _error(f"zap must be one of {', '.join(ZAP_CHOICES)}; got {zap!r}", policy)
        base = P.selftest_gpa()
        try:
            offset = parse_int_text("offset", offset_text, 0, U64_MAX - base)
            size = parse_int_text("size", size_text, 0, U64_MAX)
        except (TypeError, ValueError) as exc:
            return _error(str(exc), policy)
        if not isinstance(schedule, str) or not isinstance(action, str):
            return _error("schedule and action must be text", policy)
        if action not in ACTIONS:
            return _error(f"action must be one of {ACTIONS}; got {action!r}", policy)
        sc = _scenario(policy, offset, size, ZAP_CHOICES[zap])
        clean = _valid_prefix(sc, "".join(ch for ch in schedule if ch in "AB"))
        ok, message = True, "ready: step A (the prefault) or B (the deletion)"
        if action in ("A", "B"):
            try:
                trace = ex.run_schedule(sc, clean + action)
                if trace.unused:        # the run had already ended (a deadlock)
                    ok = False
                    message = f"{action} cannot step: the run has ended ({trace.violation})"
                else:
                    clean += action
                    message = f"{action}: {trace.steps[-1].label}"
            except ValueError as exc:
                ok = False
                message = str(exc).split(": ", 1)[-1]
        elif action == "finish":
            clean = ex.run_schedule(sc, clean, complete=True).schedule
            message = "ran every thread as far as it could go"
        trace = ex.run_schedule(sc, clean)
        if action == "" and clean != schedule:
            ok, message = False, f"kept the valid part of the schedule: {clean!r}"
        rows = tuple((s.actor, s.label) for s in trace.steps)
        return PrefaultConsoleView(ok, message, policy, clean, rows,
                                   _status(trace, base, offset, size))
    except Exception as exc:  # never raise: the console reports
        return _error(f"internal error: {type(exc).__name__}: {exc}", policy)


def prefault_console_widget(policy: str = "6.17", offset_text: str = DEFAULT_OFFSET,
                            size_text: str = DEFAULT_SIZE):
    """The prefault console: range, policy and zap controls, step buttons, the view.

    A thin shell over :func:`prefault_console`; the HTML is exactly its view.
    """
    import ipywidgets as W

    off = W.Text(value=offset_text, description="offset", layout=W.Layout(width="220px"))
    size = W.Text(value=size_text, description="size", layout=W.Layout(width="220px"))
    pol = W.Dropdown(options=list(PREFAULT_POLICIES), value=policy, description="policy",
                     layout=W.Layout(width="320px"))
    zap = W.Dropdown(options=list(ZAP_CHOICES), value="fast zap (default VM)",
                     description="zap", layout=W.Layout(width="320px"))
    holder = {"schedule": ""}
    out = W.HTML()
    # CSS classes let the browser tests find each control.
    for control, name in ((off, "offset"), (size, "size"), (pol, "policy"), (zap, "zap"),
                          (out, "out")):
        control.add_class(f"kvmmu-prefault-{name}")

    def show(action: str):
        view = prefault_console(off.value, size.value, pol.value, holder["schedule"], action,
                                zap.value)
        holder["schedule"] = view.schedule
        out.value = view.html()

    def on(action):
        return lambda _b: show(action)

    buttons = []
    for text, action in (("step A: prefault", "A"), ("step B: delete", "B"),
                         ("finish", "finish")):
        b = W.Button(description=text, layout=W.Layout(width="150px"))
        b.add_class(f"kvmmu-prefault-{action.lower()}")
        b.on_click(on(action))
        buttons.append(b)
    reset = W.Button(description="reset", button_style="warning", layout=W.Layout(width="150px"))
    reset.add_class("kvmmu-prefault-reset")

    def do_reset(_b=None):
        holder["schedule"] = ""
        show("")
    reset.on_click(do_reset)
    for control in (off, size, pol, zap):
        control.observe(lambda _change: do_reset(), names="value")
    show("")
    box = W.VBox([W.HBox([off, size]), W.HBox([pol, zap]), W.HBox(buttons + [reset]), out])
    box.add_class("kvmmu-prefault-widget")
    return box


# --------------------------------------------------------------------------
# Race timelines
# --------------------------------------------------------------------------
_READER = re.compile(r"([A-Z])(?:#\d+)?(?: \(([A-Z,]+) waits\))?")


def _srcu_parse(text: str) -> tuple[set, set]:
    """From an SRCU snapshot text: (readers, CPUs waiting in synchronize)."""
    if not text.startswith("readers "):
        return set(), set()
    readers, waiting = set(), set()
    for m in _READER.finditer(text[len("readers "):]):
        readers.add(m.group(1))
        if m.group(2):
            waiting.update(m.group(2).split(","))
    return readers, waiting


def _slot_phase(memslots: str) -> str:
    # From the memslots' text: "as 0: gen 2, slots 1@0x100+2 INVALID" / "slots none".
    if " INVALID" in memslots:
        return "INVALID"
    if "slots none" in memslots:
        return "gone"
    return "valid"


def race_timeline_rows(trace) -> list[tuple]:
    """One row per step: (n, actor, label, A in SRCU, B waiting, slot phase)."""
    if not isinstance(trace, ex.Trace):
        raise TypeError(f"trace must be a kvmmu.explorer.Trace, got {type(trace).__name__}")
    rows = []
    for n, s in enumerate(trace.steps, start=1):
        readers, waiting = _srcu_parse(s.state.get("kvm->srcu", ""))
        rows.append((n, s.actor, s.label, "A" in readers, "B" in waiting,
                     _slot_phase(s.state.get("memslots", ""))))
    return rows


_PHASE_COLOUR = {"valid": "#a8dadc", "INVALID": "#f4a261", "gone": "#dddddd"}


def race_timeline(traces, titles=None):
    """Draw explorer traces of a prefault (A) racing a memslot update (B); return the Figure.

    One panel per trace, on a common step axis.  Lane A shades its SRCU read
    section, lane B the time it waits in synchronize_srcu, the bottom lane
    the slot's state.  Each step is a numbered box in its actor's lane; after
    a deadlock, the two lanes are hatched.  Drawn for the book's column.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    traces = list(traces)
    if not traces or not all(isinstance(t, ex.Trace) for t in traces):
        raise TypeError("traces must be one or more kvmmu.explorer.Trace objects")
    titles = list(titles) if titles is not None else [t.scenario for t in traces]
    if len(titles) != len(traces) or not all(isinstance(t, str) for t in titles):
        raise ValueError("titles must be one string per trace")
    from .style import column_figure

    fig = column_figure(1.55 * len(traces) + 0.55)
    axes = fig.subplots(len(traces), 1, squeeze=False)
    lanes = {"A": 2, "B": 1, "slot": 0}
    width = max(len(t.steps) for t in traces) + 4
    for ax, trace, title in zip(axes[:, 0], traces, titles):
        rows = race_timeline_rows(trace)
        for n, actor, _label, a_in, b_wait, phase in rows:
            x = n - 1
            ax.add_patch(plt.Rectangle((x, lanes["slot"] - 0.3), 1, 0.6,
                                       color=_PHASE_COLOUR[phase], lw=0))
            if a_in:
                ax.add_patch(plt.Rectangle((x, lanes["A"] - 0.42), 1, 0.84,
                                           color="#e9f5db", lw=0))
            if b_wait:
                ax.add_patch(plt.Rectangle((x, lanes["B"] - 0.42), 1, 0.84,
                                           color="#fde2e4", lw=0))
            y = lanes[actor]
            ax.add_patch(plt.Rectangle((x + 0.08, y - 0.25), 0.84, 0.5, facecolor="white",
                                       edgecolor="#1d3557", lw=1))
            ax.text(x + 0.5, y, str(n), ha="center", va="center", fontsize=8)
        end = len(rows)
        if trace.deadlock:
            for lane in ("A", "B"):
                ax.add_patch(plt.Rectangle((end, lanes[lane] - 0.3), 2.5, 0.6, facecolor="none",
                                           edgecolor="#b00", hatch="///", lw=1))
            ax.text(end + 2.8, 1.5, "deadlock: both\nwait forever", color="#b00",
                    fontsize=9, va="center", fontweight="bold")
        elif not trace.unfinished:
            ax.text(end + 0.3, 1.5, "both\nfinished", color="#060", fontsize=9, va="center")
        ax.set_xlim(0, width + 2)
        ax.set_ylim(-0.6, 2.75)
        ax.set_yticks([0, 1, 2], ["slot", "B: delete", "A: prefault"])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("step")
    handles = [Patch(color="#e9f5db", label="A inside kvm->srcu"),
               Patch(color="#fde2e4", label="B waiting in synchronize_srcu")]
    handles += [Patch(color=c, label=f"slot {p}") for p, c in _PHASE_COLOUR.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


# --------------------------------------------------------------------------
# The selftest's three cases over slot 10
# --------------------------------------------------------------------------
def selftest_map_rows(policy: str = "6.18") -> dict:
    """The three selftest cases run alone, in order, on one VM: what each asked and left.

    Returns {"cases": [(n, first page, pages asked, pages left, ret, calls)],
    "mappings": [(first page, pages, level name)]} with pages counted from
    slot 10's first page.
    """
    kvm, vcpu, gpa = P.selftest_vm(policy)
    base = gpa >> PAGE_SHIFT
    cases = []
    for n, (off, size, left) in enumerate(P.SELFTEST_CASES, start=1):
        out = run_alone(kvm, P.pre_fault_memory(vcpu, gpa, off, size, left))
        cases.append((n, off // PAGE_SIZE, size // PAGE_SIZE, out.size_left // PAGE_SIZE,
                      errno_name(out.ret), len(out.calls)))
    maps = [(gfn - base, KVM_PAGES_PER_HPAGE(level), level_name(level))
            for gfn, level, _pfn in kvm.ept.live_leaves(vcpu.root)]
    return {"cases": cases, "mappings": maps}


def selftest_map_figure(policy: str = "6.18"):
    """Draw slot 10, the leaves the three cases leave, and each case's range; return the Figure.

    Left: the whole slot.  Right: pages 505 to 515, where cases 2 and 3 and
    the slot's end are.
    """
    import matplotlib.pyplot as plt

    data = selftest_map_rows(policy)
    fig, (whole, zoom) = plt.subplots(1, 2, figsize=(12, 3.4),
                                      gridspec_kw={"width_ratios": [1.3, 1]})
    for ax, lo, hi in ((whole, -5, P.TEST_NPAGES + 8), (zoom, 505, 516)):
        ax.broken_barh([(0, P.TEST_NPAGES)], (4.6, 0.6), color="#a8dadc")
        for first, pages, name in data["mappings"]:
            ax.broken_barh([(first, pages)], (3.7, 0.6), facecolor="#457b9d", edgecolor="white")
        for n, first, asked, left, ret, calls in data["cases"]:
            y = 3.0 - n
            done = asked - left
            if done:
                ax.broken_barh([(first, done)], (y, 0.6), color="#2a9d8f")
            if left:
                ax.broken_barh([(first + done, left)], (y, 0.6), facecolor="white",
                               edgecolor="#e76f51", hatch="///")
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.3, 5.9)
        ax.axvline(P.TEST_NPAGES, color="#999", lw=0.8, ls=":")
        ax.set_xlabel("page within slot 10 (4 KiB pages)")
    whole.set_yticks([4.9, 4.0, 2.3, 1.3, 0.3],
                     ["slot 10", "leaves", "case 1", "case 2", "case 3"])
    zoom.set_yticks([])
    whole.text(P.TEST_NPAGES / 2, 4.9, "513 pages", ha="center", va="center", fontsize=9)
    whole.text(256, 4.0, "one 2M leaf", ha="center", va="center", fontsize=8, color="white")
    zoom.text(508.5, 4.0, "2M leaf (pages 0-511)", ha="center", va="center", fontsize=8,
              color="white")
    zoom.text(512.5, 4.42, "4K leaf", ha="center", va="bottom", fontsize=8)
    zoom.text(P.TEST_NPAGES + 0.1, 5.35, "end of slot 10", fontsize=8, color="#555")
    for n, first, asked, left, ret, calls in data["cases"]:
        zoom.text(505.2, 3.68 - n, f"case {n}: {asked} asked, {left} left, ret {ret}, "
                  f"{calls} call(s)", fontsize=8)
    whole.set_title("pre_fault_memory_test's three cases, alone", fontsize=10)
    zoom.set_title("zoom: the end of the slot (hatched: what is left)", fontsize=10)
    fig.tight_layout()
    return fig
