"""The SPTE format: the 64-bit entries of KVM's shadow and TDP page tables.

Models: arch/x86/kvm/mmu/spte.h: SPTE_MMU_PRESENT_MASK, SPTE_TDP_AD_MASK
Models: arch/x86/kvm/mmu/spte.h: SPTE_BASE_ADDR_MASK, SHADOW_NONPRESENT_VALUE
Models: arch/x86/kvm/mmu/spte.h: FROZEN_SPTE, SHADOW_ACC_TRACK_SAVED_BITS_MASK
Models: arch/x86/kvm/mmu/spte.h: MMIO_SPTE_GEN_MASK, SPTE_MMIO_ALLOWED_MASK
Models: arch/x86/kvm/mmu/mmu.h: PT_WRITABLE_MASK, PT_PAGE_SIZE_MASK, PT64_NX_MASK
Models: arch/x86/include/asm/vmx.h: VMX_EPT_RWX_MASK, VMX_EPT_MISCONFIG_WX_VALUE
Models: arch/x86/include/asm/vmx.h: VMX_EPT_SUPPRESS_VE_BIT

The functions below carry their own ``Models:`` lines (spte.h, spte.c, and
mmu.c for check_mmio_spte/get_mmio_spte_gfn/get_mmio_spte_access).  The
``Historical:`` lines mark code from before 6.17, kept for the 2021 debate.
The removed value was bit 59 when Ben Gardon's series was merged (5.12,
``REMOVED_SPTE_2021``); ``0x5a0`` from 5.13 to 6.9 (``REMOVED_SPTE_OLD``,
Sean Christopherson's "KVM: x86/mmu: Use low available bits for removed
SPTEs", posted 2021-02-25, commit 715f1079eee1); ``SHADOW_NONPRESENT_VALUE
| 0x5a0`` = bit 63 | ``0x5a0`` since 6.10, when commit 7f01cab84928 ("KVM:
x86/mmu: Allow non-zero value for non-present SPTE and removed SPTE") made
the non-present value bit 63 for TDX; and 6.11's commit 964cea817196 only
renamed it ``FROZEN_SPTE``, value unchanged.

Reference version: Linux 6.17 (read at v6.17-rc3).

**Globals made explicit.**  The kernel keeps the vendor-specific masks
(``shadow_present_mask``, ``shadow_x_mask``, ``shadow_mmio_value`` ...) in
``__read_mostly`` globals that one vendor module sets at load time.  The model
puts them in an immutable :class:`SpteConfig` and passes it to every function
that reads them (``cfg=``), so an EPT SPTE and an AMD NPT SPTE can be built
and compared side by side in one notebook.  Functions that read no global
(``spte_to_pfn``, ``is_shadow_present_pte``, ``is_frozen_spte`` ...) take no
``cfg``.  Build a configuration with :func:`kvm_mmu_set_ept_masks` (Intel EPT)
or :func:`kvm_mmu_reset_all_pte_masks` (AMD NPT and shadow paging), or use the
predefined ``EPT_AD``, ``EPT_NO_AD`` and ``NPT``.

**Where the model simplifies.**

- One ``phys_bits`` stands for both ``boot_cpu_data.x86_phys_bits`` and the
  raw CPUID MAXPHYADDR (``kvm_host.maxphyaddr``); they differ only with SME or
  MKTME, which the model leaves out along with ``shadow_me_value`` /
  ``shadow_me_mask`` (always 0 here) and ``CONFIG_DYNAMIC_PHYSICAL_MASK``.
- ``make_spte`` takes the results of the vCPU/VM queries it makes as explicit
  arguments: the memory type that ``get_mt_mask`` would return (``memtype``,
  EPT default 0x70 = WB<<3 | IPAT, a modelling choice), whether
  ``mmu_try_to_unsync_pages`` refuses (``write_tracked``), the NX huge page
  mitigation (``nx_huge_pages``), and the shadow page's role
  (``ad_disabled``, ``ad_need_write_protect``).  It does not check reserved
  bits (``shadow_zero_check``), mark the memslot dirty, or track host-MMIO
  mappings for the CPU-buffer-clearing mitigation.
- Where the kernel WARNs and carries on, the model raises
  :class:`KernelWarn`: a model that silently continued would hide the bug the
  WARN reports.  ``kvm_mmu_set_mmio_spte_mask`` is the exception: its WARNs
  disable MMIO caching, and the model records why in the configuration.
- The per-VM ``kvm->arch.shadow_mmio_value`` (different only for TDX) is the
  configuration's ``shadow_mmio_value``.  TDX, SEV and SME are not modelled.
- The lost-Dirty-bit race of Documentation/virt/kvm/locking.rst, the reason
  ``spte_needs_atomic_update`` exists, is a scenario of the explorer in
  :mod:`kvmmu.scenarios.spte` (``dirty_race_scenario``): one write-protect
  against one guest write on one SPTE.  It lives there so that importing
  the SPTE format does not import the explorer (``kvmmu.spte`` depends on
  the small shared core only).
- A/D bits: ``is_accessed_spte`` follows 6.13+ (a plain bit test).
  ``is_dirty_spte`` was removed in 6.13 and is kept as a documented
  pre-6.13 helper because the writable-bit discussion needs it.
"""
from dataclasses import dataclass, field, replace

from .bits import BIT_ULL, GENMASK_ULL, U64_MAX, c_int
# KernelWarn is re-exported: callers catch kvmmu.spte.KernelWarn.
from .checks import KernelWarn  # noqa: F401
from .checks import check_bool, check_choice, check_int, check_u64
from .levels import (
    KVM_HPAGE_SIZE, KVM_MAX_HUGEPAGE_LEVEL, KVM_PAGES_PER_HPAGE, PAGE_SHIFT,
    PAGE_SIZE, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL, check_level,
)

__all__ = [
    "PT_PRESENT_MASK", "PT_WRITABLE_MASK", "PT_USER_MASK", "PT_PWT_MASK",
    "PT_PCD_MASK", "PT_ACCESSED_SHIFT", "PT_ACCESSED_MASK", "PT_DIRTY_SHIFT",
    "PT_DIRTY_MASK", "PT_PAGE_SIZE_SHIFT", "PT_PAGE_SIZE_MASK", "PT_PAT_MASK",
    "PT_GLOBAL_MASK", "PT64_NX_SHIFT", "PT64_NX_MASK", "VMX_EPT_READABLE_MASK",
    "VMX_EPT_WRITABLE_MASK", "VMX_EPT_EXECUTABLE_MASK", "VMX_EPT_RWX_MASK",
    "VMX_EPT_MT_EPTE_SHIFT", "VMX_EPT_MT_MASK", "VMX_EPT_IPAT_BIT",
    "VMX_EPT_ACCESS_BIT", "VMX_EPT_DIRTY_BIT", "VMX_EPT_SUPPRESS_VE_BIT",
    "VMX_EPT_MISCONFIG_WX_VALUE", "MTRR_TYPE_UNCACHABLE", "MTRR_TYPE_WRBACK",
    "EPT_DEFAULT_MEMTYPE", "SPTE_MMU_PRESENT_MASK", "SPTE_TDP_AD_SHIFT",
    "SPTE_TDP_AD_MASK", "SPTE_TDP_AD_ENABLED", "SPTE_TDP_AD_DISABLED",
    "SPTE_TDP_AD_WRPROT_ONLY", "SPTE_BASE_ADDR_MASK", "ACC_EXEC_MASK",
    "ACC_WRITE_MASK", "ACC_USER_MASK", "ACC_ALL", "SPTE_EPT_READABLE_MASK",
    "SPTE_EPT_EXECUTABLE_MASK", "SHADOW_ACC_TRACK_SAVED_BITS_MASK",
    "SHADOW_ACC_TRACK_SAVED_BITS_SHIFT", "SHADOW_ACC_TRACK_SAVED_MASK",
    "DEFAULT_SPTE_HOST_WRITABLE", "DEFAULT_SPTE_MMU_WRITABLE",
    "EPT_SPTE_HOST_WRITABLE", "EPT_SPTE_MMU_WRITABLE", "MMIO_SPTE_GEN_LOW_START",
    "MMIO_SPTE_GEN_LOW_END", "MMIO_SPTE_GEN_HIGH_START", "MMIO_SPTE_GEN_HIGH_END",
    "MMIO_SPTE_GEN_LOW_MASK", "MMIO_SPTE_GEN_HIGH_MASK", "MMIO_SPTE_GEN_LOW_BITS",
    "MMIO_SPTE_GEN_HIGH_BITS", "MMIO_SPTE_GEN_LOW_SHIFT",
    "MMIO_SPTE_GEN_HIGH_SHIFT", "MMIO_SPTE_GEN_MASK", "SPTE_MMIO_ALLOWED_MASK",
    "KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS", "SHADOW_NONPRESENT_VALUE",
    "SHADOW_NONPRESENT_OR_RSVD_MASK_LEN", "FROZEN_SPTE", "REMOVED_SPTE_OLD",
    "FROZEN_SPTE_PROPOSED_2021", "REMOVED_SPTE_2021", "SPTE_SPECIAL_MASK_2021",
    "SPTE_MMIO_MASK_2021", "CLASS_PRESENT_LEAF", "CLASS_PRESENT_NONLEAF",
    "CLASS_ACCESS_TRACKED", "CLASS_MMIO", "CLASS_FROZEN", "CLASS_NONPRESENT",
    "SPTE_CLASSES", "rsvd_bits", "SpteConfig", "kvm_mmu_set_mmio_spte_mask",
    "kvm_mmu_reset_all_pte_masks", "kvm_mmu_set_ept_masks", "EPT_AD", "EPT_NO_AD",
    "NPT", "is_shadow_present_pte", "is_mmio_spte", "is_frozen_spte",
    "is_large_pte", "is_last_spte", "is_executable_pte", "spte_to_pfn",
    "spte_ad_enabled", "spte_ad_need_write_protect", "is_access_track_spte",
    "is_accessed_spte", "is_writable_pte", "is_mmu_writable_spte",
    "is_host_writable_spte", "is_dirty_spte", "is_ept_ve_possible",
    "check_spte_writable_invariants", "leaf_spte_change_needs_tlb_flush",
    "spte_needs_atomic_update", "mark_spte_for_access_track",
    "restore_acc_track_spte", "generation_mmio_spte_mask",
    "get_mmio_spte_generation", "make_mmio_spte", "get_mmio_spte_gfn",
    "get_mmio_spte_access", "check_mmio_spte", "make_spte", "make_nonleaf_spte",
    "modify_spte_protections", "make_small_spte", "make_huge_spte", "classify",
    "HMW_STATES", "hmw_state", "SpteDecode", "decode_spte", "is_mmio_spte_2021",
    "is_shadow_present_pte_2021", "int_bit_test_truncating", "int_bit_test_fixed",
]

