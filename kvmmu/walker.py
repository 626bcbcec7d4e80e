"""KVM's guest page-table walker (paging_tmpl.h) for 64-bit, LA57 and PAE paging.

Models: arch/x86/kvm/mmu/paging_tmpl.h: struct guest_walker, FNAME(walk_addr_generic)(), FNAME(update_accessed_dirty_bits)()
Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_last_gpte)(), FNAME(gpte_access)(), FNAME(protect_clean_gpte)(), FNAME(gpte_pkeys)()
Models: arch/x86/kvm/mmu.h: permission_fault()
Models: arch/x86/kvm/mmu/mmu.c: update_permission_bitmask(), update_pkru_bitmask(), __reset_rsvds_bits_mask()
Models: arch/x86/include/asm/kvm_host.h: PFERR_PRESENT_MASK, PFERR_WRITE_MASK, PFERR_USER_MASK, PFERR_RSVD_MASK, PFERR_FETCH_MASK, PFERR_PK_MASK

Reference version: Linux 6.17 (read at v6.17-rc3), kernel-facts §5(a).  The
reserved-bit masks follow the architecture (Intel SDM vol. 3 ch. 4, AMD APM
vol. 2 ch. 5) in the layout of mmu.c's ``__reset_rsvds_bits_mask``.

When KVM emulates an instruction or shadows the guest's page tables, it must
translate a guest virtual address exactly as the CPU would: walk the guest's
tables from CR3, AND the permissions of every level, decide whether the
access faults and with which error code, and set the Accessed and Dirty bits
the CPU would have set.  paging_tmpl.h does this once per paging format
(``FNAME(x)`` becomes ``paging64_x``, ``paging32_x`` or ``ept_x``); this
module models ``paging64_*``, which serves 4-level, 5-level (LA57) and PAE
paging.

Three walkers share the pure helpers (``PT_INDEX``, ``is_rsvd_bits_set``,
``is_last_gpte``, ``gpte_access``, ``protect_clean_gpte``,
``permission_fault``):

- :func:`walk_addr_generic` -- the 6.17 walker, on one CPU, written for speed
  (plain ints, a caller-provided :class:`GuestWalker`, no allocation per walk);
- :func:`walk_addr_generic_ops` -- the same walk as a step generator (one step
  per page-table read and per A/D compare-exchange) for the explorer;
- :func:`walk_addr_generic_gpc_ops` -- the walker of Patrick Roy's RFC
  ("[RFC PATCH v2 10/10] kvm: x86: support walking guest page tables in
  gmem", 2024-09-10), which reads every level through a gfn_to_pfn cache and
  restarts when a cache was invalidated before its A/D update.  **This is not
  merged kernel code.**  ``as_posted=True`` transcribes the v2 diff
  literally; ``as_posted=False`` adds two one-line fixes the chapter derives
  (see :func:`update_accessed_dirty_bits_gpc_ops` and
  :func:`_read_gpte_gpc_ops`).

**Where the model simplifies.**

- No nested paging: ``kvm_translate_gpa`` is the identity (no L2 walks, no
  nested page faults).  No EPT (``ept_*``) and no 32-bit non-PAE paging.
- ``have_ad`` is always true (PTTYPE 64 always has A/D bits).
- The PAE PDPTEs are loaded by :func:`load_pdptrs` when the vCPU is built
  (a MOV to CR3 in the guest); later writes to the PDPT in memory are not
  seen until the next load, as on hardware.
- Addresses are checked at the Python boundary: a non-canonical address
  raises ``ValueError`` (on hardware the emulator raises #GP before any walk).
- ``GuestWalker`` has two model-only fields for the book: ``gpte_read``
  (each level's entry as last read, including the one that faulted) and
  ``ad_log`` (every A/D write attempt), plus ``retries``.
"""
from dataclasses import dataclass
from functools import partial

from .checks import check_bool, check_int, check_u64
from .errno import EFAULT
from .guest_memory import (KVM_HVA_ERR_BAD, LOCK, STEP, GuestMemory, hexed, kvm_is_error_hva,
                           kvm_is_visible_memslot, run_ops)
from .levels import PAGE_SHIFT, PAGE_SIZE
# (module-level, not imported inside the step generators: a function bound
# to a local is frozen into every explorer state key of a suspended frame)
from .pfncache import (GfnToPfnCache, khva_read_u64, khva_try_cmpxchg_u64, kvm_gpc_activate_ops,
                       kvm_gpc_check, kvm_gpc_deactivate_ops, kvm_gpc_init,
                       kvm_gpc_mark_dirty_in_slot, kvm_gpc_refresh_ops)
from .memslots import KVM_MEM_READONLY
from .spte import (ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, PT64_NX_MASK,
                   PT_ACCESSED_MASK, PT_DIRTY_MASK, PT_PAGE_SIZE_MASK, PT_PRESENT_MASK,
                   PT_USER_MASK, PT_WRITABLE_MASK)

U64_MASK = (1 << 64) - 1

# ---- paging_tmpl.h, PTTYPE 64 ---------------------------------------------
PT_LEVEL_BITS = 9
PT_MAX_FULL_LEVELS = 5
PT_GUEST_ACCESSED_SHIFT = 5
PT_GUEST_DIRTY_SHIFT = 6
PT_GUEST_ACCESSED_MASK = PT_ACCESSED_MASK
PT_GUEST_DIRTY_MASK = PT_DIRTY_MASK
PT_WRITABLE_SHIFT = 1
PT64_PKEY_SHIFT = 59
PT64_PKEY_MASK = 0xF
PT64_BASE_ADDR_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)      # bits 51:12

# ---- error codes: kvmmu.pferr (arch/x86/include/asm/kvm_host.h) ----------
from .pferr import (PFERR_FETCH_MASK, PFERR_IMPLICIT_ACCESS, PFERR_NAMES,  # noqa: E402,F401
                    PFERR_PK_MASK, PFERR_PRESENT_MASK, PFERR_RSVD_MASK, PFERR_USER_MASK,
                    PFERR_WRITE_MASK)
PF_VECTOR = 14

#: The access flags a walk may be asked for.
ACCESS_FLAGS = PFERR_WRITE_MASK | PFERR_USER_MASK | PFERR_FETCH_MASK | PFERR_IMPLICIT_ACCESS


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

#: A walk that restarts this often is reported as a livelock (the kernel
#: would spin in retry_walk).
MAX_WALK_RETRIES = 64


def rsvd_bits(s: int, e: int) -> int:
    """Return a mask of bits ``s`` to ``e`` inclusive (0 if ``e < s``).

    Models: arch/x86/kvm/mmu/spte.h: rsvd_bits()
    """
    if e < s:
        return 0
    return ((1 << (e - s + 1)) - 1) << s


# ===========================================================================
# The vCPU state the walker reads, and the MMU context derived from it.
# ===========================================================================
class KvmMmu:
    """The guest MMU context: paging mode, permission bitmap, pkru mask, reserved bits.

    Computed once from the vCPU's registers, as ``kvm_init_mmu`` does on
    every change of CR0/CR4/EFER.

    Models: arch/x86/include/asm/kvm_host.h: struct kvm_mmu
    """

    __slots__ = ("root_level", "cr0_wp", "cr4_smep", "cr4_smap", "cr4_pke", "efer_nx",
                 "permissions", "pkru_mask", "rsvd_bits_mask", "have_ad", "maxphyaddr",
                 "gbpages")

    def __init__(self, root_level, cr0_wp, cr4_smep, cr4_smap, cr4_pke, efer_nx,
                 maxphyaddr, gbpages):
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


