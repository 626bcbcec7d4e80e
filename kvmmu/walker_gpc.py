"""The RFC walker: every guest page-table level read through a gfn_to_pfn cache.

Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_addr_generic)(), FNAME(update_accessed_dirty_bits)()

**This is not merged kernel code.**  It models Patrick Roy's RFC ("[RFC
PATCH v2 10/10] kvm: x86: support walking guest page tables in gmem",
2024-09-10), which reads every level through a gfn_to_pfn cache
(:mod:`kvmmu.pfncache`), so the walker can read page tables that live in
guest_memfd, and restarts when a cache was invalidated before its A/D
update.  ``as_posted=True`` transcribes the v2 diff literally;
``as_posted=False`` adds two one-line fixes the chapter derives (see
:func:`update_accessed_dirty_bits_gpc_ops` and :func:`_read_gpte_gpc_ops`).
The walk's body is :func:`kvmmu.walker_ops._walk_ops`.

**Where the model simplifies.**  Initialising the walker's five caches is
one step (in the kernel they are private to the walker until activated).
"""
from functools import partial

from .checks import check_bool
from .errno import EFAULT
from .guest_memory import LOCK, STEP, GuestMemory, hexed, run_ops
from .guest_paging import PT_MAX_FULL_LEVELS, Vcpu
from .levels import PAGE_SHIFT
# (module-level, not imported inside the step generators: a function bound
# to a local is frozen into every explorer state key of a suspended frame)
from .pfncache import (GfnToPfnCache, gpc_lock_valid_ops, khva_read_u64, khva_try_cmpxchg_u64,
                       kvm_gpc_activate_ops, kvm_gpc_check, kvm_gpc_deactivate_ops, kvm_gpc_init,
                       kvm_gpc_mark_dirty_in_slot)
from .walker import GuestWalker, _ad_target, _cmpxchg_outcome, check_access, check_gva
from .walker_ops import _table_slot_readonly, _walk_ops


def _read_gpte_gpc_ops(walker, mem, level, table_gfn, index, *, as_posted=True):
    """Step generator: read one level the RFC's way.

    A read-only slot is read with ``kvm_vcpu_read_guest`` (pfn caches
    cannot map read-only memory, and no A/D write will follow); any other
    slot through the level's pfn cache: activate it on the entry's gpa,
    then check under the read lock, refreshing until valid, and read.

    As posted (v2), the read-only branch does not assign
    ``pte_writable[level-1]``: the kernel's walker lives on the stack, so
    the value is left over from whatever used that stack before.  With
    ``as_posted=False`` the branch sets it to false.

    Part of the RFC's FNAME(walk_addr_generic)().
    """
    readonly = _table_slot_readonly(mem, table_gfn)
    if readonly is None:
        return -EFAULT, 0
    gpa = (table_gfn << PAGE_SHIFT) + index * 8
    if readonly:
        ret, pte = yield (STEP, f"L{level}: kvm_vcpu_read_guest({gpa:#x})",
                          lambda: hexed(mem.kvm_vcpu_read_guest(gpa)))
        if not as_posted:
            walker.pte_writable[level - 1] = False
        return ret, pte
    cache = walker.ptep_caches[level - 1]
    ret = yield from kvm_gpc_activate_ops(cache, gpa, 8)
    if ret:
        return ret, 0
    ret = yield from gpc_lock_valid_ops(cache, f"L{level}")
    if ret:
        return ret, 0
    pte = yield (STEP, f"L{level}: read gpte at gpa {gpa:#x} via pfn cache",
                 lambda: hexed(khva_read_u64(cache)))
    yield (LOCK, cache.lock, "read_unlock")
    walker.pte_writable[level - 1] = True
    return 0, pte


