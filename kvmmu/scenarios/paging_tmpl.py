"""Chapter 5's races: A/D updates against a guest's PTE write, pfn caches against a hole punch.

The actors run the model's own walkers (:mod:`kvmmu.paging_tmpl`, 6.17,
and :mod:`kvmmu.paging_tmpl_rfc`, the RFC) and pfn caches
(:mod:`kvmmu.pfncache`) on the one VM, against the guest (which clears its
leaf entry) or the VMM (which punches a hole over the page-table page, in
its shared memory through the MMU notifier, or in guest_memfd):

- ``ad-*``: KVM walks and sets A/D while the guest clears the leaf
  entry; the compare-exchange must not resurrect it, and the translation
  KVM returns must be one the entry really held;
- ``seed-retry-*``: the seed's retry, a hole punched over the last-level
  table between the RFC walker's read and its A/D write;
- ``gpc-refresh-vs-invalidation``: a cache refresh against a hole
  punched in the page it is looking up.

The world (:func:`race_world`) is a VM whose vCPU maps :data:`RACE_GVA`
through four tables (upper entries P W U A, the leaf P W U with A and D
clear), plus a watch of what the checks need: the value the guest replaced
and the leaf table's original page.

**Where the model simplifies.**  One fixed 4-level mapping, two actors,
memslots that no race changes.  For the RFC walker the three upper tables
sit in a read-only slot with A preset, so only the last level goes through
a pfn cache, which keeps the exhaustive searches small.  The TDP MMU's zap
and guest_memfd's invalidation bracket are one step each (``zoom``): the
chapter does not teach them.
"""
from __future__ import annotations

from ..checks import check_bool, check_choice, check_int
from ..explorer import Actor, Invariant, Primitive, Scenario, step
from ..guest import (HOST, GuestPageTables, gpte_str, guest_page, guest_read_u64, guest_vm,
                     guest_write_u64)
from ..guest_memfd import kvm_gmem_punch_hole
from ..host_mm import EntryPtr, Hex, host_translation, punch_hole
from ..kvm_host import Kvm
from ..levels import PAGE_SHIFT, PAGE_SIZE
from ..memslots import KVM_MEM_GUEST_MEMFD, KVM_MEM_READONLY
from ..mmu_permissions import KvmVcpuArch
from ..paging_tmpl import (PAGING64, PAGING64_BLIND_AD, PT_INDEX, GuestWalker, check_access,
                           walk_addr_generic)
from ..paging_tmpl_rfc import walk_addr_generic as rfc_walk_addr_generic
from ..paging_tmpl_rfc import walker_gpcs
from ..pferr import PFERR_WRITE_MASK, pferr_str
from ..pfncache import kvm_gpc_activate, kvm_gpc_create
from ..spte import PT_ACCESSED_MASK, PT_PRESENT_MASK, PT_USER_MASK, PT_WRITABLE_MASK
from . import ScenarioEntry

__all__ = [
    "RACE_GVA", "RACE_TABLE_GFNS", "RACE_DATA_GFN", "RACE_LEAF", "RACE_UPPER", "VARIANTS",
    "RACE_INVARIANTS", "WalkResult", "RaceWatch", "race_world", "kvm_walk_actor",
    "guest_unmap_actor", "vmm_punch_hole_actor", "ad_race_scenario", "gpc_race_scenario",
    "gpc_refresh_scenario", "SCENARIOS",
]

P, W, U, A = PT_PRESENT_MASK, PT_WRITABLE_MASK, PT_USER_MASK, PT_ACCESSED_MASK

#: The address every race walks, and where its tables live.
RACE_GVA = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123
RACE_TABLE_GFNS = (0x100, 0x101, 0x102, 0x103)       # PML4, PDPT, PD, PT
RACE_DATA_GFN = 0x455
#: The entries on the path: upper ones P W U A, the leaf P W U (A and D clear).
RACE_UPPER = P | W | U | A
RACE_LEAF = P | W | U | (RACE_DATA_GFN << PAGE_SHIFT)
_LEAF_TABLE = RACE_TABLE_GFNS[3]
_LEAF_GPA = (_LEAF_TABLE << PAGE_SHIFT) + 8 * PT_INDEX(RACE_GVA, 1)
_ENTRY_GPAS = {level: (table << PAGE_SHIFT) + 8 * PT_INDEX(RACE_GVA, level)
               for level, table in zip((4, 3, 2, 1), RACE_TABLE_GFNS)}