# --------------------------------------------------------------------------
# x86 page-table bits (arch/x86/kvm/mmu/mmu.h): the "PT64" layout that AMD NPT
# and shadow paging use.
# --------------------------------------------------------------------------
PT_PRESENT_MASK = 1 << 0
PT_WRITABLE_MASK = 1 << 1
PT_USER_MASK = 1 << 2
PT_PWT_MASK = 1 << 3
PT_PCD_MASK = 1 << 4
PT_ACCESSED_SHIFT = 5
PT_ACCESSED_MASK = 1 << PT_ACCESSED_SHIFT
PT_DIRTY_SHIFT = 6
PT_DIRTY_MASK = 1 << PT_DIRTY_SHIFT
PT_PAGE_SIZE_SHIFT = 7
PT_PAGE_SIZE_MASK = 1 << PT_PAGE_SIZE_SHIFT
PT_PAT_MASK = 1 << 7
PT_GLOBAL_MASK = 1 << 8
PT64_NX_SHIFT = 63
PT64_NX_MASK = 1 << PT64_NX_SHIFT

# --------------------------------------------------------------------------
# EPT bits (arch/x86/include/asm/vmx.h).
# --------------------------------------------------------------------------
VMX_EPT_READABLE_MASK = 0x1
VMX_EPT_WRITABLE_MASK = 0x2
VMX_EPT_EXECUTABLE_MASK = 0x4
VMX_EPT_RWX_MASK = 0x7
VMX_EPT_MT_EPTE_SHIFT = 3
VMX_EPT_MT_MASK = 7 << VMX_EPT_MT_EPTE_SHIFT
VMX_EPT_IPAT_BIT = 1 << 6
VMX_EPT_ACCESS_BIT = 1 << 8
VMX_EPT_DIRTY_BIT = 1 << 9
VMX_EPT_SUPPRESS_VE_BIT = 1 << 63
#: W|X without R: not a legal EPT entry, so the CPU raises an EPT
#: misconfiguration, which is exactly the exit KVM wants for MMIO.
VMX_EPT_MISCONFIG_WX_VALUE = VMX_EPT_WRITABLE_MASK | VMX_EPT_EXECUTABLE_MASK

MTRR_TYPE_UNCACHABLE = 0
MTRR_TYPE_WRBACK = 6
#: What the model assumes ``vmx_get_mt_mask()`` returns for ordinary RAM in a
#: VM without non-coherent DMA: write-back, ignore guest PAT.  A modelling
#: choice: the exact value depends on MTRRs, guest PAT and non-coherent DMA.
EPT_DEFAULT_MEMTYPE = (MTRR_TYPE_WRBACK << VMX_EPT_MT_EPTE_SHIFT) | VMX_EPT_IPAT_BIT

# --------------------------------------------------------------------------
# Generic SPTE bits (arch/x86/kvm/mmu/spte.h).
# --------------------------------------------------------------------------
#: KVM's own "shadow-present" bit.  Bit 11 is ignored by the hardware in every
#: SPTE flavour, and testing a low bit makes smaller code.
SPTE_MMU_PRESENT_MASK = BIT_ULL(11)

SPTE_TDP_AD_SHIFT = 52
SPTE_TDP_AD_MASK = 3 << SPTE_TDP_AD_SHIFT
SPTE_TDP_AD_ENABLED = 0 << SPTE_TDP_AD_SHIFT
SPTE_TDP_AD_DISABLED = 1 << SPTE_TDP_AD_SHIFT
SPTE_TDP_AD_WRPROT_ONLY = 2 << SPTE_TDP_AD_SHIFT

#: Bits 51:12: the page frame (without CONFIG_DYNAMIC_PHYSICAL_MASK).
SPTE_BASE_ADDR_MASK = GENMASK_ULL(51, 12)

ACC_EXEC_MASK = 1
ACC_WRITE_MASK = PT_WRITABLE_MASK
ACC_USER_MASK = PT_USER_MASK
ACC_ALL = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK

SPTE_EPT_READABLE_MASK = 0x1
SPTE_EPT_EXECUTABLE_MASK = 0x4

#: Access tracking saves R and X (not W: a tracked page must also fault on
#: write so dirty logging sees it) in bits 54 and 56.
SHADOW_ACC_TRACK_SAVED_BITS_MASK = SPTE_EPT_READABLE_MASK | SPTE_EPT_EXECUTABLE_MASK
SHADOW_ACC_TRACK_SAVED_BITS_SHIFT = 54
SHADOW_ACC_TRACK_SAVED_MASK = (SHADOW_ACC_TRACK_SAVED_BITS_MASK
                               << SHADOW_ACC_TRACK_SAVED_BITS_SHIFT)

DEFAULT_SPTE_HOST_WRITABLE = BIT_ULL(9)
DEFAULT_SPTE_MMU_WRITABLE = BIT_ULL(10)
EPT_SPTE_HOST_WRITABLE = BIT_ULL(57)
EPT_SPTE_MMU_WRITABLE = BIT_ULL(58)

# MMIO generation: 19 bits split around the bits a present SPTE needs.
MMIO_SPTE_GEN_LOW_START = 3
MMIO_SPTE_GEN_LOW_END = 10
MMIO_SPTE_GEN_HIGH_START = 52
MMIO_SPTE_GEN_HIGH_END = 62
MMIO_SPTE_GEN_LOW_MASK = GENMASK_ULL(MMIO_SPTE_GEN_LOW_END, MMIO_SPTE_GEN_LOW_START)
MMIO_SPTE_GEN_HIGH_MASK = GENMASK_ULL(MMIO_SPTE_GEN_HIGH_END,
                                      MMIO_SPTE_GEN_HIGH_START)
MMIO_SPTE_GEN_LOW_BITS = MMIO_SPTE_GEN_LOW_END - MMIO_SPTE_GEN_LOW_START + 1
MMIO_SPTE_GEN_HIGH_BITS = MMIO_SPTE_GEN_HIGH_END - MMIO_SPTE_GEN_HIGH_START + 1
MMIO_SPTE_GEN_LOW_SHIFT = MMIO_SPTE_GEN_LOW_START - 0
MMIO_SPTE_GEN_HIGH_SHIFT = MMIO_SPTE_GEN_HIGH_START - MMIO_SPTE_GEN_LOW_BITS
MMIO_SPTE_GEN_MASK = GENMASK_ULL(
    MMIO_SPTE_GEN_LOW_BITS + MMIO_SPTE_GEN_HIGH_BITS - 1, 0)

#: Bits an MMIO *mask* may use: bit 63, the PA bits and the EPT RWX bits.
#: Never bit 11 (MMIO SPTEs are not MMU-present) nor a generation bit.
SPTE_MMIO_ALLOWED_MASK = BIT_ULL(63) | GENMASK_ULL(51, 12) | GENMASK_ULL(2, 0)

#: Set in the memslots generation while an update is in flight; never stored
#: in an SPTE, so a bit of the 19-bit MMIO generation is not spent on it.
KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS = BIT_ULL(63)

