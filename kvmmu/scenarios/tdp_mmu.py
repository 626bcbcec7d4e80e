"""Chapter 3's races on the TDP MMU: the atomic zap under the read lock; removals.

The kernel code the actors run is modelled, with its ``Models:`` lines, in
:mod:`kvmmu.tdp_mmu`, :mod:`kvmmu.tdp_iter`, :mod:`kvmmu.tlb` and the fault
path of :mod:`kvmmu.mmu`; this module adds the cast, the world they start
from and the checks, no kernel function:

- :func:`zap_vs_fault`: an atomic zap of one SPTE under ``mmu_lock`` held for
  read, with the freeze (the code up to 6.12) or without it (the code before
  Ben Gardon's January 2021 patch), against a vCPU that touches the gfn and,
  on an EPT violation, faults it in through the one fault path and touches
  it again (and, with four actors, a second zap of the same SPTE);
- :func:`removers_collide`: the zap of a leaf against the removal of its
  table (``handle_removed_pt``), optionally with a fault inside the table;
- :func:`fault_into_removed_table`: a fault installing into a table that is
  being removed;
- the checks: :func:`no_stale_translation` (the invariant, after every step)
  and :func:`bookkeeping_ok` (the final check).

**The world** (:func:`race_world`).  A VM with two vCPUs on one root and a
two-page memslot at gfn ``RACE_GFN``.  vCPU 0 has touched ``RACE_GFN``:
the fault mapped it to host page ``OLD_PFN`` and vCPU 0's TLB caches the
translation.  Then, at set-up and without the MMU notifier, the host's page
table for that address is pointed at a new page, ``NEW_PFN``: the moment
after the host replaced the page and before KVM's zap (actor A) has taken
the old SPTE away.  A fault that comes now takes its pfn from the host
mapping, so it maps ``NEW_PFN``, and a stale translation shows as a
different number.  With ``same_pfn=True`` the host keeps the page, and a
new fault maps ``OLD_PFN`` again (David Matlack's case in 6.13).

**The cast's zoom.**  ``kvm_mmu_faultin_pfn()`` (the memslot checks, the
invalidation sequence, gup) runs as one step: the chapter teaches the walk
and the SPTE writes of ``kvm_tdp_mmu_map()``, chapter 6 the rest.

**Where the model simplifies.**  A vCPU actor (:func:`touch`) is the guest's
access and KVM's fault handler without the rest of ``KVM_RUN``: no request
handling, no root reload (the roots never change here) and no ``kvm->srcu``
read section (no memslot changes here).  A kernel WARN
(:class:`~kvmmu.spte.KernelWarn`) in an actor built with :func:`actor`
becomes a failed assertion, which the explorer reports as a violation.
"""
from __future__ import annotations

from collections import Counter
from functools import partial

from ..checks import check_bool, check_int
from ..cpu import run_alone
from ..errno import ret_pf_name
from ..explorer import Actor, Invariant, Scenario
from ..host_mm import GUEST_DATA_WORD, PTE, host_populate, mk_leaf_entry, pte_index
from ..kvm_host import Kvm
from ..kvm_main import kvm_create_vm, kvm_vm_ioctl_create_vcpu, set_memory_region
from ..levels import PAGE_SHIFT, PG_LEVEL_2M, PG_LEVEL_4K, level_name
from ..mmu import kvm_mmu_page_fault, kvm_mmu_reload
from ..pferr import PFERR_GUEST_FINAL_MASK
from ..spte import KernelWarn, is_shadow_present_pte
from ..tdp_iter import TDP_PT_PFN_BASE, tdp_iter_next, tdp_iter_start
from ..tdp_mmu import (tdp_mmu_zap_spte_atomic, tdp_mmu_zap_spte_atomic_nofreeze,
                       tdp_walk_begin, tdp_walk_end)
from ..x86 import vcpu_run
from . import ScenarioEntry

__all__ = [
    "RACE_GFN", "OLD_PFN", "NEW_PFN", "HVA", "ROOT", "ZOOM", "NO_STALE_TRANSLATION",
    "SPTE_KEY", "TABLE_KEY", "race_world", "zap_gfn_shared", "touch", "actor",
    "translations", "stale_gfns", "no_stale_translation", "bookkeeping_ok",
    "zap_vs_fault", "removers_collide", "fault_into_removed_table", "SCENARIOS",
]

