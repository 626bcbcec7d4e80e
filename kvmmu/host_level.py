"""How big a mapping KVM may install for a gfn, and when it may trust the answer.

Models: arch/x86/kvm/mmu/mmu.c: host_pfn_mapping_level(), __kvm_mmu_max_mapping_level(), kvm_mmu_max_mapping_level()
Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_hugepage_adjust(), kvm_mmu_faultin_pfn(), is_page_fault_stale(), kvm_tdp_mmu_page_fault()
Models: arch/x86/kvm/mmu/mmu_internal.h: struct kvm_page_fault

KVM maps a guest frame with a huge page only if three things agree:

1. the memslot allows it: ``lpage_info`` says no reason forbids the huge page
   (the huge page lies inside the slot, gfn and host address agree in their low
   bits, nothing such as a shadowed guest page table asked for 4K);
2. the host maps the address with a page at least that big:
   :func:`host_pfn_mapping_level` walks the host's page tables;
3. the fault is allowed to be huge at all (no dirty logging, no NX-huge-page
   workaround for an exec fault).

The host's answer can change the moment the walk ends, so it may be consumed
only under the rules of the kernel comment above ``host_pfn_mapping_level``
(the chapter's subject, seed thread: Sean Christopherson, "[PATCH 2/4] KVM:
x86/mmu: Document the "rules" for using host_pfn_mapping_level()", with
Mingwei Zhang's reply, 2022-07-16).  The fault path here follows them:
snapshot the sequence, look up the pfn, take ``mmu_lock``, check staleness,
and only then read the level and install.

Reference version: Linux 6.17.  All CPU code is written as step-yielding
generators (see ``kvmmu.host_mm.cpu_code``): call it directly on a
``kvmmu.notifier.Kvm``, or ``yield from f.steps(world, ...)`` in an explorer actor.

**Where the model simplifies.**

- The install is abstracted: :func:`kvm_tdp_mmu_map` adjusts the level and
  records ``gfn -> (pfn, level)`` in ``kvm.mappings``; the TDP MMU's SPTEs,
  atomic updates and flushes are chapter 3.
- ``hva_to_pfn`` (gup) is one step that reads the host translation; it does
  not take a page reference, fault pages in or wait for a migration: if the
  page is not present the fault returns ``RET_PF_RETRY`` (the real gup would
  wait, and the vCPU would fault again).
- ``lpage_info`` and the memslots are read without a step: nothing in this
  chapter changes them concurrently.
- No private memory (guest_memfd, chapter 4): ``is_private`` is always false
  here, so the host page tables always decide.
- Roots are never obsolete: ``is_page_fault_stale`` is only the
  ``mmu_invalidate_retry_gfn`` check.
- ``VM_BUG_ON`` is recorded in ``kvm.warnings`` and the fault carries on,
  which is what a kernel without CONFIG_DEBUG_VM does.
"""
from dataclasses import dataclass, field

from .checks import check_bool, check_choice, check_int
from .errno import RET_PF_CONTINUE, RET_PF_FIXED, RET_PF_RETRY, ret_pf_name
from .host_mm import (BACKINGS, PGD, PMD, PUD, TABLE_NAMES, Hex, __split_huge_pmd,
                      collapse_huge_page, cpu_code, describe_entry, host_populate,
                      host_translation, migrate_page,
                      p4d_none, p4d_offset, p4d_present, pgd_none, pgd_offset,
                      pmd_leaf, pmd_none, pmd_offset, pmd_present, pud_leaf,
                      pud_none, pud_offset, pud_present)
from .levels import (KVM_MAX_HUGEPAGE_LEVEL, KVM_PAGES_PER_HPAGE, PG_LEVEL_1G,
                     PG_LEVEL_2M, PG_LEVEL_4K, PG_LEVEL_NUM, gfn_round_for_level,
                     level_name)
from .memslots import (GFN_MAX, KVM_MEM_LOG_DIRTY_PAGES, KvmMemorySlot, KvmMemslots,
                       __gfn_to_hva_memslot, __kvm_mmu_slot_lpages, gfn_to_index,
                       kvm_mmu_gfn_disallow_lpage, lpage_info_slot)
from .notifier import Kvm, mmu_invalidate_retry_gfn, mmu_invalidate_retry_gfn_unsafe

#: The levels host_pfn_mapping_level can return.
HOST_LEVELS = (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G)


