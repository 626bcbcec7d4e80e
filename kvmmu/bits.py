"""Bit helpers with the kernel's names (include/linux/bits.h).

Models: include/linux/bits.h: BIT_ULL(), GENMASK_ULL()

Python integers are unbounded; a u64 in the kernel is not.  ``u64()`` is the
one place values are folded to 64 bits, and ``c_int()`` models C's conversion
of a u64 to ``int`` (what ``return pte & BIT`` does in an ``int`` function).
"""
from .checks import check_int

__all__ = [
    "U64_MAX", "BIT_ULL", "GENMASK_ULL", "u64", "c_int", "bits_set",
]

U64_MAX = (1 << 64) - 1


def BIT_ULL(nr: int) -> int:
    """Return a u64 with only bit ``nr`` set.

    Models: include/vdso/bits.h: BIT_ULL()
    """
    check_int("nr", nr, 0, 63)
    return 1 << nr


def GENMASK_ULL(h: int, l: int) -> int:
    """Return a u64 with bits ``l`` to ``h`` (inclusive) set.

    Models: include/linux/bits.h: GENMASK_ULL()
    """
    check_int("h", h, 0, 63)
    check_int("l", l, 0, h)
    return ((1 << (h - l + 1)) - 1) << l


def _check_any_int(value) -> None:
    # bits is below checks (it has no other import): its own one-line check.
    if not isinstance(value, int):
        raise TypeError(f"value must be an int, got {type(value).__name__} {value!r}")


def u64(value: int) -> int:
    """Fold an integer to 64 bits, as a C ``u64`` assignment does."""
    _check_any_int(value)
    return value & U64_MAX


def c_int(value: int) -> int:
    """Convert a u64 to a C ``int`` (32-bit, two's complement), as x86-64 does.

    The upper 32 bits are simply dropped: ``c_int(1 << 59) == 0``.  This is
    the trap Sean Christopherson points out in seed 001: an ``int`` helper
    returning ``pte & BIT_ULL(59)`` always returns 0.
    """
    _check_any_int(value)
    low = value & 0xFFFF_FFFF
    return low - (1 << 32) if low & (1 << 31) else low


def bits_set(value: int) -> list[int]:
    """Return the positions of the set bits of a u64, lowest first."""
    _check_any_int(value)
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"value must be a u64 in [0, {U64_MAX:#x}], got {value!r}")
    return [i for i in range(64) if value >> i & 1]
