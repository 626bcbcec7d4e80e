"""Chapter 3's races on the TDP MMU model, as scenarios of the interleaving explorer.

The kernel code the races exercise is modelled, with its ``Models:`` lines,
in :mod:`kvmmu.tdp_mmu`, :mod:`kvmmu.tdp_iter` and :mod:`kvmmu.tlb`; this
module adds the chapter's cast and its checks, no kernel function:

- :func:`zap_vs_fault`: an atomic zap under mmu_lock held for read against a
  vCPU that faults the gfn back in, with the freeze (the code up to 6.12) or
  without it (the code before Ben Gardon's January 2021 patch);
- :func:`removers_collide`: the zap of a leaf against the removal of its
  table (``handle_removed_pt``), optionally with a fault inside the table;
- :func:`fault_into_removed_table`: a fault installing into a table that is
  being removed;
- the checks: :func:`no_stale_translation` (the invariant, after every step)
  and :func:`bookkeeping_ok` (the final check).

**Where the model simplifies.**  One gfn, ``RACE_GFN``, mapped at first to
``OLD_PFN`` and cached in vCPU 0's TLB; a racing fault maps ``NEW_PFN``; two
vCPUs.  A kernel WARN (:class:`~kvmmu.spte.KernelWarn`) in an actor built
with :func:`actor` becomes a failed assertion, which the explorer reports as
a violation.
"""
from collections import Counter
from functools import partial

from .checks import check_bool, check_int
from .explorer import Actor, Invariant, Scenario
from .levels import PG_LEVEL_4K, gfn_round_for_level
from .spte import KernelWarn
from .tdp_mmu import TDP_PT_PFN_BASE, TdpMmuWorld, vcpu_run, zap_spte_shared


# ---------------------------------------------------------------------------
# The chapter's scenarios.
# ---------------------------------------------------------------------------
#: The gfn the races are about, the pfn it maps at first, and the pfn a
#: racing fault maps it to.
RACE_GFN = 0x100
OLD_PFN = 0x1234
NEW_PFN = 0x5678

#: The invariant of chapter 3, in words.
NO_STALE_TRANSLATION = "one pfn per gfn (no stale translation)"


def no_stale_translation(kvm: TdpMmuWorld) -> bool:
    """The architectural invariant: a gfn never translates to two different pfns at once.

    Across every vCPU's TLB and the live EPT.  Equivalently: once a zap has
    completed and a different present SPTE is installed for a gfn, no vCPU
    may still translate that gfn through the old SPTE's pfn.
    """
    return not kvm.stale_gfns()


def bookkeeping_ok(kvm: TdpMmuWorld, results=None) -> bool | str:
    """The final check: stats match the live tables, removed tables are frozen, nothing twice.

    - each leaf that ever appeared is either still reachable from the root
      or was processed exactly once (kernel-facts R3.3);
    - ``page_stats`` equals the present leaves reachable from the root;
    - every entry of a removed table is FROZEN_SPTE (nobody can install
      into it any more);
    - mmu_lock is free.
    """
    live = kvm.live_leaves()
    ledger = Counter(kvm.processed) + Counter(live)
    if Counter(kvm.installed) != ledger:
        extra = sorted((Counter(kvm.processed) - (Counter(kvm.installed) - Counter(live))).elements())
        lost = sorted((Counter(kvm.installed) - ledger).elements())
        if extra:
            return "a leaf was processed twice: " + ", ".join(
                f"gfn {g:#x} pfn {p:#x}" for g, _, p in extra)
        return "a leaf was never processed and is unreachable: " + ", ".join(
            f"gfn {g:#x} pfn {p:#x}" for g, _, p in lost)
    reach = kvm.reachable_leaves()
    if kvm.page_stats != reach:
        return f"page stats {kvm.page_stats} but the tables hold {reach} leaves"
    left = kvm.removed_tables_not_frozen()
    if left:
        sptep = left[0]
        return (f"removed table entry {kvm.ept.where(sptep)} is "
                f"{kvm.ept.name_of(sptep, kvm.get(sptep))}, not FROZEN_SPTE")
    if kvm.mmu_lock.writer is not None or kvm.mmu_lock.readers:
        return f"mmu_lock still held: {kvm.mmu_lock._show()}"
    return True


def _guard(fn, args, kvm):
    # A kernel WARN in an actor ends the run as a named violation.
    try:
        return (yield from fn(kvm, *args))
    except KernelWarn as warn:
        # An actor's failed assert is how the explorer names a violation.
        raise AssertionError(f"kernel WARN: {warn}") from None


def actor(letter: str, title: str, fn, *args) -> Actor:
    """An explorer Actor running ``fn(kvm, *args)``; a KernelWarn becomes a violation."""
    return Actor(letter, title, partial(_guard, fn, args))


