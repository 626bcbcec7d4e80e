"""The TDP MMU: the SPTE write primitives, removed tables, the fault's walk, zaps and roots.

Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_map(), tdp_mmu_set_spte_atomic(), tdp_mmu_set_spte(), handle_changed_spte(), handle_removed_pt(), tdp_mmu_zap_spte_atomic()

Reference version: Linux 6.17 (read at v6.17-rc3), except where a docstring
says otherwise: the atomic zap with its freeze, :func:`tdp_mmu_zap_spte_atomic`,
is the code as it stood up to 6.12 (v6.13 removed it, commit 35ef80eb), and
:func:`tdp_mmu_zap_spte_atomic_nofreeze` is the code Ben Gardon's 2021 patch
replaced, kept to show the race.

The page-table pages and the iterator are :mod:`kvmmu.tdp_iter`; the vCPUs'
TLBs and the remote flush :mod:`kvmmu.tlb`; the VM these functions act on is
a :class:`kvmmu.kvm_host.Kvm` (``kvm.ept`` its TDP page tables, ``kvm.tlbs``
its vCPUs' TLBs, ``kvm.mmu_lock``); the fault path that calls
:func:`kvm_tdp_mmu_map` is :mod:`kvmmu.mmu`.

**Concurrency.**  Every access to shared memory (an SPTE read, write, xchg
or cmpxchg; a TLB fill; a remote TLB flush; a lock operation) is one step of
:mod:`kvmmu.explorer`: the functions are CPU code (:mod:`kvmmu.cpu`), so the
explorer can interleave two CPUs at every point where real CPUs could.
Plain computation between two steps (building an SPTE, bookkeeping) belongs
to the step before it.

**Where the model simplifies.**

- One address space, Intel EPT with A/D bits by default; no mirror (TDX)
  roots, no NX huge page workaround, no dirty logging, no shadow MMU (so
  ``kvm_unmap_gfn_range()``'s dispatch is this file's
  :func:`kvm_tdp_mmu_unmap_gfn_range` alone).
- RCU grace periods are not modelled: a removed table is marked
  ``unlinked`` and kept (the kernel frees it with ``call_rcu`` once every
  walker has left).  A walk's ``rcu_read_lock()`` section is recorded with
  the gfn range it covers (:func:`tdp_walk_begin`), which
  :func:`handle_removed_pt` uses to merge steps no other CPU can observe.
- Page-table pages come from a shared allocator, one step each (the kernel
  uses a per-vCPU cache filled before taking ``mmu_lock``).
- ``tdp_mmu_iter_cond_resched`` never yields (no contention, no
  ``need_resched``).
- Zapping a whole root (:func:`tdp_mmu_zap_root`) zaps its top-level
  entries, read in one step: no vCPU can fault into an invalid root, so
  nobody can add an entry while the zap looks.  (The kernel first zaps at
  1G level, only to bound how long it holds the lock between yields.)
- Where the kernel WARNs or BUGs, the model raises :class:`~kvmmu.spte.KernelWarn`.
"""
from dataclasses import dataclass
from functools import partial

from .checks import check_bool, check_int, check_u64
from .cpu import check_vcpu, check_vm, cpu_code
from .errno import (EBUSY, ENOENT, RET_PF_EMULATE, RET_PF_FIXED, RET_PF_RETRY, RET_PF_SPURIOUS,
                    RET_PF_WRITE_PROTECTED)
from .explorer import World, step, wait_until
from .levels import (KVM_MAX_HUGEPAGE_LEVEL, KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PG_LEVEL_2M,
                     PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL,
                     SPTE_ENT_PER_PAGE)
from .memslots import KvmMemorySlot, kvm_slot_dirty_track_enabled
from .mmu_internal import KvmPageFault, _check_fault, kvm_mmu_hugepage_adjust, kvm_mmu_max_mapping_level
from .spte import (_check_cfg, ACC_ALL, FROZEN_SPTE, PT_PRESENT_MASK, SHADOW_NONPRESENT_VALUE,
                   KernelWarn, check_spte_writable_invariants, is_executable_pte,
                   is_frozen_spte, is_large_pte, is_last_spte, is_mmio_spte,
                   is_shadow_present_pte, is_writable_pte, leaf_spte_change_needs_tlb_flush,
                   make_huge_spte, make_mmio_spte, make_nonleaf_spte, make_spte,
                   spte_to_pfn)
from .tdp_iter import (Sptep, TdpIter, _check_it, _check_sptep, __kvm_tdp_mmu_write_spte, kvm_tdp_mmu_write_spte,
                       kvm_tdp_mmu_write_spte_atomic, spte_to_child_pt, tdp_iter_next,
                       tdp_iter_start)
from .tlb import kvm_flush_remote_tlbs_gfn, kvm_flush_remote_tlbs_memslot