def update_permission_bitmask(mmu: KvmMmu) -> None:
    """Fill ``mmu.permissions``: for each error-code index, which U/W/X combinations fault.

    ``permissions[pfec >> 1]`` is a byte; bit ``a`` is set iff a page whose
    accumulated access is ``a`` (ACC_USER|ACC_WRITE|ACC_EXEC bits) faults
    for that access.  The RSVD position of the index means "SMAP is
    overridden for this access" (EFLAGS.AC on an explicit access).

    Models: arch/x86/kvm/mmu/mmu.c: update_permission_bitmask()
    """
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

    Two bits per even ``pfec`` position (the PFERR_RSVD position stands for
    "the page is a user page"): AD for any data access to a user page, WD
    as well for writes that are user accesses or happen with CR0.WP=1.

    Models: arch/x86/kvm/mmu/mmu.c: update_pkru_bitmask()
    """
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

    Bits from MAXPHYADDR up to 51 (62 for PAE); bit 63 without EFER.NX;
    PS at the top levels and, without 1G-page support, in PDPTEs; the
    low address bits of a large page (which must be aligned).

    Models: arch/x86/kvm/mmu/mmu.c: __reset_rsvds_bits_mask()
    """
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


def load_pdptrs(mem: GuestMemory, cr3: int, *, maxphyaddr: int = 46, efer_nx: bool = True) -> tuple:
    """Read the four PAE PDPTEs at CR3, as a MOV to CR3 does; return them.

    A present PDPTE with a reserved bit set makes the CR3 load fail (#GP);
    the model raises ``ValueError`` naming the entry and the bits.

    Models: arch/x86/kvm/x86.c: load_pdptrs()
    """
    check_u64("cr3", cr3)
    if cr3 >> 32:
        raise ValueError(f"cr3 must be below 4 GiB for PAE paging, got {cr3:#x}")
    base = cr3 & 0xFFFF_FFE0
    rsvd = (rsvd_bits(63, 63) | rsvd_bits(maxphyaddr, 62) | rsvd_bits(5, 8) | rsvd_bits(1, 2))
    pdptrs = []
    for i in range(4):
        ret, pdpte = mem.kvm_vcpu_read_guest(base + 8 * i)
        if ret:
            raise ValueError(f"PDPTE {i} at gpa {base + 8 * i:#x} cannot be read: the CR3 load fails")
        if pdpte & PT_PRESENT_MASK and pdpte & rsvd:
            raise ValueError(
                f"PDPTE {i} = {pdpte:#x} has reserved bits {pdpte & rsvd:#x} set: "
                "the MOV to CR3 would raise #GP")
        pdptrs.append(pdpte)
    return tuple(pdptrs)


