"""The TDP MMU: a sparse EPT, the SPTE write primitives, the zaps, the fault path.

Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_map(), tdp_mmu_set_spte_atomic(), tdp_mmu_set_spte(), handle_changed_spte(), handle_removed_pt(), tdp_mmu_zap_spte_atomic()

Reference version: Linux 6.17 (read at v6.17-rc3), except where a docstring
says otherwise: the atomic zap with its freeze, :func:`tdp_mmu_zap_spte_atomic`,
is the code as it stood up to 6.12 (v6.13 removed it, commit 35ef80eb), and
:func:`tdp_mmu_zap_spte_atomic_nofreeze` is the code Ben Gardon's 2021 patch
replaced, kept to show the race.

Beside it: the iterator and the SPTE accessors of tdp_iter.h/tdp_iter.c are
in :mod:`kvmmu.tdp_iter`, the vCPUs' TLBs and the remote flush in
:mod:`kvmmu.tlb`, the chapter's race scenarios and checks in
:mod:`kvmmu.tdp_mmu_races`.  This module re-exports the first two's names,
so ``kvmmu.tdp_mmu.TdpIter`` and ``kvmmu.tdp_mmu.TlbEntry`` still work.

**Concurrency.**  Every access to shared memory (an SPTE read, write, xchg
or cmpxchg; a TLB fill; a remote TLB flush; a lock operation) is one step of
:mod:`kvmmu.explorer`: the modelled kernel functions are generators and the
actors that call them ``yield from`` them, so the explorer can interleave two
CPUs at every point where real CPUs could.  Plain computation between two
steps (building an SPTE, bookkeeping) belongs to the step before it.  For
worked examples and unit tests, :func:`run_to_completion` runs one actor
alone, and :func:`map_gfn`, :func:`zap_gfn` and :func:`access` are plain
wrappers.

**The world.**  :class:`TdpMmuWorld` plays ``struct kvm`` plus the hardware
the chapter needs: the paging structure (tables of 512 entries, allocated on
demand, every entry ``SHADOW_NONPRESENT_VALUE`` until written; a table is
named by a fake host page frame number so that ``make_nonleaf_spte`` and
``spte_to_pfn`` work on it), ``mmu_lock``, the page statistics, and one TLB
per vCPU caching gfn -> (pfn, the leaf SPTE it came from).

**Where the model simplifies.**

- One root, one address space, Intel EPT with A/D bits (``kvmmu.spte.EPT_AD``);
  no mirror (TDX) roots, no MMIO SPTEs, no NX huge page workaround, no
  dirty logging.  ``fault.goal_level`` is given, not computed by
  ``kvm_mmu_hugepage_adjust``, and ``fault.pfn`` is given, not faulted in
  from the primary MMU (``kvm_mmu_faultin_pfn``); the staleness check
  (``is_page_fault_stale``) is not modelled.
- RCU grace periods are not modelled: a removed table is marked
  ``unlinked`` and kept (the kernel frees it with ``call_rcu`` once every
  walker has left), so a thread still holding a pointer into it keeps
  reading and writing real memory, as it would in the kernel until the
  grace period ends.  A walk's ``rcu_read_lock()`` section is recorded with
  the gfn range it covers (:func:`tdp_walk_begin`), which
  :func:`handle_removed_pt` uses to merge steps no other CPU can observe.
- Page-table pages come from a shared allocator, one step each (the kernel
  uses a per-vCPU cache filled before taking ``mmu_lock``).
- ``tdp_mmu_iter_cond_resched`` never yields (no contention, no
  ``need_resched``).  The iterator's ``yielded`` flag stays False.
- A vCPU's memory access and a remote flush are one step each; the TLB
  caches final translations only (see :mod:`kvmmu.tlb`).
- Where the kernel WARNs or BUGs, the model raises :class:`~kvmmu.spte.KernelWarn`;
  actors built with :func:`kvmmu.tdp_mmu_races.actor` turn it into a failed
  assertion, which the explorer reports as a violation.
"""
from dataclasses import dataclass
from functools import partial

from .checks import check_bool, check_int
from .errno import (EBUSY, RET_PF_FIXED, RET_PF_RETRY, RET_PF_SPURIOUS,
                    RET_PF_WRITE_PROTECTED, ret_pf_name)
from .explorer import Op, World, _Primitive, wait_until
from .levels import (KVM_MAX_HUGEPAGE_LEVEL, KVM_PAGES_PER_HPAGE, PAGE_SHIFT,
                     PG_LEVEL_4K, PT64_ROOT_4LEVEL, SPTE_ENT_PER_PAGE, SPTE_INDEX,
                     gfn_round_for_level, level_name)
from .spte import (ACC_ALL, EPT_AD, FROZEN_SPTE, PT_PRESENT_MASK,
                   SHADOW_NONPRESENT_VALUE, KernelWarn, check_spte_writable_invariants,
                   is_executable_pte, is_frozen_spte, is_large_pte, is_last_spte,
                   is_mmio_spte, is_shadow_present_pte, is_writable_pte,
                   leaf_spte_change_needs_tlb_flush, make_nonleaf_spte, make_small_spte,
                   make_spte, spte_to_pfn)
# The iterator and the TLBs live beside this module; their names stay
# importable from here (the chapter and older code use kvmmu.tdp_mmu.X).
from .tdp_iter import (Sptep, TdpIter, __kvm_tdp_mmu_write_spte,  # noqa: F401
                       kvm_tdp_mmu_read_spte, kvm_tdp_mmu_spte_need_atomic_update,
                       kvm_tdp_mmu_write_spte, kvm_tdp_mmu_write_spte_atomic, spte_to_child_pt,
                       tdp_iter_next, tdp_iter_refresh_sptep, tdp_iter_restart, tdp_iter_start,
                       try_step_down, try_step_side, try_step_up)
from .tlb import (TlbEntry, VcpuTlbs, kvm_flush_remote_tlbs_gfn,  # noqa: F401
                  kvm_flush_remote_tlbs_range)
#: examples lives far below it, so a table pointer never looks like a page.
TDP_PT_PFN_BASE = 0x100000

#: The largest gfn the model accepts (a 4-level EPT maps 48 bits of GPA).
GFN_MAX = (1 << 36) - 1


