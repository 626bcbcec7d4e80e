"""The TDP fault path, the roots a vCPU runs on, the memslot zaps, and prefaulting.

Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_page_fault(), kvm_tdp_mmu_page_fault(), kvm_mmu_faultin_pfn(), is_page_fault_stale()
Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_load(), kvm_mmu_free_obsolete_roots(), kvm_mmu_zap_all_fast(), kvm_arch_flush_shadow_memslot()
Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_map_page(), kvm_arch_vcpu_pre_fault_memory()
Models: arch/x86/kvm/mmu/mmu_internal.h: kvm_mmu_do_page_fault()

Reference version: Linux 6.17 (read at v6.17-rc3), and mmu.c at
3ccbf6f4 for the 6.18 prefault fix, which ``KvmConfig.prefault_policy``
selects, together with the alternatives chapter 6 compares.

**One fault path.**  Every fault of the book goes this way, as in the
kernel::

    kvm_mmu_do_page_fault()        build the fault, look up the memslot
      kvm_tdp_page_fault()
        kvm_tdp_mmu_page_fault()
          kvm_mmu_faultin_pfn()     INVALID slots, private vs shared, the
                                    mmu_invalidate_seq snapshot, the pfn from
                                    guest_memfd or the host's page tables
          read_lock(mmu_lock)
          is_page_fault_stale()     obsolete root, or an invalidation since
          kvm_tdp_mmu_map()         host level and huge pages, then the SPTEs
          read_unlock(mmu_lock)

A chapter that does not teach a part runs it as one step (``zoom``, see
:mod:`kvmmu.cpu`); it never runs a copy.

**How the model spins.**  ``kvm_tdp_map_page()`` spins on
``RET_PF_RETRY``; a retry that reads exactly what the last attempt read gets
exactly the same answer.  So the model lets the retry happen only once
something it reads has changed (:func:`retry_wait`): a spin becomes a
blocking wait.  That keeps the state space finite, and turns the kernel's
livelock ("spins forever while the writer waits") into what the explorer
reports as a deadlock ("nothing can run").

**Where the model simplifies.**

- Only the TDP MMU (no shadow paging, no fast page fault, no async page
  faults, no ``cond_resched``); one address space.
- MMIO caching is on, so a fault without a memslot installs an MMIO SPTE
  and returns ``RET_PF_EMULATE``.
- ``kvm_is_gfn_alias()`` is always false: the model has no TDX shared bit.
- Zapping a memslot without the fast zap (``slot_zap_all`` off) zaps the
  slot's leaves in every root, under ``mmu_lock`` held for write.
"""
from __future__ import annotations

from typing import NamedTuple

from .checks import check_bool, check_choice, check_int, check_name, check_u64
from .cpu import cpu_code
from .errno import (EAGAIN, EFAULT, EINTR, EINVAL, EIO, ENOENT, EOPNOTSUPP, RET_PF_CONTINUE,
                    RET_PF_EMULATE, RET_PF_FIXED, RET_PF_RETRY, RET_PF_RETRY_INVALID_SLOT,
                    RET_PF_SPURIOUS, RET_PF_WRITE_PROTECTED, errno_name, ret_pf_name)
from .explorer import step, wait_until
from .folio import folio_put
from .guest_memfd import kvm_gmem_get_pfn
from .host_mm import PTE
from .kvm_host import (KVM_PFN_ERR_FAULT, Kvm, KVM_PFN_ERR_RO_FAULT, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
                       KVM_REQ_VM_DEAD, KvmVcpu, hva_to_pfn, is_error_pfn,
                       kvm_check_request, kvm_make_all_cpus_request, kvm_test_request,
                       kvm_vcpu_gfn_to_memslot, mmu_invalidate_retry_gfn,
                       mmu_invalidate_retry_gfn_unsafe, _check_kvm, _check_vcpu)
from .levels import KVM_HPAGE_SIZE, PAGE_SHIFT, PAGE_SIZE, PG_LEVEL_4K
from .memslots import (GFN_MAX, KVM_MEM_GUEST_MEMFD, KVM_MEM_READONLY, KVM_MEMSLOT_INVALID,
                       KvmMemorySlot, __gfn_to_hva_memslot, kvm_mem_is_private)
