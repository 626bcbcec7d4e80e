"""Views of the guest page-table walk: a walk visualiser widget and the page-table tree figure.

``walk_view(...)`` is the pure function behind the widget: from a GVA, an
access, the CPU mode bits and the flag bits of each entry on the path it
builds a small guest on a VM of its own (fixed table frames), walks it with
:func:`kvmmu.viz.walk_trace.trace_walk` and returns a :class:`WalkView`: the path,
the result or the error code bit by bit, and the A/D bits before and after.
It never raises: bad input comes back as ``view.error``.  ``walk_widget()``
only wires ipywidgets controls to it.

``page_table_tree(vcpu)`` lists the tables reachable from the vCPU's CR3
(the data the figure draws); ``walk_tree_figure(vcpu, trace)`` draws that
tree with the walked path highlighted.
"""
import html as _html
from dataclasses import dataclass, field

from ..checks import parse_int_text
from ..guest import guest_page, guest_read_u64, guest_vm, guest_write_u64
from ..kvm_host import KvmVcpu
from ..memslots import KVM_MEM_READONLY
from ..mmu_permissions import KvmVcpuArch
from ..paging_tmpl import PT_BASE_ADDR_MASK, PT_INDEX, check_gva, gpte_to_gfn_lvl
from ..pferr import PFERR_FETCH_MASK, PFERR_IMPLICIT_ACCESS, PFERR_USER_MASK, PFERR_WRITE_MASK
from ..spte import (PT64_NX_MASK, PT_ACCESSED_MASK, PT_DIRTY_MASK, PT_PAGE_SIZE_MASK,
                    PT_PRESENT_MASK, PT_USER_MASK, PT_WRITABLE_MASK)
from . import walk_trace as WT
from .walk_trace import LEVEL_NAMES, access_str, acc_str, gpte_str

__all__ = ["TABLE_GFNS", "LEAF_GFNS", "HOST", "FLAG_BITS", "FLAG_ORDER", "ACCESS_KINDS",
           "PRIVILEGES", "DEFAULT_FLAGS", "WalkView", "parse_flags", "build_guest", "walk_view",
           "walk_widget", "page_table_tree", "tree_text", "walk_tree_figure"]

#: Where the widget's guest keeps its tables (level -> gfn) and its pages.
TABLE_GFNS = {5: 0x104, 4: 0x100, 3: 0x101, 2: 0x102, 1: 0x103}
LEAF_GFNS = {1: 0x455, 2: 0x600, 3: 0x40000}
HOST = 0x7F00_0000_0000

FLAG_BITS = {"P": PT_PRESENT_MASK, "W": PT_WRITABLE_MASK, "U": PT_USER_MASK,
             "A": PT_ACCESSED_MASK, "D": PT_DIRTY_MASK, "PS": PT_PAGE_SIZE_MASK,
             "NX": PT64_NX_MASK, "RSVD": 1 << 51}
FLAG_ORDER = ("P", "W", "U", "A", "D", "PS", "NX", "RSVD")
ACCESS_KINDS = {"read": 0, "write": PFERR_WRITE_MASK, "fetch": PFERR_FETCH_MASK}
PRIVILEGES = {"user": PFERR_USER_MASK, "supervisor": 0,
              "implicit supervisor": PFERR_IMPLICIT_ACCESS}
DEFAULT_FLAGS = {5: "P W U", 4: "P W U", 3: "P W U", 2: "P W U", 1: "P W U"}


