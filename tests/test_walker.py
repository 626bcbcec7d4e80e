"""Unit, property and race tests of the guest walk (kvmmu.walker and its companions: guest_paging,
mmu_permissions, walker_ops, walker_gpc, walk_trace, walker_races) and kvmmu.guest_memory."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmmu.explorer import explore, run_schedule
from kvmmu.guest_memory import STEP, GuestMemory, run_ops
from kvmmu.memslots import KVM_MEM_GUEST_MEMFD, KVM_MEM_READONLY, KvmMemorySlot
from kvmmu.guest_paging import (ACCESS_FLAGS, PFERR_FETCH_MASK, PFERR_IMPLICIT_ACCESS,
                                PFERR_PK_MASK, PFERR_PRESENT_MASK, PFERR_RSVD_MASK, PFERR_USER_MASK,
                                PFERR_WRITE_MASK, PT64_NX_MASK, PT_ACCESSED_MASK, PT_DIRTY_MASK,
                                PT_INDEX, PT_LVL_ADDR_MASK, PT_LVL_OFFSET_MASK, PT_PAGE_SIZE_MASK,
                                PT_PRESENT_MASK, PT_USER_MASK, PT_WRITABLE_MASK, GuestPageTables,
                                Vcpu, access_str, gpte_access, gpte_pkeys, gpte_to_gfn_lvl,
                                pferr_str)
from kvmmu.mmu_permissions import permission_fault
from kvmmu.walk_trace import trace_walk
from kvmmu.walker import (MAX_WALK_RETRIES, GuestWalker, WalkLivelock, is_last_gpte,
                          is_rsvd_bits_set, protect_clean_gpte, walk_addr_generic)
from kvmmu.walker_gpc import walk_addr_generic_gpc, walk_addr_generic_gpc_ops
from kvmmu.walker_ops import walk_addr_generic_ops
from kvmmu.walker_races import RACE_INVARIANTS_AD, ad_race_scenario

P, W, U, A, D, PS, NX = (PT_PRESENT_MASK, PT_WRITABLE_MASK, PT_USER_MASK, PT_ACCESSED_MASK,
                         PT_DIRTY_MASK, PT_PAGE_SIZE_MASK, PT64_NX_MASK)
HOST = 0x7F00_0000_0000
GVA = 0x7FFF_1234_5678


def memory(*, rom=False, private=False, gmem_ok=True):
    """Slot 0: RAM at gfn 0..0x100; slot 1: tables at gfn 0x100..0x200 (ROM or guest_memfd)."""
    flags = KVM_MEM_READONLY if rom else KVM_MEM_GUEST_MEMFD if private else 0
    mem = GuestMemory([KvmMemorySlot(0, 0, 0x100, HOST),
                       KvmMemorySlot(1, 0x100, 0x100, HOST + 0x100000, flags=flags)],
                      kvm_can_access_gmem=gmem_ok)
    if private:
        mem.set_memory_attributes(0x100, 0x200, True)
    return mem


def mapped(mem=None, *, leaf=P | W | U, table=P | W | U, vmm=False, mode="4-level"):
    mem = mem or memory()
    pt = GuestPageTables(mem, range(0x100, 0x140), vmm=vmm, mode=mode,
                         pdpt_gpa=0x13F000 if mode == "PAE" else None)
    gva = GVA if mode != "PAE" else 0x8123_4567
    pt.map(gva & ~0xFFF, 0x42000, flags=leaf, table_flags=table)
    return mem, pt, gva


# ---------------------------------------------------------------------------
# Pure helpers.
# ---------------------------------------------------------------------------
def test_index_and_address_masks():
    assert [PT_INDEX(GVA, lv) for lv in (4, 3, 2, 1)] == [0xFF, 0x1FC, 0x91, 0x145]
    assert PT_INDEX(1 << 56, 5) == 0x100
    assert PT_LVL_ADDR_MASK(1) == 0x000F_FFFF_FFFF_F000
    assert PT_LVL_ADDR_MASK(2) == 0x000F_FFFF_FFE0_0000
    assert PT_LVL_OFFSET_MASK(2) == 0x1F_F000
    assert gpte_to_gfn_lvl(0x8000_0000_4020_00E7, 2) == 0x40200
    assert gpte_to_gfn_lvl(0x4000_00E7, 3) == 0x40000


def test_gpte_access_and_protect_clean():
    # ACC_EXEC is P xor NX: NX pages are not executable
    assert gpte_access(P | W | U) == 7
    assert gpte_access(P | W | U | NX) == 6
    assert gpte_access(P) == 1
    mmu = Vcpu(cr3=0).mmu
    assert protect_clean_gpte(mmu, 7, P | W) == 5        # clean: W dropped
    assert protect_clean_gpte(mmu, 7, P | W | D) == 7    # dirty: kept
    assert gpte_pkeys(0x7800_0000_0000_0000) == 0xF
    assert gpte_pkeys(5 << 59) == 5


def test_reserved_bits_and_last_gpte():
    mmu = Vcpu(cr3=0, maxphyaddr=46).mmu
    assert is_rsvd_bits_set(mmu, P | (1 << 51), 1)
    assert not is_rsvd_bits_set(mmu, P | (1 << 45), 1)
    assert is_rsvd_bits_set(mmu, P | PS, 4)               # no 512G pages
    assert not is_rsvd_bits_set(mmu, P | PS, 3)           # 1G page, aligned
    assert is_rsvd_bits_set(mmu, P | PS | (1 << 13), 2)   # 2M page, misaligned
    assert not is_rsvd_bits_set(mmu, P | PS | (1 << 12), 2)  # bit 12 is PAT
    assert is_rsvd_bits_set(Vcpu(cr3=0, gbpages=False).mmu, P | PS, 3)
    assert is_rsvd_bits_set(Vcpu(cr3=0, efer_nx=False).mmu, P | NX, 1)
    assert is_last_gpte(mmu, 1, P) and is_last_gpte(mmu, 2, P | PS)
    assert not is_last_gpte(mmu, 2, P) and not is_last_gpte(mmu, 3, P)


def test_permission_bitmap_byte_masks():
    # kernel-facts Appendix A 15: x = 0xAA, w = 0xCC, u = 0xF0
    mmu = Vcpu(cr3=0, cr0_wp=True, efer_nx=True).mmu
    assert mmu.permissions[PFERR_WRITE_MASK >> 1] == (~0xCC & 0xFF)
    assert mmu.permissions[PFERR_USER_MASK >> 1] == (~0xF0 & 0xFF)
    assert mmu.permissions[PFERR_FETCH_MASK >> 1] == (~0xAA & 0xFF)
    assert mmu.permissions[0] == 0
    no_wp = Vcpu(cr3=0, cr0_wp=False).mmu
    assert no_wp.permissions[PFERR_WRITE_MASK >> 1] == 0       # supervisor writes allowed
    smap = Vcpu(cr3=0, cr4_smap=True).mmu
    assert smap.permissions[0] == 0xF0                         # supervisor read of user pages
    assert smap.permissions[PFERR_RSVD_MASK >> 1] == 0         # ... unless EFLAGS.AC


def test_permission_fault_returns_only_0_1_0x21():
    values = set()
    for wp, smep, smap, nx, ac, pke in itertools.product((False, True), repeat=6):
        for pkru in (0, 0x55555555, 0xAAAAAAAA):
            vcpu = Vcpu(cr3=0, cr0_wp=wp, cr4_smep=smep, cr4_smap=smap, efer_nx=nx,
                        eflags_ac=ac, cr4_pke=pke, pkru=pkru)
            for pte_access in range(8):
                for pkey in (0, 3):
                    for access in (0, 2, 4, 6, 16, 20, PFERR_IMPLICIT_ACCESS,
                                   PFERR_IMPLICIT_ACCESS | 2):
                        values.add(permission_fault(vcpu, vcpu.mmu, pte_access, pkey, access))
    assert values == {0, PFERR_PRESENT_MASK, PFERR_PRESENT_MASK | PFERR_PK_MASK}


# ---------------------------------------------------------------------------
# Walks.
# ---------------------------------------------------------------------------
def test_walk_4level_fills_the_walker_record():
    mem, pt, gva = mapped()
    w = GuestWalker()
    assert walk_addr_generic(w, pt.vcpu(), mem, gva, PFERR_USER_MASK) == 1
    assert (w.level, w.max_level, w.gfn) == (1, 4, 0x42)
    assert w.table_gfn[:4] == [0x103, 0x102, 0x101, 0x100]
    assert w.pte_gpa[3] == 0x100000 + 8 * 0xFF
    assert w.pte_writable[:4] == [True] * 4
    assert w.pt_access[3] == 7                      # nothing above the root
    assert w.pte_access == 5                        # clean read: W stripped
    assert all(w.ptes[i] & A for i in range(4))
    assert mem.dirty_gfns() == [0x100, 0x101, 0x102, 0x103]


def test_walk_5level_and_pae():
    mem = memory()
    pt = GuestPageTables(mem, range(0x100, 0x140), mode="5-level")
    gva = 0x00AB_CDEF_1234_5000
    pt.map(gva, 0x42000)
    w = GuestWalker()
    vcpu = pt.vcpu()
    assert vcpu.mode == "5-level"
    assert walk_addr_generic(w, vcpu, mem, gva | 0x678, PFERR_WRITE_MASK) == 1
    assert (w.max_level, w.gfn) == (5, 0x42)
    mem, pt, gva = mapped(memory(), mode="PAE")
    vcpu = pt.vcpu()
    assert vcpu.mode == "PAE" and vcpu.pdptrs[2] & P
    assert walk_addr_generic(w, vcpu, mem, gva, PFERR_WRITE_MASK) == 1
    assert (w.max_level, w.level, w.gfn) == (2, 1, 0x42)


def test_large_pages():
    mem = memory()
    pt = GuestPageTables(mem, range(0x100, 0x140))
    pt.map(0x4000_0000, 0x8000_0000, level=3)
    pt.map(0x20_0000, 0x60_0000, level=2)
    w = GuestWalker()
    vcpu = pt.vcpu()
    assert walk_addr_generic(w, vcpu, mem, 0x4012_3456, 0) == 1
    assert (w.level, w.gfn) == (3, 0x80123)
    assert walk_addr_generic(w, vcpu, mem, 0x21_2345, 0) == 1
    assert (w.level, w.gfn) == (2, 0x612)


def test_not_present_reserved_and_permission_error_codes():
    mem, pt, gva = mapped(leaf=P | U)
    vcpu = pt.vcpu()
    w = GuestWalker()
    assert walk_addr_generic(w, vcpu, mem, gva, PFERR_WRITE_MASK | PFERR_USER_MASK) == 0
    assert w.fault.error_code == PFERR_PRESENT_MASK | PFERR_WRITE_MASK | PFERR_USER_MASK
    assert w.fault.vector == 14 and w.fault.address == gva
    assert walk_addr_generic(w, vcpu, mem, 0x1000, PFERR_FETCH_MASK) == 0
    assert w.fault.error_code == PFERR_FETCH_MASK and w.level == 4
    mem.guest_write_u64(pt.entry_gpa(gva, 2), mem.guest_read_u64(pt.entry_gpa(gva, 2)) | 1 << 51)
    assert walk_addr_generic(w, vcpu, mem, gva, 0) == 0
    assert w.fault.error_code == PFERR_RSVD_MASK | PFERR_PRESENT_MASK and w.level == 2


def test_read_with_clean_leaf_strips_write():
    # kernel-facts Appendix A 14 (third clause)
    mem, pt, gva = mapped()
    w = GuestWalker()
    vcpu = pt.vcpu()
    assert walk_addr_generic(w, vcpu, mem, gva, 0) == 1
    assert not w.pte_access & PT_WRITABLE_MASK
    assert not mem.guest_read_u64(pt.entry_gpa(gva, 1)) & D
    assert walk_addr_generic(w, vcpu, mem, gva, PFERR_WRITE_MASK) == 1
    assert w.pte_access & PT_WRITABLE_MASK and mem.guest_read_u64(pt.entry_gpa(gva, 1)) & D
    assert walk_addr_generic(w, vcpu, mem, gva, 0) == 1
    assert w.pte_access & PT_WRITABLE_MASK                   # now dirty: stays writable


def _interfering_driver(gen, mem, gpa, new_value):
    """Run a step generator; the first time it is about to cmpxchg, the guest writes first."""
    done = False
    try:
        op = next(gen)
        while True:
            if op[0] == STEP:
                if not done and "cmpxchg" in op[1]:
                    mem.guest_write_u64(gpa, new_value)
                    done = True
                result = op[2]()
            else:
                result = getattr(op[1], op[2])()
            op = gen.send(result)
    except StopIteration as stop:
        return stop.value


def test_cmpxchg_mismatch_restarts_the_walk():
    # kernel-facts Appendix A 14 (first clause): the cmpxchg returns 1, the walk restarts
    mem, pt, gva = mapped()
    leaf_gpa = pt.entry_gpa(gva, 1)
    remapped = mem.guest_read_u64(leaf_gpa) & ~0xFFFFFFFFF000 | (0x77 << 12)
    vcpu = pt.vcpu()
    for name, gen_of in [("6.17", walk_addr_generic_ops),
                         ("rfc-fixed", lambda *a: walk_addr_generic_gpc_ops(*a, as_posted=False))]:
        mem, pt, gva = mapped()
        w = GuestWalker()
        ret = _interfering_driver(gen_of(w, vcpu, mem, gva, PFERR_WRITE_MASK), mem, leaf_gpa, remapped)
        assert ret == 1 and w.retries == 1, name
        assert w.gfn == 0x77, f"{name}: the restarted walk must use the guest's new entry"
        assert any(x[0] == 1 and x[3].startswith("mismatch") for x in w.ad_log), name
    assert mem.gpc_list == []


def test_rfc_as_posted_inverts_try_cmpxchg():
    # success: restarts (once per level that needed A) and logs nothing dirty
    mem, pt, gva = mapped()
    w = GuestWalker()
    assert walk_addr_generic_gpc(w, pt.vcpu(), mem, gva, PFERR_WRITE_MASK, as_posted=True) == 1
    assert w.retries == 4 and mem.dirty_gfns() == []
    # mismatch: carries on with the entry it read, although the guest remapped it
    mem, pt, gva = mapped(leaf=P | W | U | A, table=P | W | U | A)
    leaf_gpa = pt.entry_gpa(gva, 1)
    remapped = mem.guest_read_u64(leaf_gpa) & ~0xFFFFFFFFF000 | (0x77 << 12)
    w = GuestWalker()
    ret = _interfering_driver(walk_addr_generic_gpc_ops(w, pt.vcpu(), mem, gva, PFERR_WRITE_MASK),
                              mem, leaf_gpa, remapped)
    assert ret == 1 and w.retries == 0 and w.gfn == 0x42
    assert w.ptes[0] & D and mem.guest_read_u64(leaf_gpa) == remapped
    # with the return value converted: no restart on success, tables logged dirty
    mem2, pt2, _ = mapped()
    w2 = GuestWalker()
    assert walk_addr_generic_gpc(w2, pt2.vcpu(), mem2, gva, PFERR_WRITE_MASK, as_posted=False) == 1
    assert w2.retries == 0 and mem2.dirty_gfns() == [0x100, 0x101, 0x102, 0x103]


def test_rfc_read_only_tables_livelock_with_a_stale_pte_writable():
    mem, pt, gva = mapped(memory(rom=True), vmm=True)
    vcpu = pt.vcpu()
    # 6.17: the walk succeeds, A/D are skipped in the ROM
    w = GuestWalker()
    assert walk_addr_generic(w, vcpu, mem, gva, 0) == 1
    assert [o for *_x, o in w.ad_log] == ["skipped: read-only slot"] * 4
    # the RFC as posted leaves pte_writable[] as an earlier walk left it
    w.pte_writable = [True] * 5
    with pytest.raises(WalkLivelock):
        walk_addr_generic_gpc(w, vcpu, mem, gva, 0, as_posted=True)
    w.pte_writable = [True] * 5
    assert walk_addr_generic_gpc(w, vcpu, mem, gva, 0, as_posted=False) == 1
    assert mem.gpc_list == []


def test_private_tables_need_gmem_access():
    mem, pt, gva = mapped(memory(private=True, gmem_ok=True))
    vcpu = pt.vcpu()
    w = GuestWalker()
    assert walk_addr_generic_gpc(w, vcpu, mem, gva, PFERR_WRITE_MASK, as_posted=False) == 1
    assert w.gfn == 0x42
    # 6.17 reads the slot's user mapping: the shared view, where the guest wrote nothing
    w = GuestWalker()
    assert walk_addr_generic(w, vcpu, mem, gva, 0) == 0 and w.fault.error_code == 0
    mem, pt, gva = mapped(memory(private=True, gmem_ok=False))
    w = GuestWalker()
    assert walk_addr_generic_gpc(w, pt.vcpu(), mem, gva, PFERR_WRITE_MASK | PFERR_USER_MASK,
                                 as_posted=False) == 0
    assert w.fault.error_code == PFERR_WRITE_MASK | PFERR_USER_MASK and w.level == 4
    assert mem.gpc_list == []


def test_table_outside_memslots_faults_not_present():
    mem, pt, gva = mapped()
    gpa = pt.entry_gpa(gva, 3)
    mem.guest_write_u64(gpa, (mem.guest_read_u64(gpa) & 0xFFF) | (0x5000 << 12))
    w = GuestWalker()
    assert walk_addr_generic(w, pt.vcpu(), mem, gva, PFERR_WRITE_MASK) == 0
    assert w.fault.error_code == PFERR_WRITE_MASK and w.level == 2


def test_walk_restarts_are_bounded():
    class AlwaysChanged(GuestMemory):
        def try_cmpxchg_user_u64(self, hva, old, new):
            return 1, old ^ 1
    mem = AlwaysChanged([KvmMemorySlot(0, 0, 0x200, HOST)])
    pt = GuestPageTables(mem, range(0x100, 0x140))
    pt.map(0x1000, 0x42000)
    with pytest.raises(WalkLivelock, match=f"restarted {MAX_WALK_RETRIES} times"):
        walk_addr_generic(GuestWalker(), pt.vcpu(), mem, 0x1000, 0)


# ---------------------------------------------------------------------------
# The fast walker, the step walker and the RFC walker agree.
# ---------------------------------------------------------------------------
FLAG_CHOICES = [P, P | W, P | U, P | W | U, P | W | U | A, P | W | U | A | D, P | W | U | NX,
                0, P | W | U | (1 << 51)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(FLAG_CHOICES), min_size=4, max_size=4),
       st.sampled_from([0, 2, 4, 6, 16, 20, PFERR_IMPLICIT_ACCESS]),
       st.lists(st.booleans(), min_size=5, max_size=5),
       st.sampled_from([1, 2]))
def test_three_walkers_agree(flags, access, cpu, leaf_level):
    results = []
    for kind in ("fast", "ops", "rfc"):
        mem = memory()
        pt = GuestPageTables(mem, range(0x100, 0x140))
        gva = 0x7FFF_1240_0000
        pt.map(gva, 0x400000 if leaf_level == 2 else 0x42000, level=leaf_level)
        gpas = [(lv, pt.entry_gpa(gva, lv)) for lv in (4, 3, 2, 1)]
        gpas = [(lv, gpa) for lv, gpa in gpas if gpa is not None]
        for (level, gpa), f in zip(gpas, flags):
            old = mem.guest_read_u64(gpa)
            mem.guest_write_u64(gpa, (old & 0x000F_FFFF_FFFF_F000) | f | (old & PS))
        vcpu = pt.vcpu(cr0_wp=cpu[0], cr4_smep=cpu[1], cr4_smap=cpu[2], efer_nx=cpu[3],
                       eflags_ac=cpu[4])
        w = GuestWalker()
        if kind == "fast":
            ret = walk_addr_generic(w, vcpu, mem, gva | 0x123, access)
        elif kind == "ops":
            ret = run_ops(walk_addr_generic_ops(w, vcpu, mem, gva | 0x123, access))
        else:
            ret = walk_addr_generic_gpc(w, vcpu, mem, gva | 0x123, access, as_posted=False)
        out = (ret, w.level, w.fault.error_code if not ret else (w.gfn, w.pte_access),
               [mem.guest_read_u64(gpa) for _lv, gpa in gpas], mem.dirty_gfns())
        results.append(out)
    assert results[0] == results[1] == results[2]


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------
def test_bad_addresses_and_access_flags():
    mem, pt, gva = mapped()
    vcpu = pt.vcpu()
    w = GuestWalker()
    with pytest.raises(ValueError, match="not canonical"):
        walk_addr_generic(w, vcpu, mem, 0x0000_8000_0000_0000, 0)
    with pytest.raises(ValueError, match="64-bit"):
        walk_addr_generic(w, vcpu, mem, 1 << 64, 0)
    with pytest.raises(ValueError, match="64-bit"):
        walk_addr_generic(w, vcpu, mem, -1, 0)
    with pytest.raises(TypeError, match="addr must be an integer"):
        walk_addr_generic(w, vcpu, mem, "0x1000", 0)
    with pytest.raises(ValueError, match="unknown bits 0x1"):
        walk_addr_generic(w, vcpu, mem, gva, PFERR_PRESENT_MASK)
    with pytest.raises(ValueError, match="both a write and an instruction fetch"):
        walk_addr_generic(w, vcpu, mem, gva, PFERR_WRITE_MASK | PFERR_FETCH_MASK)
    with pytest.raises(TypeError, match="access must be an integer"):
        walk_addr_generic(w, vcpu, mem, gva, "write")
    with pytest.raises(TypeError, match="walker must be a GuestWalker"):
        walk_addr_generic(None, vcpu, mem, gva, 0)
    la57 = Vcpu(cr3=0x100000, cr4_la57=True)
    walk_addr_generic(w, la57, mem, 0x00FF_FFFF_FFFF_F000, 0)          # canonical with LA57
    with pytest.raises(ValueError, match="not canonical for 5-level"):
        walk_addr_generic(w, la57, mem, 0x0100_0000_0000_0000, 0)
    mem2, pt2, gva2 = mapped(memory(), mode="PAE")
    with pytest.raises(ValueError, match="PAE"):
        walk_addr_generic(w, pt2.vcpu(), mem2, 1 << 32, 0)
    assert ACCESS_FLAGS == 0x16 | PFERR_IMPLICIT_ACCESS


def test_bad_vcpu_and_tables():
    with pytest.raises(ValueError, match="cr4_la57 needs efer_lma"):
        Vcpu(cr3=0, efer_lma=False, cr4_la57=True)
    with pytest.raises(ValueError, match="needs pdptrs"):
        Vcpu(cr3=0, efer_lma=False)
    with pytest.raises(ValueError, match="above MAXPHYADDR"):
        Vcpu(cr3=1 << 47, maxphyaddr=46)
    with pytest.raises(ValueError, match="maxphyaddr"):
        Vcpu(cr3=0, maxphyaddr=60)
    with pytest.raises(TypeError, match="cr0_wp must be True or False"):
        Vcpu(cr3=0, cr0_wp=1)
    mem = memory()
    with pytest.raises(ValueError, match="mode must be one of"):
        GuestPageTables(mem, [0x100], mode="2-level")
    with pytest.raises(ValueError, match="not in any memslot"):
        GuestPageTables(mem, [0x9000])
    pt = GuestPageTables(mem, [0x100, 0x101])
    with pytest.raises(ValueError, match="out of page-table frames"):
        pt.map(0x1000, 0x2000)
    pt = GuestPageTables(mem, range(0x100, 0x110))
    with pytest.raises(ValueError, match="aligned"):
        pt.map(0x1000, 0x2000, level=2)
    with pytest.raises(ValueError, match="address bits"):
        pt.map(0x1000, 0x2000, flags=P | 0x5000)
    pt.map(0x20_0000, 0x40_0000, level=2)
    with pytest.raises(ValueError, match="inside a large page"):
        pt.map(0x20_1000, 0x2000)
    with pytest.raises(ValueError, match="read-only slot"):
        memory(rom=True).guest_write_u64(0x100000, 1)
    with pytest.raises(ValueError, match="only those can be private"):
        memory().set_memory_attributes(0x10, 0x11, True)


# ---------------------------------------------------------------------------
# The traced walk the chapter prints.
# ---------------------------------------------------------------------------
def test_trace_walk_explains_faults():
    mem, pt, gva = mapped(leaf=P | W | U)
    vcpu = pt.vcpu(cr4_smap=True)
    t = trace_walk(vcpu, mem, gva, PFERR_WRITE_MASK)
    assert not t.ok and t.error_code == PFERR_PRESENT_MASK | PFERR_WRITE_MASK
    assert "SMAP" in t.reason
    assert [n for n, s, _ in t.error_bits if s] == ["P", "W"]
    t = trace_walk(vcpu, mem, gva, PFERR_WRITE_MASK | PFERR_USER_MASK)
    assert t.ok and t.gpa == 0x42678 and len(t.rows) == 4
    assert [u[0] for u in t.ad_updates] == [4, 3, 2, 1]
    assert "=> gpa 0x42678" in t.table()
    t = trace_walk(vcpu, mem, 0x1000, PFERR_FETCH_MASK)
    assert t.reason == "the PML4E is not present" and t.error_code == PFERR_FETCH_MASK
    assert pferr_str(0x25) == "P|U|PK" and access_str(PFERR_USER_MASK | 2) == "user write"


# ---------------------------------------------------------------------------
# R5.1 on the explorer.
# ---------------------------------------------------------------------------
def test_r51_merged_walker_holds_blind_write_resurrects():
    safe = explore(ad_race_scenario("6.17"))
    assert not safe.violated and safe.exhaustive
    bad = explore(ad_race_scenario("blind"))
    assert bad.violated and bad.invariant == RACE_INVARIANTS_AD[0]
    trace = run_schedule(ad_race_scenario("blind"), bad.schedule)
    assert trace.violation == RACE_INVARIANTS_AD[0]


def test_r51_rfc_as_posted_is_caught_fixed_holds():
    bad = explore(ad_race_scenario("rfc"))
    assert bad.violated and "never held" in bad.invariant
    good = explore(ad_race_scenario("rfc-fixed"))
    assert not good.violated and good.exhaustive
    # a read walk needs no D: the merged walker holds for reads too
    assert not explore(ad_race_scenario("6.17", access=0)).violated


def test_ops_walker_rejects_bad_input_before_any_step():
    mem, pt, gva = mapped()
    with pytest.raises(ValueError):
        run_ops(walk_addr_generic_ops(GuestWalker(), pt.vcpu(), mem, 1 << 47, 0))
    assert mem.dirty_gfns() == []


# ---------------------------------------------------------------------------
# The widget's pure function and the exercise generator.
# ---------------------------------------------------------------------------
def test_walk_view_never_raises():
    from kvmmu.viz.walker import walk_view

    garbage = [dict(gva_text=""), dict(gva_text=None), dict(gva_text="0x8000_0000_0000"),
               dict(gva_text="-1"), dict(gva_text="1" * 40), dict(gva_text="0xzz"),
               dict(access="exec"), dict(access=None), dict(privilege="root"),
               dict(access="fetch", privilege="implicit supervisor"),
               dict(level_flags={2: "P Q"}), dict(level_flags={7: "P"}), dict(level_flags=[1]),
               dict(level_flags={1: 5}), dict(level_flags="P"), dict(pkru_text="zz"),
               dict(pkru_text="0x1_0000_0000"), dict(pkey=99), dict(pkey=True), dict(pkey="1"),
               dict(cr0_wp="yes"), dict(cr4_la57=None), dict(tables_in_rom=1),
               dict(level_flags={5: "P"}), dict(gva_text=object())]
    for kwargs in garbage:
        view = walk_view(**kwargs)
        assert not view.ok and view.error, kwargs
        assert "error" in view.html() and view.text().startswith("error: ")


def test_walk_view_extremes():
    from kvmmu.viz.walker import walk_view

    v = walk_view("0xffffffffffffffff", "fetch", "user", cr4_la57=True)
    assert v.ok and v.trace.ok and len(v.trace.rows) == 5
    v = walk_view("0", "write", "supervisor", level_flags={4: "", 3: "P W U A D PS NX RSVD"})
    assert v.ok and not v.trace.ok and v.trace.error_code == PFERR_WRITE_MASK
    v = walk_view("0x7fff12345678", "write", "user", level_flags={4: "P W U PS"})
    assert v.trace.error_code == 0xF                       # PS is reserved in a PML4E
    v = walk_view("0x7fff12345678", "read", "implicit supervisor", cr4_smap=True, eflags_ac=True)
    assert not v.trace.ok and "implicit" in v.trace.reason
    v = walk_view("0x7fff12345678", "write", "user", tables_in_rom=True)
    assert v.trace.ok and v.before == v.after
    v = walk_view("0x7fff12345678", "write", "user")
    assert v.after[1] == v.before[1] | A | D and "<b>" in v.html()


def test_exercises_are_seeded_and_solved_by_the_walker():
    from kvmmu.exercises.walker import problem

    for seed in range(25):
        a, b = problem(seed), problem(seed)
        assert a.question == b.question and a.solution() == b.solution()
        assert a.question.startswith(f"Seed {seed}:")
        assert a.solution().count("=>") == 4
        assert problem(seed, "ad").solution().count("=>") == 3
    assert problem(1).question != problem(2).question
    with pytest.raises(ValueError, match="kind"):
        problem(1, "bogus")
    with pytest.raises(ValueError, match="seed"):
        problem(-1)
