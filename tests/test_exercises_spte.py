"""kvmmu.exercises.spte: every problem's answer is what the model computes from its ARG lines.

The contract itself (seeds, verdicts, perturbed answers) is checked for every
topic in tests/test_exercise_contract.py.
"""
import pytest

from kvmmu import spte as S
from kvmmu.exercises.spte import KINDS, access_name, problem


def _args(p):
    """The problem's parameters as the model takes them."""
    args = dict(p.params)
    args["cfg"] = getattr(S, args["cfg"].split()[0])
    if "level" in args:
        args["level"] = int(str(args["level"]).split()[0])
    return args


def _access(names: str) -> int:
    return sum(getattr(S, n) for n in names.split("|")) if names != "0" else 0


def test_different_seeds_differ_and_cover_every_kind():
    problems = [problem(s) for s in range(60)]
    assert len({p.question for p in problems}) == 60
    assert {p.kind for p in problems} == set(KINDS)


def test_question_reproduces_from_its_first_line():
    p = problem(7)
    assert p.question.splitlines()[0] == "Seed 7: kvmmu.exercises.spte.problem(7)"
    assert repr(p) == p.question == str(p)


@pytest.mark.parametrize("seed", range(25))
def test_build_answer_is_make_spte(seed):
    p = problem(seed, "build")
    a = _args(p)
    spte, wrprot = S.make_spte(a["level"], _access(a["pte_access"]), a["pfn"], cfg=a["cfg"],
                               host_writable=a["host_writable"], prefetch=a["prefetch"],
                               write_tracked=a["write_tracked"])
    assert p.answer() == {"new_spte": spte, "wrprot": wrprot}
    assert p.solution().startswith(f"new_spte = {spte:#018x}, wrprot = {wrprot}")


@pytest.mark.parametrize("seed", range(25))
def test_decode_answer_is_decode_spte(seed):
    p = problem(seed, "decode")
    a = _args(p)
    spte = int(a["spte"], 16)
    dec = S.decode_spte(spte, a["cfg"], a["level"])
    ans = p.answer()
    assert ans["class"] == S.classify(spte, a["cfg"], a["level"]) == dec.cls
    assert ans["pfn"] == S.spte_to_pfn(spte)
    assert ans["writable"] == S.is_writable_pte(spte)
    assert ans["executable"] == S.is_executable_pte(spte, a["cfg"])
    assert ans["accessed"] == S.is_accessed_spte(spte, a["cfg"])
    assert ans["hmw"] == "".join(map(str, S.hmw_state(spte, a["cfg"])))
    assert p.solution().startswith(str(dec).splitlines()[0])


@pytest.mark.parametrize("seed", range(25))
def test_mmio_answer_is_make_and_check_mmio_spte(seed):
    p = problem(seed, "mmio")
    a = _args(p)
    spte = S.make_mmio_spte(a["gfn"], _access(a["access"]), a["generation"], a["cfg"])
    hit = S.check_mmio_spte(spte, a["later"])
    assert p.answer() == {"spte": spte, "hit": hit}
    assert ("check_mmio_spte: hit" if hit else "check_mmio_spte: miss") in p.solution()


@pytest.mark.parametrize("seed", range(25))
def test_classify_answer_is_classify(seed):
    p = problem(seed, "classify")
    a = _args(p)
    values = [int(v, 16) for v in a["values"].split(", ")]
    assert p.answer() == {"classes": [S.classify(v, a["cfg"], a["level"]) for v in values]}
    for v in values:
        assert f"{v:#018x}" in p.question


def test_feedback_names_the_differing_bits():
    p = problem(1, "build")
    wrong = {**p.answer(), "new_spte": p.answer()["new_spte"] ^ (1 << 9 | 1 << 1)}
    verdict = p.check(wrong)
    assert not verdict and "new_spte" in verdict.feedback and "bits 1, 9" in verdict.feedback
    assert "1 of 2 parts right" in verdict.feedback


def test_access_name():
    assert access_name(S.ACC_ALL) == "ACC_EXEC_MASK|ACC_WRITE_MASK|ACC_USER_MASK"
    assert access_name(0) == "0"


def test_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        problem(1, "guess")