#: The gfn the races are about (the memslot holds it and the next one).
RACE_GFN = 0x100
#: The VMM's address of the memslot: its low bits match the gfn's, so the
#: host's pages get pfns ending in 0x100 and 0x101.
HVA = 0x7F0000000000 + (RACE_GFN << PAGE_SHIFT)
#: The host page RACE_GFN is mapped to at first, and the page the host has
#: put there instead when the race starts (see the module docstring).
OLD_PFN = 0x40100
NEW_PFN = 0x40300
#: The root both vCPUs run on: the first table the VM allocates.
ROOT = TDP_PT_PFN_BASE
#: The functions the chapter runs as one step.
ZOOM = frozenset({"kvm_mmu_faultin_pfn"})

#: The invariant of chapter 3, in words.
NO_STALE_TRANSLATION = "one pfn per gfn (no stale translation)"
#: The names traces show for the two watched SPTEs.
SPTE_KEY = f"{level_name(PG_LEVEL_4K)} SPTE of {RACE_GFN:#x}"
TABLE_KEY = f"{level_name(PG_LEVEL_2M)} SPTE of {RACE_GFN:#x}"


# ---------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------
def _replace_host_page(kvm: Kvm, hva: int) -> int:
    # Set-up only: point the host PTE of ``hva`` at a new page, as the host
    # would after migrating it, but without the MMU notifier (see the module
    # docstring).
    mm = kvm.mm
    new = mm.mem.alloc_folio(PG_LEVEL_4K, color=pte_index(hva),
                             fill=GUEST_DATA_WORD)
    mm.mem.store(mm.entry_ptr(hva, PTE), mk_leaf_entry(new, PG_LEVEL_4K))
    return new


def _watch_spte(kvm: Kvm, root: int, gfn: int, level: int) -> None:
    # Show the entry that maps ``gfn`` at ``level`` *now*: if its table is cut
    # out later, the view keeps showing that entry of the removed table.
    sptep = kvm.ept.sptep_of(root, gfn, level)
    kvm.watch(f"{level_name(level)} SPTE of {gfn:#x}",
              lambda k: k.ept.name_of(sptep, k.ept.get(sptep)))


def race_world(*, same_pfn: bool = False, spin_on_frozen_child: bool = True,
               watch_table: bool = False) -> Kvm:
    """The starting state of the chapter's races (see the module docstring).

    ``same_pfn``: the host keeps the page, so a new fault maps ``OLD_PFN``
    again.  ``spin_on_frozen_child=False`` removes the wait of
    ``handle_removed_pt`` (the model's unsafe variant).  ``watch_table``:
    traces also show the 2M-level entry that points to RACE_GFN's table.
    """
    check_bool("same_pfn", same_pfn)
    check_bool("spin_on_frozen_child", spin_on_frozen_child)
    check_bool("watch_table", watch_table)
    kvm = kvm_create_vm(zoom=ZOOM, spin_on_frozen_child=spin_on_frozen_child)
    vcpu0, vcpu1 = kvm_vm_ioctl_create_vcpu(kvm), kvm_vm_ioctl_create_vcpu(kvm)
    set_memory_region(kvm, 1, RACE_GFN << PAGE_SHIFT, 2 << PAGE_SHIFT, HVA)
    host_populate(kvm.mm, HVA, 2, "4K")
    # vCPU 0 touches the gfn: the fault maps it, the retried access fills the TLB.
    hit = run_alone(kvm, vcpu_run(vcpu0, RACE_GFN << PAGE_SHIFT))
    kvm_mmu_reload(vcpu1)                              # the same root
    if not same_pfn:
        new = _replace_host_page(kvm, HVA)
        if new != NEW_PFN:                      # pragma: no cover - set-up guard
            raise RuntimeError(f"the host gave page {new:#x}, not {NEW_PFN:#x}")
    if hit != f"hit {OLD_PFN:#x}" or vcpu1.root != ROOT:  # pragma: no cover
        raise RuntimeError(f"vCPU 0's first touch gave {hit!r}, not OLD_PFN "
                           f"{OLD_PFN:#x}, on root {vcpu1.root}")
    _watch_spte(kvm, ROOT, RACE_GFN, PG_LEVEL_4K)
    if watch_table:
        _watch_spte(kvm, ROOT, RACE_GFN, PG_LEVEL_2M)
    for vcpu in range(kvm.nr_vcpus):
        kvm.watch(f"vCPU {vcpu} TLB", partial(_show_tlb, vcpu=vcpu))
    return kvm


def _show_tlb(kvm: Kvm, vcpu: int) -> str:
    return kvm.tlbs.show_one(vcpu)


