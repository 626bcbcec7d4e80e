"""The live book's build pieces that need no browser: the site's Pyodide lock
(tools/lite.py) and the "Run it live" control's address (tools/sphinx/kvmmu_live.py)."""
import sys
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tools" / "sphinx"))
import lite  # noqa: E402
from kvmmu_live import live_cells, repl_url  # noqa: E402

INFO = {"abi_version": "2026_0", "arch": "wasm32", "platform": "emscripten_5_0_3",
        "python": "3.14.2"}


def _wheel(tmp_path: Path, name: str, version: str, requires=()) -> Path:
    path = tmp_path / f"{name}-{version}-py3-none-any.whl"
    meta = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(meta) + "\n")
        zf.writestr(f"{name}/__init__.py", "")
    return path


def _upstream(name, version, depends=()):
    return {"name": name, "version": version, "file_name": f"{name}-{version}-py3-none-any.whl",
            "sha256": "repacked", "depends": list(depends), "imports": [name],
            "install_dir": "site", "package_type": "package", "unvendored_tests": False}


@pytest.fixture
def small(tmp_path, monkeypatch):
    """A lock of three packages (one unused), and wheels for what the site loads."""
    monkeypatch.setattr(lite, "LIVE_PACKAGES", ("app",))
    npm_lock = {"info": INFO, "packages": {
        "lib": _upstream("lib", "1.0", ["dep"]), "dep": _upstream("dep", "2.0"),
        "numpy": _upstream("numpy", "3.0")}}
    wheels = {"app": _wheel(tmp_path, "app", "0.1",
                            ["lib>=1", "win-only; sys_platform == 'win32'", "doc; extra == 'docs'"]),
              "lib": _wheel(tmp_path, "lib", "1.0"), "dep": _wheel(tmp_path, "dep", "2.0")}
    return npm_lock, wheels


def test_site_lock_keeps_what_is_loaded_and_points_at_the_served_wheels(small):
    npm_lock, wheels = small
    lock = lite.site_lock(npm_lock, wheels)
    assert lock["info"] == INFO
    assert sorted(lock["packages"]) == ["app", "dep", "lib"]   # no numpy
    lib, app = lock["packages"]["lib"], lock["packages"]["app"]
    assert lib["sha256"] != "repacked" and len(lib["sha256"]) == 64
    assert lib["file_name"] == wheels["lib"].name and lib["depends"] == ["dep"]
    # A package the upstream lock does not know gets an entry from its metadata,
    # with the requirements that apply in the browser only.
    assert app["depends"] == ["lib"] and app["imports"] == ["app"]
    assert app["file_name"] == wheels["app"].name


def test_site_lock_refuses_a_wheel_at_another_version_than_the_lock(small, tmp_path):
    npm_lock, wheels = small
    wheels["dep"] = _wheel(tmp_path, "dep", "2.1")
    with pytest.raises(SystemExit, match="dep==2.0"):
        lite.site_lock(npm_lock, wheels)


def test_site_lock_names_a_missing_wheel(small):
    npm_lock, wheels = small
    del wheels["lib"]
    with pytest.raises(SystemExit, match="lib==1.0.*lite-wheels.txt"):
        lite.site_lock(npm_lock, wheels)


def test_site_lock_refuses_another_python(small):
    npm_lock, wheels = small
    npm_lock["info"] = dict(INFO, python="3.15.0")
    with pytest.raises(SystemExit, match="3.15.0"):
        lite.site_lock(npm_lock, wheels)


def test_the_pinned_wheels_have_hashes_and_cover_the_kernel_and_widgets():
    """(Whether they cover Pyodide's whole lock closure, at its versions, is
    site_lock's check at build time: Pyodide's lock comes from npm then.)"""
    pins = {}
    for line in lite.WHEELS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split()[0].split("==")
            pins[lite.canonicalize_name(name)] = version
    assert all("--hash=sha256:" in line for line in lite.WHEELS.read_text().splitlines()
               if line and not line.startswith("#"))
    assert {"micropip", "ipython", "jedi", "ipywidgets", "comm", "jupyterlab-widgets"} <= set(pins)


def test_live_cells_and_the_repl_address():
    nb = {"cells": [
        {"cell_type": "markdown", "source": "x", "metadata": {"tags": ["live"]}},
        {"cell_type": "code", "source": ["a = 1\n", "a"], "metadata": {"tags": ["live"]}},
        {"cell_type": "code", "source": "b", "metadata": {}}]}
    assert live_cells(nb) == [(1, "a = 1\na")]
    url = repl_url("book/ch01_spte_format.html", 'w("x & y", 0x1F)\n')
    parts = urlsplit(url)
    assert parts.path == "../lite/repl/index.html"
    query = parse_qs(parts.query)
    assert query["code"] == ['w("x & y", 0x1F)\n'] and query["execute"] == ["1"]
    assert "toolbar" not in query    # the REPL shows a toolbar whenever it is named
