"""The chapter's races: host_pfn_mapping_level() used safely and unsafely, explored.

Every scenario here is a ``kvmmu.explorer.Scenario``: a vCPU (or another KVM
path) on one CPU, the host's mm on the other, sharing a
:class:`HostLevelWorld`.  The KVM code the actors run is the same code the
chapter calls directly (``kvmmu.host_level``, ``kvmmu.notifier``); only the
*unsafe* variants live here, each a small function that leaves out exactly
one rule.

The checks:

- ``no bad page-table read``: a walker only ever reads a live page table of
  the level it expects (not a data page, not a freed table);
- ``KVM maps what the host maps``: every mapping KVM has installed translates
  each of its guest frames to the page the host maps at that address *now*.
  The host changes a mapping only between ``invalidate_range_start`` (which
  zapped KVM's copies) and ``invalidate_range_end``, so a KVM mapping that
  disagrees with the host is a guest reading or writing memory the host has
  given to something else (kernel-facts R2.1, R2.2);
- ``no kernel warning``: no VM_BUG_ON, WARN or lockdep splat was recorded.

Scenario names and what they show are listed in :data:`SCENARIOS`.
"""
from collections import Counter
from typing import NamedTuple

from .errno import RET_PF_CONTINUE, RET_PF_RETRY, ret_pf_name
from .explorer import RCU, Actor, Invariant, Scenario, World
from .explorer import step as explorer_step
from .host_level import (KvmPageFault, READ_ONCE, _host_mapping_level_walk,
                         host_pfn_mapping_level, hva_to_pfn, kvm_mmu_faultin_pfn,
                         kvm_mmu_max_mapping_level, kvm_tdp_mmu_map,
                         kvm_tdp_mmu_page_fault, local_irq_restore, local_irq_save)
from .host_mm import (PMD, PTE, PUD, Hex, HostMm, __split_huge_pmd, collapse_huge_page,
                      describe_entry, host_maps_range, host_populate, host_translation,
                      migrate_page, pgd_none, pgd_offset, pmd_leaf, pmd_none, pmd_offset,
                      pmd_present, pud_leaf, pud_none, pud_offset, pud_present, PGD,
                      TABLE_NAMES)
from .levels import (KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PG_LEVEL_1G, PG_LEVEL_2M,
                     PG_LEVEL_4K, gfn_round_for_level, level_name)
from .memslots import KvmMemorySlot, KvmMemslots
from .notifier import KvmState, kvm_mmu_notifier_ops, mmu_invalidate_retry_gfn

#: The guest frames and host addresses every scenario uses: both 1 GiB aligned.
GFN_BASE = 0x100000
HVA_BASE = 0x7F0000000000
#: The frame the vCPU faults on: 0x23 pages into the first 2 MiB.
FAULT_GFN = GFN_BASE + 0x23
FAULT_HVA = HVA_BASE + (0x23 << PAGE_SHIFT)


_RACE_MEMSLOTS: dict = {}


def _race_memslots(npages: int) -> KvmMemslots:
    # One memslot of npages from GFN_BASE at HVA_BASE, shared by every world
    # of that size (nothing in a race scenario changes a memslot).
    if npages not in _RACE_MEMSLOTS:
        _RACE_MEMSLOTS[npages] = KvmMemslots([KvmMemorySlot(0, GFN_BASE, npages, HVA_BASE)])
    return _RACE_MEMSLOTS[npages]


class IrqsOff(RCU):
    """Interrupts disabled on a CPU, as the grace period that frees page tables sees it.

    A CPU with interrupts off cannot take the IPI (or pass the quiescent state)
    that ends the grace period, so ``synchronize_rcu`` waits for it; the model
    names the read section after what the walker really does.
    """

    __slots__ = ()
    _rl, _ru, _sync = "local_irq_save", "local_irq_restore", "synchronize_rcu"


