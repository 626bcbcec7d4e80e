"""kvmmu.viz.spte: the pure view never raises; the widget and figure show what the model computes."""
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from kvmmu import spte as S
from kvmmu.bits import U64_MAX
from kvmmu.viz.spte import (
    BITS_PER_ROW, LAYOUT_EXAMPLES, MODES, SHORT_LABELS, SHORT_MEANING, _build_widget,
    field_layout, row_segments, shown_label, spte_layout_rows, spte_view, spte_widget,
)


class _Nasty:
    def __str__(self):
        raise RuntimeError("no str for you")

    def __eq__(self, other):
        raise RuntimeError("no eq either")

    __hash__ = object.__hash__


def _check_view(view):
    assert (view.error is None) != (view.value is None)
    html = view.html()
    assert isinstance(html, str) and html.startswith('<div class="kvmmu-spte-view"')
    assert isinstance(str(view), str)
    if view.error is None:
        assert len(view.bits) == 64
        assert [b for b, *_ in view.bits] == list(range(63, -1, -1))
        assert all(on == bool(view.value >> b & 1) for b, on, _, _ in view.bits)
        assert f"{view.value:#018x}" in html
    else:
        assert view.error and view.bits == ()
    return view


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("text", ["0", hex(U64_MAX), str(U64_MAX), "0b1", "0x8000_0000_0000_05a0",
                                  "  0x8600000012345B77  ", hex(1 << 63), hex(S.SPTE_MMU_PRESENT_MASK)])
def test_view_extremes(text, mode, level):
    view = _check_view(spte_view(text, mode, level))
    assert view.error is None
    assert view.cls == S.classify(int(text.strip().replace("_", ""), 0), MODES[mode], level)


@pytest.mark.parametrize("text,mode,level,word", [
    ("", "EPT", 1, "empty"),
    ("   ", "EPT", 1, "empty"),
    ("zzz", "EPT", 1, "not a number"),
    ("0x1_0000_0000_0000_0000", "EPT", 1, "SPTE must be in"),
    ("-1", "non-EPT", 1, "SPTE must be in"),
    ("1.5", "EPT", 1, "not a number"),
    (None, "EPT", 1, "SPTE must be text"),
    (12, "EPT", 1, "SPTE must be text"),
    (b"0x1", "EPT", 1, "SPTE must be text"),
    ("0x1", "AMD", 1, "mode must be one of"),
    ("0x1", None, 1, "mode must be one of"),
    ("0x1", "EPT", 0, "level must be in [1, 5]"),
    ("0x1", "EPT", 6, "level must be in [1, 5]"),
    ("0x1", "EPT", "six", "level"),
    ("0x1", "EPT", 2.5, "level must be an integer"),
    ("0x1", "EPT", True, "level must be an integer"),
    ("0x1", "EPT", None, "level must be an integer"),
    (_Nasty(), "EPT", 1, "SPTE must be text"),
    ("0x1", _Nasty(), 1, "internal error"),
])
def test_view_bad_input_gives_message(text, mode, level, word):
    view = _check_view(spte_view(text, mode, level))
    assert word in view.error


def test_view_escapes_html():
    view = spte_view("<script>alert(1)</script>", "EPT", 1)
    assert "<script>" not in view.html() and "&lt;script&gt;" in view.html()


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["EPT", "non-EPT", "x", ""]),
       st.one_of(st.integers(-3, 8), st.text(max_size=3)))
def test_view_never_raises_on_garbage(text, mode, level):
    _check_view(spte_view(text, mode, level))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, U64_MAX), st.sampled_from(list(MODES)), st.integers(1, 5))
def test_view_matches_model(value, mode, level):
    view = _check_view(spte_view(hex(value), mode, level))
    dec = S.decode_spte(value, MODES[mode], level)
    assert view.cls == dec.cls and view.notes == dec.notes
    assert [k for k, _ in view.fields] == list(dec.fields)


@pytest.mark.parametrize("cls", S.SPTE_CLASSES)
@pytest.mark.parametrize("ept", [True, False])
def test_field_layout_tiles_all_64_bits(cls, ept):
    layout = field_layout(cls, ept)
    covered = []
    for hi, lo, label, cat in layout:
        assert hi >= lo
        covered += list(range(hi, lo - 1, -1))
    assert covered == list(range(63, -1, -1))


