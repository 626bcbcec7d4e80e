"""The memslot update protocol: two swaps, the INVALID flag, SRCU, the zap.

Models: virt/kvm/kvm_main.c: __kvm_set_memory_region(), kvm_set_memslot(), kvm_invalidate_memslot(), kvm_swap_active_memslots()
Models: virt/kvm/kvm_main.c: kvm_create_memslot(), kvm_delete_memslot(), kvm_move_memslot(), kvm_update_flags_memslot()
Models: arch/x86/kvm/mmu/mmu.c: kvm_arch_flush_shadow_memslot(), kvm_mmu_zap_all_fast()

Read by the prefault chapter (chapter 6).  A VM (:class:`Kvm`) keeps, per
address space, two memslot sets; readers (vCPUs, under ``kvm->srcu``) see the
*active* one, a writer (under ``kvm->slots_lock``) edits the *inactive* one
and then swaps.  Deleting or moving a slot takes two swaps: the first
publishes a copy of the slot flagged ``KVM_MEMSLOT_INVALID``, waits for every
SRCU reader that might still use the old slot, and zaps the slot's SPTEs; the
second publishes the set without it (or with the moved slot).  Each swap marks
the generation "update in progress" (bit 63) while readers may see the new set,
and bumps it by the number of address spaces once they all have.

The functions that can wait (a lock, ``synchronize_srcu``) are generators:
each shared-memory action is one ``yield from kvm.sync.step(...)``.  Two
back-ends run them: :class:`SequentialSync` runs one thread to completion
(used for set-up, the sequential examples and the tests), and the explorer's
primitives (``kvmmu.explorer``) interleave several threads.  ``run_sequential``
drives a generator with the first.

Simplifications (the chapter lists them too):
- the MMU state is the part the prefault race needs: TDP MMU roots with an
  ``invalid`` ("obsolete") flag and their leaf mappings, as {base gfn: level};
- the zap is one atomic step under ``mmu_lock`` (the kernel yields inside it);
- ``kvm_arch_memslots_updated`` does nothing (no MMIO SPTEs are modelled, so
  there is nothing for an MMIO-generation wrap to invalidate);
- ``kvm_prepare_memory_region``/``kvm_commit_memory_region`` cannot fail and
  allocate nothing (a slot computes its ``lpage_info`` when it is built);
- ``mn_active_invalidate_count`` is a plain counter that no modelled thread
  raises; the swap still waits for it to be zero, as the kernel does;
- edits to the *inactive* set take no step of their own: no reader can see
  that set until the swap publishes it, so they happen with the step before.
"""
from dataclasses import dataclass, field

from .checks import check_bool, check_choice, check_int, check_u64
from .errno import EEXIST, EINVAL
from .levels import PAGE_SHIFT, PAGE_SIZE, PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K
from .memslots import (GFN_MAX, HVA_MAX, KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES,
                       KVM_MEM_READONLY, KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
                       KVM_MEMSLOT_INVALID, KvmMemorySlot, KvmMemslots)

# enum kvm_mr_change (include/linux/kvm_host.h)
KVM_MR_CREATE = 0
KVM_MR_DELETE = 1
KVM_MR_MOVE = 2
KVM_MR_FLAGS_ONLY = 3
MR_CHANGE_NAMES = {KVM_MR_CREATE: "KVM_MR_CREATE", KVM_MR_DELETE: "KVM_MR_DELETE",
                   KVM_MR_MOVE: "KVM_MR_MOVE", KVM_MR_FLAGS_ONLY: "KVM_MR_FLAGS_ONLY"}

#: x86: SHRT_MAX slots, of which 3 are KVM's own (APIC access, identity map, TSS).
KVM_MEM_SLOTS_NUM = 32767
KVM_USER_MEM_SLOTS = KVM_MEM_SLOTS_NUM - 3

