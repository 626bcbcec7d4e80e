"""guest_memfd: guest memory that lives in a file of KVM's, not in the VMM's address space.

Models: virt/kvm/guest_memfd.c: kvm_gmem_create(), kvm_gmem_bind(), kvm_gmem_get_folio(), kvm_gmem_get_pfn()
Models: virt/kvm/guest_memfd.c: kvm_gmem_invalidate_begin(), kvm_gmem_invalidate_end(), kvm_gmem_punch_hole()
Models: mm/filemap.c: filemap_get_entry(), filemap_lock_folio(), filemap_remove_folio()
Models: mm/truncate.c: truncate_inode_pages_range()
Models: virt/kvm/guest_memfd.c: enum folio_mappability (RFC v5)
Models: virt/kvm/guest_memfd.c: gmem_is_mappable() (RFC v5), gmem_is_guest_mappable() (RFC v5)

Reference version: Linux 6.17 (read at v6.17-rc3).  A guest_memfd file
(``KVM_CREATE_GUEST_MEMFD``) holds a VM's private memory: folios in the
file's page cache, each a host page the VMM never maps.  A memslot with
``KVM_MEM_GUEST_MEMFD`` is bound to a range of the file; a fault on a gfn
whose memory attribute is PRIVATE takes its pfn from the file
(:func:`kvm_gmem_get_pfn`) instead of from the VMM's page tables.
``fallocate(PUNCH_HOLE)`` (:func:`kvm_gmem_punch_hole`) uses the MMU
notifier's protocol: begin an invalidation and zap the bound slots' SPTEs,
truncate, end the invalidation (the sequence count moves), so a fault that
looked the page up before the hole was punched retries.

:class:`GmemFile` is one shared object of the explorer; its folios are
:class:`kvmmu.folio.Folio` handles on state the file keeps, so a CPU can
hold a folio across steps.  Every page-cache operation is CPU code
(:mod:`kvmmu.cpu`).

**Where the model simplifies.**

- Folios are order 0 unless the file is made with another order; every
  folio of a file has the same order.  The pages come from the host's
  memory (:class:`kvmmu.host_mm.HostMemory`) and start zeroed.
- No arch hooks (``kvm_arch_gmem_prepare``/``invalidate``), no hugetlb, no
  ``uptodate`` tracking: a new folio is zeroed and ready at once.
- Folio references are counted with the model's ledger (:mod:`kvmmu.folio`).

**The RFC of chapter 4.**  Fuad Tabba's RFC v5 (2025-01, not merged) gives
each page offset of a file a mappability state and lets the VMM mmap the
file; :mod:`kvmmu.guest_memfd_rfc` models its functions, one layer above
this module.  What the 6.17 functions here need of it is here: the state
values and the two predicates, the file attribute that says whether a file
has the RFC's states (``GmemFile.mappability``: a 6.17 file has none), the
check the RFC adds to :func:`kvm_gmem_get_pfn`, and truncation unmapping a
folio the host maps (mm does that for every file; only the RFC's files can
be mapped).
"""
from __future__ import annotations

from .checks import KernelWarn, check_int, check_name
from .cpu import cpu_code
from .errno import EAGAIN, EFAULT, EIO
from .explorer import Primitive, step, wait_until
from .folio import (FILEMAP, FOLIO_FIELDS, PTE, Folio, _check_folio, folio_nr_pages, folio_put,
                    folio_put_refs, folio_ref_add, folio_try_get)
from .kvm_host import (_check_kvm, gfn_to_pfn_cache_invalidate_gfn_range, kvm_mmu_invalidate_begin,
                       kvm_mmu_invalidate_end, kvm_mmu_unmap_gfn_range)
from .levels import PG_LEVEL_4K
from .memslots import KVM_MEM_GUEST_MEMFD, KvmMemorySlot
from .tdp_mmu import KvmGfnRange
from .tlb import kvm_flush_remote_tlbs_range

