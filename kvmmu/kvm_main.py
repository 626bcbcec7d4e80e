"""KVM's entry points: creating a VM, updating memslots, the MMU notifier, prefaulting.

Models: virt/kvm/kvm_main.c: kvm_create_vm(), kvm_vm_ioctl_create_vcpu(), kvm_vm_dead()
Models: virt/kvm/kvm_main.c: __kvm_set_memory_region(), kvm_set_memslot(), kvm_invalidate_memslot(), kvm_swap_active_memslots()
Models: virt/kvm/kvm_main.c: kvm_create_memslot(), kvm_delete_memslot(), kvm_move_memslot(), kvm_update_flags_memslot()
Models: virt/kvm/kvm_main.c: kvm_handle_hva_range(), kvm_mmu_notifier_invalidate_range_start(), kvm_mmu_notifier_invalidate_range_end()
Models: virt/kvm/kvm_main.c: kvm_vcpu_pre_fault_memory(), kvm_vcpu_ioctl() (KVM_PRE_FAULT_MEMORY)

Reference version: Linux 6.17 (read at v6.17-rc3).  The functions here
call into the architecture (:mod:`kvmmu.mmu`); the kvm_main.c functions
the architecture calls back are in :mod:`kvmmu.kvm_host`.

**Memslot updates.**  A VM keeps, per address space, two memslot sets;
readers (vCPUs, under ``kvm->srcu``) see the *active* one, a writer (under
``kvm->slots_lock``) edits the *inactive* one and then swaps.  Deleting or
moving a slot takes two swaps: the first publishes a copy of the slot
flagged ``KVM_MEMSLOT_INVALID``, waits for every SRCU reader that might
still use the old slot (``synchronize_srcu_expedited``), and zaps the
slot's SPTEs; the second publishes the set without it (or with the moved
slot).  Each swap marks the generation "update in progress" (bit 63) while
readers may see the new set, and bumps it by the number of address spaces
once they all have.

**The MMU notifier.**  Every change the host makes to a mapping KVM may
have copied is bracketed by ``invalidate_range_start``/``_end``: start
begins an invalidation and zaps KVM's SPTEs of the range under ``mmu_lock``
held for write; end moves ``mmu_invalidate_seq``.  A fault that looked the
page up before compares the sequence under ``mmu_lock`` and retries.

**Where the model simplifies.**

- ``kvm_prepare_memory_region``/``kvm_commit_memory_region`` cannot fail
  and allocate nothing (a slot computes its ``lpage_info`` when built).
- Edits to the *inactive* memslot set take no step of their own: no reader
  can see that set until the swap publishes it.
- ``mn_invalidate_lock`` protects a counter that changes in one step.
- The notifier's handler zaps with ``may_block``; ``kvm_arch_guest_memory_reclaimed``
  does nothing on x86 without SEV.
"""
from __future__ import annotations

from dataclasses import dataclass

from .bits import u64
from .checks import check_int, check_u64
from .cpu import cpu_code, run_alone, step_when
from .errno import EEXIST, EINTR, EINVAL, EIO, errno_name
from .explorer import step, wait_until
from .guest_memfd import kvm_gmem_bind
from .host_mm import MmuNotifier, MmuNotifierOps
from .kvm_host import (KVM_REQ_VM_DEAD, Kvm, KvmVcpu, _check_kvm, _check_vcpu,
                       gfn_to_pfn_cache_invalidate_start,
                       kvm_make_all_cpus_request, kvm_mmu_invalidate_begin,
                       kvm_mmu_invalidate_end, kvm_mmu_unmap_gfn_range)
from .levels import PAGE_SHIFT, PAGE_SIZE
from .memslots import (GFN_MAX, HVA_MAX, KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES,
                       KVM_MEM_READONLY, KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
                       KVM_MEMSLOT_INVALID, KVM_USER_MEM_SLOTS, KvmMemorySlot,
                       hva_to_gfn_memslot)
from .mmu import kvm_arch_flush_shadow_memslot, kvm_arch_memslots_updated, kvm_arch_vcpu_pre_fault_memory
from .tdp_mmu import KvmGfnRange
from .tlb import kvm_flush_remote_tlbs_range

