"""Shared test set-up.

- records which notebooks nbval collected this session (tests/test_toc.py);
- builds the HTML book once per session for every test that reads it.
"""
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
COLLECTED_NOTEBOOKS = pytest.StashKey[set]()


def pytest_collection_modifyitems(session, config, items):
    notebooks = set()
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.suffix == ".ipynb":
            notebooks.add(path.relative_to(ROOT).as_posix())
    config.stash[COLLECTED_NOTEBOOKS] = notebooks


@pytest.fixture
def collected_notebooks(request) -> set:
    return request.config.stash.get(COLLECTED_NOTEBOOKS, set())


@dataclass
class BuiltBook:
    returncode: int
    log: str
    html: Path


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> BuiltBook:
    """Build the book from the stored outputs, warnings as errors, once per session."""
    import web_assets

    web_assets.install()
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jb), "build", str(ROOT), "--path-output", str(out),
         "--warningiserror", "--nitpick", "--keep-going"],
        capture_output=True, text=True, timeout=900,
    )
    shutil.rmtree(out / "_build" / ".doctrees", ignore_errors=True)
    return BuiltBook(result.returncode, result.stdout[-6000:] + result.stderr[-6000:],
                     out / "_build" / "html")


def chromium_or_skip():
    """Return the path of Debian's Chromium, or skip naming the install command."""
    path = Path("/usr/bin/chromium")
    if not path.exists():
        pytest.skip("Chromium is not installed: run `apt-get install -y chromium` "
                    "(.ci/run does) to run the browser tests")
    return str(path)


CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (skips, naming the install command, without it)."""
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
