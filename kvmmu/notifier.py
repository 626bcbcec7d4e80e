"""MMU notifiers: how KVM hears that the host is about to change a mapping.

Models: include/linux/kvm_host.h: mmu_invalidate_seq, mmu_invalidate_in_progress, mmu_invalidate_range_start, mmu_invalidate_range_end, mn_active_invalidate_count
Models: virt/kvm/kvm_main.c: kvm_mmu_notifier_ops

Every change the primary MMU makes to a mapping KVM may have copied is
bracketed by ``mmu_notifier_invalidate_range_start`` / ``_end``.  KVM's
handlers keep four fields in ``struct kvm`` that a page fault consults:

- ``mmu_invalidate_in_progress``: how many invalidations have started and not
  ended (``kvm_mmu_invalidate_begin`` / ``_end``);
- ``mmu_invalidate_range_start`` / ``_end``: the union of their gfn ranges
  (``kvm_mmu_invalidate_range_add``), ``INVALID_GPA`` while none was added;
- ``mmu_invalidate_seq``: moves at the **end** of every invalidation.

A fault snapshots the sequence before it looks at host memory and, with
``mmu_lock`` held, asks :func:`mmu_invalidate_retry_gfn` whether anything may
have changed since.  Reference version: Linux 6.17.

**KVM's mappings are abstracted.**  What KVM installs is recorded in
:class:`KvmMappings` as ``gfn -> (pfn, level)``; the zap in the notifier
removes records.  The real structures (SPTEs, the TDP MMU's atomic updates,
TLB flushes) are chapters 1 and 3; this chapter needs only *what* is mapped.

**Where the model simplifies.**

- One address space; the pfn caches' ``gfn_to_pfn_cache_invalidate_start``,
  ``kvm_arch_guest_memory_reclaimed`` and the memslot updater that waits on
  ``mn_active_invalidate_count`` are not modelled here (chapters 5 and 6).
- ``mn_invalidate_lock`` protects a counter nothing else in this chapter
  reads; its lock, increment and unlock are one step.
- ``lockdep_assert_held`` and ``WARN_ON_ONCE`` / ``KVM_BUG_ON`` are recorded in
  ``kvm.warnings`` (the kernel prints and carries on; the checks assert the
  list stays empty).
- ``smp_wmb``/``smp_rmb`` are implicit: every step of the model is
  sequentially consistent, so the orderings they enforce always hold.
"""
from dataclasses import dataclass
from typing import Callable

from .checks import check_int
from .host_mm import DirectRWLock, HostMachine, HostMm, cpu_code
from .levels import (KVM_MAX_HUGEPAGE_LEVEL, KVM_PAGES_PER_HPAGE, PAGE_SHIFT,
                     PAGE_SIZE, PG_LEVEL_1G, PG_LEVEL_4K, gfn_round_for_level,
                     level_name)
from .memslots import GFN_MAX, KvmMemorySlot, KvmMemslots

#: ``(gpa_t)~0``: the "no range yet" marker of the invalidation range.
from .memslots import INVALID_GPA  # noqa: E402,F401 (one definition, re-exported)


def hva_to_gfn_memslot(hva: int, slot: KvmMemorySlot) -> int:
    """Return the gfn whose host address is ``hva`` in ``slot`` (no range check).

    Models: include/linux/kvm_host.h: hva_to_gfn_memslot()
    """
    return slot.base_gfn + ((hva - slot.userspace_addr) >> PAGE_SHIFT)


