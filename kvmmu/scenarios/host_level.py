"""Chapter 2's races: host_pfn_mapping_level() used safely and unsafely, on one VM.

Every scenario here runs on a :class:`kvmmu.kvm_host.Kvm` built by
:func:`host_level_world` (``kvm_create_vm`` + ``set_memory_region`` +
``host_populate``): a KVM path on CPU A, the host's mm on CPU B.  The KVM
code the actors run is the model's own (:mod:`kvmmu.mmu_internal`,
:mod:`kvmmu.mmu`, :mod:`kvmmu.tdp_mmu`, :mod:`kvmmu.kvm_main`); an *unsafe*
variant is a small actor here that composes those functions and leaves out
exactly one rule.

The checks, after every step:

- ``no bad page-table read``: a walker only ever reads a live page table of
  the level it expects (not a data page, not a freed table);
- ``KVM maps what the host maps``: every live leaf SPTE of every root
  translates each of its guest frames to the page the host maps at that
  address *now*.  The host changes a mapping only between
  ``invalidate_range_start`` (which zapped KVM's SPTEs) and
  ``invalidate_range_end``, so a leaf that disagrees with the host is a
  guest reading or writing memory the host has given to something else;
- ``no kernel warning``: no VM_BUG_ON, WARN or lockdep report was recorded.

What the chapter does not teach runs as one step (``zoom``, see
:mod:`kvmmu.cpu`): the TDP MMU's zap in the notifier
(``kvm_unmap_gfn_range``), the freeing of a removed table
(``handle_removed_pt``) and the search for a leaf under a table
(``tdp_mmu_make_huge_spte``); for the walker scenarios, KVM's notifier
callbacks too (the walker takes no KVM lock).  The host walk and the
invalidation protocol keep one step per access.

The set-up helpers for the widget, the figure and the exercises are here as
well: :func:`make_host_vm` (one memslot, a host backing, one host event).
"""
from collections import Counter
from typing import NamedTuple

from ..checks import check_bool, check_choice, check_int
from ..cpu import run_alone
from ..errno import RET_PF_CONTINUE, RET_PF_RETRY, ret_pf_name
from ..explorer import Actor, Invariant, Scenario, explore, step
from ..host_mm import (BACKINGS, PGD, PMD, PTE, PUD, TABLE_NAMES, Hex, __split_huge_pmd,
                       collapse_huge_page, describe_entry, host_maps_range, host_populate,
                       migrate_page, pgd_none, pgd_offset, pmd_leaf, pmd_none, pmd_offset,
                       pmd_present, pud_leaf, pud_none, pud_offset, pud_present)
from ..kvm_host import (Kvm, KvmVcpu, hva_to_pfn, is_error_pfn, kvm_vcpu_gfn_to_memslot,
                        mmu_invalidate_retry_gfn)
from ..kvm_main import kvm_create_vm, kvm_vm_ioctl_create_vcpu, set_memory_region
from ..levels import (KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K,
                      level_name)
from ..memslots import (GFN_MAX, KVM_MEM_LOG_DIRTY_PAGES, KvmMemorySlot, __gfn_to_hva_memslot,
                        kvm_mmu_gfn_disallow_lpage)
from ..mmu import (describe_found_slot, is_page_fault_stale, kvm_mmu_do_page_fault,
                   kvm_mmu_faultin_pfn, kvm_mmu_finish_page_fault, kvm_mmu_page_fault,
                   kvm_mmu_recover_huge_pages, kvm_mmu_reload, kvm_mmu_zap_collapsible_sptes)
from ..mmu_internal import (KvmPageFault, _host_mapping_level_walk, _read_once,
                            host_pfn_mapping_level, local_irq_restore, local_irq_save)
from ..pferr import PFERR_GUEST_FINAL_MASK
from ..spte import SHADOW_NONPRESENT_VALUE
from ..tdp_mmu import kvm_tdp_mmu_map
from . import ScenarioEntry

