"""The host's own page tables (the primary MMU) and the changes mm/ makes to them.

Models: arch/x86/include/asm/pgtable_types.h: _PAGE_PRESENT, _PAGE_PSE
Models: include/linux/pgtable.h: pgd_offset(), pud_offset(), pmd_offset(), pte_offset_kernel()
Models: arch/x86/include/asm/pgtable.h: p4d_offset(), pud_leaf(), pmd_leaf()
Models: mm/khugepaged.c: collapse_huge_page()
Models: mm/huge_memory.c: __split_huge_pmd()
Models: mm/migrate.c: migrate_pages()
Models: mm/mmu_notifier.c: mmu_notifier_invalidate_range_start(), mmu_notifier_invalidate_range_end()

KVM's second-level page tables map guest frames to host pages, but the host
decides which page backs a guest frame and how big that page is: the host
process's page tables say so.  This module is that process's page tables,
four levels as on x86-64 without LA57 (PGD -> PUD -> PMD -> PTE, the P4D level
folded into the PGD), kept in a small model of host physical memory so that a
walker that goes wrong reads the wrong *kind* of memory and the model can tell.

Host physical memory holds two kinds of pages:

- page-table pages, 512 entries each, with a level (``PGD``, ``PUD``, ``PMD``,
  ``PTE``); an entry is a u64 in the x86 format (bit 0 present, bit 7 PSE =
  huge leaf, pfn in bits 12-51);
- data folios of 4 KiB, 2 MiB (a THP) or 1 GiB, which hold guest data.  Every
  word of a data folio reads as ``GUEST_DATA_WORD``.

Every read a walker makes goes through :meth:`HostMemory.load`, which says
which table level it expects.  A read of a data folio, of a table of another
level, or of a freed table is recorded in ``HostMemory.bad_reads``: "walked
into the weeds", as the kernel comment puts it.

**One code, two ways to run it.**  The mm operations here (and KVM's code in
``kvmmu.notifier`` and ``kvmmu.host_level``) are written once, as generator
functions that ``yield from`` a step at every point where another CPU may act,
exactly as ``kvmmu.explorer`` actors are.  :func:`cpu_code` makes such a
function callable directly: ``collapse_huge_page(machine, haddr)`` runs it to
the end on a :class:`HostMachine` (one CPU, nothing can interleave), while an
explorer actor runs ``yield from collapse_huge_page.steps(world, haddr)`` and
every step becomes a point where the explorer may switch CPUs.

**Where the model simplifies.**

- Four-level paging only; the P4D is folded into the PGD, as on x86-64
  without LA57 (``p4d_offset`` returns the PGD entry itself).
- Entries carry only present, RW, user, accessed, dirty and PSE; no NX,
  protection keys, PAT, swap or migration entries (a page under migration is
  simply not present), no PROT_NONE.  x86 ``pmd_present`` also counts an entry
  with only PSE set as present (a huge PMD being split); the model's split
  never leaves such an entry.
- ``mmap_lock``, the page-table spinlocks, reference counts and rmap are not
  modelled.  Each mm operation does its page-table work between
  ``mmu_notifier_invalidate_range_start`` and ``_end``: that bracket is the
  only thing KVM relies on.  (khugepaged really ends the notification right
  after clearing the old PMD and installs the huge PMD later, keeping faults
  out with ``mmap_lock`` held for write; the model's bracket gives KVM the same
  guarantee.)
- A page table that is replaced is freed after an RCU grace period (as
  ``pte_free_defer`` does); a CPU with interrupts disabled holds that grace
  period off.  The model's ``rcu`` domain is that grace period.  Freed pages
  are never reused, so a late read of one is always caught.
- Promoting a PUD to a 1 GiB page in place is not something Linux does for
  anonymous memory today; the model allows it because the kernel comment's
  rule is stated for every P*D level and it is the level where
  ``host_pfn_mapping_level`` descends.
"""
import functools
from dataclasses import dataclass, field
from typing import NamedTuple

from .bits import BIT_ULL, GENMASK_ULL
from .checks import check_choice, check_int
from .levels import (KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PAGE_SIZE, PG_LEVEL_1G,
                     PG_LEVEL_2M, PG_LEVEL_4K, level_name)

# --------------------------------------------------------------------------
# Entry format (arch/x86/include/asm/pgtable_types.h)

_PAGE_PRESENT = BIT_ULL(0)
_PAGE_RW = BIT_ULL(1)
_PAGE_USER = BIT_ULL(2)
_PAGE_ACCESSED = BIT_ULL(5)
_PAGE_DIRTY = BIT_ULL(6)
_PAGE_PSE = BIT_ULL(7)
#: What the kernel puts in a non-leaf entry of a user page table.
_PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY
#: A present, writable user leaf (the model's only kind of leaf).
_PAGE_LEAF = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY
PTE_PFN_MASK = GENMASK_ULL(51, 12)

