"""host_pfn_mapping_level() and its rules on the one VM: unit, property and exhaustive checks."""
import check_actor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmmu.cpu import run_alone
from kvmmu.errno import RET_PF_FIXED
from kvmmu.explorer import Op, explore, run_schedule
from kvmmu.exercises.host_level import problem
from kvmmu.host_mm import (BACKINGS, GUEST_DATA_WORD, __split_huge_pmd,
                           collapse_huge_page, host_populate, host_translation)
from kvmmu.kvm_host import KvmVcpu
from kvmmu.kvm_main import kvm_create_vm, kvm_vm_ioctl_create_vcpu, set_memory_region
from kvmmu.levels import KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K
from kvmmu.memslots import KVM_MEM_LOG_DIRTY_PAGES, kvm_mmu_gfn_disallow_lpage, lpage_info_slot
from kvmmu.mmu import kvm_mmu_do_page_fault, kvm_mmu_reload
from kvmmu.mmu_internal import (HOST_LEVELS, KvmPageFault,
                                __kvm_mmu_max_mapping_level, host_pfn_mapping_level,
                                kvm_mmu_hugepage_adjust, kvm_mmu_max_mapping_level)
from kvmmu.pferr import PFERR_FETCH_MASK, PFERR_GUEST_FINAL_MASK
from kvmmu.scenarios import all_scenarios
from kvmmu.scenarios import host_level as R
from kvmmu.viz.host_level import (explain_mapping_level, host_mapping_view,
                                  host_walk_data, host_walk_text,
                                  lpage_disallow_reasons)

GFN = 0x100000
HVA = 0x7F0000000000
PAGES_2M = KVM_PAGES_PER_HPAGE(PG_LEVEL_2M)
PAGES_1G = KVM_PAGES_PER_HPAGE(PG_LEVEL_1G)


def vm(npages=1024, backing="2M", base=GFN, ua=HVA, flags=0, populate=True, **config):
    kvm = kvm_create_vm(**config)
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    assert set_memory_region(kvm, 0, base << PAGE_SHIFT, npages << PAGE_SHIFT, ua,
                             flags=flags) == 0
    if populate:
        host_populate(kvm.mm, ua, npages, backing)
    kvm_mmu_reload(vcpu)
    return kvm, kvm.kvm_memslots().slots[0]


def level_of(kvm, gfn, slot):
    return run_alone(kvm, host_pfn_mapping_level(kvm, gfn, slot))


def fault(kvm, gfn, exec=False, max_level=None):
    """Fault ``gfn`` in on vCPU 0; return (r, the level mapped)."""
    error_code = PFERR_GUEST_FINAL_MASK | (PFERR_FETCH_MASK if exec else 0)
    return run_alone(kvm, kvm_mmu_do_page_fault(KvmVcpu(kvm, 0), gfn << PAGE_SHIFT, error_code,
                                                False, max_level))


def step_labels(kvm, gen):
    """The steps CPU code takes when it runs alone (what each yields, in order)."""
    labels, value = [], None
    try:
        while True:
            op = gen.send(value)
            labels.append(op.what())
            value = op.run(op.prim, op.args, "A", kvm) if type(op) is Op else None
            labels[-1] = op.label(value, "A", kvm).split(" -> ")[0]
    except StopIteration:
        return labels


# -- host_pfn_mapping_level ----------------------------------------------------------

@pytest.mark.parametrize("backing,level", [("4K", 1), ("2M", 2), ("1G", 3)])
def test_returns_the_host_level(backing, level):
    kvm, slot = vm(npages=PAGES_2M, backing=backing)
    assert level_of(kvm, GFN + 0x23, slot) == level


