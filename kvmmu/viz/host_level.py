"""Views of chapter 2: the host-mapping explorer widget and the host page-table walk figure.

``host_mapping_view(...)`` is the pure function behind the widget: it never
raises, and returns a :class:`HostMappingView` (the level KVM picks and the
reason at each step, or an error message) with ``.html()``.
``host_mapping_widget()`` only wires ipywidgets controls to it.
``host_walk_data(kvm, gfn)`` is what ``host_walk_figure`` draws: the host
page tables on the path of ``gfn``'s host address, with the entries
``host_pfn_mapping_level`` read.
"""
import html as _html
from dataclasses import dataclass

from ..checks import check_int, parse_int_text
from ..host_level import (HOST_EVENTS, explain_mapping_level, host_pfn_mapping_level,
                          make_host_vm)
from ..host_mm import BACKINGS
from ..levels import level_name
from ..memslots import GFN_MAX, HVA_MAX, __gfn_to_hva_memslot

#: What the widget starts with: a 4 MiB slot at 4 GiB, THP-backed, gfn 0x123 pages in.
DEFAULTS = dict(gfn="0x100123", base_gfn="0x100000", npages="0x400",
                userspace_addr="0x7f0000000000", backing="2M", event="none",
                dirty_logging=False, shadowed=False, exec_nx=False)


