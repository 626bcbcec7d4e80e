"""Each chapter's exhaustive checks: states, transitions and CPU time, with and without reduction.

Prints figures, asserts nothing:
    python tools/bench_chapters.py

For every race scenario of the book (tests/explorer_book_scenarios.py, the
same list the reduction's soundness test runs), ``explore(stop_at_first=False)``
as the chapters' checks run it, once with the partial-order reduction (the
default) and once without (``reduction=False``); CPU time is the best of
REPEAT runs.  "search" says which search the default's counts come from.
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from explorer_book_scenarios import book_scenarios  # noqa: E402

from kvmmu.explorer import explore  # noqa: E402

REPEAT = 3


def _best(factory, **kw):
    best, result = None, None
    for _ in range(REPEAT):
        sc = factory()
        c0 = time.process_time()
        result = explore(sc, stop_at_first=False, **kw)
        cpu = time.process_time() - c0
        best = cpu if best is None else min(best, cpu)
    return best, result


def main():
    print(f"CPU s, best of {REPEAT}; actors = the scenario's CPUs")
    print(f"{'scenario':52s} {'actors':>6s} | {'reduced: states':>15s} {'trans':>7s} "
          f"{'cpu s':>7s} {'search':>21s} | {'full: states':>12s} {'trans':>7s} {'cpu s':>7s}")
    for title, factory in book_scenarios():
        n = len(factory().actors)
        red_cpu, red = _best(factory)
        full_cpu, full = _best(factory, reduction=False)
        print(f"{title[:52]:52s} {n:6d} | {red.states:15d} {red.transitions:7d} {red_cpu:7.3f} "
              f"{red.search:>21s} | {full.states:12d} {full.transitions:7d} {full_cpu:7.3f}")


if __name__ == "__main__":
    main()