__all__ = [
    "kvm_update_page_stats", "handle_changed_spte", "tdp_mmu_unlink_sp", "handle_removed_pt",
    "tdp_walk_begin", "tdp_walk_end", "__tdp_mmu_set_spte_atomic", "tdp_mmu_set_spte_atomic",
    "tdp_mmu_set_spte", "tdp_mmu_iter_set_spte", "tdp_mmu_zap_spte_atomic",
    "tdp_mmu_zap_spte_atomic_nofreeze", "is_access_allowed", "tdp_mmu_alloc_sp",
    "tdp_mmu_free_sp", "tdp_mmu_link_sp", "tdp_mmu_split_huge_page",
    "tdp_mmu_map_handle_target_level", "kvm_tdp_mmu_map", "tdp_mmu_zap_leafs",
    "kvm_tdp_mmu_zap_leafs", "kvm_tdp_mmu_unmap_gfn_range", "KvmGfnRange",
    "kvm_tdp_mmu_alloc_root", "kvm_tdp_mmu_invalidate_roots", "tdp_mmu_zap_root",
    "kvm_tdp_mmu_zap_invalidated_roots", "kvm_tdp_mmu_put_root",
    "zap_collapsible_spte_range", "kvm_tdp_mmu_zap_collapsible_sptes", "tdp_mmu_make_huge_spte",
    "recover_huge_pages_range", "kvm_tdp_mmu_recover_huge_pages",
]

#: The largest gfn the model accepts (52-bit guest physical addresses).
_GFN_MAX = (1 << 40) - 1


# ---------------------------------------------------------------------------
# Bookkeeping: handle_changed_spte and handle_removed_pt.
# ---------------------------------------------------------------------------
def _check_vcpu_fault(vcpu, fault) -> None:
    check_vcpu("vcpu", vcpu)
    _check_fault(fault)


def _check_pt(kvm, pt, name: str = "pt") -> None:
    check_vm("kvm", kvm)
    check_int(name, pt, 0, (1 << 40) - 1)


