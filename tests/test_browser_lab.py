"""The chapters work as a person uses them: JupyterLab in a real browser.

A JupyterLab server starts on loopback with a token the test sets, serving
the classroom copy of book/ that `make lab` serves (tools/lab_copy.py), so
autosave can never touch the committed notebooks.  Each chapter is opened in
Debian's Chromium driven by Playwright, run top to bottom, and its main widget
is operated like a student would: type a value, click a button, move a
slider.  The test asserts that what the widget shows changes as the model
says it should, and keeps a screenshot of every widget after the interaction
in test-artifacts/.  For the chapters in MYST_CHAPTERS it also checks what
jupyterlab-myst renders: no raw MyST on the page, every solution closed until
its own header is clicked, still closed after Run All, and the notebook not
marked modified by opening it.
"""
import sys
from pathlib import Path

import pytest

from conftest import chromium_or_skip
from lab_interactions import INTERACTIONS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from lab_copy import refresh  # noqa: E402
from lab_server import LabServer, is_dirty, panel, run_all_cells, wait_for_kernel  # noqa: E402
from toc import chapter_notebooks  # noqa: E402

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts"
#: Chapters whose MyST is checked as JupyterLab renders it: every chapter.
MYST_CHAPTERS = chapter_notebooks()
#: MyST source that must never reach the page as text.
RAW_MYST = (":label:", ":class:", "{term}", "{cite}", "{ref}", "{exercise}", "{solution}",
            "{glossary}", "{admonition}", "```", ")=")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    chromium_or_skip()
    work = tmp_path_factory.mktemp("lab")
    refresh(work / "book")
    with LabServer(work) as server:
        yield server


def _chapters():
    return [nb for nb in chapter_notebooks() if nb in INTERACTIONS] or ["(none)"]


def test_every_chapter_has_a_browser_interaction():
    missing = sorted(set(chapter_notebooks()) - set(INTERACTIONS))
    assert not missing, f"chapters whose main widget no browser test operates: {missing}"


_SOLUTIONS = "details.myst-exercise"


def _solutions_open(nb) -> list:
    return nb.locator(_SOLUTIONS).evaluate_all("ds => ds.map(d => d.open)")


def _check_myst_as_opened(page, nb, notebook: str) -> int:
    """The chapter as jupyterlab-myst shows it on opening; return how many solutions it has."""
    nb.locator(_SOLUTIONS).first.wait_for(timeout=90000)
    wait_for_kernel(page, notebook)
    page.wait_for_timeout(1000)                     # the kernel's info reaches the model
    assert not is_dirty(page, notebook), "opening the chapter marked it modified"
    text = "\n".join(nb.locator(".jp-MarkdownCell").all_inner_texts())
    assert not [raw for raw in RAW_MYST if raw in text], [raw for raw in RAW_MYST if raw in text]
    assert nb.locator(".myst a.hover-link[href^='#term-']").count() > 0    # terms resolve
    opened = _solutions_open(nb)
    assert opened and not any(opened), "a solution shows before it is clicked"
    _assert_no_solution_visible(nb)
    first = nb.locator(f"{_SOLUTIONS} summary").first
    first.scroll_into_view_if_needed()
    first.click()
    page.wait_for_timeout(300)
    assert _solutions_open(nb) == [True] + [False] * (len(opened) - 1)
    assert nb.locator(f"{_SOLUTIONS} .details-body").first.is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    nb.locator(_SOLUTIONS).first.screenshot(path=str(ARTIFACTS / f"lab-solution-{Path(notebook).stem}.png"))
    first.click()                                   # and closed again
    page.wait_for_timeout(300)
    return len(opened)


def _assert_no_solution_visible(nb):
    bodies = nb.locator(f"{_SOLUTIONS} .details-body")
    assert not any(_solutions_open(nb)), "a solution is open"
    assert not any(bodies.nth(i).is_visible() for i in range(bodies.count()))


@pytest.mark.parametrize("notebook", _chapters())
def test_chapter_in_jupyterlab(lab, browser, notebook):
    if notebook == "(none)":
        pytest.skip("no chapters yet")
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(lab.url(notebook), wait_until="domcontentloaded")
    if notebook in MYST_CHAPTERS:
        nb = panel(page, notebook)
        _check_myst_as_opened(page, nb, notebook)
    run_all_cells(page, notebook)
    if notebook in MYST_CHAPTERS:
        _assert_no_solution_visible(nb)             # Run All opened none of them
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"lab-{Path(notebook).stem}.png"
    INTERACTIONS[notebook](page, shot)
    context.close()
    assert not errors, f"errors in the page: {errors}"
