"""Views of chapter 2: the host-mapping explorer widget and the host page-table walk figure.

``explain_mapping_level(kvm, gfn)`` runs a fault on one CPU and says why
it mapped the level it did (the widget, the exercises and the chapter use
it); ``host_mapping_view(...)`` is the pure function behind the widget: it
never raises, and returns a :class:`HostMappingView` (the level KVM picks
and the reason at each step, or an error message) with ``.html()``.
``host_mapping_widget()`` only wires ipywidgets controls to it.
``host_walk_data(kvm, gfns)`` is what ``host_walk_figure`` draws: the host
page tables on the path of each gfn's host address, with the entries
``host_pfn_mapping_level`` read.
"""
import html as _html
from dataclasses import dataclass, field

from ..checks import check_bool, check_int, parse_int_text
from ..cpu import run_alone
from ..errno import ret_pf_name
from ..host_mm import BACKINGS, TABLE_NAMES, describe_entry, host_translation, table_tree
from ..kvm_host import Kvm, KvmVcpu
from ..levels import (KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K,
                      gfn_round_for_level, level_name)
from ..memslots import (GFN_MAX, HVA_MAX, KvmMemorySlot, __gfn_to_hva_memslot,
                        __kvm_mmu_slot_lpages, gfn_to_index, kvm_slot_dirty_track_enabled,
                        lpage_info_slot)
from ..mmu import kvm_mmu_do_page_fault
from ..mmu_internal import host_pfn_mapping_level
from ..pferr import PFERR_FETCH_MASK, PFERR_GUEST_FINAL_MASK
from ..scenarios.host_level import HOST_EVENTS, kvm_leaf_of, make_host_vm

__all__ = ["lpage_disallow_reasons", "LevelDecision", "explain_mapping_level", "DEFAULTS",
           "HostMappingView", "host_mapping_view", "host_mapping_widget", "WALK_COLOURS",
           "host_walk_data", "host_walk_text", "host_walk_figure"]


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
    """Say why ``gfn``'s huge page at ``level`` is disallowed in ``slot`` (empty: allowed)."""
    check_int("level", level, PG_LEVEL_2M, PG_LEVEL_1G)
    count = lpage_info_slot(gfn, slot, level)       # checks slot and gfn
    pages = KVM_PAGES_PER_HPAGE(level)
    size = level_name(level)
    index = gfn_to_index(gfn, slot.base_gfn, level)
    last = __kvm_mmu_slot_lpages(slot.base_gfn, slot.npages, level) - 1
    head = gfn_round_for_level(gfn, level)
    reasons = []
    if index == 0 and slot.base_gfn & (pages - 1):
        reasons.append(f"the slot starts at gfn {slot.base_gfn:#x}, inside the {size} page "
                       f"[{head:#x}, {head + pages:#x})")
    if index == last and slot.end_gfn & (pages - 1):
        reasons.append(f"the slot ends at gfn {slot.end_gfn:#x}, inside the {size} page "
                       f"[{head:#x}, {head + pages:#x})")
    host_pfn_bits = (slot.userspace_addr >> PAGE_SHIFT) & (pages - 1)
    if (slot.base_gfn ^ (slot.userspace_addr >> PAGE_SHIFT)) & (pages - 1):
        reasons.append(
            f"gfn and host address disagree modulo {size}: base_gfn {slot.base_gfn:#x} has low "
            f"bits {slot.base_gfn & (pages - 1):#x}, userspace_addr {slot.userspace_addr:#x} "
            f"has {host_pfn_bits:#x} (no host {size} page could back it)")
    extra = count - (1 if reasons else 0)
    if extra > 0:
        reasons.append(f"kvm_mmu_gfn_disallow_lpage() was called {extra} time(s) for this "
                       f"{size} page (e.g. it holds a shadowed guest page table)")
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

    def text(self) -> str:
        lines = [f"gfn {self.gfn:#x} -> {level_name(self.level)} ({self.ret})"]
        lines += [f"  {what}: {verdict}" for what, verdict in self.steps]
        return "\n".join(lines)


