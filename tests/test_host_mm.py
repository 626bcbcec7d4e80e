"""The host page tables: entry format, walks, typed memory, and the mm operations as CPU code."""
import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmmu import host_mm as H
from kvmmu.cpu import ModelHang, run_alone
from kvmmu.explorer import Op, World, step
from kvmmu.kvm_host import KVM_PFN_ERR_FAULT, hva_to_pfn
from kvmmu.kvm_main import kvm_create_vm, kvm_vm_ioctl_create_vcpu, set_memory_region
from kvmmu.levels import PAGE_SHIFT, PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K
from kvmmu.mmu import kvm_mmu_page_fault, kvm_mmu_reload
from kvmmu.pferr import PFERR_GUEST_FINAL_MASK

HVA = 0x7F0000000000


def host(backing="4K", npages=512, hva=HVA):
    """A world holding one host mm (no KVM), populated with ``backing``."""
    world = World()
    mm = H.HostMm(world)
    H.host_populate(mm, hva, npages, backing)
    return world, mm


def run_traced(world, gen, cpu="A"):
    """Run CPU code alone like run_alone, and return (result, the labels of its steps)."""
    labels, value = [], None
    try:
        while True:
            op = gen.send(value)
            value = op.run(op.prim, op.args, cpu, world) if type(op) is Op else None
            labels.append(op.label(value, cpu, world))
    except StopIteration as stop:
        return stop.value, labels


class Recorder:
    """A notifier subscriber that records what it is told, one step each."""

    def __init__(self):
        self.events = []

    def start(self, sub, start, end):
        yield from step("start", lambda: self.events.append(("start", start, end)))

    def end(self, sub, start, end):
        yield from step("end", lambda: self.events.append(("end", start, end)))

    def subscribe(self, mm):
        mm.notifier_subscriptions.append(
            H.MmuNotifier(H.MmuNotifierOps(self.start, self.end), self))


# -- entry format and indices -------------------------------------------------

def test_indices_split_the_address_nine_bits_at_a_time():
    addr = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123
    assert (H.pgd_index(addr), H.pud_index(addr), H.pmd_index(addr), H.pte_index(addr)) == (3, 5, 7, 9)


def test_entries_encode_table_and_leaf():
    table = H.mk_table_entry(0x1234)
    assert H.entry_pfn(table) == 0x1234 and H.pmd_present(table) and not H.pmd_leaf(table)
    leaf = H.mk_leaf_entry(0x40000, PG_LEVEL_2M)
    assert H.pmd_leaf(leaf) and H.pud_leaf(H.mk_leaf_entry(0x40000, PG_LEVEL_1G))
    assert not H.pmd_leaf(H.mk_leaf_entry(0x40001, PG_LEVEL_4K))
    assert H.pmd_none(0) and H.pud_none(0) and H.pgd_none(0) and H.p4d_none(0)
    assert H.describe_entry(leaf, H.PMD) == "2M leaf @0x40000"
    assert H.describe_entry(table, H.PUD) == "PMD table @0x1234"
    assert H.describe_entry(0, H.PTE) == "none"


def test_guest_data_reads_as_a_present_huge_leaf():
    # Why a walker that mistakes data for a table believes it found a huge page.
    assert H.pmd_present(H.GUEST_DATA_WORD) and H.pmd_leaf(H.GUEST_DATA_WORD)


def test_p4d_is_folded_into_the_pgd():
    assert H.p4d_offset(0x1234067, HVA) == 0x1234067


def test_offsets_come_from_values_not_pointers():
    pud = H.mk_table_entry(0x2222)
    assert H.pmd_offset(pud, HVA + (5 << 21)) == H.EntryPtr(0x2222, 5)
    assert repr(H.EntryPtr(0x10, 3)) == "EntryPtr(pfn=0x10, index=3)"


# -- populate and translate ---------------------------------------------------

@pytest.mark.parametrize("backing,level", [("4K", 1), ("2M", 2), ("1G", 3)])
def test_populate_maps_at_the_backing_size(backing, level):
    _, mm = host(backing)
    pfn, found = H.host_translation(mm, HVA + (0x23 << PAGE_SHIFT))
    assert found == level
    assert H.host_level_truth(mm, HVA) == level
    # small pages sit where a split THP's would: pfn low bits = hva low bits
    assert pfn & 511 == 0x23