def test_1g_pud_leaf_wins_whatever_the_pmd_slot_holds():
    kvm, slot = vm(npages=PAGES_2M, backing="1G")
    kvm.mm.mem.reads.clear()
    assert level_of(kvm, GFN, slot) == PG_LEVEL_1G
    # the walk stops at the PUD: the "PMD" under a 1G leaf is data and is never read
    assert [lv for _, lv, _ in kvm.mm.mem.reads] == [4, 3]
    assert not kvm.mm.mem.bad_reads


def test_each_level_is_read_exactly_once():
    kvm, slot = vm(npages=PAGES_2M, backing="4K")
    kvm.mm.mem.reads.clear()
    level_of(kvm, GFN + 7, slot)
    ptrs = [p for p, _, _ in kvm.mm.mem.reads]
    assert [lv for _, lv, _ in kvm.mm.mem.reads] == [4, 3, 2]
    assert len(set(ptrs)) == len(ptrs) == 3


def test_unmapped_host_address_is_4k_without_touching_data():
    kvm, slot = vm(npages=16, populate=False)
    assert level_of(kvm, GFN, slot) == PG_LEVEL_4K
    assert not kvm.mm.mem.bad_reads


def test_interrupts_are_off_during_the_walk_and_back_on_after():
    kvm, slot = vm(npages=PAGES_2M, backing="2M")
    labels = step_labels(kvm, host_pfn_mapping_level(kvm, GFN, slot))
    assert labels == ["local_irq_save()", "READ_ONCE(*pgdp)", "READ_ONCE(*pudp)",
                      "READ_ONCE(*pmdp)", "local_irq_restore()"]
    assert kvm.mm.rcu.readers == ()


_layouts = st.tuples(
    st.integers(0, 7),                          # base gfn in 2M pages past a 1G boundary
    st.integers(0, 511),                        # extra pages of misalignment
    st.sampled_from([1, 200, 512, 513, 1024, 1500]),
    st.sampled_from([0, 0, 1, 0x100]),          # host address offset in pages
    st.sampled_from(sorted(BACKINGS)),
    st.integers(0, 10 ** 6),                    # which gfn (mod npages)
)


@settings(max_examples=40, deadline=None)
@given(_layouts)
def test_level_is_one_of_three_and_never_exceeds_any_rule(layout):
    k2m, off, npages, ua_off, backing, pick = layout
    base = 4 * PAGES_1G + k2m * PAGES_2M + (off if off % 3 == 0 else 0)
    ua = HVA + ((base % PAGES_1G + ua_off) << PAGE_SHIFT)
    kvm, slot = vm(npages=npages, base=base, ua=ua, populate=False)
    gfn = base + pick % npages
    hva = ua + ((gfn - base) << PAGE_SHIFT)
    host_populate(kvm.mm, hva, 1, backing)
    host = level_of(kvm, gfn, slot)
    assert host in HOST_LEVELS
    ret, level = fault(kvm, gfn)
    assert ret == RET_PF_FIXED
    assert level <= host                                        # the host level
    assert all(lpage_info_slot(gfn, slot, lv) == 0 for lv in range(2, level + 1))  # disallow_lpage
    mask = KVM_PAGES_PER_HPAGE(level) - 1
    assert (base & mask) == ((ua >> PAGE_SHIFT) & mask)         # the alignment rule
    # level = min(host, the first level <= 1G that the slot allows)
    first = next(lv for lv in (3, 2, 1) if lv == 1 or lpage_info_slot(gfn, slot, lv) == 0)
    assert level == min(host, first)
    # The one leaf KVM installed maps the gfn to the page the host maps there.
    assert R.kvm_leaf_of(kvm, gfn) == (level, host_translation(kvm.mm, hva)[0])
    assert R.kvm_maps_what_host_maps(kvm) and not kvm.warnings


