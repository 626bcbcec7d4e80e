"""The RFC walker: every guest page-table level read through a gfn_to_pfn cache.

Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_addr_generic)() (RFC v2 as posted), FNAME(update_accessed_dirty_bits)() (RFC v2 as posted), FNAME(walk_deactivate_gpcs)() (RFC v2 as posted)

**This is not merged kernel code.**  It models Patrick Roy's RFC ("[RFC
PATCH v2 10/10] kvm: x86: support walking guest page tables in gmem",
2024-09-10), which reads every level through a pfn cache
(:mod:`kvmmu.pfncache`), so that the walker can read page tables that live
in guest_memfd, and restarts when a cache was invalidated before its A/D
update.  ``as_posted=True`` follows the v2 diff literally;
``as_posted=False`` adds the two one-line fixes the chapter derives (see
:func:`update_accessed_dirty_bits` and :func:`_read_gpte_gpc`).  The walk's
body is 6.17's, :func:`kvmmu.paging_tmpl.walk_addr_generic`, with the RFC's
way of reading a level and writing A/D bits (a
:class:`~kvmmu.paging_tmpl.WalkVariant`).

The walker's five caches (``walker->ptep_caches``, on the kernel's stack)
are shared objects of the VM in the model, one set per vCPU
(:func:`walker_gpcs`); a walk initialises them, activates them level by
level, and deactivates all of them before a restart and on every exit.

**Where the model simplifies.**  Initialising the five caches is one step
(in the kernel they are private to the walker until activated).  Looking up
the memslot of a table and, for a read-only slot, reading the entry with
``kvm_vcpu_read_guest`` are one step.
"""
from __future__ import annotations

from .checks import check_bool
from .cpu import cpu_code
from .errno import EFAULT
from .explorer import step
from .kvm_host import KvmVcpu, kvm_vcpu_gfn_to_memslot, kvm_vcpu_read_guest
from .levels import PAGE_SHIFT
from .memslots import KVM_MEM_READONLY, kvm_is_visible_memslot
from .mmu_permissions import KvmMmu
from .paging_tmpl import (PT_MAX_FULL_LEVELS, GpteRead, GuestWalker, WalkVariant,
                          _ad_target, _check_ad_args, _cmpxchg_outcome)
from .paging_tmpl import walk_addr_generic as _walk_addr_generic
from .pfncache import (GfnToPfnCache, gpc_khva_read_u64, gpc_khva_try_cmpxchg_u64,
                       gpc_lock_valid, kvm_gpc_activate, kvm_gpc_check, kvm_gpc_create,
                       kvm_gpc_deactivate, kvm_gpc_init, kvm_gpc_mark_dirty_in_slot)

__all__ = ["walker_gpcs", "walk_init_gpcs", "walk_deactivate_gpcs", "update_accessed_dirty_bits",
           "rfc_variant", "RFC_AS_POSTED", "RFC_FIXED", "RFC_NO_CHECK", "walk_addr_generic"]


def walker_gpcs(vcpu: KvmVcpu) -> tuple[GfnToPfnCache, ...]:
    """The five pfn caches of ``vcpu``'s walker, created (and registered) on first use.

    Set-up, no kernel counterpart (the kernel's caches are in the walker on
    the stack): create them before an explorer run, as the race worlds do.
    """
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    kvm = vcpu.kvm
    caches = []
    for i in range(PT_MAX_FULL_LEVELS):
        # (vCPU 0's caches are the walker's own names; another vCPU's say whose)
        name = f"ptep_caches[{i}]" if vcpu.vcpu_id == 0 else \
            f"vcpu{vcpu.vcpu_id}.ptep_caches[{i}]"
        if name in kvm._prim_names:
            caches.append(kvm.primitive(name))
        else:
            caches.append(kvm_gpc_create(kvm, name))
    return tuple(caches)


def _walker_caches(walker, vcpu) -> tuple:
    # The walker's caches, after checking the arguments (before any step).
    if not isinstance(walker, GuestWalker):
        raise TypeError(f"walker must be a GuestWalker, got {type(walker).__name__}")
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    if walker.ptep_caches is None:
        raise ValueError("the walker has no pfn caches: walker.ptep_caches = walker_gpcs(vcpu)")
    return walker.ptep_caches