from .mmu_internal import KvmPageFault, _check_fault
from .pferr import PFERR_GUEST_FINAL_MASK, PFERR_PRIVATE_ACCESS
from .tdp_mmu import (kvm_tdp_mmu_alloc_root, kvm_tdp_mmu_invalidate_roots, kvm_tdp_mmu_map,
                      kvm_tdp_mmu_put_root, kvm_tdp_mmu_recover_huge_pages,
                      kvm_tdp_mmu_zap_collapsible_sptes, kvm_tdp_mmu_zap_invalidated_roots,
                      kvm_tdp_mmu_zap_leafs)
from .tlb import kvm_flush_remote_tlbs_range

__all__ = [
    "PfResult", "FoundSlot", "PfnResult", "fault_inputs", "retry_wait", "kvm_mmu_load", "kvm_mmu_free_obsolete_roots",
    "kvm_mmu_reload", "kvm_handle_noslot_fault", "kvm_handle_error_pfn",
    "__kvm_mmu_faultin_pfn", "kvm_mmu_faultin_pfn", "is_page_fault_stale",
    "kvm_mmu_finish_page_fault", "kvm_tdp_mmu_page_fault", "kvm_tdp_page_fault",
    "kvm_mmu_do_page_fault", "kvm_mmu_page_fault", "kvm_tdp_map_page", "kvm_tdp_prefault_page",
    "kvm_arch_vcpu_pre_fault_memory", "kvm_mmu_zap_all_fast", "kvm_zap_gfn_range",
    "kvm_arch_flush_shadow_memslot", "kvm_arch_memslots_updated", "describe_found_slot",
    "kvm_mmu_zap_collapsible_sptes", "kvm_mmu_recover_huge_pages",
]


class _FoundSlotFields(NamedTuple):
    slot: object
    root: int | None


class FoundSlot(_FoundSlotFields):
    """What the memslot lookup step found: the slot, and the root the vCPU runs on."""

    __slots__ = ()

    def __new__(cls, slot, root):
        if slot is not None and not isinstance(slot, KvmMemorySlot):
            raise TypeError(f"slot must be a KvmMemorySlot or None, got {type(slot).__name__}")
        if root is not None:
            check_int("root", root, 0, (1 << 40) - 1)
        return super().__new__(cls, slot, root)

    def __repr__(self) -> str:
        return describe_found_slot(self.slot)


class PfResult(int):
    """A RET_PF_* value that prints as its name (for step labels)."""

    def __repr__(self) -> str:
        return ret_pf_name(int(self))


def _check_vcpu_fault(vcpu, fault) -> None:
    _check_vcpu(vcpu)
    _check_fault(fault)


# ---------------------------------------------------------------------------
# Waiting instead of spinning (see the module docstring)
# ---------------------------------------------------------------------------
def fault_inputs(vcpu: KvmVcpu) -> tuple:
    """Everything a fault attempt's outcome depends on, besides its own gpa.

    The generation of every active memslot set (any swap changes it), the
    vCPU's root and whether it is obsolete, pending requests, a pending
    signal, and the invalidation sequence.  A retry whose inputs equal the
    last attempt's would repeat it.
    """
    _check_vcpu(vcpu)
    kvm = vcpu.kvm
    root = vcpu.root
    obsolete = root is not None and kvm.ept.sps[root].invalid
    gens = tuple(kvm.kvm_memslots(a).generation for a in range(kvm.config.nr_as_ids))
    return (gens, root, obsolete, vcpu.requests, vcpu.signal_pending,
            kvm.mmu_invalidate_seq, kvm.mmu_invalidate_in_progress)


def _retry_would_differ(vcpu: KvmVcpu, seen, frees_obsolete_roots: bool) -> bool:
    return (vcpu.signal_pending or kvm_test_request(KVM_REQ_VM_DEAD, vcpu)
            or (frees_obsolete_roots
                and kvm_test_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu))
            or fault_inputs(vcpu) != seen)


def retry_wait(vcpu: KvmVcpu, label: str, frees_obsolete_roots: bool = False):
    """Block until a retry could see something new (the model's form of a spin).

    Something new: the inputs differ from those the last attempt recorded,
    or a signal or ``KVM_REQ_VM_DEAD`` is pending (the retry loop checks
    those first and would leave).  ``frees_obsolete_roots``: the retry
    starts by handling ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS`` (``KVM_RUN``
    re-entering the guest does), so a pending one is new enough: the retry
    will run on another root, even if the request was already pending when
    the last attempt looked.
    """
    _check_vcpu(vcpu)
    check_name("label", label)
    check_bool("frees_obsolete_roots", frees_obsolete_roots)
    # The predicate reads what the last attempt recorded when it is evaluated,
    # not here: code between two steps must not read what a step wrote.
    yield from wait_until(label, lambda _w: _retry_would_differ(vcpu, vcpu.last_fault_inputs,
                                                                frees_obsolete_roots))