#: The guest_memfd file that backs the leaf table in the private worlds (guest_vm's first).
_GMEM = "gmem0"

#: The KVM actor's walkers: 6.17, its unsafe blind A/D write, the RFC as
#: posted, with the chapter's two fixes, and fixed but without the check.
VARIANTS = ("6.17", "blind", "rfc", "rfc-fixed", "rfc-nocheck")

RACE_INVARIANTS = ("the guest's cleared entry is never made present again",
                   "KVM never touches a freed page")

#: What the chapter does not teach runs as one step: the TDP MMU's zap, guest_memfd's
#: invalidation bracket, its truncation and its pfn lookup.  (The last two
#: take the folio lock; zoomed both, neither holds it across a step, so
#: neither can wait inside its one step.)
_ZOOM = frozenset({"kvm_handle_hva_range", "kvm_gmem_invalidate_begin",
                   "kvm_gmem_invalidate_end", "truncate_inode_pages_range", "kvm_gmem_get_pfn"})

_ARCH: list = []


def _race_arch() -> KvmVcpuArch:
    # One register value for every race world (its MMU context built once).
    if not _ARCH:
        _ARCH.append(KvmVcpuArch(cr3=RACE_TABLE_GFNS[0] << PAGE_SHIFT))
    return _ARCH[0]


class WalkResult(tuple):
    """What a KVM actor returns: ``(ret, gfn or error code, leaf gpte as walked)``."""

    def __new__(cls, ret: int, value: int, leaf: int):
        check_choice("ret", ret, (0, 1))
        check_int("value", value, 0, (1 << 64) - 1)
        check_int("leaf", leaf, 0, (1 << 64) - 1)
        return super().__new__(cls, (ret, value, leaf))

    @property
    def ok(self) -> bool:
        return self[0] == 1

    def __repr__(self) -> str:
        if self[0] == 1:
            return f"gfn {self[1]:#x} via leaf {self[2]:#x}"
        return f"#PF error code {self[1]:#x} [{pferr_str(self[1])}]"


class RaceWatch(Primitive):
    """What the checks need beyond the VM: the value the guest replaced in the leaf (0: none yet).

    A shared object of the race world; ``table_pfn0`` (the leaf table's
    first page) is set-up, not state.
    """

    _sealed = True
    __slots__ = ("replaced", "table_pfn0")

    def __init__(self, world, table_pfn0: int):
        _check_race_world(world)
        check_int("table_pfn0", table_pfn0, 0)
        super().__init__(world, "race watch")
        self.replaced = 0
        self.table_pfn0 = table_pfn0

    def _state(self):
        return self.replaced

    def _load(self, st):
        self.replaced = st

    def _show(self):
        return f"guest replaced {self.replaced:#x}" if self.replaced else "guest has not written"


def _check_race_world(w) -> None:
    if not isinstance(w, Kvm):
        raise TypeError(f"the world must be a Kvm (race_world()), got {type(w).__name__}")


def _describe_gpte(value: int) -> str:
    return f"{value:#x} ({gpte_str(value)})"


def _uaf_reports(kvm) -> str:
    bad = [str(b) for b in kvm.mm.mem.bad_reads] + [m for m in kvm.warnings
                                                     if m.startswith("KASAN")]
    return "; ".join(bad) if bad else "none"