def test_513_page_slot_maps_its_last_page_4k():
    # The pre_fault selftest layout: 513 pages at a 2M-aligned gfn.
    kvm, slot = vm(npages=513, backing="2M")
    assert run_alone(kvm, kvm_mmu_max_mapping_level(kvm, slot, GFN + 511)) == PG_LEVEL_2M
    assert run_alone(kvm, kvm_mmu_max_mapping_level(kvm, slot, GFN + 512)) == PG_LEVEL_4K
    assert lpage_disallow_reasons(slot, GFN + 512, PG_LEVEL_2M) == [
        "the slot ends at gfn 0x100201, inside the 2M page [0x100200, 0x100400)"]


def test_max_level_skips_the_host_walk_when_the_slot_says_4k():
    kvm, slot = vm(npages=PAGES_2M, backing="2M", ua=HVA + 0x1000)
    kvm.mm.mem.reads.clear()
    assert run_alone(kvm, kvm_mmu_max_mapping_level(kvm, slot, GFN)) == PG_LEVEL_4K
    assert kvm.mm.mem.reads == []


def test_private_memory_ignores_the_host():
    kvm, slot = vm(npages=PAGES_2M, backing="4K")
    assert run_alone(kvm, __kvm_mmu_max_mapping_level(kvm, slot, GFN, PG_LEVEL_2M, True)) \
        == PG_LEVEL_2M
    assert run_alone(kvm, __kvm_mmu_max_mapping_level(kvm, slot, GFN, PG_LEVEL_2M, False)) \
        == PG_LEVEL_4K


def test_max_huge_page_level_caps_the_level():
    kvm, slot = vm(npages=PAGES_1G, backing="1G")
    assert run_alone(kvm, kvm_mmu_max_mapping_level(kvm, slot, GFN)) == PG_LEVEL_1G
    kvm, slot = vm(npages=PAGES_1G, backing="1G", max_huge_page_level=PG_LEVEL_2M)
    assert run_alone(kvm, kvm_mmu_max_mapping_level(kvm, slot, GFN)) == PG_LEVEL_2M


# -- kvm_mmu_hugepage_adjust --------------------------------------------------------

def test_dirty_logging_means_4k():
    kvm, _ = vm(backing="2M", flags=KVM_MEM_LOG_DIRTY_PAGES)
    assert fault(kvm, GFN + 5) == (RET_PF_FIXED, PG_LEVEL_4K)


def test_nx_workaround_keeps_req_level_but_maps_4k():
    kvm, slot = vm(backing="2M", nx_huge_pages=True)
    assert fault(kvm, GFN + 5, exec=True) == (RET_PF_FIXED, PG_LEVEL_4K)
    assert R.kvm_leaf_of(kvm, GFN + 5)[1] & 511 == 5
    f = KvmPageFault(addr=(GFN + 5) << PAGE_SHIFT, error_code=PFERR_FETCH_MASK, prefetch=False,
                     nx_huge_page_workaround_enabled=True, slot=slot, pfn=0x40005)
    run_alone(kvm, kvm_mmu_hugepage_adjust(KvmVcpu(kvm, 0), f))
    assert f.huge_page_disallowed and f.req_level == PG_LEVEL_2M
    assert f.goal_level == PG_LEVEL_4K and f.pfn == 0x40005
    # A data access of the same VM still maps 2M.
    assert fault(kvm, GFN + 0x205) == (RET_PF_FIXED, PG_LEVEL_2M)


def test_shadowed_gfn_is_4k():
    kvm, slot = vm(backing="2M")
    kvm.kvm_memslots().replace(slot, kvm_mmu_gfn_disallow_lpage(slot, GFN + 5))
    assert fault(kvm, GFN + 6) == (RET_PF_FIXED, PG_LEVEL_4K)
    assert "kvm_mmu_gfn_disallow_lpage() was called 1 time(s)" in \
        lpage_disallow_reasons(kvm.kvm_memslots().slots[0], GFN + 6, PG_LEVEL_2M)[0]


def _adjusted(kvm, slot, pfn, **kw):
    f = KvmPageFault(addr=(GFN + 5) << PAGE_SHIFT, error_code=0, prefetch=False, slot=slot,
                     pfn=pfn, **kw)
    run_alone(kvm, kvm_mmu_hugepage_adjust(KvmVcpu(kvm, 0), f))
    return f


