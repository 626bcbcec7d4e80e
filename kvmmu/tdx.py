"""TDX's populate path: KVM_TDX_INIT_MEM_REGION maps a TD's initial memory.

Models: arch/x86/kvm/vmx/tdx.c: tdx_vcpu_init_mem_region(), tdx_gmem_post_populate()

Reference version: Linux 6.17 (read at v6.17-rc3).  Before a TD runs, the
VMM copies its initial image into private memory with this vCPU ioctl; for
each page KVM maps the gpa through ``kvm_tdp_map_page()``, the same retry
loop as ``KVM_PRE_FAULT_MEMORY``, but holding ``kvm->slots_lock`` for the
whole call instead of ``kvm->srcu``.  A memslot update takes the same lock,
so the two are serialised: populate sees a slot whole or not at all, never
flagged INVALID (chapter 6).

**Where the model simplifies.**  No guest_memfd, no TDX module, no source
page: each page is a shared read fault through ``kvm_tdp_map_page()``
(``tdx_gmem_post_populate()`` reduced to that call), and the call stops at
the first page that fails.  The ioctl's signal check between pages is left
out.
"""
from __future__ import annotations

from .checks import check_int
from .cpu import cpu_code
from .explorer import step
from .kvm_host import KvmVcpu
from .levels import PAGE_SHIFT, PAGE_SIZE
from .memslots import GFN_MAX
from .mmu import kvm_mmu_reload, kvm_tdp_map_page
from .pferr import PFERR_GUEST_FINAL_MASK

__all__ = ["tdx_vcpu_init_mem_region"]


@cpu_code
def tdx_vcpu_init_mem_region(vcpu: KvmVcpu, gpa: int, npages: int):
    """Map ``npages`` pages from ``gpa`` with ``slots_lock`` held; one result per page tried.

    Models: arch/x86/kvm/vmx/tdx.c: tdx_vcpu_init_mem_region(), tdx_gmem_post_populate()

    Returns a tuple of ``kvm_tdp_map_page()`` results (0 or -errno), ending
    at the first error.
    """
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    check_int("gpa", gpa, 0, GFN_MAX << PAGE_SHIFT)
    if gpa % PAGE_SIZE:
        raise ValueError(f"gpa must be page aligned, got {gpa:#x}")
    check_int("npages", npages, 1, 512)
    kvm = vcpu.kvm
    yield from kvm.slots_lock.lock()
    yield from step("kvm_mmu_reload", lambda: kvm_mmu_reload(vcpu))
    results = ()
    for i in range(npages):
        r, _level = yield from kvm_tdp_map_page(vcpu, gpa + i * PAGE_SIZE,
                                                PFERR_GUEST_FINAL_MASK)
        results += (r,)
        if r < 0:
            break
    yield from kvm.slots_lock.unlock()
    return results
