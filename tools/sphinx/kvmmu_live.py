""""Run it live" controls: a chapter's widget comes to life in the page.

A code cell tagged ``live`` gets, under its stored output (the frozen widget
snapshot), a button that starts Python in the reader's browser and runs the
cell's source there, so the widget answers clicks.  Python is the JupyterLite
site that tools/lite.py builds into the book's ``lite/`` folder (JupyterLite's
REPL with the Pyodide kernel, every wheel served by the book): the button
opens its REPL in an iframe with the cell's code, executed, and its input
hidden.  The same address is offered as a link to open it in a new tab.

So a live cell must build its widget from nothing: its own imports, no names
from earlier cells, and no matplotlib (the browser's Python has none).
"""
import html
import json
from pathlib import Path
from urllib.parse import urlencode

from docutils import nodes
from sphinx.util.osutil import relative_uri

LIVE_TAG = "live"
#: The lite site's REPL, relative to the book's root (tools/lite.py writes it).
LITE_REPL = "lite/repl/index.html"
#: The REPL's options: run the code at once, show its output, not the code (and
#: no toolbar: the REPL shows one whenever the address names it, even as 0).
REPL_OPTIONS = {"kernel": "python", "showBanner": "0",
                "hideCodeInput": "1", "execute": "1"}


def live_cells(notebook: dict) -> list[tuple[int, str]]:
    """(index, source) of every code cell of ``notebook`` tagged ``live``."""
    return [(i, "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for i, c in enumerate(notebook["cells"])
            if c["cell_type"] == "code" and LIVE_TAG in c.get("metadata", {}).get("tags", [])]


def repl_url(page_uri: str, code: str) -> str:
    """The address, relative to the page at ``page_uri``, of the REPL running ``code``."""
    return f"{relative_uri(page_uri, LITE_REPL)}?{urlencode({**REPL_OPTIONS, 'code': code})}"


def _control(url: str) -> str:
    href = html.escape(url, quote=True)
    return (
        '<div class="kvmmu-live">'
        '<button type="button" class="kvmmu-live-start">&#9654; Run it live</button> '
        '<span class="kvmmu-live-status">The widget above is a snapshot. Run it live to '
        "start Python in this page (served by the book; nothing leaves your machine; "
        "about 10 s the first time) and use it.</span> "
        f'<a class="kvmmu-live-tab" href="{href}" target="_blank" rel="noopener">'
        "open it in a new tab</a></div>")


def _add_controls(app, doctree, docname):
    if app.builder.format != "html":
        return
    source = Path(app.env.doc2path(docname))
    if source.suffix != ".ipynb":
        return
    cells = dict(live_cells(json.loads(source.read_text(encoding="utf-8"))))
    if not cells:
        return
    page_uri = app.builder.get_target_uri(docname)
    for cell in doctree.findall(nodes.container):
        if cell.get("nb_element") == "cell_code" and cell.get("cell_index") in cells:
            url = repl_url(page_uri, cells[cell["cell_index"]])
            cell.append(nodes.raw("", _control(url), format="html"))


def setup(app):
    app.connect("doctree-resolved", _add_controls)
    app.add_js_file("kvmmu-live.js", loading_method="defer")
    app.add_css_file("kvmmu-live.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
