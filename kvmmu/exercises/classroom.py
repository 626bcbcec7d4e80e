"""Each student's problems in a chapter's nbgrader assignment, and the tests that grade them.

A topic module declares its chapter's assignment with an :class:`Assignment`
named ``ASSIGNMENT``: which problem kinds, in which order, for how many
points.  ``tools/classroom.py`` turns every such declaration into an nbgrader
source notebook; in it, the first cell is ``A = ASSIGNMENT.handout()``, and
each problem has an answer cell ``answer_<n> = {...}`` and a test cell that
calls ``A.visible_test(n, answer_n)`` (released) and ``A.hidden_test(n,
answer_n)`` (only at autograding).

Student ``s``'s problem ``n`` (1-based) of assignment ``a`` is
``problem(student_seed(s, a, n), kind)`` with::

    student_seed(s, a, n) = int.from_bytes(sha256(f"{s}/{a}/{n}".encode()).digest()[:4], "big")

so it is in ``[0, 2**32)``, the same on every machine, and different per
student, chapter and problem.  The student id is nbgrader's: while nbgrader
autogrades, the name of the folder it grades in (``autograded/<id>/<a>``);
otherwise the login name, or ``JUPYTERHUB_USER`` when the login is the
Docker images' ``jovyan`` (nbgrader's own rule for ``nbgrader submit``).
"""
from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..checks import check_int, check_name
from .base import Problem, Verdict

__all__ = [
    "student_seed", "current_student_id", "Slot", "Assignment", "Handout",
]


def student_seed(student_id: str, assignment: str, number: int) -> int:
    """Return the seed of problem ``number`` of ``assignment`` for ``student_id``, in [0, 2**32)."""
    if not isinstance(student_id, str) or not student_id:
        raise TypeError(f"student_id must be a non-empty str, got {student_id!r}")
    check_int("number", number, 1, 1000)
    digest = hashlib.sha256(f"{student_id}/{assignment}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def current_student_id(assignment: str) -> str:
    """Return the nbgrader id of the student whose notebook this is (see the module docstring)."""
    check_name("assignment", assignment)
    if os.environ.get("NBGRADER_EXECUTION") == "autograde":
        here = Path.cwd()
        if here.name != assignment or here.parent.parent.name != "autograded":
            raise RuntimeError(
                f"autograding in {here}, not in autograded/<student>/{assignment}: nbgrader's "
                "default directory_structure is needed to tell whose problems these are")
        return here.parent.name
    import pwd

    login = pwd.getpwuid(os.getuid()).pw_name
    return os.environ.get("JUPYTERHUB_USER", login) if login == "jovyan" else login


@dataclass(frozen=True)
class Slot:
    """One problem of an assignment: the kind of problem and what it is worth."""

    kind: str
    points: int = 1

    def __post_init__(self):
        check_name("kind", self.kind)
        check_int("points", self.points, 1, 100)


@dataclass(frozen=True)
class Assignment:
    """A chapter's nbgrader assignment: its id (the chapter's notebook name) and its problems."""

    chapter: str
    module: str
    slots: tuple

    def __post_init__(self):
        check_name("chapter", self.chapter)
        if not isinstance(self.module, str) or not self.module.startswith("kvmmu.exercises."):
            raise ValueError(f"module must name a kvmmu.exercises module, got {self.module!r}")
        if (not isinstance(self.slots, tuple) or not self.slots
                or not all(isinstance(s, Slot) for s in self.slots)):
            raise TypeError(f"slots must be a non-empty tuple of Slot, got {self.slots!r}")

    def topic(self):
        return importlib.import_module(self.module)

    def problems_for(self, student_id: str) -> list[Problem]:
        """Return ``student_id``'s problems, in order."""
        problem = self.topic().problem
        return [problem(student_seed(student_id, self.chapter, n), slot.kind)
                for n, slot in enumerate(self.slots, 1)]

    def handout(self, student_id: str | None = None) -> "Handout":
        """Return the problems of ``student_id`` (by default: whoever runs the notebook)."""
        sid = current_student_id(self.chapter) if student_id is None else student_id
        return Handout(self, sid, self.problems_for(sid))

    def points(self) -> int:
        return sum(slot.points for slot in self.slots)


@dataclass(frozen=True)
class Handout:
    """One student's problems, and the checks the assignment's test cells call."""

    assignment: Assignment
    student_id: str
    problems: list

    def __post_init__(self):
        if not isinstance(self.assignment, Assignment):
            raise TypeError(f"assignment must be an Assignment, got {type(self.assignment).__name__}")
        check_name("student_id", self.student_id)
        if not isinstance(self.problems, list) or not all(isinstance(p, Problem) for p in self.problems):
            raise TypeError("problems must be a list of Problem")

    def problem(self, number: int) -> Problem:
        check_int("number", number, 1, len(self.problems))
        return self.problems[number - 1]

    def show(self, number: int) -> None:
        """Print problem ``number``."""
        print(self.problem(number).question)

    def visible_test(self, number: int, answer) -> Verdict:
        """The released test: the answer's form, and the parts of it that cannot be guessed.

        A True/False or a choice among a few names can be found by trying, so
        those parts are only checked by :meth:`hidden_test`.
        """
        p = self.problem(number)
        try:
            error = p.form.form_error(answer)
        except Exception:           # an answer whose comparisons raise is still only an answer
            error = "the answer could not be read"
        if error:
            raise AssertionError(f"Problem {number}: {error}. Answer as {p.form.template()}.")
        exact = [f.name for f in p.form.fields if not f.guessable]
        verdict = p.check_parts(answer, exact)
        if not verdict.passed:
            raise AssertionError(f"Problem {number}: {verdict}")
        print(f"Problem {number}: the form is right"
              + (f", and so is {', '.join(exact)}" if exact else "")
              + "; the rest is checked when your teacher autogrades.")
        return verdict

    def hidden_test(self, number: int, answer) -> Verdict:
        """The test nbgrader adds back when it autogrades: every part, checked with the model."""
        verdict = self.problem(number).check(answer)
        if not verdict.passed:
            raise AssertionError(f"Problem {number}: {verdict}")
        print(f"Problem {number}: {verdict}")
        return verdict

    def __str__(self) -> str:
        seeds = ", ".join(str(p.seed) for p in self.problems)
        return (f"{self.assignment.chapter}: the problems of student {self.student_id!r} "
                f"(seeds {seeds}).\nIf that is not the id you submit under, tell your teacher: "
                "autograding uses your nbgrader id.")

    __repr__ = __str__