__all__ = [
    "KVM_MR_CREATE", "KVM_MR_DELETE", "KVM_MR_MOVE", "KVM_MR_FLAGS_ONLY", "MR_CHANGE_NAMES",
    "kvm_create_vm", "kvm_vm_ioctl_create_vcpu", "kvm_vm_dead", "describe_generation",
    "kvm_replace_memslot", "kvm_swap_active_memslots", "kvm_activate_memslot",
    "kvm_invalidate_memslot", "kvm_create_memslot", "kvm_delete_memslot", "kvm_move_memslot",
    "kvm_update_flags_memslot", "kvm_set_memslot", "KvmUserspaceMemoryRegion",
    "__kvm_set_memory_region", "kvm_set_memory_region", "set_memory_region",
    "kvm_handle_hva_range", "kvm_mmu_notifier_invalidate_range_start",
    "kvm_mmu_notifier_invalidate_range_end", "kvm_mmu_notifier_ops",
    "KvmPreFaultMemory", "kvm_vcpu_pre_fault_memory", "kvm_vcpu_ioctl_pre_fault_memory",
    "KVM_PRE_FAULT_MEMORY", "KVM_CAP_PRE_FAULT_MEMORY",
]

# enum kvm_mr_change (include/linux/kvm_host.h)
KVM_MR_CREATE = 0
KVM_MR_DELETE = 1
KVM_MR_MOVE = 2
KVM_MR_FLAGS_ONLY = 3
MR_CHANGE_NAMES = {KVM_MR_CREATE: "KVM_MR_CREATE", KVM_MR_DELETE: "KVM_MR_DELETE",
                   KVM_MR_MOVE: "KVM_MR_MOVE", KVM_MR_FLAGS_ONLY: "KVM_MR_FLAGS_ONLY"}

# include/uapi/linux/kvm.h
KVM_PRE_FAULT_MEMORY = 0xC040AED5          # _IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)
KVM_CAP_PRE_FAULT_MEMORY = 236


# ---------------------------------------------------------------------------
# The VM and its vCPUs
# ---------------------------------------------------------------------------
def kvm_create_vm(**config) -> Kvm:
    """Create a VM (``KVM_CREATE_VM``) and subscribe it to its mm's MMU notifier.

    Models: virt/kvm/kvm_main.c: kvm_create_vm()

    ``config`` is :class:`kvmmu.kvm_host.KvmConfig`'s keyword arguments.
    """
    kvm = Kvm(**config)
    # kvm_init_mmu_notifier(): KVM hears of every change to the VMM's mappings.
    kvm.mm.notifier_subscriptions.append(MmuNotifier(kvm_mmu_notifier_ops, kvm))
    return kvm



def _check_slot_or_none(name: str, slot) -> None:
    if slot is not None and not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"{name} must be a KvmMemorySlot or None, got {type(slot).__name__}")


def _check_slots(kvm, **slots) -> None:
    _check_kvm(kvm)
    for name, slot in slots.items():
        if not isinstance(slot, KvmMemorySlot):
            raise TypeError(f"{name} must be a KvmMemorySlot, got {type(slot).__name__}")


def _check_callables(**fns) -> None:
    for name, fn in fns.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")


def _check_region(mem) -> None:
    if not isinstance(mem, KvmUserspaceMemoryRegion):
        raise TypeError(f"mem must be a KvmUserspaceMemoryRegion, got {type(mem).__name__}")


def _check_pre_fault_range(range_) -> None:
    if not isinstance(range_, KvmPreFaultMemory):
        raise TypeError(f"range_ must be a KvmPreFaultMemory, got {type(range_).__name__}")


def _check_mn_range(mn, start, end) -> None:
    if not isinstance(mn, MmuNotifier) or not isinstance(mn.owner, Kvm):
        raise TypeError(f"mn must be a VM's MmuNotifier, got {type(mn).__name__}")
    check_u64("start", start)
    check_int("end", end, start + 1, 1 << 64)

def kvm_vm_ioctl_create_vcpu(kvm: Kvm) -> KvmVcpu:
    """Add a vCPU (``KVM_CREATE_VCPU``).

    Models: virt/kvm/kvm_main.c: kvm_vm_ioctl_create_vcpu()
    """
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    if kvm.nr_vcpus >= 8:
        raise ValueError("the model's VMs have at most 8 vCPUs")
    return kvm.add_vcpu()


