"""KVM_RUN: a vCPU runs its guest, which touches memory; an EPT violation comes back to KVM.

Models: arch/x86/kvm/x86.c: vcpu_run(), vcpu_enter_guest(), load_pdptrs()

Reference version: Linux 6.17 (read at v6.17-rc3).  The guest is reduced to
one memory access; what matters is what KVM does around it: before each
entry it handles pending requests and makes sure the vCPU has a usable root
(``kvm_mmu_reload``), the guest runs *outside* ``kvm->srcu``, and an EPT
violation is handled under ``kvm->srcu`` by the one fault path
(:func:`kvmmu.mmu.kvm_mmu_page_fault`).  ``RET_PF_RETRY`` re-enters the
guest, which repeats the access.

The guest's access is a gpa it touches (one step: a TLB hit, or the
hardware's walk of the EPT that fills the TLB), or any CPU code given as
``guest``: chapter 7's guest walks its own page tables first, each table
read a gpa access through EPT (:func:`kvmmu.guest.guest_load`).

**Where the model simplifies.**  No instruction emulation: ``RET_PF_EMULATE``
ends the run as an MMIO exit.  A retry waits until something the fault read
has changed (:func:`kvmmu.mmu.retry_wait`), or, with ``faults`` given,
gives up after that many faults (a guest that moves on).
"""
from .checks import check_bool, check_int, check_u64
from .cpu import cpu_code
from .errno import RET_PF_EMULATE, RET_PF_FIXED, RET_PF_RETRY, RET_PF_RETRY_INVALID_SLOT
from .errno import RET_PF_SPURIOUS, RET_PF_WRITE_PROTECTED, errno_name, ret_pf_name
from .explorer import step
from .kvm_host import (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, KvmVcpu, kvm_check_request,
                       kvm_vcpu_read_guest)
from .levels import PAGE_SHIFT
from .mmu import kvm_mmu_free_obsolete_roots, kvm_mmu_page_fault, kvm_mmu_reload, retry_wait
from .pferr import PFERR_GUEST_FINAL_MASK, PFERR_WRITE_MASK
from .spte import PT_PRESENT_MASK, rsvd_bits

__all__ = ["EptViolation", "vcpu_enter_guest_requests", "vcpu_run", "load_pdptrs"]


class EptViolation(tuple):
    """A guest's run ends in an EPT violation: the gpa EPT did not map, its error code.

    ``(gpa, error_code)``.  The error code is what the EPT-violation handler
    makes of the exit qualification (``PFERR_WRITE_MASK`` for a write,
    ``PFERR_GUEST_FINAL_MASK`` for the access itself,
    ``PFERR_GUEST_PAGE_MASK`` for a read of the guest's page tables).  A value.
    """

    __slots__ = ()

    def __new__(cls, gpa: int, error_code: int):
        check_int("gpa", gpa, 0, (1 << 52) - 1)
        check_u64("error_code", error_code)
        return super().__new__(cls, (gpa, error_code))

    def __getnewargs__(self):
        return tuple(self)

    def __deepcopy__(self, memo):
        return self                 # a value

    gpa = property(lambda self: self[0])
    error_code = property(lambda self: self[1])

    def __repr__(self) -> str:
        return f"EPT violation at gpa {self.gpa:#x}"


def vcpu_enter_guest_requests(vcpu: KvmVcpu) -> int:
    """What KVM does before entering the guest: pending requests, then a usable root.

    Models: arch/x86/kvm/x86.c: vcpu_enter_guest()

    Plain computation: the caller makes it one step.
    """
    if kvm_check_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu):
        kvm_mmu_free_obsolete_roots(vcpu)
    return kvm_mmu_reload(vcpu)


def _touch_gpa(vcpu: KvmVcpu, gpa: int, write: bool):
    # The default guest: one access to gpa (a TLB hit, or EPT fills the TLB).
    hit = yield from vcpu.kvm.tlbs.access(vcpu.vcpu_id, gpa >> PAGE_SHIFT, write)
    if hit is not None:
        return f"hit {hit.pfn:#x}"
    write_mask = PFERR_WRITE_MASK if write else 0
    return EptViolation(gpa, PFERR_GUEST_FINAL_MASK | write_mask)


