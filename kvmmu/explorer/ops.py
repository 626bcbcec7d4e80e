"""What an actor asks for (``Op``) and how a run or a restore ends early.

An actor ``yield``s an :class:`Op` for every step; ``Op.key()`` is the pending
step's part of the state key.  :class:`Violation` ends a run with a named
violation (lock misuse, an actor's ``assert``); ``_Diverged`` tells
``explore`` that the snapshot engine cannot be trusted for this scenario, so
it starts over with the replay engine.

Simplifies: an Op is one indivisible step; nothing between two yields is
visible to another actor.
"""
from __future__ import annotations

from .freeze import _freeze

__all__ = ["Op", "Violation"]


class Violation(Exception):
    """Raised by an operation to end the run with a named violation.

    Primitives raise it for misuse (unlocking a lock the actor does not
    hold); an actor's own ``assert`` becomes one too.
    """

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _refuse_op(prim, kind, args, run):
    # Off the hot path: only a bad Op gets here.
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple, got {type(args).__name__}")
    if not callable(run):
        raise TypeError(f"run must be callable as run(prim, args, cpu, world), got {run!r}")


class Op:
    """One step an actor asks for: ``run(prim, args, cpu, world)`` performs it.

    ``enabled(prim, args, cpu, world)`` (None: always) says whether the step
    can happen now; an actor whose pending step is not enabled is blocked.
    ``footprint`` (optional, a :class:`~kvmmu.explorer.footprint.Footprint`)
    declares what the step reads and writes, for the partial-order
    reduction; None asks the primitive (its ``_footprint(kind, args)``), and
    a step nobody describes conflicts with every other.  Actors never build
    these: they ``yield from`` the primitives' methods.
    """

    __slots__ = ("prim", "kind", "args", "run", "enabled", "footprint")

    def __init__(self, prim, kind: str, args, run, enabled=None, footprint=None):
        if type(kind) is not str or type(args) is not tuple or not callable(run):
            _refuse_op(prim, kind, args, run)
        self.prim = prim
        self.kind = kind
        self.args = args
        self.run = run
        self.enabled = enabled
        self.footprint = footprint

    def key(self):
        """The hashable identity of this pending step (part of the state key)."""
        name = "" if self.prim is None else self.prim.name
        args = self.args
        for a in args:
            if type(a) is not int and type(a) is not str:
                return (name, self.kind, None, _freeze(args))
        return (name, self.kind, args)       # plain ints and strings: already a key

    _freeze_key = key          # how freeze.py keys an Op met inside a value

    def what(self) -> str:
        """What the step will do, before it runs: ``write_lock(mmu_lock)``."""
        if self.prim is None:
            return self.args[0]
        return self.prim._what(self.kind, self.args)

    def label(self, result, cpu: str, world) -> str:
        """What the step did, after it ran (the table's cell text)."""
        if self.prim is None:
            text = self.args[0]
            if self.kind == "step" and result is not None:
                text += f" -> {result!r}"
            return text
        return self.prim._label(self.kind, self.args, result, cpu)

    def why_blocked(self, cpu: str, world) -> str:
        """Why the step cannot happen now (for errors and deadlock reports)."""
        if self.prim is None:
            return f"waiting until {self.args[0]}"
        return self.prim._why_blocked(self.kind, self.args, cpu)


class _Diverged(Exception):
    """An actor rebuilt from its own history did not come back to the same state."""