def test_adjust_masks_the_pfn_and_reports_a_mismatch_as_vm_bug_on():
    kvm, slot = vm(backing="2M")
    good = _adjusted(kvm, slot, 0x40005)
    assert (good.goal_level, good.pfn) == (PG_LEVEL_2M, 0x40000) and not kvm.warnings
    _adjusted(kvm, slot, 0x40006)
    assert kvm.warnings and kvm.warnings[0].startswith("VM_BUG_ON")


def test_max_level_4k_and_missing_pfn_stay_4k():
    kvm, slot = vm(backing="2M")
    assert _adjusted(kvm, slot, 0x40000, max_level=PG_LEVEL_4K).goal_level == PG_LEVEL_4K
    assert _adjusted(kvm, slot, None).goal_level == PG_LEVEL_4K


# -- the fault-side protocol ---------------------------------------------------------

def test_a_fault_on_a_host_address_nothing_maps_yet_faults_a_zeroed_page_in():
    kvm, _ = vm(npages=16, populate=False)
    assert fault(kvm, GFN) == (RET_PF_FIXED, PG_LEVEL_4K)
    pfn, level = host_translation(kvm.mm, HVA)
    assert level == PG_LEVEL_4K and R.kvm_leaf_of(kvm, GFN) == (PG_LEVEL_4K, pfn)
    assert kvm.mm.mem.read_data(pfn, 0) == 0


def test_a_fault_during_an_invalidation_of_its_gfn_retries_before_gup():
    kvm, _ = vm(backing="4K")
    kvm.mmu_invalidate_in_progress = 1
    kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = GFN, GFN + 1
    labels = step_labels(kvm, kvm_mmu_do_page_fault(KvmVcpu(kvm, 0), GFN << PAGE_SHIFT,
                                                    PFERR_GUEST_FINAL_MASK, False))
    assert labels[-1] == "mmu_invalidate_retry_gfn_unsafe?" and "gup" not in " ".join(labels)
    assert fault(kvm, GFN + 1) == (RET_PF_FIXED, PG_LEVEL_4K)


def test_a_fault_after_a_collapse_maps_2m():
    kvm, _ = vm(npages=PAGES_2M, backing="4K")
    assert fault(kvm, GFN + 3) == (RET_PF_FIXED, PG_LEVEL_4K)
    run_alone(kvm, collapse_huge_page(kvm.mm, HVA))
    assert R.kvm_leaf_of(kvm, GFN + 3) is None      # the collapse zapped KVM's 4K leaf
    assert fault(kvm, GFN + 3) == (RET_PF_FIXED, PG_LEVEL_2M)
    assert R.kvm_maps_what_host_maps(kvm) and not kvm.warnings


# -- huge pages again, under mmu_lock held for read ----------------------------------

def _recovery_world():
    return R.host_level_world(backing="2M", kvm_maps=PG_LEVEL_4K, touched=False)


def test_recovery_replaces_the_4k_table_with_a_2m_leaf_from_its_leaf():
    kvm = _recovery_world()
    assert R.kvm_leaf_of(kvm, R.FAULT_GFN)[0] == PG_LEVEL_4K
    run_alone(kvm, R.recover_huge_pages(kvm))
    level, pfn = R.kvm_leaf_of(kvm, R.FAULT_GFN)
    assert (level, pfn) == (PG_LEVEL_2M, host_translation(kvm.mm, R.FAULT_HVA)[0])
    assert R.kvm_maps_what_host_maps(kvm) and not kvm.warnings


def test_recovery_finds_no_leaf_after_the_notifier_zapped_it():
    kvm = _recovery_world()
    run_alone(kvm, __split_huge_pmd(kvm.mm, HVA))     # zaps the 4K leaf, keeps the table
    run_alone(kvm, R.recover_huge_pages(kvm))
    assert R.kvm_leaf_of(kvm, R.FAULT_GFN) is None and not kvm.warnings