def kvm_vm_dead(kvm: Kvm) -> None:
    """Mark the VM dead and tell every vCPU.

    Models: include/linux/kvm_host.h: kvm_vm_dead()
    """
    _check_kvm(kvm)
    kvm.vm_dead = True
    kvm_make_all_cpus_request(kvm, KVM_REQ_VM_DEAD)


def describe_generation(gen: int) -> str:
    """Render a memslot generation: ``'4'`` or ``'4|IN_PROGRESS'``."""
    check_u64("gen", gen)
    if gen & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        return f"{gen & ~KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS}|IN_PROGRESS"
    return str(gen)


# ---------------------------------------------------------------------------
# The memslot update flow
# ---------------------------------------------------------------------------
def kvm_replace_memslot(kvm: Kvm, old, new) -> None:
    """In the inactive set, replace ``old`` by ``new`` (either may be None).

    Models: virt/kvm/kvm_main.c: kvm_replace_memslot()
    """
    _check_kvm(kvm)
    _check_slot_or_none("old", old)
    _check_slot_or_none("new", new)
    as_id = (old or new).as_id
    kvm.kvm_get_inactive_memslots(as_id).replace(old, new)


@cpu_code
def kvm_swap_active_memslots(kvm: Kvm, as_id: int):
    """Publish the inactive set, wait for SRCU readers, then finish the generation.

    Models: virt/kvm/kvm_main.c: kvm_swap_active_memslots()

    Called with ``slots_arch_lock`` held; returns with it released (it must be
    dropped before ``synchronize_srcu_expedited()``: a reader may take it
    inside its read section).  The swap waits while an MMU-notifier
    invalidation is in flight, so that its start and end see the same slots
    (``KvmConfig.swap_waits_for_invalidations=False`` leaves that wait out:
    an unsafe variant for the explorer).
    """
    _check_kvm(kvm)
    check_int("as_id", as_id, 0, kvm.config.nr_as_ids - 1)
    def publish():
        slots = kvm.kvm_get_inactive_memslots(as_id)
        gen = kvm.kvm_memslots(as_id).generation
        if gen & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
            kvm.warn("kvm_swap_active_memslots: generation already in progress")
        slots.generation = gen | KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
        # rcu_assign_pointer(kvm->memslots[as_id], slots):
        kvm.memslot_state.active[as_id] ^= 1
    # Under mn_invalidate_lock: wait until no invalidation is in flight, publish.
    waits = kvm.config.swap_waits_for_invalidations
    yield from step_when("publish memslots, gen g|IN_PROGRESS",
                         lambda _w: not waits or kvm.mn_active_invalidate_count == 0,
                         publish)
    yield from kvm.slots_arch_lock.unlock()
    yield from kvm.srcu.synchronize()  # synchronize_srcu_expedited()

    def finish():
        # Every reader that could have seen the old set is gone: only now is
        # the new generation final.  +nr_as_ids keeps address spaces' caches apart.
        slots = kvm.kvm_memslots(as_id)
        gen = ((slots.generation & ~KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS)
               + kvm.config.nr_as_ids)
        kvm_arch_memslots_updated(kvm, gen)
        slots.generation = gen
    yield from step("generation = g + nr_as_ids", finish)


def kvm_activate_memslot(kvm: Kvm, old, new):
    """Swap, then bring the now-inactive set up to date.

    Models: virt/kvm/kvm_main.c: kvm_activate_memslot()
    """
    _check_kvm(kvm)
    _check_slot_or_none("old", old)
    _check_slot_or_none("new", new)
    as_id = (old or new).as_id
    yield from kvm_swap_active_memslots(kvm, as_id)
    # The now-inactive set is invisible to readers: no step of its own.
    kvm_replace_memslot(kvm, old, new)


@cpu_code
def kvm_invalidate_memslot(kvm: Kvm, old: KvmMemorySlot,
                           invalid_slot: KvmMemorySlot):
    """First swap of a delete/move: publish the INVALID copy, wait, zap.

    Models: virt/kvm/kvm_main.c: kvm_invalidate_memslot()
    """
    _check_slots(kvm, old=old, invalid_slot=invalid_slot)
    kvm_replace_memslot(kvm, old, invalid_slot)   # inactive: no reader sees it
    yield from kvm_swap_active_memslots(kvm, old.as_id)
    # No reader can still be using the old slot: zap what it mapped.
    yield from kvm_arch_flush_shadow_memslot(kvm, old)
    yield from kvm.slots_arch_lock.lock()   # kvm_swap_active_memslots() frees it