def kvm_update_page_stats(kvm, level: int, delta: int) -> None:
    """Add ``delta`` (negative when leaves go) to the number of leaf SPTEs at ``level``.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_update_page_stats()
    """
    check_vm("kvm", kvm)
    check_int("level", level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
    check_int("delta", delta, -(1 << 40), 1 << 40)
    kvm.ept.page_stats[level] += delta


def handle_changed_spte(kvm, gfn: int, old_spte: int, new_spte: int,
                        level: int, shared: bool):
    """Do the bookkeeping for one SPTE change; free the subtree a change removed.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: handle_changed_spte()

    The model's own ledger: a leaf that appears is appended to
    ``kvm.ept.installed`` and a leaf whose removal is processed to
    ``kvm.ept.processed``, so a check can see that each leaf is processed once.
    """
    check_vm("kvm", kvm)
    check_int("gfn", gfn, 0, (1 << 52) - 1)
    check_u64("old_spte", old_spte)
    check_u64("new_spte", new_spte)
    check_int("level", level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
    check_bool("shared", shared)
    was_present = is_shadow_present_pte(old_spte)
    is_present = is_shadow_present_pte(new_spte)
    was_leaf = was_present and is_last_spte(old_spte, level)
    is_leaf = is_present and is_last_spte(new_spte, level)
    pfn_changed = spte_to_pfn(old_spte) != spte_to_pfn(new_spte)

    if gfn & (KVM_PAGES_PER_HPAGE(level) - 1):
        raise KernelWarn(f"handle_changed_spte: gfn {gfn:#x} not aligned to "
                         f"level {level}")
    # Zap, flush, then install: never one present leaf over another pfn.
    if was_leaf and is_leaf and pfn_changed:
        raise KernelWarn(f"BUG: present leaf SPTE {old_spte:#x} replaced by "
                         f"{new_spte:#x}, a different pfn (gfn {gfn:#x}, "
                         f"level {level})")
    if old_spte == new_spte:
        return
    if is_leaf:
        check_spte_writable_invariants(new_spte, kvm.ept.cfg)
    if not was_present and not is_present:
        # Non-present to non-present is fine only with MMIO or a freeze.
        cfg = kvm.ept.cfg
        if not (is_mmio_spte(old_spte, cfg) or is_mmio_spte(new_spte, cfg)
                or is_frozen_spte(new_spte)):
            raise KernelWarn(f"Unexpected SPTE change: non-present {old_spte:#x} "
                             f"-> {new_spte:#x} (gfn {gfn:#x}, level {level})")
        return
    if is_leaf != was_leaf:
        kvm_update_page_stats(kvm, level, 1 if is_leaf else -1)
        if is_leaf:
            kvm.ept.installed += ((gfn, level, spte_to_pfn(new_spte)),)
        else:
            kvm.ept.processed += ((gfn, level, spte_to_pfn(old_spte)),)
    if was_present and not was_leaf and (is_leaf or not is_present or pfn_changed):
        if is_present and not is_leaf and pfn_changed:
            raise KernelWarn("handle_changed_spte: table pointer changed "
                             f"{old_spte:#x} -> {new_spte:#x}")
        child = spte_to_child_pt(old_spte, level)
        yield from handle_removed_pt(kvm, child, level - 1, gfn, shared)


def tdp_mmu_unlink_sp(kvm, pt: int) -> None:
    """Take a page-table page off the VM's lists (the model only marks it unlinked).

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_unlink_sp()
    """
    _check_pt(kvm, pt)
    sp = kvm.ept.sps.get(pt)
    if sp is not None:
        sp.unlinked = True


@cpu_code
def handle_removed_pt(kvm, pt: int, level: int, base_gfn: int, shared: bool):
    """Freeze every entry of a table that was cut from the paging structure.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: handle_removed_pt()

    ``level`` and ``base_gfn`` are the table's (the kernel reads them from
    its ``struct kvm_mmu_page``; the model passes them so that an actor
    never reads shared state between two steps).

    In shared mode each entry is exchanged with FROZEN_SPTE; if the old value
    was itself FROZEN_SPTE, another thread owns the entry (an atomic zap
    between its flush and its final write), so this thread waits for that
    owner to write its value and exchanges again.  Every real old value is
    therefore seen, and processed, by exactly one thread.  The model's wait
    is one blocking step (the kernel spins on the xchg with cpu_relax(); an
    xchg that returns FROZEN_SPTE changes nothing, so the two agree).
    In exclusive mode (write lock) only present entries are frozen.

    **Merged steps.**  The kernel touches the 512 entries one by one.  An
    entry whose gfns no walk in progress covers (see :func:`tdp_walk_begin`)
    cannot be reached by any other CPU: the table is unlinked, so only
    walkers that were already under way can still hold a pointer into it,
    and a walker touches only entries over its own gfn range.  Operations
    on such entries commute with everything every other CPU does, so the
    model performs each run of them as one step (a partial-order
    reduction: the same outcomes, a handful of steps instead of 512).
    Entries that a walk covers get a step each, exactly as in the kernel.
    """
    pages = KVM_PAGES_PER_HPAGE(level)
    tdp_mmu_unlink_sp(kvm, pt)
    i = 0
    while i < SPTE_ENT_PER_PAGE:
        first = Sptep(pt, i)
        if shared:
            olds = yield from kvm.ept.xchg_span(first, FROZEN_SPTE)
        else:
            olds = yield from kvm.ept.read_span(first)
        for k, old_spte in enumerate(olds, i):
            sptep = Sptep(pt, k)
            if shared:
                # FROZEN_SPTE: another thread owns the entry; wait until its
                # owner writes the real value, then take that value.
                while is_frozen_spte(old_spte) and kvm.config.spin_on_frozen_child:
                    yield from wait_until(
                        f"L{level}[{k:#x}] is not FROZEN_SPTE (spin)",
                        partial(_not_frozen, sptep=sptep))
                    old_spte = yield from kvm_tdp_mmu_write_spte_atomic(
                        kvm, sptep, FROZEN_SPTE)
                if old_spte == SHADOW_NONPRESENT_VALUE:
                    # Non-present to FROZEN_SPTE: handle_changed_spte() would
                    # return at once (most of the 512 entries; a shortcut).
                    continue
            else:
                if not is_shadow_present_pte(old_spte):
                    continue
                old_spte = yield from kvm_tdp_mmu_write_spte(kvm, sptep, old_spte,
                                                             FROZEN_SPTE, level)
            yield from handle_changed_spte(kvm, base_gfn + k * pages, old_spte,
                                           FROZEN_SPTE, level, shared)
        i += len(olds)
    # call_rcu(): freed after every RCU walker has left; the model keeps it.


def tdp_walk_begin(kvm, start: int, end: int) -> None:
    """Enter a walk over ``[start, end)``: the model's rcu_read_lock() of the TDP MMU.

    The kernel's walks run inside rcu_read_lock(), which is what lets a
    walker keep using a table that another CPU has just unlinked.  The model
    also records the gfn range the walk may touch, so that
    :func:`handle_removed_pt` knows which entries no other CPU can reach.
    No step: entering a read section changes nothing another CPU can see.
    """
    check_vm("kvm", kvm)
    check_int("start", start, 0, (1 << 52) - 1)
    check_int("end", end, start, 1 << 52)
    kvm.ept.walks = tuple(sorted(kvm.ept.walks + ((start, end),)))


def tdp_walk_end(kvm, start: int, end: int) -> None:
    """Leave a walk over ``[start, end)``: the model's rcu_read_unlock()."""
    check_vm("kvm", kvm)
    check_int("start", start, 0, (1 << 52) - 1)
    check_int("end", end, start, 1 << 52)
    walks = list(kvm.ept.walks)
    walks.remove((start, end))
    kvm.ept.walks = tuple(walks)


# ---------------------------------------------------------------------------
# The write primitives (tdp_mmu.c, 6.17).
# ---------------------------------------------------------------------------
def _not_frozen(kvm, sptep: Sptep) -> bool:
    return not is_frozen_spte(kvm.ept.get(sptep))


def __tdp_mmu_set_spte_atomic(kvm, it: TdpIter, new_spte: int):
    """Compare-exchange the iterator's SPTE from its snapshot; 0 or -EBUSY.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: __tdp_mmu_set_spte_atomic()

    On failure ``it.old_spte`` holds the value found, so the caller retries
    on fresh data.  Refuses (the kernel WARNs) to act on a frozen snapshot:
    only the thread that froze an SPTE may write it again.
    """
    _check_it(kvm, it)
    check_u64("new_spte", new_spte)
    if it.yielded or is_frozen_spte(it.old_spte):
        raise KernelWarn(f"__tdp_mmu_set_spte_atomic: the snapshot of {it.sptep} "
                         "is FROZEN_SPTE; callers must check is_frozen_spte() "
                         "first")
    # try_cmpxchg64(sptep, &iter->old_spte, new_spte)
    ok, current = yield from kvm.ept.try_cmpxchg(it.sptep, it.old_spte, new_spte)
    if not ok:
        it.old_spte = current
        return -EBUSY
    return 0


def tdp_mmu_set_spte_atomic(kvm, it: TdpIter, new_spte: int):
    """Set an SPTE under mmu_lock held for read, then do the bookkeeping; 0 or -EBUSY.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_set_spte_atomic()
    """
    _check_it(kvm, it)
    check_u64("new_spte", new_spte)
    ret = yield from __tdp_mmu_set_spte_atomic(kvm, it, new_spte)
    if ret:
        return ret
    yield from handle_changed_spte(kvm, it.gfn, it.old_spte, new_spte, it.level, shared=True)
    return 0


def tdp_mmu_set_spte(kvm, sptep: Sptep, old_spte: int, new_spte: int,
                     gfn: int, level: int):
    """Set an SPTE under mmu_lock held for write, then do the bookkeeping; return the old value.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_set_spte()

    With the lock held for write nobody else can install an SPTE, so no
    freeze is needed, and none may be seen: FROZEN_SPTE as old or new value
    is refused (the kernel WARNs).
    """
    if is_frozen_spte(old_spte) or is_frozen_spte(new_spte):
        raise KernelWarn("tdp_mmu_set_spte: FROZEN_SPTE is for mmu_lock held for read only")
    old_spte = yield from kvm_tdp_mmu_write_spte(kvm, sptep, old_spte, new_spte, level)
    yield from handle_changed_spte(kvm, gfn, old_spte, new_spte, level, shared=False)
    return old_spte


def tdp_mmu_iter_set_spte(kvm, it: TdpIter, new_spte: int):
    """Set the iterator's SPTE under the write lock and refresh its snapshot.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_iter_set_spte()
    """
    _check_it(kvm, it)
    check_u64("new_spte", new_spte)
    it.old_spte = yield from tdp_mmu_set_spte(kvm, it.sptep, it.old_spte, new_spte,
                                              it.gfn, it.level)


# ---------------------------------------------------------------------------
# The atomic zap, up to 6.12, and the code it replaced.
# ---------------------------------------------------------------------------
def tdp_mmu_zap_spte_atomic(kvm, it: TdpIter):
    """Zap an SPTE under the read lock: freeze it, flush the TLBs, then clear it.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_zap_spte_atomic()

    As it stood up to Linux 6.12 (read at torvalds/linux @0089c055, about
    6.10; 6.13 removed it, commit 35ef80eb).  While the SPTE is frozen
    nobody can install anything in it, so no present SPTE appears before
    the flush has removed every cached copy of the old translation.  The
    bookkeeping runs last, so that the SPTE stays frozen briefly.
    """
    _check_it(kvm, it)
    ret = yield from __tdp_mmu_set_spte_atomic(kvm, it, FROZEN_SPTE)
    if ret:
        return ret
    yield from kvm_flush_remote_tlbs_gfn(kvm, it.gfn, it.level)
    # Only the freezing thread writes a frozen SPTE: a plain store suffices.
    yield from __kvm_tdp_mmu_write_spte(kvm, it.sptep, SHADOW_NONPRESENT_VALUE)
    # (The 6.10 source passes 0 as the new value here; both are non-present.)
    yield from handle_changed_spte(kvm, it.gfn, it.old_spte,
                                   SHADOW_NONPRESENT_VALUE, it.level, shared=True)
    return 0


def tdp_mmu_zap_spte_atomic_nofreeze(kvm, it: TdpIter):
    """UNSAFE: zap an SPTE under the read lock by clearing it, then flush.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_zap_spte_atomic() (2020, no freeze)

    The shape before Ben Gardon's patch of January 2021: between the
    cmpxchg and the flush the SPTE is non-present *and reusable*, so another
    thread may install a different pfn while a vCPU still holds the old
    translation.  (Safe where the new mapping has the same pfn, as in 6.13.)
    """
    _check_it(kvm, it)
    ret = yield from tdp_mmu_set_spte_atomic(kvm, it, SHADOW_NONPRESENT_VALUE)
    if ret:
        return ret
    yield from kvm_flush_remote_tlbs_gfn(kvm, it.gfn, it.level)
    return 0



# ---------------------------------------------------------------------------
# The fault's walk (mmu_lock held for read).
# ---------------------------------------------------------------------------
def is_access_allowed(fault: KvmPageFault, spte: int, cfg) -> bool:
    """Return True if the present ``spte`` already allows the faulting access.

    Models: arch/x86/kvm/mmu/spte.h: is_access_allowed()
    """
    _check_fault(fault)
    check_u64("spte", spte)
    _check_cfg(cfg)
    if fault.exec:
        return is_executable_pte(spte, cfg)
    if fault.write:
        return is_writable_pte(spte)
    return bool(spte & PT_PRESENT_MASK)


def tdp_mmu_alloc_sp(kvm, it: TdpIter, huge_spte: int | None = None):
    """Allocate the child table for the iterator's entry, not yet linked; return its pfn.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_alloc_sp(), tdp_mmu_init_child_sp()

    One step in the model (the page comes from the shared table allocator;
    the kernel takes it from a per-vCPU cache filled before mmu_lock).
    """
    _check_it(kvm, it)
    return (yield from kvm.ept.alloc(it.level - 1, it.gfn, it.sptep, huge_spte))


def tdp_mmu_free_sp(kvm, pt: int) -> None:
    """Free a table that was never linked.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_free_sp()
    """
    _check_pt(kvm, pt)
    kvm.ept.free(pt)


def tdp_mmu_link_sp(kvm, it: TdpIter, pt: int, shared: bool):
    """Point the iterator's entry at the new table ``pt``; 0 or -EBUSY.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_link_sp()
    """
    _check_it(kvm, it)
    check_int("pt", pt, 0, (1 << 40) - 1)
    check_bool("shared", shared)
    spte = make_nonleaf_spte(pt << PAGE_SHIFT, cfg=kvm.ept.cfg)
    if shared:
        ret = yield from tdp_mmu_set_spte_atomic(kvm, it, spte)
        if ret:
            return ret
    else:
        yield from tdp_mmu_iter_set_spte(kvm, it, spte)
    return 0


def tdp_mmu_split_huge_page(kvm, it: TdpIter, pt: int, shared: bool):
    """Link ``pt``, already filled with the small SPTEs of the huge SPTE at ``it``; 0 or -EBUSY.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_split_huge_page()

    The model fills the table when allocating it (:func:`tdp_mmu_alloc_sp`
    with ``huge_spte``): it is private until linked.  The translation does
    not change, so no TLB flush is needed.
    """
    _check_it(kvm, it)
    check_int("pt", pt, 0, (1 << 40) - 1)
    check_bool("shared", shared)
    huge_spte = it.old_spte
    ret = yield from tdp_mmu_link_sp(kvm, it, pt, shared)
    if ret:
        return ret
    kvm_update_page_stats(kvm, it.level - 1, SPTE_ENT_PER_PAGE)
    pages = KVM_PAGES_PER_HPAGE(it.level - 1)
    kvm.ept.installed += tuple((it.gfn + i * pages, it.level - 1,
                                spte_to_pfn(huge_spte) + i * pages)
                               for i in range(SPTE_ENT_PER_PAGE))
    return 0


def _new_leaf(vcpu, fault: KvmPageFault, it: TdpIter):
    # make_mmio_spte() without a slot, make_spte() with one: (new_spte, wrprot).
    kvm = vcpu.kvm
    if fault.slot is None:
        gen = kvm.kvm_memslots(0).generation
        return make_mmio_spte(it.gfn, ACC_ALL, gen & 0x7FFFF, cfg=kvm.ept.cfg), False
    return make_spte(it.level, ACC_ALL, fault.pfn, cfg=kvm.ept.cfg, prefetch=fault.prefetch,
                     synchronizing=False, host_writable=fault.map_writable,
                     nx_huge_pages=kvm.config.nx_huge_pages, old_spte=it.old_spte)


def tdp_mmu_map_handle_target_level(vcpu, fault: KvmPageFault, it: TdpIter):
    """Install the leaf SPTE for a fault at the goal level; return a RET_PF_* code.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_map_handle_target_level()

    6.17 behaviour: a present leaf that already allows the access is left
    alone and the fault is RET_PF_SPURIOUS (the early check came in about
    6.12/6.13; before it the SPTE was rebuilt and compared).  Without a
    memslot the leaf is an MMIO SPTE and the fault RET_PF_EMULATE.
    """
    _check_vcpu_fault(vcpu, fault)
    _check_it(vcpu.kvm, it)
    kvm = vcpu.kvm
    ret = RET_PF_FIXED
    old = it.old_spte
    if (is_shadow_present_pte(old) and is_last_spte(old, it.level)
            and (fault.prefetch or is_access_allowed(fault, old, kvm.ept.cfg))):
        if fault.pfn != spte_to_pfn(old) and fault.slot is not None:
            raise KernelWarn(f"spurious fault for gfn {fault.gfn:#x} finds pfn "
                             f"{spte_to_pfn(old):#x}, expected {fault.pfn:#x}")
        return RET_PF_SPURIOUS
    new_spte, wrprot = _new_leaf(vcpu, fault, it)
    if new_spte == old:
        ret = RET_PF_SPURIOUS
    elif (yield from tdp_mmu_set_spte_atomic(kvm, it, new_spte)):
        return RET_PF_RETRY
    elif is_shadow_present_pte(old):
        if not is_last_spte(old, it.level):
            yield from kvm_flush_remote_tlbs_gfn(kvm, it.gfn, it.level)
        elif leaf_spte_change_needs_tlb_flush(old, new_spte, kvm.ept.cfg):
            raise KernelWarn("a fault removed MMU-writable from a leaf SPTE")
    if wrprot and fault.write:
        ret = RET_PF_WRITE_PROTECTED
    if is_mmio_spte(new_spte, kvm.ept.cfg):
        ret = RET_PF_EMULATE
    return ret


@cpu_code
def kvm_tdp_mmu_map(vcpu, fault: KvmPageFault):
    """Map the fault's gfn in the vCPU's root, mmu_lock held for read; RET_PF_*.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_map()

    Chooses the level first (``kvm_mmu_hugepage_adjust``), then walks from
    the root towards ``fault.gfn``, linking missing tables (and splitting
    huge pages above the goal level) with compare-exchange; gives up with
    RET_PF_RETRY on a frozen SPTE or a lost compare-exchange, so the guest
    re-executes the access and faults again.  The root is the one the vCPU
    runs on (``fault.root``: see :class:`~kvmmu.mmu_internal.KvmPageFault`).
    """
    _check_vcpu_fault(vcpu, fault)
    if not isinstance(fault, KvmPageFault):
        raise TypeError(f"fault must be a KvmPageFault, got {type(fault).__name__}")
    kvm = vcpu.kvm
    root = fault.root
    yield from kvm_mmu_hugepage_adjust(vcpu, fault)
    ret = RET_PF_RETRY
    end = fault.gfn + 1
    tdp_walk_begin(kvm, fault.gfn, end)                # rcu_read_lock()
    it = yield from tdp_iter_start(kvm, root, kvm.config.root_level, PG_LEVEL_4K,
                                   fault.gfn)
    while it.valid and it.gfn < end:
        # Someone owns this SPTE: retry rather than allocate and free a table.
        if is_frozen_spte(it.old_spte):
            break
        if it.level == fault.goal_level:
            ret = yield from tdp_mmu_map_handle_target_level(vcpu, fault, it)
            break
        present = is_shadow_present_pte(it.old_spte)
        if not (present and not is_large_pte(it.old_spte)):
            # Non-present, or a huge page to split: link a new table.
            if present:
                pt = yield from tdp_mmu_alloc_sp(kvm, it, huge_spte=it.old_spte)
                r = yield from tdp_mmu_split_huge_page(kvm, it, pt, shared=True)
            else:
                pt = yield from tdp_mmu_alloc_sp(kvm, it)
                r = yield from tdp_mmu_link_sp(kvm, it, pt, shared=True)
            if r:
                # Another CPU changed the SPTE: let the guest fault again.
                tdp_mmu_free_sp(kvm, pt)
                break
        yield from tdp_iter_next(kvm, it, end)
    # (A walk that ends in the loop condition could not step into an entry
    # zapped meanwhile: RET_PF_RETRY too.)
    tdp_walk_end(kvm, fault.gfn, end)                  # rcu_read_unlock()
    return ret


# ---------------------------------------------------------------------------
# Zaps under mmu_lock held for write (the notifier's unmap, memslot zaps).
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KvmGfnRange:
    """A gfn range of one memslot, as the MMU notifier hands it to the arch code.

    Models: include/linux/kvm_host.h: struct kvm_gfn_range
    """

    slot: object
    start: int
    end: int
    may_block: bool = True

    def __post_init__(self):
        check_int("start", self.start, 0, _GFN_MAX)
        check_int("end", self.end, self.start + 1, _GFN_MAX + 1)
        check_bool("may_block", self.may_block)


def _valid_roots(kvm):
    # for_each_valid_tdp_mmu_root(): the roots list, read in one step.
    return (yield from step("for each valid root",
                            lambda: tuple(r for r in kvm.ept.roots
                                          if not kvm.ept.sps[r].invalid)))


def tdp_mmu_zap_leafs(kvm, root: int, start: int, end: int, can_yield: bool, flush: bool):
    """Zap the leaf SPTEs of ``root`` mapping ``[start, end)``; True if a flush is due.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_zap_leafs()

    Under the write lock nobody can install an SPTE, so a plain write of
    SHADOW_NONPRESENT_VALUE is enough; the caller flushes before unlocking.
    """
    check_int("start", start, 0, _GFN_MAX)
    check_int("end", end, start + 1, _GFN_MAX + 1)
    tdp_walk_begin(kvm, start, end)                    # rcu_read_lock()
    it = yield from tdp_iter_start(kvm, root, kvm.config.root_level, PG_LEVEL_4K, start)
    while it.valid and it.gfn < end:
        if is_shadow_present_pte(it.old_spte) and is_last_spte(it.old_spte, it.level):
            yield from tdp_mmu_iter_set_spte(kvm, it, SHADOW_NONPRESENT_VALUE)
            flush = True
        yield from tdp_iter_next(kvm, it, end)
    tdp_walk_end(kvm, start, end)                      # rcu_read_unlock()
    return flush


def kvm_tdp_mmu_zap_leafs(kvm, start: int, end: int, flush: bool):
    """Zap the leaves mapping ``[start, end)`` in every root; True if a flush is due.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_zap_leafs()

    The caller holds mmu_lock for write and flushes before unlocking.
    """
    check_vm("kvm", kvm)
    check_int("start", start, 0, (1 << 52) - 1)
    check_int("end", end, start, 1 << 52)
    check_bool("flush", flush)
    for root in (yield from _valid_roots(kvm)):
        flush = yield from tdp_mmu_zap_leafs(kvm, root, start, end, True, flush)
    return flush


@cpu_code
def kvm_tdp_mmu_unmap_gfn_range(kvm, range_: KvmGfnRange, flush: bool):
    """The MMU notifier's unmap: zap ``range_`` in every root; True if a flush is due.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_unmap_gfn_range()

    Invalid roots are zapped too: their SPTEs still map the memory the
    host is about to change.
    """
    if not isinstance(range_, KvmGfnRange):
        raise TypeError(f"range_ must be a KvmGfnRange, got {type(range_).__name__}")
    roots = yield from step("for each root", lambda: tuple(kvm.ept.roots))
    for root in roots:
        flush = yield from tdp_mmu_zap_leafs(kvm, root, range_.start, range_.end,
                                             range_.may_block, flush)
    return flush


# ---------------------------------------------------------------------------
# Huge pages from small ones: the collapsible zap (up to 6.12) and huge-page
# recovery (6.13 and later), both under mmu_lock held for read.
# ---------------------------------------------------------------------------
def _collapsible(it: TdpIter, start: int, end: int) -> bool:
    # The loop head both walks share: a present table SPTE at a huge level,
    # for a huge page that starts inside the slot (lpage_info has no entry
    # for one that does not).
    return (it.level <= KVM_MAX_HUGEPAGE_LEVEL and is_shadow_present_pte(it.old_spte)
            and not is_last_spte(it.old_spte, it.level) and start <= it.gfn < end)


def _check_kvm_slot(kvm, slot) -> None:
    # kvm_host.Kvm sits above this module: a world with TDP page tables will do.
    if not (isinstance(kvm, World) and hasattr(kvm, "ept")):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    if not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"slot must be a KvmMemorySlot, got {type(slot).__name__}")


def zap_collapsible_spte_range(kvm, root: int, slot: KvmMemorySlot):
    """Zap each table SPTE of ``root`` over ``slot`` that a huge page could replace.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: zap_collapsible_spte_range() (up to 6.12)

    The code up to Linux 6.12 (6.13 replaced it by
    :func:`recover_huge_pages_range`).  The host level decides only whether
    to zap: nothing is installed from it, so it needs neither the
    invalidation sequence nor a leaf of the gfn (rule 3 of the comment above
    ``host_pfn_mapping_level``); the next fault maps the huge page.
    (6.12's ``kvm_mmu_max_mapping_level()`` took ``max_level`` and
    ``is_private`` too; for shared memory it gives the same answer.)
    """
    _check_kvm_slot(kvm, slot)
    start, end = slot.base_gfn, slot.end_gfn
    tdp_walk_begin(kvm, start, end)                    # rcu_read_lock()
    it = yield from tdp_iter_start(kvm, root, kvm.config.root_level, PG_LEVEL_2M, start)
    while it.valid and it.gfn < end:
        while _collapsible(it, start, end):            # retry:
            level = yield from kvm_mmu_max_mapping_level(kvm, slot, it.gfn)
            if level < it.level:
                break
            # A successful atomic zap also flushes the TLBs; a failed one
            # refreshed it.old_spte: look again.
            if (yield from tdp_mmu_zap_spte_atomic(kvm, it)) == 0:
                break
        yield from tdp_iter_next(kvm, it, end)
    tdp_walk_end(kvm, start, end)                      # rcu_read_unlock()


def kvm_tdp_mmu_zap_collapsible_sptes(kvm, slot: KvmMemorySlot):
    """Zap the collapsible table SPTEs of ``slot`` in every valid root; mmu_lock held for read.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_zap_collapsible_sptes() (up to 6.12)
    """
    _check_kvm_slot(kvm, slot)
    for root in (yield from _valid_roots(kvm)):
        yield from zap_collapsible_spte_range(kvm, root, slot)


@cpu_code
def tdp_mmu_make_huge_spte(kvm, parent: TdpIter):
    """Build the huge SPTE that replaces the table ``parent`` points to: ``(0, spte)`` or ``(-ENOENT, 0)``.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_make_huge_spte()

    The huge SPTE is made from the first leaf under the table
    (``make_huge_spte()``); with no leaf there is nothing to make it from,
    and no proof that the memory is still what KVM mapped: ``-ENOENT``.  The
    caller's walk holds RCU.  (The kernel's ``-EAGAIN``, to reschedule,
    never happens in the model.)
    """
    if not isinstance(parent, TdpIter):
        raise TypeError(f"parent must be a TdpIter, got {type(parent).__name__}")
    child = spte_to_child_pt(parent.old_spte, parent.level)
    start = parent.gfn
    end = start + KVM_PAGES_PER_HPAGE(parent.level)
    # tdp_root_for_each_leaf_pte(): the child table as the root of the walk.
    it = yield from tdp_iter_start(kvm, child, parent.level - 1, PG_LEVEL_4K, start)
    while it.valid and it.gfn < end:
        if is_shadow_present_pte(it.old_spte) and is_last_spte(it.old_spte, it.level):
            return 0, make_huge_spte(it.old_spte, parent.level, kvm.ept.cfg,
                                     nx_huge_pages=kvm.config.nx_huge_pages)
        yield from tdp_iter_next(kvm, it, end)
    return -ENOENT, 0


def recover_huge_pages_range(kvm, root: int, slot: KvmMemorySlot):
    """Replace each table SPTE of ``root`` over ``slot`` with a huge SPTE, where the host allows.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: recover_huge_pages_range()

    The host level is consumed here: the huge SPTE is installed from it.
    That is safe by rule 2 of the comment above ``host_pfn_mapping_level``:
    mmu_lock is held, and the leaf :func:`tdp_mmu_make_huge_spte` copies
    proves that no invalidation of its memory is in progress (starting one
    zaps it, under mmu_lock held for write).  Called when dirty logging is
    turned off (``kvm_mmu_slot_apply_flags()``); dirty logging still on is a
    WARN.
    """
    _check_kvm_slot(kvm, slot)
    start, end = slot.base_gfn, slot.end_gfn
    if kvm_slot_dirty_track_enabled(slot):
        kvm.warn("WARN_ON_ONCE: recover_huge_pages_range with dirty logging on")
        return
    flush = False
    tdp_walk_begin(kvm, start, end)                    # rcu_read_lock()
    it = yield from tdp_iter_start(kvm, root, kvm.config.root_level, PG_LEVEL_2M, start)
    while it.valid and it.gfn < end:
        while _collapsible(it, start, end):            # retry:
            level = yield from kvm_mmu_max_mapping_level(kvm, slot, it.gfn)
            if level < it.level:
                break
            r, huge_spte = yield from tdp_mmu_make_huge_spte(kvm, it)
            if r:
                break
            # A failed cmpxchg refreshed it.old_spte: look again.
            if (yield from tdp_mmu_set_spte_atomic(kvm, it, huge_spte)) == 0:
                flush = True
                break
        yield from tdp_iter_next(kvm, it, end)
    if flush:
        yield from kvm_flush_remote_tlbs_memslot(kvm, slot)
    tdp_walk_end(kvm, start, end)                      # rcu_read_unlock()


def kvm_tdp_mmu_recover_huge_pages(kvm, slot: KvmMemorySlot):
    """Recover huge pages over ``slot`` in every valid root; mmu_lock held for read.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_recover_huge_pages()
    """
    _check_kvm_slot(kvm, slot)
    for root in (yield from _valid_roots(kvm)):
        yield from recover_huge_pages_range(kvm, root, slot)


# ---------------------------------------------------------------------------
# Roots.
# ---------------------------------------------------------------------------
def kvm_tdp_mmu_alloc_root(vcpu) -> int:
    """Give the vCPU a root: a valid one if there is, else a new empty one; its pfn.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_alloc_root()

    Plain computation: its caller (``kvm_mmu_load``) makes it part of a step.
    """
    check_vcpu("vcpu", vcpu)
    ept = vcpu.kvm.ept
    for root in ept.roots:
        if not ept.sps[root].invalid:
            return root
    root = ept.new_table(vcpu.kvm.config.root_level, 0, None)
    ept.roots += (root,)
    return root


def kvm_tdp_mmu_invalidate_roots(kvm) -> None:
    """Mark every root invalid (obsolete): vCPUs must stop using them.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_invalidate_roots()

    Plain computation under mmu_lock held for write (``kvm_mmu_zap_all_fast``).
    """
    check_vm("kvm", kvm)
    for root in kvm.ept.roots:
        kvm.ept.sps[root].invalid = True


def tdp_mmu_zap_root(kvm, root: int, shared: bool):
    """Zap every entry of ``root``: its top-level entries, and with them every table below.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_zap_root(), __tdp_mmu_zap_root()
    """
    check_bool("shared", shared)
    level = kvm.config.root_level
    present = yield from step(f"root {root:#x}: present entries",
                              lambda: tuple(sorted(kvm.ept.tables[root])))
    for index in present:
        it = TdpIter(index * KVM_PAGES_PER_HPAGE(level), level, level)
        it.pt_path[level - 1] = root
        it.level, it.gfn, it.valid = level, index * KVM_PAGES_PER_HPAGE(level), True
        it.sptep = Sptep(root, index)
        it.old_spte = yield from kvm.ept.read(it.sptep)
        while is_shadow_present_pte(it.old_spte):
            if not shared:
                yield from tdp_mmu_iter_set_spte(kvm, it, SHADOW_NONPRESENT_VALUE)
                break
            if (yield from tdp_mmu_set_spte_atomic(kvm, it, SHADOW_NONPRESENT_VALUE)) == 0:
                break


@cpu_code
def kvm_tdp_mmu_zap_invalidated_roots(kvm, shared: bool):
    """Zap the roots made invalid, under mmu_lock held for read if ``shared``.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_zap_invalidated_roots()
    """
    check_vm("kvm", kvm)
    check_bool("shared", shared)
    check_bool("shared", shared)
    lock = kvm.mmu_lock
    yield from (lock.read_lock() if shared else lock.write_lock())
    roots = yield from step("for each invalid root",
                            lambda: tuple(r for r in kvm.ept.roots if kvm.ept.sps[r].invalid))
    for root in roots:
        yield from tdp_mmu_zap_root(kvm, root, shared)
    yield from (lock.read_unlock() if shared else lock.write_unlock())


def kvm_tdp_mmu_put_root(kvm, root: int) -> None:
    """Free an invalid root that no vCPU uses any more.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_put_root()

    The model counts a root's references by looking at the vCPUs (plain
    computation, inside its caller's step).
    """
    _check_pt(kvm, root, "root")
    ept = kvm.ept
    sp = ept.sps.get(root)
    if sp is None or not sp.invalid or root not in ept.roots:
        return
    if any(kvm.vcpu_root(v) == root for v in range(kvm.nr_vcpus)):
        return
    ept.roots = tuple(r for r in ept.roots if r != root)
    sp.unlinked = True