__all__ = [
    "GFN_BASE", "HVA_BASE", "SLOT_ID", "FAULT_GFN", "FAULT_HVA", "FAULT_GPA", "ZOOM",
    "WALK_ZOOM", "race_slot", "host_level_world", "kvm_leaf_of", "no_bad_reads",
    "kvm_maps_what_host_maps", "no_kernel_warnings", "NO_BAD_READS", "KVM_MATCHES_HOST",
    "NO_WARNINGS", "read_entry", "walker", "walker_rereading", "walker_irqs_on",
    "host_promotes_pud", "WALKERS", "walk_vs_promotion", "fault_rule1", "fault_no_check",
    "fault_check_then_relock", "FAULTS", "host_migrates", "host_collapses", "host_splits",
    "HOSTS", "fault_vs_host", "consume_under_lock", "rule2_checked", "rule2_unchecked",
    "rule2_vs_migration", "recover_huge_pages", "recovery_vs_split", "zap_collapsible",
    "hint_vs_split", "recovery_ending", "zap_ending", "final_outcomes", "HOST_EVENTS",
    "make_host_vm", "SCENARIOS",
]

#: The guest frames and host addresses every scenario uses: both 1 GiB aligned.
GFN_BASE = 0x100000
HVA_BASE = 0x7F0000000000
#: The memslot's id (address space 0).
SLOT_ID = 0
#: The frame the vCPU faults on: 0x23 pages into the first 2 MiB.
FAULT_GFN = GFN_BASE + 0x23
FAULT_HVA = HVA_BASE + (0x23 << PAGE_SHIFT)
FAULT_GPA = FAULT_GFN << PAGE_SHIFT
#: A guest read of the final gpa: the error code of the vCPU's EPT violation.
_READ = PFERR_GUEST_FINAL_MASK

#: What every scenario of the chapter runs as one step (see the module docstring).
ZOOM = frozenset({"kvm_unmap_gfn_range", "handle_removed_pt", "tdp_mmu_make_huge_spte"})
#: The walker scenarios also zoom out KVM's notifier callbacks: the walker takes no
#: KVM lock, so what KVM does about the host's change cannot interleave with it.
WALK_ZOOM = ZOOM | {"kvm_mmu_notifier_invalidate_range_start",
                    "kvm_mmu_notifier_invalidate_range_end"}

_PAGES_2M = KVM_PAGES_PER_HPAGE(PG_LEVEL_2M)
_PAGES_1G = KVM_PAGES_PER_HPAGE(PG_LEVEL_1G)


def race_slot(npages: int = _PAGES_2M) -> KvmMemorySlot:
    """The memslot of every race world of ``npages`` pages: gfns from GFN_BASE at HVA_BASE.

    A value: an actor is given it as KVM's callers are given the slot they
    already looked up, and it equals the slot the world's memslots hold.
    """
    check_int("npages", npages, 1, _PAGES_1G)
    return KvmMemorySlot(SLOT_ID, GFN_BASE, npages, HVA_BASE)


# --------------------------------------------------------------------------
# The world, and what traces show of it

def host_level_world(npages: int = _PAGES_2M, backing: str = "4K", kvm_maps=None,
                     touched: bool = True, watch: tuple = (PMD, PTE),
                     zoom: frozenset = ZOOM) -> Kvm:
    """A VM with one vCPU and one memslot of ``npages`` pages, the host backing the fault.

    ``backing`` populates the host at FAULT_HVA (``"4K"``: one small page;
    ``"2M"``: the THP around it).  ``touched``: the guest has already
    touched the next page, so KVM's page tables down to the last level
    exist (a fault only has to fill in its leaf).  ``kvm_maps``: a level at
    which KVM already maps FAULT_GFN (a fault with that ``max_level``, as
    dirty logging would have made it), or None.  ``watch``: the host table
    levels the traces show.  ``zoom``: what runs as one step.
    """
    check_int("npages", npages, 1, _PAGES_1G)
    check_choice("backing", backing, tuple(BACKINGS))
    check_bool("touched", touched)
    if kvm_maps is not None:
        check_choice("kvm_maps", kvm_maps, (PG_LEVEL_4K, PG_LEVEL_2M))
    kvm = kvm_create_vm(zoom=zoom)
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    set_memory_region(kvm, SLOT_ID, GFN_BASE << PAGE_SHIFT, npages << PAGE_SHIFT, HVA_BASE)
    if kvm.kvm_memslots().slots != (race_slot(npages),):
        raise AssertionError("the world's memslot is not race_slot(npages)")
    host_populate(kvm.mm, FAULT_HVA, 1, backing)
    kvm_mmu_reload(vcpu)
    if touched:
        host_populate(kvm.mm, FAULT_HVA + (1 << PAGE_SHIFT), 1, backing)
        run_alone(kvm, kvm_mmu_page_fault(vcpu, FAULT_GPA + (1 << PAGE_SHIFT), _READ))
    if kvm_maps is not None:
        run_alone(kvm, kvm_mmu_do_page_fault(vcpu, FAULT_GPA, _READ, False, max_level=kvm_maps))
    kvm.watch("mmu_lock", lambda k: k.mmu_lock._show(), only=True)
    kvm.watch("irqs", _irqs_text)
    kvm.watch("invalidation", _invalidation_text)
    kvm.watch("host", lambda k: _host_text(k, watch))
    kvm.watch("KVM maps", _maps_text)
    return kvm


