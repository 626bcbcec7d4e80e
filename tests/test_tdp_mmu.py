"""The TDP MMU on the one VM (kvmmu.tdp_mmu, kvmmu.tdp_iter, kvmmu.tlb): tables, iterator, write primitives, faults, zaps, TLBs."""
import pytest
from hypothesis import given, settings, strategies as st

from kvmmu import tdp_iter as I
from kvmmu import tdp_mmu as T
from kvmmu import tlb as TLB
from kvmmu.cpu import ModelHang, run_alone
from kvmmu.errno import EBUSY, RET_PF_FIXED, RET_PF_RETRY, RET_PF_SPURIOUS
from kvmmu.explorer import Actor, Invariant, Scenario, explore, run_random
from kvmmu.host_mm import host_populate, host_translation
from kvmmu.kvm_main import kvm_create_vm, kvm_vm_ioctl_create_vcpu, set_memory_region
from kvmmu.levels import PAGE_SHIFT, PG_LEVEL_2M, PG_LEVEL_4K, SPTE_INDEX
from kvmmu.memslots import KVM_MEM_READONLY
from kvmmu.mmu import kvm_mmu_do_page_fault, kvm_mmu_page_fault, kvm_mmu_reload, kvm_zap_gfn_range
from kvmmu.pferr import PFERR_GUEST_FINAL_MASK
from kvmmu.scenarios import tdp_mmu as R
from kvmmu.spte import (ACC_ALL, EPT_AD, FROZEN_SPTE, SHADOW_NONPRESENT_VALUE, KernelWarn,
                        make_nonleaf_spte, make_small_spte, make_spte, spte_to_pfn)

G, X, Y = R.RACE_GFN, R.OLD_PFN, R.NEW_PFN
HVA = R.HVA
BASE = I.TDP_PT_PFN_BASE


def vm(pages: int = 4, **config):
    """A VM with two vCPUs on one root and ``pages`` 4K host pages at gfn G (the chapter's zoom)."""
    kvm = kvm_create_vm(zoom=R.ZOOM, **config)
    for _ in range(2):
        kvm_mmu_reload(kvm_vm_ioctl_create_vcpu(kvm))
    set_memory_region(kvm, 1, G << PAGE_SHIFT, pages << PAGE_SHIFT, HVA)
    host_populate(kvm.mm, HVA, pages, "4K")
    return kvm


def root(kvm):
    return kvm.vcpu_root(0)


def host_pfn(kvm, gfn):
    return host_translation(kvm.mm, HVA + ((gfn - G) << PAGE_SHIFT))[0]


def fault(kvm, gfn, vcpu=1):
    return run_alone(kvm, kvm_mmu_page_fault(kvm.vcpus[vcpu], gfn << PAGE_SHIFT,
                                             PFERR_GUEST_FINAL_MASK))


def access(kvm, vcpu, gfn):
    return run_alone(kvm, kvm.tlbs.access(vcpu, gfn))


def zap(kvm, gfn, level=PG_LEVEL_4K, freeze=True):
    return run_alone(kvm, R.zap_gfn_shared(kvm, root(kvm), gfn, level, freeze))


def sptep(kvm, gfn, level=PG_LEVEL_4K):
    return kvm.ept.sptep_of(root(kvm), gfn, level)


def ops_of(kvm, gen, cpu="A"):
    """Run CPU code alone and return (result, [op kinds it performed])."""
    kinds = []
    op = next(gen)
    try:
        while True:
            kinds.append(op.kind)
            op = gen.send(op.run(op.prim, op.args, cpu, kvm))
    except StopIteration as stop:
        return stop.value, kinds


def leaf(pfn, level=PG_LEVEL_4K):
    return make_spte(level, ACC_ALL, pfn, cfg=EPT_AD)[0]


def counts(kvm):
    reach = {level: 0 for level in kvm.ept.page_stats}
    for _, level, _ in kvm.ept.live_leaves(root(kvm)):
        reach[level] += 1
    return reach


