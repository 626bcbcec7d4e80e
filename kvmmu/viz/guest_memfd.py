"""Views of guest_memfd's final-put callback: states, races, verdicts, a console.

- ``state_machine_figure()`` draws :data:`kvmmu.guest_memfd_rfc.TRANSITIONS`
  (the table the tests check every state change against) as numbered
  arrows; ``transition_key()`` is the key to the numbers.
- ``race_table(trace)`` is a run of chapter 4's VM in the locking.rst cut:
  a step column, one column per CPU, and only what each step changed in
  the folio, its offset's state and the invalidate lock (:func:`race_rows`
  is its data).  ``refcount_timeline(trace)`` plots the count and the
  state along a run (:func:`refcount_timeline_rows`).
- ``verdict_table(rows)`` lays out the verdicts of many checks.
- ``folio_console(history, action)`` is the pure function behind the
  widget: it never raises, and returns a :class:`ConsoleView` whose
  ``state`` is the new history (the actions that took effect) and whose
  ``message`` says what the action returned or why it was refused; it
  renders as HTML, so the widget needs no matplotlib and runs live in the
  book.  ``folio_console_widget()`` only wires buttons to it.

matplotlib and ipywidgets are imported inside the functions that draw.
"""
import html as _html
import re
import textwrap
from dataclasses import dataclass

from .. import guest_memfd_rfc as R
from ..checks import KernelWarn, check_bool, check_int
from ..cpu import ModelHang
from ..explorer import Trace
from ..folio import PGTY_guestmem
from ..scenarios import guest_memfd as S

__all__ = ["state_machine_edges", "transition_key", "state_machine_figure",
           "file_column", "folio_fields", "race_rows", "race_table", "RaceTable",
           "refcount_timeline_rows", "refcount_timeline", "verdict_table",
           "ConsoleView", "folio_console", "folio_console_widget"]

#: Node positions of the state-machine figure (data units).
_POS = {"ALL": (0.0, 1.0), "NONE": (3.0, 1.0), "GUEST": (1.5, -0.55)}
_WHO = {"ALL": "host + guest", "NONE": "nobody (transient)", "GUEST": "guest only"}
_STYLE = {"rfc": ("-", "#1d3557"), "unguarded": ("--", "#777777"),
          "fix": (":", "#2a9d8f")}
_KIND = {"rfc": "", "unguarded": " [unguarded]", "fix": " [this book's fix]"}
_LOCK = f"{S.FILE}.invalidate_lock"
WIDTH = 84


# --------------------------------------------------------------------------
# The state machine.
# --------------------------------------------------------------------------
def state_machine_edges() -> list[tuple]:
    """Number the rows of TRANSITIONS: ``(n, from, to, fn, condition, kind)``."""
    return [(n, *row) for n, row in enumerate(R.TRANSITIONS, start=1)]


def transition_key(width: int = WIDTH) -> str:
    """The key to the figure's numbers, one entry per transition, ``width`` wide."""
    check_int("width", width, 40, 200)
    lines = []
    for n, src, dst, fn, cond, kind in state_machine_edges():
        head = f"{n:>2} {src} -> {dst}: {fn}(){_KIND[kind]}"
        lines.append(textwrap.fill(f"{head}; {cond}", width,
                                   subsequent_indent=" " * 6))
    return "\n".join(lines)


def _arrow_label(x0, y0, x1, y1, rad):
    # The midpoint of an arc3 arrow: a quadratic Bezier whose control point
    # sits ``rad`` times the chord off the chord's middle.
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    cx, cy = mx + rad * (y1 - y0), my - rad * (x1 - x0)
    return (mx + cx) / 2, (my + cy) / 2


