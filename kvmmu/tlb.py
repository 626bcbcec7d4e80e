"""The vCPUs' TLBs, and the remote TLB flush that empties them.

Models: virt/kvm/kvm_main.c: kvm_flush_remote_tlbs_range()
Models: arch/x86/kvm/mmu/mmu_internal.h: kvm_flush_remote_tlbs_gfn()

Reference version: Linux 6.17 (read at v6.17-rc3).

Each vCPU has a TLB that caches gfn -> (pfn, the leaf SPTE it came from,
the root it was walked from).  :class:`VcpuTlbs` holds all of them as one
shared object of :mod:`kvmmu.explorer`; a guest access and a remote flush
are each one step.  The flush is a kvm_main.c function; it lives here, with
the TLBs it empties, because the TDP MMU below ``kvmmu.kvm_host`` calls it
(see CONTRIBUTING.md, "Layers").

**Where the model simplifies.**

- The TLB caches final translations only: paging-structure caches and
  VPIDs are not modelled; an entry is tagged with the root it came from
  (the EPTP), and a vCPU only uses entries of the root it runs on.
- A vCPU's memory access is one step: a TLB hit, or the hardware's walk of
  the live EPT that fills the TLB.  The walk sets no Accessed/Dirty bits.
- A remote flush is one step: it kicks every vCPU out of guest mode and
  waits, so it never lands inside a walk; it drops the range's entries from
  every vCPU's TLB at once (no per-vCPU requests).
"""
from __future__ import annotations

from typing import NamedTuple

from .checks import check_bool, check_int
from .cpu import check_vm
from .explorer import Op, Primitive
from .levels import KVM_PAGES_PER_HPAGE, PG_LEVEL_4K, gfn_round_for_level
from .memslots import KvmMemorySlot

__all__ = ["TlbEntry", "VcpuTlbs", "kvm_flush_remote_tlbs_range", "kvm_flush_remote_tlbs_gfn",
           "kvm_flush_remote_tlbs_memslot"]

_GFN_MAX = (1 << 40) - 1


class _TlbEntryFields(NamedTuple):
    pfn: int
    spte: int
    root: int = 0


class TlbEntry(_TlbEntryFields):
    """A cached translation: the host pfn, the leaf SPTE it was read from, its root."""

    __slots__ = ()

    def __new__(cls, pfn: int, spte: int, root: int = 0):
        check_int("pfn", pfn, 0, (1 << 40) - 1)
        check_int("spte", spte, 0, (1 << 64) - 1)
        check_int("root", root, 0, (1 << 40) - 1)
        return super().__new__(cls, pfn, spte, root)

    def __repr__(self):
        return f"pfn {self.pfn:#x}"


