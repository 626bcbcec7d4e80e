"""The gfn_to_pfn cache: a kernel mapping of one guest page, kept valid by MMU notifiers.

Models: virt/kvm/pfncache.c: kvm_gpc_init(), kvm_gpc_activate(), kvm_gpc_check(), kvm_gpc_refresh(), kvm_gpc_deactivate()
Models: virt/kvm/pfncache.c: kvm_gpc_is_valid_len(), mmu_notifier_retry_cache(), hva_to_pfn_retry(), __kvm_gpc_refresh()
Models: include/linux/kvm_types.h: struct gfn_to_pfn_cache

Reference version: Linux 6.17 (read at v6.17-rc3).

A cache holds a kernel address (``khva``) of the page behind one guest
physical address, **without a page reference**: it relies on the MMU
notifier to clear ``valid`` before the page can go away.  The contract:

- ``kvm_gpc_activate`` puts the cache on ``kvm->gpc_list`` *before* marking
  it active, then refreshes it, so an invalidation can never miss a mapping;
- a user takes ``gpc->lock`` for read, and while ``kvm_gpc_check`` fails,
  drops the lock and calls ``kvm_gpc_refresh``; it uses ``khva`` only under
  the read lock, right after a successful check (:func:`gpc_lock_valid`);
- ``gfn_to_pfn_cache_invalidate_start`` (:mod:`kvmmu.kvm_host`, called from
  the notifier's range_start before the primary MMU frees anything) clears
  ``valid`` under the write lock, so it waits for every user that passed the
  check;
- ``hva_to_pfn_retry`` snapshots ``mmu_invalidate_seq`` before the lookup
  and retries while an invalidation is running or the sequence moved.

A cache is a shared object of the VM (:class:`GfnToPfnCache`, registered
in the :class:`~kvmmu.kvm_host.Kvm` by :func:`kvm_gpc_create`), with its
``lock`` and ``refresh_lock`` explorer locks of the VM; the VM's list of
active caches is ``kvm.fields.gpc_list`` (their names).  Every function
that takes a lock or touches a cache is CPU code (:mod:`kvmmu.cpu`): one
step per lock operation and per access to the cache's fields; a plain call
is ``run_alone(kvm, kvm_gpc_refresh(gpc, 8))``.

**RFC behaviour (not in 6.17).**  With ``KvmConfig.gpc_gmem`` "rfc", caches
are guest_memfd aware, as Patrick Roy's series ("[RFC PATCH v2 10/10] kvm:
x86: support walking guest page tables in gmem", 2024-09-10) relies on: a
cache over a *private* gfn takes its pfn from guest_memfd
(``kvm_gmem_get_pfn``, then drops the folio reference as it drops a gup
reference) and fails with -EFAULT when KVM cannot reach guest_memfd memory
(``KvmConfig.kvm_can_access_gmem``).  6.17 caches know only the user mapping.

**Where the model simplifies.**

- ``khva`` is ``pfn << 12 | offset`` (the direct map without its base);
  ``gpc_map``/``gpc_unmap`` have nothing to do.  HVA-based caches
  (``kvm_gpc_activate_hva``) are not modelled.  The ``irqsave`` flavours of
  the locks are plain locks; ``kvm->gpc_lock`` is not a lock (the list is
  read or changed in one step).
- Dereferencing ``khva`` goes through :func:`gpc_khva_read_u64` and
  :func:`gpc_khva_try_cmpxchg_u64`, which, like KASAN, record a use after
  free: host memory records an access to a freed page itself, and a freed
  guest_memfd folio is reported with ``Kvm.warn``.
"""
from __future__ import annotations

from typing import NamedTuple

from .checks import check_int
from .cpu import cpu_code
from .errno import EFAULT, EINVAL, EIO
from .explorer import Primitive, step
from .folio import folio_put
from .guest_memfd import GmemFile, kvm_gmem_get_pfn
from .kvm_host import (KVM_HVA_ERR_BAD, KVM_PFN_ERR_FAULT, Kvm, gfn_to_hva_memslot_prot,
                       hva_to_pfn, is_error_pfn, kvm_is_error_hva, mark_page_dirty_in_slot)
from .levels import PAGE_SHIFT, PAGE_SIZE
from .memslots import INVALID_GPA, KVM_MEM_GUEST_MEMFD, kvm_mem_is_private

