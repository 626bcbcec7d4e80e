"""The gfn_to_pfn cache: a kernel mapping of one guest page, kept valid by MMU notifiers.

Models: virt/kvm/pfncache.c: kvm_gpc_init(), kvm_gpc_activate(), kvm_gpc_check(), kvm_gpc_refresh(), kvm_gpc_deactivate()
Models: virt/kvm/pfncache.c: hva_to_pfn_retry(), gfn_to_pfn_cache_invalidate_start()
Models: include/linux/kvm_types.h: struct gfn_to_pfn_cache

Reference version: Linux 6.17 (read at v6.17-rc3), kernel-facts §5(b).

A cache holds a kernel address (``khva``) of the page behind one guest
physical address, **without a page reference**: it relies on the MMU
notifier to clear ``valid`` before the page can go away.  The contract:

- ``kvm_gpc_activate`` puts the cache on ``kvm->gpc_list`` *before* marking
  it active, then refreshes it, so an invalidation can never miss a mapping;
- a user takes ``gpc->lock`` for read, and while ``kvm_gpc_check`` fails,
  drops the lock and calls ``kvm_gpc_refresh``; it uses ``khva`` only under
  the read lock, right after a successful check;
- ``gfn_to_pfn_cache_invalidate_start`` (called from the notifier's
  range_start, before the primary MMU frees anything) clears ``valid``
  under the write lock, so it waits for every user that passed the check;
- ``hva_to_pfn_retry`` snapshots ``mmu_invalidate_seq`` before the lookup
  and retries while an invalidation is running or the sequence moved.

Every function that takes a lock or touches shared state is written once, as
a step generator (``*_ops``, see :mod:`kvmmu.guest_memory` for the protocol);
the plain function runs it on one CPU.  The race chapters hand the same
generators to the explorer.  Every read or write of a cache's fields happens
inside a step, so a step is the only place another CPU's work can be seen;
what a critical section computes from those fields is one step.  Memslots
are read outside steps: no race in this chapter changes them.

**RFC behaviour (not in 6.17).**  Patrick Roy's series ("[RFC PATCH v2 10/10]
kvm: x86: support walking guest page tables in gmem", 2024-09-10) relies on
pfn caches being guest_memfd aware: a cache over a *private* gfn takes its
pfn from guest_memfd (:meth:`GuestMemory.kvm_gmem_get_pfn`) and fails with
-EFAULT when KVM cannot reach guest_memfd memory; a guest_memfd hole punch
invalidates caches by gfn (:func:`gfn_to_pfn_cache_invalidate_gfn_range_ops`).
6.17 caches know only the user mapping.

**Where the model simplifies.**  ``khva`` is ``pfn << 12 | offset`` (the
direct map without its base); ``gpc_map``/``gpc_unmap`` have nothing to do.
HVA-based caches (``kvm_gpc_activate_hva``) are not modelled.  The
``irqsave`` flavours of the locks are plain locks.
"""
from .checks import check_int
from .errno import EFAULT, EINVAL, EIO
from .guest_memory import (INVALID_GPA, KVM_HVA_ERR_BAD, KVM_PFN_ERR_FAULT, LOCK, STEP,
                           GuestMemory, ModelMutex, ModelRWLock, hexed, is_error_pfn,
                           kvm_is_error_hva, run_ops)
from .levels import PAGE_SHIFT, PAGE_SIZE