def _irqs_text(kvm: Kvm) -> str:
    readers = kvm.mm.rcu.readers
    if not readers:
        return "on"
    waiters = sorted({w for _c, _i, ws in readers for w in ws})
    text = "off on " + ", ".join(c for c, _i, _ws in readers)
    return text + (f" ({', '.join(waiters)} waits to free)" if waiters else "")


def _invalidation_text(kvm: Kvm) -> str:
    text = kvm.fields._show()
    return text + "".join(f"; {w}" for w in kvm.warnings)


def _host_text(kvm: Kvm, watch: tuple) -> str:
    mm, parts = kvm.mm, []
    for table_level in watch:
        ptr = mm.entry_ptr(FAULT_HVA, table_level)
        if ptr is not None:
            parts.append(f"{TABLE_NAMES[table_level]}: "
                         f"{describe_entry(mm.mem.peek(ptr), table_level)}")
    freed = [p for p in mm.mem.pages.values() if p.freed and p.kind == "table"]
    if freed:
        parts.append("freed " + ", ".join(f"{TABLE_NAMES[p.level]} table @{p.pfn:#x}"
                                          for p in sorted(freed, key=lambda p: p.pfn)))
    parts += [f"BAD READ: {bad}" for bad in mm.mem.bad_reads]
    return "; ".join(parts) or "-"


def _leaves(kvm: Kvm) -> list:
    # Every live leaf SPTE of every root: (gfn, level, pfn), sorted.
    return sorted({leaf for root in kvm.ept.roots for leaf in kvm.ept.live_leaves(root)})


def _maps_text(kvm: Kvm) -> str:
    return ", ".join(f"gfn {gfn:#x}->pfn {pfn:#x} {level_name(level)}"
                     for gfn, level, pfn in _leaves(kvm)) or "nothing"


def kvm_leaf_of(kvm: Kvm, gfn: int) -> tuple | None:
    """The live leaf SPTE mapping ``gfn`` in any root, as ``(level, pfn of gfn)``; else None."""
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    check_int("gfn", gfn, 0, GFN_MAX)
    for base, level, pfn in _leaves(kvm):
        if base <= gfn < base + KVM_PAGES_PER_HPAGE(level):
            return level, Hex(pfn + gfn - base)
    return None


# --------------------------------------------------------------------------
# The checks

def _check_world(w) -> Kvm:
    if not isinstance(w, Kvm):
        raise TypeError(f"the world must be a Kvm, got {type(w).__name__}")
    return w


def no_bad_reads(w: Kvm) -> bool:
    """Every host page-table read so far hit a live table of the expected level."""
    return not _check_world(w).mm.mem.bad_reads


def kvm_maps_what_host_maps(w: Kvm) -> bool:
    """Every live leaf SPTE translates each of its frames to the host's current page."""
    slots = _check_world(w).kvm_memslots()
    for gfn, level, pfn in _leaves(w):
        slot = slots.gfn_to_memslot(gfn)
        if slot is None:
            return False
        hva = __gfn_to_hva_memslot(slot, gfn)
        if not host_maps_range(w.mm, hva, KVM_PAGES_PER_HPAGE(level), pfn):
            return False
    return True


def no_kernel_warnings(w: Kvm) -> bool:
    """No VM_BUG_ON, WARN or lockdep report was recorded."""
    return not _check_world(w).warnings


NO_BAD_READS = Invariant("no bad page-table read", no_bad_reads,
                         reads=[("host memory", "bad_reads")])