def state_machine_figure(show_unguarded: bool = True):
    """Draw the three mappability states and the numbered transitions (a Figure).

    Solid arrows: the RFC's protocol.  Dashed: changes the code allows
    because it does not check the current state.  Dotted: this book's
    punch-hole fix.  :func:`transition_key` says what each number is.
    """
    check_bool("show_unguarded", show_unguarded)
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from .style import column_figure

    edges = [e for e in state_machine_edges() if show_unguarded or e[5] == "rfc"]
    groups: dict = {}
    for n, src, dst, _fn, _cond, kind in edges:
        groups.setdefault((src, dst, kind), []).append(n)
    fig = column_figure(3.1)
    ax = fig.add_axes([0, 0, 1, 1])
    boxes = {}
    for name, (x, y) in _POS.items():
        boxes[name] = ax.add_patch(FancyBboxPatch(
            (x - 0.5, y - 0.22), 1.0, 0.44, boxstyle="round,pad=0.02",
            facecolor="#f1faee", edgecolor="#1d3557", linewidth=1.4, zorder=3))
        ax.text(x, y + 0.07, f"{name} ({R.STATE_BY_NAME[name]:#04b})", ha="center",
                va="center", fontsize=10, fontweight="bold", zorder=4)
        ax.text(x, y - 0.11, f"maps: {_WHO[name]}", ha="center", va="center",
                fontsize=8, zorder=4)
    seen: dict = {}
    for (src, dst, kind), numbers in sorted(groups.items(), key=lambda g: g[1][0]):
        k = seen.get((src, dst), 0)
        seen[(src, dst)] = k + 1
        rad = 0.16 + 0.2 * k
        style, colour = _STYLE[kind]
        (x0, y0), (x1, y1) = _POS[src], _POS[dst]
        ax.add_patch(FancyArrowPatch(
            (x0, y0), (x1, y1), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
            mutation_scale=12, linestyle=style, color=colour, linewidth=1.3,
            patchA=boxes[src], patchB=boxes[dst], shrinkA=2, shrinkB=2, zorder=4))
        lx, ly = _arrow_label(x0, y0, x1, y1, rad)
        ax.text(lx, ly, ",".join(map(str, numbers)), ha="center", va="center",
                fontsize=8, color=colour, zorder=6,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white",
                          edgecolor=colour))
    ax.set_xlim(-0.75, 3.75)
    ax.set_ylim(-1.0, 1.75)
    ax.axis("off")
    return fig


# --------------------------------------------------------------------------
# Reading chapter 4's trace columns.
# --------------------------------------------------------------------------
_FOLIO = re.compile(r"folio (\d+)@\d+ (ref=(\d+)[^;|]*)")