def _hva_of(slot: KvmMemorySlot, gfn: int) -> int:
    # A module-level name: inside a class body Python would mangle the dunder.
    return __gfn_to_hva_memslot(slot, gfn)


def _check_slot_gfn(slot, gfn) -> None:
    if not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"slot must be a KvmMemorySlot, got {type(slot).__name__}")
    check_int("gfn", gfn, 0, GFN_MAX)
    if not slot.contains(gfn):
        raise ValueError(
            f"gfn {gfn:#x} is outside slot {slot.id}, which holds gfns "
            f"[{slot.base_gfn:#x}, {slot.end_gfn:#x})")


# --------------------------------------------------------------------------
# The host walk

def READ_ONCE(kvm, ptr, table_level: int):
    """Read one host page-table entry, once, as one step.

    Models: include/asm-generic/rwonce.h: READ_ONCE()
    """
    name = TABLE_NAMES[table_level]
    return (yield from kvm.step(f"READ_ONCE(*{name.lower()}p)",
                                lambda: Hex(kvm.mm.mem.load(ptr, table_level))))


def local_irq_save(kvm):
    """Disable interrupts: no page table this CPU walks can be freed until they are back.

    Models: include/linux/irqflags.h: local_irq_save()
    """
    yield from kvm.rcu.read_lock()


def local_irq_restore(kvm):
    """Enable interrupts again: a pending page-table free may now proceed.

    Models: include/linux/irqflags.h: local_irq_restore()
    """
    yield from kvm.rcu.read_unlock()


def _host_mapping_level_walk(kvm, hva: int):
    # Each entry is read exactly once into a local; every decision and the
    # next table's address come from that copy, never from memory again.
    pgd = yield from READ_ONCE(kvm, pgd_offset(kvm.mm, hva), PGD)
    if pgd_none(pgd):
        return PG_LEVEL_4K
    p4d = p4d_offset(pgd, hva)  # folded into the PGD: a copy of the local, no load
    if p4d_none(p4d) or not p4d_present(p4d):
        return PG_LEVEL_4K
    pud = yield from READ_ONCE(kvm, pud_offset(p4d, hva), PUD)
    if pud_none(pud) or not pud_present(pud):
        return PG_LEVEL_4K
    if pud_leaf(pud):
        return PG_LEVEL_1G
    pmd = yield from READ_ONCE(kvm, pmd_offset(pud, hva), PMD)
    if pmd_none(pmd) or not pmd_present(pmd):
        return PG_LEVEL_4K
    if pmd_leaf(pmd):
        return PG_LEVEL_2M
    return PG_LEVEL_4K


@cpu_code
def host_pfn_mapping_level(kvm, gfn: int, slot: KvmMemorySlot):
    """Return the size (4K, 2M, 1G) of the host mapping of ``gfn``'s host address.

    Models: arch/x86/kvm/mmu/mmu.c: host_pfn_mapping_level()

    The answer may be stale as soon as it is returned; see the chapter for the
    three ways a caller may use it safely.
    """
    _check_slot_gfn(slot, gfn)
    # The slot we already have, not gfn_to_hva(): that one assumes a write and
    # fails for read-only memslots.
    hva = __gfn_to_hva_memslot(slot, gfn)
    yield from local_irq_save(kvm)
    level = yield from _host_mapping_level_walk(kvm, hva)
    yield from local_irq_restore(kvm)
    return level


# --------------------------------------------------------------------------
# The largest level the slot and the host allow

@cpu_code
def __kvm_mmu_max_mapping_level(kvm, slot: KvmMemorySlot, gfn: int, max_level: int,
                                is_private: bool):
    """Return the largest level ``gfn`` may be mapped at: slot rules, then the host.

    Models: arch/x86/kvm/mmu/mmu.c: __kvm_mmu_max_mapping_level()
    """
    _check_slot_gfn(slot, gfn)
    check_int("max_level", max_level, PG_LEVEL_4K, PG_LEVEL_NUM)
    check_bool("is_private", is_private)
    max_level = min(max_level, kvm.max_huge_page_level)
    while max_level > PG_LEVEL_4K:
        if not lpage_info_slot(gfn, slot, max_level):
            break
        max_level -= 1
    if is_private:
        return max_level      # guest_memfd: the caller already clamped to the folio
    if max_level == PG_LEVEL_4K:
        return PG_LEVEL_4K    # no need to walk the host page tables
    host_level = yield from host_pfn_mapping_level.steps(kvm, gfn, slot)
    return min(host_level, max_level)


