"""The API reference appendix is what tools/api_appendix.py writes from the package.

A module added to the package, or one whose first docstring line changed,
makes this fail until the page is rewritten (`.venv/bin/python
tools/api_appendix.py`); the book build (tests/test_book_build.py) then checks
that autodoc documents it without a warning.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import api_appendix  # noqa: E402


def test_committed_page_is_what_the_tool_writes():
    assert api_appendix.PAGE.read_text() == api_appendix.page(), (
        "book/appendix_api.md is stale: run .venv/bin/python tools/api_appendix.py")


def test_every_model_module_has_a_section():
    text = api_appendix.PAGE.read_text()
    for name in api_appendix._modules():
        assert f".. automodule:: kvmmu.{name}\n" in text, name


def test_views_and_generators_are_not_documented_as_model():
    text = api_appendix.PAGE.read_text()
    for name in api_appendix.SKIP:
        assert f".. automodule:: kvmmu.{name}\n" not in text