KVM_MATCHES_HOST = Invariant("KVM maps what the host maps", kvm_maps_what_host_maps,
                             reads=["EPT", ("memslots", "slots"), "host memory"])
NO_WARNINGS = Invariant("no kernel warning", no_kernel_warnings, reads=[("kvm", "warnings")])


# --------------------------------------------------------------------------
# Walkers: the kernel's, and two that each break one of its two rules

def walker(w: Kvm):
    """host_pfn_mapping_level() as the kernel has it: IRQs off, each level read once."""
    _check_world(w)
    return (yield from host_pfn_mapping_level(w, FAULT_GFN, race_slot(_PAGES_1G)))


def read_entry(kvm: Kvm, ptr, table_level: int, again: bool = False):
    """Load one host page-table entry, as one step: ``READ_ONCE(*pXdp)``, or a plain re-read.

    ``again`` is a plain ``*pXdp`` of an entry already read: what a walk
    that passes pointers into the shared tables does at every use.
    """
    _check_world(kvm)
    check_bool("again", again)
    if not again:
        return (yield from _read_once(kvm, ptr, table_level))
    name = TABLE_NAMES[table_level].lower()
    return (yield from step(f"*{name}p (re-read)",
                            lambda: Hex(kvm.mm.mem.load(ptr, table_level))))


def walker_rereading(w: Kvm):
    """UNSAFE: the walk passing pointers into the shared tables, so every use re-reads."""
    _check_world(w)
    hva = FAULT_HVA
    yield from local_irq_save(w)
    pgdp = pgd_offset(w.mm, hva)
    level = PG_LEVEL_4K
    if not pgd_none((yield from read_entry(w, pgdp, PGD))):
        pudp = pud_offset((yield from read_entry(w, pgdp, PGD, again=True)), hva)
        if not pud_none((yield from read_entry(w, pudp, PUD))) and \
                pud_present((yield from read_entry(w, pudp, PUD, again=True))):
            if pud_leaf((yield from read_entry(w, pudp, PUD, again=True))):
                level = PG_LEVEL_1G
            else:
                # pmd_offset(pudp, hva) dereferences *pudp once more.
                pmdp = pmd_offset((yield from read_entry(w, pudp, PUD, again=True)), hva)
                pmd = yield from read_entry(w, pmdp, PMD)
                if not pmd_none(pmd) and pmd_present(pmd) and pmd_leaf(pmd):
                    level = PG_LEVEL_2M
    yield from local_irq_restore(w)
    return level


def walker_irqs_on(w: Kvm):
    """UNSAFE: each level read once, but interrupts stay on: a table may be freed mid-walk."""
    _check_world(w)
    return (yield from _host_mapping_level_walk(w, FAULT_HVA))


def host_promotes_pud(w: Kvm):
    """The host replaces the PMD table under the PUD with a 1 GiB page, frees the old table."""
    _check_world(w)
    return (yield from collapse_huge_page(w.mm, HVA_BASE, PG_LEVEL_1G))


def _walk_result_is_a_real_level(w, results) -> bool | str:
    level = results["A"]
    if level in (PG_LEVEL_4K, PG_LEVEL_1G):
        return True
    return f"walker returned {level_name(level)}, a level the host never had"


WALKERS = {"read once, IRQs off": walker, "re-reads entries": walker_rereading,
           "IRQs on": walker_irqs_on}


def walk_vs_promotion(which: str = "read once, IRQs off") -> Scenario:
    """The host promotes the PUD to 1G while the ``which`` walker reads it."""
    check_choice("which", which, tuple(WALKERS))
    return Scenario(
        name=f"walk ({which}) vs PUD promotion",
        world=lambda: host_level_world(npages=_PAGES_1G, touched=False, watch=(PUD,),
                                       zoom=WALK_ZOOM),
        actors=[Actor("A", f"walker: {which}", WALKERS[which]),
                Actor("B", "host: promote PUD to 1G", host_promotes_pud)],
        invariants=[NO_BAD_READS],
        final_check=_walk_result_is_a_real_level,
    )


# --------------------------------------------------------------------------
# Faults: rule 1 and two ways to get it wrong

def _vcpu(w: Kvm) -> KvmVcpu:
    # A handle: it names vCPU 0 and reads nothing.
    return KvmVcpu(w, 0)