__all__ = [
    "KVM_GMEM_ALL_MAPPABLE", "KVM_GMEM_GUEST_MAPPABLE", "KVM_GMEM_NONE_MAPPABLE",
    "gmem_is_mappable", "gmem_is_guest_mappable", "GmemFile", "kvm_gmem_create",
    "kvm_gmem_file", "kvm_gmem_bind", "folio_lock",
    "folio_unlock", "filemap_get_entry", "filemap_lock_folio", "kvm_gmem_get_folio",
    "kvm_gmem_get_pfn", "kvm_gmem_invalidate_begin", "kvm_gmem_invalidate_end",
    "filemap_remove_folio", "truncate_inode_pages_range", "kvm_gmem_punch_hole",
]


# The RFC's states (patch 05/15): bit 0 set, the guest cannot map the page;
# bit 1 set, the host cannot.
KVM_GMEM_ALL_MAPPABLE = 0b00
KVM_GMEM_GUEST_MAPPABLE = 0b10
KVM_GMEM_NONE_MAPPABLE = 0b11


class GmemFile(Primitive):
    """A guest_memfd file: its page cache and the memslots bound to it.

    Models: virt/kvm/guest_memfd.c: struct kvm_gmem

    ``size`` pages, folios of ``order``.  ``page_cache`` maps a folio's
    first index to the folio's id, ``folio_state`` an id to the folio's
    fields (see :class:`kvmmu.folio.Folio`), ``bindings`` lists the bound
    memslots as ``(slot id, first gfn, npages, pgoff)``.  Subclasses and
    the RFC model of chapter 4 add fields by extending ``_FIELDS``.
    """

    _sealed = True
    #: set when the file is created: configuration, not state
    _fixed_fields = ("size", "order")
    #: the explorer's footprint locations: the page cache, the folios, the bindings
    _field_locations = {"page_cache": ("page_cache",), "folio_state": ("folios",),
                        "next_fid": ("folios",), "bindings": ("bindings",)}

    _FIELDS = ("page_cache", "folio_state", "next_fid", "bindings")

    #: Whether the file has the RFC's per-offset mappability states (and so
    #: may be mapped by the VMM).  A 6.17 file has not; it never changes.
    mappability = False
    #: The states, one per offset (a tuple), in a file that has them.
    mappable_offsets = None

    def __init__(self, world, name: str, size: int, order: int = 0):
        super().__init__(world, name)
        check_int("order", order, 0, 9)
        check_int("size", size, 1 << order, 1 << 20)
        if size % (1 << order):
            raise ValueError(f"size must be a multiple of the folio size {1 << order}, got {size}")
        self.size = size
        self.order = order
        self.invalidate_lock = world.rwlock(f"{name}.invalidate_lock")
        self.page_cache: dict[int, int] = {}
        self.folio_state: dict[int, dict] = {}
        self.next_fid = 0
        self.bindings: tuple = ()

    # -- plain helpers --
    @property
    def nr_pages(self) -> int:
        return 1 << self.order

    def check_index(self, index: int) -> int:
        return check_int("index", index, 0, self.size - 1)

    def folio(self, fid: int) -> Folio:
        """The handle of folio ``fid``."""
        return Folio.of(self, fid)

    def folio_at(self, index: int) -> Folio | None:
        """The folio the page cache holds for ``index`` (no reference taken)."""
        fid = self.page_cache.get(index - index % self.nr_pages)
        return None if fid is None else self.folio(fid)

    @property
    def folios(self) -> list[Folio]:
        """Every folio the file ever had, in order (truncated ones included)."""
        return [self.folio(fid) for fid in sorted(self.folio_state)]

    def alloc_folio(self, index: int, holder: str | None = None) -> Folio:
        """Put a new zeroed folio for ``index`` in the page cache (plain: inside a step)."""
        first = index - index % self.nr_pages
        mem = self.world.mm.mem
        pfn = mem.alloc_folio(PG_LEVEL_4K)
        for _ in range(1, self.nr_pages):       # the rest of the folio: the next pages
            mem.alloc_folio(PG_LEVEL_4K)
        folio = Folio(self.next_fid, owner=self, index=first, order=self.order,
                      in_cache=True, pfn=pfn)
        self.next_fid += 1
        folio_ref_add(folio, self.nr_pages, FILEMAP)
        if holder is not None:
            folio_ref_add(folio, 1, holder)
        self.page_cache[first] = folio.fid
        return folio

    # -- the explorer's view --
    def _state(self):
        # Folio fields in their fixed order (kvmmu.folio's field table), the
        # ledger as its sorted items: a canonical value, cheap to build.
        out = []
        for name in self._FIELDS:
            value = getattr(self, name)
            if name == "folio_state":
                value = tuple((fid, tuple(tuple(v.items()) if type(v) is dict else v
                                          for v in st.values()))
                              for fid, st in value.items())
            elif type(value) is dict:
                value = tuple(sorted(value.items()))
            out.append(value)
        return tuple(out)

    def _load(self, st):
        for name, value in zip(self._FIELDS, st):
            if name == "folio_state":
                self.folio_state.clear()
                for fid, values in value:
                    self.folio_state[fid] = {k: (dict(v) if k == "holders" else v)
                                             for k, v in zip(FOLIO_FIELDS, values)}
            elif type(getattr(self, name)) is dict:
                getattr(self, name).clear()
                getattr(self, name).update(value)
            else:
                setattr(self, name, value)

    def _show(self):
        return ", ".join(f"{f!r}@{f.index} {f.short()}" for f in self.folios
                         if f.mapping is not None) or "empty"


