"""The shared shape of a seeded exercise: every topic's ``problem(seed)`` returns a :class:`Problem`."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One generated problem: its seed, the question, and the worked solution.

    The question starts with the seed, so a student can quote it and a
    teacher can regenerate the same problem with ``problem(seed)``.
    """

    seed: int
    question: str
    solution_text: str
    kind: str = ""

    def solution(self) -> str:
        """Return the worked solution as text."""
        return self.solution_text

    def __repr__(self) -> str:
        return self.question

    def __str__(self) -> str:
        return self.question