def kvm_create_memslot(kvm: Kvm, new: KvmMemorySlot):
    """Second half of a create: add the slot and swap.

    Models: virt/kvm/kvm_main.c: kvm_create_memslot()
    """
    _check_slots(kvm, new=new)
    kvm_replace_memslot(kvm, None, new)
    yield from kvm_activate_memslot(kvm, None, new)


def kvm_delete_memslot(kvm: Kvm, old: KvmMemorySlot, invalid_slot: KvmMemorySlot):
    """Second half of a delete: drop the slot, swap (the second synchronize_srcu).

    Models: virt/kvm/kvm_main.c: kvm_delete_memslot()
    """
    _check_slots(kvm, old=old, invalid_slot=invalid_slot)
    kvm_replace_memslot(kvm, old, None)
    yield from kvm_activate_memslot(kvm, invalid_slot, None)


def kvm_move_memslot(kvm: Kvm, old: KvmMemorySlot, new: KvmMemorySlot,
                     invalid_slot: KvmMemorySlot):
    """Second half of a move: the slot at its new place replaces the INVALID copy.

    Models: virt/kvm/kvm_main.c: kvm_move_memslot()
    """
    _check_slots(kvm, old=old, new=new, invalid_slot=invalid_slot)
    kvm_replace_memslot(kvm, old, new)
    yield from kvm_activate_memslot(kvm, invalid_slot, new)


def kvm_update_flags_memslot(kvm: Kvm, old: KvmMemorySlot, new: KvmMemorySlot):
    """A flags-only change: one swap, no INVALID step.

    Models: virt/kvm/kvm_main.c: kvm_update_flags_memslot()
    """
    _check_slots(kvm, old=old, new=new)
    kvm_replace_memslot(kvm, old, new)
    yield from kvm_activate_memslot(kvm, old, new)


@cpu_code
def kvm_set_memslot(kvm: Kvm, old, new, change: int):
    """Apply one memslot change; delete and move take two swaps.

    Models: virt/kvm/kvm_main.c: kvm_set_memslot()

    Called with ``slots_lock`` held.
    """
    check_int("change", change, KVM_MR_CREATE, KVM_MR_FLAGS_ONLY)
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
    """The argument of KVM_SET_USER_MEMORY_REGION2: ``slot`` is ``as_id << 16 | id``.

    Models: include/uapi/linux/kvm.h: struct kvm_userspace_memory_region2

    ``guest_memfd`` names the guest_memfd file of a ``KVM_MEM_GUEST_MEMFD``
    slot (the kernel passes its file descriptor), ``guest_memfd_offset`` the
    file offset in bytes.
    """

    slot: int
    flags: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    guest_memfd: str | None = None
    guest_memfd_offset: int = 0

    def __post_init__(self):
        check_int("slot", self.slot, 0, (1 << 32) - 1)
        check_int("flags", self.flags, 0, (1 << 32) - 1)
        check_u64("guest_phys_addr", self.guest_phys_addr)
        check_u64("memory_size", self.memory_size)
        check_u64("userspace_addr", self.userspace_addr)
        if self.guest_memfd is not None and not isinstance(self.guest_memfd, str):
            raise TypeError(f"guest_memfd must be a guest_memfd file's name, "
                            f"got {type(self.guest_memfd).__name__}")
        check_u64("guest_memfd_offset", self.guest_memfd_offset)


_USER_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY | KVM_MEM_GUEST_MEMFD