class Shown(NamedTuple):
    """A piece of shared state: full value for the state key, short text for tables."""

    text: str
    state: tuple


class HostLevelWorld(KvmState, World):
    """One host mm, one VM with one memslot, ``mmu_lock`` and the IRQs-off domain.

    ``npages`` pages from ``GFN_BASE`` at ``HVA_BASE``; ``backing`` populates
    the host around ``FAULT_HVA`` (``"4K"``: one 4K page there; ``"2M"``: the
    THP that covers it); ``kvm_maps`` lists levels KVM already maps
    ``FAULT_GFN`` at (consistent with the host); ``subscribe`` registers
    KVM's MMU notifier on the mm.
    """

    def __init__(self, npages: int = 512, backing: str = "4K", kvm_maps: tuple = (),
                 subscribe: bool = True, watch: tuple = ()):
        World.__init__(self)
        self.mmu_lock = self.rwlock("mmu_lock")
        self.rcu = self._register(IrqsOff(self, "irqs"))
        self.mm = HostMm()
        self.npages = npages
        self.init_kvm_state(_race_memslots(npages))
        host_populate(self.mm, FAULT_HVA, 1, backing)
        for level in kvm_maps:
            pfn = host_translation(self.mm, FAULT_HVA)[0]
            mask = KVM_PAGES_PER_HPAGE(level) - 1
            self.mappings.install(FAULT_GFN, pfn & ~mask, level)
        if subscribe:
            self.mm.notifier_subscriptions.append(kvm_mmu_notifier_ops)
        self.watch = watch

    # The memslots are constant configuration, kept outside the instance: the
    # explorer's snapshot engine then neither copies them on every save nor
    # sees actors (a KvmPageFault, a walk's ``slot`` argument) hold an object
    # from inside the world across a step.
    @property
    def memslots(self) -> KvmMemslots:
        return _race_memslots(self.npages)

    @memslots.setter
    def memslots(self, value: KvmMemslots) -> None:
        if value is not _race_memslots(self.npages):
            raise AttributeError("a HostLevelWorld's memslots are constant")

    @property
    def slot(self) -> KvmMemorySlot:
        return self.memslots.slots[0]

    def step(self, label: str, fn=None):
        """One indivisible step, as the explorer runs it."""
        return (yield from explorer_step(label, fn))

    # -- what the tables show, and what the state key holds ------------------
    def host_text(self) -> str:
        parts = []
        for table_level in self.watch:
            ptr = self.mm.entry_ptr(FAULT_HVA, table_level)
            if ptr is not None:
                entry = self.mm.mem.peek(ptr)
                parts.append(f"{TABLE_NAMES[table_level]}: {describe_entry(entry, table_level)}")
        freed = [p for p in self.mm.mem.pages.values() if p.freed and p.kind == "table"]
        if freed:
            parts.append("freed " + ", ".join(f"{TABLE_NAMES[p.level]} table @{p.pfn:#x}"
                                              for p in freed))
        for bad in self.mm.mem.bad_reads:
            parts.append(f"BAD READ: {bad}")
        return "; ".join(parts) or "-"

    def maps_text(self) -> str:
        return ", ".join(f"gfn {b:#x}->pfn {p:#x} {level_name(lv)}"
                         for b, p, lv in self.mappings.items()) or "nothing"

    def snapshot_extra(self):
        inval = self.invalidate_summary()
        if self.warnings:
            inval += "; " + "; ".join(self.warnings)
        return {"host": Shown(self.host_text(), self.mm.snapshot()),
                "invalidation": Shown(inval, self.kvm_snapshot()),
                "KVM maps": Shown(self.maps_text(), self.mappings.snapshot())}

    def describe(self, name, value):
        if isinstance(value, Shown):
            return value.text
        return super().describe(name, value)


# --------------------------------------------------------------------------
# Checks

def no_bad_reads(w: HostLevelWorld) -> bool:
    """Every page-table read so far hit a live table of the expected level."""
    return not w.mm.mem.bad_reads


