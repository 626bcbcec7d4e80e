"""Chapter 7's guest access, end to end, and the race that crosses chapters.

The code every actor runs is the model's: ``KVM_RUN``
(:func:`kvmmu.x86.vcpu_run`) with a guest that loads from a virtual address
as its CPU does under EPT (:func:`kvmmu.guest.guest_load`), the one fault
path (:mod:`kvmmu.mmu`), chapter 3's TDP MMU, chapter 6's prefault ioctl and
memslot update (:mod:`kvmmu.kvm_main`) and the host's mm
(:func:`kvmmu.host_mm.punch_hole`).  This module adds the cast:

- :func:`access_vm`: a fresh VM with one RAM slot, 4-level guest page tables
  that map :data:`GVA` to :data:`DATA_GPA`, and a value stored there;
  ``backing="2M"`` backs the slot with transparent huge pages,
  ``prefault`` maps gpa ranges with ``KVM_PRE_FAULT_MEMORY`` first;
- :func:`run_access`: the guest's load under ``KVM_RUN``, recorded step by
  step (:class:`_AccessStep`: layer, kernel function, what changed);
- :func:`move_race`: a vCPU's access, the host releasing a page
  (``MADV_DONTNEED``: an MMU-notifier invalidation) and userspace moving the
  memslot that maps it, with or without the memslot swap's wait for
  in-flight invalidations (``KvmConfig.swap_waits_for_invalidations``).

The race's invariant is chapter 6's: no usable root maps a gfn outside the
memslots, nor another page than the host's.
"""
from __future__ import annotations

import functools
import re
from typing import NamedTuple

from ..checks import check_bool, check_choice, check_int
from ..cpu import run_alone
from ..explorer import Actor, Invariant, Scenario
from ..guest import HOST, GuestPageTables, guest_load, guest_vm, guest_write_u64
from ..host_mm import host_populate, host_translation, punch_hole
from ..kvm_main import KvmUserspaceMemoryRegion, kvm_set_memory_region
from ..levels import PAGE_SHIFT, PAGE_SIZE, level_name
from ..x86 import vcpu_run
from . import ScenarioEntry
from .prefault import (MOVE_TO_GFN, RACE_HVA, RACE_NPAGES, RACE_SLOT, ZOOM, OutcomeTally,
                       maps_only_slots_host_pages, prefault, race_vm)

__all__ = ["SLOT_PAGES", "TABLE_GFNS", "GVA", "DATA_GPA", "VALUE", "BACKINGS", "LAYERS",
           "access_vm", "layer_of", "run_access",
           "RACE_ZOOM", "RACE_GPA", "move_race", "SCENARIOS"]

#: The guest's one RAM slot: 1024 pages (4 MiB) at gfn 0, at HOST in the VMM.
SLOT_PAGES = 1024
#: The frames the guest kernel takes its page tables from (the first is CR3's).
TABLE_GFNS = tuple(range(0x10, 0x20))
#: The load: the u64 at this guest virtual address ...
GVA = 0x40_0008
#: ... which the guest's tables map to this guest physical address.
DATA_GPA = 0x20_0008
VALUE = 0x1234_5678
BACKINGS = ("4K", "2M")

#: The layers an access goes through, top to bottom, with the model modules
#: whose code runs there.
LAYERS = (
    ("guest CPU", ("kvmmu.guest", "kvmmu.paging_tmpl")),
    ("KVM_RUN", ("kvmmu.x86",)),
    ("fault path", ("kvmmu.mmu", "kvmmu.kvm_host", "kvmmu.kvm_main", "kvmmu.memslots")),
    ("host mapping", ("kvmmu.mmu_internal", "kvmmu.host_mm")),
    ("TDP MMU", ("kvmmu.tdp_mmu", "kvmmu.tdp_iter", "kvmmu.spte")),
    ("TLB", ("kvmmu.tlb",)),
)
_GPA = re.compile(r"gpa (0x[0-9a-f]+)")
_LAYER_OF_MODULE = {m: name for name, mods in LAYERS for m in mods}


