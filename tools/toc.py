"""Read the book's table of contents: which notebooks are chapters."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _files(node):
    if isinstance(node, dict):
        if "file" in node:
            yield node["file"]
        for key in ("root", "chapters", "sections", "parts"):
            value = node.get(key)
            if isinstance(value, str):
                yield value
            elif isinstance(value, list):
                for child in value:
                    yield from _files(child)


def toc_files() -> list[str]:
    """Every document named in ``_toc.yml``, without suffix, in book order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return list(_files(toc))


def toc_notebooks() -> list[str]:
    """The ``.ipynb`` chapters named in ``_toc.yml``, relative to the root."""
    return [f"{f}.ipynb" for f in toc_files() if (ROOT / f"{f}.ipynb").exists()]


def book_notebooks() -> list[str]:
    """Every ``.ipynb`` under ``book/`` (build output and checkpoints excluded)."""
    found = []
    for p in sorted((ROOT / "book").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in p.parts or "_build" in p.parts:
            continue
        found.append(p.relative_to(ROOT).as_posix())
    return found


def chapter_notebooks() -> list[str]:
    """The chapters proper (the "Chapters" part of the TOC), without appendices."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = []
    for part in toc.get("parts", []):
        if part.get("caption") == "Chapters":
            files.extend(_files({"chapters": part.get("chapters", [])}))
    return [f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]
