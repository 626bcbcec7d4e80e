"""Chapter 2's figures: the time of each exhaustive check, and the chapter's nbval time.

    python tools/bench_ch2.py            # both
    python tools/bench_ch2.py explore    # only the exhaustive checks
    python tools/bench_ch2.py nbval      # only nbval of the chapter

Prints; asserts nothing (the target is <= 1 s per exhaustive check).
tools/bench.py runs this file in its "chapters" section.
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
NOTEBOOK = "book/ch02_host_mapping_level.ipynb"
TARGET = 1.0


def bench_explore(repeat: int = 3) -> None:
    from kvmmu.explorer import explore
    from kvmmu.scenarios.host_level import SCENARIOS

    print(f"exhaustive checks (explore, full search, best of {repeat}; target <= {TARGET:.1f} s;"
          " wall and this process's CPU seconds; on a busy machine CPU is the fair one):")
    worst = 0.0
    for name, entry in SCENARIOS.items():
        best = cpu = None
        for _ in range(repeat):
            scenario = entry.build()
            started, cpu_started = time.perf_counter(), time.process_time()
            # stop_at_first=False: the whole state space, also for the unsafe variants
            result = explore(scenario, stop_at_first=False)
            seconds = time.perf_counter() - started
            cpu_seconds = time.process_time() - cpu_started
            best = seconds if best is None else min(best, seconds)
            cpu = cpu_seconds if cpu is None else min(cpu, cpu_seconds)
        worst = max(worst, best)
        verdict = "holds" if not result.violated else "VIOLATED"
        expected = "as expected" if verdict.lower() == {"holds": "holds",
                                                        "violated": "violated"}[entry.expect] \
            else "UNEXPECTED"
        flag = "" if best <= TARGET else "  OVER TARGET"
        print(f"  {name:26s} {best:6.3f} s ({cpu:5.3f} cpu)  {result.states:5d} states "
              f"{result.transitions:6d} transitions  {result.method:8s}  {verdict} "
              f"({expected}){flag}")
    print(f"  slowest: {worst:.3f} s")


def bench_nbval() -> None:
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--nbval", NOTEBOOK], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
    print(f"nbval {NOTEBOOK}: {seconds:.1f} s wall ({tail})")


SECTIONS = {"explore": bench_explore, "nbval": bench_nbval}

if __name__ == "__main__":
    for section in sys.argv[1:] or list(SECTIONS):
        SECTIONS[section]()