# ---------------------------------------------------------------------------
# The world and its plain helpers
# ---------------------------------------------------------------------------
def test_a_new_vm_has_one_empty_root():
    kvm = vm()
    assert list(kvm.ept.sps) == [BASE] and kvm.ept.roots == (BASE,) == (root(kvm),)
    sp = kvm.ept.sps[BASE]
    assert sp.level == 4 and sp.ptep is None and not sp.invalid
    assert kvm.ept.tables[BASE] == {}
    assert kvm.ept.get(I.Sptep(BASE, 7)) == SHADOW_NONPRESENT_VALUE
    assert kvm.translate(BASE, G) is None and access(kvm, 1, G) is None
    assert kvm.ept.page_stats == {1: 0, 2: 0, 3: 0}


def test_a_fault_builds_three_tables_and_a_leaf_for_the_host_page():
    kvm = vm()
    assert fault(kvm, G) == RET_PF_FIXED
    pfn = host_pfn(kvm, G)
    assert pfn == X
    # root (4) -> L3 -> L2 -> L1: three new tables at the next pfns.
    assert sorted(kvm.ept.sps) == [BASE + i for i in range(4)]
    path = kvm.ept.walk(BASE, G)
    assert [lvl for _, _, lvl in path] == [4, 3, 2, 1]
    assert path[0][1] == make_nonleaf_spte((BASE + 1) << PAGE_SHIFT, cfg=EPT_AD)
    assert path[-1][0] == I.Sptep(BASE + 3, SPTE_INDEX(G << PAGE_SHIFT, 1))
    assert path[-1][1] == leaf(X)
    assert kvm.translate(BASE, G) == TLB.TlbEntry(X, leaf(X), BASE)
    assert kvm.ept.page_stats[1] == 1 and counts(kvm) == kvm.ept.page_stats
    assert kvm.ept.installed == ((G, 1, X),) and kvm.warnings == ()
    # The same fault again finds the leaf: spurious (6.13+ early check).
    assert fault(kvm, G) == RET_PF_SPURIOUS


def test_a_huge_translation_adds_the_offset():
    kvm = kvm_create_vm(zoom=R.ZOOM)
    kvm_mmu_reload(kvm_vm_ioctl_create_vcpu(kvm))
    set_memory_region(kvm, 1, 0x200000, 2 << 20, 0x7F0000200000)
    [head] = host_populate(kvm.mm, 0x7F0000200000, 512, "2M")
    assert fault(kvm, 0x203, vcpu=0) == RET_PF_FIXED
    assert kvm.ept.live_leaves(root(kvm)) == [(0x200, PG_LEVEL_2M, head)]
    assert kvm.translate(root(kvm), 0x203).pfn == head + 3
    assert access(kvm, 0, 0x203).pfn == head + 3
    assert kvm.tlbs.tlb[0] == {0x203: kvm.translate(root(kvm), 0x203)}


def test_spte_names():
    assert I.spte_name(SHADOW_NONPRESENT_VALUE) == "non-present"
    assert I.spte_name(FROZEN_SPTE) == "FROZEN_SPTE"
    assert I.spte_name(leaf(0x1234)) == "leaf 0x1234"
    assert I.spte_name(make_nonleaf_spte(0x100003 << 12, cfg=EPT_AD), 2) == "table 0x100003"
    assert I.spte_name(0x6) == "MMIO"
    assert I.spte_name(0x8000000000000001) == "0x8000000000000001"


