"""Shared test set-up.

- records which notebooks nbval collected this session (tests/test_toc.py);
- builds the HTML book once per session for every test that reads it;
- serves it on loopback to a browser whose requests off the machine are cut.
"""
import functools
import http.server
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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
    """Build the book from the stored outputs, warnings as errors, once per session,
    with its live site (tools/lite.py) as `make book` builds it."""
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
    log = result.stdout[-6000:] + result.stderr[-6000:]
    if result.returncode == 0:
        result = subprocess.run([sys.executable, str(ROOT / "tools" / "lite.py"),
                                 str(out / "_build" / "html")],
                                capture_output=True, text=True, timeout=900)
        log += result.stdout[-3000:] + result.stderr[-3000:]
    return BuiltBook(result.returncode, log, out / "_build" / "html")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def book_server(built_book):
    """The built book served on loopback; yields its base URL."""
    assert built_book.returncode == 0, built_book.log
    handler = functools.partial(_QuietHandler, directory=str(built_book.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def cut_network(context) -> list:
    """Abort every request of a browser ``context`` that would leave the machine;
    return the list the aborted URLs are recorded in."""
    left_machine = []

    def only_loopback(route):
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            left_machine.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    return left_machine


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