__all__ = [
    "GfnToPfnCache", "kvm_gpc_create", "kvm_gpc_init", "kvm_gpc_is_valid_len",
    "mmu_notifier_retry_cache", "hva_to_pfn_retry", "__kvm_gpc_refresh", "kvm_gpc_activate",
    "kvm_gpc_refresh", "kvm_gpc_check", "kvm_gpc_deactivate", "kvm_gpc_mark_dirty_in_slot",
    "gpc_khva_read_u64", "gpc_khva_try_cmpxchg_u64", "gpc_lock_valid", "gpc_read_u64",
]

_GPA_MAX = (1 << 52) - 1


class GfnToPfnCache(Primitive):
    """One cache: which gpa, which hva and pfn back it, and whether that is still true.

    Models: include/linux/kvm_types.h: struct gfn_to_pfn_cache

    A shared object of its VM (``world``, which is also ``gpc->kvm``); its
    ``lock`` (an rwlock) and ``refresh_lock`` (a mutex) are the VM's
    explorer locks named after it.  ``memslot`` is the slot value (slots are
    values), ``khva`` an int or None.
    """

    _sealed = True
    #: what kvm_host's invalidation recognises a cache by (it imports no cache class)
    _is_gpc = True

    __slots__ = ("generation", "gpa", "uhva", "memslot", "khva", "pfn", "active", "valid",
                 "lock", "refresh_lock")

    _FIELDS = ("generation", "gpa", "uhva", "memslot", "khva", "pfn", "active", "valid")
    #: the explorer's footprint locations: each field its own
    _field_locations = {f: (f,) for f in _FIELDS}

    def __init__(self, world, name: str):
        if not isinstance(world, Kvm):
            raise TypeError(f"world must be a Kvm, got {type(world).__name__}")
        super().__init__(world, name)
        self.lock = world.rwlock(f"{name}->lock")
        self.refresh_lock = world.mutex(f"{name}->refresh_lock")
        self.generation = 0
        self.gpa = INVALID_GPA
        self.uhva = KVM_HVA_ERR_BAD
        self.memslot = None
        self.khva = None
        self.pfn = KVM_PFN_ERR_FAULT
        self.active = False
        self.valid = False

    @property
    def kvm(self) -> Kvm:
        """``gpc->kvm``: the VM the cache belongs to."""
        return self.world

    def _state(self):
        return tuple(getattr(self, f) for f in self._FIELDS)

    def _load(self, st):
        for f, v in zip(self._FIELDS, st):
            setattr(self, f, v)

    def _show(self):
        pfn = "ERR_FAULT" if self.pfn == KVM_PFN_ERR_FAULT else f"{self.pfn:#x}"
        gpa = "INVALID" if self.gpa == INVALID_GPA else f"{self.gpa:#x}"
        flags = ("active" if self.active else "inactive") + (", valid" if self.valid else "")
        return f"gpa={gpa} pfn={pfn} {flags}"


def _check_gpc(gpc) -> GfnToPfnCache:
    if not isinstance(gpc, GfnToPfnCache):
        raise TypeError(f"gpc must be a GfnToPfnCache, got {type(gpc).__name__}")
    return gpc


def _check_len(len_) -> int:
    return check_int("len_", len_, 1, PAGE_SIZE)


def kvm_gpc_create(kvm: Kvm, name: str) -> GfnToPfnCache:
    """Give ``kvm`` a new, initialised cache called ``name`` (the struct's memory).

    Set-up, no kernel counterpart: the kernel embeds the struct in whatever
    uses it (a vCPU, a walker); the model's caches are shared objects of the
    VM, registered before any run.
    """
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    gpc = kvm._register(GfnToPfnCache(kvm, name))
    kvm_gpc_init(gpc, kvm)
    return gpc


def kvm_gpc_init(gpc: GfnToPfnCache, kvm: Kvm) -> None:
    """Initialise a cache: no gpa, no hva, error pfn, inactive and invalid.

    Models: virt/kvm/pfncache.c: kvm_gpc_init()

    Plain computation on a cache nobody else uses yet (the caller makes it
    part of a step when it matters).
    """
    _check_gpc(gpc)
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    if kvm is not gpc.world:
        raise ValueError(f"{gpc.name} belongs to another VM")
    gpc.generation = 0
    gpc.pfn = KVM_PFN_ERR_FAULT
    gpc.gpa = INVALID_GPA
    gpc.uhva = KVM_HVA_ERR_BAD
    gpc.khva = None
    gpc.memslot = None
    gpc.active = gpc.valid = False