class _Lookup(NamedTuple):
    # What the memslot lookup step found, printed as kvm_mmu_do_page_fault's is.
    slot: object
    root: object

    def __repr__(self) -> str:
        return describe_found_slot(self.slot)


def _fault_with_slot(vcpu: KvmVcpu):
    # The part of kvm_mmu_do_page_fault() before the handler: build the fault,
    # look up its memslot and the vCPU's root (one step).
    fault = KvmPageFault(addr=FAULT_GPA, error_code=_READ, prefetch=False)
    fault.slot, fault.root = yield from step(
        "memslot lookup", lambda: _Lookup(kvm_vcpu_gfn_to_memslot(vcpu, FAULT_GFN), vcpu.root))
    return fault


def _faultin(w: Kvm):
    # The fault's part before mmu_lock, as the kernel has it: the memslot
    # lookup of kvm_mmu_do_page_fault(), then kvm_mmu_faultin_pfn() (the
    # snapshot, the pre-checks, gup).  Returns (vcpu, fault, RET_PF_*).
    vcpu = _vcpu(w)
    fault = yield from _fault_with_slot(vcpu)
    return vcpu, fault, (yield from kvm_mmu_faultin_pfn(vcpu, fault))


def fault_rule1(w: Kvm):
    """Rule 1, the kernel's fault path: snapshot, look up, lock, check, consume."""
    _check_world(w)
    return ret_pf_name((yield from kvm_mmu_page_fault(_vcpu(w), FAULT_GPA, _READ)))


def fault_no_check(w: Kvm):
    """UNSAFE: consumes the pfn and the host level under mmu_lock without is_page_fault_stale()."""
    _check_world(w)
    vcpu, fault, r = yield from _faultin(w)
    if r != RET_PF_CONTINUE:
        return ret_pf_name(r)
    yield from w.mmu_lock.read_lock()
    r = yield from kvm_tdp_mmu_map(vcpu, fault)
    yield from w.mmu_lock.read_unlock()
    yield from kvm_mmu_finish_page_fault(vcpu, fault, r)
    return ret_pf_name(r)


def fault_check_then_relock(w: Kvm):
    """UNSAFE: checks under mmu_lock, drops it, consumes under a second hold."""
    _check_world(w)
    vcpu, fault, r = yield from _faultin(w)
    if r != RET_PF_CONTINUE:
        return ret_pf_name(r)
    yield from w.mmu_lock.read_lock()
    stale = yield from step("is_page_fault_stale?", lambda: is_page_fault_stale(vcpu, fault))
    yield from w.mmu_lock.read_unlock()
    r = RET_PF_RETRY
    if not stale:
        yield from w.mmu_lock.read_lock()
        r = yield from kvm_tdp_mmu_map(vcpu, fault)
        yield from w.mmu_lock.read_unlock()
    yield from kvm_mmu_finish_page_fault(vcpu, fault, r)
    return ret_pf_name(r)


FAULTS = {"rule 1": fault_rule1, "no check": fault_no_check,
          "check, unlock, relock": fault_check_then_relock}


def host_migrates(w: Kvm):
    """The host migrates the 4K page the vCPU faults on."""
    _check_world(w)
    return (yield from migrate_page(w.mm, FAULT_HVA))


def host_collapses(w: Kvm):
    """khugepaged collapses the 2M around the faulting page into a THP."""
    _check_world(w)
    return (yield from collapse_huge_page(w.mm, HVA_BASE, PG_LEVEL_2M))


def host_splits(w: Kvm):
    """The host splits the THP that backs the faulting page."""
    _check_world(w)
    return (yield from __split_huge_pmd(w.mm, HVA_BASE))


#: host name -> (actor, title, backing at FAULT_HVA).
HOSTS = {"migrate": (host_migrates, "host: migrate the page", "4K"),
         "collapse": (host_collapses, "host: khugepaged collapse 2M", "4K")}


