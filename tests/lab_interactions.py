"""How a student operates each chapter's main widget, and what must change.

Each entry takes a Playwright page (the chapter open and run in JupyterLab) and
a screenshot path.  It finds the widget by the CSS classes the widget builder
gives its controls (`kvmmu-...`), acts, and asserts the visible result
against the model.
"""
from pathlib import Path


def _widget(page, css: str):
    locator = page.locator(css).first
    locator.scroll_into_view_if_needed(timeout=30000)
    return locator


def _shoot(page, css: str, shot: Path):
    _widget(page, css).screenshot(path=str(shot))


INTERACTIONS = {}