def _check_file(file) -> GmemFile:
    if not isinstance(file, GmemFile):
        raise TypeError(f"file must be a GmemFile, got {type(file).__name__}")
    return file


def _check_who(who) -> str:
    # The CPU's or holder's name, which the folio lock and the ledger record.
    return check_name("who", who)


def _check_range(kvm, file, start: int, end: int) -> None:
    _check_kvm(kvm)
    _check_file(file)
    check_int("start", start, 0, file.size - 1)
    check_int("end", end, start + 1, file.size)


def kvm_gmem_create(kvm, size: int, order: int = 0, name: str | None = None) -> GmemFile:
    """Create a guest_memfd file of ``size`` pages for ``kvm`` (KVM_CREATE_GUEST_MEMFD).

    Models: virt/kvm/guest_memfd.c: kvm_gmem_create()

    Set-up, not CPU code: the file is a new shared object of the VM.
    """
    _check_kvm(kvm)
    check_int("size", size, 1, 1 << 20)
    n = sum(1 for p in kvm._prims if isinstance(p, GmemFile))
    return kvm._register(GmemFile(kvm, name or f"gmem{n}", size, order))


def kvm_gmem_file(kvm, slot: KvmMemorySlot) -> GmemFile | None:
    """The guest_memfd file a memslot is bound to (``slot->gmem.file``), or None."""
    _check_kvm(kvm)
    if not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"slot must be a KvmMemorySlot, got {type(slot).__name__}")
    if slot.gmem is None:
        return None
    return kvm.primitive(slot.gmem)


def kvm_gmem_bind(kvm, slot: KvmMemorySlot) -> None:
    """Record that ``slot`` is bound to its file from ``slot.gmem_pgoff`` on.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_bind()

    Plain computation: the memslot update runs it inside a step.
    """
    _check_kvm(kvm)
    file = kvm_gmem_file(kvm, slot)
    if file is None or not slot.flags & KVM_MEM_GUEST_MEMFD:
        raise ValueError(f"slot {slot.id} has no guest_memfd file")
    if slot.gmem_pgoff + slot.npages > file.size:
        raise ValueError(f"slot {slot.id} ({slot.npages} pages from offset {slot.gmem_pgoff}) "
                         f"does not fit in {file.name} ({file.size} pages)")
    binding = (slot.id, slot.base_gfn, slot.npages, slot.gmem_pgoff)
    file.bindings = tuple(b for b in file.bindings if b[0] != slot.id) + (binding,)


def _check_mappable_file(file, index: int) -> None:
    _check_file(file)
    if not file.mappability:
        raise ValueError(f"{file.name} has no mappability states (a 6.17 file): "
                         "make it with kvmmu.guest_memfd_rfc.kvm_gmem_create")
    file.check_index(index)


def gmem_is_mappable(file: GmemFile, index: int) -> bool:
    """Return True if the host may map ``index`` (state ALL).

    Models: virt/kvm/guest_memfd.c: gmem_is_mappable() (RFC v5)
    """
    _check_mappable_file(file, index)
    return file.mappable_offsets[index] == KVM_GMEM_ALL_MAPPABLE


