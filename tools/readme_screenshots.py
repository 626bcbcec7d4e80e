"""Take the README's screenshots from a built book (headless Chromium).

    python tools/readme_screenshots.py [BUILT_HTML_DIR]

Defaults to _build/html (run `make book` first).  Writes docs/images/
chapter.png (a chapter page at its race table) and widget.png (a widget
snapshot as the static book shows it).  The JupyterLab screenshots of every
widget in use are written by the browser tests to test-artifacts/.
"""
import functools
import http.server
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main(html_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"{base}/book/ch03_frozen_spte_flush.html", wait_until="networkidle")
        heading = page.locator("h2:has-text('Break it')").first
        heading.scroll_into_view_if_needed()
        page.evaluate("() => window.scrollBy(0, 330)")  # the counterexample table
        page.screenshot(path=str(OUT / "chapter.png"))
        page.goto(f"{base}/book/ch01_spte_format.html", wait_until="networkidle")
        widget = page.locator(".kvmmu-spte-widget").first
        widget.wait_for(timeout=20000)
        widget.screenshot(path=str(OUT / "widget.png"))
        browser.close()
    server.shutdown()
    print(f"wrote {OUT.relative_to(ROOT)}/chapter.png and widget.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "_build" / "html")
