"""Measure the built book's chapter pages as a reader sees them (Chromium, 1280x900).

For each chapter page: screens (page height / 900), prose words (the text a
reader reads, outside code and outputs), blocks that scroll sideways (code,
outputs, tables), shrunk images (shown at less than 1/1.6 of their drawn
width, or with text too small), widget roots rendered against the widget
outputs the notebook holds, internal vocabulary a reader has no key for,
and answers visible without a click (solution text or a solution cell's
output outside a closed dropdown).

    .venv/bin/python tools/measure_pages.py _build/html     # prints the table
    .venv/bin/python tools/measure_pages.py _build/html book/appendix_kernel_xref.html

tests/test_browser_measure.py runs :func:`measure` on the book the test
session builds and fails past the goals of issue 12.
"""
from __future__ import annotations

import functools
import http.server
import json
import re
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1280, "height": 900}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]

#: Words a reader has no key for: the fact sheet's labels and the sheet itself.
INTERNAL = re.compile(r"kernel-facts|fact sheet|\bR[1-7]\.\d\b|§\s?\d")

#: The goals of issue 12 (the browser test fails past them).
GOALS = {"screens": 20, "prose_words": 2600, "sideways": 0, "shrunk": 0,
         "internal": 0, "answers_visible": 0}

_MEASURE_JS = r"""
() => {
  const main = document.querySelector('main') || document.body;
  const isCode = el => el.closest('div.cell, pre, .highlight, .cell_output, table, '
                                  + '.jupyter-widgets, script, style, .MathJax');
  // prose: text nodes of the article outside code, outputs, tables and widgets
  let words = 0;
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const n = walker.currentNode;
    const el = n.parentElement;
    if (!el || isCode(el)) continue;
    if (el.closest('nav, .bd-sidebar, .prev-next-area, footer, .headerlink, .toc-entry'))
      continue;
    words += (n.textContent.match(/[A-Za-z0-9][\w'\-\.\/]*/g) || []).length;
  }
  // sideways: blocks whose content is wider than their box
  const blocks = [...main.querySelectorAll('pre, div.highlight, div.output, .cell_output > div, '
                                           + 'table, .jupyter-widgets')];
  const sideways = [];
  for (const b of blocks) {
    if (b.offsetParent === null) continue;
    if (b.scrollWidth > b.clientWidth + 2) {
      sideways.push({tag: b.tagName, cls: b.className.slice(0, 60),
                     scroll: b.scrollWidth, client: b.clientWidth});
    }
  }
  // images: drawn width against shown width
  const shrunk = [];
  for (const img of main.querySelectorAll('img')) {
    if (!img.naturalWidth || img.offsetParent === null) continue;
    const shown = img.getBoundingClientRect().width;
    const ratio = img.naturalWidth / Math.max(shown, 1);
    if (ratio > 1.6 * (window.devicePixelRatio || 1) + 0.05)
      shrunk.push({src: img.src.split('/').pop().slice(0, 40), natural: img.naturalWidth,
                   shown: Math.round(shown), ratio: +ratio.toFixed(2)});
  }
  // answers: solution text, or a solution cell's output, visible without a click
  let answers = 0;
  for (const sol of main.querySelectorAll('.solution, details.solution, div.solution')) {
    const body = sol.querySelector('.admonition-title ~ *, summary ~ *') || sol;
    if (sol.tagName === 'DETAILS' && !sol.open) continue;
    if (sol.classList.contains('dropdown') && !sol.open && sol.tagName !== 'DETAILS') {
      const hidden = [...sol.children].slice(1).every(c => c.offsetParent === null);
      if (hidden) continue;
    }
    if (body && body.offsetParent !== null && body.innerText.trim()) answers += 1;
  }
  for (const cell of main.querySelectorAll('div.cell.tag_hide-input, div.cell.tag_solution')) {
    const out = cell.querySelector('.cell_output');
    if (out && out.offsetParent !== null && out.innerText.trim()) answers += 1;
  }
  const text = main.innerText;
  return {
    height: document.documentElement.scrollHeight,
    words,
    sideways,
    shrunk,
    widget_views: document.querySelectorAll(
      'script[type="application/vnd.jupyter.widget-view+json"]').length,
    widget_roots: [...document.querySelectorAll(
      'script[type="application/vnd.jupyter.widget-view+json"]')]
      .map(s => [...s.parentElement.children].filter(c => c.classList.contains('widget-subarea')).length)
      .reduce((a, b) => a + b, 0),
    internal: (text.match(new RegExp(%s, 'g')) || []),
    answers,
  };
}
"""


def notebook_widget_outputs(notebook: Path) -> int:
    """How many widget views the notebook's stored outputs hold."""
    nb = json.loads(notebook.read_text())
    n = 0
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                n += 1
    return n


def _serve(html: Path):
    handler = functools.partial(_Quiet, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def measure(html: Path, pages: list[str], browser=None) -> dict:
    """Measure each page (a path relative to ``html``); a dict page -> figures."""
    from playwright.sync_api import sync_playwright
    server = _serve(Path(html))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    js = _MEASURE_JS % json.dumps(INTERNAL.pattern)
    results = {}
    try:
        with sync_playwright() as p:
            own = browser is None
            if own:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                            args=CHROMIUM_ARGS, headless=True)
            for page_path in pages:
                ctx = browser.new_context(viewport=VIEWPORT)
                ctx.route("**/*", lambda r: r.continue_() if "127.0.0.1" in r.request.url
                          else r.abort())
                page = ctx.new_page()
                page.goto(f"{base}/{page_path}", wait_until="networkidle")
                page.wait_for_timeout(500)
                raw = page.evaluate(js)
                ctx.close()
                results[page_path] = {
                    "screens": round(raw["height"] / VIEWPORT["height"], 1),
                    "prose_words": raw["words"],
                    "sideways": len(raw["sideways"]),
                    "widest": max([s["scroll"] for s in raw["sideways"]], default=0),
                    "shrunk": len(raw["shrunk"]),
                    "widget_views": raw["widget_views"],
                    "widget_roots": raw["widget_roots"],
                    "internal": len(raw["internal"]),
                    "answers_visible": raw["answers"],
                    "detail": raw,
                }
            if own:
                browser.close()
    finally:
        server.shutdown()
    return results


def table(results: dict) -> str:
    """The figures as a Markdown table, one row per page."""
    cols = ["screens", "prose_words", "sideways", "widest", "shrunk", "widget_views",
            "widget_roots", "internal", "answers_visible"]
    lines = ["| page | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for page, r in results.items():
        lines.append(f"| {page} | " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv) -> int:
    html = Path(argv[1] if len(argv) > 1 else ROOT / "_build" / "html")
    sys.path.insert(0, str(ROOT / "tools"))
    from toc import chapter_notebooks
    # Pages named after the build directory (book/appendix_kernel_xref.html) are
    # measured instead of the chapters.
    named = [a for a in argv[2:] if a.endswith(".html")]
    pages = named or [nb[: -len(".ipynb")] + ".html" for nb in chapter_notebooks()]
    pages = [p for p in pages if (html / p).exists()]
    results = measure(html, pages)
    print(table(results))
    if "--json" in argv:
        print(json.dumps({p: {k: v for k, v in r.items() if k != "detail"}
                          for p, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
