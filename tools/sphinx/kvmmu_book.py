"""Small Sphinx fixes for the kvmmu book (loaded through _config.yml).

sphinx-thebe and sphinx-togglebutton, which Jupyter Book 1 always loads,
emit their inline configuration scripts twice on notebook pages; the second
copy of thebe's redeclares a ``const`` and the browser reports a SyntaxError on
every chapter.  myst-nb likewise adds the widget scripts (require.js, the
offline shim, the widget renderer) twice, so every widget snapshot rendered
twice.  After the build we drop exact repeats of inline scripts and of
scripts loaded by ``src`` from each page (data scripts are left alone).
"""
import re
from pathlib import Path

_INLINE_SCRIPT = re.compile(r"[ \t]*<script>[^<]*</script>\n?")
_SRC_SCRIPT = re.compile(r'[ \t]*<script(?: [a-z-]+="[^"]*")* src="[^"]+"(?: [a-z-]+="[^"]*")*>'
                         r"</script>\n?")


def _drop_repeated_inline_scripts(html: str) -> str:
    seen = set()

    def keep_first(match):
        text = match.group(0).strip()
        if text in seen:
            return ""
        seen.add(text)
        return match.group(0)

    html = _INLINE_SCRIPT.sub(keep_first, html)
    return _SRC_SCRIPT.sub(keep_first, html)


def _fix_pages(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        if "_static" in page.relative_to(app.outdir).parts:
            continue
        html = page.read_text(encoding="utf-8")
        fixed = _drop_repeated_inline_scripts(html)
        if fixed != html:
            page.write_text(fixed, encoding="utf-8")


def setup(app):
    app.connect("build-finished", _fix_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