def test_populate_covers_a_misaligned_range_with_whole_thps():
    mm = H.HostMm(World())
    pfns = H.host_populate(mm, HVA + 0x1000, 512, "2M")
    assert len(pfns) == 2  # the range straddles two 2M blocks
    assert H.host_translation(mm, HVA)[1] == PG_LEVEL_2M
    assert H.host_populate(mm, HVA, 512, "2M") == []  # already there
    assert mm.in_vma(HVA) and mm.in_vma(HVA + (4 << 20) - 1) and not mm.in_vma(HVA + (4 << 20))


def test_unmapped_address_has_no_translation_and_reads_as_4k():
    mm = H.HostMm(World())
    assert H.host_translation(mm, HVA) is None
    assert H.host_level_truth(mm, HVA) == PG_LEVEL_4K


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["4K", "2M", "1G"]), st.integers(0, 511), st.integers(1, 512))
def test_host_maps_range_agrees_with_page_by_page(backing, start, n):
    _, mm = host(backing, npages=1024)
    hva = HVA + (start << PAGE_SHIFT)
    pfn = H.host_translation(mm, hva)[0]
    brute = all(H.host_translation(mm, hva + (i << PAGE_SHIFT))[0] == pfn + i for i in range(n))
    assert H.host_maps_range(mm, hva, n, pfn) == brute
    assert not H.host_maps_range(mm, hva, n, pfn + 1)


# -- typed memory -------------------------------------------------------------

def test_load_records_reads_of_the_wrong_kind_of_memory():
    _, mm = host("2M")
    mem = mm.mem
    pud_ptr = mm.entry_ptr(HVA, H.PUD)
    assert mem.load(pud_ptr, H.PUD) and not mem.bad_reads
    leaf = mem.peek(mm.entry_ptr(HVA, H.PMD))
    assert mem.load(H.EntryPtr(H.entry_pfn(leaf), 3), H.PTE) == H.GUEST_DATA_WORD
    assert "2M data folio" in str(mem.bad_reads[-1])
    mem.load(pud_ptr, H.PMD)   # right page, wrong level
    assert "expecting a PMD table, but that page is a PUD table" in str(mem.bad_reads[-1])
    mem.load(H.EntryPtr(0x999999, 0), H.PMD)
    assert "unallocated memory" in str(mem.bad_reads[-1])
    assert len(mem.reads) == 4


def test_freed_tables_are_never_reused_and_reads_are_caught():
    mem = H.HostMemory(World())
    t = mem.alloc_table(H.PMD)
    mem.free(t)
    assert mem.alloc_table(H.PMD) != t
    mem.load(H.EntryPtr(t, 0), H.PMD)
    assert "(freed)" in str(mem.bad_reads[-1])
    with pytest.raises(ValueError, match="not an allocated page"):
        mem.free(t)
    with pytest.raises(ValueError, match="not a live page table"):
        mem.store(H.EntryPtr(t, 0), 1)


def test_folio_alignment_and_color():
    mem = H.HostMemory(World())
    assert mem.alloc_folio(PG_LEVEL_1G) % (1 << 18) == 0
    assert mem.alloc_folio(PG_LEVEL_2M) % 512 == 0
    assert mem.alloc_folio(PG_LEVEL_4K, color=0x77) % 512 == 0x77
    with pytest.raises(ValueError, match="color"):
        mem.alloc_folio(PG_LEVEL_2M, color=1)
    with pytest.raises(ValueError, match="level must be one of"):
        mem.alloc_folio(4)


def test_host_memory_is_one_shared_object_of_the_world():
    world, mm = host("4K")
    assert world.primitive("host memory") is mm.mem
    assert isinstance(world.primitive("IRQs off (page-table freeing)"), H.IrqsOff)
    before = world._key()
    run_alone(world, H.migrate_page(mm, HVA))
    assert world._key() != before
    saved = mm.mem._state()
    mm.mem._load(before[0][0])
    assert mm.mem.snapshot() != saved and mm.mem._state() == before[0][0]


