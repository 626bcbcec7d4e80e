"""Argument checks shared by every module.

The model answers bad input with a ``TypeError`` or ``ValueError`` that names
the argument and the allowed range, never with a wrong answer or an error from
deep inside.  These helpers are the one place that wording lives.
"""
from collections.abc import Iterable

__all__ = [
    "KernelWarn", "check_int", "check_u64", "check_bool", "check_name",
    "check_choice", "parse_int_text",
]


class KernelWarn(RuntimeError):
    """Raised where the kernel would WARN: the caller broke one of its rules.

    The kernel prints a warning and carries on; the model stops, so a broken
    rule can never pass unnoticed in a test or an exhaustive check.
    """


def _fmt(n: int) -> str:
    return f"{n:#x}" if abs(n) >= 4096 else str(n)


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[lo, hi]``; raise otherwise.

    ``bool`` is rejected: ``True`` is an ``int`` to Python but never a pfn.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else _fmt(lo)
        hi_s = "+inf" if hi is None else _fmt(hi)
        raise ValueError(f"{name} must be in [{lo_s}, {hi_s}], got {_fmt(value)}")
    return value


def check_u64(name: str, value) -> int:
    """Return ``value`` if it is an unsigned 64-bit integer."""
    return check_int(name, value, 0, (1 << 64) - 1)


def check_bool(name: str, value) -> bool:
    """Return ``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_name(name: str, value) -> str:
    """Return ``value`` if it is a non-empty string (a CPU's or a holder's name)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    if not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def check_choice(name: str, value, choices: Iterable):
    """Return ``value`` if it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
    return value


def parse_int_text(name: str, text: str, lo: int, hi: int) -> int:
    """Parse a number a user typed (decimal, ``0x`` hex or ``0b`` binary).

    Underscores and surrounding blanks are allowed.  Raises ``ValueError``
    naming ``name`` and the range for anything else; widgets turn that into a
    message.
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be text, got {type(text).__name__}")
    cleaned = text.strip().replace("_", "")
    if not cleaned:
        raise ValueError(f"{name} is empty: type a number in [{_fmt(lo)}, {_fmt(hi)}] (decimal or 0x hex)")
    try:
        value = int(cleaned, 0)
    except ValueError:
        raise ValueError(
            f"{name} {text!r} is not a number: use decimal, 0x hex or 0b binary"
        ) from None
    return check_int(name, value, lo, hi)
