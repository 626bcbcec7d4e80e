"""tools/lab_copy.py: the copy of book/ that `make lab` serves (what it changes, what it keeps)."""
import hashlib
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import lab_copy  # noqa: E402
from toc import chapter_notebooks  # noqa: E402

CH1 = "ch01_spte_format.ipynb"


def _book_digests():
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ROOT / "book").iterdir()
            if p.is_file()}


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    before = _book_digests()
    out = tmp_path_factory.mktemp("lab") / "book"
    lab_copy.refresh(out)
    assert _book_digests() == before             # book/ is only read
    return out


def _markdown(nb):
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_every_book_file_is_copied(copy):
    assert {p.name for p in (ROOT / "book").iterdir() if p.is_file()} <= {p.name for p in copy.iterdir()}


@pytest.mark.parametrize("notebook", [Path(nb).name for nb in chapter_notebooks()])
def test_solutions_hold_their_code_and_output(copy, notebook):
    book = nbformat.read(ROOT / "book" / notebook, as_version=4)
    lab = nbformat.read(copy / notebook, as_version=4)
    # A hidden code cell right after a solution is the solution's: it moves into
    # the dropdown.  One elsewhere (a chapter's set-up) stays a code cell.
    hidden = [c for prev, c in zip(book.cells, book.cells[1:])
              if _after_solution(prev, c)]
    assert len(lab.cells) == len(book.cells) - len(hidden) + 2       # + references, + glossary
    for cell in hidden:
        assert cell.source.rstrip() in _markdown(lab)
        assert lab_copy._outputs_text(cell) in _markdown(lab)
    assert not [c for prev, c in zip(lab.cells, lab.cells[1:]) if _after_solution(prev, c)]


def _after_solution(prev, cell) -> bool:
    return (lab_copy._is_hidden_code(cell) and prev.cell_type == "markdown"
            and any(lab_copy._FENCE.match(line) for line in prev.source.splitlines()))


@pytest.mark.parametrize("notebook", [Path(nb).name for nb in chapter_notebooks()])
def test_roles_resolve_inside_the_notebook(copy, notebook):
    lab = nbformat.read(copy / notebook, as_version=4)
    text = _markdown(lab)
    assert "{cite}" not in text
    for m in lab_copy._ROLE.finditer(text):
        assert m.group(1) in ("term", "ref")
    glossary = lab.cells[-1].source
    assert glossary.startswith("## Terms used here") and "```{glossary}" in glossary
    for m in lab_copy._ROLE.finditer(text):
        if m.group(1) == "term":
            assert f"\n{lab_copy._role_target(m.group(2)).lower()}\n: " in glossary.lower()
    assert lab.cells[-2].source.startswith("## References cited here")


def test_a_cross_notebook_ref_becomes_a_link(copy):
    lab = nbformat.read(copy / "ch03_frozen_spte_flush.ipynb", as_version=4)
    assert "{ref}`ch-spte`" not in _markdown(lab)
    assert "[SPTE format](ch01_spte_format.ipynb)" in _markdown(lab)


def test_opening_adds_nothing(copy):
    lab = nbformat.read(copy / CH1, as_version=4)
    assert lab.metadata.language_info.version == ".".join(map(str, sys.version_info[:3]))
    for cell in lab.cells:
        if cell.metadata.get("jupyter", {}).get("outputs_hidden"):
            assert cell.metadata.get("collapsed") is True


def test_refresh_keeps_a_students_changes(tmp_path):
    out = tmp_path / "book"
    lab_copy.refresh(out)
    mine = out / CH1
    mine.write_text(mine.read_text().replace("SPTE format", "SPTE format (my notes)", 1))
    stale = out / "ch02_host_mapping_level.ipynb"
    fresh = stale.read_bytes()
    assert lab_copy.refresh(out) == [CH1]
    assert "my notes" in mine.read_text() and stale.read_bytes() == fresh
    mine.unlink()
    assert lab_copy.refresh(out) == [] and "my notes" not in mine.read_text()
