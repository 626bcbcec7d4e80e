"""host_pfn_mapping_level and its rules: unit, property and exhaustive checks."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmmu import host_level as L
from kvmmu import host_level_races as R
from kvmmu.errno import RET_PF_FIXED, RET_PF_RETRY
from kvmmu.explorer import explore, run_schedule
from kvmmu.exercises.host_level import problem
from kvmmu.host_mm import (BACKINGS, GUEST_DATA_WORD, __split_huge_pmd, collapse_huge_page,
                           host_populate, host_translation)
from kvmmu.levels import KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K
from kvmmu.memslots import (KVM_MEM_LOG_DIRTY_PAGES, KvmMemorySlot, KvmMemslots,
                            kvm_mmu_gfn_disallow_lpage, lpage_info_slot)
from kvmmu.notifier import Kvm
from kvmmu.viz.host_level import host_mapping_view, host_walk_data, host_walk_text

GFN = 0x100000
HVA = 0x7F0000000000
PAGES_2M = KVM_PAGES_PER_HPAGE(PG_LEVEL_2M)
PAGES_1G = KVM_PAGES_PER_HPAGE(PG_LEVEL_1G)


def vm(npages=1024, backing="2M", base=GFN, ua=HVA, flags=0):
    slot = KvmMemorySlot(0, base, npages, ua, flags=flags)
    kvm = Kvm(KvmMemslots([slot]))
    host_populate(kvm.mm, ua, npages, backing)
    return kvm, slot


# -- host_pfn_mapping_level (Appendix A item 8) ------------------------------------

@pytest.mark.parametrize("backing,level", [("4K", 1), ("2M", 2), ("1G", 3)])
def test_returns_the_host_level(backing, level):
    kvm, slot = vm(npages=PAGES_2M, backing=backing)
    assert L.host_pfn_mapping_level(kvm, GFN + 0x23, slot) == level


def test_1g_pud_leaf_wins_whatever_the_pmd_slot_holds():
    kvm, slot = vm(npages=PAGES_2M, backing="1G")
    kvm.mm.mem.reads.clear()
    assert L.host_pfn_mapping_level(kvm, GFN, slot) == PG_LEVEL_1G
    # the walk stops at the PUD: the "PMD" under a 1G leaf is data and is never read
    assert [lv for _, lv, _ in kvm.mm.mem.reads] == [4, 3]
    assert not kvm.mm.mem.bad_reads


def test_each_level_is_read_exactly_once():
    kvm, slot = vm(npages=PAGES_2M, backing="4K")
    kvm.mm.mem.reads.clear()
    L.host_pfn_mapping_level(kvm, GFN + 7, slot)
    ptrs = [p for p, _, _ in kvm.mm.mem.reads]
    assert [lv for _, lv, _ in kvm.mm.mem.reads] == [4, 3, 2]
    assert len(set(ptrs)) == len(ptrs) == 3


def test_unmapped_host_address_is_4k_without_touching_data():
    slot = KvmMemorySlot(0, GFN, 16, HVA)
    kvm = Kvm(KvmMemslots([slot]))
    assert L.host_pfn_mapping_level(kvm, GFN, slot) == PG_LEVEL_4K


def test_interrupts_are_off_during_the_walk_and_back_on_after():
    kvm, slot = vm(npages=PAGES_2M, backing="2M")
    gen = L.host_pfn_mapping_level.steps(kvm, GFN, slot)
    with pytest.raises(StopIteration):
        next(gen)
    assert kvm.rcu.readers == 0
    assert kvm.steps_taken[-3:] == ["READ_ONCE(*pgdp)", "READ_ONCE(*pudp)", "READ_ONCE(*pmdp)"]


_layouts = st.tuples(
    st.integers(0, 7),                          # base gfn in 2M pages past a 1G boundary
    st.integers(0, 511),                        # extra pages of misalignment
    st.sampled_from([1, 200, 512, 513, 1024, 1500]),
    st.sampled_from([0, 0, 1, 0x100]),          # host address offset in pages
    st.sampled_from(sorted(BACKINGS)),
    st.integers(0, 10 ** 6),                    # which gfn (mod npages)
)


@settings(max_examples=60, deadline=None)
@given(_layouts)
def test_level_is_one_of_three_and_never_exceeds_any_rule(layout):
    k2m, off, npages, ua_off, backing, pick = layout
    base = 4 * PAGES_1G + k2m * PAGES_2M + (off if off % 3 == 0 else 0)
    ua = HVA + ((base % PAGES_1G + ua_off) << PAGE_SHIFT)
    slot = KvmMemorySlot(0, base, npages, ua)
    kvm = Kvm(KvmMemslots([slot]))
    gfn = base + pick % npages
    host_populate(kvm.mm, L._hva_of(slot, gfn) & ~0xFFF, 1, backing)
    host = L.host_pfn_mapping_level(kvm, gfn, slot)
    assert host in L.HOST_LEVELS
    ret, fault = L.kvm_page_fault(kvm, gfn)
    assert ret == RET_PF_FIXED
    level = fault.goal_level
    assert level <= host                                        # the host level
    assert all(lpage_info_slot(gfn, slot, lv) == 0 for lv in range(2, level + 1))  # disallow_lpage
    mask = KVM_PAGES_PER_HPAGE(level) - 1
    assert (base & mask) == ((ua >> PAGE_SHIFT) & mask)         # the alignment rule
    # Appendix A item 9: level = min(host, the first level <= 1G that the slot allows)
    first = next(lv for lv in (3, 2, 1) if lv == 1 or lpage_info_slot(gfn, slot, lv) == 0)
    assert level == min(host, first)
    base_gfn, pfn, mapped = kvm.mappings.lookup(gfn)
    assert mapped == level and pfn + (gfn - base_gfn) == host_translation(
        kvm.mm, L._hva_of(slot, gfn))[0]
    assert not kvm.warnings


def test_513_page_slot_maps_its_last_page_4k():
    # kernel-facts §2.4's worked example (the pre_fault selftest layout)
    kvm, slot = vm(npages=513, backing="2M")
    assert L.kvm_mmu_max_mapping_level(kvm, slot, GFN + 511) == PG_LEVEL_2M
    assert L.kvm_mmu_max_mapping_level(kvm, slot, GFN + 512) == PG_LEVEL_4K
    assert L.lpage_disallow_reasons(slot, GFN + 512, PG_LEVEL_2M) == [
        "the slot ends at gfn 0x100201, inside the 2M page [0x100200, 0x100400)"]


def test_max_level_skips_the_host_walk_when_the_slot_says_4k():
    kvm, slot = vm(npages=PAGES_2M, backing="2M", ua=HVA + 0x1000)
    kvm.mm.mem.reads.clear()
    assert L.kvm_mmu_max_mapping_level(kvm, slot, GFN) == PG_LEVEL_4K
    assert kvm.mm.mem.reads == []


def test_private_memory_ignores_the_host():
    kvm, slot = vm(npages=PAGES_2M, backing="4K")
    assert L.__kvm_mmu_max_mapping_level(kvm, slot, GFN, PG_LEVEL_2M, True) == PG_LEVEL_2M
    assert L.__kvm_mmu_max_mapping_level(kvm, slot, GFN, PG_LEVEL_2M, False) == PG_LEVEL_4K


def test_max_huge_page_level_caps_the_level():
    kvm, slot = vm(npages=PAGES_1G, backing="1G")
    assert L.kvm_mmu_max_mapping_level(kvm, slot, GFN) == PG_LEVEL_1G
    kvm.max_huge_page_level = PG_LEVEL_2M
    assert L.kvm_mmu_max_mapping_level(kvm, slot, GFN) == PG_LEVEL_2M


# -- kvm_mmu_hugepage_adjust --------------------------------------------------------

def test_dirty_logging_means_4k():
    kvm, slot = vm(backing="2M", flags=KVM_MEM_LOG_DIRTY_PAGES)
    assert L.kvm_page_fault(kvm, GFN + 5)[1].goal_level == PG_LEVEL_4K


def test_nx_workaround_keeps_req_level_but_maps_4k():
    kvm, slot = vm(backing="2M")
    ret, fault = L.kvm_page_fault(kvm, GFN + 5, exec=True, nx_huge_page_workaround_enabled=True)
    assert fault.huge_page_disallowed and fault.req_level == PG_LEVEL_2M
    assert fault.goal_level == PG_LEVEL_4K and fault.pfn & 511 == 5


def test_shadowed_gfn_is_4k():
    kvm, slot = vm(backing="2M")
    kvm_mmu_gfn_disallow_lpage(slot, GFN + 5)
    assert L.kvm_page_fault(kvm, GFN + 6)[1].goal_level == PG_LEVEL_4K
    assert "kvm_mmu_gfn_disallow_lpage() was called 1 time(s)" in \
        L.lpage_disallow_reasons(slot, GFN + 6, PG_LEVEL_2M)[0]


def test_adjust_masks_the_pfn_and_reports_a_mismatch_as_vm_bug_on():
    kvm, slot = vm(backing="2M")
    fault = L.KvmPageFault(GFN + 5, slot)
    fault.pfn = 0x40005
    L.kvm_mmu_hugepage_adjust(kvm, fault)
    assert (fault.goal_level, fault.pfn) == (PG_LEVEL_2M, 0x40000) and not kvm.warnings
    bad = L.KvmPageFault(GFN + 5, slot)
    bad.pfn = 0x40006
    L.kvm_mmu_hugepage_adjust(kvm, bad)
    assert kvm.warnings and kvm.warnings[0].startswith("VM_BUG_ON")


def test_max_level_4k_and_missing_pfn_stay_4k():
    kvm, slot = vm(backing="2M")
    fault = L.KvmPageFault(GFN, slot, max_level=PG_LEVEL_4K)
    fault.pfn = 0x40000
    L.kvm_mmu_hugepage_adjust(kvm, fault)
    assert fault.goal_level == PG_LEVEL_4K
    nopfn = L.KvmPageFault(GFN, slot)
    L.kvm_mmu_hugepage_adjust(kvm, nopfn)
    assert nopfn.goal_level == PG_LEVEL_4K


# -- the fault-side protocol ---------------------------------------------------------

def test_fault_on_an_unmapped_host_page_retries():
    slot = KvmMemorySlot(0, GFN, 16, HVA)
    kvm = Kvm(KvmMemslots([slot]))
    assert L.kvm_page_fault(kvm, GFN)[0] == RET_PF_RETRY


def test_fault_during_an_invalidation_of_its_gfn_retries_before_gup():
    kvm, slot = vm(backing="4K")
    kvm.mmu_invalidate_in_progress = 1
    kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = GFN, GFN + 1
    ret, fault = L.kvm_page_fault(kvm, GFN)
    assert ret == RET_PF_RETRY and fault.pfn is None
    assert L.kvm_page_fault(kvm, GFN + 1)[0] == RET_PF_FIXED


def test_fault_after_collapse_maps_2m():
    kvm, slot = vm(npages=PAGES_2M, backing="4K")
    assert L.kvm_page_fault(kvm, GFN + 3)[1].goal_level == PG_LEVEL_4K
    collapse_huge_page(kvm, HVA)
    assert kvm.mappings.items() == []          # the collapse zapped KVM's 4K mapping
    assert L.kvm_page_fault(kvm, GFN + 3)[1].goal_level == PG_LEVEL_2M


# -- bad input ------------------------------------------------------------------------

def test_gfn_outside_any_slot():
    kvm, slot = vm()
    with pytest.raises(ValueError, match="not in any memslot"):
        L.kvm_page_fault(kvm, GFN - 1)
    with pytest.raises(ValueError, match="outside slot 0"):
        L.host_pfn_mapping_level(kvm, GFN + 1024, slot)
    with pytest.raises(ValueError, match="not in any memslot"):
        L.explain_mapping_level(kvm, 5)


def test_wrong_types_and_levels():
    kvm, slot = vm()
    with pytest.raises(TypeError, match="slot must be a KvmMemorySlot"):
        L.host_pfn_mapping_level(kvm, GFN, "slot 0")
    with pytest.raises(TypeError, match="gfn must be an integer"):
        L.host_pfn_mapping_level(kvm, "0x100000", slot)
    with pytest.raises(ValueError, match="max_level must be in"):
        L.__kvm_mmu_max_mapping_level(kvm, slot, GFN, 7, False)
    with pytest.raises(ValueError, match="level must be in"):
        L.lpage_disallow_reasons(slot, GFN, PG_LEVEL_4K)
    with pytest.raises(ValueError, match="max_level must be in"):
        L.KvmPageFault(GFN, slot, max_level=4)


def test_misaligned_host_address_is_refused():
    with pytest.raises(ValueError, match="userspace_addr must be 4 KiB aligned"):
        L.make_host_vm(GFN, 16, HVA + 8, "4K", GFN)
    with pytest.raises(ValueError, match="backing must be one of"):
        L.make_host_vm(GFN, 16, HVA, "8K", GFN)
    with pytest.raises(ValueError, match="event must be one of"):
        L.make_host_vm(GFN, 16, HVA, "4K", GFN, event="reboot")


# -- the explanation, the widget view, the figure data, the exercises -----------------

def test_explanation_agrees_with_the_fault():
    kvm = L.make_host_vm(GFN, 0x400, HVA, "2M", GFN + 0x123)
    d = L.explain_mapping_level(kvm, GFN + 0x123)
    assert (d.level, d.host_level, d.slot_level, d.ret) == (2, 2, 2, "RET_PF_FIXED")
    assert d.mapped_pfn == d.pfn & ~511
    assert [w for w, _ in d.steps] == ["memslot", "start", "lpage_info 1G", "lpage_info 2M",
                                       "host walk", "pfn", "result"]


@pytest.mark.parametrize("kwargs,error", [
    (dict(gfn=""), "gfn is empty"),
    (dict(gfn="0x"), "is not a number"),
    (dict(gfn="-1"), "gfn must be in"),
    (dict(gfn="0x1000000000000"), "gfn must be in"),
    (dict(npages="0"), "npages must be in"),
    (dict(userspace_addr="0x7f0000000001"), "4 KiB aligned"),
    (dict(userspace_addr="0x800000000000"), "userspace_addr must be in"),
    (dict(backing="3M"), "backing must be one of"),
    (dict(event="boom"), "event must be one of"),
    (dict(gfn="0x0"), "outside slot 0"),
    (dict(backing="2M", event="the host migrates the page"), "found a 2M leaf above it"),
    (dict(dirty_logging="yes"), "dirty_logging must be True or False"),
    (dict(gfn=None), "gfn must be an integer"),
    (dict(gfn=object()), "gfn must be an integer"),
    (dict(base_gfn=[1]), "base_gfn must be an integer"),
])
def test_widget_view_never_raises_and_explains_bad_input(kwargs, error):
    view = host_mapping_view(**kwargs)
    assert view.error is not None and error in view.error
    assert "error:" in view.html() and view.level is None


@pytest.mark.parametrize("backing,event,level", [
    ("4K", "none", "4K"), ("2M", "none", "2M"), ("4K", "khugepaged collapses the 2M around it", "2M"),
    ("2M", "the host splits the THP", "4K"), ("2M", "the host promotes the 1G around it", "2M"),
])
def test_widget_view_levels(backing, event, level):
    view = host_mapping_view(backing=backing, event=event)
    assert view.error is None and view.level == level
    assert f'<b class="kvmmu-hostlevel-level">{level}</b>' in view.html()


def test_widget_view_extremes():
    assert host_mapping_view(gfn="0xffffffffff", base_gfn="0xffffffffff", npages="1",
                             userspace_addr="0x7ffffffff000", backing="4K").level == "4K"
    assert host_mapping_view(gfn="0", base_gfn="0", npages="0x40000", userspace_addr="0",
                             backing="1G").level == "1G"
    assert host_mapping_view(exec_nx=True).level == "4K"


def test_widget_builds():
    from kvmmu.viz.host_level import host_mapping_widget
    box = host_mapping_widget(backing="4K")
    assert "kvmmu-hostlevel-widget" in box._dom_classes
    with pytest.raises(TypeError, match="unknown arguments"):
        host_mapping_widget(colour="red")


def test_figure_data_marks_the_entries_each_walk_read():
    slot = KvmMemorySlot(0, GFN, 0x400, HVA)
    kvm = Kvm(KvmMemslots([slot]))
    host_populate(kvm.mm, HVA, 0x200, "2M")
    host_populate(kvm.mm, HVA + (2 << 20), 0x200, "4K")
    data = host_walk_data(kvm, [GFN + 1, GFN + 0x201])
    assert [w["level"] for w in data["walks"]] == ["2M", "4K"]
    assert [len(w["path"]) for w in data["walks"]] == [3, 3]
    pmd = next(t for t in data["tables"] if t["name"] == "PMD")
    assert [(i, r) for i, _, r in pmd["rows"]] == [(0, [0]), (1, [1])]
    pte = next(t for t in data["tables"] if t["name"] == "PTE")
    assert pte["hidden"] == 509 and all(not r for _, _, r in pte["rows"])
    assert "read by walk 0, 1" in host_walk_text(data)
    with pytest.raises(ValueError, match="not in any memslot"):
        host_walk_data(kvm, [5])


def test_exercises_are_seeded_and_answered_by_the_model():
    p = problem(7)
    assert p.question.startswith("Seed 7:") and p.question == problem(7).question
    assert problem(8).question != p.question
    for seed in range(25):
        q = problem(seed)
        assert q.solution().split(".")[0] in ("4K", "2M", "1G")
        assert f"-> {q.solution().split('.')[0]} (RET_PF_FIXED)" in q.solution()
    with pytest.raises(ValueError, match="seed must be in"):
        problem(-1)


# -- the races: every scenario's exhaustive verdict -------------------------------------

@pytest.mark.parametrize("name", list(R.SCENARIOS))
def test_exhaustive_verdicts(name):
    factory, must_hold = R.SCENARIOS[name]
    result = explore(factory())
    assert result.violated != must_hold, result.summary()
    if must_hold:
        assert result.exhaustive and result.complete_runs >= 1
    # The actors hold no object from inside the world across a step and read
    # shared state only in steps, so the snapshot engine runs them (no fallback).
    assert result.note == "", result.note


@pytest.mark.parametrize("name", ["walk: re-reads entries", "rule 1 vs collapse",
                                  "rule 3 hint vs split"])
def test_snapshot_and_replay_explore_the_same_states(name):
    factory, _ = R.SCENARIOS[name]
    a = explore(factory(), stop_at_first=False)
    b = explore(factory(), stop_at_first=False, method="replay")
    assert (a.states, a.transitions, a.violated) == (b.states, b.transitions, b.violated)


def test_rereading_walker_reads_the_1g_page_as_a_pmd_table():
    result = explore(R.walk_vs_promotion("re-reads entries"))
    bad = result.counterexample.steps[-1]
    assert bad.label == f"READ_ONCE(*pmdp) -> {GUEST_DATA_WORD:#x}"
    assert "1G data folio" in bad.state["host"]


def test_irqs_on_walker_reads_a_freed_table():
    result = explore(R.walk_vs_promotion("IRQs on"))
    assert "PMD table (freed)" in result.counterexample.steps[-1].state["host"]


def test_safe_walker_returns_the_level_before_or_after():
    result, outcomes = R.final_outcomes(R.walk_vs_promotion())
    assert not result.violated
    assert sorted(dict(k)["A"] for k in outcomes) == [PG_LEVEL_4K, PG_LEVEL_1G]


def test_rule1_retries_where_the_unchecked_fault_maps_freed_memory():
    sched = "AAAA" + "B" * 14 + "A" * 9
    bad = run_schedule(R.fault_vs_host("no check", "migrate"), sched)
    assert bad.violation == "KVM maps what the host maps"
    good = run_schedule(R.fault_vs_host("rule 1", "migrate"), sched[:-6], complete=True)
    assert good.violation is None and good.results["A"] == "RET_PF_RETRY"


def test_rule2_existing_mapping_can_promote_and_stays_correct():
    result, outcomes = R.final_outcomes(R.recovery_vs_split())
    assert not result.violated
    assert {dict(k)["A"] for k in outcomes} == {"promoted to 2M", "no 4K mapping: nothing to do"}


def test_split_during_explain():
    kvm, slot = vm(npages=PAGES_2M, backing="2M")
    __split_huge_pmd(kvm, HVA)
    assert L.explain_mapping_level(kvm, GFN).level == PG_LEVEL_4K