def kvm_gpc_is_valid_len(gpa: int, uhva: int, len_: int) -> bool:
    """True if ``len_`` bytes from the cached address stay inside one page.

    Models: virt/kvm/pfncache.c: kvm_gpc_is_valid_len()

    The offset is the gpa's, or the hva's for an hva-based cache
    (``gpa == INVALID_GPA``): a range that ends exactly at the end of the
    page fits, one byte more does not.
    """
    check_int("gpa", gpa, 0, (1 << 64) - 1)
    check_int("uhva", uhva, 0, (1 << 64) - 1)
    check_int("len_", len_, 0, (1 << 32) - 1)
    offset = (uhva if gpa == INVALID_GPA else gpa) & (PAGE_SIZE - 1)
    return offset + len_ <= PAGE_SIZE


def mmu_notifier_retry_cache(kvm: Kvm, mmu_seq: int) -> bool:
    """True if an invalidation is running or ran since ``mmu_seq`` was read.

    Models: virt/kvm/pfncache.c: mmu_notifier_retry_cache()

    Uses ``mn_active_invalidate_count``, not ``mmu_invalidate_in_progress``:
    caches are invalidated before in_progress is raised.
    """
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    check_int("mmu_seq", mmu_seq, 0, (1 << 64) - 1)
    if kvm.mn_active_invalidate_count:
        return True
    # smp_rmb(): the count is read before the sequence
    return kvm.mmu_invalidate_seq != mmu_seq


class _Pfn(int):
    # A pfn that prints in hex in step labels.
    def __repr__(self) -> str:
        return "KVM_PFN_ERR_FAULT" if self == KVM_PFN_ERR_FAULT else hex(self)


class _Backing(NamedTuple):
    # What a cache's lookup found: a pfn from the user mapping, or the
    # guest_memfd slot and gfn to ask (a private gfn, with the RFC's caches).
    pfn: int | None
    slot: object = None
    gfn: int = 0

    def __repr__(self) -> str:
        if self.slot is None:
            return repr(_Pfn(self.pfn))
        return f"private gfn {self.gfn:#x}: ask guest_memfd"


def _backing(gpc: GfnToPfnCache) -> _Backing:
    # Inside a step: hva_to_pfn() for the user mapping, or, for a private
    # gfn of a guest_memfd slot when caches know guest_memfd, where to look.
    kvm = gpc.kvm
    gfn = gpc.gpa >> PAGE_SHIFT
    slot = gpc.memslot
    if (kvm.config.gpc_gmem != "6.17" and gpc.gpa != INVALID_GPA and slot is not None
            and slot.flags & KVM_MEM_GUEST_MEMFD and kvm_mem_is_private(kvm, gfn)):
        return _Backing(None, slot, gfn)
    return _Backing(hva_to_pfn(kvm, gpc.uhva - gpc.uhva % PAGE_SIZE, True))


def _gpc_lookup_pfn(gpc: GfnToPfnCache):
    # hva_to_pfn() (6.17), or the RFC's guest_memfd lookup for a private gfn.
    # Returns (pfn, folio or None); a folio comes with a reference of the cache's.
    kvm = gpc.kvm
    if kvm.config.gpc_gmem == "6.17":
        label = f"{gpc.name}: hva_to_pfn"
    else:
        label = f"{gpc.name}: hva_to_pfn (guest_memfd for a private gfn)"
    found = yield from step(label, lambda: _backing(gpc))
    if found.slot is None:
        return found.pfn, None
    slot, gfn = found.slot, found.gfn
    if not kvm.config.kvm_can_access_gmem:
        return KVM_PFN_ERR_FAULT, None
    r, pfn, folio = yield from kvm_gmem_get_pfn(kvm, slot, gfn, gpc.name)
    if r:
        return KVM_PFN_ERR_FAULT, None
    return pfn, folio


