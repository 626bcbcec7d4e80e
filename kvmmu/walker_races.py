"""Chapter 5's races on the explorer: A/D updates vs guest PTE writes, pfn caches vs hole punches.

No kernel counterpart: the scenarios that put the walkers of
:mod:`kvmmu.walker_ops` and :mod:`kvmmu.walker_gpc` against another CPU.

- :func:`ad_race_scenario` (R5.1): KVM walks and sets A/D while the guest
  clears the leaf entry; the compare-exchange must not resurrect it.
- :func:`gpc_race_scenario`: the seed's retry -- a hole punched over the
  last-level table between the RFC walker's read and its A/D write.

:class:`WalkRaceWorld` is guest memory on the explorer with ghost state
(every value the leaf entry took, every table KVM wrote) for the checks.

**Where the model simplifies.**  One fixed 4-level mapping
(:data:`RACE_GVA`), two actors, memslots that no race changes; the world is
built on first use so that importing this module does not import the
explorer.
"""
from functools import partial

from .guest_memory import GuestMemory
from .guest_paging import (PFERR_WRITE_MASK, PT_INDEX, PT_MAX_FULL_LEVELS, Vcpu, gpte_str,
                           pferr_str)
from .levels import PAGE_SHIFT, PAGE_SIZE
from .memslots import KVM_MEM_READONLY
from .pfncache import GfnToPfnCache
from .spte import PT_ACCESSED_MASK, PT_PRESENT_MASK, PT_USER_MASK, PT_WRITABLE_MASK
from .walker import GuestWalker, check_access
from .walker_gpc import update_accessed_dirty_bits_gpc_ops, walk_addr_generic_gpc_ops
from .walker_ops import update_accessed_dirty_bits_blind_ops, walk_addr_generic_ops


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
    # Built on first use so importing kvmmu.walker_races does not import the explorer.
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