@dataclass(frozen=True)
class HostMappingView:
    """What the host-mapping explorer shows for one set of inputs."""

    inputs: tuple            # (name, shown text) pairs
    error: str | None
    level: str | None        # "4K" / "2M" / "1G"
    ret: str | None          # RET_PF_* of the fault
    steps: tuple = ()        # (what, verdict) pairs

    def html(self) -> str:
        esc = _html.escape
        if self.error is not None:
            return (f'<div class="kvmmu-hostlevel-view"><b style="color:#b00">error:</b> '
                    f"{esc(self.error)}</div>")
        rows = "".join(f'<tr><td style="padding:2px 8px;vertical-align:top"><b>{esc(w)}</b></td>'
                       f'<td style="padding:2px 8px">{esc(v)}</td></tr>' for w, v in self.steps)
        return (f'<div class="kvmmu-hostlevel-view"><div style="font-size:120%">KVM maps it at '
                f'<b class="kvmmu-hostlevel-level">{esc(self.level)}</b> ({esc(self.ret)})</div>'
                f'<table style="margin-top:0.5em">{rows}</table></div>')

    def __str__(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        lines = [f"KVM maps it at {self.level} ({self.ret})"]
        lines += [f"  {w}: {v}" for w, v in self.steps]
        return "\n".join(lines)


def _safe_str(obj, limit: int = 80) -> str:
    try:
        return str(obj)[:limit]
    except Exception:  # an object whose __str__ fails still gets a view
        return f"<{type(obj).__name__}>"


def host_mapping_view(gfn=DEFAULTS["gfn"], base_gfn=DEFAULTS["base_gfn"],
                      npages=DEFAULTS["npages"], userspace_addr=DEFAULTS["userspace_addr"],
                      backing=DEFAULTS["backing"], event=DEFAULTS["event"],
                      dirty_logging=False, shadowed=False, exec_nx=False) -> HostMappingView:
    """Say at which level KVM maps ``gfn`` and why; never raises.

    Numbers are text (decimal, ``0x`` hex, ``0b``) or ints; ``backing`` is
    ``"4K"``, ``"2M"`` or ``"1G"``; ``event`` is a key of
    ``kvmmu.host_level.HOST_EVENTS``; ``exec_nx`` makes the fault an
    instruction fetch with the NX-huge-page workaround on.  Bad input gives a
    view whose ``error`` says what is wrong.
    """
    inputs = tuple((k, _safe_str(v)) for k, v in (
        ("gfn", gfn), ("base_gfn", base_gfn), ("npages", npages),
        ("userspace_addr", userspace_addr), ("backing", backing), ("event", event),
        ("dirty_logging", dirty_logging), ("shadowed", shadowed), ("exec_nx", exec_nx)))
    try:
        def number(name, value, lo, hi):
            if isinstance(value, str):
                return parse_int_text(name, value, lo, hi)
            return check_int(name, value, lo, hi)

        gfn_v = number("gfn", gfn, 0, GFN_MAX)
        base_v = number("base_gfn", base_gfn, 0, GFN_MAX)
        npages_v = number("npages", npages, 1, GFN_MAX + 1)
        ua_v = number("userspace_addr", userspace_addr, 0, HVA_MAX)
        if backing not in BACKINGS:
            raise ValueError(f"backing must be one of {', '.join(BACKINGS)}; got {backing!r}")
        if event not in HOST_EVENTS:
            raise ValueError(f"event must be one of {', '.join(HOST_EVENTS)}; got {event!r}")
        for name, flag in (("dirty_logging", dirty_logging), ("shadowed", shadowed),
                           ("exec_nx", exec_nx)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        kvm = make_host_vm(base_v, npages_v, ua_v, backing, gfn_v, event=event,
                           dirty_logging=dirty_logging, shadowed=shadowed)
        decision = explain_mapping_level(kvm, gfn_v, exec=exec_nx,
                                         nx_huge_page_workaround_enabled=exec_nx)
        return HostMappingView(inputs, None, level_name(decision.level), decision.ret,
                               tuple(decision.steps))
    except (TypeError, ValueError) as exc:
        return HostMappingView(inputs, str(exc), None, None)
    except Exception as exc:  # a widget must never raise; say what happened instead
        return HostMappingView(inputs, f"internal error: {type(exc).__name__}: {exc}", None, None)


def host_mapping_widget(**initial):
    """Return the host-mapping explorer: a thin shell over :func:`host_mapping_view`."""
    import ipywidgets as W

    values = dict(DEFAULTS)
    unknown = set(initial) - set(values)
    if unknown:
        raise TypeError(f"host_mapping_widget got unknown arguments {sorted(unknown)}; "
                        f"known: {', '.join(values)}")
    values.update(initial)
    texts = {}
    for name, label in (("gfn", "gfn"), ("base_gfn", "slot base gfn"), ("npages", "slot npages"),
                        ("userspace_addr", "slot host addr")):
        w = W.Text(value=str(values[name]), description=label, continuous_update=False,
                   style={"description_width": "8em"}, layout=W.Layout(width="22em"))
        w.add_class(f"kvmmu-hostlevel-{name.replace('_', '-')}")
        texts[name] = w
    backing = W.ToggleButtons(options=list(BACKINGS), value=values["backing"],
                              description="host backing")
    backing.add_class("kvmmu-hostlevel-backing")
    event = W.Dropdown(options=list(HOST_EVENTS), value=values["event"], description="then",
                       layout=W.Layout(width="30em"))
    event.add_class("kvmmu-hostlevel-event")
    flags = {}
    for name, label in (("dirty_logging", "dirty logging on the slot"),
                        ("shadowed", "gfn holds a shadowed guest page table"),
                        ("exec_nx", "exec fault, NX huge pages on")):
        w = W.Checkbox(value=values[name], description=label, indent=False)
        w.add_class(f"kvmmu-hostlevel-{name.replace('_', '-')}")
        flags[name] = w
    out = W.HTML()
    out.add_class("kvmmu-hostlevel-out")

    def refresh(*_):
        out.value = host_mapping_view(
            **{k: w.value for k, w in texts.items()}, backing=backing.value, event=event.value,
            **{k: w.value for k, w in flags.items()}).html()

    for w in [*texts.values(), backing, event, *flags.values()]:
        w.observe(refresh, names="value")
    refresh()
    box = W.VBox([W.HBox([texts["gfn"], texts["npages"]]),
                  W.HBox([texts["base_gfn"], texts["userspace_addr"]]),
                  backing, event, W.HBox(list(flags.values())), out])
    box.add_class("kvmmu-hostlevel-widget")
    return box


# --------------------------------------------------------------------------
# The figure: the host page tables of a memslot, with the walks drawn on them

#: Walk colours, one per gfn walked.
WALK_COLOURS = ("#d9480f", "#1c7ed6", "#2b8a3e")


def host_walk_data(kvm, gfns, max_rows: int = 5) -> dict:
    """Run ``host_pfn_mapping_level`` for each of ``gfns``; return what the figure draws.

    ``tables``: every live table that maps the slot's host range, top down,
    each with rows ``(index, text, walks)`` where ``walks`` lists which of the
    walks read that entry; a table with more than ``max_rows`` rows keeps its
    first two, its last, and the rows a walk read (``hidden`` counts the rest).
    ``walks``: per gfn its hva, result and the ``(table pfn, index)`` it read.
    """
    from ..host_mm import table_tree

    gfns = [gfns] if isinstance(gfns, int) else list(gfns)
    if not 1 <= len(gfns) <= len(WALK_COLOURS):
        raise ValueError(f"gfns must hold 1 to {len(WALK_COLOURS)} gfns, got {len(gfns)}")
    check_int("max_rows", max_rows, 3, 32)
    slots = []
    walks = []
    for gfn in gfns:
        check_int("gfn", gfn, 0, GFN_MAX)
        slot = kvm.memslots.gfn_to_memslot(gfn)
        if slot is None:
            raise ValueError(f"gfn {gfn:#x} is not in any memslot (no slot covers it)")
        if slots and slot is not slots[0]:
            raise ValueError("all gfns must be in the same memslot")
        slots.append(slot)
        kvm.mm.mem.reads.clear()
        level = host_pfn_mapping_level(kvm, gfn, slot)
        walks.append({"gfn": gfn, "hva": __gfn_to_hva_memslot(slot, gfn),
                      "level": level_name(level),
                      "path": [(ptr.pfn, ptr.index) for ptr, _, _ in kvm.mm.mem.reads]})
    slot = slots[0]
    tree = table_tree(kvm.mm, slot.userspace_addr, slot.userspace_addr + (slot.npages << 12))
    tables = []
    for t in tree:
        rows = []
        for index, text, _hva in t["entries"]:
            read_by = [n for n, w in enumerate(walks) if (t["table"], index) in w["path"]]
            rows.append((index, text, read_by))
        hidden = 0
        if len(rows) > max_rows:
            keep = {0, 1, len(rows) - 1} | {k for k, r in enumerate(rows) if r[2]}
            hidden = len(rows) - len(keep)
            rows = [r for k, r in enumerate(rows) if k in keep]
        tables.append({"pfn": t["table"], "name": t["level"], "rows": rows, "hidden": hidden})
    return {"slot": (slot.id, slot.base_gfn, slot.end_gfn, slot.userspace_addr),
            "tables": tables, "walks": walks}


def host_walk_text(data: dict) -> str:
    """The figure's data as text (the checked cell beside the figure prints it)."""
    sid, base, end, ua = data["slot"]
    lines = [f"memslot {sid}: gfns [{base:#x}, {end:#x}) at host {ua:#x}"]
    for n, w in enumerate(data["walks"]):
        path = " -> ".join(f"{pfn:#x}[{index}]" for pfn, index in w["path"])
        lines.append(f"walk {n}: gfn {w['gfn']:#x} (hva {w['hva']:#x}) reads {path}: {w['level']}")
    for t in data["tables"]:
        more = f", {t['hidden']} more not shown" if t["hidden"] else ""
        lines.append(f"{t['name']} table @{t['pfn']:#x}{more}")
        for index, text, read_by in t["rows"]:
            who = f"   <- read by walk {', '.join(map(str, read_by))}" if read_by else ""
            lines.append(f"  [{index:3d}] {text}{who}")
    return "\n".join(lines)


def host_walk_figure(kvm, gfns):
    """Draw the host page tables of ``gfns``' memslot with each walk highlighted; return the Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle

    data = host_walk_data(kvm, gfns)
    column = {"PGD": 0, "PUD": 1, "PMD": 2, "PTE": 3}
    width, gap, row_h, head = 2.5, 0.9, 0.34, 0.34
    placed = {}            # table pfn -> (x, y of its top)
    rows_at = {}           # (pfn, index) -> (x right, y middle)
    col_y = [0.0, 0.0, 0.0, 0.0]
    for t in data["tables"]:
        c = column[t["name"]]
        x = c * (width + gap)
        top = -col_y[c]
        placed[t["pfn"]] = (x, top)
        height = head + row_h * (len(t["rows"]) + (1 if t["hidden"] else 0))
        col_y[c] += height + 0.45
    depth = max(col_y)
    depth += 0.35 * (len(data["walks"]) + 1)   # room for the legend
    fig, ax = plt.subplots(figsize=(13, 1.6 + 1.05 * depth))
    for t in data["tables"]:
        x, top = placed[t["pfn"]]
        ax.add_patch(Rectangle((x, top - head), width, head, facecolor="#495057",
                               edgecolor="black"))
        note = " (never read)" if t["name"] == "PTE" else ""
        ax.text(x + width / 2, top - head / 2, f"{t['name']} table @{t['pfn']:#x}{note}",
                ha="center", va="center", fontsize=8, color="white", fontweight="bold")
        y = top - head
        shown = list(t["rows"])
        for k, (index, text, read_by) in enumerate(shown):
            if t["hidden"] and k == 2:
                ax.text(x + width / 2, y - row_h / 2, f"... {t['hidden']} more entries",
                        ha="center", va="center", fontsize=7, color="#555555")
                y -= row_h
            colour = WALK_COLOURS[read_by[0]] if read_by else "#f1f3f5"
            ax.add_patch(Rectangle((x, y - row_h), width, row_h, facecolor=colour,
                                   alpha=0.35 if read_by else 1.0, edgecolor="black",
                                   linewidth=0.6))
            ax.text(x + 0.06, y - row_h / 2, f"[{index}] {text}", va="center", fontsize=7)
            rows_at[(t["pfn"], index)] = (x + width, y - row_h / 2)
            y -= row_h
    # Child links: grey for every table pointer, coloured for each walk.
    for t in data["tables"]:
        for index, text, _ in t["rows"]:
            if "table @" not in text:
                continue
            child = int(text.rsplit("@", 1)[1], 16)
            if child in placed and (t["pfn"], index) in rows_at:
                x0, y0 = rows_at[(t["pfn"], index)]
                cx, ctop = placed[child]
                ax.add_patch(FancyArrowPatch((x0, y0), (cx, ctop - head / 2), arrowstyle="-|>",
                                             mutation_scale=9, color="#adb5bd", linewidth=0.8))
    from matplotlib.lines import Line2D

    handles = []
    for n, w in enumerate(data["walks"]):
        path = w["path"]
        lift = 0.06 * n    # walks that share entries draw side by side
        for (pfn, index), (npfn, _nindex) in zip(path, path[1:]):
            x0, y0 = rows_at[(pfn, index)]
            cx, ctop = placed[npfn]
            ax.add_patch(FancyArrowPatch((x0, y0 + lift), (cx, ctop - head / 2 + lift),
                                         arrowstyle="-|>", mutation_scale=12,
                                         color=WALK_COLOURS[n], linewidth=2.0))
        x_end, y_end = rows_at[path[-1]]
        ax.plot([x_end - 0.12], [y_end], marker="o", color=WALK_COLOURS[n], markersize=7)
        handles.append(Line2D([0], [0], color=WALK_COLOURS[n], linewidth=2.5, marker="o",
                              label=f"walk {n}: gfn {w['gfn']:#x} (hva {w['hva']:#x}) "
                                    f"-> {w['level']}"))
    ax.legend(handles=handles, loc="lower left", fontsize=8, frameon=False)
    sid, base, end, ua = data["slot"]
    ax.set_title(f"host page tables of memslot {sid} (gfns [{base:#x}, {end:#x}) at host "
                 f"{ua:#x}); each walk reads one entry per level", fontsize=10)
    ax.set_xlim(-0.2, 4 * (width + gap) + 0.4)
    ax.set_ylim(-depth - 0.2, 0.3)
    ax.axis("off")
    fig.tight_layout()
    return fig
