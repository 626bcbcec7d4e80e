"""kvmmu.exercises.tdp_mmu: every problem's answer is what the model computes from its ARG lines.

The contract itself (seeds, verdicts, perturbed answers) is checked for every
topic in tests/test_exercise_contract.py.
"""
import pytest

from kvmmu.exercises.tdp_mmu import KINDS, problem, run_length
from kvmmu.explorer import run_schedule
from kvmmu.scenarios import tdp_mmu as R


def _args(p):
    """The problem's parameters, as the scenario takes them."""
    args = dict(p.params)
    assert run_length(args["schedule"]) == args["runs"]
    return args["fix"], args["actors"], args["schedule"]


def test_question_reproduces_from_its_first_line_and_seeds_differ():
    p = problem(7)
    assert p.question.splitlines()[0] == "Seed 7: kvmmu.exercises.tdp_mmu.problem(7)"
    problems = [problem(s) for s in range(40)]
    assert len({p.question for p in problems}) == 40
    assert {p.kind for p in problems} == set(KINDS)


@pytest.mark.parametrize("seed", range(30))
def test_predict_answer_is_the_state_after_the_schedule(seed):
    p = problem(seed, "predict")
    fix, actors, schedule = _args(p)
    trace = run_schedule(R.zap_vs_fault(fix, actors), schedule)
    state = trace.steps[-1].state
    broken = trace.violation == R.NO_STALE_TRANSLATION
    assert p.answer() == {"spte": state[R.SPTE_KEY], "tlb0": state["vCPU 0 TLB"],
                          "tlb1": state["vCPU 1 TLB"],
                          "broken_at": trace.violation_step + 1 if broken else 0}
    assert p.solution().startswith(f"SPTE: {state[R.SPTE_KEY]}; ")
    assert ("BROKEN at step" in p.solution()) == broken


@pytest.mark.parametrize("seed", range(30))
def test_outcome_answer_is_what_the_complete_run_returns(seed):
    p = problem(seed, "outcome")
    fix, actors, schedule = _args(p)
    assert fix is True
    trace = run_schedule(R.zap_vs_fault(True, actors), schedule, complete=True)
    assert trace.violation is None and not trace.unfinished
    assert p.answer() == {"B": trace.results["B"], "C": trace.results.get("C", "-"),
                          "spte": trace.steps[-1].state[R.SPTE_KEY]}


def test_some_predictions_show_the_break_and_some_outcomes_retry():
    answers = [problem(s).answer() for s in range(300)]
    assert any(a.get("broken_at", 0) > 0 for a in answers)
    assert any(a.get("B", "").startswith("RET_PF_RETRY") for a in answers)


def test_feedback_names_the_wrong_part():
    p = problem(1, "predict")
    wrong = {**p.answer(), "tlb0": "-" if p.answer()["tlb0"] != "-" else "0x100->0x40100"}
    verdict = p.check(wrong)
    assert not verdict.passed and "tlb0" in verdict.feedback and "3 of 4" in verdict.feedback


def test_run_length():
    assert run_length("AAAB") == "A3 B1" and run_length("") == "(empty)"
    with pytest.raises(TypeError, match="schedule"):
        run_length(None)