@dataclass
class KvmMmuPage:
    """One page-table page of the TDP MMU.

    Models: arch/x86/kvm/mmu/mmu_internal.h: struct kvm_mmu_page

    ``spt`` is the table's pfn (the kernel keeps a pointer), ``level`` its
    ``role.level``, ``gfn`` the first gfn it maps, ``ptep`` the parent
    entry that points to it (None for the root).  ``unlinked`` is set by
    :func:`handle_removed_pt`: the page waits for RCU and is never reused.
    """

    spt: int
    level: int
    gfn: int
    ptep: Sptep | None
    unlinked: bool = False


def spte_name(value: int, level: int = PG_LEVEL_4K, cfg=EPT_AD) -> str:
    """Return a short human name of an SPTE value at ``level``.

    ``leaf 0x1234`` (a present leaf and its pfn), ``table 0x100002`` (a
    present non-leaf and its table's pfn), ``FROZEN_SPTE``, ``non-present``
    (SHADOW_NONPRESENT_VALUE), ``MMIO``, or the hex value.
    """
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


# ---------------------------------------------------------------------------
# The EPT's memory, one shared object of the explorer (the TLBs: kvmmu.tlb).
# ---------------------------------------------------------------------------
class EptMemory(_Primitive):
    """The page-table pages of the TDP MMU, as one shared object of the explorer.

    ``tables`` maps a table's pfn to its entries, sparsely: a missing index
    holds SHADOW_NONPRESENT_VALUE, the value KVM fills new tables with.
    ``sps`` maps the same pfn to its :class:`KvmMmuPage`.  Each method the
    actors ``yield from`` is one atomic step; ``get``/``put`` and the other
    plain methods are for set-up, views and invariants.
    """

    __slots__ = ("tables", "sps")

    def __init__(self, world, name):
        super().__init__(world, name)
        self.tables: dict[int, dict[int, int]] = {}
        self.sps: dict[int, KvmMmuPage] = {}

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
        self.sps[pfn] = KvmMmuPage(pfn, level, gfn, ptep)
        return pfn

    def free(self, pfn: int) -> None:
        """Forget a table that was never linked."""
        self.tables.pop(pfn, None)
        self.sps.pop(pfn, None)

    def get(self, sptep: Sptep) -> int:
        """Return the SPTE at ``sptep`` (no step)."""
        return self.tables[sptep.pt].get(sptep.index, SHADOW_NONPRESENT_VALUE)

    def put(self, sptep: Sptep, value: int) -> None:
        """Store ``value`` at ``sptep`` (no step)."""
        table = self.tables[sptep.pt]
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
        return spte_name(value, self.level(sptep), self.world.cfg)

    def span(self, sptep: Sptep) -> int:
        """How many entries from ``sptep`` on no walk in progress covers (at least 1).

        1 if the entry itself is covered; else the length of the run of
        uncovered entries that starts there (see :func:`handle_removed_pt`).
        """
        sp = self.sps[sptep.pt]
        pages = KVM_PAGES_PER_HPAGE(sp.level)
        covers = self.world.walk_covers
        i = sptep.index
        if covers(sp.gfn + i * pages, pages):
            return 1
        j = i + 1
        while j < SPTE_ENT_PER_PAGE and not covers(sp.gfn + j * pages, pages):
            j += 1
        return j - i

    # -- the explorer's view --
    def _state(self):
        tables = tuple((pfn, tuple(sorted(t.items()))) for pfn, t in sorted(self.tables.items()))
        sps = tuple((pfn, sp.level, sp.gfn, sp.ptep, sp.unlinked)
                    for pfn, sp in sorted(self.sps.items()))
        return (tables, sps)

    def _load(self, st):
        tables, sps = st
        self.tables = {pfn: dict(entries) for pfn, entries in tables}
        self.sps = {pfn: KvmMmuPage(pfn, level, gfn, ptep, unlinked)
                    for pfn, level, gfn, ptep, unlinked in sps}

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
    olds = []
    for i in range(sptep.index, sptep.index + mem.span(sptep)):
        olds.append(mem.get(Sptep(sptep.pt, i)))
        mem.put(Sptep(sptep.pt, i), value)
    return tuple(olds)


def _ept_read_span(mem, args, cpu, world):
    sptep = args[0]
    return tuple(mem.get(Sptep(sptep.pt, i))
                 for i in range(sptep.index, sptep.index + mem.span(sptep)))


def _ept_alloc(mem, args, cpu, world):
    level, gfn, ptep, huge_spte = args
    pfn = mem.new_table(level, gfn, ptep)
    if huge_spte is not None:
        mem.tables[pfn] = {i: make_small_spte(huge_spte, level, i, cfg=world.cfg)
                           for i in range(SPTE_ENT_PER_PAGE)}
    return pfn


