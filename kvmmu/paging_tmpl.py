"""KVM's guest page-table walker (paging_tmpl.h) for 64-bit, LA57 and PAE paging.

Models: arch/x86/kvm/mmu/paging_tmpl.h: PT_INDEX(), PT_LVL_ADDR_MASK(), PT_LVL_OFFSET_MASK(), gpte_to_gfn_lvl(), gpte_to_gfn()
Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_present_gpte)(), FNAME(gpte_access)(), FNAME(gpte_pkeys)()
Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_rsvd_bits_set)(), FNAME(is_last_gpte)(), FNAME(protect_clean_gpte)()
Models: arch/x86/kvm/mmu/paging_tmpl.h: struct guest_walker, FNAME(walk_addr_generic)(), FNAME(update_accessed_dirty_bits)()
Models: arch/x86/include/asm/kvm_host.h: struct x86_exception

Reference version: Linux 6.17 (read at v6.17-rc3).

When KVM emulates an instruction or shadows the guest's page tables, it must
translate a guest virtual address exactly as the CPU would: walk the guest's
tables from CR3, AND the permissions of every level, decide whether the
access faults and with which error code, and set the Accessed and Dirty bits
the CPU would have set.  paging_tmpl.h does this once per paging format
(``FNAME(x)`` becomes ``paging64_x``, ``paging32_x`` or ``ept_x``); this
module models ``paging64_*``, which serves 4-level, 5-level (LA57) and PAE
paging.

:func:`walk_addr_generic` and :func:`update_accessed_dirty_bits` are CPU
code (:mod:`kvmmu.cpu`): one step to read the vCPU's CR3, one per page-table
read (memslot, hva, ``__get_user`` on the host's memory) and one per A/D
compare-exchange, the points where another CPU can change the guest's
tables.  ``run_alone(kvm, walk_addr_generic(...))`` is the plain call
(:func:`run_walk` does it with the vCPU's current MMU).  A
:class:`WalkVariant` says how a level is read and how A/D bits are written:
6.17's (:data:`PAGING64`), the chapter's unsafe blind write
(:data:`PAGING64_BLIND_AD`), or the RFC's through pfn caches
(:mod:`kvmmu.paging_tmpl_rfc`).

**Where the model simplifies.**

- No nested paging: ``kvm_translate_gpa`` is the identity (no L2 walks).
  A :class:`WalkVariant` whose read of a table finds that the table's gpa
  does not translate returns :class:`NestedPageFault`, and the walk ends
  as it does when ``kvm_translate_gpa`` fails (chapter 7's CPU, whose
  reads go through EPT).  No EPT (``ept_*``) and no 32-bit non-PAE paging.
- ``have_ad`` is always true (PTTYPE 64 always has A/D bits).
- The memslot lookup and the read of a gpte are one step; the walk takes
  no ``kvm->srcu`` (no race of chapter 5 changes memslots).
- Addresses are checked at the Python boundary: a non-canonical address
  raises ``ValueError`` (on hardware the emulator raises #GP before any walk).
- ``GuestWalker`` has three model-only fields for the book: ``gpte_read``
  (each level's entry as last read, including the one that faulted),
  ``ad_log`` (every A/D write attempt) and ``retries``.  A walk that
  restarts :data:`MAX_WALK_RETRIES` times raises :class:`WalkLivelock`
  (the kernel would spin in ``retry_walk``).
"""
from __future__ import annotations

from typing import Callable

from .checks import check_int, check_u64
from .cpu import cpu_code, run_alone
from .errno import EFAULT
from .explorer import step
from .host_mm import __get_user, __put_user, __try_cmpxchg_user
from .kvm_host import (KvmVcpu, gfn_to_hva_memslot_prot, kvm_is_error_hva,
                       kvm_vcpu_gfn_to_memslot, kvm_vcpu_mark_page_dirty)
from .levels import PAGE_SHIFT, PAGE_SIZE
from .memslots import kvm_is_visible_memslot
from .mmu_permissions import KvmMmu, permission_fault
from .pferr import (PFERR_FETCH_MASK, PFERR_IMPLICIT_ACCESS, PFERR_PRESENT_MASK,
                    PFERR_RSVD_MASK, PFERR_USER_MASK, PFERR_WRITE_MASK, pferr_str)
from .spte import (ACC_WRITE_MASK, PT64_NX_MASK, PT_ACCESSED_MASK, PT_DIRTY_MASK,
                   PT_PAGE_SIZE_MASK, PT_PRESENT_MASK, PT_USER_MASK, PT_WRITABLE_MASK)