@cpu_code
def hva_to_pfn_retry(gpc: GfnToPfnCache):
    """Look the pfn up with the lock dropped, retrying while an invalidation ran; 0 or -EFAULT.

    Models: virt/kvm/pfncache.c: hva_to_pfn_retry()

    Called with ``refresh_lock`` and the write lock held; returns with the
    write lock held, the cache valid (0) or not (-EFAULT).  The cache keeps
    no page reference: the notifier protects the mapping from then on.
    """
    _check_gpc(gpc)
    kvm = gpc.kvm
    new_pfn, folio = KVM_PFN_ERR_FAULT, None

    def invalidate():
        gpc.valid = False
    # other tasks may pass the gpa/generation checks already: invalid first
    yield from step(f"{gpc.name}: valid = false", invalidate)
    while True:
        mmu_seq = yield from step(f"{gpc.name}: mmu_seq = mmu_invalidate_seq",
                                  lambda: kvm.mmu_invalidate_seq)
        yield from gpc.lock.write_unlock()
        if folio is not None:
            # the previous attempt raced with an invalidation: drop it
            yield from folio_put(folio, gpc.name)
        new_pfn, folio = yield from _gpc_lookup_pfn(gpc)
        if is_error_pfn(new_pfn):
            yield from gpc.lock.write_lock()
            return -EFAULT
        yield from gpc.lock.write_lock()
        retry = yield from step(f"{gpc.name}: mmu_notifier_retry_cache?",
                                lambda: mmu_notifier_retry_cache(kvm, mmu_seq))
        if not retry:
            break

    def publish():
        gpc.valid = True
        gpc.pfn = new_pfn
        gpc.khva = (new_pfn << PAGE_SHIFT) | (gpc.uhva & (PAGE_SIZE - 1))
    yield from step(f"{gpc.name}: valid = true, pfn = {new_pfn:#x}", publish)
    if folio is not None:
        yield from folio_put(folio, gpc.name)       # kvm_release_page_clean()
    return 0


def _resolve(gpc: GfnToPfnCache, gpa: int) -> str:
    # The part of __kvm_gpc_refresh() under the write lock, before the
    # lookup: bail out if inactive; redo gpa -> memslot -> uhva only when the
    # gpa or the memslot generation moved; keep a valid mapping whose hva
    # did not change.
    if not gpc.active:
        return "inactive"
    kvm = gpc.kvm
    old_uhva = gpc.uhva if kvm_is_error_hva(gpc.uhva) else gpc.uhva & ~(PAGE_SIZE - 1)
    page_offset = gpa & (PAGE_SIZE - 1)
    hva_change = False
    generation = kvm.kvm_memslots(0).generation
    if gpc.gpa != gpa or gpc.generation != generation or kvm_is_error_hva(gpc.uhva):
        gfn = gpa >> PAGE_SHIFT
        gpc.gpa = gpa
        gpc.generation = generation
        gpc.memslot = kvm.kvm_memslots(0).gfn_to_memslot(gfn)
        gpc.uhva, _ = gfn_to_hva_memslot_prot(gpc.memslot, gfn)
        if kvm_is_error_hva(gpc.uhva):
            return "no hva"
        # even if the gpa or the generation changed, the hva may be the same
        hva_change = gpc.uhva != old_uhva
    else:
        gpc.uhva = old_uhva
    gpc.uhva += page_offset
    if not gpc.valid or hva_change:
        return "lookup"
    # the pfn is still good; only the offset in the page may have moved
    gpc.khva = (gpc.pfn << PAGE_SHIFT) | page_offset
    return "keep"


@cpu_code
def __kvm_gpc_refresh(gpc: GfnToPfnCache, gpa: int):
    """Recompute the hva if the gpa or the memslots changed, then the pfn; 0 or -errno.

    Models: virt/kvm/pfncache.c: __kvm_gpc_refresh()

    Called with ``refresh_lock`` held.  -EINVAL: the cache is inactive;
    -EFAULT: no memslot or no page (the cache is then invalid, its pfn the
    error pfn).
    """
    _check_gpc(gpc)
    check_int("gpa", gpa, 0, _GPA_MAX)
    yield from gpc.lock.write_lock()
    what = yield from step(f"{gpc.name}: gpa -> memslot -> uhva", lambda: _resolve(gpc, gpa))
    if what == "inactive":
        yield from gpc.lock.write_unlock()
        return -EINVAL
    if what == "keep":
        yield from gpc.lock.write_unlock()
        return 0
    ret = -EFAULT if what == "no hva" else (yield from hva_to_pfn_retry(gpc))
    if ret:
        def fail():
            gpc.valid = False
            gpc.pfn = KVM_PFN_ERR_FAULT
            gpc.khva = None
        yield from step(f"{gpc.name}: refresh failed, pfn = ERR_FAULT", fail)
    # (the kernel also gpc_unmap()s the old pfn here: nothing to undo in the model)
    yield from gpc.lock.write_unlock()
    return ret


def _add_to_list(gpc: GfnToPfnCache) -> None:
    fields = gpc.kvm.fields
    fields.gpc_list = fields.gpc_list + (gpc.name,)