class TdpMmuWorld(World):
    """``struct kvm`` with a TDP MMU, plus the vCPUs' TLBs.

    ``vcpus`` is the number of vCPUs (each has a TLB).  Traces and views
    show the entries added with :meth:`watch_gfn`, then each TLB and
    mmu_lock.
    ``spin_on_frozen_child=False`` removes the wait of
    :func:`handle_removed_pt` (an unsafe variant, for the R3.3 scenario).

    Actors never read or write this world between two steps except for
    bookkeeping no other CPU reads during the run (page statistics, the
    processed-leaf record, the walk registry): that keeps every actor a
    function of the values its steps returned, which the explorer's
    snapshot engine relies on.
    """

    def __init__(self, vcpus: int = 2, *, cfg=EPT_AD,
                 root_level: int = PT64_ROOT_4LEVEL, spin_on_frozen_child: bool = True):
        super().__init__()
        check_int("vcpus", vcpus, 1, 8)
        check_int("root_level", root_level, 2, PT64_ROOT_4LEVEL)
        check_bool("spin_on_frozen_child", spin_on_frozen_child)
        self.cfg = cfg
        self.mmu_lock = self.rwlock("mmu_lock")
        self.ept = self._register(EptMemory(self, "EPT"))
        self.tlbs = self._register(VcpuTlbs(self, "TLBs", vcpus))
        self.root_level = root_level
        self.root_pfn = self.ept.new_table(root_level, 0, None)
        #: kvm->stat.pages[]: present leaf SPTEs per level, as KVM counts them.
        self.page_stats = {level: 0 for level in range(PG_LEVEL_4K, KVM_MAX_HUGEPAGE_LEVEL + 1)}
        #: The model's ledger of leaf lifetimes, as (gfn, level, pfn): every leaf
        #: that appeared (``installed``) and every leaf whose removal
        #: handle_changed_spte processed (``processed``).
        self.installed: list[tuple[int, int, int]] = []
        self.processed: list[tuple[int, int, int]] = []
        self.spin_on_frozen_child = spin_on_frozen_child
        #: The gfn ranges [start, end) of the TDP MMU walks in progress (tdp_walk_begin).
        self.walks: tuple[tuple[int, int], ...] = ()
        #: (name, level, sptep) of the entries traces and views show.
        self.watch: tuple[tuple[str, int, Sptep], ...] = ()

    def watch_gfn(self, gfn: int, level: int = PG_LEVEL_4K, name: str | None = None) -> Sptep:
        """Show, in traces and views, the entry that maps ``gfn`` at ``level`` now.

        The entry is fixed when this is called (its table must exist): if
        the table is later cut from the paging structure, the view keeps
        showing the same entry of the removed table.
        """
        check_int("gfn", gfn, 0, GFN_MAX)
        check_int("level", level, PG_LEVEL_4K, self.root_level)
        sptep = self.sptep_of(gfn, level)
        if sptep is None:
            raise ValueError(f"no table maps gfn {gfn:#x} at level {level} yet")
        name = name or f"{level_name(level)} SPTE of {gfn:#x}"
        self.watch += ((name, level, sptep),)
        return sptep

    @property
    def tlb(self) -> list[dict[int, TlbEntry]]:
        """The vCPUs' TLBs: ``kvm.tlb[vcpu][gfn]`` is a TlbEntry."""
        return self.tlbs.tlb

    @property
    def sps(self) -> dict[int, KvmMmuPage]:
        """Every page-table page, by pfn."""
        return self.ept.sps

    @property
    def root(self) -> KvmMmuPage:
        """The root page-table page."""
        return self.ept.sps[self.root_pfn]

    # -- plain (non-step) access: for set-up, views and invariants --
    def walk_covers(self, gfn: int, pages: int) -> bool:
        """Return True if a walk in progress covers any gfn of ``[gfn, gfn + pages)``."""
        return any(start < gfn + pages and gfn < end for start, end in self.walks)

    def get(self, sptep: Sptep) -> int:
        """Return the SPTE at ``sptep`` (no step: for views, invariants, set-up)."""
        return self.ept.get(sptep)

    def sptep_of(self, gfn: int, level: int) -> Sptep | None:
        """Return the entry that maps ``gfn`` at ``level``, if the tables down to it exist."""
        sp = self.root
        while True:
            sptep = Sptep(sp.spt, SPTE_INDEX(gfn << PAGE_SHIFT, sp.level))
            if sp.level == level:
                return sptep
            value = self.get(sptep)
            if not is_shadow_present_pte(value) or is_last_spte(value, sp.level):
                return None
            sp = self.sps[spte_to_pfn(value)]

    def walk(self, gfn: int) -> list[tuple[Sptep, int, int]]:
        """Return the hardware walk for ``gfn``: ``(sptep, value, level)`` from the root down.

        The walk stops at the first entry that is not a present non-leaf.
        """
        check_int("gfn", gfn, 0, GFN_MAX)
        path = []
        sp = self.root
        while True:
            sptep = Sptep(sp.spt, SPTE_INDEX(gfn << PAGE_SHIFT, sp.level))
            value = self.get(sptep)
            path.append((sptep, value, sp.level))
            if not is_shadow_present_pte(value) or is_last_spte(value, sp.level):
                return path
            sp = self.sps[spte_to_pfn(value)]

    def translate(self, gfn: int) -> TlbEntry | None:
        """Return what a hardware walk of the live EPT gives for ``gfn``, or None."""
        sptep, value, level = self.walk(gfn)[-1]
        if not is_shadow_present_pte(value):
            return None
        offset = gfn & (KVM_PAGES_PER_HPAGE(level) - 1)
        return TlbEntry(spte_to_pfn(value) + offset, value)

    def install(self, gfn: int, pfn: int, level: int = PG_LEVEL_4K) -> int:
        """Set-up helper: map ``gfn`` to ``pfn`` at ``level`` directly (no steps).

        Builds the missing tables with make_nonleaf_spte and the leaf with
        make_spte, as faults would have, and counts the leaf in page_stats.
        Returns the leaf SPTE.
        """
        check_int("gfn", gfn, 0, GFN_MAX)
        check_int("level", level, PG_LEVEL_4K, KVM_MAX_HUGEPAGE_LEVEL)
        sp = self.root
        while sp.level > level:
            sptep = Sptep(sp.spt, SPTE_INDEX(gfn << PAGE_SHIFT, sp.level))
            value = self.get(sptep)
            if not is_shadow_present_pte(value):
                child = self.ept.new_table(sp.level - 1, gfn_round_for_level(gfn, sp.level), sptep)
                self.ept.put(sptep, make_nonleaf_spte(child << PAGE_SHIFT, cfg=self.cfg))
                sp = self.sps[child]
            elif is_last_spte(value, sp.level):
                raise ValueError(f"gfn {gfn:#x} is already mapped by a {level_name(sp.level)} page")
            else:
                sp = self.sps[spte_to_pfn(value)]
        sptep = Sptep(sp.spt, SPTE_INDEX(gfn << PAGE_SHIFT, level))
        if is_shadow_present_pte(self.get(sptep)):
            raise ValueError(f"gfn {gfn:#x} is already mapped at level {level}")
        spte, _ = make_spte(level, ACC_ALL, pfn, cfg=self.cfg)
        self.ept.put(sptep, spte)
        self.page_stats[level] += 1
        self.installed.append((gfn_round_for_level(gfn, level), level, pfn))
        return spte

    def fill_tlb(self, vcpu: int, gfn: int) -> TlbEntry | None:
        """Set-up helper: let ``vcpu`` translate ``gfn`` once (no step)."""
        check_int("vcpu", vcpu, 0, len(self.tlb) - 1)
        check_int("gfn", gfn, 0, GFN_MAX)
        return self.tlbs.lookup(vcpu, gfn)

    # -- invariants and readable state --
    def translations(self, gfn: int) -> dict[str, int]:
        """Return every pfn ``gfn`` can be translated to now: per TLB, and the live EPT."""
        out = {}
        for vcpu, tlb in enumerate(self.tlb):
            if gfn in tlb:
                out[f"vCPU {vcpu} TLB"] = tlb[gfn].pfn
        live = self.translate(gfn)
        if live is not None:
            out["EPT"] = live.pfn
        return out

    def stale_gfns(self) -> list[int]:
        """Return the gfns that two translations map to different pfns, sorted."""
        gfns = sorted({gfn for tlb in self.tlb for gfn in tlb})
        return [gfn for gfn in gfns if len(set(self.translations(gfn).values())) > 1]

    def live_leaves(self) -> list[tuple[int, int, int]]:
        """Return the present leaves reachable from the root as (gfn, level, pfn), sorted."""
        out = []

        def visit(sp):
            pages = KVM_PAGES_PER_HPAGE(sp.level)
            for index, value in sorted(self.ept.tables[sp.spt].items()):
                if not is_shadow_present_pte(value):
                    continue
                if is_last_spte(value, sp.level):
                    out.append((sp.gfn + index * pages, sp.level, spte_to_pfn(value)))
                else:
                    visit(self.sps[spte_to_pfn(value)])
        visit(self.root)
        return sorted(out)

    def reachable_leaves(self) -> dict[int, int]:
        """Count the present leaf SPTEs reachable from the root, per level."""
        counts = {level: 0 for level in self.page_stats}
        for _, level, _ in self.live_leaves():
            counts[level] += 1
        return counts

    def removed_tables_not_frozen(self) -> list[Sptep]:
        """Return the entries of removed (unlinked) tables that are not FROZEN_SPTE."""
        out = []
        for pfn, sp in sorted(self.sps.items()):
            if sp.unlinked:
                table = self.ept.tables[pfn]
                out += [Sptep(pfn, i) for i in range(SPTE_ENT_PER_PAGE)
                        if table.get(i, SHADOW_NONPRESENT_VALUE) != FROZEN_SPTE]
        return out

    def snapshot_extra(self):
        return (tuple(sorted(self.page_stats.items())), tuple(self.installed),
                tuple(self.processed), self.walks)

    def describe_spte(self, value: int, level: int = PG_LEVEL_4K) -> str:
        """Name an SPTE value for people (see :func:`spte_name`)."""
        return spte_name(value, level, self.cfg)

    def snapshot(self) -> dict[str, str]:
        """The watched SPTEs, each vCPU's TLB and mmu_lock, as short readable strings."""
        out = {name: self.describe_spte(self.get(sptep), level)
               for name, level, sptep in self.watch}
        for vcpu in range(len(self.tlb)):
            out[f"vCPU {vcpu} TLB"] = self.tlbs.show_one(vcpu)
        out["mmu_lock"] = self.mmu_lock._show()
        return out


