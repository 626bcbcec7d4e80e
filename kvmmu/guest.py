"""The guest of chapter 5: its memory as its own CPU sees it, and the page tables it writes.

No kernel counterpart: this module plays the guest (and the VMM that sets
up its memory), so that KVM's walker (:mod:`kvmmu.paging_tmpl`) has real
page tables to walk on the one VM (:class:`kvmmu.kvm_host.Kvm`).

- :func:`guest_vm` builds a VM with one vCPU and the memslots the chapter
  needs: RAM, a read-only slot (a ROM), or guest_memfd memory whose gfns
  are private.
- :func:`guest_read_u64` / :func:`guest_write_u64` are the guest CPU's own
  loads and stores: a shared gfn goes to the page behind the slot's user
  address (faulted in on first write), a private gfn to its guest_memfd
  folio.  A read never allocates anything (it reads 0 where nothing is).
- :class:`GuestPageTables` writes page tables into guest memory the way a
  guest kernel does, and :meth:`GuestPageTables.load` gives a vCPU the
  registers that point at them (a MOV to CR3; PAE loads its PDPTEs).
- :func:`guest_load` is a guest for ``KVM_RUN`` (:func:`kvmmu.x86.vcpu_run`)
  that loads from a guest virtual address the way its CPU does under EPT
  (chapter 7): the hardware walks the guest's tables with the algorithm of
  KVM's own walker (:func:`kvmmu.paging_tmpl.walk_addr_generic`), but each
  gpte read, and then the load itself, is a guest-physical access through
  the vCPU's TLB and EPT (:data:`CPU_UNDER_EPT`); where EPT maps nothing,
  the access exits to KVM with an EPT violation.

**Where the model simplifies.**  The CPU walks the guest's tables on every
access: it caches no guest-virtual translation and no paging-structure
entry, only the guest-physical ones of the vCPU's TLB.  It sets A/D bits as
KVM's walker does, through the slot's host mapping rather than through EPT
(a Linux guest's kernel page tables have them set already).  The guest's
stores are not CPU code: a race scenario makes a store one step.  A guest write to a read-only slot would
exit to the VMM as MMIO; the model refuses it unless ``vmm=True`` (the VMM
filling the ROM).  Memory attributes are set directly, as
``KVM_SET_MEMORY_ATTRIBUTES`` would before the guest runs.
"""
from __future__ import annotations

from functools import partial

from .checks import check_bool, check_choice, check_int, check_u64
from .explorer import step
from .guest_memfd import kvm_gmem_create, kvm_gmem_file
from .host_mm import host_translation
from .kvm_host import (Kvm, KvmVcpu, gfn_to_hva_memslot_prot, hva_to_pfn, is_error_pfn,
                       kvm_is_error_hva, kvm_vcpu_gfn_to_memslot)
from .kvm_main import kvm_create_vm, kvm_vm_ioctl_create_vcpu, set_memory_region
from .levels import PAGE_SHIFT, PAGE_SIZE
from .memslots import GFN_MAX, KVM_MEM_GUEST_MEMFD, KVM_MEM_READONLY, kvm_mem_is_private
from .mmu_permissions import KvmVcpuArch
from .paging_tmpl import (PT_BASE_ADDR_MASK, PT_INDEX, GpteRead, GuestWalker, NestedPageFault,
                          WalkVariant, check_gva, update_accessed_dirty_bits,
                          walk_addr_generic)
from .pferr import PFERR_GUEST_FINAL_MASK, PFERR_GUEST_PAGE_MASK
from .spte import (PT64_NX_MASK, PT_ACCESSED_MASK, PT_DIRTY_MASK, PT_PAGE_SIZE_MASK,
                   PT_PRESENT_MASK, PT_USER_MASK, PT_WRITABLE_MASK, rsvd_bits)
from .x86 import EptViolation, load_pdptrs

__all__ = ["HOST", "GPA_MAX", "GPTE_FLAG_NAMES", "gpte_str", "guest_vm", "guest_page",
           "guest_read_u64", "guest_write_u64", "GuestPageTables", "TableReadFault",
           "Loaded", "CPU_UNDER_EPT", "guest_load"]