PTRS_PER_TABLE = 512
PGDIR_SHIFT = 39
PUD_SHIFT = 30
PMD_SHIFT = 21
#: Highest user address of a 4-level x86-64 address space (47 bits).
TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE

#: The word every data page holds.  Read as a page-table entry it has bit 0
#: (present) and bit 7 (PSE) set: a walker that mistakes data for a table
#: believes it found a huge leaf.
GUEST_DATA_WORD = 0x00000000DEADBEEF

#: Table levels, named by what their entries are; a table at level L holds
#: entries whose leaves map PG_LEVEL L pages (PTE: 4K, PMD: 2M, PUD: 1G).
PGD, PUD, PMD, PTE = 4, 3, 2, 1
TABLE_NAMES = {PGD: "PGD", PUD: "PUD", PMD: "PMD", PTE: "PTE"}

#: The host backings the model can build, by name.
BACKINGS = {"4K": PG_LEVEL_4K, "2M": PG_LEVEL_2M, "1G": PG_LEVEL_1G}

_TABLE_PFN_BASE = 0x1000
_DATA_PFN_BASE = 0x40000  # 1 GiB aligned, far above the tables


class EntryPtr(NamedTuple):
    """Where an entry lives: a table page's pfn and the index in it (a ``pXd_t *``)."""

    pfn: int
    index: int

    def __repr__(self) -> str:
        return f"EntryPtr(pfn={self.pfn:#x}, index={self.index})"


@dataclass(frozen=True)
class BadRead:
    """A walker read memory that is not a live table of the level it expected."""

    ptr: EntryPtr
    expected: str
    found: str

    def __str__(self) -> str:
        return (f"read entry {self.ptr.index} of pfn {self.ptr.pfn:#x} expecting a "
                f"{self.expected} table, but that page is {self.found}")


@dataclass
class HostPage:
    """One page-table page, or the head of one data folio, in host memory."""

    pfn: int
    kind: str            # "table" or "folio"
    level: int           # table: PGD/PUD/PMD/PTE; folio: PG_LEVEL_4K/2M/1G
    entries: dict = field(default_factory=dict)  # table only: index -> u64, zeros omitted
    freed: bool = False

    @property
    def npages(self) -> int:
        return 1 if self.kind == "table" else KVM_PAGES_PER_HPAGE(self.level)

    def describe(self) -> str:
        what = (f"a {TABLE_NAMES[self.level]} table" if self.kind == "table"
                else f"a {level_name(self.level)} data folio")
        return f"{what} (freed)" if self.freed else what