def walk_init_gpcs(walker: GuestWalker, vcpu: KvmVcpu):
    """Initialise the walker's five caches (one step).

    Part of the RFC's FNAME(walk_addr_generic)() (no 6.17 counterpart).
    """
    caches = _walker_caches(walker, vcpu)

    def init():
        for gpc in caches:
            kvm_gpc_init(gpc, vcpu.kvm)
    yield from step("kvm_gpc_init(ptep_caches[0..4])", init)


@cpu_code
def walk_deactivate_gpcs(walker: GuestWalker, vcpu: KvmVcpu):
    """Deactivate every cache of the walker that is active.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_deactivate_gpcs)() (RFC v2 as posted)
    """
    caches = _walker_caches(walker, vcpu)
    active = yield from step("which ptep_caches are active?",
                             lambda: tuple(gpc.active for gpc in caches))
    for gpc, is_active in zip(caches, active):
        if is_active:
            yield from kvm_gpc_deactivate(gpc)


def _memslot_or_rom_read(vcpu: KvmVcpu, table_gfn: int, gpa: int):
    # One step: the table's memslot; a read-only slot is read at once with
    # kvm_vcpu_read_guest.  None: read through the level's pfn cache.
    slot = kvm_vcpu_gfn_to_memslot(vcpu, table_gfn)
    if not kvm_is_visible_memslot(slot):
        return GpteRead(-EFAULT, 0)
    if slot.flags & KVM_MEM_READONLY:
        return GpteRead(*kvm_vcpu_read_guest(vcpu, gpa))
    return None


def _read_gpte_gpc(walker: GuestWalker, vcpu: KvmVcpu, level: int, table_gfn: int, index: int,
                   as_posted: bool = True):
    """Read one level the RFC's way: a read-only slot directly, any other through a pfn cache.

    Part of the RFC's FNAME(walk_addr_generic)().  A read-only slot is read
    with ``kvm_vcpu_read_guest`` (pfn caches cannot map read-only memory,
    and no A/D write will follow); any other slot through the level's pfn
    cache: activate it on the entry's gpa, check under the read lock,
    refreshing until valid, and read.

    As posted (v2), the read-only branch does not assign
    ``pte_writable[level-1]``: the kernel's walker lives on the stack, so
    the value is left over from whatever used that stack before.  With
    ``as_posted=False`` the branch sets it to false.
    """
    gpa = (table_gfn << PAGE_SHIFT) + index * 8
    gpc = walker.ptep_caches[level - 1]
    del walker          # (a suspended frame should hold only what it still needs)
    direct = yield from step(f"L{level}: memslot of gfn {table_gfn:#x} "
                             "(read-only: kvm_vcpu_read_guest)",
                             lambda: _memslot_or_rom_read(vcpu, table_gfn, gpa))
    if direct is not None:
        if direct.ret or as_posted:
            return direct
        return GpteRead(direct.ret, direct.pte, direct.ptep_user, False)
    ret = yield from kvm_gpc_activate(gpc, gpa, 8)
    if ret:
        return GpteRead(ret, 0)
    ret = yield from gpc_lock_valid(gpc, 8, f"L{level}")
    if ret:
        return GpteRead(ret, 0)
    pte = yield from step(f"L{level}: read gpte at gpa {gpa:#x} via pfn cache",
                          lambda: GpteRead(0, gpc_khva_read_u64(gpc), None, True))
    yield from gpc.lock.read_unlock()
    return pte


class _Swap(tuple):
    # (swapped, value) of try_cmpxchg on khva, printed readably.
    def __repr__(self) -> str:
        return f"({self[0]}, {self[1]:#x})"


