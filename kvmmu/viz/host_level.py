"""Chapter 2's views: the host-mapping explorer, the host walk figure, the verdicts.

``explain_mapping_level(kvm, gfn)`` runs a fault on one CPU and says why
it mapped the level it did (the widget, the exercises and the chapter use
it); ``host_mapping_view(...)`` is the pure function behind the widget: it
never raises, and returns a :class:`HostMappingView` (the level KVM picks
and the reason at each step, or an error message) with ``.html()``.
``host_mapping_widget()`` only wires ipywidgets controls to it.
``host_walk_data(kvm, gfns)`` is what ``host_walk_figure`` draws: the host
page tables on the path of each gfn's host address, with the entries
``host_pfn_mapping_level`` read.  ``verdict_table(rows)`` lays out the
chapter's table of exhaustive checks
(:func:`kvmmu.scenarios.host_level.verdicts`).

Every text these views print fits in :data:`WIDTH` columns.
"""
import html as _html
import textwrap
from dataclasses import dataclass, field

from ..checks import check_bool, check_int, parse_int_text
from ..cpu import run_alone
from ..errno import ret_pf_name
from ..host_mm import (BACKINGS, TABLE_NAMES, describe_entry, host_translation,
                       table_tree)
from ..kvm_host import Kvm, KvmVcpu
from ..levels import (KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PG_LEVEL_1G, PG_LEVEL_2M,
                      PG_LEVEL_4K, gfn_round_for_level, level_name)
from ..memslots import (GFN_MAX, HVA_MAX, KvmMemorySlot, __gfn_to_hva_memslot,
                        __kvm_mmu_slot_lpages, gfn_to_index,
                        kvm_slot_dirty_track_enabled, lpage_info_slot)
from ..mmu import kvm_mmu_do_page_fault
from ..mmu_internal import host_pfn_mapping_level
from ..pferr import PFERR_FETCH_MASK, PFERR_GUEST_FINAL_MASK
from ..scenarios.host_level import HOST_EVENTS, kvm_leaf_of, make_host_vm

__all__ = [
    "WIDTH", "lpage_disallow_reasons", "LevelDecision", "explain_mapping_level",
    "DEFAULTS", "HostMappingView", "host_mapping_view", "host_mapping_widget",
    "WALK_COLOURS", "host_walk_data", "host_walk_text", "host_walk_figure",
    "verdict_table", "check_line",
]

#: The widest line these views print: the book's code column.
WIDTH = 84


def _steps_text(head: str, steps, wrap: bool = True) -> str:
    # A heading line, then one "  what: verdict" line per step (wrapped).
    lines = [head]
    for what, verdict in steps:
        line = f"  {what}: {verdict}"
        lines += textwrap.wrap(line, WIDTH, subsequent_indent="      ",
                               break_on_hyphens=False) if wrap else [line]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Explaining a decision (the widget, the exercises and the chapter use it)

def _slot_of(kvm, gfn: int):
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    check_int("gfn", gfn, 0, GFN_MAX)
    slot = kvm.kvm_memslots().gfn_to_memslot(gfn)
    if slot is None:
        raise ValueError(f"gfn {gfn:#x} is not in any memslot (no slot covers it)")
    return slot


def lpage_disallow_reasons(slot: KvmMemorySlot, gfn: int, level: int) -> list[str]:
    """Why ``slot`` disallows ``gfn``'s huge page at ``level`` (none: allowed)."""
    check_int("level", level, PG_LEVEL_2M, PG_LEVEL_1G)
    count = lpage_info_slot(gfn, slot, level)       # checks slot and gfn
    pages = KVM_PAGES_PER_HPAGE(level)
    size = level_name(level)
    index = gfn_to_index(gfn, slot.base_gfn, level)
    last = __kvm_mmu_slot_lpages(slot.base_gfn, slot.npages, level) - 1
    head = gfn_round_for_level(gfn, level)
    page = f"the {size} page [{head:#x}, {head + pages:#x})"
    reasons = []
    if index == 0 and slot.base_gfn & (pages - 1):
        reasons.append(f"the slot starts at gfn {slot.base_gfn:#x}, inside {page}")
    if index == last and slot.end_gfn & (pages - 1):
        reasons.append(f"the slot ends at gfn {slot.end_gfn:#x}, inside {page}")
    host_bits = (slot.userspace_addr >> PAGE_SHIFT) & (pages - 1)
    if (slot.base_gfn ^ (slot.userspace_addr >> PAGE_SHIFT)) & (pages - 1):
        reasons.append(
            f"gfn and host address disagree modulo {size}: base_gfn "
            f"{slot.base_gfn:#x} has low bits {slot.base_gfn & (pages - 1):#x}, "
            f"userspace_addr {slot.userspace_addr:#x} has {host_bits:#x} "
            f"(no host {size} page could back it)")
    extra = count - (1 if reasons else 0)
    if extra > 0:
        reasons.append(f"kvm_mmu_gfn_disallow_lpage() was called {extra} time(s) "
                       f"for this {size} page (e.g. it holds a shadowed guest page "
                       "table)")
    return reasons