#: Where the chapter's VMs put guest memory in the VMM's address space.
HOST = 0x7F00_0000_0000
GPA_MAX = ((GFN_MAX + 1) << PAGE_SHIFT) - 1
_RAM_FLAGS = (0, KVM_MEM_READONLY, KVM_MEM_GUEST_MEMFD)

#: The flag bits of a guest page-table entry, by their short names.
GPTE_FLAG_NAMES = [(PT_PRESENT_MASK, "P"), (PT_WRITABLE_MASK, "W"), (PT_USER_MASK, "U"),
                   (PT_ACCESSED_MASK, "A"), (PT_DIRTY_MASK, "D"), (PT_PAGE_SIZE_MASK, "PS"),
                   (PT64_NX_MASK, "NX")]


def gpte_str(gpte: int) -> str:
    """Short text of a gpte's flag bits, e.g. ``'P W U A'`` (``'-'`` for none)."""
    check_u64("gpte", gpte)
    names = [name for bit, name in GPTE_FLAG_NAMES if gpte & bit]
    return " ".join(names) if names else "-"


def guest_vm(regions, **config) -> KvmVcpu:
    """A VM with one vCPU and one memslot per region; returns the vCPU (``vcpu.kvm`` is the VM).

    ``regions``: ``(base_gfn, npages, hva)`` or ``(base_gfn, npages, hva,
    flags)`` tuples, slot ids in order; ``flags`` is 0 (RAM),
    ``KVM_MEM_READONLY`` (a ROM) or ``KVM_MEM_GUEST_MEMFD`` (guest_memfd
    memory, every gfn of it private; the VMM's shared view at ``hva`` is
    mapped too).  ``config``: :class:`kvmmu.kvm_host.KvmConfig`'s keywords.
    """
    kvm = kvm_create_vm(**config)
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    for slot_id, region in enumerate(regions):
        if not isinstance(region, tuple) or len(region) not in (3, 4):
            raise TypeError(f"regions[{slot_id}] must be (base_gfn, npages, hva[, flags]), "
                            f"got {region!r}")
        base_gfn, npages, hva, flags = region if len(region) == 4 else (*region, 0)
        check_choice(f"regions[{slot_id}] flags", flags, _RAM_FLAGS)
        check_int(f"regions[{slot_id}] npages", npages, 1, 1 << 20)
        gmem = None
        if flags & KVM_MEM_GUEST_MEMFD:
            gmem = kvm_gmem_create(kvm, npages).name
        r = set_memory_region(kvm, slot_id, base_gfn << PAGE_SHIFT, npages << PAGE_SHIFT, hva,
                              flags=flags, guest_memfd=gmem)
        if r:
            raise ValueError(f"regions[{slot_id}] = {region!r}: KVM_SET_USER_MEMORY_REGION2 "
                             f"fails with {r}")
        if gmem is not None:
            kvm.mm.mmap(hva, npages)            # the VMM's shared view of the same gfns
            st = kvm.memslot_state
            st.private = st.private | frozenset(range(base_gfn, base_gfn + npages))
    return vcpu


def _check_kvm(kvm) -> None:
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")


def _check_kvm_gpa(kvm, gpa) -> None:
    _check_kvm(kvm)
    check_int("gpa", gpa, 0, GPA_MAX)
    if gpa & 7:
        raise ValueError(f"gpa must be 8-byte aligned, got {gpa:#x}")


def _slot_of(kvm, gfn: int, who: str):
    slot = kvm.kvm_memslots(0).gfn_to_memslot(gfn)
    if slot is None:
        raise ValueError(f"{who}: gfn {gfn:#x} is not in any memslot")
    return slot