class KvmMappings:
    """What KVM has mapped for the guest: base gfn -> (pfn, level).

    An abstraction of the TDP MMU's leaf SPTEs: installing a huge mapping
    replaces every smaller one it covers, and a zap removes every mapping that
    overlaps the range.
    """

    def __init__(self):
        self.by_gfn: dict[int, tuple[int, int]] = {}

    def lookup(self, gfn: int) -> tuple[int, int, int] | None:
        """Return ``(base_gfn, pfn, level)`` of the mapping that covers ``gfn``."""
        for base, (pfn, level) in self.by_gfn.items():
            if base <= gfn < base + KVM_PAGES_PER_HPAGE(level):
                return base, pfn, level
        return None

    def install(self, gfn: int, pfn: int, level: int) -> None:
        """Map ``level``-sized page at ``gfn`` (rounded down) to ``pfn``."""
        check_int("level", level, PG_LEVEL_4K, PG_LEVEL_1G)
        base = gfn_round_for_level(gfn, level)
        if pfn & (KVM_PAGES_PER_HPAGE(level) - 1):
            raise ValueError(f"pfn {pfn:#x} is not aligned for a {level_name(level)} mapping")
        self.zap(base, base + KVM_PAGES_PER_HPAGE(level))
        self.by_gfn[base] = (pfn, level)

    def zap(self, start: int, end: int) -> bool:
        """Remove every mapping overlapping ``[start, end)``; return whether any was."""
        doomed = [base for base, (_, level) in self.by_gfn.items()
                  if base < end and start < base + KVM_PAGES_PER_HPAGE(level)]
        for base in doomed:
            del self.by_gfn[base]
        return bool(doomed)

    def items(self) -> list[tuple[int, int, int]]:
        return [(base, pfn, level) for base, (pfn, level) in sorted(self.by_gfn.items())]

    def snapshot(self) -> tuple:
        return tuple(self.items())

    def __repr__(self) -> str:
        body = ", ".join(f"gfn {b:#x} -> pfn {p:#x} ({level_name(lv)})" for b, p, lv in self.items())
        return f"KvmMappings({body})"


