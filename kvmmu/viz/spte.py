"""Views of the SPTE format: a decoder widget over a pure view, a bit-layout figure.

``spte_view(text, mode, level)`` is the pure function: it never raises, and
returns a :class:`SpteView` (class, fields, 64 coloured bits, or an error
message) with ``.html()``, an HTML table that fits the book's column and the
narrower frame of the live page.  ``spte_widget()`` only wires ipywidgets
controls to it, so the widget runs wherever the model runs (no matplotlib).
``spte_layout_figure()`` draws three SPTEs the chapter discusses in two rows
of 32 bits each, sized for the column (:func:`kvmmu.viz.style.column_figure`).
Both draw the rows of :func:`row_segments`, so figure and widget agree.
"""
import html as _html
from dataclasses import dataclass

from .. import spte as S
from ..bits import U64_MAX
from ..checks import check_choice, check_int, check_u64, parse_int_text
from ..levels import check_level

__all__ = ["MODES", "LEVEL_CHOICES", "COLOURS", "SHORT_LABELS", "BITS_PER_ROW",
           "field_layout", "row_segments", "shown_label", "SpteView", "spte_view",
           "spte_widget", "LAYOUT_EXAMPLES", "spte_layout_rows",
           "spte_layout_figure"]

#: The widget's two modes and the configuration each decodes with.
MODES = {"EPT": S.EPT_AD, "non-EPT": S.NPT}

LEVEL_CHOICES = ((1, "4K"), (2, "2M"), (3, "1G"), (4, "512G"), (5, "level 5"))

#: Field category -> background colour.
COLOURS = {
    "perm": "#8ecae6",      # hardware permission / present bits
    "addr": "#ffd166",      # pfn, child table or gfn
    "ad": "#95d5b2",        # Accessed / Dirty
    "kvm": "#f4a261",       # KVM software bits: present, H, M, A/D type, saved
    "type": "#cdb4db",      # PS, memory type, IPAT, G, PWT/PCD
    "gen": "#e9c46a",       # MMIO generation
    "mmio": "#e76f51",      # MMIO value bits
    "special": "#b5838d",   # FROZEN / non-present value bits
    "unused": "#eeeeee",
}

#: Short keys for fields too narrow to hold their name (at most two letters).
SHORT_LABELS = {
    "MMU-present": "MP", "present=0": "MP", "MMU-w": "M", "host-w": "H",
    "saved X": "SX", "saved R": "SR", "A/D type": "AD", "SVE": "SV",
    "SVE=0": "SV", "IPAT": "IP", "memtype": "MT", "rsvd PA": "RP",
    "nonpresent": "NP", "bit 63": "NP", "PCD": "CD", "PWT": "WT",
}
#: What each short key stands for, for the legends.
SHORT_MEANING = {
    "MP": "MMU-present (bit 11)", "M": "MMU-writable", "H": "host-writable",
    "SX": "saved X", "SR": "saved R", "AD": "A/D type", "SV": "suppress #VE",
    "IP": "ignore PAT", "MT": "memory type", "RP": "reserved PA bit",
    "NP": "SHADOW_NONPRESENT_VALUE", "CD": "PCD", "WT": "PWT",
}
#: The rows figure and widget draw: bits 63..32, then 31..0.
BITS_PER_ROW = 32

