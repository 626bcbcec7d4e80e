"""The host page tables: entry format, walks, typed memory, and the mm operations."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmmu import host_mm as H
from kvmmu.explorer import World
from kvmmu.levels import PAGE_SHIFT, PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K

HVA = 0x7F0000000000


class Recorder:
    """A notifier subscriber that records what it is told."""

    def __init__(self):
        self.events = []

    def invalidate_range_start(self, machine, start, end):
        yield from machine.step("start", lambda: self.events.append(("start", start, end)))

    def invalidate_range_end(self, machine, start, end):
        yield from machine.step("end", lambda: self.events.append(("end", start, end)))


def machine_with(backing="4K", npages=512, hva=HVA):
    m = H.HostMachine()
    H.host_populate(m.mm, hva, npages, backing)
    return m


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
    m = machine_with(backing)
    pfn, found = H.host_translation(m.mm, HVA + (0x23 << PAGE_SHIFT))
    assert found == level
    assert H.host_level_truth(m.mm, HVA) == level
    # small pages sit where a split THP's would: pfn low bits = hva low bits
    assert pfn & 511 == 0x23


def test_populate_covers_a_misaligned_range_with_whole_thps():
    m = H.HostMachine()
    pfns = H.host_populate(m.mm, HVA + 0x1000, 512, "2M")
    assert len(pfns) == 2  # the range straddles two 2M blocks
    assert H.host_translation(m.mm, HVA)[1] == PG_LEVEL_2M
    assert H.host_populate(m.mm, HVA, 512, "2M") == []  # already there


def test_unmapped_address_has_no_translation_and_reads_as_4k():
    m = H.HostMachine()
    assert H.host_translation(m.mm, HVA) is None
    assert H.host_level_truth(m.mm, HVA) == PG_LEVEL_4K


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["4K", "2M", "1G"]), st.integers(0, 511), st.integers(1, 512))
def test_host_maps_range_agrees_with_page_by_page(backing, start, n):
    m = machine_with(backing, npages=1024)
    hva = HVA + (start << PAGE_SHIFT)
    pfn = H.host_translation(m.mm, hva)[0]
    brute = all(H.host_translation(m.mm, hva + (i << PAGE_SHIFT)) == (pfn + i, H.host_translation(
        m.mm, hva + (i << PAGE_SHIFT))[1]) for i in range(n))
    assert H.host_maps_range(m.mm, hva, n, pfn) == brute
    assert not H.host_maps_range(m.mm, hva, n, pfn + 1)


# -- typed memory -------------------------------------------------------------

def test_load_records_reads_of_the_wrong_kind_of_memory():
    m = machine_with("2M")
    mem = m.mm.mem
    pud_ptr = m.mm.entry_ptr(HVA, H.PUD)
    assert mem.load(pud_ptr, H.PUD) and not mem.bad_reads
    leaf = mem.peek(m.mm.entry_ptr(HVA, H.PMD))
    assert mem.load(H.EntryPtr(H.entry_pfn(leaf), 3), H.PTE) == H.GUEST_DATA_WORD
    assert "2M data folio" in str(mem.bad_reads[-1])
    mem.load(pud_ptr, H.PMD)   # right page, wrong level
    assert "expecting a PMD table, but that page is a PUD table" in str(mem.bad_reads[-1])
    mem.load(H.EntryPtr(0x999999, 0), H.PMD)
    assert "unallocated memory" in str(mem.bad_reads[-1])
    assert len(mem.reads) == 4


def test_freed_tables_are_never_reused_and_reads_are_caught():
    mem = H.HostMemory()
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
    mem = H.HostMemory()
    assert mem.alloc_folio(PG_LEVEL_1G) % (1 << 18) == 0
    assert mem.alloc_folio(PG_LEVEL_2M) % 512 == 0
    assert mem.alloc_folio(PG_LEVEL_4K, color=0x77) % 512 == 0x77
    with pytest.raises(ValueError, match="color"):
        mem.alloc_folio(PG_LEVEL_2M, color=1)
    with pytest.raises(ValueError, match="level must be one of"):
        mem.alloc_folio(4)


def test_snapshot_changes_with_an_entry():
    m = machine_with("4K")
    before = m.mm.snapshot()
    H.migrate_page(m, HVA)
    assert m.mm.snapshot() != before


# -- mm operations ------------------------------------------------------------

def test_collapse_makes_a_thp_frees_the_old_table_and_notifies():
    m = machine_with("4K", npages=3)
    rec = Recorder()
    m.mm.notifier_subscriptions.append(rec)
    old_table = H.entry_pfn(m.mm.mem.peek(m.mm.entry_ptr(HVA, H.PMD)))
    new = H.collapse_huge_page(m, HVA)
    assert H.host_translation(m.mm, HVA + 0x5000) == (new + 5, PG_LEVEL_2M)
    assert m.mm.mem.pages[old_table].freed
    assert rec.events == [("start", HVA, HVA + (2 << 20)), ("end", HVA, HVA + (2 << 20))]
    # the free comes after the grace period, which comes after the notifier's end
    steps = m.steps_taken
    assert steps.index("end") < steps.index(next(s for s in steps if s.startswith("free old")))


def test_promote_pud_to_1g():
    m = machine_with("2M", npages=1024)
    new = H.collapse_huge_page(m, HVA, PG_LEVEL_1G)
    assert H.host_translation(m.mm, HVA + (7 << 21)) == (new + 7 * 512, PG_LEVEL_1G)
    freed = [p for p in m.mm.mem.pages.values() if p.freed]
    assert {p.kind for p in freed} == {"table", "folio"}


def test_split_keeps_the_same_pages_at_4k():
    m = machine_with("2M")
    pfn = H.host_translation(m.mm, HVA + 0x7000)[0]
    H.__split_huge_pmd(m, HVA)
    assert H.host_translation(m.mm, HVA + 0x7000) == (pfn, PG_LEVEL_4K)


def test_migrate_moves_the_page_and_frees_the_old_one():
    m = machine_with("4K")
    old = H.host_translation(m.mm, HVA)[0]
    new = H.migrate_page(m, HVA)
    assert new != old and H.host_translation(m.mm, HVA) == (new, PG_LEVEL_4K)
    assert m.mm.mem.pages[old].freed


def test_unmap_and_free_tables():
    m = machine_with("4K", npages=1)
    H.unmap_and_free_tables(m, HVA - HVA % (1 << 30))
    assert H.host_translation(m.mm, HVA) is None
    assert sum(p.freed for p in m.mm.mem.pages.values()) == 3   # PMD, PTE tables, the page


@pytest.mark.parametrize("op,args,match", [
    (H.collapse_huge_page, (HVA,), "found 2M leaf"),
    (H.collapse_huge_page, (HVA + 0x1000,), "misaligned for a 2M page"),
    (H.collapse_huge_page, (HVA, PG_LEVEL_4K), "level must be one of"),
    (H.migrate_page, (HVA,), "found a 2M leaf above it"),
    (H.__split_huge_pmd, (HVA + (2 << 20),), "found none"),
])
def test_mm_operations_refuse_the_wrong_host_state(op, args, match):
    m = machine_with("2M")
    with pytest.raises(ValueError, match=match):
        op(m, *args)


def test_split_needs_a_leaf():
    m = machine_with("4K")
    with pytest.raises(ValueError, match="found PTE table"):
        H.__split_huge_pmd(m, HVA)


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
        H.host_populate(H.HostMm(), **kwargs)


def test_entry_ptr_refuses_to_create_inside_a_leaf():
    m = machine_with("2M")
    assert m.mm.entry_ptr(HVA, H.PTE) is None
    with pytest.raises(ValueError, match="inside a 2M leaf"):
        m.mm.entry_ptr(HVA, H.PTE, create=True)


# -- running CPU code ------------------------------------------------------------

def test_cpu_code_runs_directly_and_exposes_steps():
    m = machine_with("4K")
    gen = H.migrate_page.steps(m, HVA)
    assert hasattr(gen, "send")
    gen.close()
    assert H.migrate_page.__wrapped__ is H.migrate_page.steps


def test_run_direct_refuses_explorer_primitives():
    class W(World):
        def __init__(self):
            super().__init__()
            self.x = self.word("x")

    def reader(w):
        return (yield from w.x.read())

    with pytest.raises(RuntimeError, match="explorer actor"):
        H.run_direct(reader(W()))


def test_direct_locks_report_one_cpu_deadlocks():
    lock = H.DirectRWLock("mmu_lock")
    H.run_direct(lock.write_lock())
    with pytest.raises(RuntimeError, match="deadlock"):
        H.run_direct(lock.read_lock())
    H.run_direct(lock.write_unlock())
    with pytest.raises(RuntimeError, match="without"):
        H.run_direct(lock.write_unlock())
    rcu = H.DirectRCU("rcu")
    H.run_direct(rcu.read_lock())
    with pytest.raises(RuntimeError, match="deadlock"):
        H.run_direct(rcu.synchronize())
    H.run_direct(rcu.read_unlock())
    H.run_direct(rcu.synchronize())


def test_table_tree_lists_the_slot_tables_top_down():
    m = machine_with("4K", npages=2)
    tree = H.table_tree(m.mm, HVA, HVA + 0x2000)
    assert [t["level"] for t in tree] == ["PGD", "PUD", "PMD", "PTE"]
    assert [row[0] for row in tree[-1]["entries"]] == [0, 1]
    with pytest.raises(ValueError, match="hva_end"):
        H.table_tree(m.mm, HVA, HVA)


def test_deepcopy_of_memory_is_equal_and_independent():
    import copy
    m = machine_with("4K", npages=3)
    mem = m.mm.mem
    dup = copy.deepcopy(mem)
    assert dup.snapshot() == mem.snapshot() and dup.reads == mem.reads
    ptr = m.mm.entry_ptr(HVA, H.PTE)
    dup.store(ptr, 0)
    dup.free(H.entry_pfn(mem.peek(ptr)))
    assert mem.peek(ptr) != 0 and dup.snapshot() != mem.snapshot()