#: The value of every non-present, non-MMIO SPTE on x86_64 (0 on 32-bit):
#: bit 63 is EPT "suppress #VE", which TDX needs; NPT ignores it when P=0.
SHADOW_NONPRESENT_VALUE = BIT_ULL(63)

#: Number of top cacheable PA bits the L1TF mitigation sets in MMIO SPTEs.
SHADOW_NONPRESENT_OR_RSVD_MASK_LEN = 5

#: A temporarily "owned" SPTE: non-present on both vendors (no RWX, P=0), no
#: PFN bits (so no L1TF gadget), bit 11 clear, bit 63 set like every
#: non-present value.  Compared with ``==``: it is a value, not a flag.
FROZEN_SPTE = SHADOW_NONPRESENT_VALUE | 0x5A0

#: Historical: ``REMOVED_SPTE`` from 5.13 to 6.9, set by Sean
#: Christopherson's "KVM: x86/mmu: Use low available bits for removed SPTEs"
#: (posted 2021-02-25, commit 715f1079eee1): low bits, so it reads as a value
#: and needs no 64-bit immediate.  6.10 OR-ed in SHADOW_NONPRESENT_VALUE,
#: which commit 7f01cab84928 made bit 63; 6.11 (commit 964cea817196) only
#: renamed it FROZEN_SPTE.  Not a 6.17 constant.
REMOVED_SPTE_OLD = 0x5A0

#: Historical: the value Ben Gardon's patch (Jan 2021) proposed, a single bit,
#: ``1ull << 59``, which Sean Christopherson objected looks like a flag.
FROZEN_SPTE_PROPOSED_2021 = BIT_ULL(59)

#: Historical: the reposted series took Sean's name, ``REMOVED_SPTE``, but
#: kept the value, bit 59 alone (merged in 5.12); 0x5a0 (REMOVED_SPTE_OLD)
#: came in the next release.
REMOVED_SPTE_2021 = FROZEN_SPTE_PROPOSED_2021

#: Historical (v5.12 and earlier): bits 52-53 were a "special" field whose
#: value 3 marked MMIO SPTEs.
SPTE_SPECIAL_MASK_2021 = 3 << 52
SPTE_MMIO_MASK_2021 = 3 << 52

# The kernel's static_asserts, checked when the module loads.
assert not (FROZEN_SPTE & SPTE_MMU_PRESENT_MASK)
assert not (SHADOW_NONPRESENT_VALUE & SPTE_MMU_PRESENT_MASK)
_MMIO_GEN_BITS = MMIO_SPTE_GEN_LOW_MASK | MMIO_SPTE_GEN_HIGH_MASK
assert not (SPTE_MMU_PRESENT_MASK & _MMIO_GEN_BITS)
assert not (SPTE_MMIO_ALLOWED_MASK & (SPTE_MMU_PRESENT_MASK | _MMIO_GEN_BITS))
assert not (SPTE_TDP_AD_MASK & SHADOW_ACC_TRACK_SAVED_MASK)
assert not ((EPT_SPTE_HOST_WRITABLE | EPT_SPTE_MMU_WRITABLE)
            & (SPTE_TDP_AD_MASK | SHADOW_ACC_TRACK_SAVED_MASK))
assert MMIO_SPTE_GEN_LOW_BITS == 8 and MMIO_SPTE_GEN_HIGH_BITS == 11

#: The classes :func:`classify` sorts every 64-bit value into.
CLASS_PRESENT_LEAF = "present leaf"
CLASS_PRESENT_NONLEAF = "present non-leaf"
CLASS_ACCESS_TRACKED = "access-tracked"
CLASS_MMIO = "MMIO"
CLASS_FROZEN = "frozen"
CLASS_NONPRESENT = "non-present"
SPTE_CLASSES = (CLASS_PRESENT_LEAF, CLASS_PRESENT_NONLEAF, CLASS_ACCESS_TRACKED,
                CLASS_MMIO, CLASS_FROZEN, CLASS_NONPRESENT)




def rsvd_bits(s: int, e: int) -> int:
    """Return a mask of bits ``s`` to ``e`` inclusive (0 if ``e < s``).

    Models: arch/x86/kvm/mmu.h: rsvd_bits()
    """
    check_int("s", s, 0, 63)
    check_int("e", e, -1, 63)
    return 0 if e < s else GENMASK_ULL(e, s)


# --------------------------------------------------------------------------
# Configuration: the runtime mask globals.
# --------------------------------------------------------------------------
#: The fields of :class:`SpteConfig` that hold 64-bit masks or values.
_SPTE_CONFIG_MASKS = (
    "shadow_user_mask", "shadow_accessed_mask", "shadow_dirty_mask",
    "shadow_nx_mask", "shadow_x_mask", "shadow_present_mask",
    "shadow_acc_track_mask",
    "shadow_host_writable_mask", "shadow_mmu_writable_mask",
    "shadow_nonpresent_or_rsvd_mask", "shadow_nonpresent_or_rsvd_lower_gfn_mask",
    "shadow_mmio_value", "shadow_mmio_mask")


@dataclass(frozen=True)
class SpteConfig:
    """The vendor-dependent SPTE masks, i.e. the kernel's ``shadow_*`` globals.

    Build one with :func:`kvm_mmu_set_ept_masks` or
    :func:`kvm_mmu_reset_all_pte_masks`; field names are the kernel's.
    """

    name: str
    ept: bool
    phys_bits: int
    l1tf_cache_bits: int | None
    kvm_ad_enabled: bool
    shadow_user_mask: int
    shadow_accessed_mask: int
    shadow_dirty_mask: int
    shadow_nx_mask: int
    shadow_x_mask: int
    shadow_present_mask: int
    shadow_acc_track_mask: int
    shadow_host_writable_mask: int
    shadow_mmu_writable_mask: int
    shadow_nonpresent_or_rsvd_mask: int
    shadow_nonpresent_or_rsvd_lower_gfn_mask: int
    #: True if the vendor has a ``get_mt_mask`` hook (VMX does, SVM does not).
    has_get_mt_mask: bool
    #: The ``mmio_caching`` module parameter (``allow_mmio_caching``).
    allow_mmio_caching: bool = True
    shadow_mmio_value: int = 0
    shadow_mmio_mask: int = 0
    shadow_mmio_access_mask: int = 0
    enable_mmio_caching: bool = False
    #: The WARNs ``kvm_mmu_set_mmio_spte_mask`` fired, in order.
    mmio_warnings: tuple = field(default=())

    def __post_init__(self):
        # A configuration is built by the functions below; refuse a hand-made
        # one with a field of the wrong kind, naming the field.
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty string, got {self.name!r}")
        check_int("phys_bits", self.phys_bits, 36, 52)
        if self.l1tf_cache_bits is not None:
            check_int("l1tf_cache_bits", self.l1tf_cache_bits, 36, 52)
        for name in ("ept", "kvm_ad_enabled", "has_get_mt_mask",
                     "allow_mmio_caching", "enable_mmio_caching"):
            check_bool(name, getattr(self, name))
        for name in _SPTE_CONFIG_MASKS:
            check_u64(name, getattr(self, name))
        check_int("shadow_mmio_access_mask", self.shadow_mmio_access_mask,
                  0, 0xFFFF_FFFF)
        if not isinstance(self.mmio_warnings, tuple):
            raise TypeError("mmio_warnings must be a tuple of strings, got "
                            f"{type(self.mmio_warnings).__name__}")

    def __repr__(self) -> str:
        return f"SpteConfig({self.name})"

    @property
    def max_pfn(self) -> int:
        """The largest pfn a host with ``phys_bits`` address bits can have."""
        return (1 << (self.phys_bits - PAGE_SHIFT)) - 1

    @property
    def max_mmio_gfn(self) -> int:
        """The largest gfn an MMIO SPTE can encode and decode again.

        With the L1TF mask the gfn must fit below the cacheable PA bits, whose
        top 5 are relocated; otherwise below ``phys_bits``.
        """
        top = self.phys_bits
        if self.shadow_nonpresent_or_rsvd_mask:
            top = min(top, self.l1tf_cache_bits)
        return (1 << (top - PAGE_SHIFT)) - 1


def _check_cfg(cfg) -> "SpteConfig":
    if not isinstance(cfg, SpteConfig):
        raise TypeError("cfg must be a SpteConfig (e.g. kvmmu.spte.EPT_AD), "
                        f"got {type(cfg).__name__}")
    return cfg