def race_world(*, rom_upper: bool = False, private_tables: bool = False,
               kvm_can_access_gmem: bool = True, gpc_gmem: str | None = None,
               rfc: bool = False):
    """A VM whose vCPU maps :data:`RACE_GVA` (the tables at gfns 0x100-0x103).

    Slot 0 is RAM below the tables; slot 1 holds the three upper tables (a
    ROM with ``rom_upper``); slot 2 the leaf table and the data page
    (guest_memfd, private, with ``private_tables``).  ``gpc_gmem`` defaults
    to "rfc" for private tables; ``rfc`` gives the vCPU its walker's pfn
    caches.  Guest frame ``g`` sits at hva ``HOST + g * 4096``.
    """
    for name, value in (("rom_upper", rom_upper), ("private_tables", private_tables),
                        ("kvm_can_access_gmem", kvm_can_access_gmem), ("rfc", rfc)):
        check_bool(name, value)
    if gpc_gmem is None:
        gpc_gmem = "rfc" if private_tables else "6.17"
    low, leaf = RACE_TABLE_GFNS[0], _LEAF_TABLE
    regions = [(0, low, HOST),
               (low, leaf - low, HOST + (low << PAGE_SHIFT), KVM_MEM_READONLY if rom_upper else 0),
               (leaf, 0x800 - leaf, HOST + (leaf << PAGE_SHIFT),
                KVM_MEM_GUEST_MEMFD if private_tables else 0)]
    vcpu = guest_vm(regions, kvm_can_access_gmem=kvm_can_access_gmem, gpc_gmem=gpc_gmem,
                    zoom=_ZOOM)
    kvm = vcpu.kvm
    pt = GuestPageTables(kvm, RACE_TABLE_GFNS, vmm=True)
    pt.map(RACE_GVA & ~(PAGE_SIZE - 1), RACE_DATA_GFN << PAGE_SHIFT, flags=P | W | U,
           table_flags=RACE_UPPER)
    vcpu.arch = _race_arch()
    if rfc:
        walker_gpcs(vcpu)
    kvm.race_watch = kvm._register(RaceWatch(kvm, guest_page(kvm, leaf)))
    kvm.watch("leaf gpte", lambda k: _describe_gpte(guest_read_u64(k, _LEAF_GPA)), only=True)
    kvm.watch("table pfn", _table_pfn_text)
    kvm.watch("use after free", _uaf_reports)
    kvm.watch("dirty", lambda k: "{" + ", ".join(f"{g:#x}" for g in sorted(k.fields.dirty)) + "}")
    return kvm


def _table_pfn_text(kvm) -> str:
    pfn = guest_page(kvm, _LEAF_TABLE)
    return "none" if pfn is None else f"{pfn:#x}"


# ---------------------------------------------------------------------------
# The cast
# ---------------------------------------------------------------------------
def kvm_walk_actor(variant: str, access: int = PFERR_WRITE_MASK):
    """An explorer actor: KVM walks :data:`RACE_GVA` on vCPU 0 with one of :data:`VARIANTS`."""
    check_choice("variant", variant, VARIANTS)
    check_access(access)
    mmu = _race_arch().walk_mmu

    def walk(walker, vcpu):
        if variant == "6.17":
            return walk_addr_generic(walker, vcpu, mmu, RACE_GVA, access, PAGING64)
        if variant == "blind":
            return walk_addr_generic(walker, vcpu, mmu, RACE_GVA, access, PAGING64_BLIND_AD)
        return rfc_walk_addr_generic(walker, vcpu, mmu, RACE_GVA, access,
                                     as_posted=variant == "rfc",
                                     check_gpc=variant != "rfc-nocheck")

    def actor(w):
        walker = GuestWalker()
        # (the step generator is not kept in a local: the explorer would
        # freeze it twice into every state key)
        ret = yield from walk(walker, w.vcpus[0])
        if ret:
            return WalkResult(1, walker.gfn, walker.ptes[walker.level - 1])
        return WalkResult(0, walker.fault.error_code, 0)
    actor.__name__ = f"kvm_walk_{variant.replace('-', '_').replace('.', '_')}"
    return actor


def _guest_clears_leaf(w) -> int:
    old = guest_read_u64(w, _LEAF_GPA)
    guest_write_u64(w, _LEAF_GPA, 0)
    w.race_watch.replaced = old
    return Hex(old)                     # (the value it replaced, shown in hex)


def guest_unmap_actor(w):
    """An explorer actor: the guest, on vCPU 1, clears the leaf entry (munmap)."""
    _check_race_world(w)
    yield from step("guest: leaf gpte := 0 (munmap)", lambda: _guest_clears_leaf(w))


def vmm_punch_hole_actor(w):
    """An explorer actor: the VMM punches a hole over the leaf page table.

    Shared tables: ``fallocate(PUNCH_HOLE)`` on the VMM's memory (the MMU
    notifier); private tables: a hole in guest_memfd.
    """
    _check_race_world(w)
    if _GMEM in w._prim_names:
        yield from kvm_gmem_punch_hole(w, w.primitive(_GMEM), 0, 1)
    else:
        hva = HOST + (_LEAF_TABLE << PAGE_SHIFT)
        yield from punch_hole(w.mm, hva, hva + PAGE_SIZE)


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------
def _never_resurrected(w) -> bool:
    # once the guest cleared the entry, nobody but the guest may make it present
    return not (w.race_watch.replaced and guest_read_u64(w, _LEAF_GPA) & P)


