"""The contract every seeded exercise follows, and the pieces that implement it.

A topic module exposes ``problem(seed, kind=None) -> Problem``:

- ``seed`` is an ``int`` in ``[0, 2**32)`` (:func:`check_seed`; a ``TypeError``
  or ``ValueError`` names ``seed`` and the range otherwise), and all
  randomness comes from ``random.Random(seed)``;
- ``Problem.question`` starts with a line ``Seed N: ...`` naming the call that
  reproduces it, then one ``ARG name value`` line per parameter (as OSTEP's
  simulators print theirs), the question, and the form the answer takes;
  every line fits in :data:`WIDTH` columns;
- ``Problem.solution()`` is the worked answer, as text;
- ``Problem.answer()`` is the model's answer in the form ``check`` accepts;
- ``Problem.check(answer)`` returns a :class:`Verdict` (``passed``,
  ``feedback``) and never raises, whatever ``answer`` is.

An answer is a dict with one entry per :class:`Field` of the problem's
:class:`AnswerForm`.  The fields know how to validate, explain and perturb a
value, so checking and the property tests are the same code for every topic.
"""
from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..checks import check_bool, check_int, check_name

__all__ = [
    "SEED_LIMIT", "WIDTH", "check_seed", "Field", "IntField", "BoolField", "ChoiceField",
    "ChoiceListField", "AnswerForm", "Verdict", "wrap", "format_question", "Problem",
    "show_value",
]

#: Seeds are 32-bit: enough for every class, short enough to read out.
SEED_LIMIT = 1 << 32
#: Every line of a question fits in this many columns (a terminal, a printout).
WIDTH = 78


def check_seed(seed) -> int:
    """Return ``seed`` if it is an int in ``[0, 2**32)``; raise naming ``seed`` otherwise."""
    return check_int("seed", seed, 0, SEED_LIMIT - 1)


# --------------------------------------------------------------------------
# Fields of an answer
# --------------------------------------------------------------------------
def _bits_differing(given: int, expected: int, limit: int = 8) -> str:
    bits = [n for n in range(max(given.bit_length(), expected.bit_length()))
            if (given ^ expected) >> n & 1]
    shown = ", ".join(map(str, bits[:limit])) + (", ..." if len(bits) > limit else "")
    return f"bit{'s' if len(bits) > 1 else ''} {shown}"


@dataclass(frozen=True)
class Field:
    """One named part of an answer; subclasses say which values it takes."""

    name: str
    help: str
    #: Whether a student could find the value by trying (a True/False, a few
    #: names): graded tests then check it only where the student cannot see.
    guessable: ClassVar[bool] = True

    def __post_init__(self):
        check_name("name", self.name)
        if not isinstance(self.help, str):
            raise TypeError(f"help must be a string, got {type(self.help).__name__}")

    def shape(self) -> str:
        raise NotImplementedError

    def form_error(self, value) -> str | None:
        raise NotImplementedError

    def hint(self, given, expected) -> str:
        """What to look at again when ``given`` is well-formed but wrong."""
        return f"{self.name} is not {given!r}"

    def perturb(self, value, rng: random.Random):
        """Return a well-formed value different from ``value`` (for property tests)."""
        raise NotImplementedError