def gmem_is_guest_mappable(file: GmemFile, index: int) -> bool:
    """Return True if the guest may map ``index`` (state ALL or GUEST: bit 0 clear).

    Models: virt/kvm/guest_memfd.c: gmem_is_guest_mappable() (RFC v5)
    """
    _check_mappable_file(file, index)
    return not file.mappable_offsets[index] & 0b01


# --------------------------------------------------------------------------
# Page-cache lookups and the folio lock
# --------------------------------------------------------------------------
def _try_lock(folio: Folio, who: str) -> bool:
    if folio.locked_by is None:
        folio.locked_by = who
        return True
    return False


def folio_lock(folio: Folio, who: str):
    """Take the folio lock, sleeping while another CPU holds it.

    Models: include/linux/pagemap.h: folio_lock()
    """
    _check_folio(folio)
    _check_who(who)
    while not (yield from step(f"folio_lock({folio!r})", lambda: _try_lock(folio, who))):
        yield from wait_until(f"folio {folio.fid} unlocked", lambda w: folio.locked_by is None)


def folio_unlock(folio: Folio, who: str):
    """Release the folio lock.

    Models: mm/filemap.c: folio_unlock()
    """
    _check_folio(folio)
    _check_who(who)
    def unlock():
        if folio.locked_by != who:
            raise KernelWarn(f"folio_unlock: {folio!r} is locked by {folio.locked_by}, not {who}")
        folio.locked_by = None
    yield from step(f"folio_unlock({folio!r})", unlock)


def filemap_get_entry(file: GmemFile, index: int, holder: str):
    """Find the folio at ``index`` and take a reference; None if the page cache has none.

    Models: mm/filemap.c: filemap_get_entry()

    The lookup is speculative (``folio_try_get``).  A folio whose count is
    zero is on its way out: the kernel retries until the count is raised
    again or the entry is gone, and so does the model (a wait).
    """
    _check_file(file)
    _check_who(holder)
    file.check_index(index)
    first = index - index % file.nr_pages

    def lookup():
        folio = file.folio_at(first)
        if folio is None:
            return None
        return folio if folio_try_get(folio, holder) else "count 0, retry"
    while True:
        folio = yield from step(f"page cache lookup at {index}", lookup)
        if folio != "count 0, retry":
            return folio
        yield from wait_until(
            f"page cache lookup at {index} spins: folio count is 0",
            lambda w: file.folio_at(first) is None or file.folio_at(first).refcount > 0)


def filemap_lock_folio(file: GmemFile, index: int, who: str):
    """Find the folio at ``index``, take a reference and lock it; None if absent.

    Models: mm/filemap.c: filemap_lock_folio()

    After the lock, a folio that truncation removed meanwhile is dropped and
    the lookup retried, as ``__filemap_get_folio`` does.
    """
    _check_file(file).check_index(index)
    _check_who(who)
    while True:
        folio = yield from filemap_get_entry(file, index, who)
        if folio is None:
            return None
        yield from folio_lock(folio, who)
        if (yield from step("folio->mapping == mapping", lambda: folio.mapping is file)):
            return folio
        yield from folio_unlock(folio, who)
        yield from folio_put(folio, who)


@cpu_code
def kvm_gmem_get_folio(file: GmemFile, index: int, who: str):
    """Return the locked folio at ``index`` with a reference, allocating it if absent.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_get_folio()
    """
    _check_file(file).check_index(index)
    _check_who(who)
    folio = yield from filemap_lock_folio(file, index, who)
    if folio is not None:
        return folio

    def create():
        folio = file.alloc_folio(index, holder=who)
        folio.locked_by = who
        return folio
    return (yield from step(f"allocate a folio at {index}", create))


def _binding_of(file: GmemFile, slot: KvmMemorySlot):
    for binding in file.bindings:
        if binding[0] == slot.id:
            return binding
    return None