def test_recovery_with_dirty_logging_on_is_a_warning():
    from kvmmu.mmu import kvm_mmu_recover_huge_pages
    kvm, slot = vm(backing="2M", flags=KVM_MEM_LOG_DIRTY_PAGES)
    run_alone(kvm, kvm_mmu_recover_huge_pages(kvm, slot))
    assert kvm.warnings == ("WARN_ON_ONCE: recover_huge_pages_range with dirty logging on",)


def test_the_612_collapsible_zap_zaps_the_table_and_the_next_fault_maps_2m():
    kvm = _recovery_world()
    run_alone(kvm, R.zap_collapsible(kvm))
    assert R.kvm_leaf_of(kvm, R.FAULT_GFN) is None
    assert fault(kvm, R.FAULT_GFN) == (RET_PF_FIXED, PG_LEVEL_2M)
    assert not kvm.warnings


# -- bad input ------------------------------------------------------------------------

def test_gfn_outside_any_slot():
    kvm, slot = vm()
    with pytest.raises(ValueError, match="outside slot 0"):
        run_alone(kvm, host_pfn_mapping_level(kvm, GFN + 1024, slot))
    with pytest.raises(ValueError, match="not in any memslot"):
        explain_mapping_level(kvm, 5)


def test_wrong_types_and_levels():
    kvm, slot = vm()
    with pytest.raises(TypeError, match="slot must be a KvmMemorySlot"):
        next(host_pfn_mapping_level(kvm, GFN, "slot 0"))
    with pytest.raises(TypeError, match="gfn must be an integer"):
        next(host_pfn_mapping_level(kvm, "0x100000", slot))
    with pytest.raises(ValueError, match="max_level must be in"):
        next(__kvm_mmu_max_mapping_level(kvm, slot, GFN, 7, False))
    with pytest.raises(ValueError, match="level must be in"):
        lpage_disallow_reasons(slot, GFN, PG_LEVEL_4K)
    with pytest.raises(ValueError, match="max_level must be in"):
        KvmPageFault(addr=0, error_code=0, prefetch=False, max_level=4)


def test_make_host_vm_refuses_bad_arguments():
    with pytest.raises(ValueError, match="userspace_addr must be 4 KiB aligned"):
        R.make_host_vm(GFN, 16, HVA + 8, "4K", GFN)
    with pytest.raises(ValueError, match="backing must be one of"):
        R.make_host_vm(GFN, 16, HVA, "8K", GFN)
    with pytest.raises(ValueError, match="event must be one of"):
        R.make_host_vm(GFN, 16, HVA, "4K", GFN, event="reboot")
    with pytest.raises(ValueError, match="outside slot 0"):
        R.make_host_vm(GFN, 16, HVA, "4K", GFN + 16)


# -- the explanation, the widget view, the figure data, the exercises -----------------

def test_explanation_agrees_with_the_fault():
    kvm = R.make_host_vm(GFN, 0x400, HVA, "2M", GFN + 0x123)
    d = explain_mapping_level(kvm, GFN + 0x123)
    assert (d.level, d.host_level, d.slot_level, d.ret) == (2, 2, 2, "RET_PF_FIXED")
    assert d.mapped_pfn == d.pfn & ~511
    assert [w for w, _ in d.steps] == ["memslot", "start", "lpage_info 1G", "lpage_info 2M",
                                       "host walk", "pfn", "result"]
    assert R.kvm_leaf_of(kvm, GFN + 0x123) == (PG_LEVEL_2M, d.pfn)


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
    ("4K", "the host migrates the page", "4K"),
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
    kvm, _ = vm(npages=0x400, populate=False)
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


