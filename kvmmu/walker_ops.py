"""The 6.17 guest walk as a step generator, for the interleaving explorer.

Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_addr_generic)(), FNAME(update_accessed_dirty_bits)()

Reference version: Linux 6.17 (read at v6.17-rc3), kernel-facts §5(a).

:func:`walk_addr_generic_ops` is :func:`kvmmu.walker.walk_addr_generic`
cut into explorer steps: one step per page-table read and one per A/D
compare-exchange, the points where another CPU can change the guest's
tables.  :func:`_walk_ops` is the walk's body, parameterised by how a level
is read and how A/D bits are written, so the RFC walker
(:mod:`kvmmu.walker_gpc`) reuses it.
:func:`update_accessed_dirty_bits_blind_ops` is the chapter's unsafe
variant (no compare).

**Where the model simplifies.**  Memslots are read outside steps (no race
of chapter 5 changes them); everything else as in :mod:`kvmmu.walker`.
"""
from .errno import EFAULT
from .guest_memory import (KVM_HVA_ERR_BAD, STEP, GuestMemory, hexed, kvm_is_error_hva,
                           kvm_is_visible_memslot)
from .guest_paging import (PFERR_PRESENT_MASK, PFERR_RSVD_MASK, PFERR_WRITE_MASK,
                           PT_GUEST_ACCESSED_MASK, PT_INDEX, U64_MASK, gpte_access, gpte_to_gfn,
                           Vcpu, is_present_gpte)
from .levels import PAGE_SHIFT
from .memslots import KVM_MEM_READONLY
from .spte import PT64_NX_MASK
from .walker import (MAX_WALK_RETRIES, GuestWalker, WalkLivelock, _ad_target,
                     _cmpxchg_outcome, _walk_error, _walk_leaf, check_access, check_gva,
                     is_last_gpte, is_rsvd_bits_set)


def _check_gpte(walker, mmu, level, pte, pt_access):
    # One level's checks after the read, shared by the step walkers: returns
    # (errcode or None to go on, pte_access).  Mirrors the fast loop above.
    walker.gpte_read[level - 1] = pte
    pte_access = pt_access & (pte ^ PT64_NX_MASK)
    if not is_present_gpte(pte):
        return 0, pte_access
    if is_rsvd_bits_set(mmu, pte, level):
        return PFERR_RSVD_MASK | PFERR_PRESENT_MASK, pte_access
    walker.ptes[level - 1] = pte
    walker.pt_access[level - 1] = gpte_access(pt_access ^ PT64_NX_MASK)
    return None, pte_access


def _table_hva(mem, table_gfn):
    # memslot -> (hva, writable), or (KVM_HVA_ERR_BAD, False) for no visible slot.
    # (Memslots are read outside steps: no race here changes them.  No slot
    # object is kept across a step either: the explorer may restore a copy.)
    slot = mem.gfn_to_memslot(table_gfn)
    if not kvm_is_visible_memslot(slot):
        return KVM_HVA_ERR_BAD, False
    return mem.gfn_to_hva_memslot_prot(slot, table_gfn)


def _table_slot_readonly(mem, table_gfn):
    # None for no visible memslot, else whether the slot is read-only.
    slot = mem.gfn_to_memslot(table_gfn)
    if not kvm_is_visible_memslot(slot):
        return None
    return bool(slot.flags & KVM_MEM_READONLY)


def _read_gpte_hva_ops(walker, mem, level, table_gfn, index):
    # 6.17: memslot -> hva (remember whether the slot is writable) -> __get_user.
    host_addr, writable = _table_hva(mem, table_gfn)
    if kvm_is_error_hva(host_addr):
        return -EFAULT, 0
    walker.pte_writable[level - 1] = writable
    ptep_user = host_addr + index * 8
    walker.ptep_user[level - 1] = ptep_user
    return (yield (STEP, f"L{level}: read gpte at gpa {(table_gfn << PAGE_SHIFT) + index * 8:#x}",
                   lambda: hexed(mem.get_user_u64(ptep_user))))


def walk_addr_generic_ops(walker: GuestWalker, vcpu: Vcpu, mem: GuestMemory, addr: int, access: int,
                          *, update_ad=None):
    """Step generator of :func:`walk_addr_generic` (6.17): one step per gpte read and A/D write.

    ``update_ad`` replaces :func:`update_accessed_dirty_bits_ops` (the
    chapter passes the unsafe blind-write variant).  Returns 1 or 0.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_addr_generic)()
    """
    check_access(access)
    check_gva(vcpu, addr)
    update_ad = update_ad or update_accessed_dirty_bits_ops
    return _walk_ops(walker, vcpu, mem, addr, access, _read_gpte_hva_ops, update_ad, None, None)