def kvm_maps_what_host_maps(w: HostLevelWorld) -> bool:
    """Every KVM mapping translates each of its frames to the host's current page."""
    slot = w.slot
    for base, pfn, level in w.mappings.items():
        hva = slot.userspace_addr + ((base - slot.base_gfn) << PAGE_SHIFT)
        if not host_maps_range(w.mm, hva, KVM_PAGES_PER_HPAGE(level), pfn):
            return False
    return True


def no_kernel_warnings(w: HostLevelWorld) -> bool:
    """No VM_BUG_ON, WARN or lockdep report was recorded."""
    return not w.warnings


NO_BAD_READS = Invariant("no bad page-table read", no_bad_reads)
KVM_MATCHES_HOST = Invariant("KVM maps what the host maps", kvm_maps_what_host_maps)
NO_WARNINGS = Invariant("no kernel warning", no_kernel_warnings)


# --------------------------------------------------------------------------
# Walkers: the kernel's, and two that each break one of its two rules

def walker(w: HostLevelWorld):
    """host_pfn_mapping_level() as the kernel has it: IRQs off, each level read once."""
    return (yield from host_pfn_mapping_level.steps(w, FAULT_GFN, w.slot))


def deref(kvm, ptr, table_level: int):
    """A plain ``*pXdp``: the shared entry read again, as one step."""
    name = TABLE_NAMES[table_level].lower()
    return (yield from kvm.step(f"*{name}p (re-read)",
                                lambda: Hex(kvm.mm.mem.load(ptr, table_level))))


def walker_rereading(w: HostLevelWorld):
    """UNSAFE: the same walk passing pointers into the shared tables, so every use re-reads."""
    hva = FAULT_HVA
    yield from local_irq_save(w)
    pgdp = pgd_offset(w.mm, hva)
    level = PG_LEVEL_4K
    if not pgd_none((yield from READ_ONCE(w, pgdp, PGD))):
        pudp = pud_offset((yield from deref(w, pgdp, PGD)), hva)
        if not pud_none((yield from READ_ONCE(w, pudp, PUD))) and \
                pud_present((yield from deref(w, pudp, PUD))):
            if pud_leaf((yield from deref(w, pudp, PUD))):
                level = PG_LEVEL_1G
            else:
                # pmd_offset(pudp, hva) dereferences *pudp once more.
                pmdp = pmd_offset((yield from deref(w, pudp, PUD)), hva)
                pmd = yield from READ_ONCE(w, pmdp, PMD)
                if not pmd_none(pmd) and pmd_present(pmd) and pmd_leaf(pmd):
                    level = PG_LEVEL_2M
    yield from local_irq_restore(w)
    return level


def walker_irqs_on(w: HostLevelWorld):
    """UNSAFE: each level read once, but with interrupts on: a table may be freed mid-walk."""
    return (yield from _host_mapping_level_walk(w, FAULT_HVA))


def host_promotes_pud(w: HostLevelWorld):
    """The host replaces the PMD table under the PUD with a 1 GiB page, frees the old table."""
    return (yield from collapse_huge_page.steps(w, HVA_BASE, PG_LEVEL_1G))


def _walk_result_is_a_real_level(w, results) -> bool | str:
    level = results["A"]
    if level in (PG_LEVEL_4K, PG_LEVEL_1G):
        return True
    return f"walker returned {level_name(level)}, a level the host never had"


WALKERS = {"read once, IRQs off": walker, "re-reads entries": walker_rereading,
           "IRQs on": walker_irqs_on}


