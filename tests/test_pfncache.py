"""Tests of kvmmu.pfncache (virt/kvm/pfncache.c) on the one VM, its invalidation from the MMU
notifier and from the RFC's guest_memfd hook, and the chapter's pfn-cache races."""
import pytest

import kvmmu.pfncache as pfncache
from kvmmu.cpu import ModelHang, run_alone
from kvmmu.errno import EFAULT, EINVAL
from kvmmu.explorer import explore, run_schedule
from kvmmu.guest import HOST, guest_page, guest_read_u64, guest_vm, guest_write_u64
from kvmmu.guest_memfd import kvm_gmem_punch_hole
from kvmmu.host_mm import punch_hole
from kvmmu.kvm_host import KVM_HVA_ERR_BAD, KVM_PFN_ERR_FAULT
from kvmmu.kvm_main import set_memory_region
from kvmmu.memslots import INVALID_GPA, KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES
from kvmmu.pfncache import (gpc_khva_read_u64, gpc_read_u64, kvm_gpc_activate, kvm_gpc_check,
                            kvm_gpc_create, kvm_gpc_deactivate, kvm_gpc_init, kvm_gpc_is_valid_len,
                            kvm_gpc_refresh, mmu_notifier_retry_cache)
from kvmmu.scenarios import paging_tmpl as races


def vm(gpc_gmem="rfc", **config):
    """Slot 0: RAM at gfn 0..0x100; slot 1: guest_memfd memory at gfn 0x100..0x110 (private)."""
    return guest_vm([(0, 0x100, HOST), (0x100, 0x10, HOST + 0x100000, KVM_MEM_GUEST_MEMFD)],
                    gpc_gmem=gpc_gmem, **config).kvm


def cache(kvm, gpa=0x1008, name="gpc"):
    gpc = kvm_gpc_create(kvm, name)
    return gpc, run_alone(kvm, kvm_gpc_activate(gpc, gpa, 8))


def test_lifecycle():
    kvm = vm()
    guest_write_u64(kvm, 0x1008, 0x1234)
    gpc = kvm_gpc_create(kvm, "gpc")
    assert (gpc.active, gpc.valid, gpc.pfn, gpc.gpa) == (False, False, KVM_PFN_ERR_FAULT, INVALID_GPA)
    assert not kvm_gpc_check(gpc, 8)
    assert run_alone(kvm, kvm_gpc_refresh(gpc, 8)) == -EINVAL      # not active, no gpa
    assert run_alone(kvm, kvm_gpc_activate(gpc, 0x1008, 8)) == 0
    assert gpc.active and gpc.valid and kvm.fields.gpc_list == ("gpc",)
    assert gpc.pfn == guest_page(kvm, 1) and gpc.khva == (gpc.pfn << 12) | 0x008
    assert kvm_gpc_check(gpc, 8) and not kvm_gpc_check(gpc, 4096)
    assert run_alone(kvm, gpc_read_u64(gpc)) == (0, 0x1234)
    run_alone(kvm, kvm_gpc_deactivate(gpc))
    assert (gpc.active, gpc.valid, gpc.khva) == (False, False, None)
    assert kvm.fields.gpc_list == ()
    assert gpc.gpa == 0x1008                                       # the gpa is kept
    assert kvm.warnings == ()


def test_bad_arguments():
    kvm = vm()
    gpc = kvm_gpc_create(kvm, "gpc")
    assert run_alone(kvm, kvm_gpc_activate(gpc, INVALID_GPA, 8)) == -EINVAL
    assert run_alone(kvm, kvm_gpc_activate(gpc, 0x1FFC, 8)) == -EINVAL      # crosses a page
    with pytest.raises(ValueError, match="len_"):
        next(kvm_gpc_activate(gpc, 0x1000, 0))
    with pytest.raises(ValueError, match="gpa"):
        next(kvm_gpc_activate(gpc, -1, 8))
    with pytest.raises(TypeError, match="gpc"):
        next(kvm_gpc_refresh("gpc", 8))
    with pytest.raises(ValueError, match="another VM"):
        kvm_gpc_init(gpc, vm())
    with pytest.raises(ValueError, match="already exists"):
        kvm_gpc_create(kvm, "gpc")
    assert kvm.fields.gpc_list == ()


