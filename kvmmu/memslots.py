"""Memslots: which guest frames are backed by which host addresses.

Models: include/linux/kvm_host.h: struct kvm_memory_slot, struct kvm_memslots
Models: include/uapi/linux/kvm.h: KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEM_GUEST_MEMFD
Models: arch/x86/include/asm/kvm_host.h: struct kvm_lpage_info

The memslot data every mechanism shares: one slot, a set of slots with its
generation, gfn lookup and the x86 ``lpage_info`` huge-page bookkeeping.
The set of sets a VM keeps, and the update protocol that swaps them (two
swaps, SRCU, the INVALID flag), are :mod:`kvmmu.kvm_host` and
:mod:`kvmmu.kvm_main`.

**Slots are values.**  A :class:`KvmMemorySlot` never changes once built:
the kernel copies a slot to change its flags (``kvm_set_memslot``), and the
model does the same for the ``disallow_lpage`` counters
(:func:`kvm_mmu_gfn_disallow_lpage` returns the updated slot).  A CPU may
therefore keep a slot it looked up across steps, as a fault keeps
``fault->slot`` under SRCU.

**Where the model simplifies.**  Slots are kept in a sorted tuple rather
than the kernel's interval and gfn trees (lookups give the same answers);
``disallow_lpage`` is a tuple of counters per level.
"""
from dataclasses import dataclass, field, replace

from .checks import check_int
from .explorer import Primitive, World
from .levels import (KVM_HPAGE_GFN_SHIFT, KVM_PAGES_PER_HPAGE, PAGE_SHIFT,
                     PG_LEVEL_1G, PG_LEVEL_2M)

__all__ = [
    "KVM_MEM_LOG_DIRTY_PAGES", "KVM_MEM_READONLY", "KVM_MEM_GUEST_MEMFD",
    "KVM_MEMSLOT_INVALID", "KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS", "INVALID_GPA",
    "KVM_LPAGE_MIXED_FLAG", "GFN_MAX", "HVA_MAX", "KVM_USER_MEM_SLOTS",
    "gfn_to_index", "__kvm_mmu_slot_lpages", "KvmMemorySlot", "KvmMemslots",
    "__gfn_to_hva_memslot", "hva_to_gfn_memslot", "lpage_info_slot",
    "kvm_mmu_gfn_disallow_lpage", "kvm_mmu_gfn_allow_lpage", "kvm_slot_dirty_track_enabled",
    "kvm_is_visible_memslot", "describe_slot_flags", "kvm_mem_is_private", "KvmMemslotState",
]

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2
#: Internal flag, never visible to userspace: the slot is being deleted or moved.
KVM_MEMSLOT_INVALID = 1 << 16

KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS = 1 << 63

#: include/linux/kvm_types.h: INVALID_GPA, "no address" (all ones).
INVALID_GPA = (1 << 64) - 1

#: Bit 31 of a disallow_lpage count: the huge range mixes private and shared.
KVM_LPAGE_MIXED_FLAG = 1 << 31

GFN_MAX = (1 << 40) - 1  # 52-bit guest physical addresses
HVA_MAX = (1 << 47) - 1  # user half of a 4-level x86-64 address space

#: x86: SHRT_MAX slots, of which 3 are KVM's own (APIC access, identity map, TSS).
KVM_USER_MEM_SLOTS = 32767 - 3

_USER_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY | KVM_MEM_GUEST_MEMFD
_ALL_FLAGS = _USER_FLAGS | KVM_MEMSLOT_INVALID
_HUGE_LEVELS = (PG_LEVEL_2M, PG_LEVEL_1G)


def gfn_to_index(gfn: int, base_gfn: int, level: int) -> int:
    """Return the index of ``gfn``'s ``level``-sized page within a slot at ``base_gfn``.

    Models: include/linux/kvm_host.h: gfn_to_index()
    """
    check_int("gfn", gfn, 0, GFN_MAX)
    check_int("base_gfn", base_gfn, 0, gfn)
    check_int("level", level, 1, PG_LEVEL_1G)
    shift = KVM_HPAGE_GFN_SHIFT(level)
    return (gfn >> shift) - (base_gfn >> shift)


def __kvm_mmu_slot_lpages(base_gfn: int, npages: int, level: int) -> int:
    """Return how many ``level``-sized pages a slot touches (partly or wholly).

    Models: arch/x86/kvm/x86.c: __kvm_mmu_slot_lpages()
    """
    check_int("npages", npages, 1, GFN_MAX + 1)
    return gfn_to_index(base_gfn + npages - 1, base_gfn, level) + 1


