"""Seeded guest_memfd problems: follow a folio's actions; predict the register call.

``problem(seed)`` draws everything from ``random.Random(seed)``; every answer
is computed by the chapter's model (:mod:`kvmmu.guest_memfd_rfc` on the one
VM of :mod:`kvmmu.scenarios.guest_memfd`), never written by hand.  The
problems follow the exercise contract of :mod:`kvmmu.exercises.base`.
Two kinds:

- ``"sequence"``: after these folio-console actions on one CPU, what are
  offset 0's state, the folio's refcount and mapcount, and is a callback
  pending?
- ``"register"``: after a set-up, ``gmem_clear_mappable`` and perhaps some
  references dropped, what does ``kvm_slot_gmem_register_callback`` return,
  is a callback pending, and what is the count afterwards?
"""
import random
from dataclasses import dataclass

from ..checks import KernelWarn, check_choice
from ..cpu import ModelHang, run_alone
from ..errno import errno_name
from ..folio import folio_mapped, folio_test_guestmem
from ..guest_memfd_rfc import gmem_clear_mappable, kvm_slot_gmem_register_callback
from ..scenarios import guest_memfd as S
from .base import AnswerForm, BoolField, ChoiceField, IntField, Problem, check_seed
from .classroom import Assignment, Slot

__all__ = ["KINDS", "SEQUENCE_ACTIONS", "REGISTER_SETUPS", "problem", "ASSIGNMENT"]

KINDS = ("sequence", "register")
STATES = ("ALL", "GUEST", "NONE")

#: The console actions a sequence draws from, with their weights (no punch
#: hole: it takes the folio out of the file, and the story with it).
_WEIGHTS = {"host map": 3, "host unmap": 3, "get ref": 3, "put ref": 3,
            "spec get": 2, "spec put": 2, "convert to private": 4, "share again": 2,
            "guest fault": 2}
SEQUENCE_ACTIONS = tuple(_WEIGHTS)

#: Set-ups of a register problem: each leaves a host mapping or a foreign
#: reference, so ``gmem_clear_mappable`` stores NONE.
REGISTER_SETUPS = (
    ("host map",), ("host map", "get ref", "host unmap"), ("spec get",),
    ("host map", "get ref"), ("host map", "spec get", "host unmap"),
)
#: Which action drops each kind of reference, for "then ... before the call".
_DROPS = (("host unmap", "pte"), ("put ref", "gup:host"), ("spec put", "spec:S"))