class GfnToPfnCache:
    """One cache: which gpa, which hva and pfn back it, and whether that is still true.

    Models: include/linux/kvm_types.h: struct gfn_to_pfn_cache
    """

    def __init__(self, name: str = "gpc", *, lock=None, refresh_lock=None):
        self.name = name
        self.generation = 0
        self.gpa = INVALID_GPA
        self.uhva = KVM_HVA_ERR_BAD
        self.memslot = None
        self.kvm = None
        #: the explorer replaces these with its own blocking locks
        self.lock = lock if lock is not None else ModelRWLock(f"{name}->lock")
        self.refresh_lock = refresh_lock if refresh_lock is not None else ModelMutex(f"{name}->refresh_lock")
        self.khva = None
        self.pfn = KVM_PFN_ERR_FAULT
        self.active = False
        self.valid = False

    def state(self) -> tuple:
        """Hashable summary of the cache (for the explorer's world key)."""
        slot = None if self.memslot is None else self.memslot.id
        return (self.gpa, self.uhva, self.generation, self.pfn, self.khva, self.active,
                self.valid, slot)

    def load_state(self, st: tuple) -> None:
        """Put the cache back to a :meth:`state` (the explorer restores worlds)."""
        (self.gpa, self.uhva, self.generation, self.pfn, self.khva, self.active,
         self.valid, slot) = st
        self.memslot = None if slot is None else self.kvm.memslots.id_to_memslot(slot)

    def __repr__(self):
        pfn = "ERR_FAULT" if self.pfn == KVM_PFN_ERR_FAULT else f"{self.pfn:#x}"
        gpa = "INVALID" if self.gpa == INVALID_GPA else f"{self.gpa:#x}"
        khva = "NULL" if self.khva is None else f"{self.khva:#x}"
        return (f"{self.name}(gpa={gpa}, pfn={pfn}, khva={khva}, "
                f"active={self.active}, valid={self.valid}, generation={self.generation})")


def kvm_gpc_is_valid_len(gpa: int, uhva: int, length: int) -> bool:
    """True if ``length`` bytes from the cached address stay inside one page.

    Models: virt/kvm/pfncache.c: kvm_gpc_is_valid_len()
    """
    offset = (uhva if gpa == INVALID_GPA else gpa) & (PAGE_SIZE - 1)
    return offset + length <= PAGE_SIZE


def kvm_gpc_init(gpc: GfnToPfnCache, kvm: GuestMemory) -> None:
    """Initialise a cache: no gpa, no hva, error pfn, inactive and invalid.

    Models: virt/kvm/pfncache.c: kvm_gpc_init()
    """
    if not isinstance(gpc, GfnToPfnCache):
        raise TypeError("gpc must be a GfnToPfnCache")
    if not isinstance(kvm, GuestMemory):
        raise TypeError("kvm must be a GuestMemory")
    if kvm.gpcs.get(getattr(gpc, "uid", None)) is not gpc:
        gpc.uid = len(kvm.gpcs)
        kvm.gpcs[gpc.uid] = gpc
    gpc.kvm = kvm
    gpc.pfn = KVM_PFN_ERR_FAULT
    gpc.gpa = INVALID_GPA
    gpc.uhva = KVM_HVA_ERR_BAD
    gpc.khva = None
    gpc.memslot = None
    gpc.active = gpc.valid = False


def mmu_notifier_retry_cache(kvm: GuestMemory, mmu_seq: int) -> bool:
    """True if an invalidation is running or ran since ``mmu_seq`` was read.

    Uses ``mn_active_invalidate_count``, not ``mmu_invalidate_in_progress``:
    caches are invalidated before in_progress is raised.

    Models: virt/kvm/pfncache.c: mmu_notifier_retry_cache()
    """
    if kvm.mn_active_invalidate_count:
        return True
    return kvm.mmu_invalidate_seq != mmu_seq


def _lookup_pfn(gpc: GfnToPfnCache) -> int:
    # hva_to_pfn() for a shared gfn; the RFC's guest_memfd lookup for a
    # private one.  Either way the caller gets a page reference.
    kvm = gpc.kvm
    gfn = gpc.gpa >> PAGE_SHIFT
    if gpc.gpa != INVALID_GPA and kvm.kvm_mem_is_private(gfn):
        if not kvm.kvm_can_access_gmem:
            return KVM_PFN_ERR_FAULT
        return kvm.kvm_gmem_get_pfn(gpc.memslot, gfn)
    return kvm.hva_to_pfn(gpc.uhva)


