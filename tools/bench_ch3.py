"""Chapter 3's figures: how fast the explorer finds and rules out the zap/fault race.

    python tools/bench_ch3.py

Prints, asserts nothing (tools/bench.py runs it with the other chapters):

- the time to the first counterexample of the unsafe zap (2 and 3 actors);
- the time to check the freezing zap over every interleaving (2 and 3 actors),
  with the state and transition counts;
- the same for the removed-table scenarios, and for the 3-actor removal race
  with a fault, which the chapter replays by schedule only (it is not one of
  the chapter's exhaustive checks);
- the wall time of the chapter's strict nbval run.

Each figure is the best of a few runs (``REPEAT``), on this machine.
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvmmu.explorer import explore  # noqa: E402
from kvmmu.scenarios import tdp_mmu as R  # noqa: E402

REPEAT = 3
NOTEBOOK = "book/ch03_frozen_spte_flush.ipynb"


def _best(fn, repeat: int = REPEAT):
    best, result = None, None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        best = seconds if best is None else min(best, seconds)
    return best, result


def time_first_counterexample(actors: int = 2):
    """Seconds to the first (shortest) counterexample of the unsafe zap; and the result."""
    return _best(lambda: explore(R.zap_vs_fault(False, actors)))


def time_fixed_exhaustive(actors: int = 2):
    """Seconds to check the freezing zap over every interleaving; and the result."""
    return _best(lambda: explore(R.zap_vs_fault(True, actors)))


def time_scenario(factory, repeat: int = REPEAT):
    """Seconds to explore any scenario to the end (or its first violation); and the result."""
    return _best(lambda: explore(factory()), repeat)


def time_nbval(notebook: str = NOTEBOOK):
    """Wall seconds of the chapter's strict nbval run; and its last output line."""
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--nbval", notebook], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-200:]
    return seconds, tail


def _line(what: str, seconds: float, res) -> str:
    verdict = f"VIOLATED after {len(res.schedule)} steps" if res.violated else "holds"
    scope = "exhaustive" if res.exhaustive else "stopped at first violation"
    return (f"{what:46s} {seconds * 1000:8.1f} ms  {verdict:26s} {res.states:6d} states "
            f"{res.transitions:7d} transitions  ({scope}, {getattr(res, 'method', '?')})")


def main() -> None:
    for actors in (2, 3):
        seconds, res = time_first_counterexample(actors)
        print(_line(f"unsafe zap, first counterexample, {actors} actors", seconds, res))
    for actors in (2, 3):
        seconds, res = time_fixed_exhaustive(actors)
        print(_line(f"freezing zap, every interleaving, {actors} actors", seconds, res))
    for name, factory in (
            ("same pfn, no freeze, 2 actors", lambda: R.zap_vs_fault(False, 2, same_pfn=True)),
            ("same pfn, no freeze, 3 actors", lambda: R.zap_vs_fault(False, 3, same_pfn=True)),
            ("removers collide (spin)", lambda: R.removers_collide(True)),
            ("removers collide (no spin)", lambda: R.removers_collide(False)),
            ("fault into a removed table", R.fault_into_removed_table),
            ("removers + a fault, 3 actors (schedules only)",
             lambda: R.removers_collide(True, fault=True))):
        seconds, res = time_scenario(factory, 1 if "schedules only" in name else REPEAT)
        print(_line(name, seconds, res))
    seconds, tail = time_nbval()
    print(f"{'nbval ' + NOTEBOOK:46s} {seconds:8.1f} s   ({tail})")


if __name__ == "__main__":
    main()