@dataclass(frozen=True)
class Vcpu:
    """The vCPU state a guest walk depends on: CR3, the paging-mode bits, EFLAGS.AC, PKRU.

    ``efer_lma`` selects 64-bit paging (4-level, or 5-level with
    ``cr4_la57``); without it the vCPU uses PAE paging and needs ``pdptrs``
    (see :func:`load_pdptrs`).  ``maxphyaddr`` is the guest's CPUID
    physical-address width; ``gbpages`` whether 1 GiB pages exist.  The
    derived :class:`KvmMmu` is in ``mmu`` (an attribute, not a field: it is
    a function of the fields).
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
        for name in ("efer_lma", "cr4_la57", "cr0_wp", "cr4_smep", "cr4_smap", "cr4_pke",
                     "efer_nx", "eflags_ac", "gbpages"):
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
            if (not isinstance(self.pdptrs, tuple) or len(self.pdptrs) != 4):
                raise ValueError("PAE paging (efer_lma=False) needs pdptrs: a tuple of 4 PDPTEs "
                                 "from load_pdptrs(mem, cr3)")
            for i, p in enumerate(self.pdptrs):
                check_u64(f"pdptrs[{i}]", p)
            if self.cr3 >> 32:
                raise ValueError(f"cr3 must be below 4 GiB for PAE paging, got {self.cr3:#x}")
        # protection keys exist only in IA-32e mode
        mmu = KvmMmu(root, self.cr0_wp, self.cr4_smep, self.cr4_smap,
                     self.cr4_pke and self.efer_lma, self.efer_nx, self.maxphyaddr, self.gbpages)
        object.__setattr__(self, "mmu", mmu)

    def __deepcopy__(self, memo):
        # immutable (frozen, and mmu is derived from the fields): share it
        return self

    def __copy__(self):
        return self

    @property
    def root_level(self) -> int:
        return self.mmu.root_level

    @property
    def mode(self) -> str:
        return {5: "5-level", 4: "4-level", 3: "PAE"}[self.mmu.root_level]

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
# Pure helpers (shared by every walker).
# ===========================================================================
def PT_INDEX(addr: int, level: int) -> int:
    """Return the 9-bit index of ``addr`` in a table of ``level``.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: PT_INDEX()
    """
    return (addr >> (PAGE_SHIFT + (level - 1) * PT_LEVEL_BITS)) & ((1 << PT_LEVEL_BITS) - 1)


def PT_LVL_ADDR_MASK(level: int) -> int:
    """Address bits of a ``level`` leaf: bits 51 down to the level's page size.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: PT_LVL_ADDR_MASK()
    """
    return PT64_BASE_ADDR_MASK & ~((1 << (PAGE_SHIFT + (level - 1) * PT_LEVEL_BITS)) - 1)


def PT_LVL_OFFSET_MASK(level: int) -> int:
    """Bits 51:12 of an address that lie inside a ``level`` page.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: PT_LVL_OFFSET_MASK()
    """
    return PT64_BASE_ADDR_MASK & ((1 << (PAGE_SHIFT + (level - 1) * PT_LEVEL_BITS)) - 1)


def gpte_to_gfn_lvl(gpte: int, level: int) -> int:
    """Return the first gfn a ``level`` gpte maps.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: gpte_to_gfn_lvl()
    """
    return (gpte & PT_LVL_ADDR_MASK(level)) >> PAGE_SHIFT


def gpte_to_gfn(gpte: int) -> int:
    """Return the gfn a gpte points to (the next table, or a 4K page).

    Models: arch/x86/kvm/mmu/paging_tmpl.h: gpte_to_gfn()
    """
    return (gpte & PT64_BASE_ADDR_MASK) >> PAGE_SHIFT


def is_present_gpte(gpte: int) -> bool:
    """True if the gpte's Present bit is set.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_present_gpte)()
    """
    return bool(gpte & PT_PRESENT_MASK)


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


def gpte_access(gpte: int) -> int:
    """Return the ACC_* bits of a gpte: W and U as they are, ACC_EXEC = P xor NX.

    ACC_EXEC_MASK is bit 0, the Present bit's position, so the P bit (set in
    any present gpte) XOR the NX bit gives "executable".  The walker calls
    it on its accumulated access with NX inverted back.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(gpte_access)()
    """
    access = gpte & (PT_WRITABLE_MASK | PT_USER_MASK | PT_PRESENT_MASK)
    return access ^ ((gpte >> 63) & 1)


def gpte_pkeys(gpte: int) -> int:
    """Return the protection key of a leaf gpte (bits 62:59).

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(gpte_pkeys)()
    """
    return (gpte >> PT64_PKEY_SHIFT) & PT64_PKEY_MASK


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


def permission_fault(vcpu: Vcpu, mmu: KvmMmu, pte_access: int, pte_pkey: int, access: int) -> int:
    """Return 0, or the error-code bits of a permission fault (P, and PK for a key fault).

    One table lookup decides U/W/X, SMEP and SMAP: ``permissions[pfec>>1]``
    with the RSVD position of the index set when EFLAGS.AC lifts SMAP for
    an explicit access.  Protection keys are checked after it.

    Models: arch/x86/kvm/mmu.h: permission_fault()
    """
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


# ===========================================================================
# The same walk as a step generator (for the explorer).
# ===========================================================================
def _check_gpte(walker, mmu, level, pte, pt_access):
    # One level's checks after the read, shared by the step walkers: returns
    # (errcode or None to go on, pte_access).  Mirrors the fast loop above.
    walker.gpte_read[level - 1] = pte
    pte_access = pt_access & (pte ^ PT64_NX_MASK)
    if not is_present_gpte(pte):
        return 0, pte_access
    if is_rsvd_bits_set(mmu, pte, level):
        return PFERR_RSVD_MASK | PFERR_PRESENT_MASK, pte_access
    walker.ptes[level - 1] = pte
    walker.pt_access[level - 1] = gpte_access(pt_access ^ PT64_NX_MASK)
    return None, pte_access


def _table_hva(mem, table_gfn):
    # memslot -> (hva, writable), or (KVM_HVA_ERR_BAD, False) for no visible slot.
    # (Memslots are read outside steps: no race here changes them.  No slot
    # object is kept across a step either: the explorer may restore a copy.)
    slot = mem.gfn_to_memslot(table_gfn)
    if not kvm_is_visible_memslot(slot):
        return KVM_HVA_ERR_BAD, False
    return mem.gfn_to_hva_memslot_prot(slot, table_gfn)


def _table_slot_readonly(mem, table_gfn):
    # None for no visible memslot, else whether the slot is read-only.
    slot = mem.gfn_to_memslot(table_gfn)
    if not kvm_is_visible_memslot(slot):
        return None
    return bool(slot.flags & KVM_MEM_READONLY)


def _read_gpte_hva_ops(walker, mem, level, table_gfn, index):
    # 6.17: memslot -> hva (remember whether the slot is writable) -> __get_user.
    host_addr, writable = _table_hva(mem, table_gfn)
    if kvm_is_error_hva(host_addr):
        return -EFAULT, 0
    walker.pte_writable[level - 1] = writable
    ptep_user = host_addr + index * 8
    walker.ptep_user[level - 1] = ptep_user
    return (yield (STEP, f"L{level}: read gpte at gpa {(table_gfn << PAGE_SHIFT) + index * 8:#x}",
                   lambda: hexed(mem.get_user_u64(ptep_user))))


def walk_addr_generic_ops(walker: GuestWalker, vcpu: Vcpu, mem: GuestMemory, addr: int, access: int,
                          *, update_ad=None):
    """Step generator of :func:`walk_addr_generic` (6.17): one step per gpte read and A/D write.

    ``update_ad`` replaces :func:`update_accessed_dirty_bits_ops` (the
    chapter passes the unsafe blind-write variant).  Returns 1 or 0.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_addr_generic)()
    """
    check_access(access)
    check_gva(vcpu, addr)
    update_ad = update_ad or update_accessed_dirty_bits_ops
    return _walk_ops(walker, vcpu, mem, addr, access, _read_gpte_hva_ops, update_ad, None, None)


def _walk_ops(walker, vcpu, mem, addr, access, read_gpte, update_ad, on_entry, on_exit):
    # The body of walk_addr_generic as a generator, parameterised by how a
    # level is read and how A/D bits are written (6.17 or the RFC), what
    # happens once on entry and before every exit or restart.
    # (No `mmu = vcpu.mmu` local: the explorer freezes every local of a
    # suspended frame into each state key, and the mmu is a function of the
    # vcpu, which the frame already holds.)
    write_fault = access & PFERR_WRITE_MASK
    walker.retries = 0
    walker.ad_log.clear()
    if on_entry:
        yield on_entry
        on_entry = None      # done with it: a suspended frame should hold only live state
    while True:                                          # retry_walk:
        level = vcpu.mmu.root_level
        pte = vcpu.cr3
        accessed_dirty = PT_GUEST_ACCESSED_MASK
        errcode = 0
        failed = False
        if level == 3:
            pte = vcpu.pdptrs[(addr >> 30) & 3]
            walker.gpte_read[2] = pte
            if not is_present_gpte(pte):
                failed = True
            else:
                level -= 1
        if not failed:
            walker.max_level = level
            pte_access = U64_MASK
            while True:
                pt_access = pte_access
                index = PT_INDEX(addr, level)
                table_gfn = gpte_to_gfn(pte)
                walker.table_gfn[level - 1] = table_gfn
                walker.pte_gpa[level - 1] = (table_gfn << PAGE_SHIFT) + index * 8
                ret, pte = yield from read_gpte(walker, mem, level, table_gfn, index)
                pte = int(pte)                  # (steps return printable Hex values)
                if ret:
                    failed = True
                    break
                err, pte_access = _check_gpte(walker, vcpu.mmu, level, pte, pt_access)
                if err is not None:
                    errcode = err
                    failed = True
                    break
                accessed_dirty &= pte
                if is_last_gpte(vcpu.mmu, level, pte):
                    break
                level -= 1
        walker.level = level
        if not failed:
            errcode, accessed_dirty = _walk_leaf(walker, vcpu, vcpu.mmu, addr, access, pte, pte_access,
                                                 accessed_dirty)
            failed = bool(errcode)
        if not failed and not accessed_dirty:
            ret = yield from update_ad(vcpu, vcpu.mmu, walker, mem, addr, write_fault)
            if ret < 0:
                failed = True
                errcode = 0
            elif ret > 0:
                if on_exit:
                    yield from on_exit(walker)
                walker.retries += 1
                if walker.retries >= MAX_WALK_RETRIES:
                    raise WalkLivelock(f"walk of {addr:#x} restarted {walker.retries} times")
                continue                                 # goto retry_walk
        if on_exit:
            yield from on_exit(walker)
        if failed:
            return _walk_error(walker, vcpu, addr, access, errcode)
        return 1


def update_accessed_dirty_bits_ops(vcpu, mmu, walker, mem, addr, write_fault):
    """Step generator of :func:`update_accessed_dirty_bits` (6.17): one step per compare-exchange.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(update_accessed_dirty_bits)()
    """
    for level in range(walker.max_level, walker.level - 1, -1):
        orig_pte, pte = _ad_target(walker, level, write_fault)
        if pte == orig_pte:
            continue
        if not walker.pte_writable[level - 1]:
            walker.ad_log.append((level, orig_pte, pte, "skipped: read-only slot"))
            continue
        ptep = walker.ptep_user[level - 1]
        ret, cur = yield (STEP, f"L{level}: cmpxchg gpte {orig_pte:#x} -> {pte:#x}",
                          lambda: hexed(mem.try_cmpxchg_user_u64(ptep, orig_pte, pte)))
        walker.ad_log.append((level, orig_pte, pte, _cmpxchg_outcome(ret, cur)))
        if ret:
            return ret
        yield (STEP, f"L{level}: mark table gfn dirty",
               lambda g=walker.table_gfn[level - 1]: mem.kvm_vcpu_mark_page_dirty(g))
        walker.ptes[level - 1] = pte
    return 0


def update_accessed_dirty_bits_blind_ops(vcpu, mmu, walker, mem, addr, write_fault):
    """UNSAFE variant for the chapter: write ``pte | A`` without comparing.

    It overwrites whatever the guest stored since the walk read the entry.
    """
    for level in range(walker.max_level, walker.level - 1, -1):
        orig_pte, pte = _ad_target(walker, level, write_fault)
        if pte == orig_pte or not walker.pte_writable[level - 1]:
            continue
        ptep = walker.ptep_user[level - 1]

        yield (STEP, f"L{level}: write gpte := {pte:#x} (no compare)",
               lambda ptep=ptep, pte=pte: mem.put_user_u64(ptep, pte))
        walker.ad_log.append((level, orig_pte, pte, "written blindly"))
        yield (STEP, f"L{level}: mark table gfn dirty",
               lambda g=walker.table_gfn[level - 1]: mem.kvm_vcpu_mark_page_dirty(g))
        walker.ptes[level - 1] = pte
    return 0


# ===========================================================================
# The RFC walker: every level read through a gfn_to_pfn cache.
# ===========================================================================
def _read_gpte_gpc_ops(walker, mem, level, table_gfn, index, *, as_posted=True):
    """Step generator: read one level the RFC's way.

    A read-only slot is read with ``kvm_vcpu_read_guest`` (pfn caches
    cannot map read-only memory, and no A/D write will follow); any other
    slot through the level's pfn cache: activate it on the entry's gpa,
    then check under the read lock, refreshing until valid, and read.

    As posted (v2), the read-only branch does not assign
    ``pte_writable[level-1]``: the kernel's walker lives on the stack, so
    the value is left over from whatever used that stack before.  With
    ``as_posted=False`` the branch sets it to false.

    Part of the RFC's FNAME(walk_addr_generic)().
    """
    readonly = _table_slot_readonly(mem, table_gfn)
    if readonly is None:
        return -EFAULT, 0
    gpa = (table_gfn << PAGE_SHIFT) + index * 8
    if readonly:
        ret, pte = yield (STEP, f"L{level}: kvm_vcpu_read_guest({gpa:#x})",
                          lambda: hexed(mem.kvm_vcpu_read_guest(gpa)))
        if not as_posted:
            walker.pte_writable[level - 1] = False
        return ret, pte
    cache = walker.ptep_caches[level - 1]
    ret = yield from kvm_gpc_activate_ops(cache, gpa, 8)
    if ret:
        return ret, 0
    yield (LOCK, cache.lock, "read_lock")
    while True:
        ok = yield (STEP, f"L{level}: kvm_gpc_check", lambda: kvm_gpc_check(cache, 8))
        if ok:
            break
        yield (LOCK, cache.lock, "read_unlock")
        ret = yield from kvm_gpc_refresh_ops(cache, 8)
        if ret:
            return ret, 0
        yield (LOCK, cache.lock, "read_lock")
    pte = yield (STEP, f"L{level}: read gpte at gpa {gpa:#x} via pfn cache",
                 lambda: hexed(khva_read_u64(cache)))
    yield (LOCK, cache.lock, "read_unlock")
    walker.pte_writable[level - 1] = True
    return 0, pte


def update_accessed_dirty_bits_gpc_ops(vcpu, mmu, walker, mem, addr, write_fault, *,
                                       as_posted=True, check_gpc=True):
    """Step generator: the RFC's A/D update through each level's pfn cache.

    Under the cache's read lock: if ``kvm_gpc_check`` fails the cache was
    invalidated since the read (the page table may have changed), so return
    1 and the walk restarts.  Otherwise compare-exchange through ``khva``.

    As posted (v2) the result of ``__try_cmpxchg`` is used as if it were
    ``__try_cmpxchg_user``'s; but ``try_cmpxchg`` returns *true on success*
    (Documentation/atomic_t.txt), the opposite convention.  So a successful
    update returns 1 (restart, page table not marked dirty) and a mismatch
    carries on as if it had succeeded.  ``as_posted=False`` converts the
    result.  ``check_gpc=False`` is the chapter's unsafe variant (no check).

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(update_accessed_dirty_bits)()
    """
    for level in range(walker.max_level, walker.level - 1, -1):
        orig_pte, pte = _ad_target(walker, level, write_fault)
        if pte == orig_pte:
            continue
        if not walker.pte_writable[level - 1]:
            walker.ad_log.append((level, orig_pte, pte, "skipped: read-only slot"))
            continue
        cache = walker.ptep_caches[level - 1]
        yield (LOCK, cache.lock, "read_lock")
        if check_gpc:
            ok = yield (STEP, f"L{level}: kvm_gpc_check before A/D",
                        lambda: kvm_gpc_check(cache, 8))
            if not ok:
                yield (LOCK, cache.lock, "read_unlock")
                walker.ad_log.append((level, orig_pte, pte, "cache invalidated: restart"))
                return 1
        swapped, cur = yield (
            STEP, f"L{level}: cmpxchg gpte {orig_pte:#x} -> {pte:#x} via pfn cache",
            lambda: hexed(khva_try_cmpxchg_u64(cache, orig_pte, pte)))
        success = swapped == 0
        if as_posted:
            ret = 1 if success else 0          # __try_cmpxchg(): true on success
        else:
            ret = 0 if success else 1          # the __try_cmpxchg_user() convention
        walker.ad_log.append((level, orig_pte, pte, _cmpxchg_outcome(swapped, cur)))
        if not ret:
            yield (STEP, f"L{level}: kvm_gpc_mark_dirty_in_slot",
                   lambda: kvm_gpc_mark_dirty_in_slot(cache))
        yield (LOCK, cache.lock, "read_unlock")
        if ret:
            return ret
        walker.ptes[level - 1] = pte
    return 0


def walk_deactivate_gpcs_ops(walker):
    """Step generator: deactivate every level's pfn cache that is active.

    The RFC's ``FNAME(walk_deactivate_gpcs)`` (no 6.17 counterpart).
    """
    active = yield (STEP, "which ptep_caches are active?",
                    lambda: tuple(c.active for c in walker.ptep_caches))
    for cache, is_active in zip(walker.ptep_caches, active):
        if is_active:
            yield from kvm_gpc_deactivate_ops(cache)


def walk_addr_generic_gpc_ops(walker: GuestWalker, vcpu: Vcpu, mem: GuestMemory, addr: int,
                              access: int, *, as_posted: bool = True, update_ad=None):
    """Step generator: the RFC walker, reading each level through a pfn cache.

    The walker's five caches (``walker.ptep_caches``; created if missing)
    are initialised once per call, activated level by level, and all
    deactivated before a restart, on error and on success.  Returns 1 or 0.

    Not merged: Patrick Roy, "[RFC PATCH v2 10/10] kvm: x86: support walking
    guest page tables in gmem", 2024-09-10.

    Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(walk_addr_generic)()
    """
    check_access(access)
    check_gva(vcpu, addr)
    check_bool("as_posted", as_posted)
    if walker.ptep_caches is None:
        walker.ptep_caches = [GfnToPfnCache(f"ptep_caches[{i}]") for i in range(PT_MAX_FULL_LEVELS)]

    def init_caches():
        for cache in walker.ptep_caches:
            kvm_gpc_init(cache, mem)
    # (in the kernel the caches live in the walker, invisible to others until
    # activated; one step in the model all the same)
    on_entry = (STEP, "kvm_gpc_init(ptep_caches[0..4])", init_caches)
    read = partial(_read_gpte_gpc_ops, as_posted=as_posted)
    if update_ad is None:
        update_ad = partial(update_accessed_dirty_bits_gpc_ops, as_posted=as_posted)
    return _walk_ops(walker, vcpu, mem, addr, access, read, update_ad, on_entry,
                     walk_deactivate_gpcs_ops)


def walk_addr_generic_gpc(walker: GuestWalker, vcpu: Vcpu, mem: GuestMemory, addr: int,
                          access: int, *, as_posted: bool = True) -> int:
    """Run the RFC walker on one CPU; return 1 or 0 (see :func:`walk_addr_generic_gpc_ops`)."""
    if not isinstance(walker, GuestWalker):
        raise TypeError("walker must be a GuestWalker")
    return run_ops(walk_addr_generic_gpc_ops(walker, vcpu, mem, addr, access, as_posted=as_posted))


# ===========================================================================
# Guest page tables as the guest builds them.
# ===========================================================================
class GuestPageTables:
    """A guest kernel's page tables, written into guest memory as the guest writes them.

    ``table_gfns`` is the pool of guest frames the guest may use for tables
    (the first one is the root).  ``mode`` is ``"4-level"``, ``"5-level"`` or
    ``"PAE"``; for PAE the root is a 32-byte PDPT at ``pdpt_gpa``.
    ``vmm=True`` writes through the VMM (for tables in a read-only slot).
    """

    MODES = ("4-level", "5-level", "PAE")

    def __init__(self, mem: GuestMemory, table_gfns, *, mode: str = "4-level",
                 pdpt_gpa: int | None = None, vmm: bool = False):
        if not isinstance(mem, GuestMemory):
            raise TypeError("mem must be a GuestMemory")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}; got {mode!r}")
        self.mem = mem
        self.mode = mode
        self.vmm = vmm
        self.pool = list(table_gfns)
        if not self.pool:
            raise ValueError("table_gfns must name at least one guest frame for the root table")
        for gfn in self.pool:
            check_int("table gfn", gfn, 0, (1 << 40) - 1)
            if mem.gfn_to_memslot(gfn) is None:
                raise ValueError(f"table gfn {gfn:#x} is not in any memslot")
        self.root_level = {"4-level": 4, "5-level": 5, "PAE": 3}[mode]
        if mode == "PAE":
            if pdpt_gpa is None:
                raise ValueError("PAE page tables need pdpt_gpa (32-byte aligned, below 4 GiB)")
            check_int("pdpt_gpa", pdpt_gpa, 0, (1 << 32) - 32)
            if pdpt_gpa & 31:
                raise ValueError(f"pdpt_gpa must be 32-byte aligned, got {pdpt_gpa:#x}")
            self.cr3 = pdpt_gpa
        else:
            self.cr3 = self._alloc() << PAGE_SHIFT

    def _alloc(self) -> int:
        if not self.pool:
            raise ValueError("out of page-table frames: pass more table_gfns")
        gfn = self.pool.pop(0)
        return gfn

    def _write(self, gpa, value):
        self.mem.guest_write_u64(gpa, value, vmm=self.vmm)

    def _read(self, gpa):
        return self.mem.guest_read_u64(gpa)

    def entry_gpa(self, gva: int, level: int) -> int | None:
        """The gpa of ``gva``'s entry at ``level`` (None if a level above is missing)."""
        check_int("level", level, 1, self.root_level)
        if self.mode == "PAE" and level == 3:
            return self.cr3 + 8 * ((gva >> 30) & 3)
        table = self.cr3 & PT64_BASE_ADDR_MASK
        top = self.root_level
        if self.mode == "PAE":
            pdpte = self._read(self.cr3 + 8 * ((gva >> 30) & 3))
            if not pdpte & PT_PRESENT_MASK:
                return None
            table = pdpte & PT64_BASE_ADDR_MASK
            top = 2
        for lv in range(top, level, -1):
            entry = self._read(table + 8 * PT_INDEX(gva, lv))
            if not entry & PT_PRESENT_MASK or entry & PT_PAGE_SIZE_MASK:
                return None
            table = entry & PT64_BASE_ADDR_MASK
        return table + 8 * PT_INDEX(gva, level)

    def map(self, gva: int, gpa: int, *, level: int = 1,
            flags: int = PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK,
            table_flags: int = PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK) -> None:
        """Map ``gva`` to ``gpa`` with a leaf at ``level`` (1: 4K, 2: 2M, 3: 1G).

        Missing tables on the way are taken from the pool and linked with
        ``table_flags``; ``flags`` are the leaf's bits (PS is added for
        ``level > 1``).  Both must include P.
        """
        check_u64("gva", gva)
        check_int("gpa", gpa, 0, (1 << 52) - 1)
        max_leaf = 2 if self.mode == "PAE" else 3
        check_int("level", level, 1, max_leaf)
        size = 1 << (PAGE_SHIFT + 9 * (level - 1))
        if gva & (size - 1) or gpa & (size - 1):
            raise ValueError(f"gva {gva:#x} and gpa {gpa:#x} must be aligned to the "
                             f"{size >> 10} KiB page of level {level}")
        check_u64("flags", flags)
        check_u64("table_flags", table_flags)
        for name, value in (("flags", flags), ("table_flags", table_flags)):
            if value & rsvd_bits(PAGE_SHIFT, 35):
                raise ValueError(f"{name} {value:#x} overlap the address bits 35:12")
        if self.mode == "PAE":
            slot = self.cr3 + 8 * ((gva >> 30) & 3)
            pdpte = self._read(slot)
            if not pdpte & PT_PRESENT_MASK:
                pdpte = (self._alloc() << PAGE_SHIFT) | PT_PRESENT_MASK
                self._write(slot, pdpte)
            table = pdpte & PT64_BASE_ADDR_MASK
            top = 2
        else:
            table = self.cr3 & PT64_BASE_ADDR_MASK
            top = self.root_level
        for lv in range(top, level, -1):
            gpa_e = table + 8 * PT_INDEX(gva, lv)
            entry = self._read(gpa_e)
            if entry & PT_PRESENT_MASK and entry & PT_PAGE_SIZE_MASK:
                raise ValueError(f"gva {gva:#x} is already inside a large page at level {lv}")
            if not entry & PT_PRESENT_MASK:
                entry = (self._alloc() << PAGE_SHIFT) | table_flags
                self._write(gpa_e, entry)
            table = entry & PT64_BASE_ADDR_MASK
        leaf = gpa | flags | (PT_PAGE_SIZE_MASK if level > 1 else 0)
        self._write(table + 8 * PT_INDEX(gva, level), leaf)

    def vcpu(self, **regs) -> Vcpu:
        """A vCPU whose CR3 points at these tables (PAE: with its PDPTEs loaded)."""
        if self.mode == "PAE":
            regs.setdefault("efer_lma", False)
            return Vcpu(cr3=self.cr3, pdptrs=load_pdptrs(
                self.mem, self.cr3, maxphyaddr=regs.get("maxphyaddr", 46),
                efer_nx=regs.get("efer_nx", True)), **regs)
        if self.mode == "5-level":
            regs.setdefault("cr4_la57", True)
        return Vcpu(cr3=self.cr3, **regs)