@cpu_code
def kvm_gmem_get_pfn(kvm, slot: KvmMemorySlot, gfn: int, who: str = "kvm"):
    """Return ``(0, pfn, folio)`` for private ``gfn``, or ``(-errno, None, None)``.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_get_pfn()

    The folio comes back unlocked with a reference held by ``who`` (the
    kernel's ``struct page **page``); the caller drops it once its mapping is
    installed (``kvm_release_faultin_page``).  -EFAULT: the slot has no file
    (it was closed); -EIO: the file is not bound to this slot.  ``max_order``
    is always 0 here (order-0 folios), so it is not returned.

    In a file with the RFC's mappability states (RFC v5, chapter
    4) the lookup runs under the file's invalidate lock held for read, and
    a page the guest may not map (NONE: on its way to private) gives
    -EAGAIN: the vCPU retries later.
    """
    _check_kvm(kvm)
    _check_who(who)
    if not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"slot must be a KvmMemorySlot, got {type(slot).__name__}")
    check_int("gfn", gfn, slot.base_gfn, slot.end_gfn - 1)
    file = kvm_gmem_file(kvm, slot)
    if file is None:
        return -EFAULT, None, None
    binding = yield from step("file binding for the slot",
                              lambda: _binding_of(file, slot))
    if binding is None:
        return -EIO, None, None
    index = gfn - slot.base_gfn + slot.gmem_pgoff
    rfc = file.mappability
    if rfc:
        yield from file.invalidate_lock.read_lock()
        ok = yield from step("gmem_is_guest_mappable?",
                             lambda: gmem_is_guest_mappable(file, index))
        if not ok:
            yield from file.invalidate_lock.read_unlock()
            return -EAGAIN, None, None
    folio = yield from kvm_gmem_get_folio(file, index, who)
    yield from folio_unlock(folio, who)
    if rfc:
        yield from file.invalidate_lock.read_unlock()
    return 0, folio.pfn + (index - folio.index), folio


# --------------------------------------------------------------------------
# Invalidation and truncation
# --------------------------------------------------------------------------
def _bound_ranges(file: GmemFile, start: int, end: int) -> tuple:
    # The bound slots' gfn ranges that overlap file offsets [start, end).
    out = []
    for slot_id, base_gfn, npages, pgoff in file.bindings:
        lo, hi = max(start, pgoff), min(end, pgoff + npages)
        if lo < hi:
            out.append((slot_id, base_gfn + lo - pgoff, base_gfn + hi - pgoff))
    return tuple(out)


def _slot_by_id(kvm, slot_id: int):
    return kvm.kvm_memslots(0).id_to_memslot(slot_id)


@cpu_code
def kvm_gmem_invalidate_begin(kvm, file: GmemFile, start: int, end: int):
    """Begin an invalidation of file offsets ``[start, end)`` and zap the bound slots' SPTEs.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_invalidate_begin()

    For each bound slot that overlaps: under ``mmu_lock`` held for write,
    ``kvm_mmu_invalidate_begin`` (once), ``kvm_mmu_unmap_gfn_range``, and a
    flush if anything was zapped.
    """
    _check_range(kvm, file, start, end)
    ranges = yield from step("bound slots overlapping the range",
                             lambda: _bound_ranges(file, start, end))
    if not ranges:
        return False
    yield from kvm.mmu_lock.write_lock()
    yield from step("kvm_mmu_invalidate_begin", lambda: kvm_mmu_invalidate_begin(kvm))
    flush = False
    for slot_id, gfn_start, gfn_end in ranges:
        rng = KvmGfnRange(_slot_by_id(kvm, slot_id), gfn_start, gfn_end)
        flush = (yield from kvm_mmu_unmap_gfn_range(kvm, rng)) or flush
    if flush:
        lo, hi = min(r[1] for r in ranges), max(r[2] for r in ranges)
        yield from kvm_flush_remote_tlbs_range(kvm, lo, hi - lo)
    yield from kvm.mmu_lock.write_unlock()
    return True


@cpu_code
def kvm_gmem_invalidate_end(kvm, file: GmemFile, start: int, end: int):
    """End the invalidation: the sequence count moves, faults that looked earlier retry.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_invalidate_end()
    """
    _check_range(kvm, file, start, end)
    ranges = yield from step("bound slots overlapping the range",
                             lambda: _bound_ranges(file, start, end))
    if not ranges:
        return
    yield from kvm.mmu_lock.write_lock()
    yield from step("kvm_mmu_invalidate_end", lambda: kvm_mmu_invalidate_end(kvm))
    yield from kvm.mmu_lock.write_unlock()