def guest_page(kvm, gfn: int, *, create: bool = False):
    """The host pfn behind ``gfn`` as the guest's CPU reaches it, or None if there is none yet.

    A private gfn: its guest_memfd folio's page (``create`` allocates the
    folio); a shared one: the page behind the slot's user address (``create``
    faults it in).
    """
    _check_kvm(kvm)
    check_int("gfn", gfn, 0, GFN_MAX)
    check_bool("create", create)
    slot = _slot_of(kvm, gfn, "guest_page")
    if kvm_mem_is_private(kvm, gfn) and slot.flags & KVM_MEM_GUEST_MEMFD:
        file = kvm_gmem_file(kvm, slot)
        index = gfn - slot.base_gfn + slot.gmem_pgoff
        folio = file.folio_at(index)
        if folio is None:
            if not create:
                return None
            folio = file.alloc_folio(index)
        return folio.pfn + (index - folio.index)
    hva = slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)
    found = host_translation(kvm.mm, hva)
    if found is not None:
        return found[0]
    if not create:
        return None
    pfn = hva_to_pfn(kvm, hva, True)            # first touch: the page is faulted in
    if is_error_pfn(pfn):
        raise ValueError(f"gfn {gfn:#x}: nothing is mapped at its hva {hva:#x}")
    return pfn


def guest_read_u64(kvm, gpa: int) -> int:
    """The guest CPU loads the u64 at ``gpa`` (0 where no page is behind it yet)."""
    _check_kvm_gpa(kvm, gpa)
    pfn = guest_page(kvm, gpa >> PAGE_SHIFT)
    if pfn is None:
        return 0
    return kvm.mm.mem.read_data(pfn, gpa & (PAGE_SIZE - 1))


def guest_write_u64(kvm, gpa: int, value: int, *, vmm: bool = False) -> None:
    """The guest CPU stores the u64 ``value`` at ``gpa``.

    A guest write to a read-only slot would exit to the VMM as MMIO, so it
    is refused; ``vmm=True`` is the VMM filling the slot's backing (loading
    a ROM image).
    """
    _check_kvm_gpa(kvm, gpa)
    check_u64("value", value)
    check_bool("vmm", vmm)
    slot = _slot_of(kvm, gpa >> PAGE_SHIFT, "guest_write_u64")
    if slot.flags & KVM_MEM_READONLY and not vmm:
        raise ValueError(f"gpa {gpa:#x} is in read-only slot {slot.id}: a guest write would "
                         "exit as MMIO; pass vmm=True to fill the ROM from the VMM")
    pfn = guest_page(kvm, gpa >> PAGE_SHIFT, create=True)
    kvm.mm.mem.write_data(pfn, gpa & (PAGE_SIZE - 1), value)