def test_figure_is_drawn_for_the_column_and_legible():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kvmmu.viz.host_level import host_walk_figure
    from kvmmu.viz.style import COLUMN_IN, DPI, legibility

    kvm, _ = vm(npages=0x600, populate=False)
    host_populate(kvm.mm, HVA, 0x200, "2M")
    host_populate(kvm.mm, HVA + (2 << 20), 0x200, "4K")
    host_populate(kvm.mm, HVA + (4 << 20), 0x200, "2M")
    fig = host_walk_figure(kvm, [GFN + 0x123, GFN + 0x345])
    try:
        assert (fig.get_figwidth(), fig.dpi) == (COLUMN_IN, DPI)
        assert legibility(fig) == []
        assert fig.get_figheight() < 4.5          # no empty band below the tables
    finally:
        plt.close(fig)


def test_printed_views_fit_the_column():
    kvm = R.make_host_vm(GFN, 0x400, HVA + 0x1000, "2M", GFN + 0x123, shadowed=True)
    text = explain_mapping_level(kvm, GFN + 0x123).text()
    assert max(map(len, text.splitlines())) <= 84 and "disagree modulo 2M" in text
    decision = explain_mapping_level(kvm, GFN + 0x123)
    assert len(decision.text(wrap=False).splitlines()) == 1 + len(decision.steps)
    for view in (host_mapping_view(), host_mapping_view(userspace_addr="0x7f0000000800"),
                 host_mapping_view(gfn="0x1003ff", backing="4K",
                                   event="khugepaged collapses the 2M around it")):
        assert max(map(len, str(view).splitlines())) <= 84


def test_split_during_explain():
    kvm, _ = vm(npages=PAGES_2M, backing="2M")
    run_alone(kvm, __split_huge_pmd(kvm.mm, HVA))
    assert explain_mapping_level(kvm, GFN).level == PG_LEVEL_4K


# -- the races: every scenario's exhaustive verdict -------------------------------------

CHAPTER_2 = {name: e for name, e in all_scenarios().items() if e.chapter == 2}


def test_the_chapter_scenarios_are_all_listed():
    assert set(CHAPTER_2) == set(R.SCENARIOS)


@pytest.mark.parametrize("name", list(R.SCENARIOS))
def test_exhaustive_verdicts_on_the_snapshot_engine(name):
    entry = R.SCENARIOS[name]
    result = explore(entry.build())
    assert result.violated == (entry.expect == "violated"), result.summary()
    if entry.expect == "holds":
        assert result.exhaustive and result.complete_runs >= 1
    # The actors read shared state only in steps and keep handles and values
    # across them, so the snapshot engine runs them (no replay fallback).
    assert result.method == "snapshot" and result.note == "", result.note


@pytest.mark.parametrize("name", ["walk-rereads", "walk-twice", "rule1-vs-migrate",
                                  "rule3-zap-vs-split"])
def test_snapshot_and_replay_explore_the_same_states(name):
    a = explore(R.SCENARIOS[name].build(), stop_at_first=False)
    b = explore(R.SCENARIOS[name].build(), stop_at_first=False, method="replay")
    assert (a.states, a.transitions, a.violated) == (b.states, b.transitions, b.violated)


@pytest.mark.parametrize("name", ["walk-rereads", "no-check-vs-collapse", "rule2-unchecked",
                                  "rule2-recovery-vs-split"])
def test_every_actor_rebuilds_to_the_same_state(name, capsys):
    sc = R.SCENARIOS[name].build()
    assert all(check_actor.check(sc, a.letter) for a in sc.actors), capsys.readouterr().out


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
    # The fault's lockless part (memslot lookup, the snapshot, the pre-check,
    # gup, the pre-check again), then the host's whole migration, then the rest.
    world = R.host_level_world()
    host_steps = len(step_labels(world, R.host_migrates(world)))
    sched = "A" * 5 + "B" * host_steps
    bad = run_schedule(R.fault_vs_host("no check", "migrate"), sched, complete=True)
    assert bad.violation == "KVM maps what the host maps"
    good = run_schedule(R.fault_vs_host("rule 1", "migrate"), sched, complete=True)
    assert good.violation is None and good.results["A"] == "RET_PF_RETRY"