def hva_to_pfn_retry_ops(gpc: GfnToPfnCache):
    """Step generator: look the pfn up with the lock dropped, retrying on invalidation.

    Called with ``refresh_lock`` and the write lock held; returns 0 with the
    cache valid, or -EFAULT (write lock still held).

    Models: virt/kvm/pfncache.c: hva_to_pfn_retry()
    """
    kvm = gpc.kvm
    new_pfn = KVM_PFN_ERR_FAULT

    def invalidate():
        gpc.valid = False
    # other tasks may pass the gpa/generation checks already: invalid first
    yield (STEP, f"{gpc.name}: valid = false", invalidate)
    while True:
        mmu_seq = yield (STEP, f"{gpc.name}: mmu_seq = mmu_invalidate_seq",
                         lambda: kvm.mmu_invalidate_seq)
        yield (LOCK, gpc.lock, "write_unlock")
        if new_pfn != KVM_PFN_ERR_FAULT:
            # the previous attempt raced with an invalidation: drop it
            stale = new_pfn
            yield (STEP, f"{gpc.name}: release pfn {stale:#x}", lambda: kvm.put_page(stale))
        new_pfn = int((yield (STEP, f"{gpc.name}: hva_to_pfn", lambda: hexed(_lookup_pfn(gpc)))))
        if is_error_pfn(new_pfn):
            yield (LOCK, gpc.lock, "write_lock")
            return -EFAULT
        yield (LOCK, gpc.lock, "write_lock")
        retry = yield (STEP, f"{gpc.name}: mmu_notifier_retry_cache?",
                       lambda: mmu_notifier_retry_cache(kvm, mmu_seq))
        if not retry:
            break

    def publish():
        gpc.valid = True
        gpc.pfn = new_pfn
        gpc.khva = (new_pfn << PAGE_SHIFT) | (gpc.uhva & (PAGE_SIZE - 1))
    yield (STEP, f"{gpc.name}: valid = true, pfn = {new_pfn:#x}", publish)
    # no reference is kept: the notifier protects the mapping from now on
    yield (STEP, f"{gpc.name}: release page reference", lambda: kvm.put_page(new_pfn))
    return 0


def __kvm_gpc_refresh_ops(gpc: GfnToPfnCache, gpa: int):
    """Step generator: recompute the hva if the gpa or generation changed, then the pfn.

    Called with ``refresh_lock`` held.  Returns 0, -EINVAL (inactive) or -EFAULT.

    Models: virt/kvm/pfncache.c: __kvm_gpc_refresh()
    """
    kvm = gpc.kvm
    page_offset = gpa & (PAGE_SIZE - 1)
    yield (LOCK, gpc.lock, "write_lock")

    def resolve():
        # Under the write lock: bail out if inactive; redo gpa -> memslot ->
        # uhva only when the gpa or the memslot generation moved; keep the
        # mapping if it is still valid and the hva did not change.
        if not gpc.active:
            return "inactive"
        old_uhva = gpc.uhva if kvm_is_error_hva(gpc.uhva) else gpc.uhva & ~(PAGE_SIZE - 1)
        hva_change = False
        if gpc.gpa != gpa or gpc.generation != kvm.generation or kvm_is_error_hva(gpc.uhva):
            gfn = gpa >> PAGE_SHIFT
            gpc.gpa = gpa
            gpc.generation = kvm.generation
            gpc.memslot = kvm.gfn_to_memslot(gfn)
            gpc.uhva, _ = kvm.gfn_to_hva_memslot_prot(gpc.memslot, gfn)
            if kvm_is_error_hva(gpc.uhva):
                return "no hva"
            hva_change = gpc.uhva != old_uhva
        else:
            gpc.uhva = old_uhva
        gpc.uhva += page_offset
        if not gpc.valid or hva_change:
            return "lookup"
        # the pfn is still good; only the offset in the page may have moved
        gpc.khva = (gpc.pfn << PAGE_SHIFT) | page_offset
        return "keep"
    what = yield (STEP, f"{gpc.name}: gpa -> memslot -> uhva", resolve)
    if what == "inactive":
        yield (LOCK, gpc.lock, "write_unlock")
        return -EINVAL
    if what == "keep":
        yield (LOCK, gpc.lock, "write_unlock")
        return 0
    ret = -EFAULT if what == "no hva" else (yield from hva_to_pfn_retry_ops(gpc))
    if ret:
        def fail():
            gpc.valid = False
            gpc.pfn = KVM_PFN_ERR_FAULT
            gpc.khva = None
        yield (STEP, f"{gpc.name}: refresh failed, pfn = ERR_FAULT", fail)
    # (the kernel also gpc_unmap()s the old pfn here: nothing to undo in the model)
    yield (LOCK, gpc.lock, "write_unlock")
    return ret