# ===========================================================================
# Rendering helpers (text only; figures live in kvmmu.viz.walker).
# ===========================================================================
GPTE_FLAG_NAMES = [(PT_PRESENT_MASK, "P"), (PT_WRITABLE_MASK, "W"), (PT_USER_MASK, "U"),
                   (PT_ACCESSED_MASK, "A"), (PT_DIRTY_MASK, "D"), (PT_PAGE_SIZE_MASK, "PS"),
                   (PT64_NX_MASK, "NX")]


def gpte_str(gpte: int) -> str:
    """Short text of a gpte's flag bits, e.g. ``'P W U A'``."""
    names = [name for bit, name in GPTE_FLAG_NAMES if gpte & bit]
    return " ".join(names) if names else "-"


def acc_str(acc: int) -> str:
    """Text of ACC_* bits, e.g. ``'U W X'`` (``'-'`` for none)."""
    parts = [n for bit, n in ((ACC_USER_MASK, "U"), (ACC_WRITE_MASK, "W"), (ACC_EXEC_MASK, "X"))
             if acc & bit]
    return " ".join(parts) if parts else "-"


def pferr_str(errcode: int) -> str:
    """Names of the set error-code bits, e.g. ``'P|W|U'`` (``'0'`` if none)."""
    names = [n for bit, n in PFERR_NAMES if errcode & bit]
    return "|".join(names) if names else "0"