def fault_vs_host(consumer: str = "rule 1", host: str = "migrate") -> Scenario:
    """A vCPU fault (``consumer``) races the host changing the page (``host``)."""
    check_choice("consumer", consumer, tuple(FAULTS))
    check_choice("host", host, tuple(HOSTS))
    host_fn, host_title, backing = HOSTS[host]
    return Scenario(
        name=f"fault ({consumer}) vs {host}",
        world=lambda: host_level_world(backing=backing),
        actors=[Actor("A", f"vCPU fault: {consumer}", FAULTS[consumer]),
                Actor("B", host_title, host_fn)],
        invariants=[KVM_MATCHES_HOST, NO_WARNINGS],
    )


# --------------------------------------------------------------------------
# Rule 2: hold mmu_lock and be sure no invalidation is in progress

def consume_under_lock(w: Kvm, checked: bool = True):
    """Rule 2: under one mmu_lock hold, check for an invalidation, look the page up, map it.

    With the snapshot taken under the lock, the check can only catch an
    invalidation of this gfn that is in progress right now: the one thing
    that can change the host's page meanwhile.  (The lookup happens under
    the lock here; real gup may sleep and cannot, which is why the fault
    path uses rule 1.)
    """
    _check_world(w)
    check_bool("checked", checked)
    vcpu = _vcpu(w)
    fault = yield from _fault_with_slot(vcpu)
    r = RET_PF_RETRY
    yield from w.mmu_lock.read_lock()
    fault.mmu_seq = yield from step("mmu_seq = mmu_invalidate_seq",
                                    lambda: w.mmu_invalidate_seq)
    busy = checked and (yield from step("invalidation in progress for gfn?", lambda: bool(
        mmu_invalidate_retry_gfn(w, fault.mmu_seq, fault.gfn))))
    if not busy:
        hva = __gfn_to_hva_memslot(fault.slot, fault.gfn)
        pfn = yield from step("pfn = hva_to_pfn(hva)", lambda: Hex(hva_to_pfn(w, hva)))
        if not is_error_pfn(pfn):
            fault.pfn, fault.map_writable = pfn, True
            r = yield from kvm_tdp_mmu_map(vcpu, fault)
    yield from w.mmu_lock.read_unlock()
    return ret_pf_name(r)


def rule2_checked(w: Kvm):
    """Rule 2 with the explicit check for an invalidation in progress."""
    return (yield from consume_under_lock(w, checked=True))


def rule2_unchecked(w: Kvm):
    """UNSAFE: holds mmu_lock but never asks whether an invalidation is in progress."""
    return (yield from consume_under_lock(w, checked=False))


def rule2_vs_migration(checked: bool = True) -> Scenario:
    """Rule 2 (``checked``) or its unsafe variant, against a host migration."""
    check_bool("checked", checked)
    which = "checked" if checked else "unchecked"
    return Scenario(
        name=f"rule 2 ({which}) vs migrate",
        world=lambda: host_level_world(backing="4K", watch=(PTE,)),
        actors=[Actor("A", f"KVM under mmu_lock: {which}",
                      rule2_checked if checked else rule2_unchecked),
                Actor("B", "host: migrate the page", host_migrates)],
        invariants=[KVM_MATCHES_HOST, NO_WARNINGS],
    )


def recover_huge_pages(w: Kvm):
    """Rule 2 by an existing leaf: KVM recovers huge pages once dirty logging is off (6.13+).

    ``kvm_mmu_recover_huge_pages()`` on the slot, as ``kvm_mmu_slot_apply_flags()``
    calls it: the 4K leaf it builds the huge SPTE from proves that no
    invalidation of that memory is in progress.
    """
    _check_world(w)
    yield from kvm_mmu_recover_huge_pages(w, race_slot())


def _against_split(name: str, title: str, kvm_path) -> Scenario:
    # KVM maps the gfn 4K (as dirty logging made it) over the host's THP,
    # which the host splits while ``kvm_path`` runs.
    return Scenario(
        name=name,
        world=lambda: host_level_world(backing="2M", kvm_maps=PG_LEVEL_4K, touched=False,
                                       watch=(PMD,)),
        actors=[Actor("A", title, kvm_path), Actor("B", "host: split the THP", host_splits)],
        invariants=[KVM_MATCHES_HOST, NO_WARNINGS],
    )


def recovery_vs_split() -> Scenario:
    """Rule 2 via an existing 4K leaf (huge-page recovery), against the host splitting its THP."""
    return _against_split("huge page recovery (existing leaf) vs split",
                          "KVM: recover huge pages", recover_huge_pages)