class KvmState:
    """The fields of ``struct kvm`` this chapter uses, as plain shared state.

    Models: include/linux/kvm_host.h: struct kvm

    Mixed into the direct :class:`Kvm` and into the explorer worlds of
    ``kvmmu.host_level_races``; either way the CPU code reads and writes these
    fields only inside a step.
    """

    def init_kvm_state(self, memslots: KvmMemslots | None):
        self.memslots = memslots if memslots is not None else KvmMemslots([])
        self.mmu_invalidate_seq = 0
        self.mmu_invalidate_in_progress = 0
        self.mmu_invalidate_range_start = INVALID_GPA
        self.mmu_invalidate_range_end = INVALID_GPA
        self.mn_active_invalidate_count = 0
        self.max_huge_page_level = KVM_MAX_HUGEPAGE_LEVEL
        self.mappings = KvmMappings()
        self.warnings: list[str] = []

    def kvm_snapshot(self) -> tuple:
        """A hashable summary of the invalidation state and KVM's mappings."""
        return (self.mmu_invalidate_seq, self.mmu_invalidate_in_progress,
                self.mmu_invalidate_range_start, self.mmu_invalidate_range_end,
                self.mn_active_invalidate_count, self.mappings.snapshot(),
                tuple(self.warnings))

    def invalidate_summary(self) -> str:
        """``seq=1 in_progress=0 range=[0x200, 0x400)`` for traces."""
        if self.mmu_invalidate_range_start == INVALID_GPA:
            rng = "INVALID"
        else:
            rng = f"[{self.mmu_invalidate_range_start:#x}, {self.mmu_invalidate_range_end:#x})"
        return (f"seq={self.mmu_invalidate_seq} in_progress={self.mmu_invalidate_in_progress} "
                f"range={rng}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class Kvm(HostMachine, KvmState):
    """A VM on a host with one CPU: direct calls, no interleaving.

    ``Kvm(memslots, mm)`` registers KVM's MMU notifier on ``mm`` as
    ``kvm_create_vm`` does, so host mm operations reach KVM.
    """

    def __init__(self, memslots: KvmMemslots | None = None, mm: HostMm | None = None):
        HostMachine.__init__(self, mm)
        self.init_kvm_state(memslots)
        self.mmu_lock = DirectRWLock("mmu_lock")
        self.mm.notifier_subscriptions.append(kvm_mmu_notifier_ops)


def _lockdep_assert_held(kvm, what: str) -> None:
    # Direct locks know who holds them; explorer locks report through the
    # same question if they can answer it.
    held = getattr(kvm.mmu_lock, "held", None)
    if held is not None and not held():
        kvm.warn(f"lockdep: {what} called without mmu_lock held")
    elif held is None and isinstance(kvm.mmu_lock, DirectRWLock):
        if not (kvm.mmu_lock.readers or kvm.mmu_lock.writer):
            kvm.warn(f"lockdep: {what} called without mmu_lock held")


def kvm_mmu_invalidate_begin(kvm) -> None:
    """Start an invalidation: one more in progress; an empty range if it is the first.

    Models: virt/kvm/kvm_main.c: kvm_mmu_invalidate_begin()
    """
    kvm.mmu_invalidate_in_progress += 1
    if kvm.mmu_invalidate_in_progress == 1:
        kvm.mmu_invalidate_range_start = INVALID_GPA
        kvm.mmu_invalidate_range_end = INVALID_GPA


def kvm_mmu_invalidate_range_add(kvm, start: int, end: int) -> None:
    """Widen the in-progress range to cover gfns ``[start, end)``.

    Models: virt/kvm/kvm_main.c: kvm_mmu_invalidate_range_add()
    """
    check_int("start", start, 0, GFN_MAX)
    check_int("end", end, start + 1, GFN_MAX + 1)
    if not kvm.mmu_invalidate_in_progress:
        kvm.warn("kvm_mmu_invalidate_range_add without an invalidation in progress")
    if kvm.mmu_invalidate_range_start == INVALID_GPA:
        kvm.mmu_invalidate_range_start = start
        kvm.mmu_invalidate_range_end = end
    else:
        # The union of every range added until in_progress drops to 0: it can
        # only grow, so faults outside any one range may retry needlessly.
        kvm.mmu_invalidate_range_start = min(kvm.mmu_invalidate_range_start, start)
        kvm.mmu_invalidate_range_end = max(kvm.mmu_invalidate_range_end, end)


def kvm_mmu_invalidate_end(kvm) -> None:
    """End an invalidation: the sequence moves first, then in_progress drops.

    Models: virt/kvm/kvm_main.c: kvm_mmu_invalidate_end()
    """
    kvm.mmu_invalidate_seq += 1
    # smp_wmb(): whoever sees the lower in_progress also sees the new sequence.
    kvm.mmu_invalidate_in_progress -= 1
    if kvm.mmu_invalidate_in_progress < 0:
        kvm.warn("KVM_BUG_ON: mmu_invalidate_in_progress < 0")
    if kvm.mmu_invalidate_range_start == INVALID_GPA:
        kvm.warn("WARN_ON_ONCE: invalidation ended without a range")


def mmu_invalidate_retry_gfn(kvm, mmu_seq: int, gfn: int) -> int:
    """Return 1 if a fault that snapshotted ``mmu_seq`` must retry for ``gfn``; needs mmu_lock.

    Models: include/linux/kvm_host.h: mmu_invalidate_retry_gfn()
    """
    check_int("mmu_seq", mmu_seq, 0)
    check_int("gfn", gfn, 0, GFN_MAX)
    _lockdep_assert_held(kvm, "mmu_invalidate_retry_gfn")
    if kvm.mmu_invalidate_in_progress:
        if (kvm.mmu_invalidate_range_start == INVALID_GPA
                or kvm.mmu_invalidate_range_end == INVALID_GPA):
            kvm.warn("WARN_ON_ONCE: invalidation in progress without a range")
            return 1
        if kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end:
            return 1
    if kvm.mmu_invalidate_seq != mmu_seq:
        return 1
    return 0


def mmu_invalidate_retry_gfn_unsafe(kvm, mmu_seq: int, gfn: int) -> bool:
    """The same question without mmu_lock: a cheap pre-check, may be wrong either way.

    Models: include/linux/kvm_host.h: mmu_invalidate_retry_gfn_unsafe()
    """
    check_int("mmu_seq", mmu_seq, 0)
    check_int("gfn", gfn, 0, GFN_MAX)
    # An INVALID range has start = ~0, so it never matches: no WARN here.
    if (kvm.mmu_invalidate_in_progress
            and kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end):
        return True
    return kvm.mmu_invalidate_seq != mmu_seq


def mmu_invalidate_retry(kvm, mmu_seq: int) -> int:
    """Return 1 if any invalidation is in progress or ended since ``mmu_seq``.

    Models: include/linux/kvm_host.h: mmu_invalidate_retry()
    """
    check_int("mmu_seq", mmu_seq, 0)
    _lockdep_assert_held(kvm, "mmu_invalidate_retry")
    if kvm.mmu_invalidate_in_progress:
        return 1
    # smp_rmb() here in the kernel: in_progress is read before the sequence.
    if kvm.mmu_invalidate_seq != mmu_seq:
        return 1
    return 0


def kvm_mmu_unmap_gfn_range(kvm, start: int, end: int) -> bool:
    """The range_start handler: add the range, then zap KVM's mappings in it.

    Models: virt/kvm/kvm_main.c: kvm_mmu_unmap_gfn_range()
    """
    kvm_mmu_invalidate_range_add(kvm, start, end)
    return kvm.mappings.zap(start, end)


def _gfn_ranges(kvm, start: int, end: int) -> tuple:
    # The slots whose host range overlaps [start, end), as gfn ranges.
    out = []
    for slot in kvm.memslots.slots:
        slot_end = slot.userspace_addr + (slot.npages << PAGE_SHIFT)
        hva_start = max(start, slot.userspace_addr)
        hva_end = min(end, slot_end)
        if hva_start >= hva_end:
            continue
        out.append((slot.id, hva_to_gfn_memslot(hva_start, slot),
                    hva_to_gfn_memslot(hva_end + PAGE_SIZE - 1, slot)))
    return tuple(out)


@cpu_code
def kvm_handle_hva_range(kvm, start: int, end: int, on_lock, handler):
    """Run ``on_lock`` once and ``handler`` per overlapping slot, under mmu_lock (write).

    Models: virt/kvm/kvm_main.c: kvm_handle_hva_range()

    Nothing is locked, and ``on_lock`` does not run, when no memslot overlaps
    the range: that is why begin and end must see the same memslots.  Returns
    whether a slot was found.
    """
    ranges = _gfn_ranges(kvm, start, end)
    if not ranges:
        return False
    yield from kvm.mmu_lock.write_lock()
    if on_lock is not None:
        yield from kvm.step(on_lock.__name__, lambda: on_lock(kvm))
    if handler is not None:
        for slot_id, gfn_start, gfn_end in ranges:
            yield from kvm.step(
                f"{handler.__name__}: gfns [{gfn_start:#x}, {gfn_end:#x})",
                lambda s=gfn_start, e=gfn_end: handler(kvm, s, e))
    yield from kvm.mmu_lock.write_unlock()
    return True


@cpu_code
def kvm_mmu_notifier_invalidate_range_start(kvm, start: int, end: int):
    """KVM's range_start: count it, begin an invalidation, add the range, zap.

    Models: virt/kvm/kvm_main.c: kvm_mmu_notifier_invalidate_range_start()
    """
    def count_up():
        kvm.mn_active_invalidate_count += 1
    yield from kvm.step("mn_active_invalidate_count++", count_up)
    return (yield from kvm_handle_hva_range.steps(
        kvm, start, end, kvm_mmu_invalidate_begin, kvm_mmu_unmap_gfn_range))


@cpu_code
def kvm_mmu_notifier_invalidate_range_end(kvm, start: int, end: int):
    """KVM's range_end: end the invalidation (the sequence moves), uncount it.

    Models: virt/kvm/kvm_main.c: kvm_mmu_notifier_invalidate_range_end()
    """
    found = yield from kvm_handle_hva_range.steps(kvm, start, end, kvm_mmu_invalidate_end, None)

    def count_down():
        kvm.mn_active_invalidate_count -= 1
        if kvm.mn_active_invalidate_count < 0:
            kvm.warn("mn_active_invalidate_count < 0")
    yield from kvm.step("mn_active_invalidate_count--", count_down)
    return found


@dataclass(frozen=True)
class MmuNotifierOps:
    """The callbacks a notifier subscriber gives the mm.

    Models: include/linux/mmu_notifier.h: struct mmu_notifier_ops
    """

    invalidate_range_start: Callable
    invalidate_range_end: Callable


#: What ``kvm_init_mmu_notifier`` registers (the callbacks this chapter needs).
kvm_mmu_notifier_ops = MmuNotifierOps(
    invalidate_range_start=kvm_mmu_notifier_invalidate_range_start.steps,
    invalidate_range_end=kvm_mmu_notifier_invalidate_range_end.steps,
)
