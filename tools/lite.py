"""Build the live book: a JupyterLite site that runs the chapters' widgets in the page.

    python tools/lite.py [HTML_DIR]        (default _build/html; `make book` calls it)

writes HTML_DIR/lite/, one site shared by every page: JupyterLite's REPL app
with the Pyodide kernel, Pyodide itself, and every wheel the kernel and the
widgets import, so a reader needs neither a server nor the network.  A chapter
page's "run it live" control (tools/sphinx/kvmmu_live.py) opens the REPL in
an iframe with the chapter's live cell as its code.

Everything is pinned and comes from the package registries at build time:
- Pyodide from npm (tools/lite-assets.json, through tools/web_assets.py);
- the kernel's Python packages and the widget library from PyPI
  (tools/lite-wheels.txt, pip's --require-hashes);
- kvmmu itself built as a wheel from the working tree.
Pyodide's lock lists hundreds of packages whose wheels its npm package does not
ship, with the hashes of Pyodide's repacked wheels.  The site's lock keeps only
what the kernel and the live cells load, each pointing at a wheel the site
serves: the lock's own packages at the lock's versions from PyPI, and kvmmu, the
widget library and the kernel's own wheels with entries made from their
metadata, so Pyodide loads all of them at once when it starts (no piplite
installs one by one; PyPI fallback is off).  The kernel addon's
``--pyodide-lock`` would do this through pyodide-lock and uv, but the
pyodide-lock that reads Pyodide 314's lock needs Python 3.12, and the book is
built with 3.11.  Downloads are cached in _build/lite-cache/.
"""
import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))
import web_assets  # noqa: E402

CACHE = ROOT / "_build" / "lite-cache"
ASSETS = TOOLS / "lite-assets.json"
WHEELS = TOOLS / "lite-wheels.txt"
SITE = "lite"
KERNEL_PLUGIN = "@jupyterlite/pyodide-kernel-extension:kernel"
#: The only lab extensions the site needs: the widget manager and the kernel.
EXTENSIONS = ("@jupyter-widgets/jupyterlab-manager", "@jupyterlite/pyodide-kernel-extension")
#: What the kernel imports when it starts (see its worker's initPackageManager
#: and initKernel), and what the live cells import: all of it goes in the lock
#: and is loaded with Pyodide, in parallel, with its dependencies.
LIVE_PACKAGES = ("micropip", "piplite", "pyodide-kernel", "ipykernel", "comm", "jedi",
                 "ipython", "ipywidgets", "kvmmu")
#: Environment the browser's Python evaluates wheel requirement markers in.
BROWSER_ENV = {"python_version": "3.14", "python_full_version": "3.14.2",
               "sys_platform": "emscripten", "platform_system": "Emscripten",
               "platform_machine": "wasm32", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def _run(cmd: list[str], **kw) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:4]))} ... failed:\n"
                         f"{result.stdout[-3000:]}{result.stderr[-3000:]}")


@contextlib.contextmanager
def _locked(path: Path):
    """One build at a time per cache: two test workers may both build the book."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pypi_wheels(dest: Path) -> dict[str, Path]:
    """Download the pinned wheels (once; pip checks every hash); return them by name."""
    stamp = dest / ".installed.txt"
    if not (stamp.exists() and stamp.read_text() == WHEELS.read_text()):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
              "--no-deps", "--only-binary=:all:", "--require-hashes",
              "--python-version", BROWSER_ENV["python_version"], "--implementation", "py",
              "--abi", "none", "--platform", "any", "-d", str(dest), "-r", str(WHEELS)])
        stamp.write_text(WHEELS.read_text())
    return {canonicalize_name(parse_wheel_filename(w.name)[0]): w for w in dest.glob("*.whl")}


def _kvmmu_sources() -> list[Path]:
    skip = ("__pycache__", ".pyc")
    files = [p for p in (ROOT / "kvmmu").rglob("*")
             if p.is_file() and not any(s in p.as_posix() for s in skip)]
    return sorted(files) + [ROOT / "pyproject.toml", ROOT / "README.md"]


def _kvmmu_wheel(cache: Path) -> Path:
    """kvmmu's wheel built from the working tree; rebuilt only when its sources change.

    Built from a copy of the sources, so no build/ folder is left in the tree.
    """
    digest = hashlib.sha256()
    for path in _kvmmu_sources():
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    dest = cache / digest.hexdigest()[:16]
    built = list(dest.glob("kvmmu-*.whl"))
    if built:
        return built[0]
    shutil.rmtree(cache, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for path in _kvmmu_sources():
            target = src / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
              "--no-deps", "-w", str(dest), str(src)])
    return next(dest.glob("kvmmu-*.whl"))


def _wheel_metadata(wheel: Path) -> tuple[list[str], list[str]]:
    """What ``wheel`` needs in the browser (canonical names) and the modules it provides."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        lines = zf.read(f"{info}/METADATA").decode().splitlines()
        top_level = f"{info}/top_level.txt"
        if top_level in names:
            imports = zf.read(top_level).decode().split()
        else:
            imports = sorted({n.split("/")[0] for n in names
                              if n.count("/") == 1 and n.endswith("/__init__.py")})
    requires = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(BROWSER_ENV):
                requires.append(canonicalize_name(req.name))
    return requires, imports


def _local_entry(wheel: Path) -> dict:
    """A lock entry for a wheel Pyodide's lock does not know (kvmmu, the widgets, the kernel's)."""
    name, version, _, _ = parse_wheel_filename(wheel.name)
    requires, imports = _wheel_metadata(wheel)
    return {"name": str(name), "version": str(version), "file_name": wheel.name,
            "install_dir": "site", "package_type": "package", "imports": imports,
            "depends": requires, "unvendored_tests": False}