def walk_vs_promotion(which: str = "read once, IRQs off") -> Scenario:
    """The host promotes the PUD to 1G while ``which`` walker reads it (R2.3)."""
    fn = WALKERS[which]
    return Scenario(
        name=f"walk ({which}) vs PUD promotion",
        world=lambda: HostLevelWorld(npages=KVM_PAGES_PER_HPAGE(PG_LEVEL_1G), subscribe=False,
                                     watch=(PUD,)),
        actors=[Actor("A", f"walker: {which}", fn),
                Actor("B", "host: promote PUD to 1G", host_promotes_pud)],
        invariants=[NO_BAD_READS],
        final_check=_walk_result_is_a_real_level,
    )


# --------------------------------------------------------------------------
# Faults: rule 1 and two ways to get it wrong

def _fault(w: HostLevelWorld) -> KvmPageFault:
    return KvmPageFault(FAULT_GFN, w.slot)


def fault_rule1(w: HostLevelWorld):
    """Rule 1 (the kernel's fault path): snapshot, lookup, lock, check, consume."""
    return ret_pf_name((yield from kvm_tdp_mmu_page_fault.steps(w, _fault(w))))


def fault_no_check(w: HostLevelWorld):
    """UNSAFE: consumes the pfn and level under mmu_lock without is_page_fault_stale()."""
    fault = _fault(w)
    r = yield from kvm_mmu_faultin_pfn.steps(w, fault)
    if r != RET_PF_CONTINUE:
        return ret_pf_name(r)
    yield from w.mmu_lock.read_lock()
    r = yield from kvm_tdp_mmu_map.steps(w, fault)
    yield from w.mmu_lock.read_unlock()
    return ret_pf_name(r)


def fault_check_then_relock(w: HostLevelWorld):
    """UNSAFE: checks under mmu_lock, drops it, consumes under a second hold."""
    fault = _fault(w)
    r = yield from kvm_mmu_faultin_pfn.steps(w, fault)
    if r != RET_PF_CONTINUE:
        return ret_pf_name(r)
    yield from w.mmu_lock.read_lock()
    stale = yield from w.step("is_page_fault_stale?", lambda: bool(
        mmu_invalidate_retry_gfn(w, fault.mmu_seq, fault.gfn)))
    yield from w.mmu_lock.read_unlock()
    if stale:
        return ret_pf_name(RET_PF_RETRY)
    yield from w.mmu_lock.read_lock()
    r = yield from kvm_tdp_mmu_map.steps(w, fault)
    yield from w.mmu_lock.read_unlock()
    return ret_pf_name(r)


FAULTS = {"rule 1": fault_rule1, "no check": fault_no_check,
          "check, unlock, relock": fault_check_then_relock}


def host_migrates(w: HostLevelWorld):
    """The host migrates the 4K page the vCPU faults on."""
    return (yield from migrate_page.steps(w, FAULT_HVA))


def host_collapses(w: HostLevelWorld):
    """khugepaged collapses the 2M around the faulting page into a THP."""
    return (yield from collapse_huge_page.steps(w, HVA_BASE, PG_LEVEL_2M))


HOSTS = {"migrate": (host_migrates, "host: migrate the page", "4K"),
         "collapse": (host_collapses, "host: khugepaged collapse 2M", "4K")}


def fault_vs_host(consumer: str = "rule 1", host: str = "migrate") -> Scenario:
    """A vCPU fault (``consumer``) races the host changing the page (``host``)."""
    fn = FAULTS[consumer]
    host_fn, host_title, backing = HOSTS[host]
    return Scenario(
        name=f"fault ({consumer}) vs {host}",
        world=lambda: HostLevelWorld(backing=backing, watch=(PMD, PTE)),
        actors=[Actor("A", f"vCPU fault: {consumer}", fn), Actor("B", host_title, host_fn)],
        invariants=[KVM_MATCHES_HOST, NO_WARNINGS],
    )


# --------------------------------------------------------------------------
# Rule 2: hold mmu_lock and be sure no invalidation is in progress

