"""The page fault record, and how big a mapping KVM may install for a gfn.

Models: arch/x86/kvm/mmu/mmu_internal.h: struct kvm_page_fault
Models: arch/x86/kvm/mmu/mmu.c: host_pfn_mapping_level(), __kvm_mmu_max_mapping_level(), kvm_mmu_max_mapping_level(), kvm_mmu_hugepage_adjust()

These mmu.c functions are the ones ``mmu_internal.h`` declares for
``tdp_mmu.c``: ``kvm_tdp_mmu_map()`` starts with ``kvm_mmu_hugepage_adjust()``.
They live in this module, below :mod:`kvmmu.tdp_mmu`, so that the model's
imports only go down (CONTRIBUTING.md, "Layers"); the fault path that calls
the TDP MMU is :mod:`kvmmu.mmu`.

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
(chapter 2; seed thread: Sean Christopherson, "[PATCH 2/4] KVM: x86/mmu:
Document the "rules" for using host_pfn_mapping_level()", with Mingwei
Zhang's reply, 2022-07-16).

Reference version: Linux 6.17.  Every function that reads shared memory is
CPU code (:mod:`kvmmu.cpu`): one step per READ_ONCE of a host entry.

**Where the model simplifies.**

- ``VM_BUG_ON`` is recorded with ``kvm.warn()`` and the fault carries on,
  which is what a kernel without CONFIG_DEBUG_VM does.
- guest_memfd folios are order 0, so a private gfn's mapping level comes
  from ``lpage_info`` alone (the caller has no larger folio to clamp to).
"""
from dataclasses import dataclass

from .checks import check_bool, check_int, check_u64
from .cpu import check_vcpu, check_vm, cpu_code
from .explorer import step
from .host_mm import (PGD, PMD, PUD, TABLE_NAMES, Hex, p4d_none, p4d_offset, p4d_present,
                      pgd_none, pgd_offset, pmd_leaf, pmd_none, pmd_offset, pmd_present,
                      pud_leaf, pud_none, pud_offset, pud_present)
from .levels import (KVM_MAX_HUGEPAGE_LEVEL, KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PG_LEVEL_1G,
                     PG_LEVEL_2M, PG_LEVEL_4K, PG_LEVEL_NUM)
from .memslots import (GFN_MAX, KVM_MEM_GUEST_MEMFD, KvmMemorySlot, __gfn_to_hva_memslot,
                       kvm_mem_is_private, kvm_slot_dirty_track_enabled, lpage_info_slot)
from .pferr import (PFERR_FETCH_MASK, PFERR_PRESENT_MASK, PFERR_PRIVATE_ACCESS,
                    PFERR_USER_MASK, PFERR_WRITE_MASK)

__all__ = [
    "KvmPageFault", "local_irq_save", "local_irq_restore", "host_pfn_mapping_level",
    "__kvm_mmu_max_mapping_level", "kvm_mmu_max_mapping_level", "kvm_mmu_hugepage_adjust",
    "HOST_LEVELS",
]

#: The levels host_pfn_mapping_level can return.
HOST_LEVELS = (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G)

_GPA_MAX = ((GFN_MAX + 1) << PAGE_SHIFT) - 1


@dataclass
class KvmPageFault:
    """One page fault being handled: its inputs, then what the handler decides.

    Models: arch/x86/kvm/mmu/mmu_internal.h: struct kvm_page_fault

    Built by ``kvm_mmu_do_page_fault()`` from a gpa, an error code and
    ``prefetch``; ``exec``, ``write``, ``present`` and ``user`` come from
    the error code, ``is_private`` from ``PFERR_PRIVATE_ACCESS``.  The
    handler fills in ``slot`` (the memslot lookup), ``mmu_seq``, ``pfn``
    and ``map_writable`` (faulting in the pfn), and the levels.  ``pfn`` is
    None while no pfn was found; ``refcounted_page`` the guest_memfd folio
    whose reference the fault holds until it is done.  ``root`` is the model's copy of
    ``vcpu->arch.mmu->root.hpa``, read with the memslot lookup: only the
    vCPU itself changes it, and never during a fault.
    """

    addr: int
    error_code: int
    prefetch: bool
    is_tdp: bool = True
    nx_huge_page_workaround_enabled: bool = False
    max_level: int = KVM_MAX_HUGEPAGE_LEVEL
    req_level: int = PG_LEVEL_4K
    goal_level: int = PG_LEVEL_4K
    huge_page_disallowed: bool = False
    slot: KvmMemorySlot | None = None
    root: int | None = None
    mmu_seq: int = 0
    pfn: int | None = None
    map_writable: bool = False
    refcounted_page: object = None

    def __post_init__(self):
        check_u64("addr", self.addr)
        check_u64("error_code", self.error_code)
        check_bool("prefetch", self.prefetch)
        check_bool("is_tdp", self.is_tdp)
        check_bool("nx_huge_page_workaround_enabled", self.nx_huge_page_workaround_enabled)
        check_int("max_level", self.max_level, PG_LEVEL_4K, KVM_MAX_HUGEPAGE_LEVEL)

    @property
    def gfn(self) -> int:
        """The faulting gfn (the gpa shifted: a TDP fault's address is a gpa)."""
        return self.addr >> PAGE_SHIFT

    @property
    def exec(self) -> bool:
        return bool(self.error_code & PFERR_FETCH_MASK)

    @property
    def write(self) -> bool:
        return bool(self.error_code & PFERR_WRITE_MASK)

    @property
    def present(self) -> bool:
        return bool(self.error_code & PFERR_PRESENT_MASK)

    @property
    def user(self) -> bool:
        return bool(self.error_code & PFERR_USER_MASK)

    @property
    def is_private(self) -> bool:
        return bool(self.error_code & PFERR_PRIVATE_ACCESS)