def run_to_completion(kvm: TdpMmuWorld, gen, cpu: str = "A"):
    """Run one actor's generator alone, every step at once; return its result.

    For worked examples and unit tests.  ``cpu`` is the letter the locks
    record.  Raises RuntimeError if the actor blocks (nobody else can run
    to unblock it) and re-raises what the model raises.
    """
    try:
        op = next(gen)
        while True:
            if op.enabled is not None and not op.enabled(op.prim, op.args, cpu, kvm):
                raise RuntimeError(f"{op.what()} blocks: {op.why_blocked(cpu, kvm)}")
            op = gen.send(op.run(op.prim, op.args, cpu, kvm))
    except StopIteration as stop:
        return stop.value


# ---------------------------------------------------------------------------
# Bookkeeping: handle_changed_spte and handle_removed_pt.
# ---------------------------------------------------------------------------
def kvm_update_page_stats(kvm: TdpMmuWorld, level: int, count: int) -> None:
    """Add ``count`` to the number of leaf SPTEs at ``level``.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_update_page_stats()
    """
    kvm.page_stats[level] += count


def handle_changed_spte(kvm: TdpMmuWorld, gfn: int, old_spte: int, new_spte: int,
                        level: int, shared: bool):
    """Do the bookkeeping for one SPTE change; free the subtree a change removed.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: handle_changed_spte()

    The model's own ledger: a leaf that appears is appended to
    ``kvm.installed`` and a leaf whose removal is processed to
    ``kvm.processed``, so a check can see that each leaf is processed once.
    """
    was_present = is_shadow_present_pte(old_spte)
    is_present = is_shadow_present_pte(new_spte)
    was_leaf = was_present and is_last_spte(old_spte, level)
    is_leaf = is_present and is_last_spte(new_spte, level)
    pfn_changed = spte_to_pfn(old_spte) != spte_to_pfn(new_spte)

    if gfn & (KVM_PAGES_PER_HPAGE(level) - 1):
        raise KernelWarn(f"handle_changed_spte: gfn {gfn:#x} not aligned to level {level}")
    # Zap, flush, then install: never one present leaf over another pfn.
    if was_leaf and is_leaf and pfn_changed:
        raise KernelWarn(f"BUG: present leaf SPTE {old_spte:#x} replaced by {new_spte:#x}, "
                         f"a different pfn (gfn {gfn:#x}, level {level})")
    if old_spte == new_spte:
        return
    if is_leaf:
        check_spte_writable_invariants(new_spte, kvm.cfg)
    if not was_present and not is_present:
        # Non-present to non-present is fine only with MMIO or a freeze.
        if not (is_mmio_spte(old_spte, kvm.cfg) or is_mmio_spte(new_spte, kvm.cfg)
                or is_frozen_spte(new_spte)):
            raise KernelWarn(f"Unexpected SPTE change: non-present {old_spte:#x} -> "
                             f"{new_spte:#x} (gfn {gfn:#x}, level {level})")
        return
    if is_leaf != was_leaf:
        kvm_update_page_stats(kvm, level, 1 if is_leaf else -1)
        if is_leaf:
            kvm.installed.append((gfn, level, spte_to_pfn(new_spte)))
        else:
            kvm.processed.append((gfn, level, spte_to_pfn(old_spte)))
    if was_present and not was_leaf and (is_leaf or not is_present or pfn_changed):
        if is_present and not is_leaf and pfn_changed:
            raise KernelWarn(f"handle_changed_spte: table pointer changed {old_spte:#x} -> "
                             f"{new_spte:#x}")
        yield from handle_removed_pt(kvm, spte_to_child_pt(old_spte, level), level - 1, gfn,
                                     shared)


