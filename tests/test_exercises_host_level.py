"""kvmmu.exercises.host_level: every answer is what the model computes from the ARG lines.

The contract itself (seeds, verdicts, perturbed answers) is checked for every
topic in tests/test_exercise_contract.py.
"""
import re

import pytest

from kvmmu.cpu import run_alone
from kvmmu.exercises.host_level import KINDS, problem
from kvmmu.host_mm import host_translation
from kvmmu.kvm_host import (KvmVcpu, kvm_mmu_invalidate_begin, kvm_mmu_invalidate_end,
                            kvm_mmu_invalidate_range_add, mmu_invalidate_retry_gfn)
from kvmmu.kvm_main import kvm_create_vm
from kvmmu.levels import KVM_PAGES_PER_HPAGE, PG_LEVEL_4K, level_name
from kvmmu.memslots import kvm_slot_dirty_track_enabled, lpage_info_slot
from kvmmu.mmu import kvm_mmu_do_page_fault
from kvmmu.pferr import PFERR_GUEST_FINAL_MASK
from kvmmu.scenarios.host_level import kvm_leaf_of, make_host_vm


def _args(p) -> dict:
    return dict(p.params)


def test_different_seeds_differ_and_cover_every_kind():
    problems = [problem(s) for s in range(40)]
    assert len({p.question for p in problems}) == 40
    assert {p.kind for p in problems} == set(KINDS)
    levels = {p.answer()["level"] for p in problems if p.kind == "level"}
    assert {"4K", "2M"} <= levels


def test_question_reproduces_from_its_first_line():
    p = problem(7)
    assert p.question.splitlines()[0] == "Seed 7: kvmmu.exercises.host_level.problem(7)"
    assert repr(p) == p.question == str(p)


@pytest.mark.parametrize("seed", range(20))
def test_level_answer_is_the_fault_path(seed):
    p = problem(seed, "level")
    a = _args(p)
    kvm = make_host_vm(a["base_gfn"], a["npages"], a["userspace_addr"], a["backing"],
                       a["gfn"], dirty_logging=a["dirty_logging"], shadowed=a["shadowed"])
    slot = kvm.kvm_memslots().slots[0]
    hva = a["userspace_addr"] + ((a["gfn"] - a["base_gfn"]) << 12)
    assert host_translation(kvm.mm, hva)[0] == a["gup_pfn"]
    # The largest level the slot allows: dirty logging, then lpage_info top down.
    allowed = PG_LEVEL_4K
    if not kvm_slot_dirty_track_enabled(slot):
        allowed = next((lv for lv in (3, 2) if not lpage_info_slot(a["gfn"], slot, lv)),
                       PG_LEVEL_4K)
    ret, level = run_alone(kvm, kvm_mmu_do_page_fault(
        KvmVcpu(kvm, 0), a["gfn"] << 12, PFERR_GUEST_FINAL_MASK, False))
    leaf_level, pfn = kvm_leaf_of(kvm, a["gfn"])
    first = pfn - (a["gfn"] & (KVM_PAGES_PER_HPAGE(leaf_level) - 1))
    assert leaf_level == level
    assert first == a["gup_pfn"] & ~(KVM_PAGES_PER_HPAGE(level) - 1)
    assert p.answer() == {"level": level_name(level), "slot_level": level_name(allowed),
                          "pfn": first}
    assert p.solution().startswith(f"level {level_name(level)}, ")


def _replay_events(start_seq: int, events: str, gfn: int):
    kvm = kvm_create_vm()
    kvm.mmu_invalidate_seq = start_seq
    snapshot = None
    run_alone(kvm, kvm.mmu_lock.write_lock())
    for event in events.split("; "):
        if event == "snapshot":
            snapshot = kvm.mmu_invalidate_seq
        elif event == "end":
            kvm_mmu_invalidate_end(kvm)
        else:
            lo, hi = (int(x, 16) for x in re.fullmatch(
                r"begin \[(0x[0-9a-f]+), (0x[0-9a-f]+)\)", event).groups())
            kvm_mmu_invalidate_begin(kvm)
            kvm_mmu_invalidate_range_add(kvm, lo, hi)
    retry = mmu_invalidate_retry_gfn(kvm, snapshot, gfn)
    run_alone(kvm, kvm.mmu_lock.write_unlock())
    assert not kvm.warnings
    return bool(retry), kvm.mmu_invalidate_seq, kvm.mmu_invalidate_in_progress


@pytest.mark.parametrize("seed", range(30))
def test_retry_answer_is_the_invalidation_protocol(seed):
    p = problem(seed, "retry")
    a = _args(p)
    retry, seq, in_progress = _replay_events(a["start_seq"], a["events"], a["gfn"])
    assert p.answer() == {"retry": retry, "seq": seq, "in_progress": in_progress}
    assert seq == a["start_seq"] + a["events"].count("end")


def test_retry_problems_cover_both_answers_and_each_reason():
    answers = [problem(s, "retry") for s in range(80)]
    assert {p.answer()["retry"] for p in answers} == {True, False}
    reasons = {p.solution().splitlines()[-1].split(": ", 1)[1] for p in answers}
    assert reasons == {"the gfn is inside the range in progress.",
                       "the sequence moved since the snapshot.",
                       "no invalidation covers the gfn and the sequence has not moved."}


def test_feedback_names_the_wrong_part():
    p = problem(1, "level")
    wrong = {**p.answer(), "pfn": p.answer()["pfn"] ^ 0x200}
    verdict = p.check(wrong)
    assert not verdict and "pfn" in verdict.feedback and "bit 9" in verdict.feedback
    assert "2 of 3 parts right" in verdict.feedback


def test_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        problem(1, "guess")
