"""Throughput of kvmmu.explorer: the legacy engine against the memo engine, with and without reduction.

Prints figures, asserts nothing (run by `make bench`):
    python tools/bench_explorer.py            # the cases below
    python tools/bench_explorer.py book       # every race scenario of the book, old vs new

For each case, in the same run and on the same machine, one after the other
(best CPU time of REPEAT runs each): the legacy engine (method
"snapshot-legacy", the engine before the memo engine: today's figures), the
memo engine with the full search (reduction=False) and the memo engine as
explore() runs by default (partial-order reduction).  "speed-up" is the
legacy CPU time over the default's; "tr/s" is transitions per CPU second.
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvmmu.explorer import (Actor, Invariant, Scenario, World, explore, lost_update,  # noqa: E402
                            srcu_grace_period)

REPEAT = 5


class W(World):
    def __init__(self):
        super().__init__()
        self.counter = self.word("counter", 0)
        self.lock = self.spinlock("lock")
        self.own = [self.word(f"own{i}", 0) for i in range(3)]


def locked_incs(k):
    def actor(w):          # 4 steps per iteration: lock, read, write, unlock
        for _ in range(k):
            yield from w.lock.lock()
            v = yield from w.counter.read()
            yield from w.counter.write(v + 1)
            yield from w.lock.unlock()
    return actor


def cmpxchg_incs(k):
    def actor(w):          # 2 steps per iteration without contention
        for _ in range(k):
            old = yield from w.counter.read()
            while True:
                ok, old = yield from w.counter.try_cmpxchg(old, old + 1)
                if ok:
                    break
    return actor


def independent(i, k):
    def actor(w):          # 2 steps per iteration on the actor's own word
        for _ in range(k):
            v = yield from w.own[i].read()
            yield from w.own[i].write(v + 1)
    return actor


def scenario(name, fns, total):
    # The invariant declares what it reads, so that the reduction knows that
    # a write of an own word cannot change its verdict.
    return Scenario(name, W, [Actor(chr(65 + i), f"cpu{i}", f) for i, f in enumerate(fns)],
                    invariants=[Invariant("counter bounded", lambda w: w.counter.value <= total,
                                          reads=("counter",))])


CASES = [
    ("lost update: counterexample", lost_update(False), dict(stop_at_first=True)),
    ("srcu without sync: counterexample", srcu_grace_period(False), dict(stop_at_first=True)),
    ("2 actors x 20 steps, spinlock", scenario("2x20 lock", [locked_incs(5)] * 2, 10), {}),
    ("2 actors x 20 steps, cmpxchg", scenario("2x20 cmpxchg", [cmpxchg_incs(10)] * 2, 20), {}),
    ("3 actors x 20 steps, independent",
     scenario("3x20 indep", [independent(i, 10) for i in range(3)], 0), {}),
    ("3 actors x 20 steps, spinlock", scenario("3x20 lock", [locked_incs(5)] * 3, 15), {}),
]

ENGINES = [("legacy", dict(method="snapshot-legacy")),
           ("full", dict(method="snapshot", reduction=False)),
           ("default", dict(method="snapshot"))]


def measure(make, kw, repeat=REPEAT):
    """[(engine, best CPU seconds, Result)] for each engine, runs interleaved."""
    best = {name: None for name, _ in ENGINES}
    results = {}
    for _ in range(repeat):
        for name, ekw in ENGINES:
            sc = make()
            c0 = time.process_time()
            r = explore(sc, **ekw, **kw)
            cpu = time.process_time() - c0
            if best[name] is None or cpu < best[name]:
                best[name] = cpu
            results[name] = r
    return [(name, best[name], results[name]) for name, _ in ENGINES]


def row(title, rows):
    legacy = rows[0][1]
    out = []
    for name, cpu, r in rows:
        ratio = legacy / cpu if cpu > 0 else float("inf")
        out.append(f"{title:36s} {name:8s} {cpu * 1000:9.1f} ms cpu  states {r.states:6d}  "
                   f"transitions {r.transitions:6d}  {r.transitions / cpu:9.0f} tr/s  "
                   f"x{ratio:6.1f}  {r.search:21s} violated={r.violated}")
        title = ""
    return "\n".join(out)


def main():
    print(f"CPU time, best of {REPEAT} interleaved runs; x = legacy CPU time / this engine's")
    for title, sc, kw in CASES:
        print(row(title, measure(lambda sc=sc: sc, kw)))


def book():
    sys.path.insert(0, str(ROOT / "tests"))
    from explorer_book_scenarios import book_scenarios
    print("every race scenario of the book, stop_at_first=False (as check_race does); "
          "best of 3")
    totals = {name: 0.0 for name, _ in ENGINES}
    for title, factory in book_scenarios():
        rows = measure(factory, dict(stop_at_first=False), repeat=3)
        for name, cpu, _ in rows:
            totals[name] += cpu
        print(row(title[:36], rows))
    legacy = totals["legacy"]
    print("total: " + ", ".join(f"{name} {cpu:.2f} s (x{legacy / cpu:.1f})"
                                for name, cpu in totals.items()))


if __name__ == "__main__":
    book() if sys.argv[1:] == ["book"] else main()