def _remove_from_list(gpc: GfnToPfnCache) -> None:
    fields = gpc.kvm.fields
    fields.gpc_list = tuple(n for n in fields.gpc_list if n != gpc.name)


@cpu_code
def kvm_gpc_activate(gpc: GfnToPfnCache, gpa: int, len_: int):
    """Put the cache on the VM's list, mark it active, refresh it; 0 or -errno.

    Models: virt/kvm/pfncache.c: kvm_gpc_activate()

    -EINVAL for ``INVALID_GPA`` or a range that leaves the page; -EIO
    (``KVM_BUG_ON``) for an inactive cache that claims to be valid.
    """
    _check_gpc(gpc)
    check_int("gpa", gpa, 0, (1 << 64) - 1)
    _check_len(len_)
    if gpa == INVALID_GPA:
        return -EINVAL
    check_int("gpa", gpa, 0, _GPA_MAX)
    if not kvm_gpc_is_valid_len(gpa, KVM_HVA_ERR_BAD, len_):
        return -EINVAL
    yield from gpc.refresh_lock.lock()
    active, valid = yield from step(f"{gpc.name}: active? valid?", lambda: (gpc.active, gpc.valid))
    if not active:
        if valid:
            gpc.kvm.warn(f"KVM_BUG_ON: {gpc.name} is inactive but valid")
            yield from gpc.refresh_lock.unlock()
            return -EIO
        # on the list first: a notifier must be able to find the cache
        # before it can hold a mapping
        yield from step(f"{gpc.name}: add to kvm->gpc_list", lambda: _add_to_list(gpc))
        yield from gpc.lock.write_lock()

        def activate():
            gpc.active = True
        yield from step(f"{gpc.name}: active = true", activate)
        yield from gpc.lock.write_unlock()
    ret = yield from __kvm_gpc_refresh(gpc, gpa)
    yield from gpc.refresh_lock.unlock()
    return ret


@cpu_code
def kvm_gpc_refresh(gpc: GfnToPfnCache, len_: int):
    """Make the cache valid again for its gpa; 0 or -errno.

    Models: virt/kvm/pfncache.c: kvm_gpc_refresh()
    """
    _check_gpc(gpc)
    _check_len(len_)
    yield from gpc.refresh_lock.lock()
    gpa, uhva = yield from step(f"{gpc.name}: read gpa", lambda: (gpc.gpa, gpc.uhva))
    if not kvm_gpc_is_valid_len(gpa, uhva, len_) or gpa == INVALID_GPA:
        yield from gpc.refresh_lock.unlock()
        return -EINVAL
    ret = yield from __kvm_gpc_refresh(gpc, gpa)
    yield from gpc.refresh_lock.unlock()
    return ret


def kvm_gpc_check(gpc: GfnToPfnCache, len_: int) -> bool:
    """True if the cache may be used now (caller holds ``gpc->lock`` for read).

    Models: virt/kvm/pfncache.c: kvm_gpc_check()

    Active, same memslot generation, a real hva, the length fits, and valid.
    Plain computation: the caller makes it one step.
    """
    _check_gpc(gpc)
    _check_len(len_)
    if not gpc.active:
        return False
    if gpc.gpa != INVALID_GPA and gpc.generation != gpc.kvm.kvm_memslots(0).generation:
        return False
    if kvm_is_error_hva(gpc.uhva):
        return False
    if not kvm_gpc_is_valid_len(gpc.gpa, gpc.uhva, len_):
        return False
    return gpc.valid


@cpu_code
def kvm_gpc_deactivate(gpc: GfnToPfnCache):
    """Mark the cache inactive and invalid, then take it off the VM's list.

    Models: virt/kvm/pfncache.c: kvm_gpc_deactivate()

    The gpa and hva stay (the memslot generation protects them); the pfn is
    looked up again on the next activation.
    """
    _check_gpc(gpc)
    yield from gpc.refresh_lock.lock()
    active = yield from step(f"{gpc.name}: active?", lambda: gpc.active)
    if active:
        yield from gpc.lock.write_lock()

        def deactivate():
            gpc.active = gpc.valid = False
            gpc.khva = None
            gpc.pfn = KVM_PFN_ERR_FAULT
        yield from step(f"{gpc.name}: active = valid = false", deactivate)
        yield from gpc.lock.write_unlock()
        yield from step(f"{gpc.name}: remove from kvm->gpc_list", lambda: _remove_from_list(gpc))
    yield from gpc.refresh_lock.unlock()