# vCPU requests the model uses (names, as in arch/x86/include/asm/kvm_host.h).
KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS"
KVM_REQ_VM_DEAD = "KVM_REQ_VM_DEAD"

#: How the prefault path treats an INVALID slot (and what it does about it).
#: Kept here because ``Kvm`` carries the choice; ``kvmmu.prefault`` acts on it.
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


# ---------------------------------------------------------------------------
# Running model code: one thread alone
# ---------------------------------------------------------------------------

class ModelHang(RuntimeError):
    """Raised by the sequential back-end when code would wait forever.

    Alone, a thread that waits for another thread can never go on: a real
    kernel would hang (or spin) there.  The message says what it waits for.
    """


def _no_yield_generator(value):
    # A generator that finishes at once with ``value``: what a step is when no
    # other thread can run in between.
    return value
    yield  # pragma: no cover  (makes this function a generator)


class _SeqSRCU:
    """An SRCU domain for one thread: counts readers; synchronize needs none."""

    def __init__(self, name: str):
        self.name = name
        self.readers = 0

    def read_lock(self):
        self.readers += 1
        return (yield from _no_yield_generator(0))

    def read_unlock(self, idx):
        if self.readers <= 0:
            raise RuntimeError(f"{self.name}: srcu_read_unlock() without srcu_read_lock()")
        self.readers -= 1
        return (yield from _no_yield_generator(None))

    def synchronize(self):
        if self.readers:
            raise ModelHang(f"synchronize_srcu({self.name}) waits for a reader that "
                            f"only this same thread could end")
        return (yield from _no_yield_generator(None))


class _SeqMutex:
    """A mutex for one thread: taking it twice would wait forever."""

    def __init__(self, name: str):
        self.name = name
        self.held = False

    def lock(self):
        if self.held:
            raise ModelHang(f"mutex_lock({self.name}) waits for a holder that is this same thread")
        self.held = True
        return (yield from _no_yield_generator(None))

    def unlock(self):
        if not self.held:
            raise RuntimeError(f"mutex_unlock({self.name}) of a mutex that is not held")
        self.held = False
        return (yield from _no_yield_generator(None))


class SequentialSync:
    """The back-end that runs one thread at a time, each step at once.

    ``wait_until(label, predicate)`` calls ``predicate(None)`` (the explorer
    passes its world; model code ignores the argument); false raises
    :class:`ModelHang`: no other thread exists that could make it true.
    """

    def __init__(self, hook=None):
        if hook is not None and not callable(hook):
            raise TypeError(f"hook must be callable or None, got {type(hook).__name__}")
        #: called as ``hook(label)`` after every step: lets tests and views watch
        self.hook = hook

    def srcu_domain(self, name: str) -> _SeqSRCU:
        return _SeqSRCU(name)

    def mutex(self, name: str) -> _SeqMutex:
        return _SeqMutex(name)

    def step(self, label: str, fn=None):
        result = fn() if fn is not None else None
        if self.hook is not None:
            self.hook(label)
        return (yield from _no_yield_generator(result))

    def wait_until(self, label: str, predicate):
        if not predicate(None):
            raise ModelHang(f"would wait forever: {label}")
        return (yield from _no_yield_generator(None))


def run_sequential(gen):
    """Run model code (a generator) to its end and return its result.

    With :class:`SequentialSync` no step ever yields, so this is one call; it
    still steps through yields so that it also works for hand-written actors.
    """
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


# ---------------------------------------------------------------------------
# The VM
# ---------------------------------------------------------------------------

@dataclass
class KvmMmuRoot:
    """A TDP MMU root: its leaf mappings and whether it is obsolete.

    Models: arch/x86/kvm/mmu/mmu_internal.h: struct kvm_mmu_page (a root; role.invalid)
    """

    id: int
    #: ``role.invalid``: set by the fast zap; a vCPU must stop using the root.
    invalid: bool = False
    #: leaf SPTEs: first gfn of the mapping -> level (PG_LEVEL_4K/2M/1G)
    mappings: dict = field(default_factory=dict)

    def snapshot(self) -> tuple:
        return (self.id, self.invalid, tuple(sorted(self.mappings.items())))