__all__ = [
    "PT_LEVEL_BITS", "PT_MAX_FULL_LEVELS", "PT32E_ROOT_LEVEL", "PT_GUEST_ACCESSED_SHIFT",
    "PT_GUEST_DIRTY_SHIFT", "PT_GUEST_ACCESSED_MASK", "PT_GUEST_DIRTY_MASK",
    "PT_WRITABLE_SHIFT", "PT64_PKEY_SHIFT", "PT64_PKEY_MASK", "PT_BASE_ADDR_MASK",
    "PF_VECTOR", "ACCESS_FLAGS", "MAX_WALK_RETRIES",
    "PT_INDEX", "PT_LVL_ADDR_MASK", "PT_LVL_OFFSET_MASK", "gpte_to_gfn_lvl", "gpte_to_gfn",
    "is_present_gpte", "gpte_access", "gpte_pkeys", "is_rsvd_bits_set", "is_last_gpte",
    "protect_clean_gpte", "X86Exception", "GuestWalker", "WalkLivelock", "GpteRead",
    "NestedPageFault",
    "WalkVariant", "check_access", "check_gva", "walk_addr_generic",
    "update_accessed_dirty_bits", "update_accessed_dirty_bits_blind", "PAGING64",
    "PAGING64_BLIND_AD", "run_walk",
]

U64_MASK = (1 << 64) - 1

# ---- paging_tmpl.h, PTTYPE 64 ---------------------------------------------
PT_LEVEL_BITS = 9
PT_MAX_FULL_LEVELS = 5
PT32E_ROOT_LEVEL = 3
PT_GUEST_ACCESSED_SHIFT = 5
PT_GUEST_DIRTY_SHIFT = 6
PT_GUEST_ACCESSED_MASK = PT_ACCESSED_MASK
PT_GUEST_DIRTY_MASK = PT_DIRTY_MASK
PT_WRITABLE_SHIFT = 1
PT64_PKEY_SHIFT = 59
PT64_PKEY_MASK = 0xF
#: Bits 51:12 of an entry: the address of the next table or of the page.
PT_BASE_ADDR_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)
#: Bit 63, NX, inverted while the walk ANDs the levels (``walk_nx_mask``).
_WALK_NX_MASK = PT64_NX_MASK

PF_VECTOR = 14

#: The access flags a walk may be asked for.
ACCESS_FLAGS = PFERR_WRITE_MASK | PFERR_USER_MASK | PFERR_FETCH_MASK | PFERR_IMPLICIT_ACCESS

#: A walk that restarts this often is reported as a livelock (the kernel
#: would spin in retry_walk).
MAX_WALK_RETRIES = 64


# ===========================================================================
# Decoding an address and an entry.
# ===========================================================================
def PT_INDEX(addr: int, level: int) -> int:
    """Return the 9-bit index of ``addr`` in a table of ``level`` (1..5).

    Models: arch/x86/kvm/mmu/paging_tmpl.h: PT_INDEX()
    """
    if (type(addr) is not int or not 0 <= addr <= U64_MASK or type(level) is not int
            or not 1 <= level <= PT_MAX_FULL_LEVELS):
        check_u64("addr", addr)
        check_int("level", level, 1, PT_MAX_FULL_LEVELS)
    return (addr >> (PAGE_SHIFT + (level - 1) * PT_LEVEL_BITS)) & ((1 << PT_LEVEL_BITS) - 1)


def PT_LVL_ADDR_MASK(level: int) -> int:
    """Address bits of a ``level`` leaf: bits 51 down to the level's page size.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: PT_LVL_ADDR_MASK()
    """
    if type(level) is not int or not 1 <= level <= PT_MAX_FULL_LEVELS:
        check_int("level", level, 1, PT_MAX_FULL_LEVELS)
    return PT_BASE_ADDR_MASK & ~((1 << (PAGE_SHIFT + (level - 1) * PT_LEVEL_BITS)) - 1)


def PT_LVL_OFFSET_MASK(level: int) -> int:
    """Bits 51:12 of an address that lie inside a ``level`` page.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: PT_LVL_OFFSET_MASK()
    """
    if type(level) is not int or not 1 <= level <= PT_MAX_FULL_LEVELS:
        check_int("level", level, 1, PT_MAX_FULL_LEVELS)
    return PT_BASE_ADDR_MASK & ((1 << (PAGE_SHIFT + (level - 1) * PT_LEVEL_BITS)) - 1)


