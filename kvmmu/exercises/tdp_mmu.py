"""Seeded problems on chapter 3's zap-vs-fault race: predict what a schedule leaves.

``problem(seed)`` draws the kind, then the variant (the fix on or off), the
cast (2 or 3 actors) and a schedule from ``random.Random(seed)``; every
answer is computed by running the schedule in :mod:`kvmmu.explorer`, never
written by hand.  The problems follow the exercise contract of
:mod:`kvmmu.exercises.base`.  Two kinds:

- ``predict``: after the schedule, what the 4K SPTE and each vCPU's TLB
  hold, and the step at which the invariant broke (0 if it holds);
- ``outcome``: with the fix on, the schedule, then every actor to its end
  (the first one in letter order that can step goes on): what each vCPU's
  access returned and what the SPTE holds at the end.

``breaks_unsafe_zap(schedule)`` checks an answer to "find a schedule that
breaks the unsafe variant".
"""
import random

from .. import explorer as ex
from ..checks import check_choice, check_int
from ..scenarios import tdp_mmu as R
from .base import AnswerForm, ChoiceField, IntField, Problem, check_seed
from .classroom import Assignment, Slot

__all__ = ["KINDS", "SPTE_VALUES", "TLB_VALUES", "OUTCOMES", "run_length",
           "problem", "breaks_unsafe_zap", "ASSIGNMENT"]

KINDS = ("predict", "outcome")
_OLD, _NEW, _GFN = f"{R.OLD_PFN:#x}", f"{R.NEW_PFN:#x}", f"{R.RACE_GFN:#x}"
#: What the 4K SPTE of the race's gfn can hold, as the model names it.
SPTE_VALUES = (f"leaf {_OLD}", "FROZEN_SPTE", "non-present", f"leaf {_NEW}")
#: What a vCPU's TLB can hold for the gfn ("-": nothing).
TLB_VALUES = ("-", f"{_GFN}->{_OLD}", f"{_GFN}->{_NEW}")
#: What a vCPU's touch of the gfn can return (scenarios.tdp_mmu.touch).
OUTCOMES = (f"hit {_OLD}", f"hit {_NEW}", f"RET_PF_FIXED, then hit {_NEW}",
            f"RET_PF_SPURIOUS, then hit {_NEW}", "RET_PF_RETRY, then EPT violation",
            f"RET_PF_RETRY, then hit {_NEW}")


def run_length(schedule: str) -> str:
    """Spell a schedule in runs: ``"AAAB"`` -> ``"A3 B1"``."""
    if not isinstance(schedule, str):
        raise TypeError("schedule must be a string of actor letters, got "
                        f"{type(schedule).__name__}")
    runs = []
    for ch in schedule:
        if runs and runs[-1][0] == ch:
            runs[-1][1] += 1
        else:
            runs.append([ch, 1])
    return " ".join(f"{c}{n}" for c, n in runs) or "(empty)"


def _cast_text(actors: int) -> str:
    text = (f"A zaps the 4K SPTE of gfn {_GFN} under mmu_lock held for read; B is "
            f"vCPU 1 touching gfn {_GFN} and, on an EPT violation, faulting it in "
            f"(the host now maps it to pfn {_NEW}) and touching it again")
    if actors == 3:
        text += "; C is vCPU 0 doing the same"
    return text + (f". At the start the SPTE maps pfn {_OLD} and vCPU 0's TLB "
                   f"caches {_GFN}->{_OLD}.")


def _phase_of_zap(labels: list[str], fix: bool) -> str:
    if not labels:
        return "A has not started"
    if any(lab.startswith("read_unlock") for lab in labels):
        return "A has finished"
    if any(lab.startswith("write") for lab in labels):
        return "A has written SHADOW_NONPRESENT_VALUE (the SPTE is free again)"
    if any(lab.startswith("flush") for lab in labels):
        return ("A has flushed the TLBs but not yet unfrozen the SPTE" if fix else
                "A has cleared the SPTE and flushed the TLBs")
    if any(lab.startswith("cmpxchg") and ": ok" in lab for lab in labels):
        if fix:
            return "A has frozen the SPTE (FROZEN_SPTE) and not yet flushed"
        return "A has cleared the SPTE (non-present) and NOT yet flushed the TLBs"
    return (f"A is still walking down to the SPTE ({len(labels)} "
            f"step{'s' if len(labels) != 1 else ''})")