class _VcpuState:
    """The mutable part of a vCPU, kept in the VM (so a vCPU is only a handle)."""

    __slots__ = ("root", "requests", "tdp", "guest_mode", "signal_pending", "srcu_idx",
                 "last_fault_inputs")

    def __init__(self):
        self.root = None
        self.requests = []
        self.tdp = True
        self.guest_mode = False
        self.signal_pending = False
        self.srcu_idx = None
        self.last_fault_inputs = None

    def as_tuple(self) -> tuple:
        root = None if self.root is None else self.root.id
        return (root, tuple(self.requests), self.tdp, self.guest_mode, self.signal_pending,
                self.srcu_idx, self.last_fault_inputs)


def _vcpu_field(name: str, doc: str) -> property:
    def get(self):
        return getattr(self.kvm.vcpu_states[self.vcpu_id], name)

    def put(self, value):
        setattr(self.kvm.vcpu_states[self.vcpu_id], name, value)
    return property(get, put, doc=doc)


class KvmVcpu:
    """A vCPU as the prefault path sees it: its root, requests, signal, SRCU index.

    Models: include/linux/kvm_host.h: struct kvm_vcpu

    The object is a handle (VM, index); its state lives in ``kvm.vcpu_states``
    so that all shared state is in one place, the VM.
    """

    __slots__ = ("kvm", "vcpu_id")

    root = _vcpu_field("root", "``vcpu->arch.mmu->root``: None is INVALID_PAGE (no root loaded).")
    requests = _vcpu_field("requests", "Pending requests, kept sorted (never set order).")
    tdp = _vcpu_field("tdp", "``vcpu->arch.mmu->page_fault == kvm_tdp_page_fault`` "
                             "(False: shadow paging).")
    guest_mode = _vcpu_field("guest_mode", "Running a nested guest: not the TDP MMU either.")
    signal_pending = _vcpu_field("signal_pending", "``signal_pending(current)`` for the "
                                                   "thread in the ioctl.")
    srcu_idx = _vcpu_field("srcu_idx", "``vcpu->srcu_idx``: the SRCU read section it holds.")
    last_fault_inputs = _vcpu_field("last_fault_inputs", "What the last fault attempt read; "
                                    "a retry waits until it changes.")

    def __init__(self, kvm: "Kvm", vcpu_id: int):
        self.kvm = kvm
        self.vcpu_id = vcpu_id

    def kvm_make_request(self, req: str) -> None:
        """Post a request to this vCPU.

        Models: include/linux/kvm_host.h: kvm_make_request()
        """
        check_choice("req", req, (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, KVM_REQ_VM_DEAD))
        if req not in self.requests:
            self.requests = sorted(self.requests + [req])

    def kvm_test_request(self, req: str) -> bool:
        """Is ``req`` pending?

        Models: include/linux/kvm_host.h: kvm_test_request()
        """
        return req in self.requests

    def kvm_check_request(self, req: str) -> bool:
        """Test and clear a request.

        Models: include/linux/kvm_host.h: kvm_check_request()
        """
        if req in self.requests:
            self.requests = [r for r in self.requests if r != req]
            return True
        return False

    def snapshot(self) -> tuple:
        return (self.vcpu_id,) + self.kvm.vcpu_states[self.vcpu_id].as_tuple()

    def __repr__(self) -> str:
        return f"KvmVcpu({self.vcpu_id})"