def kvm_mmu_set_mmio_spte_mask(cfg: SpteConfig, mmio_value: int, mmio_mask: int,
                               access_mask: int) -> SpteConfig:
    """Return ``cfg`` with the MMIO value/mask set, or MMIO caching disabled.

    Models: arch/x86/kvm/mmu/spte.c: kvm_mmu_set_mmio_spte_mask()

    Every rule that fails forces the value to 0, and a value of 0 turns MMIO
    caching off.  The kernel WARNs for the "impossible" ones; the model
    records each in ``mmio_warnings`` so a chapter can show why.
    """
    _check_cfg(cfg)
    check_u64("mmio_value", mmio_value)
    check_u64("mmio_mask", mmio_mask)
    # BUG_ON in the kernel: the access mask must fit an unsigned int.
    check_int("access_mask", access_mask, 0, 0xFFFF_FFFF)
    warnings = []
    if mmio_value & cfg.shadow_nonpresent_or_rsvd_lower_gfn_mask:
        warnings.append("MMIO value overlaps the gfn bits (WARN only)")
    enable = cfg.allow_mmio_caching  # reset from the module parameter
    if not enable:
        mmio_value = 0
    if mmio_mask & ~SPTE_MMIO_ALLOWED_MASK & U64_MAX:
        warnings.append("MMIO mask uses bits outside SPTE_MMIO_ALLOWED_MASK")
        mmio_value = 0
    l1tf_gfn_bits = (cfg.shadow_nonpresent_or_rsvd_mask
                     << SHADOW_NONPRESENT_OR_RSVD_MASK_LEN)
    if mmio_value & l1tf_gfn_bits:
        warnings.append("MMIO value overlaps the relocated L1TF gfn bits")
        mmio_value = 0
    if (mmio_value & mmio_mask) != mmio_value:
        warnings.append("MMIO value has bits outside the MMIO mask")
        mmio_value = 0
    elif mmio_value and (FROZEN_SPTE & mmio_mask) == mmio_value:
        warnings.append("FROZEN_SPTE would look like an MMIO SPTE")
        mmio_value = 0
    if not mmio_value:
        enable = False
    return replace(cfg, shadow_mmio_value=mmio_value, shadow_mmio_mask=mmio_mask,
                   shadow_mmio_access_mask=access_mask, enable_mmio_caching=enable,
                   mmio_warnings=cfg.mmio_warnings + tuple(warnings))


def kvm_mmu_reset_all_pte_masks(phys_bits: int = 46,
                                l1tf_cache_bits: int | None = None,
                                allow_mmio_caching: bool = True,
                                name: str | None = None) -> SpteConfig:
    """Return the non-EPT configuration: AMD NPT, or shadow paging on either vendor.

    Models: arch/x86/kvm/mmu/spte.c: kvm_mmu_reset_all_pte_masks()

    ``phys_bits`` is the host MAXPHYADDR.  ``l1tf_cache_bits`` is
    ``x86_cache_bits`` on a CPU with the L1TF bug (``None``: no bug).  The
    L1TF mask is used only if the cache width is below 52 - 5 = 47 bits.
    """
    check_int("phys_bits", phys_bits, 36, 52)
    check_bool("allow_mmio_caching", allow_mmio_caching)
    low_phys_bits = phys_bits
    rsvd_mask = 0
    if l1tf_cache_bits is not None:
        check_int("l1tf_cache_bits", l1tf_cache_bits, 36, 52)
        # The kernel WARNs (once) on a cache width >= 47 and skips the mask.
        if l1tf_cache_bits < 52 - SHADOW_NONPRESENT_OR_RSVD_MASK_LEN:
            low_phys_bits = l1tf_cache_bits - SHADOW_NONPRESENT_OR_RSVD_MASK_LEN
            rsvd_mask = rsvd_bits(low_phys_bits, l1tf_cache_bits - 1)
    if name is None:
        name = "non-EPT (NPT/shadow)"
        if rsvd_mask:
            name += f", L1TF cache_bits={l1tf_cache_bits}"
    cfg = SpteConfig(
        name=name, ept=False, phys_bits=phys_bits,
        l1tf_cache_bits=l1tf_cache_bits if rsvd_mask else None,
        kvm_ad_enabled=True,
        shadow_user_mask=PT_USER_MASK,
        shadow_accessed_mask=PT_ACCESSED_MASK,
        shadow_dirty_mask=PT_DIRTY_MASK,
        shadow_nx_mask=PT64_NX_MASK,
        shadow_x_mask=0,
        shadow_present_mask=PT_PRESENT_MASK,
        shadow_acc_track_mask=0,
        shadow_host_writable_mask=DEFAULT_SPTE_HOST_WRITABLE,
        shadow_mmu_writable_mask=DEFAULT_SPTE_MMU_WRITABLE,
        shadow_nonpresent_or_rsvd_mask=rsvd_mask,
        shadow_nonpresent_or_rsvd_lower_gfn_mask=GENMASK_ULL(low_phys_bits - 1,
                                                             PAGE_SHIFT),
        has_get_mt_mask=False,
        allow_mmio_caching=allow_mmio_caching,
    )
    # MMIO SPTEs set a reserved PA bit so the access faults with PFEC.RSVD;
    # with 52 PA bits there is no reserved PA bit left, so no MMIO caching.
    mask = BIT_ULL(51) | PT_PRESENT_MASK if phys_bits < 52 else 0
    return kvm_mmu_set_mmio_spte_mask(cfg, mask, mask,
                                      ACC_WRITE_MASK | ACC_USER_MASK)


def kvm_mmu_set_ept_masks(has_ad_bits: bool, has_exec_only: bool, *,
                          phys_bits: int = 46, l1tf_cache_bits: int | None = None,
                          allow_mmio_caching: bool = True,
                          name: str | None = None) -> SpteConfig:
    """Return the Intel EPT configuration.

    Models: arch/x86/kvm/mmu/spte.c: kvm_mmu_set_ept_masks()

    As in the kernel, the EPT masks are applied on top of
    :func:`kvm_mmu_reset_all_pte_masks` (which set the L1TF masks).
    """
    check_bool("has_ad_bits", has_ad_bits)
    check_bool("has_exec_only", has_exec_only)
    base = kvm_mmu_reset_all_pte_masks(phys_bits, l1tf_cache_bits,
                                       allow_mmio_caching)
    if name is None:
        name = "EPT, A/D bits" if has_ad_bits else "EPT, no A/D bits"
        if has_exec_only:
            name += ", exec-only"
    cfg = replace(
        base, name=name, ept=True, kvm_ad_enabled=has_ad_bits,
        shadow_user_mask=VMX_EPT_READABLE_MASK,
        # 6.13+: the Accessed bit is set even without hardware A/D, as a
        # software bit that access tracking clears.
        shadow_accessed_mask=VMX_EPT_ACCESS_BIT,
        shadow_dirty_mask=VMX_EPT_DIRTY_BIT,
        shadow_nx_mask=0,
        shadow_x_mask=VMX_EPT_EXECUTABLE_MASK,
        # Suppress-#VE so a W or X violation is an EPT violation, not a #VE.
        shadow_present_mask=((0 if has_exec_only else VMX_EPT_READABLE_MASK)
                             | VMX_EPT_SUPPRESS_VE_BIT),
        shadow_acc_track_mask=VMX_EPT_RWX_MASK,
        shadow_host_writable_mask=EPT_SPTE_HOST_WRITABLE,
        shadow_mmu_writable_mask=EPT_SPTE_MMU_WRITABLE,
        has_get_mt_mask=True,
        mmio_warnings=(),
    )
    return kvm_mmu_set_mmio_spte_mask(cfg, VMX_EPT_MISCONFIG_WX_VALUE,
                                      VMX_EPT_RWX_MASK | VMX_EPT_SUPPRESS_VE_BIT, 0)


#: Intel EPT with hardware Accessed/Dirty bits (the common case).
EPT_AD = kvm_mmu_set_ept_masks(True, False)
#: Intel EPT without A/D bits: Accessed is emulated by access tracking.
EPT_NO_AD = kvm_mmu_set_ept_masks(False, False)
#: AMD NPT (and shadow paging), 46 physical address bits, no L1TF mask.
NPT = kvm_mmu_reset_all_pte_masks()


# --------------------------------------------------------------------------
# Predicates (spte.h).
# --------------------------------------------------------------------------
def is_shadow_present_pte(pte: int) -> bool:
    """Return True if KVM's MMU-present bit (bit 11) is set.

    Models: arch/x86/kvm/mmu/spte.h: is_shadow_present_pte()

    Present to KVM, not necessarily to the CPU: an access-tracked SPTE has
    bit 11 but no RWX bits.  MMIO, frozen and non-present SPTEs never set it.
    """
    check_u64("pte", pte)
    return bool(pte & SPTE_MMU_PRESENT_MASK)


