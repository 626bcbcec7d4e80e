"""The MMU notifier invalidation protocol (kernel-facts §2.5, Appendix A item 7)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmmu import notifier as N
from kvmmu.host_mm import HostMm, host_populate, migrate_page, run_direct
from kvmmu.levels import PAGE_SHIFT, PG_LEVEL_2M, PG_LEVEL_4K
from kvmmu.memslots import KvmMemorySlot, KvmMemslots

GFN = 0x100000
HVA = 0x7F0000000000


def kvm_with_slot(npages=1024):
    return N.Kvm(KvmMemslots([KvmMemorySlot(0, GFN, npages, HVA)]))


def locked(kvm, fn, *args):
    """Call fn(kvm, *args) with mmu_lock held for write, as the kernel requires."""
    run_direct(kvm.mmu_lock.write_lock())
    try:
        return fn(kvm, *args)
    finally:
        run_direct(kvm.mmu_lock.write_unlock())


# -- Appendix A item 7: the truth table of mmu_invalidate_retry_gfn -------------

def test_retry_when_the_sequence_moved():
    kvm = kvm_with_slot()
    locked(kvm, N.kvm_mmu_invalidate_begin)
    locked(kvm, N.kvm_mmu_invalidate_range_add, GFN, GFN + 1)
    locked(kvm, N.kvm_mmu_invalidate_end)
    assert locked(kvm, N.mmu_invalidate_retry_gfn, 0, GFN + 99) == 1
    assert locked(kvm, N.mmu_invalidate_retry_gfn, 1, GFN + 99) == 0


def test_retry_when_in_progress_and_inside_the_range():
    kvm = kvm_with_slot()
    locked(kvm, N.kvm_mmu_invalidate_begin)
    locked(kvm, N.kvm_mmu_invalidate_range_add, GFN, GFN + 4)
    assert locked(kvm, N.mmu_invalidate_retry_gfn, 0, GFN + 3) == 1
    # outside the range, sequence unchanged: may proceed
    assert locked(kvm, N.mmu_invalidate_retry_gfn, 0, GFN + 4) == 0
    assert locked(kvm, N.mmu_invalidate_retry_gfn, 0, GFN - 1) == 0
    assert not kvm.warnings


def test_begin_does_not_move_the_sequence_end_moves_it_by_one():
    kvm = kvm_with_slot()
    locked(kvm, N.kvm_mmu_invalidate_begin)
    assert kvm.mmu_invalidate_seq == 0 and kvm.mmu_invalidate_in_progress == 1
    locked(kvm, N.kvm_mmu_invalidate_range_add, GFN, GFN + 1)
    locked(kvm, N.kvm_mmu_invalidate_end)
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
    assert locked(kvm, N.mmu_invalidate_retry_gfn, snapshot, gfn) == expected
    # The lock-free variant agrees whenever the range is valid.
    assert N.mmu_invalidate_retry_gfn_unsafe(kvm, snapshot, gfn) == bool(expected)


def test_in_progress_without_a_range_retries_and_warns():
    kvm = kvm_with_slot()
    locked(kvm, N.kvm_mmu_invalidate_begin)
    assert locked(kvm, N.mmu_invalidate_retry_gfn, 0, GFN) == 1
    assert "without a range" in kvm.warnings[-1]
    # The unsafe pre-check treats the INVALID range as matching nothing, silently.
    kvm.warnings.clear()
    assert N.mmu_invalidate_retry_gfn_unsafe(kvm, 0, GFN) is False
    assert not kvm.warnings


def test_retry_without_mmu_lock_is_a_lockdep_report():
    kvm = kvm_with_slot()
    assert N.mmu_invalidate_retry_gfn(kvm, 0, GFN) == 0
    assert kvm.warnings == ["lockdep: mmu_invalidate_retry_gfn called without mmu_lock held"]


def test_mmu_invalidate_retry_ignores_the_range():
    kvm = kvm_with_slot()
    locked(kvm, N.kvm_mmu_invalidate_begin)
    locked(kvm, N.kvm_mmu_invalidate_range_add, GFN, GFN + 1)
    assert locked(kvm, N.mmu_invalidate_retry, 0) == 1
    locked(kvm, N.kvm_mmu_invalidate_end)
    assert locked(kvm, N.mmu_invalidate_retry, 0) == 1
    assert locked(kvm, N.mmu_invalidate_retry, 1) == 0


# -- begin / range_add / end ----------------------------------------------------

def test_ranges_union_until_in_progress_drops_to_zero():
    kvm = kvm_with_slot()
    locked(kvm, N.kvm_mmu_invalidate_begin)
    locked(kvm, N.kvm_mmu_invalidate_range_add, GFN + 10, GFN + 20)
    locked(kvm, N.kvm_mmu_invalidate_begin)          # nested: keeps the range
    locked(kvm, N.kvm_mmu_invalidate_range_add, GFN + 50, GFN + 60)
    assert (kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end) == (GFN + 10, GFN + 60)
    # a false positive: GFN+30 was never invalidated, yet it must retry
    assert locked(kvm, N.mmu_invalidate_retry_gfn, 0, GFN + 30) == 1
    locked(kvm, N.kvm_mmu_invalidate_end)
    locked(kvm, N.kvm_mmu_invalidate_end)
    locked(kvm, N.kvm_mmu_invalidate_begin)          # first again: range reset
    assert kvm.mmu_invalidate_range_start == N.INVALID_GPA
    assert kvm.invalidate_summary() == "seq=2 in_progress=1 range=INVALID"


def test_unbalanced_end_is_a_kvm_bug():
    kvm = kvm_with_slot()
    locked(kvm, N.kvm_mmu_invalidate_end)
    assert any("KVM_BUG_ON" in w for w in kvm.warnings)
    assert any("without a range" in w for w in kvm.warnings)


def test_range_add_without_begin_warns():
    kvm = kvm_with_slot()
    locked(kvm, N.kvm_mmu_invalidate_range_add, GFN, GFN + 1)
    assert "without an invalidation in progress" in kvm.warnings[0]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 50)), min_size=1, max_size=6),
       st.integers(0, 1100))
def test_nested_invalidations_keep_their_invariants(ranges, probe):
    kvm = kvm_with_slot()
    for start, n in ranges:
        locked(kvm, N.kvm_mmu_invalidate_begin)
        locked(kvm, N.kvm_mmu_invalidate_range_add, GFN + start, GFN + start + n)
    lo = min(GFN + s for s, _ in ranges)
    hi = max(GFN + s + n for s, n in ranges)
    assert (kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end) == (lo, hi)
    assert locked(kvm, N.mmu_invalidate_retry_gfn, 0, GFN + probe) == int(lo <= GFN + probe < hi)
    for k in range(len(ranges)):
        locked(kvm, N.kvm_mmu_invalidate_end)
        assert kvm.mmu_invalidate_seq == k + 1
        assert kvm.mmu_invalidate_in_progress == len(ranges) - k - 1
    assert not kvm.warnings


# -- the notifier glue ---------------------------------------------------------------

def test_range_start_outside_every_slot_takes_no_lock_and_begins_nothing():
    kvm = kvm_with_slot()
    assert N.kvm_mmu_notifier_invalidate_range_start(kvm, 0x1000, 0x2000) is False
    assert kvm.mmu_invalidate_in_progress == 0 and kvm.mn_active_invalidate_count == 1
    assert N.kvm_mmu_notifier_invalidate_range_end(kvm, 0x1000, 0x2000) is False
    assert kvm.mmu_invalidate_seq == 0 and kvm.mn_active_invalidate_count == 0


def test_range_start_zaps_overlapping_mappings_and_end_moves_the_sequence():
    kvm = kvm_with_slot()
    kvm.mappings.install(GFN, 0x40000, PG_LEVEL_2M)
    kvm.mappings.install(GFN + 0x300, 0x50300, PG_LEVEL_4K)
    hva = HVA + (5 << PAGE_SHIFT)
    assert N.kvm_mmu_notifier_invalidate_range_start(kvm, hva, hva + 0x1000) is True
    # a 4K invalidation zaps the whole 2M mapping that covers it, not the other one
    assert kvm.mappings.items() == [(GFN + 0x300, 0x50300, PG_LEVEL_4K)]
    assert (kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end) == (GFN + 5, GFN + 6)
    assert kvm.mmu_invalidate_in_progress == 1 and kvm.mmu_invalidate_seq == 0
    N.kvm_mmu_notifier_invalidate_range_end(kvm, hva, hva + 0x1000)
    assert kvm.mmu_invalidate_in_progress == 0 and kvm.mmu_invalidate_seq == 1
    assert kvm.mmu_lock.readers == 0 and not kvm.mmu_lock.writer


def test_host_mm_operations_reach_kvm_through_the_subscription():
    kvm = kvm_with_slot()
    host_populate(kvm.mm, HVA, 1, "4K")
    kvm.mappings.install(GFN, 0x40000, PG_LEVEL_4K)
    migrate_page(kvm, HVA)
    assert kvm.mappings.items() == [] and kvm.mmu_invalidate_seq == 1


def test_unaligned_hva_end_rounds_up_to_the_page():
    kvm = kvm_with_slot()
    slot = kvm.memslots.slots[0]
    assert N._gfn_ranges(kvm, HVA + 0x1800, HVA + 0x2001) == ((0, GFN + 1, GFN + 3),)
    assert N.hva_to_gfn_memslot(HVA + 0x5000, slot) == GFN + 5


# -- KVM's mappings (the abstraction of the SPTEs) ---------------------------------

def test_mappings_install_replaces_smaller_ones_and_lookup_finds_cover():
    m = N.KvmMappings()
    m.install(GFN + 1, 0x40001, PG_LEVEL_4K)
    m.install(GFN + 2, 0x40002, PG_LEVEL_4K)
    m.install(GFN + 7, 0x40000, PG_LEVEL_2M)
    assert m.items() == [(GFN, 0x40000, PG_LEVEL_2M)]
    assert m.lookup(GFN + 511) == (GFN, 0x40000, PG_LEVEL_2M) and m.lookup(GFN + 512) is None
    assert m.zap(GFN + 600, GFN + 700) is False and m.zap(GFN + 3, GFN + 4) is True
    assert "KvmMappings()" == repr(m)
    with pytest.raises(ValueError, match="not aligned for a 2M"):
        m.install(GFN, 0x40001, PG_LEVEL_2M)
    with pytest.raises(ValueError, match="level must be in"):
        m.install(GFN, 0x40000, 4)


@pytest.mark.parametrize("call,match", [
    (lambda k: N.mmu_invalidate_retry_gfn(k, -1, GFN), "mmu_seq must be in"),
    (lambda k: N.mmu_invalidate_retry_gfn(k, 0, 1 << 40), "gfn must be in"),
    (lambda k: N.mmu_invalidate_retry_gfn_unsafe(k, 0, -5), "gfn must be in"),
    (lambda k: N.kvm_mmu_invalidate_range_add(k, GFN, GFN), "end must be in"),
])
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(kvm_with_slot())


def test_kvm_registers_its_notifier_on_the_mm():
    mm = HostMm()
    kvm = N.Kvm(KvmMemslots([]), mm)
    assert mm.notifier_subscriptions == [N.kvm_mmu_notifier_ops] and kvm.mm is mm