@cpu_code
def kvm_mmu_max_mapping_level(kvm, slot: KvmMemorySlot, gfn: int):
    """The largest level for ``gfn`` with no fault-specific limit.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_max_mapping_level()
    """
    # kvm_mem_is_private() is always false in this chapter's model.
    return (yield from __kvm_mmu_max_mapping_level.steps(kvm, slot, gfn, PG_LEVEL_NUM, False))


# --------------------------------------------------------------------------
# A page fault

@dataclass
class KvmPageFault:
    """The page fault being handled: inputs, then what the handler decides.

    Models: arch/x86/kvm/mmu/mmu_internal.h: struct kvm_page_fault
    """

    gfn: int
    slot: KvmMemorySlot
    exec: bool = False
    write: bool = False
    is_private: bool = False
    nx_huge_page_workaround_enabled: bool = False
    max_level: int = KVM_MAX_HUGEPAGE_LEVEL
    req_level: int = PG_LEVEL_4K
    goal_level: int = PG_LEVEL_4K
    huge_page_disallowed: bool = False
    mmu_seq: int | None = None
    pfn: int | None = None
    hva: int = field(init=False)

    def __post_init__(self):
        _check_slot_gfn(self.slot, self.gfn)
        check_bool("exec", self.exec)
        check_bool("write", self.write)
        check_bool("is_private", self.is_private)
        check_bool("nx_huge_page_workaround_enabled", self.nx_huge_page_workaround_enabled)
        check_int("max_level", self.max_level, PG_LEVEL_4K, KVM_MAX_HUGEPAGE_LEVEL)
        self.hva = _hva_of(self.slot, self.gfn)


def kvm_slot_dirty_track_enabled(slot: KvmMemorySlot) -> bool:
    """Whether dirty logging is on for ``slot`` (then every mapping is 4K).

    Models: include/linux/kvm_host.h: kvm_slot_dirty_track_enabled()
    """
    return bool(slot.flags & KVM_MEM_LOG_DIRTY_PAGES)


@cpu_code
def kvm_mmu_hugepage_adjust(kvm, fault: KvmPageFault):
    """Raise ``fault.goal_level`` as far as the slot and the host allow; align the pfn.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_hugepage_adjust()

    Runs with mmu_lock held and after the staleness check passed, so the host
    cannot change the mapping under it.
    """
    fault.huge_page_disallowed = fault.exec and fault.nx_huge_page_workaround_enabled
    if fault.max_level == PG_LEVEL_4K:
        return
    if fault.pfn is None:          # is_error_noslot_pfn()
        return
    if kvm_slot_dirty_track_enabled(fault.slot):
        return
    fault.req_level = yield from __kvm_mmu_max_mapping_level.steps(
        kvm, fault.slot, fault.gfn, fault.max_level, fault.is_private)
    if fault.req_level == PG_LEVEL_4K or fault.huge_page_disallowed:
        return
    fault.goal_level = fault.req_level
    mask = KVM_PAGES_PER_HPAGE(fault.goal_level) - 1
    if (fault.gfn & mask) != (fault.pfn & mask):
        # VM_BUG_ON: lpage_info's alignment rule should make this impossible.
        kvm.warn(f"VM_BUG_ON: gfn {fault.gfn:#x} and pfn {fault.pfn:#x} differ in their "
                 f"low {mask.bit_length()} bits")
    fault.pfn = Hex(fault.pfn & ~mask)


def hva_to_pfn(kvm, hva: int):
    """Return the pfn the host maps at ``hva`` (gup), or None if nothing is present.

    Models: virt/kvm/kvm_main.c: hva_to_pfn()
    """
    found = host_translation(kvm.mm, hva)
    return None if found is None else Hex(found[0])