def _validate_region(kvm: Kvm, mem: KvmUserspaceMemoryRegion) -> int:
    # The sanity checks of __kvm_set_memory_region(): errno, like the kernel.
    if mem.flags & ~_USER_FLAGS:
        return -EINVAL
    as_id, slot_id = mem.slot >> 16, mem.slot & 0xFFFF
    if mem.memory_size & (PAGE_SIZE - 1) or mem.guest_phys_addr & (PAGE_SIZE - 1):
        return -EINVAL
    if mem.userspace_addr & (PAGE_SIZE - 1) or mem.userspace_addr + mem.memory_size > HVA_MAX + 1:
        return -EINVAL
    if as_id >= kvm.config.nr_as_ids or slot_id >= KVM_USER_MEM_SLOTS:
        return -EINVAL
    if mem.guest_phys_addr + mem.memory_size > (GFN_MAX + 1) << PAGE_SHIFT:
        return -EINVAL
    if bool(mem.flags & KVM_MEM_GUEST_MEMFD) != (mem.guest_memfd is not None):
        return -EINVAL
    if mem.flags & KVM_MEM_GUEST_MEMFD and (mem.flags & KVM_MEM_READONLY
                                            or mem.guest_memfd_offset & (PAGE_SIZE - 1)):
        return -EINVAL                          # guest_memfd slots cannot be read-only
    return 0


class _Change(tuple):
    """What a memslot update will do: (old, new, change), printed by its kind."""

    def __repr__(self) -> str:
        return MR_CHANGE_NAMES[self[2]]


def _decide_change(kvm: Kvm, mem: KvmUserspaceMemoryRegion):
    # The part of __kvm_set_memory_region() that reads the memslots (under
    # slots_lock): create, delete, move or flags, or an errno.
    as_id, slot_id = mem.slot >> 16, mem.slot & 0xFFFF
    old = kvm.kvm_memslots(as_id).id_to_memslot(slot_id)
    if mem.memory_size == 0:
        return -EINVAL if old is None else _Change((old, None, KVM_MR_DELETE))
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
                        userspace_addr=mem.userspace_addr, flags=mem.flags, as_id=as_id,
                        gmem=mem.guest_memfd, gmem_pgoff=mem.guest_memfd_offset >> PAGE_SHIFT)
    if change == KVM_MR_CREATE and new.gmem is not None:
        try:
            kvm_gmem_bind(kvm, new)
        except ValueError:
            return -EINVAL
    return _Change((old, new, change))


@cpu_code
def __kvm_set_memory_region(kvm: Kvm, mem: KvmUserspaceMemoryRegion):
    """Check a region, decide create/delete/move/flags, and apply it; 0 or -errno.

    Models: virt/kvm/kvm_main.c: __kvm_set_memory_region()

    Called with ``slots_lock`` held.
    """
    _check_kvm(kvm)
    _check_region(mem)
    r = _validate_region(kvm, mem)
    if r:
        return r
    decision = yield from step("__kvm_set_memory_region: check the change",
                               lambda: _decide_change(kvm, mem))
    if isinstance(decision, int):
        return decision                         # 0 (nothing to do) or -errno
    old, new, change = decision
    return (yield from kvm_set_memslot(kvm, old, new, change))