def _initial_disallow(base_gfn: int, npages: int, userspace_addr: int, level: int) -> tuple:
    # kvm_alloc_memslot_metadata(): a huge page is allowed only where the
    # whole huge page lies inside the slot AND the gfn and the host address
    # agree in their low bits, so one host huge page can back it.
    count = __kvm_mmu_slot_lpages(base_gfn, npages, level)
    pages = KVM_PAGES_PER_HPAGE(level)
    if (base_gfn ^ (userspace_addr >> PAGE_SHIFT)) & (pages - 1):
        return (1,) * count
    disallow = [0] * count
    if base_gfn & (pages - 1):
        disallow[0] = 1
    if (base_gfn + npages) & (pages - 1):
        disallow[count - 1] = 1
    return tuple(disallow)


@dataclass(frozen=True)
class KvmMemorySlot:
    """One memslot: ``npages`` guest frames from ``base_gfn``, backed at ``userspace_addr``.

    Models: include/linux/kvm_host.h: struct kvm_memory_slot

    ``gmem`` names the guest_memfd file a ``KVM_MEM_GUEST_MEMFD`` slot is
    bound to (``slot->gmem.file``) and ``gmem_pgoff`` the file offset of its
    first gfn (``slot->gmem.pgoff``); ``lpage_info[level - 2][index]`` is
    the ``disallow_lpage`` counter of each huge page.
    """

    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int = 0
    as_id: int = 0
    gmem: str | None = None
    gmem_pgoff: int = 0
    lpage_info: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        check_int("id", self.id, 0, 32767)
        check_int("base_gfn", self.base_gfn, 0, GFN_MAX)
        check_int("npages", self.npages, 1, GFN_MAX + 1 - self.base_gfn)
        check_int("userspace_addr", self.userspace_addr, 0, HVA_MAX)
        if self.userspace_addr & ((1 << PAGE_SHIFT) - 1):
            raise ValueError(
                f"userspace_addr must be 4 KiB aligned, got {self.userspace_addr:#x}")
        check_int("flags", self.flags, 0, _ALL_FLAGS)
        if self.flags & ~_ALL_FLAGS:
            raise ValueError(f"flags has unknown bits {self.flags & ~_ALL_FLAGS:#x}")
        check_int("as_id", self.as_id, 0, 1)
        if self.gmem is not None and not isinstance(self.gmem, str):
            raise TypeError(f"gmem must be a guest_memfd file's name or None, "
                            f"got {type(self.gmem).__name__}")
        if bool(self.gmem) != bool(self.flags & KVM_MEM_GUEST_MEMFD):
            raise ValueError("a slot has a gmem file if and only if it has KVM_MEM_GUEST_MEMFD")
        check_int("gmem_pgoff", self.gmem_pgoff, 0, GFN_MAX)
        if not self.lpage_info:
            object.__setattr__(self, "lpage_info", tuple(
                _initial_disallow(self.base_gfn, self.npages, self.userspace_addr, level)
                for level in _HUGE_LEVELS))

    @property
    def end_gfn(self) -> int:
        """One past the last gfn of the slot."""
        return self.base_gfn + self.npages

    def contains(self, gfn: int) -> bool:
        """Whether ``gfn`` lies in the slot."""
        return self.base_gfn <= gfn < self.base_gfn + self.npages

    def with_flags(self, flags: int) -> "KvmMemorySlot":
        """A copy with other flags (the kernel copies a slot to change it)."""
        return replace(self, flags=flags)


def _check_slot(slot) -> KvmMemorySlot:
    if not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"slot must be a KvmMemorySlot, got {type(slot).__name__}")
    return slot


def _check_in_slot(slot, gfn) -> None:
    _check_slot(slot)
    check_int("gfn", gfn, 0, GFN_MAX)
    if not slot.contains(gfn):
        raise ValueError(f"gfn {gfn:#x} is outside slot {slot.id}, which holds gfns "
                         f"[{slot.base_gfn:#x}, {slot.end_gfn:#x})")


def __gfn_to_hva_memslot(slot: KvmMemorySlot, gfn: int) -> int:
    """Return the host virtual address backing ``gfn`` in ``slot``.

    Models: include/linux/kvm_host.h: __gfn_to_hva_memslot()
    """
    _check_in_slot(slot, gfn)
    return slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)


