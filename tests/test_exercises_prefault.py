"""kvmmu.exercises.prefault: every problem's answer is what the model computes from its ARG lines.

The contract itself (seeds, verdicts, perturbed answers) is checked for every
topic in tests/test_exercise_contract.py.
"""
import pytest

from kvmmu.cpu import ModelHang
from kvmmu.errno import errno_name
from kvmmu.exercises import prefault as EX
from kvmmu.scenarios import prefault as P


def _replay(p):
    """Rebuild the problem's VM and range from its ARG values alone."""
    args = dict(p.params)
    policy = args["policy"].split()[0]
    base = int(args["slot 10"].split()[-1], 16)
    gpa = int(args["gpa"].split()[0], 16)
    kvm, vcpu, vm_base = EX._vm(policy, args["situation"])
    assert vm_base == base
    return vcpu, gpa, args["size"], args["flags"]


def test_question_reproduces_from_its_first_line():
    p = EX.problem(7)
    assert p.question.splitlines()[0] == "Seed 7: kvmmu.exercises.prefault.problem(7)"
    assert {EX.problem(s).kind for s in range(40)} == set(EX.KINDS)


@pytest.mark.parametrize("seed", range(30))
def test_call_answer_is_the_ioctl_run_alone(seed):
    p = EX.problem(seed, "call")
    vcpu, gpa, size, flags = _replay(p)
    try:
        res = P.prefault(vcpu, gpa, size, flags)
    except ModelHang:
        assert p.answer() == {"ret": "never returns", "gpa": gpa, "size": size}
        return
    assert p.answer() == {"ret": errno_name(res.ret), "gpa": res.gpa, "size": res.size}


@pytest.mark.parametrize("seed", range(30))
def test_chunks_answer_is_the_ioctls_progress(seed):
    p = EX.problem(seed, "chunks")
    vcpu, gpa, size, _flags = _replay(p)
    leaves_before = len(vcpu.kvm.ept.live_leaves(vcpu.root)) if vcpu.root is not None else 0
    res = P.prefault(vcpu, gpa, size)
    assert p.answer()["mapped"] == size - res.size
    assert p.answer()["chunks"] >= 1 or res.size == size
    assert leaves_before <= len(vcpu.kvm.ept.live_leaves(vcpu.root))


def test_hang_is_a_problem_and_feedback_names_the_part():
    hang = next(p for p in (EX.problem(s, "call") for s in range(400))
                if p.answer()["ret"] == "never returns")
    assert "synchronize_srcu" in hang.solution()
    p = EX.problem(1, "call")
    verdict = p.check({**p.answer(), "size": p.answer()["size"] ^ 0x1000})
    assert not verdict and "size" in verdict.feedback and "2 of 3 parts right" in verdict.feedback


def test_bad_kind_and_seed():
    with pytest.raises(ValueError, match="kind"):
        EX.problem(1, "guess")
    with pytest.raises(ValueError, match="seed"):
        EX.problem(-1)