def access_str(access: int) -> str:
    """Text of an access, e.g. ``'user write'``."""
    who = "user" if access & PFERR_USER_MASK else (
        "implicit supervisor" if access & PFERR_IMPLICIT_ACCESS else "supervisor")
    what = "write" if access & PFERR_WRITE_MASK else (
        "fetch" if access & PFERR_FETCH_MASK else "read")
    return f"{who} {what}"



# ===========================================================================
# A walk traced level by level (what the chapter and the widget print).
# ===========================================================================
LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
PAGE_NAMES = {1: "4K", 2: "2M", 3: "1G"}


@dataclass
class WalkRow:
    """One level of a traced walk."""

    level: int
    name: str
    table_gfn: int | None      # None for the PAE PDPTE (a register, not memory)
    index: int
    pte_gpa: int | None
    gpte: int
    acc_after: int              # ACC_* bits after ANDing this level in
    note: str


@dataclass
class WalkTrace:
    """A walk, level by level: the path, the result or the error code with its reasons."""

    addr: int
    access: int
    mode: str
    rows: list
    ok: bool
    gfn: int | None
    pte_access: int | None
    leaf_level: int | None
    error_code: int | None
    error_bits: list            # (name, set?, why) for P W U RSVD I/D PK
    reason: str
    ad_updates: list            # (level, old, new, outcome)
    retries: int

    @property
    def gpa(self) -> int | None:
        return None if self.gfn is None else (self.gfn << PAGE_SHIFT) | (self.addr & 0xFFF)

    def table(self) -> str:
        """The walk as a text table."""
        lines = [f"walk of {self.addr:#x} for a {access_str(self.access)} ({self.mode} paging)",
                 f"{'level':<6} {'table gfn':>9} {'index':>5} {'entry gpa':>10}  "
                 f"{'entry':<18}  {'flags':<14} {'access so far':<13} note"]
        for r in self.rows:
            gfn = "-" if r.table_gfn is None else f"{r.table_gfn:#x}"
            gpa = "register" if r.pte_gpa is None else f"{r.pte_gpa:#x}"
            lines.append(f"{r.name:<6} {gfn:>9} {r.index:>5} {gpa:>10}  {r.gpte:#018x}  "
                         f"{gpte_str(r.gpte):<14} {acc_str(r.acc_after):<13} {r.note}")
        lines.append(self.result_line())
        if not self.ok:
            for name, is_set, why in self.error_bits:
                lines.append(f"  {name:<4} = {int(is_set)}  {why}")
        for level, old, new, outcome in self.ad_updates:
            lines.append(f"  A/D {LEVEL_NAMES[level]}: {old:#x} -> {new:#x}: {outcome}")
        if self.retries:
            lines.append(f"  the walk restarted {self.retries} time(s)")
        return "\n".join(lines)

    def result_line(self) -> str:
        if self.ok:
            return (f"=> gpa {self.gpa:#x} ({PAGE_NAMES.get(self.leaf_level, '?')} page, "
                    f"gfn {self.gfn:#x}), access {acc_str(self.pte_access)}")
        return (f"=> #PF, error code {self.error_code:#x} [{pferr_str(self.error_code)}]: "
                f"{self.reason}")

    def __repr__(self):
        return self.table()