class Kvm:
    """A VM: memslot sets per address space, the locks, SRCU, roots and vCPUs.

    Models: include/linux/kvm_host.h: struct kvm

    ``prefault_policy`` picks the prefault behaviour on an INVALID slot (see
    ``PREFAULT_POLICIES``).  ``reload_frees_obsolete_roots`` is True for 6.15
    and later, where ``kvm_mmu_reload()`` handles
    ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS`` (commit 20a6cff3b283).
    ``slot_zap_all`` is ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` on a default VM: deleting
    or moving a slot does the fast zap, which makes every root obsolete; with
    it off (TDX), only the slot's SPTEs are zapped.  ``host_mapping_level``
    stands in for ``host_pfn_mapping_level()`` (chapter 2): the largest page
    the host backs guest memory with.
    """

    def __init__(self, *, nr_as_ids: int = 1, prefault_policy: str = "6.18",
                 reload_frees_obsolete_roots: bool = True, slot_zap_all: bool = True,
                 host_mapping_level: int = PG_LEVEL_2M, pre_fault_allowed: bool = True,
                 sync=None):
        check_int("nr_as_ids", nr_as_ids, 1, 2)
        check_choice("prefault_policy", prefault_policy, PREFAULT_POLICIES)
        check_bool("reload_frees_obsolete_roots", reload_frees_obsolete_roots)
        check_bool("slot_zap_all", slot_zap_all)
        check_int("host_mapping_level", host_mapping_level, PG_LEVEL_4K, PG_LEVEL_1G)
        check_bool("pre_fault_allowed", pre_fault_allowed)
        self.nr_as_ids = nr_as_ids
        self.prefault_policy = prefault_policy
        self.reload_frees_obsolete_roots = reload_frees_obsolete_roots
        self.slot_zap_all = slot_zap_all
        self.host_mapping_level = host_mapping_level
        #: ``kvm->arch.pre_fault_allowed`` (TDX: only once the TD is finalized)
        self.pre_fault_allowed = pre_fault_allowed
        #: ``kvm->__memslots[as_id][0..1]`` and which one ``kvm->memslots[as_id]`` points at
        self.memslot_sets = [[KvmMemslots(), KvmMemslots()] for _ in range(nr_as_ids)]
        self.active_index = [0] * nr_as_ids
        self.mn_active_invalidate_count = 0
        self.roots: list[KvmMmuRoot] = []
        self.next_root_id = 1
        self.vcpus: list[KvmVcpu] = []
        self.vcpu_states: list[_VcpuState] = []
        self.vm_dead = False
        #: WARN_ON_ONCE() messages, in the order they fired
        self.warnings: list[str] = []
        self.attach_sync(sync if sync is not None else SequentialSync())

    def attach_sync(self, sync) -> None:
        """Give the VM fresh locks and SRCU from a back-end (sequential or the explorer's)."""
        self.sync = sync
        self.srcu = sync.srcu_domain("kvm->srcu")
        self.slots_lock = sync.mutex("kvm->slots_lock")
        self.slots_arch_lock = sync.mutex("kvm->slots_arch_lock")

    # -- vCPUs ---------------------------------------------------------------
    def kvm_vm_ioctl_create_vcpu(self) -> KvmVcpu:
        """Add a vCPU.

        Models: virt/kvm/kvm_main.c: kvm_vm_ioctl_create_vcpu()
        """
        self.vcpu_states.append(_VcpuState())
        vcpu = KvmVcpu(self, len(self.vcpus))
        self.vcpus.append(vcpu)
        return vcpu

    def kvm_make_all_cpus_request(self, req: str) -> None:
        """Post ``req`` to every vCPU.

        Models: virt/kvm/kvm_main.c: kvm_make_all_cpus_request()
        """
        for vcpu in self.vcpus:
            vcpu.kvm_make_request(req)

    def kvm_vm_dead(self) -> None:
        """Mark the VM dead and tell every vCPU.

        Models: include/linux/kvm_host.h: kvm_vm_dead()
        """
        self.vm_dead = True
        self.kvm_make_all_cpus_request(KVM_REQ_VM_DEAD)

    # -- memslot sets --------------------------------------------------------
    def _check_as_id(self, as_id) -> int:
        return check_int("as_id", as_id, 0, self.nr_as_ids - 1)

    def _active(self, as_id: int) -> KvmMemslots:
        # Unchecked: for the model's hot paths (explorer predicates).
        return self.memslot_sets[as_id][self.active_index[as_id]]

    def kvm_memslots(self, as_id: int = 0) -> KvmMemslots:
        """The active memslot set (``srcu_dereference(kvm->memslots[as_id])``).

        Models: include/linux/kvm_host.h: __kvm_memslots()
        """
        self._check_as_id(as_id)
        return self.memslot_sets[as_id][self.active_index[as_id]]

    def kvm_get_inactive_memslots(self, as_id: int = 0) -> KvmMemslots:
        """The set writers edit before swapping it in.

        Models: virt/kvm/kvm_main.c: kvm_get_inactive_memslots()
        """
        self._check_as_id(as_id)
        return self.memslot_sets[as_id][self.active_index[as_id] ^ 1]

    def generation(self, as_id: int = 0) -> int:
        """The active set's generation (bit 63 = update in progress)."""
        return self.kvm_memslots(as_id).generation

    def state_tuple(self) -> tuple:
        """A hashable summary of all shared state (for the explorer's state key)."""
        sets = tuple(
            (self.active_index[a],
             tuple((s.generation, tuple((m.id, m.base_gfn, m.npages, m.flags) for m in s.slots))
                   for s in self.memslot_sets[a]))
            for a in range(self.nr_as_ids))
        roots = tuple(r.snapshot() for r in self.roots)
        vcpus = tuple(v.snapshot() for v in self.vcpus)
        return (sets, roots, vcpus, self.next_root_id, self.mn_active_invalidate_count,
                self.vm_dead, tuple(self.warnings))

    def __repr__(self) -> str:
        return f"Kvm(policy={self.prefault_policy!r}, gen={describe_generation(self.generation())})"