# ---------------------------------------------------------------------------
# Roots
# ---------------------------------------------------------------------------
def kvm_mmu_load(vcpu: KvmVcpu) -> int:
    """Give the vCPU a root: reuse a valid one or allocate a new one.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_load()

    Plain computation: callers make it part of a step.
    """
    _check_vcpu(vcpu)
    vcpu.root = kvm_tdp_mmu_alloc_root(vcpu)
    return 0


def kvm_mmu_free_obsolete_roots(vcpu: KvmVcpu) -> None:
    """Drop the vCPU's root if it is obsolete; free obsolete roots nobody uses.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_free_obsolete_roots()
    """
    _check_vcpu(vcpu)
    kvm = vcpu.kvm
    root = vcpu.root
    if root is not None and kvm.ept.sps[root].invalid:
        vcpu.root = None
        kvm_tdp_mmu_put_root(kvm, root)


def kvm_mmu_reload(vcpu: KvmVcpu) -> int:
    """Make sure the vCPU has a usable root.

    Models: arch/x86/kvm/mmu.h: kvm_mmu_reload()

    Since 6.15 (commit 20a6cff3b283) it first handles a pending
    ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS``; before, it only loaded a root when
    there was none, so an obsolete root stayed put
    (``KvmConfig.reload_frees_obsolete_roots``).
    """
    _check_vcpu(vcpu)
    if vcpu.kvm.config.reload_frees_obsolete_roots and \
            kvm_check_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu):
        kvm_mmu_free_obsolete_roots(vcpu)
    if vcpu.root is not None:
        return 0
    return kvm_mmu_load(vcpu)


# ---------------------------------------------------------------------------
# Faulting the pfn in
# ---------------------------------------------------------------------------
def kvm_handle_noslot_fault(vcpu: KvmVcpu, fault: KvmPageFault) -> int:
    """No memslot: a private access fails, a shared one goes on to an MMIO SPTE.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_handle_noslot_fault()
    """
    _check_vcpu_fault(vcpu, fault)
    if fault.is_private:
        return -EFAULT                  # kvm_mmu_prepare_memory_fault_exit()
    fault.slot = None
    fault.pfn = None
    fault.map_writable = False
    # kvm_mmu_max_gfn(): a gfn no MMIO SPTE can encode is emulated without one.
    if fault.gfn > vcpu.kvm.ept.cfg.max_mmio_gfn:
        return RET_PF_EMULATE
    return RET_PF_CONTINUE


def kvm_handle_error_pfn(vcpu: KvmVcpu, fault: KvmPageFault) -> int:
    """An error pfn: a write to a read-only slot is emulated, anything else is -EFAULT.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_handle_error_pfn()
    """
    _check_vcpu_fault(vcpu, fault)
    if fault.pfn == KVM_PFN_ERR_RO_FAULT:
        return RET_PF_EMULATE
    return -EFAULT


def _gup(kvm, slot, gfn: int, write: bool):
    # The shared-memory lookup: (pfn, map_writable, migrating), pfn maybe an error pfn.
    if write and slot.flags & KVM_MEM_READONLY:
        return KVM_PFN_ERR_RO_FAULT, False, False
    hva = __gfn_to_hva_memslot(slot, gfn)
    pfn = hva_to_pfn(kvm, hva, write)
    return PfnResult(pfn), not slot.flags & KVM_MEM_READONLY, _migrating(kvm, hva)


def _migrating(kvm, hva: int) -> bool:
    # Is the host page at hva being migrated right now (gup would wait)?
    mm = kvm.mm
    ptr = mm.entry_ptr(hva, PTE)
    entry = mm.mem.peek(ptr) if ptr is not None else 0
    return bool(entry) and not entry & 1


