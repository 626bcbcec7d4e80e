"""KVM's guest page-table walker (paging_tmpl.h) for 64-bit, LA57 and PAE paging.

Models: arch/x86/kvm/mmu/paging_tmpl.h: struct guest_walker, FNAME(walk_addr_generic)(), FNAME(update_accessed_dirty_bits)()
Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_rsvd_bits_set)(), FNAME(is_last_gpte)(), FNAME(protect_clean_gpte)()

Reference version: Linux 6.17 (read at v6.17-rc3), kernel-facts §5(a).

When KVM emulates an instruction or shadows the guest's page tables, it must
translate a guest virtual address exactly as the CPU would: walk the guest's
tables from CR3, AND the permissions of every level, decide whether the
access faults and with which error code, and set the Accessed and Dirty bits
the CPU would have set.  paging_tmpl.h does this once per paging format
(``FNAME(x)`` becomes ``paging64_x``, ``paging32_x`` or ``ept_x``); this
module models ``paging64_*``, which serves 4-level, 5-level (LA57) and PAE
paging.

This module holds the walk record (:class:`GuestWalker`), the helpers that
read a gpte against the MMU context (``is_rsvd_bits_set``, ``is_last_gpte``,
``protect_clean_gpte``), and :func:`walk_addr_generic`, the 6.17
walker on one CPU, written for speed (plain ints, a caller-provided
:class:`GuestWalker`, no allocation per walk).  Around it:

- :mod:`kvmmu.guest_paging` -- the gpte format, the vCPU registers, the
  guest's page-table builder;
- :mod:`kvmmu.mmu_permissions` -- the permission/pkey bitmaps, the
  reserved-bit masks and ``permission_fault``;
- :mod:`kvmmu.walker_ops` -- the same walk as a step generator for the
  explorer; :mod:`kvmmu.walker_gpc` -- the RFC walker through pfn caches;
- :mod:`kvmmu.walk_trace` -- a walk explained level by level;
- :mod:`kvmmu.walker_races` -- the chapter's two race scenarios.

**Where the model simplifies.**

- No nested paging: ``kvm_translate_gpa`` is the identity (no L2 walks, no
  nested page faults).  No EPT (``ept_*``) and no 32-bit non-PAE paging.
- ``have_ad`` is always true (PTTYPE 64 always has A/D bits).
- Addresses are checked at the Python boundary: a non-canonical address
  raises ``ValueError`` (on hardware the emulator raises #GP before any walk).
- ``GuestWalker`` has two model-only fields for the book: ``gpte_read``
  (each level's entry as last read, including the one that faulted) and
  ``ad_log`` (every A/D write attempt), plus ``retries``.
"""
from .checks import check_int
from .guest_memory import GuestMemory, kvm_is_visible_memslot
from .guest_paging import (ACCESS_FLAGS, PF_VECTOR, PFERR_FETCH_MASK, PFERR_PRESENT_MASK,
                           PFERR_RSVD_MASK, PFERR_USER_MASK, PFERR_WRITE_MASK,
                           PT64_BASE_ADDR_MASK, PT_GUEST_ACCESSED_MASK, PT_GUEST_ACCESSED_SHIFT,
                           PT_GUEST_DIRTY_MASK, PT_GUEST_DIRTY_SHIFT, PT_LVL_OFFSET_MASK,
                           PT_MAX_FULL_LEVELS, PT_WRITABLE_SHIFT, U64_MASK, Vcpu, acc_str,
                           gpte_access, gpte_pkeys, gpte_to_gfn_lvl, pferr_str)
from .levels import PAGE_SHIFT
from .memslots import KVM_MEM_READONLY
from .mmu_permissions import KvmMmu, permission_fault
from .spte import ACC_WRITE_MASK, PT64_NX_MASK, PT_PAGE_SIZE_MASK, PT_PRESENT_MASK, PT_WRITABLE_MASK

#: A walk that restarts this often is reported as a livelock (the kernel
#: would spin in retry_walk).
MAX_WALK_RETRIES = 64


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
        return (f"x86_exception(vector={self.vector}, error_code={self.error_code:#x} "
                f"[{pferr_str(self.error_code)}], address={self.address:#x})")