def _no_use_after_free(w) -> bool:
    return not w.mm.mem.bad_reads and not any(m.startswith("KASAN") for m in w.warnings)


def _original_leaf(w) -> int:
    # what the leaf table's first page holds now, freed or not (KVM or the guest wrote it)
    return w.mm.mem.peek(EntryPtr(w.race_watch.table_pfn0, PT_INDEX(RACE_GVA, 1)))


def _held(w) -> list[int]:
    # Every value the leaf entry held: the writers are the guest (one store,
    # whose old value the watch kept) and KVM (at most one A/D write per
    # entry), so these are all of them.
    values = [RACE_LEAF, _original_leaf(w), guest_read_u64(w, _LEAF_GPA)]
    if w.race_watch.replaced:
        values.append(w.race_watch.replaced)
    return sorted(set(values))


def _tables_kvm_wrote(w) -> list[int]:
    wrote = [gfn for level, gfn in zip((4, 3, 2), RACE_TABLE_GFNS)
             if guest_read_u64(w, _ENTRY_GPAS[level]) != (RACE_UPPER | (RACE_TABLE_GFNS[5 - level]
                                                                          << PAGE_SHIFT))]
    if w.race_watch.replaced not in (0, RACE_LEAF) or _original_leaf(w) not in (0, RACE_LEAF):
        wrote.append(_LEAF_TABLE)
    return wrote


def _final_backed(w, results):
    # The translation KVM reports must come from a value the entry really
    # held, and every table KVM wrote must be in the dirty log.
    res = results.get("A")
    held = _held(w)
    if res is not None and res.ok and res[2] not in held:
        return (f"KVM translated through leaf {res[2]:#x}, a value the entry never held "
                f"(it held {', '.join(hex(v) for v in held)})")
    missing = [g for g in _tables_kvm_wrote(w) if g not in w.fields.dirty]
    if missing:
        return (f"KVM wrote A/D bits in table gfn(s) {', '.join(hex(g) for g in missing)} "
                "but did not log them dirty")
    return True


# ---------------------------------------------------------------------------
# The scenarios
# ---------------------------------------------------------------------------
def ad_race_scenario(variant: str = "6.17", access: int = PFERR_WRITE_MASK, *,
                     rom_upper: bool | None = None) -> Scenario:
    """KVM walks (and sets A/D) while the guest clears the leaf entry.

    Checks after every step that a cleared entry stays cleared, and at the
    end that KVM's translation is backed by a value the entry held and that
    the tables KVM wrote are logged dirty.  ``rom_upper`` (default: for the
    RFC variants) as in :func:`race_world`.
    """
    check_choice("variant", variant, VARIANTS)
    check_access(access)
    rfc = variant.startswith("rfc")
    rom_upper = rfc if rom_upper is None else check_bool("rom_upper", rom_upper)
    return Scenario(
        f"A/D compare-exchange vs guest PTE write ({variant})",
        lambda: race_world(rom_upper=rom_upper, rfc=rfc),
        [Actor("A", f"KVM walk, {variant}", kvm_walk_actor(variant, access)),
         Actor("B", "guest vCPU", guest_unmap_actor)],
        invariants=[Invariant(RACE_INVARIANTS[0], _never_resurrected,
                              reads=("race watch", "memslots", "host memory", "gmem0")),
                    Invariant(RACE_INVARIANTS[1], _no_use_after_free,
                              reads=[("host memory", "bad_reads"), ("kvm", "warnings")])],
        final_check=_final_backed)