def access_vm(backing: str = "4K", prefault_ranges=()):
    """A fresh VM whose guest is about to load from :data:`GVA`; returns the vCPU.

    ``backing``: the host backs the data's 2 MiB with 4 KiB pages, or with
    a transparent huge page (``"2M"``); the page tables are in 4 KiB pages.  ``prefault_ranges``: ``(gpa, size)``
    pairs that userspace maps with ``KVM_PRE_FAULT_MEMORY`` first.
    """
    check_choice("backing", backing, BACKINGS)
    if not isinstance(prefault_ranges, (tuple, list)):
        raise TypeError("prefault_ranges must be a tuple of (gpa, size) pairs")
    vcpu = guest_vm([(0, SLOT_PAGES, HOST)])
    kvm = vcpu.kvm
    if backing == "2M":                     # the data's 2 MiB: one THP
        data_2m = DATA_GPA & ~((2 << 20) - 1)
        host_populate(kvm.mm, HOST + data_2m, 512, "2M")
    tables = GuestPageTables(kvm, TABLE_GFNS)
    tables.map(GVA & ~(PAGE_SIZE - 1), DATA_GPA & ~(PAGE_SIZE - 1))
    guest_write_u64(kvm, DATA_GPA, VALUE)
    tables.load(vcpu)
    for i, pair in enumerate(prefault_ranges):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"prefault_ranges[{i}] must be a (gpa, size) pair, got {pair!r}")
        check_int(f"prefault_ranges[{i}] gpa", pair[0], 0, (SLOT_PAGES << PAGE_SHIFT) - 1)
        check_int(f"prefault_ranges[{i}] size", pair[1], PAGE_SIZE, SLOT_PAGES << PAGE_SHIFT)
        r = prefault(vcpu, *pair)
        if r.ret:
            raise ValueError(f"KVM_PRE_FAULT_MEMORY{pair!r} returned {r}")
    return vcpu


class _AccessStep(NamedTuple):
    """One step of the access: where it ran and what it changed."""

    n: int
    layer: str
    function: str
    label: str
    #: what the step changed: ("EPT", text), ("TLB", text), ("host", text) items
    changes: tuple


def layer_of(chain) -> tuple[str, str]:
    """(layer, kernel function) of a step, from its call chain (:func:`kvmmu.cpu.call_chain`).

    The innermost model module the step ran in names the layer; the
    innermost function of that layer that is not a private helper or a
    method names the step.
    """
    if not isinstance(chain, tuple):
        raise TypeError(f"chain must be a tuple of (module, function), got {chain!r}")
    inner = [(m, q) for m, q in chain if m in _LAYER_OF_MODULE]
    if not inner:
        return "KVM_RUN", chain[-1][1] if chain else "?"
    layer = _LAYER_OF_MODULE[inner[-1][0]]
    for module, qualname in reversed(inner):
        if _LAYER_OF_MODULE[module] != layer:
            break
        if "." not in qualname and not (qualname.startswith("_")
                                        and not qualname.startswith("__")):
            return layer, qualname
    # No kernel name in the step's own layer: the guest CPU's load itself.
    return layer, "the CPU's load" if layer == "guest CPU" else inner[-1][1]


def _snapshot(vcpu) -> dict:
    kvm = vcpu.kvm
    leaves = kvm.ept.live_leaves(vcpu.root) if vcpu.root is not None else []
    found = host_translation(kvm.mm, HOST + (DATA_GPA & ~(PAGE_SIZE - 1)))
    return {"EPT": {(gfn, level): pfn for gfn, level, pfn in leaves},
            "TLB": dict(kvm.tlbs.tlb[vcpu.vcpu_id]),
            "host": found}


def _changes(before: dict, after: dict) -> tuple:
    out = []
    for (gfn, level), pfn in sorted(after["EPT"].items()):
        if before["EPT"].get((gfn, level)) != pfn:
            out.append(("EPT", f"leaf gfn {gfn:#x} -> pfn {pfn:#x} ({level_name(level)})"))
    for gfn, entry in sorted(after["TLB"].items()):
        if before["TLB"].get(gfn) != entry:
            out.append(("TLB", f"gfn {gfn:#x} -> pfn {entry.pfn:#x}"))
    if before["host"] != after["host"] and after["host"] is not None:
        out.append(("host", f"data page at pfn {after['host'][0]:#x}"))
    return tuple(out)