def _permission_reasons(vcpu: Vcpu, acc: int, access: int, pkey: int) -> list[str]:
    # Which access rule refused the access, in words (for the trace only;
    # the decision itself is permission_fault's).
    user = access & PFERR_USER_MASK
    write = access & PFERR_WRITE_MASK
    fetch = access & PFERR_FETCH_MASK
    reasons = []
    if user and not acc & ACC_USER_MASK:
        reasons.append("a user access to a supervisor page (U=0 at some level)")
    if write and not acc & ACC_WRITE_MASK and (user or vcpu.cr0_wp):
        reasons.append("a write to a read-only page (W=0 at some level"
                       + ("" if user else ", and CR0.WP=1") + ")")
    if fetch and not acc & ACC_EXEC_MASK and vcpu.efer_nx:
        reasons.append("a fetch from a no-execute page (NX=1 at some level)")
    if fetch and not user and acc & ACC_USER_MASK and vcpu.cr4_smep:
        reasons.append("SMEP: a supervisor fetch from a user page")
    if (not fetch and not user and acc & ACC_USER_MASK and vcpu.cr4_smap
            and (access & PFERR_IMPLICIT_ACCESS or not vcpu.eflags_ac)):
        reasons.append("SMAP: a supervisor data access to a user page"
                       + (" (implicit: EFLAGS.AC cannot lift it)" if access & PFERR_IMPLICIT_ACCESS
                          else " with EFLAGS.AC=0"))
    if vcpu.mmu.pkru_mask and acc & ACC_USER_MASK and not fetch:
        ad = (vcpu.pkru >> (2 * pkey)) & 1
        wd = (vcpu.pkru >> (2 * pkey + 1)) & 1
        if ad:
            reasons.append(f"protection key {pkey}: PKRU.AD{pkey}=1 forbids data access")
        elif wd and write and (user or vcpu.cr0_wp):
            reasons.append(f"protection key {pkey}: PKRU.WD{pkey}=1 forbids the write")
    return reasons


def trace_walk(vcpu: Vcpu, mem: GuestMemory, addr: int, access: int) -> WalkTrace:
    """Walk ``addr`` with :func:`walk_addr_generic` and explain it level by level.

    The walk is real: A/D bits are written to ``mem`` as the walker writes
    them.  The rows show each entry as the walk read it.
    """
    walker = GuestWalker()
    ret = walk_addr_generic(walker, vcpu, mem, addr, access)
    mmu = vcpu.mmu
    rows = []
    acc = ACC_ALL_BITS
    last = walker.level
    top = mmu.root_level
    for level in range(top, last - 1, -1):
        gpte = walker.gpte_read[level - 1]
        name = LEVEL_NAMES[level]
        if top == 3 and level == 3:
            rows.append(WalkRow(level, name, None, (addr >> 30) & 3, None, gpte, acc,
                                "PDPTR register, loaded with CR3"
                                + ("" if gpte & PT_PRESENT_MASK else "; not present")))
            continue
        table_gfn = walker.table_gfn[level - 1]
        slot = mem.gfn_to_memslot(table_gfn)
        if level == last and not ret and not kvm_is_visible_memslot(slot):
            rows.append(WalkRow(level, name, table_gfn, PT_INDEX(addr, level),
                                walker.pte_gpa[level - 1], 0, acc,
                                "table gfn is in no memslot: nothing to read"))
            break
        note = []
        if gpte & PT_PRESENT_MASK:
            acc &= gpte_access(gpte)
        if not gpte & PT_PRESENT_MASK:
            note.append("not present")
        elif is_rsvd_bits_set(mmu, gpte, level):
            bad = gpte & mmu.rsvd_bits_mask[(gpte >> 7) & 1][level - 1]
            note.append(f"reserved bits {bad:#x} set")
        elif level == last and ret or (level == last and is_last_gpte(mmu, level, gpte)):
            note.append(f"leaf: {PAGE_NAMES.get(level, '?')} page")
        if slot is not None and slot.flags & KVM_MEM_READONLY:
            note.append("table in a read-only slot")
        if mem.kvm_mem_is_private(table_gfn):
            note.append("table gfn is private")
        rows.append(WalkRow(level, name, table_gfn, PT_INDEX(addr, level),
                            walker.pte_gpa[level - 1], gpte, acc, "; ".join(note)))
    if ret:
        return WalkTrace(addr, access, vcpu.mode, rows, True, walker.gfn, walker.pte_access,
                         walker.level, None, [], "", list(walker.ad_log), walker.retries)
    code = walker.fault.error_code
    if rows and "no memslot" in rows[-1].note:
        reason = "a page table lies outside every memslot"
    elif rows and "not present" in rows[-1].note:
        reason = f"the {rows[-1].name} is not present"
    elif code & PFERR_RSVD_MASK:
        reason = f"the {rows[-1].name} has reserved bits set"
    else:
        leaf = walker.gpte_read[walker.level - 1]
        reasons = _permission_reasons(vcpu, walker.pte_access, access, gpte_pkeys(leaf))
        reason = "; ".join(reasons) if reasons else "permission check failed"
    fetch = access & PFERR_FETCH_MASK
    bits = [
        ("P", code & PFERR_PRESENT_MASK,
         "the entries were present: a protection or reserved-bit fault"
         if code & PFERR_PRESENT_MASK else "an entry on the path was not present"),
        ("W", code & PFERR_WRITE_MASK, "the access was a write" if access & PFERR_WRITE_MASK
         else "the access was not a write"),
        ("U", code & PFERR_USER_MASK, "the access came from user mode (CPL 3)"
         if access & PFERR_USER_MASK else "the access was a supervisor access"),
        ("RSVD", code & PFERR_RSVD_MASK, "a reserved bit was set in an entry"
         if code & PFERR_RSVD_MASK else "no reserved bit was found"),
        ("I/D", code & PFERR_FETCH_MASK,
         "an instruction fetch, reported because EFER.NX or CR4.SMEP is set"
         if code & PFERR_FETCH_MASK else
         ("a fetch, but neither EFER.NX nor CR4.SMEP is set, so it is not reported"
          if fetch else "not an instruction fetch")),
        ("PK", code & PFERR_PK_MASK, "a protection-key violation" if code & PFERR_PK_MASK
         else "no protection-key violation"),
    ]
    bits = [(n, bool(s), why) for n, s, why in bits]
    return WalkTrace(addr, access, vcpu.mode, rows, False, None, None, None, code, bits,
                     reason, list(walker.ad_log), walker.retries)


ACC_ALL_BITS = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK


# ===========================================================================
# Races on the explorer.
# ===========================================================================
#: The address both race scenarios walk, and where its tables live.
RACE_GVA = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123
RACE_HOST = 0x7F00_0000_0000
RACE_TABLE_GFNS = (0x100, 0x101, 0x102, 0x103)       # PML4, PDPT, PD, PT
RACE_DATA_GFN = 0x455
RACE_OTHER_GFN = 0x466


