"""The vCPU's paging registers and the guest MMU context KVM derives from them.

Models: arch/x86/include/asm/kvm_host.h: struct kvm_mmu
Models: arch/x86/kvm/mmu/mmu.c: update_permission_bitmask(), update_pkru_bitmask(), __reset_rsvds_bits_mask()
Models: arch/x86/kvm/mmu.h: permission_fault()

Reference version: Linux 6.17 (read at v6.17-rc3).  The reserved-bit masks
follow the architecture (Intel SDM vol. 3 ch. 4, AMD APM vol. 2 ch. 5) in the
layout of mmu.c's ``__reset_rsvds_bits_mask``.

A vCPU's paging registers are a value, :class:`KvmVcpuArch` (the part of
``struct kvm_vcpu_arch`` a guest walk reads: CR0, CR3, CR4, EFER, RFLAGS,
PKRU, the PAE PDPTEs, and the CPUID facts MAXPHYADDR and 1 GiB pages); a
vCPU holds it in ``KvmVcpu.arch``.  On every change of CR0, CR4 or EFER,
``kvm_init_mmu`` precomputes what the walker will need, so that a walk
decides a fault with table lookups: ``permissions[]`` (which U/W/X
combinations fault for each error code, SMEP and SMAP folded in),
``pkru_mask`` (which PKRU bits apply) and ``rsvd_bits_mask`` (the bits that
must be zero at each level).  The model computes that context,
:class:`KvmMmu`, once per register value: ``KvmVcpuArch.walk_mmu``.
:func:`permission_fault` is the lookup the walker does at the leaf.

**Where the model simplifies.**  Only the guest walker's context (no EPT
and no shadow/TDP root context, so no ``ept`` branches in the bitmaps);
``have_ad`` is always true (PTTYPE 64 always has A/D bits).  The registers
are booleans for the bits the walk reads; the others are not modelled.
"""
from __future__ import annotations

from dataclasses import dataclass

from .checks import check_bool, check_int, check_u64
from .pferr import (PFERR_FETCH_MASK, PFERR_IMPLICIT_ACCESS, PFERR_PK_MASK, PFERR_PRESENT_MASK,
                    PFERR_RSVD_MASK, PFERR_USER_MASK, PFERR_WRITE_MASK)
from .spte import ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, PT_USER_MASK, rsvd_bits

__all__ = [
    "X86_CR0_PE", "X86_CR0_WP", "X86_CR0_PG", "X86_CR4_PAE", "X86_CR4_LA57", "X86_CR4_SMEP",
    "X86_CR4_SMAP", "X86_CR4_PKE", "EFER_LME", "EFER_LMA", "EFER_NX", "X86_EFLAGS_AC",
    "PAGING_MODES", "KvmMmu", "KvmVcpuArch", "update_permission_bitmask",
    "update_pkru_bitmask", "reset_guest_rsvds_bits_mask", "permission_fault",
]

# ---- control-register bits (arch/x86/include/uapi/asm/processor-flags.h) --
X86_CR0_PE = 1 << 0
X86_CR0_WP = 1 << 16
X86_CR0_PG = 1 << 31
X86_CR4_PAE = 1 << 5
X86_CR4_LA57 = 1 << 12
X86_CR4_SMEP = 1 << 20
X86_CR4_SMAP = 1 << 21
X86_CR4_PKE = 1 << 22
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NX = 1 << 11
X86_EFLAGS_AC = 1 << 18

#: The paging modes the model walks, by root level.
PAGING_MODES = {5: "5-level", 4: "4-level", 3: "PAE"}

#: The access bits a pfec (error code) passed to permission_fault may carry.
_PFEC_BITS = PFERR_WRITE_MASK | PFERR_USER_MASK | PFERR_FETCH_MASK | PFERR_IMPLICIT_ACCESS