def _check_kvm(kvm) -> Kvm:
    if not isinstance(kvm, Kvm):
        raise TypeError("kvm must be a Kvm (kvmmu.kvm_main.kvm_create_vm), got "
                        f"{type(kvm).__name__}")
    return kvm


# ---------------------------------------------------------------------------
# The cast
# ---------------------------------------------------------------------------
def zap_gfn_shared(kvm: Kvm, root: int, gfn: int, level: int = PG_LEVEL_4K,
                   freeze: bool = True):
    """Zap the SPTE of ``gfn`` at ``level``, mmu_lock held for read; True if done.

    The chapter's zapper: the shared-mode zap loop of the kernel (as in
    ``__tdp_mmu_zap_root()``) reduced to the SPTE of one gfn at one level,
    zapping it with :func:`~kvmmu.tdp_mmu.tdp_mmu_zap_spte_atomic` (the
    <= 6.12 freeze) or, with ``freeze=False``, the unsafe
    :func:`~kvmmu.tdp_mmu.tdp_mmu_zap_spte_atomic_nofreeze`.  An entry that
    is not present is skipped (a FROZEN_SPTE is not present: its owner is
    zapping it already); on -EBUSY the refreshed snapshot is looked at again.
    In the kernel such zaps ran in the fault path (2021), for NX huge page
    recovery and for collapsible SPTEs.
    """
    _check_kvm(kvm)
    check_int("root", root, TDP_PT_PFN_BASE)
    check_int("gfn", gfn, 0, (1 << 40) - 1)
    check_int("level", level, PG_LEVEL_4K, kvm.config.root_level)
    check_bool("freeze", freeze)
    zap = tdp_mmu_zap_spte_atomic if freeze else tdp_mmu_zap_spte_atomic_nofreeze
    zapped = False
    end = gfn + 1
    yield from kvm.mmu_lock.read_lock()
    tdp_walk_begin(kvm, gfn, end)                      # rcu_read_lock()
    it = yield from tdp_iter_start(kvm, root, kvm.config.root_level, level, gfn)
    while it.valid and it.gfn < end:
        if it.level == level:
            while is_shadow_present_pte(it.old_spte):
                if (yield from zap(kvm, it)) == 0:
                    zapped = True
                    break
                # -EBUSY: it.old_spte now holds the value found; look again.
        yield from tdp_iter_next(kvm, it, end)
    tdp_walk_end(kvm, gfn, end)                        # rcu_read_unlock()
    yield from kvm.mmu_lock.read_unlock()
    return zapped


def touch(kvm: Kvm, vcpu_id: int, gfn: int):
    """vCPU ``vcpu_id`` reads ``gfn``; on an EPT violation: the fault, a reread.

    The access is the CPU's (one step: a TLB hit, or the hardware's walk of
    the live EPT); the fault is the one fault path,
    :func:`kvmmu.mmu.kvm_mmu_page_fault`.  Returns ``"hit <pfn>"``, or the
    fault's RET_PF_* name followed by what the second access found.  One
    fault at most: after RET_PF_RETRY the guest would fault again later,
    which the actor does not wait for.
    """
    check_int("vcpu_id", vcpu_id, 0, _check_kvm(kvm).nr_vcpus - 1)
    check_int("gfn", gfn, 0, (1 << 40) - 1)
    vcpu = kvm.vcpus[vcpu_id]
    hit = yield from kvm.tlbs.access(vcpu_id, gfn)
    if hit is not None:
        return f"hit {hit.pfn:#x}"
    r = yield from kvm_mmu_page_fault(vcpu, gfn << PAGE_SHIFT,
                                      PFERR_GUEST_FINAL_MASK)
    hit = yield from kvm.tlbs.access(vcpu_id, gfn)
    return f"{ret_pf_name(r)}, then " + (f"hit {hit.pfn:#x}" if hit
                                         else "EPT violation")


def _guard(fn, args, kvm):
    # A kernel WARN in an actor ends the run as a named violation.
    try:
        return (yield from fn(kvm, *args))
    except KernelWarn as warn:
        # An actor's failed assert is how the explorer names a violation.
        raise AssertionError(f"kernel WARN: {warn}") from None


