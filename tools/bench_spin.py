"""The explorer and SPIN side by side, on the two scenarios of tools/bench_explorer.py.

    python tools/bench_spin.py

Scenarios: "3 actors x 5 locked increments of one counter" (bench_explorer's
"3 actors x 20 steps, spinlock") and "3 actors x 10 increments of their own
word" ("3 actors x 20 steps, independent"); the Promela models are
tools/spin/*.pml.  SPIN (Debian package ``spin``; installed with apt-get when
missing) needs gcc: its verifier is C generated from the model (``spin -a``)
and compiled, so its end-to-end time is that compile plus the search.  The
explorer's end-to-end time is a fresh Python process that imports it and
runs ``explore()``; its search time is the ``explore()`` call alone.  Times
are CPU seconds (user + system, children included), the best of REPEAT
runs; wall seconds are printed too.  Ratios are explorer / SPIN: below 1 the
explorer is ahead.  Prints; asserts nothing.
"""
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tools" / "spin"
REPEAT = 3

SCENARIOS = [
    # (title, Promela model, bench_explorer case title)
    ("3 actors x 5 locked increments", "locked_counter.pml", "3 actors x 20 steps, spinlock"),
    ("3 actors x 10 own-word increments", "own_words.pml", "3 actors x 20 steps, independent"),
]


def ensure_spin():
    """The path of spin, installing the Debian package when it is missing (None: cannot)."""
    spin = shutil.which("spin")
    if spin:
        return spin
    apt = ["apt-get", "install", "-y", "--no-install-recommends", "spin"]
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            return None
        apt = ["sudo", "-n"] + apt
    print("spin is missing: " + " ".join(apt))
    subprocess.run(apt, check=False)
    return shutil.which("spin")


def timed(cmd, cwd):
    """Run ``cmd``; (CPU seconds of the child, wall seconds, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {out.stderr.strip()[-400:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, out.stdout


def spin_run(spin, model, reduce=True):
    """SPIN on ``model``: best compile and search times, states, transitions."""
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(MODELS / model, tmp)
        for _ in range(REPEAT):
            c1, w1, _ = timed([spin, "-a", model], tmp)
            flags = ["-O2", "-DSAFETY"] + ([] if reduce else ["-DNOREDUCE"])
            c2, w2, _ = timed(["gcc", *flags, "-o", "pan", "pan.c"], tmp)
            c3, w3, out = timed(["./pan", "-m100000"], tmp)
            _keep(best, "compile", (c1 + c2, w1 + w2))
            _keep(best, "search", (c3, w3))
        states = int(re.search(r"(\d+) states, stored", out).group(1))
        transitions = int(re.search(r"(\d+) transitions", out).group(1))
        errors = int(re.search(r"errors: (\d+)", out).group(1))
    return dict(states=states, transitions=transitions, errors=errors, **best)


def _keep(best, name, times):
    if name not in best or times[0] < best[name][0]:
        best[name] = times


def explorer_run(case, reduction=True):
    """The explorer on bench_explorer's ``case``: search and end-to-end times, counts."""
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_explorer import CASES

    from kvmmu.explorer import explore
    sc, kw = next((sc, kw) for title, sc, kw in CASES if title == case)
    best = {}
    for _ in range(REPEAT):
        c0, w0 = time.process_time(), time.perf_counter()
        res = explore(sc, reduction=reduction, **kw)
        _keep(best, "search", (time.process_time() - c0, time.perf_counter() - w0))
    code = ("import sys; sys.path.insert(0, 'tools'); from bench_explorer import CASES; "
            "from kvmmu.explorer import explore; "
            f"sc, kw = next((s, k) for t, s, k in CASES if t == {case!r}); "
            f"r = explore(sc, reduction={reduction}, **kw); print(r.states)")
    for _ in range(REPEAT):
        cpu, wall, _ = timed([sys.executable, "-c", code], ROOT)
        _keep(best, "end to end", (cpu, wall))
    return dict(states=res.states, transitions=res.transitions,
                errors=int(res.violated), search=best["search"],
                compile=(0.0, 0.0), **{"end to end": best["end to end"]})


def main():
    spin = ensure_spin()
    if spin is None or not shutil.which("gcc"):
        print("SPIN or gcc is not available (and could not be installed): nothing to compare")
        return
    version = subprocess.run([spin, "-V"], capture_output=True, text=True).stdout.strip()
    print(f"{version}; CPU seconds (wall in brackets), best of {REPEAT}; "
          "ratio = explorer / SPIN (below 1: the explorer is ahead)")
    head = (f"{'scenario':34s} {'tool':26s} {'states':>8s} {'transitions':>12s} "
            f"{'search':>16s} {'compile':>16s} {'end to end':>16s}")
    print(head)
    for title, model, case in SCENARIOS:
        rows = [("explorer (reduced)", explorer_run(case, True)),
                ("explorer (full)", explorer_run(case, False)),
                ("SPIN (partial-order red.)", spin_run(spin, model, True)),
                ("SPIN (-DNOREDUCE)", spin_run(spin, model, False))]
        for r in rows:
            if "end to end" not in r[1]:
                c = r[1]["compile"]
                s = r[1]["search"]
                r[1]["end to end"] = (c[0] + s[0], c[1] + s[1])
        for tool, r in rows:
            cells = " ".join(f"{r[k][0]:7.3f} [{r[k][1]:6.3f}]"
                             for k in ("search", "compile", "end to end"))
            print(f"{title:34s} {tool:26s} {r['states']:8d} {r['transitions']:12d} {cells}"
                  + ("  (violation!)" if r["errors"] else ""))
            title = ""
        ex, sp = rows[0][1], rows[2][1]
        print(f"{'':34s} ratio explorer/SPIN, end to end, SPIN's compile included: "
              f"{ex['end to end'][0] / sp['end to end'][0]:.2f}; "
              f"search only, compile excluded: {ex['search'][0] / sp['search'][0]:.2f}")


if __name__ == "__main__":
    main()
