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

**One code, two ways to run it.**  The mm operations here are CPU code
(:mod:`kvmmu.cpu`): generator functions that ``yield`` a step at every point
where another CPU may act.  ``run_alone(kvm, collapse_huge_page(kvm.mm,
haddr))`` runs one to the end on one CPU; an explorer actor runs ``yield
from collapse_huge_page(w.mm, haddr)`` and every step becomes a point where
the explorer may switch CPUs.  The memory itself, :class:`HostMemory`, is
one shared object of the explorer, and so is the grace period that frees
old page tables (``mm.rcu``).

**Where the model simplifies.**

- Four-level paging only; the P4D is folded into the PGD, as on x86-64
  without LA57 (``p4d_offset`` returns the PGD entry itself).
- Entries carry only present, RW, user, accessed, dirty and PSE; no NX,
  protection keys, PAT, swap or migration entries (a page under migration is
  simply not present), no PROT_NONE.  x86 ``pmd_present`` also counts an entry
  with only PSE set as present (a huge PMD being split); the model's split
  never leaves such an entry.
- ``mmap_lock``, the page-table spinlocks, page reference counts and rmap
  are not modelled: a page is freed when the mm operation that drops it
  says so, whoever still uses it (a use after that is recorded in
  ``HostMemory.bad_reads``).  Each mm operation does its page-table work between
  ``mmu_notifier_invalidate_range_start`` and ``_end``: that bracket is the
  only thing KVM relies on.  (khugepaged really ends the notification right
  after clearing the old PMD and installs the huge PMD later, keeping faults
  out with ``mmap_lock`` held for write; the model's bracket gives KVM the same
  guarantee.)
- Data pages hold 64-bit words (guest page tables, guest data); a word never
  written reads as the page's fill value: 0 for anonymous memory faulted in
  on first touch, ``GUEST_DATA_WORD`` for the pages the chapters populate
  as "guest data".  A page under migration has a non-present PTE.
- A page table that is replaced is freed after an RCU grace period (as
  ``pte_free_defer`` does); a CPU with interrupts disabled holds that grace
  period off.  The model's ``rcu`` domain is that grace period.  Freed pages
  are never reused, so a late read of one is always caught.
- Promoting a PUD to a 1 GiB page in place is not something Linux does for
  anonymous memory today; the model allows it because the kernel comment's
  rule is stated for every P*D level and it is the level where
  ``host_pfn_mapping_level`` descends.
"""
from dataclasses import dataclass, field
from typing import NamedTuple

from .bits import BIT_ULL, GENMASK_ULL
from .checks import check_bool, check_choice, check_int, check_name, check_u64
from .cpu import Handle, cpu_code
from .errno import EFAULT
from .explorer import RCU, Primitive, World, step
from .levels import (KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PAGE_SIZE, PG_LEVEL_1G,
                     PG_LEVEL_2M, PG_LEVEL_4K, level_name)

__all__ = [
    "PGD", "PUD", "PMD", "PTE", "TABLE_NAMES", "BACKINGS", "GUEST_DATA_WORD", "TASK_SIZE_MAX",
    "EntryPtr", "BadRead", "HostPage", "HostMemory", "IrqsOff", "HostMm", "Hex", "MmuNotifierOps",
    "MmuNotifier",
    "pgd_offset", "p4d_offset", "pud_offset", "pmd_offset", "pte_offset_kernel",
    "pgd_none", "p4d_none", "p4d_present", "pud_none", "pud_present", "pud_leaf",
    "pmd_none", "pmd_present", "pmd_leaf", "pte_present", "mk_table_entry", "mk_leaf_entry",
    "describe_entry", "pgd_index", "pud_index", "pmd_index", "pte_index",
    "entry_pfn", "check_hva", "check_hva_aligned", "host_populate", "host_translation",
    "host_maps_range", "host_level_truth", "mmu_notifier_invalidate_range_start",
    "mmu_notifier_invalidate_range_end", "collapse_huge_page", "__split_huge_pmd",
    "migrate_page", "unmap_and_free_tables", "punch_hole", "table_tree",
    "__get_user", "__put_user", "__try_cmpxchg_user",
]

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


def _check_pfn(name: str, pfn) -> int:
    """A pfn an entry can hold (bits 12-51 of the entry)."""
    return check_int(name, pfn, 0, PTE_PFN_MASK >> 12)
#: A non-present PTE that is not none: the page is being migrated (the
#: model's stand-in for a swap-format migration entry).
_PAGE_MIGRATION = BIT_ULL(62)

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


class _EntryPtrFields(NamedTuple):
    pfn: int
    index: int


class EntryPtr(_EntryPtrFields):
    """Where an entry lives: a table page's pfn and the index in it (a ``pXd_t *``)."""

    __slots__ = ()

    def __new__(cls, pfn: int, index: int):
        _check_pfn("pfn", pfn)
        check_int("index", index, 0, PTRS_PER_TABLE - 1)
        return super().__new__(cls, pfn, index)

    def __repr__(self) -> str:
        return f"EntryPtr(pfn={self.pfn:#x}, index={self.index})"


@dataclass(frozen=True)
class BadRead:
    """A walker read memory that is not a live table of the level it expected."""

    ptr: EntryPtr
    expected: str
    found: str

    def __post_init__(self):
        if not isinstance(self.ptr, EntryPtr):
            raise TypeError(f"ptr must be an EntryPtr, got {type(self.ptr).__name__}")
        check_name("expected", self.expected)
        check_name("found", self.found)

    def __str__(self) -> str:
        return (f"read entry {self.ptr.index} of pfn {self.ptr.pfn:#x} expecting a "
                f"{self.expected} table, but that page is {self.found}")