class _AccessRun(NamedTuple):
    """A recorded access: what KVM_RUN ended with, and every step."""

    result: object
    steps: tuple

    @property
    def ept_violations(self) -> int:
        """How many times the guest exited with an EPT violation."""
        return len(self.faults)

    @property
    def faults(self) -> tuple:
        """The gpas whose EPT violations KVM handled, in order."""
        return tuple(int(_GPA.search(s.label).group(1), 16) for s in self.steps
                     if "-> EPT violation" in s.label)


def run_access(vcpu, gva: int = GVA) -> _AccessRun:
    """Run ``KVM_RUN`` with the guest's load from ``gva``, recording every step."""
    load = guest_load(vcpu, gva)           # checks vcpu and gva
    steps = []
    state = {"before": _snapshot(vcpu)}

    def on_step(label, chain):
        after = _snapshot(vcpu)
        layer, function = layer_of(chain)
        steps.append(_AccessStep(len(steps), layer, function, label,
                                _changes(state["before"], after)))
        state["before"] = after

    result = run_alone(vcpu.kvm, vcpu_run(vcpu, guest=load), on_step=on_step)
    return _AccessRun(result, tuple(steps))


# ---------------------------------------------------------------------------
# The race: a memslot move between an invalidation's start and end
# ---------------------------------------------------------------------------
#: Chapter 6's zoom (the fault handler and the zaps run as one step each),
#: and KVM's notifier callbacks as one step each: what matters is where the
#: memslot swap falls between them.
RACE_ZOOM = ZOOM | {"kvm_mmu_notifier_invalidate_range_start",
                    "kvm_mmu_notifier_invalidate_range_end"}
#: Where the move puts the slot's first page (chapter 6's move).
RACE_GPA = MOVE_TO_GFN << PAGE_SHIFT


def _actor_vcpu(w):
    # The guest reads the first page at its new gpa.
    return (yield from vcpu_run(w.vcpus[0], RACE_GPA))


def _actor_host(w):
    # The VMM's madvise(MADV_DONTNEED) on the slot's first page.
    freed = yield from punch_hole(w.mm, RACE_HVA, RACE_HVA + PAGE_SIZE)
    return f"freed {len(freed)}"


def _actor_move(w):
    # Userspace moves slot 1 down one page: same hva, gfn 0x100 -> 0xff.
    mem = KvmUserspaceMemoryRegion(RACE_SLOT, 0, RACE_GPA, RACE_NPAGES * PAGE_SIZE, RACE_HVA)
    return (yield from kvm_set_memory_region(w, mem))


def _world(waits: bool):
    return race_vm("6.18", zoom=RACE_ZOOM, slot_zap_all=False,
                   swap_waits_for_invalidations=waits)


def _label(w, results) -> str:
    return f"KVM_RUN ends with {results['A']}"


def move_race(waits: bool = True) -> Scenario:
    """A: KVM_RUN reads gpa 0xff000; B: the host releases the page; C: moves slot 1 there.

    ``waits=False`` is the unsafe variant: the memslot swap does not wait
    for an invalidation in flight (one rule left out).  The scenario's
    ``tally`` counts the distinct final states by how KVM_RUN ended.
    """
    check_bool("waits", waits)
    tally = OutcomeTally(_label)
    name = "fault, MADV_DONTNEED, memslot move" + ("" if waits else " (swap does not wait)")
    sc = Scenario(name, functools.partial(_world, waits),
                  [Actor("A", f"KVM_RUN: guest reads gpa {RACE_GPA:#x}", _actor_vcpu),
                   Actor("B", "host: MADV_DONTNEED page 0", _actor_host),
                   Actor("C", f"move slot 1 to gfn {MOVE_TO_GFN:#x}", _actor_move)],
                  invariants=[Invariant("no SPTE off the host's page",
                                        maps_only_slots_host_pages)],
                  final_check=tally)
    sc.tally = tally
    return sc


SCENARIOS = {
    "move-vs-invalidation": ScenarioEntry(
        functools.partial(move_race, True), 7,
        "a memslot move waits for the MMU-notifier invalidation in flight: the fault on "
        "the moved gfn never maps the released page"),
    "move-skips-invalidation-wait": ScenarioEntry(
        functools.partial(move_race, False), 7,
        "one rule left out: the swap publishes mid-invalidation and the fault maps the "
        "page the host is releasing", "violated"),
}
