"""Page-size levels and page-table index arithmetic.

Models: arch/x86/include/asm/pgtable_types.h: enum pg_level
Models: arch/x86/include/asm/kvm_host.h: KVM_HPAGE_GFN_SHIFT(), KVM_PAGES_PER_HPAGE()
Models: arch/x86/kvm/mmu/spte.h: SPTE_LEVEL_SHIFT(), SPTE_INDEX()
"""
from .checks import check_int

__all__ = [
    "PAGE_SHIFT", "PAGE_SIZE", "PG_LEVEL_NONE", "PG_LEVEL_4K", "PG_LEVEL_2M",
    "PG_LEVEL_1G", "PG_LEVEL_512G", "PG_LEVEL_NUM", "KVM_MAX_HUGEPAGE_LEVEL",
    "KVM_NR_PAGE_SIZES", "PT64_ROOT_4LEVEL", "PT64_ROOT_MAX_LEVEL",
    "PT32E_ROOT_LEVEL", "PT32_ROOT_LEVEL", "SPTE_LEVEL_BITS", "SPTE_ENT_PER_PAGE",
    "LEVEL_NAMES", "check_level", "KVM_HPAGE_GFN_SHIFT", "KVM_PAGES_PER_HPAGE",
    "KVM_HPAGE_SIZE", "SPTE_LEVEL_SHIFT", "SPTE_INDEX", "gfn_round_for_level",
    "level_name",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

PG_LEVEL_NONE = 0
PG_LEVEL_4K = 1
PG_LEVEL_2M = 2
PG_LEVEL_1G = 3
PG_LEVEL_512G = 4
PG_LEVEL_NUM = 5

KVM_MAX_HUGEPAGE_LEVEL = PG_LEVEL_1G
KVM_NR_PAGE_SIZES = 3

PT64_ROOT_4LEVEL = 4
PT64_ROOT_MAX_LEVEL = 5
PT32E_ROOT_LEVEL = 3
PT32_ROOT_LEVEL = 2

SPTE_LEVEL_BITS = 9
SPTE_ENT_PER_PAGE = 1 << SPTE_LEVEL_BITS

LEVEL_NAMES = {PG_LEVEL_4K: "4K", PG_LEVEL_2M: "2M", PG_LEVEL_1G: "1G",
               PG_LEVEL_512G: "512G", 5: "256T"}


def check_level(name: str, level, lo: int = PG_LEVEL_4K, hi: int = PT64_ROOT_MAX_LEVEL) -> int:
    """Return ``level`` if it is a page-table level in ``[lo, hi]``."""
    return check_int(name, level, lo, hi)


def KVM_HPAGE_GFN_SHIFT(level: int) -> int:
    """Return how many gfn bits a page at ``level`` spans: 0, 9, 18.

    Models: arch/x86/include/asm/kvm_host.h: KVM_HPAGE_GFN_SHIFT()
    """
    check_level("level", level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
    return (level - 1) * 9


def KVM_PAGES_PER_HPAGE(level: int) -> int:
    """Return the number of 4 KiB pages a mapping at ``level`` covers.

    Models: arch/x86/include/asm/kvm_host.h: KVM_PAGES_PER_HPAGE()
    """
    return 1 << KVM_HPAGE_GFN_SHIFT(level)


def KVM_HPAGE_SIZE(level: int) -> int:
    """Return the size in bytes of a mapping at ``level``.

    Models: arch/x86/include/asm/kvm_host.h: KVM_HPAGE_SIZE()
    """
    return KVM_PAGES_PER_HPAGE(level) << PAGE_SHIFT


def SPTE_LEVEL_SHIFT(level: int) -> int:
    """Return the address bit where ``level``'s index starts: 12, 21, 30, 39, 48.

    Models: arch/x86/kvm/mmu/spte.h: SPTE_LEVEL_SHIFT()
    """
    return PAGE_SHIFT + KVM_HPAGE_GFN_SHIFT(level)


def SPTE_INDEX(address: int, level: int) -> int:
    """Return the 9-bit table index of ``address`` at ``level``.

    Models: arch/x86/kvm/mmu/spte.h: SPTE_INDEX()
    """
    check_int("address", address, 0, (1 << 64) - 1)
    return (address >> SPTE_LEVEL_SHIFT(level)) & (SPTE_ENT_PER_PAGE - 1)


def gfn_round_for_level(gfn: int, level: int) -> int:
    """Round ``gfn`` down to the first gfn of its ``level``-sized page.

    Models: arch/x86/kvm/mmu/mmu_internal.h: gfn_round_for_level()
    """
    check_int("gfn", gfn, 0, (1 << 52) - 1)
    return gfn & -KVM_PAGES_PER_HPAGE(level)


def level_name(level: int) -> str:
    """Return a short human name for a level: ``PG_LEVEL_2M`` -> ``'2M'``."""
    check_level("level", level, PG_LEVEL_NONE, PT64_ROOT_MAX_LEVEL)
    return LEVEL_NAMES.get(level, f"level {level}")