def update_accessed_dirty_bits_gpc_ops(vcpu, mmu, walker, mem, addr, write_fault, *,
                                       as_posted=True, check_gpc=True):
    """Step generator: the RFC's A/D update through each level's pfn cache.

    Under the cache's read lock: if ``kvm_gpc_check`` fails the cache was
    invalidated since the read (the page table may have changed), so return
    1 and the walk restarts.  Otherwise compare-exchange through ``khva``.

    As posted (v2) the result of ``__try_cmpxchg`` is used as if it were
    ``__try_cmpxchg_user``'s; but ``try_cmpxchg`` returns *true on success*
    (Documentation/atomic_t.txt), the opposite convention.  So a successful
    update returns 1 (restart, page table not marked dirty) and a mismatch
    carries on as if it had succeeded.  ``as_posted=False`` converts the
    result.  ``check_gpc=False`` is the chapter's unsafe variant (no check).

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(update_accessed_dirty_bits)()
    """
    for level in range(walker.max_level, walker.level - 1, -1):
        orig_pte, pte = _ad_target(walker, level, write_fault)
        if pte == orig_pte:
            continue
        if not walker.pte_writable[level - 1]:
            walker.ad_log.append((level, orig_pte, pte, "skipped: read-only slot"))
            continue
        cache = walker.ptep_caches[level - 1]
        yield (LOCK, cache.lock, "read_lock")
        if check_gpc:
            ok = yield (STEP, f"L{level}: kvm_gpc_check before A/D",
                        lambda: kvm_gpc_check(cache, 8))
            if not ok:
                yield (LOCK, cache.lock, "read_unlock")
                walker.ad_log.append((level, orig_pte, pte, "cache invalidated: restart"))
                return 1
        swapped, cur = yield (
            STEP, f"L{level}: cmpxchg gpte {orig_pte:#x} -> {pte:#x} via pfn cache",
            lambda: hexed(khva_try_cmpxchg_u64(cache, orig_pte, pte)))
        success = swapped == 0
        if as_posted:
            ret = 1 if success else 0          # __try_cmpxchg(): true on success
        else:
            ret = 0 if success else 1          # the __try_cmpxchg_user() convention
        walker.ad_log.append((level, orig_pte, pte, _cmpxchg_outcome(swapped, cur)))
        if not ret:
            yield (STEP, f"L{level}: kvm_gpc_mark_dirty_in_slot",
                   lambda: kvm_gpc_mark_dirty_in_slot(cache))
        yield (LOCK, cache.lock, "read_unlock")
        if ret:
            return ret
        walker.ptes[level - 1] = pte
    return 0


def walk_deactivate_gpcs_ops(walker):
    """Step generator: deactivate every level's pfn cache that is active.

    The RFC's ``FNAME(walk_deactivate_gpcs)`` (no 6.17 counterpart).
    """
    active = yield (STEP, "which ptep_caches are active?",
                    lambda: tuple(c.active for c in walker.ptep_caches))
    for cache, is_active in zip(walker.ptep_caches, active):
        if is_active:
            yield from kvm_gpc_deactivate_ops(cache)


def walk_addr_generic_gpc_ops(walker: GuestWalker, vcpu: Vcpu, mem: GuestMemory, addr: int,
                              access: int, *, as_posted: bool = True, update_ad=None):
    """Step generator: the RFC walker, reading each level through a pfn cache.

    The walker's five caches (``walker.ptep_caches``; created if missing)
    are initialised once per call, activated level by level, and all
    deactivated before a restart, on error and on success.  Returns 1 or 0.

    Not merged: Patrick Roy, "[RFC PATCH v2 10/10] kvm: x86: support walking
    guest page tables in gmem", 2024-09-10.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_addr_generic)()
    """
    check_access(access)
    check_gva(vcpu, addr)
    check_bool("as_posted", as_posted)
    if walker.ptep_caches is None:
        walker.ptep_caches = [GfnToPfnCache(f"ptep_caches[{i}]") for i in range(PT_MAX_FULL_LEVELS)]

    def init_caches():
        for cache in walker.ptep_caches:
            kvm_gpc_init(cache, mem)
    # (in the kernel the caches live in the walker, invisible to others until
    # activated; one step in the model all the same)
    on_entry = (STEP, "kvm_gpc_init(ptep_caches[0..4])", init_caches)
    read = partial(_read_gpte_gpc_ops, as_posted=as_posted)
    if update_ad is None:
        update_ad = partial(update_accessed_dirty_bits_gpc_ops, as_posted=as_posted)
    return _walk_ops(walker, vcpu, mem, addr, access, read, update_ad, on_entry,
                     walk_deactivate_gpcs_ops)


def walk_addr_generic_gpc(walker: GuestWalker, vcpu: Vcpu, mem: GuestMemory, addr: int,
                          access: int, *, as_posted: bool = True) -> int:
    """Run the RFC walker on one CPU; return 1 or 0 (see :func:`walk_addr_generic_gpc_ops`)."""
    if not isinstance(walker, GuestWalker):
        raise TypeError("walker must be a GuestWalker")
    return run_ops(walk_addr_generic_gpc_ops(walker, vcpu, mem, addr, access, as_posted=as_posted))