@dataclass
class LevelDecision:
    """What KVM decided for one gfn, and why, step by step."""

    gfn: int
    slot_id: int
    hva: int
    ret: str
    level: int
    host_level: int
    slot_level: int
    pfn: int | None
    mapped_pfn: int | None
    steps: list = field(default_factory=list)   # (what, verdict) pairs

    def text(self, wrap: bool = True) -> str:
        """The decision, one step a line (wrapped to :data:`WIDTH` columns)."""
        check_bool("wrap", wrap)
        head = f"gfn {self.gfn:#x} -> {level_name(self.level)} ({self.ret})"
        return _steps_text(head, self.steps, wrap)


def _slot_steps(kvm, slot, gfn: int, cap: int) -> tuple[int, list]:
    # The slot's part: dirty logging, then lpage_info level by level.
    if kvm_slot_dirty_track_enabled(slot):
        return PG_LEVEL_4K, [("dirty logging",
                              "on for this slot: every mapping is 4K")]
    steps, level = [], cap
    while level > PG_LEVEL_4K:
        name = f"lpage_info {level_name(level)}"
        reasons = lpage_disallow_reasons(slot, gfn, level)
        if not reasons:
            steps.append((name, "disallow_lpage == 0: allowed"))
            break
        count = lpage_info_slot(gfn, slot, level)
        steps.append((name, f"disallow_lpage == {count}: " + "; ".join(reasons)))
        level -= 1
    return level, steps


def _pfn_step(gfn: int, level: int, host_pfn: int, mapped) -> tuple:
    if level == PG_LEVEL_4K:
        return ("pfn", f"gup gives pfn {host_pfn:#x}; KVM maps gfn {gfn:#x} -> "
                       f"pfn {mapped:#x}")
    mask = KVM_PAGES_PER_HPAGE(level) - 1
    head = gfn_round_for_level(gfn, level)
    return ("pfn", f"gup gives pfn {host_pfn:#x}; the low bits agree "
                   f"(gfn & {mask:#x} = {gfn & mask:#x} = pfn & {mask:#x}), so KVM "
                   f"maps gfn {head:#x} -> pfn {mapped:#x}, "
                   f"one {level_name(level)} page")