def hva_to_gfn_memslot(hva: int, slot: KvmMemorySlot) -> int:
    """Return the gfn whose host address is ``hva`` in ``slot`` (no range check).

    Models: include/linux/kvm_host.h: hva_to_gfn_memslot()
    """
    check_int("hva", hva, 0, HVA_MAX + 1)
    _check_slot(slot)
    return slot.base_gfn + ((hva - slot.userspace_addr) >> PAGE_SHIFT)


def lpage_info_slot(gfn: int, slot: KvmMemorySlot, level: int) -> int:
    """Return the ``disallow_lpage`` counter of ``gfn``'s huge page at ``level``.

    Models: arch/x86/kvm/mmu/mmu.c: lpage_info_slot()
    """
    check_int("level", level, PG_LEVEL_2M, PG_LEVEL_1G)
    _check_in_slot(slot, gfn)
    return slot.lpage_info[level - 2][gfn_to_index(gfn, slot.base_gfn, level)]


def _update_gfn_disallow_lpage_count(slot: KvmMemorySlot, gfn: int, count: int):
    # update_gfn_disallow_lpage_count(): the counter of every huge level.
    _check_in_slot(slot, gfn)
    info = []
    for level, counters in zip(_HUGE_LEVELS, slot.lpage_info):
        index = gfn_to_index(gfn, slot.base_gfn, level)
        value = counters[index] + count
        if value < 0:
            raise ValueError(f"disallow_lpage of gfn {gfn:#x} at level {level} would go negative")
        info.append(counters[:index] + (value,) + counters[index + 1:])
    return replace(slot, lpage_info=tuple(info))


def kvm_mmu_gfn_disallow_lpage(slot: KvmMemorySlot, gfn: int) -> KvmMemorySlot:
    """Forbid huge mappings over ``gfn`` (shadow paging, write tracking); the updated slot.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_gfn_disallow_lpage()
    """
    return _update_gfn_disallow_lpage_count(slot, gfn, 1)


def kvm_mmu_gfn_allow_lpage(slot: KvmMemorySlot, gfn: int) -> KvmMemorySlot:
    """Undo one :func:`kvm_mmu_gfn_disallow_lpage`; the updated slot.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_gfn_allow_lpage()
    """
    return _update_gfn_disallow_lpage_count(slot, gfn, -1)


def kvm_slot_dirty_track_enabled(slot: KvmMemorySlot) -> bool:
    """Whether dirty logging is on for ``slot`` (then every mapping is 4K).

    Models: include/linux/kvm_host.h: kvm_slot_dirty_track_enabled()
    """
    return bool(_check_slot(slot).flags & KVM_MEM_LOG_DIRTY_PAGES)


def kvm_is_visible_memslot(slot) -> bool:
    """Whether ``slot`` is a user-visible slot that is not being deleted or moved.

    Models: include/linux/kvm_host.h: kvm_is_visible_memslot()
    """
    if slot is None:
        return False
    _check_slot(slot)
    return slot.id < KVM_USER_MEM_SLOTS and not slot.flags & KVM_MEMSLOT_INVALID


@dataclass
class KvmMemslots:
    """A set of memslots and its generation.

    Models: include/linux/kvm_host.h: struct kvm_memslots
    """

    slots: tuple = ()
    generation: int = 0

    def __post_init__(self):
        for slot in self.slots:
            _check_slot(slot)
        self.slots = tuple(sorted(self.slots, key=lambda s: s.base_gfn))
        for a, b in zip(self.slots, self.slots[1:]):
            if a.end_gfn > b.base_gfn:
                raise ValueError(f"slots {a.id} and {b.id} overlap")
        ids = [s.id for s in self.slots]
        if len(ids) != len(set(ids)):
            raise ValueError(f"slot ids must be unique, got {sorted(ids)}")
        check_int("generation", self.generation, 0, (1 << 64) - 1)

    def id_to_memslot(self, slot_id: int):
        """Return the slot with ``slot_id``, or None.

        Models: include/linux/kvm_host.h: id_to_memslot()
        """
        check_int("slot_id", slot_id, 0, 32767)
        for slot in self.slots:
            if slot.id == slot_id:
                return slot
        return None

    def gfn_to_memslot(self, gfn: int):
        """Return the slot containing ``gfn``, or None.

        Models: include/linux/kvm_host.h: __gfn_to_memslot()
        """
        check_int("gfn", gfn, 0, GFN_MAX)
        for slot in self.slots:
            if slot.contains(gfn):
                return slot
        return None

    def replace(self, old, new) -> None:
        """Replace slot ``old`` by ``new`` in this set (either may be None)."""
        keep = [s for s in self.slots if old is None or s.id != old.id]
        if new is not None:
            keep.append(_check_slot(new))
        self.slots = tuple(sorted(keep, key=lambda s: s.base_gfn))

    def state(self) -> tuple:
        """A hashable summary: the generation and every slot (slots are values)."""
        return (self.generation, self.slots)