@cpu_code
def __kvm_mmu_faultin_pfn(vcpu: KvmVcpu, fault: KvmPageFault):
    """Look the pfn up: in guest_memfd for a private fault, in the host's page tables otherwise.

    Models: arch/x86/kvm/mmu/mmu.c: __kvm_mmu_faultin_pfn()

    A host page being migrated makes gup wait until the migration is done
    (the kernel sleeps on the migration entry).
    """
    _check_vcpu_fault(vcpu, fault)
    kvm = vcpu.kvm
    if fault.is_private:
        # kvm_mmu_faultin_pfn_private()
        r, pfn, folio = yield from kvm_gmem_get_pfn(kvm, fault.slot, fault.gfn,
                                                    f"kvm:vcpu{vcpu.vcpu_id}")
        if r:
            return r                    # kvm_mmu_prepare_memory_fault_exit(): -errno
        fault.pfn, fault.map_writable, fault.refcounted_page = pfn, True, folio
        return RET_PF_CONTINUE
    slot, gfn, write = fault.slot, fault.gfn, fault.write
    hva = __gfn_to_hva_memslot(slot, gfn)
    while True:
        pfn, writable, migrating = yield from step("gup: pfn = hva_to_pfn(hva)",
                                                   lambda: _gup(kvm, slot, gfn, write))
        if pfn != KVM_PFN_ERR_FAULT or not migrating:
            break
        yield from wait_until("gup waits for the migration to finish",
                              lambda _w: not _migrating(kvm, hva))
    fault.pfn, fault.map_writable = pfn, writable
    return RET_PF_CONTINUE


class PfnResult(int):
    """A pfn that prints in hex (for step labels)."""

    def __new__(cls, pfn):
        check_u64("pfn", pfn)          # a host pfn or a KVM_PFN_ERR_* value
        return super().__new__(cls, pfn)

    def __repr__(self) -> str:
        return hex(self)


def _invalid_slot_result(vcpu: KvmVcpu, fault: KvmPageFault) -> int:
    # What a fault on a memslot flagged INVALID returns, by prefault policy.
    policy = vcpu.kvm.config.prefault_policy
    if policy in ("6.18", "6.18+request-break") and fault.prefetch:
        return -EAGAIN
    if policy == "RET_PF_RETRY_INVALID_SLOT":
        return RET_PF_RETRY_INVALID_SLOT
    return RET_PF_RETRY


@cpu_code
def kvm_mmu_faultin_pfn(vcpu: KvmVcpu, fault: KvmPageFault):
    """Decide whether the fault can go on, and fault its pfn in (outside mmu_lock).

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_faultin_pfn()

    The sequence is snapshotted before anything reads the host.  A slot
    being deleted or moved is not treated as "no slot": its old SPTEs may
    still be live until the writer's zap (the kernel's comment), so the fault
    retries (6.17) or, for a prefault, returns -EAGAIN (6.18).
    """
    _check_vcpu_fault(vcpu, fault)
    kvm = vcpu.kvm
    fault.mmu_seq, private = yield from step(
        "mmu_seq = mmu_invalidate_seq", lambda: (kvm.mmu_invalidate_seq, fault.slot is not None
                                                 and kvm_mem_is_private(kvm, fault.gfn)))
    # smp_rmb(): the snapshot is taken before anything reads the host (and
    # before the memory attributes are read: the sequence also covers them).
    if fault.is_private != private:
        return -EFAULT                  # kvm_mmu_prepare_memory_fault_exit()
    if fault.slot is None:
        return kvm_handle_noslot_fault(vcpu, fault)
    if fault.slot.flags & KVM_MEMSLOT_INVALID:
        return _invalid_slot_result(vcpu, fault)
    if (yield from step("mmu_invalidate_retry_gfn_unsafe?", lambda: mmu_invalidate_retry_gfn_unsafe(
            kvm, fault.mmu_seq, fault.gfn))):
        return RET_PF_RETRY
    r = yield from __kvm_mmu_faultin_pfn(vcpu, fault)
    if r != RET_PF_CONTINUE:
        return r
    if is_error_pfn(fault.pfn):
        return kvm_handle_error_pfn(vcpu, fault)
    # Again, only to avoid taking mmu_lock for a fault that will retry anyway.
    if (yield from step("mmu_invalidate_retry_gfn_unsafe?", lambda: mmu_invalidate_retry_gfn_unsafe(
            kvm, fault.mmu_seq, fault.gfn))):
        yield from kvm_mmu_finish_page_fault(vcpu, fault, RET_PF_RETRY)
        return RET_PF_RETRY
    return RET_PF_CONTINUE