def kvm_gpc_activate_ops(gpc: GfnToPfnCache, gpa: int, length: int):
    """Step generator: put the cache on the VM's list, mark it active, refresh it.

    Models: virt/kvm/pfncache.c: kvm_gpc_activate()
    """
    kvm = gpc.kvm
    if kvm is None:
        raise ValueError(f"{gpc.name}: kvm_gpc_init() was not called")
    if gpa == INVALID_GPA:
        return -EINVAL
    check_int("gpa", gpa, 0, (1 << 52) - 1)
    check_int("length", length, 1, PAGE_SIZE)
    if not kvm_gpc_is_valid_len(gpa, KVM_HVA_ERR_BAD, length):
        return -EINVAL
    yield (LOCK, gpc.refresh_lock, "lock")
    active, valid = yield (STEP, f"{gpc.name}: active? valid?", lambda: (gpc.active, gpc.valid))
    if not active:
        if valid:
            yield (LOCK, gpc.refresh_lock, "unlock")
            return -EIO                       # KVM_BUG_ON
        # on the list first: a notifier must be able to find the cache
        # before it can hold a mapping
        yield (LOCK, kvm.gpc_lock, "lock")
        yield (STEP, f"{gpc.name}: add to kvm->gpc_list", lambda: kvm.gpc_list.append(gpc))
        yield (LOCK, kvm.gpc_lock, "unlock")
        yield (LOCK, gpc.lock, "write_lock")

        def activate():
            gpc.active = True
        yield (STEP, f"{gpc.name}: active = true", activate)
        yield (LOCK, gpc.lock, "write_unlock")
    ret = yield from __kvm_gpc_refresh_ops(gpc, gpa)
    yield (LOCK, gpc.refresh_lock, "unlock")
    return ret


def kvm_gpc_refresh_ops(gpc: GfnToPfnCache, length: int):
    """Step generator: make the cache valid again for its gpa (0 or -errno).

    Models: virt/kvm/pfncache.c: kvm_gpc_refresh()
    """
    check_int("length", length, 1, PAGE_SIZE)
    yield (LOCK, gpc.refresh_lock, "lock")
    gpa, uhva = yield (STEP, f"{gpc.name}: read gpa", lambda: (gpc.gpa, gpc.uhva))
    if not kvm_gpc_is_valid_len(gpa, uhva, length) or gpa == INVALID_GPA:
        yield (LOCK, gpc.refresh_lock, "unlock")
        return -EINVAL
    ret = yield from __kvm_gpc_refresh_ops(gpc, gpa)
    yield (LOCK, gpc.refresh_lock, "unlock")
    return ret


def kvm_gpc_check(gpc: GfnToPfnCache, length: int) -> bool:
    """True if the cache may be used now (caller holds ``gpc->lock`` for read).

    Active, same memslot generation, a real hva, the length fits, and valid.

    Models: virt/kvm/pfncache.c: kvm_gpc_check()
    """
    if not gpc.active:
        return False
    if gpc.gpa != INVALID_GPA and gpc.generation != gpc.kvm.generation:
        return False
    if kvm_is_error_hva(gpc.uhva):
        return False
    if not kvm_gpc_is_valid_len(gpc.gpa, gpc.uhva, length):
        return False
    return gpc.valid


