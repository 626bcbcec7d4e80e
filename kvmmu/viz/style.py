"""Figures drawn for the book's column: one size, fonts a reader can read.

The book's text column is :data:`COLUMN_PX` pixels wide at a 1280-pixel
window.  A figure is drawn :data:`COLUMN_IN` inches wide at :data:`DPI`, so
the page shows it at 1/:data:`SHRINK` of its drawn size; a font of
:data:`MIN_FONT_PT` points is then :func:`on_screen_px` ≈ 12 pixels tall on
screen.  :func:`column_figure` makes such a figure; :func:`legibility` lists
every text of a figure that would be smaller than :data:`MIN_SCREEN_PX` on
screen (tests call it for every figure of the book).
"""
from __future__ import annotations

__all__ = ["COLUMN_PX", "COLUMN_IN", "DPI", "SHRINK", "MIN_FONT_PT", "MIN_SCREEN_PX",
           "column_figure", "on_screen_px", "legibility"]

#: The width of the book's text column at a 1280-pixel window (sphinx-book-theme).
COLUMN_PX = 688
#: Figures are drawn this wide ...
COLUMN_IN = 6.88
#: ... at this resolution, so they are shown at 1/SHRINK of their drawn size.
DPI = 150
SHRINK = COLUMN_IN * DPI / COLUMN_PX
#: The smallest font the book's figures use, and the smallest text a reader gets.
MIN_FONT_PT = 8
MIN_SCREEN_PX = 9


def on_screen_px(points: float, dpi: float = DPI, drawn_width_in: float = COLUMN_IN) -> float:
    """How tall a ``points`` font is on screen for a figure shown at the column's width."""
    drawn_px = drawn_width_in * dpi
    return points * dpi / 72 * min(1.0, COLUMN_PX / drawn_px)


def column_figure(height_in: float, **kwargs):
    """A matplotlib figure as wide as the column, at :data:`DPI`, with the book's fonts."""
    import matplotlib.pyplot as plt

    if not isinstance(height_in, (int, float)) or not 0.5 <= height_in <= 12:
        raise ValueError(f"height_in must be a number of inches in [0.5, 12], got {height_in!r}")
    with plt.rc_context({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
                         "xtick.labelsize": MIN_FONT_PT, "ytick.labelsize": MIN_FONT_PT,
                         "legend.fontsize": MIN_FONT_PT}):
        fig = plt.figure(figsize=(COLUMN_IN, height_in), dpi=DPI, **kwargs)
    return fig


def legibility(fig) -> list[str]:
    """The texts of ``fig`` smaller than :data:`MIN_SCREEN_PX` on screen ("" if none)."""
    width_in = fig.get_figwidth()
    small = []
    for text in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text")):
        content = text.get_text().strip()
        if not content or not text.get_visible():
            continue
        px = on_screen_px(text.get_fontsize(), fig.dpi, width_in)
        if px < MIN_SCREEN_PX - 0.05:
            small.append(f"{content[:30]!r}: {px:.1f} px on screen")
    return small