@cpu_code
def kvm_mmu_faultin_pfn(kvm, fault: KvmPageFault):
    """Snapshot the invalidation sequence, then look up the pfn (outside mmu_lock).

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_faultin_pfn()
    """
    fault.mmu_seq = yield from kvm.step("mmu_seq = mmu_invalidate_seq",
                                        lambda: kvm.mmu_invalidate_seq)
    # smp_rmb(): the snapshot is taken before anything reads the host.
    if (yield from kvm.step("retry_gfn_unsafe?", lambda: mmu_invalidate_retry_gfn_unsafe(
            kvm, fault.mmu_seq, fault.gfn))):
        return RET_PF_RETRY
    fault.pfn = yield from kvm.step("gup: pfn = hva_to_pfn(hva)",
                                    lambda: hva_to_pfn(kvm, fault.hva))
    if fault.pfn is None:
        return RET_PF_RETRY
    # Again, only to avoid taking mmu_lock for a fault that will retry anyway.
    if (yield from kvm.step("retry_gfn_unsafe?", lambda: mmu_invalidate_retry_gfn_unsafe(
            kvm, fault.mmu_seq, fault.gfn))):
        return RET_PF_RETRY
    return RET_PF_CONTINUE


def is_page_fault_stale(kvm, fault: KvmPageFault) -> bool:
    """Whether the fault must retry because the host may have changed since the snapshot.

    Models: arch/x86/kvm/mmu/mmu.c: is_page_fault_stale()
    """
    return bool(mmu_invalidate_retry_gfn(kvm, fault.mmu_seq, fault.gfn))


def kvm_install_mapping(kvm, fault: KvmPageFault) -> None:
    """Record KVM's new mapping: ``fault.gfn`` at ``fault.goal_level`` -> ``fault.pfn``.

    The model's stand-in for building and setting the SPTEs (chapter 3).
    """
    kvm.mappings.install(fault.gfn, fault.pfn, fault.goal_level)


@cpu_code
def kvm_tdp_mmu_map(kvm, fault: KvmPageFault):
    """Choose the level, then install the mapping (abstracted).

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_map()
    """
    yield from kvm_mmu_hugepage_adjust.steps(kvm, fault)
    yield from kvm.step(f"install gfn {gfn_round_for_level(fault.gfn, fault.goal_level):#x} -> "
                        f"pfn {fault.pfn:#x} ({level_name(fault.goal_level)})",
                        lambda: kvm_install_mapping(kvm, fault))
    return RET_PF_FIXED


@cpu_code
def kvm_tdp_mmu_page_fault(kvm, fault: KvmPageFault):
    """The TDP MMU fault: pfn outside the lock, then check and install under it.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_mmu_page_fault()
    """
    r = yield from kvm_mmu_faultin_pfn.steps(kvm, fault)
    if r != RET_PF_CONTINUE:
        return r
    r = RET_PF_RETRY
    yield from kvm.mmu_lock.read_lock()
    stale = yield from kvm.step("is_page_fault_stale?", lambda: is_page_fault_stale(kvm, fault))
    if not stale:
        r = yield from kvm_tdp_mmu_map.steps(kvm, fault)
    yield from kvm.mmu_lock.read_unlock()
    return r


def kvm_page_fault(kvm, gfn: int, *, exec: bool = False, write: bool = False,
                   nx_huge_page_workaround_enabled: bool = False,
                   max_level: int = KVM_MAX_HUGEPAGE_LEVEL) -> tuple[int, KvmPageFault]:
    """Handle a guest fault on ``gfn`` on one CPU; return ``(RET_PF_*, fault)``.

    Finds the slot (``KvmMemslots.gfn_to_memslot``), builds the fault as
    ``kvm_mmu_do_page_fault`` does, and runs :func:`kvm_tdp_mmu_page_fault`.
    """
    check_int("gfn", gfn, 0, GFN_MAX)
    slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is None:
        raise ValueError(f"gfn {gfn:#x} is not in any memslot (no slot covers it)")
    fault = KvmPageFault(gfn, slot, exec=exec, write=write, max_level=max_level,
                         nx_huge_page_workaround_enabled=nx_huge_page_workaround_enabled)
    return kvm_tdp_mmu_page_fault(kvm, fault), fault


# --------------------------------------------------------------------------
# Explaining a decision (for the widget, the figure and the exercises)