def is_page_fault_stale(vcpu: KvmVcpu, fault: KvmPageFault) -> bool:
    """Whether the fault's work is pointless: an obsolete root, or an invalidation since.

    Models: arch/x86/kvm/mmu/mmu.c: is_page_fault_stale()

    Plain computation under mmu_lock (its caller makes it one step).
    """
    _check_vcpu_fault(vcpu, fault)
    kvm = vcpu.kvm
    if fault.root is not None and kvm.ept.sps[fault.root].invalid:
        return True
    if fault.root is None and kvm_test_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu):
        return True
    return bool(fault.slot is not None
                and mmu_invalidate_retry_gfn(kvm, fault.mmu_seq, fault.gfn))


def kvm_mmu_finish_page_fault(vcpu: KvmVcpu, fault: KvmPageFault, r: int):
    """Drop the page reference the fault took (a guest_memfd folio's).

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_finish_page_fault()
    """
    _check_vcpu_fault(vcpu, fault)
    check_int("r", r)
    folio = fault.refcounted_page
    fault.refcounted_page = None
    if folio is not None:
        yield from folio_put(folio, f"kvm:vcpu{vcpu.vcpu_id}")


@cpu_code
def kvm_tdp_mmu_page_fault(vcpu: KvmVcpu, fault: KvmPageFault):
    """The TDP MMU fault: the pfn outside the lock, then check and map under it.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_mmu_page_fault()
    """
    _check_vcpu_fault(vcpu, fault)
    kvm = vcpu.kvm
    r = yield from kvm_mmu_faultin_pfn(vcpu, fault)
    if r != RET_PF_CONTINUE:
        return PfResult(r)
    r = RET_PF_RETRY
    yield from kvm.mmu_lock.read_lock()
    stale = yield from step("is_page_fault_stale?", lambda: is_page_fault_stale(vcpu, fault))
    if not stale:
        r = yield from kvm_tdp_mmu_map(vcpu, fault)
    yield from kvm.mmu_lock.read_unlock()
    yield from kvm_mmu_finish_page_fault(vcpu, fault, r)
    return PfResult(r)


def kvm_tdp_page_fault(vcpu: KvmVcpu, fault: KvmPageFault):
    """The TDP page-fault handler: the TDP MMU's.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_page_fault()
    """
    _check_vcpu_fault(vcpu, fault)
    return (yield from kvm_tdp_mmu_page_fault(vcpu, fault))


def describe_found_slot(slot) -> str:
    """What a memslot lookup found, in a few words: 'slot 10', 'slot 10 INVALID', 'no slot'."""
    if slot is None:
        return "no slot"
    if not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"slot must be a KvmMemorySlot or None, got {type(slot).__name__}")
    return f"slot {slot.id}" + (" INVALID" if slot.flags & KVM_MEMSLOT_INVALID else "")


@cpu_code
def kvm_mmu_do_page_fault(vcpu: KvmVcpu, gpa: int, error_code: int, prefetch: bool,
                          max_level: int | None = None):
    """Build the fault (looking up its memslot) and run the handler; ``(r, level)``.

    Models: arch/x86/kvm/mmu/mmu_internal.h: kvm_mmu_do_page_fault()

    The kernel returns ``r`` and stores ``fault.goal_level`` through its
    ``level`` pointer.  ``max_level`` (default: the largest huge page) is
    the model's way to ask for small pages, as dirty logging would.
    """
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    check_u64("gpa", gpa)
    check_u64("error_code", error_code)
    check_bool("prefetch", prefetch)
    kwargs = {} if max_level is None else {"max_level": max_level}
    # is_nx_huge_page_enabled(): the module parameter, here the VM's configuration.
    fault = KvmPageFault(addr=gpa, error_code=error_code, prefetch=prefetch,
                         nx_huge_page_workaround_enabled=vcpu.kvm.config.nx_huge_pages, **kwargs)

    def lookup():
        # srcu_dereference(kvm->memslots) + kvm_vcpu_gfn_to_memslot().  Record
        # what this attempt reads, so a retry waits until it changes.
        vcpu.last_fault_inputs = fault_inputs(vcpu)
        slot = None
        if gpa >> PAGE_SHIFT <= GFN_MAX:        # beyond: no slot, as for any MMIO gfn
            slot = kvm_vcpu_gfn_to_memslot(vcpu, gpa >> PAGE_SHIFT)
        return FoundSlot(slot, vcpu.root)
    fault.slot, fault.root = yield from step("memslot lookup", lookup)
    r = yield from kvm_tdp_page_fault(vcpu, fault)
    return r, fault.goal_level


