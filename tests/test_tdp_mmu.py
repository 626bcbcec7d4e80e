"""The TDP MMU model (kvmmu.tdp_mmu, kvmmu.tdp_iter, kvmmu.tlb): tables, iterator, write primitives, fault path, TLBs."""
import pytest
from hypothesis import given, settings, strategies as st

from kvmmu import tdp_iter as I
from kvmmu import tdp_mmu as T
from kvmmu import tlb as TLB
from kvmmu import tdp_mmu_races as R
from kvmmu.errno import EBUSY, RET_PF_FIXED, RET_PF_RETRY, RET_PF_SPURIOUS
from kvmmu.explorer import Invariant, Scenario, explore
from kvmmu.levels import PAGE_SHIFT, PG_LEVEL_2M, PG_LEVEL_4K, SPTE_INDEX
from kvmmu.spte import (ACC_ALL, EPT_AD, FROZEN_SPTE, SHADOW_NONPRESENT_VALUE, KernelWarn,
                        make_nonleaf_spte, make_small_spte, make_spte, spte_to_pfn)

G, X, Y = R.RACE_GFN, R.OLD_PFN, R.NEW_PFN


def ops_of(kvm, gen, cpu="A"):
    """Run an actor alone and return (result, [op kinds it performed])."""
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


# ---------------------------------------------------------------------------
# The world and its plain helpers
# ---------------------------------------------------------------------------
def test_new_world_is_one_empty_root():
    kvm = T.TdpMmuWorld()
    assert list(kvm.sps) == [T.TDP_PT_PFN_BASE]
    assert kvm.root.level == 4 and kvm.root.ptep is None
    assert kvm.ept.tables[kvm.root_pfn] == {}
    assert kvm.get(I.Sptep(kvm.root_pfn, 7)) == SHADOW_NONPRESENT_VALUE
    assert kvm.translate(G) is None
    assert kvm.page_stats == {1: 0, 2: 0, 3: 0}


def test_install_builds_the_tables_a_fault_would():
    kvm = T.TdpMmuWorld()
    spte = kvm.install(G, X)
    assert spte == leaf(X)
    # root (4) -> L3 -> L2 -> L1: three new tables at the next pfns.
    assert sorted(kvm.sps) == [T.TDP_PT_PFN_BASE + i for i in range(4)]
    path = kvm.walk(G)
    assert [lvl for _, _, lvl in path] == [4, 3, 2, 1]
    assert path[0][1] == make_nonleaf_spte((T.TDP_PT_PFN_BASE + 1) << PAGE_SHIFT, cfg=EPT_AD)
    assert path[-1][0] == I.Sptep(T.TDP_PT_PFN_BASE + 3, SPTE_INDEX(G << PAGE_SHIFT, 1))
    assert kvm.translate(G) == TLB.TlbEntry(X, spte)
    assert kvm.page_stats[1] == 1 and kvm.reachable_leaves() == kvm.page_stats
    with pytest.raises(ValueError, match="already mapped"):
        kvm.install(G, X)


def test_huge_translation_adds_the_offset():
    kvm = T.TdpMmuWorld()
    kvm.install(0x200, 0x400, PG_LEVEL_2M)
    assert kvm.translate(0x203).pfn == 0x403
    assert T.access(kvm, 1, 0x203).pfn == 0x403
    assert kvm.tlb[1] == {0x203: kvm.translate(0x203)}
    with pytest.raises(ValueError, match="2M page"):
        kvm.install(0x201, 0x999)