def test_layout_rows_are_the_model_values():
    rows = spte_layout_rows()
    assert [v for _, v, _ in rows] == [v for _, v, _, _ in LAYOUT_EXAMPLES]
    leaf = dict(((hi, lo), val) for hi, lo, _, val in rows[0][2])
    assert leaf[(51, 12)] == S.spte_to_pfn(0x8600000012345B77) == 0x12345
    assert leaf[(5, 3)] == 6 and leaf[(11, 11)] == 1
    mmio = {label: val for _, _, label, val in rows[1][2]}
    assert mmio["gfn"] == 0xFEE00 and mmio["WX=110"] == 6
    assert (mmio["gen[18:8]"] << 8 | mmio["gen[7:0]"]) == 0x12345
    frozen = {label: val for _, _, label, val in rows[2][2]}
    assert frozen["pfn=0"] == 0 and frozen["RWX=0"] == 0 and frozen["0x5a0"] << 5 == 0x5A0


def test_widget_flip_and_type():
    box, c = _build_widget(0x8600000012345B77, "EPT", 1)
    assert "present leaf" in c["out"].value
    c["bits"][11].value = False                          # clear MMU-present
    assert c["text"].value == "0x8600000012345377"
    assert "non-present" in c["out"].value
    c["text"].value = hex(S.FROZEN_SPTE)
    assert [b for b, btn in c["bits"].items() if btn.value] == [63, 10, 8, 7, 5]
    assert "frozen" in c["out"].value
    c["text"].value = "junk"                             # bits keep their state
    assert "not a number" in c["out"].value and c["bits"][63].value
    c["text"].value = "0x12380000FEE0022F"
    c["mode"].value = "non-EPT"
    assert c["out"].value == spte_view("0x12380000FEE0022F", "non-EPT", 1).html()
    c["level"].value = 2
    assert c["out"].value == spte_view("0x12380000FEE0022F", "non-EPT", 2).html()


def test_spte_widget_checks_arguments():
    assert spte_widget().__class__.__name__ == "VBox"
    with pytest.raises(ValueError, match="mode"):
        spte_widget(mode="AMD")
    with pytest.raises(ValueError, match="value"):
        spte_widget(value=-1)


@pytest.mark.parametrize("cls", S.SPTE_CLASSES)
@pytest.mark.parametrize("ept", [True, False])
def test_row_segments_cut_into_two_rows_of_32(cls, ept):
    rows = row_segments(field_layout(cls, ept))
    assert len(rows) == 64 // BITS_PER_ROW == 2
    for top, row in zip((63, 31), rows):
        bits = [b for hi, lo, _, _ in row for b in range(hi, lo - 1, -1)]
        assert bits == list(range(top, top - 32, -1))


def test_row_segments_split_the_pfn_and_check_the_width():
    upper, lower = row_segments(field_layout("present leaf", True))
    assert (51, 32, "pfn", "addr") in upper and (31, 12, "pfn", "addr") in lower
    with pytest.raises(ValueError, match="per_row"):
        row_segments(field_layout("present leaf", True), per_row=24)
    with pytest.raises(ValueError, match="per_row"):
        row_segments(field_layout("present leaf", True), per_row=0)


def test_short_labels_are_explained():
    assert shown_label("pfn", 20, 1.2) == "pfn"
    assert shown_label("MMU-present", 1, 1.2) == "MP"
    assert all(len(k) <= 2 and k in SHORT_MEANING for k in SHORT_LABELS.values())


def test_view_html_names_the_short_keys_it_uses():
    html = spte_view("0x8600000012345B77", "EPT", 1).html()
    assert "MP MMU-present (bit 11)" in html and html.count("<tr>") >= 6


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    from kvmmu.viz.spte import spte_layout_figure
    return spte_layout_figure()


def test_figure_draws_the_model_values():
    import matplotlib.pyplot as plt

    fig = _figure()
    try:
        texts = [t.get_text() for t in fig.axes[0].texts]
        for title, value, mode, level in LAYOUT_EXAMPLES:
            cls = S.classify(value, MODES[mode], level)
            assert f"{title}: {value:#018x} ({cls})" in texts
        # 64 bit cells per example, each showing the model's bit.
        assert sum(t in ("0", "1") for t in texts) >= 64 * len(LAYOUT_EXAMPLES)
    finally:
        plt.close(fig)


def test_figure_fits_the_column_and_is_legible():
    import matplotlib.pyplot as plt
    from kvmmu.viz.style import COLUMN_IN, DPI, legibility

    fig = _figure()
    try:
        assert fig.get_figwidth() == COLUMN_IN and fig.dpi == DPI
        assert legibility(fig) == []
        assert all(t.get_rotation() == 0 for t in fig.axes[0].texts)
    finally:
        plt.close(fig)


def test_model_import_stays_free_of_views():
    code = ("import sys, kvmmu.spte, kvmmu.exercises.spte; "
            "print(any(m in sys.modules for m in ('matplotlib', 'ipywidgets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