def tdp_mmu_unlink_sp(kvm: TdpMmuWorld, pt: int) -> None:
    """Take a page-table page off the VM's lists (the model only marks it unlinked).

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_unlink_sp()
    """
    sp = kvm.sps.get(pt)
    if sp is not None:
        sp.unlinked = True


def handle_removed_pt(kvm: TdpMmuWorld, pt: int, level: int, base_gfn: int, shared: bool):
    """Freeze every entry of a table that was cut from the paging structure.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: handle_removed_pt()

    ``level`` and ``base_gfn`` are the table's (the kernel reads them from
    its ``struct kvm_mmu_page``; the model passes them so that an actor
    never reads shared state between two steps).

    In shared mode each entry is exchanged with FROZEN_SPTE; if the old value
    was itself FROZEN_SPTE, another thread owns the entry (an atomic zap
    between its flush and its final write), so this thread waits for that
    owner to write its value and exchanges again.  Every real old value is
    therefore seen, and processed, by exactly one thread.  The model's wait
    is one blocking step (the kernel spins on the xchg with cpu_relax(); an
    xchg that returns FROZEN_SPTE changes nothing, so the two agree).
    In exclusive mode (write lock) only present entries are frozen.

    **Merged steps.**  The kernel touches the 512 entries one by one.  An
    entry whose gfns no walk in progress covers (see :func:`tdp_walk_begin`)
    cannot be reached by any other CPU: the table is unlinked, so only
    walkers that were already under way can still hold a pointer into it,
    and a walker touches only entries over its own gfn range.  Operations
    on such entries commute with everything every other CPU does, so the
    model performs each run of them as one step (a partial-order
    reduction: the same outcomes, a handful of steps instead of 512).
    Entries that a walk covers get a step each, exactly as in the kernel.
    """
    pages = KVM_PAGES_PER_HPAGE(level)
    tdp_mmu_unlink_sp(kvm, pt)
    i = 0
    while i < SPTE_ENT_PER_PAGE:
        first = Sptep(pt, i)
        if shared:
            olds = yield from kvm.ept.xchg_span(first, FROZEN_SPTE)
        else:
            olds = yield from kvm.ept.read_span(first)
        for k, old_spte in enumerate(olds, i):
            sptep = Sptep(pt, k)
            if shared:
                # FROZEN_SPTE: another thread owns the entry; wait until its
                # owner writes the real value, then take that value.
                while is_frozen_spte(old_spte) and kvm.spin_on_frozen_child:
                    yield from wait_until(f"L{level}[{k:#x}] is not FROZEN_SPTE (spin)",
                                          partial(_not_frozen, sptep=sptep))
                    old_spte = yield from kvm_tdp_mmu_write_spte_atomic(kvm, sptep, FROZEN_SPTE)
            else:
                if not is_shadow_present_pte(old_spte):
                    continue
                old_spte = yield from kvm_tdp_mmu_write_spte(kvm, sptep, old_spte,
                                                             FROZEN_SPTE, level)
            yield from handle_changed_spte(kvm, base_gfn + k * pages, old_spte, FROZEN_SPTE,
                                           level, shared)
        i += len(olds)
    # call_rcu(): freed after every RCU walker has left; the model keeps it.


def tdp_walk_begin(kvm: TdpMmuWorld, start: int, end: int) -> None:
    """Enter a walk over ``[start, end)``: the model's rcu_read_lock() of the TDP MMU.

    The kernel's walks run inside rcu_read_lock(), which is what lets a
    walker keep using a table that another CPU has just unlinked.  The model
    also records the gfn range the walk may touch, so that
    :func:`handle_removed_pt` knows which entries no other CPU can reach.
    No step: entering a read section changes nothing another CPU can see.
    """
    kvm.walks = tuple(sorted(kvm.walks + ((start, end),)))


def tdp_walk_end(kvm: TdpMmuWorld, start: int, end: int) -> None:
    """Leave a walk over ``[start, end)``: the model's rcu_read_unlock()."""
    walks = list(kvm.walks)
    walks.remove((start, end))
    kvm.walks = tuple(walks)


# ---------------------------------------------------------------------------
# The write primitives (tdp_mmu.c, 6.17).
# ---------------------------------------------------------------------------
def _not_frozen(kvm: TdpMmuWorld, sptep: Sptep) -> bool:
    return not is_frozen_spte(kvm.get(sptep))


def __tdp_mmu_set_spte_atomic(kvm: TdpMmuWorld, it: TdpIter, new_spte: int):
    """Compare-exchange the iterator's SPTE from its snapshot; 0 or -EBUSY.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: __tdp_mmu_set_spte_atomic()

    On failure ``it.old_spte`` holds the value found, so the caller retries
    on fresh data.  Refuses (the kernel WARNs) to act on a frozen snapshot:
    only the thread that froze an SPTE may write it again.
    """
    if it.yielded or is_frozen_spte(it.old_spte):
        raise KernelWarn(f"__tdp_mmu_set_spte_atomic: the snapshot of {it.sptep} is "
                         "FROZEN_SPTE; callers must check is_frozen_spte() first")
    # try_cmpxchg64(sptep, &iter->old_spte, new_spte)
    ok, current = yield from kvm.ept.try_cmpxchg(it.sptep, it.old_spte, new_spte)
    if not ok:
        it.old_spte = current
        return -EBUSY
    return 0


def tdp_mmu_set_spte_atomic(kvm: TdpMmuWorld, it: TdpIter, new_spte: int):
    """Set an SPTE under mmu_lock held for read, then do the bookkeeping; 0 or -EBUSY.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_set_spte_atomic()
    """
    ret = yield from __tdp_mmu_set_spte_atomic(kvm, it, new_spte)
    if ret:
        return ret
    yield from handle_changed_spte(kvm, it.gfn, it.old_spte, new_spte, it.level, shared=True)
    return 0