def test_spte_names():
    assert T.spte_name(SHADOW_NONPRESENT_VALUE) == "non-present"
    assert T.spte_name(FROZEN_SPTE) == "FROZEN_SPTE"
    assert T.spte_name(leaf(X)) == "leaf 0x1234"
    assert T.spte_name(make_nonleaf_spte(0x100003 << 12, cfg=EPT_AD), 2) == "table 0x100003"
    assert T.spte_name(0x6) == "MMIO"
    assert T.spte_name(0x8000000000000001) == "0x8000000000000001"


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="vcpus"):
        T.TdpMmuWorld(0)
    with pytest.raises(ValueError, match="pfn must be aligned"):
        T.KvmPageFault(G, 0x1235, PG_LEVEL_2M)
    with pytest.raises(ValueError, match="gfn"):
        T.KvmPageFault(T.GFN_MAX + 1, X)
    with pytest.raises(TypeError, match="write"):
        T.KvmPageFault(G, X, write=1)
    kvm = T.TdpMmuWorld()
    with pytest.raises(ValueError, match="level"):
        T.zap_gfn(kvm, G, level=5)
    with pytest.raises(ValueError, match="no table maps"):
        kvm.watch_gfn(G)
    with pytest.raises(ValueError, match="actors"):
        R.zap_vs_fault(actors=4)
    with pytest.raises(ValueError, match="new_gfn"):
        R.fault_into_removed_table(0x300)


# ---------------------------------------------------------------------------
# The fault path, alone
# ---------------------------------------------------------------------------
def test_fault_on_an_empty_ept_links_three_tables_and_a_leaf():
    kvm = T.TdpMmuWorld()
    ret, kinds = ops_of(kvm, T.kvm_tdp_mmu_page_fault(kvm, T.KvmPageFault(G, X)))
    assert ret == RET_PF_FIXED
    # read_lock; root read; then per level L4, L3, L2: allocate a table,
    # cmpxchg it in, re-read (try_step_down), read the child; L1: cmpxchg the leaf.
    assert kinds == (["read_lock", "read"] + ["alloc", "try_cmpxchg", "read", "read"] * 3
                     + ["try_cmpxchg", "read_unlock"])
    assert kvm.translate(G) == TLB.TlbEntry(X, leaf(X))
    assert kvm.page_stats == {1: 1, 2: 0, 3: 0} == kvm.reachable_leaves()
    assert kvm.walks == ()
    # The same fault again finds the leaf: spurious (6.13+ early check).
    assert T.map_gfn(kvm, G, X) == RET_PF_SPURIOUS
    # A different pfn over a present leaf is the kernel's WARN (missing notifier zap).
    with pytest.raises(KernelWarn, match="spurious fault"):
        T.map_gfn(kvm, G, Y)


def test_fault_retries_on_a_frozen_spte():
    kvm = R.race_world()
    kvm.ept.put(kvm.sptep_of(G, 1), FROZEN_SPTE)
    assert T.map_gfn(kvm, G, Y) == RET_PF_RETRY
    assert kvm.get(kvm.sptep_of(G, 1)) == FROZEN_SPTE
    # A frozen upper level: the walk gives up there.
    kvm = R.race_world()
    kvm.ept.put(kvm.sptep_of(G, 2), FROZEN_SPTE)
    ret, kinds = ops_of(kvm, T.kvm_tdp_mmu_page_fault(kvm, T.KvmPageFault(G, Y)))
    assert ret == RET_PF_RETRY and "try_cmpxchg" not in kinds


def test_fault_under_a_huge_page_splits_it():
    kvm = T.TdpMmuWorld()
    huge = kvm.install(0x200, 0x400, PG_LEVEL_2M)
    assert T.map_gfn(kvm, 0x205, 0x405) == RET_PF_SPURIOUS
    sptep = kvm.sptep_of(0x205, 1)
    assert kvm.get(sptep) == make_small_spte(huge, 1, 5, cfg=EPT_AD)
    assert kvm.page_stats == {1: 512, 2: 0, 3: 0} == kvm.reachable_leaves()
    assert kvm.processed == [(0x200, 2, 0x400)]
    assert R.bookkeeping_ok(kvm) is True


def test_write_fault_on_readonly_host_mapping_is_fixed_read_only():
    kvm = T.TdpMmuWorld()
    fault = T.KvmPageFault(G, X, write=True, map_writable=False)
    assert T.run_to_completion(kvm, T.kvm_tdp_mmu_page_fault(kvm, fault)) == RET_PF_FIXED
    assert not kvm.translate(G).spte & 2


# ---------------------------------------------------------------------------
# The write primitives
# ---------------------------------------------------------------------------
def _descend(kvm, gfn, level):
    it = T.run_to_completion(kvm, I.tdp_iter_start(kvm, kvm.root_pfn, kvm.root_level, level, gfn))
    while it.level > level:
        assert T.run_to_completion(kvm, I.try_step_down(kvm, it))
    return it


