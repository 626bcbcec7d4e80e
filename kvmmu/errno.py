"""Errno values and the page-fault return codes, with their kernel names.

Models: include/uapi/asm-generic/errno-base.h, errno.h (x86 values)
Models: arch/x86/kvm/mmu/mmu_internal.h: enum RET_PF_* (6.12+ numbering)

Kernel functions return ``-EAGAIN``; the model does too, and ``errno_name``
puts the readable name beside the number in output.
"""

__all__ = [
    "EPERM", "ENOENT", "EINTR", "EIO", "EAGAIN", "ENOMEM", "EFAULT", "EBUSY",
    "EEXIST", "EINVAL", "ENOSPC", "EOPNOTSUPP", "RET_PF_CONTINUE", "RET_PF_RETRY",
    "RET_PF_EMULATE", "RET_PF_WRITE_PROTECTED", "RET_PF_INVALID", "RET_PF_FIXED",
    "RET_PF_SPURIOUS", "RET_PF_RETRY_INVALID_SLOT", "errno_name", "ret_pf_name",
]
EPERM = 1
ENOENT = 2
EINTR = 4
EIO = 5
EAGAIN = 11
ENOMEM = 12
EFAULT = 14
EBUSY = 16
EEXIST = 17
EINVAL = 22
ENOSPC = 28
EOPNOTSUPP = 95

_ERRNO_NAMES = {
    v: k for k, v in dict(
        EPERM=EPERM, ENOENT=ENOENT, EINTR=EINTR, EIO=EIO, EAGAIN=EAGAIN,
        ENOMEM=ENOMEM, EFAULT=EFAULT, EBUSY=EBUSY, EEXIST=EEXIST,
        EINVAL=EINVAL, ENOSPC=ENOSPC, EOPNOTSUPP=EOPNOTSUPP,
    ).items()
}

# enum in mmu_internal.h, values since RET_PF_WRITE_PROTECTED (about 6.12).
RET_PF_CONTINUE = 0
RET_PF_RETRY = 1
RET_PF_EMULATE = 2
RET_PF_WRITE_PROTECTED = 3
RET_PF_INVALID = 4
RET_PF_FIXED = 5
RET_PF_SPURIOUS = 6
#: Yan Zhao's patch 1/2 (2025-05-20) appended this value; it was not merged,
#: so it exists only in that patch and in chapter 6's comparison.
RET_PF_RETRY_INVALID_SLOT = 7

_RET_PF_NAMES = {
    RET_PF_CONTINUE: "RET_PF_CONTINUE",
    RET_PF_RETRY: "RET_PF_RETRY",
    RET_PF_EMULATE: "RET_PF_EMULATE",
    RET_PF_WRITE_PROTECTED: "RET_PF_WRITE_PROTECTED",
    RET_PF_INVALID: "RET_PF_INVALID",
    RET_PF_FIXED: "RET_PF_FIXED",
    RET_PF_SPURIOUS: "RET_PF_SPURIOUS",
    RET_PF_RETRY_INVALID_SLOT: "RET_PF_RETRY_INVALID_SLOT",
}


def errno_name(ret: int) -> str:
    """Name a kernel-style return value: ``-11`` -> ``'-EAGAIN'``, ``0`` -> ``'0'``."""
    if not isinstance(ret, int):
        raise TypeError(f"ret must be an int, got {type(ret).__name__} {ret!r}")
    if ret < 0 and -ret in _ERRNO_NAMES:
        return f"-{_ERRNO_NAMES[-ret]}"
    return str(ret)


def ret_pf_name(ret: int) -> str:
    """Name a page-fault handler result: a ``RET_PF_*`` value or a ``-errno``."""
    if not isinstance(ret, int):
        raise TypeError(f"ret must be an int, got {type(ret).__name__} {ret!r}")
    if ret < 0:
        return errno_name(ret)
    return _RET_PF_NAMES.get(ret, str(ret))