class VcpuTlbs(Primitive):
    """Every vCPU's TLB: gfn -> TlbEntry, as one shared object of the explorer.

    ``access`` is what the CPU does on a guest memory access (a TLB hit, or a
    walk of the live EPT from the vCPU's root that fills the TLB);
    ``flush_range`` is a remote TLB flush.  Each is one step.  The world
    answers two questions for it: ``vcpu_root(vcpu)``, the root a vCPU runs
    on, and ``translate(root, gfn, write)``, what the hardware walk finds.
    """

    _sealed = True

    __slots__ = ("tlb",)

    def __init__(self, world, name, vcpus: int):
        super().__init__(world, name)
        check_int("vcpus", vcpus, 0, 8)
        self.tlb: list[dict[int, TlbEntry]] = [{} for _ in range(vcpus)]

    def add_vcpu(self) -> int:
        """Give a new vCPU an empty TLB; return its index."""
        self.tlb.append({})
        return len(self.tlb) - 1

    def _state(self):
        return tuple(tuple(sorted(t.items())) for t in self.tlb)

    def _load(self, st):
        self.tlb[len(st):] = []
        for i, entries in enumerate(st):
            if i == len(self.tlb):
                self.tlb.append({})
            self.tlb[i].clear()
            self.tlb[i].update(entries)

    def _show(self):
        return "; ".join(f"vCPU {v}: {self.show_one(v)}" for v in range(len(self.tlb)))

    def show_one(self, vcpu: int) -> str:
        """One TLB as text: ``0x100->0x1234`` per entry, ``-`` if empty."""
        check_int("vcpu", vcpu, 0, len(self.tlb) - 1)
        entries = sorted(self.tlb[vcpu].items())
        return ", ".join(f"{gfn:#x}->{e.pfn:#x}" for gfn, e in entries) or "-"

    def lookup(self, vcpu: int, gfn: int, write: bool = False) -> TlbEntry | None:
        """The TLB part of an access (no step): hit, or walk the EPT and fill."""
        root = self.world.vcpu_root(vcpu)
        hit = self.tlb[vcpu].get(gfn)
        if hit is not None and hit.root == root and (not write or hit.spte & 2):
            return hit
        if root is None:
            return None
        entry = self.world.translate(root, gfn, write)
        if entry is not None:
            self.tlb[vcpu][gfn] = entry
        return entry

    def drop_range(self, start: int, nr_pages: int) -> tuple:
        """Drop every entry for gfns in ``[start, start + nr_pages)``; return (vcpu, gfn) dropped."""
        dropped = []
        for vcpu, tlb in enumerate(self.tlb):
            for gfn in sorted(g for g in tlb if start <= g < start + nr_pages):
                del tlb[gfn]
                dropped.append((vcpu, gfn))
        return tuple(dropped)

    def access(self, vcpu: int, gfn: int, write: bool = False):
        """A guest access by ``vcpu`` to ``gfn`` (one step): a TlbEntry, or None (EPT violation)."""
        check_int("vcpu", vcpu, 0, len(self.tlb) - 1)
        check_int("gfn", gfn, 0, _GFN_MAX)
        check_bool("write", write)
        return (yield Op(self, "access", (vcpu, gfn, write), _tlb_access))

    def flush_range(self, start: int, nr_pages: int):
        """Flush every vCPU's entries for ``[start, start + nr_pages)`` (one step)."""
        return (yield Op(self, "flush", (start, nr_pages), _tlb_flush))

    def _what(self, kind, args):
        if kind == "access":
            how = "writes" if args[2] else "reads"
            return f"vCPU {args[0]} {how} gfn {args[1]:#x}"
        start, n = args
        return f"flush TLBs gfn {start:#x}" + (f"+{n}" if n != 1 else "")

    def _label(self, kind, args, result, cpu):
        if kind == "access":
            head = self._what(kind, args)
            if result is None:
                return f"{head}: EPT violation"
            return f"{head}: pfn {result.pfn:#x}"
        dropped = ", ".join(f"vCPU {v}'s {g:#x}" for v, g in result) or "nothing cached"
        return f"{self._what(kind, args)} (drops {dropped})"

    def _why_blocked(self, kind, args, cpu):  # pragma: no cover - never blocks
        return "never blocks"

    #: A flush of at most this many gfns names each entry it may drop.
    _FLUSH_ENTRIES = 64

    def _footprint(self, kind, args):
        # An access reads the vCPU's root (the vCPUs' state), walks the live
        # EPT on a miss and fills one entry of its own TLB; a flush drops the
        # range's entries from every vCPU's TLB.
        if kind == "access":
            vcpu, gfn, _write = args
            w = self.world
            sources = [getattr(w, "vcpu_state", None), getattr(w, "ept", None)]
            if not all(isinstance(p, Primitive) for p in sources):
                return None          # a world that answers vcpu_root()/translate() otherwise
            return sources, [(self, vcpu, gfn)]
        start, n = args
        if n > self._FLUSH_ENTRIES:
            return (), [self]
        return (), [(self, v, g) for v in range(len(self.tlb)) for g in range(start, start + n)]


def _tlb_access(tlbs, args, cpu, world):
    return tlbs.lookup(*args)


def _tlb_flush(tlbs, args, cpu, world):
    return tlbs.drop_range(args[0], args[1])


def kvm_flush_remote_tlbs_range(kvm, start_gfn: int, nr_pages: int):
    """Flush every vCPU's TLB entries for gfns in ``[start_gfn, start_gfn + nr_pages)``.

    Models: virt/kvm/kvm_main.c: kvm_flush_remote_tlbs_range()

    One step: the kernel kicks every vCPU out of guest mode and waits until
    each has flushed, so no vCPU uses an entry of the range afterwards.
    """
    check_int("start_gfn", start_gfn, 0, _GFN_MAX)
    check_int("nr_pages", nr_pages, 1, _GFN_MAX + 1 - start_gfn)
    yield from kvm.tlbs.flush_range(start_gfn, nr_pages)


def kvm_flush_remote_tlbs_memslot(kvm, slot: KvmMemorySlot):
    """Flush every vCPU's TLB entries for the gfns of ``slot``.

    Models: virt/kvm/kvm_main.c: kvm_flush_remote_tlbs_memslot()

    The kernel asserts that ``slots_lock`` is held (its callers update
    memslots); the model does not check it.
    """
    if not isinstance(getattr(kvm, "tlbs", None), VcpuTlbs):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    if not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"slot must be a KvmMemorySlot, got {type(slot).__name__}")
    yield from kvm_flush_remote_tlbs_range(kvm, slot.base_gfn, slot.npages)


def kvm_flush_remote_tlbs_gfn(kvm, gfn: int, level: int):
    """Flush the TLB entries of the ``level``-sized page holding ``gfn``.

    Models: arch/x86/kvm/mmu/mmu_internal.h: kvm_flush_remote_tlbs_gfn()
    """
    check_vm("kvm", kvm)
    check_int("gfn", gfn, 0, (1 << 52) - 1)
    check_int("level", level, PG_LEVEL_4K, 5)
    yield from kvm_flush_remote_tlbs_range(kvm, gfn_round_for_level(gfn, level),
                                           KVM_PAGES_PER_HPAGE(level))