def describe_generation(gen: int) -> str:
    """Render a memslot generation: ``'4'`` or ``'4|IN_PROGRESS'``."""
    if gen & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        return f"{gen & ~KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS}|IN_PROGRESS"
    return str(gen)


def describe_slot_flags(flags: int) -> str:
    """Render memslot flags by name: ``'KVM_MEMSLOT_INVALID'``, ``'0'``."""
    names = [(KVM_MEM_LOG_DIRTY_PAGES, "KVM_MEM_LOG_DIRTY_PAGES"),
             (KVM_MEM_READONLY, "KVM_MEM_READONLY"),
             (KVM_MEM_GUEST_MEMFD, "KVM_MEM_GUEST_MEMFD"),
             (KVM_MEMSLOT_INVALID, "KVM_MEMSLOT_INVALID")]
    parts = [name for bit, name in names if flags & bit]
    return "|".join(parts) if parts else "0"


# ---------------------------------------------------------------------------
# The update flow
# ---------------------------------------------------------------------------

def kvm_replace_memslot(kvm: Kvm, old, new) -> None:
    """In the inactive set, replace ``old`` by ``new`` (either may be None).

    Models: virt/kvm/kvm_main.c: kvm_replace_memslot()
    """
    as_id = (old or new).as_id
    slots = kvm.kvm_get_inactive_memslots(as_id)
    keep = [s for s in slots.slots if old is None or s.id != old.id]
    if new is not None:
        keep.append(new)
    slots.slots = sorted(keep, key=lambda s: s.base_gfn)