@cpu_code
def kvm_mmu_page_fault(vcpu: KvmVcpu, gpa: int, error_code: int):
    """A vCPU's EPT violation: handle the fault; emulation is left to the caller.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_page_fault()

    Returns the RET_PF_* code (or -errno): RET_PF_RETRY and the fixed cases
    re-enter the guest, RET_PF_EMULATE means emulate the access (MMIO).
    """
    _check_vcpu(vcpu)
    check_u64("gpa", gpa)
    check_u64("error_code", error_code)
    r, _level = yield from kvm_mmu_do_page_fault(vcpu, gpa, error_code, prefetch=False)
    return r


# ---------------------------------------------------------------------------
# Prefaulting: kvm_tdp_map_page() and the arch half of KVM_PRE_FAULT_MEMORY
# ---------------------------------------------------------------------------
def _tdp_map_page_errno(vcpu: KvmVcpu, r: int) -> int:
    # The tail of kvm_tdp_map_page(): a final RET_PF_* becomes 0 or -errno.
    if r < 0:
        return r
    if r in (RET_PF_FIXED, RET_PF_SPURIOUS, RET_PF_WRITE_PROTECTED):
        return 0
    if r == RET_PF_EMULATE:
        return -ENOENT                          # no memslot: emulated MMIO
    policy = vcpu.kvm.config.prefault_policy
    if r == RET_PF_RETRY_INVALID_SLOT and policy == "RET_PF_RETRY_INVALID_SLOT":
        return -ENOENT                          # Yan Zhao's patch treats it like EMULATE
    if r == RET_PF_RETRY and policy in ("drop-srcu", "drop-srcu+reload"):
        return -EAGAIN                          # Sean Christopherson's sketch
    vcpu.kvm.warn(f"kvm_tdp_map_page: unexpected {ret_pf_name(r)}")
    return -EIO


class _Errno(int):
    """0 or a -errno that prints by name (for step labels)."""

    def __repr__(self) -> str:
        return errno_name(self) if self else "no"


def _must_stop(vcpu: KvmVcpu) -> int:
    # The checks at the top of kvm_tdp_map_page()'s loop: -EINTR, -EIO or 0.
    if vcpu.signal_pending:
        return _Errno(-EINTR)
    if kvm_check_request(KVM_REQ_VM_DEAD, vcpu):
        return _Errno(-EIO)
    return _Errno(0)


@cpu_code
def kvm_tdp_map_page(vcpu: KvmVcpu, gpa: int, error_code: int):
    """Fault ``gpa`` in as a prefetch, retrying while the handler says RET_PF_RETRY; ``(r, level)``.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_map_page()

    Its loop checks only a pending signal and ``KVM_REQ_VM_DEAD``: it never
    reloads the root.  Under the ``drop-srcu`` policies this is the sketch's
    version: one attempt, and ``RET_PF_RETRY`` becomes ``-EAGAIN``.
    """
    _check_vcpu(vcpu)
    check_u64("gpa", gpa)
    check_u64("error_code", error_code)
    if not (vcpu.tdp and not vcpu.guest_mode):
        return -EOPNOTSUPP, PG_LEVEL_4K         # shadow paging, or a nested guest
    policy = vcpu.kvm.config.prefault_policy
    spins = policy not in ("drop-srcu", "drop-srcu+reload")
    while True:
        stop = yield from step("signal pending? KVM_REQ_VM_DEAD?", lambda: _must_stop(vcpu))
        if stop:
            return stop, PG_LEVEL_4K
        r, level = yield from kvm_mmu_do_page_fault(vcpu, gpa, error_code, prefetch=True)
        if r != RET_PF_RETRY or not spins:
            break
        if policy == "6.18+request-break" and \
                kvm_test_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu):
            # The experiment: an obsolete root cannot heal inside this loop
            # (only kvm_mmu_reload() frees it), so let userspace call again.
            r = -EAGAIN
            break
        # The kernel loops at once; the model waits for a reason to (docstring).
        yield from retry_wait(vcpu, "RET_PF_RETRY: retry once something changes")
    return _tdp_map_page_errno(vcpu, r), level


