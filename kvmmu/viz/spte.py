"""Views of the SPTE format: a decoder/editor widget over a pure view function, and bit-layout figures.

``spte_view(text, mode, level)`` is the pure function: it never raises, and
returns a :class:`SpteView` (class, fields, 64 coloured bits, or an error
message) with ``.html()``.  ``spte_widget()`` only wires ipywidgets controls to
it.  ``spte_layout_figure()`` draws the bit layouts of three SPTEs the chapter
discusses; ``spte_layout_rows()`` is the data it draws.
"""
import html as _html
from dataclasses import dataclass

from .. import spte as S
from ..bits import U64_MAX
from ..checks import check_choice, check_u64, parse_int_text
from ..levels import check_level

#: The widget's two modes and the configuration each decodes with.
MODES = {"EPT": S.EPT_AD, "non-EPT": S.NPT}

LEVEL_CHOICES = ((1, "4K"), (2, "2M"), (3, "1G"), (4, "512G"), (5, "level 5"))

#: Field category -> background colour.
COLOURS = {
    "perm": "#8ecae6",      # hardware permission / present bits
    "addr": "#ffd166",      # pfn, child table or gfn
    "ad": "#95d5b2",        # Accessed / Dirty
    "kvm": "#f4a261",       # KVM software bits (present, H, M, A/D type, saved bits)
    "type": "#cdb4db",      # PS, memory type, IPAT, G, PWT/PCD
    "gen": "#e9c46a",       # MMIO generation
    "mmio": "#e76f51",      # MMIO value bits
    "special": "#b5838d",   # FROZEN / non-present value bits
    "unused": "#eeeeee",
}

_LEAF_EPT = [
    (63, 63, "SVE", "perm"), (58, 58, "MMU-w", "kvm"), (57, 57, "host-w", "kvm"),
    (56, 56, "saved X", "kvm"), (54, 54, "saved R", "kvm"), (53, 52, "A/D type", "kvm"),
    (51, 12, "pfn", "addr"), (11, 11, "MMU-present", "kvm"), (9, 9, "D", "ad"),
    (8, 8, "A", "ad"), (7, 7, "PS", "type"), (6, 6, "IPAT", "type"),
    (5, 3, "memtype", "type"), (2, 2, "X", "perm"), (1, 1, "W", "perm"), (0, 0, "R", "perm"),
]
_NONLEAF_EPT = [
    (63, 63, "SVE", "perm"), (53, 52, "A/D type", "kvm"), (51, 12, "child table", "addr"),
    (11, 11, "MMU-present", "kvm"), (8, 8, "A", "ad"), (2, 2, "X", "perm"),
    (1, 1, "W", "perm"), (0, 0, "R", "perm"),
]
_LEAF_NPT = [
    (63, 63, "NX", "perm"), (53, 52, "A/D type", "kvm"), (51, 12, "pfn", "addr"),
    (11, 11, "MMU-present", "kvm"), (10, 10, "MMU-w", "kvm"), (9, 9, "host-w", "kvm"),
    (8, 8, "G", "type"), (7, 7, "PS", "type"), (6, 6, "D", "ad"), (5, 5, "A", "ad"),
    (4, 4, "PCD", "type"), (3, 3, "PWT", "type"), (2, 2, "U", "perm"), (1, 1, "W", "perm"),
    (0, 0, "P", "perm"),
]
_NONLEAF_NPT = [
    (63, 63, "NX", "perm"), (51, 12, "child table", "addr"), (11, 11, "MMU-present", "kvm"),
    (5, 5, "A", "ad"), (2, 2, "U", "perm"), (1, 1, "W", "perm"), (0, 0, "P", "perm"),
]
_MMIO_EPT = [
    (63, 63, "SVE=0", "mmio"), (62, 52, "gen[18:8]", "gen"), (51, 12, "gfn", "addr"),
    (11, 11, "present=0", "kvm"), (10, 3, "gen[7:0]", "gen"), (2, 0, "WX=110", "mmio"),
]
_MMIO_NPT = [
    (62, 52, "gen[18:8]", "gen"), (51, 51, "rsvd PA", "mmio"), (50, 12, "gfn", "addr"),
    (11, 11, "present=0", "kvm"), (10, 3, "gen[7:0]", "gen"), (2, 2, "U", "perm"),
    (1, 1, "W", "perm"), (0, 0, "P", "mmio"),
]
_FROZEN = [
    (63, 63, "nonpresent", "special"), (51, 12, "pfn=0", "addr"), (11, 11, "present=0", "kvm"),
    (10, 5, "0x5a0", "special"), (2, 0, "RWX=0", "perm"),
]
_NONPRESENT = [(63, 63, "bit 63", "special"), (11, 11, "present=0", "kvm")]