def kvm_swap_active_memslots(kvm: Kvm, as_id: int):
    """Publish the inactive set, wait for SRCU readers, then finish the generation.

    Models: virt/kvm/kvm_main.c: kvm_swap_active_memslots()

    Called with ``slots_arch_lock`` held; returns with it released (it must be
    dropped before ``synchronize_srcu``: a reader may take it inside its read
    section).
    """
    slots = kvm.kvm_get_inactive_memslots(as_id)
    if kvm.mn_active_invalidate_count:
        # Only waits while an mmu_notifier invalidation is in flight (none is,
        # in this book's scenarios, so the step is usually absent).
        yield from kvm.sync.wait_until("wait for mn_active_invalidate_count == 0",
                                       lambda _w: kvm.mn_active_invalidate_count == 0)

    def publish():
        gen = kvm._active(as_id).generation
        if gen & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
            kvm.warnings.append("kvm_swap_active_memslots: generation already in progress")
        slots.generation = gen | KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
        kvm.active_index[as_id] ^= 1           # rcu_assign_pointer(kvm->memslots[as_id], slots)
    yield from kvm.sync.step("publish memslots, gen g|IN_PROGRESS", publish)
    yield from kvm.slots_arch_lock.unlock()
    yield from kvm.srcu.synchronize()

    def finish():
        # Every reader that could have seen the old set is gone: only now is
        # the new generation final.  +nr_as_ids keeps address spaces' caches apart.
        gen = (slots.generation & ~KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS) + kvm.nr_as_ids
        kvm_arch_memslots_updated(kvm, gen)
        slots.generation = gen
    yield from kvm.sync.step("generation = g + nr_as_ids", finish)


def kvm_arch_memslots_updated(kvm: Kvm, gen: int) -> None:
    """x86 hook after a swap: nothing to do in the model.

    Models: arch/x86/kvm/x86.c: kvm_arch_memslots_updated()

    The kernel checks for an MMIO-generation wrap (and zaps everything if it
    wrapped); the model has no MMIO SPTEs, so there is nothing to invalidate.
    """
    return None


def kvm_activate_memslot(kvm: Kvm, old, new):
    """Swap, then bring the now-inactive set up to date.

    Models: virt/kvm/kvm_main.c: kvm_activate_memslot()
    """
    as_id = (old or new).as_id
    yield from kvm_swap_active_memslots(kvm, as_id)
    # The now-inactive set is invisible to readers: no step of its own.
    kvm_replace_memslot(kvm, old, new)


def kvm_arch_flush_shadow_memslot(kvm: Kvm, slot: KvmMemorySlot) -> None:
    """Zap the slot's SPTEs; on a default VM, the fast zap makes every root obsolete.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_arch_flush_shadow_memslot(), kvm_mmu_zap_all_fast()

    Runs as one step, as if under ``mmu_lock`` held for write.
    """
    if kvm.slot_zap_all:
        # kvm_mmu_zap_all_fast(): invalidate every root, ask every vCPU to drop
        # it, and zap the invalidated roots' SPTEs.
        for root in kvm.roots:
            root.invalid = True
            root.mappings.clear()
        kvm.kvm_make_all_cpus_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)
        return
    for root in kvm.roots:                      # kvm_mmu_zap_memslot(): the slot only
        for gfn in [g for g in root.mappings if slot.base_gfn <= g < slot.end_gfn]:
            del root.mappings[gfn]


def kvm_invalidate_memslot(kvm: Kvm, old: KvmMemorySlot, invalid_slot: KvmMemorySlot):
    """First swap of a delete/move: publish the INVALID copy, wait, zap.

    Models: virt/kvm/kvm_main.c: kvm_invalidate_memslot()
    """
    kvm_replace_memslot(kvm, old, invalid_slot)     # inactive set: readers cannot see it
    yield from kvm_swap_active_memslots(kvm, old.as_id)
    # No reader can still be using the old slot: zap what it mapped.
    label = ("mmu_lock(write): fast zap, every root obsolete" if kvm.slot_zap_all
             else "mmu_lock(write): zap the slot's SPTEs")
    yield from kvm.sync.step(label, lambda: kvm_arch_flush_shadow_memslot(kvm, old))
    yield from kvm.slots_arch_lock.lock()       # released by kvm_swap_active_memslots()