@cpu_code
def kvm_tdp_prefault_page(vcpu: KvmVcpu, gpa: int, error_code: int):
    """Sean Christopherson's sketch: on -EAGAIN drop and re-take kvm->srcu, retry.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_prefault_page() (proposed 2025-05-19; not merged)

    With ``drop-srcu+reload`` it also calls kvm_mmu_reload() after re-taking
    SRCU, as Yan Zhao asked in review; whether that frees the obsolete root
    depends on ``KvmConfig.reload_frees_obsolete_roots``.
    """
    _check_vcpu(vcpu)
    check_u64("gpa", gpa)
    check_u64("error_code", error_code)
    if not (vcpu.tdp and not vcpu.guest_mode):
        return -EOPNOTSUPP, PG_LEVEL_4K
    kvm = vcpu.kvm
    while True:
        r, level = yield from kvm_tdp_map_page(vcpu, gpa, error_code)
        if r != -EAGAIN:
            return r, level
        yield from kvm.srcu.read_unlock(vcpu.srcu_idx)
        # Spinning here re-enters new read sections, which do not hold up a
        # synchronize_srcu() that started earlier; the wait sits outside SRCU.
        yield from retry_wait(vcpu, "-EAGAIN: retry once something changes")
        vcpu.srcu_idx = yield from kvm.srcu.read_lock()
        if kvm.config.prefault_policy == "drop-srcu+reload":
            yield from step("kvm_mmu_reload", lambda: kvm_mmu_reload(vcpu))


class _Reloaded(NamedTuple):
    r: int
    private: bool

    def __repr__(self) -> str:
        return f"{self.r}" + (", gfn is private" if self.private else "")


def _reload_and_attrs(vcpu: KvmVcpu, gpa: int) -> _Reloaded:
    # kvm_mmu_reload(), then (same step) whether the gfn's memory is private.
    r = kvm_mmu_reload(vcpu)
    gfn = gpa >> PAGE_SHIFT
    return _Reloaded(r, gfn <= GFN_MAX and kvm_mem_is_private(vcpu.kvm, gfn))


def _check_range(range_) -> None:
    # struct kvm_pre_fault_memory (kvm_main.KvmPreFaultMemory, defined above this module).
    if not all(hasattr(range_, f) for f in ("gpa", "size", "flags")):
        raise TypeError(f"range_ must be a KvmPreFaultMemory, got {type(range_).__name__}")
    check_u64("range_.gpa", range_.gpa)
    check_u64("range_.size", range_.size)


@cpu_code
def kvm_arch_vcpu_pre_fault_memory(vcpu: KvmVcpu, range_):
    """Map the page at ``range_.gpa`` and say how many bytes that covered (or -errno).

    Models: arch/x86/kvm/mmu/mmu.c: kvm_arch_vcpu_pre_fault_memory()

    The fault is a read of the final gpa (``PFERR_GUEST_FINAL_MASK``), made
    private when the gfn's memory attribute is.  Progress runs to the end of
    the mapping created, which may be a 2 MiB or 1 GiB page:
    ``min(size, end - gpa)``.  ``-EINVAL`` for an alias gfn
    (``kvm_is_gfn_alias()``) cannot happen in the model.
    """
    _check_vcpu(vcpu)
    _check_range(range_)
    kvm = vcpu.kvm
    error_code = PFERR_GUEST_FINAL_MASK         # a read of the final gpa
    if not kvm.config.pre_fault_allowed:
        return -EOPNOTSUPP
    gpa = range_.gpa
    r, private = yield from step("kvm_mmu_reload", lambda: _reload_and_attrs(vcpu, gpa))
    if r:
        return r
    if private:
        error_code |= PFERR_PRIVATE_ACCESS
    if kvm.config.prefault_policy in ("drop-srcu", "drop-srcu+reload"):
        r, level = yield from kvm_tdp_prefault_page(vcpu, gpa, error_code)
    else:
        r, level = yield from kvm_tdp_map_page(vcpu, gpa, error_code)
    if r < 0:
        return r
    end = (gpa & -KVM_HPAGE_SIZE(level)) + KVM_HPAGE_SIZE(level)
    return min(range_.size, end - gpa)