def kvm_gpc_deactivate_ops(gpc: GfnToPfnCache):
    """Step generator: mark the cache inactive and invalid, then take it off the list.

    Models: virt/kvm/pfncache.c: kvm_gpc_deactivate()
    """
    kvm = gpc.kvm
    yield (LOCK, gpc.refresh_lock, "lock")
    active = yield (STEP, f"{gpc.name}: active?", lambda: gpc.active)
    if active:
        yield (LOCK, gpc.lock, "write_lock")

        def deactivate():
            gpc.active = gpc.valid = False
            gpc.khva = None
            gpc.pfn = KVM_PFN_ERR_FAULT
        yield (STEP, f"{gpc.name}: active = valid = false", deactivate)
        yield (LOCK, gpc.lock, "write_unlock")
        yield (LOCK, kvm.gpc_lock, "lock")
        yield (STEP, f"{gpc.name}: remove from kvm->gpc_list", lambda: kvm.gpc_list.remove(gpc))
        yield (LOCK, kvm.gpc_lock, "unlock")
    yield (LOCK, gpc.refresh_lock, "unlock")


def _invalidate_matching_ops(kvm: GuestMemory, what: str, matches):
    # The scan of gfn_to_pfn_cache_invalidate_start(): a cheap test under the
    # read lock, then the same test again under the write lock before
    # clearing valid (the cache may have changed in between).
    yield (LOCK, kvm.gpc_lock, "lock")
    # (the step returns the caches' ids, not the caches: a step's result is
    # copied into the explorer's history, and a cache must stay one object)
    uids = yield (STEP, f"invalidate {what}: read kvm->gpc_list",
                  lambda: tuple(g.uid for g in kvm.gpc_list))
    for gpc in map(kvm.gpcs.__getitem__, uids):
        yield (LOCK, gpc.lock, "read_lock")
        hit = yield (STEP, f"invalidate {what}: {gpc.name} in range?", lambda g=gpc: matches(g))
        yield (LOCK, gpc.lock, "read_unlock")
        if hit:
            yield (LOCK, gpc.lock, "write_lock")

            def clear(g=gpc):
                if matches(g):
                    g.valid = False
            yield (STEP, f"invalidate {what}: {gpc.name}.valid = false", clear)
            yield (LOCK, gpc.lock, "write_unlock")
    yield (LOCK, kvm.gpc_lock, "unlock")


def gfn_to_pfn_cache_invalidate_start_ops(kvm: GuestMemory, start: int, end: int):
    """Step generator: clear ``valid`` on every cache whose hva is in ``[start, end)``.

    Models: virt/kvm/pfncache.c: gfn_to_pfn_cache_invalidate_start()
    """
    def matches(gpc):
        return gpc.valid and not is_error_pfn(gpc.pfn) and start <= gpc.uhva < end
    yield from _invalidate_matching_ops(kvm, f"hva [{start:#x}, {end:#x})", matches)


def gfn_to_pfn_cache_invalidate_gfn_range_ops(kvm: GuestMemory, start_gfn: int, end_gfn: int):
    """Step generator: clear ``valid`` on every cache over a private gfn in the range.

    The RFC's guest_memfd hook (no 6.17 counterpart): a hole punched in
    guest_memfd reaches caches through the gfn, not through an hva.
    """
    def matches(gpc):
        gfn = gpc.gpa >> PAGE_SHIFT
        return (gpc.valid and not is_error_pfn(gpc.pfn) and gpc.gpa != INVALID_GPA
                and start_gfn <= gfn < end_gfn and kvm.kvm_mem_is_private(gfn))
    yield from _invalidate_matching_ops(kvm, f"gfn [{start_gfn:#x}, {end_gfn:#x})", matches)