def _draw_schedule(sc, rng: random.Random) -> str:
    """A schedule worth predicting: A walks to (about) its cmpxchg, then bursts.

    Uniform random schedules mostly let a vCPU hit its TLB before the zap
    starts; this one lets A take 6 to 11 steps first (its cmpxchg is step
    9), then alternates a burst of 1 to 15 steps of a vCPU (a fault that
    breaks the unsafe zap needs 13 in a row) with a burst of 1 to 3 steps
    of A, and stops at a random length, at the end, or at the step that
    breaks the invariant.
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
            if (trace.violation is not None or not trace.runnable
                    or len(schedule) >= stop):
                return schedule
            schedule += who if who in trace.runnable else trace.runnable[0]
        turn += 1
    return schedule


def _vcpu_lines(sc, trace) -> list[str]:
    lines = []
    for letter, vcpu in (("B", 1), ("C", 0)):
        if letter not in sc.letters:
            continue
        mine = [s.label for s in trace.steps if s.actor == letter]
        if letter in trace.results:
            lines.append(f"{letter} (vCPU {vcpu}) has finished: "
                         f"{trace.results[letter]}.")
        elif mine:
            lines.append(f"{letter} (vCPU {vcpu}) has run {len(mine)} step"
                         f"{'s' if len(mine) != 1 else ''}, the last: {mine[-1]}.")
        else:
            lines.append(f"{letter} (vCPU {vcpu}) has not started.")
    return lines


PREDICT_FORM = AnswerForm((
    ChoiceField("spte", f"the 4K SPTE of gfn {_GFN}", SPTE_VALUES),
    ChoiceField("tlb0", "vCPU 0's TLB entry for the gfn", TLB_VALUES),
    ChoiceField("tlb1", "vCPU 1's TLB entry for the gfn", TLB_VALUES),
    IntField("broken_at", "the step that broke the invariant, 0 if none", 0, 200),
))


def _predict_problem(seed: int, rng: random.Random) -> Problem:
    fix = rng.random() < 0.5
    actors = rng.choice((2, 2, 3))
    sc = R.zap_vs_fault(fix, actors)
    schedule = _draw_schedule(sc, rng)
    trace = ex.run_schedule(sc, schedule)
    state = trace.steps[-1].state if trace.steps else trace.initial
    broken = trace.violation == R.NO_STALE_TRANSLATION
    expected = {"spte": state[R.SPTE_KEY], "tlb0": state["vCPU 0 TLB"],
                "tlb1": state["vCPU 1 TLB"],
                "broken_at": trace.violation_step + 1 if broken else 0}
    how = ("ON (freeze, flush, then non-present)" if fix else
           "OFF (non-present, then flush)")
    text = (f"Chapter 3's race, the fix {how}. {_cast_text(actors)} Run the "
            "schedule (one letter per step). Then: what does the 4K SPTE of gfn "
            f"{_GFN} hold, what do vCPU 0's and vCPU 1's TLBs hold for it, and "
            "at which step did the invariant break (a TLB translating the gfn to "
            "another pfn than the SPTE or another TLB), 0 if it holds?")
    lines = [f"SPTE: {expected['spte']}; vCPU 0 TLB: {expected['tlb0']}; "
             f"vCPU 1 TLB: {expected['tlb1']}.",
             _phase_of_zap([s.label for s in trace.steps if s.actor == "A"], fix)
             + ".",
             *_vcpu_lines(sc, trace)]
    if broken:
        step = trace.steps[trace.violation_step]
        lines.append(f"BROKEN at step {expected['broken_at']} ({step.label}): "
                     f"vCPU 0 still translates gfn {_GFN} to the old pfn {_OLD} "
                     f"while the SPTE maps the new pfn {_NEW}.")
    elif state["vCPU 0 TLB"] != "-" and not expected["spte"].startswith("leaf"):
        lines.append("Holds (broken_at 0): a TLB still caches the old translation, "
                     "but the SPTE maps nothing else yet; the zap's flush removes "
                     "the copy.")
    else:
        lines.append("Holds (broken_at 0): every TLB entry for the gfn agrees with "
                     "the SPTE.")
    params = [("fix", fix), ("actors", actors), ("schedule", schedule),
              ("runs", run_length(schedule))]
    return Problem.make(seed, "predict", __name__, params, text, PREDICT_FORM,
                        expected, "\n".join(lines))


OUTCOME_FORM = AnswerForm((
    ChoiceField("B", "what vCPU 1's touch returned", OUTCOMES),
    ChoiceField("C", "what vCPU 0's touch returned ('-' with two actors)",
                ("-",) + OUTCOMES),
    ChoiceField("spte", f"the 4K SPTE of gfn {_GFN} at the end", SPTE_VALUES),
))


def _outcome_problem(seed: int, rng: random.Random) -> Problem:
    actors = rng.choice((2, 3))
    sc = R.zap_vs_fault(True, actors)
    schedule = _draw_schedule(sc, rng)
    trace = ex.run_schedule(sc, schedule, complete=True)
    if trace.violation is not None:         # pragma: no cover - the fix holds
        raise RuntimeError(f"the fixed zap broke under {schedule!r}: "
                           f"{trace.violation}")
    expected = {"B": trace.results["B"], "C": trace.results.get("C", "-"),
                "spte": trace.steps[-1].state[R.SPTE_KEY]}
    text = (f"Chapter 3's race, the fix ON (freeze, flush, then non-present). "
            f"{_cast_text(actors)} Run the schedule, then let every actor run to "
            "its end (whichever can step first in letter order goes on). What did "
            "each vCPU's touch return (touch returns 'hit <pfn>', or the fault's "
            "RET_PF_* code and what the second access found), and what does the 4K "
            f"SPTE of gfn {_GFN} hold at the end?")
    tail = trace.schedule[len(schedule):]
    lines = [f"B: {expected['B']}; C: {expected['C']}; SPTE: {expected['spte']}.",
             f"After the schedule the run went on with {run_length(tail)}."]
    for letter in "BC"[:actors - 1]:
        result = expected[letter]
        if result.startswith("RET_PF_RETRY"):
            why = ("its walk met FROZEN_SPTE (or lost a compare-exchange), so the "
                   "fault gave up and the guest would fault again")
        elif result.startswith("RET_PF_FIXED"):
            why = "its fault installed the host's new page after A's clear"
        elif result.startswith("RET_PF_SPURIOUS"):
            why = "another vCPU had installed the new page first"
        else:
            why = "its first access hit a translation that was still there"
        lines.append(f"{letter}: {why}.")
    params = [("fix", True), ("actors", actors), ("schedule", schedule),
              ("runs", run_length(schedule))]
    return Problem.make(seed, "outcome", __name__, params, text, OUTCOME_FORM,
                        expected, "\n".join(lines))


_MAKERS = {"predict": _predict_problem, "outcome": _outcome_problem}


def problem(seed: int, kind: str | None = None) -> Problem:
    """Return the zap-vs-fault problem for ``seed`` in [0, 2**32).

    The kind is drawn from the seed first either way, so ``problem(seed,
    kind)`` with the kind ``problem(seed)`` drew is the same problem.
    """
    check_seed(seed)
    rng = random.Random(seed)
    drawn = KINDS[rng.randrange(len(KINDS))]
    if kind is not None:
        drawn = check_choice("kind", kind, KINDS)
    return _MAKERS[drawn](seed, rng)


def breaks_unsafe_zap(schedule: str, actors: int = 2) -> tuple[bool, str]:
    """Check an answer to "find a schedule that breaks the unsafe variant".

    Returns ``(True, explanation)`` if running ``schedule`` on the unsafe
    zap-vs-fault race breaks the invariant, else ``(False, what happened)``.
    A schedule the scenario cannot run (a wrong letter, a finished actor)
    gives ``(False, the reason)``.
    """
    if not isinstance(schedule, str):
        raise TypeError("schedule must be a string of actor letters, got "
                        f"{type(schedule).__name__}")
    check_int("actors", actors, 2, 3)
    sc = R.zap_vs_fault(False, actors)
    try:
        trace = ex.run_schedule(sc, "".join(schedule.split()).upper())
    except ValueError as exc:
        return False, f"that schedule cannot run: {exc}"
    if trace.violation == R.NO_STALE_TRANSLATION:
        step = trace.steps[trace.violation_step]
        return True, (f"broken at step {trace.violation_step + 1} by {step.actor}: "
                      f"{step.label}; then vCPU 0 TLB {step.state['vCPU 0 TLB']} "
                      f"while the SPTE is {step.state[R.SPTE_KEY]}")
    return False, (f"the invariant holds after {len(trace.steps)} steps: "
                   f"{trace.outcome}")


#: Chapter 3's nbgrader assignment (tools/classroom.py builds it): two
#: predictions and one outcome, each student's own.
ASSIGNMENT = Assignment("ch03_frozen_spte_flush", __name__, (
    Slot("predict", 2), Slot("predict", 2), Slot("outcome", 2),
))