# ---------------------------------------------------------------------------
# Zapping for memslot updates
# ---------------------------------------------------------------------------
@cpu_code
def kvm_mmu_zap_all_fast(kvm):
    """The fast zap: make every root obsolete, tell every vCPU, then zap the old roots.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_zap_all_fast()

    Invalidating the roots and posting ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS``
    happen in one critical section of ``mmu_lock`` held for write, so every
    vCPU drops its soon-to-be-invalid root; the invalid roots' SPTEs are
    zapped afterwards under the read lock, before the caller goes on.
    """
    _check_kvm(kvm)
    yield from kvm.mmu_lock.write_lock()

    def invalidate():
        kvm_tdp_mmu_invalidate_roots(kvm)
        kvm_make_all_cpus_request(kvm, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)
    yield from step("invalidate every root, request KVM_REQ_MMU_FREE_OBSOLETE_ROOTS",
                    invalidate)
    yield from kvm.mmu_lock.write_unlock()
    yield from kvm_tdp_mmu_zap_invalidated_roots(kvm, True)


@cpu_code
def kvm_zap_gfn_range(kvm, gfn_start: int, gfn_end: int):
    """Zap the leaves mapping ``[gfn_start, gfn_end)`` under mmu_lock held for write, then flush.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_zap_gfn_range()

    Returns True if anything was zapped.
    """
    _check_kvm(kvm)
    check_int("gfn_start", gfn_start, 0, GFN_MAX)
    check_int("gfn_end", gfn_end, gfn_start + 1, GFN_MAX + 1)
    yield from kvm.mmu_lock.write_lock()
    flush = yield from kvm_tdp_mmu_zap_leafs(kvm, gfn_start, gfn_end, False)
    if flush:
        yield from kvm_flush_remote_tlbs_range(kvm, gfn_start, gfn_end - gfn_start)
    yield from kvm.mmu_lock.write_unlock()
    return flush


@cpu_code
def kvm_arch_flush_shadow_memslot(kvm, slot):
    """Zap what a deleted or moved slot mapped: the fast zap on a default VM, else the slot.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_arch_flush_shadow_memslot()
    """
    _check_kvm_slot(kvm, slot)
    if kvm.config.slot_zap_all:
        yield from kvm_mmu_zap_all_fast(kvm)
    else:
        yield from kvm_zap_gfn_range(kvm, slot.base_gfn, slot.end_gfn)


def kvm_arch_memslots_updated(kvm, gen: int) -> None:
    """x86 hook after a memslot swap: nothing to do in the model.

    Models: arch/x86/kvm/x86.c: kvm_arch_memslots_updated()

    The kernel checks for an MMIO-generation wrap (and zaps everything if it
    wrapped); the model's 19-bit MMIO generation never wraps in a run.
    """
    _check_kvm(kvm)
    check_u64("gen", gen)


# ---------------------------------------------------------------------------
# Huge pages again once dirty logging is off
# ---------------------------------------------------------------------------
def _check_kvm_slot(kvm, slot) -> None:
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    if not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"slot must be a KvmMemorySlot, got {type(slot).__name__}")


@cpu_code
def kvm_mmu_zap_collapsible_sptes(kvm, slot):
    """Zap the TDP MMU's table SPTEs over ``slot`` that huge pages could replace.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_zap_collapsible_sptes() (up to 6.12)

    What disabling dirty logging did up to Linux 6.12: zap, under mmu_lock
    held for read, and let the next faults map huge pages.
    """
    _check_kvm_slot(kvm, slot)
    yield from kvm.mmu_lock.read_lock()
    yield from kvm_tdp_mmu_zap_collapsible_sptes(kvm, slot)
    yield from kvm.mmu_lock.read_unlock()


@cpu_code
def kvm_mmu_recover_huge_pages(kvm, slot):
    """Replace the TDP MMU's table SPTEs over ``slot`` with huge SPTEs where the host allows.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_recover_huge_pages()

    What disabling dirty logging does since Linux 6.13
    (``kvm_mmu_slot_apply_flags()``), under mmu_lock held for read.
    """
    _check_kvm_slot(kvm, slot)
    yield from kvm.mmu_lock.read_lock()
    yield from kvm_tdp_mmu_recover_huge_pages(kvm, slot)
    yield from kvm.mmu_lock.read_unlock()
