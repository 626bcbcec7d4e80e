"""The published book renders completely offline, in a real browser.

Every chapter page is opened in Debian's headless Chromium (driven by
Playwright) from a loopback HTTP server, with every request that would leave
the machine aborted and recorded.  Each page must load with no console error,
request nothing from outside, render every widget snapshot it carries, and
show every figure.
"""
import sys
from pathlib import Path

import pytest

from conftest import cut_network

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from toc import chapter_notebooks  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.book]
ARTIFACTS = ROOT / "test-artifacts"


def _chapter_pages():
    return [nb[: -len(".ipynb")] + ".html" for nb in chapter_notebooks()]


def test_there_are_chapter_pages_to_check():
    assert _chapter_pages(), "no chapter notebooks in _toc.yml"


@pytest.mark.parametrize("page_path", _chapter_pages())
def test_chapter_renders_offline(browser, book_server, page_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    left_machine, errors = cut_network(context), []
    page = context.new_page()
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    page.goto(f"{book_server}/{page_path}", wait_until="networkidle")

    views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
    if views:
        # The html-manager replaces each view script by the rendered widget.
        page.wait_for_function(
            "n => document.querySelectorAll('.jupyter-widgets.widget-container, "
            ".jupyter-widgets.widget-inline-hbox, .jupyter-widgets.widget-vbox, "
            ".jupyter-widgets.widget-hbox, .jupyter-widgets.widget-tab').length >= n",
            arg=views, timeout=20000)
    broken_images = page.evaluate(
        "() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
        ".map(i => i.src)")
    figures = page.evaluate(
        "() => Array.from(document.images).filter(i => i.src.includes('/_images/')).length")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"book-{Path(page_path).stem}.png"), full_page=False)
    context.close()

    assert not left_machine, f"requests that would leave the machine: {left_machine}"
    assert not errors, f"console errors: {errors}"
    assert not broken_images, f"images that did not render: {broken_images}"
    assert figures >= 1, "every chapter has at least one figure"
    assert views >= 1, "every chapter shows at least one widget snapshot"