def test_set_spte_atomic_success_keeps_the_snapshot_failure_refreshes_it():
    kvm = R.race_world()
    it = _descend(kvm, G, 1)
    assert it.old_spte == leaf(X)
    kvm.ept.put(it.sptep, SHADOW_NONPRESENT_VALUE)       # someone else zapped it
    ret = T.run_to_completion(kvm, T.__tdp_mmu_set_spte_atomic(kvm, it, FROZEN_SPTE))
    assert ret == -EBUSY and it.old_spte == SHADOW_NONPRESENT_VALUE
    ret = T.run_to_completion(kvm, T.__tdp_mmu_set_spte_atomic(kvm, it, leaf(Y)))
    assert ret == 0 and it.old_spte == SHADOW_NONPRESENT_VALUE   # the old value, as the kernel
    assert kvm.get(it.sptep) == leaf(Y)


def test_nobody_writes_over_a_frozen_snapshot():
    kvm = R.race_world()
    it = _descend(kvm, G, 1)
    it.old_spte = FROZEN_SPTE
    with pytest.raises(KernelWarn, match="FROZEN_SPTE"):
        T.run_to_completion(kvm, T.tdp_mmu_set_spte_atomic(kvm, it, leaf(Y)))
    with pytest.raises(KernelWarn, match="read only"):
        T.run_to_completion(kvm, T.tdp_mmu_set_spte(kvm, it.sptep, FROZEN_SPTE,
                                                    SHADOW_NONPRESENT_VALUE, G, 1))


def test_handle_changed_spte_rules():
    kvm = R.race_world()
    run = T.run_to_completion
    with pytest.raises(KernelWarn, match="BUG"):
        run(kvm, T.handle_changed_spte(kvm, G, leaf(X), leaf(Y), 1, True))
    with pytest.raises(KernelWarn, match="non-present"):
        run(kvm, T.handle_changed_spte(kvm, G, SHADOW_NONPRESENT_VALUE, 0x8000000000000001, 1, True))
    with pytest.raises(KernelWarn, match="aligned"):
        run(kvm, T.handle_changed_spte(kvm, 0x101, leaf(X), SHADOW_NONPRESENT_VALUE, 2, True))
    # Non-present -> FROZEN: nothing to do.  Leaf -> non-present: stats and the record.
    run(kvm, T.handle_changed_spte(kvm, G, SHADOW_NONPRESENT_VALUE, FROZEN_SPTE, 1, True))
    assert kvm.page_stats[1] == 1 and kvm.processed == []
    run(kvm, T.handle_changed_spte(kvm, G, leaf(X), SHADOW_NONPRESENT_VALUE, 1, True))
    assert kvm.page_stats[1] == 0 and kvm.processed == [(G, 1, X)]


def test_atomic_zap_freezes_flushes_then_clears():
    kvm = R.race_world()
    ret, kinds = ops_of(kvm, T.zap_spte_shared(kvm, G))
    assert ret is True
    # read_lock, 7 walk reads (root, then re-read + child read per level),
    # cmpxchg to FROZEN_SPTE, flush, plain write of SHADOW_NONPRESENT_VALUE, unlock.
    assert kinds == ["read_lock"] + ["read"] * 7 + ["try_cmpxchg", "flush", "write", "read_unlock"]
    assert kvm.get(kvm.sptep_of(G, 1)) == SHADOW_NONPRESENT_VALUE
    assert kvm.tlb[0] == {} and kvm.page_stats[1] == 0 and kvm.processed == [(G, 1, X)]
    # Nothing left to zap: the walk finds a non-present SPTE.
    assert T.zap_gfn(kvm, G) is False


def test_unsafe_zap_clears_then_flushes():
    kvm = R.race_world()
    ret, kinds = ops_of(kvm, T.zap_spte_shared(kvm, G, freeze=False))
    assert ret is True
    assert kinds == ["read_lock"] + ["read"] * 7 + ["try_cmpxchg", "flush", "read_unlock"]
    assert kvm.get(kvm.sptep_of(G, 1)) == SHADOW_NONPRESENT_VALUE and kvm.tlb[0] == {}


