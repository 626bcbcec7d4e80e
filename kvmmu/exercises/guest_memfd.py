"""Seeded guest_memfd problems: follow a sequence of actions on one folio; predict a return code.

``problem(seed)`` draws everything from ``random.Random(seed)``; every answer
is computed by the chapter's model (:mod:`kvmmu.guest_memfd_rfc` on the one
VM of :mod:`kvmmu.scenarios.guest_memfd`), never written by hand.  Two kinds:

- ``"sequence"``: after these actions, what are the state of offset 0, the
  folio's refcount and mapcount, and is a callback pending?
- ``"register"``: what does ``kvm_slot_gmem_register_callback`` return after
  these actions, and has it registered a callback?
"""
import random

from ..checks import KernelWarn, check_choice, check_int
from ..cpu import run_alone
from ..folio import folio_mapped, folio_test_guestmem
from ..guest_memfd_rfc import gmem_clear_mappable, kvm_slot_gmem_register_callback
from ..scenarios import guest_memfd as S
from .base import Problem

__all__ = ["KINDS", "problem"]

KINDS = ("sequence", "register")

#: The console actions problems draw from (punch hole only rarely: it ends the story).
_WEIGHTS = {"host map": 3, "host unmap": 3, "get ref": 3, "put ref": 3, "spec get": 2,
            "spec put": 2, "convert to private": 4, "share again": 2, "guest fault": 2,
            "punch hole": 1}


def _legal_sequence(rng: random.Random, order: int, length: int) -> list:
    """Draw ``length`` actions, each legal after the ones before it."""
    actions: list = []
    names = list(S.ACTIONS)
    for _ in range(length):
        pool = [a for a in names for _ in range(_WEIGHTS[a])]
        rng.shuffle(pool)
        for candidate in pool:
            if actions and candidate == actions[-1] and candidate != "convert to private":
                continue
            try:
                kvm = S.replay(actions + [candidate], size=1 << order, order=order)
            except KernelWarn:
                continue
            if S.gmem_file(kvm).oops:
                continue
            actions.append(candidate)
            break
        if actions and actions[-1] == "punch hole":
            break
    return actions


def _describe(kvm) -> str:
    file = S.gmem_file(kvm)
    folio = file.folio_at(0)
    if folio is None:
        return f"state {file.state(0)}, no folio in the page cache"
    pending = "a callback pending (guestmem type)" if folio_test_guestmem(folio) else "no callback pending"
    return (f"state {file.state(0)}, refcount {folio.refcount}, mapcount {folio.mapcount}, "
            f"{pending}")


def _walkthrough(actions, order) -> tuple:
    kvm = S.replay([], size=1 << order, order=order)
    lines = [f"start: {_describe(kvm)}"]
    for a in actions:
        _ret, msg = S.apply_action(kvm, a)
        lines.append(f"{a}: {msg}\n      -> {_describe(kvm)}")
    return lines, kvm


def _header(seed: int, order: int) -> str:
    n = 1 << order
    return (f"Seed {seed}: a guest_memfd file holds one order-{order} folio ({n} page"
            f"{'s' if n > 1 else ''}; the page cache holds {n} reference{'s' if n > 1 else ''}), "
            "its offset 0 is ALL (shared) and nobody else holds it. The RFC as posted runs, on "
            "one CPU, the folio-console actions")


def _sequence_problem(seed: int, rng: random.Random) -> Problem:
    order = rng.choice((0, 0, 0, 1, 2))
    for _ in range(20):  # redraw (from the same rng) until the story includes an unshare
        actions = _legal_sequence(rng, order, rng.randrange(4, 8))
        if "convert to private" in actions:
            break
    question = (f"{_header(seed, order)}: {', '.join(actions)}. What is the state of offset 0 "
                "afterwards, what are the folio's refcount and mapcount, and is a callback pending?")
    lines, kvm = _walkthrough(actions, order)
    solution = "\n".join(lines) + f"\nAnswer: {_describe(kvm)}."
    return Problem(seed, question, solution, "sequence")


def _register_problem(seed: int, rng: random.Random) -> Problem:
    order = rng.choice((0, 0, 1))
    # Each leaves a host mapping or a foreign reference, so clear_mappable stores NONE.
    setups = (
        ("host map",), ("host map", "get ref", "host unmap"), ("spec get",),
        ("host map", "get ref"), ("host map", "spec get", "host unmap"),
    )
    setup = list(setups[rng.randrange(len(setups))])
    kvm = S.replay(setup, size=1 << order, order=order)
    file = S.gmem_file(kvm)
    folio = file.folio_at(0)
    was_mapped = folio_mapped(folio)
    was_pending = folio_test_guestmem(folio)
    # The unshare first stores NONE (clear_mappable); the question is about the register call.
    run_alone(kvm, gmem_clear_mappable(file, 0, 1))
    state_after_clear = file.state(0)
    ret = run_alone(kvm, kvm_slot_gmem_register_callback(kvm, S.gmem_slot(kvm), S.GFN))
    done = ", ".join(setup) if setup else "nothing"
    question = (f"{_header(seed, order)}: {done}; then gmem_clear_mappable(0, 1) and "
                "kvm_slot_gmem_register_callback for offset 0. What does gmem_clear_mappable "
                "store, what does the register call return, and is a callback registered "
                "afterwards?")
    solution = (f"gmem_clear_mappable stores {state_after_clear} (its lookup sees a count above "
                f"nr_pages + 1 = {(1 << order) + 1}).\n"
                f"kvm_slot_gmem_register_callback -> {S.register_note(ret, was_mapped, was_pending)}.\n"
                f"Afterwards: {_describe(kvm)}.")
    return Problem(seed, question, solution, "register")


def problem(seed: int, kind: str | None = None) -> Problem:
    """Return the problem for ``seed`` (its kind drawn from the seed unless given)."""
    check_int("seed", seed, 0, (1 << 63) - 1)
    if kind is not None:
        check_choice("kind", kind, KINDS)
    rng = random.Random(seed)
    chosen = KINDS[rng.randrange(len(KINDS))]
    kind = kind or chosen
    return _sequence_problem(seed, rng) if kind == "sequence" else _register_problem(seed, rng)