def gpte_to_gfn_lvl(gpte: int, level: int) -> int:
    """Return the first gfn a ``level`` gpte maps.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: gpte_to_gfn_lvl()
    """
    if type(gpte) is not int or not 0 <= gpte <= U64_MASK:
        check_u64("gpte", gpte)
    return (gpte & PT_LVL_ADDR_MASK(level)) >> PAGE_SHIFT


def gpte_to_gfn(gpte: int) -> int:
    """Return the gfn a gpte points to (the next table, or a 4K page).

    Models: arch/x86/kvm/mmu/paging_tmpl.h: gpte_to_gfn()
    """
    if type(gpte) is not int or not 0 <= gpte <= U64_MASK:
        check_u64("gpte", gpte)
    return (gpte & PT_BASE_ADDR_MASK) >> PAGE_SHIFT


def is_present_gpte(gpte: int) -> bool:
    """True if the gpte's Present bit is set.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_present_gpte)()
    """
    if type(gpte) is not int or not 0 <= gpte <= U64_MASK:
        check_u64("gpte", gpte)
    return bool(gpte & PT_PRESENT_MASK)


def gpte_access(gpte: int) -> int:
    """Return the ACC_* bits of a gpte: W and U as they are, ACC_EXEC = P xor NX.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(gpte_access)()

    ACC_EXEC_MASK is bit 0, the Present bit's position, so the P bit (set in
    any present gpte) XOR the NX bit gives "executable".  The walker calls
    it on its accumulated access with NX inverted back.
    """
    if type(gpte) is not int or not 0 <= gpte <= U64_MASK:
        check_u64("gpte", gpte)
    access = gpte & (PT_WRITABLE_MASK | PT_USER_MASK | PT_PRESENT_MASK)
    return access ^ ((gpte >> 63) & 1)


def gpte_pkeys(gpte: int) -> int:
    """Return the protection key of a leaf gpte (bits 62:59).

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(gpte_pkeys)()
    """
    if type(gpte) is not int or not 0 <= gpte <= U64_MASK:
        check_u64("gpte", gpte)
    return (gpte >> PT64_PKEY_SHIFT) & PT64_PKEY_MASK


def _check_mmu(mmu) -> KvmMmu:
    if type(mmu) is not KvmMmu:
        raise TypeError(f"mmu must be a KvmMmu (the vCPU's arch.walk_mmu), "
                        f"got {type(mmu).__name__}")
    return mmu


def is_rsvd_bits_set(mmu: KvmMmu, gpte: int, level: int) -> bool:
    """True if ``gpte`` has a bit set that must be zero at ``level``.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_rsvd_bits_set)()

    Which mask applies depends on bit 7 (PS): a large-page entry reserves
    the unaligned low address bits.
    """
    if (type(mmu) is not KvmMmu or type(gpte) is not int or not 0 <= gpte <= U64_MASK
            or type(level) is not int or not 1 <= level <= PT_MAX_FULL_LEVELS):
        _check_mmu(mmu)
        check_u64("gpte", gpte)
        check_int("level", level, 1, PT_MAX_FULL_LEVELS)
    return bool(gpte & mmu.rsvd_bits_mask[(gpte >> 7) & 1][level - 1])


def is_last_gpte(mmu: KvmMmu, level: int, gpte: int) -> bool:
    """True if the walk ends at this gpte: a 4K PTE, or PS set above it.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_last_gpte)()
    """
    if (type(mmu) is not KvmMmu or type(gpte) is not int or not 0 <= gpte <= U64_MASK
            or type(level) is not int or not 1 <= level <= PT_MAX_FULL_LEVELS):
        _check_mmu(mmu)
        check_int("level", level, 1, PT_MAX_FULL_LEVELS)
        check_u64("gpte", gpte)
    return level == 1 or bool(gpte & PT_PAGE_SIZE_MASK)


def protect_clean_gpte(mmu: KvmMmu, access: int, gpte: int) -> int:
    """Drop ACC_WRITE unless the leaf gpte is dirty, so the first write faults again.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(protect_clean_gpte)()

    KVM then sees that write and sets D; a writable mapping of a clean page
    would let the guest write without D ever being set.
    """
    if (type(mmu) is not KvmMmu or type(gpte) is not int or not 0 <= gpte <= U64_MASK
            or type(access) is not int or not 0 <= access <= 7):
        _check_mmu(mmu)
        check_int("access", access, 0, 7)
        check_u64("gpte", gpte)
    if not mmu.have_ad:
        return access
    mask = ~ACC_WRITE_MASK & 0xFF
    mask |= (gpte >> (PT_GUEST_DIRTY_SHIFT - PT_WRITABLE_SHIFT)) & PT_WRITABLE_MASK
    return access & mask