def test_the_length_check_at_the_end_of_the_page():
    # A range that ends exactly at the end of the page fits; one byte more does not.
    assert kvm_gpc_is_valid_len(0x1FF8, KVM_HVA_ERR_BAD, 8)
    assert not kvm_gpc_is_valid_len(0x1FF9, KVM_HVA_ERR_BAD, 8)
    assert not kvm_gpc_is_valid_len(0x1FF8, KVM_HVA_ERR_BAD, 9)
    assert kvm_gpc_is_valid_len(0x1000, KVM_HVA_ERR_BAD, 4096)
    assert not kvm_gpc_is_valid_len(0x1000, KVM_HVA_ERR_BAD, 4097)
    # an hva-based cache (gpa INVALID_GPA) measures from the hva's offset
    assert kvm_gpc_is_valid_len(INVALID_GPA, HOST + 0xFF8, 8)
    assert not kvm_gpc_is_valid_len(INVALID_GPA, HOST + 0xFF9, 8)
    kvm = vm()
    guest_write_u64(kvm, 0x1FF8, 0xFEED)
    gpc, ret = cache(kvm, 0x1FF8)
    assert ret == 0 and kvm_gpc_check(gpc, 8) and not kvm_gpc_check(gpc, 9)
    assert run_alone(kvm, gpc_read_u64(gpc)) == (0, 0xFEED)
    assert run_alone(kvm, kvm_gpc_refresh(gpc, 9)) == -EINVAL
    other = kvm_gpc_create(kvm, "other")
    assert run_alone(kvm, kvm_gpc_activate(other, 0x1FF9, 8)) == -EINVAL
    assert run_alone(kvm, kvm_gpc_activate(other, 0x1FF8, 9)) == -EINVAL
    assert not other.active and kvm.fields.gpc_list == ("gpc",)


def test_invalidation_clears_valid_only_in_range():
    kvm = vm()
    a, _ = cache(kvm, 0x1008, "a")
    b, _ = cache(kvm, 0x2008, "b")
    old = a.pfn
    run_alone(kvm, punch_hole(kvm.mm, HOST + 0x1000, HOST + 0x2000))
    assert not a.valid and b.valid
    assert not kvm_gpc_check(a, 8)
    assert run_alone(kvm, gpc_read_u64(a)) == (0, 0)          # refreshed: a new, zeroed page
    assert a.valid and a.pfn not in (KVM_PFN_ERR_FAULT, old)
    assert kvm.mmu_invalidate_seq == 1 and kvm.mn_active_invalidate_count == 0


def test_memslot_generation_and_deletion():
    kvm = vm()
    gpc, _ = cache(kvm, 0x1008)
    # a flags-only change: the same slot in a new generation
    assert set_memory_region(kvm, 0, 0, 0x100 << 12, HOST, flags=KVM_MEM_LOG_DIRTY_PAGES) == 0
    assert gpc.generation != kvm.kvm_memslots(0).generation and not kvm_gpc_check(gpc, 8)
    assert run_alone(kvm, kvm_gpc_refresh(gpc, 8)) == 0
    assert kvm_gpc_check(gpc, 8) and gpc.generation == kvm.kvm_memslots(0).generation
    assert set_memory_region(kvm, 0, 0, 0, HOST) == 0          # gfn 1 deleted
    assert run_alone(kvm, kvm_gpc_refresh(gpc, 8)) == -EFAULT
    assert (gpc.valid, gpc.pfn, gpc.khva) == (False, KVM_PFN_ERR_FAULT, None)


def test_private_gfns_need_gmem_access():
    kvm = vm(kvm_can_access_gmem=True)
    guest_write_u64(kvm, 0x100010, 0xABC)
    gpc, ret = cache(kvm, 0x100010)
    assert ret == 0 and run_alone(kvm, gpc_read_u64(gpc)) == (0, 0xABC)
    assert gpc.pfn == guest_page(kvm, 0x100)
    file = kvm.primitive("gmem0")
    assert file.folio_at(0).holders == {"filemap": 1}          # the cache holds no reference
    run_alone(kvm, kvm_gmem_punch_hole(kvm, file, 0, 1))
    assert not gpc.valid and file.folio_at(0) is None
    assert kvm.mn_active_invalidate_count == 0 and kvm.warnings == ()
    kvm = vm(kvm_can_access_gmem=False)
    gpc, ret = cache(kvm, 0x100010)
    assert ret == -EFAULT and not gpc.valid and gpc.active


