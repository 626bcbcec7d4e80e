"""Chapter 4 figures: each exhaustive check's time, and the chapter's nbval time.

    python tools/bench_ch4.py            # both
    python tools/bench_ch4.py explore    # only the exhaustive checks
    python tools/bench_ch4.py nbval      # only the notebook

Prints; asserts nothing (the target is <= 1 s per exhaustive check).  Each
check is a named scenario of ``kvmmu.scenarios.guest_memfd`` explored
exhaustively (stop_at_first=False, as the chapter's comparison tables do)
three times; the best wall time and the best CPU time of this process
(``time.process_time``: what a loaded machine does not inflate) are reported
beside the explorer's own counts and the engine it ran on.
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvmmu.scenarios import guest_memfd as S  # noqa: E402


def bench_explore():
    worst = worst_cpu = 0.0
    for name, entry in S.SCENARIOS.items():
        best = cpu = None
        for _ in range(3):
            sc = entry.build()
            started, cpu_started = time.perf_counter(), time.process_time()
            res, _outcomes = S.explore_outcomes(sc, stop_at_first=False)
            took, used = time.perf_counter() - started, time.process_time() - cpu_started
            best = took if best is None else min(best, took)
            cpu = used if cpu is None else min(cpu, used)
        worst = max(worst, best)
        worst_cpu = max(worst_cpu, cpu)
        kinds = ", ".join(n for n, _ in res.violations) or "holds"
        print(f"{name:40s} {best * 1000:7.1f} ms wall {cpu * 1000:7.1f} ms CPU "
              f"{res.states:5d} states {res.transitions:5d} transitions  {res.method:8s} {kinds}")
    print(f"slowest exhaustive check: {worst * 1000:.1f} ms wall, {worst_cpu * 1000:.1f} ms CPU "
          "(target <= 1000 ms)")


def bench_nbval():
    nb = ROOT / "book" / "ch04_guest_memfd_folio_put.ipynb"
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "no:xdist", "-o", "addopts=", "--nbval", str(nb),
                        "--nbval-sanitize-with", "tests/sanitize.cfg"],
                       cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - started
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
    print(f"nbval {nb.name}: {took:.1f} s wall ({tail})")


SECTIONS = {"explore": bench_explore, "nbval": bench_nbval}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(SECTIONS):
        SECTIONS[name]()