@cpu_code
def vcpu_run(vcpu: KvmVcpu, gpa: int | None = None, write: bool = False,
             faults: int | None = None, guest=None):
    """KVM_RUN with a guest that reads (or writes) ``gpa`` once; what the run ends with.

    Models: arch/x86/kvm/x86.c: vcpu_run()

    Returns ``"hit <pfn>"`` once the guest's access went through, the
    fault's result name when it ends the run (``"KVM_EXIT_MMIO"`` for
    RET_PF_EMULATE, a -errno), or, with ``faults``, ``"RET_PF_RETRY"`` after
    that many faults without success.  ``guest`` instead of ``gpa``: CPU
    code ``guest(vcpu)`` that runs the guest until it exits, returning an
    :class:`EptViolation` for KVM to handle, or the text that ends the run
    (its access went through, or the guest took a fault of its own).
    """
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    if (gpa is None) == (guest is None):
        raise TypeError("vcpu_run needs one of gpa (an int) and guest (CPU code)")
    if guest is None:
        check_int("gpa", gpa, 0, (1 << 52) - 1)
    elif not callable(guest):
        raise TypeError(f"guest must be callable (vcpu -> CPU code), "
                        f"got {type(guest).__name__}")
    check_bool("write", write)
    if faults is not None:
        check_int("faults", faults, 1, 16)
    kvm = vcpu.kvm
    taken = 0
    while True:
        yield from step("vcpu_enter_guest: requests, kvm_mmu_reload",
                        lambda: vcpu_enter_guest_requests(vcpu))
        if guest is None:
            exit_ = yield from _touch_gpa(vcpu, gpa, write)
        else:
            exit_ = yield from guest(vcpu)
        if type(exit_) is not EptViolation:
            return exit_
        # The EPT violation exits to KVM, which handles it under kvm->srcu.
        vcpu.srcu_idx = yield from kvm.srcu.read_lock()
        r = yield from kvm_mmu_page_fault(vcpu, exit_.gpa, exit_.error_code)
        yield from kvm.srcu.read_unlock(vcpu.srcu_idx)
        vcpu.srcu_idx = None
        taken += 1
        if r in (RET_PF_FIXED, RET_PF_SPURIOUS, RET_PF_WRITE_PROTECTED):
            continue                    # re-enter: the access goes through now
        if r == RET_PF_EMULATE:
            return "KVM_EXIT_MMIO"
        if r < 0:
            return errno_name(r)
        if r not in (RET_PF_RETRY, RET_PF_RETRY_INVALID_SLOT):
            return ret_pf_name(r)
        if faults is not None and taken >= faults:
            return ret_pf_name(r)
        # Re-entering the guest handles pending requests first: a root made
        # obsolete after the fault looked is replaced before the retry.
        yield from retry_wait(vcpu, "RET_PF_RETRY: the guest re-executes the access",
                              frees_obsolete_roots=True)


def load_pdptrs(vcpu: KvmVcpu, cr3: int, maxphyaddr: int = 46) -> tuple:
    """Read the four PAE PDPTEs at ``cr3``, as a MOV to CR3 in PAE mode does; return them.

    Models: arch/x86/kvm/x86.c: load_pdptrs()

    The kernel returns 0 when a present PDPTE has a reserved bit set (or
    cannot be read) and the caller injects #GP; the model raises
    ``ValueError`` naming the entry.  Plain computation (set-up of the
    vCPU's registers).
    """
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    check_u64("cr3", cr3)
    check_int("maxphyaddr", maxphyaddr, 36, 52)
    if cr3 >> 32:
        raise ValueError(f"cr3 must be below 4 GiB for PAE paging, got {cr3:#x}")
    base = cr3 & 0xFFFF_FFE0
    rsvd = rsvd_bits(maxphyaddr, 63) | rsvd_bits(5, 8) | rsvd_bits(1, 2)
    pdptrs = []
    for i in range(4):
        ret, pdpte = kvm_vcpu_read_guest(vcpu, base + 8 * i)
        if ret:
            raise ValueError(f"PDPTE {i} at gpa {base + 8 * i:#x} cannot be read: the CR3 load fails")
        if pdpte & PT_PRESENT_MASK and pdpte & rsvd:
            raise ValueError(f"PDPTE {i} = {pdpte:#x} has reserved bits {pdpte & rsvd:#x} set: "
                             "the MOV to CR3 would raise #GP")
        pdptrs.append(pdpte)
    return tuple(pdptrs)