class GuestPageTables:
    """A guest kernel's page tables, written into guest memory as the guest writes them.

    ``table_gfns`` is the pool of guest frames the guest may use for tables
    (the first one is the root).  ``mode`` is ``"4-level"``, ``"5-level"`` or
    ``"PAE"``; for PAE the root is a 32-byte PDPT at ``pdpt_gpa``.
    ``vmm=True`` writes through the VMM (for tables in a read-only slot).
    """

    MODES = ("4-level", "5-level", "PAE")

    def __init__(self, kvm, table_gfns, *, mode: str = "4-level", pdpt_gpa: int | None = None,
                 vmm: bool = False):
        _check_kvm(kvm)
        check_choice("mode", mode, self.MODES)
        check_bool("vmm", vmm)
        self.kvm = kvm
        self.mode = mode
        self.vmm = vmm
        self.pool = list(table_gfns)
        if not self.pool:
            raise ValueError("table_gfns must name at least one guest frame for the root table")
        for gfn in self.pool:
            check_int("table gfn", gfn, 0, GFN_MAX)
            if kvm.kvm_memslots(0).gfn_to_memslot(gfn) is None:
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
        return self.pool.pop(0)

    def _write(self, gpa: int, value: int) -> None:
        guest_write_u64(self.kvm, gpa, value, vmm=self.vmm)

    def _read(self, gpa: int) -> int:
        return guest_read_u64(self.kvm, gpa)

    def entry_gpa(self, gva: int, level: int) -> int | None:
        """The gpa of ``gva``'s entry at ``level`` (None if a level above is missing)."""
        check_u64("gva", gva)
        check_int("level", level, 1, self.root_level)
        if self.mode == "PAE" and level == 3:
            return self.cr3 + 8 * ((gva >> 30) & 3)
        table = self.cr3 & PT_BASE_ADDR_MASK
        top = self.root_level
        if self.mode == "PAE":
            pdpte = self._read(self.cr3 + 8 * ((gva >> 30) & 3))
            if not pdpte & PT_PRESENT_MASK:
                return None
            table = pdpte & PT_BASE_ADDR_MASK
            top = 2
        for lv in range(top, level, -1):
            entry = self._read(table + 8 * PT_INDEX(gva, lv))
            if not entry & PT_PRESENT_MASK or entry & PT_PAGE_SIZE_MASK:
                return None
            table = entry & PT_BASE_ADDR_MASK
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
            table = pdpte & PT_BASE_ADDR_MASK
            top = 2
        else:
            table = self.cr3 & PT_BASE_ADDR_MASK
            top = self.root_level
        for lv in range(top, level, -1):
            gpa_e = table + 8 * PT_INDEX(gva, lv)
            entry = self._read(gpa_e)
            if entry & PT_PRESENT_MASK and entry & PT_PAGE_SIZE_MASK:
                raise ValueError(f"gva {gva:#x} is already inside a large page at level {lv}")
            if not entry & PT_PRESENT_MASK:
                entry = (self._alloc() << PAGE_SHIFT) | table_flags
                self._write(gpa_e, entry)
            table = entry & PT_BASE_ADDR_MASK
        leaf = gpa | flags | (PT_PAGE_SIZE_MASK if level > 1 else 0)
        self._write(table + 8 * PT_INDEX(gva, level), leaf)

    def load(self, vcpu: KvmVcpu, **regs) -> KvmVcpuArch:
        """Give ``vcpu`` registers whose CR3 points at these tables; return them.

        ``regs``: :class:`kvmmu.mmu_permissions.KvmVcpuArch`'s fields (CR0.WP,
        SMEP, ...).  PAE loads the PDPTEs, as a MOV to CR3 does.
        """
        if not isinstance(vcpu, KvmVcpu) or vcpu.kvm is not self.kvm:
            raise TypeError("vcpu must be a KvmVcpu of this page tables' VM")
        if self.mode == "PAE":
            regs.setdefault("efer_lma", False)
            regs["pdptrs"] = load_pdptrs(vcpu, self.cr3, regs.get("maxphyaddr", 46))
        elif self.mode == "5-level":
            regs.setdefault("cr4_la57", True)
        arch = KvmVcpuArch(cr3=self.cr3, **regs)
        vcpu.arch = arch
        return arch


# ---------------------------------------------------------------------------
# The guest's CPU under EPT (chapter 7)
# ---------------------------------------------------------------------------
class TableReadFault(NestedPageFault):
    """A gpte read whose gpa EPT does not map: an EPT violation on the guest's page table."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EPT violation"


class Loaded(tuple):
    """The guest's load went through: ``(pfn, value)``, the host page and the u64 read.  A value."""

    __slots__ = ()

    def __new__(cls, pfn: int, value: int):
        check_int("pfn", pfn, 0)
        check_u64("value", value)
        return super().__new__(cls, (pfn, value))

    def __getnewargs__(self):
        return tuple(self)

    def __deepcopy__(self, memo):
        return self

    pfn = property(lambda self: self[0])
    value = property(lambda self: self[1])

    def __repr__(self) -> str:
        return f"loaded {self.value:#x} from pfn {self.pfn:#x}"


