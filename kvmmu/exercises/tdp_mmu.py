"""Seeded problems on the zap-vs-fault race of chapter 3: predict the state after a schedule.

``problem(seed)`` draws the variant (fix on or off), the cast (2 or 3
actors) and a schedule from ``random.Random(seed)``; every answer is
computed by running the schedule in :mod:`kvmmu.explorer`, never written by
hand.  ``breaks_unsafe_zap(schedule)`` checks a student's answer to "find a
schedule that breaks the unsafe variant".
"""
import random

from .. import explorer as ex
from ..scenarios import tdp_mmu as R
from ..checks import check_int
from .base import Problem

__all__ = ["run_length", "problem", "breaks_unsafe_zap"]


def run_length(schedule: str) -> str:
    """Spell a schedule in runs: ``"AAAB"`` -> ``"A3 B1"``."""
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a string of actor letters, got {type(schedule).__name__}")
    runs = []
    for ch in schedule:
        if runs and runs[-1][0] == ch:
            runs[-1][1] += 1
        else:
            runs.append([ch, 1])
    return " ".join(f"{c}{n}" for c, n in runs) or "(empty)"


def _cast_text(actors: int) -> str:
    text = (f"A zaps the 4K SPTE of gfn {R.RACE_GFN:#x} under mmu_lock held for read; "
            f"B is vCPU 1 touching gfn {R.RACE_GFN:#x} and, on an EPT violation, faulting it "
            f"in (the host now maps it to pfn {R.NEW_PFN:#x})")
    if actors == 3:
        text += "; C is vCPU 0 doing the same"
    return text + (f". At the start the SPTE maps pfn {R.OLD_PFN:#x} and vCPU 0's TLB "
                   f"caches {R.RACE_GFN:#x}->{R.OLD_PFN:#x}.")


def _phase_of_zap(labels: list[str], fix: bool) -> str:
    if not labels:
        return "A has not started"
    if any(lab.startswith("read_unlock") for lab in labels):
        return "A has finished"
    if any(lab.startswith("write") for lab in labels):
        return "A has written SHADOW_NONPRESENT_VALUE (the SPTE is free again)"
    if any(lab.startswith("flush") for lab in labels):
        return "A has flushed the TLBs but not yet unfrozen the SPTE" if fix else \
            "A has cleared the SPTE and flushed the TLBs"
    if any(lab.startswith("cmpxchg") and ": ok" in lab for lab in labels):
        return ("A has frozen the SPTE (FROZEN_SPTE) and not yet flushed" if fix else
                "A has cleared the SPTE (non-present) and NOT yet flushed the TLBs")
    return f"A is still walking down to the SPTE ({len(labels)} step{'s' if len(labels) != 1 else ''})"


def _draw_schedule(sc, rng: random.Random) -> str:
    """A schedule worth predicting: A walks to (about) its cmpxchg, then bursts interleave.

    Uniform random schedules mostly let a vCPU hit its TLB before the zap
    starts; this one lets A take 6 to 11 steps first (its cmpxchg is step 9),
    then alternates a burst of 1 to 15 steps of a vCPU (a fault that breaks
    the unsafe zap needs 13 in a row) with a burst of 1 to 3
    steps of A, and stops at a random length, at the end, or at the step
    that breaks the invariant.
    """
    schedule = "A" * rng.choice((6, 8, 9, 9, 9, 10, 11))
    stop = len(schedule) + rng.randrange(3, 20)
    vcpus = [c for c in sc.letters if c != "A"]
    turn = 0
    while len(schedule) < stop:
        who = rng.choice(vcpus) if turn % 2 == 0 else "A"
        burst = rng.randint(1, 15) if who != "A" else rng.randint(1, 3)
        for _ in range(burst):
            trace = ex.run_schedule(sc, schedule)
            if trace.violation is not None or not trace.runnable or len(schedule) >= stop:
                return schedule
            schedule += who if who in trace.runnable else trace.runnable[0]
        turn += 1
    return schedule


