"""The guest MMU context: the permission and protection-key bitmaps, the reserved-bit masks.

Models: arch/x86/include/asm/kvm_host.h: struct kvm_mmu
Models: arch/x86/kvm/mmu/mmu.c: update_permission_bitmask(), update_pkru_bitmask(), __reset_rsvds_bits_mask()
Models: arch/x86/kvm/mmu.h: permission_fault()
Models: arch/x86/kvm/mmu/spte.h: rsvd_bits()

Reference version: Linux 6.17 (read at v6.17-rc3), kernel-facts §5(a).  The
reserved-bit masks follow the architecture (Intel SDM vol. 3 ch. 4, AMD APM
vol. 2 ch. 5) in the layout of mmu.c's ``__reset_rsvds_bits_mask``.

On every change of CR0, CR4 or EFER, ``kvm_init_mmu`` precomputes what the
walker will need so that a walk decides a fault with table lookups:
``permissions[]`` (which U/W/X combinations fault for each error code, SMEP
and SMAP folded in), ``pkru_mask`` (which PKRU bits apply) and
``rsvd_bits_mask`` (the bits that must be zero at each level).
:func:`permission_fault` is the lookup the walker does at the leaf.

**Where the model simplifies.**  Only the guest walker's context (no EPT
and no shadow/TDP root context, so no ``ept`` branches in the bitmaps);
``have_ad`` is always true (PTTYPE 64 always has A/D bits).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .pferr import (PFERR_FETCH_MASK, PFERR_IMPLICIT_ACCESS, PFERR_PK_MASK, PFERR_PRESENT_MASK,
                    PFERR_RSVD_MASK, PFERR_USER_MASK, PFERR_WRITE_MASK)
from .spte import ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, PT_USER_MASK

if TYPE_CHECKING:                        # (annotations only: guest_paging imports this module)
    from .guest_paging import Vcpu


def rsvd_bits(s: int, e: int) -> int:
    """Return a mask of bits ``s`` to ``e`` inclusive (0 if ``e < s``).

    Models: arch/x86/kvm/mmu/spte.h: rsvd_bits()
    """
    if e < s:
        return 0
    return ((1 << (e - s + 1)) - 1) << s


# ===========================================================================
# The MMU context derived from the vCPU's registers.
# ===========================================================================
class KvmMmu:
    """The guest MMU context: paging mode, permission bitmap, pkru mask, reserved bits.

    Computed once from the vCPU's registers, as ``kvm_init_mmu`` does on
    every change of CR0/CR4/EFER.

    Models: arch/x86/include/asm/kvm_host.h: struct kvm_mmu
    """

    __slots__ = ("root_level", "cr0_wp", "cr4_smep", "cr4_smap", "cr4_pke", "efer_nx",
                 "permissions", "pkru_mask", "rsvd_bits_mask", "have_ad", "maxphyaddr",
                 "gbpages")

    def __init__(self, root_level, cr0_wp, cr4_smep, cr4_smap, cr4_pke, efer_nx,
                 maxphyaddr, gbpages):
        self.root_level = root_level
        self.cr0_wp = cr0_wp
        self.cr4_smep = cr4_smep
        self.cr4_smap = cr4_smap
        self.cr4_pke = cr4_pke
        self.efer_nx = efer_nx
        self.maxphyaddr = maxphyaddr
        self.gbpages = gbpages
        self.have_ad = True
        self.permissions = [0] * 16
        self.pkru_mask = 0
        self.rsvd_bits_mask = [[0] * 5, [0] * 5]
        update_permission_bitmask(self)
        update_pkru_bitmask(self)
        reset_guest_rsvds_bits_mask(self)


def update_permission_bitmask(mmu: KvmMmu) -> None:
    """Fill ``mmu.permissions``: for each error-code index, which U/W/X combinations fault.

    ``permissions[pfec >> 1]`` is a byte; bit ``a`` is set iff a page whose
    accumulated access is ``a`` (ACC_USER|ACC_WRITE|ACC_EXEC bits) faults
    for that access.  The RSVD position of the index means "SMAP is
    overridden for this access" (EFLAGS.AC on an explicit access).

    Models: arch/x86/kvm/mmu/mmu.c: update_permission_bitmask()
    """
    # BYTE_MASK(acc): bit a set iff pte_access a has that permission
    x = sum(1 << a for a in range(8) if a & ACC_EXEC_MASK)     # 0xAA
    w = sum(1 << a for a in range(8) if a & ACC_WRITE_MASK)    # 0xCC
    u = sum(1 << a for a in range(8) if a & ACC_USER_MASK)     # 0xF0
    for index in range(16):
        pfec = index << 1
        wf = (~w & 0xFF) if pfec & PFERR_WRITE_MASK else 0
        uf = (~u & 0xFF) if pfec & PFERR_USER_MASK else 0
        ff = (~x & 0xFF) if pfec & PFERR_FETCH_MASK else 0
        smepf = smapf = 0
        # supervisor accesses to user pages (not EPT: this model has none)
        kf = 0 if pfec & PFERR_USER_MASK else u
        if not mmu.efer_nx:
            ff = 0              # with EFER.NX=0, an NX bit is a reserved bit instead
        if not mmu.cr0_wp:
            wf = wf if pfec & PFERR_USER_MASK else 0
        if mmu.cr4_smep:
            smepf = kf if pfec & PFERR_FETCH_MASK else 0
        if mmu.cr4_smap:
            smapf = 0 if pfec & (PFERR_RSVD_MASK | PFERR_FETCH_MASK) else kf
        mmu.permissions[index] = ff | uf | wf | smepf | smapf


def update_pkru_bitmask(mmu: KvmMmu) -> None:
    """Fill ``mmu.pkru_mask``: for each error code, which PKRU bits (AD, WD) apply.

    Two bits per even ``pfec`` position (the PFERR_RSVD position stands for
    "the page is a user page"): AD for any data access to a user page, WD
    as well for writes that are user accesses or happen with CR0.WP=1.

    Models: arch/x86/kvm/mmu/mmu.c: update_pkru_bitmask()
    """
    mmu.pkru_mask = 0
    if not mmu.cr4_pke:
        return
    for index in range(16):
        pfec = index << 1
        ff = pfec & PFERR_FETCH_MASK
        uf = pfec & PFERR_USER_MASK
        wf = pfec & PFERR_WRITE_MASK
        pte_user = pfec & PFERR_RSVD_MASK
        check_pkey = not ff and pte_user
        check_write = check_pkey and wf and (uf or mmu.cr0_wp)
        pkey_bits = (1 if check_pkey else 0) | ((1 if check_write else 0) << 1)
        mmu.pkru_mask |= (pkey_bits & 3) << pfec


def reset_guest_rsvds_bits_mask(mmu: KvmMmu) -> None:
    """Fill ``mmu.rsvd_bits_mask[bit7][level-1]``: bits that must be 0 in a gpte.

    Bits from MAXPHYADDR up to 51 (62 for PAE); bit 63 without EFER.NX;
    PS at the top levels and, without 1G-page support, in PDPTEs; the
    low address bits of a large page (which must be aligned).

    Models: arch/x86/kvm/mmu/mmu.c: __reset_rsvds_bits_mask()
    """
    pa_bits_rsvd = rsvd_bits(mmu.maxphyaddr, 63)
    if mmu.root_level == 3:
        high = pa_bits_rsvd & rsvd_bits(0, 62)
    else:
        high = pa_bits_rsvd & rsvd_bits(0, 51)
    if not mmu.efer_nx:
        high |= rsvd_bits(63, 63)
    gbpages_bit_rsvd = 0 if mmu.gbpages else rsvd_bits(7, 7)
    m = mmu.rsvd_bits_mask
    if mmu.root_level == 3:
        # PDPTEs: bit 63, 8:5 and 2:1 reserved (checked when CR3 is loaded)
        m[0][2] = rsvd_bits(63, 63) | high | rsvd_bits(5, 8) | rsvd_bits(1, 2)
        m[0][1] = high
        m[0][0] = high
        m[1][1] = high | rsvd_bits(13, 20)          # 2M page: gpa bits 20:13
        m[1][0] = m[0][0]
        m[1][2] = m[0][2]
        return
    if mmu.root_level == 5:
        m[0][4] = high | rsvd_bits(7, 7)
        m[1][4] = m[0][4]
    m[0][3] = high | rsvd_bits(7, 7)
    m[0][2] = high | gbpages_bit_rsvd
    m[0][1] = high
    m[0][0] = high
    m[1][3] = m[0][3]
    m[1][2] = high | gbpages_bit_rsvd | rsvd_bits(13, 29)   # 1G page: bits 29:13
    m[1][1] = high | rsvd_bits(13, 20)                      # 2M page: bits 20:13
    m[1][0] = m[0][0]                                       # bit 7 is PAT in a PTE


def permission_fault(vcpu: Vcpu, mmu: KvmMmu, pte_access: int, pte_pkey: int, access: int) -> int:
    """Return 0, or the error-code bits of a permission fault (P, and PK for a key fault).

    One table lookup decides U/W/X, SMEP and SMAP: ``permissions[pfec>>1]``
    with the RSVD position of the index set when EFLAGS.AC lifts SMAP for
    an explicit access.  Protection keys are checked after it.

    Models: arch/x86/kvm/mmu.h: permission_fault()
    """
    pfec = access & 0xFFFF_FFFF             # the implicit-access flag is above bit 31
    implicit = access & PFERR_IMPLICIT_ACCESS
    not_smap = vcpu.eflags_ac and not implicit
    index = (pfec | (PFERR_RSVD_MASK if not_smap else 0)) >> 1
    errcode = PFERR_PRESENT_MASK
    fault = (mmu.permissions[index] >> pte_access) & 1
    if mmu.pkru_mask:
        pkru_bits = (vcpu.pkru >> (pte_pkey * 2)) & 3
        offset = (pfec & ~1) | (PFERR_RSVD_MASK if pte_access & PT_USER_MASK else 0)
        pkru_bits &= mmu.pkru_mask >> offset
        if pkru_bits:
            errcode |= PFERR_PK_MASK
            fault = 1
    return errcode if fault else 0