def is_mmio_spte(spte: int, cfg: SpteConfig = EPT_AD) -> bool:
    """Return True if ``spte`` matches the MMIO value under the MMIO mask.

    Models: arch/x86/kvm/mmu/spte.h: is_mmio_spte()
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    return ((spte & cfg.shadow_mmio_mask) == cfg.shadow_mmio_value
            and cfg.enable_mmio_caching)


def is_frozen_spte(spte: int) -> bool:
    """Return True if ``spte`` is exactly FROZEN_SPTE.

    Models: arch/x86/kvm/mmu/spte.h: is_frozen_spte()
    """
    check_u64("spte", spte)
    return spte == FROZEN_SPTE


def is_large_pte(pte: int) -> bool:
    """Return True if the page-size bit (bit 7) is set.

    Models: arch/x86/kvm/mmu/spte.h: is_large_pte()
    """
    check_u64("pte", pte)
    return bool(pte & PT_PAGE_SIZE_MASK)


def is_last_spte(pte: int, level: int) -> bool:
    """Return True if ``pte`` at ``level`` maps a page rather than a table.

    Models: arch/x86/kvm/mmu/spte.h: is_last_spte()
    """
    check_level("level", level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
    return level == PG_LEVEL_4K or is_large_pte(pte)


def is_executable_pte(spte: int, cfg: SpteConfig = EPT_AD) -> bool:
    """Return True if the SPTE allows execution (X set on EPT, NX clear otherwise).

    Models: arch/x86/kvm/mmu/spte.h: is_executable_pte()
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    return (spte & (cfg.shadow_x_mask | cfg.shadow_nx_mask)) == cfg.shadow_x_mask


def spte_to_pfn(pte: int) -> int:
    """Return the page frame number in bits 51:12.

    Models: arch/x86/kvm/mmu/spte.h: spte_to_pfn()
    """
    check_u64("pte", pte)
    return (pte & SPTE_BASE_ADDR_MASK) >> PAGE_SHIFT


def spte_ad_enabled(spte: int) -> bool:
    """Return True unless the SPTE's A/D type is SPTE_TDP_AD_DISABLED.

    Models: arch/x86/kvm/mmu/spte.h: spte_ad_enabled()

    Meaningful only for shadow-present SPTEs (the kernel's KVM_MMU_WARN_ON,
    active only with CONFIG_KVM_PROVE_MMU, is not modelled).
    """
    check_u64("spte", spte)
    return (spte & SPTE_TDP_AD_MASK) != SPTE_TDP_AD_DISABLED


def spte_ad_need_write_protect(spte: int) -> bool:
    """Return True if dirty logging must write-protect it (A/D type not ENABLED).

    Models: arch/x86/kvm/mmu/spte.h: spte_ad_need_write_protect()
    """
    check_u64("spte", spte)
    return (spte & SPTE_TDP_AD_MASK) != SPTE_TDP_AD_ENABLED


def is_access_track_spte(spte: int, cfg: SpteConfig = EPT_AD) -> bool:
    """Return True if an A/D-disabled SPTE has had its RWX bits parked.

    Models: arch/x86/kvm/mmu/spte.h: is_access_track_spte()
    """
    _check_cfg(cfg)
    return not spte_ad_enabled(spte) and (spte & cfg.shadow_acc_track_mask) == 0


def is_accessed_spte(spte: int, cfg: SpteConfig = EPT_AD) -> bool:
    """Return True if the Accessed bit is set (6.13+: a plain bit test).

    Models: arch/x86/kvm/mmu/spte.h: is_accessed_spte()
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    return bool(spte & cfg.shadow_accessed_mask)


def is_writable_pte(pte: int) -> bool:
    """Return True if the hardware Writable bit (bit 1) is set.

    Models: arch/x86/kvm/mmu/spte.h: is_writable_pte()
    """
    check_u64("pte", pte)
    return bool(pte & PT_WRITABLE_MASK)


def is_mmu_writable_spte(spte: int, cfg: SpteConfig = EPT_AD) -> bool:
    """Return True if the MMU-writable software bit is set.

    Models: arch/x86/kvm/mmu/spte.h: is_mmu_writable_spte()
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    return bool(spte & cfg.shadow_mmu_writable_mask)


