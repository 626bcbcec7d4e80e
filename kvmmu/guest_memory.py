"""Guest physical memory behind memslots, as KVM reaches it.

Models: virt/kvm/kvm_main.c: gfn_to_hva_memslot_prot(), kvm_vcpu_read_guest(), kvm_vcpu_mark_page_dirty()
Models: virt/kvm/kvm_main.c: kvm_mmu_notifier_invalidate_range_start(), kvm_mmu_notifier_invalidate_range_end()
Models: include/linux/kvm_host.h: kvm_mem_is_private(), kvm_is_visible_memslot(), KVM_PFN_ERR_FAULT, KVM_HVA_ERR_BAD
Models: virt/kvm/guest_memfd.c: kvm_gmem_get_pfn()

Chapter 5 needs guest memory that is *really behind memslots*: the guest's
page tables live in guest frames, each frame lives in a memslot, a shared
frame is reached through the VMM's user mapping (an hva), and a private frame
of a guest_memfd slot lives in guest_memfd, not in the VMM's address space.
The class :class:`GuestMemory` holds all of it for one VM:

- host pages (pfn -> contents, with a reference count; a page whose count
  drops to zero is *freed*, and any later access to it is recorded in
  ``uaf`` as a use after free);
- the VMM's user mapping (hva page -> pfn), faulted in on first touch, as
  ``get_user_pages`` / ``__get_user`` do;
- the memslots (:mod:`kvmmu.memslots`) with their generation, and the
  kernel's one-entry ``last_used_slot`` cache;
- memory attributes (which gfns are private) and the guest_memfd backing of
  private gfns;
- the MMU-notifier counters ``mmu_invalidate_seq``,
  ``mmu_invalidate_in_progress`` and ``mn_active_invalidate_count``, and the
  VM's list of pfn caches (``gpc_list``, see :mod:`kvmmu.pfncache`);
- the dirty log (gfns marked dirty).

**The step protocol.**  Code that other CPUs may interleave with is written
as a generator that yields one *op* per shared access: ``(STEP, label, fn)``
runs ``fn()`` atomically and sends its result back; ``(LOCK, lock, kind)``
takes or drops a lock (``kind`` is ``"read_lock"``, ``"write_lock"``,
``"lock"`` ...).  :func:`run_ops` runs such a generator on one CPU (the locks
are the model's own :class:`ModelRWLock` / :class:`ModelMutex`, which refuse
to block); :func:`as_actor` hands the same generator to the interleaving
explorer (:mod:`kvmmu.explorer`), whose locks then really block.  One source
of truth serves both the sequential API and the race chapters.

**Where the model simplifies.**

- Host memory is a dict of 64-bit words per page (unwritten words read 0);
  only page-table words are ever stored.  pfns are handed out in order, so
  runs are reproducible.
- The VMM's address space is exactly the union of the slots' user ranges;
  an hva outside it faults (-EFAULT).  A punched hole reads back as a fresh
  zeroed page on the next touch, as shmem does.
- Memory attributes are kept per gfn; only guest_memfd slots may hold
  private gfns (the kernel lets userspace set the attribute anywhere, then
  refuses to fault such a gfn).
- Whether KVM can reach guest_memfd pages (the RFC's direct-map removal, or a
  confidential VM whose memory the host cannot read) is one VM-wide switch,
  ``kvm_can_access_gmem``.  The hook that invalidates pfn caches when
  guest_memfd punches a hole is the RFC's claim ("the caches are hooked up
  to the MMU notifiers"), modelled by gfn range; 6.17 has no such hook.
- Memslot updates install a whole new set of slots and bump the generation
  by 2 (two address spaces); the in-progress protocol belongs to chapter 6.
"""
from .checks import check_bool, check_int, check_u64
from .errno import EFAULT
from .levels import PAGE_SHIFT, PAGE_SIZE
from .memslots import (KVM_MEM_GUEST_MEMFD, KVM_MEM_READONLY, KVM_MEMSLOT_INVALID,
                       KvmMemorySlot, KvmMemslots)

U64_MASK = (1 << 64) - 1
GPA_MAX = (1 << 52) - 1

