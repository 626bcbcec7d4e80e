"""The table of contents and nbval agree: every chapter is validated, strictly."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from toc import book_notebooks, toc_files, toc_notebooks  # noqa: E402


def test_every_toc_entry_exists():
    for name in toc_files():
        assert any((ROOT / f"{name}{ext}").exists() for ext in (".ipynb", ".md")), (
            f"_toc.yml names {name}, but neither {name}.ipynb nor {name}.md exists")


def test_every_notebook_is_in_the_toc():
    missing = sorted(set(book_notebooks()) - set(toc_notebooks()))
    assert not missing, f"notebooks under book/ missing from _toc.yml: {missing}"


def test_nbval_is_strict(pytestconfig):
    assert pytestconfig.getoption("nbval"), "run pytest with --nbval (pyproject addopts has it)"
    assert not pytestconfig.getoption("nbval_lax"), "nbval must compare outputs (no --nbval-lax)"


def test_every_toc_notebook_is_validated(pytestconfig, collected_notebooks):
    args = [Path(a.split("::")[0]).resolve() for a in pytestconfig.args]
    book = (ROOT / "book").resolve()
    covers_book = any(a in (ROOT, book) for a in args)
    if not covers_book:
        pytest.skip("this run does not include book/; `make test` runs every chapter")
    not_validated = sorted(set(toc_notebooks()) - collected_notebooks)
    assert not not_validated, f"chapters in _toc.yml that nbval did not collect: {not_validated}"