def is_host_writable_spte(spte: int, cfg: SpteConfig = EPT_AD) -> bool:
    """Return True if the Host-writable software bit is set.

    The kernel tests ``spte & shadow_host_writable_mask`` inline; this helper
    names the test so the H/M/W table reads clearly.
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    return bool(spte & cfg.shadow_host_writable_mask)


def is_dirty_spte(spte: int, cfg: SpteConfig = EPT_AD) -> bool:
    """Return True if the SPTE is dirty: D bit with A/D, else the W bit.

    Historical: arch/x86/kvm/mmu/spte.h: is_dirty_spte() (v5.x-v6.12)

    Removed in 6.13 by Sean Christopherson's "[PATCH 05/18] KVM: x86/mmu:
    Don't flush TLBs when clearing Dirty bit in shadow MMU" (2024-10-10),
    together with the TLB flush it fed.  Kept because it states what
    "dirty" means for an SPTE without A/D bits: writable implies dirty.
    """
    _check_cfg(cfg)
    if spte_ad_enabled(spte):
        return bool(spte & cfg.shadow_dirty_mask)
    return bool(spte & PT_WRITABLE_MASK)


def is_ept_ve_possible(spte: int, cfg: SpteConfig = EPT_AD) -> bool:
    """Return True if writing ``spte`` could raise a #VE, not an EPT violation.

    Models: arch/x86/kvm/mmu/spte.h: is_ept_ve_possible()

    Any SPTE KVM writes with bit 63 (suppress #VE) clear, except an MMIO SPTE
    (RWX = 110b, which misconfigures instead), is a bug when #VE is possible.
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    return (bool(cfg.shadow_present_mask & VMX_EPT_SUPPRESS_VE_BIT)
            and not spte & VMX_EPT_SUPPRESS_VE_BIT
            and (spte & VMX_EPT_RWX_MASK) != VMX_EPT_MISCONFIG_WX_VALUE)


def check_spte_writable_invariants(spte: int, cfg: SpteConfig = EPT_AD) -> None:
    """Raise KernelWarn unless M implies H, and not-M implies not-W.

    M is MMU-writable, H Host-writable, W the hardware Writable bit.

    Models: arch/x86/kvm/mmu/spte.h: check_spte_writable_invariants()

    The caller guarantees a shadow-present leaf SPTE, as in the kernel.
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    if spte & cfg.shadow_mmu_writable_mask:
        if not spte & cfg.shadow_host_writable_mask:
            raise KernelWarn(
                f"kvm: MMU-writable SPTE is not Host-writable: {spte:#x}")
    elif is_writable_pte(spte):
        raise KernelWarn(f"kvm: Writable SPTE is not MMU-writable: {spte:#x}")


def leaf_spte_change_needs_tlb_flush(old_spte: int, new_spte: int,
                                     cfg: SpteConfig = EPT_AD) -> bool:
    """Return True if a leaf change must flush TLBs now: MMU-writable went 1 -> 0.

    Models: arch/x86/kvm/mmu/spte.h: leaf_spte_change_needs_tlb_flush()

    Clearing only W (dirty logging, M kept) or only A/D does not: those
    callers flush later, in batches.
    """
    return (is_mmu_writable_spte(old_spte, cfg)
            and not is_mmu_writable_spte(new_spte, cfg))


def spte_needs_atomic_update(spte: int, cfg: SpteConfig = EPT_AD) -> bool:
    """Return True if bits of ``spte`` can change under KVM without mmu_lock.

    Models: arch/x86/kvm/mmu/spte.c: spte_needs_atomic_update()

    Such an SPTE must be replaced with xchg/cmpxchg so the changed bit is
    seen in the returned old value, never by read-modify-write.
    """
    _check_cfg(cfg)
    # The lockless fast page fault may set W on an MMU-writable SPTE.
    if not is_writable_pte(spte) and is_mmu_writable_spte(spte, cfg):
        return True
    # Aging may access-track an A/D-disabled SPTE; fast PF may restore it.
    if not spte_ad_enabled(spte):
        return True
    # The CPU may set Dirty.  A lost Accessed bit is tolerated.
    return is_writable_pte(spte) and not spte & cfg.shadow_dirty_mask


# --------------------------------------------------------------------------
# Access tracking.
# --------------------------------------------------------------------------
def mark_spte_for_access_track(spte: int, cfg: SpteConfig = EPT_AD) -> int:
    """Return ``spte`` made "not accessed": clear A, or park RWX without A/D bits.

    Models: arch/x86/kvm/mmu/spte.c: mark_spte_for_access_track()

    Without A/D bits, R and X move to bits 54/56 and RWX is cleared: the CPU
    then faults on the next access, which is how KVM learns of it.  Bit 11
    stays set, so KVM still treats the SPTE as present.
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    if spte_ad_enabled(spte):
        return spte & ~cfg.shadow_accessed_mask & U64_MAX
    if is_access_track_spte(spte, cfg):
        return spte
    check_spte_writable_invariants(spte, cfg)
    if spte & SHADOW_ACC_TRACK_SAVED_MASK:
        raise KernelWarn("Access Tracking saved bit locations are not zero")
    saved = spte & SHADOW_ACC_TRACK_SAVED_BITS_MASK
    spte |= saved << SHADOW_ACC_TRACK_SAVED_BITS_SHIFT
    spte &= ~(cfg.shadow_acc_track_mask | cfg.shadow_accessed_mask) & U64_MAX
    return spte


def restore_acc_track_spte(spte: int, cfg: SpteConfig = EPT_AD) -> int:
    """Return an access-tracked SPTE with its saved R/X bits put back.

    Models: arch/x86/kvm/mmu/spte.h: restore_acc_track_spte()

    W is not restored: a write faults again and goes through the fast page
    fault's MMU-writable check, so dirty logging sees it.
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    saved_bits = ((spte >> SHADOW_ACC_TRACK_SAVED_BITS_SHIFT)
                  & SHADOW_ACC_TRACK_SAVED_BITS_MASK)
    spte &= ~cfg.shadow_acc_track_mask & U64_MAX
    spte &= ~SHADOW_ACC_TRACK_SAVED_MASK & U64_MAX
    return spte | saved_bits


# --------------------------------------------------------------------------
# MMIO SPTEs.
# --------------------------------------------------------------------------
def generation_mmio_spte_mask(gen: int) -> int:
    """Return the SPTE bits that encode a 19-bit MMIO generation.

    Models: arch/x86/kvm/mmu/spte.c: generation_mmio_spte_mask()

    Generation bits 0-7 go to SPTE bits 3-10, bits 8-18 to SPTE bits 52-62.
    """
    # The kernel WARNs on a wider generation; the model refuses it.
    check_int("gen", gen, 0, MMIO_SPTE_GEN_MASK)
    mask = (gen << MMIO_SPTE_GEN_LOW_SHIFT) & MMIO_SPTE_GEN_LOW_MASK
    mask |= (gen << MMIO_SPTE_GEN_HIGH_SHIFT) & MMIO_SPTE_GEN_HIGH_MASK
    return mask


def get_mmio_spte_generation(spte: int) -> int:
    """Return the 19-bit MMIO generation stored in ``spte``.

    Models: arch/x86/kvm/mmu/spte.h: get_mmio_spte_generation()
    """
    check_u64("spte", spte)
    gen = (spte & MMIO_SPTE_GEN_LOW_MASK) >> MMIO_SPTE_GEN_LOW_SHIFT
    gen |= (spte & MMIO_SPTE_GEN_HIGH_MASK) >> MMIO_SPTE_GEN_HIGH_SHIFT
    return gen


def make_mmio_spte(gfn: int, access: int, generation: int,
                   cfg: SpteConfig = EPT_AD) -> int:
    """Return the MMIO SPTE caching "gfn is emulated MMIO" for ``generation``.

    Models: arch/x86/kvm/mmu/spte.c: make_mmio_spte()

    ``generation`` is the memslots generation the fault looked up (the
    kernel reads it from the vCPU); only its low 19 bits are stored, so
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS (bit 63) is dropped, as in the kernel.
    With the L1TF mask, the top cacheable PA bits are forced to 1 and the
    gpa bits under them are moved 5 bits up.
    """
    _check_cfg(cfg)
    if not cfg.enable_mmio_caching:
        why = "; ".join(cfg.mmio_warnings) or "mmio_value is 0"
        raise ValueError(f"MMIO caching is disabled in cfg {cfg.name!r}: KVM "
                         f"creates no MMIO SPTEs ({why})")
    check_int("gfn", gfn, 0, cfg.max_mmio_gfn)
    check_int("access", access, 0, ACC_ALL)
    check_u64("generation", generation)
    gen = generation & MMIO_SPTE_GEN_MASK
    spte = generation_mmio_spte_mask(gen)
    gpa = gfn << PAGE_SHIFT
    spte |= cfg.shadow_mmio_value | (access & cfg.shadow_mmio_access_mask)
    spte |= gpa | cfg.shadow_nonpresent_or_rsvd_mask
    spte |= ((gpa & cfg.shadow_nonpresent_or_rsvd_mask)
             << SHADOW_NONPRESENT_OR_RSVD_MASK_LEN)
    return spte


def get_mmio_spte_gfn(spte: int, cfg: SpteConfig = EPT_AD) -> int:
    """Return the gfn of an MMIO SPTE, moving L1TF-relocated bits back down.

    Models: arch/x86/kvm/mmu/mmu.c: get_mmio_spte_gfn()
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    gpa = spte & cfg.shadow_nonpresent_or_rsvd_lower_gfn_mask
    gpa |= ((spte >> SHADOW_NONPRESENT_OR_RSVD_MASK_LEN)
            & cfg.shadow_nonpresent_or_rsvd_mask)
    return gpa >> PAGE_SHIFT


def get_mmio_spte_access(spte: int, cfg: SpteConfig = EPT_AD) -> int:
    """Return the ACC_* bits cached in an MMIO SPTE (always 0 on EPT).

    Models: arch/x86/kvm/mmu/mmu.c: get_mmio_spte_access()
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    return spte & cfg.shadow_mmio_access_mask


def check_mmio_spte(spte: int, current_generation: int) -> bool:
    """Return True if an MMIO SPTE is still valid for the current memslots.

    Models: arch/x86/kvm/mmu/mmu.c: check_mmio_spte()

    While a memslot update is in flight (bit 63 of the generation) every MMIO
    SPTE misses; otherwise it hits iff the stored 19 bits match.  A miss
    sends the fault down the full path (RET_PF_INVALID).  The kernel reads
    the generation from the vCPU's memslots; the model takes it directly.
    """
    check_u64("current_generation", current_generation)
    if current_generation & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        return False
    kvm_gen = current_generation & MMIO_SPTE_GEN_MASK
    return get_mmio_spte_generation(spte) == kvm_gen


# --------------------------------------------------------------------------
# Building SPTEs (spte.c).
# --------------------------------------------------------------------------
def _resolve_ad(cfg: SpteConfig, ad_disabled, ad_need_write_protect: bool) -> bool:
    """Return the shadow page's ``role.ad_disabled``, refusing impossible roles."""
    if ad_disabled is None:
        ad_disabled = not cfg.kvm_ad_enabled
    check_bool("ad_disabled", ad_disabled)
    check_bool("ad_need_write_protect", ad_need_write_protect)
    if not cfg.ept and (ad_disabled or ad_need_write_protect):
        raise ValueError(f"ad_disabled and ad_need_write_protect must be False for "
                         f"{cfg.name}: non-EPT SPTEs always have A/D bits (bits "
                         "52-62 are reserved there)")
    if cfg.ept and not cfg.kvm_ad_enabled and not ad_disabled:
        raise ValueError(f"ad_disabled must be True for {cfg.name}: the hardware "
                         "has no A/D bits")
    return ad_disabled


def _check_make_spte_args(cfg, level, pte_access, pfn, flags, ad_disabled,
                          ad_need_write_protect, memtype, old_spte):
    """Refuse bad make_spte() arguments by name; return (ad_disabled, memtype)."""
    _check_cfg(cfg)
    check_level("level", level, PG_LEVEL_4K, KVM_MAX_HUGEPAGE_LEVEL)
    check_int("pte_access", pte_access, 0, ACC_ALL)
    check_int("pfn", pfn, 0, cfg.max_pfn)
    if pfn & (KVM_PAGES_PER_HPAGE(level) - 1):
        pages = KVM_PAGES_PER_HPAGE(level)
        raise ValueError(f"pfn must be aligned to {pages} pages at level {level}, "
                         f"got {pfn:#x}")
    for name, flag in flags.items():
        check_bool(name, flag)
    ad_disabled = _resolve_ad(cfg, ad_disabled, ad_need_write_protect)
    if memtype is None:
        memtype = EPT_DEFAULT_MEMTYPE if cfg.has_get_mt_mask else 0
    check_int("memtype", memtype, 0, VMX_EPT_MT_MASK | VMX_EPT_IPAT_BIT)
    if memtype & ~(VMX_EPT_MT_MASK | VMX_EPT_IPAT_BIT):
        raise ValueError("memtype may only use bits 3-6 (EPT memory type and "
                         f"IPAT), got {memtype:#x}")
    if memtype and not cfg.has_get_mt_mask:
        raise ValueError(f"memtype must be 0 for {cfg.name}: the vendor has no "
                         "get_mt_mask hook")
    check_u64("old_spte", old_spte)
    return ad_disabled, memtype


def make_spte(level: int, pte_access: int, pfn: int, *, cfg: SpteConfig = EPT_AD,
              prefetch: bool = False, synchronizing: bool = False,
              host_writable: bool = True, ad_disabled: bool | None = None,
              ad_need_write_protect: bool = False, memtype: int | None = None,
              nx_huge_pages: bool = False, write_tracked: bool = False,
              old_spte: int = SHADOW_NONPRESENT_VALUE) -> tuple[int, bool]:
    """Return ``(new_spte, wrprot)``: the leaf SPTE mapping ``pfn`` at ``level``.

    Models: arch/x86/kvm/mmu/spte.c: make_spte()

    ``wrprot`` is True if write access was asked for but the gfn is
    write-tracked (``write_tracked``: ``mmu_try_to_unsync_pages`` refused),
    so the SPTE was made read-only.  ``ad_disabled`` defaults to the TDP
    MMU's role (``not cfg.kvm_ad_enabled``), ``memtype`` to what the
    vendor's ``get_mt_mask`` hook returns (NPT has none).
    """
    flags = {"prefetch": prefetch, "synchronizing": synchronizing,
             "host_writable": host_writable, "nx_huge_pages": nx_huge_pages,
             "write_tracked": write_tracked}
    ad_disabled, memtype = _check_make_spte_args(
        cfg, level, pte_access, pfn, flags, ad_disabled, ad_need_write_protect,
        memtype, old_spte)

    # 1. KVM's present bit; the access must leave some hardware-present bit.
    spte = SPTE_MMU_PRESENT_MASK
    if (pte_access | cfg.shadow_present_mask) == SHADOW_NONPRESENT_VALUE:
        raise KernelWarn(f"make_spte: pte_access {pte_access} with {cfg.name} "
                         "gives a hardware-non-present SPTE")
    # 2. The A/D type of the shadow page.
    if ad_disabled:
        spte |= SPTE_TDP_AD_DISABLED
    elif ad_need_write_protect:
        spte |= SPTE_TDP_AD_WRPROT_ONLY
    # 3. Present, and Accessed unless this is a speculative prefetch.
    spte |= cfg.shadow_present_mask
    if not prefetch or synchronizing:
        spte |= cfg.shadow_accessed_mask
    # 4. NX huge page mitigation: huge pages are never executable.
    if level > PG_LEVEL_4K and pte_access & ACC_EXEC_MASK and nx_huge_pages:
        pte_access &= ~ACC_EXEC_MASK
    # 5. Execute and user (on EPT: read) permission.
    spte |= cfg.shadow_x_mask if pte_access & ACC_EXEC_MASK else cfg.shadow_nx_mask
    if pte_access & ACC_USER_MASK:
        spte |= cfg.shadow_user_mask
    # 6. Page size.
    if level > PG_LEVEL_4K:
        spte |= PT_PAGE_SIZE_MASK
    # 7. Memory type (VMX only).
    spte |= memtype
    # 8. Host-writable, or no write access at all.
    if host_writable:
        spte |= cfg.shadow_host_writable_mask
    else:
        pte_access &= ~ACC_WRITE_MASK
    # 9. The frame (shadow_me_value is 0 in the model).
    spte |= pfn << PAGE_SHIFT
    # 10. Writable: W, MMU-writable and Dirty together, unless write-tracked
    #     (a leaf that was already writable stays so).
    wrprot = False
    if pte_access & ACC_WRITE_MASK:
        was_writable = is_last_spte(old_spte, level) and is_writable_pte(old_spte)
        if write_tracked and not was_writable:
            wrprot = True
        else:
            spte |= PT_WRITABLE_MASK | cfg.shadow_mmu_writable_mask
            spte |= cfg.shadow_dirty_mask
    # 11. A prefetched SPTE starts "not accessed".
    if prefetch and not synchronizing:
        spte = mark_spte_for_access_track(spte, cfg)
    return spte, wrprot


def make_nonleaf_spte(child_pa: int, ad_disabled: bool | None = None,
                      cfg: SpteConfig = EPT_AD) -> int:
    """Return the SPTE pointing at the page table at physical address ``child_pa``.

    Models: arch/x86/kvm/mmu/spte.c: make_nonleaf_spte()

    Non-leaf SPTEs grant everything (W, U/R, X); the leaf decides.  The
    kernel takes a pointer to the child table and uses its ``__pa``.
    """
    _check_cfg(cfg)
    check_int("child_pa", child_pa, 0, (cfg.max_pfn << PAGE_SHIFT))
    if child_pa & (PAGE_SIZE - 1):
        raise ValueError(f"child_pa must be 4 KiB aligned, got {child_pa:#x}")
    ad_disabled = _resolve_ad(cfg, ad_disabled, False)
    spte = SPTE_MMU_PRESENT_MASK
    spte |= (child_pa | cfg.shadow_present_mask | PT_WRITABLE_MASK
             | cfg.shadow_user_mask | cfg.shadow_x_mask)
    spte |= SPTE_TDP_AD_DISABLED if ad_disabled else cfg.shadow_accessed_mask
    return spte


def modify_spte_protections(spte: int, set_bits: int, clear_bits: int,
                            cfg: SpteConfig) -> int:
    """Change permission bits, undoing and redoing access tracking around it.

    Models: arch/x86/kvm/mmu/spte.c: modify_spte_protections()
    """
    tracked = is_access_track_spte(spte, cfg)
    if tracked:
        spte = restore_acc_track_spte(spte, cfg)
    spte = (spte | set_bits) & ~clear_bits & U64_MAX
    if tracked:
        spte = mark_spte_for_access_track(spte, cfg)
    return spte


def make_small_spte(huge_spte: int, level: int, index: int, access: int = ACC_ALL,
                    cfg: SpteConfig = EPT_AD, nx_huge_pages: bool = False) -> int:
    """Return child ``index`` of a huge SPTE being split into a table at ``level``.

    Models: arch/x86/kvm/mmu/spte.c: make_small_spte()

    ``level`` and ``access`` are the new child page's ``role.level`` and
    ``role.access``.  A 4K child loses PS and, if the NX huge page
    mitigation removed X, gets it back.
    """
    _check_cfg(cfg)
    check_u64("huge_spte", huge_spte)
    check_level("level", level, PG_LEVEL_4K, KVM_MAX_HUGEPAGE_LEVEL - 1)
    check_int("index", index, 0, 511)
    check_int("access", access, 0, ACC_ALL)
    check_bool("nx_huge_pages", nx_huge_pages)
    if not is_shadow_present_pte(huge_spte) or not is_large_pte(huge_spte):
        raise KernelWarn(
            f"make_small_spte: {huge_spte:#x} is not a present huge SPTE")
    child = huge_spte | (index * KVM_PAGES_PER_HPAGE(level)) << PAGE_SHIFT
    if level == PG_LEVEL_4K:
        child &= ~PT_PAGE_SIZE_MASK
        if access & ACC_EXEC_MASK and nx_huge_pages:
            child = modify_spte_protections(child, cfg.shadow_x_mask,
                                            cfg.shadow_nx_mask, cfg)
    return child


def make_huge_spte(small_spte: int, level: int, cfg: SpteConfig = EPT_AD,
                   nx_huge_pages: bool = False) -> int:
    """Return a huge SPTE at ``level`` collapsed from one of its small SPTEs.

    Models: arch/x86/kvm/mmu/spte.c: make_huge_spte()
    """
    _check_cfg(cfg)
    check_u64("small_spte", small_spte)
    check_level("level", level, PG_LEVEL_4K + 1, KVM_MAX_HUGEPAGE_LEVEL)
    check_bool("nx_huge_pages", nx_huge_pages)
    if not is_shadow_present_pte(small_spte):
        raise KernelWarn(f"make_huge_spte: {small_spte:#x} is not shadow-present")
    huge = small_spte | PT_PAGE_SIZE_MASK
    # KVM_HPAGE_MASK(level) | ~PAGE_MASK: clear the address bits inside the page.
    huge &= ~(KVM_HPAGE_SIZE(level) - 1 - (PAGE_SIZE - 1)) & U64_MAX
    if nx_huge_pages:
        huge = modify_spte_protections(huge, cfg.shadow_nx_mask,
                                       cfg.shadow_x_mask, cfg)
    return huge


# --------------------------------------------------------------------------
# Classification and decoding (the model's own, for the book).
# --------------------------------------------------------------------------
def classify(spte: int, cfg: SpteConfig = EPT_AD, level: int = PG_LEVEL_4K) -> str:
    """Return the one class of SPTE_CLASSES that ``spte`` at ``level`` belongs to.

    A partition of all 2**64 values, tested in the order KVM's own code
    relies on: the exact FROZEN_SPTE value; KVM's present bit (then
    access-tracked, leaf or non-leaf); the MMIO pattern; else non-present.
    """
    check_u64("spte", spte)
    _check_cfg(cfg)
    check_level("level", level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
    if is_frozen_spte(spte):
        return CLASS_FROZEN
    if is_shadow_present_pte(spte):
        if is_access_track_spte(spte, cfg):
            return CLASS_ACCESS_TRACKED
        if is_last_spte(spte, level):
            return CLASS_PRESENT_LEAF
        return CLASS_PRESENT_NONLEAF
    if is_mmio_spte(spte, cfg):
        return CLASS_MMIO
    return CLASS_NONPRESENT


_AD_TYPES = {SPTE_TDP_AD_ENABLED: "enabled", SPTE_TDP_AD_DISABLED: "disabled",
             SPTE_TDP_AD_WRPROT_ONLY: "wrprot-only",
             3 << SPTE_TDP_AD_SHIFT: "invalid (3)"}

#: The four legal (Host-writable, MMU-writable, Writable) states.
HMW_STATES = {
    (1, 1, 1): "writable",
    (1, 1, 0): "write-protected for dirty logging (fast PF may restore W)",
    (1, 0, 0): "write-protected for write tracking (slow path only)",
    (0, 0, 0): "host mapping read-only",
}


def hmw_state(spte: int, cfg: SpteConfig = EPT_AD) -> tuple[int, int, int]:
    """Return the (Host-writable, MMU-writable, Writable) bits of a leaf SPTE."""
    return (int(is_host_writable_spte(spte, cfg)),
            int(is_mmu_writable_spte(spte, cfg)),
            int(is_writable_pte(spte)))


@dataclass(frozen=True)
class SpteDecode:
    """An SPTE taken apart: its class, named fields, anomalies KVM never builds."""

    value: int
    cfg_name: str
    level: int
    cls: str
    fields: dict
    notes: tuple

    def __post_init__(self):
        check_u64("value", self.value)
        if not isinstance(self.cfg_name, str):
            raise TypeError(f"cfg_name must be a string, got {self.cfg_name!r}")
        check_level("level", self.level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
        check_choice("cls", self.cls, SPTE_CLASSES)
        if not isinstance(self.fields, dict) or not isinstance(self.notes, tuple):
            raise TypeError("fields must be a dict and notes a tuple")

    def __str__(self) -> str:
        lines = [f"{self.value:#018x} ({self.cfg_name}, level {self.level}): "
                 f"{self.cls}"]
        for key, val in self.fields.items():
            if isinstance(val, bool):
                shown = "1" if val else "0"
            elif isinstance(val, int):
                shown = f"{val:#x}"
            else:
                shown = str(val)
            lines.append(f"  {key:<16} {shown}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def decode_spte(spte: int, cfg: SpteConfig = EPT_AD,
                level: int = PG_LEVEL_4K) -> SpteDecode:
    """Return the class and the named fields of ``spte`` at ``level``."""
    cls = classify(spte, cfg, level)
    f: dict = {}
    notes = []
    if cls == CLASS_FROZEN:
        f["FROZEN_SPTE"] = True
        notes.append("owned by a thread mid-update: others must not touch it "
                     "(retry)")
    elif cls == CLASS_MMIO:
        f["generation"] = get_mmio_spte_generation(spte)
        f["gfn"] = get_mmio_spte_gfn(spte, cfg)
        f["access"] = get_mmio_spte_access(spte, cfg)
    elif cls == CLASS_NONPRESENT:
        if spte == SHADOW_NONPRESENT_VALUE:
            f["SHADOW_NONPRESENT_VALUE"] = True
        elif spte == 0:
            notes.append("0 was the non-present value before "
                         "SHADOW_NONPRESENT_VALUE (and is on 32-bit)")
        else:
            notes.append("a non-present value KVM never writes")
    else:
        _decode_present(spte, cfg, level, cls, f, notes)
    if cfg.ept and cls != CLASS_MMIO and is_ept_ve_possible(spte, cfg):
        notes.append("bit 63 (suppress #VE) clear: would be a #VE if EPT #VE "
                     "were enabled")
    return SpteDecode(spte, cfg.name, level, cls, f, tuple(notes))


def _decode_present(spte, cfg, level, cls, f, notes):
    leaf = cls != CLASS_PRESENT_NONLEAF
    f["pfn"] = spte_to_pfn(spte)
    if cfg.ept:
        f["R"] = bool(spte & VMX_EPT_READABLE_MASK)
        f["W"] = bool(spte & VMX_EPT_WRITABLE_MASK)
        f["X"] = bool(spte & VMX_EPT_EXECUTABLE_MASK)
    else:
        f["P"] = bool(spte & PT_PRESENT_MASK)
        f["W"] = bool(spte & PT_WRITABLE_MASK)
        f["U"] = bool(spte & PT_USER_MASK)
        f["NX"] = bool(spte & PT64_NX_MASK)
    f["A"] = is_accessed_spte(spte, cfg)
    ad_type = spte & SPTE_TDP_AD_MASK
    f["A/D type"] = _AD_TYPES[ad_type]
    if ad_type == 3 << SPTE_TDP_AD_SHIFT:
        notes.append("A/D type 3 is not defined")
    if not cfg.ept and ad_type:
        notes.append("A/D type bits set in a non-EPT SPTE: KVM never builds this")
    if is_mmio_spte(spte, cfg):
        notes.append("bit 11 set although the value matches the MMIO pattern: "
                     "KVM never builds this")
    if not leaf:
        return
    f["D"] = bool(spte & cfg.shadow_dirty_mask)
    f["PS"] = is_large_pte(spte) and level > PG_LEVEL_4K
    if level > KVM_MAX_HUGEPAGE_LEVEL:
        notes.append(f"a leaf at level {level}: KVM maps at most 1G pages")
    f["host-writable"] = is_host_writable_spte(spte, cfg)
    f["MMU-writable"] = is_mmu_writable_spte(spte, cfg)
    state = hmw_state(spte, cfg)
    f["H/M/W"] = "".join(map(str, state)) + " " + HMW_STATES.get(state, "illegal")
    if cfg.ept:
        f["memtype"] = (spte & VMX_EPT_MT_MASK) >> VMX_EPT_MT_EPTE_SHIFT
        f["IPAT"] = bool(spte & VMX_EPT_IPAT_BIT)
    if cls == CLASS_ACCESS_TRACKED:
        if not is_last_spte(spte, level):
            notes.append(f"access-tracked but not a leaf at level {level}: KVM "
                         "never builds this")
        saved = spte >> SHADOW_ACC_TRACK_SAVED_BITS_SHIFT
        f["saved R"] = bool(saved & SPTE_EPT_READABLE_MASK)
        f["saved X"] = bool(saved & SPTE_EPT_EXECUTABLE_MASK)
    elif spte & SHADOW_ACC_TRACK_SAVED_MASK and cfg.ept:
        notes.append("saved access-track bits set in an SPTE that is not "
                     "access-tracked")
    if state not in HMW_STATES:
        notes.append("writable invariants violated "
                     "(check_spte_writable_invariants would WARN)")


# --------------------------------------------------------------------------
# History and pitfalls from the 2021 review thread (NOT 6.17 kernel code).
# --------------------------------------------------------------------------
def is_mmio_spte_2021(spte: int) -> bool:
    """Return True if bits 52-53 are both set: the v5.12 MMIO test.

    Historical: arch/x86/kvm/mmu/spte.h: is_mmio_spte() (v5.10-v5.12)
    """
    check_u64("spte", spte)
    return (spte & SPTE_SPECIAL_MASK_2021) == SPTE_MMIO_MASK_2021


def is_shadow_present_pte_2021(spte: int, cfg: SpteConfig = EPT_AD) -> bool:
    """Return the 2021 presence test: non-zero, not MMIO, not the removed value.

    Historical: arch/x86/kvm/mmu/spte.h: is_shadow_present_pte() (v5.12)

    Not current kernel code.  This is the rule Ben Gardon's patch extended
    and Sean Christopherson proposed to replace with an explicit present bit
    (review of "[PATCH 22/24] kvm: x86/mmu: Flush TLBs after zap in TDP MMU
    PF handler", 2021-01-20).  The removed value is the one of that time,
    REMOVED_SPTE_2021 (bit 59); MMIO is judged with today's
    ``is_mmio_spte(spte, cfg)``, so the test can be run against 6.17 values
    side by side.
    """
    _check_cfg(cfg)
    return spte != 0 and not is_mmio_spte(spte, cfg) and spte != REMOVED_SPTE_2021


def int_bit_test_truncating(pte: int, nr: int = 59) -> int:
    """Return what ``int f(u64 pte) { return pte & BIT_ULL(nr); }`` returns.

    Historical pitfall, not kernel code: the u64 result is converted to a
    32-bit ``int``, so for ``nr >= 32`` the answer is always 0.  Sean
    Christopherson reported turning ``is_shadow_present_pte()`` into a no-op
    this way (review of Ben Gardon's PATCH 22/24, 2021-01-20).
    """
    check_u64("pte", pte)
    return c_int(pte & BIT_ULL(nr))


def int_bit_test_fixed(pte: int, nr: int = 59) -> int:
    """Return what the same helper returns as ``return !!(pte & BIT_ULL(nr));``.

    The ``!!`` (or a ``bool`` return type, what the kernel now uses) turns
    the u64 into 0 or 1 before the narrowing, so no bit is lost.
    """
    check_u64("pte", pte)
    return c_int(int(bool(pte & BIT_ULL(nr))))