def tdp_mmu_set_spte(kvm: TdpMmuWorld, sptep: Sptep, old_spte: int, new_spte: int,
                     gfn: int, level: int):
    """Set an SPTE under mmu_lock held for write, then do the bookkeeping; return the old value.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_set_spte()

    With the lock held for write nobody else can install an SPTE, so no
    freeze is needed, and none may be seen: FROZEN_SPTE as old or new value
    is refused (the kernel WARNs).
    """
    if is_frozen_spte(old_spte) or is_frozen_spte(new_spte):
        raise KernelWarn("tdp_mmu_set_spte: FROZEN_SPTE is for mmu_lock held for read only")
    old_spte = yield from kvm_tdp_mmu_write_spte(kvm, sptep, old_spte, new_spte, level)
    yield from handle_changed_spte(kvm, gfn, old_spte, new_spte, level, shared=False)
    return old_spte


def tdp_mmu_iter_set_spte(kvm: TdpMmuWorld, it: TdpIter, new_spte: int):
    """Set the iterator's SPTE under the write lock and refresh its snapshot.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_iter_set_spte()
    """
    it.old_spte = yield from tdp_mmu_set_spte(kvm, it.sptep, it.old_spte, new_spte,
                                              it.gfn, it.level)


# ---------------------------------------------------------------------------
# The atomic zap, up to 6.12, and the code it replaced.
# ---------------------------------------------------------------------------
def tdp_mmu_zap_spte_atomic(kvm: TdpMmuWorld, it: TdpIter):
    """Zap an SPTE under the read lock: freeze it, flush the TLBs, then make it non-present.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_zap_spte_atomic()

    The function as it stood up to Linux 6.12 (read at torvalds/linux
    @0089c055, about 6.10; REMOVED_SPTE was renamed FROZEN_SPTE in 6.11).
    While the SPTE is frozen no other thread can install anything in it, so
    no present SPTE can appear before the flush has removed every cached
    copy of the old translation.  The bookkeeping runs last, after the
    unfreeze, to keep the SPTE frozen for as short a time as possible.

    Linux 6.13 removed it (commit 35ef80eb, David Matlack, "Batch TLB flushes
    when zapping collapsible TDP MMU SPTEs"): its last user zapped SPTEs that
    a huge page of the same memory would replace, where the translation
    does not change, so no freeze is needed; those zaps now use
    tdp_mmu_set_spte_atomic() and flush once, before dropping RCU and
    mmu_lock.
    """
    ret = yield from __tdp_mmu_set_spte_atomic(kvm, it, FROZEN_SPTE)
    if ret:
        return ret
    yield from kvm_flush_remote_tlbs_gfn(kvm, it.gfn, it.level)
    # Only the freezing thread writes a frozen SPTE: a plain store suffices.
    yield from __kvm_tdp_mmu_write_spte(kvm, it.sptep, SHADOW_NONPRESENT_VALUE)
    # (The 6.10 source passes 0 as the new value here; both are non-present.)
    yield from handle_changed_spte(kvm, it.gfn, it.old_spte, SHADOW_NONPRESENT_VALUE,
                                   it.level, shared=True)
    return 0


def tdp_mmu_zap_spte_atomic_nofreeze(kvm: TdpMmuWorld, it: TdpIter):
    """UNSAFE: zap an SPTE under the read lock by making it non-present, then flush.

    Historical: arch/x86/kvm/mmu/tdp_mmu.c: the zap in kvm_tdp_mmu_map() before January 2021

    The shape before Ben Gardon's patch "kvm: x86/mmu: Flush TLBs after zap
    in TDP MMU PF handler" (January 2021): between the cmpxchg and the
    flush the SPTE is non-present *and reusable*, so another thread under
    the read lock may install a present SPTE to a different pfn while a
    vCPU still holds the old translation.  The chapter's explorer finds that
    interleaving.  (The same shape is safe in 6.13+ for collapsible zaps,
    where the new mapping has the same pfn.)
    """
    ret = yield from tdp_mmu_set_spte_atomic(kvm, it, SHADOW_NONPRESENT_VALUE)
    if ret:
        return ret
    yield from kvm_flush_remote_tlbs_gfn(kvm, it.gfn, it.level)
    return 0


# ---------------------------------------------------------------------------
# The fault path (mmu_lock held for read).
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KvmPageFault:
    """The parts of a page fault the TDP MMU reads.

    Models: arch/x86/kvm/mmu/mmu_internal.h: struct kvm_page_fault

    ``pfn`` is the host page the primary MMU gave (not faulted in here);
    ``goal_level`` the level to map at (not computed here).
    """

    gfn: int
    pfn: int
    goal_level: int = PG_LEVEL_4K
    write: bool = False
    exec: bool = False
    prefetch: bool = False
    map_writable: bool = True

    def __post_init__(self):
        check_int("gfn", self.gfn, 0, GFN_MAX)
        check_int("goal_level", self.goal_level, PG_LEVEL_4K, KVM_MAX_HUGEPAGE_LEVEL)
        check_int("pfn", self.pfn, 0, TDP_PT_PFN_BASE - 1)
        if self.pfn & (KVM_PAGES_PER_HPAGE(self.goal_level) - 1):
            raise ValueError(f"pfn must be aligned to goal_level {self.goal_level}, "
                             f"got {self.pfn:#x}")
        for name in ("write", "exec", "prefetch", "map_writable"):
            check_bool(name, getattr(self, name))


def is_access_allowed(fault: KvmPageFault, spte: int, cfg=EPT_AD) -> bool:
    """Return True if the present ``spte`` already allows the faulting access.

    Models: arch/x86/kvm/mmu/spte.h: is_access_allowed()
    """
    if fault.exec:
        return is_executable_pte(spte, cfg)
    if fault.write:
        return is_writable_pte(spte)
    return bool(spte & PT_PRESENT_MASK)


def tdp_mmu_alloc_sp(kvm: TdpMmuWorld, it: TdpIter, huge_spte: int | None = None):
    """Allocate the child table for the iterator's entry, not yet linked; return its pfn.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_alloc_sp(), tdp_mmu_init_child_sp()

    One step in the model (the page comes from the shared table allocator;
    the kernel takes it from a per-vCPU cache filled before mmu_lock).
    """
    return (yield from kvm.ept.alloc(it.level - 1, it.gfn, it.sptep, huge_spte))


def tdp_mmu_free_sp(kvm: TdpMmuWorld, pt: int) -> None:
    """Free a table that was never linked.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_free_sp()
    """
    kvm.ept.free(pt)