def filemap_remove_folio(file: GmemFile, folio: Folio):
    """Delete the folio from the page cache and put the page cache's references.

    Models: mm/filemap.c: filemap_remove_folio()

    ``folio->mapping`` becomes NULL, then ``folio_put_refs(nr_pages)`` runs
    unconditionally.
    """
    _check_file(file)
    _check_folio(folio)
    def delete():
        del file.page_cache[folio.index]
        folio.mapping = None
    yield from step("delete from the page cache (folio->mapping = NULL)", delete)
    return (yield from folio_put_refs(folio, folio_nr_pages(folio), FILEMAP))


def _unmap_all(folio: Folio) -> int:
    n, folio.mapcount = folio.mapcount, 0
    return n


def _unmap_mapping_folio(folio: Folio):
    # unmap_mapping_folio(): zap every host PTE of the folio, then put the
    # references those mappings held (after the TLB flush).
    nr_ptes = yield from step("unmap_mapping_folio: zap the host PTEs", lambda: _unmap_all(folio))
    for _ in range(nr_ptes):
        yield from folio_put(folio, PTE)


@cpu_code
def truncate_inode_pages_range(file: GmemFile, start: int, end: int, who: str):
    """Remove the folios of offsets ``[start, end)`` from the page cache.

    Models: mm/truncate.c: truncate_inode_pages_range()

    Each folio is looked up with a speculative reference, locked, unmapped
    from every host page table that maps it, removed from the page cache,
    unlocked, and the lookup reference put.  Only a file the VMM can map
    (the RFC's) has mappings to remove; the model skips that step for the
    others, where there is never anything to unmap.
    """
    _check_file(file)
    check_int("start", start, 0, file.size - 1)
    check_int("end", end, start + 1, file.size)
    _check_who(who)
    holder = f"truncate:{who}"
    first = start - start % file.nr_pages
    for index in range(first, end, file.nr_pages):
        folio = yield from filemap_get_entry(file, index, holder)
        if folio is None:
            continue
        yield from folio_lock(folio, holder)
        if file.mappability:
            yield from _unmap_mapping_folio(folio)
        yield from filemap_remove_folio(file, folio)
        yield from folio_unlock(folio, holder)
        yield from folio_put(folio, holder)


@cpu_code
def kvm_gmem_punch_hole(kvm, file: GmemFile, start: int, end: int, who: str = "vmm"):
    """fallocate(PUNCH_HOLE) on file offsets ``[start, end)``: invalidate, truncate, end.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_punch_hole()

    With ``KvmConfig.gpc_gmem`` other than "6.17" (chapter 5's RFC), the
    pfn caches over the hole's private gfns are invalidated first.
    """
    _check_range(kvm, file, start, end)
    _check_who(who)
    hook = kvm.config.gpc_gmem               # chapter 5's RFC: pfn caches know guest_memfd
    yield from file.invalidate_lock.write_lock()
    if hook != "6.17":
        yield from _gmem_invalidate_gpcs(kvm, file, start, end, counted=hook == "rfc")
    yield from kvm_gmem_invalidate_begin(kvm, file, start, end)
    yield from truncate_inode_pages_range(file, start, end, who)
    yield from kvm_gmem_invalidate_end(kvm, file, start, end)
    if hook == "rfc":
        yield from step("mn_active_invalidate_count--", lambda: _mn_count(kvm, -1))
    yield from file.invalidate_lock.write_unlock()
    return 0


def _mn_count(kvm, delta: int) -> int:
    kvm.mn_active_invalidate_count += delta
    return kvm.mn_active_invalidate_count


def _gmem_invalidate_gpcs(kvm, file: GmemFile, start: int, end: int, counted: bool):
    # The RFC's hook as the model fills it in (KvmConfig.gpc_gmem): the
    # MMU notifier's protocol for the pfn caches over the hole's gfns.  The
    # count is raised before any cache lock is taken and dropped only after
    # the sequence moved (kvm_gmem_punch_hole), so a refresh that overlaps
    # retries; "rfc-uncounted" leaves it out.
    if counted:
        yield from step("mn_active_invalidate_count++", lambda: _mn_count(kvm, 1))
    ranges = yield from step("bound slots overlapping the hole",
                             lambda: _bound_ranges(file, start, end))
    for _slot_id, gfn_start, gfn_end in ranges:
        yield from gfn_to_pfn_cache_invalidate_gfn_range(kvm, gfn_start, gfn_end)