# ===========================================================================
# The MMU context.
# ===========================================================================
class KvmMmu:
    """The guest MMU context: paging mode, permission bitmap, pkru mask, reserved bits.

    Models: arch/x86/include/asm/kvm_host.h: struct kvm_mmu

    Computed once from the vCPU's registers, as ``kvm_init_mmu`` does on
    every change of CR0/CR4/EFER; a value: nothing changes it afterwards.
    """

    __slots__ = ("root_level", "cr0_wp", "cr4_smep", "cr4_smap", "cr4_pke", "efer_nx",
                 "permissions", "pkru_mask", "rsvd_bits_mask", "have_ad", "maxphyaddr",
                 "gbpages")

    def __init__(self, root_level: int, cr0_wp: bool, cr4_smep: bool, cr4_smap: bool,
                 cr4_pke: bool, efer_nx: bool, maxphyaddr: int = 46, gbpages: bool = True):
        check_int("root_level", root_level, 3, 5)
        for name, value in (("cr0_wp", cr0_wp), ("cr4_smep", cr4_smep), ("cr4_smap", cr4_smap),
                            ("cr4_pke", cr4_pke), ("efer_nx", efer_nx), ("gbpages", gbpages)):
            check_bool(name, value)
        check_int("maxphyaddr", maxphyaddr, 36, 52)
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

    def _inputs(self) -> tuple:
        return (self.root_level, self.cr0_wp, self.cr4_smep, self.cr4_smap, self.cr4_pke,
                self.efer_nx, self.maxphyaddr, self.gbpages)

    # A value: equal when built from equal registers (and nothing changes it
    # afterwards), so an explorer state key holds it as itself.
    def __eq__(self, other):
        return type(other) is KvmMmu and other._inputs() == self._inputs()

    def __hash__(self):
        return hash(self._inputs())

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    def __repr__(self) -> str:
        return f"KvmMmu({PAGING_MODES[self.root_level]}, permissions={self.permissions})"


def _check_mmu(mmu) -> KvmMmu:
    if not isinstance(mmu, KvmMmu):
        raise TypeError(f"mmu must be a KvmMmu, got {type(mmu).__name__}")
    return mmu


def update_permission_bitmask(mmu: KvmMmu) -> None:
    """Fill ``mmu.permissions``: for each error-code index, which U/W/X combinations fault.

    Models: arch/x86/kvm/mmu/mmu.c: update_permission_bitmask()

    ``permissions[pfec >> 1]`` is a byte; bit ``a`` is set iff a page whose
    accumulated access is ``a`` (ACC_USER|ACC_WRITE|ACC_EXEC bits) faults
    for that access.  The RSVD position of the index means "SMAP is
    overridden for this access" (EFLAGS.AC on an explicit access).
    """
    _check_mmu(mmu)
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

    Models: arch/x86/kvm/mmu/mmu.c: update_pkru_bitmask()

    Two bits per even ``pfec`` position (the PFERR_RSVD position stands for
    "the page is a user page"): AD for any data access to a user page, WD
    as well for writes that are user accesses or happen with CR0.WP=1.
    """
    _check_mmu(mmu)
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

    Models: arch/x86/kvm/mmu/mmu.c: __reset_rsvds_bits_mask()

    Bits from MAXPHYADDR up to 51 (62 for PAE); bit 63 without EFER.NX;
    PS at the top levels and, without 1G-page support, in PDPTEs; the
    low address bits of a large page (which must be aligned).
    """
    _check_mmu(mmu)
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


def _check_permission_args(vcpu, mmu, pte_access, pte_pkey, access) -> None:
    if not isinstance(vcpu, KvmVcpuArch):
        raise TypeError(f"vcpu must be the vCPU's registers (a KvmVcpuArch), "
                        f"got {type(vcpu).__name__}")
    _check_mmu(mmu)
    check_int("pte_access", pte_access, 0, 7)
    check_int("pte_pkey", pte_pkey, 0, 15)
    check_u64("access", access)
    if access & ~_PFEC_BITS:
        raise ValueError(f"access has bits {access & ~_PFEC_BITS:#x} that are not an access "
                         "(allowed: PFERR_WRITE 0x2, PFERR_USER 0x4, PFERR_FETCH 0x10, "
                         "PFERR_IMPLICIT_ACCESS 1<<48)")


def permission_fault(vcpu: KvmVcpuArch, mmu: KvmMmu, pte_access: int, pte_pkey: int,
                     access: int) -> int:
    """Return 0, or the error-code bits of a permission fault (P, and PK for a key fault).

    Models: arch/x86/kvm/mmu.h: permission_fault()

    One table lookup decides U/W/X, SMEP and SMAP: ``permissions[pfec>>1]``
    with the RSVD position of the index set when EFLAGS.AC lifts SMAP for
    an explicit access.  Protection keys are checked after it.  ``vcpu``
    is the vCPU's registers (the kernel reads RFLAGS and PKRU from the vCPU).
    """
    if (type(pte_access) is not int or not 0 <= pte_access <= 7 or type(pte_pkey) is not int
            or not 0 <= pte_pkey <= 15 or type(access) is not int or access & ~_PFEC_BITS
            or access < 0 or type(mmu) is not KvmMmu or type(vcpu) is not KvmVcpuArch):
        _check_permission_args(vcpu, mmu, pte_access, pte_pkey, access)
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


