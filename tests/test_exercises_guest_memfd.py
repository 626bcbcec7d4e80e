"""kvmmu.exercises.guest_memfd: every problem's answer is what the model computes from its ARG lines.

The contract itself (seeds, verdicts, perturbed answers) is checked for every
topic in tests/test_exercise_contract.py.  Here the ARG lines are read back
and the model run again, independently of the generator, one CPU at a time.
"""
import pytest

from kvmmu.cpu import run_alone
from kvmmu.errno import errno_name
from kvmmu.exercises.guest_memfd import KINDS, REGISTER_SETUPS, SEQUENCE_ACTIONS, problem
from kvmmu.folio import folio_test_guestmem
from kvmmu.guest_memfd_rfc import gmem_clear_mappable, kvm_slot_gmem_register_callback
from kvmmu.scenarios import guest_memfd as S


def _args(p) -> dict:
    args = dict(p.params)
    split = {k: [] if v == "nothing" else v.split(", ")
             for k, v in args.items() if k in ("actions", "setup", "then")}
    return {**args, **split}


def test_different_seeds_differ_and_cover_every_kind():
    problems = [problem(s) for s in range(60)]
    assert len({p.question for p in problems}) > 55
    assert {p.kind for p in problems} == set(KINDS)


def test_question_reproduces_from_its_first_line():
    p = problem(7)
    assert p.question.splitlines()[0] == "Seed 7: kvmmu.exercises.guest_memfd.problem(7)"
    assert repr(p) == p.question == str(p)


@pytest.mark.parametrize("seed", range(30))
def test_sequence_answer_is_a_replay_of_its_actions(seed):
    p = problem(seed, "sequence")
    a = _args(p)
    assert set(a["actions"]) <= set(SEQUENCE_ACTIONS)
    kvm = S.replay(a["actions"], size=1 << a["order"], order=a["order"])
    file = S.gmem_file(kvm)
    folio = file.folio_at(0)
    assert p.answer() == {"state": file.state(0), "refcount": folio.refcount,
                          "mapcount": folio.mapcount, "pending": folio_test_guestmem(folio)}
    # The story always takes the page to NONE at some point (the unshare with a holder).
    assert any(new == "NONE" for _i, _old, new, _fn in file.history)


@pytest.mark.parametrize("seed", range(30))
def test_register_answer_is_the_register_call(seed):
    p = problem(seed, "register")
    a = _args(p)
    assert tuple(a["setup"]) in REGISTER_SETUPS
    kvm = S.replay(a["setup"], size=1 << a["order"], order=a["order"])
    file = S.gmem_file(kvm)
    run_alone(kvm, gmem_clear_mappable(file, 0, 1))
    assert file.state(0) == "NONE"
    for action in a["then"]:
        S.apply_action(kvm, action)
    ret = run_alone(kvm, kvm_slot_gmem_register_callback(kvm, S.gmem_slot(kvm), S.GFN))
    folio = file.folio_at(0)
    assert p.answer() == {"ret": errno_name(ret) if ret else "0",
                          "pending": folio_test_guestmem(folio), "refcount": folio.refcount}


def test_register_problems_reach_every_outcome():
    seen = {(p.answer()["ret"], p.answer()["pending"])
            for p in (problem(s, "register") for s in range(80))}
    # 0 (no holder left), -EAGAIN and registered, -EAGAIN and nothing registered (mapped)
    assert seen == {("0", False), ("-EAGAIN", True), ("-EAGAIN", False)}


def test_feedback_names_the_wrong_count_in_decimal():
    p = problem(3, "sequence")
    wrong = {**p.answer(), "refcount": p.answer()["refcount"] + 10}
    verdict = p.check(wrong)
    assert not verdict.passed and "refcount" in verdict.feedback and "too high" in verdict.feedback
    assert "0x" not in verdict.feedback
    assert "must be an int" in p.check({**p.answer(), "mapcount": "1"}).feedback


def test_problem_bad_input():
    with pytest.raises(TypeError, match="seed"):
        problem("7")
    with pytest.raises(ValueError, match="kind"):
        problem(7, "essay")
