"""A Scenario: the actors (one per CPU), the world factory they share, and what must hold.

``Actor(letter, title, fn)`` names a CPU by one schedule letter;
``Invariant(name, fn)`` is checked after every step; ``final_check`` once
every actor has finished.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .footprint import declared
from .world import World

__all__ = ["Actor", "Invariant", "Scenario"]


@dataclass(frozen=True)
class Actor:
    """One CPU: its schedule letter, a title for tables, its generator function."""

    letter: str
    title: str
    fn: Callable[["World"], Any]

    def __post_init__(self):
        # One letter or digit: Scenario checks that (and that letters differ).
        if not isinstance(self.letter, str) or not self.letter:
            raise ValueError(f"letter must be one letter or digit, got {self.letter!r}")
        if not isinstance(self.title, str):
            raise TypeError(f"title must be a string, got {type(self.title).__name__}")
        if not callable(self.fn):
            raise TypeError(f"fn must be a generator function taking the world, got {self.fn!r}")


@dataclass(frozen=True)
class Invariant:
    """A named predicate over the world that must hold after every step.

    ``reads`` (optional) declares the locations ``fn`` reads (primitives,
    world attribute names, or tuples naming parts of them: see
    :mod:`kvmmu.explorer.footprint`).  The partial-order reduction treats
    every step that writes one of them as visible; by default an invariant
    may read anything, so every step that writes anything is visible.
    """

    name: str
    fn: Callable[["World"], bool]
    reads: Any = field(default=None, compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not callable(self.fn):
            raise TypeError(f"fn must be a predicate over the world, got {self.fn!r}")
        if self.reads is not None:
            declared(self.reads, (), f"invariant {self.name!r}")   # check it early


class Scenario:
    """Actors, the world factory they share, and what must hold.

    ``world`` is a zero-argument factory (a World subclass works): every run
    starts from a fresh world.  ``final_check(world, results)`` runs once
    every actor has finished; ``results`` maps letters to return values; it
    returns True (holds), False (violation "final check") or a string (a
    violation, named by the string).
    """

    def __init__(self, name: str, world: Callable[[], World], actors, invariants=(),
                 final_check: Callable | None = None, description: str = ""):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if not callable(world):
            raise TypeError(f"scenario {name!r}: world must be a zero-argument factory of a World")
        actors = list(actors)
        if not actors:
            raise ValueError(f"scenario {name!r}: actors is empty; give at least one Actor")
        seen = {}
        for a in actors:
            if not isinstance(a, Actor):
                raise TypeError(f"scenario {name!r}: actors must be Actor(letter, title, fn), "
                                f"got {type(a).__name__}")
            if not (isinstance(a.letter, str) and len(a.letter) == 1 and a.letter.isalnum()):
                raise ValueError(f"scenario {name!r}: actor letter must be one letter or digit, "
                                 f"got {a.letter!r}")
            if a.letter in seen:
                raise ValueError(f"scenario {name!r}: two actors use the letter {a.letter!r}")
            if not callable(a.fn):
                raise TypeError(f"scenario {name!r}: actor {a.letter}'s fn is not callable")
            seen[a.letter] = a
        invariants = list(invariants)
        for inv in invariants:
            if not isinstance(inv, Invariant):
                raise TypeError(f"scenario {name!r}: invariants must be Invariant(name, fn), "
                                f"got {type(inv).__name__}")
        if final_check is not None and not callable(final_check):
            raise TypeError(f"scenario {name!r}: final_check must be callable or None")
        if not invariants and final_check is None:
            raise ValueError(
                f"scenario {name!r} has no invariants and no final_check: "
                "give at least one, or there is nothing to check but deadlock")
        self.name = name
        self.world = world
        self.actors = actors
        self.invariants = invariants
        self.final_check = final_check
        self.description = description
        self.letters = "".join(a.letter for a in actors)
        self._index = {a.letter: i for i, a in enumerate(actors)}

    def actor(self, letter: str) -> Actor:
        """The actor with this letter."""
        return self.actors[self._index[letter]]

    def __repr__(self):
        cast = ", ".join(f"{a.letter}: {a.title}" for a in self.actors)
        return f"<Scenario {self.name!r} ({cast})>"