def explain_mapping_level(kvm, gfn: int, *, exec: bool = False) -> LevelDecision:
    """Run a fault on ``gfn`` (vCPU 0, one CPU) and explain the level it mapped.

    The level comes from the model's fault path (``kvm_mmu_do_page_fault``);
    the explanation re-reads the same inputs (slot rules, the host walk the
    fault made, the pfn) to say *why*.  ``exec`` makes the fault an
    instruction fetch (with the VM's ``nx_huge_pages``, that maps 4K).
    """
    slot = _slot_of(kvm, gfn)
    check_bool("exec", exec)
    hva = __gfn_to_hva_memslot(slot, gfn)
    steps = [("memslot", f"slot {slot.id} holds gfns [{slot.base_gfn:#x}, "
                         f"{slot.end_gfn:#x}); gfn {gfn:#x} is at host address "
                         f"{hva:#x}")]
    error_code = PFERR_GUEST_FINAL_MASK | (PFERR_FETCH_MASK if exec else 0)
    kvm.mm.mem.reads.clear()
    ret, level = run_alone(kvm, kvm_mmu_do_page_fault(
        KvmVcpu(kvm, 0), gfn << PAGE_SHIFT, error_code, False))
    reads = list(kvm.mm.mem.reads)
    cap = kvm.max_huge_page_level
    steps.append(("start", f"at most {level_name(cap)} (max_huge_page_level)"))
    slot_level, more = _slot_steps(kvm, slot, gfn, cap)
    steps += more
    found = host_translation(kvm.mm, hva)
    host_level = PG_LEVEL_4K if found is None else found[1]
    if slot_level == PG_LEVEL_4K:
        steps.append(("host walk", "skipped: the slot allows only 4K"))
    elif reads:
        walked = ", ".join(
            f"{TABLE_NAMES[lv]}[{ptr.index}] = {describe_entry(v, lv)}"
            for ptr, lv, v in reads)
        steps.append(("host walk", f"{walked} -> the host maps it "
                                   f"{level_name(host_level)}"))
    nx = exec and kvm.config.nx_huge_pages
    if nx:
        steps.append(("NX huge pages", "exec fault, iTLB multihit workaround: 4K"))
    leaf = kvm_leaf_of(kvm, gfn)
    mapped = None
    if leaf is not None:
        mapped = leaf[1] - (gfn & (KVM_PAGES_PER_HPAGE(leaf[0]) - 1))
    if found is not None and mapped is not None:
        steps.append(_pfn_step(gfn, level, found[0], mapped))
    mins = f"min(slot {level_name(slot_level)}, host {level_name(host_level)})"
    steps.append(("result", f"{level_name(level)} = {mins}"
                            + (", then 4K for NX" if nx else "")))
    return LevelDecision(gfn, slot.id, hva, ret_pf_name(ret), level, host_level,
                         slot_level, None if found is None else found[0], mapped,
                         steps)


# --------------------------------------------------------------------------
# The widget

#: The widget's start: a 4 MiB slot at 4 GiB, THP-backed, gfn 0x123 pages in.
DEFAULTS = dict(gfn="0x100123", base_gfn="0x100000", npages="0x400",
                userspace_addr="0x7f0000000000", backing="2M", event="none",
                dirty_logging=False, shadowed=False, exec_nx=False)

_TD = 'style="padding:2px 8px;vertical-align:top;overflow-wrap:anywhere"'


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
            return ('<div class="kvmmu-hostlevel-view"><b style="color:#b00">'
                    f"error:</b> {esc(self.error)}</div>")
        rows = "".join(f"<tr><td {_TD}><b>{esc(w)}</b></td><td {_TD}>{esc(v)}</td>"
                       "</tr>" for w, v in self.steps)
        level = f'<b class="kvmmu-hostlevel-level">{esc(self.level)}</b>'
        return ('<div class="kvmmu-hostlevel-view"><div style="font-size:120%">'
                f"KVM maps it at {level} ({esc(self.ret)})</div>"
                f'<table style="margin-top:0.5em">{rows}</table></div>')

    def __str__(self) -> str:
        if self.error is not None:
            return "\n".join(textwrap.wrap(f"error: {self.error}", WIDTH,
                                           subsequent_indent="  "))
        return _steps_text(f"KVM maps it at {self.level} ({self.ret})", self.steps)


def _safe_str(obj, limit: int = 80) -> str:
    try:
        return str(obj)[:limit]
    except Exception:  # an object whose __str__ fails still gets a view
        return f"<{type(obj).__name__}>"


def _number(name: str, value, lo: int, hi: int) -> int:
    # Text as a user types it, or an int from Python.
    if isinstance(value, str):
        return parse_int_text(name, value, lo, hi)
    return check_int(name, value, lo, hi)