@dataclass
class WalkView:
    """What the widget shows: the traced walk with entries before/after, or an error."""

    inputs: dict
    error: str | None = None
    trace: object = None                 # a kvmmu.viz.walk_trace.WalkTrace
    before: dict = field(default_factory=dict)     # level -> entry before the walk
    after: dict = field(default_factory=dict)      # level -> entry after the walk
    path: list = field(default_factory=list)       # levels written, top first

    @property
    def ok(self) -> bool:
        return self.error is None

    def text(self) -> str:
        """The view as plain text (what the checked cell prints)."""
        if self.error:
            return f"error: {self.error}"
        lines = [self.trace.table()]
        changed = [lv for lv in self.path if self.before[lv] != self.after[lv]]
        for lv in changed:
            lines.append(f"{LEVEL_NAMES[lv]}: {self.before[lv]:#x} -> {self.after[lv]:#x} "
                         f"in guest memory")
        if not changed:
            lines.append("guest memory unchanged (no A/D bit written)")
        return "\n".join(lines)

    def html(self) -> str:
        """The view as HTML (what the widget displays)."""
        if self.error:
            return (f'<div style="color:#b00020;font-family:monospace">error: '
                    f"{_html.escape(self.error)}</div>")
        t = self.trace
        td = 'style="border:1px solid #bbb;padding:2px 6px;font-family:monospace"'
        head = "".join(f"<th {td}>{h}</th>" for h in
                       ("level", "table gfn", "index", "entry before", "entry after",
                        "flags", "access so far", "note"))
        rows = []
        for i, r in enumerate(t.rows):
            last = i == len(t.rows) - 1
            colour = "#fde2e2" if last and not t.ok else "#e3f6e3" if last else "white"
            after = self.after.get(r.level, r.gpte)
            gfn = "-" if r.table_gfn is None else f"{r.table_gfn:#x}"
            cells = [r.name, gfn, str(r.index), f"{r.gpte:#018x}",
                     (f"<b>{after:#018x}</b>" if after != r.gpte else f"{after:#018x}"),
                     _html.escape(gpte_str(r.gpte)), _html.escape(acc_str(r.acc_after)),
                     _html.escape(r.note)]
            rows.append(f'<tr style="background:{colour}">'
                        + "".join(f"<td {td}>{c}</td>" for c in cells) + "</tr>")
        out = [f"<div><b>{_html.escape(t.result_line())}</b></div>",
               f'<table style="border-collapse:collapse"><tr>{head}</tr>{"".join(rows)}</table>']
        if not t.ok:
            bits = "".join(
                f"<tr><td {td}>{n}</td><td {td}>{int(s)}</td><td {td}>{_html.escape(why)}</td></tr>"
                for n, s, why in t.error_bits)
            out.append(f'<div>error code {t.error_code:#x}, bit by bit:</div>'
                       f'<table style="border-collapse:collapse">{bits}</table>')
        if t.ad_updates:
            items = "".join(
                f"<li>{LEVEL_NAMES[lv]}: {old:#x} &rarr; {new:#x}: {_html.escape(o)}</li>"
                for lv, old, new, o in t.ad_updates)
            out.append(f"<div>A/D updates (top-down):</div><ul>{items}</ul>")
        else:
            out.append("<div>No A/D update.</div>")
        return "\n".join(out)

    def _repr_html_(self):
        return self.html()

    def __repr__(self):
        return self.text()


def _safe(obj, limit: int = 60) -> str:
    try:
        text = repr(obj)
    except Exception:   # a repr that raises must not break the view
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def parse_flags(level: int, text) -> int:
    """Turn ``"P W U NX"`` into entry bits; ValueError naming the level for anything else."""
    if not isinstance(text, str):
        raise ValueError(f"flags of level {level} must be text like 'P W U', got {_safe(text)}")
    bits = 0
    for name in text.replace(",", " ").replace("|", " ").split():
        name = name.upper()
        if name not in FLAG_BITS:
            raise ValueError(f"level {level}: unknown flag {name!r}; use {' '.join(FLAG_ORDER)}")
        bits |= FLAG_BITS[name]
    return bits


