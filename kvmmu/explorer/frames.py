"""The whole local state of a suspended actor, read from its generator frames.

``_gen_key`` keys a generator by code, suspended instruction, bound locals and
the frozen values of locals, cells and value stack (for loop iterators,
half-evaluated operands, the sub-generator of ``yield from``).  CPython 3.11
shows the value stack to ``gc.get_referents``; ``_probe_frames`` checks it at
import and ``_FRAMES_OK`` records the answer (if False, actors are keyed by the
values they received instead).  The primitives' own methods are
``_TRANSPARENT``: only their position is kept.
"""
from __future__ import annotations

import gc
import types

from . import freeze as _freeze_mod
from .freeze import _freeze
from .locks import Mutex, RWLock, SpinLock
from .primitives import Word
from .rcu import RCU, SRCU
from .world import step, wait_until

__all__ = []


def _gen_key(gen):
    """The whole local state of a suspended generator (see the module docstring)."""
    fr = gen.gi_frame
    code = gen.gi_code
    if fr is None:
        return ("gen", code.co_qualname, "finished")
    if code in _TRANSPARENT:
        # A primitive's method: its locals are the primitive and the arguments,
        # which the pending Op's key holds; only the position is left.
        return ("call", code.co_qualname, fr.f_lasti)
    names = tuple(sorted(fr.f_locals))   # the bound locals (this refreshes the frame's
    #                                      locals dict, whose order depends on history: sort)
    refs = gc.get_referents(gen)     # code, name, qualname, [frame, locals dict], func, code,
    i = 1                            # then locals, cells and the value stack
    while refs[i] is not code:
        i += 1
    return ("gen", code.co_qualname, code.co_firstlineno, fr.f_lasti, names,
            tuple(map(_freeze, refs[i + 1:])))


def _probe_frames() -> bool:
    """Check that this CPython shows a generator's value stack to gc.get_referents."""
    def sub():
        return (yield None)

    def probe():
        for v in ["loop-item-1", "loop-item-2"]:
            yield from sub()
        total = 40 + (yield from sub())
        return total

    try:
        g = probe()
        next(g)
        first = _gen_key(g)
        g.send(None)
        second = _gen_key(g)        # same f_lasti, same locals: only the iterator moved
        g.send(None)
        third = _gen_key(g)
        return (first != second and first[3] == second[3] and first[4] == second[4]
                and 40 in third[5])
    except Exception:   # pragma: no cover - only on an unexpected interpreter
        return False


#: Code of the primitives' generator methods (see _gen_key).
_TRANSPARENT = frozenset(
    f.__code__ for f in (
        Word.read, Word.write, Word.xchg, Word.try_cmpxchg, SpinLock.lock, SpinLock.unlock,
        Mutex.lock, Mutex.unlock, RWLock.read_lock, RWLock.read_unlock, RWLock.write_lock,
        RWLock.write_unlock, SRCU.read_lock, SRCU.read_unlock, SRCU.synchronize,
        RCU.read_lock, RCU.read_unlock, RCU.synchronize, step, wait_until))

_freeze_mod._TYPE_FREEZERS[types.GeneratorType] = _gen_key
_FRAMES_OK = _probe_frames()
