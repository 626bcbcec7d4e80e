"""x86 paging as the guest sees it: the gpte format, the paging registers, a page-table builder.

Models: arch/x86/kvm/mmu/paging_tmpl.h: PT_INDEX(), PT_LVL_ADDR_MASK(), PT_LVL_OFFSET_MASK(), gpte_to_gfn_lvl(), gpte_to_gfn()
Models: arch/x86/kvm/mmu/paging_tmpl.h: FNAME(is_present_gpte)(), FNAME(gpte_access)(), FNAME(gpte_pkeys)()
Models: arch/x86/kvm/x86.c: load_pdptrs()
Models: arch/x86/include/asm/kvm_host.h: PFERR_PRESENT_MASK, PFERR_WRITE_MASK, PFERR_USER_MASK, PFERR_RSVD_MASK, PFERR_FETCH_MASK, PFERR_PK_MASK

Reference version: Linux 6.17 (read at v6.17-rc3), kernel-facts §5(a).

The architecture's side of chapter 5, everything the walker
(:mod:`kvmmu.walker`) reads but does not decide:

- the layout of a 64-bit guest page-table entry (paging_tmpl.h's PTTYPE 64
  constants) and the pure decoders of an address and an entry
  (``PT_INDEX``, ``gpte_to_gfn``, ``gpte_access``...: those that need no MMU
  context);
- the page-fault error-code bits (re-exported from :mod:`kvmmu.pferr`) and
  the control-register bits;
- :class:`Vcpu`, the register state a walk depends on, with the MMU context
  (:class:`kvmmu.mmu_permissions.KvmMmu`) derived from it, and
  :func:`load_pdptrs` for PAE;
- :class:`GuestPageTables`, which writes page tables into guest memory the
  way a guest kernel does (no kernel counterpart: it plays the guest);
- short text forms of entries, access bits and error codes for the book.

**Where the model simplifies.**  64-bit entries only (4-level, 5-level and
PAE paging; no 32-bit non-PAE paging, no EPT).  The PAE PDPTEs are loaded
once when the vCPU is built (a MOV to CR3); later writes to the PDPT are not
seen until the next load, as on hardware.
"""
from dataclasses import dataclass

from .checks import check_bool, check_int, check_u64
from .guest_memory import GuestMemory
from .levels import PAGE_SHIFT, PAGE_SIZE
from .mmu_permissions import KvmMmu, rsvd_bits
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


# ===========================================================================
# Decoding an address and an entry.
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


# ===========================================================================
# The vCPU registers a walk reads.
# ===========================================================================
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


#: The kernel's names of each level's entry, and the page size of a leaf at each level.
LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
PAGE_NAMES = {1: "4K", 2: "2M", 3: "1G"}