#: include/linux/kvm_host.h: the error pfn every failed lookup returns.
KVM_PFN_ERR_MASK = 0x7FF << 52
KVM_PFN_ERR_FAULT = KVM_PFN_ERR_MASK
#: include/linux/kvm_host.h: KVM_HVA_ERR_BAD is PAGE_OFFSET; the model's value
#: is only ever compared, never dereferenced.
KVM_HVA_ERR_BAD = 0xFFFF_8880_0000_0000
from .memslots import INVALID_GPA  # noqa: E402,F401 (one definition, re-exported)
KVM_USER_MEM_SLOTS = 32764

#: First pfn the model hands out (arbitrary, deterministic).
FIRST_PFN = 0x10000

STEP = "step"
LOCK = "lock"


def is_error_pfn(pfn: int) -> bool:
    """True for an error pfn (KVM_PFN_ERR_*).

    Models: include/linux/kvm_host.h: is_error_noslot_pfn()
    """
    return bool(pfn & KVM_PFN_ERR_MASK)


def kvm_is_error_hva(hva: int) -> bool:
    """True for an error hva (KVM_HVA_ERR_BAD and above).

    Models: include/linux/kvm_host.h: kvm_is_error_hva()
    """
    return hva >= KVM_HVA_ERR_BAD


def kvm_is_visible_memslot(slot) -> bool:
    """True if ``slot`` is a user-visible slot that is not being deleted or moved.

    Models: include/linux/kvm_host.h: kvm_is_visible_memslot()
    """
    return bool(slot is not None and slot.id < KVM_USER_MEM_SLOTS
                and not slot.flags & KVM_MEMSLOT_INVALID)


# --------------------------------------------------------------------------
# Locks for sequential use, and the two drivers of the step protocol.
# --------------------------------------------------------------------------
class ModelRWLock:
    """A reader-writer lock for one CPU: it counts, and refuses to block.

    On one CPU a lock that would block is a bug in the caller (a recursive
    write lock, a missing unlock), so it raises instead of hanging.  The
    explorer replaces these with its own blocking ``RWLock``.
    """

    def __init__(self, name: str):
        self.name = name
        self.readers = 0
        self.writer = False

    def read_lock(self):
        if self.writer:
            raise RuntimeError(f"{self.name}: read_lock would block on a writer")
        self.readers += 1

    def read_unlock(self):
        if self.readers <= 0:
            raise RuntimeError(f"{self.name}: read_unlock without read_lock")
        self.readers -= 1

    def write_lock(self):
        if self.writer or self.readers:
            raise RuntimeError(f"{self.name}: write_lock would block")
        self.writer = True

    def write_unlock(self):
        if not self.writer:
            raise RuntimeError(f"{self.name}: write_unlock without write_lock")
        self.writer = False

    def __repr__(self):
        return f"ModelRWLock({self.name!r}, readers={self.readers}, writer={self.writer})"


class ModelMutex:
    """A mutex (or spinlock) for one CPU: refuses to block, like ModelRWLock."""

    def __init__(self, name: str):
        self.name = name
        self.held = False

    def lock(self):
        if self.held:
            raise RuntimeError(f"{self.name}: lock would block (already held)")
        self.held = True

    def unlock(self):
        if not self.held:
            raise RuntimeError(f"{self.name}: unlock without lock")
        self.held = False

    def __repr__(self):
        return f"ModelMutex({self.name!r}, held={self.held})"


class Hex(int):
    """An int that prints in hex (step results in explorer tables)."""

    def __repr__(self):
        return f"{int(self):#x}" if self >= 0 else str(int(self))

    __str__ = __repr__


def hexed(result):
    """Make a step result print in hex: an int, or a ``(ret, value)`` pair's value."""
    if type(result) is tuple and len(result) == 2:
        return (result[0], Hex(result[1]))
    if type(result) is int:
        return Hex(result)
    return result


def run_ops(gen, trace: list | None = None):
    """Run a step-protocol generator to completion on one CPU; return its result.

    With ``trace`` (a list), append ``(label, result)`` for every step, so a
    chapter can print what a walk read and wrote.
    """
    try:
        op = next(gen)
        while True:
            if op[0] == STEP:
                result = op[2]()
                if trace is not None:
                    trace.append((op[1], result))
            else:
                result = getattr(op[1], op[2])()
            op = gen.send(result)
    except StopIteration as stop:
        return stop.value


def as_actor(gen):
    """Adapt a step-protocol generator to an explorer actor (``yield from`` it).

    Each ``STEP`` becomes one ``kvmmu.explorer.step``; each ``LOCK`` becomes
    the explorer lock's own blocking operation.
    """
    result = None
    started = False
    while True:
        # The op is not kept in a local while the explorer holds it: every
        # local is frozen into the explorer's state key.
        try:
            result = yield from _explorer_op(gen.send(result) if started else next(gen))
        except StopIteration as stop:
            return stop.value
        started = True