def test_rule2_recovery_either_promotes_or_finds_nothing_and_stays_correct():
    result, outcomes = R.final_outcomes(R.recovery_vs_split(), outcome=R.recovery_ending)
    assert not result.violated
    assert set(outcomes) == {"recovered a 2M leaf", "found no 4K leaf: nothing recovered"}


def test_rule3_zap_either_zaps_the_table_or_keeps_it_and_stays_correct():
    result, outcomes = R.final_outcomes(R.hint_vs_split(), outcome=R.zap_ending)
    assert not result.violated
    assert set(outcomes) == {"zapped the 4K table", "kept the 4K table"}


def test_scenario_builders_refuse_unknown_variants():
    with pytest.raises(ValueError, match="which"):
        R.walk_vs_promotion("twice")
    with pytest.raises(ValueError, match="consumer"):
        R.fault_vs_host("no lock")
    with pytest.raises(ValueError, match="host"):
        R.fault_vs_host("rule 1", "swap")
    with pytest.raises(TypeError, match="the world must be a Kvm"):
        next(R.fault_rule1("world"))


def test_three_cpu_checks_run_three_actors_on_the_kernel_code():
    for name, kernel in [("walk-twice", R.walker), ("rule1-twice-vs-migrate", R.fault_rule1),
                         ("rule2-twice", R.rule2_checked)]:
        sc = R.SCENARIOS[name].build()
        assert len(sc.actors) == 3 and sc.actors[0].fn is kernel
        assert R.OMITS[name] == "nothing"
    world = R.SCENARIOS["rule1-twice-vs-migrate"].build().world()
    assert len(world.vcpus) == 2
    with pytest.raises(ValueError, match="vcpu_id"):
        next(R.fault_rule1(world, 2))


def test_two_faults_both_map_or_retry_and_agree_with_the_host():
    result, outcomes = R.final_outcomes(R.two_faults_vs_host("migrate"))
    assert not result.violated and result.exhaustive
    # Each fault maps the page, finds it mapped (spurious) or retries; never
    # both spurious, and the host's migration always ends.
    endings = {(dict(k)["A"], dict(k)["B"]) for k in outcomes}
    fixed, retry, spurious = "RET_PF_FIXED", "RET_PF_RETRY", "RET_PF_SPURIOUS"
    assert endings == {(fixed, fixed), (fixed, retry), (fixed, spurious),
                       (retry, fixed), (retry, retry), (spurious, fixed)}


def test_verdicts_table_lists_every_scenario_with_its_expected_verdict():
    from kvmmu.viz.host_level import verdict_table

    rows = R.verdicts()
    assert [r.name for r in rows] == list(R.SCENARIOS) == list(R.OMITS)
    for r in rows:
        assert r.violated == (R.SCENARIOS[r.name].expect == "violated"), r
        assert (r.omits == "nothing") == (not r.violated)
        assert r.cpus == len(R.SCENARIOS[r.name].build().actors)
    table = verdict_table(rows)
    assert max(map(len, table.splitlines())) <= 84
    assert "BAD READ" in table and "STALE MAPPING" in table
    with pytest.raises(ValueError, match="names"):
        R.verdicts(["nonsense"])


def test_race_tables_show_the_faulting_gfn_and_the_invalidation():
    bad = explore(R.fault_vs_host("no check", "migrate")).counterexample
    assert bad.initial["KVM"] == "no leaf" and bad.initial["invalidating"] == "none"
    assert bad.steps[-1].state["KVM"] == "4K leaf -> pfn 0x40023"
    assert any(s.state["invalidating"] == "1 on [0x100023, 0x100024)" for s in bad.steps)