def actor(letter: str, title: str, fn, *args) -> Actor:
    """An explorer Actor running ``fn(kvm, *args)``; a KernelWarn is a violation."""
    if not isinstance(letter, str) or not isinstance(title, str):
        raise TypeError("letter and title must be strings")
    if not callable(fn):
        raise TypeError("fn must be CPU code (a generator function), got "
                        f"{type(fn).__name__}")
    return Actor(letter, title, partial(_guard, fn, args))


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------
def translations(kvm: Kvm, gfn: int) -> dict[str, int]:
    """Every pfn ``gfn`` translates to now: in each vCPU's TLB, each valid root."""
    _check_kvm(kvm)
    check_int("gfn", gfn, 0, (1 << 40) - 1)
    out = {}
    for vcpu, tlb in enumerate(kvm.tlbs.tlb):
        if gfn in tlb:
            out[f"vCPU {vcpu} TLB"] = tlb[gfn].pfn
    for root in kvm.ept.roots:
        live = kvm.translate(root, gfn)
        if live is not None and not kvm.ept.sps[root].invalid:
            out[f"EPT root {root:#x}"] = live.pfn
    return out


def stale_gfns(kvm: Kvm) -> list[int]:
    """The gfns that two translations map to different pfns, sorted."""
    gfns = sorted({gfn for tlb in _check_kvm(kvm).tlbs.tlb for gfn in tlb})
    return [gfn for gfn in gfns if len(set(translations(kvm, gfn).values())) > 1]


def no_stale_translation(kvm: Kvm) -> bool:
    """The architectural invariant: a gfn never translates to two pfns at once.

    Across every vCPU's TLB and the live EPT.  Equivalently: once a zap has
    completed and a different present SPTE is installed for a gfn, no vCPU
    may still translate that gfn through the old SPTE's pfn.
    """
    return not stale_gfns(kvm)


def _leaves(kvm: Kvm) -> list[tuple[int, int, int]]:
    return sorted(leaf for root in kvm.ept.roots
                  for leaf in kvm.ept.live_leaves(root))


def bookkeeping_ok(kvm: Kvm, results=None) -> bool | str:
    """The final check: leaves processed once, stats right, removed tables frozen.

    - each leaf that ever appeared is either still reachable from a root or
      was processed exactly once;
    - ``page_stats`` equals the present leaves reachable from the roots;
    - every entry of a removed table is FROZEN_SPTE (nobody can install
      into it any more);
    - mmu_lock is free, and the model recorded no WARN.
    """
    live = _leaves(_check_kvm(kvm))
    installed, processed = Counter(kvm.ept.installed), Counter(kvm.ept.processed)
    ledger = processed + Counter(live)
    if installed != ledger:
        extra = sorted((processed - (installed - Counter(live))).elements())
        lost = sorted((installed - ledger).elements())
        if extra:
            return "a leaf was processed twice: " + ", ".join(
                f"gfn {g:#x} pfn {p:#x}" for g, _, p in extra)
        return "a leaf was never processed and is unreachable: " + ", ".join(
            f"gfn {g:#x} pfn {p:#x}" for g, _, p in lost)
    reach = {level: 0 for level in kvm.ept.page_stats}
    for _, level, _ in live:
        reach[level] += 1
    if kvm.ept.page_stats != reach:
        return (f"page stats {kvm.ept.page_stats} but the tables hold {reach} "
                "leaves")
    left = kvm.ept.removed_tables_not_frozen()
    if left:
        sptep = left[0]
        return (f"removed table entry {kvm.ept.where(sptep)} is "
                f"{kvm.ept.name_of(sptep, kvm.ept.get(sptep))}, not FROZEN_SPTE")
    if kvm.mmu_lock.writer is not None or kvm.mmu_lock.readers:
        return f"mmu_lock still held: {kvm.mmu_lock._show()}"
    if kvm.warnings:
        return f"kernel WARN: {kvm.warnings[0]}"
    return True


def _checks(**kw) -> dict:
    return dict(invariants=[Invariant(NO_STALE_TRANSLATION, no_stale_translation, reads=("TLBs", "EPT"))],
                final_check=bookkeeping_ok, **kw)


# ---------------------------------------------------------------------------
# The chapter's scenarios
# ---------------------------------------------------------------------------
def _zap(letter: str, title: str, level: int, freeze: bool = True) -> Actor:
    return actor(letter, title, zap_gfn_shared, ROOT, RACE_GFN, level, freeze)