def test_zapping_a_table_freezes_all_512_children_and_processes_each_leaf_once():
    kvm = R.race_world()
    kvm.install(G + 1, Y)
    kvm.install(G + 0x1FF - 0x100, 0x777)          # the last entry of the same L1 table
    table = kvm.sptep_of(G, 1).pt
    assert T.zap_gfn(kvm, G, level=2) is True
    assert kvm.sps[table].unlinked
    assert kvm.ept.tables[table] == {i: FROZEN_SPTE for i in range(512)}
    assert kvm.removed_tables_not_frozen() == []
    assert sorted(kvm.processed) == [(G, 1, X), (G + 1, 1, Y), (0x1FF, 1, 0x777)]
    assert kvm.page_stats == {1: 0, 2: 0, 3: 0} == kvm.reachable_leaves()
    assert R.bookkeeping_ok(kvm) is True


def test_exclusive_removal_reads_and_freezes_only_present_children():
    kvm = R.race_world()
    parent = kvm.sptep_of(G, 2)
    table = spte_to_pfn(kvm.get(parent))
    gen = T.tdp_mmu_set_spte(kvm, parent, kvm.get(parent), SHADOW_NONPRESENT_VALUE, 0, 2)
    _, kinds = ops_of(kvm, gen)
    # Write the parent; read all 512 entries in one step (no walk covers
    # any); freeze the one present leaf.  Its W and D bits are both set, so
    # nothing can change under KVM and a plain write suffices (no xchg).
    assert kinds == ["write", "read_span", "write"]
    assert kvm.get(I.Sptep(table, SPTE_INDEX(G << PAGE_SHIFT, 1))) == FROZEN_SPTE
    assert kvm.processed == [(G, 1, X)] and kvm.page_stats[1] == 0


def test_write_lock_zap_of_a_range():
    kvm = R.race_world()
    kvm.install(G + 1, Y)
    T.access(kvm, 1, G + 1)
    ret, kinds = ops_of(kvm, T.zap_gfn_range_exclusive(kvm, G, G + 2))
    assert ret is True
    assert kinds[0] == "write_lock" and kinds[-2:] == ["flush", "write_unlock"]
    assert kvm.translate(G) is None and kvm.translate(G + 1) is None
    assert kvm.tlb == [{}, {}] and kvm.page_stats[1] == 0
    assert R.bookkeeping_ok(kvm) is True


def test_tlb_flush_drops_only_the_range():
    kvm = R.race_world()
    kvm.install(G + 1, Y)
    kvm.fill_tlb(1, G + 1)
    T.run_to_completion(kvm, TLB.kvm_flush_remote_tlbs_gfn(kvm, G, 1))
    assert kvm.tlb == [{}, {G + 1: TLB.TlbEntry(Y, leaf(Y))}]
    T.run_to_completion(kvm, TLB.kvm_flush_remote_tlbs_gfn(kvm, G + 1, 2))   # the whole 2M page
    assert kvm.tlb == [{}, {}]


def test_run_to_completion_refuses_to_block():
    kvm = R.race_world()
    kvm.mmu_lock.writer = "B"
    with pytest.raises(RuntimeError, match="blocks"):
        T.map_gfn(kvm, G + 1, Y)


def test_primitive_state_round_trips():
    kvm = R.race_world()
    saved = (kvm.ept._state(), kvm.tlbs._state())
    T.zap_gfn(kvm, G, level=2)
    assert kvm.ept._state() != saved[0]
    kvm.ept._load(saved[0])
    kvm.tlbs._load(saved[1])
    assert (kvm.ept._state(), kvm.tlbs._state()) == saved
    assert kvm.translate(G).pfn == X and kvm.tlb[0][G].pfn == X