class GuestWalker:
    """What a walk found, per level (arrays are indexed by ``level - 1``).

    The caller owns it and passes it in, as the kernel's callers put one on
    the stack: a walk writes only the levels it visits, so entries of other
    levels hold whatever an earlier walk left there.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: struct guest_walker
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
        self.ptep_caches = None          # the RFC's per-level pfn caches
        # model-only, for the book
        self.gpte_read = [0] * PT_MAX_FULL_LEVELS
        self.ad_log = []
        self.retries = 0

    def state(self) -> tuple:
        """Hashable summary of the record (for the explorer's world key)."""
        f = self.fault
        return (self.level, self.max_level, tuple(self.table_gfn), tuple(self.ptes),
                tuple(self.pte_gpa), tuple(self.ptep_user), tuple(self.pte_writable),
                tuple(self.pt_access), self.pte_access, self.gfn,
                (f.vector, f.error_code_valid, f.error_code, f.address),
                tuple(self.gpte_read), tuple(self.ad_log), self.retries)

    def __repr__(self):
        levels = range(self.max_level, self.level - 1, -1)
        ptes = ", ".join(f"L{lv}={self.ptes[lv - 1]:#x}" for lv in levels)
        return (f"GuestWalker(level={self.level}, max_level={self.max_level}, ptes=[{ptes}], "
                f"pte_access={acc_str(self.pte_access)}, gfn={self.gfn:#x})")


class WalkLivelock(RuntimeError):
    """A walk restarted MAX_WALK_RETRIES times: the kernel would spin forever."""


# ===========================================================================
# Reading a gpte (shared by every walker).
# ===========================================================================
def is_rsvd_bits_set(mmu: KvmMmu, gpte: int, level: int) -> bool:
    """True if ``gpte`` has a bit set that must be zero at ``level``.

    Which mask applies depends on bit 7 (PS): a large-page entry reserves
    the unaligned low address bits.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_rsvd_bits_set)()
    """
    return bool(gpte & mmu.rsvd_bits_mask[(gpte >> 7) & 1][level - 1])


def is_last_gpte(mmu: KvmMmu, level: int, gpte: int) -> bool:
    """True if the walk ends at this gpte: a 4K PTE, or PS set above it.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_last_gpte)()
    """
    return level == 1 or bool(gpte & PT_PAGE_SIZE_MASK)


def protect_clean_gpte(mmu: KvmMmu, access: int, gpte: int) -> int:
    """Drop ACC_WRITE unless the leaf gpte is dirty, so the first write faults again.

    KVM then sees that write and sets D; a writable mapping of a clean page
    would let the guest write without D ever being set.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(protect_clean_gpte)()
    """
    if not mmu.have_ad:
        return access
    mask = ~ACC_WRITE_MASK & 0xFF
    mask |= (gpte >> (PT_GUEST_DIRTY_SHIFT - PT_WRITABLE_SHIFT)) & PT_WRITABLE_MASK
    return access & mask


# ===========================================================================
# Argument checks at the Python boundary.
# ===========================================================================
def check_access(access) -> int:
    """Validate a walk's ``access`` (PFERR_WRITE/USER/FETCH/IMPLICIT bits)."""
    check_int("access", access, 0, (1 << 64) - 1)
    if access & ~ACCESS_FLAGS:
        raise ValueError(
            f"access has unknown bits {access & ~ACCESS_FLAGS:#x}: use PFERR_WRITE_MASK (0x2), "
            "PFERR_USER_MASK (0x4), PFERR_FETCH_MASK (0x10), PFERR_IMPLICIT_ACCESS (1<<48)")
    if access & PFERR_WRITE_MASK and access & PFERR_FETCH_MASK:
        raise ValueError("access cannot be both a write and an instruction fetch")
    return access


def check_gva(vcpu: Vcpu, addr) -> int:
    """Validate a guest virtual address for the vCPU's paging mode (canonical, in range)."""
    if isinstance(addr, bool) or not isinstance(addr, int):
        raise TypeError(f"addr must be an integer, got {type(addr).__name__} {addr!r}")
    root = vcpu.mmu.root_level
    if root == 3:
        if not 0 <= addr < 1 << 32:
            raise ValueError(f"addr must be in [0, 0xffffffff] with PAE paging, got {addr:#x}")
        return addr
    if not 0 <= addr <= U64_MASK:
        raise ValueError(f"addr must be a 64-bit address, got {addr:#x}")
    bits = 57 if root == 5 else 48
    top = addr >> (bits - 1)
    if top not in (0, (1 << (65 - bits)) - 1):
        raise ValueError(
            f"addr {addr:#x} is not canonical for {vcpu.mode} paging: bits 63:{bits - 1} "
            f"must all equal bit {bits - 1} (the CPU raises #GP before any walk)")
    return addr


# ===========================================================================
# The 6.17 walker, on one CPU, fast.
# ===========================================================================
def walk_addr_generic(walker: GuestWalker, vcpu: Vcpu, mem: GuestMemory, addr: int, access: int) -> int:
    """Walk the guest's page tables for ``addr``; return 1 (translated) or 0 (fault in ``walker.fault``).

    Fills ``walker`` as the kernel does: per level the table gfn, entry
    gpa, entry and writability of the table's slot; then the final access
    bits, gfn and, after a successful permission check, the A/D updates
    (a compare-exchange mismatch restarts the walk from CR3).

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_addr_generic)()
    """
    if not isinstance(walker, GuestWalker):
        raise TypeError("walker must be a GuestWalker")
    if type(access) is not int or access & ~ACCESS_FLAGS or (access & 0x12) == 0x12:
        check_access(access)
    check_gva(vcpu, addr)
    mmu = vcpu.mmu
    write_fault = access & PFERR_WRITE_MASK
    rsvd0, rsvd1 = mmu.rsvd_bits_mask
    ptes = walker.ptes
    gpte_read = walker.gpte_read
    host_pt = mem.host_pt
    pages = mem.pages
    walker.retries = 0
    walker.ad_log.clear()
    while True:                                          # retry_walk:
        errcode = 0
        level = mmu.root_level
        pte = vcpu.cr3
        accessed_dirty = PT_GUEST_ACCESSED_MASK
        if level == 3:
            pte = vcpu.pdptrs[(addr >> 30) & 3]
            gpte_read[2] = pte
            if not pte & PT_PRESENT_MASK:
                walker.level = level
                return _walk_error(walker, vcpu, addr, access, errcode)
            level -= 1
        walker.max_level = level
        pte_access = U64_MASK
        while True:
            pt_access = pte_access
            index = (addr >> (3 + 9 * level)) & 0x1FF       # PT_INDEX(addr, level)
            table_gfn = (pte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT
            pte_gpa = (table_gfn << PAGE_SHIFT) + index * 8
            walker.table_gfn[level - 1] = table_gfn
            walker.pte_gpa[level - 1] = pte_gpa
            slot = mem.last_used_slot                     # kvm_vcpu_gfn_to_memslot()
            if slot is None or not slot.base_gfn <= table_gfn < slot.base_gfn + slot.npages:
                slot = mem.gfn_to_memslot(table_gfn)
            if slot is None or not kvm_is_visible_memslot(slot):
                walker.level = level
                return _walk_error(walker, vcpu, addr, access, errcode)
            host_addr = slot.userspace_addr + ((table_gfn - slot.base_gfn) << PAGE_SHIFT)
            walker.pte_writable[level - 1] = not slot.flags & KVM_MEM_READONLY
            ptep_user = host_addr + index * 8
            pfn = host_pt.get(ptep_user >> PAGE_SHIFT)
            if pfn is None:                              # first touch: fault the page in
                ret, pte = mem.get_user_u64(ptep_user)
                if ret:
                    walker.level = level
                    return _walk_error(walker, vcpu, addr, access, errcode)
            else:
                pte = pages[pfn].get(index, 0)
            walker.ptep_user[level - 1] = ptep_user
            gpte_read[level - 1] = pte
            # invert NX so it can be ANDed like the other permission bits
            pte_access = pt_access & (pte ^ PT64_NX_MASK)
            if not pte & PT_PRESENT_MASK:
                walker.level = level
                return _walk_error(walker, vcpu, addr, access, errcode)
            if pte & (rsvd1 if pte & PT_PAGE_SIZE_MASK else rsvd0)[level - 1]:
                walker.level = level
                return _walk_error(walker, vcpu, addr, access, PFERR_RSVD_MASK | PFERR_PRESENT_MASK)
            accessed_dirty &= pte
            ptes[level - 1] = pte
            acc = pt_access ^ PT64_NX_MASK                # gpte_access(), inlined
            walker.pt_access[level - 1] = (acc & 7) ^ (acc >> 63)
            if level == 1 or pte & PT_PAGE_SIZE_MASK:    # is_last_gpte()
                break
            level -= 1
        walker.level = level
        errcode, accessed_dirty = _walk_leaf(walker, vcpu, mmu, addr, access, pte, pte_access,
                                             accessed_dirty)
        if errcode:
            return _walk_error(walker, vcpu, addr, access, errcode)
        if not accessed_dirty:
            ret = update_accessed_dirty_bits(vcpu, mmu, walker, mem, addr, write_fault)
            if ret < 0:
                return _walk_error(walker, vcpu, addr, access, 0)
            if ret > 0:
                walker.retries += 1
                if walker.retries >= MAX_WALK_RETRIES:
                    raise WalkLivelock(f"walk of {addr:#x} restarted {walker.retries} times")
                continue                                 # goto retry_walk
        return 1


def _walk_leaf(walker, vcpu, mmu, addr, access, pte, pte_access, accessed_dirty):
    # The part of walk_addr_generic after the loop, shared by every walker:
    # final access bits, permission check, gfn, protect_clean_gpte and the
    # D fold.  Returns (errcode, accessed_dirty).
    pte_pkey = gpte_pkeys(pte)
    walker.pte_access = gpte_access(pte_access ^ PT64_NX_MASK)
    errcode = permission_fault(vcpu, mmu, walker.pte_access, pte_pkey, access)
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
    return 0, accessed_dirty


def _walk_error(walker, vcpu, addr, access, errcode) -> int:
    # The error: label of walk_addr_generic.
    errcode |= access & (PFERR_WRITE_MASK | PFERR_USER_MASK)
    if access & PFERR_FETCH_MASK and (vcpu.efer_nx or vcpu.cr4_smep):
        errcode |= PFERR_FETCH_MASK
    fault = walker.fault
    fault.vector = PF_VECTOR
    fault.error_code_valid = True
    fault.error_code = errcode
    fault.address = addr
    fault.nested_page_fault = False
    return 0


def _ad_target(walker, level, write_fault):
    # The value update_accessed_dirty_bits wants at `level`: A everywhere,
    # D too at the leaf of a write.
    pte = walker.ptes[level - 1]
    new = pte | PT_GUEST_ACCESSED_MASK
    if level == walker.level and write_fault:
        new |= PT_GUEST_DIRTY_MASK
    return pte, new


def update_accessed_dirty_bits(vcpu: Vcpu, mmu: KvmMmu, walker: GuestWalker, mem: GuestMemory,
                               addr: int, write_fault: int) -> int:
    """Set A (and D at a written leaf) top-down with compare-exchange; 0, 1 (restart) or -EFAULT.

    A level whose table lives in a read-only memslot is skipped: ROM page
    tables work only if their A/D bits are already set.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(update_accessed_dirty_bits)()
    """
    if not mmu.have_ad:
        return 0
    for level in range(walker.max_level, walker.level - 1, -1):
        orig_pte, pte = _ad_target(walker, level, write_fault)
        if pte == orig_pte:
            continue
        if not walker.pte_writable[level - 1]:
            walker.ad_log.append((level, orig_pte, pte, "skipped: read-only slot"))
            continue
        ret, cur = mem.try_cmpxchg_user_u64(walker.ptep_user[level - 1], orig_pte, pte)
        walker.ad_log.append((level, orig_pte, pte, _cmpxchg_outcome(ret, cur)))
        if ret:
            return ret
        mem.kvm_vcpu_mark_page_dirty(walker.table_gfn[level - 1])
        walker.ptes[level - 1] = pte
    return 0


def _cmpxchg_outcome(ret, cur):
    if ret == 0:
        return "written"
    if ret == 1:
        return f"mismatch: memory holds {cur:#x}"
    return f"fault {ret}"