def _explorer_op(op):
    from .explorer import step

    if op[0] == STEP:
        return (yield from step(op[1], op[2]))
    return (yield from getattr(op[1], op[2])())


# --------------------------------------------------------------------------
# Guest memory.
# --------------------------------------------------------------------------
class GuestMemory:
    """One VM's guest physical memory: memslots, host pages, private memory.

    ``slots`` is a list of :class:`kvmmu.memslots.KvmMemorySlot`.
    ``kvm_can_access_gmem``: whether KVM may read and write guest_memfd
    pages (see the module docstring).
    """

    def __init__(self, slots, *, kvm_can_access_gmem: bool = True):
        if not isinstance(slots, (list, tuple)) or not all(isinstance(s, KvmMemorySlot) for s in slots):
            raise TypeError("slots must be a list of KvmMemorySlot")
        check_bool("kvm_can_access_gmem", kvm_can_access_gmem)
        self.memslots = KvmMemslots(list(slots), generation=0)
        self._check_hva_overlap(self.memslots.slots)
        self.last_used_slot = None
        self.kvm_can_access_gmem = kvm_can_access_gmem
        # host memory
        self.pages: dict[int, dict[int, int]] = {}
        self.refcount: dict[int, int] = {}
        self.freed: dict[int, bool] = {}
        self.next_pfn = FIRST_PFN
        self.host_pt: dict[int, int] = {}          # hva >> 12 -> pfn
        self.uaf: list[str] = []                   # accesses to freed pages
        # private memory
        self.private: dict[int, bool] = {}         # gfn -> True
        self.gmem: dict[tuple[int, int], int] = {}  # (slot id, gfn) -> pfn
        # mmu notifier state (struct kvm)
        self.mmu_invalidate_seq = 0
        self.mmu_invalidate_in_progress = 0
        self.mn_active_invalidate_count = 0
        self.gpc_list: list = []
        self.gpc_lock = ModelMutex("kvm->gpc_lock")
        #: model-only: every cache kvm_gpc_init() saw, by a small id, so a
        #: step can name a cache by its id instead of returning the object
        self.gpcs: dict = {}
        # dirty log
        self.dirty: dict[int, bool] = {}

    @staticmethod
    def _check_hva_overlap(slots):
        ranges = sorted((s.userspace_addr, s.userspace_addr + (s.npages << PAGE_SHIFT), s.id)
                        for s in slots)
        for (a0, a1, ia), (b0, _b1, ib) in zip(ranges, ranges[1:]):
            if a1 > b0:
                raise ValueError(f"slots {ia} and {ib} overlap in the VMM's address space")

    # ---- memslots --------------------------------------------------------
    @property
    def generation(self) -> int:
        return self.memslots.generation

    def gfn_to_memslot(self, gfn: int):
        """Return the memslot holding ``gfn`` or None, trying the last used slot first.

        Models: virt/kvm/kvm_main.c: kvm_vcpu_gfn_to_memslot()
        """
        slot = self.last_used_slot
        if slot is not None and slot.base_gfn <= gfn < slot.base_gfn + slot.npages:
            return slot
        for slot in self.memslots.slots:
            if slot.base_gfn <= gfn < slot.base_gfn + slot.npages:
                self.last_used_slot = slot
                return slot
        return None

    def install_memslots(self, slots) -> None:
        """Replace the memslots (a memslot update) and bump the generation.

        Models: virt/kvm/kvm_main.c: kvm_swap_active_memslots()
        """
        new = KvmMemslots(list(slots), generation=self.memslots.generation + 2)
        self._check_hva_overlap(new.slots)
        self.memslots = new
        self.last_used_slot = None

    def gfn_to_hva_memslot_prot(self, slot, gfn: int) -> tuple[int, bool]:
        """Return ``(hva, writable)`` for ``gfn`` in ``slot``; KVM_HVA_ERR_BAD if none.

        Models: virt/kvm/kvm_main.c: gfn_to_hva_memslot_prot()
        """
        if slot is None or slot.flags & KVM_MEMSLOT_INVALID:
            return KVM_HVA_ERR_BAD, False
        return (slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT),
                not slot.flags & KVM_MEM_READONLY)

    def _slot_of_hva(self, hva: int):
        for slot in self.memslots.slots:
            if slot.userspace_addr <= hva < slot.userspace_addr + (slot.npages << PAGE_SHIFT):
                return slot
        return None

    # ---- host pages --------------------------------------------------------
    def alloc_page(self) -> int:
        """Allocate a zeroed host page with one reference; return its pfn."""
        pfn = self.next_pfn
        self.next_pfn += 1
        self.pages[pfn] = {}
        self.refcount[pfn] = 1
        return pfn

    def get_page(self, pfn: int) -> None:
        """Take a reference on a host page."""
        if pfn not in self.pages:
            self.uaf.append(f"get_page on freed pfn {pfn:#x}")
            return
        self.refcount[pfn] += 1

    def put_page(self, pfn: int) -> None:
        """Drop a reference; the page is freed when the last one goes."""
        if pfn not in self.pages:
            self.uaf.append(f"put_page on freed pfn {pfn:#x}")
            return
        self.refcount[pfn] -= 1
        if self.refcount[pfn] == 0:
            del self.pages[pfn]
            del self.refcount[pfn]
            self.freed[pfn] = True

    def page_is_live(self, pfn: int) -> bool:
        return pfn in self.pages

    def hva_to_pfn(self, hva: int) -> int:
        """Return the pfn behind ``hva`` with a reference held, faulting it in.

        Models: virt/kvm/kvm_main.c: hva_to_pfn()
        """
        hpage = hva >> PAGE_SHIFT
        pfn = self.host_pt.get(hpage)
        if pfn is None:
            if self._slot_of_hva(hva) is None:
                return KVM_PFN_ERR_FAULT
            pfn = self.alloc_page()            # the mapping's reference
            self.host_pt[hpage] = pfn
        self.get_page(pfn)                     # the caller's reference
        return pfn

    def _user_page(self, hva: int):
        # The user page behind hva (faulted in), or None outside the VMM's ranges.
        hpage = hva >> PAGE_SHIFT
        pfn = self.host_pt.get(hpage)
        if pfn is None:
            if self._slot_of_hva(hva) is None:
                return None
            pfn = self.alloc_page()
            self.host_pt[hpage] = pfn
        return self.pages[pfn]

    def get_user_u64(self, hva: int) -> tuple[int, int]:
        """Read a u64 through the VMM's mapping: ``(0, value)`` or ``(-EFAULT, 0)``.

        Models: arch/x86/include/asm/uaccess.h: __get_user()
        """
        if hva & 7:
            raise ValueError(f"hva must be 8-byte aligned, got {hva:#x}")
        page = self._user_page(hva)
        if page is None:
            return -EFAULT, 0
        return 0, page.get((hva & 0xFFF) >> 3, 0)

    def try_cmpxchg_user_u64(self, hva: int, old: int, new: int) -> tuple[int, int]:
        """Compare-exchange a u64 through the VMM's mapping.

        Returns ``(0, old)`` on success, ``(1, current)`` if memory held
        another value, ``(-EFAULT, 0)`` if the hva is not mapped.

        Models: arch/x86/include/asm/uaccess.h: __try_cmpxchg_user()
        """
        if hva & 7:
            raise ValueError(f"hva must be 8-byte aligned, got {hva:#x}")
        page = self._user_page(hva)
        if page is None:
            return -EFAULT, 0
        index = (hva & 0xFFF) >> 3
        cur = page.get(index, 0)
        if cur != old:
            return 1, cur
        page[index] = new
        return 0, old

    def put_user_u64(self, hva: int, value: int) -> int:
        """Store a u64 through the VMM's mapping: 0 or -EFAULT.

        Models: arch/x86/include/asm/uaccess.h: __put_user()
        """
        if hva & 7:
            raise ValueError(f"hva must be 8-byte aligned, got {hva:#x}")
        page = self._user_page(hva)
        if page is None:
            return -EFAULT
        page[(hva & 0xFFF) >> 3] = value
        return 0

    # kernel-mapping (khva) accesses: what a pfn cache dereferences
    def khva_read_u64(self, pfn: int, offset: int) -> int:
        """Read a u64 at ``offset`` of host page ``pfn`` (a kernel mapping)."""
        page = self.pages.get(pfn)
        if page is None:
            self.uaf.append(f"read of freed pfn {pfn:#x} offset {offset:#x}")
            return 0
        return page.get(offset >> 3, 0)

    def khva_try_cmpxchg_u64(self, pfn: int, offset: int, old: int, new: int) -> tuple[int, int]:
        """Compare-exchange a u64 in host page ``pfn``: ``(0, old)`` or ``(1, current)``.

        Models: arch/x86/include/asm/cmpxchg.h: __try_cmpxchg()
        """
        page = self.pages.get(pfn)
        if page is None:
            self.uaf.append(f"cmpxchg into freed pfn {pfn:#x} offset {offset:#x}")
            return 0, old       # the write lands in whatever reuses the page
        cur = page.get(offset >> 3, 0)
        if cur != old:
            return 1, cur
        page[offset >> 3] = new
        return 0, old

    # ---- private memory ----------------------------------------------------
    def set_memory_attributes(self, start_gfn: int, end_gfn: int, private: bool) -> None:
        """Mark ``[start_gfn, end_gfn)`` private or shared (KVM_SET_MEMORY_ATTRIBUTES)."""
        check_int("start_gfn", start_gfn, 0, GPA_MAX >> PAGE_SHIFT)
        check_int("end_gfn", end_gfn, start_gfn + 1, (GPA_MAX >> PAGE_SHIFT) + 1)
        check_bool("private", private)
        for gfn in range(start_gfn, end_gfn):
            slot = self.gfn_to_memslot(gfn)
            if private and (slot is None or not slot.flags & KVM_MEM_GUEST_MEMFD):
                raise ValueError(
                    f"gfn {gfn:#x} is not in a guest_memfd slot: only those can be private")
        for gfn in range(start_gfn, end_gfn):
            if private:
                self.private[gfn] = True
            else:
                self.private.pop(gfn, None)

    def kvm_mem_is_private(self, gfn: int) -> bool:
        """True if ``gfn`` has the PRIVATE memory attribute.

        Models: include/linux/kvm_host.h: kvm_mem_is_private()
        """
        return gfn in self.private

    def kvm_gmem_get_pfn(self, slot, gfn: int) -> int:
        """Return the guest_memfd pfn backing private ``gfn``, with a reference.

        The page is allocated on first use, as guest_memfd allocates folios.

        Models: virt/kvm/guest_memfd.c: kvm_gmem_get_pfn()
        """
        key = (slot.id, gfn)
        pfn = self.gmem.get(key)
        if pfn is None:
            pfn = self.alloc_page()           # guest_memfd's own reference
            self.gmem[key] = pfn
        self.get_page(pfn)
        return pfn

    # ---- what KVM reads and writes ---------------------------------------
    def kvm_vcpu_read_guest(self, gpa: int) -> tuple[int, int]:
        """Read the u64 at ``gpa`` as KVM does: ``(0, value)`` or ``(-EFAULT, 0)``.

        Shared gfns are read through the slot's user mapping.  Private gfns
        are read from guest_memfd when KVM can reach it (the RFC's
        gmem-aware read) and fail with -EFAULT otherwise.

        Models: virt/kvm/kvm_main.c: kvm_vcpu_read_guest()
        """
        gfn = gpa >> PAGE_SHIFT
        slot = self.gfn_to_memslot(gfn)
        if not kvm_is_visible_memslot(slot):
            return -EFAULT, 0
        if gfn in self.private:
            if not self.kvm_can_access_gmem:
                return -EFAULT, 0
            pfn = self.kvm_gmem_get_pfn(slot, gfn)
            value = self.khva_read_u64(pfn, gpa & 0xFFF)
            self.put_page(pfn)
            return 0, value
        hva, _ = self.gfn_to_hva_memslot_prot(slot, gfn)
        return self.get_user_u64(hva + (gpa & (PAGE_SIZE - 1)))

    def kvm_vcpu_mark_page_dirty(self, gfn: int) -> None:
        """Record ``gfn`` in the dirty log.

        Models: virt/kvm/kvm_main.c: kvm_vcpu_mark_page_dirty()
        """
        self.dirty[gfn] = True

    def dirty_gfns(self) -> list[int]:
        """The gfns marked dirty, sorted."""
        return sorted(self.dirty)

    # ---- what the guest (or the VMM) reads and writes ----------------------
    def _guest_page(self, gpa: int, who: str):
        if type(gpa) is not int or not 0 <= gpa <= GPA_MAX or gpa & 7:
            check_int("gpa", gpa, 0, GPA_MAX)
            raise ValueError(f"gpa must be 8-byte aligned, got {gpa:#x}")
        gfn = gpa >> PAGE_SHIFT
        slot = self.gfn_to_memslot(gfn)
        if slot is None:
            raise ValueError(f"{who}: gpa {gpa:#x} is not in any memslot")
        if gfn in self.private:
            key = (slot.id, gfn)
            if key not in self.gmem:
                self.gmem[key] = self.alloc_page()
            return slot, self.pages[self.gmem[key]]
        hva = slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)
        pfn = self.host_pt.get(hva >> PAGE_SHIFT)
        if pfn is not None:
            return slot, self.pages[pfn]
        return slot, self._user_page(hva)

    def guest_read_u64(self, gpa: int) -> int:
        """The guest CPU reads the u64 at ``gpa`` (private gfns: its private copy)."""
        return self._guest_page(gpa, "guest_read_u64")[1].get((gpa & 0xFFF) >> 3, 0)

    def guest_write_u64(self, gpa: int, value: int, *, vmm: bool = False) -> None:
        """The guest CPU writes the u64 at ``gpa``.

        A guest write to a read-only slot would exit to the VMM as MMIO, so
        it is refused; ``vmm=True`` is the VMM filling the slot's backing
        (loading a ROM image).
        """
        if type(value) is not int or not 0 <= value <= U64_MASK:
            check_u64("value", value)
        slot, page = self._guest_page(gpa, "guest_write_u64")
        if slot.flags & KVM_MEM_READONLY and not vmm:
            raise ValueError(
                f"gpa {gpa:#x} is in read-only slot {slot.id}: a guest write would exit "
                "as MMIO; pass vmm=True to fill the ROM from the VMM")
        page[(gpa & 0xFFF) >> 3] = value

    # ---- MMU notifier ------------------------------------------------------
    def invalidate_range_start_ops(self, start: int, end: int):
        """Step generator: the primary MMU is about to unmap ``[start, end)``.

        Models: virt/kvm/kvm_main.c: kvm_mmu_notifier_invalidate_range_start()
        """
        from .pfncache import gfn_to_pfn_cache_invalidate_start_ops

        yield (STEP, "range_start: mn_active_invalidate_count++",
               lambda: self._bump("mn_active_invalidate_count", 1))
        # pfn caches first, before mmu_lock (kvm_main.c says why: no cache
        # lock may be taken under mmu_lock)
        yield from gfn_to_pfn_cache_invalidate_start_ops(self, start, end)
        yield (STEP, "range_start: mmu_invalidate_in_progress++",
               lambda: self._bump("mmu_invalidate_in_progress", 1))

    def invalidate_range_end_ops(self, start: int, end: int):
        """Step generator: the primary MMU has unmapped ``[start, end)``.

        Models: virt/kvm/kvm_main.c: kvm_mmu_notifier_invalidate_range_end()
        """
        def end_invalidate():
            self.mmu_invalidate_seq += 1
            self.mmu_invalidate_in_progress -= 1
        yield (STEP, "range_end: mmu_invalidate_seq++, in_progress--", end_invalidate)
        yield (STEP, "range_end: mn_active_invalidate_count--",
               lambda: self._bump("mn_active_invalidate_count", -1))

    def _bump(self, name: str, delta: int) -> int:
        value = getattr(self, name) + delta
        setattr(self, name, value)
        return value

    def host_unmap(self, start: int, end: int) -> list[int]:
        """Unmap ``[start, end)`` from the VMM and drop the mapping's references.

        Returns the pfns that were unmapped.  A page nobody else holds is
        freed; the next touch of the hva faults in a new zeroed page.
        """
        unmapped = []
        for hpage in sorted(self.host_pt):
            if start >> PAGE_SHIFT <= hpage < (end + PAGE_SIZE - 1) >> PAGE_SHIFT:
                pfn = self.host_pt.pop(hpage)
                unmapped.append(pfn)
                self.put_page(pfn)
        return unmapped

    def host_punch_hole_ops(self, start: int, end: int):
        """Step generator: ``fallocate(PUNCH_HOLE)`` on the VMM's shared memory.

        The notifier's range_start runs before the pages go away, and
        range_end after: the order pfn caches rely on.
        """
        self._check_range(start, end)
        yield from self.invalidate_range_start_ops(start, end)
        yield (STEP, f"unmap and free hva [{start:#x}, {end:#x})",
               lambda: [Hex(pfn) for pfn in self.host_unmap(start, end)])
        yield from self.invalidate_range_end_ops(start, end)

    def host_punch_hole(self, start: int, end: int) -> None:
        """Punch a hole in the VMM's shared memory ``[start, end)`` (one CPU)."""
        run_ops(self.host_punch_hole_ops(start, end))

    def _check_range(self, start, end):
        check_int("start", start, 0, (1 << 47) - 1)
        check_int("end", end, start + 1, 1 << 47)
        if start & 0xFFF or end & 0xFFF:
            raise ValueError(f"start and end must be page aligned, got {start:#x}, {end:#x}")

    def kvm_gmem_punch_hole_ops(self, slot_id: int, start_gfn: int, end_gfn: int, *,
                                hold_count: bool = True):
        """Step generator: ``fallocate(PUNCH_HOLE)`` on a slot's guest_memfd.

        The model gives the RFC's cache hook the MMU notifier's protocol:
        raise ``mn_active_invalidate_count``, invalidate the pfn caches over
        those gfns, free the pages, move the sequence count, drop the count.
        ``hold_count=False`` leaves the count alone (the chapter shows the
        refresh that then slips between the cache scan and the free).

        Models: virt/kvm/guest_memfd.c: kvm_gmem_punch_hole()
        """
        from .pfncache import gfn_to_pfn_cache_invalidate_gfn_range_ops

        check_bool("hold_count", hold_count)
        slot = self.memslots.id_to_memslot(slot_id)
        if slot is None or not slot.flags & KVM_MEM_GUEST_MEMFD:
            raise ValueError(f"slot_id {slot_id} is not a guest_memfd slot")
        check_int("start_gfn", start_gfn, slot.base_gfn, slot.end_gfn - 1)
        check_int("end_gfn", end_gfn, start_gfn + 1, slot.end_gfn)
        del slot      # keep no memslot object across a step (the explorer may restore a copy)
        if hold_count:
            yield (STEP, "gmem: mn_active_invalidate_count++",
                   lambda: self._bump("mn_active_invalidate_count", 1))
        yield from gfn_to_pfn_cache_invalidate_gfn_range_ops(self, start_gfn, end_gfn)
        yield (STEP, "gmem invalidate_begin: mmu_invalidate_in_progress++",
               lambda: self._bump("mmu_invalidate_in_progress", 1))

        def free():
            for gfn in range(start_gfn, end_gfn):
                pfn = self.gmem.pop((slot_id, gfn), None)
                if pfn is not None:
                    self.put_page(pfn)
        yield (STEP, f"gmem: free gfns [{start_gfn:#x}, {end_gfn:#x})", free)

        def end_invalidate():
            self.mmu_invalidate_seq += 1
            self.mmu_invalidate_in_progress -= 1
        yield (STEP, "gmem invalidate_end: mmu_invalidate_seq++, in_progress--", end_invalidate)
        if hold_count:
            yield (STEP, "gmem: mn_active_invalidate_count--",
                   lambda: self._bump("mn_active_invalidate_count", -1))

    def kvm_gmem_punch_hole(self, slot_id: int, start_gfn: int, end_gfn: int) -> None:
        """Punch a hole in a slot's guest_memfd (one CPU)."""
        run_ops(self.kvm_gmem_punch_hole_ops(slot_id, start_gfn, end_gfn))

    # ---- state ---------------------------------------------------------------
    def state(self) -> tuple:
        """A hashable summary of all of the above (what the explorer must hash)."""
        return (
            tuple((pfn, tuple(sorted((i, v) for i, v in page.items() if v)))
                  for pfn, page in sorted(self.pages.items())),
            tuple(sorted(self.refcount.items())),
            tuple(sorted(self.host_pt.items())),
            tuple(sorted(self.gmem.items())),
            tuple(sorted(self.private)),
            self.memslots.generation,
            self.mmu_invalidate_seq, self.mmu_invalidate_in_progress,
            self.mn_active_invalidate_count,
            tuple(sorted(self.dirty)),
            tuple(self.uaf),
        )

    def __repr__(self):
        slots = ", ".join(
            f"slot {s.id}: gfn [{s.base_gfn:#x}, {s.end_gfn:#x}) flags {s.flags:#x}"
            for s in self.memslots.slots)
        return f"GuestMemory({slots}; generation {self.generation})"
