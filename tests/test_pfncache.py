"""Tests of kvmmu.pfncache (virt/kvm/pfncache.c) and the seed's pfn-cache walker race."""
import pytest

import kvmmu.pfncache as pfncache
from kvmmu.errno import EFAULT, EINVAL
from kvmmu.explorer import Actor, Invariant, Scenario, explore, run_schedule
from kvmmu.guest_memory import (INVALID_GPA, KVM_PFN_ERR_FAULT, GuestMemory, as_actor, run_ops)
from kvmmu.memslots import KVM_MEM_GUEST_MEMFD, KvmMemorySlot
from kvmmu.pfncache import (GfnToPfnCache, gpc_read_u64, kvm_gpc_activate, kvm_gpc_activate_ops,
                            kvm_gpc_check, kvm_gpc_deactivate, kvm_gpc_init, kvm_gpc_refresh,
                            mmu_notifier_retry_cache)
from kvmmu.walker_races import RACE_HOST, RACE_INVARIANTS_AD, WalkRaceWorld, gpc_race_scenario

HOST = 0x7F00_0000_0000


def vm(**kw):
    return GuestMemory([KvmMemorySlot(0, 0, 0x100, HOST),
                        KvmMemorySlot(1, 0x100, 0x10, HOST + 0x100000, flags=KVM_MEM_GUEST_MEMFD)],
                       **kw)


def cache(mem, gpa=0x1008):
    gpc = GfnToPfnCache("gpc")
    kvm_gpc_init(gpc, mem)
    return gpc, kvm_gpc_activate(gpc, gpa, 8)


def test_lifecycle():
    mem = vm()
    mem.guest_write_u64(0x1008, 0x1234)
    gpc = GfnToPfnCache("gpc")
    kvm_gpc_init(gpc, mem)
    assert (gpc.active, gpc.valid, gpc.pfn, gpc.gpa) == (False, False, KVM_PFN_ERR_FAULT, INVALID_GPA)
    assert not kvm_gpc_check(gpc, 8)
    assert kvm_gpc_refresh(gpc, 8) == -EINVAL                  # not active, no gpa
    assert kvm_gpc_activate(gpc, 0x1008, 8) == 0
    assert gpc.active and gpc.valid and mem.gpc_list == [gpc]
    assert gpc.khva == (gpc.pfn << 12) | 0x008
    assert kvm_gpc_check(gpc, 8) and not kvm_gpc_check(gpc, 4096)
    assert gpc_read_u64(gpc) == (0, 0x1234)
    # the cache holds no page reference: only the VMM's mapping does
    assert mem.refcount[gpc.pfn] == 1
    kvm_gpc_deactivate(gpc)
    assert (gpc.active, gpc.valid, gpc.khva) == (False, False, None) and mem.gpc_list == []
    assert gpc.gpa == 0x1008                                   # the gpa is kept


def test_bad_arguments():
    mem = vm()
    gpc = GfnToPfnCache("gpc")
    with pytest.raises(ValueError, match="kvm_gpc_init"):
        kvm_gpc_activate(gpc, 0x1000, 8)
    kvm_gpc_init(gpc, mem)
    assert kvm_gpc_activate(gpc, INVALID_GPA, 8) == -EINVAL
    assert kvm_gpc_activate(gpc, 0x1FFC, 8) == -EINVAL         # crosses a page
    with pytest.raises(ValueError, match="length"):
        kvm_gpc_activate(gpc, 0x1000, 0)
    with pytest.raises(TypeError):
        kvm_gpc_init(gpc, "kvm")
    assert mem.gpc_list == []


def test_invalidation_clears_valid_only_in_range():
    mem = vm()
    a, _ = cache(mem, 0x1008)
    b, _ = cache(mem, 0x2008)
    mem.host_punch_hole(HOST + 0x1000, HOST + 0x2000)
    assert not a.valid and b.valid
    assert not kvm_gpc_check(a, 8)
    assert gpc_read_u64(a) == (0, 0)                           # refreshed: a new, zeroed page
    assert a.valid and a.pfn != KVM_PFN_ERR_FAULT
    assert mem.mmu_invalidate_seq == 1 and mem.mn_active_invalidate_count == 0


def test_memslot_generation_and_deletion():
    mem = vm()
    gpc, _ = cache(mem, 0x1008)
    mem.install_memslots([KvmMemorySlot(0, 0, 0x100, HOST)])  # same slot, new generation
    assert mem.generation == 2 and not kvm_gpc_check(gpc, 8)
    assert kvm_gpc_refresh(gpc, 8) == 0 and kvm_gpc_check(gpc, 8) and gpc.generation == 2
    mem.install_memslots([KvmMemorySlot(0, 0x10, 0xF0, HOST + 0x10000)])   # gfn 1 deleted
    assert kvm_gpc_refresh(gpc, 8) == -EFAULT
    assert (gpc.valid, gpc.pfn, gpc.khva) == (False, KVM_PFN_ERR_FAULT, None)