def kvm_create_memslot(kvm: Kvm, new: KvmMemorySlot):
    """Second half of a create: add the slot and swap.

    Models: virt/kvm/kvm_main.c: kvm_create_memslot()
    """
    kvm_replace_memslot(kvm, None, new)
    yield from kvm_activate_memslot(kvm, None, new)


def kvm_delete_memslot(kvm: Kvm, old: KvmMemorySlot, invalid_slot: KvmMemorySlot):
    """Second half of a delete: drop the slot, swap (the second synchronize_srcu).

    Models: virt/kvm/kvm_main.c: kvm_delete_memslot()
    """
    kvm_replace_memslot(kvm, old, None)
    yield from kvm_activate_memslot(kvm, invalid_slot, None)


def kvm_move_memslot(kvm: Kvm, old: KvmMemorySlot, new: KvmMemorySlot,
                     invalid_slot: KvmMemorySlot):
    """Second half of a move: the slot at its new place replaces the INVALID copy.

    Models: virt/kvm/kvm_main.c: kvm_move_memslot()
    """
    kvm_replace_memslot(kvm, old, new)
    yield from kvm_activate_memslot(kvm, invalid_slot, new)


def kvm_update_flags_memslot(kvm: Kvm, old: KvmMemorySlot, new: KvmMemorySlot):
    """A flags-only change: one swap, no INVALID step.

    Models: virt/kvm/kvm_main.c: kvm_update_flags_memslot()
    """
    kvm_replace_memslot(kvm, old, new)
    yield from kvm_activate_memslot(kvm, old, new)


def kvm_set_memslot(kvm: Kvm, old, new, change: int):
    """Apply one memslot change; delete and move take two swaps.

    Models: virt/kvm/kvm_main.c: kvm_set_memslot()

    Called with ``slots_lock`` held.
    """
    check_choice("change", change, MR_CHANGE_NAMES)
    yield from kvm.slots_arch_lock.lock()
    invalid_slot = None
    if change in (KVM_MR_DELETE, KVM_MR_MOVE):
        invalid_slot = old.with_flags(old.flags | KVM_MEMSLOT_INVALID)
        yield from kvm_invalidate_memslot(kvm, old, invalid_slot)
    # kvm_prepare_memory_region() cannot fail in the model.
    if change == KVM_MR_CREATE:
        yield from kvm_create_memslot(kvm, new)
    elif change == KVM_MR_DELETE:
        yield from kvm_delete_memslot(kvm, old, invalid_slot)
    elif change == KVM_MR_MOVE:
        yield from kvm_move_memslot(kvm, old, new, invalid_slot)
    else:
        yield from kvm_update_flags_memslot(kvm, old, new)
    # slots_arch_lock was released by the last kvm_swap_active_memslots().
    return 0


@dataclass
class KvmUserspaceMemoryRegion:
    """The argument of KVM_SET_USER_MEMORY_REGION: ``slot`` is ``as_id << 16 | id``.

    Models: include/uapi/linux/kvm.h: struct kvm_userspace_memory_region
    """

    slot: int
    flags: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int

    def __post_init__(self):
        check_int("slot", self.slot, 0, (1 << 32) - 1)
        check_int("flags", self.flags, 0, (1 << 32) - 1)
        check_u64("guest_phys_addr", self.guest_phys_addr)
        check_u64("memory_size", self.memory_size)
        check_u64("userspace_addr", self.userspace_addr)


_USER_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY | KVM_MEM_GUEST_MEMFD


def _validate_region(kvm: Kvm, mem: KvmUserspaceMemoryRegion):
    # The sanity checks of __kvm_set_memory_region(): errno, like the kernel.
    if mem.flags & ~_USER_FLAGS:
        return -EINVAL
    as_id, slot_id = mem.slot >> 16, mem.slot & 0xFFFF
    if mem.memory_size & (PAGE_SIZE - 1) or mem.guest_phys_addr & (PAGE_SIZE - 1):
        return -EINVAL
    if mem.userspace_addr & (PAGE_SIZE - 1) or mem.userspace_addr + mem.memory_size > HVA_MAX + 1:
        return -EINVAL
    if as_id >= kvm.nr_as_ids or slot_id >= KVM_USER_MEM_SLOTS:
        return -EINVAL
    if mem.guest_phys_addr + mem.memory_size > (GFN_MAX + 1) << PAGE_SHIFT:
        return -EINVAL
    return 0