def race_world(vcpus: int = 2, *, huge: bool = False, spin_on_frozen_child: bool = True,
               watch_table: bool = False) -> TdpMmuWorld:
    """The starting state of the chapter's races.

    RACE_GFN is mapped to OLD_PFN (at 4K, or by a 2M page if ``huge``) and
    vCPU 0 has used it, so its TLB caches the translation.
    """
    level = 2 if huge else PG_LEVEL_4K
    kvm = TdpMmuWorld(vcpus, spin_on_frozen_child=spin_on_frozen_child)
    gfn = gfn_round_for_level(RACE_GFN, level)
    kvm.install(gfn, gfn_round_for_level(OLD_PFN, level), level)
    kvm.watch_gfn(RACE_GFN, level)
    if watch_table and not huge:
        kvm.watch_gfn(RACE_GFN, 2)
    kvm.fill_tlb(0, RACE_GFN)
    return kvm


def zap_vs_fault(freeze: bool = True, actors: int = 2, new_pfn: int = NEW_PFN) -> Scenario:
    """Chapter 3's race: a read-lock zap of RACE_GFN against a vCPU that faults it back in.

    A zaps the 4K SPTE of RACE_GFN under mmu_lock held for read, with the
    freeze (``freeze=True``, the fix) or without it (the 2020 code).  B is
    vCPU 1 touching RACE_GFN: on an EPT violation it faults, mapping
    ``new_pfn``, and touches it again.  vCPU 0 starts with the old
    translation in its TLB; with ``actors=3``, C is vCPU 0 doing what B does.
    """
    check_bool("freeze", freeze)
    check_int("actors", actors, 2, 3)
    check_int("new_pfn", new_pfn, 0, TDP_PT_PFN_BASE - 1)
    how = "freeze, flush, non-present" if freeze else "non-present, then flush"
    cast = [actor("A", f"zap ({how})", zap_spte_shared, RACE_GFN, PG_LEVEL_4K, freeze),
            actor("B", "vCPU 1 touches gfn", vcpu_run, 1, RACE_GFN, new_pfn)]
    if actors == 3:
        cast.append(actor("C", "vCPU 0 touches gfn", vcpu_run, 0, RACE_GFN, new_pfn))
    return Scenario(
        f"zap vs fault ({'fixed' if freeze else 'unsafe'}, {actors} actors)",
        partial(race_world, 2), cast,
        invariants=[Invariant(NO_STALE_TRANSLATION, no_stale_translation)],
        final_check=bookkeeping_ok,
        description="While vCPU 0 may still use the old translation, nobody may install a new one.")


def removers_collide(spin: bool = True, fault: bool = False) -> Scenario:
    """Kernel-facts R3.3: an atomic zap of a leaf against the removal of its table.

    A zaps the 4K SPTE of RACE_GFN (freeze, flush, non-present); B zaps the
    2M-level entry that points to its table, so handle_removed_pt() freezes
    all 512 children, meeting A's frozen child.  With ``spin=False`` B
    takes a FROZEN_SPTE it finds as its own instead of waiting (unsafe).
    With ``fault``, C is vCPU 1 touching RACE_GFN and faulting it in (to
    NEW_PFN): a walker that may still be inside the table being removed.
    """
    check_bool("spin", spin)
    check_bool("fault", fault)
    cast = [actor("A", "zap the 4K leaf", zap_spte_shared, RACE_GFN, PG_LEVEL_4K, True),
            actor("B", "zap its table", zap_spte_shared, RACE_GFN, 2, True)]
    if fault:
        cast.append(actor("C", "vCPU 1 touches gfn", vcpu_run, 1, RACE_GFN, NEW_PFN))
    return Scenario(
        f"two removers collide ({'spin' if spin else 'no spin'}"
        f"{', and a fault' if fault else ''})",
        partial(race_world, 2, spin_on_frozen_child=spin, watch_table=True), cast,
        invariants=[Invariant(NO_STALE_TRANSLATION, no_stale_translation)],
        final_check=bookkeeping_ok,
        description="Every old value of a child is processed exactly once; the table ends frozen.")


def fault_into_removed_table(new_gfn: int = RACE_GFN + 1) -> Scenario:
    """Kernel-facts R3.2: a fault installing into a table that is being removed.

    A zaps the 2M-level entry that points to RACE_GFN's table; B is vCPU 1
    touching ``new_gfn`` (same table, not mapped yet), faulting it in.
    """
    check_int("new_gfn", new_gfn, RACE_GFN - (RACE_GFN % 512), RACE_GFN - (RACE_GFN % 512) + 511)
    return Scenario(
        "fault into a removed table",
        partial(race_world, 2, watch_table=True),
        [actor("A", "zap the table", zap_spte_shared, RACE_GFN, 2, True),
         actor("B", "vCPU 1 touches a new gfn", vcpu_run, 1, new_gfn, NEW_PFN)],
        invariants=[Invariant(NO_STALE_TRANSLATION, no_stale_translation)],
        final_check=bookkeeping_ok,
        description="A mapping installed in a table after it was scanned would live on unseen.")