def build_guest(level_flags: dict, *, la57: bool = False, tables_in_rom: bool = False,
                pkey: int = 0, gva: int = 0):
    """Build the widget's guest: a VM, and the entries on ``gva``'s path in its memory.

    Returns ``(vcpu, path)`` with ``path`` = [(level, entry gpa, entry)] from
    the top.  The walk stops being written at the first leaf (PS or level 1).
    """
    vcpu = guest_vm([(0, 0x100, HOST),
                     (0x100, 0x10, HOST + 0x100000, KVM_MEM_READONLY if tables_in_rom else 0)])
    kvm = vcpu.kvm
    top = 5 if la57 else 4
    path = []
    for level in range(top, 0, -1):
        flags = level_flags[level]
        leaf = level == 1 or flags & PT_PAGE_SIZE_MASK
        target = LEAF_GFNS.get(level, 0) if leaf else TABLE_GFNS[level - 1]
        entry = flags | (target << 12)
        if leaf:
            entry |= (pkey & 0xF) << 59
        gpa = (TABLE_GFNS[level] << 12) + 8 * PT_INDEX(gva, level)
        guest_write_u64(kvm, gpa, entry, vmm=True)
        path.append((level, gpa, entry))
        if leaf:
            break
    return vcpu, path


def walk_view(gva_text="0x7fff12345678", access: str = "read", privilege: str = "user", *,
              cr0_wp=True, cr4_smep=False, cr4_smap=False, efer_nx=True, eflags_ac=False,
              cr4_pke=False, cr4_la57=False, pkru_text="0", pkey=0, level_flags=None,
              tables_in_rom=False) -> WalkView:
    """Walk a GVA through a small guest whose path entries carry ``level_flags``; never raises.

    ``level_flags``: {level: "P W U A D PS NX RSVD" subset}; missing levels
    get ``"P W U"``.  ``access``: read/write/fetch; ``privilege``: user,
    supervisor or implicit supervisor.  ``pkey`` is the leaf's protection
    key; ``pkru_text`` the PKRU value.
    """
    inputs = dict(gva_text=gva_text, access=access, privilege=privilege, cr0_wp=cr0_wp,
                  cr4_smep=cr4_smep, cr4_smap=cr4_smap, efer_nx=efer_nx, eflags_ac=eflags_ac,
                  cr4_pke=cr4_pke, cr4_la57=cr4_la57, pkru_text=pkru_text, pkey=pkey,
                  level_flags=level_flags if level_flags is not None else {},
                  tables_in_rom=tables_in_rom)
    try:
        gva = parse_int_text("GVA", gva_text if isinstance(gva_text, str) else _safe(gva_text),
                             0, (1 << 64) - 1)
        if access not in ACCESS_KINDS:
            raise ValueError(f"access must be one of {', '.join(ACCESS_KINDS)}; got {_safe(access)}")
        if privilege not in PRIVILEGES:
            raise ValueError(f"privilege must be one of {', '.join(PRIVILEGES)}; got {_safe(privilege)}")
        if access == "fetch" and privilege == "implicit supervisor":
            raise ValueError("an implicit supervisor access is a data access, not a fetch")
        for name, value in (("CR0.WP", cr0_wp), ("CR4.SMEP", cr4_smep), ("CR4.SMAP", cr4_smap),
                            ("EFER.NX", efer_nx), ("EFLAGS.AC", eflags_ac), ("CR4.PKE", cr4_pke),
                            ("CR4.LA57", cr4_la57), ("tables in ROM", tables_in_rom)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {_safe(value)}")
        pkru = parse_int_text("PKRU", pkru_text if isinstance(pkru_text, str) else _safe(pkru_text),
                              0, 0xFFFF_FFFF)
        if isinstance(pkey, bool) or not isinstance(pkey, int) or not 0 <= pkey <= 15:
            raise ValueError(f"pkey must be an integer in [0, 15], got {_safe(pkey)}")
        if not isinstance(inputs["level_flags"], dict):
            raise ValueError("level_flags must be a dict {level: 'P W U ...'}")
        top = 5 if cr4_la57 else 4
        unknown = [lv for lv in inputs["level_flags"] if lv not in range(1, top + 1)]
        if unknown:
            raise ValueError(f"level_flags has levels {unknown}; {top}-level paging has levels 1..{top}")
        flags = {lv: parse_flags(lv, inputs["level_flags"].get(lv, DEFAULT_FLAGS[lv]))
                 for lv in range(1, top + 1)}
        arch = KvmVcpuArch(cr3=TABLE_GFNS[top] << 12, cr4_la57=cr4_la57, cr0_wp=cr0_wp,
                           cr4_smep=cr4_smep, cr4_smap=cr4_smap, cr4_pke=cr4_pke,
                           efer_nx=efer_nx, eflags_ac=eflags_ac, pkru=pkru)
        check_gva(arch.walk_mmu, gva)
        vcpu, path = build_guest(flags, la57=cr4_la57, tables_in_rom=tables_in_rom, pkey=pkey,
                                 gva=gva)
        vcpu.arch = arch
        before = {lv: value for lv, _gpa, value in path}
        trace = WT.trace_walk(vcpu, gva, ACCESS_KINDS[access] | PRIVILEGES[privilege])
        after = {lv: guest_read_u64(vcpu.kvm, gpa) for lv, gpa, _v in path}
        return WalkView(inputs, None, trace, before, after, [lv for lv, _g, _v in path])
    except (ValueError, TypeError) as exc:
        return WalkView(inputs, str(exc))
    except Exception as exc:       # the widget must never raise
        return WalkView(inputs, f"internal error: {type(exc).__name__}: {exc}")


def walk_widget(gva_text: str = "0x7fff12345678", **initial):
    """Return the walk visualiser: GVA, access, CPU mode bits and editable entry bits per level.

    A thin shell over :func:`walk_view`; the HTML under the controls is
    exactly ``walk_view(...).html()``.
    """
    import ipywidgets as wd

    start = walk_view(gva_text, **initial).inputs
    layout = wd.Layout(width="auto")
    gva = wd.Text(value=gva_text, description="GVA", layout=wd.Layout(width="260px"))
    access = wd.ToggleButtons(options=list(ACCESS_KINDS), value=start["access"], description="access")
    privilege = wd.Dropdown(options=list(PRIVILEGES), value=start["privilege"],
                            description="mode", layout=wd.Layout(width="260px"))
    cpu = {name: wd.Checkbox(value=start[key], description=name, indent=False, layout=layout)
           for name, key in (("CR0.WP", "cr0_wp"), ("CR4.SMEP", "cr4_smep"),
                             ("CR4.SMAP", "cr4_smap"), ("EFER.NX", "efer_nx"),
                             ("EFLAGS.AC", "eflags_ac"), ("CR4.PKE", "cr4_pke"),
                             ("CR4.LA57", "cr4_la57"), ("tables in ROM", "tables_in_rom"))}
    pkru = wd.Text(value=start["pkru_text"], description="PKRU", layout=wd.Layout(width="200px"))
    pkey = wd.BoundedIntText(value=start["pkey"], min=0, max=15, description="leaf pkey",
                             layout=wd.Layout(width="160px"))
    boxes = {}
    rows = []
    for level in (5, 4, 3, 2, 1):
        chosen = set(start["level_flags"].get(level, DEFAULT_FLAGS[level]).upper().split())
        boxes[level] = {f: wd.Checkbox(value=f in chosen, description=f, indent=False,
                                       layout=wd.Layout(width="62px"))
                        for f in FLAG_ORDER}
        for f, box in boxes[level].items():
            box.add_class(f"kvmmu-walk-l{level}-{f.lower()}")
        rows.append(wd.HBox([wd.Label(LEVEL_NAMES[level], layout=wd.Layout(width="60px"))]
                            + list(boxes[level].values())))
    out = wd.HTML()

    def refresh(_change=None):
        flags = {lv: " ".join(f for f, box in boxes[lv].items() if box.value)
                 for lv in (5, 4, 3, 2, 1) if lv < 5 or cpu["CR4.LA57"].value}
        rows[0].layout.display = "" if cpu["CR4.LA57"].value else "none"
        view = walk_view(gva.value, access.value, privilege.value,
                         cr0_wp=cpu["CR0.WP"].value, cr4_smep=cpu["CR4.SMEP"].value,
                         cr4_smap=cpu["CR4.SMAP"].value, efer_nx=cpu["EFER.NX"].value,
                         eflags_ac=cpu["EFLAGS.AC"].value, cr4_pke=cpu["CR4.PKE"].value,
                         cr4_la57=cpu["CR4.LA57"].value, pkru_text=pkru.value, pkey=pkey.value,
                         level_flags=flags, tables_in_rom=cpu["tables in ROM"].value)
        out.value = view.html()

    # CSS classes let the browser tests find each control.
    for control, name in ((gva, "gva"), (access, "access"), (privilege, "mode"), (pkru, "pkru"),
                          (pkey, "pkey"), (out, "out")):
        control.add_class(f"kvmmu-walk-{name}")
    controls = [gva, access, privilege, pkru, pkey, *cpu.values()]
    for c in controls:
        c.observe(refresh, names="value")
    for level in boxes:
        for box in boxes[level].values():
            box.observe(refresh, names="value")
    refresh()
    box = wd.VBox([wd.HBox([gva, privilege]), access,
                   wd.HBox(list(cpu.values())), wd.HBox([pkru, pkey]),
                   wd.HTML("<b>entry bits on the path</b> (RSVD = bit 51, above MAXPHYADDR 46)"),
                   *rows, out])
    box.add_class("kvmmu-walk-widget")
    return box


# --------------------------------------------------------------------------
# The page-table tree.
# --------------------------------------------------------------------------
def _present_entries(kvm, gfn: int, max_entries: int) -> list:
    # The present entries of the table at gfn, lowest index first (the guest's view).
    try:
        pfn = guest_page(kvm, gfn)
    except ValueError:                      # a table outside every memslot
        return []
    if pfn is None:
        return []
    entries = []
    for index in range(512):
        value = kvm.mm.mem.read_data(pfn, 8 * index)
        if value & PT_PRESENT_MASK:
            entries.append((index, value))
            if len(entries) == max_entries:
                break
    return entries


def page_table_tree(vcpu: KvmVcpu, max_entries: int = 6) -> list:
    """The tables reachable from the vCPU's CR3: [(level, table gfn, [(index, entry)])], top first.

    Lists the present entries of each table (at most ``max_entries`` per
    table, lowest index first) and follows every non-leaf one.  The guest's
    own view of memory is read (no A/D bits are touched).
    """
    arch = vcpu.arch
    top = arch.root_level
    out = []
    frontier = [(top, arch.cr3 >> 12)]
    while frontier:
        level, gfn = frontier.pop(0)
        entries = _present_entries(vcpu.kvm, gfn, max_entries)
        out.append((level, gfn, entries))
        for _index, value in entries:
            if level > 1 and not value & PT_PAGE_SIZE_MASK and not value & (1 << 51):
                frontier.append((level - 1, (value & PT_BASE_ADDR_MASK) >> 12))
    return out


def tree_text(tree: list, trace=None) -> str:
    """The tree as text: one line per table and entry, the walked entries marked ``<=``."""
    walked = set()
    if trace is not None:
        walked = {(r.table_gfn, r.index) for r in trace.rows}
    lines = []
    for level, gfn, entries in tree:
        lines.append(f"{LEVEL_NAMES[level]} table at gfn {gfn:#x}")
        for index, value in entries:
            mark = "  <= walked" if (gfn, index) in walked else ""
            lines.append(f"  [{index:3}] {value:#018x}  {gpte_str(value)}{mark}")
    return "\n".join(lines)


def walk_tree_figure(vcpu: KvmVcpu, trace, max_entries: int = 6):
    """Draw the page-table tree from CR3 with ``trace``'s path in red; return the Figure.

    One column per level; each table is a box listing its present entries
    (a leaf entry names the guest frame it maps); arrows join an entry to
    the table it points to.  The walked entries are filled (red for the one
    that faulted) and the walked arrows are red; a successful walk ends in
    the data page, at the right.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle

    tree = page_table_tree(vcpu, max_entries)
    tables = {(lv, gfn): entries for lv, gfn, entries in tree}
    walked = {(r.table_gfn, r.index) for r in trace.rows}
    fault_at = None if trace.ok else (trace.rows[-1].table_gfn, trace.rows[-1].index)
    top = vcpu.arch.root_level
    row_h, box_w, gap = 0.34, 2.7, 0.9
    next_free = {}
    placed = {}               # (level, gfn) -> (x, y_top)

    def child_of(level, value):
        if level == 1 or value & PT_PAGE_SIZE_MASK:
            return None
        key = (level - 1, (value & PT_BASE_ADDR_MASK) >> 12)
        return key if key in tables else None

    def place(key, y_hint):
        level, _gfn = key
        x = (top - level) * (box_w + gap)
        y = min(y_hint, next_free.get(level, 0.0))
        entries = tables[key]
        placed[key] = (x, y)
        next_free[level] = y - (len(entries) + 1) * row_h - 0.35
        for k, (_index, value) in enumerate(entries):
            child = child_of(level, value)
            if child is not None and child not in placed:
                place(child, y - (k + 1) * row_h)

    place((top, vcpu.arch.cr3 >> 12), 0.0)
    depth = -min(next_free.values())
    data_x = (top - min(lv for lv, _g in placed) + 1) * (box_w + gap) - gap / 2
    fig, ax = plt.subplots(figsize=(2.3 * (len(next_free) + 1) + 0.5, max(2.8, depth * 0.95 + 0.8)))
    entry_xy = {}
    for (level, gfn), (x, y) in placed.items():
        entries = tables[(level, gfn)]
        h = (len(entries) + 1) * row_h
        ax.add_patch(Rectangle((x, y - h), box_w, h, facecolor="#f4f4f4", edgecolor="black"))
        ax.text(x + 0.06, y - row_h / 2, f"{LEVEL_NAMES[level]} table, gfn {gfn:#x}",
                va="center", fontsize=8, fontweight="bold")
        for k, (index, value) in enumerate(entries):
            ey = y - (k + 1.5) * row_h
            if (gfn, index) in walked:
                ax.add_patch(Rectangle((x, ey - row_h / 2), box_w, row_h, edgecolor="none",
                                       facecolor="#f28482" if (gfn, index) == fault_at else "#fcbf49"))
            label = f"[{index}] {gpte_str(value)}"
            if child_of(level, value) is None:
                label += f" -> gfn {gpte_to_gfn_lvl(value, level):#x}"
            ax.text(x + 0.06, ey, label, va="center", fontsize=7)
            entry_xy[(gfn, index)] = (x + box_w, ey)
    for (level, gfn), (x, y) in placed.items():
        for index, value in tables[(level, gfn)]:
            child = child_of(level, value)
            if child is None:
                continue
            x0, y0 = entry_xy[(gfn, index)]
            x1, y1 = placed[child]
            on_path = (gfn, index) in walked and (gfn, index) != fault_at
            ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1 - row_h / 2), arrowstyle="-|>",
                                         mutation_scale=8, color="#d62828" if on_path else "#999999",
                                         linewidth=1.6 if on_path else 0.8))
    if trace.ok:
        leaf = trace.rows[-1]
        x0, y0 = entry_xy[(leaf.table_gfn, leaf.index)]
        ax.add_patch(Rectangle((data_x, y0 - row_h), box_w * 0.8, 2 * row_h,
                               facecolor="#caf0f8", edgecolor="black"))
        ax.text(data_x + 0.06, y0, f"data page\ngpa {trace.gpa:#x}", va="center", fontsize=7)
        ax.add_patch(FancyArrowPatch((x0, y0), (data_x, y0), arrowstyle="-|>", mutation_scale=8,
                                     color="#d62828", linewidth=1.6))
    ax.set_xlim(-0.2, data_x + box_w)
    ax.set_ylim(-depth - 0.1, 0.3)
    ax.axis("off")
    ax.set_title(f"walk of {trace.addr:#x} ({access_str(trace.access)}): {trace.result_line()}",
                 fontsize=9)
    fig.tight_layout()
    return fig
