"""Throughput of kvmmu.explorer (transitions per CPU second) and the issue's timing targets.

Prints figures, asserts nothing (run by `make bench`):
    python tools/bench_explorer.py
"""
import time

from kvmmu.explorer import (Actor, Invariant, Scenario, World, explore, lost_update,
                            srcu_grace_period)


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


def main():
    for title, sc, kw in CASES:
        for order, method in (("bfs", "snapshot"), ("dfs", "snapshot"), ("bfs", "replay")):
            best, cpu_best = None, None
            for _ in range(3):
                c0 = time.process_time()
                r = explore(sc, order=order, method=method, **kw)
                cpu = time.process_time() - c0
                if cpu_best is None or cpu < cpu_best:
                    best, cpu_best = r, cpu
            print(f"{title:34s} {order}/{method:8s} {cpu_best * 1000:8.1f} ms cpu "
                  f"{best.seconds * 1000:8.1f} ms wall  states {best.states:6d}  "
                  f"transitions {best.transitions:6d}  {best.transitions / cpu_best:7.0f} tr/s"
                  f"  violated={best.violated}")


if __name__ == "__main__":
    main()
