"""The TDP MMU's page-table pages, and the iterator that walks them.

Models: arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_start(), tdp_iter_next()
Models: arch/x86/kvm/mmu/tdp_iter.h: struct tdp_iter, kvm_tdp_mmu_write_spte()
Models: arch/x86/kvm/mmu/mmu_internal.h: struct kvm_mmu_page

Reference version: Linux 6.17 (read at v6.17-rc3).

:class:`EptMemory` is every page-table page of the TDP MMU, of every root,
as one shared object of :mod:`kvmmu.explorer`: tables of 512 entries,
allocated on demand, every entry ``SHADOW_NONPRESENT_VALUE`` until written.
A table is named by a made-up host page frame number (``TDP_PT_PFN_BASE``
up), so that ``make_nonleaf_spte`` and ``spte_to_pfn`` work on it.  Each
table has its :class:`KvmMmuPage`; a root's page carries ``role.invalid``.

The iterator walks one root in pre-order over a gfn range.  Every SPTE it
reads, and every SPTE the accessors read or write, is one step: the
functions are generators that the TDP MMU's functions ``yield from``, so
another CPU can run between any two of them.

**Where the model simplifies.**

- An SPTE pointer is a :class:`Sptep`: the table's fake pfn and the entry's
  index (the kernel holds a ``tdp_ptep_t``); a root is named by its table's
  pfn and level, not by its ``struct kvm_mmu_page``.
- ``tdp_mmu_iter_cond_resched`` never yields in the model, so the
  iterator's ``yielded`` flag stays False.
- ``tdp_iter_next`` takes the caller's loop bound and stops without reading
  the first entry past it (the kernel reads it and the caller discards it).
- RCU grace periods are not modelled: a removed table is marked
  ``unlinked`` and kept, so a CPU still holding a pointer into it keeps
  reading and writing real memory, as it would until the grace period ends.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .checks import check_bool, check_int, check_u64
from .cpu import check_vm
from .explorer import Op, Primitive
from .levels import (KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL,
                     SPTE_ENT_PER_PAGE, SPTE_INDEX, gfn_round_for_level)
from .spte import (EPT_AD, FROZEN_SPTE, SHADOW_NONPRESENT_VALUE, PT_WRITABLE_MASK,
                   is_frozen_spte, is_last_spte, is_mmio_spte, is_shadow_present_pte,
                   make_small_spte, spte_needs_atomic_update, spte_to_pfn)
from .tlb import TlbEntry

__all__ = [
    "TDP_PT_PFN_BASE", "Sptep", "KvmMmuPage", "EptMemory", "spte_name",
    "kvm_tdp_mmu_read_spte", "kvm_tdp_mmu_write_spte_atomic", "__kvm_tdp_mmu_write_spte",
    "kvm_tdp_mmu_spte_need_atomic_update", "kvm_tdp_mmu_write_spte", "TdpIter",
    "tdp_iter_refresh_sptep", "tdp_iter_start", "tdp_iter_restart", "spte_to_child_pt",
    "try_step_down", "try_step_side", "try_step_up", "tdp_iter_next",
]

#: The first fake pfn of a TDP page table: far above the host pages of the
#: examples, so a table pointer never looks like a page.
TDP_PT_PFN_BASE = 0x100000

class _SptepFields(NamedTuple):
    pt: int
    index: int


class Sptep(_SptepFields):
    """A pointer to one SPTE: the table's (fake) pfn and the entry's index.

    Models: arch/x86/kvm/mmu/tdp_iter.h: tdp_ptep_t
    """

    __slots__ = ()

    def __new__(cls, pt: int, index: int):
        check_int("pt", pt, 0, (1 << 40) - 1)
        check_int("index", index, 0, SPTE_ENT_PER_PAGE - 1)
        return super().__new__(cls, pt, index)


@dataclass
class KvmMmuPage:
    """One page-table page of the TDP MMU.

    Models: arch/x86/kvm/mmu/mmu_internal.h: struct kvm_mmu_page

    ``spt`` is the table's pfn (the kernel keeps a pointer), ``level`` its
    ``role.level``, ``gfn`` the first gfn it maps, ``ptep`` the parent
    entry that points to it (None for a root).  ``invalid`` is
    ``role.invalid`` of a root, set when the root is made obsolete;
    ``unlinked`` is set by ``handle_removed_pt``: the page waits for RCU and
    is never reused.
    """

    spt: int
    level: int
    gfn: int
    ptep: Sptep | None
    unlinked: bool = False
    invalid: bool = False

    def __post_init__(self):
        check_int("spt", self.spt, 0, (1 << 40) - 1)
        check_int("level", self.level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
        check_int("gfn", self.gfn, 0, (1 << 52) - 1)
        if self.ptep is not None and not isinstance(self.ptep, Sptep):
            raise TypeError(f"ptep must be a Sptep or None, got {type(self.ptep).__name__}")


def spte_name(value: int, level: int = PG_LEVEL_4K, cfg=EPT_AD) -> str:
    """Return a short human name of an SPTE value at ``level``.

    ``leaf 0x1234`` (a present leaf and its pfn), ``table 0x100002`` (a
    present non-leaf and its table's pfn), ``FROZEN_SPTE``, ``non-present``
    (SHADOW_NONPRESENT_VALUE), ``MMIO``, or the hex value.
    """
    check_int("value", value, 0, (1 << 64) - 1)
    check_int("level", level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
    if value == SHADOW_NONPRESENT_VALUE:
        return "non-present"
    if is_frozen_spte(value):
        return "FROZEN_SPTE"
    if is_shadow_present_pte(value):
        if is_last_spte(value, level):
            return f"leaf {spte_to_pfn(value):#x}"
        return f"table {spte_to_pfn(value):#x}"
    if is_mmio_spte(value, cfg):
        return "MMIO"
    return f"{value:#x}"


class EptMemory(Primitive):
    """The page-table pages of every TDP MMU root, as one shared object of the explorer.

    ``tables`` maps a table's pfn to its entries, sparsely: a missing index
    holds SHADOW_NONPRESENT_VALUE, the value KVM fills new tables with.
    ``sps`` maps the same pfn to its :class:`KvmMmuPage`; ``roots`` lists
    the roots' pfns, oldest first (``kvm->arch.tdp_mmu_roots``).  The TDP
    MMU's bookkeeping lives here too: ``page_stats`` (``kvm->stat.pages``),
    the model's ledger of leaves ``installed`` and ``processed``, and the
    gfn ranges of the ``walks`` in progress.  Each method the actors
    ``yield from`` is one atomic step; the plain methods are for set-up,
    views and invariants.  Write entries only through :meth:`put` (or
    :meth:`new_table`, :meth:`free`, the span exchange): the explorer's
    snapshot of a table is cached until one of them changes it.
    """

    _sealed = True
    #: not state: the SPTE masks (configuration) and the tables' snapshots (a cache)
    _fixed_fields = ("cfg", "_frozen")
    #: where the explorer's footprints put each field (see _footprint); a
    #: field not listed (``tables``) is the whole memory
    _field_locations = {"walks": ("walks",), "sps": ("sps",), "roots": ("roots",),
                        "installed": ("ledger",), "processed": ("ledger",),
                        "page_stats": ("ledger",)}

    __slots__ = ("cfg", "tables", "sps", "roots", "page_stats", "installed", "processed",
                 "walks", "_frozen")

    def __init__(self, world, name, cfg=EPT_AD):
        super().__init__(world, name)
        self.cfg = cfg
        self.tables: dict[int, dict[int, int]] = {}
        self.sps: dict[int, KvmMmuPage] = {}
        self.roots: tuple[int, ...] = ()
        self.page_stats = {level: 0 for level in (1, 2, 3)}
        self.installed: tuple = ()
        self.processed: tuple = ()
        self.walks: tuple = ()
        # pfn -> the table's entries as a sorted tuple, while it is unchanged
        # (a removed table holds 512 FROZEN_SPTEs: sorting them at every
        # snapshot dominated the explorer's time).
        self._frozen: dict[int, tuple] = {}

    # -- plain access (no step) --
    def new_table(self, level: int, gfn: int, ptep: Sptep | None) -> int:
        """Add a table full of SHADOW_NONPRESENT_VALUE at the lowest free pfn; return the pfn.

        The lowest free pfn: a table freed unlinked (a lost race) is reused,
        so equal paging structures get equal pfns whatever the schedule.
        """
        pfn = TDP_PT_PFN_BASE
        while pfn in self.sps:
            pfn += 1
        self.tables[pfn] = {}
        self._frozen.pop(pfn, None)
        self.sps[pfn] = KvmMmuPage(pfn, level, gfn, ptep)
        return pfn

    def free(self, pfn: int) -> None:
        """Forget a table that was never linked (or a root nobody uses)."""
        self.tables.pop(pfn, None)
        self._frozen.pop(pfn, None)
        self.sps.pop(pfn, None)
        self.roots = tuple(r for r in self.roots if r != pfn)

    def get(self, sptep: Sptep) -> int:
        """Return the SPTE at ``sptep`` (no step)."""
        return self.tables[sptep.pt].get(sptep.index, SHADOW_NONPRESENT_VALUE)

    def put(self, sptep: Sptep, value: int) -> None:
        """Store ``value`` at ``sptep`` (no step)."""
        table = self.tables[sptep.pt]
        self._frozen.pop(sptep.pt, None)
        if value == SHADOW_NONPRESENT_VALUE:
            table.pop(sptep.index, None)
        else:
            table[sptep.index] = value

    def level(self, sptep: Sptep) -> int:
        """The level of the table ``sptep`` points into."""
        return self.sps[sptep.pt].level

    def where(self, sptep: Sptep) -> str:
        """Name an entry for step labels: ``L1[0x100]`` (table level, index)."""
        return f"L{self.level(sptep)}[{sptep.index:#x}]"

    def name_of(self, sptep: Sptep, value: int) -> str:
        """Name ``value`` as an SPTE of ``sptep``'s table (see :func:`spte_name`)."""
        return spte_name(value, self.level(sptep), self.cfg)

    def walk_covers(self, gfn: int, pages: int) -> bool:
        """Return True if a walk in progress covers any gfn of ``[gfn, gfn + pages)``."""
        return any(start < gfn + pages and gfn < end for start, end in self.walks)

    def span(self, sptep: Sptep) -> int:
        """How many entries from ``sptep`` on no walk in progress covers (at least 1).

        1 if the entry itself is covered; else the length of the run of
        uncovered entries that starts there (see ``handle_removed_pt``).
        """
        sp = self.sps[sptep.pt]
        pages = KVM_PAGES_PER_HPAGE(sp.level)
        i = sptep.index
        # The first entry from i on that a walk covers: entry k covers gfns
        # [sp.gfn + k * pages, sp.gfn + (k + 1) * pages).
        stop = SPTE_ENT_PER_PAGE
        for start, end in self.walks:
            first = max(i, (start - sp.gfn) // pages)
            last = (end - 1 - sp.gfn) // pages
            if first <= last and first < stop:
                stop = first
        return max(stop - i, 1)

    def walk(self, root: int, gfn: int) -> list[tuple[Sptep, int, int]]:
        """Return the hardware walk of ``gfn`` from ``root``: ``(sptep, value, level)`` down.

        The walk stops at the first entry that is not a present non-leaf.
        """
        path = []
        sp = self.sps[root]
        while True:
            sptep = Sptep(sp.spt, SPTE_INDEX(gfn << PAGE_SHIFT, sp.level))
            value = self.get(sptep)
            path.append((sptep, value, sp.level))
            if not is_shadow_present_pte(value) or is_last_spte(value, sp.level):
                return path
            sp = self.sps[spte_to_pfn(value)]

    def translate(self, root: int, gfn: int, write: bool = False) -> TlbEntry | None:
        """What a hardware walk of ``root`` gives for ``gfn``: a TlbEntry, or None (violation)."""
        sptep, value, level = self.walk(root, gfn)[-1]
        if not is_shadow_present_pte(value) or (write and not value & PT_WRITABLE_MASK):
            return None
        offset = gfn & (KVM_PAGES_PER_HPAGE(level) - 1)
        return TlbEntry(spte_to_pfn(value) + offset, value, root)

    def sptep_of(self, root: int, gfn: int, level: int) -> Sptep | None:
        """Return the entry of ``root`` that maps ``gfn`` at ``level``, if the tables exist."""
        for sptep, value, at in self.walk(root, gfn):
            if at == level:
                return sptep
        return None

    def live_leaves(self, root: int) -> list[tuple[int, int, int]]:
        """Return the present leaves reachable from ``root`` as (gfn, level, pfn), sorted."""
        out = []

        def visit(sp):
            pages = KVM_PAGES_PER_HPAGE(sp.level)
            for index, value in sorted(self.tables[sp.spt].items()):
                if not is_shadow_present_pte(value):
                    continue
                if is_last_spte(value, sp.level):
                    out.append((sp.gfn + index * pages, sp.level, spte_to_pfn(value)))
                else:
                    visit(self.sps[spte_to_pfn(value)])
        visit(self.sps[root])
        return sorted(out)

    def removed_tables_not_frozen(self) -> list[Sptep]:
        """Return the entries of removed (unlinked) tables that are not FROZEN_SPTE."""
        out = []
        for pfn, sp in sorted(self.sps.items()):
            if sp.unlinked:
                table = self.tables[pfn]
                out += [Sptep(pfn, i) for i in range(SPTE_ENT_PER_PAGE)
                        if table.get(i, SHADOW_NONPRESENT_VALUE) != FROZEN_SPTE]
        return out

    # -- the explorer's view --
    def _table_state(self, pfn: int) -> tuple:
        entries = self._frozen.get(pfn)
        if entries is None:
            entries = self._frozen[pfn] = tuple(sorted(self.tables[pfn].items()))
        return entries

    def _state(self):
        tables = tuple((pfn, self._table_state(pfn)) for pfn in sorted(self.tables))
        sps = tuple((pfn, sp.level, sp.gfn, sp.ptep, sp.unlinked, sp.invalid)
                    for pfn, sp in sorted(self.sps.items()))
        return (tables, sps, self.roots, tuple(sorted(self.page_stats.items())),
                self.installed, self.processed, self.walks)

    def _load(self, st):
        tables, sps, self.roots, stats, self.installed, self.processed, self.walks = st
        old, frozen = self.tables, self._frozen
        self.tables, self._frozen = {}, {}
        for pfn, entries in tables:
            # A table whose cached snapshot is this very tuple has not changed
            # since: keep its dict instead of building it again.
            same = frozen.get(pfn) is entries and pfn in old
            self.tables[pfn] = old[pfn] if same else dict(entries)
            self._frozen[pfn] = entries
        self.sps = {pfn: KvmMmuPage(pfn, level, gfn, ptep, unlinked, invalid)
                    for pfn, level, gfn, ptep, unlinked, invalid in sps}
        self.page_stats = dict(stats)

    def _show(self):
        return f"{len(self.tables)} tables"

    # -- the steps --
    def read(self, sptep: Sptep):
        """Read one SPTE (one step)."""
        return (yield Op(self, "read", (sptep,), _ept_read))

    def write(self, sptep: Sptep, value: int):
        """Store one SPTE (one step)."""
        return (yield Op(self, "write", (sptep, value), _ept_write))

    def xchg(self, sptep: Sptep, value: int):
        """Exchange one SPTE and return the old value (one step)."""
        return (yield Op(self, "xchg", (sptep, value), _ept_xchg))

    def try_cmpxchg(self, sptep: Sptep, old: int, new: int):
        """Store ``new`` if the SPTE is ``old``; return ``(ok, current)`` (one step)."""
        return (yield Op(self, "try_cmpxchg", (sptep, old, new), _ept_cmpxchg))

    def xchg_span(self, sptep: Sptep, value: int):
        """Exchange the entries of :meth:`span` with ``value``; return their old values (one step)."""
        return (yield Op(self, "xchg_span", (sptep, value), _ept_xchg_span))

    def read_span(self, sptep: Sptep):
        """Read the entries of :meth:`span` (one step)."""
        return (yield Op(self, "read_span", (sptep,), _ept_read_span))

    def alloc(self, level: int, gfn: int, ptep: Sptep, huge_spte: int | None = None):
        """Allocate a table (one step); return its pfn.

        Filled with SHADOW_NONPRESENT_VALUE, or, given ``huge_spte``, with the
        512 small SPTEs that split it (make_small_spte).  Not yet linked.
        """
        return (yield Op(self, "alloc", (level, gfn, ptep, huge_spte), _ept_alloc))

    def _run_where(self, sptep: Sptep, count: int) -> str:
        last = Sptep(sptep.pt, sptep.index + count - 1)
        return self.where(sptep) if count == 1 else f"{self.where(sptep)}..{self.where(last)}"

    def _olds(self, sptep: Sptep, olds) -> str:
        names = []
        for v in olds:
            name = self.name_of(sptep, v)
            if name not in names:
                names.append(name)
        return ("all " if len(olds) > 1 and len(names) == 1 else "") + ", ".join(names)

    def _what(self, kind, args):
        if kind == "alloc":
            return f"allocate an L{args[0]} table"
        where = self.where(args[0])
        if kind in ("read", "read_span"):
            return f"read {where}" + (" and the entries after it no walk covers"
                                      if kind == "read_span" else "")
        if kind == "try_cmpxchg":
            return (f"cmpxchg {where} {self.name_of(args[0], args[1])} -> "
                    f"{self.name_of(args[0], args[2])}")
        return f"{kind.split('_')[0]} {where} = {self.name_of(args[0], args[1])}"

    def _label(self, kind, args, result, cpu):
        if kind == "alloc":
            how = " (split)" if args[3] is not None else ""
            return f"allocate L{args[0]} table {result:#x}{how}"
        sptep = args[0]
        if kind in ("xchg_span", "read_span"):
            n = len(result)
            where = self._run_where(sptep, n)
            more = f" ({n} entries no walk covers)" if n > 1 else ""
            if kind == "read_span":
                return f"read {where}{more}: {self._olds(sptep, result)}"
            return f"xchg {where} = {self.name_of(sptep, args[1])}{more}, old {self._olds(sptep, result)}"
        where = self.where(sptep)
        if kind == "read":
            return f"read {where} = {self.name_of(sptep, result)}"
        if kind == "write":
            return f"write {where} = {self.name_of(sptep, args[1])}"
        if kind == "xchg":
            return (f"xchg {where} = {self.name_of(sptep, args[1])}, "
                    f"old {self.name_of(sptep, result)}")
        ok, current = result
        head = f"cmpxchg {where} {self.name_of(sptep, args[1])} -> {self.name_of(sptep, args[2])}"
        return f"{head}: ok" if ok else f"{head}: fails, found {self.name_of(sptep, current)}"

    def _why_blocked(self, kind, args, cpu):  # pragma: no cover - memory never blocks
        return "never blocks"

    def _footprint(self, kind, args):
        # One SPTE is the location (self, table pfn, index); a span reads the
        # walks in progress and the table's page to size it, then touches its
        # table; an allocation changes the table pages (``sps``), and the new
        # table, which nobody else can point to yet.
        if kind == "alloc":
            return (), [(self, "sps")]
        sptep = args[0]
        if kind == "read":
            return [(self, sptep.pt, sptep.index)], ()
        if kind == "read_span":
            return [(self, "walks"), (self, "sps"), (self, sptep.pt)], ()
        if kind == "xchg_span":
            return [(self, "walks"), (self, "sps")], [(self, sptep.pt)]
        return (), [(self, sptep.pt, sptep.index)]      # write, xchg, try_cmpxchg


def _ept_read(mem, args, cpu, world):
    return mem.get(args[0])


def _ept_write(mem, args, cpu, world):
    mem.put(args[0], args[1])


def _ept_xchg(mem, args, cpu, world):
    old = mem.get(args[0])
    mem.put(args[0], args[1])
    return old


def _ept_cmpxchg(mem, args, cpu, world):
    sptep, old, new = args
    current = mem.get(sptep)
    if current != old:
        return (False, current)
    mem.put(sptep, new)
    return (True, old)


def _ept_xchg_span(mem, args, cpu, world):
    sptep, value = args
    table = mem.tables[sptep.pt]
    span = range(sptep.index, sptep.index + mem.span(sptep))
    olds = tuple(table.get(i, SHADOW_NONPRESENT_VALUE) for i in span)
    mem._frozen.pop(sptep.pt, None)         # the table changes: its snapshot is stale
    if value == SHADOW_NONPRESENT_VALUE:
        for i in span:
            table.pop(i, None)
    else:
        table.update(dict.fromkeys(span, value))
    return olds


def _ept_read_span(mem, args, cpu, world):
    sptep = args[0]
    table = mem.tables[sptep.pt]
    return tuple(table.get(i, SHADOW_NONPRESENT_VALUE)
                 for i in range(sptep.index, sptep.index + mem.span(sptep)))


def _ept_alloc(mem, args, cpu, world):
    level, gfn, ptep, huge_spte = args
    pfn = mem.new_table(level, gfn, ptep)
    if huge_spte is not None:
        for i in range(SPTE_ENT_PER_PAGE):
            mem.put(Sptep(pfn, i), make_small_spte(huge_spte, level, i, cfg=mem.cfg))
    return pfn


# ---------------------------------------------------------------------------
# SPTE accessors (tdp_iter.h): each is one step.
# ---------------------------------------------------------------------------
def kvm_tdp_mmu_read_spte(kvm, sptep: Sptep):
    """Read an SPTE once.

    Models: arch/x86/kvm/mmu/tdp_iter.h: kvm_tdp_mmu_read_spte()
    """
    _check_sptep(kvm, sptep)
    return (yield from kvm.ept.read(sptep))


def kvm_tdp_mmu_write_spte_atomic(kvm, sptep: Sptep, new_spte: int):
    """Exchange an SPTE atomically and return the old value.

    Models: arch/x86/kvm/mmu/tdp_iter.h: kvm_tdp_mmu_write_spte_atomic()
    """
    _check_sptep(kvm, sptep)
    check_u64("new_spte", new_spte)
    return (yield from kvm.ept.xchg(sptep, new_spte))


def __kvm_tdp_mmu_write_spte(kvm, sptep: Sptep, new_spte: int):
    """Store an SPTE with a plain write (WRITE_ONCE).

    Models: arch/x86/kvm/mmu/tdp_iter.h: __kvm_tdp_mmu_write_spte()
    """
    _check_sptep(kvm, sptep)
    check_u64("new_spte", new_spte)
    yield from kvm.ept.write(sptep, new_spte)


def kvm_tdp_mmu_spte_need_atomic_update(kvm, old_spte: int, level: int) -> bool:
    """Return True if a present leaf has bits that may change outside mmu_lock.

    Models: arch/x86/kvm/mmu/tdp_iter.h: kvm_tdp_mmu_spte_need_atomic_update()
    """
    check_vm("kvm", kvm)
    check_u64("old_spte", old_spte)
    check_int("level", level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
    return (is_shadow_present_pte(old_spte) and is_last_spte(old_spte, level)
            and spte_needs_atomic_update(old_spte, kvm.ept.cfg))


def kvm_tdp_mmu_write_spte(kvm, sptep: Sptep, old_spte: int, new_spte: int,
                           level: int):
    """Write an SPTE under exclusive mmu_lock; xchg if its bits are volatile. Returns the old value.

    Models: arch/x86/kvm/mmu/tdp_iter.h: kvm_tdp_mmu_write_spte()
    """
    if kvm_tdp_mmu_spte_need_atomic_update(kvm, old_spte, level):
        return (yield from kvm_tdp_mmu_write_spte_atomic(kvm, sptep, new_spte))
    yield from __kvm_tdp_mmu_write_spte(kvm, sptep, new_spte)
    return old_spte


# ---------------------------------------------------------------------------
# The iterator (tdp_iter.c).  Every SPTE read it does is a step.
# ---------------------------------------------------------------------------
@dataclass
class TdpIter:
    """A pre-order walk of the paging structure over a gfn range.

    Models: arch/x86/kvm/mmu/tdp_iter.h: struct tdp_iter

    ``old_spte`` is the snapshot the caller acts on: the value read when the
    iterator reached ``sptep``, refreshed by a failed cmpxchg.
    """

    next_last_level_gfn: int
    root_level: int
    min_level: int
    pt_path: list = field(default_factory=lambda: [None] * 5)
    level: int = 0
    gfn: int = 0
    sptep: Sptep | None = None
    old_spte: int = SHADOW_NONPRESENT_VALUE
    valid: bool = False
    yielded: bool = False

    def __post_init__(self):
        check_int("next_last_level_gfn", self.next_last_level_gfn, 0, (1 << 52) - 1)
        check_int("root_level", self.root_level, PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL)
        check_int("min_level", self.min_level, PG_LEVEL_4K, self.root_level)


def _check_it(kvm, it) -> None:
    check_vm("kvm", kvm)
    if not isinstance(it, TdpIter):
        raise TypeError(f"it must be a TdpIter, got {type(it).__name__}")


def _check_sptep(kvm, sptep) -> None:
    check_vm("kvm", kvm)
    if not isinstance(sptep, Sptep):
        raise TypeError(f"sptep must be a Sptep, got {type(sptep).__name__}")


def tdp_iter_refresh_sptep(kvm, it: TdpIter):
    """Point the iterator at the entry for its gfn and level, and re-read it.

    Models: arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_refresh_sptep()
    """
    _check_it(kvm, it)
    it.sptep = Sptep(it.pt_path[it.level - 1], SPTE_INDEX(it.gfn << PAGE_SHIFT, it.level))
    it.old_spte = yield from kvm_tdp_mmu_read_spte(kvm, it.sptep)


def tdp_iter_start(kvm, root_pt: int, root_level: int, min_level: int,
                   next_last_level_gfn: int):
    """Return an iterator positioned on the root entry for ``next_last_level_gfn``.

    Models: arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_start()

    The root is given by its table's pfn and level (the kernel passes its
    ``struct kvm_mmu_page``): an actor holds no object of the world across
    a step.
    """
    it = TdpIter(next_last_level_gfn, root_level, min_level)
    it.pt_path[root_level - 1] = root_pt
    yield from tdp_iter_restart(kvm, it)
    return it


def tdp_iter_restart(kvm, it: TdpIter):
    """Go back to the root entry for the iterator's next gfn.

    Models: arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_restart()
    """
    _check_it(kvm, it)
    it.yielded = False
    it.level = it.root_level
    it.gfn = gfn_round_for_level(it.next_last_level_gfn, it.level)
    yield from tdp_iter_refresh_sptep(kvm, it)
    it.valid = True


def spte_to_child_pt(spte: int, level: int) -> int | None:
    """Return the pfn of the table a non-leaf SPTE points to, or None.

    Models: arch/x86/kvm/mmu/tdp_iter.c: spte_to_child_pt()
    """
    if not is_shadow_present_pte(spte) or is_last_spte(spte, level):
        return None
    return spte_to_pfn(spte)


def try_step_down(kvm, it: TdpIter):
    """Re-read the current entry and, if it still points to a table, descend.

    Models: arch/x86/kvm/mmu/tdp_iter.c: try_step_down()
    """
    _check_it(kvm, it)
    if it.level == it.min_level:
        return False
    # Re-read: the entry may have been zapped since the caller looked at it.
    it.old_spte = yield from kvm_tdp_mmu_read_spte(kvm, it.sptep)
    child_pt = spte_to_child_pt(it.old_spte, it.level)
    if child_pt is None:
        return False
    it.level -= 1
    it.pt_path[it.level - 1] = child_pt
    it.gfn = gfn_round_for_level(it.next_last_level_gfn, it.level)
    yield from tdp_iter_refresh_sptep(kvm, it)
    return True


def try_step_side(kvm, it: TdpIter):
    """Move to the next entry of the same table, unless this is its last entry.

    Models: arch/x86/kvm/mmu/tdp_iter.c: try_step_side()
    """
    _check_it(kvm, it)
    if SPTE_INDEX(it.gfn << PAGE_SHIFT, it.level) == SPTE_ENT_PER_PAGE - 1:
        return False
    it.gfn += KVM_PAGES_PER_HPAGE(it.level)
    it.next_last_level_gfn = it.gfn
    it.sptep = Sptep(it.sptep.pt, it.sptep.index + 1)
    it.old_spte = yield from kvm_tdp_mmu_read_spte(kvm, it.sptep)
    return True


def try_step_up(kvm, it: TdpIter):
    """Go back up to the parent table's entry (already visited).

    Models: arch/x86/kvm/mmu/tdp_iter.c: try_step_up()
    """
    _check_it(kvm, it)
    if it.level == it.root_level:
        return False
    it.level += 1
    it.gfn = gfn_round_for_level(it.gfn, it.level)
    yield from tdp_iter_refresh_sptep(kvm, it)
    return True


def tdp_iter_next(kvm, it: TdpIter, end: int | None = None):
    """Advance to the next entry of a pre-order walk: down, else side, else up and side.

    Models: arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_next()

    ``end`` is the model's shortcut for the caller's loop bound: once the
    next entry lies at or past ``end`` the caller's loop stops, so the
    model does not read it (the kernel reads one entry past the range and
    discards it).
    """
    _check_it(kvm, it)
    if it.yielded:
        yield from tdp_iter_restart(kvm, it)
        return
    if (yield from try_step_down(kvm, it)):
        return
    while True:
        if end is not None and _next_side_gfn(it) >= end:
            it.gfn = _next_side_gfn(it)  # the caller's `iter.gfn < end` now fails
            return
        if (yield from try_step_side(kvm, it)):
            return
        if not (yield from try_step_up(kvm, it)):
            break
    it.valid = False


def _next_side_gfn(it: TdpIter) -> int:
    return gfn_round_for_level(it.gfn, it.level) + KVM_PAGES_PER_HPAGE(it.level)