@dataclass(frozen=True)
class _CountField(IntField):
    """A count (a refcount, a mapcount): shown and explained in decimal."""

    def form_error(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{self.name} must be an int, got {type(value).__name__}"
        if not self.lo <= value <= self.hi:
            return f"{self.name} must be in [{self.lo}, {self.hi}], got {value}"
        return None

    def hint(self, given, expected) -> str:
        side = "high" if given > expected else "low"
        return f"{self.name} ({self.help}) {given} is too {side}"


SEQUENCE_FORM = AnswerForm((
    ChoiceField("state", "offset 0's mappability state", STATES),
    _CountField("refcount", "the folio's count: who holds it?", 0, 64),
    _CountField("mapcount", "the host's mappings of the folio", 0, 16),
    BoolField("pending", "the guestmem type is set, a callback pending"),
))
REGISTER_FORM = AnswerForm((
    ChoiceField("ret", "what the register call returns", ("0", "-EAGAIN")),
    BoolField("pending", "a callback is pending afterwards"),
    _CountField("refcount", "the folio's count afterwards", 0, 64),
))


def _folio_pages(order: int) -> str:
    n = 1 << order
    return f"one order-{order} folio ({n} page{'s' * (n > 1)})"


def _state_of(kvm) -> dict:
    file = S.gmem_file(kvm)
    folio = file.folio_at(0)
    return {"state": file.state(0), "refcount": folio.refcount,
            "mapcount": folio.mapcount, "pending": folio_test_guestmem(folio)}


def _describe(kvm) -> str:
    s = _state_of(kvm)
    pending = "a callback pending" if s["pending"] else "no callback pending"
    return (f"state {s['state']}, refcount {s['refcount']}, "
            f"mapcount {s['mapcount']}, {pending}")


def _legal(actions: list, order: int) -> bool:
    try:
        kvm = S.replay(actions, size=1 << order, order=order)
    except (KernelWarn, ModelHang):
        return False
    return not S.gmem_file(kvm).oops


def _draw_sequence(rng: random.Random, order: int, length: int) -> list:
    """Draw ``length`` actions, each legal after the ones before it."""
    actions: list = []
    for _ in range(length):
        pool = [a for a, weight in _WEIGHTS.items() for _ in range(weight)]
        rng.shuffle(pool)
        for candidate in pool:
            again = actions and candidate == actions[-1]
            if again and candidate != "convert to private":
                continue
            if _legal(actions + [candidate], order):
                actions.append(candidate)
                break
    return actions


def _sequence_problem(seed: int, rng: random.Random) -> Problem:
    order = rng.choice((0, 0, 0, 1, 2))
    for _ in range(20):      # redraw (from the same rng) until the page goes NONE
        actions = _draw_sequence(rng, order, rng.randrange(4, 8))
        kvm = S.replay(actions, size=1 << order, order=order)
        history = S.gmem_file(kvm).history
        if any(new == "NONE" for _i, _old, new, _fn in history):
            break
    kvm = S.replay([], size=1 << order, order=order)
    lines = [f"start: {_describe(kvm)}"]
    for a in actions:
        _ret, msg = S.apply_action(kvm, a)
        lines += [f"{a}: {msg}", f"  -> {_describe(kvm)}"]
    text = (f"A guest_memfd file holds {_folio_pages(order)}; offset 0 is ALL "
            "(shared) and only the page cache holds the folio. On one CPU, the "
            "RFC as posted runs the folio-console ACTIONS in order. Afterwards, "
            "what is offset 0's state, what are the folio's refcount and "
            "mapcount, and is a callback pending?")
    params = [("order", order), ("actions", ", ".join(actions))]
    worked = "\n".join(lines + [f"Answer: {_describe(kvm)}."])
    return Problem.make(seed, "sequence", __name__, params, text, SEQUENCE_FORM,
                        _state_of(kvm), worked)


def _register_problem(seed: int, rng: random.Random) -> Problem:
    order = rng.choice((0, 0, 1))
    setup = list(REGISTER_SETUPS[rng.randrange(len(REGISTER_SETUPS))])
    kvm = S.replay(setup, size=1 << order, order=order)
    file = S.gmem_file(kvm)
    folio = file.folio_at(0)
    run_alone(kvm, gmem_clear_mappable(file, 0, 1))
    stored = file.state(0)
    # Perhaps the holders let go before the call: the ones the set-up made.
    then = [a for a, holder in _DROPS
            if folio.holders.get(holder) and rng.random() < 0.5]
    steps = []
    for a in then:
        _ret, msg = S.apply_action(kvm, a)
        steps.append(f"{a}: {msg}\n  -> {_describe(kvm)}")
    was_mapped, was_pending = folio_mapped(folio), folio_test_guestmem(folio)
    register = kvm_slot_gmem_register_callback(kvm, S.gmem_slot(kvm), S.GFN)
    ret = run_alone(kvm, register)
    expected = {"ret": errno_name(ret) if ret else "0",
                "pending": folio_test_guestmem(folio), "refcount": folio.refcount}
    text = (f"A guest_memfd file holds {_folio_pages(order)}; offset 0 is ALL and "
            "only the page cache holds the folio. On one CPU: the SETUP actions, "
            "then gmem_clear_mappable(0, 1), then the THEN actions, then "
            "kvm_slot_gmem_register_callback for offset 0 (the RFC as posted). "
            "What does the register call return, is a callback pending "
            "afterwards, and what is the folio's refcount then?")
    worked = "\n".join(
        [f"gmem_clear_mappable stores {stored}: its lookup counts more than "
         f"nr_pages + 1 = {(1 << order) + 1}."] + steps
        + [f"kvm_slot_gmem_register_callback -> "
           f"{S.register_note(ret, was_mapped, was_pending)}.",
           f"Afterwards: {_describe(kvm)}."])
    params = [("order", order), ("setup", ", ".join(setup)),
              ("then", ", ".join(then) or "nothing")]
    return Problem.make(seed, "register", __name__, params, text, REGISTER_FORM,
                        expected, worked)


_MAKERS = {"sequence": _sequence_problem, "register": _register_problem}


def problem(seed: int, kind: str | None = None) -> Problem:
    """Return the problem for ``seed`` in [0, 2**32) (its kind drawn unless given).

    The kind is drawn first either way, so ``problem(seed, kind)`` with the
    kind ``problem(seed)`` drew is the same problem.
    """
    check_seed(seed)
    rng = random.Random(seed)
    drawn = KINDS[rng.randrange(len(KINDS))]
    if kind is not None:
        drawn = check_choice("kind", kind, KINDS)
    return _MAKERS[drawn](seed, rng)


#: Chapter 4's nbgrader assignment (tools/classroom.py builds it): each
#: student's own problems (kvmmu.exercises.classroom.student_seed).
ASSIGNMENT = Assignment("ch04_guest_memfd_folio_put", __name__, (
    Slot("sequence", 2), Slot("register", 2), Slot("sequence", 2),
))