class HostMemory:
    """Host physical memory: page-table pages and data folios, by pfn.

    Allocation is a deterministic bump allocator; freed pages stay freed (never
    reused), so any later read of one is caught.
    """

    def __init__(self):
        self.pages: dict[int, HostPage] = {}
        self._next_table = _TABLE_PFN_BASE
        self._next_data = _DATA_PFN_BASE
        #: Reads that went to the wrong kind of memory (part of the state).
        self.bad_reads: list[BadRead] = []
        #: Every typed read, in order (for figures; not part of the state).
        self.reads: list[tuple[EntryPtr, int, int]] = []

    # -- allocation -------------------------------------------------------
    def alloc_table(self, level: int) -> int:
        """Allocate an empty page-table page of ``level`` (PGD/PUD/PMD/PTE)."""
        check_choice("level", level, (PGD, PUD, PMD, PTE))
        pfn = self._next_table
        self._next_table += 1
        self.pages[pfn] = HostPage(pfn, "table", level)
        return pfn

    def alloc_folio(self, level: int, color: int | None = None) -> int:
        """Allocate a data folio of ``level`` (4K/2M/1G), naturally aligned.

        ``color`` (4K only) asks for a pfn whose low 9 bits are ``color``,
        which is where a split THP's pages sit.
        """
        check_choice("level", level, (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G))
        npages = KVM_PAGES_PER_HPAGE(level)
        pfn = -(-self._next_data // npages) * npages
        if color is not None:
            check_int("color", color, 0, PTRS_PER_TABLE - 1)
            if level != PG_LEVEL_4K:
                raise ValueError("color is only meaningful for a 4K folio")
            pfn += (color - pfn) % PTRS_PER_TABLE
        self._next_data = pfn + npages
        self.pages[pfn] = HostPage(pfn, "folio", level)
        return pfn

    def free(self, pfn: int) -> None:
        """Free the page (table or folio head) at ``pfn``."""
        page = self.pages.get(pfn)
        if page is None or page.freed:
            raise ValueError(f"pfn {pfn:#x} is not an allocated page")
        page.freed = True

    # -- lookup -----------------------------------------------------------
    def page_at(self, pfn: int) -> HostPage | None:
        """Return the page or folio that contains ``pfn`` (None if never allocated)."""
        page = self.pages.get(pfn)
        if page is not None:
            return page
        for head in self.pages.values():
            if head.kind == "folio" and head.pfn <= pfn < head.pfn + head.npages:
                return head
        return None

    def peek(self, ptr: EntryPtr) -> int:
        """Return the word at ``ptr`` without recording anything (for checks and figures)."""
        page = self.page_at(ptr.pfn)
        if page is None:
            return 0
        if page.kind == "folio":
            return GUEST_DATA_WORD
        return page.entries.get(ptr.index, 0)

    def load(self, ptr: EntryPtr, level: int) -> int:
        """Read the word at ``ptr`` as an entry of a ``level`` table (one READ_ONCE)."""
        page = self.page_at(ptr.pfn)
        if page is None or page.kind != "table" or page.level != level or page.freed:
            found = "unallocated memory" if page is None else page.describe()
            self.bad_reads.append(BadRead(ptr, TABLE_NAMES[level], found))
        value = self.peek(ptr)
        self.reads.append((ptr, level, value))
        return value

    def store(self, ptr: EntryPtr, value: int) -> int:
        """Write an entry (WRITE_ONCE / set_pXd); return the old value."""
        page = self.pages.get(ptr.pfn)
        if page is None or page.kind != "table" or page.freed:
            raise ValueError(f"pfn {ptr.pfn:#x} is not a live page table")
        old = page.entries.get(ptr.index, 0)
        if value:
            page.entries[ptr.index] = value
        else:
            page.entries.pop(ptr.index, None)
        return old

    def __deepcopy__(self, memo):
        # Pages hold only ints, strings and a dict of ints: copy them directly
        # (the explorer's snapshot engine saves and restores worlds often).
        new = HostMemory.__new__(HostMemory)
        new.pages = {pfn: HostPage(p.pfn, p.kind, p.level, dict(p.entries), p.freed)
                     for pfn, p in self.pages.items()}
        new._next_table = self._next_table
        new._next_data = self._next_data
        new.bad_reads = list(self.bad_reads)
        new.reads = list(self.reads)
        memo[id(self)] = new
        return new

    def snapshot(self) -> tuple:
        """A hashable summary of everything a CPU could observe."""
        pages = tuple(
            (p.pfn, p.kind, p.level, p.freed, tuple(sorted(p.entries.items())))
            for p in sorted(self.pages.values(), key=lambda p: p.pfn))
        return pages, tuple(self.bad_reads)


# --------------------------------------------------------------------------
# Indices, offsets and predicates (include/linux/pgtable.h, asm/pgtable.h)

def pgd_index(addr: int) -> int:
    return (addr >> PGDIR_SHIFT) & (PTRS_PER_TABLE - 1)


def pud_index(addr: int) -> int:
    return (addr >> PUD_SHIFT) & (PTRS_PER_TABLE - 1)


def pmd_index(addr: int) -> int:
    return (addr >> PMD_SHIFT) & (PTRS_PER_TABLE - 1)


def pte_index(addr: int) -> int:
    return (addr >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)


def entry_pfn(entry: int) -> int:
    """Return the pfn an entry points to (a table, or a leaf's first page)."""
    return (entry & PTE_PFN_MASK) >> PAGE_SHIFT


def pgd_offset(mm: "HostMm", addr: int) -> EntryPtr:
    """Return where the PGD entry for ``addr`` lives.

    Models: include/linux/pgtable.h: pgd_offset()
    """
    return EntryPtr(mm.pgd, pgd_index(addr))


def p4d_offset(pgd: int, addr: int) -> int:
    """Return the P4D entry for ``addr``; with 4-level paging it is the PGD entry itself.

    Models: arch/x86/include/asm/pgtable.h: p4d_offset()

    The kernel returns a pointer to the PGD entry it was given; host_pfn_mapping_level
    gives it a pointer to its *local copy*, so "reading" the P4D touches no memory.
    """
    return pgd


def pud_offset(p4d: int, addr: int) -> EntryPtr:
    """Return where the PUD entry lives, computed from a P4D entry's *value*.

    Models: include/linux/pgtable.h: pud_offset()
    """
    return EntryPtr(entry_pfn(p4d), pud_index(addr))


def pmd_offset(pud: int, addr: int) -> EntryPtr:
    """Return where the PMD entry lives, computed from a PUD entry's *value*.

    Models: include/linux/pgtable.h: pmd_offset()

    The kernel's ``pmd_offset(pud_t *pud, ...)`` dereferences ``*pud``; passing it a
    pointer into the shared table re-reads the entry.  Here the caller must pass a
    value, so a re-read is always an explicit, visible second load.
    """
    return EntryPtr(entry_pfn(pud), pmd_index(addr))


def pte_offset_kernel(pmd: int, addr: int) -> EntryPtr:
    """Return where the PTE lives, computed from a PMD entry's value.

    Models: include/linux/pgtable.h: pte_offset_kernel()
    """
    return EntryPtr(entry_pfn(pmd), pte_index(addr))


def pgd_none(pgd: int) -> bool:
    return pgd == 0


def p4d_none(p4d: int) -> bool:
    return p4d == 0


def p4d_present(p4d: int) -> bool:
    return bool(p4d & _PAGE_PRESENT)


def pud_none(pud: int) -> bool:
    return pud == 0


def pud_present(pud: int) -> bool:
    return bool(pud & _PAGE_PRESENT)


def pud_leaf(pud: int) -> bool:
    """Whether a PUD entry maps a 1 GiB page rather than pointing to a PMD table.

    Models: arch/x86/include/asm/pgtable.h: pud_leaf()
    """
    return bool(pud & _PAGE_PSE)


def pmd_none(pmd: int) -> bool:
    return pmd == 0


def pmd_present(pmd: int) -> bool:
    return bool(pmd & _PAGE_PRESENT)


def pmd_leaf(pmd: int) -> bool:
    """Whether a PMD entry maps a 2 MiB page rather than pointing to a PTE table.

    Models: arch/x86/include/asm/pgtable.h: pmd_leaf()
    """
    return bool(pmd & _PAGE_PSE)


def pte_present(pte: int) -> bool:
    return bool(pte & _PAGE_PRESENT)


def mk_table_entry(table_pfn: int) -> int:
    """A non-leaf entry pointing to the table at ``table_pfn``."""
    return (table_pfn << PAGE_SHIFT) | _PAGE_TABLE


def mk_leaf_entry(pfn: int, level: int) -> int:
    """A leaf entry mapping the ``level``-sized folio at ``pfn``."""
    return (pfn << PAGE_SHIFT) | _PAGE_LEAF | (_PAGE_PSE if level > PG_LEVEL_4K else 0)


def describe_entry(entry: int, table_level: int) -> str:
    """Render an entry for people: ``'table @0x1002'``, ``'2M leaf @0x40200'``, ``'none'``."""
    if entry == 0:
        return "none"
    if not entry & _PAGE_PRESENT:
        return f"not present ({entry:#x})"
    if table_level > PTE and entry & _PAGE_PSE:
        return f"{level_name(table_level)} leaf @{entry_pfn(entry):#x}"
    if table_level == PTE:
        return f"4K page @{entry_pfn(entry):#x}"
    return f"{TABLE_NAMES[table_level - 1]} table @{entry_pfn(entry):#x}"


# --------------------------------------------------------------------------
# Running CPU code directly (one CPU) or under the explorer

def run_direct(gen):
    """Run CPU code to its end on one CPU and return its result.

    Direct-mode primitives never yield; a generator that does yield is holding
    an explorer primitive and has to be run by ``kvmmu.explorer`` instead.
    """
    try:
        request = next(gen)
    except StopIteration as stop:
        return stop.value
    gen.close()
    raise RuntimeError(
        f"this code yielded {request!r}: its machine uses kvmmu.explorer primitives, so run "
        "it from an explorer actor with `yield from f.steps(...)`")


def cpu_code(gen_fn):
    """Make a step-yielding generator function callable directly.

    ``f(machine, ...)`` runs it to the end on one CPU (a :class:`HostMachine` or
    ``kvmmu.notifier.Kvm``); ``yield from f.steps(world, ...)`` runs it inside an
    explorer actor, one step at a time.
    """
    @functools.wraps(gen_fn)
    def run(*args, **kwargs):
        return run_direct(gen_fn(*args, **kwargs))

    run.steps = gen_fn
    return run


class DirectRWLock:
    """A reader-writer lock for one CPU: taking it when that would block is a bug."""

    def __init__(self, name: str):
        self.name = name
        self.readers = 0
        self.writer = False

    def read_lock(self):
        yield from ()  # one CPU: nothing to wait for
        if self.writer:
            raise RuntimeError(f"read_lock({self.name}) while write-locked: deadlock on one CPU")
        self.readers += 1

    def read_unlock(self):
        yield from ()
        if self.readers <= 0:
            raise RuntimeError(f"read_unlock({self.name}) without read_lock")
        self.readers -= 1

    def write_lock(self):
        yield from ()
        if self.writer or self.readers:
            raise RuntimeError(f"write_lock({self.name}) while held: deadlock on one CPU")
        self.writer = True

    def write_unlock(self):
        yield from ()
        if not self.writer:
            raise RuntimeError(f"write_unlock({self.name}) without write_lock")
        self.writer = False


class DirectRCU:
    """An RCU domain for one CPU: readers nest, a grace period inside a reader is a bug."""

    def __init__(self, name: str):
        self.name = name
        self.readers = 0

    def read_lock(self):
        yield from ()
        self.readers += 1
        return 0

    def read_unlock(self, idx: int = 0):
        yield from ()
        if self.readers <= 0:
            raise RuntimeError(f"read_unlock({self.name}) without read_lock")
        self.readers -= 1

    def synchronize(self):
        yield from ()
        if self.readers:
            raise RuntimeError(f"synchronize({self.name}) inside a read section: deadlock")


class HostMachine:
    """A host with one CPU: its mm, the grace-period domain, and direct steps.

    The explorer worlds of ``kvmmu.host_level_races`` offer the same three
    attributes (``mm``, ``rcu``, ``step``) backed by explorer primitives.
    """

    def __init__(self, mm: "HostMm | None" = None):
        self.mm = mm if mm is not None else HostMm()
        #: Disabled interrupts hold off the grace period that frees old page tables.
        self.rcu = DirectRCU("irq-disabled sections (RCU)")
        self.steps_taken: list[str] = []

    def step(self, label: str, fn=None):
        """One indivisible action: here it simply runs (nothing else can run)."""
        yield from ()
        self.steps_taken.append(label)
        return fn() if fn is not None else None


# --------------------------------------------------------------------------
# The address space

class HostMm:
    """A process address space: its PGD, its memory, its notifier subscribers.

    Models: include/linux/mm_types.h: struct mm_struct
    """

    def __init__(self, memory: HostMemory | None = None):
        self.mem = memory if memory is not None else HostMemory()
        self.pgd = self.mem.alloc_table(PGD)
        #: mmu_notifier subscriptions: objects with invalidate_range_start/end
        #: generator functions taking (machine, start, end).
        self.notifier_subscriptions: list = []

    def snapshot(self) -> tuple:
        return self.mem.snapshot()

    # -- plain (one-step) page-table edits used by the operations below ----
    def entry_ptr(self, hva: int, table_level: int, create: bool = False) -> EntryPtr | None:
        """Return where ``hva``'s entry at ``table_level`` lives, allocating tables if asked.

        Returns None if a table on the way is missing (or a leaf is in the way)
        and ``create`` is false.
        """
        check_hva("hva", hva)
        check_choice("table_level", table_level, (PGD, PUD, PMD, PTE))
        ptr = pgd_offset(self, hva)
        index_of = {PUD: pud_index, PMD: pmd_index, PTE: pte_index}
        for level in (PUD, PMD, PTE):
            if level < table_level:
                break
            entry = self.mem.peek(ptr)
            if entry and entry & _PAGE_PSE:
                if create:
                    raise ValueError(
                        f"hva {hva:#x} is inside a {level_name(level + 1)} leaf; split it first")
                return None
            if not entry:
                if not create:
                    return None
                table = self.mem.alloc_table(level)
                self.mem.store(ptr, mk_table_entry(table))
                entry = self.mem.peek(ptr)
            ptr = EntryPtr(entry_pfn(entry), index_of[level](hva))
        return ptr

    def map_folio(self, hva: int, level: int) -> int:
        """Allocate a folio of ``level`` and map it at ``hva`` (a page fault); return its pfn."""
        check_choice("level", level, (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G))
        check_hva_aligned("hva", hva, level)
        ptr = self.entry_ptr(hva, level, create=True)
        if self.mem.peek(ptr):
            raise ValueError(f"hva {hva:#x} is already mapped at {level_name(level)}")
        color = pte_index(hva) if level == PG_LEVEL_4K else None
        pfn = self.mem.alloc_folio(level, color=color)
        self.mem.store(ptr, mk_leaf_entry(pfn, level))
        return pfn


def check_hva(name: str, hva) -> int:
    """Check a host virtual address: an int in the 47-bit user half."""
    return check_int(name, hva, 0, TASK_SIZE_MAX + PAGE_SIZE - 1)


def check_hva_aligned(name: str, hva, level: int) -> int:
    """Check that ``hva`` is aligned to a ``level``-sized page."""
    check_hva(name, hva)
    size = KVM_PAGES_PER_HPAGE(level) << PAGE_SHIFT
    if hva % size:
        raise ValueError(
            f"{name} {hva:#x} is misaligned for a {level_name(level)} page: it must be a "
            f"multiple of {size:#x}")
    return hva


def host_populate(mm: HostMm, hva: int, npages: int, backing: str) -> list[int]:
    """Fault in host memory for ``npages`` 4 KiB pages from ``hva`` with ``backing`` folios.

    ``backing`` is ``"4K"``, ``"2M"`` (THP) or ``"1G"`` (hugetlbfs-style).  Every
    ``backing``-aligned block that overlaps the range gets one folio, so a range
    that starts in the middle of a 2 MiB block is backed by a THP that starts
    before it (the VMA is bigger than the memslot).  Blocks already mapped at
    that size are left alone.  Returns the pfns of the new folios.
    """
    check_choice("backing", backing, tuple(BACKINGS))
    check_hva_aligned("hva", hva, PG_LEVEL_4K)
    check_int("npages", npages, 1, (TASK_SIZE_MAX + PAGE_SIZE - hva) >> PAGE_SHIFT)
    level = BACKINGS[backing]
    size = KVM_PAGES_PER_HPAGE(level) << PAGE_SHIFT
    first = hva - hva % size
    end = hva + (npages << PAGE_SHIFT)
    pfns = []
    for block in range(first, end, size):
        ptr = mm.entry_ptr(block, level)
        if ptr is not None and mm.mem.peek(ptr):
            continue
        pfns.append(mm.map_folio(block, level))
    return pfns


def host_translation(mm: HostMm, hva: int) -> tuple[int, int] | None:
    """Return ``(pfn, level)`` of the host's current mapping of ``hva``, or None.

    The ground truth the checks compare KVM against: an atomic look with no
    recorded reads (no kernel counterpart; think of it as what the MMU would
    translate ``hva`` to right now).
    """
    check_hva("hva", hva)
    entry = mm.mem.peek(pgd_offset(mm, hva))
    for level, offset in ((PUD, pud_offset), (PMD, pmd_offset), (PTE, pte_offset_kernel)):
        if not entry & _PAGE_PRESENT:
            return None
        entry = mm.mem.peek(offset(entry, hva))
        if not entry & _PAGE_PRESENT:
            return None
        if level == PTE or entry & _PAGE_PSE:
            offset_in = (hva >> PAGE_SHIFT) & (KVM_PAGES_PER_HPAGE(level) - 1)
            return entry_pfn(entry) + offset_in, level
    return None  # unreachable: the PTE level always returns


def host_maps_range(mm: HostMm, hva: int, npages: int, pfn: int) -> bool:
    """Whether the host maps ``npages`` pages from ``hva`` to ``pfn, pfn+1, ...`` right now.

    One walk per host leaf, so checking a 2 MiB range backed by a THP is one walk.
    """
    check_hva("hva", hva)
    check_int("npages", npages, 1)
    done = 0
    while done < npages:
        found = host_translation(mm, hva + (done << PAGE_SHIFT))
        if found is None or found[0] != pfn + done:
            return False
        per = KVM_PAGES_PER_HPAGE(found[1])
        done += per - ((hva >> PAGE_SHIFT) + done) % per
    return True


def host_level_truth(mm: HostMm, hva: int) -> int:
    """Return the level of the host mapping of ``hva`` (4K when unmapped), atomically."""
    found = host_translation(mm, hva)
    return PG_LEVEL_4K if found is None else found[1]


# --------------------------------------------------------------------------
# mm operations, written as CPU code (each yield is a point another CPU may act)

def mmu_notifier_invalidate_range_start(machine, start: int, end: int):
    """Tell every subscriber (KVM) that ``[start, end)`` is about to change.

    Models: mm/mmu_notifier.c: mmu_notifier_invalidate_range_start()
    """
    # A tuple copy: the loop keeps no reference into the mm across its steps.
    for sub in tuple(machine.mm.notifier_subscriptions):
        yield from sub.invalidate_range_start(machine, start, end)


def mmu_notifier_invalidate_range_end(machine, start: int, end: int):
    """Tell every subscriber that the change to ``[start, end)`` is complete.

    Models: mm/mmu_notifier.c: mmu_notifier_invalidate_range_end()
    """
    for sub in tuple(machine.mm.notifier_subscriptions):
        yield from sub.invalidate_range_end(machine, start, end)


def _free_table_tree(mem: HostMemory, table_pfn: int) -> list[int]:
    # Free a table and everything below it; return the data folios it mapped.
    folios = []
    page = mem.pages[table_pfn]
    for entry in page.entries.values():
        if not entry & _PAGE_PRESENT:
            continue
        if page.level == PTE or entry & _PAGE_PSE:
            folios.append(entry_pfn(entry))
        else:
            folios.extend(_free_table_tree(mem, entry_pfn(entry)))
    mem.free(table_pfn)
    return folios


class Hex(int):
    """An int that prints in hex (entries, pfns): what a step returns shows readably in traces."""

    def __repr__(self) -> str:
        return hex(self)


class Found(NamedTuple):
    """The entry an mm operation is about to change: where it is and its value."""

    ptr: "EntryPtr | None"
    old: int
    table_level: int

    def __repr__(self) -> str:
        return describe_entry(self.old, self.table_level) if self.ptr is not None else "none"


def _find_entry(machine, hva: int, table_level: int, why: str, ok):
    """The mm operation's first step: find the entry it will change, check it is ``ok``.

    A step of its own (the kernel finds the entry under the mm's locks before
    it notifies), so an explorer actor never reads shared state between steps.
    Raises ValueError, saying what was found, if ``ok(old)`` is false.
    """
    def find():
        ptr = machine.mm.entry_ptr(hva, table_level)
        old = machine.mm.mem.peek(ptr) if ptr is not None else 0
        if not ok(old):
            raise ValueError(f"{why} at {hva:#x}; found "
                             f"{_found_text(machine, hva, ptr, old, table_level)}")
        return Found(ptr, old, table_level)
    return (yield from machine.step(f"find {TABLE_NAMES[table_level]} entry", find))


def _found_text(machine, hva: int, ptr, old: int, table_level: int) -> str:
    # What an mm operation found where it expected to work, for its error message.
    if ptr is not None:
        return describe_entry(old, table_level)
    above = host_translation(machine.mm, hva)
    if above is not None:
        return f"a {level_name(above[1])} leaf above it"
    return f"no {TABLE_NAMES[table_level]} table"


def _store(machine, ptr: EntryPtr, value: int) -> None:
    machine.mm.mem.store(ptr, value)


def _free_tree(machine, table_pfn: int) -> None:
    mem = machine.mm.mem
    for pfn in _free_table_tree(mem, table_pfn):
        mem.free(pfn)


@cpu_code
def collapse_huge_page(machine, haddr: int, level: int = PG_LEVEL_2M):
    """Replace the table under ``haddr``'s P*D entry with one huge leaf, in place.

    Models: mm/khugepaged.c: collapse_huge_page()

    ``level`` 2M is khugepaged's collapse of a PTE table into a THP; 1G does
    the same one level up (see the module notes).  The old table is freed only
    after a grace period, which CPUs walking with interrupts off hold off.
    """
    check_choice("level", level, (PG_LEVEL_2M, PG_LEVEL_1G))
    check_hva_aligned("haddr", haddr, level)
    ptr, old, _ = yield from _find_entry(
        machine, haddr, level,
        f"collapse needs a {TABLE_NAMES[level]} entry that points to a table",
        lambda e: e & _PAGE_PRESENT and not e & _PAGE_PSE)
    end = haddr + (KVM_PAGES_PER_HPAGE(level) << PAGE_SHIFT)
    yield from mmu_notifier_invalidate_range_start(machine, haddr, end)
    new = yield from machine.step(
        f"alloc {level_name(level)} folio, copy into it",
        lambda: Hex(machine.mm.mem.alloc_folio(level)))
    yield from machine.step(
        f"set {TABLE_NAMES[level]}: {level_name(level)} leaf @{new:#x}",
        lambda: _store(machine, ptr, mk_leaf_entry(new, level)))
    yield from mmu_notifier_invalidate_range_end(machine, haddr, end)
    # pte_free_defer(): the old table may still be under a walker with IRQs off.
    yield from machine.rcu.synchronize()
    yield from machine.step(
        f"free old {TABLE_NAMES[level - 1]} table @{entry_pfn(old):#x} + small pages",
        lambda: _free_tree(machine, entry_pfn(old)))
    return new


def _split_table(machine, huge: int) -> "Hex":
    mem = machine.mm.mem
    table = mem.alloc_table(PTE)
    for i in range(PTRS_PER_TABLE):
        mem.store(EntryPtr(table, i), mk_leaf_entry(entry_pfn(huge) + i, PG_LEVEL_4K))
    return Hex(table)


@cpu_code
def __split_huge_pmd(machine, haddr: int):
    """Replace the 2 MiB leaf at ``haddr`` with a PTE table mapping the same pages.

    Models: mm/huge_memory.c: __split_huge_pmd()
    """
    check_hva_aligned("haddr", haddr, PG_LEVEL_2M)
    ptr, old, _ = yield from _find_entry(machine, haddr, PMD, "split needs a 2M leaf",
                                         lambda e: e & _PAGE_PRESENT and e & _PAGE_PSE)
    end = haddr + (KVM_PAGES_PER_HPAGE(PG_LEVEL_2M) << PAGE_SHIFT)
    yield from mmu_notifier_invalidate_range_start(machine, haddr, end)
    table = yield from machine.step("alloc PTE table, 512 entries for the THP",
                                    lambda: _split_table(machine, old))
    yield from machine.step(f"set PMD: PTE table @{table:#x}",
                            lambda: _store(machine, ptr, mk_table_entry(table)))
    yield from mmu_notifier_invalidate_range_end(machine, haddr, end)
    return table


@cpu_code
def migrate_page(machine, hva: int):
    """Move the 4 KiB page at ``hva`` to a new host page (NUMA balancing, compaction).

    Models: mm/migrate.c: migrate_pages()
    """
    check_hva_aligned("hva", hva, PG_LEVEL_4K)
    ptr, old, _ = yield from _find_entry(machine, hva, PTE, "migrate needs a present 4K mapping",
                                         lambda e: e & _PAGE_PRESENT)
    yield from mmu_notifier_invalidate_range_start(machine, hva, hva + PAGE_SIZE)
    yield from machine.step("clear PTE (migration entry)", lambda: _store(machine, ptr, 0))
    new = yield from machine.step(
        "alloc new page, copy",
        lambda: Hex(machine.mm.mem.alloc_folio(PG_LEVEL_4K, color=pte_index(hva))))
    yield from machine.step(f"set PTE: 4K page @{new:#x}",
                            lambda: _store(machine, ptr, mk_leaf_entry(new, PG_LEVEL_4K)))
    yield from mmu_notifier_invalidate_range_end(machine, hva, hva + PAGE_SIZE)
    yield from machine.step(f"free old page @{entry_pfn(old):#x}",
                            lambda: machine.mm.mem.free(entry_pfn(old)))
    return new


@cpu_code
def unmap_and_free_tables(machine, haddr: int, level: int = PG_LEVEL_1G):
    """munmap a whole ``level``-sized region and free its page tables after a grace period.

    Models: mm/mmap.c: free_pgtables()
    """
    check_choice("level", level, (PG_LEVEL_2M, PG_LEVEL_1G))
    check_hva_aligned("haddr", haddr, level)
    ptr, old, _ = yield from _find_entry(
        machine, haddr, level, f"unmap needs a present {TABLE_NAMES[level]} entry",
        lambda e: e & _PAGE_PRESENT)
    end = haddr + (KVM_PAGES_PER_HPAGE(level) << PAGE_SHIFT)
    yield from mmu_notifier_invalidate_range_start(machine, haddr, end)
    yield from machine.step(f"clear {TABLE_NAMES[level]} entry", lambda: _store(machine, ptr, 0))
    yield from mmu_notifier_invalidate_range_end(machine, haddr, end)
    if old & _PAGE_PSE:
        yield from machine.step("free the folio", lambda: machine.mm.mem.free(entry_pfn(old)))
        return
    yield from machine.rcu.synchronize()
    yield from machine.step(
        f"free {TABLE_NAMES[level - 1]} table @{entry_pfn(old):#x} + what it mapped",
        lambda: _free_tree(machine, entry_pfn(old)))


def table_tree(mm: HostMm, hva_start: int, hva_end: int) -> list[dict]:
    """Describe the live tables and leaves that cover ``[hva_start, hva_end)``, top down.

    Each item: ``{"table": pfn, "level": name, "entries": [(index, description, hva), ...]}``
    with only the entries whose range overlaps the interval.  Used by the figure.
    """
    check_hva("hva_start", hva_start)
    check_int("hva_end", hva_end, hva_start + 1, TASK_SIZE_MAX + PAGE_SIZE)
    shift = {PGD: PGDIR_SHIFT, PUD: PUD_SHIFT, PMD: PMD_SHIFT, PTE: PAGE_SHIFT}
    out = []

    def visit(table_pfn: int, level: int, base: int):
        page = mm.mem.pages[table_pfn]
        rows = []
        children = []
        for index in sorted(page.entries):
            lo = base + (index << shift[level])
            hi = lo + (1 << shift[level])
            if hi <= hva_start or lo >= hva_end:
                continue
            entry = page.entries[index]
            rows.append((index, describe_entry(entry, level), lo))
            if level > PTE and entry & _PAGE_PRESENT and not entry & _PAGE_PSE:
                children.append((entry_pfn(entry), level - 1, lo))
        out.append({"table": table_pfn, "level": TABLE_NAMES[level], "entries": rows})
        for child in children:
            visit(*child)

    visit(mm.pgd, PGD, 0)
    return out
