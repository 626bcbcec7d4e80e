"""The published book runs its widgets live, offline, on the Pyodide it serves.

Each chapter page of the built book that has a live cell (a code cell tagged
``live``: tools/sphinx/kvmmu_live.py) is opened in Debian's headless Chromium
from a loopback server, with every request that would leave the machine
aborted and recorded, and with service workers blocked so that no request
escapes the recording.  The test presses "Run it live", waits for the live
REPL in the page to show the cell's widget, and operates the widget exactly as
the JupyterLab test does (tests/lab_interactions.py), checking what it shows
against the widget's pure function.  No request may leave the machine.
"""
import json
import sys
from pathlib import Path

import pytest

from conftest import cut_network
from lab_interactions import LIVE_INTERACTIONS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tools" / "sphinx"))
from kvmmu_live import live_cells  # noqa: E402
from toc import chapter_notebooks  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.book]
ARTIFACTS = ROOT / "test-artifacts"
#: Pyodide's start, the kernel's packages and the cell itself (measured in
#: tools/bench_lite.py; this is a ceiling for a loaded machine, not a target).
LIVE_START_TIMEOUT_MS = 90000


def _tagged_chapters() -> set[str]:
    return {nb for nb in chapter_notebooks()
            if live_cells(json.loads((ROOT / nb).read_text(encoding="utf-8")))}


def test_every_live_cell_is_operated_by_a_browser_test():
    assert _tagged_chapters() == set(LIVE_INTERACTIONS), (
        "chapters with cells tagged `live` and chapters in "
        "tests/lab_interactions.py LIVE_INTERACTIONS must be the same")


def open_live(page, book_server: str, notebook: str):
    """Open ``notebook``'s page, press its first "Run it live"; return the live REPL's frame."""
    page.goto(f"{book_server}/{notebook[: -len('.ipynb')]}.html", wait_until="networkidle")
    control = page.locator(".kvmmu-live").first
    control.locator(".kvmmu-live-start").click()
    frame = control.locator("iframe.kvmmu-live-frame").element_handle().content_frame()
    frame.wait_for_selector(".jp-CodeConsole .jp-OutputArea-output .jupyter-widgets",
                            timeout=LIVE_START_TIMEOUT_MS)
    return control, frame


@pytest.mark.parametrize("notebook", sorted(LIVE_INTERACTIONS))
def test_chapter_widget_runs_live_offline(browser, book_server, notebook):
    context = browser.new_context(viewport={"width": 1280, "height": 1000},
                                  service_workers="block")
    left_machine, errors, served = cut_network(context), [], []
    page = context.new_page()
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}")
            if r.status >= 400 else served.append(r.url))
    control, frame = open_live(page, book_server, notebook)
    ARTIFACTS.mkdir(exist_ok=True)
    LIVE_INTERACTIONS[notebook](frame, ARTIFACTS / f"live-{Path(notebook).stem}.png")
    page.wait_for_function("() => document.querySelector('.kvmmu-live-running')", timeout=5000)
    snapshot_hidden = page.evaluate(
        "() => document.querySelector('.kvmmu-live').closest('.cell')"
        ".querySelector('.cell_output').hidden")
    context.close()

    assert not left_machine, f"requests that would leave the machine: {left_machine}"
    assert not errors, f"console errors: {errors}"
    # The runtime and the wheels came from the book's own lite/ folder.
    assert any(u.split("?")[0].endswith("/lite/static/pyodide/pyodide.asm.wasm") for u in served)
    assert any("/lite/static/pyodide/kvmmu-" in u for u in served)
    assert snapshot_hidden, "the frozen snapshot stays above the live widget"