def lpage_disallow_reasons(slot: KvmMemorySlot, gfn: int, level: int) -> list[str]:
    """Say why ``gfn``'s huge page at ``level`` is disallowed in ``slot`` (empty: allowed)."""
    _check_slot_gfn(slot, gfn)
    check_int("level", level, PG_LEVEL_2M, PG_LEVEL_1G)
    pages = KVM_PAGES_PER_HPAGE(level)
    size = level_name(level)
    count = lpage_info_slot(gfn, slot, level)
    index = gfn_to_index(gfn, slot.base_gfn, level)
    last = __kvm_mmu_slot_lpages(slot.base_gfn, slot.npages, level) - 1
    head = gfn_round_for_level(gfn, level)
    reasons = []
    if index == 0 and slot.base_gfn & (pages - 1):
        reasons.append(f"the slot starts at gfn {slot.base_gfn:#x}, inside the {size} page "
                       f"[{head:#x}, {head + pages:#x})")
    if index == last and slot.end_gfn & (pages - 1):
        reasons.append(f"the slot ends at gfn {slot.end_gfn:#x}, inside the {size} page "
                       f"[{head:#x}, {head + pages:#x})")
    host_pfn_bits = (slot.userspace_addr >> 12) & (pages - 1)
    if (slot.base_gfn ^ (slot.userspace_addr >> 12)) & (pages - 1):
        reasons.append(
            f"gfn and host address disagree modulo {size}: base_gfn {slot.base_gfn:#x} has low "
            f"bits {slot.base_gfn & (pages - 1):#x}, userspace_addr {slot.userspace_addr:#x} "
            f"has {host_pfn_bits:#x} (no host {size} page could back it)")
    extra = count - (1 if reasons else 0)
    if extra > 0:
        reasons.append(f"kvm_mmu_gfn_disallow_lpage() was called {extra} time(s) for this "
                       f"{size} page (e.g. it holds a shadowed guest page table)")
    return reasons


@dataclass
class LevelDecision:
    """What KVM decided for one gfn, and why, step by step."""

    gfn: int
    slot_id: int
    hva: int
    ret: str
    level: int
    host_level: int
    slot_level: int
    pfn: int | None
    mapped_pfn: int | None
    steps: list = field(default_factory=list)   # (what, verdict) pairs

    def text(self) -> str:
        lines = [f"gfn {self.gfn:#x} -> {level_name(self.level)} ({self.ret})"]
        lines += [f"  {what}: {verdict}" for what, verdict in self.steps]
        return "\n".join(lines)


def explain_mapping_level(kvm, gfn: int, *, exec: bool = False,
                          nx_huge_page_workaround_enabled: bool = False) -> LevelDecision:
    """Run a fault on ``gfn`` (one CPU) and explain the level it installed.

    The level comes from the real fault path; the explanation re-reads the
    same inputs (slot rules, host walk, pfn alignment) to say *why*.
    """
    check_int("gfn", gfn, 0, GFN_MAX)
    slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is None:
        raise ValueError(f"gfn {gfn:#x} is not in any memslot (no slot covers it)")
    hva = __gfn_to_hva_memslot(slot, gfn)
    steps = [("memslot", f"slot {slot.id} holds gfns [{slot.base_gfn:#x}, {slot.end_gfn:#x}); "
                         f"gfn {gfn:#x} is at host address {hva:#x}")]
    kvm.mm.mem.reads.clear()
    ret, fault = kvm_page_fault(kvm, gfn, exec=exec,
                                nx_huge_page_workaround_enabled=nx_huge_page_workaround_enabled)
    reads = list(kvm.mm.mem.reads)
    cap = min(fault.max_level, kvm.max_huge_page_level)
    steps.append(("start", f"at most {level_name(cap)} (max_huge_page_level)"))
    slot_level = cap
    if kvm_slot_dirty_track_enabled(slot):
        steps.append(("dirty logging", "on for this slot: every mapping is 4K"))
        slot_level = PG_LEVEL_4K
    else:
        while slot_level > PG_LEVEL_4K:
            reasons = lpage_disallow_reasons(slot, gfn, slot_level)
            if not reasons:
                steps.append((f"lpage_info {level_name(slot_level)}", "disallow_lpage == 0: allowed"))
                break
            steps.append((f"lpage_info {level_name(slot_level)}",
                          f"disallow_lpage == {lpage_info_slot(gfn, slot, slot_level)}: "
                          + "; ".join(reasons)))
            slot_level -= 1
    found = host_translation(kvm.mm, hva)
    host_level = PG_LEVEL_4K if found is None else found[1]
    if slot_level == PG_LEVEL_4K:
        steps.append(("host walk", "skipped: the slot allows only 4K"))
    elif reads:
        walked = ", ".join(f"{TABLE_NAMES[lv]}[{ptr.index}] = {describe_entry(v, lv)}"
                           for ptr, lv, v in reads)
        steps.append(("host walk", f"{walked} -> host maps it at {level_name(host_level)}"))
    if fault.huge_page_disallowed:
        steps.append(("NX huge pages", "exec fault with the iTLB-multihit workaround: 4K"))
    level = fault.goal_level
    if found is None:
        steps.append(("host", "nothing is mapped at this address: gup finds no page, the fault "
                              "retries (the real gup would fault the page in first)"))
    if fault.pfn is not None and found is not None:
        mask = KVM_PAGES_PER_HPAGE(level) - 1
        if level == PG_LEVEL_4K:
            steps.append(("pfn", f"gup gives pfn {found[0]:#x}; KVM maps gfn {gfn:#x} -> "
                                 f"pfn {fault.pfn:#x}"))
        else:
            steps.append(("pfn", f"gup gives pfn {found[0]:#x}; low bits agree "
                                 f"(gfn & {mask:#x} = {gfn & mask:#x} = pfn & {mask:#x}), so KVM "
                                 f"maps gfn {gfn_round_for_level(gfn, level):#x} -> pfn "
                                 f"{fault.pfn:#x}, one {level_name(level)} page"))
    steps.append(("result", f"{level_name(level)} = min(slot {level_name(slot_level)}, "
                            f"host {level_name(host_level)})"
                  + (", then 4K for NX" if fault.huge_page_disallowed else "")))
    return LevelDecision(gfn, slot.id, hva, ret_pf_name(ret), level, host_level, slot_level,
                         None if found is None else found[0], fault.pfn, steps)