def problem(seed: int) -> Problem:
    """Return the seeded problem: after this schedule, the SPTE, the TLBs, and is anything stale?"""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    rng = random.Random(seed)
    fix = rng.random() < 0.5
    actors = rng.choice((2, 2, 3))
    sc = R.zap_vs_fault(fix, actors)
    schedule = _draw_schedule(sc, rng)
    trace = ex.run_schedule(sc, schedule)
    state = (trace.steps[-1].state if trace.steps else trace.initial)
    spte = state[R.SPTE_KEY]
    question = (f"Seed {seed}: chapter 3's race with the fix {'ON (freeze, flush, then non-present)' if fix else 'OFF (non-present, then flush)'}. "
                f"{_cast_text(actors)} After the schedule {schedule!r} ({run_length(schedule)}), "
                f"what does the 4K SPTE of gfn {R.RACE_GFN:#x} hold, what do vCPU 0's and "
                "vCPU 1's TLBs hold, and is the chapter's invariant broken: does a TLB translate "
                "the gfn to a pfn other than the one the SPTE (or another TLB) maps it to?")
    labels_a = [s.label for s in trace.steps if s.actor == "A"]
    stale = trace.violation == R.NO_STALE_TRANSLATION
    cached = state["vCPU 0 TLB"] != "-" or state["vCPU 1 TLB"] != "-"
    lines = [f"SPTE: {spte}; vCPU 0 TLB: {state['vCPU 0 TLB']}; vCPU 1 TLB: {state['vCPU 1 TLB']}.",
             f"{_phase_of_zap(labels_a, fix)}."]
    for letter, vcpu in (("B", 1), ("C", 0)):
        if letter not in sc.letters:
            continue
        mine = [s.label for s in trace.steps if s.actor == letter]
        if letter in trace.results:
            lines.append(f"{letter} (vCPU {vcpu}) has finished: {trace.results[letter]}.")
        elif mine:
            lines.append(f"{letter} (vCPU {vcpu}) has run {len(mine)} step"
                         f"{'s' if len(mine) != 1 else ''}, the last: {mine[-1]}.")
        else:
            lines.append(f"{letter} (vCPU {vcpu}) has not started.")
    if stale:
        lines.append(f"STALE: vCPU 0 still translates gfn {R.RACE_GFN:#x} to the old pfn "
                     f"{R.OLD_PFN:#x} while the SPTE maps the new pfn {R.NEW_PFN:#x}: the "
                     f"invariant broke at step {trace.violation_step + 1}, "
                     f"{trace.steps[trace.violation_step].label}.")
    elif cached and not spte.startswith("leaf"):
        lines.append("Not broken: a TLB still caches the old translation, but the SPTE maps "
                     "nothing else yet (it is not a present leaf); the zap's flush removes "
                     "the cached copy.")
    else:
        lines.append("Not broken: every TLB entry for the gfn agrees with the SPTE.")
    return Problem(seed, question, "\n".join(lines), "predict")


def breaks_unsafe_zap(schedule, actors: int = 2) -> tuple[bool, str]:
    """Check an answer to "find a schedule that breaks the unsafe variant".

    Returns ``(True, explanation)`` if running ``schedule`` on the unsafe
    zap-vs-fault race breaks the invariant, else ``(False, what happened)``.
    A schedule the scenario cannot run (a wrong letter, a finished actor)
    gives ``(False, the reason)``.
    """
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a string of actor letters, got {type(schedule).__name__}")
    check_int("actors", actors, 2, 3)
    sc = R.zap_vs_fault(False, actors)
    try:
        trace = ex.run_schedule(sc, "".join(schedule.split()).upper())
    except ValueError as exc:
        return False, f"that schedule cannot run: {exc}"
    if trace.violation == R.NO_STALE_TRANSLATION:
        step = trace.steps[trace.violation_step]
        return True, (f"broken at step {trace.violation_step + 1} by {step.actor}: {step.label}; "
                      f"then vCPU 0 TLB {step.state['vCPU 0 TLB']} while the SPTE is "
                      f"{step.state[R.SPTE_KEY]}")
    return False, f"the invariant holds after {len(trace.steps)} steps: {trace.outcome}"