def test_bad_arguments_name_the_argument():
    kvm = vm()
    with pytest.raises(ValueError, match="level"):
        next(R.zap_gfn_shared(kvm, root(kvm), G, level=5))
    with pytest.raises(TypeError, match="freeze"):
        next(R.zap_gfn_shared(kvm, root(kvm), G, freeze=1))
    with pytest.raises(ValueError, match="vcpu_id"):
        next(R.touch(kvm, 2, G))
    with pytest.raises(ValueError, match="actors"):
        R.zap_vs_fault(actors=5)
    with pytest.raises(TypeError, match="same_pfn"):
        R.race_world(same_pfn=1)
    with pytest.raises(TypeError, match="fn"):
        R.actor("A", "nothing", None)
    with pytest.raises(ValueError, match="gfn"):
        R.translations(kvm, -1)
    with pytest.raises(ValueError, match="already shown"):
        kvm.watch("mmu_lock", lambda k: "")
    with pytest.raises(TypeError, match="show"):
        kvm.watch("x", "not callable")


def test_a_watch_is_shown_in_traces_but_is_not_state():
    kvm = vm()
    key = kvm._key()
    kvm.watch("seq twice", lambda k: str(2 * k.mmu_invalidate_seq))
    assert kvm.snapshot()["seq twice"] == "0" and kvm._key() == key
    kvm.mmu_invalidate_seq = 4
    assert kvm.snapshot()["seq twice"] == "8"


# ---------------------------------------------------------------------------
# The fault path, alone
# ---------------------------------------------------------------------------
def test_a_fault_on_an_empty_ept_links_three_tables_and_a_leaf():
    kvm = vm()
    gen = kvm_mmu_page_fault(kvm.vcpus[1], G << PAGE_SHIFT, PFERR_GUEST_FINAL_MASK)
    ret, kinds = ops_of(kvm, gen)
    assert ret == RET_PF_FIXED
    # The memslot lookup, kvm_mmu_faultin_pfn (one step here), read_lock, the
    # staleness check; the root read; then per level L4, L3, L2: allocate a
    # table, cmpxchg it in, re-read (try_step_down), read the child; L1:
    # cmpxchg the leaf; read_unlock.
    assert kinds == (["step", "step", "read_lock", "step", "read"]
                     + ["alloc", "try_cmpxchg", "read", "read"] * 3
                     + ["try_cmpxchg", "read_unlock"])
    assert kvm.ept.walks == ()


def test_a_fault_that_finds_another_pfn_is_the_kernels_warn():
    # The chapter's world: the host replaced the page behind a live SPTE
    # without the notifier, so a fault of it finds a leaf with the old pfn.
    kvm = R.race_world()
    with pytest.raises(KernelWarn, match="spurious fault"):
        fault(kvm, G)


def test_a_fault_retries_on_a_frozen_spte():
    kvm = R.race_world(same_pfn=True)
    kvm.ept.put(sptep(kvm, G), FROZEN_SPTE)
    assert fault(kvm, G) == RET_PF_RETRY
    assert kvm.ept.get(sptep(kvm, G)) == FROZEN_SPTE
    # A frozen upper level: the walk gives up there.
    kvm = R.race_world(same_pfn=True)
    kvm.ept.put(sptep(kvm, G, 2), FROZEN_SPTE)
    ret, kinds = ops_of(kvm, kvm_mmu_page_fault(kvm.vcpus[1], G << PAGE_SHIFT,
                                                PFERR_GUEST_FINAL_MASK))
    assert ret == RET_PF_RETRY and "try_cmpxchg" not in kinds


def test_a_4k_fault_under_a_huge_page_splits_it():
    kvm = kvm_create_vm(zoom=R.ZOOM)
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    kvm_mmu_reload(vcpu)
    set_memory_region(kvm, 1, 0x200000, 2 << 20, 0x7F0000200000)
    [head] = host_populate(kvm.mm, 0x7F0000200000, 512, "2M")
    fault(kvm, 0x200, vcpu=0)
    huge = kvm.ept.get(sptep(kvm, 0x200, 2))
    # Dirty logging would ask for 4K: the walk splits the huge page on its way.
    r, level = run_alone(kvm, kvm_mmu_do_page_fault(vcpu, 0x205 << PAGE_SHIFT,
                                                    PFERR_GUEST_FINAL_MASK, False,
                                                    max_level=PG_LEVEL_4K))
    assert (r, level) == (RET_PF_SPURIOUS, PG_LEVEL_4K)
    assert kvm.ept.get(sptep(kvm, 0x205)) == make_small_spte(huge, 1, 5, cfg=EPT_AD)
    assert kvm.ept.page_stats == {1: 512, 2: 0, 3: 0} == counts(kvm)
    assert kvm.ept.processed == ((0x200, 2, head),)
    assert R.bookkeeping_ok(kvm) is True