class HostPage:
    """One page-table page, or the head of one data folio, in host memory.

    A value: changing a page makes a new ``HostPage`` (the memory's state is
    then a tuple of pages that states before and after share), and its hash
    is computed once.
    """

    __slots__ = ("pfn", "kind", "level", "entries", "freed", "fill", "_hash")

    def __init__(self, pfn: int, kind: str, level: int, entries=None, freed: bool = False,
                 fill: int = 0):
        _check_pfn("pfn", pfn)
        check_choice("kind", kind, ("table", "folio"))
        check_choice("level", level, (PTE, PMD, PUD, PGD) if kind == "table"
                     else (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G))
        check_bool("freed", freed)
        check_u64("fill", fill)
        self._init(pfn, kind, level, entries, freed, fill)

    def _init(self, pfn, kind, level, entries, freed, fill):
        self.pfn = pfn
        self.kind = kind            # "table" or "folio"
        self.level = level          # table: PGD/PUD/PMD/PTE; folio: PG_LEVEL_4K/2M/1G
        self.entries = dict(entries or ())  # table only: index -> u64, zeros omitted
        self.freed = freed
        self.fill = fill            # folio only: what a word never written reads as
        self._hash = hash((pfn, kind, level, freed, fill, tuple(sorted(self.entries.items()))))

    def replace(self, **changes) -> "HostPage":
        fields = {"entries": self.entries, "freed": self.freed, "fill": self.fill, **changes}
        page = object.__new__(HostPage)     # a page already checked: skip the checks
        page._init(self.pfn, self.kind, self.level, **fields)
        return page

    def __eq__(self, other):
        return self is other or (type(other) is HostPage and self._hash == other._hash
                                 and (self.pfn, self.kind, self.level, self.freed, self.fill,
                                      self.entries)
                                 == (other.pfn, other.kind, other.level, other.freed,
                                     other.fill, other.entries))

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return f"HostPage({self.pfn:#x}, {self.describe()})"

    def __deepcopy__(self, memo):
        return self                 # a value

    @property
    def npages(self) -> int:
        return 1 if self.kind == "table" else KVM_PAGES_PER_HPAGE(self.level)

    def describe(self) -> str:
        what = (f"a {TABLE_NAMES[self.level]} table" if self.kind == "table"
                else f"a {level_name(self.level)} data folio")
        return f"{what} (freed)" if self.freed else what