def test_private_gfns_need_gmem_access():
    mem = vm(kvm_can_access_gmem=True)
    mem.set_memory_attributes(0x100, 0x101, True)
    mem.guest_write_u64(0x100010, 0xABC)
    gpc, ret = cache(mem, 0x100010)
    assert ret == 0 and gpc_read_u64(gpc) == (0, 0xABC)
    assert gpc.pfn == mem.gmem[(1, 0x100)]
    mem.kvm_gmem_punch_hole(1, 0x100, 0x101)
    assert not gpc.valid and (1, 0x100) not in mem.gmem
    mem = vm(kvm_can_access_gmem=False)
    mem.set_memory_attributes(0x100, 0x101, True)
    gpc, ret = cache(mem, 0x100010)
    assert ret == -EFAULT and not gpc.valid and gpc.active


def test_retry_cache_sees_active_invalidations():
    mem = vm()
    assert not mmu_notifier_retry_cache(mem, 0)
    mem.mn_active_invalidate_count = 1
    assert mmu_notifier_retry_cache(mem, 0)
    mem.mn_active_invalidate_count = 0
    mem.mmu_invalidate_seq = 1
    assert mmu_notifier_retry_cache(mem, 0) and not mmu_notifier_retry_cache(mem, 1)


# ---------------------------------------------------------------------------
# R5.2: refresh against an invalidation (kernel-facts §5(d)).
# ---------------------------------------------------------------------------
def _coherent(w):
    # a valid cache maps the page the VMM's mapping holds now
    gpc = w.ptep_caches[0]
    return not gpc.valid or w.host_pt.get(gpc.uhva >> 12) == gpc.pfn


def r52_scenario():
    gfn = 0x103
    hva = RACE_HOST + (gfn << 12)

    def refresh(w):
        gpc = w.ptep_caches[0]
        ret = yield from as_actor(kvm_gpc_activate_ops(gpc, (gfn << 12) + 0x48, 8))
        return ret

    def punch(w):
        yield from as_actor(w.host_punch_hole_ops(hva, hva + 4096))

    def world():
        w = WalkRaceWorld.make()
        kvm_gpc_init(w.ptep_caches[0], w)
        return w
    return Scenario("gpc refresh vs invalidation", world,
                    [Actor("A", "kvm_gpc_activate + refresh", refresh),
                     Actor("B", "VMM punch hole", punch)],
                    invariants=[Invariant("a valid cache maps the page the VMM maps", _coherent),
                                Invariant("no freed page touched", lambda w: not w.uaf)])


def test_r52_refresh_retries_until_the_invalidation_is_over():
    res = explore(r52_scenario())
    assert not res.violated and res.exhaustive


def test_r52_without_the_retry_check_caches_a_freed_page(monkeypatch):
    monkeypatch.setattr(pfncache, "mmu_notifier_retry_cache", lambda kvm, seq: False)
    res = explore(r52_scenario())
    assert res.violated and res.invariant == "a valid cache maps the page the VMM maps"


# ---------------------------------------------------------------------------
# The seed's race: a hole punched between the read of a level and its A/D write.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("private", [True, False])
def test_seed_retry_holds_and_no_check_writes_freed_memory(private):
    good = explore(gpc_race_scenario("rfc-fixed", private_tables=private))
    assert not good.violated and good.exhaustive
    bad = explore(gpc_race_scenario("rfc-nocheck", private_tables=private))
    assert bad.violated and bad.invariant == RACE_INVARIANTS_AD[1]
    trace = run_schedule(gpc_race_scenario("rfc-nocheck", private_tables=private), bad.schedule)
    assert any("cmpxchg" in s.label for s in trace.steps if s.actor == "A")


def test_gmem_hole_without_the_active_count_lets_a_refresh_slip_through():
    # Without raising mn_active_invalidate_count, a refresh can run between the
    # cache scan and the free, pass mmu_notifier_retry_cache, and cache a page
    # that is about to be freed.
    from kvmmu.walker_races import kvm_walk_actor

    def punch(w):
        yield from as_actor(w.kvm_gmem_punch_hole_ops(2, 0x103, 0x104, hold_count=False))
    sc = gpc_race_scenario("rfc-fixed", private_tables=True)
    sc = Scenario("no count", sc.world,
                  [Actor("A", "KVM walk", kvm_walk_actor("rfc-fixed")), Actor("B", "punch", punch)],
                  invariants=sc.invariants, final_check=sc.final_check)
    res = explore(sc)
    assert res.violated and res.invariant == RACE_INVARIANTS_AD[1]


def test_run_ops_locks_refuse_to_block():
    mem = vm()
    gpc, _ = cache(mem)
    gpc.lock.write_lock()
    with pytest.raises(RuntimeError, match="would block"):
        run_ops(pfncache.gpc_read_u64_ops(gpc))