# ===========================================================================
# The registers.
# ===========================================================================
_BOOL_REGS = ("efer_lma", "cr4_la57", "cr0_wp", "cr4_smep", "cr4_smap", "cr4_pke", "efer_nx",
              "eflags_ac", "gbpages")


@dataclass(frozen=True)
class KvmVcpuArch:
    """The vCPU registers a guest walk depends on: CR3, the paging-mode bits, EFLAGS.AC, PKRU.

    Models: arch/x86/include/asm/kvm_host.h: struct kvm_vcpu_arch (cr0, cr3, cr4, efer, pkru; walk_mmu)

    ``efer_lma`` selects 64-bit paging (4-level, or 5-level with
    ``cr4_la57``); without it the vCPU uses PAE paging and needs ``pdptrs``
    (``kvmmu.x86.load_pdptrs``).  ``maxphyaddr`` is the guest's CPUID
    physical-address width; ``gbpages`` whether 1 GiB pages exist.  The MMU
    context computed from the registers is ``walk_mmu`` (an attribute, not a
    field: a function of the fields, as ``kvm_init_mmu`` computes it).
    """

    cr3: int
    efer_lma: bool = True
    cr4_la57: bool = False
    cr0_wp: bool = True
    cr4_smep: bool = False
    cr4_smap: bool = False
    cr4_pke: bool = False
    efer_nx: bool = True
    eflags_ac: bool = False
    pkru: int = 0
    maxphyaddr: int = 46
    gbpages: bool = True
    pdptrs: tuple | None = None

    def __post_init__(self):
        check_u64("cr3", self.cr3)
        for name in _BOOL_REGS:
            check_bool(name, getattr(self, name))
        check_int("pkru", self.pkru, 0, 0xFFFF_FFFF)
        check_int("maxphyaddr", self.maxphyaddr, 36, 52)
        if self.cr3 & ~((1 << self.maxphyaddr) - 1):
            raise ValueError(f"cr3 {self.cr3:#x} has bits above MAXPHYADDR={self.maxphyaddr}: "
                             "the MOV to CR3 would raise #GP")
        if self.cr4_la57 and not self.efer_lma:
            raise ValueError("cr4_la57 needs efer_lma: 5-level paging exists only in long mode")
        if self.efer_lma:
            root = 5 if self.cr4_la57 else 4
            if self.pdptrs is not None:
                raise ValueError("pdptrs are only for PAE paging (efer_lma=False)")
        else:
            root = 3
            if not isinstance(self.pdptrs, tuple) or len(self.pdptrs) != 4:
                raise ValueError("PAE paging (efer_lma=False) needs pdptrs: a tuple of 4 PDPTEs "
                                 "from kvmmu.x86.load_pdptrs(vcpu, cr3)")
            for i, p in enumerate(self.pdptrs):
                check_u64(f"pdptrs[{i}]", p)
            if self.cr3 >> 32:
                raise ValueError(f"cr3 must be below 4 GiB for PAE paging, got {self.cr3:#x}")
        # protection keys exist only in IA-32e mode
        mmu = KvmMmu(root, self.cr0_wp, self.cr4_smep, self.cr4_smap,
                     self.cr4_pke and self.efer_lma, self.efer_nx, self.maxphyaddr, self.gbpages)
        object.__setattr__(self, "walk_mmu", mmu)

    def __deepcopy__(self, memo):
        return self                 # immutable, and walk_mmu is derived from the fields

    def __copy__(self):
        return self

    def __repr__(self) -> str:
        return f"KvmVcpuArch(cr3={self.cr3:#x}, {self.mode})"

    @property
    def root_level(self) -> int:
        return self.walk_mmu.root_level

    @property
    def mode(self) -> str:
        """``"4-level"``, ``"5-level"`` or ``"PAE"``."""
        return PAGING_MODES[self.walk_mmu.root_level]

    @property
    def cr0(self) -> int:
        return X86_CR0_PG | X86_CR0_PE | (X86_CR0_WP if self.cr0_wp else 0)

    @property
    def cr4(self) -> int:
        return (X86_CR4_PAE | (X86_CR4_LA57 if self.cr4_la57 else 0)
                | (X86_CR4_SMEP if self.cr4_smep else 0) | (X86_CR4_SMAP if self.cr4_smap else 0)
                | (X86_CR4_PKE if self.cr4_pke else 0))

    @property
    def efer(self) -> int:
        return (EFER_LME | EFER_LMA if self.efer_lma else 0) | (EFER_NX if self.efer_nx else 0)

    @property
    def rflags(self) -> int:
        return 0x2 | (X86_EFLAGS_AC if self.eflags_ac else 0)