def file_column(text: str) -> tuple:
    """Read the file's column of a trace: ``(states, {folio id: its short state})``.

    The column is what the file shows (``ALL | folio 0@0 ref=2 map=0 [...]``):
    the offsets' states, then each folio.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be the file's column of a trace, "
                        f"got {type(text).__name__}")
    head, _, rest = text.partition(" | ")
    states = tuple(head.split())
    if not states or any(s not in R.STATE_BY_NAME for s in states):
        raise ValueError("text must start with the offsets' states (ALL, GUEST, "
                         f"NONE), got {text[:40]!r}")
    folios = {int(m.group(1)): m.group(2).strip() for m in _FOLIO.finditer(rest)}
    return states, folios


def folio_fields(short: str) -> dict:
    """Read a folio's short state (``ref=2 map=0 guestmem locked:kvm [filemap=1]``).

    Returns ``ref``, ``map`` (ints), ``guestmem`` (bool), ``locked`` (the
    holder or None), ``gone`` (``"truncated"``, ``"freed"`` or None) and
    ``holders`` (a dict).
    """
    if not isinstance(short, str):
        raise TypeError(f"short must be a folio's short state, "
                        f"got {type(short).__name__}")
    m = re.match(r"ref=(-?\d+) map=(-?\d+)(.*?)\[(.*)\]$", short.strip())
    if not m:
        raise ValueError(f"short must look like 'ref=N map=N ... [holders]', "
                         f"got {short[:40]!r}")
    words = m.group(3).split()
    locked = next((w[len("locked:"):] for w in words if w.startswith("locked:")),
                  None)
    gone = next((w for w in words if w in ("truncated", "freed")), None)
    holders = dict(h.rsplit("=", 1) for h in m.group(4).split())
    return {"ref": int(m.group(1)), "map": int(m.group(2)),
            "guestmem": "guestmem" in words, "locked": locked, "gone": gone,
            "holders": {k: int(v) for k, v in holders.items()}}


def _check_trace(trace) -> Trace:
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be a kvmmu.explorer.Trace, "
                        f"got {type(trace).__name__}")
    if S.FILE not in trace.initial:
        raise ValueError(f"trace must be one of chapter 4's (a {S.FILE} column), "
                         f"got {trace.scenario!r}")
    return trace


# --------------------------------------------------------------------------
# A race in the locking.rst cut.
# --------------------------------------------------------------------------
def _moment(state: dict) -> dict:
    states, folios = file_column(state[S.FILE])
    text = state[S.FILE]
    callbacks = re.search(r"callbacks=(\d+)", text)
    return {"state": states[0], "lock": state.get(_LOCK, "?"),
            "folios": {fid: folio_fields(f) for fid, f in folios.items()},
            "callbacks": int(callbacks.group(1)) if callbacks else 0,
            "oops": "OOPS" in text}


def _holders_change(old: dict, new: dict) -> str:
    out = []
    for h in sorted(set(old) | set(new)):
        d = new.get(h, 0) - old.get(h, 0)
        if d:
            times = f" x{abs(d)}" if abs(d) > 1 else ""
            out.append(f"{'+' if d > 0 else '-'}{h}{times}")
    return " ".join(out)


def _folio_change(old: dict | None, new: dict) -> list:
    if old is None:
        return [f"ref {new['ref']} (new)"]
    out = []
    if new["ref"] != old["ref"]:
        who = _holders_change(old["holders"], new["holders"])
        out.append(f"ref {new['ref']}" + (f" ({who})" if who else ""))
    if new["map"] != old["map"]:
        out.append(f"map {new['map']}")
    if new["guestmem"] != old["guestmem"]:
        out.append("type guestmem" if new["guestmem"] else "type cleared")
    if new["locked"] != old["locked"]:
        out.append(f"locked ({new['locked']})" if new["locked"] else "unlocked")
    if new["gone"] != old["gone"]:
        out.append(new["gone"] or "back in the file")
    return out


def _changes(old: dict, new: dict) -> str:
    out = []
    if new["lock"] != old["lock"]:
        out.append(f"lock: {new['lock']}")
    if new["state"] != old["state"]:
        out.append(f"state {new['state']}")
    many = len(new["folios"]) > 1
    for fid, f in new["folios"].items():
        parts = _folio_change(old["folios"].get(fid), f)
        out += [f"folio {fid}: {p}" if many else p for p in parts]
    if new["callbacks"] > old["callbacks"]:
        out.append("callback done")
    if new["oops"] and not old["oops"]:
        out.append("OOPS")
    return "; ".join(out)


def _describe(m: dict) -> str:
    def one(fid, f):
        ledger = " ".join(f"{h}={n}" for h, n in f["holders"].items())
        return f"folio {fid}: ref {f['ref']} [{ledger}]"
    folios = "; ".join(one(fid, f) for fid, f in m["folios"].items()) or "no folio"
    return f"state {m['state']}, {folios}, lock {m['lock']}"


def _label(text: str) -> str:
    return text.replace(_LOCK, "invalidate_lock")


def race_rows(trace) -> list[tuple]:
    """``trace`` in the locking.rst cut: ``(step, actor, did, changed)``.

    The first row is ``(0, "", "At the beginning", <the state>)``; each
    next one says what the step did and only what it changed of offset 0's
    state, the folios (count with the holders that came or went, mapcount,
    type, lock) and the invalidate lock.
    """
    _check_trace(trace)
    prev = _moment(trace.initial)
    rows = [(0, "", "At the beginning", _describe(prev))]
    for n, step in enumerate(trace.steps, 1):
        now = _moment(step.state)
        rows.append((n, step.actor, _label(step.label), _changes(prev, now)))
        prev = now
    return rows


def _cells(text: str, width: int) -> list:
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


@dataclass(frozen=True)
class RaceTable:
    """A run of chapter 4's VM a text table, or HTML in the book."""

    trace: Trace
    width: int = WIDTH

    def _widths(self, rows) -> list:
        # Each column as wide as its longest cell, shrunk to fit: the CPUs
        # share what the changes column (at most about a quarter) leaves.
        letters = [letter for letter, _ in self.trace.actors]
        natural = [len(f"CPU {i} (x)") for i in range(len(letters))] + [7]
        for _step, actor, did, changed in rows[1:]:
            i = letters.index(actor)
            natural[i] = max(natural[i], len(did) + 4)
            natural[-1] = max(natural[-1], len(changed))
        room = self.width - 4 - 2 * len(letters)
        if sum(natural) <= room:
            return natural
        changes = min(natural[-1], max(14, room // 4))
        total = sum(natural[:-1])
        cpus = [max(12, (room - changes) * w // total) for w in natural[:-1]]
        return cpus + [room - sum(cpus)]

    def __repr__(self) -> str:
        trace, rows = self.trace, race_rows(self.trace)
        widths = self._widths(rows)
        letters = [letter for letter, _ in trace.actors]
        legend = "; ".join(f"CPU {i} ({a}): {t}"
                           for i, (a, t) in enumerate(trace.actors))
        heads = [f"CPU {i} ({a})" for i, a in enumerate(letters)] + ["changes"]
        lines = textwrap.wrap(legend, self.width)
        head = "  ".join(h.ljust(w) for h, w in zip(heads, widths))
        lines.append(f"  # {head}".rstrip())
        lines += textwrap.wrap(rows[0][3], self.width, initial_indent="    start: ",
                               subsequent_indent="    ")
        for step, actor, did, changed in rows[1:]:
            broke = step - 1 == trace.violation_step and not trace.deadlock
            did += " <<<" * broke
            cols = [_cells(did, w) if a == actor else [""]
                    for a, w in zip(letters, widths)]
            cols.append(_cells(changed, widths[-1]))
            for i in range(max(map(len, cols))):
                cells = [(c[i] if i < len(c) else "").ljust(w)
                         for c, w in zip(cols, widths)]
                num = f"{step:>3} " if i == 0 else "    "
                lines.append((num + "  ".join(cells)).rstrip())
        lines += textwrap.wrap(_label(trace.outcome), self.width)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = _html.escape
        trace = self.trace
        td = ('style="border:1px solid #ccc;padding:1px 5px;vertical-align:top;'
              'overflow-wrap:anywhere"')
        head = "".join(f"<th {td}>CPU {i} ({esc(a)}): {esc(t)}</th>"
                       for i, (a, t) in enumerate(trace.actors))
        rows = race_rows(trace)
        span = len(trace.actors) + 2
        out = ['<table class="kvmmu-gmem-race" style="border-collapse:collapse;'
               'width:100%;font-family:monospace;font-size:80%">'
               f"<thead><tr><th {td}>#</th>{head}<th {td}>changes</th></tr></thead>"
               "<tbody>",
               f'<tr><td {td} colspan="{span}"><i>At the beginning:</i> '
               f"{esc(rows[0][3])}</td></tr>"]
        for step, actor, did, changed in rows[1:]:
            bad = step - 1 == trace.violation_step
            cells = "".join(f"<td {td}>{esc(did) if a == actor else ''}</td>"
                            for a, _t in trace.actors)
            tr = '<tr style="background:#fdd">' if bad else "<tr>"
            out.append(f"{tr}<td {td}>{step}</td>{cells}"
                       f"<td {td}>{esc(changed)}</td></tr>")
        colour = "#b00" if trace.violation is not None else "#060"
        out.append(f'<tr><td {td} colspan="{span}"><b style="color:{colour}">'
                   f"{esc(_label(trace.outcome))}</b></td></tr></tbody></table>")
        return "".join(out)


def race_table(trace, width: int = WIDTH) -> RaceTable:
    """``trace`` as a :class:`RaceTable`, its text form ``width`` columns wide."""
    _check_trace(trace)
    check_int("width", width, 60, 200)
    return RaceTable(trace, width)


# --------------------------------------------------------------------------
# A trace's refcount and state over time.
# --------------------------------------------------------------------------
def refcount_timeline_rows(trace, folio: int = 0) -> list[tuple]:
    """Per moment of ``trace``: ``(index, actor, label, refcount, state, pending)``.

    The start comes first.  ``state`` is offset 0's; ``refcount`` is None
    once the folio left the view.
    """
    _check_trace(trace)
    check_int("folio", folio, 0)
    rows = []
    for snap in trace.snapshots():
        m = _moment(snap["state"])
        f = m["folios"].get(folio)
        rows.append((snap["index"], snap["actor"] or "-", snap["label"],
                     f["ref"] if f else None, m["state"],
                     bool(f and f["guestmem"])))
    return rows


def refcount_timeline(trace, folio: int = 0):
    """Plot folio ``folio``'s count and offset 0's state (bands) along ``trace``."""
    rows = refcount_timeline_rows(trace, folio)
    import matplotlib.pyplot as plt

    from .style import column_figure

    colours = {"ALL": "#a8dadc", "NONE": "#f4a261", "GUEST": "#e63946"}
    fig = column_figure(2.5)
    ax = fig.add_axes([0.08, 0.2, 0.9, 0.68])
    xs = [r[0] for r in rows]
    for (i, _a, _l, _c, state, _g), nxt in zip(rows, xs[1:] + [xs[-1] + 1]):
        ax.axvspan(i - 0.5, nxt - 0.5, color=colours.get(state, "#eeeeee"),
                   alpha=0.35, lw=0)
    ys = [r[3] if r[3] is not None else 0 for r in rows]
    ax.step(xs, ys, where="mid", color="#1d3557", linewidth=1.8)
    for i, actor, _label, count, _state, pending in rows:
        ax.text(i, (count or 0) + 0.15, actor, ha="center", fontsize=8)
        if pending:
            ax.plot([i], [count or 0], marker="o", markersize=4, color="#e76f51")
    ax.set_xlabel("step (the letter: the CPU that ran it)")
    ax.set_ylabel("refcount")
    ax.set_ylim(-0.3, max(ys) + 1.0)
    ax.set_xlim(-0.5, xs[-1] + 0.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.35)
               for c in colours.values()]
    handles.append(plt.Line2D([], [], marker="o", color="#e76f51", linestyle=""))
    ax.legend(handles, [f"state {s}" for s in colours] + ["guestmem type set"],
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    return fig


# --------------------------------------------------------------------------
# Many checks' verdicts in one table.
# --------------------------------------------------------------------------
def verdict_table(rows, width: int = WIDTH) -> str:
    """Lay out ``(check, cpus, verdict, states)`` rows, a text table ``width`` wide.

    The check and verdict columns wrap; the counts are right-aligned.
    """
    check_int("width", width, 60, 200)
    if isinstance(rows, (str, bytes)) or not hasattr(rows, "__iter__"):
        raise TypeError("rows must be (check, cpus, verdict, states) tuples")
    rows = list(rows)
    for row in rows:
        ok = (isinstance(row, tuple) and len(row) == 4 and isinstance(row[0], str)
              and isinstance(row[2], str)
              and all(type(v) is int for v in row[1::2]))
        if not ok:
            raise TypeError("rows must be (check, cpus, verdict, states) tuples, "
                            f"got {row!r}")
    w_check = width * 52 // 100
    w_verdict = width - w_check - 4 - 6 - 3
    head = (f"{'check':<{w_check}} {'CPUs':>4} {'verdict':<{w_verdict}} "
            f"{'states':>6}")
    lines = [head, "-" * len(head)]
    for check, cpus, verdict, states in rows:
        left, right = _cells(check, w_check), _cells(verdict, w_verdict)
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            nums = (f"{cpus:>4}", f"{states:>6}") if i == 0 else ("", "")
            line = f"{a:<{w_check}} {nums[0]:>4} {b:<{w_verdict}} {nums[1]:>6}"
            lines.append(line.rstrip())
    return "\n".join(lines)


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

    def field(self, name: str) -> str:
        """The value shown for ``name`` ("" if the view has no such field)."""
        return dict(self.fields).get(name, "")

    def __repr__(self) -> str:
        head = f"{self.action or '(start)'}: {self.message}"
        body = "\n".join(f"  {k}: {v}" for k, v in self.fields)
        head = textwrap.wrap(head, WIDTH, subsequent_indent="    ")
        return "\n".join(head + [body])

    def html(self) -> str:
        esc = _html.escape
        colour = "#060" if self.ok else "#b00"
        cell = "padding:1px 8px;text-align:left;overflow-wrap:anywhere"
        rows = "".join(f"<tr><td style='{cell}'><b>{esc(k)}</b></td>"
                       f"<td style='{cell};font-family:monospace'>{esc(str(v))}"
                       "</td></tr>"
                       for k, v in self.fields)
        return (f"<div class='kvmmu-folio-console'><div style='color:{colour}'>"
                f"<b>{esc(self.action or 'start')}</b>: {esc(self.message)}</div>"
                f"<table style='border-collapse:collapse;margin:0'>{rows}</table>"
                "</div>")

    def _repr_html_(self) -> str:
        return self.html()


def _ledger(folio) -> str:
    held = sorted((h, n) for h, n in folio.holders.items() if n)
    return ", ".join(f"{h}={n}" for h, n in held) or "-"


def _fields(kvm) -> tuple:
    file = S.gmem_file(kvm)
    folio = file.folio_at(0)
    out = [("state", f"{file.state(0)} ({R.STATE_BY_NAME[file.state(0)]:#04b})")]
    if folio is None:
        out.append(("folio", "none in the page cache"))
    else:
        pending = folio.page_type == PGTY_guestmem
        out += [("refcount", str(folio.refcount)),
                ("mapcount", str(folio.mapcount)),
                ("type", "guestmem (callback pending)" if pending else "none"),
                ("references", _ledger(folio))]
    for f in (f for f in file.folios if f.mapping is None):
        out.append((f"old folio {f.fid}", "freed" if f.freed else
                    f"truncated, refcount {f.refcount}, references {_ledger(f)}"))
    out.append(("guest mapping", "yes" if S.guest_mapped(kvm, 0) else "no"))
    out.append(("callbacks run", str(file.callbacks)))
    broken = S.check_invariants(kvm)
    out.append(("invariants",
                "broken: " + ", ".join(broken) if broken else "all hold"))
    if kvm.warnings:
        out.append(("WARN", kvm.warnings[-1]))
    if file.oops:
        out.append(("OOPS", file.oops[-1]))
    return tuple(out)


def folio_console(state=(), action: str = "",
                  fix_pending: bool = False) -> ConsoleView:
    """Apply ``action`` to the file that ``state`` (earlier actions) describes.

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
        return ConsoleView((), str(action)[:80], False,
                           f"bad state: {str(exc)[:200]}", ())
    if action == "" or action is None:
        return ConsoleView(state, "", True, "ready", _fields(kvm))
    if not isinstance(action, str) or action not in S.ACTIONS:
        return ConsoleView(state, str(action)[:80], False,
                           f"unknown action {str(action)[:80]!r}; choose from "
                           f"{', '.join(S.ACTIONS)}", _fields(kvm))
    try:
        _ret, message = S.apply_action(kvm, action, fix_pending=fix)
    except KernelWarn as exc:
        return ConsoleView(state, action, False,
                           f"refused (the kernel would WARN): {exc}",
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

    def show(v):
        holder["state"] = v.state
        out.value = v.html()
        log.value = ("<small>done: " + _html.escape(", ".join(v.state) or "nothing")
                     + "</small>") if v.state else ""

    def press(action):
        def handler(_button):
            show(folio_console(holder["state"], action, fix_pending))
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
    reset.on_click(lambda _b: show(folio_console((), "", fix_pending)))
    out.add_class("kvmmu-folio-out")
    grid = W.GridBox(buttons + [reset], layout=W.Layout(
        grid_template_columns="repeat(4, 156px)", grid_gap="4px"))
    box = W.VBox([grid, out, log])
    box.add_class("kvmmu-folio-widget")     # the browser tests find it by its class
    return box
