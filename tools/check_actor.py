"""Find where an actor reads shared state between steps: rebuild it on a stale world."""
import copy, sys, importlib
from kvmmu.explorer.frames import _gen_key
from kvmmu.explorer.run import _as_op
def check(sc, letter="A"):
    i = [a.letter for a in sc.actors].index(letter)
    w = sc.world(); w._seal()
    stale = sc.world(); stale._seal()
    g = sc.actors[i].fn(w)
    hist = []; y = next(g)
    n = 0
    while True:
        op = _as_op(y, sc, i)
        if op.enabled is not None and not op.enabled(op.prim, op.args, letter, w):
            print("blocked at", n, op.what()); return
        r = op.run(op.prim, op.args, letter, w)
        hist.append(copy.deepcopy(r))
        try:
            y = g.send(r)
        except StopIteration:
            print("finished after", n, "steps"); return
        n += 1
        k1 = _gen_key(g)
        g2 = sc.actors[i].fn(stale)
        y2 = next(g2)
        try:
            for h in hist:
                y2 = g2.send(copy.deepcopy(h))
            k2 = _gen_key(g2)
        except Exception as e:
            print("step", n, "rebuild raised", type(e).__name__, e, "after", op.label(r, letter, w)); return
        if k1 != k2:
            print("step", n, "after", op.label(r, letter, w))
            diff(k1, k2); return
def diff(a, b, path=""):
    if type(a) != type(b) or not isinstance(a, tuple) or len(a) != len(b):
        print(" differ at", path, "\n   ", str(a)[:300], "\n   ", str(b)[:300]); return True
    for j, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return diff(x, y, path + f"[{j}]")