# -- mm operations, run alone -------------------------------------------------

def test_collapse_makes_a_thp_copies_the_data_frees_the_old_table_and_notifies():
    world, mm = host("4K", npages=3)
    mm.mem.write_data(H.host_translation(mm, HVA + 0x2000)[0], 8, 0x1234)
    rec = Recorder()
    rec.subscribe(mm)
    old_table = H.entry_pfn(mm.mem.peek(mm.entry_ptr(HVA, H.PMD)))
    new, labels = run_traced(world, H.collapse_huge_page(mm, HVA))
    assert H.host_translation(mm, HVA + 0x5000) == (new + 5, PG_LEVEL_2M)
    assert mm.mem.read_data(new + 2, 8) == 0x1234          # khugepaged copied the page
    assert mm.mem.pages[old_table].freed
    assert rec.events == [("start", HVA, HVA + (2 << 20)), ("end", HVA, HVA + (2 << 20))]
    # the free comes after the grace period, which comes after the notifier's end
    free = next(i for i, s in enumerate(labels) if s.startswith("free old"))
    assert labels.index("end") < labels.index(
        next(s for s in labels if s.startswith("synchronize_rcu"))) < free


def test_promote_pud_to_1g():
    world, mm = host("2M", npages=1024)
    new = run_alone(world, H.collapse_huge_page(mm, HVA, PG_LEVEL_1G))
    assert H.host_translation(mm, HVA + (7 << 21)) == (new + 7 * 512, PG_LEVEL_1G)
    freed = [p for p in mm.mem.pages.values() if p.freed]
    assert {p.kind for p in freed} == {"table", "folio"}


def test_split_keeps_the_same_pages_at_4k():
    world, mm = host("2M")
    pfn = H.host_translation(mm, HVA + 0x7000)[0]
    run_alone(world, H.__split_huge_pmd(mm, HVA))
    assert H.host_translation(mm, HVA + 0x7000) == (pfn, PG_LEVEL_4K)


def test_migrate_moves_the_page_and_frees_the_old_one():
    world, mm = host("4K")
    old = H.host_translation(mm, HVA)[0]
    new = run_alone(world, H.migrate_page(mm, HVA))
    assert new != old and H.host_translation(mm, HVA) == (new, PG_LEVEL_4K)
    assert mm.mem.pages[old].freed


def test_migration_leaves_a_migration_entry_and_gup_waits_on_it():
    kvm = kvm_create_vm()
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    set_memory_region(kvm, 1, 0x100000 << PAGE_SHIFT, 0x1000, HVA)
    H.host_populate(kvm.mm, HVA, 1, "4K")
    kvm_mmu_reload(vcpu)
    gen = H.migrate_page(kvm.mm, HVA)
    value = None
    while True:     # run the migration up to the migration entry
        op = gen.send(value)
        value = op.run(op.prim, op.args, "B", kvm)
        if op.what() == "PTE = migration entry":
            break
    ptr = kvm.mm.entry_ptr(HVA, H.PTE)
    assert H.describe_entry(kvm.mm.mem.peek(ptr), H.PTE).startswith("migration entry @")
    assert H.host_translation(kvm.mm, HVA) is None
    assert hva_to_pfn(kvm, HVA) == KVM_PFN_ERR_FAULT
    # The invalidation is in progress, so the fault path retries before gup;
    # with it ended early (an experiment) gup itself would wait.
    kvm.mmu_invalidate_in_progress = 0
    kvm.mmu_invalidate_seq += 1
    with pytest.raises(ModelHang, match="gup waits for the migration to finish"):
        run_alone(kvm, kvm_mmu_page_fault(vcpu, 0x100000 << PAGE_SHIFT, PFERR_GUEST_FINAL_MASK))


def test_unmap_and_free_tables():
    world, mm = host("4K", npages=1)
    run_alone(world, H.unmap_and_free_tables(mm, HVA - HVA % (1 << 30)))
    assert H.host_translation(mm, HVA) is None
    assert sum(p.freed for p in mm.mem.pages.values()) == 3   # PMD, PTE tables, the page