def tdp_mmu_link_sp(kvm: TdpMmuWorld, it: TdpIter, pt: int, shared: bool):
    """Point the iterator's entry at the new table ``pt``; 0 or -EBUSY.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_link_sp()
    """
    spte = make_nonleaf_spte(pt << PAGE_SHIFT, cfg=kvm.cfg)
    if shared:
        ret = yield from tdp_mmu_set_spte_atomic(kvm, it, spte)
        if ret:
            return ret
    else:
        yield from tdp_mmu_iter_set_spte(kvm, it, spte)
    return 0


def tdp_mmu_split_huge_page(kvm: TdpMmuWorld, it: TdpIter, pt: int, shared: bool):
    """Link ``pt``, already filled with the small SPTEs of the huge SPTE at ``it``; 0 or -EBUSY.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_split_huge_page()

    The model fills the table when allocating it (:func:`tdp_mmu_alloc_sp`
    with ``huge_spte``): it is private until linked.  The translation does
    not change, so no TLB flush is needed.
    """
    huge_spte = it.old_spte
    ret = yield from tdp_mmu_link_sp(kvm, it, pt, shared)
    if ret:
        return ret
    kvm_update_page_stats(kvm, it.level - 1, SPTE_ENT_PER_PAGE)
    pages = KVM_PAGES_PER_HPAGE(it.level - 1)
    kvm.installed += [(it.gfn + i * pages, it.level - 1, spte_to_pfn(huge_spte) + i * pages)
                      for i in range(SPTE_ENT_PER_PAGE)]
    return 0


def tdp_mmu_map_handle_target_level(kvm: TdpMmuWorld, fault: KvmPageFault, it: TdpIter):
    """Install the leaf SPTE for a fault at the goal level; return a RET_PF_* code.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_map_handle_target_level()

    6.17 behaviour: a present leaf that already allows the access is left
    alone and the fault is RET_PF_SPURIOUS (the early check was added about
    6.12/6.13; before it the SPTE was rebuilt and compared).
    """
    ret = RET_PF_FIXED
    old = it.old_spte
    if (is_shadow_present_pte(old) and (fault.prefetch or is_access_allowed(fault, old, kvm.cfg))
            and is_last_spte(old, it.level)):
        if fault.pfn != spte_to_pfn(old):
            raise KernelWarn(f"spurious fault for gfn {fault.gfn:#x} finds pfn "
                             f"{spte_to_pfn(old):#x}, expected {fault.pfn:#x}")
        return RET_PF_SPURIOUS
    new_spte, wrprot = make_spte(it.level, ACC_ALL, fault.pfn, cfg=kvm.cfg,
                                 prefetch=fault.prefetch, synchronizing=False,
                                 host_writable=fault.map_writable, old_spte=old)
    if new_spte == old:
        ret = RET_PF_SPURIOUS
    elif (yield from tdp_mmu_set_spte_atomic(kvm, it, new_spte)):
        return RET_PF_RETRY
    elif is_shadow_present_pte(old):
        if not is_last_spte(old, it.level):
            yield from kvm_flush_remote_tlbs_gfn(kvm, it.gfn, it.level)
        elif leaf_spte_change_needs_tlb_flush(old, new_spte, kvm.cfg):
            raise KernelWarn("a fault removed MMU-writable from a leaf SPTE")
    if wrprot and fault.write:
        ret = RET_PF_WRITE_PROTECTED
    return ret


def kvm_tdp_mmu_map(kvm: TdpMmuWorld, fault: KvmPageFault):
    """Handle a TDP page fault under mmu_lock held for read; return a RET_PF_* code.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_map()

    Walks from the root towards ``fault.gfn``, linking missing tables (and
    splitting huge pages above the goal level) with compare-exchange; gives
    up with RET_PF_RETRY on a frozen SPTE or a lost compare-exchange, so
    the guest re-executes the access and faults again.
    """
    ret = RET_PF_RETRY
    end = fault.gfn + 1
    tdp_walk_begin(kvm, fault.gfn, end)                # rcu_read_lock()
    it = yield from tdp_iter_start(kvm, kvm.root_pfn, kvm.root_level, PG_LEVEL_4K, fault.gfn)
    while it.valid and it.gfn < end:
        # Someone owns this SPTE: retry rather than allocate and free a table.
        if is_frozen_spte(it.old_spte):
            break
        if it.level == fault.goal_level:
            ret = yield from tdp_mmu_map_handle_target_level(kvm, fault, it)
            break
        if not (is_shadow_present_pte(it.old_spte) and not is_large_pte(it.old_spte)):
            # Non-present, or a huge page to split: link a new table.
            if is_shadow_present_pte(it.old_spte):
                pt = yield from tdp_mmu_alloc_sp(kvm, it, huge_spte=it.old_spte)
                r = yield from tdp_mmu_split_huge_page(kvm, it, pt, shared=True)
            else:
                pt = yield from tdp_mmu_alloc_sp(kvm, it)
                r = yield from tdp_mmu_link_sp(kvm, it, pt, shared=True)
            if r:
                # Another CPU changed the SPTE: let the guest fault again.
                tdp_mmu_free_sp(kvm, pt)
                break
        yield from tdp_iter_next(kvm, it, end)
    # (A walk that ends in the loop condition could not step into an entry
    # zapped meanwhile: RET_PF_RETRY too.)
    tdp_walk_end(kvm, fault.gfn, end)                  # rcu_read_unlock()
    return ret


def kvm_tdp_mmu_page_fault(kvm: TdpMmuWorld, fault: KvmPageFault):
    """Take mmu_lock for read, map the fault, drop the lock; return a RET_PF_* code.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_mmu_page_fault()

    Without ``kvm_mmu_faultin_pfn`` (the pfn is in ``fault``) and without
    the staleness check against mmu_notifier invalidations.
    """
    yield from kvm.mmu_lock.read_lock()
    ret = yield from kvm_tdp_mmu_map(kvm, fault)
    yield from kvm.mmu_lock.read_unlock()
    return ret