class HostMemory(Primitive):
    """Host physical memory: page-table pages and data folios, by pfn.

    One shared object of the explorer.  Allocation is a deterministic bump
    allocator; freed pages stay freed (never reused), so any later access to
    one is caught.  ``words`` holds what was written into data pages, per
    4 KiB pfn, as tuples of ``(index, value)``.
    """

    __slots__ = ("pages", "big", "words", "_next_table", "_next_data", "bad_reads",
                 "reads", "_cache")
    _sealed = True
    #: not state: the log of reads (for figures) and the snapshot cache
    _fixed_fields = ("reads", "_cache")
    #: the explorer's footprint locations: data words and bad reads apart
    #: from the pages and tables (the rest of the memory)
    _field_locations = {"words": ("words",), "bad_reads": ("bad_reads",)}

    def __init__(self, world, name: str = "host memory"):
        super().__init__(world, name)
        self._cache = None
        self.pages: dict[int, HostPage] = {}
        #: the multi-page folios, as (head pfn, pages), for finding a tail's head
        self.big: tuple = ()
        self.words: dict[int, tuple] = {}
        self._next_table = _TABLE_PFN_BASE
        self._next_data = _DATA_PFN_BASE
        #: Accesses that went to the wrong kind of memory (part of the state).
        self.bad_reads: tuple = ()
        #: Every typed read, in order (for figures; not part of the state).
        self.reads: list[tuple[EntryPtr, int, int]] = []

    def _put(self, page: HostPage) -> None:
        self._cache = None
        self.pages[page.pfn] = page

    def _bad(self, bad: "BadRead") -> None:
        self._cache = None
        self.bad_reads += (bad,)

    # -- allocation -------------------------------------------------------
    def alloc_table(self, level: int) -> int:
        """Allocate an empty page-table page of ``level`` (PGD/PUD/PMD/PTE)."""
        check_choice("level", level, (PGD, PUD, PMD, PTE))
        pfn = self._next_table
        self._next_table += 1
        self._put(HostPage(pfn, "table", level))
        return pfn

    def alloc_folio(self, level: int, color: int | None = None, fill: int = 0) -> int:
        """Allocate a data folio of ``level`` (4K/2M/1G), naturally aligned.

        ``color`` (4K only) asks for a pfn whose low 9 bits are ``color``,
        which is where a split THP's pages sit; ``fill`` is what its words
        read as until written.
        """
        check_choice("level", level, (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G))
        npages = KVM_PAGES_PER_HPAGE(level)
        pfn = -(-self._next_data // npages) * npages
        if color is not None:
            check_int("color", color, 0, PTRS_PER_TABLE - 1)
            if level != PG_LEVEL_4K:
                raise ValueError("color is only meaningful for a 4K folio")
            pfn += (color - pfn) % PTRS_PER_TABLE
        check_u64("fill", fill)
        self._next_data = pfn + npages
        self._put(HostPage(pfn, "folio", level, fill=fill))
        if npages > 1:
            self.big += ((pfn, npages),)
        return pfn

    def free(self, pfn: int) -> None:
        """Free the page (table or folio head) at ``pfn``."""
        page = self.pages.get(pfn)
        if page is None or page.freed:
            raise ValueError(f"pfn {pfn:#x} is not an allocated page")
        self._put(page.replace(freed=True))

    # -- lookup -----------------------------------------------------------
    def page_at(self, pfn: int) -> HostPage | None:
        """Return the page or folio that contains ``pfn`` (None if never allocated)."""
        page = self.pages.get(pfn)
        if page is not None:
            return page
        for head, npages in self.big:
            if head <= pfn < head + npages:
                return self.pages[head]
        return None

    def peek(self, ptr: EntryPtr) -> int:
        """Return the word at ``ptr`` without recording anything (for checks and figures)."""
        page = self.page_at(ptr.pfn)
        if page is None:
            return 0
        if page.kind == "folio":
            for index, value in self.words.get(ptr.pfn, ()):
                if index == ptr.index:
                    return value
            return page.fill
        return page.entries.get(ptr.index, 0)

    def read_data(self, pfn: int, offset: int) -> int:
        """Read the u64 at byte ``offset`` of data page ``pfn`` (a kernel mapping's read)."""
        page = self.pages.get(pfn) if type(pfn) is int else None
        if (page is not None and page.kind == "folio" and not page.freed
                and type(offset) is int and 0 <= offset <= PAGE_SIZE - 8 and not offset & 7):
            # the common case, a live data page, without building a pointer
            index = offset >> 3
            for i, value in self.words.get(pfn, ()):
                if i == index:
                    return value
            return page.fill
        ptr = self._data_ptr(pfn, offset, "read")
        return self.peek(ptr)

    def write_data(self, pfn: int, offset: int, value: int) -> None:
        """Write the u64 at byte ``offset`` of data page ``pfn``."""
        check_u64("value", value)
        ptr = self._data_ptr(pfn, offset, "write")
        self._cache = None
        words = dict(self.words.get(pfn, ()))
        words[ptr.index] = value
        self.words[pfn] = tuple(sorted(words.items()))

    def _data_ptr(self, pfn: int, offset: int, what: str) -> EntryPtr:
        check_int("pfn", pfn, 0)
        check_int("offset", offset, 0, PAGE_SIZE - 8)
        if offset & 7:
            raise ValueError(f"offset must be 8-byte aligned, got {offset:#x}")
        ptr = EntryPtr(pfn, offset >> 3)
        page = self.page_at(pfn)
        if page is None or page.kind != "folio" or page.freed:
            found = "unallocated memory" if page is None else page.describe()
            self._bad(BadRead(ptr, f"data page ({what})", found))
        return ptr

    def load(self, ptr: EntryPtr, level: int) -> int:
        """Read the word at ``ptr`` as an entry of a ``level`` table (one READ_ONCE)."""
        page = self.page_at(ptr.pfn)
        if page is None or page.kind != "table" or page.level != level or page.freed:
            found = "unallocated memory" if page is None else page.describe()
            self._bad(BadRead(ptr, TABLE_NAMES[level], found))
        value = self.peek(ptr)
        self.reads.append((ptr, level, value))
        return value

    def store(self, ptr: EntryPtr, value: int) -> int:
        """Write an entry (WRITE_ONCE / set_pXd); return the old value."""
        page = self.pages.get(ptr.pfn)
        if page is None or page.kind != "table" or page.freed:
            raise ValueError(f"pfn {ptr.pfn:#x} is not a live page table")
        old = page.entries.get(ptr.index, 0)
        entries = dict(page.entries)
        if value:
            entries[ptr.index] = value
        else:
            entries.pop(ptr.index, None)
        self._put(page.replace(entries=entries))
        return old

    def store_many(self, table: int, entries: dict) -> None:
        """Fill a fresh table with ``entries`` at once (index -> u64)."""
        page = self.pages[table]
        self._put(page.replace(entries={**page.entries, **entries}))

    def copy_words(self, src: int, dst: int) -> None:
        """Copy what was written into data page ``src`` into data page ``dst``."""
        words = self.words.get(src)
        if words:
            self._cache = None
            self.words[dst] = words

    def snapshot(self) -> tuple:
        """A hashable summary of everything a CPU could observe."""
        if self._cache is None:
            self._cache = (tuple(sorted(self.pages.items())), tuple(sorted(self.words.items())),
                           self._next_table, self._next_data, self.bad_reads, self.big)
        return self._cache

    # -- the explorer's view --
    def _state(self):
        return self.snapshot()

    def _load(self, st):
        if st is self._cache:
            return                      # already in this state
        pages, words, self._next_table, self._next_data, self.bad_reads, self.big = st
        self.pages = dict(pages)
        self.words = dict(words)
        self._cache = st

    def _show(self):
        live = sum(1 for p in self.pages.values() if not p.freed)
        return f"{live} live pages" + (f", {len(self.bad_reads)} bad reads" if self.bad_reads else "")


# --------------------------------------------------------------------------
# Indices, offsets and predicates (include/linux/pgtable.h, asm/pgtable.h)

def pgd_index(addr: int) -> int:
    return (check_hva("addr", addr) >> PGDIR_SHIFT) & (PTRS_PER_TABLE - 1)


def pud_index(addr: int) -> int:
    return (check_hva("addr", addr) >> PUD_SHIFT) & (PTRS_PER_TABLE - 1)


def pmd_index(addr: int) -> int:
    return (check_hva("addr", addr) >> PMD_SHIFT) & (PTRS_PER_TABLE - 1)


def pte_index(addr: int) -> int:
    return (check_hva("addr", addr) >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)


def entry_pfn(entry: int) -> int:
    """Return the pfn an entry points to (a table, or a leaf's first page)."""
    return (check_u64("entry", entry) & PTE_PFN_MASK) >> PAGE_SHIFT


def pgd_offset(mm: "HostMm", addr: int) -> EntryPtr:
    """Return where the PGD entry for ``addr`` lives.

    Models: include/linux/pgtable.h: pgd_offset()
    """
    return EntryPtr(_check_mm(mm).pgd, pgd_index(check_hva("addr", addr)))


def p4d_offset(pgd: int, addr: int) -> int:
    """Return the P4D entry for ``addr``; with 4-level paging it is the PGD entry itself.

    Models: arch/x86/include/asm/pgtable.h: p4d_offset()

    The kernel returns a pointer to the PGD entry it was given; host_pfn_mapping_level
    gives it a pointer to its *local copy*, so "reading" the P4D touches no memory.
    """
    check_hva("addr", addr)
    return check_u64("pgd", pgd)


def pud_offset(p4d: int, addr: int) -> EntryPtr:
    """Return where the PUD entry lives, computed from a P4D entry's *value*.

    Models: include/linux/pgtable.h: pud_offset()
    """
    return EntryPtr(entry_pfn(check_u64("p4d", p4d)), pud_index(check_hva("addr", addr)))


def pmd_offset(pud: int, addr: int) -> EntryPtr:
    """Return where the PMD entry lives, computed from a PUD entry's *value*.

    Models: include/linux/pgtable.h: pmd_offset()

    The kernel's ``pmd_offset(pud_t *pud, ...)`` dereferences ``*pud``; passing it a
    pointer into the shared table re-reads the entry.  Here the caller must pass a
    value, so a re-read is always an explicit, visible second load.
    """
    return EntryPtr(entry_pfn(check_u64("pud", pud)), pmd_index(check_hva("addr", addr)))


def pte_offset_kernel(pmd: int, addr: int) -> EntryPtr:
    """Return where the PTE lives, computed from a PMD entry's value.

    Models: include/linux/pgtable.h: pte_offset_kernel()
    """
    return EntryPtr(entry_pfn(check_u64("pmd", pmd)), pte_index(check_hva("addr", addr)))


def pgd_none(pgd: int) -> bool:
    return check_u64("pgd", pgd) == 0


def p4d_none(p4d: int) -> bool:
    return check_u64("p4d", p4d) == 0


def p4d_present(p4d: int) -> bool:
    return bool(check_u64("p4d", p4d) & _PAGE_PRESENT)


def pud_none(pud: int) -> bool:
    return check_u64("pud", pud) == 0


def pud_present(pud: int) -> bool:
    return bool(check_u64("pud", pud) & _PAGE_PRESENT)


def pud_leaf(pud: int) -> bool:
    """Whether a PUD entry maps a 1 GiB page rather than pointing to a PMD table.

    Models: arch/x86/include/asm/pgtable.h: pud_leaf()
    """
    return bool(check_u64("pud", pud) & _PAGE_PSE)


def pmd_none(pmd: int) -> bool:
    return check_u64("pmd", pmd) == 0


def pmd_present(pmd: int) -> bool:
    return bool(check_u64("pmd", pmd) & _PAGE_PRESENT)


def pmd_leaf(pmd: int) -> bool:
    """Whether a PMD entry maps a 2 MiB page rather than pointing to a PTE table.

    Models: arch/x86/include/asm/pgtable.h: pmd_leaf()
    """
    return bool(check_u64("pmd", pmd) & _PAGE_PSE)


def pte_present(pte: int) -> bool:
    return bool(check_u64("pte", pte) & _PAGE_PRESENT)


def mk_table_entry(table_pfn: int) -> int:
    """A non-leaf entry pointing to the table at ``table_pfn``."""
    _check_pfn("table_pfn", table_pfn)
    return (table_pfn << PAGE_SHIFT) | _PAGE_TABLE


def mk_leaf_entry(pfn: int, level: int) -> int:
    """A leaf entry mapping the ``level``-sized folio at ``pfn``."""
    _check_pfn("pfn", pfn)
    check_choice("level", level, (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G))
    return (pfn << PAGE_SHIFT) | _PAGE_LEAF | (_PAGE_PSE if level > PG_LEVEL_4K else 0)


def describe_entry(entry: int, table_level: int) -> str:
    """Render an entry for people: ``'table @0x1002'``, ``'2M leaf @0x40200'``, ``'none'``."""
    check_u64("entry", entry)
    check_choice("table_level", table_level, (PGD, PUD, PMD, PTE))
    if entry == 0:
        return "none"
    if not entry & _PAGE_PRESENT:
        if entry & _PAGE_MIGRATION:
            return f"migration entry @{entry_pfn(entry):#x}"
        return f"not present ({entry:#x})"
    if table_level > PTE and entry & _PAGE_PSE:
        return f"{level_name(table_level)} leaf @{entry_pfn(entry):#x}"
    if table_level == PTE:
        return f"4K page @{entry_pfn(entry):#x}"
    return f"{TABLE_NAMES[table_level - 1]} table @{entry_pfn(entry):#x}"


# --------------------------------------------------------------------------
# The address space

@dataclass(frozen=True)
class MmuNotifierOps:
    """The callbacks a secondary MMU gives the mm: generator functions of (mn, start, end).

    Models: include/linux/mmu_notifier.h: struct mmu_notifier_ops
    """

    invalidate_range_start: object
    invalidate_range_end: object

    def __post_init__(self):
        for name in ("invalidate_range_start", "invalidate_range_end"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be a generator function of (mn, start, end)")


@dataclass(frozen=True)
class MmuNotifier:
    """One subscription: the ops, and whose they are (``container_of`` in the kernel).

    Models: include/linux/mmu_notifier.h: struct mmu_notifier
    """

    ops: MmuNotifierOps
    owner: object = field(compare=False)

    def __post_init__(self):
        if not isinstance(self.ops, MmuNotifierOps):
            raise TypeError(f"ops must be an MmuNotifierOps, got {type(self.ops).__name__}")
        if self.owner is None or isinstance(self.owner, (int, float, str)):
            raise TypeError(f"owner must be the subscriber (a VM), got {self.owner!r}")

class IrqsOff(RCU):
    """The grace period that frees replaced page tables, as a CPU with interrupts off sees it.

    A walker of the host's tables disables interrupts instead of taking a
    lock: the CPU that replaced a table frees it only once every CPU has
    taken the IPI (or passed the quiescent state) that interrupts hold off.
    The explorer's RCU grace period, under the kernel's names for what the
    walker does (``local_irq_save``/``local_irq_restore``).
    """

    __slots__ = ()
    _sealed = True
    _rl, _ru, _sync = "local_irq_save", "local_irq_restore", "synchronize_rcu"


class HostMm(Handle):
    """A process address space: its PGD, its memory, its notifier subscribers.

    Models: include/linux/mm_types.h: struct mm_struct

    A handle: its memory (:class:`HostMemory`) and the grace period that
    frees old page tables (``rcu``: CPUs walking with interrupts disabled
    hold it off) are shared objects registered in ``world``, so copying the
    handle copies nothing.  ``notifier_subscriptions`` holds the
    ``mmu_notifier_ops`` registered on the mm (KVM's, once a VM is created).
    """

    __slots__ = ("world", "mem", "rcu", "pgd", "notifier_subscriptions", "vmas")
    _key = ("mm",)

    def __init__(self, world, memory: HostMemory | None = None):
        if not isinstance(world, World):
            raise TypeError(f"world must be an explorer World, got {type(world).__name__}")
        if memory is not None and not isinstance(memory, HostMemory):
            raise TypeError(f"memory must be a HostMemory or None, got {type(memory).__name__}")
        self.world = world
        self.mem = memory if memory is not None else world._register(HostMemory(world))
        self.rcu = world._register(IrqsOff(world, "IRQs off (page-table freeing)"))
        self.pgd = self.mem.alloc_table(PGD)
        #: The mmu_notifiers registered on this mm (:class:`MmuNotifier`).
        self.notifier_subscriptions: list = []
        #: The mapped user ranges [start, end), anonymous memory (set up
        #: before a run, never changed by one).
        self.vmas: list[tuple[int, int]] = []

    def mmap(self, hva: int, npages: int) -> None:
        """Map ``npages`` of anonymous memory at ``hva`` (faulted in on first touch)."""
        check_hva_aligned("hva", hva, PG_LEVEL_4K)
        check_int("npages", npages, 1, (TASK_SIZE_MAX + PAGE_SIZE - hva) >> PAGE_SHIFT)
        end = hva + (npages << PAGE_SHIFT)
        merged = sorted(self.vmas + [(hva, end)])
        out = [merged[0]]
        for lo, hi in merged[1:]:
            if lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        self.vmas = out

    def in_vma(self, hva: int) -> bool:
        """Whether ``hva`` lies in a mapped user range."""
        return any(lo <= hva < hi for lo, hi in self.vmas)

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

    def map_folio(self, hva: int, level: int, fill: int = 0) -> int:
        """Allocate a folio of ``level`` and map it at ``hva`` (a page fault); return its pfn."""
        check_choice("level", level, (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G))
        check_hva_aligned("hva", hva, level)
        ptr = self.entry_ptr(hva, level, create=True)
        if self.mem.peek(ptr):
            raise ValueError(f"hva {hva:#x} is already mapped at {level_name(level)}")
        color = pte_index(hva) if level == PG_LEVEL_4K else None
        pfn = self.mem.alloc_folio(level, color=color, fill=fill)
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


def host_populate(mm: HostMm, hva: int, npages: int, backing: str,
                  fill: int = GUEST_DATA_WORD) -> list[int]:
    """Fault in host memory for ``npages`` 4 KiB pages from ``hva`` with ``backing`` folios.

    ``backing`` is ``"4K"``, ``"2M"`` (THP) or ``"1G"`` (hugetlbfs-style).  Every
    ``backing``-aligned block that overlaps the range gets one folio, so a range
    that starts in the middle of a 2 MiB block is backed by a THP that starts
    before it (the VMA is bigger than the memslot).  Blocks already mapped at
    that size are left alone.  ``fill`` is what the new pages read as (by
    default ``GUEST_DATA_WORD``: the guest's data).  Returns the new folios' pfns.
    """
    _check_mm(mm)
    check_choice("backing", backing, tuple(BACKINGS))
    check_hva_aligned("hva", hva, PG_LEVEL_4K)
    check_int("npages", npages, 1, (TASK_SIZE_MAX + PAGE_SIZE - hva) >> PAGE_SHIFT)
    level = BACKINGS[backing]
    size = KVM_PAGES_PER_HPAGE(level) << PAGE_SHIFT
    first = hva - hva % size
    end = hva + (npages << PAGE_SHIFT)
    mm.mmap(first, (-(-end // size) * size - first) >> PAGE_SHIFT)
    pfns = []
    for block in range(first, end, size):
        ptr = mm.entry_ptr(block, level)
        if ptr is not None and mm.mem.peek(ptr):
            continue
        pfns.append(mm.map_folio(block, level, fill))
    return pfns


def _check_mm(mm) -> HostMm:
    if not isinstance(mm, HostMm):
        raise TypeError(f"mm must be a HostMm, got {type(mm).__name__}")
    return mm


def host_translation(mm: HostMm, hva: int) -> tuple[int, int] | None:
    """Return ``(pfn, level)`` of the host's current mapping of ``hva``, or None.

    The ground truth the checks compare KVM against: an atomic look with no
    recorded reads (no kernel counterpart; think of it as what the MMU would
    translate ``hva`` to right now).
    """
    _check_mm(mm)
    check_hva("hva", hva)
    return _translate(mm, hva)


_LEVEL_WALK = ((PUD, PUD_SHIFT, KVM_PAGES_PER_HPAGE(PG_LEVEL_1G) - 1),
               (PMD, PMD_SHIFT, KVM_PAGES_PER_HPAGE(PG_LEVEL_2M) - 1),
               (PTE, PAGE_SHIFT, 0))


def _peek_entry(mem: HostMemory, pfn: int, index: int) -> int:
    # HostMemory.peek() of a table entry, without building a pointer when the
    # page is a table (anything else takes peek's own way).
    page = mem.pages.get(pfn)
    if page is not None and page.kind == "table":
        return page.entries.get(index, 0)
    return mem.peek(EntryPtr(pfn, index))


def _translate(mm: HostMm, hva: int):
    # host_translation() without its argument checks (for callers that did them).
    mem = mm.mem
    entry = _peek_entry(mem, mm.pgd, (hva >> PGDIR_SHIFT) & (PTRS_PER_TABLE - 1))
    for level, shift, in_page in _LEVEL_WALK:
        if not entry & _PAGE_PRESENT:
            return None
        entry = _peek_entry(mem, entry_pfn(entry), (hva >> shift) & (PTRS_PER_TABLE - 1))
        if not entry & _PAGE_PRESENT:
            return None
        if level == PTE or entry & _PAGE_PSE:
            return entry_pfn(entry) + ((hva >> PAGE_SHIFT) & in_page), level
    return None  # unreachable: the PTE level always returns


def host_maps_range(mm: HostMm, hva: int, npages: int, pfn: int) -> bool:
    """Whether the host maps ``npages`` pages from ``hva`` to ``pfn, pfn+1, ...`` right now.

    One walk per host leaf, so checking a 2 MiB range backed by a THP is one walk.
    """
    _check_mm(mm)
    check_hva("hva", hva)
    check_int("npages", npages, 1, (TASK_SIZE_MAX + PAGE_SIZE - hva) >> PAGE_SHIFT)
    _check_pfn("pfn", pfn)
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
    _check_mm(mm)
    found = host_translation(mm, hva)
    return PG_LEVEL_4K if found is None else found[1]


# --------------------------------------------------------------------------
# mm operations, written as CPU code (each yield is a point another CPU may act)

def mmu_notifier_invalidate_range_start(mm: HostMm, start: int, end: int):
    """Tell every subscriber (KVM) that ``[start, end)`` is about to change.

    Models: mm/mmu_notifier.c: mmu_notifier_invalidate_range_start()
    """
    _check_range(mm, start, end)
    # A tuple copy: the loop keeps no reference into the mm across its steps.
    for sub in tuple(mm.notifier_subscriptions):
        yield from sub.ops.invalidate_range_start(sub, start, end)


def mmu_notifier_invalidate_range_end(mm: HostMm, start: int, end: int):
    """Tell every subscriber that the change to ``[start, end)`` is complete.

    Models: mm/mmu_notifier.c: mmu_notifier_invalidate_range_end()
    """
    _check_range(mm, start, end)
    for sub in tuple(mm.notifier_subscriptions):
        yield from sub.ops.invalidate_range_end(sub, start, end)


def _check_range(mm, start, end) -> None:
    _check_mm(mm)
    check_hva("start", start)
    check_int("end", end, start + 1, TASK_SIZE_MAX + PAGE_SIZE)


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


class _Found(NamedTuple):
    """The entry an mm operation is about to change: where it is and its value."""

    ptr: "EntryPtr | None"
    old: int
    table_level: int

    def __repr__(self) -> str:
        return describe_entry(self.old, self.table_level) if self.ptr is not None else "none"


def _find_entry(mm, hva: int, table_level: int, why: str, ok):
    """The mm operation's first step: find the entry it will change, check it is ``ok``.

    A step of its own (the kernel finds the entry under the mm's locks before
    it notifies), so an explorer actor never reads shared state between steps.
    Raises ValueError, saying what was found, if ``ok(old)`` is false.
    """
    def find():
        ptr = mm.entry_ptr(hva, table_level)
        old = mm.mem.peek(ptr) if ptr is not None else 0
        if not ok(old):
            raise ValueError(f"{why} at {hva:#x}; found "
                             f"{_found_text(mm, hva, ptr, old, table_level)}")
        return _Found(ptr, old, table_level)
    return (yield from step(f"find {TABLE_NAMES[table_level]} entry", find))


def _found_text(mm, hva: int, ptr, old: int, table_level: int) -> str:
    # What an mm operation found where it expected to work, for its error message.
    if ptr is not None:
        return describe_entry(old, table_level)
    above = host_translation(mm, hva)
    if above is not None:
        return f"a {level_name(above[1])} leaf above it"
    return f"no {TABLE_NAMES[table_level]} table"


def _store(mm, ptr: EntryPtr, value: int) -> None:
    mm.mem.store(ptr, value)


def _copy_folio(mm, old_pfn: int, level: int, color=None) -> int:
    # A new folio with the old one's fill and contents (migration's copy).
    mem = mm.mem
    old = mem.page_at(old_pfn)
    new = mem.alloc_folio(level, color=color, fill=old.fill if old else 0)
    for i in range(KVM_PAGES_PER_HPAGE(level)):
        mem.copy_words(old_pfn + i, new + i)
    return new


def _table_leaves(mem: HostMemory, table_pfn: int, first: int = 0) -> list:
    # The present leaves under a table: (index of their first 4K page, pfn, pages).
    page = mem.pages[table_pfn]
    per = KVM_PAGES_PER_HPAGE(page.level)          # pages one entry of this table maps
    out = []
    for index, entry in sorted(page.entries.items()):
        if not entry & _PAGE_PRESENT:
            continue
        if page.level == PTE or entry & _PAGE_PSE:
            out.append((first + index * per, entry_pfn(entry), per))
        else:
            out.extend(_table_leaves(mem, entry_pfn(entry), first + index * per))
    return out


def _collapse_copy(mm, haddr: int, level: int, table_pfn: int) -> int:
    # khugepaged's copy: the new huge folio holds what each small page held.
    # Only the pages the old table maps, and of those only the written ones,
    # are visited (a 1G collapse would otherwise walk 262144 addresses).
    mem = mm.mem
    found = host_translation(mm, haddr)
    old = mem.page_at(found[0]) if found else None
    new = mem.alloc_folio(level, fill=old.fill if old else GUEST_DATA_WORD)
    leaves = _table_leaves(mem, table_pfn)
    for src in sorted(mem.words):
        for first, pfn, npages in leaves:
            if pfn <= src < pfn + npages:
                mem.copy_words(src, new + first + (src - pfn))
    return new


def _free_tree(mm, table_pfn: int) -> None:
    mem = mm.mem
    for pfn in _free_table_tree(mem, table_pfn):
        mem.free(pfn)


@cpu_code
def collapse_huge_page(mm, haddr: int, level: int = PG_LEVEL_2M):
    """Replace the table under ``haddr``'s P*D entry with one huge leaf, in place.

    Models: mm/khugepaged.c: collapse_huge_page()

    ``level`` 2M is khugepaged's collapse of a PTE table into a THP; 1G does
    the same one level up (see the module notes).  The old table is freed only
    after a grace period, which CPUs walking with interrupts off hold off.
    """
    check_choice("level", level, (PG_LEVEL_2M, PG_LEVEL_1G))
    check_hva_aligned("haddr", haddr, level)
    ptr, old, _ = yield from _find_entry(
        mm, haddr, level,
        f"collapse needs a {TABLE_NAMES[level]} entry that points to a table",
        lambda e: e & _PAGE_PRESENT and not e & _PAGE_PSE)
    end = haddr + (KVM_PAGES_PER_HPAGE(level) << PAGE_SHIFT)
    yield from mmu_notifier_invalidate_range_start(mm, haddr, end)
    new = yield from step(f"alloc {level_name(level)} folio, copy into it",
                          lambda: Hex(_collapse_copy(mm, haddr, level, entry_pfn(old))))
    yield from step(
        f"set {TABLE_NAMES[level]}: {level_name(level)} leaf @{new:#x}",
        lambda: _store(mm, ptr, mk_leaf_entry(new, level)))
    yield from mmu_notifier_invalidate_range_end(mm, haddr, end)
    # pte_free_defer(): the old table may still be under a walker with IRQs off.
    yield from mm.rcu.synchronize()
    yield from step(
        f"free old {TABLE_NAMES[level - 1]} table @{entry_pfn(old):#x} + small pages",
        lambda: _free_tree(mm, entry_pfn(old)))
    return new


def _split_table(mm, huge: int) -> "Hex":
    mem = mm.mem
    table = mem.alloc_table(PTE)
    mem.store_many(table, {i: mk_leaf_entry(entry_pfn(huge) + i, PG_LEVEL_4K)
                           for i in range(PTRS_PER_TABLE)})
    return Hex(table)


@cpu_code
def __split_huge_pmd(mm, haddr: int):
    """Replace the 2 MiB leaf at ``haddr`` with a PTE table mapping the same pages.

    Models: mm/huge_memory.c: __split_huge_pmd()
    """
    check_hva_aligned("haddr", haddr, PG_LEVEL_2M)
    ptr, old, _ = yield from _find_entry(mm, haddr, PMD, "split needs a 2M leaf",
                                         lambda e: e & _PAGE_PRESENT and e & _PAGE_PSE)
    end = haddr + (KVM_PAGES_PER_HPAGE(PG_LEVEL_2M) << PAGE_SHIFT)
    yield from mmu_notifier_invalidate_range_start(mm, haddr, end)
    table = yield from step("alloc PTE table, 512 entries for the THP",
                                    lambda: _split_table(mm, old))
    yield from step(f"set PMD: PTE table @{table:#x}",
                            lambda: _store(mm, ptr, mk_table_entry(table)))
    yield from mmu_notifier_invalidate_range_end(mm, haddr, end)
    return table


@cpu_code
def migrate_page(mm, hva: int):
    """Move the 4 KiB page at ``hva`` to a new host page (NUMA balancing, compaction).

    Models: mm/migrate.c: migrate_pages()
    """
    _check_mm(mm)
    check_hva_aligned("hva", hva, PG_LEVEL_4K)
    ptr, old, _ = yield from _find_entry(mm, hva, PTE, "migrate needs a present 4K mapping",
                                         lambda e: e & _PAGE_PRESENT)
    yield from mmu_notifier_invalidate_range_start(mm, hva, hva + PAGE_SIZE)
    yield from step("PTE = migration entry",
                    lambda: _store(mm, ptr, (old & PTE_PFN_MASK) | _PAGE_MIGRATION))
    new = yield from step("alloc new page, copy",
                          lambda: Hex(_copy_folio(mm, entry_pfn(old), PG_LEVEL_4K,
                                                  color=pte_index(hva))))
    yield from step(f"set PTE: 4K page @{new:#x}",
                            lambda: _store(mm, ptr, mk_leaf_entry(new, PG_LEVEL_4K)))
    yield from mmu_notifier_invalidate_range_end(mm, hva, hva + PAGE_SIZE)
    yield from step(f"free old page @{entry_pfn(old):#x}",
                            lambda: mm.mem.free(entry_pfn(old)))
    return new


@cpu_code
def unmap_and_free_tables(mm, haddr: int, level: int = PG_LEVEL_1G):
    """munmap a whole ``level``-sized region and free its page tables after a grace period.

    Models: mm/mmap.c: free_pgtables()
    """
    check_choice("level", level, (PG_LEVEL_2M, PG_LEVEL_1G))
    check_hva_aligned("haddr", haddr, level)
    ptr, old, _ = yield from _find_entry(
        mm, haddr, level, f"unmap needs a present {TABLE_NAMES[level]} entry",
        lambda e: e & _PAGE_PRESENT)
    end = haddr + (KVM_PAGES_PER_HPAGE(level) << PAGE_SHIFT)
    yield from mmu_notifier_invalidate_range_start(mm, haddr, end)
    yield from step(f"clear {TABLE_NAMES[level]} entry", lambda: _store(mm, ptr, 0))
    yield from mmu_notifier_invalidate_range_end(mm, haddr, end)
    if old & _PAGE_PSE:
        yield from step("free the folio", lambda: mm.mem.free(entry_pfn(old)))
        return
    yield from mm.rcu.synchronize()
    yield from step(
        f"free {TABLE_NAMES[level - 1]} table @{entry_pfn(old):#x} + what it mapped",
        lambda: _free_tree(mm, entry_pfn(old)))


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


# --------------------------------------------------------------------------
# Releasing memory, and reading and writing it through a user address

def _unmap_range(mm, start: int, end: int) -> tuple:
    # Clear every PTE of [start, end) and free its page; split nothing
    # (the range must not cut a huge leaf).
    freed = []
    for hva in range(start, end, PAGE_SIZE):
        found = host_translation(mm, hva)
        if found is None:
            continue
        if found[1] != PG_LEVEL_4K:
            raise ValueError(f"hva {hva:#x} is inside a {level_name(found[1])} leaf: "
                             "punch_hole works on 4K pages")
        mm.mem.store(mm.entry_ptr(hva, PTE), 0)
        mm.mem.free(found[0])
        freed.append(Hex(found[0]))
    return tuple(freed)


@cpu_code
def punch_hole(mm, start: int, end: int):
    """Release the anonymous pages of ``[start, end)``: the next touch gets zeroed pages.

    Models: mm/madvise.c: madvise_dontneed_single_vma()

    The notifier's range_start runs before the pages go away and range_end
    after: the order every secondary MMU (KVM's SPTEs, its pfn caches)
    relies on.  Returns the pfns freed.
    """
    _check_range(mm, start, end)
    if start & (PAGE_SIZE - 1) or end & (PAGE_SIZE - 1):
        raise ValueError(f"start and end must be page aligned, got {start:#x}, {end:#x}")
    yield from mmu_notifier_invalidate_range_start(mm, start, end)
    freed = yield from step(f"unmap and free hva [{start:#x}, {end:#x})",
                            lambda: _unmap_range(mm, start, end))
    yield from mmu_notifier_invalidate_range_end(mm, start, end)
    return freed


def _user_pfn(mm, hva: int):
    # The page behind a user address, faulted in (zeroed) on first touch;
    # None outside every mapping, or while the page is being migrated.
    found = _translate(mm, hva)
    if found is not None:
        return found[0]
    if not mm.in_vma(hva):
        return None
    ptr = mm.entry_ptr(hva, PTE)
    if ptr is not None and mm.mem.peek(ptr):
        return None                     # a migration entry: gup would wait
    return mm.map_folio(hva - hva % PAGE_SIZE, PG_LEVEL_4K)


def _check_user(mm, hva) -> None:
    _check_mm(mm)
    check_hva("hva", hva)
    if hva & 7:
        raise ValueError(f"hva must be 8-byte aligned, got {hva:#x}")


def __get_user(mm: HostMm, hva: int) -> tuple[int, int]:
    """Read the u64 at user address ``hva``: ``(0, value)`` or ``(-EFAULT, 0)``.

    Models: arch/x86/include/asm/uaccess.h: __get_user()

    Plain computation on the memory: the caller makes it one step.
    """
    _check_user(mm, hva)
    pfn = _user_pfn(mm, hva)
    if pfn is None:
        return -EFAULT, 0
    return 0, mm.mem.read_data(pfn, hva & (PAGE_SIZE - 1))


def __put_user(mm: HostMm, hva: int, value: int) -> int:
    """Store the u64 ``value`` at user address ``hva``: 0 or -EFAULT.

    Models: arch/x86/include/asm/uaccess.h: __put_user()
    """
    _check_user(mm, hva)
    check_u64("value", value)
    pfn = _user_pfn(mm, hva)
    if pfn is None:
        return -EFAULT
    mm.mem.write_data(pfn, hva & (PAGE_SIZE - 1), value)
    return 0


def __try_cmpxchg_user(mm: HostMm, hva: int, old: int, new: int) -> tuple[int, int]:
    """Compare-exchange the u64 at user address ``hva``.

    Models: arch/x86/include/asm/uaccess.h: __try_cmpxchg_user()

    Returns ``(0, old)`` on success, ``(1, current)`` if memory held another
    value, ``(-EFAULT, 0)`` if nothing can be mapped there.
    """
    _check_user(mm, hva)
    check_u64("old", old)
    check_u64("new", new)
    pfn = _user_pfn(mm, hva)
    if pfn is None:
        return -EFAULT, 0
    offset = hva & (PAGE_SIZE - 1)
    cur = mm.mem.read_data(pfn, offset)
    if cur != old:
        return 1, cur
    mm.mem.write_data(pfn, offset, new)
    return 0, old
