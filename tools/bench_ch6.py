"""Chapter 6 figures: each exhaustive check's time, and the chapter's nbval time.

    python tools/bench_ch6.py            # both
    python tools/bench_ch6.py explore    # only the explorer runs
    python tools/bench_ch6.py nbval      # only the notebook

Prints; asserts nothing (the target is <= 1 s per exhaustive check).  Every
explorer run the chapter makes is repeated ``REPEAT`` times, as the chapter
makes it: ``check_race`` (every interleaving, breadth-first) for the
exhaustive checks, ``explore`` stopping at the first violation for the
counterexamples it prints.  The best wall time is reported beside the
explorer's own counts and the engine it used; CPU time of the best run is
printed too: on a shared machine it is the steadier figure.
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvmmu import explorer as ex  # noqa: E402
from kvmmu.scenarios import prefault as P  # noqa: E402

REPEAT = 3
POLICIES = ["6.17", "6.18", "RET_PF_RETRY_INVALID_SLOT", "drop-srcu", "drop-srcu+reload"]


def checks():
    """(title, scenario factory, exhaustive?) for every explorer run of the chapter."""
    out = [("one call vs delete, 6.17, slot zap (first violation)",
            lambda: P.prefault_race("6.17", "delete", "one call", slot_zap_all=False), False),
           ("KVM_RUN vs delete, 6.17",
            lambda: P.prefault_race("6.17", "delete", "KVM_RUN"), True),
           ("one call + signal vs delete, 6.17, slot zap",
            lambda: P.prefault_race("6.17", "delete", "one call", signal=True,
                                    slot_zap_all=False), True),
           ("TDX populate vs delete, slot zap",
            lambda: P.prefault_race("6.17", "delete", "TDX populate", slot_zap_all=False), True)]
    for policy in POLICIES:
        for writer in ("delete", "move"):
            out.append((f"loop vs {writer}, {policy}, slot zap",
                        lambda p=policy, w=writer: P.prefault_race(p, w, slot_zap_all=False),
                        True))
    out.append(("loop vs move, RET_PF_RETRY_INVALID_SLOT (first violation)",
                lambda: P.prefault_race("RET_PF_RETRY_INVALID_SLOT", "move", slot_zap_all=False),
                False))
    for policy, frees in (("drop-srcu", True), ("drop-srcu+reload", True),
                          ("drop-srcu+reload", False)):
        knob = "" if frees else ", old reload"
        out.append((f"loop vs delete, {policy}, fast zap{knob}",
                    lambda p=policy, f=frees: P.prefault_race(
                        p, "delete", reload_frees_obsolete_roots=f), True))
    out.append(("loop vs delete, drop-srcu, fast zap (first violation)",
                lambda: P.prefault_race("drop-srcu", "delete"), False))
    out.append(("loop vs delete, 6.18, fast zap (first violation)",
                lambda: P.prefault_race("6.18", "delete"), False))
    for writer in ("delete", "move"):
        out.append((f"loop vs {writer}, 6.18+request-break, fast zap",
                    lambda w=writer: P.prefault_race("6.18+request-break", w), True))
    for case in range(3):
        for policy, zap in (("6.17", False), ("6.18", False), ("6.17", True), ("6.18", True),
                            ("6.18+request-break", True)):
            knob = "fast zap" if zap else "slot zap"
            out.append((f"selftest case {case + 1}, {policy}, {knob}",
                        lambda c=case, p=policy, z=zap: P.selftest_race(c, p, slot_zap_all=z),
                        True))
    return out


def bench_explore():
    worst = (0.0, "")
    total = 0.0
    for title, build, exhaustive in checks():
        best = None
        for _ in range(REPEAT):
            sc = build()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            res = ex.explore(sc, stop_at_first=not exhaustive)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            if best is None or wall < best[0]:
                best = (wall, cpu)
        total += best[0]
        if exhaustive:
            worst = max(worst, (best[0], title))
        kinds = ", ".join(sorted({n for n, _ in res.violations})) or "holds"
        print(f"{title:58s} {best[0] * 1000:7.1f} ms wall {best[1] * 1000:7.1f} ms cpu "
              f"{res.states:5d} states {res.transitions:5d} transitions {res.method:8s} "
              f"{kinds[:30]}")
    print(f"slowest exhaustive check: {worst[0] * 1000:.1f} ms ({worst[1]}); "
          f"target <= 1000 ms; all {len(checks())} runs: {total:.1f} s")


def bench_nbval():
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-o",
                        "addopts=--nbval -p no:cacheprovider", "book/ch06_prefault_eagain.ipynb",
                        "--nbval-sanitize-with", "tests/sanitize.cfg"], cwd=ROOT,
                       capture_output=True, text=True)
    seconds = time.perf_counter() - started
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
    print(f"nbval book/ch06_prefault_eagain.ipynb: {seconds:.1f} s wall ({tail})")


SECTIONS = {"explore": bench_explore, "nbval": bench_nbval}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(SECTIONS):
        SECTIONS[name]()