@dataclass(frozen=True)
class IntField(Field):
    lo: int = 0
    hi: int = (1 << 64) - 1
    guessable: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        check_int("lo", self.lo)
        check_int("hi", self.hi, self.lo)

    def shape(self) -> str:
        return "<int>"

    def form_error(self, value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{self.name} must be an int (0x hex is fine), got {type(value).__name__}"
        if not self.lo <= value <= self.hi:
            return f"{self.name} must be in [{self.lo:#x}, {self.hi:#x}], got {value:#x}"
        return None

    def hint(self, given, expected) -> str:
        return (f"{self.name} ({self.help}) is {given:#x}; it differs from the model's in "
                f"{_bits_differing(given, expected)}")

    def perturb(self, value, rng):
        width = max(1, (self.hi - self.lo).bit_length())
        for _ in range(64):
            other = value ^ (1 << rng.randrange(width))
            if self.lo <= other <= self.hi:
                return other
        return self.lo if value != self.lo else self.hi


@dataclass(frozen=True)
class BoolField(Field):
    def shape(self) -> str:
        return "<True or False>"

    def form_error(self, value) -> str | None:
        if not isinstance(value, bool):
            return f"{self.name} must be True or False, got {type(value).__name__} {value!r}"
        return None

    def hint(self, given, expected) -> str:
        return f"{self.name} ({self.help}) is not {given}"

    def perturb(self, value, rng):
        return not value


def _check_options(options) -> None:
    if not isinstance(options, tuple) or len(options) < 2:
        raise ValueError(f"options must be a tuple of at least two choices, got {options!r}")


@dataclass(frozen=True)
class ChoiceField(Field):
    options: tuple = ()

    def __post_init__(self):
        super().__post_init__()
        _check_options(self.options)

    def shape(self) -> str:
        return "<one of " + ", ".join(repr(o) for o in self.options) + ">"

    def form_error(self, value) -> str | None:
        if value not in self.options:
            return f"{self.name} must be one of {', '.join(map(repr, self.options))}; got {value!r}"
        return None

    def hint(self, given, expected) -> str:
        return f"{self.name} ({self.help}) is not {given!r}"

    def perturb(self, value, rng):
        return rng.choice([o for o in self.options if o != value])


@dataclass(frozen=True)
class ChoiceListField(Field):
    options: tuple = ()
    count: int = 1

    def __post_init__(self):
        super().__post_init__()
        _check_options(self.options)
        check_int("count", self.count, 1, 64)

    def shape(self) -> str:
        return f"<list of {self.count}, each one of " + ", ".join(repr(o) for o in self.options) + ">"

    def form_error(self, value) -> str | None:
        if not isinstance(value, (list, tuple)) or len(value) != self.count:
            return f"{self.name} must be a list of {self.count} entries, got {value!r}"
        bad = [v for v in value if v not in self.options]
        if bad:
            return f"{self.name}: {bad[0]!r} is not one of {', '.join(map(repr, self.options))}"
        return None

    def hint(self, given, expected) -> str:
        wrong = [str(i + 1) for i, (g, e) in enumerate(zip(given, expected)) if g != e]
        return f"{self.name} ({self.help}): entr{'ies' if len(wrong) > 1 else 'y'} {', '.join(wrong)} wrong"

    def perturb(self, value, rng):
        i = rng.randrange(self.count)
        other = list(value)
        other[i] = rng.choice([o for o in self.options if o != value[i]])
        return other


@dataclass(frozen=True)
class AnswerForm:
    """The fields of an answer, in the order a student writes them."""

    fields: tuple

    def __post_init__(self):
        if (not isinstance(self.fields, tuple) or not self.fields
                or not all(isinstance(f, Field) for f in self.fields)):
            raise TypeError(f"fields must be a non-empty tuple of Field, got {self.fields!r}")

    def names(self) -> tuple:
        return tuple(f.name for f in self.fields)

    def template(self) -> str:
        """The answer as a student types it, with a placeholder per field."""
        return "{" + ", ".join(f"{f.name!r}: {f.shape()}" for f in self.fields) + "}"

    def form_error(self, answer) -> str | None:
        """Why ``answer`` is not of this form, or None if it is."""
        if not isinstance(answer, dict):
            return f"the answer must be a dict, got {type(answer).__name__}"
        missing = [n for n in self.names() if n not in answer]
        extra = [k for k in answer if k not in self.names()]
        if missing or extra:
            parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + \
                    ([f"unexpected {', '.join(map(repr, extra))}"] if extra else [])
            return f"the answer's keys: {'; '.join(parts)} (expected {', '.join(map(repr, self.names()))})"
        for f in self.fields:
            err = f.form_error(answer[f.name])
            if err:
                return err
        return None

    def perturb(self, answer: dict, rng: random.Random) -> dict:
        """Return ``answer`` with one field changed to another well-formed value."""
        f = self.fields[rng.randrange(len(self.fields))]
        return {**answer, f.name: f.perturb(answer[f.name], rng)}


# --------------------------------------------------------------------------
# The verdict and the problem
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """What ``Problem.check`` says: passed or not, and what to look at again."""

    passed: bool
    feedback: str

    def __post_init__(self):
        check_bool("passed", self.passed)
        check_name("feedback", self.feedback)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return ("Correct: " if self.passed else "Not yet: ") + self.feedback

    __repr__ = __str__


def wrap(text: str, hang: str = "") -> str:
    """Fill each line of ``text`` to :data:`WIDTH` columns, keeping its own indent.

    Continuation lines get the line's indent plus ``hang``.
    """
    for name, value in (("text", text), ("hang", hang)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    out = []
    for line in text.split("\n"):
        indent = line[:len(line) - len(line.lstrip())]
        out.append(textwrap.fill(line.strip(), WIDTH, initial_indent=indent,
                                 subsequent_indent=indent + hang, break_on_hyphens=False,
                                 break_long_words=False) if line.strip() else "")
    return "\n".join(out)


def format_question(seed: int, module: str, kind: str, params, text: str,
                    form: AnswerForm | None) -> str:
    """Lay out a question: the ``Seed N:`` line, ``ARG`` lines, the text, the answer's form."""
    lines = [f"Seed {seed}: {module}.problem({seed})", f"ARG kind {kind}"]
    lines += [wrap(f"ARG {name} {value}", "    ") for name, value in params]
    lines.append(wrap(text))
    if form is not None:
        lines.append(wrap(f"Answer as: {form.template()}", "  "))
    return "\n".join(lines)


@dataclass(frozen=True)
class Problem:
    """One generated problem: the seed, the question, the worked solution, the checker.

    ``form`` and ``expected`` make it checkable; a topic module not yet
    converted to the contract builds a Problem without them, and ``check`` then
    says so instead of guessing.
    """

    seed: int
    question: str
    solution_text: str
    kind: str = ""
    form: AnswerForm | None = None
    expected: dict | None = None
    params: tuple = field(default=())

    def __post_init__(self):
        check_seed(self.seed)
        check_name("question", self.question)
        for name in ("solution_text", "kind"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string")
        if self.form is not None and not isinstance(self.form, AnswerForm):
            raise TypeError(f"form must be an AnswerForm or None, got {type(self.form).__name__}")
        if self.expected is not None and not isinstance(self.expected, dict):
            raise TypeError("expected must be a dict or None")
        if not isinstance(self.params, tuple):
            raise TypeError("params must be a tuple of (name, value) pairs")

    @classmethod
    def make(cls, seed: int, kind: str, module: str, params, text: str, form: AnswerForm,
             expected: dict, worked: str) -> "Problem":
        """Build a checkable problem of ``module`` (its ``__name__``).

        ``params`` are ``(name, value)`` pairs, shown as ARG lines.
        """
        params = tuple((name, value) for name, value in params)
        shown = [(name, show_value(value)) for name, value in params]
        wrong = form.form_error(expected)
        if wrong:                   # the model's own answer must fit the form it asks for
            raise ValueError(f"expected: {wrong}")
        return cls(seed, format_question(seed, module, kind, shown, text, form), wrap(worked, "  "), kind, form,
                   dict(expected), params)

    def solution(self) -> str:
        """Return the worked solution as text."""
        return self.solution_text

    def answer(self) -> dict:
        """Return the model's answer, in the form ``check`` accepts."""
        self._need_checker()
        return dict(self.expected)

    def check(self, answer: Any) -> Verdict:
        """Return a :class:`Verdict` on ``answer``; never raises, whatever ``answer`` is."""
        return self.check_parts(answer, self.form.names() if self.form else ())

    def check_parts(self, answer: Any, names) -> Verdict:
        """Like :meth:`check`, but compare only the fields in ``names`` with the model's.

        The whole answer's form is still checked.
        """
        self._need_checker()
        try:
            error = self.form.form_error(answer)
        except Exception as exc:  # an answer whose comparisons raise is still only an answer
            error = f"the answer could not be read ({type(exc).__name__})"
        if error:
            return Verdict(False, f"{error}. Answer as {self.form.template()}.")
        # The form is checked, so types agree (no True for 1); lists and tuples alike.
        compared = [f for f in self.form.fields if f.name in names]
        wrong = [f.hint(answer[f.name], self.expected[f.name]) for f in compared
                 if _plain(answer[f.name]) != _plain(self.expected[f.name])]
        if wrong:
            right = len(compared) - len(wrong)
            return Verdict(False, f"{right} of {len(compared)} parts right. " + "; ".join(wrong) + ".")
        what = "every part agrees" if len(compared) == len(self.form.fields) else \
            (", ".join(f.name for f in compared) or "nothing") + " agree" + ("s" if len(compared) == 1 else "")
        return Verdict(True, f"{what} with the model (seed {self.seed}).")

    def _need_checker(self):
        if self.form is None:
            raise NotImplementedError(
                f"the {self.kind or 'text'} problem for seed {self.seed} has no checker yet: its "
                "module does not follow the exercise contract (CONTRIBUTING.md, Exercises)")

    def __repr__(self) -> str:
        return self.question

    def __str__(self) -> str:
        return self.question


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def show_value(value) -> str:
    """How a parameter reads in a question: ints of 10 and more in hex."""
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    return f"{value:#x}" if value >= 10 else str(value)