def host_mapping_view(gfn=DEFAULTS["gfn"], base_gfn=DEFAULTS["base_gfn"],
                      npages=DEFAULTS["npages"],
                      userspace_addr=DEFAULTS["userspace_addr"],
                      backing=DEFAULTS["backing"], event=DEFAULTS["event"],
                      dirty_logging=False, shadowed=False,
                      exec_nx=False) -> HostMappingView:
    """Say at which level KVM maps ``gfn`` and why; never raises.

    Numbers are text (decimal, ``0x`` hex, ``0b``) or ints; ``backing`` is
    ``"4K"``, ``"2M"`` or ``"1G"``; ``event`` is a key of
    ``kvmmu.scenarios.host_level.HOST_EVENTS``; ``exec_nx`` makes the fault
    an instruction fetch with the NX-huge-page workaround on.  Bad input
    gives a view whose ``error`` says what is wrong.
    """
    inputs = tuple((k, _safe_str(v)) for k, v in (
        ("gfn", gfn), ("base_gfn", base_gfn), ("npages", npages),
        ("userspace_addr", userspace_addr), ("backing", backing), ("event", event),
        ("dirty_logging", dirty_logging), ("shadowed", shadowed),
        ("exec_nx", exec_nx)))
    try:
        gfn_v = _number("gfn", gfn, 0, GFN_MAX)
        base_v = _number("base_gfn", base_gfn, 0, GFN_MAX)
        npages_v = _number("npages", npages, 1, GFN_MAX + 1)
        ua_v = _number("userspace_addr", userspace_addr, 0, HVA_MAX)
        if backing not in BACKINGS:
            raise ValueError(f"backing must be one of {', '.join(BACKINGS)}; "
                             f"got {backing!r}")
        if event not in HOST_EVENTS:
            raise ValueError(f"event must be one of {', '.join(HOST_EVENTS)}; "
                             f"got {event!r}")
        for name, flag in (("dirty_logging", dirty_logging), ("shadowed", shadowed),
                           ("exec_nx", exec_nx)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        kvm = make_host_vm(base_v, npages_v, ua_v, backing, gfn_v, event=event,
                           dirty_logging=dirty_logging, shadowed=shadowed,
                           nx_huge_pages=exec_nx)
        decision = explain_mapping_level(kvm, gfn_v, exec=exec_nx)
        return HostMappingView(inputs, None, level_name(decision.level),
                               decision.ret, tuple(decision.steps))
    except (TypeError, ValueError) as exc:
        return HostMappingView(inputs, str(exc), None, None)
    except Exception as exc:  # a widget must never raise; say what happened instead
        why = f"internal error: {type(exc).__name__}: {exc}"
        return HostMappingView(inputs, why, None, None)


def host_mapping_widget(**initial):
    """The host-mapping explorer: a thin shell over :func:`host_mapping_view`."""
    import ipywidgets as W

    values = dict(DEFAULTS)
    unknown = set(initial) - set(values)
    if unknown:
        raise TypeError(f"host_mapping_widget got unknown arguments "
                        f"{sorted(unknown)}; known: {', '.join(values)}")
    values.update(initial)
    texts = {}
    labels = {"gfn": "gfn", "base_gfn": "slot base gfn", "npages": "slot npages",
              "userspace_addr": "slot host addr"}
    for name, label in labels.items():
        w = W.Text(value=str(values[name]), description=label,
                   continuous_update=False, style={"description_width": "7.5em"},
                   layout=W.Layout(width="20em"))
        w.add_class(f"kvmmu-hostlevel-{name.replace('_', '-')}")
        texts[name] = w
    backing = W.ToggleButtons(options=list(BACKINGS), value=values["backing"],
                              description="host backing",
                              style={"description_width": "7.5em",
                                     "button_width": "4em"})
    backing.add_class("kvmmu-hostlevel-backing")
    event = W.Dropdown(options=list(HOST_EVENTS), value=values["event"],
                       description="then", style={"description_width": "7.5em"},
                       layout=W.Layout(width="30em"))
    event.add_class("kvmmu-hostlevel-event")
    flags = {}
    for name, label in (("dirty_logging", "dirty logging on the slot"),
                        ("shadowed", "the gfn holds a shadowed guest page table"),
                        ("exec_nx", "exec fault, NX huge pages on")):
        w = W.Checkbox(value=values[name], description=label, indent=False,
                       layout=W.Layout(width="auto"))
        w.add_class(f"kvmmu-hostlevel-{name.replace('_', '-')}")
        flags[name] = w
    out = W.HTML()
    out.add_class("kvmmu-hostlevel-out")

    def refresh(*_):
        out.value = host_mapping_view(
            **{k: w.value for k, w in texts.items()}, backing=backing.value,
            event=event.value, **{k: w.value for k, w in flags.items()}).html()

    for w in [*texts.values(), backing, event, *flags.values()]:
        w.observe(refresh, names="value")
    refresh()
    box = W.VBox([W.HBox([texts["gfn"], texts["npages"]]),
                  W.HBox([texts["base_gfn"], texts["userspace_addr"]]),
                  backing, event, *flags.values(), out],
                 layout=W.Layout(max_width="100%"))
    box.add_class("kvmmu-hostlevel-widget")
    return box


# --------------------------------------------------------------------------
# The figure: the host page tables of a memslot, with the walks drawn on them

#: Walk colours, one per gfn walked.
WALK_COLOURS = ("#d9480f", "#1c7ed6", "#2b8a3e")


def host_walk_data(kvm, gfns, max_rows: int = 5) -> dict:
    """Run ``host_pfn_mapping_level`` for each of ``gfns``: what the figure draws.

    ``tables``: every live table that maps the slot's host range, top down,
    each with rows ``(index, text, walks)`` where ``walks`` lists which of
    the walks read that entry; a table with more than ``max_rows`` rows
    keeps its first two, its last, and the rows a walk read (``hidden``
    counts the rest).  ``walks``: per gfn its hva, result and the
    ``(table pfn, index)`` it read.
    """
    gfns = [gfns] if isinstance(gfns, int) else list(gfns)
    if not 1 <= len(gfns) <= len(WALK_COLOURS):
        raise ValueError(f"gfns must hold 1 to {len(WALK_COLOURS)} gfns, "
                         f"got {len(gfns)}")
    check_int("max_rows", max_rows, 3, 32)
    slots, walks = [], []
    for gfn in gfns:
        slot = _slot_of(kvm, gfn)
        if slots and slot != slots[0]:
            raise ValueError("all gfns must be in the same memslot")
        slots.append(slot)
        kvm.mm.mem.reads.clear()
        level = run_alone(kvm, host_pfn_mapping_level(kvm, gfn, slot))
        path = [(ptr.pfn, ptr.index) for ptr, _, _ in kvm.mm.mem.reads]
        walks.append({"gfn": gfn, "hva": __gfn_to_hva_memslot(slot, gfn),
                      "level": level_name(level), "path": path})
    slot = slots[0]
    end = slot.userspace_addr + (slot.npages << PAGE_SHIFT)
    tables = []
    for t in table_tree(kvm.mm, slot.userspace_addr, end):
        rows = [(index, text, [n for n, w in enumerate(walks)
                               if (t["table"], index) in w["path"]])
                for index, text, _hva in t["entries"]]
        hidden = 0
        if len(rows) > max_rows:
            keep = {0, 1, len(rows) - 1} | {k for k, r in enumerate(rows) if r[2]}
            hidden = len(rows) - len(keep)
            rows = [r for k, r in enumerate(rows) if k in keep]
        tables.append({"pfn": t["table"], "name": t["level"], "rows": rows,
                       "hidden": hidden})
    return {"slot": (slot.id, slot.base_gfn, slot.end_gfn, slot.userspace_addr),
            "tables": tables, "walks": walks}


def host_walk_text(data: dict) -> str:
    """The figure's data as text, one line per walk and per entry shown."""
    sid, base, end, ua = data["slot"]
    lines = [f"memslot {sid}: gfns [{base:#x}, {end:#x}) at host {ua:#x}"]
    for n, w in enumerate(data["walks"]):
        path = " -> ".join(f"{pfn:#x}[{index}]" for pfn, index in w["path"])
        lines.append(f"walk {n}: gfn {w['gfn']:#x} reads {path}: {w['level']}")
    for t in data["tables"]:
        more = f", {t['hidden']} more not shown" if t["hidden"] else ""
        lines.append(f"{t['name']} table @{t['pfn']:#x}{more}")
        for index, text, read_by in t["rows"]:
            who = (f"   <- read by walk {', '.join(map(str, read_by))}"
                   if read_by else "")
            lines.append(f"  [{index:3d}] {text}{who}")
    return "\n".join(lines)


def host_walk_figure(kvm, gfns):
    """Draw the host page tables of ``gfns``' memslot and each walk on them.

    Drawn for the book's column (:func:`kvmmu.viz.style.column_figure`): the
    tables step down and to the right, one level per step, each entry a row
    with a dot for every walk that read it.  Returns the Figure.
    """
    from matplotlib.patches import FancyArrowPatch, Rectangle

    from .style import column_figure

    data = host_walk_data(kvm, gfns)
    tables = data["tables"]
    indent, width, row, head, gap = 1.25, 3.1, 0.22, 0.24, 0.16   # inches
    placed, rows_at, y = {}, {}, 0.0
    for depth, t in enumerate(tables):
        nrows = len(t["rows"]) + (1 if t["hidden"] else 0)
        placed[t["pfn"]] = (min(depth, 3) * indent, y)
        y -= head + row * nrows + gap
    height = -y + 0.1
    fig = column_figure(height)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, fig.get_figwidth())
    ax.set_ylim(-height, 0.05)
    ax.axis("off")
    for t in tables:
        x, top = placed[t["pfn"]]
        ax.add_patch(Rectangle((x, top - head), width, head, facecolor="#495057"))
        never = "   (never read)" if t["name"] == "PTE" else ""
        ax.text(x + 0.06, top - head / 2,
                f"{t['name']} table @{t['pfn']:#x}{never}", va="center", fontsize=8,
                color="white", fontweight="bold")
        yy = top - head
        for k, (index, text, read_by) in enumerate(t["rows"]):
            if t["hidden"] and k == 2:
                ax.text(x + 0.06, yy - row / 2, f"... {t['hidden']} more entries",
                        va="center", fontsize=8, color="#555555")
                yy -= row
            ax.add_patch(Rectangle((x, yy - row), width, row,
                                   facecolor="#fff3bf" if read_by else "#f8f9fa",
                                   edgecolor="#868e96", linewidth=0.5))
            ax.text(x + 0.06, yy - row / 2, f"[{index}] {text}", va="center",
                    fontsize=8)
            for n in read_by:
                ax.plot([x + width - 0.14 - 0.16 * n], [yy - row / 2], marker="o",
                        markersize=5.5, color=WALK_COLOURS[n])
            rows_at[(t["pfn"], index)] = (x, yy - row / 2)
            yy -= row
    for t in tables:
        for index, text, _ in t["rows"]:
            child = int(text.rsplit("@", 1)[1], 16) if "table @" in text else None
            if child in placed and (t["pfn"], index) in rows_at:
                # Out of the entry's right end, then down onto the table it names.
                x0, y0 = rows_at[(t["pfn"], index)]
                ax.add_patch(FancyArrowPatch(
                    (x0 + width, y0), (x0 + width + 0.3, placed[child][1]),
                    connectionstyle="angle,angleA=0,angleB=90", arrowstyle="-|>",
                    mutation_scale=8, color="#868e96", linewidth=0.8))
    for n, w in enumerate(data["walks"]):       # the legend, right of the top table
        ax.plot([width + 0.8], [-0.14 - 0.24 * n], marker="o", markersize=5.5,
                color=WALK_COLOURS[n])
        ax.text(width + 0.95, -0.14 - 0.24 * n,
                f"walk {n}: gfn {w['gfn']:#x} -> host level {w['level']}",
                va="center", fontsize=8)
    ax.text(0.05, -height + 0.12, "Each walk reads one entry per level and stops\n"
            "at a leaf.  A PMD entry that points to a PTE\n"
            "table means 4K: the walk never reads that table.", fontsize=8,
            color="#343a40", va="bottom")
    return fig