def test_a_read_only_slot_is_mapped_read_only():
    kvm = kvm_create_vm(zoom=R.ZOOM)
    kvm_mmu_reload(kvm_vm_ioctl_create_vcpu(kvm))
    set_memory_region(kvm, 1, G << PAGE_SHIFT, 1 << PAGE_SHIFT, HVA, flags=KVM_MEM_READONLY)
    host_populate(kvm.mm, HVA, 1, "4K")
    assert fault(kvm, G, vcpu=0) == RET_PF_FIXED
    assert not kvm.translate(root(kvm), G).spte & 2


# ---------------------------------------------------------------------------
# The write primitives
# ---------------------------------------------------------------------------
def _descend(kvm, gfn, level):
    it = run_alone(kvm, I.tdp_iter_start(kvm, root(kvm), 4, level, gfn))
    while it.level > level:
        assert run_alone(kvm, I.try_step_down(kvm, it))
    return it


def test_set_spte_atomic_success_keeps_the_snapshot_failure_refreshes_it():
    kvm = R.race_world()
    it = _descend(kvm, G, 1)
    assert it.old_spte == leaf(X)
    kvm.ept.put(it.sptep, SHADOW_NONPRESENT_VALUE)       # someone else zapped it
    ret = run_alone(kvm, T.__tdp_mmu_set_spte_atomic(kvm, it, FROZEN_SPTE))
    assert ret == -EBUSY and it.old_spte == SHADOW_NONPRESENT_VALUE
    ret = run_alone(kvm, T.__tdp_mmu_set_spte_atomic(kvm, it, leaf(Y)))
    assert ret == 0 and it.old_spte == SHADOW_NONPRESENT_VALUE   # the old value, as the kernel
    assert kvm.ept.get(it.sptep) == leaf(Y)


def test_nobody_writes_over_a_frozen_snapshot():
    kvm = R.race_world()
    it = _descend(kvm, G, 1)
    it.old_spte = FROZEN_SPTE
    with pytest.raises(KernelWarn, match="FROZEN_SPTE"):
        run_alone(kvm, T.tdp_mmu_set_spte_atomic(kvm, it, leaf(Y)))
    with pytest.raises(KernelWarn, match="read only"):
        run_alone(kvm, T.tdp_mmu_set_spte(kvm, it.sptep, FROZEN_SPTE,
                                          SHADOW_NONPRESENT_VALUE, G, 1))


def test_handle_changed_spte_rules():
    kvm = R.race_world()
    with pytest.raises(KernelWarn, match="BUG"):
        run_alone(kvm, T.handle_changed_spte(kvm, G, leaf(X), leaf(Y), 1, True))
    with pytest.raises(KernelWarn, match="non-present"):
        run_alone(kvm, T.handle_changed_spte(kvm, G, SHADOW_NONPRESENT_VALUE,
                                             0x8000000000000001, 1, True))
    with pytest.raises(KernelWarn, match="aligned"):
        run_alone(kvm, T.handle_changed_spte(kvm, 0x101, leaf(X), SHADOW_NONPRESENT_VALUE, 2,
                                             True))
    # Non-present -> FROZEN: nothing to do.  Leaf -> non-present: stats and the record.
    run_alone(kvm, T.handle_changed_spte(kvm, G, SHADOW_NONPRESENT_VALUE, FROZEN_SPTE, 1, True))
    assert kvm.ept.page_stats[1] == 1 and kvm.ept.processed == ()
    run_alone(kvm, T.handle_changed_spte(kvm, G, leaf(X), SHADOW_NONPRESENT_VALUE, 1, True))
    assert kvm.ept.page_stats[1] == 0 and kvm.ept.processed == ((G, 1, X),)


