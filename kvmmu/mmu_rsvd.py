"""Reserved bits: the bits that must be zero in a page-table entry, level by level.

Models: arch/x86/include/asm/kvm_host.h: struct rsvd_bits_validate
Models: arch/x86/kvm/mmu/mmu.c: __reset_rsvds_bits_mask() (every paging mode)
Models: arch/x86/kvm/mmu/mmu.c: __reset_rsvds_bits_mask_ept(), reserved_hpa_bits()
Models: arch/x86/kvm/mmu/mmu.c: reset_tdp_shadow_zero_bits_mask()
Models: arch/x86/kvm/mmu/spte.h: get_rsvd_bits(), __is_rsvd_bits_set()
Models: arch/x86/kvm/mmu/spte.h: __is_bad_mt_xwr(), is_rsvd_spte()

Reference version: Linux 6.17 (mmu.c and spte.h read at v6.17-rc3).

KVM computes, once per MMU context, a table of the bits an entry may not set
at each level, split by bit 7 of the entry (bit 7 is PS, "this entry maps a
page", at the levels that can map one): ``rsvd_bits_mask[bit7][level - 1]``.
EPT adds a 64-bit map, ``bad_mt_xwr``, indexed by the entry's low six bits
(memory type in bits 5:3, X/W/R in bits 2:0), of the combinations the CPU
refuses.  The guest's table (``guest_rsvd_check``) judges the guest's own
page tables; the host's (``shadow_zero_check``), judges the SPTEs KVM
writes: ``make_spte()`` WARNs if it built one with a reserved bit, and the
MMIO fault path (``get_mmio_spte()``) checks every level of the walk with
:func:`is_rsvd_spte` and prints the walk when one fails.

One function computes each table from the kernel's parameters, so every
caller (the TDP MMU here, the guest walker of chapter 5) uses the same rules:
:func:`__reset_rsvds_bits_mask` for x86 paging (AMD NPT, shadow paging, the
guest's page tables) and :func:`__reset_rsvds_bits_mask_ept` for EPT.

**Where the model simplifies.**  ``shadow_me_mask`` (SME/TDX key bits) is 0,
as everywhere in the model, so no key bit is added to or removed from the
tables.  :func:`reset_tdp_shadow_zero_bits_mask` takes the configuration and
the CPU features as arguments instead of reading ``kvm_host.maxphyaddr``,
``shadow_x_mask`` and ``boot_cpu_has(X86_FEATURE_GBPAGES)``, and returns the
table instead of filling ``context->shadow_zero_check``.
"""
from dataclasses import dataclass, field

from .checks import check_bool, check_int, check_u64
from .levels import (PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K, PT32_ROOT_LEVEL,
                     PT32E_ROOT_LEVEL, PT64_ROOT_4LEVEL, PT64_ROOT_MAX_LEVEL,
                     check_level)
from .spte import SpteConfig, rsvd_bits

__all__ = [
    "RsvdBitsValidate", "EPT_MEMTYPE_NAMES", "reserved_hpa_bits",
    "__reset_rsvds_bits_mask", "__reset_rsvds_bits_mask_ept",
    "reset_tdp_shadow_zero_bits_mask",
    "get_rsvd_bits", "__is_rsvd_bits_set", "__is_bad_mt_xwr", "is_rsvd_spte",
    "bad_mt_xwr_reason",
]

PT64_ROOT_5LEVEL = PT64_ROOT_MAX_LEVEL

#: EPT memory types (bits 5:3 of a leaf); 2, 3 and 7 are reserved.
EPT_MEMTYPE_NAMES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}


@dataclass
class RsvdBitsValidate:
    """The reserved-bit table of one MMU context: per level and bit 7, plus EPT's.

    Models: arch/x86/include/asm/kvm_host.h: struct rsvd_bits_validate

    ``rsvd_bits_mask[bit7][level - 1]`` is the mask of bits an entry at
    ``level`` whose bit 7 is ``bit7`` must leave clear; ``bad_mt_xwr`` has
    bit ``n`` set if an entry whose low six bits are ``n`` is refused (EPT
    only; 0 for x86 paging).  Entries a function does not fill stay 0, as in
    the zero-allocated kernel struct.
    """

    rsvd_bits_mask: list = field(default_factory=lambda: [
        [0] * PT64_ROOT_MAX_LEVEL, [0] * PT64_ROOT_MAX_LEVEL])
    bad_mt_xwr: int = 0

    def table(self) -> list:
        """The ten masks as ``(bit7, level, mask)`` rows, level 5 first."""
        return [(bit7, level, self.rsvd_bits_mask[bit7][level - 1])
                for level in range(PT64_ROOT_MAX_LEVEL, 0, -1) for bit7 in (0, 1)]