# --------------------------------------------------------------------------
# The chapter's table of verdicts

def verdict_table(rows) -> str:
    """Lay out :func:`kvmmu.scenarios.host_level.verdicts` rows as a text table.

    One line per scenario: its name, the CPUs, what its KVM side leaves out,
    the verdict (with the check that broke) and the states searched.
    """
    rows = list(rows)
    head = (f"{'scenario':24} {'CPUs':>4}  {'leaves out':26} {'verdict':14} "
            f"{'states':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        verdict = "holds" if not r.violated else {
            "no bad page-table read": "BAD READ",
            "KVM maps what the host maps": "STALE MAPPING",
        }.get(r.invariant, "VIOLATED")
        lines.append(f"{r.name:24} {r.cpus:4d}  {r.omits:26} {verdict:14} "
                     f"{r.states:6d}")
    return "\n".join(lines)


def check_line(result) -> str:
    """One exhaustive check in a line or two: its scenario, verdict and counts.

    ``result`` is what :func:`kvmmu.explorer.explore` returned; the counts
    say which search they come from (full or partial-order reduced).
    """
    verdict = f"VIOLATED ({result.invariant})" if result.violated else "holds"
    how = "exhaustive" if result.exhaustive else "to the first violation"
    text = (f"{result.scenario}: {verdict}; {result.states} states, "
            f"{result.transitions} transitions, {result.search} search, {how}")
    return "\n".join(textwrap.wrap(text, WIDTH, subsequent_indent="    "))