def gpc_race_scenario(variant: str = "rfc-fixed", *, private_tables: bool = True,
                      access: int = PFERR_WRITE_MASK, gpc_gmem: str | None = None) -> Scenario:
    """The seed's retry: a hole punched over the leaf table between its read and its A/D write.

    The KVM actor reads every level through pfn caches (an RFC variant);
    the VMM punches a hole over the last-level table page (in guest_memfd
    when ``private_tables``, else in its shared memory).  No step may touch
    a freed page; the final checks are those of :func:`ad_race_scenario`.
    ``gpc_gmem`` "rfc-uncounted" leaves out the hole punch's
    ``mn_active_invalidate_count`` bracket.
    """
    check_choice("variant", variant, ("rfc", "rfc-fixed", "rfc-nocheck"))
    check_bool("private_tables", private_tables)
    check_access(access)
    where = "guest_memfd" if private_tables else "shared memory"
    return Scenario(
        f"pfn-cache walk vs hole punch in {where} ({variant})",
        lambda: race_world(rom_upper=True, private_tables=private_tables, gpc_gmem=gpc_gmem,
                           rfc=True),
        [Actor("A", f"KVM walk, {variant}", kvm_walk_actor(variant, access)),
         Actor("B", f"VMM punch hole ({where})", vmm_punch_hole_actor)],
        invariants=[Invariant(RACE_INVARIANTS[1], _no_use_after_free,
                              reads=[("host memory", "bad_reads"), ("kvm", "warnings")])],
        final_check=_final_backed)


def _refresh_world():
    kvm = race_world()
    kvm_gpc_create(kvm, "gpc")
    return kvm


def _refresh_actor(w):
    return (yield from kvm_gpc_activate(w.primitive("gpc"), _LEAF_GPA, 8))


def _coherent(w) -> bool:
    # a valid cache maps the page the VMM's mapping holds now
    gpc = w.primitive("gpc")
    if not gpc.valid:
        return True
    found = host_translation(w.mm, gpc.uhva - gpc.uhva % PAGE_SIZE)
    return found is not None and found[0] == gpc.pfn


def gpc_refresh_scenario() -> Scenario:
    """a pfn cache is activated (and refreshed) while the VMM punches a hole in its page."""
    return Scenario(
        "gpc refresh vs invalidation", _refresh_world,
        [Actor("A", "kvm_gpc_activate + refresh", _refresh_actor),
         Actor("B", "VMM punch hole", vmm_punch_hole_actor)],
        invariants=[Invariant("a valid cache maps the page the VMM maps", _coherent,
                              reads=("gpc", "host memory")),
                    Invariant(RACE_INVARIANTS[1], _no_use_after_free,
                              reads=[("host memory", "bad_reads"), ("kvm", "warnings")])])


SCENARIOS = {
    "ad-cmpxchg": ScenarioEntry(
        lambda: ad_race_scenario("6.17"), 5,
        "6.17's A/D compare-exchange while the guest clears the PTE: the walk restarts"),
    "ad-cmpxchg-read": ScenarioEntry(
        lambda: ad_race_scenario("6.17", access=0), 5,
        "the same for a read (A only)"),
    "ad-blind-write": ScenarioEntry(
        lambda: ad_race_scenario("blind"), 5,
        "A/D written with a plain store: the guest's cleared PTE comes back", "violated"),
    "ad-rfc-as-posted": ScenarioEntry(
        lambda: ad_race_scenario("rfc"), 5,
        "the RFC walker as posted: __try_cmpxchg's result read the wrong way round",
        "violated"),
    "ad-rfc-fixed": ScenarioEntry(
        lambda: ad_race_scenario("rfc-fixed"), 5,
        "the RFC walker with the result converted"),
    "seed-retry-gmem": ScenarioEntry(
        lambda: gpc_race_scenario("rfc-fixed"), 5,
        "the seed's retry: a guest_memfd hole under the RFC walker's pfn cache"),
    "seed-retry-shared": ScenarioEntry(
        lambda: gpc_race_scenario("rfc-fixed", private_tables=False), 5,
        "the same with the table in shared memory (the MMU notifier)"),
    "seed-retry-no-check": ScenarioEntry(
        lambda: gpc_race_scenario("rfc-nocheck"), 5,
        "no kvm_gpc_check before the A/D write: a write into a freed page", "violated"),
    "seed-retry-no-check-shared": ScenarioEntry(
        lambda: gpc_race_scenario("rfc-nocheck", private_tables=False), 5,
        "the same in shared memory", "violated"),
    "seed-retry-uncounted": ScenarioEntry(
        lambda: gpc_race_scenario("rfc-fixed", gpc_gmem="rfc-uncounted"), 5,
        "the guest_memfd hook without mn_active_invalidate_count: a refresh slips through",
        "violated"),
    "gpc-refresh-vs-invalidation": ScenarioEntry(
        gpc_refresh_scenario, 5,
        "hva_to_pfn_retry retries while the notifier invalidates the page"),
}