def describe_slot_flags(flags: int) -> str:
    """Render memslot flags by name: ``'KVM_MEMSLOT_INVALID'``, ``'0'``."""
    check_int("flags", flags, 0, _ALL_FLAGS)
    names = [(KVM_MEM_LOG_DIRTY_PAGES, "KVM_MEM_LOG_DIRTY_PAGES"),
             (KVM_MEM_READONLY, "KVM_MEM_READONLY"),
             (KVM_MEM_GUEST_MEMFD, "KVM_MEM_GUEST_MEMFD"),
             (KVM_MEMSLOT_INVALID, "KVM_MEMSLOT_INVALID")]
    parts = [name for bit, name in names if flags & bit]
    return "|".join(parts) if parts else "0"


class KvmMemslotState(Primitive):
    """A VM's memslot sets and memory attributes, as one shared object of the explorer.

    Models: include/linux/kvm_host.h: struct kvm (__memslots, memslots, mem_attr_array)

    Per address space, two :class:`KvmMemslots` (``kvm->__memslots[as_id][0..1]``)
    and which one is active (``kvm->memslots[as_id]``): readers see the
    active set, a memslot update edits the inactive one and swaps.
    ``private`` is the set of gfns whose memory attribute is PRIVATE.
    """

    _sealed = True

    __slots__ = ("sets", "active", "private")
    #: the explorer's footprint locations: the slots (both sets and which is
    #: active), and the PRIVATE attributes
    _field_locations = {"sets": ("slots",), "active": ("slots",), "private": ("private",)}

    def __init__(self, world, name: str = "memslots", nr_as_ids: int = 1):
        if not isinstance(world, World):
            raise TypeError(f"world must be a kvmmu.explorer.World (a Kvm), got {type(world).__name__}")
        super().__init__(world, name)
        check_int("nr_as_ids", nr_as_ids, 1, 2)
        self.sets = [[KvmMemslots(), KvmMemslots()] for _ in range(nr_as_ids)]
        self.active = [0] * nr_as_ids
        self.private: frozenset = frozenset()

    def _state(self):
        return (tuple((a, s[0].state(), s[1].state()) for a, s in zip(self.active, self.sets)),
                self.private)

    def _load(self, st):
        if st == self._state():
            return          # unchanged since: keep the sets (rebuilding them checks every slot)
        sets, self.private = st
        self.active = [a for a, _, _ in sets]
        self.sets = [[KvmMemslots(s0[1], s0[0]), KvmMemslots(s1[1], s1[0])]
                     for _, s0, s1 in sets]

    def _show(self):
        parts = []
        for as_id, (a, sets) in enumerate(zip(self.active, self.sets)):
            live = sets[a]
            # A slot being deleted or moved says so: it is the state a race turns on.
            slots = ", ".join(f"{s.id}@{s.base_gfn:#x}+{s.npages}"
                              + (" INVALID" if s.flags & KVM_MEMSLOT_INVALID else "")
                              for s in live.slots) or "none"
            parts.append(f"as {as_id}: gen {live.generation & ~KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS}"
                         + ("|IN_PROGRESS" if live.generation & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
                            else "") + f", slots {slots}")
        return "; ".join(parts)


def kvm_mem_is_private(kvm, gfn: int) -> bool:
    """Whether ``gfn`` has the PRIVATE memory attribute.

    Models: include/linux/kvm_host.h: kvm_mem_is_private()
    """
    check_int("gfn", gfn, 0, GFN_MAX)
    if not isinstance(getattr(kvm, "memslot_state", None), KvmMemslotState):
        raise TypeError(f"kvm must be a VM (kvm_main.kvm_create_vm()), got {type(kvm).__name__}")
    return gfn in kvm.memslot_state.private