class WalkResult(tuple):
    """What a KVM actor returns: ``(ret, gfn or error code, leaf gpte as walked)``."""

    def __new__(cls, ret, value, leaf):
        return super().__new__(cls, (ret, value, leaf))

    @property
    def ok(self) -> bool:
        return self[0] == 1

    def __repr__(self):
        if self[0] == 1:
            return f"gfn {self[1]:#x} via leaf {self[2]:#x}"
        return f"#PF error code {self[1]:#x} [{pferr_str(self[1])}]"


def _explorer():
    from . import explorer
    return explorer


class WalkRaceWorld:
    """Factory of the race worlds (a World that *is* the guest memory).

    ``WalkRaceWorld.make(...)`` returns a fresh world: guest memory with a
    4-level mapping of :data:`RACE_GVA` (upper entries P W U A, the leaf
    P W U with A and D clear), its pages already faulted in, five pfn caches
    with explorer locks for the RFC walker, and the ghost state the checks
    read: every value the leaf entry took (``leaf_history``) and the table
    gfns KVM wrote (``kvm_written_gfns``).  ``private_tables=True`` puts the
    last-level table in private guest_memfd memory.  ``rom_upper=True`` puts
    the three upper tables in a read-only slot (their A bits are preset, as
    ROM page tables need): the RFC walker then reads them with
    ``kvm_vcpu_read_guest`` and only the last level goes through a pfn
    cache, which keeps the exhaustive search small.

    Guest frame ``g`` sits at hva ``RACE_HOST + g * 4096`` in every slot.
    """

    @staticmethod
    def make(*, private_tables: bool = False, kvm_can_access_gmem: bool = True,
             rom_upper: bool = False):
        return _race_world_class()(private_tables, kvm_can_access_gmem, rom_upper)


_RACE_WORLD = None
_RACE_VCPU = []
_RACE_MEMSLOTS = {}


def _race_vcpu() -> Vcpu:
    # One immutable vCPU state shared by every race world (building the
    # permission bitmap once, not once per explorer replay).
    if not _RACE_VCPU:
        _RACE_VCPU.append(Vcpu(cr3=RACE_TABLE_GFNS[0] << PAGE_SHIFT))
    return _RACE_VCPU[0]


def _race_world_class():
    # Built on first use so importing kvmmu.walker does not import the explorer.
    global _RACE_WORLD
    if _RACE_WORLD is not None:
        return _RACE_WORLD
    from .explorer import World, _Primitive
    from .memslots import KVM_MEM_GUEST_MEMFD, KvmMemorySlot

    # The pfn caches are shared objects that actor frames hold (the walker's
    # ptep_caches, the invalidator's list walk).  Registered as explorer
    # primitives, their state is in the world key once, frames freeze them by
    # name, and a restored world keeps their identity.
    class _SharedGpc(GfnToPfnCache, _Primitive):
        def __init__(self, world, name, lock, refresh_lock):
            GfnToPfnCache.__init__(self, name, lock=lock, refresh_lock=refresh_lock)
            _Primitive.__init__(self, world, name)

        def _state(self):
            return self.state()

        def _load(self, st):
            self.load_state(st)

        def _show(self):
            return repr(self)

    class _WalkRaceWorld(World, GuestMemory):
        """Guest memory on the explorer, with the leaf entry of RACE_GVA watched."""

        def __init__(self, private_tables, kvm_can_access_gmem, rom_upper):
            World.__init__(self)
            self._config = (private_tables, rom_upper)
            flags = KVM_MEM_GUEST_MEMFD if private_tables else 0
            leaf_table = RACE_TABLE_GFNS[3]
            low = RACE_TABLE_GFNS[0]
            slots = [KvmMemorySlot(0, 0, low, RACE_HOST),
                     KvmMemorySlot(1, low, leaf_table - low, RACE_HOST + (low << PAGE_SHIFT),
                                   flags=KVM_MEM_READONLY if rom_upper else 0),
                     KvmMemorySlot(2, leaf_table, 0x800 - leaf_table,
                                   RACE_HOST + (leaf_table << PAGE_SHIFT), flags=flags)]
            GuestMemory.__init__(self, slots, kvm_can_access_gmem=kvm_can_access_gmem)
            self.gpc_lock = self.spinlock("kvm->gpc_lock")
            self.ptep_caches = [
                self._register(_SharedGpc(self, f"gpc{i + 1}", self.rwlock(f"gpc{i + 1}->lock"),
                                          self.mutex(f"gpc{i + 1}->refresh_lock")))
                for i in range(PT_MAX_FULL_LEVELS)]
            for cache in self.ptep_caches:
                cache.kvm = self
            if private_tables:
                self.set_memory_attributes(leaf_table, leaf_table + 1, True)
            upper = PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK | PT_ACCESSED_MASK
            path = [(4, upper | (RACE_TABLE_GFNS[1] << 12)), (3, upper | (RACE_TABLE_GFNS[2] << 12)),
                    (2, upper | (RACE_TABLE_GFNS[3] << 12)),
                    (1, PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK | (RACE_DATA_GFN << 12))]
            for level, entry in path:
                self.guest_write_u64(self.entry_gpa[level], entry, vmm=True)
            self.leaf_history = [path[-1][1]]
            self.kvm_written_gfns = {}
            self.guest_cleared = False

        # Constant configuration lives outside the instance: the explorer
        # copies and checks every instance attribute at every state.
        #: gpa of the entry that maps RACE_GVA at each level (the same in every world)
        entry_gpa = {level: (table << PAGE_SHIFT) + 8 * PT_INDEX(RACE_GVA, level)
                     for level, table in zip((4, 3, 2, 1), RACE_TABLE_GFNS)}
        leaf_gpa = entry_gpa[1]
        leaf_hva = RACE_HOST + leaf_gpa

        @property
        def memslots(self):
            return _RACE_MEMSLOTS[self._config]

        @memslots.setter
        def memslots(self, value):
            # set once per configuration by GuestMemory.__init__; no race
            # changes memslots
            _RACE_MEMSLOTS.setdefault(self._config, value)

        @property
        def last_used_slot(self):
            return None            # no lookup cache: it would be world state

        @last_used_slot.setter
        def last_used_slot(self, value):
            pass

        @property
        def vcpu(self):
            # a class-level constant, not world state: immutable, and actors
            # may keep it (and its mmu) across steps
            return _race_vcpu()

        # ---- ghost state: record every value the leaf entry takes -------------
        def _leaf_pfn(self):
            if self.kvm_mem_is_private(RACE_TABLE_GFNS[3]):
                return self.gmem.get((2, RACE_TABLE_GFNS[3]))
            return self.host_pt.get(self.leaf_hva >> PAGE_SHIFT)

        def _note(self, gfn, offset, value):
            self.kvm_written_gfns[gfn] = True
            if gfn == RACE_TABLE_GFNS[3] and offset == self.leaf_gpa & 0xFFF:
                self.leaf_history.append(value)

        def guest_write_u64(self, gpa, value, *, vmm=False):
            GuestMemory.guest_write_u64(self, gpa, value, vmm=vmm)
            if getattr(self, "leaf_history", None) is not None and gpa == self.leaf_gpa:
                self.leaf_history.append(value)

        def try_cmpxchg_user_u64(self, hva, old, new):
            ret = GuestMemory.try_cmpxchg_user_u64(self, hva, old, new)
            if ret[0] == 0:
                self._note((hva - RACE_HOST) >> PAGE_SHIFT, hva & 0xFFF, new)
            return ret

        def put_user_u64(self, hva, value):
            ret = GuestMemory.put_user_u64(self, hva, value)
            if ret == 0:
                self._note((hva - RACE_HOST) >> PAGE_SHIFT, hva & 0xFFF, value)
            return ret

        def khva_try_cmpxchg_u64(self, pfn, offset, old, new):
            live = self.page_is_live(pfn)
            ret = GuestMemory.khva_try_cmpxchg_u64(self, pfn, offset, old, new)
            if ret[0] == 0 and live:
                gfn = next((g for g in RACE_TABLE_GFNS
                            if (self.gmem.get((2, g)) if self.kvm_mem_is_private(g)
                                else self.host_pt.get((RACE_HOST >> PAGE_SHIFT) + g)) == pfn), None)
                if gfn is not None:
                    self._note(gfn, offset, new)
            return ret

        # ---- what the explorer hashes and shows -----------------------------------
        def snapshot_extra(self):
            return {
                "leaf gpte": self.guest_read_u64(self.leaf_gpa),
                "table pfn": self._leaf_pfn(),
                "dirty": tuple(sorted(self.dirty)),
                "uaf": tuple(self.uaf),
                "gpc_list": tuple(c.name for c in self.gpc_list),
                "gpcs": tuple((uid, c.name) for uid, c in self.gpcs.items()),
                "memory": self.state(),
                "history": tuple(self.leaf_history),
                "written": tuple(sorted(self.kvm_written_gfns)),
                "cleared": self.guest_cleared,
            }

        def describe(self, name, value):
            if name == "leaf gpte":
                return f"{value:#x} ({gpte_str(value)})"
            if name == "table pfn":
                return "none" if value is None else f"{value:#x}"
            if name in ("dirty", "written"):
                return "{" + ", ".join(f"{g:#x}" for g in value) + "}"
            if name == "uaf":
                return "; ".join(value) if value else "none"
            if name in ("memory", "history"):
                return f"<{len(value)} items>"
            return World.describe(self, name, value)

    _RACE_WORLD = _WalkRaceWorld
    return _RACE_WORLD