def _check_rsvd_check(rsvd_check) -> RsvdBitsValidate:
    if not isinstance(rsvd_check, RsvdBitsValidate):
        raise TypeError("rsvd_check must be a RsvdBitsValidate, "
                        f"got {type(rsvd_check).__name__}")
    return rsvd_check


def _check_cfg(cfg) -> SpteConfig:
    if not isinstance(cfg, SpteConfig):
        raise TypeError("cfg must be a SpteConfig (e.g. kvmmu.spte.EPT_AD), "
                        f"got {type(cfg).__name__}")
    return cfg


def _repeat_byte(byte: int) -> int:
    """The kernel's REPEAT_BYTE(): ``byte`` in each of the eight bytes of a u64."""
    return byte * 0x0101010101010101


def reserved_hpa_bits(cfg: SpteConfig) -> int:
    """Return the host address bits a host entry may not use: MAXPHYADDR to 63.

    Models: arch/x86/kvm/mmu/mmu.c: reserved_hpa_bits()

    The kernel reads ``kvm_host.maxphyaddr``; the model's one ``phys_bits``
    stands for it (see :mod:`kvmmu.spte`).  The callers keep only the bits
    below 52 (or 63) of it, and decide about bit 63 themselves.
    """
    _check_cfg(cfg)
    return rsvd_bits(cfg.phys_bits, 63)


def __reset_rsvds_bits_mask(rsvd_check: RsvdBitsValidate, pa_bits_rsvd: int,
                            level: int, nx: bool, gbpages: bool, pse: bool,
                            amd: bool) -> None:
    """Fill ``rsvd_check`` with the reserved bits of x86 paging rooted at ``level``.

    Models: arch/x86/kvm/mmu/mmu.c: __reset_rsvds_bits_mask() (every paging mode)

    ``pa_bits_rsvd``: the address bits above the physical width (only those
    below bit 52 count, below bit 63 for PAE); ``level``: the root level,
    2 (32-bit), 3 (PAE), 4 or 5; ``nx``: bit 63 is NX and allowed (else
    reserved); ``gbpages``: 1G pages exist (else bit 7 is reserved in
    PDPTEs); ``pse``: 4M pages in 32-bit paging; ``amd``: bit 8 (G in a
    leaf) is reserved in the non-leaf entries of levels 4 and 5, an AMD
    rule that mmu.c applies at those two levels only.  Large leaves reserve
    the frame bits below their alignment from bit 13 up: bit 12 is the PAT
    bit of a 2M or 1G entry.  Levels a mode does not have are left as they
    were.

    ``kvmmu.mmu_permissions.reset_guest_rsvds_bits_mask`` still computes the
    guest's table with a copy of these rules (no AMD bit 8, no PSE); it is
    meant to call this function (``reset_guest_rsvds_bits_mask()`` in mmu.c
    does), and a test checks the two agree meanwhile.
    """
    _check_rsvd_check(rsvd_check)
    check_u64("pa_bits_rsvd", pa_bits_rsvd)
    check_level("level", level, PT32_ROOT_LEVEL, PT64_ROOT_5LEVEL)
    for name, flag in (("nx", nx), ("gbpages", gbpages), ("pse", pse),
                       ("amd", amd)):
        check_bool(name, flag)
    m = rsvd_check.rsvd_bits_mask
    rsvd_check.bad_mt_xwr = 0
    gbpages_bit_rsvd = 0 if gbpages else rsvd_bits(7, 7)
    # PAE entries are 64 bits with bits 52-62 reserved; long-mode ones
    # leave 52-62 to software.
    high = pa_bits_rsvd & rsvd_bits(0, 62 if level == PT32E_ROOT_LEVEL else 51)
    if not nx:
        high |= rsvd_bits(63, 63)
    nonleaf_bit8_rsvd = rsvd_bits(8, 8) if amd else 0

    if level == PT32_ROOT_LEVEL:
        # 32-bit entries: nothing reserved, except in a 4M page with PSE:
        # PSE-36 puts address bits 32-35 in bits 13-16, so 17-21 must be 0
        # (KVM always reports PSE-36: the kernel's is_cpuid_PSE36() is 1).
        m[0][1] = m[0][0] = m[1][0] = 0
        m[1][1] = rsvd_bits(17, 21) if pse else 0
        return
    if level == PT32E_ROOT_LEVEL:
        # The four PDPTEs: NX does not exist there, nor bits 1-2 and 5-8.
        m[0][2] = rsvd_bits(63, 63) | high | rsvd_bits(5, 8) | rsvd_bits(1, 2)
        m[0][1] = m[0][0] = m[1][0] = high
        m[1][1] = high | rsvd_bits(13, 20)
        return
    if level == PT64_ROOT_5LEVEL:
        m[0][4] = m[1][4] = high | nonleaf_bit8_rsvd | rsvd_bits(7, 7)
    m[0][3] = m[1][3] = high | nonleaf_bit8_rsvd | rsvd_bits(7, 7)
    m[0][2] = high | gbpages_bit_rsvd
    m[0][1] = m[0][0] = m[1][0] = high
    m[1][2] = high | gbpages_bit_rsvd | rsvd_bits(13, 29)
    m[1][1] = high | rsvd_bits(13, 20)