def _slot_steps(kvm, slot, gfn: int, cap: int) -> tuple[int, list]:
    # The slot's part of the decision: dirty logging, then lpage_info level by level.
    if kvm_slot_dirty_track_enabled(slot):
        return PG_LEVEL_4K, [("dirty logging", "on for this slot: every mapping is 4K")]
    steps, level = [], cap
    while level > PG_LEVEL_4K:
        reasons = lpage_disallow_reasons(slot, gfn, level)
        if not reasons:
            steps.append((f"lpage_info {level_name(level)}", "disallow_lpage == 0: allowed"))
            break
        steps.append((f"lpage_info {level_name(level)}",
                      f"disallow_lpage == {lpage_info_slot(gfn, slot, level)}: "
                      + "; ".join(reasons)))
        level -= 1
    return level, steps


def _pfn_step(gfn: int, level: int, host_pfn: int, mapped) -> tuple:
    if level == PG_LEVEL_4K:
        return ("pfn", f"gup gives pfn {host_pfn:#x}; KVM maps gfn {gfn:#x} -> pfn {mapped:#x}")
    mask = KVM_PAGES_PER_HPAGE(level) - 1
    return ("pfn", f"gup gives pfn {host_pfn:#x}; low bits agree (gfn & {mask:#x} = "
                   f"{gfn & mask:#x} = pfn & {mask:#x}), so KVM maps gfn "
                   f"{gfn_round_for_level(gfn, level):#x} -> pfn {mapped:#x}, one "
                   f"{level_name(level)} page")


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
    steps = [("memslot", f"slot {slot.id} holds gfns [{slot.base_gfn:#x}, {slot.end_gfn:#x}); "
                         f"gfn {gfn:#x} is at host address {hva:#x}")]
    error_code = PFERR_GUEST_FINAL_MASK | (PFERR_FETCH_MASK if exec else 0)
    kvm.mm.mem.reads.clear()
    ret, level = run_alone(kvm, kvm_mmu_do_page_fault(KvmVcpu(kvm, 0), gfn << PAGE_SHIFT,
                                                      error_code, False))
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
        walked = ", ".join(f"{TABLE_NAMES[lv]}[{ptr.index}] = {describe_entry(v, lv)}"
                           for ptr, lv, v in reads)
        steps.append(("host walk", f"{walked} -> host maps it at {level_name(host_level)}"))
    nx = exec and kvm.config.nx_huge_pages
    if nx:
        steps.append(("NX huge pages", "exec fault with the iTLB-multihit workaround: 4K"))
    leaf = kvm_leaf_of(kvm, gfn)
    mapped = None if leaf is None else leaf[1] - (gfn & (KVM_PAGES_PER_HPAGE(leaf[0]) - 1))
    if found is not None and mapped is not None:
        steps.append(_pfn_step(gfn, level, found[0], mapped))
    steps.append(("result", f"{level_name(level)} = min(slot {level_name(slot_level)}, "
                            f"host {level_name(host_level)})" + (", then 4K for NX" if nx else "")))
    return LevelDecision(gfn, slot.id, hva, ret_pf_name(ret), level, host_level, slot_level,
                         None if found is None else found[0], mapped, steps)


# --------------------------------------------------------------------------
# The widget

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
    ``kvmmu.scenarios.host_level.HOST_EVENTS``; ``exec_nx`` makes the fault an
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
                           dirty_logging=dirty_logging, shadowed=shadowed, nx_huge_pages=exec_nx)
        decision = explain_mapping_level(kvm, gfn_v, exec=exec_nx)
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
    gfns = [gfns] if isinstance(gfns, int) else list(gfns)
    if not 1 <= len(gfns) <= len(WALK_COLOURS):
        raise ValueError(f"gfns must hold 1 to {len(WALK_COLOURS)} gfns, got {len(gfns)}")
    check_int("max_rows", max_rows, 3, 32)
    slots = []
    walks = []
    for gfn in gfns:
        slot = _slot_of(kvm, gfn)
        if slots and slot != slots[0]:
            raise ValueError("all gfns must be in the same memslot")
        slots.append(slot)
        kvm.mm.mem.reads.clear()
        level = run_alone(kvm, host_pfn_mapping_level(kvm, gfn, slot))
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