def site_lock(npm_lock: dict, wheels: dict[str, Path]) -> dict:
    """The site's Pyodide lock: what the kernel and the live cells load, every wheel local.

    Starts from the packages the kernel and the book load when the kernel
    starts (LIVE_PACKAGES), closes over their dependencies, and takes each from
    ``wheels``: an npm-lock package keeps its entry with the PyPI wheel's file
    and hash, any other gets an entry from the wheel's own metadata.
    """
    if not npm_lock["info"]["python"].startswith(BROWSER_ENV["python_version"] + "."):
        raise SystemExit(f"Pyodide runs Python {npm_lock['info']['python']}, tools/lite.py "
                         f"expects {BROWSER_ENV['python_version']}: update BROWSER_ENV")
    upstream = {canonicalize_name(k): v for k, v in npm_lock["packages"].items()}
    todo, out = list(LIVE_PACKAGES), {}
    while todo:
        name = canonicalize_name(todo.pop())
        if name in out:
            continue
        wheel, entry = wheels.get(name), upstream.get(name)
        if entry is not None:
            if wheel is None or parse_wheel_filename(wheel.name)[1].public != entry["version"]:
                raise SystemExit(f"Pyodide's lock needs {name}=={entry['version']}: pin that "
                                 f"wheel (with its PyPI sha256) in {WHEELS.relative_to(ROOT)}")
            entry = dict(entry, file_name=wheel.name)
        elif wheel is not None:
            entry = _local_entry(wheel)
        else:
            raise SystemExit(f"the live book needs {name}: pin its wheel in "
                             f"{WHEELS.relative_to(ROOT)}")
        entry["sha256"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
        out[name] = entry
        todo += [canonicalize_name(d) for d in entry["depends"]]
    return {"info": npm_lock["info"], "packages": dict(sorted(out.items()))}


def _lite_config() -> dict:
    return {
        "jupyter-lite-schema-version": 0,
        "jupyter-config-data": {
            "appName": "kvmmu live",
            "disabledExtensions": [
                # JupyterLite 0.8.6's REPL app ships this plugin without the
                # notebook tracker it requires: it fails to start, loudly.
                "@jupyterlab/codemirror-extension:commands",
                # No service worker: it only syncs files between the browser's
                # storage and Python, and the live cells need no files.  Without
                # it every request is the page's own, and none bypasses the
                # browser's (or a test's) view of the network.
                "@jupyterlite/application-extension:service-worker-manager",
            ],
            "litePluginSettings": {KERNEL_PLUGIN: {
                "pyodideUrl": "./static/pyodide/pyodide.mjs",
                "disablePyPIFallback": True,
                # Loaded with Pyodide, in parallel; the kernel then skips
                # installing them one by one.
                "loadPyodideOptions": {"packages": list(LIVE_PACKAGES)},
            }},
        },
    }


def _kernel_wheels() -> dict[str, Path]:
    """The wheels the kernel extension ships (piplite, pyodide-kernel, ipykernel stubs)."""
    pypi = (Path(sys.prefix) / "share" / "jupyter" / "labextensions" / EXTENSIONS[1]
            / "static" / "pypi")
    wheels = {}
    for wheel in sorted(pypi.glob("*.whl")):  # widgetsnbextension: keep the 4.x stub
        wheels[canonicalize_name(parse_wheel_filename(wheel.name)[0])] = wheel
    return wheels


def stage(work: Path) -> Path:
    """Lay out what ``jupyter lite build`` reads in ``work`` (the cache); return the lite directory."""
    npm = web_assets.install(spec=ASSETS, vendor=work / "npm")
    lite = work / "lite-dir"
    shutil.rmtree(lite, ignore_errors=True)
    pyodide = lite / "static" / "pyodide"
    shutil.copytree(npm / "pyodide", pyodide)
    wheels = {**_kernel_wheels(), **_pypi_wheels(work / "wheels")}
    kvmmu = _kvmmu_wheel(work / "kvmmu-wheel")
    wheels["kvmmu"] = kvmmu
    lock = site_lock(json.loads((pyodide / "pyodide-lock.json").read_text()), wheels)
    for name in lock["packages"]:
        shutil.copy2(wheels[name], pyodide)
    (pyodide / "pyodide-lock.json").write_text(json.dumps(lock, indent=1))
    labextensions = work / "labextensions"
    shutil.rmtree(labextensions, ignore_errors=True)
    for ext in EXTENSIONS:
        shutil.copytree(Path(sys.prefix) / "share" / "jupyter" / "labextensions" / ext,
                        labextensions / ext)
    (lite / "jupyter-lite.json").write_text(json.dumps(_lite_config(), indent=2))
    return lite


def build(html_dir: Path, cache: Path = CACHE) -> Path:
    """Build the lite site into ``html_dir``/lite, downloads cached in ``cache``; return the site."""
    out = html_dir.resolve() / SITE
    with _locked(cache):
        lite = stage(cache)
        shutil.rmtree(out, ignore_errors=True)
        _run([sys.executable, "-m", "jupyter", "lite", "build", "--lite-dir", str(lite),
              "--output-dir", str(out), "--apps", "repl", "--no-sourcemaps",
              "--ignore-sys-prefix",
              f"--FederatedExtensionAddon.extra_labextensions_path={lite.parent / 'labextensions'}"],
             cwd=lite)
    return out


if __name__ == "__main__":
    html = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "_build" / "html"
    site = build(html)
    print(f"live book site in {site}")