def __reset_rsvds_bits_mask_ept(rsvd_check: RsvdBitsValidate, pa_bits_rsvd: int,
                                execonly: bool, huge_page_level: int) -> None:
    """Fill ``rsvd_check`` with the reserved bits and bad memory types of EPT.

    Models: arch/x86/kvm/mmu/mmu.c: __reset_rsvds_bits_mask_ept()

    Address bits above the physical width up to 51 are reserved (52-63 are
    software or ignored in EPT).  Non-leaf entries reserve bits 3-7 at levels
    4 and 5 and bits 3-6 at levels 2 and 3 (where bit 7 means a 2M/1G page,
    itself reserved when ``huge_page_level`` is below that size); large
    leaves reserve the frame bits below their alignment, from bit 12.
    ``bad_mt_xwr`` refuses memory types 2, 3 and 7, write without read
    (XWR 010 and 110), and execute-only (100) unless ``execonly``.
    """
    _check_rsvd_check(rsvd_check)
    check_u64("pa_bits_rsvd", pa_bits_rsvd)
    check_bool("execonly", execonly)
    check_level("huge_page_level", huge_page_level, PG_LEVEL_4K, PG_LEVEL_1G)
    m = rsvd_check.rsvd_bits_mask
    high = pa_bits_rsvd & rsvd_bits(0, 51)
    large_1g_rsvd = rsvd_bits(7, 7) if huge_page_level < PG_LEVEL_1G else 0
    large_2m_rsvd = rsvd_bits(7, 7) if huge_page_level < PG_LEVEL_2M else 0
    m[0][4] = m[1][4] = high | rsvd_bits(3, 7)
    m[0][3] = m[1][3] = high | rsvd_bits(3, 7)
    m[0][2] = high | rsvd_bits(3, 6) | large_1g_rsvd
    m[0][1] = high | rsvd_bits(3, 6) | large_2m_rsvd
    m[0][0] = m[1][0] = high
    m[1][2] = high | rsvd_bits(12, 29) | large_1g_rsvd
    m[1][1] = high | rsvd_bits(12, 20) | large_2m_rsvd
    # One bit per value of the low six bits: a whole byte (every XWR) for a
    # bad memory type, one bit in every byte (every memory type) for a bad XWR.
    bad = 0
    for memtype in (2, 3, 7):
        bad |= 0xFF << (memtype * 8)
    bad |= _repeat_byte(1 << 0b010) | _repeat_byte(1 << 0b110)
    if not execonly:
        bad |= _repeat_byte(1 << 0b100)
    rsvd_check.bad_mt_xwr = bad