# ===========================================================================
# The walk record.
# ===========================================================================
class X86Exception:
    """The fault a failed walk reports.

    Models: arch/x86/include/asm/kvm_host.h: struct x86_exception
    """

    __slots__ = ("vector", "error_code_valid", "error_code", "address", "nested_page_fault")

    def __init__(self):
        self.vector = 0
        self.error_code_valid = False
        self.error_code = 0
        self.address = 0
        self.nested_page_fault = False

    def __repr__(self):
        nested = ", nested" if self.nested_page_fault else ""
        return (f"x86_exception(vector={self.vector}, error_code={self.error_code:#x} "
                f"[{pferr_str(self.error_code)}], address={self.address:#x}{nested})")


class GuestWalker:
    """What a walk found, per level (arrays are indexed by ``level - 1``).

    Models: arch/x86/kvm/mmu/paging_tmpl.h: struct guest_walker

    The caller owns it and passes it in, as the kernel's callers put one on
    the stack: a walk writes only the levels it visits, so entries of other
    levels hold whatever an earlier walk left there.  ``ptep_caches`` is the
    RFC's field (:mod:`kvmmu.paging_tmpl_rfc`): the walker's pfn caches.
    """

    def __init__(self):
        self.level = 0
        self.max_level = 0
        self.table_gfn = [0] * PT_MAX_FULL_LEVELS
        self.ptes = [0] * PT_MAX_FULL_LEVELS
        self.pte_gpa = [0] * PT_MAX_FULL_LEVELS
        self.ptep_user = [0] * PT_MAX_FULL_LEVELS
        self.pte_writable = [False] * PT_MAX_FULL_LEVELS
        self.pt_access = [0] * PT_MAX_FULL_LEVELS
        self.pte_access = 0
        self.gfn = 0
        self.fault = X86Exception()
        self.ptep_caches = None
        # model-only, for the book
        self.gpte_read = [0] * PT_MAX_FULL_LEVELS
        self.ad_log = []
        self.retries = 0

    def __repr__(self):
        levels = range(self.max_level, self.level - 1, -1)
        ptes = ", ".join(f"L{lv}={self.ptes[lv - 1]:#x}" for lv in levels)
        return (f"GuestWalker(level={self.level}, max_level={self.max_level}, ptes=[{ptes}], "
                f"pte_access={self.pte_access}, gfn={self.gfn:#x})")


class WalkLivelock(RuntimeError):
    """A walk restarted MAX_WALK_RETRIES times: the kernel would spin forever."""


class GpteRead(tuple):
    """What reading one level gave: the result, the entry, and what to record about it.

    ``(ret, pte, ptep_user, writable)``; ``ptep_user`` and ``writable`` are
    None when the read does not set them (the RFC's read-only path, as
    posted, leaves ``pte_writable[]`` alone).  A value.
    """

    __slots__ = ()

    def __new__(cls, ret: int, pte: int, ptep_user: int | None = None,
                writable: bool | None = None):
        if not (type(ret) is int and -4095 <= ret <= 0 and type(pte) is int
                and 0 <= pte <= U64_MASK
                and (ptep_user is None or type(ptep_user) is int and 0 <= ptep_user <= U64_MASK)
                and (writable is None or type(writable) is bool)):
            check_int("ret", ret, -4095, 0)
            check_u64("pte", pte)
            if ptep_user is not None:
                check_u64("ptep_user", ptep_user)
            if writable is not None and not isinstance(writable, bool):
                raise TypeError(f"writable must be True, False or None, got {writable!r}")
        return super().__new__(cls, (ret, pte, ptep_user, writable))

    def __getnewargs__(self):
        return tuple(self)

    def __deepcopy__(self, memo):
        return self                 # a value

    ret = property(lambda self: self[0])
    pte = property(lambda self: self[1])
    ptep_user = property(lambda self: self[2])
    writable = property(lambda self: self[3])

    def __repr__(self) -> str:
        return f"{self.pte:#x}" if self.ret == 0 else f"error {self.ret}"


