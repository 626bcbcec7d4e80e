"""The widgets work as a person uses them: JupyterLab in a real browser.

A JupyterLab server starts on loopback with a token the test sets, serving a
scratch copy of book/ (so autosave can never touch the committed notebooks).
Each chapter is opened in Debian's Chromium driven by Playwright, run top to
bottom, and its main widget is operated like a student would: type a value,
click a button, move a slider.  The test asserts that what the widget shows
changes as the model says it should, and keeps a screenshot of every widget
after the interaction in test-artifacts/.
"""
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import chromium_or_skip
from lab_interactions import INTERACTIONS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from toc import chapter_notebooks  # noqa: E402

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    chromium_or_skip()
    work = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "book", work / "book")
    port, token = _free_port(), secrets.token_hex(16)
    # Render every cell (no windowing), so a widget far down is in the DOM.
    settings = work / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    # No "get Jupyter news?" toast over the widgets in the screenshots.
    news = work / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(work / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(work / "settings"),
               JUPYTER_RUNTIME_DIR=str(work / "runtime"), PYTHONHASHSEED="0")
    jupyter = Path(sys.executable).with_name("jupyter")
    proc = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
         "--ServerApp.open_browser=False", "--allow-root", "--LabServerApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(work / "lab.log", "w"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("JupyterLab did not start:\n" + (work / "lab.log").read_text()[-3000:])
            time.sleep(0.5)
    yield base, token
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


_PANEL = ("(() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
          " return w && w.context && w.context.path === PATH ? w : null; })()")


def run_all_cells(page, path: str):
    """Run the notebook at ``path`` top to bottom and wait until its kernel is idle."""
    panel = _PANEL.replace("PATH", repr(path))
    page.wait_for_function(f"() => {{ const w = {panel};"
                           " return !!(w && w.sessionContext?.session?.kernel"
                           "?.connectionStatus === 'connected'); }", timeout=90000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # Done when no cell is queued or running ([*]) and the kernel is idle.
    page.wait_for_function(
        f"() => {{ const w = {panel}; if (!w) return false;"
        " const busy = Array.from(w.node.querySelectorAll('.jp-InputPrompt'))"
        "   .some(p => p.textContent.includes('*'));"
        " return !busy && w.sessionContext?.session?.kernel?.status === 'idle'; }",
        timeout=240000, polling=500)


def _chapters():
    return [nb for nb in chapter_notebooks() if nb in INTERACTIONS] or ["(none)"]


def test_every_chapter_has_a_browser_interaction():
    missing = sorted(set(chapter_notebooks()) - set(INTERACTIONS))
    assert not missing, f"chapters whose main widget no browser test operates: {missing}"


@pytest.mark.parametrize("notebook", _chapters())
def test_chapter_widget_in_jupyterlab(lab, browser, notebook):
    if notebook == "(none)":
        pytest.skip("no chapters yet")
    base, token = lab
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base}/lab/tree/{notebook}?token={token}", wait_until="domcontentloaded")
    run_all_cells(page, notebook)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"lab-{Path(notebook).stem}.png"
    INTERACTIONS[notebook](page, shot)
    context.close()
    assert not errors, f"errors in the page: {errors}"
