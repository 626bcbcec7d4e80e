"""Views of guest_memfd's final-put callback: the state machine, a refcount timeline, the folio console.

``folio_console(history, action)`` is the pure function behind the widget:
it never raises, and returns a :class:`ConsoleView` whose ``state`` is the
new history (the actions that took effect) and whose ``message`` says what
the action returned, or why it was refused.  ``folio_console_widget()`` only
wires buttons to it.  ``state_machine_figure()`` draws
:data:`kvmmu.guest_memfd_rfc.TRANSITIONS` (the table the tests check every
state change against); ``state_machine_edges()`` is the data it draws.
``refcount_timeline(trace)`` plots the count and the state of offset 0 along
an explorer trace of chapter 4's VM; ``refcount_timeline_rows(trace)`` is
its data, read from the file's column of the trace (:func:`file_column`).
"""
import html as _html
import re
from dataclasses import dataclass

from .. import guest_memfd_rfc as R
from ..checks import KernelWarn, check_bool, check_int
from ..cpu import ModelHang
from ..explorer import Trace
from ..folio import PGTY_guestmem
from ..scenarios import guest_memfd as S

__all__ = ["state_machine_edges", "state_machine_figure", "file_column", "refcount_timeline_rows",
           "refcount_timeline", "ConsoleView", "folio_console", "folio_console_widget"]

#: Node positions of the state-machine figure.
_POS = {"ALL": (0.0, 1.0), "NONE": (3.0, 1.0), "GUEST": (1.5, -0.9)}
_WHO = {"ALL": "host + guest", "NONE": "nobody (transient)", "GUEST": "guest only"}
_STYLE = {"rfc": ("-", "#1d3557"), "unguarded": ("--", "#999999"), "fix": (":", "#2a9d8f")}


# --------------------------------------------------------------------------
# The state machine.
# --------------------------------------------------------------------------
def state_machine_edges() -> list[tuple]:
    """Number the rows of TRANSITIONS: ``(n, from, to, function, condition, kind)``."""
    return [(n, *row) for n, row in enumerate(R.TRANSITIONS, start=1)]


