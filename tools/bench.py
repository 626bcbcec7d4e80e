"""Measure the figures the issues name.  Prints them; asserts nothing.

    make bench                 # everything
    python tools/bench.py import book
    python tools/bench.py tests

Sections: import (import time of kvmmu and of each model module), tests (the
full test command, set-up excluded), book (a clean book build from stored
outputs), chapters (tools/bench_explorer.py and each tools/bench_ch*.py), nbval
(each chapter's strict nbval run, timed alone), spin (tools/bench_spin.py: the
explorer and SPIN side by side).
"""
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _run(cmd, **kw):
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)
    return time.perf_counter() - started, result


def bench_import():
    probe = ("import time, sys; t = time.perf_counter(); import {mod}; "
             "d = time.perf_counter() - t; "
             "print(f'{{d:.4f}}', sorted(m for m in ('matplotlib', 'ipywidgets') if m in sys.modules))")
    mods = ["kvmmu"] + sorted(
        f"kvmmu.{p.stem}" for p in (ROOT / "kvmmu").glob("*.py") if p.stem != "__init__")
    for mod in mods:
        best = None
        for _ in range(5):
            _, r = _run([PY, "-c", probe.format(mod=mod)])
            if r.returncode != 0:
                print(f"import {mod}: FAILED {r.stderr.strip().splitlines()[-1:]}")
                break
            seconds, heavy = r.stdout.split(" ", 1)
            best = min(best or 1e9, float(seconds))
        if best is not None:
            print(f"import {mod:28s} {best * 1000:7.1f} ms (best of 5); views imported: {heavy.strip()}")


def bench_tests():
    seconds, r = _run([PY, "-m", "pytest", "-q", "-p", "no:randomly"])
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
    print(f"full test command: {seconds:.1f} s wall ({tail})")


def bench_book():
    jb = Path(PY).with_name("jupyter-book")
    with tempfile.TemporaryDirectory() as out:
        seconds, r = _run([str(jb), "build", str(ROOT), "--path-output", out,
                           "--warningiserror", "--nitpick", "--keep-going"])
        status = "ok" if r.returncode == 0 else "FAILED"
        page = Path(out) / "_build" / "html" / "book"
        print(f"clean book build: {seconds:.1f} s ({status})")
        for html in sorted(page.glob("ch*.html")):
            weight = html.stat().st_size
            print(f"  page weight {html.name}: {weight / 1024:.0f} KiB HTML")
        shutil.rmtree(out, ignore_errors=True)


def bench_chapters():
    for script in sorted((ROOT / "tools").glob("bench_*.py")):
        if script.name == "bench_spin.py":
            continue                  # its own section, "spin"
        seconds, r = _run([PY, str(script)])
        print(f"--- {script.name} ({seconds:.1f} s)")
        print(r.stdout.rstrip() or r.stderr.rstrip()[-500:])


def bench_nbval():
    sys.path.insert(0, str(ROOT / "tools"))
    from toc import toc_notebooks

    total = 0.0
    for nb in toc_notebooks():
        seconds, r = _run([PY, "-m", "pytest", "-q", "-n", "0", nb])
        total += seconds
        tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "?"
        print(f"nbval {nb}: {seconds:.1f} s wall ({tail})")
    print(f"nbval over every notebook, one after another: {total:.1f} s")
    seconds, r = _run([PY, "-m", "pytest", "-q", "book"])
    print(f"nbval over book/ as the test command runs it (2 workers): {seconds:.1f} s")


def bench_spin():
    seconds, r = _run([PY, str(ROOT / "tools" / "bench_spin.py")])
    print(f"--- bench_spin.py ({seconds:.1f} s)")
    print(r.stdout.rstrip() or r.stderr.rstrip()[-500:])


SECTIONS = {"import": bench_import, "tests": bench_tests, "book": bench_book, "chapters": bench_chapters,
            "nbval": bench_nbval, "spin": bench_spin}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(SECTIONS):
        SECTIONS[name]()