def consume_under_lock(w: HostLevelWorld, checked: bool = True):
    """Rule 2: under one mmu_lock hold, check for an invalidation, look up, install."""
    fault = _fault(w)
    r = RET_PF_RETRY
    yield from w.mmu_lock.read_lock()
    fault.mmu_seq = yield from w.step("mmu_seq = mmu_invalidate_seq",
                                      lambda: w.mmu_invalidate_seq)
    # With the snapshot taken under the lock, the check can only catch an
    # invalidation of this gfn that is in progress right now.
    busy = checked and (yield from w.step("invalidation in progress for gfn?", lambda: bool(
        mmu_invalidate_retry_gfn(w, fault.mmu_seq, fault.gfn))))
    if not busy:
        fault.pfn = yield from w.step("pfn = host translation", lambda: hva_to_pfn(w, fault.hva))
        if fault.pfn is not None:
            r = yield from kvm_tdp_mmu_map.steps(w, fault)
    yield from w.mmu_lock.read_unlock()
    return ret_pf_name(r)


def rule2_checked(w: HostLevelWorld):
    """Rule 2 with the explicit check."""
    return (yield from consume_under_lock(w, checked=True))


def rule2_unchecked(w: HostLevelWorld):
    """UNSAFE: holds mmu_lock but never asks whether an invalidation is in progress."""
    return (yield from consume_under_lock(w, checked=False))


def rule2_vs_migration(checked: bool = True) -> Scenario:
    """Rule 2 (``checked``) or its unsafe variant, against a host migration."""
    which = "checked" if checked else "unchecked"
    fn = rule2_checked if checked else rule2_unchecked
    return Scenario(
        name=f"rule 2 ({which}) vs migrate",
        world=lambda: HostLevelWorld(backing="4K", watch=(PTE,)),
        actors=[Actor("A", f"KVM under mmu_lock: {which}", fn),
                Actor("B", "host: migrate the page", host_migrates)],
        invariants=[KVM_MATCHES_HOST, NO_WARNINGS],
    )


def recover_huge_page(w: HostLevelWorld):
    """Rule 2 by an existing mapping: promote a 4K mapping in place if the host allows 2M.

    An abstraction of the TDP MMU's huge-page recovery: the 4K leaf KVM still
    has proves no invalidation of this gfn is in progress, since starting one
    would have zapped it under mmu_lock held for write.
    """
    yield from w.mmu_lock.read_lock()
    found = yield from w.step("existing 4K mapping for gfn?", lambda: w.mappings.lookup(FAULT_GFN))
    outcome = "no 4K mapping: nothing to do"
    if found is not None and found[2] == PG_LEVEL_4K:
        level = yield from kvm_mmu_max_mapping_level.steps(w, w.slot, FAULT_GFN)
        outcome = f"host allows {level_name(level)}: kept 4K"
        if level >= PG_LEVEL_2M:
            base = gfn_round_for_level(FAULT_GFN, PG_LEVEL_2M)
            pfn = found[1] & ~(KVM_PAGES_PER_HPAGE(PG_LEVEL_2M) - 1)
            yield from w.step(f"install gfn {base:#x} -> pfn {pfn:#x} (2M)",
                              lambda: w.mappings.install(base, pfn, PG_LEVEL_2M))
            outcome = "promoted to 2M"
    yield from w.mmu_lock.read_unlock()
    return outcome


def host_splits(w: HostLevelWorld):
    """The host splits the THP that backs the faulting page."""
    return (yield from __split_huge_pmd.steps(w, HVA_BASE))


def recovery_vs_split() -> Scenario:
    """Rule 2 via an existing 4K mapping, against the host splitting its THP."""
    return Scenario(
        name="huge page recovery (existing mapping) vs split",
        world=lambda: HostLevelWorld(backing="2M", kvm_maps=(PG_LEVEL_4K,), watch=(PMD,)),
        actors=[Actor("A", "KVM: recover huge page", recover_huge_page),
                Actor("B", "host: split the THP", host_splits)],
        invariants=[KVM_MATCHES_HOST, NO_WARNINGS],
    )