def khva_read_u64(gpc: GfnToPfnCache) -> int:
    """Dereference the cache's kernel address (the caller checked the cache)."""
    khva = gpc.khva if gpc.khva is not None else 0
    return gpc.kvm.khva_read_u64(khva >> PAGE_SHIFT, khva & (PAGE_SIZE - 1))


def khva_try_cmpxchg_u64(gpc: GfnToPfnCache, old: int, new: int) -> tuple[int, int]:
    """Compare-exchange through the cache's kernel address: ``(0, old)`` or ``(1, current)``."""
    khva = gpc.khva if gpc.khva is not None else 0
    return gpc.kvm.khva_try_cmpxchg_u64(khva >> PAGE_SHIFT, khva & (PAGE_SIZE - 1), old, new)


def kvm_gpc_mark_dirty_in_slot(gpc: GfnToPfnCache) -> None:
    """Mark the cached gfn dirty in its memslot's dirty log.

    Models: include/linux/kvm_host.h: kvm_gpc_mark_dirty_in_slot()
    """
    if gpc.memslot is not None and gpc.gpa != INVALID_GPA:
        gpc.kvm.kvm_vcpu_mark_page_dirty(gpc.gpa >> PAGE_SHIFT)


# ---- the same functions, run on one CPU ----------------------------------
def kvm_gpc_activate(gpc: GfnToPfnCache, gpa: int, length: int) -> int:
    """Activate and refresh a cache on one CPU: 0, -EINVAL, -EIO or -EFAULT.

    Models: virt/kvm/pfncache.c: kvm_gpc_activate()
    """
    return run_ops(kvm_gpc_activate_ops(gpc, gpa, length))


def kvm_gpc_refresh(gpc: GfnToPfnCache, length: int) -> int:
    """Refresh a cache on one CPU: 0, -EINVAL or -EFAULT.

    Models: virt/kvm/pfncache.c: kvm_gpc_refresh()
    """
    return run_ops(kvm_gpc_refresh_ops(gpc, length))


def kvm_gpc_deactivate(gpc: GfnToPfnCache) -> None:
    """Deactivate a cache on one CPU.

    Models: virt/kvm/pfncache.c: kvm_gpc_deactivate()
    """
    run_ops(kvm_gpc_deactivate_ops(gpc))


def gpc_lock_valid_ops(gpc: GfnToPfnCache, who: str, len_: int = 8):
    """Step generator: the user pattern -- take the read lock, refresh until the cache is valid.

    Returns 0 with ``gpc->lock`` held for read and the cache valid, or
    ``-errno`` (from the refresh) with the lock not held.  ``who`` prefixes
    the step labels.
    """
    yield (LOCK, gpc.lock, "read_lock")
    while True:
        ok = yield (STEP, f"{who}: kvm_gpc_check", lambda: kvm_gpc_check(gpc, len_))
        if ok:
            return 0
        yield (LOCK, gpc.lock, "read_unlock")
        ret = yield from kvm_gpc_refresh_ops(gpc, len_)
        if ret:
            return ret
        yield (LOCK, gpc.lock, "read_lock")


def gpc_read_u64_ops(gpc: GfnToPfnCache):
    """Step generator: check under the read lock, refresh until valid, read.

    Returns ``(0, value)`` or ``(-errno, 0)``.
    """
    ret = yield from gpc_lock_valid_ops(gpc, gpc.name)
    if ret:
        return ret, 0
    value = yield (STEP, f"{gpc.name}: read *khva", lambda: khva_read_u64(gpc))
    yield (LOCK, gpc.lock, "read_unlock")
    return 0, value


def gpc_read_u64(gpc: GfnToPfnCache) -> tuple[int, int]:
    """Read the cached u64 on one CPU with the check/refresh pattern."""
    return run_ops(gpc_read_u64_ops(gpc))