def test_the_atomic_zap_freezes_flushes_then_clears():
    kvm = R.race_world()
    ret, kinds = ops_of(kvm, R.zap_gfn_shared(kvm, root(kvm), G))
    assert ret is True
    # read_lock, 7 walk reads (root, then re-read + child read per level),
    # cmpxchg to FROZEN_SPTE, flush, plain write of SHADOW_NONPRESENT_VALUE, unlock.
    assert kinds == ["read_lock"] + ["read"] * 7 + ["try_cmpxchg", "flush", "write", "read_unlock"]
    assert kvm.ept.get(sptep(kvm, G)) == SHADOW_NONPRESENT_VALUE
    assert kvm.tlbs.tlb[0] == {} and kvm.ept.page_stats[1] == 0
    assert kvm.ept.processed == ((G, 1, X),)
    # Nothing left to zap: the walk finds a non-present SPTE.
    assert zap(kvm, G) is False


def test_the_unsafe_zap_clears_then_flushes():
    kvm = R.race_world()
    ret, kinds = ops_of(kvm, R.zap_gfn_shared(kvm, root(kvm), G, freeze=False))
    assert ret is True
    assert kinds == ["read_lock"] + ["read"] * 7 + ["try_cmpxchg", "flush", "read_unlock"]
    assert kvm.ept.get(sptep(kvm, G)) == SHADOW_NONPRESENT_VALUE and kvm.tlbs.tlb[0] == {}


def test_zapping_a_table_freezes_all_512_children_and_processes_each_leaf_once():
    kvm = vm(pages=256)                            # gfns 0x100..0x1ff: one whole L1 table
    for gfn in (G, G + 1, G + 0xFF):
        assert fault(kvm, gfn) == RET_PF_FIXED
    table = sptep(kvm, G).pt
    assert zap(kvm, G, level=2) is True
    assert kvm.ept.sps[table].unlinked
    assert kvm.ept.tables[table] == {i: FROZEN_SPTE for i in range(512)}
    assert kvm.ept.removed_tables_not_frozen() == []
    assert sorted(kvm.ept.processed) == sorted((g, 1, host_pfn(kvm, g))
                                               for g in (G, G + 1, G + 0xFF))
    assert kvm.ept.page_stats == {1: 0, 2: 0, 3: 0} == counts(kvm)
    assert R.bookkeeping_ok(kvm) is True


def test_an_exclusive_removal_reads_and_freezes_only_present_children():
    kvm = R.race_world()
    parent = sptep(kvm, G, 2)
    table = spte_to_pfn(kvm.ept.get(parent))
    gen = T.tdp_mmu_set_spte(kvm, parent, kvm.ept.get(parent), SHADOW_NONPRESENT_VALUE, 0, 2)
    _, kinds = ops_of(kvm, gen)
    # Write the parent; read all 512 entries in one step (no walk covers
    # any); freeze the one present leaf.  Its W and D bits are both set, so
    # nothing can change under KVM and a plain write suffices (no xchg).
    assert kinds == ["write", "read_span", "write"]
    assert kvm.ept.get(I.Sptep(table, SPTE_INDEX(G << PAGE_SHIFT, 1))) == FROZEN_SPTE
    assert kvm.ept.processed == ((G, 1, X),) and kvm.ept.page_stats[1] == 0


def _two_gfns_cached():
    # G mapped and in vCPU 0's TLB, G + 1 mapped and in vCPU 1's.
    kvm = vm()
    for vcpu, gfn in ((0, G), (1, G + 1)):
        fault(kvm, gfn, vcpu)
        access(kvm, vcpu, gfn)
    return kvm