@cpu_code
def update_accessed_dirty_bits(vcpu: KvmVcpu, mmu: KvmMmu, walker: GuestWalker, addr: int,
                               write_fault: int, as_posted: bool = True, check_gpc: bool = True):
    """The RFC's A/D update through each level's pfn cache; 0, or 1 to restart the walk.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(update_accessed_dirty_bits)() (RFC v2 as posted)

    Under the cache's read lock: if ``kvm_gpc_check`` fails the cache was
    invalidated since the read (the page table may have changed), so return
    1 and the walk restarts.  Otherwise compare-exchange through ``khva``.

    As posted (v2) the result of ``__try_cmpxchg`` is used as if it were
    ``__try_cmpxchg_user``'s; but ``try_cmpxchg`` returns *true on success*
    (Documentation/atomic_t.txt), the opposite convention.  So a successful
    update returns 1 (restart, page table not marked dirty) and a mismatch
    carries on as if it had succeeded.  ``as_posted=False`` converts the
    result.  ``check_gpc=False`` is the chapter's unsafe variant (no check).
    """
    _check_ad_args(vcpu, mmu, walker, addr, write_fault)
    _walker_caches(walker, vcpu)
    check_bool("as_posted", as_posted)
    check_bool("check_gpc", check_gpc)
    for level in range(walker.max_level, walker.level - 1, -1):
        orig_pte, pte = _ad_target(walker, level, write_fault)
        if pte == orig_pte:
            continue
        if not walker.pte_writable[level - 1]:
            walker.ad_log.append((level, orig_pte, pte, "skipped: read-only slot"))
            continue
        gpc = walker.ptep_caches[level - 1]
        yield from gpc.lock.read_lock()
        if check_gpc:
            ok = yield from step(f"L{level}: kvm_gpc_check before A/D",
                                 lambda: kvm_gpc_check(gpc, 8))
            if not ok:
                yield from gpc.lock.read_unlock()
                walker.ad_log.append((level, orig_pte, pte, "cache invalidated: restart"))
                return 1
        swapped, cur = yield from step(
            f"L{level}: cmpxchg gpte {orig_pte:#x} -> {pte:#x} via pfn cache",
            lambda: _Swap(gpc_khva_try_cmpxchg_u64(gpc, orig_pte, pte)))
        if as_posted:
            ret = 1 if swapped else 0          # __try_cmpxchg(): true on success
        else:
            ret = 0 if swapped else 1          # the __try_cmpxchg_user() convention
        walker.ad_log.append((level, orig_pte, pte, _cmpxchg_outcome(0 if swapped else 1, cur)))
        if not ret:
            yield from step(f"L{level}: kvm_gpc_mark_dirty_in_slot",
                            lambda: kvm_gpc_mark_dirty_in_slot(gpc))
        yield from gpc.lock.read_unlock()
        if ret:
            return ret
        walker.ptes[level - 1] = pte
    return 0


def rfc_variant(as_posted: bool = True, check_gpc: bool = True) -> WalkVariant:
    """The RFC's way of reading levels and writing A/D, as posted or with the chapter's fixes."""
    check_bool("as_posted", as_posted)
    check_bool("check_gpc", check_gpc)
    return _VARIANTS[(as_posted, check_gpc)]


def _make_variant(as_posted: bool, check_gpc: bool) -> WalkVariant:
    def read(walker, vcpu, level, table_gfn, index):
        return _read_gpte_gpc(walker, vcpu, level, table_gfn, index, as_posted)

    def update_ad(vcpu, mmu, walker, addr, write_fault):
        return update_accessed_dirty_bits(vcpu, mmu, walker, addr, write_fault, as_posted,
                                          check_gpc)
    name = ("RFC v2 as posted" if as_posted else "RFC v2, fixed") + \
        ("" if check_gpc else ", no check before A/D")
    return WalkVariant(name, read, update_ad, walk_init_gpcs, walk_deactivate_gpcs)


_VARIANTS = {(p, c): _make_variant(p, c) for p in (True, False) for c in (True, False)}
#: The RFC as posted; with the chapter's two fixes; fixed but without the check (unsafe).
RFC_AS_POSTED = _VARIANTS[(True, True)]
RFC_FIXED = _VARIANTS[(False, True)]
RFC_NO_CHECK = _VARIANTS[(False, False)]


def walk_addr_generic(walker: GuestWalker, vcpu: KvmVcpu, mmu: KvmMmu, addr: int, access: int,
                      as_posted: bool = True, check_gpc: bool = True):
    """The RFC walker (CPU code): 6.17's walk with every level read through pfn caches.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_addr_generic)() (RFC v2 as posted)

    Returns 1 or 0 like 6.17's.  Not merged: Patrick Roy, "[RFC PATCH v2
    10/10] kvm: x86: support walking guest page tables in gmem", 2024-09-10.
    The vCPU's caches must exist (:func:`walker_gpcs`) when this runs under
    the explorer.
    """
    if not isinstance(walker, GuestWalker):
        raise TypeError(f"walker must be a GuestWalker, got {type(walker).__name__}")
    variant = rfc_variant(as_posted, check_gpc)
    walker.ptep_caches = walker_gpcs(vcpu)
    # The walk itself, not a generator frame around it (one frame less for the
    # explorer to freeze into every state key); its first step checks the rest.
    return _walk_addr_generic(walker, vcpu, mmu, addr, access, variant)