def state_machine_figure(show_unguarded: bool = True):
    """Draw the three mappability states and the numbered transitions; return the Figure.

    Solid arrows: the RFC's protocol.  Dashed: changes the code allows
    because it does not check the current state.  Dotted: the model's
    punch-hole fix.  The legend under the drawing gives each number's
    function and condition.
    """
    check_bool("show_unguarded", show_unguarded)
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    edges = [e for e in state_machine_edges() if show_unguarded or e[5] == "rfc"]
    groups: dict = {}
    for n, src, dst, fn, cond, kind in edges:
        groups.setdefault((src, dst, kind), []).append(n)
    fig, (ax, legend) = plt.subplots(2, 1, figsize=(10, 11),
                                     gridspec_kw={"height_ratios": [1.25, 1]})
    boxes = {}
    for name, (x, y) in _POS.items():
        value = R.STATE_BY_NAME[name]
        boxes[name] = ax.add_patch(FancyBboxPatch(
            (x - 0.45, y - 0.2), 0.9, 0.4, boxstyle="round,pad=0.02", facecolor="#f1faee",
            edgecolor="#1d3557", linewidth=1.6, zorder=3))
        ax.text(x, y + 0.06, f"{name} ({value:#04b})", ha="center", va="center",
                fontsize=12, fontweight="bold", zorder=4)
        ax.text(x, y - 0.1, f"maps: {_WHO[name]}", ha="center", va="center", fontsize=9, zorder=4)
    # Several groups between the same two states: spread them with different curvature.
    pair_count: dict = {}
    for (src, dst, kind), numbers in sorted(groups.items(), key=lambda kv: kv[1][0]):
        pair = (src, dst)
        k = pair_count.get(pair, 0)
        pair_count[pair] = k + 1
        rad = 0.18 + 0.22 * k
        style, colour = _STYLE[kind]
        (x0, y0), (x1, y1) = _POS[src], _POS[dst]
        arrow = FancyArrowPatch((x0, y0), (x1, y1), connectionstyle=f"arc3,rad={rad}",
                                arrowstyle="-|>", mutation_scale=16, linestyle=style,
                                color=colour, linewidth=1.5, patchA=boxes[src],
                                patchB=boxes[dst], shrinkA=3, shrinkB=3, zorder=4)
        ax.add_patch(arrow)
        # Label at the arc's midpoint: arc3 is a quadratic Bezier whose control
        # point sits ``rad`` times the chord length off the chord's middle.
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        cx, cy = mx + rad * (y1 - y0), my - rad * (x1 - x0)
        lx, ly = (mx + cx) / 2, (my + cy) / 2
        ax.text(lx, ly, ",".join(str(n) for n in numbers), ha="center", va="center",
                fontsize=10, color=colour, zorder=6,
                bbox=dict(boxstyle="circle,pad=0.2", facecolor="white", edgecolor=colour))
    ax.set_xlim(-0.6, 3.6)
    ax.set_ylim(-1.3, 1.75)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("guest_memfd mappability states (RFC v5, patches 05-06/15)", fontsize=12)
    lines = []
    for n, src, dst, fn, cond, kind in edges:
        tag = {"rfc": "", "unguarded": " [unguarded]", "fix": " [model's fix]"}[kind]
        lines.append(f"{n:>2}. {src} -> {dst}: {fn}(){tag}\n      {cond}")
    legend.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9.5)
    legend.axis("off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# A trace's refcount and state over time.
# --------------------------------------------------------------------------
_FOLIO = re.compile(r"folio (\d+)@\d+ (ref=(\d+)[^;|]*)")


def file_column(text: str) -> tuple:
    """Read the file's column of a trace: ``(states, {folio id: its short state})``.

    The column is what the file shows (``ALL | folio 0@0 ref=2 map=0 [...]``):
    the offsets' states, then each folio.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be the file's column of a trace, got {type(text).__name__}")
    head, _, rest = text.partition(" | ")
    states = tuple(head.split())
    if not states or any(s not in R.STATE_BY_NAME for s in states):
        raise ValueError(f"text must start with the offsets' states (ALL, GUEST, NONE), "
                         f"got {text[:40]!r}")
    folios = {int(m.group(1)): m.group(2).strip() for m in _FOLIO.finditer(rest)}
    return states, folios


def _check_trace(trace) -> Trace:
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be a kvmmu.explorer.Trace, got {type(trace).__name__}")
    return trace


def refcount_timeline_rows(trace, folio: int = 0) -> list[tuple]:
    """Per moment of ``trace`` (initial state first): ``(index, actor, label, refcount, state, guestmem)``.

    ``state`` is offset 0's; ``refcount`` is None once the folio left the trace's view.
    """
    _check_trace(trace)
    check_int("folio", folio, 0)
    rows = []
    for snap in trace.snapshots():
        if S.FILE not in snap["state"]:
            raise ValueError(f"trace must be one of chapter 4's (a {S.FILE} column), "
                             f"got {trace.scenario!r}")
        states, folios = file_column(snap["state"][S.FILE])
        text = folios.get(folio, "")
        m = re.match(r"ref=(\d+)", text)
        rows.append((snap["index"], snap["actor"] or "-", snap["label"],
                     int(m.group(1)) if m else None, states[0] if states else "?",
                     "guestmem" in text))
    return rows


def refcount_timeline(trace, folio: int = 0):
    """Plot folio ``folio``'s count (steps) and offset 0's state (bands) along ``trace``."""
    rows = refcount_timeline_rows(trace, folio)
    import matplotlib.pyplot as plt

    colours = {"ALL": "#a8dadc", "NONE": "#f4a261", "GUEST": "#e63946"}
    fig, ax = plt.subplots(figsize=(11, 3.6))
    xs = [r[0] for r in rows]
    for (i, _a, _l, _c, state, _g), nxt in zip(rows, xs[1:] + [xs[-1] + 1]):
        ax.axvspan(i - 0.5, nxt - 0.5, color=colours.get(state, "#eeeeee"), alpha=0.35, lw=0)
    ys = [r[3] if r[3] is not None else 0 for r in rows]
    ax.step(xs, ys, where="mid", color="#1d3557", linewidth=2)
    for i, actor, _label, count, _state, pending in rows:
        ax.text(i, (count or 0) + 0.12, actor, ha="center", fontsize=8)
        if pending:
            ax.plot([i], [count or 0], marker="o", color="#e76f51")
    ax.set_xlabel("step (letter: the actor that ran it)")
    ax.set_ylabel(f"refcount of folio {folio}")
    ax.set_ylim(-0.3, max(ys) + 1.8)
    ax.set_xlim(-0.5, xs[-1] + 0.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.35) for c in colours.values()]
    handles.append(plt.Line2D([], [], marker="o", color="#e76f51", linestyle=""))
    ax.legend(handles, [f"state {s}" for s in colours] + ["guestmem type set"],
              loc="upper right", fontsize=8, ncol=4)
    ax.set_title(trace.scenario, fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# The folio console: a pure function, then the widget.
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class ConsoleView:
    """What the console shows after one action.

    ``state``: the actions that took effect so far (the next call's input).
    ``ok``: whether this action took effect.  ``fields``: the folio's
    state, refcount, mapcount, type, ledger, and the checks.
    """

    state: tuple
    action: str
    ok: bool
    message: str
    fields: tuple

    def __repr__(self) -> str:
        head = f"{self.action or '(start)'}: {self.message}"
        body = "\n".join(f"  {k}: {v}" for k, v in self.fields)
        return f"{head}\n{body}"

    def html(self) -> str:
        esc = _html.escape
        colour = "#060" if self.ok else "#b00"
        rows = "".join(f"<tr><td style='padding:1px 8px'><b>{esc(k)}</b></td>"
                       f"<td style='padding:1px 8px;font-family:monospace'>{esc(str(v))}</td></tr>"
                       for k, v in self.fields)
        return (f"<div class='kvmmu-folio-console'><div style='color:{colour}'>"
                f"<b>{esc(self.action or 'start')}</b>: {esc(self.message)}</div>"
                f"<table style='border-collapse:collapse'>{rows}</table></div>")

    def _repr_html_(self) -> str:
        return self.html()


def _fields(kvm) -> tuple:
    file = S.gmem_file(kvm)
    folio = file.folio_at(0)
    out = [("state", f"{file.state(0)} ({R.STATE_BY_NAME[file.state(0)]:#04b})")]
    if folio is None:
        out.append(("folio", "none in the page cache"))
    else:
        out += [("refcount", str(folio.refcount)), ("mapcount", str(folio.mapcount)),
                ("type", "guestmem (callback pending)" if folio.page_type == PGTY_guestmem
                 else "none"),
                ("references", ", ".join(f"{h}={n}" for h, n in sorted(folio.holders.items())
                                         if n) or "-")]
    gone = [f for f in file.folios if f.mapping is None]
    for f in gone:
        out.append((f"old folio {f.fid}", "freed" if f.freed else
                    f"truncated, refcount {f.refcount}, references "
                    + (", ".join(f"{h}={n}" for h, n in sorted(f.holders.items()) if n) or "-")))
    out.append(("guest mapping", "yes" if S.guest_mapped(kvm, 0) else "no"))
    out.append(("callbacks run", str(file.callbacks)))
    broken = S.check_invariants(kvm)
    out.append(("invariants", "all hold" if not broken else "BROKEN: " + ", ".join(broken)))
    if kvm.warnings:
        out.append(("WARN", kvm.warnings[-1]))
    if file.oops:
        out.append(("OOPS", file.oops[-1]))
    return tuple(out)


def folio_console(state=(), action: str = "", fix_pending: bool = False) -> ConsoleView:
    """Apply ``action`` to the file that ``state`` (a tuple of earlier actions) describes.

    Pure: the file is rebuilt from ``state`` on every call.  Never raises:
    an unknown action, a malformed state, an action that is illegal here (a
    put with no reference, unmapping what is not mapped) or one that could
    never finish on one CPU comes back as a message, with the state unchanged.
    ``action=""`` only shows the state.
    """
    fix = fix_pending is True
    try:
        if isinstance(state, str) or not isinstance(state, (tuple, list)):
            raise TypeError("state must be a tuple of earlier actions")
        state = tuple(state)
        bad = [a for a in state if not isinstance(a, str) or a not in S.ACTIONS]
        if bad:
            raise ValueError(f"unknown action {bad[0]!r} in state")
        kvm = S.replay(state, fix_pending=fix)
    except Exception as exc:  # the console never raises: a bad state is reported
        return ConsoleView((), str(action)[:80], False, f"bad state: {str(exc)[:200]}", ())
    if action == "" or action is None:
        return ConsoleView(state, "", True, "ready", _fields(kvm))
    if not isinstance(action, str) or action not in S.ACTIONS:
        return ConsoleView(state, str(action)[:80], False,
                           f"unknown action {str(action)[:80]!r}; choose from "
                           f"{', '.join(S.ACTIONS)}", _fields(kvm))
    try:
        _ret, message = S.apply_action(kvm, action, fix_pending=fix)
    except KernelWarn as exc:
        return ConsoleView(state, action, False, f"refused (the kernel would WARN): {exc}",
                           _fields(S.replay(state, fix_pending=fix)))
    except ModelHang as exc:
        return ConsoleView(state, action, False, f"refused: on one CPU {exc}",
                           _fields(S.replay(state, fix_pending=fix)))
    return ConsoleView(state + (action,), action, True, message, _fields(kvm))


def folio_console_widget(start=(), fix_pending: bool = False):
    """Return the folio console: one button per action, a reset, and the view below.

    A thin shell over :func:`folio_console`; the HTML is exactly its view.
    """
    import ipywidgets as W

    view = folio_console(start, "", fix_pending)
    holder = {"state": view.state}
    out = W.HTML(view.html())
    log = W.HTML("")

    def press(action):
        def handler(_button):
            v = folio_console(holder["state"], action, fix_pending)
            holder["state"] = v.state
            out.value = v.html()
            log.value = "<small>done: " + _html.escape(", ".join(v.state) or "nothing") + "</small>"
        return handler

    layout = W.Layout(width="150px")
    buttons = []
    for action in S.ACTIONS:
        b = W.Button(description=action, layout=layout)
        b.add_class("kvmmu-folio-action")
        b.add_class("kvmmu-folio-" + action.replace(" ", "-"))
        b.on_click(press(action))
        buttons.append(b)
    reset = W.Button(description="reset", button_style="warning", layout=layout)
    reset.add_class("kvmmu-folio-reset")
    out.add_class("kvmmu-folio-out")

    def do_reset(_b):
        holder["state"] = ()
        v = folio_console((), "", fix_pending)
        out.value = v.html()
        log.value = ""
    reset.on_click(do_reset)
    grid = W.GridBox(buttons + [reset], layout=W.Layout(
        grid_template_columns="repeat(4, 160px)", grid_gap="4px"))
    box = W.VBox([grid, out, log])
    box.add_class("kvmmu-folio-widget")  # the browser tests find the console by these classes
    return box