def test_the_write_lock_zap_of_a_range_flushes_before_it_unlocks():
    kvm = _two_gfns_cached()
    ret, kinds = ops_of(kvm, kvm_zap_gfn_range(kvm, G, G + 2))
    assert ret is True
    assert kinds[0] == "write_lock" and kinds[-2:] == ["flush", "write_unlock"]
    assert kvm.translate(root(kvm), G) is None and kvm.translate(root(kvm), G + 1) is None
    assert kvm.tlbs.tlb == [{}, {}] and kvm.ept.page_stats[1] == 0
    assert R.bookkeeping_ok(kvm) is True


def test_a_tlb_flush_drops_only_the_range():
    kvm = _two_gfns_cached()
    run_alone(kvm, TLB.kvm_flush_remote_tlbs_gfn(kvm, G, 1))
    assert kvm.tlbs.tlb[0] == {} and list(kvm.tlbs.tlb[1]) == [G + 1]
    run_alone(kvm, TLB.kvm_flush_remote_tlbs_gfn(kvm, G + 1, 2))   # the whole 2M page
    assert kvm.tlbs.tlb == [{}, {}]


def test_run_alone_refuses_to_wait_for_a_lock_nobody_can_release():
    kvm = R.race_world()
    kvm.mmu_lock.writer = "B"
    with pytest.raises(ModelHang, match="mmu_lock"):
        fault(kvm, G + 1)


def test_primitive_state_round_trips():
    kvm = R.race_world()
    saved = (kvm.ept._state(), kvm.tlbs._state())
    zap(kvm, G, level=2)
    assert kvm.ept._state() != saved[0]
    kvm.ept._load(saved[0])
    kvm.tlbs._load(saved[1])
    assert (kvm.ept._state(), kvm.tlbs._state()) == saved
    assert kvm.translate(root(kvm), G).pfn == X and kvm.tlbs.tlb[0][G].pfn == X


def test_span_counts_the_entries_no_walk_covers():
    kvm = R.race_world()
    table = sptep(kvm, G).pt
    assert kvm.ept.span(I.Sptep(table, 0)) == 512
    T.tdp_walk_begin(kvm, G, G + 1)
    assert [kvm.ept.span(I.Sptep(table, i)) for i in (0, 0xFF, 0x100, 0x101)] == [256, 1, 1, 255]
    T.tdp_walk_begin(kvm, 0x1FF, 0x300)
    assert kvm.ept.span(I.Sptep(table, 0x101)) == 0xFE and kvm.ept.span(I.Sptep(table, 0x1FF)) == 1
    T.tdp_walk_end(kvm, 0x1FF, 0x300)
    T.tdp_walk_end(kvm, G, G + 1)
    assert kvm.ept.walks == ()


# ---------------------------------------------------------------------------
# Hand-counted explorer scenarios
# ---------------------------------------------------------------------------
def _one_access(kvm):
    return (yield from kvm.tlbs.access(1, G))


def _zap_and_touch():
    return Scenario(
        "zap vs one access", R.race_world,
        [R.actor("A", "zap", R.zap_gfn_shared, R.ROOT, G, 1, True),
         Actor("B", "vCPU 1 reads", _one_access)],
        invariants=[Invariant(R.NO_STALE_TRANSLATION, R.no_stale_translation)],
        final_check=R.bookkeeping_ok)


def test_zap_against_one_access_counted_by_hand():
    # A has 12 steps (read_lock, 7 reads, cmpxchg->FROZEN at step 9, flush at
    # 10, write non-present at 11, unlock at 12); B has one (an access).
    # States with B not yet run: A at 0..12 -> 13.
    # B done, by when B ran (k = A steps done before it):
    #   k <= 8, SPTE present: B got pfn X and cached it; with A at i in k..9
    #   the TLB still holds it -> (i, X, cached) for i = 0..9: 10 states;
    #   A at 10..12 (flushed) -> (i, X, empty): 3 states.
    #   k >= 9 (FROZEN or non-present): EPT violation, nothing cached ->
    #   (i, None, empty) for i = 9..12: 4 states.
    # 13 + 10 + 3 + 4 = 30 states.  Final states: A at 12 with B's result X
    # or None: 2 complete runs.  Transitions = sum of out-degrees: 12 states
    # (B pending, A < 12) with 2, one (A done) with 1, 15 non-final B-done
    # states with 1: 24 + 1 + 15 = 40.
    r = explore(_zap_and_touch())
    assert not r.violated and r.exhaustive and r.method == "snapshot"
    assert (r.states, r.transitions, r.complete_runs) == (30, 40, 2)