def reset_tdp_shadow_zero_bits_mask(cfg: SpteConfig,
                                    root_level: int = PT64_ROOT_4LEVEL,
                                    gbpages: bool = True) -> RsvdBitsValidate:
    """Return the table that judges the TDP MMU's SPTEs under ``cfg``.

    The kernel's ``shadow_zero_check`` of the TDP MMU context.

    Models: arch/x86/kvm/mmu/mmu.c: reset_tdp_shadow_zero_bits_mask()

    AMD NPT (``cfg.ept`` False): x86 paging rules at the TDP root level
    with NX allowed, 1G pages if the host has them (``gbpages``), no PSE and
    AMD's bit-8 rule.  Intel EPT: the EPT rules, no execute-only (KVM never
    builds one, whatever the CPU supports), huge pages up to 1G if
    ``gbpages`` (``max_huge_page_level``) else 2M.  ``root_level`` matters
    only for NPT (4, or 5 with 5-level paging); the EPT table covers every
    level.
    """
    _check_cfg(cfg)
    check_level("root_level", root_level, PT64_ROOT_4LEVEL, PT64_ROOT_5LEVEL)
    check_bool("gbpages", gbpages)
    check = RsvdBitsValidate()
    if not cfg.ept:
        __reset_rsvds_bits_mask(check, reserved_hpa_bits(cfg), root_level,
                                True, gbpages, False, True)
    else:
        __reset_rsvds_bits_mask_ept(check, reserved_hpa_bits(cfg), False,
                                    PG_LEVEL_1G if gbpages else PG_LEVEL_2M)
    return check


def get_rsvd_bits(rsvd_check: RsvdBitsValidate, pte: int, level: int) -> int:
    """Return the reserved-bit mask for ``pte`` at ``level`` (chosen by its bit 7).

    Models: arch/x86/kvm/mmu/spte.h: get_rsvd_bits()

    This mask is what the MMIO fault path prints as ``rsvd bits`` for each
    level of a walk that failed the check.
    """
    _check_rsvd_check(rsvd_check)
    check_u64("pte", pte)
    check_level("level", level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
    return rsvd_check.rsvd_bits_mask[(pte >> 7) & 1][level - 1]


def __is_rsvd_bits_set(rsvd_check: RsvdBitsValidate, pte: int, level: int) -> bool:
    """Return True if ``pte`` sets a bit its level's mask reserves.

    Models: arch/x86/kvm/mmu/spte.h: __is_rsvd_bits_set()
    """
    return bool(pte & get_rsvd_bits(rsvd_check, pte, level))


def __is_bad_mt_xwr(rsvd_check: RsvdBitsValidate, pte: int) -> bool:
    """Return True if EPT refuses the low six bits of ``pte`` (memory type, XWR).

    Models: arch/x86/kvm/mmu/spte.h: __is_bad_mt_xwr()
    """
    _check_rsvd_check(rsvd_check)
    check_u64("pte", pte)
    return bool(rsvd_check.bad_mt_xwr >> (pte & 0x3F) & 1)


def is_rsvd_spte(rsvd_check: RsvdBitsValidate, spte: int, level: int) -> bool:
    """Return True if ``spte`` at ``level`` fails the reserved-bit check.

    Models: arch/x86/kvm/mmu/spte.h: is_rsvd_spte()

    Either check alone condemns it: a bad EPT memory type or XWR
    combination, or a reserved bit set.  The kernel ORs the two bitwise so
    the hot path has one branch fewer; the answer is the same.
    """
    check_level("level", level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
    return (__is_bad_mt_xwr(rsvd_check, spte)
            | __is_rsvd_bits_set(rsvd_check, spte, level))


def bad_mt_xwr_reason(spte: int, execonly: bool = False) -> list:
    """Return why EPT refuses the low six bits of ``spte``: one phrase per reason.

    An empty list if it does not refuse them.

    The model's own wording of the rules :func:`__reset_rsvds_bits_mask_ept`
    encodes; a test checks the two agree on all 64 values.
    """
    check_u64("spte", spte)
    check_bool("execonly", execonly)
    memtype, xwr = (spte >> 3) & 7, spte & 7
    reasons = []
    if memtype not in EPT_MEMTYPE_NAMES:
        reasons.append(f"memory type {memtype} (bits 5:3) is reserved: only 0 UC, "
                       "1 WC, 4 WT, 5 WP, 6 WB exist")
    if xwr in (0b010, 0b110):
        reasons.append(f"XWR = {xwr:03b}: writable but not readable")
    elif xwr == 0b100 and not execonly:
        reasons.append("XWR = 100: execute-only, which KVM's TDP check refuses")
    return reasons