def _ept_read_gpte(vcpu: KvmVcpu, gpa: int):
    # The CPU's read of one gpte: the vCPU's TLB, or its walk of the EPT that
    # fills it; then the load from the host page (one access, one step).
    kvm = vcpu.kvm
    gfn = gpa >> PAGE_SHIFT
    entry = kvm.tlbs.lookup(vcpu.vcpu_id, gfn, False)
    if entry is None:
        return TableReadFault(gpa, PFERR_GUEST_PAGE_MASK)
    pte = kvm.mm.mem.read_data(entry.pfn, gpa & (PAGE_SIZE - 1))
    # Where an A/D update would write the entry: the slot's host address
    # (see "Where the model simplifies").
    slot = kvm_vcpu_gfn_to_memslot(vcpu, gfn)
    host_addr, writable = gfn_to_hva_memslot_prot(slot, gfn)
    if kvm_is_error_hva(host_addr):
        return GpteRead(0, pte, None, False)
    return GpteRead(0, pte, host_addr + (gpa & (PAGE_SIZE - 1)), writable)


def _read_gpte_through_ept(walker: GuestWalker, vcpu: KvmVcpu, level: int,
                           table_gfn: int, index: int):
    gpa = (table_gfn << PAGE_SHIFT) + index * 8
    return step(f"CPU reads the L{level} gpte at gpa {gpa:#x}",
                lambda: _ept_read_gpte(vcpu, gpa))


#: The guest CPU's walk under EPT: KVM's walk_addr_generic() with each gpte
#: read through the vCPU's TLB and EPT (not KVM's code: the hardware's).
CPU_UNDER_EPT = WalkVariant("CPU under EPT", _read_gpte_through_ept,
                            update_accessed_dirty_bits)


def _ept_load(vcpu: KvmVcpu, gpa: int):
    # The load itself, a guest-physical access like the gpte reads.
    kvm = vcpu.kvm
    entry = kvm.tlbs.lookup(vcpu.vcpu_id, gpa >> PAGE_SHIFT, False)
    if entry is None:
        return EptViolation(gpa, PFERR_GUEST_FINAL_MASK)
    return Loaded(entry.pfn, kvm.mm.mem.read_data(entry.pfn, gpa & (PAGE_SIZE - 1)))


def _guest_load(vcpu: KvmVcpu, mmu, gva: int):
    # The guest's load at gva, until it completes or exits (a guest for vcpu_run).
    walker = GuestWalker()
    if not (yield from walk_addr_generic(walker, vcpu, mmu, gva, 0, CPU_UNDER_EPT)):
        fault = walker.fault
        if fault.nested_page_fault:            # the walk's own read exits to KVM
            return EptViolation(fault.address, fault.error_code)
        return f"guest #PF at {gva:#x}, error code {fault.error_code:#x}"
    gpa = (walker.gfn << PAGE_SHIFT) | (gva & (PAGE_SIZE - 1))
    return (yield from step(f"CPU loads from gpa {gpa:#x}",
                            lambda: _ept_load(vcpu, gpa)))


def guest_load(vcpu: KvmVcpu, gva: int):
    """A guest that loads the u64 at ``gva`` once, as its CPU does under EPT.

    No kernel counterpart: this is the hardware.  The CPU walks the guest's
    tables from the vCPU's registers (:meth:`GuestPageTables.load`) with
    :data:`CPU_UNDER_EPT`; a gpte read or the load whose gpa EPT does not
    map exits with an :class:`~kvmmu.x86.EptViolation`
    (``PFERR_GUEST_PAGE_MASK`` for a table, ``PFERR_GUEST_FINAL_MASK`` for
    the data), and ``KVM_RUN`` re-enters the guest, which starts the
    access again from CR3.  The run ends with a :class:`Loaded`, or with
    the text of the #PF the guest's own tables raise.  Use it as
    ``run_alone(kvm, vcpu_run(vcpu, guest=guest_load(vcpu, gva)))``.
    """
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    arch = vcpu.arch
    if arch is None:
        raise ValueError(f"{vcpu!r} has no paging registers: load the guest's "
                         "tables first (GuestPageTables.load)")
    mmu = arch.walk_mmu
    check_gva(mmu, gva)
    if gva & 7:
        raise ValueError(f"gva must be 8-byte aligned, got {gva:#x}")
    return partial(_guest_load, mmu=mmu, gva=gva)