# ---------------------------------------------------------------------------
# Hand-counted explorer scenarios
# ---------------------------------------------------------------------------
def _zap_and_touch():
    return Scenario(
        "zap vs one access", R.race_world,
        [R.actor("A", "zap", T.zap_spte_shared, G, 1, True),
         R.actor("B", "vCPU 1 reads", T.vcpu_access, 1, G)],
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
    assert not r.violated and r.exhaustive
    assert (r.states, r.transitions, r.complete_runs) == (30, 40, 2)


def test_two_accesses_counted_by_hand():
    # Two one-step actors: initial, A done, B done, both done (AB = BA) = 4
    # states; 2 + 1 + 1 = 4 transitions; 1 complete run.
    sc = Scenario("two reads", R.race_world,
                  [R.actor("A", "vCPU 0 reads", T.vcpu_access, 0, G),
                   R.actor("B", "vCPU 1 reads", T.vcpu_access, 1, G)],
                  invariants=[Invariant(R.NO_STALE_TRANSLATION, R.no_stale_translation)])
    r = explore(sc)
    assert (r.states, r.transitions, r.complete_runs) == (4, 4, 1)


def test_kernel_warn_in_an_actor_is_a_violation():
    sc = Scenario("fault over a present leaf", R.race_world,
                  [R.actor("A", "fault", T.kvm_tdp_mmu_page_fault, T.KvmPageFault(G, Y))],
                  invariants=[Invariant(R.NO_STALE_TRANSLATION, R.no_stale_translation)])
    r = explore(sc)
    assert r.violated and "kernel WARN: spurious fault" in r.invariant


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------
op_strategy = st.tuples(st.sampled_from(["map", "zap", "zap2M", "access", "zaprange"]),
                        st.integers(0, 3), st.integers(0, 1))


@settings(max_examples=60, deadline=None)
@given(st.lists(op_strategy, max_size=12))
def test_sequential_operations_keep_tables_tlbs_and_stats_consistent(ops):
    # Alone (no concurrency), every zap flushes before returning, so no TLB
    # ever disagrees with the EPT, and the stats follow the tables.
    kvm = T.TdpMmuWorld(2)
    for op, slot, vcpu in ops:
        gfn = G + slot
        if op == "map":
            ret = T.map_gfn(kvm, gfn, X + slot)
            assert ret in (RET_PF_FIXED, RET_PF_SPURIOUS)
            assert kvm.translate(gfn).pfn == X + slot
        elif op == "zap":
            T.zap_gfn(kvm, gfn)
            assert kvm.translate(gfn) is None
        elif op == "zap2M":
            T.zap_gfn(kvm, gfn, level=2)
            assert kvm.translate(gfn) is None
        elif op == "zaprange":
            T.run_to_completion(kvm, T.zap_gfn_range_exclusive(kvm, G, G + 4))
        else:
            got = T.access(kvm, vcpu, gfn)
            assert got == kvm.translate(gfn)
        assert R.no_stale_translation(kvm)
        assert R.bookkeeping_ok(kvm) is True
        assert kvm.walks == ()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32))
def test_random_schedules_of_the_fixed_race_never_break_it(seed):
    from kvmmu.explorer import run_random
    trace = run_random(R.zap_vs_fault(True, 3), seed)
    assert trace.violation is None and not trace.unfinished


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32))
def test_random_schedules_of_the_unsafe_race_break_it_only_one_way(seed):
    from kvmmu.explorer import run_random
    trace = run_random(R.zap_vs_fault(False, 2), seed)
    if trace.violation is not None:
        assert trace.violation == R.NO_STALE_TRANSLATION
        last = trace.steps[-1]
        assert last.actor == "B" and "leaf 0x5678: ok" in last.label
        assert last.state["vCPU 0 TLB"] == "0x100->0x1234"


def test_iterator_and_tlb_names_stay_importable_from_tdp_mmu():
    # The iterator and the TLBs moved to their own modules; kvmmu.tdp_mmu.X
    # (used by the chapter and by readers' code) is the same object.
    for name in ("Sptep", "TdpIter", "tdp_iter_start", "tdp_iter_next", "try_step_down",
                 "kvm_tdp_mmu_write_spte", "spte_to_child_pt"):
        assert getattr(T, name) is getattr(I, name)
    for name in ("TlbEntry", "VcpuTlbs", "kvm_flush_remote_tlbs_range", "kvm_flush_remote_tlbs_gfn"):
        assert getattr(T, name) is getattr(TLB, name)