def kvm_gpc_mark_dirty_in_slot(gpc: GfnToPfnCache) -> None:
    """Mark the cached gfn dirty in its memslot's dirty log.

    Models: include/linux/kvm_host.h: kvm_gpc_mark_dirty_in_slot()
    """
    _check_gpc(gpc)
    if gpc.gpa != INVALID_GPA:
        mark_page_dirty_in_slot(gpc.kvm, gpc.memslot, gpc.gpa >> PAGE_SHIFT)


# ---------------------------------------------------------------------------
# Dereferencing khva (what a user does under the read lock, after the check)
# ---------------------------------------------------------------------------
def _freed_gmem_folio(kvm: Kvm, pfn: int):
    # page_folio() for a guest_memfd page: the freed folio that holds pfn, or None.
    for prim in kvm._prims:
        if isinstance(prim, GmemFile):
            for folio in prim.folios:
                if folio.pfn is not None and folio.pfn <= pfn < folio.pfn + (1 << folio.order):
                    return folio if folio.freed else None
    return None


def _khva_page(gpc: GfnToPfnCache, what: str) -> tuple[int, int]:
    # The page and offset khva points at; a freed guest_memfd folio is reported
    # as KASAN would (host memory records a freed page of its own).
    khva = gpc.khva if gpc.khva is not None else 0
    pfn, offset = khva >> PAGE_SHIFT, khva & (PAGE_SIZE - 1)
    folio = _freed_gmem_folio(gpc.kvm, pfn)
    if folio is not None:
        gpc.kvm.warn(f"KASAN: use-after-free {what} through {gpc.name}: pfn {pfn:#x} is "
                     f"freed guest_memfd folio {folio.fid}")
    return pfn, offset


def gpc_khva_read_u64(gpc: GfnToPfnCache) -> int:
    """Read the u64 at the cache's kernel address (the caller checked the cache).

    Plain computation (the caller makes it one step); no kernel name: it is
    ``*(u64 *)gpc->khva``.
    """
    _check_gpc(gpc)
    pfn, offset = _khva_page(gpc, "read")
    return gpc.kvm.mm.mem.read_data(pfn, offset)


def gpc_khva_try_cmpxchg_u64(gpc: GfnToPfnCache, old: int, new: int) -> tuple[bool, int]:
    """Compare-exchange the u64 at the cache's kernel address: ``(ok, current)``.

    Plain computation; ``try_cmpxchg()`` on ``gpc->khva``, which returns
    *true on success* (Documentation/atomic_t.txt).
    """
    _check_gpc(gpc)
    check_int("old", old, 0, (1 << 64) - 1)
    check_int("new", new, 0, (1 << 64) - 1)
    pfn, offset = _khva_page(gpc, "write")
    mem = gpc.kvm.mm.mem
    cur = mem.read_data(pfn, offset)
    if cur != old:
        return False, cur
    mem.write_data(pfn, offset, new)
    return True, old


# ---------------------------------------------------------------------------
# The user pattern
# ---------------------------------------------------------------------------
@cpu_code
def gpc_lock_valid(gpc: GfnToPfnCache, len_: int = 8, who: str | None = None):
    """Take the read lock and refresh until the cache is valid: 0 (lock held) or -errno.

    No kernel name: the pattern every user of a cache open-codes.  On an
    error the read lock is not held.  ``who`` prefixes the step labels.
    """
    _check_gpc(gpc)
    _check_len(len_)
    who = gpc.name if who is None else who
    yield from gpc.lock.read_lock()
    while not (yield from step(f"{who}: kvm_gpc_check", lambda: kvm_gpc_check(gpc, len_))):
        yield from gpc.lock.read_unlock()
        ret = yield from kvm_gpc_refresh(gpc, len_)
        if ret:
            return ret
        yield from gpc.lock.read_lock()
    return 0


@cpu_code
def gpc_read_u64(gpc: GfnToPfnCache):
    """Check under the read lock, refresh until valid, read; ``(0, value)`` or ``(-errno, 0)``.

    No kernel name: a user of the cache (Xen's shared_info, steal time...).
    """
    _check_gpc(gpc)
    ret = yield from gpc_lock_valid(gpc, 8)
    if ret:
        return ret, 0
    value = yield from step(f"{gpc.name}: read *khva", lambda: gpc_khva_read_u64(gpc))
    yield from gpc.lock.read_unlock()
    return 0, value