# ---------------------------------------------------------------------------
# Zaps.
# ---------------------------------------------------------------------------
def zap_spte_shared(kvm: TdpMmuWorld, gfn: int, level: int = PG_LEVEL_4K, freeze: bool = True):
    """Zap the SPTE mapping ``gfn`` at ``level`` under mmu_lock held for read; True if zapped.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: __tdp_mmu_zap_root()

    The kernel's shared-mode zap loop (as in __tdp_mmu_zap_root() of 6.17),
    reduced to the SPTE of one gfn at one level, zapping it the <= 6.12 way
    (:func:`tdp_mmu_zap_spte_atomic`): skip an entry that is not present (a
    FROZEN_SPTE is not present: its owner is zapping it already); on -EBUSY
    look at the refreshed snapshot and try again.  ``freeze=False`` uses the
    unsafe pre-2021 zap.  In the kernel such zaps ran for huge pages in the
    fault path (2021), NX huge page recovery and collapsible SPTEs.
    """
    check_int("gfn", gfn, 0, GFN_MAX)
    check_int("level", level, PG_LEVEL_4K, kvm.root_level)
    check_bool("freeze", freeze)
    zap = tdp_mmu_zap_spte_atomic if freeze else tdp_mmu_zap_spte_atomic_nofreeze
    zapped = False
    end = gfn + 1
    yield from kvm.mmu_lock.read_lock()
    tdp_walk_begin(kvm, gfn, end)                      # rcu_read_lock()
    it = yield from tdp_iter_start(kvm, kvm.root_pfn, kvm.root_level, level, gfn)
    while it.valid and it.gfn < end:
        if it.level == level:
            # A FROZEN_SPTE is not present: its owner is zapping it already.
            while is_shadow_present_pte(it.old_spte):
                if (yield from zap(kvm, it)) == 0:
                    zapped = True
                    break
                # -EBUSY: it.old_spte now holds the value found; look again.
        yield from tdp_iter_next(kvm, it, end)
    tdp_walk_end(kvm, gfn, end)                        # rcu_read_unlock()
    yield from kvm.mmu_lock.read_unlock()
    return zapped


def tdp_mmu_zap_leafs(kvm: TdpMmuWorld, start: int, end: int, flush: bool):
    """Zap the leaf SPTEs mapping ``[start, end)`` under the write lock; True if a flush is due.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: tdp_mmu_zap_leafs()

    Under the write lock nobody can install an SPTE, so a plain write of
    SHADOW_NONPRESENT_VALUE is enough; the caller flushes before unlocking.
    """
    tdp_walk_begin(kvm, start, end)                    # rcu_read_lock()
    it = yield from tdp_iter_start(kvm, kvm.root_pfn, kvm.root_level, PG_LEVEL_4K, start)
    while it.valid and it.gfn < end:
        if is_shadow_present_pte(it.old_spte) and is_last_spte(it.old_spte, it.level):
            yield from tdp_mmu_iter_set_spte(kvm, it, SHADOW_NONPRESENT_VALUE)
            flush = True
        yield from tdp_iter_next(kvm, it, end)
    tdp_walk_end(kvm, start, end)                      # rcu_read_unlock()
    return flush


def zap_gfn_range_exclusive(kvm: TdpMmuWorld, start: int, end: int):
    """Zap ``[start, end)`` with mmu_lock held for write, flushing before unlock; True if zapped.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_zap_leafs()
    """
    check_int("start", start, 0, GFN_MAX)
    check_int("end", end, start + 1, GFN_MAX + 1)
    yield from kvm.mmu_lock.write_lock()
    flush = yield from tdp_mmu_zap_leafs(kvm, start, end, False)
    if flush:
        yield from kvm_flush_remote_tlbs_range(kvm, start, end - start)
    yield from kvm.mmu_lock.write_unlock()
    return flush


# ---------------------------------------------------------------------------
# The vCPU side (hardware).
# ---------------------------------------------------------------------------
def vcpu_access(kvm: TdpMmuWorld, vcpu: int, gfn: int):
    """One guest access by ``vcpu`` to ``gfn``: TLB hit, or EPT walk and TLB fill; None = EPT violation.

    The CPU, not KVM: one step, because a remote flush waits until the vCPU
    has left guest mode and so never lands in the middle of a walk.
    """
    check_int("vcpu", vcpu, 0, len(kvm.tlb) - 1)
    check_int("gfn", gfn, 0, GFN_MAX)
    return (yield from kvm.tlbs.access(vcpu, gfn))


def vcpu_run(kvm: TdpMmuWorld, vcpu: int, gfn: int, pfn: int, level: int = PG_LEVEL_4K):
    """A vCPU touches ``gfn``; on an EPT violation it faults (mapping ``pfn``) and touches it again.

    Returns ``"hit <pfn>"`` or the fault's RET_PF_* name followed by what
    the second access found.  One fault at most: a RET_PF_RETRY would make
    the guest fault again later, which the actor does not wait for.
    """
    hit = yield from vcpu_access(kvm, vcpu, gfn)
    if hit is not None:
        return f"hit {hit.pfn:#x}"
    ret = yield from kvm_tdp_mmu_page_fault(kvm, KvmPageFault(gfn, pfn, level))
    hit = yield from vcpu_access(kvm, vcpu, gfn)
    return f"{ret_pf_name(ret)}, then " + (f"hit {hit.pfn:#x}" if hit else "EPT violation")


# ---------------------------------------------------------------------------
# Plain wrappers for worked examples.
# ---------------------------------------------------------------------------
def map_gfn(kvm: TdpMmuWorld, gfn: int, pfn: int, level: int = PG_LEVEL_4K) -> int:
    """Fault ``gfn`` in (to ``pfn``) with nobody else running; return the RET_PF_* code."""
    return run_to_completion(kvm, kvm_tdp_mmu_page_fault(kvm, KvmPageFault(gfn, pfn, level)))


def zap_gfn(kvm: TdpMmuWorld, gfn: int, level: int = PG_LEVEL_4K, freeze: bool = True) -> bool:
    """Zap the SPTE of ``gfn`` at ``level`` under the read lock, alone; True if zapped."""
    return run_to_completion(kvm, zap_spte_shared(kvm, gfn, level, freeze))


def access(kvm: TdpMmuWorld, vcpu: int, gfn: int) -> TlbEntry | None:
    """Let ``vcpu`` touch ``gfn`` once, alone; the translation used, or None (EPT violation)."""
    return run_to_completion(kvm, vcpu_access(kvm, vcpu, gfn))
