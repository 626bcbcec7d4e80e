"""The MMU notifier's protocol: kvm_host's bracket and retry checks, kvm_main's callbacks."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmmu.cpu import run_alone
from kvmmu.host_mm import MmuNotifier, host_populate, migrate_page
from kvmmu.kvm_host import (kvm_mmu_invalidate_begin, kvm_mmu_invalidate_end,
                            kvm_mmu_invalidate_range_add, mmu_invalidate_retry,
                            mmu_invalidate_retry_gfn, mmu_invalidate_retry_gfn_unsafe)
from kvmmu.kvm_main import (kvm_create_vm, kvm_mmu_notifier_invalidate_range_end,
                            kvm_mmu_notifier_invalidate_range_start, kvm_mmu_notifier_ops,
                            kvm_vm_ioctl_create_vcpu, set_memory_region)
from kvmmu.levels import PAGE_SHIFT, PG_LEVEL_2M, PG_LEVEL_4K
from kvmmu.memslots import INVALID_GPA, hva_to_gfn_memslot
from kvmmu.mmu import kvm_mmu_do_page_fault, kvm_mmu_reload
from kvmmu.pferr import PFERR_GUEST_FINAL_MASK

GFN = 0x100000
HVA = 0x7F0000000000


def kvm_with_slot(npages=1024):
    kvm = kvm_create_vm()
    kvm_vm_ioctl_create_vcpu(kvm)
    assert set_memory_region(kvm, 0, GFN << PAGE_SHIFT, npages << PAGE_SHIFT, HVA) == 0
    return kvm


def locked(kvm, fn, *args):
    """Call fn(kvm, *args) with mmu_lock held for write, as the kernel requires."""
    run_alone(kvm, kvm.mmu_lock.write_lock())
    try:
        return fn(kvm, *args)
    finally:
        run_alone(kvm, kvm.mmu_lock.write_unlock())


def notifier(kvm) -> MmuNotifier:
    [sub] = kvm.mm.notifier_subscriptions
    return sub


# -- the truth table of mmu_invalidate_retry_gfn ---------------------------------

def test_retry_when_the_sequence_moved():
    kvm = kvm_with_slot()
    locked(kvm, kvm_mmu_invalidate_begin)
    locked(kvm, kvm_mmu_invalidate_range_add, GFN, GFN + 1)
    locked(kvm, kvm_mmu_invalidate_end)
    assert locked(kvm, mmu_invalidate_retry_gfn, 0, GFN + 99) == 1
    assert locked(kvm, mmu_invalidate_retry_gfn, 1, GFN + 99) == 0


def test_retry_when_in_progress_and_inside_the_range():
    kvm = kvm_with_slot()
    locked(kvm, kvm_mmu_invalidate_begin)
    locked(kvm, kvm_mmu_invalidate_range_add, GFN, GFN + 4)
    assert locked(kvm, mmu_invalidate_retry_gfn, 0, GFN + 3) == 1
    # outside the range, sequence unchanged: may proceed
    assert locked(kvm, mmu_invalidate_retry_gfn, 0, GFN + 4) == 0
    assert locked(kvm, mmu_invalidate_retry_gfn, 0, GFN - 1) == 0
    assert not kvm.warnings


def test_begin_does_not_move_the_sequence_end_moves_it_by_one():
    kvm = kvm_with_slot()
    locked(kvm, kvm_mmu_invalidate_begin)
    assert kvm.mmu_invalidate_seq == 0 and kvm.mmu_invalidate_in_progress == 1
    locked(kvm, kvm_mmu_invalidate_range_add, GFN, GFN + 1)
    locked(kvm, kvm_mmu_invalidate_end)
    assert kvm.mmu_invalidate_seq == 1 and kvm.mmu_invalidate_in_progress == 0


@pytest.mark.parametrize("in_progress,inside,seq_moved,expected", [
    (0, False, False, 0), (0, False, True, 1), (0, True, False, 0), (0, True, True, 1),
    (1, False, False, 0), (1, False, True, 1), (1, True, False, 1), (1, True, True, 1),
])
def test_full_truth_table(in_progress, inside, seq_moved, expected):
    kvm = kvm_with_slot()
    kvm.mmu_invalidate_seq = 5
    if in_progress:
        kvm.mmu_invalidate_in_progress = 1
        kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = GFN + 10, GFN + 20
    gfn = GFN + (15 if inside else 30)
    snapshot = 4 if seq_moved else 5
    assert locked(kvm, mmu_invalidate_retry_gfn, snapshot, gfn) == expected
    # The lock-free variant agrees whenever the range is valid.
    assert mmu_invalidate_retry_gfn_unsafe(kvm, snapshot, gfn) == bool(expected)


def test_in_progress_without_a_range_retries_and_warns():
    kvm = kvm_with_slot()
    locked(kvm, kvm_mmu_invalidate_begin)
    assert locked(kvm, mmu_invalidate_retry_gfn, 0, GFN) == 1
    assert "without a range" in kvm.warnings[-1]
    # The unsafe pre-check treats the INVALID range as matching nothing, silently.
    kvm.fields.warnings = ()
    assert mmu_invalidate_retry_gfn_unsafe(kvm, 0, GFN) is False
    assert not kvm.warnings


def test_retry_without_mmu_lock_is_a_lockdep_report():
    kvm = kvm_with_slot()
    assert mmu_invalidate_retry_gfn(kvm, 0, GFN) == 0
    assert kvm.warnings == ("lockdep: mmu_invalidate_retry_gfn called without mmu_lock held",)


def test_mmu_invalidate_retry_ignores_the_range():
    kvm = kvm_with_slot()
    locked(kvm, kvm_mmu_invalidate_begin)
    locked(kvm, kvm_mmu_invalidate_range_add, GFN, GFN + 1)
    assert locked(kvm, mmu_invalidate_retry, 0) == 1          # any invalidation in progress
    locked(kvm, kvm_mmu_invalidate_end)
    assert locked(kvm, mmu_invalidate_retry, 0) == 1          # the sequence moved
    assert locked(kvm, mmu_invalidate_retry, 1) == 0
    assert mmu_invalidate_retry(kvm, 1) == 0
    assert kvm.warnings == ("lockdep: mmu_invalidate_retry called without mmu_lock held",)


# -- begin / range_add / end ----------------------------------------------------

def test_ranges_union_until_in_progress_drops_to_zero():
    kvm = kvm_with_slot()
    locked(kvm, kvm_mmu_invalidate_begin)
    locked(kvm, kvm_mmu_invalidate_range_add, GFN + 10, GFN + 20)
    locked(kvm, kvm_mmu_invalidate_begin)          # nested: keeps the range
    locked(kvm, kvm_mmu_invalidate_range_add, GFN + 50, GFN + 60)
    assert (kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end) == (GFN + 10, GFN + 60)
    # a false positive: GFN+30 was never invalidated, yet it must retry
    assert locked(kvm, mmu_invalidate_retry_gfn, 0, GFN + 30) == 1
    locked(kvm, kvm_mmu_invalidate_end)
    locked(kvm, kvm_mmu_invalidate_end)
    locked(kvm, kvm_mmu_invalidate_begin)          # first again: range reset
    assert kvm.mmu_invalidate_range_start == INVALID_GPA
    assert kvm.fields._show() == "seq=2 in_progress=1 range=INVALID"


def test_unbalanced_end_is_a_kvm_bug():
    kvm = kvm_with_slot()
    locked(kvm, kvm_mmu_invalidate_end)
    assert any("KVM_BUG_ON" in w for w in kvm.warnings)
    assert any("without a range" in w for w in kvm.warnings)


def test_range_add_without_begin_warns():
    kvm = kvm_with_slot()
    locked(kvm, kvm_mmu_invalidate_range_add, GFN, GFN + 1)
    assert "without an invalidation in progress" in kvm.warnings[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 50)), min_size=1, max_size=6),
       st.integers(0, 1100))
def test_nested_invalidations_keep_their_invariants(ranges, probe):
    kvm = kvm_with_slot()
    for start, n in ranges:
        locked(kvm, kvm_mmu_invalidate_begin)
        locked(kvm, kvm_mmu_invalidate_range_add, GFN + start, GFN + start + n)
    lo = min(GFN + s for s, _ in ranges)
    hi = max(GFN + s + n for s, n in ranges)
    assert (kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end) == (lo, hi)
    assert locked(kvm, mmu_invalidate_retry_gfn, 0, GFN + probe) == int(lo <= GFN + probe < hi)
    for k in range(len(ranges)):
        locked(kvm, kvm_mmu_invalidate_end)
        assert kvm.mmu_invalidate_seq == k + 1
        assert kvm.mmu_invalidate_in_progress == len(ranges) - k - 1
    assert not kvm.warnings


# -- the notifier callbacks -------------------------------------------------------

def test_range_start_outside_every_slot_takes_no_lock_and_begins_nothing():
    kvm = kvm_with_slot()
    mn = notifier(kvm)
    assert run_alone(kvm, kvm_mmu_notifier_invalidate_range_start(mn, 0x1000, 0x2000)) is False
    assert kvm.mmu_invalidate_in_progress == 0 and kvm.mn_active_invalidate_count == 1
    assert run_alone(kvm, kvm_mmu_notifier_invalidate_range_end(mn, 0x1000, 0x2000)) is False
    assert kvm.mmu_invalidate_seq == 0 and kvm.mn_active_invalidate_count == 0


def _faulted(kvm, gfn, max_level=None):
    vcpu = kvm.vcpus[0]
    kvm_mmu_reload(vcpu)
    r, level = run_alone(kvm, kvm_mmu_do_page_fault(vcpu, gfn << PAGE_SHIFT,
                                                    PFERR_GUEST_FINAL_MASK, False, max_level))
    return level


def test_range_start_zaps_the_overlapping_sptes_and_end_moves_the_sequence():
    kvm = kvm_with_slot()
    host_populate(kvm.mm, HVA, 512, "2M")
    host_populate(kvm.mm, HVA + (0x300 << PAGE_SHIFT), 1, "4K")
    assert _faulted(kvm, GFN + 7) == PG_LEVEL_2M
    assert _faulted(kvm, GFN + 0x300) == PG_LEVEL_4K
    mn, hva = notifier(kvm), HVA + (5 << PAGE_SHIFT)
    assert run_alone(kvm, kvm_mmu_notifier_invalidate_range_start(mn, hva, hva + 0x1000))
    # a 4K invalidation zaps the whole 2M leaf that covers it, not the other one
    leaves = kvm.ept.live_leaves(kvm.vcpus[0].root)
    assert [(gfn, level) for gfn, level, _ in leaves] == [(GFN + 0x300, PG_LEVEL_4K)]
    assert (kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end) == (GFN + 5, GFN + 6)
    assert kvm.mmu_invalidate_in_progress == 1 and kvm.mmu_invalidate_seq == 0
    run_alone(kvm, kvm_mmu_notifier_invalidate_range_end(mn, hva, hva + 0x1000))
    assert kvm.mmu_invalidate_in_progress == 0 and kvm.mmu_invalidate_seq == 1
    assert not kvm.mmu_lock.readers and kvm.mmu_lock.writer is None
    assert kvm.mn_active_invalidate_count == 0 and not kvm.warnings


def test_host_mm_operations_reach_kvm_through_the_subscription():
    kvm = kvm_with_slot()
    host_populate(kvm.mm, HVA, 1, "4K")
    _faulted(kvm, GFN)
    assert kvm.ept.live_leaves(kvm.vcpus[0].root)
    run_alone(kvm, migrate_page(kvm.mm, HVA))
    assert kvm.ept.live_leaves(kvm.vcpus[0].root) == [] and kvm.mmu_invalidate_seq == 1


def test_an_unaligned_hva_end_rounds_up_to_the_page():
    kvm = kvm_with_slot()
    mn = notifier(kvm)
    run_alone(kvm, kvm_mmu_notifier_invalidate_range_start(mn, HVA + 0x1800, HVA + 0x2001))
    assert (kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end) == (GFN + 1, GFN + 3)
    slot = kvm.kvm_memslots().slots[0]
    assert hva_to_gfn_memslot(HVA + 0x5000, slot) == GFN + 5


@pytest.mark.parametrize("call,match", [
    (lambda k: mmu_invalidate_retry_gfn(k, -1, GFN), "mmu_seq must be in"),
    (lambda k: mmu_invalidate_retry_gfn(k, 0, 1 << 40), "gfn must be in"),
    (lambda k: mmu_invalidate_retry_gfn_unsafe(k, 0, -5), "gfn must be in"),
    (lambda k: mmu_invalidate_retry(k, -1), "mmu_seq must be in"),
    (lambda k: kvm_mmu_invalidate_range_add(k, GFN, GFN), "end must be in"),
])
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(kvm_with_slot())


def test_kvm_registers_its_notifier_on_the_mm():
    kvm = kvm_create_vm()
    [sub] = kvm.mm.notifier_subscriptions
    assert sub.ops is kvm_mmu_notifier_ops and sub.owner is kvm