_LEAF_EPT = [
    (63, 63, "SVE", "perm"), (58, 58, "MMU-w", "kvm"), (57, 57, "host-w", "kvm"),
    (56, 56, "saved X", "kvm"), (54, 54, "saved R", "kvm"),
    (53, 52, "A/D type", "kvm"), (51, 12, "pfn", "addr"),
    (11, 11, "MMU-present", "kvm"), (9, 9, "D", "ad"), (8, 8, "A", "ad"),
    (7, 7, "PS", "type"), (6, 6, "IPAT", "type"), (5, 3, "memtype", "type"),
    (2, 2, "X", "perm"), (1, 1, "W", "perm"), (0, 0, "R", "perm"),
]
_NONLEAF_EPT = [
    (63, 63, "SVE", "perm"), (53, 52, "A/D type", "kvm"),
    (51, 12, "child table", "addr"), (11, 11, "MMU-present", "kvm"),
    (8, 8, "A", "ad"), (2, 2, "X", "perm"), (1, 1, "W", "perm"),
    (0, 0, "R", "perm"),
]
_LEAF_NPT = [
    (63, 63, "NX", "perm"), (53, 52, "A/D type", "kvm"), (51, 12, "pfn", "addr"),
    (11, 11, "MMU-present", "kvm"), (10, 10, "MMU-w", "kvm"),
    (9, 9, "host-w", "kvm"), (8, 8, "G", "type"), (7, 7, "PS", "type"),
    (6, 6, "D", "ad"), (5, 5, "A", "ad"), (4, 4, "PCD", "type"),
    (3, 3, "PWT", "type"), (2, 2, "U", "perm"), (1, 1, "W", "perm"),
    (0, 0, "P", "perm"),
]
_NONLEAF_NPT = [
    (63, 63, "NX", "perm"), (51, 12, "child table", "addr"),
    (11, 11, "MMU-present", "kvm"), (5, 5, "A", "ad"), (2, 2, "U", "perm"),
    (1, 1, "W", "perm"), (0, 0, "P", "perm"),
]
_MMIO_EPT = [
    (63, 63, "SVE=0", "mmio"), (62, 52, "gen[18:8]", "gen"),
    (51, 12, "gfn", "addr"),
    (11, 11, "present=0", "kvm"), (10, 3, "gen[7:0]", "gen"),
    (2, 0, "WX=110", "mmio"),
]
_MMIO_NPT = [
    (62, 52, "gen[18:8]", "gen"), (51, 51, "rsvd PA", "mmio"),
    (50, 12, "gfn", "addr"),
    (11, 11, "present=0", "kvm"), (10, 3, "gen[7:0]", "gen"), (2, 2, "U", "perm"),
    (1, 1, "W", "perm"), (0, 0, "P", "mmio"),
]
_FROZEN = [
    (63, 63, "nonpresent", "special"), (51, 12, "pfn=0", "addr"),
    (11, 11, "present=0", "kvm"), (10, 5, "0x5a0", "special"),
    (2, 0, "RWX=0", "perm"),
]
_NONPRESENT = [(63, 63, "bit 63", "special"), (11, 11, "present=0", "kvm")]


def field_layout(cls: str, ept: bool) -> list[tuple[int, int, str, str]]:
    """(hi, lo, label, category) over all 64 bits of a ``cls`` SPTE, bit 63 first.

    Bits no field claims come back as ``("", "unused")`` runs, so the rows
    always tile 63..0 exactly.
    """
    check_choice("cls", cls, S.SPTE_CLASSES)
    if cls in (S.CLASS_PRESENT_LEAF, S.CLASS_ACCESS_TRACKED):
        fields = _LEAF_EPT if ept else _LEAF_NPT
    elif cls == S.CLASS_PRESENT_NONLEAF:
        fields = _NONLEAF_EPT if ept else _NONLEAF_NPT
    elif cls == S.CLASS_MMIO:
        fields = _MMIO_EPT if ept else _MMIO_NPT
    elif cls == S.CLASS_FROZEN:
        fields = _FROZEN
    else:
        fields = _NONPRESENT
    out, bit = [], 63
    for hi, lo, label, cat in fields:
        if hi < bit:
            out.append((bit, hi + 1, "", "unused"))
        out.append((hi, lo, label, cat))
        bit = lo - 1
    if bit >= 0:
        out.append((bit, 0, "", "unused"))
    return out


def row_segments(layout, per_row: int = BITS_PER_ROW) -> list[list[tuple]]:
    """Cut a 64-bit layout into rows of ``per_row`` bits, bit 63 first.

    Each row is a list of ``(hi, lo, label, category)`` segments; a field
    that crosses a row boundary (the pfn) is cut in two, each part keeping
    its label.
    """
    check_int("per_row", per_row, 1, 64)
    if 64 % per_row:
        raise ValueError(f"per_row must divide 64, got {per_row}")
    rows = []
    for top in range(63, -1, -per_row):
        bottom = top - per_row + 1
        rows.append([(min(hi, top), max(lo, bottom), label, cat)
                     for hi, lo, label, cat in layout
                     if lo <= top and hi >= bottom])
    return rows


def shown_label(label: str, nbits: int, chars_per_bit: float) -> str:
    """The field's name if ``nbits`` cells hold it, else its short key."""
    if len(label) <= nbits * chars_per_bit:
        return label
    return SHORT_LABELS.get(label, label[:max(1, int(nbits * chars_per_bit))])


