"""Memslots: which guest frames are backed by which host addresses.

Models: include/linux/kvm_host.h: struct kvm_memory_slot, struct kvm_memslots
Models: include/uapi/linux/kvm.h: KVM_MEM_* flags
Models: arch/x86/kvm/x86.c: kvm_alloc_memslot_metadata() (lpage_info)

This module holds the data every chapter shares: a slot, a set of slots with
its generation, gfn lookup, and the x86 ``lpage_info`` huge-page
bookkeeping.  The update protocol (two swaps, SRCU, the INVALID flag) belongs
to the prefault chapter and lives in ``kvmmu.memslot_update``.

Simplifications: one address space unless a caller says otherwise; slots are
kept in a sorted list rather than the kernel's interval and gfn trees (lookup
results are the same); ``disallow_lpage`` is a plain list of counters per level.
"""
from dataclasses import dataclass, field, replace

from .checks import check_int
from .levels import (KVM_HPAGE_GFN_SHIFT, KVM_PAGES_PER_HPAGE, PAGE_SHIFT,
                     PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K)

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

_USER_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY | KVM_MEM_GUEST_MEMFD
_ALL_FLAGS = _USER_FLAGS | KVM_MEMSLOT_INVALID


def gfn_to_index(gfn: int, base_gfn: int, level: int) -> int:
    """Return the index of ``gfn``'s ``level``-sized page within a slot.

    Models: include/linux/kvm_host.h: gfn_to_index()
    """
    shift = KVM_HPAGE_GFN_SHIFT(level)
    return (gfn >> shift) - (base_gfn >> shift)


def __kvm_mmu_slot_lpages(base_gfn: int, npages: int, level: int) -> int:
    """Return how many ``level``-sized pages a slot touches (partly or wholly).

    Models: arch/x86/kvm/x86.c: __kvm_mmu_slot_lpages()
    """
    return gfn_to_index(base_gfn + npages - 1, base_gfn, level) + 1


def _initial_disallow(base_gfn: int, npages: int, userspace_addr: int, level: int) -> list[int]:
    # kvm_alloc_memslot_metadata(): a huge page is allowed only where the
    # whole huge page lies inside the slot AND the gfn and the host address
    # agree in their low bits, so one host huge page can back it.
    count = __kvm_mmu_slot_lpages(base_gfn, npages, level)
    disallow = [0] * count
    pages = KVM_PAGES_PER_HPAGE(level)
    if base_gfn & (pages - 1):
        disallow[0] = 1
    if (base_gfn + npages) & (pages - 1):
        disallow[count - 1] = 1
    if (base_gfn ^ (userspace_addr >> PAGE_SHIFT)) & (pages - 1):
        disallow = [1] * count
    return disallow


@dataclass
class KvmMemorySlot:
    """One memslot: ``npages`` guest frames from ``base_gfn``, backed at ``userspace_addr``.

    Models: include/linux/kvm_host.h: struct kvm_memory_slot
    """

    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int = 0
    as_id: int = 0
    #: ``lpage_info[level - 2][index]``: the disallow_lpage counter per huge page.
    lpage_info: list = field(default_factory=list, compare=False)

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
        if not self.lpage_info:
            self.lpage_info = [
                _initial_disallow(self.base_gfn, self.npages, self.userspace_addr, level)
                for level in (PG_LEVEL_2M, PG_LEVEL_1G)
            ]

    @property
    def end_gfn(self) -> int:
        """One past the last gfn of the slot."""
        return self.base_gfn + self.npages

    def contains(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.end_gfn

    def with_flags(self, flags: int) -> "KvmMemorySlot":
        """Return a copy with other flags (the kernel copies a slot to change it)."""
        return replace(self, flags=flags, lpage_info=[list(x) for x in self.lpage_info])


def __gfn_to_hva_memslot(slot: KvmMemorySlot, gfn: int) -> int:
    """Return the host virtual address backing ``gfn`` in ``slot``.

    Models: include/linux/kvm_host.h: __gfn_to_hva_memslot()
    """
    if not slot.contains(gfn):
        raise ValueError(
            f"gfn {gfn:#x} is outside slot {slot.id} [{slot.base_gfn:#x}, {slot.end_gfn:#x})")
    return slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)


def lpage_info_slot(gfn: int, slot: KvmMemorySlot, level: int) -> int:
    """Return the ``disallow_lpage`` counter of ``gfn``'s huge page at ``level``.

    Models: arch/x86/kvm/mmu/mmu.c: lpage_info_slot()
    """
    check_int("level", level, PG_LEVEL_2M, PG_LEVEL_1G)
    if not slot.contains(gfn):
        raise ValueError(
            f"gfn {gfn:#x} is outside slot {slot.id} [{slot.base_gfn:#x}, {slot.end_gfn:#x})")
    return slot.lpage_info[level - 2][gfn_to_index(gfn, slot.base_gfn, level)]


def update_gfn_disallow_lpage_count(slot: KvmMemorySlot, gfn: int, count: int) -> None:
    """Add ``count`` to the disallow counters of ``gfn`` at every huge level.

    Models: arch/x86/kvm/mmu/mmu.c: update_gfn_disallow_lpage_count()
    """
    check_int("count", count, -1, 1)
    for level in (PG_LEVEL_2M, PG_LEVEL_1G):
        index = gfn_to_index(gfn, slot.base_gfn, level)
        value = slot.lpage_info[level - 2][index] + count
        if value < 0:
            raise ValueError(f"disallow_lpage of gfn {gfn:#x} at level {level} would go negative")
        slot.lpage_info[level - 2][index] = value


def kvm_mmu_gfn_disallow_lpage(slot: KvmMemorySlot, gfn: int) -> None:
    """Forbid huge mappings over ``gfn`` (shadow paging, write tracking).

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_gfn_disallow_lpage()
    """
    update_gfn_disallow_lpage_count(slot, gfn, 1)


def kvm_mmu_gfn_allow_lpage(slot: KvmMemorySlot, gfn: int) -> None:
    """Undo one ``kvm_mmu_gfn_disallow_lpage``.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_gfn_allow_lpage()
    """
    update_gfn_disallow_lpage_count(slot, gfn, -1)


@dataclass
class KvmMemslots:
    """A set of memslots and its generation.

    Models: include/linux/kvm_host.h: struct kvm_memslots
    """

    slots: list = field(default_factory=list)
    generation: int = 0

    def __post_init__(self):
        self.slots = sorted(self.slots, key=lambda s: s.base_gfn)
        for a, b in zip(self.slots, self.slots[1:]):
            if a.end_gfn > b.base_gfn:
                raise ValueError(f"slots {a.id} and {b.id} overlap")
        ids = [s.id for s in self.slots]
        if len(ids) != len(set(ids)):
            raise ValueError(f"slot ids must be unique, got {sorted(ids)}")

    def id_to_memslot(self, slot_id: int):
        """Return the slot with ``slot_id``, or None.

        Models: include/linux/kvm_host.h: id_to_memslot()
        """
        for slot in self.slots:
            if slot.id == slot_id:
                return slot
        return None

    def gfn_to_memslot(self, gfn: int):
        """Return the slot containing ``gfn``, or None.

        Models: virt/kvm/kvm_main.c: __gfn_to_memslot()
        """
        check_int("gfn", gfn, 0, GFN_MAX)
        for slot in self.slots:
            if slot.contains(gfn):
                return slot
        return None