def __kvm_set_memory_region(kvm: Kvm, mem: KvmUserspaceMemoryRegion):
    """Check a region, decide create/delete/move/flags, and apply it.

    Models: virt/kvm/kvm_main.c: __kvm_set_memory_region()

    Called with ``slots_lock`` held.  Returns 0 or a -errno.
    """
    r = _validate_region(kvm, mem)
    if r:
        return r
    as_id, slot_id = mem.slot >> 16, mem.slot & 0xFFFF
    old = kvm.kvm_memslots(as_id).id_to_memslot(slot_id)
    if mem.memory_size == 0:
        if old is None:
            return -EINVAL
        return (yield from kvm_set_memslot(kvm, old, None, KVM_MR_DELETE))
    base_gfn, npages = mem.guest_phys_addr >> PAGE_SHIFT, mem.memory_size >> PAGE_SHIFT
    if old is None:
        change = KVM_MR_CREATE
    else:
        if mem.flags & KVM_MEM_GUEST_MEMFD:     # guest_memfd slots can only be deleted
            return -EINVAL
        if (mem.userspace_addr != old.userspace_addr or npages != old.npages
                or (mem.flags ^ old.flags) & KVM_MEM_READONLY):
            return -EINVAL
        if base_gfn != old.base_gfn:
            change = KVM_MR_MOVE
        elif mem.flags != old.flags:
            change = KVM_MR_FLAGS_ONLY
        else:
            return 0                            # nothing to change
    if change in (KVM_MR_CREATE, KVM_MR_MOVE):
        for other in kvm.kvm_memslots(as_id).slots:
            if other.id != slot_id and other.base_gfn < base_gfn + npages and base_gfn < other.end_gfn:
                return -EEXIST
    new = KvmMemorySlot(id=slot_id, base_gfn=base_gfn, npages=npages,
                        userspace_addr=mem.userspace_addr, flags=mem.flags, as_id=as_id)
    return (yield from kvm_set_memslot(kvm, old, new, change))


def kvm_set_memory_region(kvm: Kvm, mem: KvmUserspaceMemoryRegion):
    """The KVM_SET_USER_MEMORY_REGION ioctl: take ``slots_lock`` and apply.

    Models: virt/kvm/kvm_main.c: kvm_set_memory_region(), kvm_vm_ioctl_set_memory_region()
    """
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    if not isinstance(mem, KvmUserspaceMemoryRegion):
        raise TypeError(f"mem must be a KvmUserspaceMemoryRegion, got {type(mem).__name__}")
    yield from kvm.slots_lock.lock()
    r = yield from __kvm_set_memory_region(kvm, mem)
    yield from kvm.slots_lock.unlock()
    return r


def set_memory_region(kvm: Kvm, slot: int, guest_phys_addr: int, memory_size: int,
                      userspace_addr: int, flags: int = 0, as_id: int = 0) -> int:
    """Run KVM_SET_USER_MEMORY_REGION alone (no other thread) and return 0 or -errno.

    ``memory_size == 0`` deletes the slot.  A Python convenience around
    :func:`kvm_set_memory_region` with the sequential back-end.
    """
    check_int("slot", slot, 0, 0xFFFF)
    check_int("as_id", as_id, 0, 1)
    mem = KvmUserspaceMemoryRegion(slot=(as_id << 16) | slot, flags=flags,
                                   guest_phys_addr=guest_phys_addr, memory_size=memory_size,
                                   userspace_addr=userspace_addr)
    return run_sequential(kvm_set_memory_region(kvm, mem))