class NestedPageFault(tuple):
    """What reading a table gives when the table's own gpa does not translate.

    ``(gpa, error_code)``: the gpa and the error code of that fault.  In the
    kernel ``kvm_translate_gpa()`` fails (a nested guest's table gpa has no
    mapping in L1's tables) and the walk returns with
    ``walker->fault.nested_page_fault`` set; for the CPU of chapter 7 it is
    an EPT violation on the table's gpa.  A value.
    """

    __slots__ = ()

    def __new__(cls, gpa: int, error_code: int):
        check_u64("gpa", gpa)
        check_u64("error_code", error_code)
        return super().__new__(cls, (gpa, error_code))

    def __getnewargs__(self):
        return tuple(self)

    def __deepcopy__(self, memo):
        return self                 # a value

    gpa = property(lambda self: self[0])
    error_code = property(lambda self: self[1])

    def __repr__(self) -> str:
        return f"fault on gpa {self.gpa:#x}"


class WalkVariant:
    """How a walk reads a level and sets A/D bits (the model's way to compare versions).

    ``read_gpte(walker, vcpu, level, table_gfn, index)`` and
    ``update_ad(vcpu, mmu, walker, addr, write_fault)`` are CPU code
    (``read_gpte`` gives a :class:`GpteRead`, or a :class:`NestedPageFault`);
    ``begin(walker, vcpu)`` runs once at the start of a walk and
    ``end(walker, vcpu)`` before every restart and every return (None: no
    such step).  6.17 is :data:`PAGING64`.  A value named by ``name``
    (two variants with one name are one variant).
    """

    __slots__ = ("name", "read_gpte", "update_ad", "begin", "end")

    def __init__(self, name: str, read_gpte: Callable, update_ad: Callable,
                 begin: Callable | None = None, end: Callable | None = None):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        for label, fn in (("read_gpte", read_gpte), ("update_ad", update_ad)):
            if not callable(fn):
                raise TypeError(f"{label} must be callable, got {type(fn).__name__}")
        for label, fn in (("begin", begin), ("end", end)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{label} must be callable or None, got {type(fn).__name__}")
        self.name, self.read_gpte, self.update_ad, self.begin, self.end = (
            name, read_gpte, update_ad, begin, end)

    def __eq__(self, other):
        return type(other) is WalkVariant and other.name == self.name

    def __hash__(self):
        return hash(("WalkVariant", self.name))

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return f"WalkVariant({self.name})"


# ===========================================================================
# Argument checks at the Python boundary.
# ===========================================================================
def check_access(access) -> int:
    """Validate a walk's ``access`` (PFERR_WRITE/USER/FETCH/IMPLICIT bits)."""
    check_int("access", access, 0, U64_MASK)
    if access & ~ACCESS_FLAGS:
        raise ValueError(
            f"access has unknown bits {access & ~ACCESS_FLAGS:#x}: use PFERR_WRITE_MASK (0x2), "
            "PFERR_USER_MASK (0x4), PFERR_FETCH_MASK (0x10), PFERR_IMPLICIT_ACCESS (1<<48)")
    if access & PFERR_WRITE_MASK and access & PFERR_FETCH_MASK:
        raise ValueError("access cannot be both a write and an instruction fetch")
    return access


def check_gva(mmu: KvmMmu, addr) -> int:
    """Validate a guest virtual address for the MMU's paging mode (canonical, in range)."""
    _check_mmu(mmu)
    if isinstance(addr, bool) or not isinstance(addr, int):
        raise TypeError(f"addr must be an integer, got {type(addr).__name__} {addr!r}")
    root = mmu.root_level
    if root == PT32E_ROOT_LEVEL:
        if not 0 <= addr < 1 << 32:
            raise ValueError(f"addr must be in [0, 0xffffffff] with PAE paging, got {addr:#x}")
        return addr
    if not 0 <= addr <= U64_MASK:
        raise ValueError(f"addr must be a 64-bit address, got {addr:#x}")
    bits = 57 if root == 5 else 48
    top = addr >> (bits - 1)
    if top not in (0, (1 << (65 - bits)) - 1):
        raise ValueError(
            f"addr {addr:#x} is not canonical for {root}-level paging: bits 63:{bits - 1} "
            f"must all equal bit {bits - 1} (the CPU raises #GP before any walk)")
    return addr


def _check_ad_args(vcpu, mmu, walker, addr, write_fault) -> None:
    # update_accessed_dirty_bits()'s arguments (all walkers'), before its first step.
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    _check_mmu(mmu)
    if not isinstance(walker, GuestWalker):
        raise TypeError(f"walker must be a GuestWalker, got {type(walker).__name__}")
    check_u64("addr", addr)
    check_int("write_fault", write_fault, 0, PFERR_WRITE_MASK)


def _check_walk(walker, vcpu, mmu, addr, access, variant) -> None:
    if not isinstance(walker, GuestWalker):
        raise TypeError(f"walker must be a GuestWalker, got {type(walker).__name__}")
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    if type(access) is not int or access & ~ACCESS_FLAGS or (access & 0x12) == 0x12:
        check_access(access)
    check_gva(mmu, addr)
    if variant is not None and not isinstance(variant, WalkVariant):
        raise TypeError(f"variant must be a WalkVariant or None, got {type(variant).__name__}")


# ===========================================================================
# The 6.17 walker.
# ===========================================================================
def _get_gpte(vcpu: KvmVcpu, table_gfn: int, index: int) -> GpteRead:
    # memslot -> hva, and whether the slot is writable -> __get_user (one step).
    slot = kvm_vcpu_gfn_to_memslot(vcpu, table_gfn)
    if not kvm_is_visible_memslot(slot):
        return GpteRead(-EFAULT, 0)
    host_addr, writable = gfn_to_hva_memslot_prot(slot, table_gfn)
    if kvm_is_error_hva(host_addr):
        return GpteRead(-EFAULT, 0, None, writable)
    ptep_user = host_addr + index * 8
    ret, pte = __get_user(vcpu.kvm.mm, ptep_user)
    if ret:
        return GpteRead(ret, 0, None, writable)
    return GpteRead(0, pte, ptep_user, writable)


def _read_gpte_user(walker: GuestWalker, vcpu: KvmVcpu, level: int, table_gfn: int, index: int):
    # 6.17: the memslot, the hva, __get_user: one step (the step itself is
    # returned, not a generator around it: one frame less per level).
    gpa = (table_gfn << PAGE_SHIFT) + index * 8
    return step(f"L{level}: read gpte at gpa {gpa:#x}", lambda: _get_gpte(vcpu, table_gfn, index))


def _walk_leaf(walker: GuestWalker, regs, mmu: KvmMmu, addr: int, access: int, pte: int,
               pte_access: int, accessed_dirty: int):
    # After the leaf: final access bits, permission check, gfn,
    # protect_clean_gpte and the D fold.  Returns (errcode or None, accessed_dirty).
    pte_pkey = gpte_pkeys(pte)
    walker.pte_access = gpte_access(pte_access ^ _WALK_NX_MASK)
    errcode = permission_fault(regs, mmu, walker.pte_access, pte_pkey, access)
    if errcode:
        return errcode, accessed_dirty
    level = walker.level
    gfn = gpte_to_gfn_lvl(pte, level) + ((addr & PT_LVL_OFFSET_MASK(level)) >> PAGE_SHIFT)
    walker.gfn = gfn                                      # kvm_translate_gpa(): identity
    if not access & PFERR_WRITE_MASK:
        walker.pte_access = protect_clean_gpte(mmu, walker.pte_access, pte)
    else:
        # a write also needs D in the leaf
        accessed_dirty &= pte >> (PT_GUEST_DIRTY_SHIFT - PT_GUEST_ACCESSED_SHIFT)
    return None, accessed_dirty


def _walk_error(walker: GuestWalker, mmu: KvmMmu, addr: int, access: int, errcode: int) -> int:
    # The error: label of walk_addr_generic.
    errcode |= access & (PFERR_WRITE_MASK | PFERR_USER_MASK)
    if access & PFERR_FETCH_MASK and (mmu.efer_nx or mmu.cr4_smep):
        errcode |= PFERR_FETCH_MASK
    fault = walker.fault
    fault.vector = PF_VECTOR
    fault.error_code_valid = True
    fault.error_code = errcode
    fault.address = addr
    fault.nested_page_fault = False
    return 0


def _nested_fault(walker: GuestWalker, got: NestedPageFault) -> int:
    # What kvm_translate_gpa() leaves in walker->fault when it fails.
    fault = walker.fault
    fault.vector = PF_VECTOR
    fault.error_code_valid = True
    fault.error_code = got.error_code
    fault.address = got.gpa
    fault.nested_page_fault = True
    return 0


def walk_addr_generic(walker: GuestWalker, vcpu: KvmVcpu, mmu: KvmMmu, addr: int, access: int,
                      variant: WalkVariant | None = None):
    """Walk the guest's page tables for ``addr``; 1 (translated) or 0 (fault in ``walker.fault``).

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_addr_generic)()

    ``mmu`` is the vCPU's walk MMU (``vcpu.arch.walk_mmu``).  Fills
    ``walker`` as the kernel does: per level the table gfn, entry gpa,
    entry and writability of the table's slot; then the final access bits,
    gfn and, after a successful permission check, the A/D updates (a
    compare-exchange mismatch restarts the walk from CR3).  ``variant``
    (default :data:`PAGING64`, 6.17) says how levels are read and A/D set;
    a read that gives a :class:`NestedPageFault` ends the walk with 0 and
    ``walker.fault.nested_page_fault`` set.
    """
    _check_walk(walker, vcpu, mmu, addr, access, variant)
    variant = PAGING64 if variant is None else variant
    write_fault = access & PFERR_WRITE_MASK
    walker.retries = 0
    walker.ad_log = []
    if variant.begin is not None:
        yield from variant.begin(walker, vcpu)
    while True:                                           # retry_walk:
        regs = yield from step("kvm_mmu_get_guest_pgd: CR3", lambda: vcpu.arch)
        walker.level = mmu.root_level
        pte = regs.cr3
        accessed_dirty = PT_GUEST_ACCESSED_MASK           # have_ad
        errcode = 0                                       # (None: no error)
        pte_access = U64_MASK
        if walker.level == PT32E_ROOT_LEVEL:
            pte = regs.pdptrs[(addr >> 30) & 3]           # mmu->get_pdptr()
            walker.gpte_read[walker.level - 1] = pte
            if is_present_gpte(pte):
                walker.level -= 1
                errcode = None
        else:
            errcode = None
        walker.max_level = walker.level
        while errcode is None:
            pt_access = pte_access
            level = walker.level
            index = PT_INDEX(addr, level)
            table_gfn = gpte_to_gfn(pte)
            walker.table_gfn[level - 1] = table_gfn
            walker.pte_gpa[level - 1] = (table_gfn << PAGE_SHIFT) + index * 8
            got = yield from variant.read_gpte(walker, vcpu, level, table_gfn, index)
            if isinstance(got, NestedPageFault):
                # kvm_translate_gpa() failed: the walk ends at once, with the fault
                # of the table's own translation, not a #PF of the guest's.
                if variant.end is not None:
                    yield from variant.end(walker, vcpu)
                return _nested_fault(walker, got)
            if got.writable is not None:
                walker.pte_writable[level - 1] = got.writable
            if got.ret:
                errcode = 0
                break
            if got.ptep_user is not None:
                walker.ptep_user[level - 1] = got.ptep_user
            pte = got.pte
            walker.gpte_read[level - 1] = pte
            # NX inverted, so that "no level sets NX" survives the AND like W and U
            pte_access = pt_access & (pte ^ _WALK_NX_MASK)
            if not is_present_gpte(pte):
                errcode = 0
            elif is_rsvd_bits_set(mmu, pte, level):
                errcode = PFERR_RSVD_MASK | PFERR_PRESENT_MASK
            else:
                walker.ptes[level - 1] = pte
                walker.pt_access[level - 1] = gpte_access(pt_access ^ _WALK_NX_MASK)
                accessed_dirty &= pte
                if is_last_gpte(mmu, level, pte):
                    break
                walker.level -= 1
        if errcode is None:
            errcode, accessed_dirty = _walk_leaf(walker, regs, mmu, addr, access, pte,
                                                 pte_access, accessed_dirty)
        if errcode is None and not accessed_dirty:
            ret = yield from variant.update_ad(vcpu, mmu, walker, addr, write_fault)
            if ret < 0:
                errcode = 0
            elif ret > 0:
                if variant.end is not None:
                    yield from variant.end(walker, vcpu)
                walker.retries += 1
                if walker.retries >= MAX_WALK_RETRIES:
                    raise WalkLivelock(f"walk of {addr:#x} restarted {walker.retries} times")
                continue                                  # goto retry_walk
        if variant.end is not None:
            yield from variant.end(walker, vcpu)
        if errcode is not None:
            return _walk_error(walker, mmu, addr, access, errcode)
        return 1


def _ad_target(walker: GuestWalker, level: int, write_fault: int) -> tuple[int, int]:
    # The value update_accessed_dirty_bits wants at `level`: A everywhere,
    # D too at the leaf of a write.
    orig_pte = walker.ptes[level - 1]
    pte = orig_pte | PT_GUEST_ACCESSED_MASK
    if level == walker.level and write_fault:
        pte |= PT_GUEST_DIRTY_MASK
    return orig_pte, pte


class _Cmpxchg(tuple):
    # (ret, value) of __try_cmpxchg_user, printed with the value in hex.
    def __repr__(self) -> str:
        return f"({self[0]}, {self[1]:#x})"


def _cmpxchg_outcome(ret: int, cur: int) -> str:
    if ret == 0:
        return "written"
    if ret == 1:
        return f"mismatch: memory holds {cur:#x}"
    return f"fault {ret}"


@cpu_code
def update_accessed_dirty_bits(vcpu: KvmVcpu, mmu: KvmMmu, walker: GuestWalker, addr: int,
                               write_fault: int):
    """Set A (and D at a written leaf) top-down with compare-exchange; 0, 1 (restart) or -EFAULT.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(update_accessed_dirty_bits)()

    A level whose table lives in a read-only memslot is skipped: ROM page
    tables work only if their A/D bits are already set.
    """
    _check_ad_args(vcpu, mmu, walker, addr, write_fault)
    mm = vcpu.kvm.mm
    for level in range(walker.max_level, walker.level - 1, -1):
        orig_pte, pte = _ad_target(walker, level, write_fault)
        if pte == orig_pte:
            continue
        if not walker.pte_writable[level - 1]:
            walker.ad_log.append((level, orig_pte, pte, "skipped: read-only slot"))
            continue
        ptep_user = walker.ptep_user[level - 1]
        ret, cur = yield from step(
            f"L{level}: cmpxchg gpte {orig_pte:#x} -> {pte:#x}",
            lambda: _Cmpxchg(__try_cmpxchg_user(mm, ptep_user, orig_pte, pte)))
        walker.ad_log.append((level, orig_pte, pte, _cmpxchg_outcome(ret, cur)))
        if ret:
            return ret
        table_gfn = walker.table_gfn[level - 1]
        yield from step(f"L{level}: mark table gfn {table_gfn:#x} dirty",
                        lambda: kvm_vcpu_mark_page_dirty(vcpu, table_gfn))
        walker.ptes[level - 1] = pte
    return 0


@cpu_code
def update_accessed_dirty_bits_blind(vcpu: KvmVcpu, mmu: KvmMmu, walker: GuestWalker, addr: int,
                                     write_fault: int):
    """UNSAFE variant for the chapter: write ``pte | A`` with a plain store, no compare.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(update_accessed_dirty_bits)() (unsafe variant: a plain store instead of the compare-exchange)

    It overwrites whatever the guest stored since the walk read the entry.
    """
    _check_ad_args(vcpu, mmu, walker, addr, write_fault)
    mm = vcpu.kvm.mm
    for level in range(walker.max_level, walker.level - 1, -1):
        orig_pte, pte = _ad_target(walker, level, write_fault)
        if pte == orig_pte or not walker.pte_writable[level - 1]:
            continue
        ptep_user = walker.ptep_user[level - 1]
        yield from step(f"L{level}: write gpte := {pte:#x} (no compare)",
                        lambda: __put_user(mm, ptep_user, pte))
        walker.ad_log.append((level, orig_pte, pte, "written blindly"))
        table_gfn = walker.table_gfn[level - 1]
        yield from step(f"L{level}: mark table gfn {table_gfn:#x} dirty",
                        lambda: kvm_vcpu_mark_page_dirty(vcpu, table_gfn))
        walker.ptes[level - 1] = pte
    return 0


#: 6.17's walk: ``__get_user`` through the slot's hva, A/D by compare-exchange.
PAGING64 = WalkVariant("6.17", _read_gpte_user, update_accessed_dirty_bits)
#: The chapter's unsafe variant: the same walk, A/D written blindly.
PAGING64_BLIND_AD = WalkVariant("blind A/D", _read_gpte_user, update_accessed_dirty_bits_blind)


def run_walk(vcpu: KvmVcpu, addr: int, access: int, *, variant: WalkVariant | None = None,
             walker: GuestWalker | None = None) -> tuple[int, GuestWalker]:
    """Walk ``addr`` alone on the vCPU with its current registers; ``(ret, walker)``.

    A plain call (``run_alone`` over :func:`walk_addr_generic` with the
    vCPU's ``arch.walk_mmu``); ``walker`` defaults to a fresh record.
    """
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    arch = vcpu.arch
    if arch is None:
        raise ValueError(f"{vcpu!r} has no paging registers: set vcpu.arch "
                         "(kvmmu.guest.GuestPageTables.load) first")
    walker = GuestWalker() if walker is None else walker
    ret = run_alone(vcpu.kvm, walk_addr_generic(walker, vcpu, arch.walk_mmu, addr, access,
                                                variant))
    return ret, walker
