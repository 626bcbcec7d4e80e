"""The vCPUs' TLBs, and the remote TLB flush that empties them.

Models: virt/kvm/kvm_main.c: kvm_flush_remote_tlbs_range()
Models: arch/x86/kvm/mmu/mmu_internal.h: kvm_flush_remote_tlbs_gfn()

Reference version: Linux 6.17 (read at v6.17-rc3).

Each vCPU has a TLB that caches gfn -> (pfn, the leaf SPTE it came from).
:class:`VcpuTlbs` holds all of them as one shared object of
:mod:`kvmmu.explorer`; a guest access and a remote flush are each one step.

**Where the model simplifies.**

- The TLB caches final translations only: paging-structure caches, VPIDs
  and ASIDs are not modelled.
- A vCPU's memory access is one step: a TLB hit, or the hardware's walk of
  the live EPT that fills the TLB.
- A remote flush is one step: it kicks every vCPU out of guest mode and
  waits, so it never lands inside a walk; it drops the range's entries from
  every vCPU's TLB at once (no per-vCPU requests).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .explorer import Op, _Primitive
from .levels import KVM_PAGES_PER_HPAGE, gfn_round_for_level

if TYPE_CHECKING:  # annotations only: tdp_mmu imports this module
    from .tdp_mmu import TdpMmuWorld


class TlbEntry(NamedTuple):
    """A cached translation: the host pfn, and the leaf SPTE it was read from."""

    pfn: int
    spte: int

    def __repr__(self):
        return f"pfn {self.pfn:#x}"


class VcpuTlbs(_Primitive):
    """Every vCPU's TLB: gfn -> TlbEntry, as one shared object of the explorer.

    ``access`` is what the CPU does on a guest memory access (a TLB hit, or a
    walk of the live EPT that fills the TLB); ``flush_range`` is a remote TLB
    flush.  Each is one step.
    """

    __slots__ = ("tlb",)

    def __init__(self, world, name, vcpus: int):
        super().__init__(world, name)
        self.tlb: list[dict[int, TlbEntry]] = [{} for _ in range(vcpus)]

    def _state(self):
        return tuple(tuple(sorted(t.items())) for t in self.tlb)

    def _load(self, st):
        for tlb, entries in zip(self.tlb, st):
            tlb.clear()
            tlb.update(entries)

    def _show(self):
        return "; ".join(f"vCPU {v}: {self.show_one(v)}" for v in range(len(self.tlb)))

    def show_one(self, vcpu: int) -> str:
        """One TLB as text: ``0x100->0x1234`` per entry, ``-`` if empty."""
        return ", ".join(f"{gfn:#x}->{e.pfn:#x}" for gfn, e in sorted(self.tlb[vcpu].items())) or "-"

    def lookup(self, vcpu: int, gfn: int) -> TlbEntry | None:
        """The TLB part of an access (no step): hit, or walk the EPT and fill."""
        hit = self.tlb[vcpu].get(gfn)
        if hit is not None:
            return hit
        entry = self.world.translate(gfn)
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

    def access(self, vcpu: int, gfn: int):
        """A guest access by ``vcpu`` to ``gfn`` (one step); a TlbEntry, or None on an EPT violation."""
        return (yield Op(self, "access", (vcpu, gfn), _tlb_access))

    def flush_range(self, start: int, nr_pages: int):
        """Flush every vCPU's entries for ``[start, start + nr_pages)`` (one step)."""
        return (yield Op(self, "flush", (start, nr_pages), _tlb_flush))

    def _what(self, kind, args):
        if kind == "access":
            return f"vCPU {args[0]} reads gfn {args[1]:#x}"
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


def _tlb_access(tlbs, args, cpu, world):
    return tlbs.lookup(args[0], args[1])


def _tlb_flush(tlbs, args, cpu, world):
    return tlbs.drop_range(args[0], args[1])


# ---------------------------------------------------------------------------
# Remote TLB flushes.
# ---------------------------------------------------------------------------
def kvm_flush_remote_tlbs_range(kvm: TdpMmuWorld, start_gfn: int, nr_pages: int):
    """Flush every vCPU's TLB entries for gfns in ``[start_gfn, start_gfn + nr_pages)``.

    Models: virt/kvm/kvm_main.c: kvm_flush_remote_tlbs_range()

    One step: the kernel kicks every vCPU out of guest mode and waits until
    each has flushed, so no vCPU uses an entry of the range afterwards.
    """
    yield from kvm.tlbs.flush_range(start_gfn, nr_pages)


def kvm_flush_remote_tlbs_gfn(kvm: TdpMmuWorld, gfn: int, level: int):
    """Flush the TLB entries of the ``level``-sized page holding ``gfn``.

    Models: arch/x86/kvm/mmu/mmu_internal.h: kvm_flush_remote_tlbs_gfn()
    """
    yield from kvm_flush_remote_tlbs_range(kvm, gfn_round_for_level(gfn, level),
                                           KVM_PAGES_PER_HPAGE(level))