@cpu_code
def kvm_set_memory_region(kvm: Kvm, mem: KvmUserspaceMemoryRegion):
    """The KVM_SET_USER_MEMORY_REGION ioctl: take ``slots_lock`` and apply; 0 or -errno.

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
                      userspace_addr: int, flags: int = 0, as_id: int = 0,
                      guest_memfd: str | None = None, guest_memfd_offset: int = 0) -> int:
    """Run KVM_SET_USER_MEMORY_REGION alone (no other thread) and return 0 or -errno.

    ``memory_size == 0`` deletes the slot.  A Python convenience around
    :func:`kvm_set_memory_region`; the host memory behind a new slot is
    mapped (anonymous, faulted in on first touch) as a VMM's mmap would.
    """
    check_int("slot", slot, 0, 0xFFFF)
    check_int("as_id", as_id, 0, 1)
    mem = KvmUserspaceMemoryRegion(slot=(as_id << 16) | slot, flags=flags,
                                   guest_phys_addr=guest_phys_addr, memory_size=memory_size,
                                   userspace_addr=userspace_addr, guest_memfd=guest_memfd,
                                   guest_memfd_offset=guest_memfd_offset)
    r = run_alone(kvm, kvm_set_memory_region(kvm, mem))
    if r == 0 and memory_size and not flags & KVM_MEM_GUEST_MEMFD:
        kvm.mm.mmap(userspace_addr, memory_size >> PAGE_SHIFT)
    return r


# ---------------------------------------------------------------------------
# The MMU notifier
# ---------------------------------------------------------------------------
class _GfnRanges(tuple):
    """The (slot, gfn_start, gfn_end) a host range overlaps, printed briefly (step labels)."""

    def __repr__(self) -> str:
        return "; ".join(f"slot {slot.id}: gfns [{lo:#x}, {hi:#x})" for slot, lo, hi in self) \
            or "no slot"


def _gfn_ranges(kvm: Kvm, start: int, end: int) -> tuple:
    # The slots whose host range overlaps [start, end), as (slot, gfn_start, gfn_end).
    out = []
    for slot in kvm.kvm_memslots(0).slots:
        slot_end = slot.userspace_addr + (slot.npages << PAGE_SHIFT)
        hva_start = max(start, slot.userspace_addr)
        hva_end = min(end, slot_end)
        if hva_start >= hva_end:
            continue
        out.append((slot, hva_to_gfn_memslot(hva_start, slot),
                    hva_to_gfn_memslot(hva_end + PAGE_SIZE - 1, slot)))
    return _GfnRanges(out)


@cpu_code
def kvm_handle_hva_range(kvm: Kvm, start: int, end: int, on_lock, handler):
    """Run ``on_lock`` once and ``handler`` per overlapping slot, under mmu_lock (write).

    Models: virt/kvm/kvm_main.c: kvm_handle_hva_range()

    Nothing is locked, and ``on_lock`` does not run, when no memslot overlaps
    the range: that is why begin and end must see the same memslots.  The
    handler returns whether a TLB flush is due; the flush comes before the
    unlock.  Returns whether a slot was found.
    """
    _check_kvm(kvm)
    check_u64("start", start)
    check_int("end", end, start + 1, 1 << 64)
    _check_callables(on_lock=on_lock, handler=handler)
    ranges = yield from step("memslots overlapping the range",
                             lambda: _gfn_ranges(kvm, start, end))
    if not ranges:
        return False
    yield from kvm.mmu_lock.write_lock()
    if on_lock is not None:
        yield from step(on_lock.__name__, lambda: on_lock(kvm))
    flush = False
    if handler is not None:
        for slot, gfn_start, gfn_end in ranges:
            flush = (yield from handler(kvm, KvmGfnRange(slot, gfn_start, gfn_end))) or flush
    if flush:
        lo, hi = min(r[1] for r in ranges), max(r[2] for r in ranges)
        yield from kvm_flush_remote_tlbs_range(kvm, lo, hi - lo)
    yield from kvm.mmu_lock.write_unlock()
    return True


def _mn_count(kvm: Kvm, delta: int) -> int:
    kvm.mn_active_invalidate_count += delta
    if kvm.mn_active_invalidate_count < 0:
        kvm.warn("mn_active_invalidate_count < 0")
    return kvm.mn_active_invalidate_count


@cpu_code
def kvm_mmu_notifier_invalidate_range_start(mn: MmuNotifier, start: int, end: int):
    """KVM's range_start: count it, invalidate pfn caches, begin an invalidation, zap.

    Models: virt/kvm/kvm_main.c: kvm_mmu_notifier_invalidate_range_start()
    """
    _check_mn_range(mn, start, end)
    kvm = mn.owner                              # mmu_notifier_to_kvm()
    yield from step("mn_active_invalidate_count++", lambda: _mn_count(kvm, 1))
    # pfn caches first, before mmu_lock: no cache lock is taken under mmu_lock,
    # which is why the caches look at mn_active_invalidate_count.
    yield from gfn_to_pfn_cache_invalidate_start(kvm, start, end)
    return (yield from kvm_handle_hva_range(kvm, start, end, kvm_mmu_invalidate_begin,
                                            kvm_mmu_unmap_gfn_range))


@cpu_code
def kvm_mmu_notifier_invalidate_range_end(mn: MmuNotifier, start: int, end: int):
    """KVM's range_end: end the invalidation (the sequence moves), uncount it.

    Models: virt/kvm/kvm_main.c: kvm_mmu_notifier_invalidate_range_end()
    """
    _check_mn_range(mn, start, end)
    kvm = mn.owner
    found = yield from kvm_handle_hva_range(kvm, start, end, kvm_mmu_invalidate_end, None)
    yield from step("mn_active_invalidate_count--", lambda: _mn_count(kvm, -1))
    return found


#: What ``kvm_init_mmu_notifier`` registers (the callbacks the model needs).
kvm_mmu_notifier_ops = MmuNotifierOps(
    invalidate_range_start=kvm_mmu_notifier_invalidate_range_start,
    invalidate_range_end=kvm_mmu_notifier_invalidate_range_end,
)


# ---------------------------------------------------------------------------
# KVM_PRE_FAULT_MEMORY
# ---------------------------------------------------------------------------
@dataclass
class KvmPreFaultMemory:
    """The ioctl's in/out argument: on return, gpa/size describe what is left.

    Models: include/uapi/linux/kvm.h: struct kvm_pre_fault_memory
    """

    gpa: int
    size: int
    flags: int = 0

    def __post_init__(self):
        # The Python API insists on u64s; what the *ioctl* thinks of the values
        # (alignment, flags, overflow) is its business: it returns -EINVAL.
        check_u64("gpa", self.gpa)
        check_u64("size", self.size)
        check_u64("flags", self.flags)

    def __repr__(self) -> str:
        return f"KvmPreFaultMemory(gpa={self.gpa:#x}, size={self.size:#x}, flags={self.flags:#x})"


def _bad_range(range_: KvmPreFaultMemory) -> bool:
    # flags, alignment, and gpa + size <= gpa in u64 (covers size 0 and overflow)
    return bool(range_.flags or range_.gpa % PAGE_SIZE or range_.size % PAGE_SIZE
                or u64(range_.gpa + range_.size) <= range_.gpa)


@cpu_code
def kvm_vcpu_pre_fault_memory(vcpu: KvmVcpu, range_: KvmPreFaultMemory):
    """Map ``range_`` page by page inside one SRCU read section.

    Models: virt/kvm/kvm_main.c: kvm_vcpu_pre_fault_memory()

    Returns 0 if any byte was mapped (even if a later chunk failed), else the
    error; ``range_`` is advanced past what was mapped either way.
    """
    _check_vcpu(vcpu)
    _check_pre_fault_range(range_)
    if _bad_range(range_):
        return -EINVAL
    kvm = vcpu.kvm
    vcpu.srcu_idx = yield from kvm.srcu.read_lock()
    full_size = range_.size
    while True:
        if (yield from step("signal pending?", lambda: vcpu.signal_pending)):
            r = -EINTR
            break
        r = yield from kvm_arch_vcpu_pre_fault_memory(vcpu, range_)
        if r == 0 or r == -EIO:                 # WARN_ON_ONCE()
            kvm.warn(f"kvm_vcpu_pre_fault_memory: r = {errno_name(r)}")
            break
        if r < 0:
            break
        range_.size -= r
        range_.gpa += r
        if range_.size == 0:
            break
    yield from kvm.srcu.read_unlock(vcpu.srcu_idx)
    vcpu.srcu_idx = None
    return r if full_size == range_.size else 0


@cpu_code
def kvm_vcpu_ioctl_pre_fault_memory(vcpu: KvmVcpu, user_range: KvmPreFaultMemory):
    """The KVM_PRE_FAULT_MEMORY case of the vCPU ioctl: copy in, run, always copy out.

    Models: virt/kvm/kvm_main.c: kvm_vcpu_ioctl() (KVM_PRE_FAULT_MEMORY)

    The ioctl gate answers -EIO for a dead VM.  On the way back to userspace a
    pending signal is delivered, so it is no longer pending for the next call.
    """
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    if not isinstance(user_range, KvmPreFaultMemory):
        raise TypeError(f"user_range must be a KvmPreFaultMemory, got {type(user_range).__name__}")
    if (yield from step("ioctl gate: VM dead?", lambda: vcpu.kvm.vm_dead)):
        return -EIO
    kernel_range = KvmPreFaultMemory(user_range.gpa, user_range.size, user_range.flags)
    r = yield from kvm_vcpu_pre_fault_memory(vcpu, kernel_range)
    user_range.gpa, user_range.size = kernel_range.gpa, kernel_range.size
    vcpu.signal_pending = False                 # delivered on the way back to userspace
    return r
