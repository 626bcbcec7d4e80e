"""``kvmmu problem CHAPTER``: a chapter's seeded problem, the text its ``problem(seed)`` prints.

OSTEP's simulators print a seeded question and, with ``-c``, its answer;
this is the same for the book's generators (:mod:`kvmmu.exercises`).  The
question is ``str(problem(seed))``, as a chapter prints it, and ``--solve``
adds ``problem(seed).solution()``.
"""
import importlib

from ..checks import check_bool, check_int
from ..exercises import CHAPTER

__all__ = ["chapter_topic", "problem_text"]


def chapter_topic(chapter: str) -> str:
    """Return the exercise topic of ``chapter``: a number 1-6 or a topic name (``"spte"``)."""
    if not isinstance(chapter, str):
        raise TypeError(f"chapter must be text (a number or a topic), got {type(chapter).__name__}")
    text = chapter.strip().lower().removeprefix("ch").removeprefix("apter").lstrip()
    if text.isdigit() and int(text) in CHAPTER:
        return CHAPTER[int(text)]
    if text in CHAPTER.values():
        return text
    known = ", ".join(f"{n} ({t})" for n, t in CHAPTER.items())
    raise ValueError(f"no chapter {chapter!r}: the chapters with problems are {known}")


def problem_text(chapter: str, seed: int = 0, solve: bool = False) -> str:
    """Return the problem of ``chapter`` for ``seed``, and its solution if ``solve``."""
    topic = chapter_topic(chapter)
    check_int("seed", seed, 0)
    check_bool("solve", solve)
    problem = importlib.import_module(f"kvmmu.exercises.{topic}").problem(seed)
    text = str(problem).rstrip() + "\n"
    if solve:
        text += "\nSolution:\n" + problem.solution().rstrip() + "\n"
    return text