def zap_vs_fault(freeze: bool = True, actors: int = 2,
                 same_pfn: bool = False) -> Scenario:
    """Chapter 3's race: a read-lock zap of RACE_GFN against a vCPU faulting it in.

    A zaps the 4K SPTE of RACE_GFN under mmu_lock held for read, with the
    freeze (``freeze=True``, the fix) or without it (the 2020 code).  B is
    vCPU 1 touching RACE_GFN: on an EPT violation it faults, which maps
    NEW_PFN (OLD_PFN with ``same_pfn``), and touches it again.  vCPU 0
    starts with the old translation in its TLB; with ``actors=3``, C is
    vCPU 0 doing what B does; with ``actors=4``, D is a second thread
    zapping the same SPTE the same way (one of the two loses its
    compare-exchange and looks at the refreshed snapshot).
    """
    check_bool("freeze", freeze)
    check_int("actors", actors, 2, 4)
    check_bool("same_pfn", same_pfn)
    how = "freeze, flush, non-present" if freeze else "non-present, then flush"
    cast = [_zap("A", f"zap ({how})", PG_LEVEL_4K, freeze),
            actor("B", "vCPU 1 touches gfn", touch, 1, RACE_GFN)]
    if actors >= 3:
        cast.append(actor("C", "vCPU 0 touches gfn", touch, 0, RACE_GFN))
    if actors == 4:
        cast.append(_zap("D", "a second zap, the same way", PG_LEVEL_4K, freeze))
    pfn = ", same pfn" if same_pfn else ""
    return Scenario(
        f"zap vs fault ({'fixed' if freeze else 'unsafe'}, {actors} actors{pfn})",
        partial(race_world, same_pfn=same_pfn), cast,
        **_checks(description="While vCPU 0 may still use the old translation, "
                              "nobody may install a new one."))


def removers_collide(spin: bool = True, fault: bool = False) -> Scenario:
    """An atomic zap of a leaf against the removal of its table.

    A zaps the 4K SPTE of RACE_GFN (freeze, flush, non-present); B zaps the
    2M-level entry that points to its table, so handle_removed_pt() freezes
    all 512 children, meeting A's frozen child.  With ``spin=False`` B
    takes a FROZEN_SPTE it finds as its own instead of waiting (unsafe).
    With ``fault``, C is vCPU 1 touching RACE_GFN and faulting it in (to
    NEW_PFN): a walker that may still be inside the table being removed.
    """
    check_bool("spin", spin)
    check_bool("fault", fault)
    cast = [_zap("A", "zap the 4K leaf", PG_LEVEL_4K),
            _zap("B", "zap its table", PG_LEVEL_2M)]
    if fault:
        cast.append(actor("C", "vCPU 1 touches gfn", touch, 1, RACE_GFN))
    return Scenario(
        f"two removers collide ({'spin' if spin else 'no spin'}"
        f"{', and a fault' if fault else ''})",
        partial(race_world, spin_on_frozen_child=spin, watch_table=True), cast,
        **_checks(description="Every old value of a child is processed exactly "
                              "once; the table ends frozen."))


def fault_into_removed_table() -> Scenario:
    """A fault installing into a table that is being removed.

    A zaps the 2M-level entry that points to RACE_GFN's table; B is vCPU 1
    touching RACE_GFN + 1 (same table, in the memslot, not mapped yet),
    faulting it in.
    """
    return Scenario(
        "fault into a removed table",
        partial(race_world, watch_table=True),
        [_zap("A", "zap the table", PG_LEVEL_2M),
         actor("B", "vCPU 1 touches a new gfn", touch, 1, RACE_GFN + 1)],
        **_checks(description="A mapping installed in a table after it was "
                              "scanned would live on unseen."))


SCENARIOS = {
    "zap-vs-fault": ScenarioEntry(
        zap_vs_fault, 3,
        "the atomic zap with the freeze (<= 6.12) against a vCPU's fault"),
    "zap-vs-fault-nofreeze": ScenarioEntry(
        partial(zap_vs_fault, False), 3,
        "the zap before January 2021: non-present, then flush; a fault installs "
        "a new pfn while a TLB holds the old one", "violated"),
    "zap-vs-fault-same-pfn": ScenarioEntry(
        partial(zap_vs_fault, False, same_pfn=True), 3,
        "the unfrozen zap when the new mapping has the same pfn (Matlack, 6.13): "
        "safe"),
    "removers-collide": ScenarioEntry(
        removers_collide, 3,
        "a leaf's zap against its table's removal: handle_removed_pt spins"),
    "removers-collide-nospin": ScenarioEntry(
        partial(removers_collide, False), 3,
        "handle_removed_pt without the spin (the model's variant): a removed "
        "entry is written after the scan", "violated"),
    "removers-collide-fault": ScenarioEntry(
        partial(removers_collide, True, True), 3,
        "the two removers and a vCPU faulting inside the table"),
    "fault-into-removed-table": ScenarioEntry(
        fault_into_removed_table, 3,
        "a fault installing into a table being removed"),
}
