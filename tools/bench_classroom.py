"""Measure the classroom: the nbgrader pipeline per chapter, and Run All per chapter in JupyterLab.

    python tools/bench_classroom.py            # both
    python tools/bench_classroom.py nbgrader
    python tools/bench_classroom.py lab

nbgrader: in a temporary course, per chapter with an assignment: build the
source notebook, ``nbgrader generate_assignment``, one submission of the
model's answers, ``nbgrader autograde``.  lab: JupyterLab on loopback serving
the classroom copy; per chapter, a fresh page opens the notebook (starting its
kernel) and runs every cell; the time is from opening to the last cell done,
so kernel start is included; the median of three runs is printed, with the
spread.  Prints the figures; asserts nothing.
"""
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
#: Each chapter is opened and run this many times; the median is the figure.
RUNS = 3
sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402
from toc import chapter_notebooks  # noqa: E402


def _timed(args, cwd) -> float:
    started = time.perf_counter()
    env = classroom.nbgrader_env()
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(result.stdout[-2000:] + result.stderr[-2000:])
    return time.perf_counter() - started


def bench_nbgrader():
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        started = time.perf_counter()
        timings = classroom.build_course(out)
        total = time.perf_counter() - started
        for chapter, spec in classroom.assignments().items():
            nb = nbformat.read(out / "release" / chapter / f"{chapter}.ipynb", as_version=4)
            answers = {n: p.answer() for n, p in enumerate(spec.handout("student1").problems, 1)}
            for cell in nb.cells:
                grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
                if grade_id.startswith("answer_"):
                    cell.source = f"{grade_id} = {answers[int(grade_id.split('_')[1])]!r}"
            folder = out / "submitted" / "student1" / chapter
            folder.mkdir(parents=True)
            nbformat.write(nb, folder / f"{chapter}.ipynb")
            seconds = _timed(classroom.nbgrader("autograde", chapter), out)
            total += seconds
            print(f"nbgrader {chapter}: source + generate_assignment {timings[chapter]:.1f} s, "
                  f"autograde of one submission {seconds:.1f} s")
        print(f"nbgrader pipeline, every chapter with an assignment ({len(timings)}): {total:.1f} s")


def bench_lab():
    if not Path("/usr/bin/chromium").exists():
        print("lab: skipped, no /usr/bin/chromium (apt-get install -y chromium)")
        return
    from lab_copy import refresh
    from lab_server import LabServer
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        work = Path(tmp)
        refresh(work / "book")
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        with LabServer(work) as lab:
            page = browser.new_page()            # load JupyterLab itself once, untimed
            page.goto(lab.url(""), wait_until="networkidle")
            page.close()
            for notebook in chapter_notebooks():
                runs = sorted(_open_and_run_all(browser, lab, notebook) for _ in range(RUNS))
                print(f"lab Run All {notebook}: median {statistics.median(runs):.1f} s "
                      f"(min {runs[0]:.1f}, max {runs[-1]:.1f}, {RUNS} runs; open, kernel start, every cell)")
        browser.close()


def _open_and_run_all(browser, lab, notebook: str) -> float:
    """Seconds from opening ``notebook`` in a fresh page (a new kernel) to its last cell done."""
    from lab_server import run_all_cells

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    started = time.perf_counter()
    page.goto(lab.url(notebook), wait_until="domcontentloaded")
    run_all_cells(page, notebook)
    seconds = time.perf_counter() - started
    page.evaluate("() => window.jupyterapp.commands.execute('kernelmenu:shutdown')")
    page.close()
    return seconds


SECTIONS = {"nbgrader": bench_nbgrader, "lab": bench_lab}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(SECTIONS):
        SECTIONS[name]()