def field_layout(cls: str, ept: bool) -> list[tuple[int, int, str, str]]:
    """Return (hi, lo, label, category) for all 64 bits of an SPTE of class ``cls``, bit 63 first.

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
        """Render the view: bit diagram, class, field table, notes or the error."""
        esc = _html.escape
        if self.error is not None:
            return (f'<div class="kvmmu-spte-view"><b style="color:#b00020">{esc(self.error)}'
                    f"</b></div>")
        rows = []
        for half in (self.bits[:32], self.bits[32:]):
            num = "".join(f'<td style="font-size:70%;color:#555;text-align:center">{b}</td>'
                          for b, _, _, _ in half)
            val = "".join(
                f'<td title="bit {b}: {esc(label) or "unused"}" style="background:{COLOURS[cat]};'
                f'text-align:center;font-family:monospace;min-width:1.4em;'
                f'{"font-weight:bold" if on else "color:#888"}">{int(on)}</td>'
                for b, on, label, cat in half)
            lab = "".join(f'<td style="font-size:60%;text-align:center;overflow:hidden;max-width:1.4em">'
                          f"{esc(label[:3])}</td>" for _, _, label, _ in half)
            rows.append(f"<tr>{num}</tr><tr>{val}</tr><tr>{lab}</tr>")
        table = f'<table style="border-collapse:collapse">{"".join(rows)}</table>'
        fields = "".join(f"<tr><td>{esc(k)}</td><td><code>{esc(v)}</code></td></tr>"
                         for k, v in self.fields)
        notes = "".join(f"<li>{esc(n)}</li>" for n in self.notes)
        return (f'<div class="kvmmu-spte-view"><div><code>{self.value:#018x}</code> '
                f"({esc(self.mode)}, level {self.level}): <b>{esc(self.cls)}</b></div>{table}"
                f'<table style="margin-top:0.5em">{fields}</table>'
                + (f"<ul>{notes}</ul>" if notes else "") + "</div>")

    def __str__(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        lines = [f"{self.value:#018x} ({self.mode}, level {self.level}): {self.cls}"]
        lines += [f"  {k:<16} {v}" for k, v in self.fields]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


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
        layout = field_layout(dec.cls, cfg.ept)
        bits = []
        for hi, lo, label, cat in layout:
            for b in range(hi, lo - 1, -1):
                bits.append((b, bool(value >> b & 1), label, cat))
        return SpteView(text=text, mode=mode, level=level, value=value, cls=dec.cls,
                        fields=tuple((k, _shown(v)) for k, v in dec.fields.items()),
                        notes=dec.notes, error=None, bits=tuple(bits))
    except (TypeError, ValueError) as exc:
        return _error_view(text, mode, level, str(exc))
    except Exception as exc:  # a widget must never raise; say what happened instead
        return _error_view(text, mode, level, f"internal error: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------
# The widget.
# --------------------------------------------------------------------------
def _build_widget(value: int, mode: str, level: int):
    import ipywidgets as W

    text = W.Text(value=f"{value:#018x}", description="SPTE", continuous_update=False,
                  layout=W.Layout(width="24em"))
    text.add_class("kvmmu-spte-text")
    mode_w = W.ToggleButtons(options=list(MODES), value=mode, description="mode")
    mode_w.add_class("kvmmu-spte-mode")
    level_w = W.Dropdown(options=[(f"{name} ({n})", n) for n, name in LEVEL_CHOICES],
                         value=level, description="level")
    level_w.add_class("kvmmu-spte-level")
    buttons = {}
    # One shared layout and style: 64 buttons, not 192 widget models to store.
    bit_layout = W.Layout(width="2.6em", padding="0")
    bit_style = None
    for b in range(63, -1, -1):
        extra = {} if bit_style is None else {"style": bit_style}
        btn = W.ToggleButton(value=bool(value >> b & 1), description=str(b), tooltip=f"bit {b}",
                             layout=bit_layout, **extra)
        bit_style = btn.style
        btn.add_class("kvmmu-spte-bit")
        btn.add_class(f"kvmmu-spte-bit-{b}")
        buttons[b] = btn
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
    rows = [W.HBox([buttons[b] for b in range(hi, hi - 16, -1)]) for hi in (63, 47, 31, 15)]
    box = W.VBox([W.HBox([text, level_w]), mode_w, *rows, out])
    box.add_class("kvmmu-spte-widget")
    return box, {"text": text, "mode": mode_w, "level": level_w, "bits": buttons, "out": out}


def spte_widget(value: int = 0x8600000012345B77, mode: str = "EPT", level: int = 1):
    """Return an SPTE decoder/editor: type a value or flip bits, pick EPT/non-EPT and the level.

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
    ("EPT MMIO SPTE (gfn 0xfee00, generation 0x12345)", 0x12300000FEE0022E, "EPT", 1),
    ("FROZEN_SPTE", S.FROZEN_SPTE, "EPT", 1),
)