# --------------------------------------------------------------------------
# Rule 3: a hint that installs nothing

def zap_collapsible(w: Kvm):
    """Rule 3: the 6.12 collapsible zap, which uses the host level only to decide to zap."""
    _check_world(w)
    yield from kvm_mmu_zap_collapsible_sptes(w, race_slot())


def hint_vs_split() -> Scenario:
    """Rule 3: a zap decided from the host level, against a THP split."""
    return _against_split("collapsible zap (hint only) vs split",
                          "KVM: zap what could be huge (6.12)", zap_collapsible)


# --------------------------------------------------------------------------
# Endings

def recovery_ending(w: Kvm, results=None) -> str:
    """How a recovery run ended: did KVM ever install the 2M leaf?

    The split zaps whatever KVM maps by the end, so the answer is in the
    TDP MMU's ledger of the leaves that appeared.
    """
    if any(level == PG_LEVEL_2M for _g, level, _p in _check_world(w).ept.installed):
        return "recovered a 2M leaf"
    return "found no 4K leaf: nothing recovered"


def zap_ending(w: Kvm, results=None) -> str:
    """How a collapsible-zap run ended: is the 4K table still linked at the 2M entry?"""
    vcpu = _vcpu(_check_world(w))
    path = w.ept.walk(vcpu.root, FAULT_GFN)
    if len(path) >= 3 and path[2][2] == PG_LEVEL_2M and path[2][1] != SHADOW_NONPRESENT_VALUE:
        return "kept the 4K table"
    return "zapped the 4K table"