def kvm_walk_actor(variant: str, access: int = PFERR_WRITE_MASK):
    """An explorer actor: KVM walks RACE_GVA on vCPU 0 with one of the walker variants.

    ``variant``: ``"6.17"`` (merged), ``"blind"`` (6.17 with a blind A/D
    write, unsafe), ``"rfc"`` (the RFC as posted), ``"rfc-fixed"`` (with the
    chapter's two fixes), ``"rfc-nocheck"`` (fixed, but no cache check
    before the A/D write, unsafe).
    """
    from .guest_memory import as_actor

    check_access(access)
    variants = ("6.17", "blind", "rfc", "rfc-fixed", "rfc-nocheck")
    if variant not in variants:
        raise ValueError(f"variant must be one of {', '.join(variants)}; got {variant!r}")

    def walk(walker, w):
        if variant == "6.17":
            return walk_addr_generic_ops(walker, w.vcpu, w, RACE_GVA, access)
        if variant == "blind":
            return walk_addr_generic_ops(walker, w.vcpu, w, RACE_GVA, access,
                                         update_ad=update_accessed_dirty_bits_blind_ops)
        if variant == "rfc":
            return walk_addr_generic_gpc_ops(walker, w.vcpu, w, RACE_GVA, access, as_posted=True)
        if variant == "rfc-fixed":
            return walk_addr_generic_gpc_ops(walker, w.vcpu, w, RACE_GVA, access, as_posted=False)
        return walk_addr_generic_gpc_ops(walker, w.vcpu, w, RACE_GVA, access, as_posted=False,
                                         update_ad=_nocheck_update)

    def actor(w):
        walker = GuestWalker()
        walker.ptep_caches = w.ptep_caches
        # (the step generator is not kept in a local: the explorer would
        # freeze it twice into every state key)
        ret = yield from as_actor(walk(walker, w))
        if ret:
            return WalkResult(1, walker.gfn, walker.ptes[walker.level - 1])
        return WalkResult(0, walker.fault.error_code, 0)
    actor.__name__ = f"kvm_walk_{variant.replace('-', '_').replace('.', '_')}"
    return actor


_nocheck_update = partial(update_accessed_dirty_bits_gpc_ops, as_posted=False, check_gpc=False)


def guest_unmap_actor(w):
    """An explorer actor: the guest, on vCPU 1, clears the leaf entry (munmap)."""
    from .explorer import step

    def unmap():
        w.guest_write_u64(w.leaf_gpa, 0)
        w.guest_cleared = True
    yield from step("guest: leaf gpte := 0 (munmap)", unmap)


def vmm_punch_hole_actor(w):
    """An explorer actor: the VMM punches a hole over the leaf page table.

    Shared tables: ``fallocate(PUNCH_HOLE)`` on the VMM's memory (MMU
    notifier).  Private tables: a hole in guest_memfd (the RFC's hook).
    """
    from .guest_memory import as_actor

    gfn = RACE_TABLE_GFNS[3]
    if w.kvm_mem_is_private(gfn):
        yield from as_actor(w.kvm_gmem_punch_hole_ops(2, gfn, gfn + 1))
    else:
        hva = RACE_HOST + (gfn << PAGE_SHIFT)
        yield from as_actor(w.host_punch_hole_ops(hva, hva + PAGE_SIZE))


def _never_resurrected(w) -> bool:
    # once the guest cleared the entry, nobody but the guest may make it present
    return not (w.guest_cleared and w.guest_read_u64(w.leaf_gpa) & PT_PRESENT_MASK)


def _no_use_after_free(w) -> bool:
    return not w.uaf


def _final_backed(w, results):
    # Every translation KVM reports must come from a value the entry really
    # held, and every table KVM wrote must be in the dirty log.
    res = results.get("A")
    if res is not None and res.ok and res[2] not in w.leaf_history:
        return (f"KVM translated through leaf {res[2]:#x}, a value the entry never held "
                f"(it held {', '.join(hex(v) for v in w.leaf_history)})")
    missing = [g for g in w.kvm_written_gfns if g not in w.dirty]
    if missing:
        return f"KVM wrote A/D bits in table gfn(s) {', '.join(hex(g) for g in missing)} but did not log them dirty"
    return True


RACE_INVARIANTS_AD = ("the guest's cleared entry is never made present again",
                      "KVM never touches a freed page")


def ad_race_scenario(variant: str = "6.17", access: int = PFERR_WRITE_MASK, *,
                     rom_upper: bool | None = None):
    """R5.1: KVM walks (and sets A/D) while the guest clears the leaf entry.

    Checks after every step that a cleared entry stays cleared, and at the
    end that KVM's translation is backed by a value the entry held and that
    the tables KVM wrote are logged dirty.  ``rom_upper`` (default: for the
    RFC variants) as in :class:`WalkRaceWorld`.
    """
    ex = _explorer()
    if rom_upper is None:
        rom_upper = variant.startswith("rfc")

    def world():
        return WalkRaceWorld.make(rom_upper=rom_upper)
    return ex.Scenario(
        f"A/D compare-exchange vs guest PTE write ({variant})",
        world,
        [ex.Actor("A", f"KVM walk, {variant}", kvm_walk_actor(variant, access)),
         ex.Actor("B", "guest vCPU", guest_unmap_actor)],
        invariants=[ex.Invariant(RACE_INVARIANTS_AD[0], _never_resurrected),
                    ex.Invariant(RACE_INVARIANTS_AD[1], _no_use_after_free)],
        final_check=_final_backed,
    )


def gpc_race_scenario(variant: str = "rfc-fixed", *, private_tables: bool = True,
                      access: int = PFERR_WRITE_MASK, rom_upper: bool = True):
    """The seed's retry: a hole punched over the leaf table between its read and its A/D write.

    The KVM actor reads every level through pfn caches; the VMM punches a
    hole over the last-level table page (in guest_memfd when
    ``private_tables``, else in its shared memory).  No step may touch a
    freed page; the final checks are those of :func:`ad_race_scenario`.
    """
    ex = _explorer()

    def world():
        return WalkRaceWorld.make(private_tables=private_tables, rom_upper=rom_upper)
    where = "guest_memfd" if private_tables else "shared memory"
    return ex.Scenario(
        f"pfn-cache walk vs hole punch in {where} ({variant})",
        world,
        [ex.Actor("A", f"KVM walk, {variant}", kvm_walk_actor(variant, access)),
         ex.Actor("B", f"VMM punch hole ({where})", vmm_punch_hole_actor)],
        invariants=[ex.Invariant(RACE_INVARIANTS_AD[1], _no_use_after_free)],
        final_check=_final_backed,
    )