def test_punch_hole_frees_the_pages_and_the_next_touch_gets_a_zeroed_one():
    world, mm = host("4K", npages=2)
    old = H.host_translation(mm, HVA)[0]
    assert run_alone(world, H.punch_hole(mm, HVA, HVA + 0x2000)) == (old, old + 1)
    assert H.host_translation(mm, HVA) is None
    assert H.__get_user(mm, HVA + 8) == (0, 0)              # faulted in again, zeroed
    assert H.host_translation(mm, HVA)[0] not in (old, old + 1)


@pytest.mark.parametrize("op,args,match", [
    (H.collapse_huge_page, (HVA,), "found 2M leaf"),
    (H.collapse_huge_page, (HVA + 0x1000,), "misaligned for a 2M page"),
    (H.collapse_huge_page, (HVA, PG_LEVEL_4K), "level must be one of"),
    (H.migrate_page, (HVA,), "found a 2M leaf above it"),
    (H.__split_huge_pmd, (HVA + (2 << 20),), "found none"),
])
def test_mm_operations_refuse_the_wrong_host_state(op, args, match):
    world, mm = host("2M")
    with pytest.raises(ValueError, match=match):
        run_alone(world, op(mm, *args))


def test_split_needs_a_leaf():
    world, mm = host("4K")
    with pytest.raises(ValueError, match="found PTE table"):
        run_alone(world, H.__split_huge_pmd(mm, HVA))


def test_mm_operations_are_cpu_code_a_chapter_can_zoom_out():
    kvm = kvm_create_vm(zoom={"migrate_page"})
    H.host_populate(kvm.mm, HVA, 1, "4K")
    gen = H.migrate_page(kvm.mm, HVA)
    op = next(gen)
    assert op.what() == "migrate_page"
    with pytest.raises(StopIteration) as stop:
        gen.send(op.run(op.prim, op.args, "B", kvm))
    assert H.host_translation(kvm.mm, HVA) == (stop.value.value, PG_LEVEL_4K)


# -- bad input ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(hva=HVA + 1, npages=1, backing="4K"), ValueError, "misaligned"),
    (dict(hva=-1, npages=1, backing="4K"), ValueError, "hva must be in"),
    (dict(hva=1 << 47, npages=1, backing="4K"), ValueError, "hva must be in"),
    (dict(hva="0x1000", npages=1, backing="4K"), TypeError, "hva must be an integer"),
    (dict(hva=HVA, npages=0, backing="4K"), ValueError, "npages must be in"),
    (dict(hva=HVA, npages=1, backing="3M"), ValueError, "backing must be one of"),
])
def test_populate_rejects_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        H.host_populate(H.HostMm(World()), **kwargs)


def test_mm_operations_refuse_what_is_not_an_mm():
    with pytest.raises(TypeError, match="mm must be a HostMm"):
        H.host_translation("mm", HVA)
    with pytest.raises(ValueError, match="haddr"):
        next(H.collapse_huge_page(H.HostMm(World()), -1))


def test_entry_ptr_refuses_to_create_inside_a_leaf():
    _, mm = host("2M")
    assert mm.entry_ptr(HVA, H.PTE) is None
    with pytest.raises(ValueError, match="inside a 2M leaf"):
        mm.entry_ptr(HVA, H.PTE, create=True)


def test_table_tree_lists_the_slot_tables_top_down():
    _, mm = host("4K", npages=2)
    tree = H.table_tree(mm, HVA, HVA + 0x2000)
    assert [t["level"] for t in tree] == ["PGD", "PUD", "PMD", "PTE"]
    assert [row[0] for row in tree[-1]["entries"]] == [0, 1]
    with pytest.raises(ValueError, match="hva_end"):
        H.table_tree(mm, HVA, HVA)


def test_deepcopy_of_memory_is_equal_and_independent():
    _, mm = host("4K", npages=3)
    mem = mm.mem
    dup = copy.deepcopy(mem)
    assert dup.snapshot() == mem.snapshot() and dup.reads == mem.reads
    ptr = mm.entry_ptr(HVA, H.PTE)
    dup.store(ptr, 0)
    dup.free(H.entry_pfn(mem.peek(ptr)))
    assert mem.peek(ptr) != 0 and dup.snapshot() != mem.snapshot()