# --------------------------------------------------------------------------
# Rule 3: a hint that installs nothing

def zap_if_host_huge(w: HostLevelWorld):
    """Rule 3: read the host level with no lock and no check; use it only to zap."""
    hint = yield from host_pfn_mapping_level.steps(w, FAULT_GFN, w.slot)
    yield from w.mmu_lock.read_lock()
    found = yield from w.step("existing mapping for gfn?", lambda: w.mappings.lookup(FAULT_GFN))
    outcome = f"hint {level_name(hint)}: nothing to zap"
    if found is not None and found[2] < hint:
        def zap():
            w.mappings.zap(found[0], found[0] + KVM_PAGES_PER_HPAGE(found[2]))
            now = host_translation(w.mm, FAULT_HVA)
            return PG_LEVEL_4K if now is None else now[1]
        now = yield from w.step("zap the small mapping", zap)
        fresh = "fresh" if now == hint else f"stale, host now {level_name(now)}"
        outcome = f"hint {level_name(hint)} ({fresh}): zapped"
    elif found is not None:
        outcome = f"hint {level_name(hint)}: kept {level_name(found[2])}"
    yield from w.mmu_lock.read_unlock()
    return outcome


def hint_vs_split() -> Scenario:
    """Rule 3: a zap decided from an unchecked host level, against a THP split."""
    return Scenario(
        name="hint-only zap vs split",
        world=lambda: HostLevelWorld(backing="2M", kvm_maps=(PG_LEVEL_4K,), watch=(PMD,)),
        actors=[Actor("A", "KVM: zap if the host is huge", zap_if_host_huge),
                Actor("B", "host: split the THP", host_splits)],
        invariants=[KVM_MATCHES_HOST, NO_WARNINGS],
    )


# --------------------------------------------------------------------------
# The catalogue the chapter, the tests and tools/bench_ch2.py run

#: name -> (scenario factory, expected: True if it must hold everywhere).
SCENARIOS = {
    "walk: read once, IRQs off": (lambda: walk_vs_promotion("read once, IRQs off"), True),
    "walk: re-reads entries": (lambda: walk_vs_promotion("re-reads entries"), False),
    "walk: IRQs on": (lambda: walk_vs_promotion("IRQs on"), False),
    "rule 1 vs migrate": (lambda: fault_vs_host("rule 1", "migrate"), True),
    "rule 1 vs collapse": (lambda: fault_vs_host("rule 1", "collapse"), True),
    "no check vs migrate (R2.1)": (lambda: fault_vs_host("no check", "migrate"), False),
    "no check vs collapse (R2.2)": (lambda: fault_vs_host("no check", "collapse"), False),
    "check, unlock, relock vs migrate": (
        lambda: fault_vs_host("check, unlock, relock", "migrate"), False),
    "rule 2 checked vs migrate": (lambda: rule2_vs_migration(True), True),
    "rule 2 unchecked vs migrate": (lambda: rule2_vs_migration(False), False),
    "rule 2 existing mapping vs split": (recovery_vs_split, True),
    "rule 3 hint vs split": (hint_vs_split, True),
}


def final_outcomes(scenario: Scenario, **explore_kw) -> tuple:
    """Explore ``scenario`` fully; return ``(result, Counter of the actors' results)``.

    The Counter counts distinct final states by what the actors returned, so
    a chapter can say how often (in how many distinct endings) each outcome
    happens.
    """
    from .explorer import explore

    seen = Counter()
    inner = scenario.final_check

    def collect(world, results):
        seen[tuple(sorted(results.items()))] += 1
        return True if inner is None else inner(world, results)

    probe = Scenario(scenario.name, scenario.world, scenario.actors, scenario.invariants,
                     final_check=collect, description=scenario.description)
    result = explore(probe, stop_at_first=False, **explore_kw)
    return result, seen