def final_outcomes(scenario: Scenario, outcome=None, **explore_kw) -> tuple:
    """Explore ``scenario`` fully; return ``(result, Counter of the endings)``.

    An ending is ``outcome(world, results)`` (default: the actors' results,
    as sorted ``(letter, result)`` pairs), counted once per distinct final
    state, so a chapter can say in how many endings each outcome happens.
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, got {type(scenario).__name__}")
    if outcome is not None and not callable(outcome):
        raise TypeError("outcome must be callable or None")
    seen = Counter()
    inner = scenario.final_check

    def collect(world, results):
        key = (tuple(sorted(results.items())) if outcome is None
               else outcome(world, results))
        seen[key] += 1
        return True if inner is None else inner(world, results)

    probe = Scenario(scenario.name, scenario.world, scenario.actors, scenario.invariants,
                     final_check=collect, description=scenario.description)
    result = explore(probe, stop_at_first=False, **explore_kw)
    return result, seen


# --------------------------------------------------------------------------
# A VM for the widget, the figure and the exercises (one CPU, no race)

def _event_collapse_2m(kvm, hva):
    run_alone(kvm, collapse_huge_page(kvm.mm, hva - hva % (2 << 20), PG_LEVEL_2M))


def _event_split_2m(kvm, hva):
    run_alone(kvm, __split_huge_pmd(kvm.mm, hva - hva % (2 << 20)))


def _event_promote_1g(kvm, hva):
    run_alone(kvm, collapse_huge_page(kvm.mm, hva - hva % (1 << 30), PG_LEVEL_1G))


def _event_migrate(kvm, hva):
    run_alone(kvm, migrate_page(kvm.mm, hva))


#: Host events the widget and the exercises can apply after populating, by name.
HOST_EVENTS = {
    "none": None,
    "khugepaged collapses the 2M around it": _event_collapse_2m,
    "the host splits the THP": _event_split_2m,
    "the host promotes the 1G around it": _event_promote_1g,
    "the host migrates the page": _event_migrate,
}


def make_host_vm(base_gfn: int, npages: int, userspace_addr: int, backing: str, gfn: int,
                 event: str = "none", dirty_logging: bool = False, shadowed: bool = False,
                 nx_huge_pages: bool = False) -> Kvm:
    """A VM with one vCPU and one memslot, its host memory backed by ``backing`` around ``gfn``.

    The host is populated only around ``gfn`` (its 2 MiB for 4K backing,
    its 1 GiB otherwise), which is all the walk for ``gfn`` can see.
    ``event`` is one of :data:`HOST_EVENTS`; ``dirty_logging`` sets
    ``KVM_MEM_LOG_DIRTY_PAGES`` on the slot; ``shadowed`` calls
    ``kvm_mmu_gfn_disallow_lpage()`` for ``gfn``, as shadow paging does
    for a guest page table; ``nx_huge_pages`` turns the iTLB-multihit
    workaround on.  Raises ValueError/TypeError naming a bad argument.
    """
    check_choice("backing", backing, tuple(BACKINGS))
    check_choice("event", event, tuple(HOST_EVENTS))
    check_bool("dirty_logging", dirty_logging)
    check_bool("shadowed", shadowed)
    check_bool("nx_huge_pages", nx_huge_pages)
    flags = KVM_MEM_LOG_DIRTY_PAGES if dirty_logging else 0
    # The slot set_memory_region() will build: its checks name a bad argument.
    slot = KvmMemorySlot(SLOT_ID, base_gfn, npages, userspace_addr, flags=flags)
    hva = __gfn_to_hva_memslot(slot, gfn)
    kvm = kvm_create_vm(nx_huge_pages=nx_huge_pages)
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    r = set_memory_region(kvm, SLOT_ID, base_gfn << PAGE_SHIFT, npages << PAGE_SHIFT,
                          userspace_addr, flags=flags)
    if r:
        raise ValueError(f"KVM_SET_USER_MEMORY_REGION refused the memslot ({r})")
    if shadowed:
        kvm.kvm_memslots().replace(slot, kvm_mmu_gfn_disallow_lpage(
            kvm.kvm_memslots().slots[0], gfn))
    around = (2 << 20) if backing == "4K" else (1 << 30)
    lo = max(hva - hva % around, userspace_addr)
    hi = min(hva - hva % around + around, userspace_addr + (npages << PAGE_SHIFT))
    host_populate(kvm.mm, lo, (hi - lo) >> PAGE_SHIFT, backing)
    action = HOST_EVENTS[event]
    if action is not None:
        action(kvm, hva - hva % (1 << PAGE_SHIFT))
    kvm_mmu_reload(vcpu)
    return kvm


# --------------------------------------------------------------------------
# The catalogue the chapter, the tests and tools/bench_ch2.py run

def _entry(build, summary, expect="holds") -> ScenarioEntry:
    return ScenarioEntry(build, 2, summary, expect)


SCENARIOS = {
    "walk-read-once": _entry(
        lambda: walk_vs_promotion("read once, IRQs off"),
        "host_pfn_mapping_level() against a PUD promoted to 1G: no bad read, a real level"),
    "walk-rereads": _entry(
        lambda: walk_vs_promotion("re-reads entries"),
        "a walker that re-reads the PUD descends into the 1G page's data", "violated"),
    "walk-irqs-on": _entry(
        lambda: walk_vs_promotion("IRQs on"),
        "a walker with interrupts on reads the PMD table the host freed", "violated"),
    "rule1-vs-migrate": _entry(
        lambda: fault_vs_host("rule 1", "migrate"),
        "the fault path (rule 1) against a page migration"),
    "rule1-vs-collapse": _entry(
        lambda: fault_vs_host("rule 1", "collapse"),
        "the fault path (rule 1) against khugepaged's collapse"),
    "no-check-vs-migrate": _entry(
        lambda: fault_vs_host("no check", "migrate"),
        "no is_page_fault_stale(): KVM maps the page the host migrated away", "violated"),
    "no-check-vs-collapse": _entry(
        lambda: fault_vs_host("no check", "collapse"),
        "no is_page_fault_stale(): KVM maps 2M of memory that is not the THP", "violated"),
    "check-unlock-relock": _entry(
        lambda: fault_vs_host("check, unlock, relock", "migrate"),
        "the check under one hold of mmu_lock, the install under another", "violated"),
    "rule2-checked": _entry(
        lambda: rule2_vs_migration(True),
        "rule 2: under mmu_lock, check that no invalidation is in progress, then map"),
    "rule2-unchecked": _entry(
        lambda: rule2_vs_migration(False),
        "rule 2 without the in-progress check: KVM maps a page being migrated", "violated"),
    "rule2-recovery-vs-split": _entry(
        recovery_vs_split,
        "rule 2 by an existing leaf: huge-page recovery against a THP split"),
    "rule3-zap-vs-split": _entry(
        hint_vs_split,
        "rule 3: the collapsible zap uses the level as a hint only, against a THP split"),
}