def spte_layout_rows() -> list[tuple[str, int, list[tuple[int, int, str, int]]]]:
    """Return, per example SPTE, its title, value and fields as (hi, lo, label, field value)."""
    out = []
    for title, value, mode, level in LAYOUT_EXAMPLES:
        cls = S.classify(value, MODES[mode], level)
        fields = [(hi, lo, label, (value >> lo) & ((1 << (hi - lo + 1)) - 1))
                  for hi, lo, label, cat in field_layout(cls, MODES[mode].ept) if cat != "unused"]
        out.append((title, value, fields))
    return out


def spte_layout_figure():
    """Draw the bit layouts of a present EPT leaf, an MMIO SPTE and FROZEN_SPTE; return the Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(LAYOUT_EXAMPLES), 1, figsize=(16, 2.3 * len(LAYOUT_EXAMPLES)))
    for ax, (title, value, mode, level) in zip(axes, LAYOUT_EXAMPLES):
        cls = S.classify(value, MODES[mode], level)
        for hi, lo, label, cat in field_layout(cls, MODES[mode].ept):
            x0, width = 63 - hi, hi - lo + 1
            ax.add_patch(Rectangle((x0, 1.0), width, 1.0, facecolor=COLOURS[cat],
                                   edgecolor="black", linewidth=1.0))
            if label:
                narrow = width < 3
                ax.text(x0 + width / 2, 1.5, label, ha="center", va="center",
                        fontsize=7 if narrow else 9, rotation=90 if narrow else 0)
        for b in range(64):
            x = 63 - b
            ax.add_patch(Rectangle((x, 0.0), 1, 1.0, facecolor="white", edgecolor="#999999",
                                   linewidth=0.5))
            ax.text(x + 0.5, 0.5, str(value >> b & 1), ha="center", va="center", fontsize=8,
                    fontweight="bold" if value >> b & 1 else "normal")
            if b % 4 == 0 or b == 63:
                ax.text(x + 0.5, -0.35, str(b), ha="center", va="center", fontsize=7, color="#555555")
        ax.set_xlim(-0.5, 64.5)
        ax.set_ylim(-0.7, 2.1)
        ax.axis("off")
        ax.set_title(f"{title}: {value:#018x} ({cls})", fontsize=10, loc="left")
    fig.tight_layout()
    return fig
