"""The TDP iterator, and the SPTE accessors it and the TDP MMU write through.

Models: arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_start(), tdp_iter_next()
Models: arch/x86/kvm/mmu/tdp_iter.h: struct tdp_iter, kvm_tdp_mmu_write_spte()

Reference version: Linux 6.17 (read at v6.17-rc3).

The iterator walks the paging structure of a :class:`kvmmu.tdp_mmu.TdpMmuWorld`
in pre-order over a gfn range.  Every SPTE it reads, and every SPTE the
accessors read or write, is one step of :mod:`kvmmu.explorer`: the functions
are generators that the TDP MMU's functions ``yield from``, so another CPU
can run between any two of them.

**Where the model simplifies.**

- An SPTE pointer is a :class:`Sptep`: the table's fake host pfn and the
  entry's index (the kernel holds a ``tdp_ptep_t``); the root is given by its
  table's pfn and level, not by its ``struct kvm_mmu_page``.
- ``tdp_mmu_iter_cond_resched`` never yields in the model, so the
  iterator's ``yielded`` flag stays False.
- ``tdp_iter_next`` takes the caller's loop bound and stops without reading
  the first entry past it (the kernel reads it and the caller discards it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .levels import (KVM_PAGES_PER_HPAGE, PAGE_SHIFT, SPTE_ENT_PER_PAGE, SPTE_INDEX,
                     gfn_round_for_level)
from .spte import (SHADOW_NONPRESENT_VALUE, is_last_spte, is_shadow_present_pte,
                   spte_needs_atomic_update, spte_to_pfn)

if TYPE_CHECKING:  # annotations only: tdp_mmu imports this module
    from .tdp_mmu import TdpMmuWorld


class Sptep(NamedTuple):
    """A pointer to one SPTE: the table's (fake) pfn and the entry's index.

    Models: arch/x86/kvm/mmu/tdp_iter.h: tdp_ptep_t
    """

    pt: int
    index: int


# ---------------------------------------------------------------------------
# SPTE accessors (tdp_iter.h): each is one step.
# ---------------------------------------------------------------------------
def kvm_tdp_mmu_read_spte(kvm: TdpMmuWorld, sptep: Sptep):
    """Read an SPTE once.

    Models: arch/x86/kvm/mmu/tdp_iter.h: kvm_tdp_mmu_read_spte()
    """
    return (yield from kvm.ept.read(sptep))


def kvm_tdp_mmu_write_spte_atomic(kvm: TdpMmuWorld, sptep: Sptep, new_spte: int):
    """Exchange an SPTE atomically and return the old value.

    Models: arch/x86/kvm/mmu/tdp_iter.h: kvm_tdp_mmu_write_spte_atomic()
    """
    return (yield from kvm.ept.xchg(sptep, new_spte))


def __kvm_tdp_mmu_write_spte(kvm: TdpMmuWorld, sptep: Sptep, new_spte: int):
    """Store an SPTE with a plain write (WRITE_ONCE).

    Models: arch/x86/kvm/mmu/tdp_iter.h: __kvm_tdp_mmu_write_spte()
    """
    yield from kvm.ept.write(sptep, new_spte)


def kvm_tdp_mmu_spte_need_atomic_update(kvm: TdpMmuWorld, old_spte: int, level: int) -> bool:
    """Return True if a present leaf has bits that may change outside mmu_lock.

    Models: arch/x86/kvm/mmu/tdp_iter.h: kvm_tdp_mmu_spte_need_atomic_update()
    """
    return (is_shadow_present_pte(old_spte) and is_last_spte(old_spte, level)
            and spte_needs_atomic_update(old_spte, kvm.cfg))


def kvm_tdp_mmu_write_spte(kvm: TdpMmuWorld, sptep: Sptep, old_spte: int, new_spte: int,
                           level: int):
    """Write an SPTE under exclusive mmu_lock; xchg if its bits are volatile. Returns the old value.

    Models: arch/x86/kvm/mmu/tdp_iter.h: kvm_tdp_mmu_write_spte()
    """
    if kvm_tdp_mmu_spte_need_atomic_update(kvm, old_spte, level):
        return (yield from kvm_tdp_mmu_write_spte_atomic(kvm, sptep, new_spte))
    yield from __kvm_tdp_mmu_write_spte(kvm, sptep, new_spte)
    return old_spte


# ---------------------------------------------------------------------------
# The iterator (tdp_iter.c).  Every SPTE read it does is a step.
# ---------------------------------------------------------------------------
@dataclass
class TdpIter:
    """A pre-order walk of the paging structure over a gfn range.

    Models: arch/x86/kvm/mmu/tdp_iter.h: struct tdp_iter

    ``old_spte`` is the snapshot the caller acts on: the value read when the
    iterator reached ``sptep``, refreshed by a failed cmpxchg.
    """

    next_last_level_gfn: int
    root_level: int
    min_level: int
    pt_path: list = field(default_factory=lambda: [None] * 5)
    level: int = 0
    gfn: int = 0
    sptep: Sptep | None = None
    old_spte: int = SHADOW_NONPRESENT_VALUE
    valid: bool = False
    yielded: bool = False


def tdp_iter_refresh_sptep(kvm: TdpMmuWorld, it: TdpIter):
    """Point the iterator at the entry for its gfn and level, and re-read it.

    Models: arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_refresh_sptep()
    """
    it.sptep = Sptep(it.pt_path[it.level - 1], SPTE_INDEX(it.gfn << PAGE_SHIFT, it.level))
    it.old_spte = yield from kvm_tdp_mmu_read_spte(kvm, it.sptep)


def tdp_iter_start(kvm: TdpMmuWorld, root_pt: int, root_level: int, min_level: int,
                   next_last_level_gfn: int):
    """Return an iterator positioned on the root entry for ``next_last_level_gfn``.

    Models: arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_start()

    The root is given by its table's pfn and level (the kernel passes its
    ``struct kvm_mmu_page``): an actor holds no object of the world across
    a step.
    """
    it = TdpIter(next_last_level_gfn, root_level, min_level)
    it.pt_path[root_level - 1] = root_pt
    yield from tdp_iter_restart(kvm, it)
    return it


def tdp_iter_restart(kvm: TdpMmuWorld, it: TdpIter):
    """Go back to the root entry for the iterator's next gfn.

    Models: arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_restart()
    """
    it.yielded = False
    it.level = it.root_level
    it.gfn = gfn_round_for_level(it.next_last_level_gfn, it.level)
    yield from tdp_iter_refresh_sptep(kvm, it)
    it.valid = True


def spte_to_child_pt(spte: int, level: int) -> int | None:
    """Return the pfn of the table a non-leaf SPTE points to, or None.

    Models: arch/x86/kvm/mmu/tdp_iter.c: spte_to_child_pt()
    """
    if not is_shadow_present_pte(spte) or is_last_spte(spte, level):
        return None
    return spte_to_pfn(spte)


def try_step_down(kvm: TdpMmuWorld, it: TdpIter):
    """Re-read the current entry and, if it still points to a table, descend.

    Models: arch/x86/kvm/mmu/tdp_iter.c: try_step_down()
    """
    if it.level == it.min_level:
        return False
    # Re-read: the entry may have been zapped since the caller looked at it.
    it.old_spte = yield from kvm_tdp_mmu_read_spte(kvm, it.sptep)
    child_pt = spte_to_child_pt(it.old_spte, it.level)
    if child_pt is None:
        return False
    it.level -= 1
    it.pt_path[it.level - 1] = child_pt
    it.gfn = gfn_round_for_level(it.next_last_level_gfn, it.level)
    yield from tdp_iter_refresh_sptep(kvm, it)
    return True


def try_step_side(kvm: TdpMmuWorld, it: TdpIter):
    """Move to the next entry of the same table, unless this is its last entry.

    Models: arch/x86/kvm/mmu/tdp_iter.c: try_step_side()
    """
    if SPTE_INDEX(it.gfn << PAGE_SHIFT, it.level) == SPTE_ENT_PER_PAGE - 1:
        return False
    it.gfn += KVM_PAGES_PER_HPAGE(it.level)
    it.next_last_level_gfn = it.gfn
    it.sptep = Sptep(it.sptep.pt, it.sptep.index + 1)
    it.old_spte = yield from kvm_tdp_mmu_read_spte(kvm, it.sptep)
    return True


def try_step_up(kvm: TdpMmuWorld, it: TdpIter):
    """Go back up to the parent table's entry (already visited).

    Models: arch/x86/kvm/mmu/tdp_iter.c: try_step_up()
    """
    if it.level == it.root_level:
        return False
    it.level += 1
    it.gfn = gfn_round_for_level(it.gfn, it.level)
    yield from tdp_iter_refresh_sptep(kvm, it)
    return True


def tdp_iter_next(kvm: TdpMmuWorld, it: TdpIter, end: int | None = None):
    """Advance to the next entry of a pre-order walk: down, else side, else up and side.

    Models: arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_next()

    ``end`` is the model's shortcut for the caller's loop bound: once the
    next entry lies at or past ``end`` the caller's loop stops, so the
    model does not read it (the kernel reads one entry past the range and
    discards it).
    """
    if it.yielded:
        yield from tdp_iter_restart(kvm, it)
        return
    if (yield from try_step_down(kvm, it)):
        return
    while True:
        if end is not None and _next_side_gfn(it) >= end:
            it.gfn = _next_side_gfn(it)  # the caller's `iter.gfn < end` now fails
            return
        if (yield from try_step_side(kvm, it)):
            return
        if not (yield from try_step_up(kvm, it)):
            break
    it.valid = False


def _next_side_gfn(it: TdpIter) -> int:
    return gfn_round_for_level(it.gfn, it.level) + KVM_PAGES_PER_HPAGE(it.level)