@dataclass(frozen=True)
class SpteView:
    """What the decoder shows for one input: never built from an exception."""

    text: str
    mode: str
    level: object
    value: int | None
    cls: str | None
    fields: tuple          # ((name, shown value), ...) in decode order
    notes: tuple
    error: str | None
    bits: tuple            # 64 x (bit, set, label, category), bit 63 first

    def html(self) -> str:
        """Render the view: class, bits in two rows, fields, notes, or the error."""
        esc = _html.escape
        if self.error is not None:
            return ('<div class="kvmmu-spte-view"><b style="color:#b00020">'
                    f"{esc(self.error)}</b></div>")
        head = (f"<div><code>{self.value:#018x}</code> ({esc(self.mode)}, level "
                f"{self.level}): <b>{esc(self.cls)}</b></div>")
        return ('<div class="kvmmu-spte-view" style="max-width:40em">' + head
                + _bits_html(self.bits) + _fields_html(self.fields)
                + "".join(f'<div style="font-size:90%">note: {esc(n)}</div>'
                          for n in self.notes) + "</div>")

    def __str__(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        lines = [f"{self.value:#018x} ({self.mode}, level {self.level}): "
                 f"{self.cls}"]
        lines += [f"  {k:<16} {v}" for k, v in self.fields]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


_TD = "padding:0;text-align:center;overflow:hidden;white-space:nowrap;"


def _bits_html(bits) -> str:
    """Two rows of 32 cells: field names, bits coloured by field, bit numbers."""
    esc = _html.escape
    layout, on = [], {b: v for b, v, _, _ in bits}
    for b, _, label, cat in bits:          # back to (hi, lo, label, cat) runs
        if layout and layout[-1][2:] == (label, cat) and layout[-1][1] == b + 1:
            layout[-1] = (layout[-1][0], b, label, cat)
        else:
            layout.append((b, b, label, cat))
    rows, used = [], set()
    for segs in row_segments(layout):
        names, values, numbers = [], [], []
        for hi, lo, label, cat in segs:
            n = hi - lo + 1
            name = shown_label(label, n, 1.2)
            if name != label:
                used.add(name)
            names.append(f'<td colspan="{n}" title="bits {hi}:{lo} {esc(label)}" '
                         f'style="{_TD}font-size:70%">{esc(name)}</td>')
            for b in range(hi, lo - 1, -1):
                weight = "font-weight:bold" if on[b] else "color:#777"
                values.append(f'<td title="bit {b}" style="{_TD}background:'
                              f'{COLOURS[cat]};border:1px solid #fff;{weight}">'
                              f"{int(on[b])}</td>")
                edge = b in (hi, lo) and (label or b in (63, 32, 31, 0))
                numbers.append(f'<td style="{_TD}font-size:65%;color:#555">'
                               f'{b if edge else ""}</td>')
        rows += [f"<tr>{''.join(r)}</tr>" for r in (names, values, numbers)]
    legend = ", ".join(f"{k} {SHORT_MEANING[k]}" for k in sorted(used)
                       if k in SHORT_MEANING)
    return ('<table style="border-collapse:collapse;table-layout:fixed;width:100%;'
            'font-family:monospace;margin:0.3em 0">' + "".join(rows) + "</table>"
            + (f'<div style="font-size:75%;color:#555">{esc(legend)}</div>'
               if legend else ""))


def _fields_html(fields) -> str:
    """The decoded fields, two to a row, so the list stays short."""
    esc = _html.escape
    cells = [f'<td style="padding:0 0.4em">{esc(k)}</td>'
             f'<td style="padding:0 0.8em 0 0"><code>{esc(v)}</code></td>'
             for k, v in fields]
    rows = ["<tr>" + "".join(cells[i:i + 2]) + "</tr>"
            for i in range(0, len(cells), 2)]
    return ('<table style="margin-top:0.4em;font-size:90%">' + "".join(rows)
            + "</table>")


def _shown(val) -> str:
    if isinstance(val, bool):
        return "1" if val else "0"
    if isinstance(val, int):
        return f"{val:#x}"
    return str(val)


def _safe_str(obj, limit: int) -> str:
    try:
        return str(obj)[:limit]
    except Exception:  # an object whose __str__ fails still gets a view
        return f"<{type(obj).__name__}>"


def _error_view(text, mode, level, message: str) -> SpteView:
    return SpteView(text=_safe_str(text, 200), mode=_safe_str(mode, 40),
                    level=_safe_str(level, 40), value=None, cls=None,
                    fields=(), notes=(), error=message, bits=())


def spte_view(text, mode: str = "EPT", level=1) -> SpteView:
    """Decode the SPTE typed in ``text`` under ``mode`` at ``level``; never raises.

    ``text`` is decimal, ``0x`` hex or ``0b`` binary (underscores allowed);
    ``mode`` is ``"EPT"`` or ``"non-EPT"``; ``level`` is 1..5 or its text.
    Bad input gives a view whose ``error`` says what is wrong.
    """
    try:
        check_choice("mode", mode, MODES)
        if isinstance(level, str):
            level = parse_int_text("level", level, 1, 5)
        check_level("level", level, 1, 5)
        value = parse_int_text("SPTE", text, 0, U64_MAX)
        cfg = MODES[mode]
        dec = S.decode_spte(value, cfg, level)
        bits = []
        for hi, lo, label, cat in field_layout(dec.cls, cfg.ept):
            for b in range(hi, lo - 1, -1):
                bits.append((b, bool(value >> b & 1), label, cat))
        return SpteView(text=text, mode=mode, level=level, value=value, cls=dec.cls,
                        fields=tuple((k, _shown(v)) for k, v in dec.fields.items()),
                        notes=dec.notes, error=None, bits=tuple(bits))
    except (TypeError, ValueError) as exc:
        return _error_view(text, mode, level, str(exc))
    except Exception as exc:  # a widget must never raise; say what happened instead
        return _error_view(text, mode, level,
                           f"internal error: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------
# The widget.
# --------------------------------------------------------------------------
def _bit_buttons(W, value: int) -> dict:
    """64 toggle buttons, bit 63 first, sharing one layout and one style."""
    buttons, style = {}, None
    # One shared layout and style: 64 buttons, not 192 widget models to store.
    layout = W.Layout(width="2.4em", padding="0")
    for b in range(63, -1, -1):
        extra = {} if style is None else {"style": style}
        btn = W.ToggleButton(value=bool(value >> b & 1), description=str(b),
                             tooltip=f"bit {b}", layout=layout, **extra)
        style = btn.style
        btn.add_class("kvmmu-spte-bit")
        btn.add_class(f"kvmmu-spte-bit-{b}")
        buttons[b] = btn
    return buttons


def _build_widget(value: int, mode: str, level: int):
    import ipywidgets as W

    text = W.Text(value=f"{value:#018x}", description="SPTE",
                  continuous_update=False, layout=W.Layout(width="20em"))
    text.add_class("kvmmu-spte-text")
    mode_w = W.ToggleButtons(options=list(MODES), value=mode, description="mode")
    mode_w.add_class("kvmmu-spte-mode")
    level_w = W.Dropdown(options=[(f"{name} ({n})", n)
                                  for n, name in LEVEL_CHOICES],
                         value=level, description="level",
                         layout=W.Layout(width="14em"))
    level_w.add_class("kvmmu-spte-level")
    buttons = _bit_buttons(W, value)
    out = W.HTML()
    out.add_class("kvmmu-spte-out")
    syncing = {"on": False}

    def refresh(*_):
        view = spte_view(text.value, mode_w.value, level_w.value)
        out.value = view.html()
        if view.value is not None:
            syncing["on"] = True
            try:
                for b, btn in buttons.items():
                    btn.value = bool(view.value >> b & 1)
            finally:
                syncing["on"] = False

    def flip(_change):
        if syncing["on"]:
            return
        new = sum(1 << b for b, btn in buttons.items() if btn.value)
        text.value = f"{new:#018x}"

    text.observe(refresh, names="value")
    mode_w.observe(refresh, names="value")
    level_w.observe(refresh, names="value")
    for btn in buttons.values():
        btn.observe(flip, names="value")
    refresh()
    rows = [W.HBox([buttons[b] for b in range(hi, hi - 16, -1)])
            for hi in (63, 47, 31, 15)]
    box = W.VBox([W.HBox([text, level_w]), mode_w, *rows, out])
    box.add_class("kvmmu-spte-widget")
    controls = {"text": text, "mode": mode_w, "level": level_w, "bits": buttons,
                "out": out}
    return box, controls


def spte_widget(value: int = 0x8600000012345B77, mode: str = "EPT", level: int = 1):
    """An SPTE decoder: type a value or flip bits; pick EPT/non-EPT and the level.

    A thin shell over :func:`spte_view`; the HTML below the bit buttons is
    exactly ``spte_view(...).html()``.
    """
    check_u64("value", value)
    check_choice("mode", mode, MODES)
    check_level("level", level, 1, 5)
    return _build_widget(value, mode, level)[0]


# --------------------------------------------------------------------------
# The figure.
# --------------------------------------------------------------------------
#: The three SPTEs the chapter's figure draws: (title, value, mode, level).
LAYOUT_EXAMPLES = (
    ("present EPT leaf (4K, ACC_ALL, pfn 0x12345)", 0x8600000012345B77, "EPT", 1),
    ("EPT MMIO SPTE (gfn 0xfee00, generation 0x12345)", 0x12300000FEE0022E,
     "EPT", 1),
    ("FROZEN_SPTE", S.FROZEN_SPTE, "EPT", 1),
)


def spte_layout_rows() -> list[tuple[str, int, list[tuple[int, int, str, int]]]]:
    """Per example SPTE: title, value and fields as (hi, lo, label, field value)."""
    out = []
    for title, value, mode, level in LAYOUT_EXAMPLES:
        cls = S.classify(value, MODES[mode], level)
        fields = [(hi, lo, label, (value >> lo) & ((1 << (hi - lo + 1)) - 1))
                  for hi, lo, label, cat in field_layout(cls, MODES[mode].ept)
                  if cat != "unused"]
        out.append((title, value, fields))
    return out


# The figure's vertical plan, in inches: per example a title line, then per
# row of 32 bits a band of field names, the bit cells, the bit numbers.
_TITLE_IN, _NAME_IN, _CELL_IN, _NUM_IN, _GAP_IN = 0.26, 0.2, 0.22, 0.17, 0.1
_LEGEND_IN = 0.42


def _draw_row(ax, y, segs, value, cell_w):
    """One row of 32 bits at ``y`` (inches from the top); returns the short keys."""
    from matplotlib.patches import Rectangle

    used = set()
    x0 = 63 if segs[0][0] == 63 else 31          # the row's leftmost bit
    for hi, lo, label, cat in segs:
        left, n = x0 - hi, hi - lo + 1
        name = shown_label(label, n, cell_w * 72 / 5.2)  # 8 pt: ~5 pt a letter
        if name != label:
            used.add(name)
        if label:
            ax.text((left + n / 2) * cell_w, y + _NAME_IN / 2, name, ha="center",
                    va="center", fontsize=8)
        for b in range(hi, lo - 1, -1):
            x = (x0 - b) * cell_w
            top = y + _NAME_IN
            ax.add_patch(Rectangle((x, top), cell_w, _CELL_IN,
                                   facecolor=COLOURS[cat], edgecolor="white",
                                   linewidth=0.8))
            bit = value >> b & 1
            ax.text(x + cell_w / 2, top + _CELL_IN / 2, str(bit), ha="center",
                    va="center", fontsize=9, color="black" if bit else "#666666",
                    fontweight="bold" if bit else "normal")
            if b in (hi, lo) and (label or b in (63, 32, 31, 0)):
                ax.text(x + cell_w / 2, top + _CELL_IN + _NUM_IN / 2, str(b),
                        ha="center", va="center", fontsize=8, color="#555555")
        ax.add_patch(Rectangle((left * cell_w, y + _NAME_IN), n * cell_w, _CELL_IN,
                               fill=False, edgecolor="#333333", linewidth=0.8))
    return used


def spte_layout_figure():
    """Draw a present EPT leaf, an MMIO SPTE and FROZEN_SPTE, 2 x 32 bits each.

    Returns the Figure, drawn for the book's column with fonts of 8 points
    or more; fields too narrow for their name carry a short key, explained
    in the legend at the bottom.
    """
    from .style import COLUMN_IN, column_figure

    row_in = _NAME_IN + _CELL_IN + _NUM_IN
    block_in = _TITLE_IN + 2 * row_in + _GAP_IN
    height = block_in * len(LAYOUT_EXAMPLES) + _LEGEND_IN
    fig = column_figure(height)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.05, COLUMN_IN + 0.05)
    ax.set_ylim(height, 0)                      # inches, from the top
    ax.axis("off")
    cell_w = (COLUMN_IN - 0.1) / 32
    used = set()
    for n, (title, value, mode, level) in enumerate(LAYOUT_EXAMPLES):
        y = n * block_in
        cls = S.classify(value, MODES[mode], level)
        ax.text(0, y + _TITLE_IN / 2, f"{title}: {value:#018x} ({cls})", ha="left",
                va="center", fontsize=9, fontweight="bold")
        y += _TITLE_IN
        for segs in row_segments(field_layout(cls, MODES[mode].ept)):
            used |= _draw_row(ax, y, segs, value, cell_w)
            y += row_in
    keys = [f"{k} {SHORT_MEANING[k]}" for k in sorted(used) if k in SHORT_MEANING]
    half = (len(keys) + 1) // 2
    legend = ", ".join(keys[:half]) + ",\n" + ", ".join(keys[half:])
    ax.text(0, height - _LEGEND_IN / 2, legend, ha="left", va="center", fontsize=8,
            color="#333333")
    return fig
