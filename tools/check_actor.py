"""Find where an actor reads shared state between steps (CONTRIBUTING.md, "CPU code").

The explorer's snapshot engine rebuilds an actor by calling it again and
sending it, one by one, the results its steps returned.  That is sound only
if the actor is a function of those results: it must not read shared state
between steps, nor change its own local objects inside a step.
``check(scenario, letter)`` runs the actor alone and, after every step,
rebuilds it on a *fresh* world (a different state) and compares the two
generators' state keys; it prints the first step where they differ, and the
part of the key that does, or that the actor passed.

    .venv/bin/python -c "import sys; sys.path.insert(0, 'tools'); import check_actor; \\
        from kvmmu.scenarios import scenario; check_actor.check(scenario('NAME'), 'A')"
"""
import copy

from kvmmu.explorer.frames import _gen_key
from kvmmu.explorer.run import _as_op


def check(sc, letter: str = "A") -> bool:
    """Return True if actor ``letter`` of scenario ``sc`` rebuilds to the same state every step."""
    i = [a.letter for a in sc.actors].index(letter)
    world, stale = sc.world(), sc.world()
    world._seal()
    stale._seal()
    gen = sc.actors[i].fn(world)
    history, n = [], 0
    y = next(gen)
    while True:
        op = _as_op(y, sc, i)
        if op.enabled is not None and not op.enabled(op.prim, op.args, letter, world):
            print(f"{letter}: blocked after {n} steps at {op.what()} (alone); checked so far")
            return True
        result = op.run(op.prim, op.args, letter, world)
        history.append(copy.deepcopy(result))
        try:
            y = gen.send(result)
        except StopIteration:
            print(f"{letter}: finished after {n + 1} steps; every rebuild agreed")
            return True
        n += 1
        key = _gen_key(gen)
        twin = sc.actors[i].fn(stale)
        next(twin)
        try:
            for h in history:
                twin.send(copy.deepcopy(h))
        except Exception as e:      # the rebuild itself failed: a read of stale state
            print(f"{letter}: step {n}: the rebuild raised {type(e).__name__}: {e}")
            return False
        if _gen_key(twin) != key:
            print(f"{letter}: step {n}, after {op.label(result, letter, world)!r}:")
            _diff(key, _gen_key(twin))
            return False


def _diff(a, b, path: str = "") -> None:
    if type(a) is not type(b) or not isinstance(a, tuple) or len(a) != len(b):
        print(f"  differs at {path or 'top'}:\n    {str(a)[:300]}\n    {str(b)[:300]}")
        return
    for j, (x, y) in enumerate(zip(a, b)):
        if x != y:
            _diff(x, y, f"{path}[{j}]")
            return