def test_617_caches_map_the_shared_view_of_a_private_gfn():
    kvm = vm(gpc_gmem="6.17")
    guest_write_u64(kvm, 0x100010, 0xABC)                      # into guest_memfd
    gpc, ret = cache(kvm, 0x100010)
    assert ret == 0 and run_alone(kvm, gpc_read_u64(gpc)) == (0, 0)
    assert gpc.pfn != guest_page(kvm, 0x100)
    # a guest_memfd hole does not reach 6.17 caches
    run_alone(kvm, kvm_gmem_punch_hole(kvm, kvm.primitive("gmem0"), 0, 1))
    assert gpc.valid


def test_a_use_through_a_stale_cache_is_reported_as_kasan_would():
    kvm = vm()
    guest_write_u64(kvm, 0x100010, 0xABC)
    gpc, _ = cache(kvm, 0x100010)
    run_alone(kvm, kvm_gmem_punch_hole(kvm, kvm.primitive("gmem0"), 0, 1))
    gpc_khva_read_u64(gpc)                                     # no check: the folio is gone
    assert any(w.startswith("KASAN: use-after-free read") for w in kvm.warnings)
    kvm = vm()
    gpc, _ = cache(kvm, 0x1008)
    run_alone(kvm, punch_hole(kvm.mm, HOST + 0x1000, HOST + 0x2000))
    gpc_khva_read_u64(gpc)
    assert kvm.mm.mem.bad_reads                                # the host page was freed


def test_retry_cache_sees_active_invalidations():
    kvm = vm()
    assert not mmu_notifier_retry_cache(kvm, 0)
    kvm.mn_active_invalidate_count = 1
    assert mmu_notifier_retry_cache(kvm, 0)
    kvm.mn_active_invalidate_count = 0
    kvm.mmu_invalidate_seq = 1
    assert mmu_notifier_retry_cache(kvm, 0) and not mmu_notifier_retry_cache(kvm, 1)


def test_a_plain_call_cannot_wait_for_a_lock_another_cpu_holds():
    kvm = vm()
    gpc, _ = cache(kvm)
    run_alone(kvm, gpc.lock.write_lock(), cpu="B")
    with pytest.raises(ModelHang, match="read_lock"):
        run_alone(kvm, gpc_read_u64(gpc))


# ---------------------------------------------------------------------------
# R5.2: refresh against an invalidation.
# ---------------------------------------------------------------------------
def test_r52_refresh_retries_until_the_invalidation_is_over():
    res = explore(races.gpc_refresh_scenario())
    assert not res.violated and res.exhaustive and res.method == "snapshot"


def test_r52_without_the_retry_check_caches_a_freed_page(monkeypatch):
    monkeypatch.setattr(pfncache, "mmu_notifier_retry_cache", lambda kvm, seq: False)
    res = explore(races.gpc_refresh_scenario())
    assert res.violated and res.invariant == "a valid cache maps the page the VMM maps"


# ---------------------------------------------------------------------------
# The seed's race: a hole punched between the read of a level and its A/D write.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("private", [True, False])
def test_seed_retry_holds_and_no_check_writes_freed_memory(private):
    good = explore(races.gpc_race_scenario("rfc-fixed", private_tables=private))
    assert not good.violated and good.exhaustive and good.method == "snapshot"
    bad = explore(races.gpc_race_scenario("rfc-nocheck", private_tables=private))
    assert bad.violated and bad.invariant == races.RACE_INVARIANTS[1]
    trace = run_schedule(races.gpc_race_scenario("rfc-nocheck", private_tables=private),
                         bad.schedule)
    assert "cmpxchg" in [s for s in trace.steps if s.actor == "A"][-1].label


def test_a_walk_after_the_hole_reads_a_zeroed_table():
    # The VMM punches first, then KVM walks: the leaf table is a fresh, zeroed
    # page, so the walk faults not present (what a restarted walk sees too).
    sc = races.gpc_race_scenario("rfc-fixed")
    kvm = sc.world()
    run_alone(kvm, sc.actors[1].fn(kvm), cpu="B")
    result = run_alone(kvm, sc.actors[0].fn(kvm))
    assert not result.ok and result[1] == 0x2                  # a not-present write fault
    assert guest_read_u64(kvm, 0x103048) == 0 and kvm.fields.gpc_list == ()


def test_gmem_hole_without_the_active_count_lets_a_refresh_slip_through():
    # Without raising mn_active_invalidate_count, a refresh can run between the
    # cache scan and the free, pass mmu_notifier_retry_cache, and cache a page
    # that is about to be freed.
    res = explore(races.gpc_race_scenario("rfc-fixed", gpc_gmem="rfc-uncounted"))
    assert res.violated and res.invariant == races.RACE_INVARIANTS[1]
