"""Unit, property and race tests of the guest walk on the one VM: kvmmu.paging_tmpl (6.17),
kvmmu.paging_tmpl_rfc (the RFC), kvmmu.mmu_permissions, kvmmu.guest, the text view
kvmmu.viz.walk_trace, and chapter 5's scenarios (kvmmu.scenarios.paging_tmpl)."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmmu import paging_tmpl_rfc as rfc
from kvmmu.cpu import run_alone
from kvmmu.explorer import explore, run_schedule
from kvmmu.guest import (HOST, GuestPageTables, guest_read_u64, guest_vm, guest_write_u64,
                         gpte_str)
from kvmmu.memslots import KVM_MEM_GUEST_MEMFD, KVM_MEM_READONLY
from kvmmu.mmu_permissions import KvmVcpuArch, permission_fault
from kvmmu.paging_tmpl import (ACCESS_FLAGS, MAX_WALK_RETRIES, PAGING64, PT_INDEX,
                               PT_LVL_ADDR_MASK, PT_LVL_OFFSET_MASK, GuestWalker, WalkLivelock,
                               WalkVariant, gpte_access, gpte_pkeys, gpte_to_gfn_lvl,
                               is_last_gpte, is_rsvd_bits_set, protect_clean_gpte, run_walk,
                               walk_addr_generic)
from kvmmu.pferr import (PFERR_FETCH_MASK, PFERR_IMPLICIT_ACCESS, PFERR_PK_MASK,
                         PFERR_PRESENT_MASK, PFERR_RSVD_MASK, PFERR_USER_MASK, PFERR_WRITE_MASK,
                         pferr_str)
from kvmmu.scenarios import paging_tmpl as races
from kvmmu.spte import (PT64_NX_MASK, PT_ACCESSED_MASK, PT_DIRTY_MASK, PT_PAGE_SIZE_MASK,
                        PT_PRESENT_MASK, PT_USER_MASK, PT_WRITABLE_MASK)
from kvmmu.viz.walk_trace import access_str, trace_walk

P, W, U, A, D, PS, NX = (PT_PRESENT_MASK, PT_WRITABLE_MASK, PT_USER_MASK, PT_ACCESSED_MASK,
                         PT_DIRTY_MASK, PT_PAGE_SIZE_MASK, PT64_NX_MASK)
GVA = 0x7FFF_1234_5678


def memory(*, rom=False, private=False, gmem_ok=True):
    """A vCPU of a VM whose slot 0 is RAM at gfn 0..0x100 and slot 1 holds the tables
    at gfn 0x100..0x200 (a ROM, or guest_memfd memory whose gfns are private)."""
    flags = KVM_MEM_READONLY if rom else KVM_MEM_GUEST_MEMFD if private else 0
    return guest_vm([(0, 0x100, HOST), (0x100, 0x100, HOST + 0x100000, flags)],
                    kvm_can_access_gmem=gmem_ok, gpc_gmem="rfc" if private else "6.17")


def mapped(vcpu=None, *, leaf=P | W | U, table=P | W | U, vmm=False, mode="4-level", **regs):
    vcpu = vcpu or memory()
    pt = GuestPageTables(vcpu.kvm, range(0x100, 0x140), vmm=vmm, mode=mode,
                         pdpt_gpa=0x13F000 if mode == "PAE" else None)
    gva = GVA if mode != "PAE" else 0x8123_4567
    pt.map(gva & ~0xFFF, 0x42000, flags=leaf, table_flags=table)
    pt.load(vcpu, **regs)
    return vcpu, pt, gva


def dirty(vcpu):
    return sorted(vcpu.kvm.fields.dirty)


def rfc_walk(vcpu, gva, access, *, as_posted=True, walker=None):
    walker = GuestWalker() if walker is None else walker
    ret = run_alone(vcpu.kvm, rfc.walk_addr_generic(walker, vcpu, vcpu.arch.walk_mmu, gva,
                                                    access, as_posted))
    return ret, walker


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


@pytest.mark.parametrize("call", [lambda: PT_INDEX(0x1000, 0), lambda: gpte_to_gfn_lvl(0x1000, 0),
                                  lambda: PT_INDEX(-1, 1), lambda: PT_LVL_ADDR_MASK(6),
                                  lambda: gpte_access(1 << 64)])
def test_decoders_reject_levels_and_values_out_of_range(call):
    with pytest.raises(ValueError):
        call()


def test_gpte_access_and_protect_clean():
    # ACC_EXEC is P xor NX: NX pages are not executable
    assert gpte_access(P | W | U) == 7
    assert gpte_access(P | W | U | NX) == 6
    assert gpte_access(P) == 1
    mmu = KvmVcpuArch(cr3=0).walk_mmu
    assert protect_clean_gpte(mmu, 7, P | W) == 5        # clean: W dropped
    assert protect_clean_gpte(mmu, 7, P | W | D) == 7    # dirty: kept
    assert gpte_pkeys(0x7800_0000_0000_0000) == 0xF
    assert gpte_pkeys(5 << 59) == 5


def test_reserved_bits_and_last_gpte():
    mmu = KvmVcpuArch(cr3=0, maxphyaddr=46).walk_mmu
    assert is_rsvd_bits_set(mmu, P | (1 << 51), 1)
    assert not is_rsvd_bits_set(mmu, P | (1 << 45), 1)
    assert is_rsvd_bits_set(mmu, P | PS, 4)               # no 512G pages
    assert not is_rsvd_bits_set(mmu, P | PS, 3)           # 1G page, aligned
    assert is_rsvd_bits_set(mmu, P | PS | (1 << 13), 2)   # 2M page, misaligned
    assert not is_rsvd_bits_set(mmu, P | PS | (1 << 12), 2)  # bit 12 is PAT
    assert is_rsvd_bits_set(KvmVcpuArch(cr3=0, gbpages=False).walk_mmu, P | PS, 3)
    assert is_rsvd_bits_set(KvmVcpuArch(cr3=0, efer_nx=False).walk_mmu, P | NX, 1)
    assert is_last_gpte(mmu, 1, P) and is_last_gpte(mmu, 2, P | PS)
    assert not is_last_gpte(mmu, 2, P) and not is_last_gpte(mmu, 3, P)


def test_permission_bitmap_byte_masks():
    # x = 0xAA, w = 0xCC, u = 0xF0: the byte masks of update_permission_bitmask
    mmu = KvmVcpuArch(cr3=0, cr0_wp=True, efer_nx=True).walk_mmu
    assert mmu.permissions[PFERR_WRITE_MASK >> 1] == (~0xCC & 0xFF)
    assert mmu.permissions[PFERR_USER_MASK >> 1] == (~0xF0 & 0xFF)
    assert mmu.permissions[PFERR_FETCH_MASK >> 1] == (~0xAA & 0xFF)
    assert mmu.permissions[0] == 0
    no_wp = KvmVcpuArch(cr3=0, cr0_wp=False).walk_mmu
    assert no_wp.permissions[PFERR_WRITE_MASK >> 1] == 0       # supervisor writes allowed
    smap = KvmVcpuArch(cr3=0, cr4_smap=True).walk_mmu
    assert smap.permissions[0] == 0xF0                         # supervisor read of user pages
    assert smap.permissions[PFERR_RSVD_MASK >> 1] == 0         # ... unless EFLAGS.AC


def test_permission_fault_returns_only_0_1_0x21():
    values = set()
    for wp, smep, smap, nx, ac, pke in itertools.product((False, True), repeat=6):
        for pkru in (0, 0x55555555, 0xAAAAAAAA):
            regs = KvmVcpuArch(cr3=0, cr0_wp=wp, cr4_smep=smep, cr4_smap=smap, efer_nx=nx,
                               eflags_ac=ac, cr4_pke=pke, pkru=pkru)
            for pte_access in range(8):
                for pkey in (0, 3):
                    for access in (0, 2, 4, 6, 16, 20, PFERR_IMPLICIT_ACCESS,
                                   PFERR_IMPLICIT_ACCESS | 2):
                        values.add(permission_fault(regs, regs.walk_mmu, pte_access, pkey, access))
    assert values == {0, PFERR_PRESENT_MASK, PFERR_PRESENT_MASK | PFERR_PK_MASK}


@pytest.mark.parametrize("args, exc", [((8, 0, 0), ValueError), ((0, 16, 0), ValueError),
                                       ((-1, 0, 0), ValueError), ((0, 0, 1), ValueError),
                                       ((0, 0, -1), ValueError), ((0.5, 0, 0), TypeError),
                                       ((0, None, 0), TypeError)])
def test_permission_fault_rejects_arguments_out_of_range(args, exc):
    regs = KvmVcpuArch(cr3=0)
    with pytest.raises(exc):
        permission_fault(regs, regs.walk_mmu, *args)
    with pytest.raises(TypeError, match="vcpu"):
        permission_fault(object(), regs.walk_mmu, 0, 0, 0)


# ---------------------------------------------------------------------------
# Walks.
# ---------------------------------------------------------------------------
def test_walk_4level_fills_the_walker_record():
    vcpu, pt, gva = mapped()
    ret, w = run_walk(vcpu, gva, PFERR_USER_MASK)
    assert ret == 1
    assert (w.level, w.max_level, w.gfn) == (1, 4, 0x42)
    assert w.table_gfn[:4] == [0x103, 0x102, 0x101, 0x100]
    assert w.pte_gpa[3] == 0x100000 + 8 * 0xFF
    assert w.pte_writable[:4] == [True] * 4
    assert w.ptep_user[3] == HOST + 0x100000 + 8 * 0xFF     # slot 1's hva of gfn 0x100
    assert w.pt_access[3] == 7                      # nothing above the root
    assert w.pte_access == 5                        # clean read: W stripped
    assert all(w.ptes[i] & A for i in range(4))
    assert dirty(vcpu) == [0x100, 0x101, 0x102, 0x103]


def test_walk_5level_and_pae():
    vcpu = memory()
    pt = GuestPageTables(vcpu.kvm, range(0x100, 0x140), mode="5-level")
    gva = 0x00AB_CDEF_1234_5000
    pt.map(gva, 0x42000)
    arch = pt.load(vcpu)
    assert arch.mode == "5-level"
    ret, w = run_walk(vcpu, gva | 0x678, PFERR_WRITE_MASK)
    assert ret == 1 and (w.max_level, w.gfn) == (5, 0x42)
    vcpu, pt, gva = mapped(mode="PAE")
    assert vcpu.arch.mode == "PAE" and vcpu.arch.pdptrs[2] & P
    ret, w = run_walk(vcpu, gva, PFERR_WRITE_MASK)
    assert ret == 1 and (w.max_level, w.level, w.gfn) == (2, 1, 0x42)


def test_large_pages():
    vcpu = memory()
    pt = GuestPageTables(vcpu.kvm, range(0x100, 0x140))
    pt.map(0x4000_0000, 0x8000_0000, level=3)
    pt.map(0x20_0000, 0x60_0000, level=2)
    pt.load(vcpu)
    ret, w = run_walk(vcpu, 0x4012_3456, 0)
    assert ret == 1 and (w.level, w.gfn) == (3, 0x80123)
    ret, w = run_walk(vcpu, 0x21_2345, 0)
    assert ret == 1 and (w.level, w.gfn) == (2, 0x612)


def test_not_present_reserved_and_permission_error_codes():
    vcpu, pt, gva = mapped(leaf=P | U)
    kvm = vcpu.kvm
    ret, w = run_walk(vcpu, gva, PFERR_WRITE_MASK | PFERR_USER_MASK)
    assert ret == 0
    assert w.fault.error_code == PFERR_PRESENT_MASK | PFERR_WRITE_MASK | PFERR_USER_MASK
    assert w.fault.vector == 14 and w.fault.address == gva
    ret, w = run_walk(vcpu, 0x1000, PFERR_FETCH_MASK)
    assert ret == 0 and w.fault.error_code == PFERR_FETCH_MASK and w.level == 4
    pde = pt.entry_gpa(gva, 2)
    guest_write_u64(kvm, pde, guest_read_u64(kvm, pde) | 1 << 51)
    ret, w = run_walk(vcpu, gva, 0)
    assert ret == 0
    assert w.fault.error_code == PFERR_RSVD_MASK | PFERR_PRESENT_MASK and w.level == 2


def test_read_with_clean_leaf_strips_write():
    vcpu, pt, gva = mapped()
    leaf = pt.entry_gpa(gva, 1)
    ret, w = run_walk(vcpu, gva, 0)
    assert ret == 1 and not w.pte_access & PT_WRITABLE_MASK
    assert not guest_read_u64(vcpu.kvm, leaf) & D
    ret, w = run_walk(vcpu, gva, PFERR_WRITE_MASK)
    assert w.pte_access & PT_WRITABLE_MASK and guest_read_u64(vcpu.kvm, leaf) & D
    ret, w = run_walk(vcpu, gva, 0)
    assert w.pte_access & PT_WRITABLE_MASK                   # now dirty: stays writable


def _run_interfering(kvm, gen, gpa, new_value):
    """Run CPU code alone; the first time it is about to compare-exchange, the guest writes first."""
    done, result = False, None
    try:
        while True:
            op = gen.send(result)
            if not done and "cmpxchg" in op.what():
                guest_write_u64(kvm, gpa, new_value)
                done = True
            result = op.run(op.prim, op.args, "A", kvm)
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("which", ["6.17", "rfc-fixed"])
def test_cmpxchg_mismatch_restarts_the_walk(which):
    # __try_cmpxchg_user returns 1: the walk restarts from CR3 and sees the guest's new entry
    vcpu, pt, gva = mapped()
    leaf_gpa = pt.entry_gpa(gva, 1)
    remapped = guest_read_u64(vcpu.kvm, leaf_gpa) & ~0xFFFFFFFFF000 | (0x77 << 12)
    w = GuestWalker()
    mmu = vcpu.arch.walk_mmu
    gen = (walk_addr_generic(w, vcpu, mmu, gva, PFERR_WRITE_MASK) if which == "6.17" else
           rfc.walk_addr_generic(w, vcpu, mmu, gva, PFERR_WRITE_MASK, as_posted=False))
    ret = _run_interfering(vcpu.kvm, gen, leaf_gpa, remapped)
    assert ret == 1 and w.retries == 1
    assert w.gfn == 0x77, "the restarted walk must use the guest's new entry"
    assert any(x[0] == 1 and x[3].startswith("mismatch") for x in w.ad_log)
    assert vcpu.kvm.fields.gpc_list == ()


def test_rfc_as_posted_inverts_try_cmpxchg():
    # success: restarts (once per level that needed A) and logs nothing dirty
    vcpu, pt, gva = mapped()
    ret, w = rfc_walk(vcpu, gva, PFERR_WRITE_MASK, as_posted=True)
    assert ret == 1 and w.retries == 4 and dirty(vcpu) == []
    # mismatch: carries on with the entry it read, although the guest remapped it
    vcpu, pt, gva = mapped(leaf=P | W | U | A, table=P | W | U | A)
    leaf_gpa = pt.entry_gpa(gva, 1)
    remapped = guest_read_u64(vcpu.kvm, leaf_gpa) & ~0xFFFFFFFFF000 | (0x77 << 12)
    w = GuestWalker()
    ret = _run_interfering(vcpu.kvm, rfc.walk_addr_generic(w, vcpu, vcpu.arch.walk_mmu, gva,
                                                           PFERR_WRITE_MASK), leaf_gpa, remapped)
    assert ret == 1 and w.retries == 0 and w.gfn == 0x42
    assert w.ptes[0] & D and guest_read_u64(vcpu.kvm, leaf_gpa) == remapped
    # with the result converted: no restart on success, tables logged dirty
    vcpu, pt, gva = mapped()
    ret, w = rfc_walk(vcpu, gva, PFERR_WRITE_MASK, as_posted=False)
    assert ret == 1 and w.retries == 0 and dirty(vcpu) == [0x100, 0x101, 0x102, 0x103]


def test_rfc_read_only_tables_livelock_with_a_stale_pte_writable():
    vcpu, pt, gva = mapped(memory(rom=True), vmm=True)
    # 6.17: the walk succeeds, A/D are skipped in the ROM
    ret, w = run_walk(vcpu, gva, 0)
    assert ret == 1 and [o for *_x, o in w.ad_log] == ["skipped: read-only slot"] * 4
    # the RFC as posted leaves pte_writable[] as an earlier walk left it
    w.pte_writable = [True] * 5
    with pytest.raises(WalkLivelock):
        rfc_walk(vcpu, gva, 0, as_posted=True, walker=w)
    w.pte_writable = [True] * 5
    assert rfc_walk(vcpu, gva, 0, as_posted=False, walker=w)[0] == 1
    assert vcpu.kvm.fields.gpc_list == ()


def test_private_tables_need_gmem_access():
    vcpu, pt, gva = mapped(memory(private=True, gmem_ok=True))
    ret, w = rfc_walk(vcpu, gva, PFERR_WRITE_MASK, as_posted=False)
    assert ret == 1 and w.gfn == 0x42
    # 6.17 reads the slot's user mapping: the shared view, where the guest wrote nothing
    ret, w = run_walk(vcpu, gva, 0)
    assert ret == 0 and w.fault.error_code == 0 and w.gpte_read[3] == 0
    vcpu, pt, gva = mapped(memory(private=True, gmem_ok=False))
    ret, w = rfc_walk(vcpu, gva, PFERR_WRITE_MASK | PFERR_USER_MASK, as_posted=False)
    assert ret == 0 and w.fault.error_code == PFERR_WRITE_MASK | PFERR_USER_MASK
    assert w.level == 4 and vcpu.kvm.fields.gpc_list == ()


def test_table_outside_memslots_faults_not_present():
    vcpu, pt, gva = mapped()
    gpa = pt.entry_gpa(gva, 3)
    guest_write_u64(vcpu.kvm, gpa, (guest_read_u64(vcpu.kvm, gpa) & 0xFFF) | (0x5000 << 12))
    ret, w = run_walk(vcpu, gva, PFERR_WRITE_MASK)
    assert ret == 0 and w.fault.error_code == PFERR_WRITE_MASK and w.level == 2


def test_walk_restarts_are_bounded():
    def always_changed(vcpu, mmu, walker, addr, write_fault):
        return 1                                  # the guest changed an entry, again
        yield                                     # (CPU code)
    vcpu, pt, gva = mapped()
    variant = WalkVariant("always changed", PAGING64.read_gpte, always_changed)
    with pytest.raises(WalkLivelock, match=f"restarted {MAX_WALK_RETRIES} times"):
        run_walk(vcpu, gva, 0, variant=variant)


def test_a_walk_through_the_last_entry_of_every_table():
    # Index 511 at every level: each entry is the last 8 bytes of its page,
    # so the RFC's pfn caches cover [0xff8, 0x1000): a range that ends
    # exactly at the end of the page.
    gva = 0xFFFF_FFFF_FFFF_F000
    assert [PT_INDEX(gva, lv) for lv in (4, 3, 2, 1)] == [511] * 4
    for which in ("6.17", "rfc"):
        vcpu = memory()
        pt = GuestPageTables(vcpu.kvm, range(0x100, 0x140))
        pt.map(gva, 0x42000)
        pt.load(vcpu)
        if which == "6.17":
            ret, w = run_walk(vcpu, gva | 0xABC, PFERR_WRITE_MASK)
        else:
            ret, w = rfc_walk(vcpu, gva | 0xABC, PFERR_WRITE_MASK, as_posted=False)
        assert ret == 1 and w.gfn == 0x42, which
        assert [gpa & 0xFFF for gpa in w.pte_gpa[:4]] == [0xFF8] * 4
        assert guest_read_u64(vcpu.kvm, pt.entry_gpa(gva, 1)) & (A | D) == A | D
        assert dirty(vcpu) == [0x100, 0x101, 0x102, 0x103]


# ---------------------------------------------------------------------------
# The 6.17 walker and the RFC walker (fixed) agree.
# ---------------------------------------------------------------------------
FLAG_CHOICES = [P, P | W, P | U, P | W | U, P | W | U | A, P | W | U | A | D, P | W | U | NX,
                0, P | W | U | (1 << 51)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(FLAG_CHOICES), min_size=4, max_size=4),
       st.sampled_from([0, 2, 4, 6, 16, 20, PFERR_IMPLICIT_ACCESS]),
       st.lists(st.booleans(), min_size=5, max_size=5),
       st.sampled_from([1, 2]))
def test_the_two_walkers_agree(flags, access, cpu, leaf_level):
    results = []
    for which in ("6.17", "rfc"):
        vcpu = memory()
        kvm = vcpu.kvm
        pt = GuestPageTables(kvm, range(0x100, 0x140))
        gva = 0x7FFF_1240_0000
        pt.map(gva, 0x400000 if leaf_level == 2 else 0x42000, level=leaf_level)
        gpas = [(lv, pt.entry_gpa(gva, lv)) for lv in (4, 3, 2, 1)]
        gpas = [(lv, gpa) for lv, gpa in gpas if gpa is not None]
        for (level, gpa), f in zip(gpas, flags):
            old = guest_read_u64(kvm, gpa)
            guest_write_u64(kvm, gpa, (old & 0x000F_FFFF_FFFF_F000) | f | (old & PS))
        pt.load(vcpu, cr0_wp=cpu[0], cr4_smep=cpu[1], cr4_smap=cpu[2], efer_nx=cpu[3],
                eflags_ac=cpu[4])
        if which == "6.17":
            ret, w = run_walk(vcpu, gva | 0x123, access)
        else:
            ret, w = rfc_walk(vcpu, gva | 0x123, access, as_posted=False)
        results.append((ret, w.level, w.fault.error_code if not ret else (w.gfn, w.pte_access),
                        [guest_read_u64(kvm, gpa) for _lv, gpa in gpas], dirty(vcpu)))
        assert kvm.fields.gpc_list == ()
    assert results[0] == results[1]


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------
def test_bad_addresses_and_access_flags():
    vcpu, pt, gva = mapped()
    w = GuestWalker()
    for addr, exc, match in [(0x0000_8000_0000_0000, ValueError, "not canonical"),
                             (1 << 64, ValueError, "64-bit"), (-1, ValueError, "64-bit"),
                             ("0x1000", TypeError, "addr must be an integer")]:
        with pytest.raises(exc, match=match):
            run_walk(vcpu, addr, 0)
    with pytest.raises(ValueError, match="unknown bits 0x1"):
        run_walk(vcpu, gva, PFERR_PRESENT_MASK)
    with pytest.raises(ValueError, match="both a write and an instruction fetch"):
        run_walk(vcpu, gva, PFERR_WRITE_MASK | PFERR_FETCH_MASK)
    with pytest.raises(TypeError, match="access must be an integer"):
        run_walk(vcpu, gva, "write")
    with pytest.raises(TypeError, match="walker must be a GuestWalker"):
        next(walk_addr_generic(None, vcpu, vcpu.arch.walk_mmu, gva, 0))
    with pytest.raises(TypeError, match="mmu must be a KvmMmu"):
        next(walk_addr_generic(w, vcpu, vcpu.arch, gva, 0))
    la57 = mapped(mode="5-level")[0]
    run_walk(la57, 0x00FF_FFFF_FFFF_F000, 0)                       # canonical with LA57
    with pytest.raises(ValueError, match="not canonical for 5-level"):
        run_walk(la57, 0x0100_0000_0000_0000, 0)
    pae = mapped(mode="PAE")[0]
    with pytest.raises(ValueError, match="PAE"):
        run_walk(pae, 1 << 32, 0)
    assert ACCESS_FLAGS == 0x16 | PFERR_IMPLICIT_ACCESS


def test_the_walk_rejects_bad_input_before_its_first_step():
    vcpu, pt, gva = mapped()
    walk = walk_addr_generic(GuestWalker(), vcpu, vcpu.arch.walk_mmu, 1 << 47, 0)
    with pytest.raises(ValueError):
        next(walk)
    with pytest.raises(ValueError):
        next(rfc.walk_addr_generic(GuestWalker(), vcpu, vcpu.arch.walk_mmu, 1 << 47, 0))
    assert dirty(vcpu) == []


def test_bad_registers_and_tables():
    with pytest.raises(ValueError, match="cr4_la57 needs efer_lma"):
        KvmVcpuArch(cr3=0, efer_lma=False, cr4_la57=True)
    with pytest.raises(ValueError, match="needs pdptrs"):
        KvmVcpuArch(cr3=0, efer_lma=False)
    with pytest.raises(ValueError, match="above MAXPHYADDR"):
        KvmVcpuArch(cr3=1 << 47, maxphyaddr=46)
    with pytest.raises(ValueError, match="maxphyaddr"):
        KvmVcpuArch(cr3=0, maxphyaddr=60)
    with pytest.raises(TypeError, match="cr0_wp must be True or False"):
        KvmVcpuArch(cr3=0, cr0_wp=1)
    kvm = memory().kvm
    with pytest.raises(ValueError, match="mode must be one of"):
        GuestPageTables(kvm, [0x100], mode="2-level")
    with pytest.raises(ValueError, match="not in any memslot"):
        GuestPageTables(kvm, [0x9000])
    pt = GuestPageTables(kvm, [0x100, 0x101])
    with pytest.raises(ValueError, match="out of page-table frames"):
        pt.map(0x1000, 0x2000)
    pt = GuestPageTables(kvm, range(0x100, 0x110))
    with pytest.raises(ValueError, match="aligned"):
        pt.map(0x1000, 0x2000, level=2)
    with pytest.raises(ValueError, match="address bits"):
        pt.map(0x1000, 0x2000, flags=P | 0x5000)
    pt.map(0x20_0000, 0x40_0000, level=2)
    with pytest.raises(ValueError, match="inside a large page"):
        pt.map(0x20_1000, 0x2000)
    with pytest.raises(ValueError, match="read-only slot"):
        guest_write_u64(memory(rom=True).kvm, 0x100000, 1)
    with pytest.raises(ValueError, match="not in any memslot"):
        guest_write_u64(kvm, 0x1000_0000, 1)
    with pytest.raises(ValueError, match="has no paging registers"):
        run_walk(memory(), 0x1000, 0)


# ---------------------------------------------------------------------------
# The traced walk the chapter prints.
# ---------------------------------------------------------------------------
def test_trace_walk_explains_faults():
    vcpu, pt, gva = mapped(leaf=P | W | U, cr4_smap=True)
    t = trace_walk(vcpu, gva, PFERR_WRITE_MASK)
    assert not t.ok and t.error_code == PFERR_PRESENT_MASK | PFERR_WRITE_MASK
    assert "SMAP" in t.reason
    assert [n for n, s, _ in t.error_bits if s] == ["P", "W"]
    t = trace_walk(vcpu, gva, PFERR_WRITE_MASK | PFERR_USER_MASK)
    assert t.ok and t.gpa == 0x42678 and len(t.rows) == 4
    assert [u[0] for u in t.ad_updates] == [4, 3, 2, 1]
    assert "=> gpa 0x42678" in t.table()
    t = trace_walk(vcpu, 0x1000, PFERR_FETCH_MASK)
    assert t.reason == "the PML4E is not present" and t.error_code == PFERR_FETCH_MASK
    assert pferr_str(0x25) == "P|U|PK" and access_str(PFERR_USER_MASK | 2) == "user write"
    assert gpte_str(P | W | U | A) == "P W U A" and gpte_str(0) == "-"


# ---------------------------------------------------------------------------
# R5.1 on the explorer.
# ---------------------------------------------------------------------------
def test_r51_merged_walker_holds_blind_write_resurrects():
    safe = explore(races.ad_race_scenario("6.17"))
    assert not safe.violated and safe.exhaustive
    bad = explore(races.ad_race_scenario("blind"))
    assert bad.violated and bad.invariant == races.RACE_INVARIANTS[0]
    trace = run_schedule(races.ad_race_scenario("blind"), bad.schedule)
    assert trace.violation == races.RACE_INVARIANTS[0]


def test_r51_rfc_as_posted_is_caught_fixed_holds():
    bad = explore(races.ad_race_scenario("rfc"))
    assert bad.violated and "never held" in bad.invariant
    good = explore(races.ad_race_scenario("rfc-fixed"))
    assert not good.violated and good.exhaustive
    # a read walk needs no D: the merged walker holds for reads too
    assert not explore(races.ad_race_scenario("6.17", access=0)).violated


def test_the_final_check_catches_an_ad_write_that_is_not_logged_dirty():
    # The RFC as posted restarts after a *successful* update without marking
    # the table dirty: alone (the guest never writes), that is what the
    # final check sees.
    sc = races.ad_race_scenario("rfc")
    kvm = sc.world()
    result = run_alone(kvm, sc.actors[0].fn(kvm))
    assert result.ok
    verdict = sc.final_check(kvm, {"A": result, "B": None})
    assert isinstance(verdict, str) and "did not log them dirty" in verdict


@pytest.mark.parametrize("name", sorted(races.SCENARIOS))
def test_every_chapter_5_scenario_gives_its_verdict_on_the_snapshot_engine(name):
    entry = races.SCENARIOS[name]
    res = explore(entry.build())
    assert res.method == "snapshot", res.note
    assert res.violated == (entry.expect == "violated"), res.summary()
    if not res.violated:
        assert res.exhaustive


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

    for seed in range(12):
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
