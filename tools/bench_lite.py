"""Measure the live book (issue: the published book runs live).  Prints; asserts nothing.

    python tools/bench_lite.py          (also run by `make bench`, section chapters)

- added build time: tools/lite.py on a built book, from an empty download cache
  (npm's and pip's own caches as they are) and again with its cache warm;
- added size of the site (shared by every page), and what it is made of;
- in Chromium (network cut: only loopback), for each live chapter: from pressing
  "Run it live" to the kernel's first output, the widget, with an empty HTTP
  cache and again in a second page of the same browser context (cached);
- a widget click answered in the page: time from a click on the chapter's
  control to the change in its output, measured inside the page.

Targets (issue): build <= 60 s, ready <= 15 s, click <= 0.5 s, size <= 60 MB.
"""
import functools
import http.server
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))
import lite  # noqa: E402

#: Per live chapter: (the control to click, the element whose text must change,
#: and optionally how many clicks change it: the race player's A steps 12 times).
CLICKS = {
    "book/ch01_spte_format.ipynb": (".kvmmu-spte-widget .kvmmu-spte-bit-11",
                                    ".kvmmu-spte-widget .kvmmu-spte-out"),
    "book/ch03_frozen_spte_flush.ipynb": (".kvmmu-race-widget .kvmmu-race-step-a",
                                          ".kvmmu-race-widget .kvmmu-race-out", 12),
    # Each GUP reference raises the count, so every click changes the text.
    "book/ch04_guest_memfd_folio_put.ipynb": (".kvmmu-folio-widget .kvmmu-folio-get-ref",
                                              ".kvmmu-folio-widget .kvmmu-folio-out"),
}
CLICK_REPEATS = 20
WIDGET = ".jp-CodeConsole .jp-OutputArea-output .jupyter-widgets"

# Click the control, then resolve with the milliseconds until the output's text
# changes (a MutationObserver: no polling delay in the figure).
_CLICK_JS = """async ([control, output]) => {
  const out = document.querySelector(output), before = out.innerText;
  const t0 = performance.now();
  const changed = new Promise(resolve => {
    const obs = new MutationObserver(() => {
      if (out.innerText !== before) { obs.disconnect(); resolve(performance.now() - t0); }
    });
    obs.observe(out, {subtree: true, childList: true, characterData: true});
  });
  document.querySelector(control).click();
  return await changed;
}"""


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _book(out: Path) -> Path:
    jb = Path(sys.executable).with_name("jupyter-book")
    subprocess.run([str(jb), "build", str(ROOT), "--path-output", str(out), "--keep-going"],
                   check=True, capture_output=True, text=True)
    return out / "_build" / "html"


def bench_build(html: Path) -> None:
    with tempfile.TemporaryDirectory() as cache:
        for label in ("empty cache", "warm cache"):
            started = time.perf_counter()
            site = lite.build(html, cache=Path(cache))
            print(f"lite build ({label}): {time.perf_counter() - started:.1f} s")
    static = site / "static" / "pyodide"
    wheels = sum(p.stat().st_size for p in static.glob("*.whl"))
    runtime = _size(static) - wheels
    total = _size(site)
    print(f"lite site size: {total / 1e6:.1f} MB shared by every page "
          f"(Pyodide runtime {runtime / 1e6:.1f} MB, {len(list(static.glob('*.whl')))} wheels "
          f"{wheels / 1e6:.1f} MB, JupyterLite app {(total - runtime - wheels) / 1e6:.1f} MB)")


def _serve(directory: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _start_live(page, url: str) -> tuple[float, object]:
    page.goto(url, wait_until="networkidle")
    control = page.locator(".kvmmu-live").first
    started = time.perf_counter()
    control.locator(".kvmmu-live-start").click()
    frame = control.locator("iframe").element_handle().content_frame()
    frame.wait_for_selector(WIDGET, timeout=120000)
    return time.perf_counter() - started, frame


def bench_browser(html: Path) -> None:
    from playwright.sync_api import sync_playwright

    server = _serve(html)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    left = []

    def only_loopback(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        for notebook, (control, output, *repeats) in CLICKS.items():
            repeats = repeats[0] if repeats else CLICK_REPEATS
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.route("**/*", only_loopback)
            url = f"{base}/{notebook[: -len('.ipynb')]}.html"
            cold, frame = _start_live(context.new_page(), url)
            clicks = [frame.evaluate(_CLICK_JS, [control, output]) / 1000
                      for _ in range(repeats)]
            warm, _ = _start_live(context.new_page(), url)
            context.close()
            print(f"{notebook}: live widget ready {cold:.1f} s (empty HTTP cache), "
                  f"{warm:.1f} s (cached)")
            print(f"{notebook}: click answered in the page: median "
                  f"{statistics.median(clicks):.3f} s, max {max(clicks):.3f} s "
                  f"({repeats} clicks)")
        browser.close()
    server.shutdown()
    print(f"requests that tried to leave the machine: {len(left)}")


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        html = _book(Path(out))
        print(f"book build without the lite site: {time.perf_counter() - started:.1f} s")
        bench_build(html)
        if Path("/usr/bin/chromium").exists():
            bench_browser(html)
        else:
            print("browser figures skipped: apt-get install -y chromium")
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