# --------------------------------------------------------------------------
# The host walk

def _check_fault(fault) -> "KvmPageFault":
    if not isinstance(fault, KvmPageFault):
        raise TypeError(f"fault must be a KvmPageFault, got {type(fault).__name__}")
    return fault


def _read_once(kvm, ptr, table_level: int):
    # READ_ONCE() of one host page-table entry: one step.
    name = TABLE_NAMES[table_level]
    return (yield from step(f"READ_ONCE(*{name.lower()}p)",
                            lambda: Hex(kvm.mm.mem.load(ptr, table_level))))


def local_irq_save(kvm):
    """Disable interrupts: no page table this CPU walks can be freed until they are back.

    Models: include/linux/irqflags.h: local_irq_save()
    """
    check_vm("kvm", kvm)
    yield from kvm.mm.rcu.read_lock()


def local_irq_restore(kvm):
    """Enable interrupts again: a pending page-table free may now proceed.

    Models: include/linux/irqflags.h: local_irq_restore()
    """
    check_vm("kvm", kvm)
    yield from kvm.mm.rcu.read_unlock()


def _host_mapping_level_walk(kvm, hva: int):
    # Each entry is read exactly once into a local; every decision and the
    # next table's address come from that copy, never from memory again.
    pgd = yield from _read_once(kvm, pgd_offset(kvm.mm, hva), PGD)
    if pgd_none(pgd):
        return PG_LEVEL_4K
    p4d = p4d_offset(pgd, hva)  # folded into the PGD: a copy of the local, no load
    if p4d_none(p4d) or not p4d_present(p4d):
        return PG_LEVEL_4K
    pud = yield from _read_once(kvm, pud_offset(p4d, hva), PUD)
    if pud_none(pud) or not pud_present(pud):
        return PG_LEVEL_4K
    if pud_leaf(pud):
        return PG_LEVEL_1G
    pmd = yield from _read_once(kvm, pmd_offset(pud, hva), PMD)
    if pmd_none(pmd) or not pmd_present(pmd):
        return PG_LEVEL_4K
    if pmd_leaf(pmd):
        return PG_LEVEL_2M
    return PG_LEVEL_4K


def _check_slot_gfn(slot, gfn) -> None:
    # The slot check of every function here: a slot, and a gfn inside it.
    __gfn_to_hva_memslot(slot, gfn)


@cpu_code
def host_pfn_mapping_level(kvm, gfn: int, slot: KvmMemorySlot):
    """Return the size (4K, 2M, 1G) of the host mapping of ``gfn``'s host address.

    Models: arch/x86/kvm/mmu/mmu.c: host_pfn_mapping_level()

    The answer may be stale as soon as it is returned; see chapter 2 for the
    three ways a caller may use it safely.
    """
    check_vm("kvm", kvm)
    _check_slot_gfn(slot, gfn)
    # The slot we already have, not gfn_to_hva(): that one assumes a write and
    # fails for read-only memslots.
    hva = __gfn_to_hva_memslot(slot, gfn)
    yield from local_irq_save(kvm)
    level = yield from _host_mapping_level_walk(kvm, hva)
    yield from local_irq_restore(kvm)
    return level


@cpu_code
def __kvm_mmu_max_mapping_level(kvm, slot: KvmMemorySlot, gfn: int, max_level: int,
                                is_private: bool):
    """Return the largest level ``gfn`` may be mapped at: slot rules, then the host.

    Models: arch/x86/kvm/mmu/mmu.c: __kvm_mmu_max_mapping_level()
    """
    check_vm("kvm", kvm)
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
    host_level = yield from host_pfn_mapping_level(kvm, gfn, slot)
    return min(host_level, max_level)


@cpu_code
def kvm_mmu_max_mapping_level(kvm, slot: KvmMemorySlot, gfn: int):
    """The largest level for ``gfn`` with no fault-specific limit.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_max_mapping_level()
    """
    check_vm("kvm", kvm)
    _check_slot_gfn(slot, gfn)
    is_private = bool(slot.flags & KVM_MEM_GUEST_MEMFD) and kvm_mem_is_private(kvm, gfn)
    return (yield from __kvm_mmu_max_mapping_level(kvm, slot, gfn, PG_LEVEL_NUM, is_private))


@cpu_code
def kvm_mmu_hugepage_adjust(vcpu, fault: KvmPageFault):
    """Raise ``fault.goal_level`` as far as the slot and the host allow; align the pfn.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_hugepage_adjust()

    Runs with mmu_lock held and after the staleness check passed, so the host
    cannot change the mapping under it.
    """
    check_vcpu("vcpu", vcpu)
    _check_fault(fault)
    if not isinstance(fault, KvmPageFault):
        raise TypeError(f"fault must be a KvmPageFault, got {type(fault).__name__}")
    kvm = vcpu.kvm
    fault.huge_page_disallowed = fault.exec and fault.nx_huge_page_workaround_enabled
    if fault.max_level == PG_LEVEL_4K:
        return
    if fault.pfn is None or fault.slot is None:     # is_error_noslot_pfn()
        return
    if kvm_slot_dirty_track_enabled(fault.slot):
        return
    fault.req_level = yield from __kvm_mmu_max_mapping_level(
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
