"""The VM and its vCPUs: one ``struct kvm`` that every mechanism of the book shares.

Models: include/linux/kvm_host.h: struct kvm, struct kvm_vcpu
Models: include/linux/kvm_host.h: mmu_invalidate_retry_gfn(), mmu_invalidate_retry_gfn_unsafe(), mmu_invalidate_retry()
Models: include/linux/kvm_host.h: kvm_make_request(), kvm_test_request(), kvm_check_request()
Models: virt/kvm/kvm_main.c: kvm_mmu_invalidate_begin(), kvm_mmu_invalidate_range_add(), kvm_mmu_invalidate_end()
Models: virt/kvm/kvm_main.c: kvm_mmu_unmap_gfn_range(), hva_to_pfn(), kvm_vcpu_mark_page_dirty(), mark_page_dirty_in_slot()
Models: virt/kvm/pfncache.c: gfn_to_pfn_cache_invalidate_start()
Models: arch/x86/kvm/mmu/mmu.c: kvm_unmap_gfn_range()

Reference version: Linux 6.17 (read at v6.17-rc3).

:class:`Kvm` is the explorer's world (:class:`kvmmu.explorer.World`): all
its shared state is held by shared objects of the explorer, so a race
scenario and a plain call (``run_alone(kvm, ...)``) run on the same VM.  It
has

- the host process's address space, ``mm`` (:mod:`kvmmu.host_mm`), whose
  MMU notifier KVM subscribes to when the VM is created
  (``kvm_main.kvm_create_vm``);
- the memslots, two sets per address space, and the memory attributes
  (``memslot_state``, :mod:`kvmmu.memslots`), with ``kvm->srcu``,
  ``slots_lock`` and ``slots_arch_lock``;
- ``mmu_lock`` and the MMU-notifier fields a fault consults
  (``mmu_invalidate_seq``, ``_in_progress``, ``_range_start/_end``,
  ``mn_active_invalidate_count``);
- the TDP MMU's page tables, every root (``ept``, :mod:`kvmmu.tdp_iter`);
- the vCPUs: each a handle (:class:`KvmVcpu`) on state the VM keeps
  (its root, its requests, its SRCU index, a pending signal...), and each
  with a TLB (``tlbs``, :mod:`kvmmu.tlb`).

Chapters build the VM they need with the mechanisms they do not teach left
simple by configuration (:class:`KvmConfig`: which kernel behaviour, and
``zoom``, the functions that run as one step; see :mod:`kvmmu.cpu`).

**Where functions live.**  The functions here are the ones ``kvm_host.h``
declares for the rest of KVM: inline helpers, and the kvm_main.c and mmu.c
functions that the architecture's code and guest_memfd.c call
(``hva_to_pfn``, the invalidation bracket, ``kvm_unmap_gfn_range``), and
the pfn-cache invalidation ``virt/kvm/kvm_mm.h`` declares for kvm_main.c
(and, in chapter 5's RFC, for guest_memfd.c).  They sit in this module,
below their callers, so that imports only go down (CONTRIBUTING.md,
"Layers"); the caches themselves are :mod:`kvmmu.pfncache`'s.

**Where the model simplifies.**

- ``lockdep_assert_held``, ``WARN_ON_ONCE`` and ``KVM_BUG_ON`` are recorded
  with :meth:`Kvm.warn` (the kernel prints and carries on; the checks assert
  the list stays empty).
- ``smp_wmb``/``smp_rmb`` are implicit: every step is sequentially
  consistent, so the orderings they enforce always hold.
- ``mn_invalidate_lock`` and ``gpc_lock`` protect a counter and a list that
  are changed inside one step each; they are not modelled as locks.
- ``hva_to_pfn()`` takes no page reference: a page is freed when the mm
  operation that drops it says so (see :mod:`kvmmu.host_mm`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .checks import check_bool, check_choice, check_int, check_u64
from .cpu import Handle, cpu_code
from .errno import EFAULT
from .explorer import Primitive, World, step
from .host_mm import HostMm, __get_user, _user_pfn
from .levels import (KVM_MAX_HUGEPAGE_LEVEL, PAGE_SHIFT, PAGE_SIZE, PG_LEVEL_1G, PG_LEVEL_2M,
                     PG_LEVEL_4K, PT64_ROOT_4LEVEL, PT64_ROOT_MAX_LEVEL)
from .memslots import (GFN_MAX, INVALID_GPA, KVM_MEM_READONLY, KvmMemorySlot, KvmMemslotState,
                       KvmMemslots, __gfn_to_hva_memslot, kvm_is_visible_memslot)
from .spte import EPT_AD, SpteConfig
from .tdp_iter import EptMemory
from .tdp_mmu import KvmGfnRange, kvm_tdp_mmu_unmap_gfn_range
from .tlb import TlbEntry, VcpuTlbs

__all__ = [
    "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS", "KVM_REQ_VM_DEAD", "KVM_REQ_TLB_FLUSH", "KVM_REQUESTS",
    "KVM_PFN_ERR_MASK", "KVM_PFN_ERR_FAULT", "KVM_PFN_ERR_RO_FAULT", "KVM_HVA_ERR_BAD",
    "PREFAULT_POLICIES", "GPC_GMEM", "KvmConfig", "KvmFields", "VcpuState", "KvmVcpu", "Kvm",
    "is_error_pfn", "kvm_is_error_hva", "kvm_vcpu_memslots", "kvm_vcpu_gfn_to_memslot",
    "mmu_invalidate_retry_gfn", "mmu_invalidate_retry_gfn_unsafe", "mmu_invalidate_retry",
    "kvm_make_request", "kvm_test_request", "kvm_check_request", "kvm_make_all_cpus_request",
    "kvm_mmu_invalidate_begin", "kvm_mmu_invalidate_range_add", "kvm_mmu_invalidate_end",
    "kvm_unmap_gfn_range", "kvm_mmu_unmap_gfn_range", "hva_to_pfn",
    "gfn_to_hva_memslot_prot", "kvm_vcpu_mark_page_dirty", "mark_page_dirty_in_slot",
    "kvm_vcpu_read_guest", "gfn_to_pfn_cache_invalidate_start",
    "gfn_to_pfn_cache_invalidate_gfn_range",
]

# vCPU requests the model uses (arch/x86/include/asm/kvm_host.h, include/linux/kvm_host.h).
KVM_REQ_TLB_FLUSH = "KVM_REQ_TLB_FLUSH"
KVM_REQ_VM_DEAD = "KVM_REQ_VM_DEAD"
KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS"
KVM_REQUESTS = (KVM_REQ_TLB_FLUSH, KVM_REQ_VM_DEAD, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)

#: include/linux/kvm_host.h: the error pfns and hva a failed lookup returns.
KVM_PFN_ERR_MASK = 0x7FF << 52
KVM_PFN_ERR_FAULT = KVM_PFN_ERR_MASK
KVM_PFN_ERR_RO_FAULT = KVM_PFN_ERR_MASK + 2
#: KVM_HVA_ERR_BAD is PAGE_OFFSET; the model's value is only ever compared.
KVM_HVA_ERR_BAD = 0xFFFF_8880_0000_0000

#: How the fault path treats a memslot flagged INVALID (being deleted or moved),
#: and what the prefault ioctl does about it: the versions chapter 6 compares.
PREFAULT_POLICIES = {
    "6.17": "before the fix: an INVALID slot gives RET_PF_RETRY, and "
            "kvm_tdp_map_page() retries while the ioctl holds kvm->srcu",
    "6.18": "the merged fix: an INVALID slot gives -EAGAIN for a prefetch fault, "
            "returned to userspace (RET_PF_RETRY for KVM_RUN)",
    "RET_PF_RETRY_INVALID_SLOT": "Yan Zhao's patch 1/2: a new RET_PF_RETRY_INVALID_SLOT, "
            "which kvm_tdp_map_page() turns into -ENOENT",
    "drop-srcu": "Sean Christopherson's first sketch: kvm_tdp_map_page() returns -EAGAIN "
            "on RET_PF_RETRY and a new kvm_tdp_prefault_page() drops and re-takes "
            "kvm->srcu, then retries",
    "drop-srcu+reload": "the sketch plus kvm_mmu_reload() after re-taking kvm->srcu "
            "(Yan Zhao's review)",
    "6.18+request-break": "an experiment of this book, in no kernel or patch: 6.18, and "
            "kvm_tdp_map_page() stops retrying with -EAGAIN while "
            "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS is pending",
}

#: Whether pfn caches know guest_memfd: the versions chapter 5 compares.
GPC_GMEM = {
    "6.17": "pfn caches map only the VMM's user mapping; a guest_memfd hole punch "
            "does not touch them",
    "rfc": "Patrick Roy's RFC v2 as the model fills it in: a cache over a private gfn "
           "maps the guest_memfd folio, and a guest_memfd hole punch raises "
           "mn_active_invalidate_count, invalidates the caches over the hole's gfns, "
           "and drops the count after the sequence moved",
    "rfc-uncounted": "the same hook without the mn_active_invalidate_count bracket "
                     "(the chapter's exercise: a refresh slips through)",
}

_GFN_MAX = GFN_MAX


@dataclass(frozen=True)
class KvmConfig:
    """What a VM is built with: the kernel behaviour it follows and how finely it steps.

    ``cfg``: the SPTE masks (:mod:`kvmmu.spte`); ``root_level``: 4- or
    5-level TDP roots; ``max_huge_page_level``; ``spin_on_frozen_child``:
    False removes the wait of ``handle_removed_pt`` (an unsafe variant,
    chapter 3); ``slot_zap_all``: ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` on a default
    VM (deleting or moving a slot makes every root obsolete; off for TDX);
    ``reload_frees_obsolete_roots``: ``kvm_mmu_reload()`` handles
    ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS`` (6.15 and later, commit 20a6cff3);
    ``prefault_policy``: one of :data:`PREFAULT_POLICIES`;
    ``pre_fault_allowed``: ``kvm->arch.pre_fault_allowed``;
    ``kvm_can_access_gmem``: whether KVM can read guest_memfd memory (the
    chapter 5 RFC's switch); ``gpc_gmem``: one of :data:`GPC_GMEM`;
    ``nx_huge_pages``: the ``kvm.nx_huge_pages`` iTLB-multihit workaround
    (an instruction fetch maps 4K, a huge leaf is not executable);
    ``swap_waits_for_invalidations``: False lets ``kvm_swap_active_memslots()``
    publish while an MMU-notifier invalidation is in flight (an unsafe
    variant, chapter 7: one rule left out, the wait commit 52ac8b358b0c
    added); ``zoom``: names of CPU code that runs as one step (:mod:`kvmmu.cpu`).
    """

    nr_as_ids: int = 1
    cfg: SpteConfig = EPT_AD
    root_level: int = PT64_ROOT_4LEVEL
    max_huge_page_level: int = KVM_MAX_HUGEPAGE_LEVEL
    spin_on_frozen_child: bool = True
    slot_zap_all: bool = True
    reload_frees_obsolete_roots: bool = True
    prefault_policy: str = "6.18"
    pre_fault_allowed: bool = True
    kvm_can_access_gmem: bool = True
    gpc_gmem: str = "6.17"
    nx_huge_pages: bool = False
    swap_waits_for_invalidations: bool = True
    zoom: frozenset = frozenset()

    def __post_init__(self):
        check_int("nr_as_ids", self.nr_as_ids, 1, 2)
        if not isinstance(self.cfg, SpteConfig):
            raise TypeError(f"cfg must be a SpteConfig, got {type(self.cfg).__name__}")
        check_choice("root_level", self.root_level, (PT64_ROOT_4LEVEL, PT64_ROOT_MAX_LEVEL))
        check_choice("max_huge_page_level", self.max_huge_page_level,
                     (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G))
        for name in ("spin_on_frozen_child", "slot_zap_all", "reload_frees_obsolete_roots",
                     "pre_fault_allowed", "kvm_can_access_gmem", "nx_huge_pages",
                     "swap_waits_for_invalidations"):
            check_bool(name, getattr(self, name))
        check_choice("prefault_policy", self.prefault_policy, PREFAULT_POLICIES)
        check_choice("gpc_gmem", self.gpc_gmem, GPC_GMEM)
        if isinstance(self.zoom, str) or not all(isinstance(z, str) for z in self.zoom):
            raise TypeError("zoom must be a collection of function names")
        object.__setattr__(self, "zoom", frozenset(self.zoom))

    def __deepcopy__(self, memo):
        return self


def _check_world(world) -> None:
    if not isinstance(world, World):
        raise TypeError(f"world must be a kvmmu.explorer.World (a Kvm), got {type(world).__name__}")


class KvmFields(Primitive):
    """The scalar fields of ``struct kvm`` the model uses, as one shared object.

    The MMU-notifier fields a fault consults; ``vm_dead``; the model's
    ``warnings`` (WARN/KVM_BUG_ON/lockdep splats, in order); the dirty log
    (``dirty``: gfns marked dirty); ``gpc_list``: the pfn caches a notifier
    must invalidate (their names, ``kvm->gpc_list``).
    """

    _sealed = True

    __slots__ = ("mmu_invalidate_seq", "mmu_invalidate_in_progress",
                 "mmu_invalidate_range_start", "mmu_invalidate_range_end",
                 "mn_active_invalidate_count", "vm_dead", "warnings", "dirty", "gpc_list")

    _FIELDS = __slots__
    #: each field is a location of its own for the explorer's footprints
    _field_locations = {f: (f,) for f in __slots__}

    def __init__(self, world, name: str = "kvm"):
        _check_world(world)
        super().__init__(world, name)
        self.mmu_invalidate_seq = 0
        self.mmu_invalidate_in_progress = 0
        self.mmu_invalidate_range_start = INVALID_GPA
        self.mmu_invalidate_range_end = INVALID_GPA
        self.mn_active_invalidate_count = 0
        self.vm_dead = False
        self.warnings: tuple = ()
        self.dirty: frozenset = frozenset()
        self.gpc_list: tuple = ()

    def _state(self):
        return tuple(getattr(self, f) for f in self._FIELDS)

    def _load(self, st):
        for f, v in zip(self._FIELDS, st):
            setattr(self, f, v)

    def _show(self):
        if self.mmu_invalidate_range_start == INVALID_GPA:
            rng = "INVALID"
        else:
            rng = f"[{self.mmu_invalidate_range_start:#x}, {self.mmu_invalidate_range_end:#x})"
        return (f"seq={self.mmu_invalidate_seq} in_progress={self.mmu_invalidate_in_progress} "
                f"range={rng}")


@dataclass(frozen=True)
class _VcpuRecord:
    # One vCPU's state, a value: the VcpuState primitive holds a tuple of them.
    root: int | None = None
    requests: tuple = ()
    signal_pending: bool = False
    srcu_idx: int | None = None
    last_fault_inputs: object = None
    tdp: bool = True
    guest_mode: bool = False
    arch: object = None


class VcpuState(Primitive):
    """Every vCPU's state, as one shared object: a tuple of records, one per vCPU."""

    _sealed = True

    __slots__ = ("records",)

    def __init__(self, world, name: str = "vcpus"):
        _check_world(world)
        super().__init__(world, name)
        self.records: tuple = ()

    def get(self, vcpu_id: int, field_name: str):
        return getattr(self.records[vcpu_id], field_name)

    def set(self, vcpu_id: int, **changes) -> None:
        rec = self.records[vcpu_id]
        self.records = (self.records[:vcpu_id]
                        + (_VcpuRecord(**{**rec.__dict__, **changes}),)
                        + self.records[vcpu_id + 1:])

    def _state(self):
        return self.records

    def _load(self, st):
        self.records = st

    def _show(self):
        return "; ".join(f"vCPU {i}: root {self._root_text(r.root)}"
                         + (f", {','.join(q.replace('KVM_REQ_', '') for q in r.requests)}"
                            if r.requests else "")
                         for i, r in enumerate(self.records))

    def _root_text(self, root) -> str:
        # An obsolete root (role.invalid) says so: a fault on it is stale.
        if root is None:
            return "-"
        sp = self.world.ept.sps.get(root) if hasattr(self.world, "ept") else None
        return hex(root) + (" (obsolete)" if sp is not None and sp.invalid else "")


def _vcpu_field(name: str, doc: str) -> property:
    def get(self):
        return self.kvm.vcpu_state.get(self.vcpu_id, name)

    def put(self, value):
        self.kvm.vcpu_state.set(self.vcpu_id, **{name: value})
    return property(get, put, doc=doc)


class KvmVcpu(Handle):
    """A vCPU: a handle (its VM and index) on the state the VM keeps for it.

    Models: include/linux/kvm_host.h: struct kvm_vcpu

    Every field is read and written through the VM's shared ``vcpu_state``,
    so a CPU can hold the handle across steps.  ``root`` is
    ``vcpu->arch.mmu->root.hpa`` (None for ``INVALID_PAGE``: no root loaded).
    """

    __slots__ = ("kvm", "vcpu_id")

    root = _vcpu_field("root", "``vcpu->arch.mmu->root.hpa``: the root's pfn, None if none.")
    requests = _vcpu_field("requests", "Pending requests, kept sorted (never set order).")
    signal_pending = _vcpu_field("signal_pending", "``signal_pending(current)`` for the "
                                 "thread in the ioctl.")
    srcu_idx = _vcpu_field("srcu_idx", "``vcpu->srcu_idx``: the SRCU read section it holds.")
    last_fault_inputs = _vcpu_field("last_fault_inputs", "What the last fault attempt read; "
                                    "a retry waits until it changes (chapter 6).")
    tdp = _vcpu_field("tdp", "``vcpu->arch.mmu->page_fault == kvm_tdp_page_fault`` "
                             "(False: shadow paging).")
    guest_mode = _vcpu_field("guest_mode", "Running a nested guest: not the TDP MMU either.")
    arch = _vcpu_field("arch", "The guest's paging registers (chapter 5), a value.")

    def __init__(self, kvm: "Kvm", vcpu_id: int):
        if not isinstance(kvm, Kvm):
            raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
        check_int("vcpu_id", vcpu_id, 0, KVM_MAX_VCPUS - 1)
        self.kvm = kvm
        self.vcpu_id = vcpu_id

    @property
    def _key(self):
        return (self.vcpu_id,)

    def __repr__(self) -> str:
        return f"KvmVcpu({self.vcpu_id})"


#: The model's bound on vCPU ids (the kernel's KVM_MAX_VCPUS is 4096 on x86).
KVM_MAX_VCPUS = 4096


class _Watches(tuple):
    """The (name, show) pairs of :meth:`Kvm.watch`: configuration, never copied with the state."""

    __slots__ = ()

    def __deepcopy__(self, memo):
        return self


class Kvm(World):
    """A VM: its host mm, memslots, locks, SRCU, MMU-notifier fields, TDP MMU and vCPUs.

    Models: include/linux/kvm_host.h: struct kvm

    Build one with ``kvmmu.kvm_main.kvm_create_vm(...)``, which also
    subscribes it to its mm's MMU notifier, as ``KVM_CREATE_VM`` does;
    keyword arguments are :class:`KvmConfig`'s.
    """

    def __init__(self, **config):
        super().__init__()
        self.config = KvmConfig(**config)
        self.mm = HostMm(self)
        self.memslot_state = self._register(KvmMemslotState(self, nr_as_ids=self.config.nr_as_ids))
        self.srcu = self.srcu_domain("kvm->srcu")
        self.slots_lock = self.mutex("kvm->slots_lock")
        self.slots_arch_lock = self.mutex("kvm->slots_arch_lock")
        self.mmu_lock = self.rwlock("mmu_lock")
        self.fields = self._register(KvmFields(self))
        self.ept = self._register(EptMemory(self, "EPT", self.config.cfg))
        self.tlbs = self._register(VcpuTlbs(self, "TLBs", 0))
        self.vcpu_state = self._register(VcpuState(self))
        #: (name, show) pairs that traces show besides the shared objects (:meth:`watch`).
        self._watches = _Watches()
        self._watch_only = False

    def snapshot_extra(self):
        # Every piece of shared state is in a shared object; the rest is
        # configuration and handles, fixed when the VM was built.
        return None

    # -- what traces show --
    def watch(self, name: str, show, *, only: bool = False) -> None:
        """Show ``show(kvm)`` (a short text) under ``name`` in every trace of this VM.

        A chapter's view of state the VM already holds (one SPTE, one vCPU's
        TLB), added when the VM is set up: it adds no state, so it is not part
        of the explorer's state key.  ``only=True``: traces show the watched
        views alone, not the shared objects (chapter 1's one SPTE).
        """
        check_bool("only", only)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if not callable(show):
            raise TypeError(f"show must be callable (kvm -> text), got {type(show).__name__}")
        self._watch_only = self._watch_only or only
        if name in self.snapshot():
            raise ValueError(f"name {name!r} is already shown in this VM's traces")
        self._watches = _Watches(self._watches + ((name, show),))

    def snapshot(self) -> dict:
        """The shared state as readable text, then what :meth:`watch` added."""
        out = {} if self._watch_only else super().snapshot()
        for name, show in self._watches:
            out[name] = show(self)
        return out

    def _extras(self) -> dict:
        # For the same reason there is nothing outside the shared objects to
        # save and restore: the explorer need not deep-copy the configuration
        # and the mm handle at every state (most of a save's time otherwise).
        return {}

    # -- configuration and handles --
    @property
    def zoom(self) -> frozenset:
        """The names of CPU code that runs as one step (see :mod:`kvmmu.cpu`)."""
        return self.config.zoom

    @property
    def nr_vcpus(self) -> int:
        return len(self.vcpu_state.records)

    @property
    def vcpus(self) -> tuple:
        """The vCPUs, as handles."""
        return tuple(KvmVcpu(self, i) for i in range(self.nr_vcpus))

    def add_vcpu(self, **arch) -> KvmVcpu:
        """Add a vCPU with an empty TLB (the state ``kvm_vm_ioctl_create_vcpu`` sets up)."""
        self.vcpu_state.records += (_VcpuRecord(arch=arch.get("arch")),)
        self.tlbs.add_vcpu()
        return KvmVcpu(self, self.nr_vcpus - 1)

    @property
    def max_huge_page_level(self) -> int:
        return self.config.max_huge_page_level

    # -- the struct kvm fields, under their kernel names --
    def _field(name):
        return property(lambda self: getattr(self.fields, name),
                        lambda self, v: setattr(self.fields, name, v))
    mmu_invalidate_seq = _field("mmu_invalidate_seq")
    mmu_invalidate_in_progress = _field("mmu_invalidate_in_progress")
    mmu_invalidate_range_start = _field("mmu_invalidate_range_start")
    mmu_invalidate_range_end = _field("mmu_invalidate_range_end")
    mn_active_invalidate_count = _field("mn_active_invalidate_count")
    vm_dead = _field("vm_dead")
    del _field

    @property
    def warnings(self) -> tuple:
        """The WARN/KVM_BUG_ON/lockdep messages recorded so far, in order."""
        return self.fields.warnings

    def warn(self, message: str) -> None:
        """Record what the kernel would WARN about (and carry on)."""
        self.fields.warnings += (str(message),)

    # -- memslots --
    def kvm_memslots(self, as_id: int = 0) -> KvmMemslots:
        """The active memslot set (``srcu_dereference(kvm->memslots[as_id])``).

        Models: include/linux/kvm_host.h: __kvm_memslots()
        """
        check_int("as_id", as_id, 0, self.config.nr_as_ids - 1)
        st = self.memslot_state
        return st.sets[as_id][st.active[as_id]]

    def kvm_get_inactive_memslots(self, as_id: int = 0) -> KvmMemslots:
        """The set a memslot update edits before swapping it in.

        Models: virt/kvm/kvm_main.c: kvm_get_inactive_memslots()
        """
        check_int("as_id", as_id, 0, self.config.nr_as_ids - 1)
        st = self.memslot_state
        return st.sets[as_id][st.active[as_id] ^ 1]

    # -- what the TLBs ask of the VM --
    def vcpu_root(self, vcpu_id: int):
        """The root a vCPU runs on (its pfn), or None."""
        return self.vcpu_state.records[vcpu_id].root

    def translate(self, root: int, gfn: int, write: bool = False) -> TlbEntry | None:
        """What the hardware's walk of ``root`` gives for ``gfn`` (None: EPT violation)."""
        if root not in self.ept.sps:
            return None
        return self.ept.translate(root, gfn, write)

    def __repr__(self) -> str:
        return f"Kvm({self.nr_vcpus} vCPU(s), {len(self.kvm_memslots().slots)} slot(s))"


# ---------------------------------------------------------------------------
# Inline helpers of kvm_host.h
# ---------------------------------------------------------------------------
def _check_kvm(kvm) -> Kvm:
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    return kvm


def _check_vcpu(vcpu) -> KvmVcpu:
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    return vcpu


def is_error_pfn(pfn: int) -> bool:
    """True for an error pfn (``KVM_PFN_ERR_*``).

    Models: include/linux/kvm_host.h: is_error_pfn()
    """
    check_int("pfn", pfn, 0, (1 << 64) - 1)
    return bool(pfn & KVM_PFN_ERR_MASK)


def kvm_is_error_hva(hva: int) -> bool:
    """True for an error hva (``KVM_HVA_ERR_BAD`` and above).

    Models: include/linux/kvm_host.h: kvm_is_error_hva()
    """
    check_int("hva", hva, 0, (1 << 64) - 1)
    return hva >= KVM_HVA_ERR_BAD


def kvm_vcpu_memslots(vcpu: KvmVcpu) -> KvmMemslots:
    """The memslots of the vCPU's address space (address space 0 in the model).

    Models: include/linux/kvm_host.h: kvm_vcpu_memslots()
    """
    return _check_vcpu(vcpu).kvm.kvm_memslots(0)


def kvm_vcpu_gfn_to_memslot(vcpu: KvmVcpu, gfn: int):
    """Return the memslot of the vCPU's address space that holds ``gfn``, or None.

    Models: virt/kvm/kvm_main.c: kvm_vcpu_gfn_to_memslot()

    The kernel first tries the vCPU's ``last_used_slot``; that cache changes
    how fast the answer comes, never the answer, so the model leaves it out.
    """
    check_int("gfn", gfn, 0, _GFN_MAX)
    return kvm_vcpu_memslots(vcpu).gfn_to_memslot(gfn)


def _lockdep_assert_held(kvm: Kvm, what: str) -> None:
    # mmu_lock must be held (by anybody: the model does not track which CPU
    # asks, and a plain call runs with nobody else around).
    lock = kvm.mmu_lock
    if lock.writer is None and not lock.readers:
        kvm.warn(f"lockdep: {what} called without mmu_lock held")


def mmu_invalidate_retry_gfn(kvm: Kvm, mmu_seq: int, gfn: int) -> int:
    """1 if a fault that took ``mmu_seq`` must retry for ``gfn``; needs mmu_lock.

    Models: include/linux/kvm_host.h: mmu_invalidate_retry_gfn()
    """
    _check_kvm(kvm)
    check_u64("mmu_seq", mmu_seq)
    check_int("gfn", gfn, 0, _GFN_MAX)
    _lockdep_assert_held(kvm, "mmu_invalidate_retry_gfn")
    if kvm.mmu_invalidate_in_progress:
        if (kvm.mmu_invalidate_range_start == INVALID_GPA
                or kvm.mmu_invalidate_range_end == INVALID_GPA):
            kvm.warn("WARN_ON_ONCE: invalidation in progress without a range")
            return 1
        if kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end:
            return 1
    if kvm.mmu_invalidate_seq != mmu_seq:
        return 1
    return 0


def mmu_invalidate_retry_gfn_unsafe(kvm: Kvm, mmu_seq: int, gfn: int) -> bool:
    """The same question without mmu_lock: a cheap pre-check, may be wrong either way.

    Models: include/linux/kvm_host.h: mmu_invalidate_retry_gfn_unsafe()
    """
    _check_kvm(kvm)
    check_u64("mmu_seq", mmu_seq)
    check_int("gfn", gfn, 0, _GFN_MAX)
    # An INVALID range has start = ~0, so it never matches: no WARN here.
    if (kvm.mmu_invalidate_in_progress
            and kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end):
        return True
    return kvm.mmu_invalidate_seq != mmu_seq


def mmu_invalidate_retry(kvm: Kvm, mmu_seq: int) -> int:
    """Return 1 if any invalidation is in progress or ended since ``mmu_seq``.

    Models: include/linux/kvm_host.h: mmu_invalidate_retry()
    """
    _check_kvm(kvm)
    check_u64("mmu_seq", mmu_seq)
    _lockdep_assert_held(kvm, "mmu_invalidate_retry")
    if kvm.mmu_invalidate_in_progress:
        return 1
    # smp_rmb() here in the kernel: in_progress is read before the sequence.
    return 1 if kvm.mmu_invalidate_seq != mmu_seq else 0


def kvm_make_request(req: str, vcpu: KvmVcpu) -> None:
    """Post a request to ``vcpu``.

    Models: include/linux/kvm_host.h: kvm_make_request()
    """
    check_choice("req", req, KVM_REQUESTS)
    _check_vcpu(vcpu)
    if req not in vcpu.requests:
        vcpu.requests = tuple(sorted(vcpu.requests + (req,)))


def kvm_test_request(req: str, vcpu: KvmVcpu) -> bool:
    """Whether ``req`` is pending for ``vcpu``.

    Models: include/linux/kvm_host.h: kvm_test_request()
    """
    check_choice("req", req, KVM_REQUESTS)
    return req in _check_vcpu(vcpu).requests


def kvm_check_request(req: str, vcpu: KvmVcpu) -> bool:
    """Test and clear ``req`` for ``vcpu``.

    Models: include/linux/kvm_host.h: kvm_check_request()
    """
    if kvm_test_request(req, vcpu):
        vcpu.requests = tuple(r for r in vcpu.requests if r != req)
        return True
    return False


def kvm_make_all_cpus_request(kvm: Kvm, req: str) -> None:
    """Post ``req`` to every vCPU.

    Models: virt/kvm/kvm_main.c: kvm_make_all_cpus_request()
    """
    for vcpu in _check_kvm(kvm).vcpus:
        kvm_make_request(req, vcpu)


# ---------------------------------------------------------------------------
# The invalidation bracket (kvm_main.c, declared for guest_memfd.c and the notifier)
# ---------------------------------------------------------------------------
def kvm_mmu_invalidate_begin(kvm: Kvm) -> None:
    """Start an invalidation: one more in progress; an empty range for the first.

    Models: virt/kvm/kvm_main.c: kvm_mmu_invalidate_begin()

    Plain computation: callers run it under mmu_lock held for write, in a step.
    """
    _check_kvm(kvm)
    _lockdep_assert_held(kvm, "kvm_mmu_invalidate_begin")
    kvm.mmu_invalidate_in_progress += 1
    if kvm.mmu_invalidate_in_progress == 1:
        kvm.mmu_invalidate_range_start = INVALID_GPA
        kvm.mmu_invalidate_range_end = INVALID_GPA


def kvm_mmu_invalidate_range_add(kvm: Kvm, start: int, end: int) -> None:
    """Widen the in-progress range to cover gfns ``[start, end)``.

    Models: virt/kvm/kvm_main.c: kvm_mmu_invalidate_range_add()
    """
    _check_kvm(kvm)
    check_int("start", start, 0, _GFN_MAX)
    check_int("end", end, start + 1, _GFN_MAX + 1)
    if not kvm.mmu_invalidate_in_progress:
        kvm.warn("kvm_mmu_invalidate_range_add without an invalidation in progress")
    if kvm.mmu_invalidate_range_start == INVALID_GPA:
        kvm.mmu_invalidate_range_start = start
        kvm.mmu_invalidate_range_end = end
    else:
        # The union of every range added until in_progress drops to 0: it can
        # only grow, so faults outside any one range may retry needlessly.
        kvm.mmu_invalidate_range_start = min(kvm.mmu_invalidate_range_start, start)
        kvm.mmu_invalidate_range_end = max(kvm.mmu_invalidate_range_end, end)


def kvm_mmu_invalidate_end(kvm: Kvm) -> None:
    """End an invalidation: the sequence moves first, then in_progress drops.

    Models: virt/kvm/kvm_main.c: kvm_mmu_invalidate_end()
    """
    _check_kvm(kvm)
    _lockdep_assert_held(kvm, "kvm_mmu_invalidate_end")
    kvm.mmu_invalidate_seq += 1
    # smp_wmb(): whoever sees the lower in_progress also sees the new sequence.
    kvm.mmu_invalidate_in_progress -= 1
    if kvm.mmu_invalidate_in_progress < 0:
        kvm.warn("KVM_BUG_ON: mmu_invalidate_in_progress < 0")
    if kvm.mmu_invalidate_range_start == INVALID_GPA:
        kvm.warn("WARN_ON_ONCE: invalidation ended without a range")


@cpu_code
def kvm_unmap_gfn_range(kvm: Kvm, range_: KvmGfnRange):
    """The architecture's zap of a gfn range (the TDP MMU's); True if a flush is due.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_unmap_gfn_range()

    Zapping must be covered by an invalidation in progress (or, for a
    memslot deletion, by ``slots_lock``): otherwise a fault with stale data
    could re-install what was zapped.
    """
    _check_kvm(kvm)
    if not kvm.mmu_invalidate_in_progress and kvm.slots_lock.holder is None:
        kvm.warn("lockdep: kvm_unmap_gfn_range without an invalidation or slots_lock")
    return (yield from kvm_tdp_mmu_unmap_gfn_range(kvm, range_, False))


@cpu_code
def kvm_mmu_unmap_gfn_range(kvm: Kvm, range_: KvmGfnRange):
    """Add the range to the invalidation, then zap it; True if a flush is due.

    Models: virt/kvm/kvm_main.c: kvm_mmu_unmap_gfn_range()
    """
    _check_kvm(kvm)
    if not isinstance(range_, KvmGfnRange):
        raise TypeError(f"range_ must be a KvmGfnRange, got {type(range_).__name__}")
    kvm_mmu_invalidate_range_add(kvm, range_.start, range_.end)
    return (yield from kvm_unmap_gfn_range(kvm, range_))


# ---------------------------------------------------------------------------
# Guest memory, as KVM reaches it (kvm_main.c)
# ---------------------------------------------------------------------------
def hva_to_pfn(kvm: Kvm, hva: int, write: bool = False) -> int:
    """Return the pfn behind ``hva`` (gup, faulting anonymous memory in), or an error pfn.

    Models: virt/kvm/kvm_main.c: hva_to_pfn()

    Plain computation on the host's memory: the caller makes it one step.
    A page being migrated, or an address outside every mapping, gives
    ``KVM_PFN_ERR_FAULT`` (the real gup waits for the migration: the model's
    fault retries instead).  No page reference is taken.
    """
    _check_kvm(kvm)
    check_int("hva", hva, 0, (1 << 47) - 1)
    check_bool("write", write)
    pfn = _user_pfn(kvm.mm, hva - hva % PAGE_SIZE)
    if pfn is None:
        return KVM_PFN_ERR_FAULT
    return pfn


def gfn_to_hva_memslot_prot(slot, gfn: int) -> tuple[int, bool]:
    """Return ``(hva, writable)`` for ``gfn`` in ``slot``; KVM_HVA_ERR_BAD if not visible.

    Models: virt/kvm/kvm_main.c: gfn_to_hva_memslot_prot()
    """
    check_int("gfn", gfn, 0, _GFN_MAX)
    if slot is not None and not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"slot must be a KvmMemorySlot or None, got {type(slot).__name__}")
    if not kvm_is_visible_memslot(slot):
        return KVM_HVA_ERR_BAD, False
    return __gfn_to_hva_memslot(slot, gfn), not slot.flags & KVM_MEM_READONLY


def kvm_vcpu_mark_page_dirty(vcpu: KvmVcpu, gfn: int) -> None:
    """Record ``gfn`` in the dirty log.

    Models: virt/kvm/kvm_main.c: kvm_vcpu_mark_page_dirty()
    """
    check_int("gfn", gfn, 0, _GFN_MAX)
    kvm = _check_vcpu(vcpu).kvm
    mark_page_dirty_in_slot(kvm, kvm_vcpu_gfn_to_memslot(vcpu, gfn), gfn)


def mark_page_dirty_in_slot(kvm: Kvm, memslot, gfn: int) -> None:
    """Record ``gfn`` of ``memslot`` in the dirty log (nothing without a slot).

    Models: virt/kvm/kvm_main.c: mark_page_dirty_in_slot()

    The model's dirty log is one set of gfns for the VM (the kernel keeps
    a bitmap per slot, or a ring, only while dirty logging is on).
    """
    _check_kvm(kvm)
    check_int("gfn", gfn, 0, _GFN_MAX)
    if memslot is not None:
        kvm.fields.dirty = kvm.fields.dirty | {gfn}


def kvm_vcpu_read_guest(vcpu: KvmVcpu, gpa: int) -> tuple[int, int]:
    """Read the u64 at ``gpa`` through the slot's user mapping: ``(0, value)`` or ``(-EFAULT, 0)``.

    Models: virt/kvm/kvm_main.c: kvm_vcpu_read_guest()

    Plain computation (the caller makes it one step).  6.17 reads guest
    memory through the VMM's mapping only, so a private gfn cannot be read.
    """
    check_int("gpa", gpa, 0, ((_GFN_MAX + 1) << PAGE_SHIFT) - 8)
    if gpa & 7:
        raise ValueError(f"gpa must be 8-byte aligned, got {gpa:#x}")
    slot = kvm_vcpu_gfn_to_memslot(vcpu, gpa >> PAGE_SHIFT)
    hva, _ = gfn_to_hva_memslot_prot(slot, gpa >> PAGE_SHIFT)
    if kvm_is_error_hva(hva):
        return -EFAULT, 0
    return __get_user(vcpu.kvm.mm, hva + (gpa & (PAGE_SIZE - 1)))


# ---------------------------------------------------------------------------
# Invalidating pfn caches (pfncache.c, declared in kvm_mm.h for kvm_main.c)
# ---------------------------------------------------------------------------
def _has_gpcs(kvm: Kvm) -> bool:
    # Whether the VM has any pfn cache at all.  A VM without one (every
    # chapter but 5) has nothing on gpc_list, so the model skips the scan
    # instead of taking a step to read an empty list.  (The primitives a VM
    # registers are its make-up, fixed before a run: no shared state.)
    return any(getattr(p, "_is_gpc", False) for p in kvm._prims)


def _gpc_invalidate_matching(kvm: Kvm, what: str, matches):
    # The scan of gfn_to_pfn_cache_invalidate_start(): a test under the read
    # lock, then, if it hits, the same test again under the write lock before
    # clearing valid (the cache may have changed in between).  The list is
    # read in one step: kvm->gpc_lock is not modelled as a lock (see the
    # module notes).
    names = yield from step(f"invalidate {what}: read kvm->gpc_list",
                            lambda: kvm.fields.gpc_list)
    for name in names:
        gpc = kvm.primitive(name)
        yield from gpc.lock.read_lock()
        hit = yield from step(f"invalidate {what}: {name} in range?", lambda: matches(gpc))
        yield from gpc.lock.read_unlock()
        if hit:
            yield from gpc.lock.write_lock()

            def clear():
                if matches(gpc):
                    gpc.valid = False
            yield from step(f"invalidate {what}: {name}.valid = false", clear)
            yield from gpc.lock.write_unlock()


@cpu_code
def gfn_to_pfn_cache_invalidate_start(kvm: Kvm, start: int, end: int):
    """Clear ``valid`` on every pfn cache whose user address is in ``[start, end)``.

    Models: virt/kvm/pfncache.c: gfn_to_pfn_cache_invalidate_start()

    Called by the MMU notifier's range_start before it takes ``mmu_lock``
    (so no cache lock is ever taken under ``mmu_lock``), with
    ``mn_active_invalidate_count`` already raised: a refresh that overlaps
    sees the count and retries.  Only the start of the page is compared:
    a cache maps one page.
    """
    _check_kvm(kvm)
    check_int("start", start, 0, (1 << 64) - 1)
    check_int("end", end, start, (1 << 64) - 1)
    if not _has_gpcs(kvm):
        return

    def matches(gpc) -> bool:
        return gpc.valid and not is_error_pfn(gpc.pfn) and start <= gpc.uhva < end
    yield from _gpc_invalidate_matching(kvm, f"hva [{start:#x}, {end:#x})", matches)


@cpu_code
def gfn_to_pfn_cache_invalidate_gfn_range(kvm: Kvm, start_gfn: int, end_gfn: int):
    """Clear ``valid`` on every pfn cache over a private gfn in ``[start_gfn, end_gfn)``.

    Models: virt/kvm/pfncache.c: gfn_to_pfn_cache_invalidate_start() (RFC v2, as the model fills it in: by gfn, for guest_memfd)

    No 6.17 counterpart: in Patrick Roy's RFC, pfn caches can map guest_memfd
    pages, so a hole punched in guest_memfd must reach them too; it does so
    through the gfn, since guest_memfd pages have no user address.  The
    patch says the caches are hooked up to the notifiers but not how: this
    is the model's reading (``KvmConfig.gpc_gmem``).
    """
    _check_kvm(kvm)
    check_int("start_gfn", start_gfn, 0, _GFN_MAX)
    check_int("end_gfn", end_gfn, start_gfn, _GFN_MAX + 1)
    if not _has_gpcs(kvm):
        return

    def matches(gpc) -> bool:
        if not gpc.valid or is_error_pfn(gpc.pfn) or gpc.gpa == INVALID_GPA:
            return False
        gfn = gpc.gpa >> PAGE_SHIFT
        return start_gfn <= gfn < end_gfn and gfn in kvm.memslot_state.private
    yield from _gpc_invalidate_matching(kvm, f"gfns [{start_gfn:#x}, {end_gfn:#x})", matches)