# --------------------------------------------------------------------------
# Building a small host + VM for the widget, the figure and the exercises

def _event_collapse_2m(kvm, hva):
    collapse_huge_page(kvm, hva - hva % (2 << 20), PG_LEVEL_2M)


def _event_split_2m(kvm, hva):
    __split_huge_pmd(kvm, hva - hva % (2 << 20))


def _event_promote_1g(kvm, hva):
    collapse_huge_page(kvm, hva - hva % (1 << 30), PG_LEVEL_1G)


def _event_migrate(kvm, hva):
    migrate_page(kvm, hva)


#: Host events the widget and the exercises can apply after populating, by name.
HOST_EVENTS = {
    "none": None,
    "khugepaged collapses the 2M around it": _event_collapse_2m,
    "the host splits the THP": _event_split_2m,
    "the host promotes the 1G around it": _event_promote_1g,
    "the host migrates the page": _event_migrate,
}


def make_host_vm(base_gfn: int, npages: int, userspace_addr: int, backing: str, gfn: int,
                 event: str = "none", dirty_logging: bool = False,
                 shadowed: bool = False) -> Kvm:
    """Build a VM with one memslot and a host mm backed by ``backing`` around ``gfn``.

    The host is populated only around ``gfn`` (its 2 MiB for 4K backing, its
    1 GiB otherwise), which is all the walk for ``gfn`` can see.  ``event`` is
    one of :data:`HOST_EVENTS`; ``shadowed`` calls kvm_mmu_gfn_disallow_lpage
    for ``gfn`` as shadow paging does for a guest page table.  Raises
    ValueError/TypeError naming the bad argument.
    """
    check_choice("backing", backing, tuple(BACKINGS))
    check_choice("event", event, tuple(HOST_EVENTS))
    check_bool("dirty_logging", dirty_logging)
    check_bool("shadowed", shadowed)
    flags = KVM_MEM_LOG_DIRTY_PAGES if dirty_logging else 0
    slot = KvmMemorySlot(0, base_gfn, npages, userspace_addr, flags=flags)
    _check_slot_gfn(slot, gfn)
    kvm = Kvm(KvmMemslots([slot]))
    hva = _hva_of(slot, gfn)
    around = (2 << 20) if backing == "4K" else (1 << 30)
    lo = max(hva - hva % around, slot.userspace_addr)
    hi = min(hva - hva % around + around, slot.userspace_addr + (slot.npages << 12))
    host_populate(kvm.mm, lo, (hi - lo) >> 12, backing)
    if shadowed:
        kvm_mmu_gfn_disallow_lpage(slot, gfn)
    action = HOST_EVENTS[event]
    if action is not None:
        action(kvm, hva - hva % 4096)
    return kvm