def test_two_accesses_counted_by_hand():
    # Two one-step actors: initial, A done, B done, both done (AB = BA) = 4
    # states; 2 + 1 + 1 = 4 transitions; 1 complete run.
    def reads(vcpu):
        def read(kvm):
            return (yield from kvm.tlbs.access(vcpu, G))
        return read
    sc = Scenario("two reads", R.race_world,
                  [Actor("A", "vCPU 0 reads", reads(0)), Actor("B", "vCPU 1 reads", reads(1))],
                  invariants=[Invariant(R.NO_STALE_TRANSLATION, R.no_stale_translation)])
    r = explore(sc)
    assert (r.states, r.transitions, r.complete_runs) == (4, 4, 1)


def _fault_directly(kvm):
    return (yield from kvm_mmu_page_fault(kvm.vcpus[1], G << PAGE_SHIFT, PFERR_GUEST_FINAL_MASK))


def test_a_kernel_warn_in_an_actor_is_a_violation():
    sc = Scenario("fault over a present leaf of another pfn", R.race_world,
                  [R.actor("A", "fault", _fault_directly)],
                  invariants=[Invariant(R.NO_STALE_TRANSLATION, R.no_stale_translation)])
    r = explore(sc)
    assert r.violated and "kernel WARN: spurious fault" in r.invariant


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------
op_strategy = st.tuples(st.sampled_from(["map", "zap", "zap2M", "access", "zaprange"]),
                        st.integers(0, 3), st.integers(0, 1))


@settings(max_examples=40, deadline=None)
@given(st.lists(op_strategy, max_size=12))
def test_sequential_operations_keep_tables_tlbs_and_stats_consistent(ops):
    # Alone (no concurrency), every zap flushes before returning, so no TLB
    # ever disagrees with the EPT, and the stats follow the tables.
    kvm = vm()
    for op, slot, vcpu in ops:
        gfn = G + slot
        if op == "map":
            assert fault(kvm, gfn, vcpu) in (RET_PF_FIXED, RET_PF_SPURIOUS)
            assert kvm.translate(root(kvm), gfn).pfn == host_pfn(kvm, gfn)
        elif op == "zap":
            zap(kvm, gfn)
            assert kvm.translate(root(kvm), gfn) is None
        elif op == "zap2M":
            zap(kvm, gfn, level=2)
            assert kvm.translate(root(kvm), gfn) is None
        elif op == "zaprange":
            run_alone(kvm, kvm_zap_gfn_range(kvm, G, G + 4))
        else:
            assert access(kvm, vcpu, gfn) == kvm.translate(root(kvm), gfn)
        assert R.no_stale_translation(kvm)
        assert R.bookkeeping_ok(kvm) is True
        assert kvm.ept.walks == ()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32))
def test_random_schedules_of_the_fixed_race_never_break_it(seed):
    trace = run_random(R.zap_vs_fault(True, 3), seed)
    assert trace.violation is None and not trace.unfinished


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32))
def test_random_schedules_of_the_unsafe_race_break_it_only_one_way(seed):
    trace = run_random(R.zap_vs_fault(False, 2), seed)
    if trace.violation is not None:
        assert trace.violation == R.NO_STALE_TRANSLATION
        last = trace.steps[-1]
        assert last.actor == "B" and f"leaf {Y:#x}: ok" in last.label
        assert last.state["vCPU 0 TLB"] == f"0x100->{X:#x}"