def _walk_ops(walker, vcpu, mem, addr, access, read_gpte, update_ad, on_entry, on_exit):
    # The body of walk_addr_generic as a generator, parameterised by how a
    # level is read and how A/D bits are written (6.17 or the RFC), what
    # happens once on entry and before every exit or restart.
    # (No `mmu = vcpu.mmu` local: the explorer freezes every local of a
    # suspended frame into each state key, and the mmu is a function of the
    # vcpu, which the frame already holds.)
    write_fault = access & PFERR_WRITE_MASK
    walker.retries = 0
    walker.ad_log.clear()
    if on_entry:
        yield on_entry
        on_entry = None      # done with it: a suspended frame should hold only live state
    while True:                                          # retry_walk:
        level = vcpu.mmu.root_level
        pte = vcpu.cr3
        accessed_dirty = PT_GUEST_ACCESSED_MASK
        errcode = 0
        failed = False
        if level == 3:
            pte = vcpu.pdptrs[(addr >> 30) & 3]
            walker.gpte_read[2] = pte
            if not is_present_gpte(pte):
                failed = True
            else:
                level -= 1
        if not failed:
            walker.max_level = level
            pte_access = U64_MASK
            while True:
                pt_access = pte_access
                index = PT_INDEX(addr, level)
                table_gfn = gpte_to_gfn(pte)
                walker.table_gfn[level - 1] = table_gfn
                walker.pte_gpa[level - 1] = (table_gfn << PAGE_SHIFT) + index * 8
                ret, pte = yield from read_gpte(walker, mem, level, table_gfn, index)
                pte = int(pte)                  # (steps return printable Hex values)
                if ret:
                    failed = True
                    break
                err, pte_access = _check_gpte(walker, vcpu.mmu, level, pte, pt_access)
                if err is not None:
                    errcode = err
                    failed = True
                    break
                accessed_dirty &= pte
                if is_last_gpte(vcpu.mmu, level, pte):
                    break
                level -= 1
        walker.level = level
        if not failed:
            errcode, accessed_dirty = _walk_leaf(walker, vcpu, vcpu.mmu, addr, access, pte, pte_access,
                                                 accessed_dirty)
            failed = bool(errcode)
        if not failed and not accessed_dirty:
            ret = yield from update_ad(vcpu, vcpu.mmu, walker, mem, addr, write_fault)
            if ret < 0:
                failed = True
                errcode = 0
            elif ret > 0:
                if on_exit:
                    yield from on_exit(walker)
                walker.retries += 1
                if walker.retries >= MAX_WALK_RETRIES:
                    raise WalkLivelock(f"walk of {addr:#x} restarted {walker.retries} times")
                continue                                 # goto retry_walk
        if on_exit:
            yield from on_exit(walker)
        if failed:
            return _walk_error(walker, vcpu, addr, access, errcode)
        return 1


def update_accessed_dirty_bits_ops(vcpu, mmu, walker, mem, addr, write_fault):
    """Step generator of :func:`update_accessed_dirty_bits` (6.17): one step per compare-exchange.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(update_accessed_dirty_bits)()
    """
    for level in range(walker.max_level, walker.level - 1, -1):
        orig_pte, pte = _ad_target(walker, level, write_fault)
        if pte == orig_pte:
            continue
        if not walker.pte_writable[level - 1]:
            walker.ad_log.append((level, orig_pte, pte, "skipped: read-only slot"))
            continue
        ptep = walker.ptep_user[level - 1]
        ret, cur = yield (STEP, f"L{level}: cmpxchg gpte {orig_pte:#x} -> {pte:#x}",
                          lambda: hexed(mem.try_cmpxchg_user_u64(ptep, orig_pte, pte)))
        walker.ad_log.append((level, orig_pte, pte, _cmpxchg_outcome(ret, cur)))
        if ret:
            return ret
        yield (STEP, f"L{level}: mark table gfn dirty",
               lambda g=walker.table_gfn[level - 1]: mem.kvm_vcpu_mark_page_dirty(g))
        walker.ptes[level - 1] = pte
    return 0


def update_accessed_dirty_bits_blind_ops(vcpu, mmu, walker, mem, addr, write_fault):
    """UNSAFE variant for the chapter: write ``pte | A`` without comparing.

    It overwrites whatever the guest stored since the walk read the entry.
    """
    for level in range(walker.max_level, walker.level - 1, -1):
        orig_pte, pte = _ad_target(walker, level, write_fault)
        if pte == orig_pte or not walker.pte_writable[level - 1]:
            continue
        ptep = walker.ptep_user[level - 1]

        yield (STEP, f"L{level}: write gpte := {pte:#x} (no compare)",
               lambda ptep=ptep, pte=pte: mem.put_user_u64(ptep, pte))
        walker.ad_log.append((level, orig_pte, pte, "written blindly"))
        yield (STEP, f"L{level}: mark table gfn dirty",
               lambda g=walker.table_gfn[level - 1]: mem.kvm_vcpu_mark_page_dirty(g))
        walker.ptes[level - 1] = pte
    return 0
