"""The HTML book builds from the stored outputs with warnings as errors."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import web_assets  # noqa: E402


@pytest.mark.book
def test_book_builds_without_warnings(tmp_path):
    jb = Path(sys.executable).with_name("jupyter-book")
    assert jb.exists(), f"jupyter-book is not installed beside {sys.executable}"
    web_assets.install()
    result = subprocess.run(
        [str(jb), "build", str(ROOT), "--path-output", str(tmp_path),
         "--warningiserror", "--nitpick", "--keep-going"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    html = tmp_path / "_build" / "html"
    assert (html / "index.html").exists()
    assert (html / "book" / "intro.html").exists()
    shutil.rmtree(tmp_path / "_build" / ".doctrees", ignore_errors=True)
