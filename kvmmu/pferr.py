"""Page-fault error-code bits, shared by the guest walker and the prefault path.

Models: arch/x86/include/asm/kvm_host.h: PFERR_* masks

The low bits are the architectural #PF error code the CPU pushes; bit 32 and
up are KVM's own, used only inside KVM (a prefault is a read of the final
gpa, ``PFERR_GUEST_FINAL_MASK``; an EPT violation on a read of a guest
page-table entry carries ``PFERR_GUEST_PAGE_MASK``).
"""
from .checks import check_int

__all__ = [
    "PFERR_PRESENT_MASK", "PFERR_WRITE_MASK", "PFERR_USER_MASK", "PFERR_RSVD_MASK",
    "PFERR_FETCH_MASK", "PFERR_PK_MASK", "PFERR_GUEST_FINAL_MASK", "PFERR_GUEST_PAGE_MASK",
    "PFERR_IMPLICIT_ACCESS",
    "PFERR_PRIVATE_ACCESS", "PFERR_NAMES", "pferr_str",
]

PFERR_PRESENT_MASK = 1 << 0
PFERR_WRITE_MASK = 1 << 1
PFERR_USER_MASK = 1 << 2
PFERR_RSVD_MASK = 1 << 3
PFERR_FETCH_MASK = 1 << 4
PFERR_PK_MASK = 1 << 5
PFERR_GUEST_FINAL_MASK = 1 << 32
PFERR_GUEST_PAGE_MASK = 1 << 33
PFERR_IMPLICIT_ACCESS = 1 << 48
PFERR_PRIVATE_ACCESS = 1 << 49

#: The architectural bits by their short names, lowest first, for printing.
PFERR_NAMES = [(PFERR_PRESENT_MASK, "P"), (PFERR_WRITE_MASK, "W"), (PFERR_USER_MASK, "U"),
               (PFERR_RSVD_MASK, "RSVD"), (PFERR_FETCH_MASK, "I/D"), (PFERR_PK_MASK, "PK")]


def pferr_str(errcode: int) -> str:
    """Names of the set architectural error-code bits, e.g. ``'P|W|U'`` (``'0'`` if none)."""
    check_int("errcode", errcode, 0, (1 << 64) - 1)
    names = [n for bit, n in PFERR_NAMES if errcode & bit]
    return "|".join(names) if names else "0"
