"""KVM_PRE_FAULT_MEMORY: mapping guest memory ahead of time, and -EAGAIN.

Models: virt/kvm/kvm_main.c: kvm_vcpu_pre_fault_memory(), kvm_vcpu_ioctl() (KVM_PRE_FAULT_MEMORY)
Models: arch/x86/kvm/mmu/mmu.c: kvm_arch_vcpu_pre_fault_memory(), kvm_tdp_map_page(), kvm_mmu_faultin_pfn()
Models: arch/x86/kvm/mmu/mmu_internal.h: kvm_mmu_do_page_fault(), struct kvm_page_fault
Models: tools/testing/selftests/kvm/pre_fault_memory_test.c: pre_fault_memory(), delete_slot_worker()

The ioctl holds ``kvm->srcu`` for its whole loop.  Before Linux 6.18 a fault
that found its memslot flagged ``KVM_MEMSLOT_INVALID`` (being deleted or
moved) returned ``RET_PF_RETRY``, and ``kvm_tdp_map_page()`` retried in place,
still inside the read section -- while the memslot writer sat in
``synchronize_srcu()`` waiting for that very read section to end.  6.18
returns ``-EAGAIN`` for a prefetch fault instead (Sean Christopherson, "KVM:
x86/mmu: Return -EAGAIN if userspace deletes/moves memslot during prefault",
2025-05-20).  ``Kvm.prefault_policy`` selects that behaviour, the one before
it, an alternative from the thread, or one experiment of this book (see
``kvmmu.memslot_update.PREFAULT_POLICIES``).

Roots matter too.  Deleting or moving a slot on a default VM does the "fast
zap": every TDP MMU root becomes obsolete and every vCPU gets
``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS``.  A fault on an obsolete root is stale
(``RET_PF_RETRY``) until ``kvm_mmu_reload()`` swaps the root, which the retry
loop of ``kvm_tdp_map_page()`` never calls: the hang Reinette Chatre hit with
the drop-SRCU sketch, diagnosed by Yan Zhao.  The last part of this module
builds explorer scenarios (:func:`prefault_race`, :func:`selftest_race`) that
check every policy over every interleaving.

Every function that touches shared state is a generator: each shared access
is one ``yield from kvm.sync.step(...)`` so the explorer can interleave it with
a memslot update.  :func:`prefault` and :func:`run_sequential` run them alone.

How the model spins.  ``kvm_tdp_map_page()`` spins on ``RET_PF_RETRY``; a
retry that reads exactly what the last attempt read gets exactly the same
answer.  So the model lets the retry happen only once something it reads has
changed (:func:`fault_inputs`): a spin becomes a blocking wait.  That keeps
the state space finite, and turns the kernel's livelock ("spins forever while
the writer waits") into what the explorer reports as a deadlock ("nothing can
run").  Userspace retries after ``-EAGAIN`` are modelled the same way.

Simplifications: shared (not private) memory only, so no guest_memfd, no
``PFERR_PRIVATE_ACCESS`` and no ``-EFAULT`` memory-fault exits; no
mmu_notifier invalidations (``is_page_fault_stale`` checks the root only);
no MMIO SPTEs (a fault without a slot returns ``RET_PF_EMULATE`` right after
the stale-root check, the kernel's path when MMIO caching is enabled); the host backing level is one number per VM
(``Kvm.host_mapping_level``); the fast page-fault path, async page faults and
``cond_resched`` are not modelled; the mapping itself is one step
(:func:`kvm_tdp_mmu_map`, a small stand-in for the TDP MMU of chapter 3).
"""
from dataclasses import dataclass, field

from . import explorer as _ex
from .bits import u64
from .checks import check_int, check_u64
from .errno import (EAGAIN, EINTR, EINVAL, EIO, ENOENT, EOPNOTSUPP, RET_PF_CONTINUE,
                    RET_PF_EMULATE, RET_PF_FIXED, RET_PF_RETRY,
                    RET_PF_SPURIOUS, RET_PF_WRITE_PROTECTED, errno_name, ret_pf_name)
from .levels import (KVM_HPAGE_SIZE, KVM_MAX_HUGEPAGE_LEVEL, KVM_PAGES_PER_HPAGE, PAGE_SHIFT,
                     PAGE_SIZE, PG_LEVEL_4K, gfn_round_for_level, level_name)
from .memslot_update import (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, KVM_REQ_VM_DEAD, Kvm,
                             KvmMmuRoot, KvmVcpu, ModelHang, describe_generation,
                             describe_slot_flags, run_sequential, set_memory_region)
from .memslots import GFN_MAX, KVM_MEMSLOT_INVALID, KvmMemorySlot, lpage_info_slot

# include/uapi/linux/kvm.h
KVM_PRE_FAULT_MEMORY = 0xC040AED5          # _IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)
KVM_CAP_PRE_FAULT_MEMORY = 236

# arch/x86/include/asm/kvm_host.h: page-fault error code bits used here
from .pferr import (PFERR_GUEST_FINAL_MASK, PFERR_PRESENT_MASK,  # noqa: E402,F401
                    PFERR_PRIVATE_ACCESS, PFERR_WRITE_MASK)

#: Yan Zhao's patch 1/2 appended this after RET_PF_SPURIOUS; it was not merged,
#: so the value exists only in this model (and in that patch).
RET_PF_RETRY_INVALID_SLOT = 7


def pf_name(r: int) -> str:
    """Name a page-fault result, including the unmerged RET_PF_RETRY_INVALID_SLOT."""
    return "RET_PF_RETRY_INVALID_SLOT" if r == RET_PF_RETRY_INVALID_SLOT else ret_pf_name(r)


# ---------------------------------------------------------------------------
# uAPI
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


@dataclass
class KvmPageFault:
    """One fault being handled.

    Models: arch/x86/kvm/mmu/mmu_internal.h: struct kvm_page_fault
    """

    addr: int
    error_code: int
    prefetch: bool
    gfn: int = 0
    slot: object = None
    max_level: int = KVM_MAX_HUGEPAGE_LEVEL
    req_level: int = PG_LEVEL_4K
    goal_level: int = PG_LEVEL_4K
    is_tdp: bool = True

    @property
    def write(self) -> bool:
        return bool(self.error_code & PFERR_WRITE_MASK)


# ---------------------------------------------------------------------------
# Waiting instead of spinning
# ---------------------------------------------------------------------------

def fault_inputs(vcpu: KvmVcpu) -> tuple:
    """Everything a fault attempt's outcome depends on (besides its own gpa).

    The generation of every active memslot set (any swap changes it), the
    vCPU's root and whether it is obsolete, pending requests and a pending
    signal.  A retry whose inputs equal the last attempt's would repeat it.
    """
    kvm = vcpu.kvm
    root = None if vcpu.root is None else (vcpu.root.id, vcpu.root.invalid)
    gens = tuple(kvm._active(a).generation for a in range(kvm.nr_as_ids))
    return (gens, root, tuple(vcpu.requests), vcpu.signal_pending)


def retry_wait(vcpu: KvmVcpu, label: str):
    """Block until a retry could see something new (the model's form of a spin).

    Something new: the inputs differ from those the last attempt recorded,
    or a signal or ``KVM_REQ_VM_DEAD`` is pending (the retry loop checks
    those first and would leave; they may have arrived before the attempt
    recorded its inputs).
    """
    seen = vcpu.last_fault_inputs
    yield from vcpu.kvm.sync.wait_until(label, lambda _w: _retry_would_differ(vcpu, seen))


def _retry_would_differ(vcpu: KvmVcpu, seen) -> bool:
    return (vcpu.signal_pending or vcpu.kvm_test_request(KVM_REQ_VM_DEAD)
            or fault_inputs(vcpu) != seen)


# ---------------------------------------------------------------------------
# Roots
# ---------------------------------------------------------------------------

def kvm_mmu_load(vcpu: KvmVcpu) -> int:
    """Give the vCPU a root: reuse a valid one or allocate a new one.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_load()
    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_alloc_root()
    """
    kvm = vcpu.kvm
    root = next((r for r in kvm.roots if not r.invalid), None)
    if root is None:
        root = KvmMmuRoot(id=kvm.next_root_id)
        kvm.next_root_id += 1
        kvm.roots.append(root)
    vcpu.root = root
    return 0


def kvm_mmu_free_obsolete_roots(vcpu: KvmVcpu) -> None:
    """Drop the vCPU's root if it is obsolete; free roots nobody uses.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_free_obsolete_roots()
    """
    if vcpu.root is not None and vcpu.root.invalid:
        vcpu.root = None
    kvm = vcpu.kvm
    kvm.roots = [r for r in kvm.roots
                 if not r.invalid or any(v.root is r for v in kvm.vcpus)]


def kvm_mmu_reload(vcpu: KvmVcpu) -> int:
    """Make sure the vCPU has a usable root.

    Models: arch/x86/kvm/mmu.h: kvm_mmu_reload()

    Since 6.15 (commit 20a6cff3b283) it first handles a pending
    ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS``; before, it only loaded a root when
    there was none, so an obsolete root stayed put (``Kvm.reload_frees_obsolete_roots``).
    """
    if vcpu.kvm.reload_frees_obsolete_roots and \
            vcpu.kvm_check_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS):
        kvm_mmu_free_obsolete_roots(vcpu)
    if vcpu.root is not None:
        return 0
    return kvm_mmu_load(vcpu)


# ---------------------------------------------------------------------------
# One fault
# ---------------------------------------------------------------------------

def kvm_mmu_max_mapping_level(kvm: Kvm, slot, gfn: int, max_level: int) -> int:
    """The largest page that may map ``gfn``: the slot's lpage_info, then the host.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_max_mapping_level()
    """
    level = max_level
    while level > PG_LEVEL_4K and lpage_info_slot(gfn, slot, level):
        level -= 1
    if level == PG_LEVEL_4K:
        return level
    return min(level, kvm.host_mapping_level)


def kvm_handle_noslot_fault(vcpu: KvmVcpu, fault: KvmPageFault) -> int:
    """No memslot: go on, so that the gfn is treated as emulated MMIO.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_handle_noslot_fault()

    The kernel goes on (``RET_PF_CONTINUE``, then the stale check, then an
    MMIO SPTE) when MMIO caching is enabled; the model assumes it is.
    """
    return RET_PF_CONTINUE


def kvm_mmu_faultin_pfn(vcpu: KvmVcpu, fault: KvmPageFault) -> int:
    """Decide whether the fault can go on; an INVALID slot ends it here.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_faultin_pfn()

    The slot was looked up (under SRCU) when the fault was built.  A slot
    being deleted or moved must not be treated as "no slot": its old SPTEs may
    still be live until the writer's zap (kernel comment in this function).
    """
    slot = fault.slot
    if slot is None:
        return kvm_handle_noslot_fault(vcpu, fault)
    if slot.flags & KVM_MEMSLOT_INVALID:
        policy = vcpu.kvm.prefault_policy
        if policy in ("6.18", "6.18+request-break") and fault.prefetch:
            return -EAGAIN
        if policy == "RET_PF_RETRY_INVALID_SLOT":
            return RET_PF_RETRY_INVALID_SLOT
        return RET_PF_RETRY
    # kvm_mmu_hugepage_adjust(): the largest level the slot and host allow.
    fault.req_level = kvm_mmu_max_mapping_level(vcpu.kvm, slot, fault.gfn, fault.max_level)
    fault.goal_level = fault.req_level
    return RET_PF_CONTINUE


def is_page_fault_stale(vcpu: KvmVcpu, fault: KvmPageFault) -> bool:
    """Is the fault's work pointless because the root went obsolete?

    Models: arch/x86/kvm/mmu/mmu.c: is_page_fault_stale()

    The kernel: a root backed by a shadow page is stale if
    ``is_obsolete_sp()`` (for a TDP MMU root, ``role.invalid``, set by the
    fast zap); a root without one is stale while
    ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS`` is pending.  Its third test, an
    mmu_notifier invalidation of the gfn, is not modelled (no notifiers here).
    """
    if vcpu.root is None:
        return vcpu.kvm_test_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)
    return vcpu.root.invalid


def kvm_tdp_mmu_map(vcpu: KvmVcpu, fault: KvmPageFault) -> int:
    """Install a leaf at ``fault.goal_level`` for the gfn, or find one there.

    Models: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_map(), tdp_mmu_map_handle_target_level()

    A minimal stand-in for the TDP MMU of chapter 3: the root's leaves are a
    dict {first gfn: level}.  A prefetch that finds a present leaf covering the
    gfn is ``RET_PF_SPURIOUS`` and changes nothing.  No slot: ``RET_PF_EMULATE``
    (the kernel would install an MMIO SPTE first).
    """
    if fault.slot is None:
        return RET_PF_EMULATE
    mappings = vcpu.root.mappings
    for base, level in mappings.items():
        if level >= fault.goal_level and base <= fault.gfn < base + KVM_PAGES_PER_HPAGE(level):
            return RET_PF_SPURIOUS
    base = gfn_round_for_level(fault.gfn, fault.goal_level)
    end = base + KVM_PAGES_PER_HPAGE(fault.goal_level)
    for small in [g for g in mappings if base <= g < end]:
        del mappings[small]                     # a huge leaf replaces the small ones
    mappings[base] = fault.goal_level
    return RET_PF_FIXED


def kvm_tdp_mmu_page_fault(vcpu: KvmVcpu, fault: KvmPageFault):
    """The TDP MMU fault handler: faultin, then (under mmu_lock) stale check and map.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_mmu_page_fault()
    """
    r = kvm_mmu_faultin_pfn(vcpu, fault)
    if r != RET_PF_CONTINUE:
        return r

    def map_locked():
        if is_page_fault_stale(vcpu, fault):
            return PfResult(RET_PF_RETRY)
        return PfResult(kvm_tdp_mmu_map(vcpu, fault))
    r = yield from vcpu.kvm.sync.step("mmu_lock(read): stale root? map", map_locked)
    return int(r)


def kvm_mmu_do_page_fault(vcpu: KvmVcpu, gpa: int, error_code: int, prefetch: bool):
    """Build the fault (looking up its memslot) and run the handler.

    Models: arch/x86/kvm/mmu/mmu_internal.h: kvm_mmu_do_page_fault()

    Returns ``(r, level)``: the kernel returns ``r`` and stores
    ``fault.goal_level`` through its ``level`` pointer.
    """
    fault = KvmPageFault(addr=gpa, error_code=error_code, prefetch=prefetch,
                         gfn=gpa >> PAGE_SHIFT)

    def lookup():
        # srcu_dereference(kvm->memslots) + gfn_to_memslot.  Record what this
        # attempt reads, so a retry waits until it changes (module docstring).
        vcpu.last_fault_inputs = fault_inputs(vcpu)
        if fault.gfn <= GFN_MAX:                # beyond it: no slot, as for any MMIO gfn
            fault.slot = vcpu.kvm._active(0).gfn_to_memslot(fault.gfn)
        return describe_found_slot(fault.slot)  # what the step shows
    yield from vcpu.kvm.sync.step("memslot lookup", lookup)
    r = yield from kvm_tdp_mmu_page_fault(vcpu, fault)
    return r, fault.goal_level


def describe_found_slot(slot) -> str:
    """What a memslot lookup found, in a few words: 'slot 10', 'slot 10 INVALID', 'no slot'."""
    if slot is None:
        return "no slot"
    return f"slot {slot.id}" + (" INVALID" if slot.flags & KVM_MEMSLOT_INVALID else "")


class PfResult(int):
    """A RET_PF_* value that prints as its name (for step labels)."""

    def __repr__(self) -> str:
        return pf_name(int(self))


def tdp_map_page_errno(vcpu: KvmVcpu, r: int) -> int:
    """The tail of kvm_tdp_map_page(): turn a final RET_PF_* into 0 or -errno.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_map_page() (the switch on r)
    """
    if r < 0:
        return r
    if r in (RET_PF_FIXED, RET_PF_SPURIOUS, RET_PF_WRITE_PROTECTED):
        return 0
    if r == RET_PF_EMULATE:
        return -ENOENT                          # no memslot: emulated MMIO
    if r == RET_PF_RETRY_INVALID_SLOT and vcpu.kvm.prefault_policy == "RET_PF_RETRY_INVALID_SLOT":
        return -ENOENT                          # Yan Zhao's patch treats it like EMULATE
    if r == RET_PF_RETRY and vcpu.kvm.prefault_policy in ("drop-srcu", "drop-srcu+reload"):
        return -EAGAIN                          # Sean Christopherson's sketch
    vcpu.kvm.warnings.append(f"kvm_tdp_map_page: unexpected {pf_name(r)}")
    return -EIO


def _tdp_mmu_only(vcpu: KvmVcpu) -> bool:
    # Only the TDP MMU is indexed by gpa; shadow paging or a nested guest is not.
    return vcpu.tdp and not vcpu.guest_mode


def kvm_tdp_map_page(vcpu: KvmVcpu, gpa: int, error_code: int):
    """Fault ``gpa`` in as a prefetch, retrying while the handler says RET_PF_RETRY.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_map_page()

    Returns ``(r, level)``.  Under the ``drop-srcu`` policies this is the
    sketch's version: one attempt, and ``RET_PF_RETRY`` becomes ``-EAGAIN``.
    """
    if not _tdp_mmu_only(vcpu):
        return -EOPNOTSUPP, PG_LEVEL_4K
    spins = vcpu.kvm.prefault_policy not in ("drop-srcu", "drop-srcu+reload")
    while True:
        if vcpu.signal_pending:
            return -EINTR, PG_LEVEL_4K
        if vcpu.kvm_check_request(KVM_REQ_VM_DEAD):
            return -EIO, PG_LEVEL_4K
        r, level = yield from kvm_mmu_do_page_fault(vcpu, gpa, error_code, prefetch=True)
        if r != RET_PF_RETRY or not spins:
            break
        if vcpu.kvm.prefault_policy == "6.18+request-break" and \
                vcpu.kvm_test_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS):
            # The experiment: an obsolete root cannot heal inside this loop
            # (only kvm_mmu_reload() frees it), so let userspace call again.
            r = -EAGAIN
            break
        # The kernel loops at once; the model waits for a reason to (docstring).
        yield from retry_wait(vcpu, "RET_PF_RETRY: retry once something changes")
    return tdp_map_page_errno(vcpu, r), level


def kvm_tdp_prefault_page(vcpu: KvmVcpu, gpa: int, error_code: int):
    """Sean Christopherson's sketch: on -EAGAIN drop and re-take kvm->srcu, retry.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_tdp_prefault_page() (proposed 2025-05-19; not merged)

    With ``drop-srcu+reload`` it also calls kvm_mmu_reload() after re-taking
    SRCU, as Yan Zhao asked in review; whether that frees the obsolete root
    depends on ``Kvm.reload_frees_obsolete_roots``.
    """
    if not _tdp_mmu_only(vcpu):
        return -EOPNOTSUPP, PG_LEVEL_4K
    kvm = vcpu.kvm
    while True:
        r, level = yield from kvm_tdp_map_page(vcpu, gpa, error_code)
        if r != -EAGAIN:
            return r, level
        yield from kvm.srcu.read_unlock(vcpu.srcu_idx)
        # Spinning here re-enters new read sections, which do not hold up a
        # synchronize_srcu() that started earlier; the wait sits outside SRCU.
        yield from retry_wait(vcpu, "-EAGAIN: retry once something changes")
        vcpu.srcu_idx = yield from kvm.srcu.read_lock()
        if kvm.prefault_policy == "drop-srcu+reload":
            yield from kvm.sync.step("kvm_mmu_reload", lambda: kvm_mmu_reload(vcpu))


def kvm_arch_vcpu_pre_fault_memory(vcpu: KvmVcpu, range_: KvmPreFaultMemory):
    """Map the page at ``range_.gpa`` and say how many bytes that covered.

    Models: arch/x86/kvm/mmu/mmu.c: kvm_arch_vcpu_pre_fault_memory()

    Progress runs to the end of the mapping created, which may be a 2 MiB or
    1 GiB page: ``min(size, end - gpa)``.
    """
    kvm = vcpu.kvm
    error_code = PFERR_GUEST_FINAL_MASK         # a read of the final gpa
    if not kvm.pre_fault_allowed:
        return -EOPNOTSUPP
    r = yield from kvm.sync.step("kvm_mmu_reload", lambda: kvm_mmu_reload(vcpu))
    if r:
        return r
    gpa = range_.gpa
    if kvm.prefault_policy in ("drop-srcu", "drop-srcu+reload"):
        r, level = yield from kvm_tdp_prefault_page(vcpu, gpa, error_code)
    else:
        r, level = yield from kvm_tdp_map_page(vcpu, gpa, error_code)
    if r < 0:
        return r
    end = (gpa & -KVM_HPAGE_SIZE(level)) + KVM_HPAGE_SIZE(level)
    return min(range_.size, end - gpa)


def _bad_range(range_: KvmPreFaultMemory) -> bool:
    # flags, alignment, and gpa + size <= gpa in u64 (covers size 0 and overflow)
    return bool(range_.flags or range_.gpa % PAGE_SIZE or range_.size % PAGE_SIZE
                or u64(range_.gpa + range_.size) <= range_.gpa)


def kvm_vcpu_pre_fault_memory(vcpu: KvmVcpu, range_: KvmPreFaultMemory):
    """Map ``range_`` page by page inside one SRCU read section.

    Models: virt/kvm/kvm_main.c: kvm_vcpu_pre_fault_memory()

    Returns 0 if any byte was mapped (even if a later chunk failed), else the
    error; ``range_`` is advanced past what was mapped either way.
    """
    if _bad_range(range_):
        return -EINVAL
    kvm = vcpu.kvm
    vcpu.srcu_idx = yield from kvm.srcu.read_lock()
    full_size = range_.size
    while True:
        if vcpu.signal_pending:
            r = -EINTR
            break
        r = yield from kvm_arch_vcpu_pre_fault_memory(vcpu, range_)
        if r == 0 or r == -EIO:                 # WARN_ON_ONCE()
            kvm.warnings.append(f"kvm_vcpu_pre_fault_memory: r = {errno_name(r)}")
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


def kvm_vcpu_ioctl_pre_fault_memory(vcpu: KvmVcpu, user_range: KvmPreFaultMemory):
    """The KVM_PRE_FAULT_MEMORY case of the vCPU ioctl: copy in, run, always copy out.

    Models: virt/kvm/kvm_main.c: kvm_vcpu_ioctl() (KVM_PRE_FAULT_MEMORY)

    The ioctl gate answers -EIO for a dead VM.  On the way back to userspace a
    pending signal is delivered, so it is no longer pending for the next call.
    """
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    if not isinstance(user_range, KvmPreFaultMemory):
        raise TypeError(f"range must be a KvmPreFaultMemory, got {type(user_range).__name__}")
    if vcpu.kvm.vm_dead:
        return -EIO
    kernel_range = KvmPreFaultMemory(user_range.gpa, user_range.size, user_range.flags)
    r = yield from kvm_vcpu_pre_fault_memory(vcpu, kernel_range)
    user_range.gpa, user_range.size = kernel_range.gpa, kernel_range.size
    vcpu.signal_pending = False
    return r


# ---------------------------------------------------------------------------
# Running it alone
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PrefaultResult:
    """What userspace sees after one KVM_PRE_FAULT_MEMORY call."""

    ret: int
    gpa: int
    size: int

    def __str__(self) -> str:
        return f"ret={errno_name(self.ret)} gpa={self.gpa:#x} size={self.size:#x}"

    def __repr__(self) -> str:
        return f"PrefaultResult({self})"


def prefault(vcpu: KvmVcpu, gpa: int, size: int, flags: int = 0) -> PrefaultResult:
    """Call KVM_PRE_FAULT_MEMORY once with no other thread running.

    Raises :class:`~kvmmu.memslot_update.ModelHang` if the call could never
    return alone (e.g. the 6.17 policy on an INVALID slot).
    """
    range_ = KvmPreFaultMemory(gpa, size, flags)
    r = run_sequential(kvm_vcpu_ioctl_pre_fault_memory(vcpu, range_))
    return PrefaultResult(r, range_.gpa, range_.size)


def describe_vcpu(vcpu: KvmVcpu) -> str:
    """One line: root, requests, signal."""
    if vcpu.root is None:
        root = "none"
    else:
        root = f"#{vcpu.root.id}{' (obsolete)' if vcpu.root.invalid else ''}"
    reqs = ",".join(r.replace("KVM_REQ_", "") for r in vcpu.requests) or "-"
    return f"root {root}, requests {reqs}, signal {'yes' if vcpu.signal_pending else 'no'}"


def describe_mappings(root) -> str:
    """The root's leaves as 'gfn:level' items, in gfn order."""
    if root is None:
        return "-"
    items = [f"{gfn:#x}:{level_name(level)}" for gfn, level in sorted(root.mappings.items())]
    return " ".join(items) if items else "-"


# ---------------------------------------------------------------------------
# Userspace
# ---------------------------------------------------------------------------

#: The retry contract, as the selftest and the uAPI documentation imply it.
USERSPACE_CONTRACT = (
    ("0 and size == 0", "done: the whole range is mapped"),
    ("0 and size > 0", "progress, then a stop: call again with the updated gpa/size"),
    ("-EAGAIN", "a memslot in the range is being deleted or moved: call again "
                "once the update is done"),
    ("-EINTR", "a signal arrived before any progress: handle it, call again"),
    ("-ENOENT", "no memslot covers gpa: stop, the rest of the range is not RAM"),
    ("other -errno", "stop: -EINVAL (bad arguments), -EOPNOTSUPP, -EIO, ..."),
)


def prefault_retry_loop(vcpu: KvmVcpu, gpa: int, size: int):
    """Userspace: call KVM_PRE_FAULT_MEMORY until the range is done or an error is final.

    Returns ``(ret, range, calls)``, where ``calls`` lists each call's
    (ret, gpa, size).  After -EAGAIN the retry waits until the memslots (or
    anything else the last fault read) changed -- the model's form of "try
    again later" (module docstring).
    """
    range_ = KvmPreFaultMemory(gpa, size)
    calls = []
    while True:
        r = yield from kvm_vcpu_ioctl_pre_fault_memory(vcpu, range_)
        calls.append((r, range_.gpa, range_.size))
        if r == 0 and range_.size == 0:
            return r, range_, calls
        if r == 0 or r == -EINTR:
            continue
        if r == -EAGAIN:
            yield from retry_wait(vcpu, "userspace: -EAGAIN, retry after the update")
            continue
        return r, range_, calls


def prefault_until_done(vcpu: KvmVcpu, gpa: int, size: int):
    """Run :func:`prefault_retry_loop` alone; returns ``(ret, range, calls)``."""
    return run_sequential(prefault_retry_loop(vcpu, gpa, size))


# ---------------------------------------------------------------------------
# The selftest: tools/testing/selftests/kvm/pre_fault_memory_test.c
# ---------------------------------------------------------------------------

TEST_SLOT = 10
TEST_NPAGES = 513
TEST_SIZE = (2 << 20) + PAGE_SIZE          # SZ_2M + PAGE_SIZE
SZ_2M = 2 << 20
#: the three calls: (gpa offset, size, expected size left)
SELFTEST_CASES = ((0, SZ_2M, 0), (SZ_2M, 2 * PAGE_SIZE, PAGE_SIZE), (TEST_SIZE, PAGE_SIZE, PAGE_SIZE))
#: the model's guest has a 40-bit physical address space (the selftest uses the host's)
SELFTEST_GUEST_PHYS_BITS = 40
SELFTEST_HVA = 0x7F0000000000               # a 1 GiB-aligned host address for the slot


def selftest_gpa(guest_phys_bits: int = SELFTEST_GUEST_PHYS_BITS) -> int:
    """The slot's gpa: the top of guest memory, rounded down to 2 MiB."""
    check_int("guest_phys_bits", guest_phys_bits, 32, 52)
    max_gfn = (1 << (guest_phys_bits - PAGE_SHIFT)) - 1
    return ((max_gfn - TEST_NPAGES) * PAGE_SIZE) & -SZ_2M


def selftest_vm(policy: str = "6.18", **kvm_args):
    """A VM with slot 10: 513 pages at a 2 MiB-aligned gpa; returns (kvm, vcpu, gpa)."""
    kvm = Kvm(prefault_policy=policy, **kvm_args)
    vcpu = kvm.kvm_vm_ioctl_create_vcpu()
    gpa = selftest_gpa()
    r = set_memory_region(kvm, TEST_SLOT, gpa, TEST_NPAGES * PAGE_SIZE, SELFTEST_HVA)
    assert r == 0, errno_name(r)
    return kvm, vcpu, gpa


@dataclass
class SelftestShared:
    """The variables the selftest's main thread and worker share."""

    prefault_ready: bool = False
    recreate_slot: bool = False
    worker_done: bool = False

    def snapshot(self) -> tuple:
        return (self.prefault_ready, self.recreate_slot, self.worker_done)


def delete_slot_worker(kvm: Kvm, shared: SelftestShared, gpa: int):
    """The worker: delete slot 10 once the prefault starts, recreate it when told.

    Models: tools/testing/selftests/kvm/pre_fault_memory_test.c: delete_slot_worker()
    """
    from .memslot_update import KvmUserspaceMemoryRegion, kvm_set_memory_region
    yield from kvm.sync.wait_until("wait for prefault_ready", lambda _w: shared.prefault_ready)
    gone = KvmUserspaceMemoryRegion(TEST_SLOT, 0, gpa, 0, SELFTEST_HVA)
    r = yield from kvm_set_memory_region(kvm, gone)
    assert r == 0, errno_name(r)
    yield from kvm.sync.wait_until("wait for recreate_slot", lambda _w: shared.recreate_slot)
    back = KvmUserspaceMemoryRegion(TEST_SLOT, 0, gpa, TEST_NPAGES * PAGE_SIZE, SELFTEST_HVA)
    r = yield from kvm_set_memory_region(kvm, back)
    assert r == 0, errno_name(r)
    yield from kvm.sync.step("worker exits", lambda: setattr(shared, "worker_done", True))
    return "recreated"


@dataclass
class SelftestOutcome:
    """The end of one ``pre_fault_memory()`` call of the selftest."""

    ret: int
    size_left: int
    calls: list = field(default_factory=list)
    failure: str = ""

    def __str__(self) -> str:
        head = f"ret={errno_name(self.ret)} left={self.size_left:#x} calls={len(self.calls)}"
        return head + (f" FAIL: {self.failure}" if self.failure else " ok")


def pre_fault_memory(vcpu: KvmVcpu, base_gpa: int, offset: int, size: int, expected_left: int,
                     shared: SelftestShared | None = None):
    """The selftest's main loop for one case, with the asserts it makes.

    Models: tools/testing/selftests/kvm/pre_fault_memory_test.c: pre_fault_memory()

    With ``shared`` (a worker is racing), the first result that is not
    -EINTR tells the worker to recreate the slot and joins it, then the loop
    goes on if size is left.  Returns a :class:`SelftestOutcome`; ``failure``
    names the first TEST_ASSERT that would fail.
    """
    kvm = vcpu.kvm
    range_ = KvmPreFaultMemory(base_gpa + offset, size)
    calls = []
    recreated = shared is None
    if shared is not None:
        yield from kvm.sync.step("prefault_ready = true",
                                 lambda: setattr(shared, "prefault_ready", True))
    while True:
        prev = range_.size
        ret = yield from kvm_vcpu_ioctl_pre_fault_memory(vcpu, range_)
        calls.append((ret, range_.gpa, range_.size))
        if (range_.size < prev) == (ret < 0):
            return SelftestOutcome(ret, range_.size, calls,
                                   "progress must come with ret 0, and no progress with ret < 0")
        if ret == -EINTR:
            continue
        if not recreated:
            yield from kvm.sync.step("recreate_slot = true",
                                     lambda: setattr(shared, "recreate_slot", True))
            yield from kvm.sync.wait_until("pthread_join(worker)", lambda _w: shared.worker_done)
            recreated = True
            if range_.size:
                continue
        if range_.size == 0 or ret < 0:
            break
    failure = ""
    if range_.size != expected_left:
        failure = f"size left {range_.size:#x}, expected {expected_left:#x}"
    elif expected_left == 0 and ret != 0:
        failure = f"ret {errno_name(ret)}, expected 0"
    elif expected_left and ret != -ENOENT:
        failure = f"ret {errno_name(ret)}, expected -ENOENT"
    return SelftestOutcome(ret, range_.size, calls, failure)


def run_selftest_case(offset: int, size: int, expected_left: int, policy: str = "6.18",
                      **kvm_args) -> SelftestOutcome:
    """Replay one selftest case alone (no worker) on a fresh VM."""
    kvm, vcpu, gpa = selftest_vm(policy, **kvm_args)
    return run_sequential(pre_fault_memory(vcpu, gpa, offset, size, expected_left))


def run_selftest_cases_in_order(policy: str = "6.18", **kvm_args) -> list:
    """Replay the three cases alone, in order, on one VM (as the selftest does)."""
    kvm, vcpu, gpa = selftest_vm(policy, **kvm_args)
    return [run_sequential(pre_fault_memory(vcpu, gpa, off, size, left))
            for off, size, left in SELFTEST_CASES]


# ---------------------------------------------------------------------------
# Other callers of the fault path, for contrast
# ---------------------------------------------------------------------------

def kvm_run_guest_access(vcpu: KvmVcpu, gpa: int):
    """KVM_RUN with a guest that reads ``gpa``: faults until it is mapped or is MMIO.

    Models: arch/x86/kvm/x86.c: vcpu_enter_guest(), vcpu_run() (SRCU around guest entry)
    Models: arch/x86/kvm/mmu/mmu.c: kvm_mmu_page_fault()

    RET_PF_RETRY means "re-enter the guest": on the way, SRCU is dropped and
    pending requests (freeing obsolete roots) are handled, so a memslot update
    can always finish and the next fault sees its result.
    """
    kvm = vcpu.kvm
    while True:
        vcpu.srcu_idx = yield from kvm.srcu.read_lock()

        def enter():
            if vcpu.kvm_check_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS):
                kvm_mmu_free_obsolete_roots(vcpu)
            return kvm_mmu_reload(vcpu)
        yield from kvm.sync.step("vcpu_enter_guest: requests, kvm_mmu_reload", enter)
        r, _level = yield from kvm_mmu_do_page_fault(vcpu, gpa, PFERR_GUEST_FINAL_MASK,
                                                     prefetch=False)
        yield from kvm.srcu.read_unlock(vcpu.srcu_idx)     # back into the guest
        vcpu.srcu_idx = None
        if r in (RET_PF_RETRY, RET_PF_RETRY_INVALID_SLOT):    # r > 0: re-enter the guest
            yield from retry_wait(vcpu, "guest re-executes the access")
            continue
        if r == RET_PF_EMULATE:
            return "KVM_EXIT_MMIO"
        if r in (RET_PF_FIXED, RET_PF_SPURIOUS):
            return "mapped"
        return errno_name(r)


def tdx_vcpu_init_mem_region(vcpu: KvmVcpu, gpa: int, npages: int):
    """TDX's populate path: map pages with ``slots_lock`` held throughout.

    Models: arch/x86/kvm/vmx/tdx.c: tdx_vcpu_init_mem_region(), tdx_gmem_post_populate()

    Holding ``slots_lock`` serialises it against every memslot update, so it
    can never meet an INVALID slot.  (The model skips guest_memfd and the
    TDX module: each page is just kvm_tdp_map_page().)  Returns the list of
    results, one per page.
    """
    kvm = vcpu.kvm
    yield from kvm.slots_lock.lock()
    yield from kvm.sync.step("kvm_mmu_reload", lambda: kvm_mmu_reload(vcpu))
    results = []
    for i in range(npages):
        r, _level = yield from kvm_tdp_map_page(vcpu, gpa + i * PAGE_SIZE, PFERR_GUEST_FINAL_MASK)
        results.append(r)
        if r < 0:
            break
    yield from kvm.slots_lock.unlock()
    return results


# ---------------------------------------------------------------------------
# Races, on the interleaving explorer
# ---------------------------------------------------------------------------

#: The small slot the race scenarios use: 2 pages at gfn 0x100.
RACE_SLOT = 1
RACE_GFN = 0x100
RACE_NPAGES = 2
RACE_GPA = RACE_GFN << PAGE_SHIFT
RACE_HVA = 0x7F0000100000
#: The move scenario moves the slot down one page: gfn 0x100 stays covered.
MOVE_TO_GFN = 0xFF

WRITERS = ("delete", "move")
CALLERS = ("userspace loop", "one call", "KVM_RUN", "TDX populate")


@dataclass(frozen=True)
class RaceConfig:
    """What a race world is built with (policy and VM knobs, who races whom)."""

    policy: str = "6.18"
    writer: str = "delete"
    caller: str = "userspace loop"
    signal: bool = False
    reload_frees_obsolete_roots: bool = True
    slot_zap_all: bool = True
    #: None: the small race slot; 0, 1, 2: a case of the selftest (slot 10)
    selftest_case: int | None = None
    #: the slot to build: "race" (slot 1, 2 pages) or "selftest" (slot 10, 513 pages)
    slot: str = "race"
    #: the prefault range of the "one call" and "userspace loop" callers
    gpa_offset: int = 0
    size: int = RACE_NPAGES * PAGE_SIZE


class PrefaultWorld(_ex.World, Kvm):
    """A VM that is also the explorer's world: its locks and SRCU are explorer primitives.

    Built sequentially (the slot is created with the real update flow), then
    handed the explorer's primitives.  Being the World, every reference an
    actor holds to the VM is a reference to shared state, not a copy of it.
    """

    def __init__(self, config: RaceConfig):
        _ex.World.__init__(self)
        Kvm.__init__(self, prefault_policy=config.policy,
                     reload_frees_obsolete_roots=config.reload_frees_obsolete_roots,
                     slot_zap_all=config.slot_zap_all)
        self.config = config
        self.kvm_vm_ioctl_create_vcpu()
        if config.selftest_case is None and config.slot == "race":
            self.base_gpa = RACE_GPA
            slot = KvmMemorySlot(RACE_SLOT, RACE_GFN, RACE_NPAGES, RACE_HVA)
            self.shared = None
        else:
            self.base_gpa = selftest_gpa()
            slot = KvmMemorySlot(TEST_SLOT, self.base_gpa >> PAGE_SHIFT, TEST_NPAGES,
                                 SELFTEST_HVA)
            self.shared = SelftestShared()
        # The state a completed KVM_SET_USER_MEMORY_REGION leaves (tests check
        # it equals running the flow); built directly because the explorer
        # builds a fresh world for every replay.
        for slots in self.memslot_sets[0]:
            slots.slots = [slot]
        self.active_index[0] = 1
        self.memslot_sets[0][1].generation = self.nr_as_ids
        self.attach_sync(self)

    # The back-end interface Kvm code calls: srcu_domain and mutex come from
    # World, step and wait_until are the explorer's own.
    step = staticmethod(_ex.step)
    wait_until = staticmethod(_ex.wait_until)

    # What the explorer hashes (all of it) and shows (a summary of it).
    def snapshot_extra(self):
        state = self.state_tuple()
        return {"memslots": state[0],
                "vcpu": state[1:3],
                "userspace": None if self.shared is None else self.shared.snapshot(),
                "other": state[3:]}

    def describe(self, name, value):
        if name == "memslots":
            return describe_memslots(self.kvm_memslots(0))
        if name == "vcpu":
            v = self.vcpus[0]
            return f"{describe_vcpu(v)}; sptes {describe_mappings(v.root)}"
        if name == "userspace":
            if value is None:
                return "-"
            ready, recreate, done = value
            return (f"prefault_ready={int(ready)} recreate_slot={int(recreate)} "
                    f"worker_done={int(done)}")
        if name == "other":
            return f"warnings={len(self.warnings)}"
        return super().describe(name, value)

    def __repr__(self) -> str:
        return f"PrefaultWorld({self.config})"


def describe_memslots(slots) -> str:
    """One line for a memslot set: its generation and each slot's range and flags."""
    parts = [f"gen {describe_generation(slots.generation)}"]
    for s in slots.slots:
        flags = "" if not s.flags else f" {describe_slot_flags(s.flags)}"
        parts.append(f"slot {s.id} gfn {s.base_gfn:#x}+{s.npages}{flags}")
    if len(parts) == 1:
        parts.append("no slots")
    return ", ".join(parts)


def no_stale_spte(w: PrefaultWorld) -> bool:
    """Every leaf in a usable root lies inside a slot of the active memslots."""
    slots = w._active(0)
    for root in w.roots:
        if root.invalid:
            continue
        for gfn, level in root.mappings.items():
            last = gfn + KVM_PAGES_PER_HPAGE(level) - 1
            if not any(s.contains(gfn) and s.contains(last) for s in slots.slots):
                return False
    return True


def _race_range(w: PrefaultWorld) -> KvmPreFaultMemory:
    return KvmPreFaultMemory(u64(w.base_gpa + w.config.gpa_offset), w.config.size)


def actor_prefault_loop(w: PrefaultWorld):
    """Userspace prefaults the configured range with the retry contract."""
    start = _race_range(w)
    r, range_, calls = yield from prefault_retry_loop(w.vcpus[0], start.gpa, start.size)
    return PrefaultCalls(r, range_.gpa, range_.size, tuple(c[0] for c in calls))


def actor_prefault_once(w: PrefaultWorld):
    """Userspace calls KVM_PRE_FAULT_MEMORY once on the configured range."""
    range_ = _race_range(w)
    r = yield from kvm_vcpu_ioctl_pre_fault_memory(w.vcpus[0], range_)
    return PrefaultResult(r, range_.gpa, range_.size)


def actor_kvm_run(w: PrefaultWorld):
    """The vCPU runs a guest that reads the slot's first page."""
    return (yield from kvm_run_guest_access(w.vcpus[0], w.base_gpa))


def actor_tdx_populate(w: PrefaultWorld):
    """TDX's KVM_TDX_INIT_MEM_REGION over the race slot, under slots_lock."""
    results = yield from tdx_vcpu_init_mem_region(w.vcpus[0], w.base_gpa, RACE_NPAGES)
    return tuple(results)


def actor_delete_slot(w: PrefaultWorld):
    """Userspace deletes the world's slot (KVM_SET_USER_MEMORY_REGION, size 0)."""
    from .memslot_update import KvmUserspaceMemoryRegion, kvm_set_memory_region
    slot = w._active(0).slots[0]
    mem = KvmUserspaceMemoryRegion(slot.id, 0, slot.base_gfn << PAGE_SHIFT, 0,
                                   slot.userspace_addr)
    return (yield from kvm_set_memory_region(w, mem))


def actor_move_slot(w: PrefaultWorld):
    """Userspace moves the race slot down one page (gfn 0x100 stays inside it)."""
    from .memslot_update import KvmUserspaceMemoryRegion, kvm_set_memory_region
    mem = KvmUserspaceMemoryRegion(RACE_SLOT, 0, MOVE_TO_GFN << PAGE_SHIFT,
                                   RACE_NPAGES * PAGE_SIZE, RACE_HVA)
    return (yield from kvm_set_memory_region(w, mem))


def actor_signal(w: PrefaultWorld):
    """Another thread sends the prefaulting thread a signal."""
    yield from w.step("kill(A, SIGUSR1)", lambda: setattr(w.vcpus[0], "signal_pending", True))
    return "sent"


def actor_selftest_main(w: PrefaultWorld):
    """The selftest's main thread for its configured case."""
    off, size, left = SELFTEST_CASES[w.config.selftest_case]
    return (yield from pre_fault_memory(w.vcpus[0], w.base_gpa, off, size, left, w.shared))


def actor_selftest_worker(w: PrefaultWorld):
    """The selftest's delete_slot_worker."""
    return (yield from delete_slot_worker(w, w.shared, w.base_gpa))


@dataclass(frozen=True)
class PrefaultCalls:
    """How a userspace retry loop ended: its last ret, gpa/size left, every call's ret."""

    ret: int
    gpa: int
    size: int
    rets: tuple

    def label(self) -> str:
        seq = ", ".join(errno_name(r) for r in self.rets)
        return f"calls return {seq}; left {self.size:#x}"

    def __repr__(self) -> str:
        return f"PrefaultCalls({self.label()})"


class OutcomeTally:
    """A final check that also counts distinct final states by outcome.

    ``check(world, results)`` returns True or a violation message; every
    final state is counted once under ``label(world, results)``.
    """

    def __init__(self, label, check=None):
        self.label = label
        self.check = check
        self.counts: dict[str, int] = {}
        self._seen = set()

    def __call__(self, w, results):
        key = (w.state_tuple(), repr(sorted(results.items())))
        if key not in self._seen:
            self._seen.add(key)
            name = self.label(w, results)
            self.counts[name] = self.counts.get(name, 0) + 1
        return True if self.check is None else self.check(w, results)

    def sorted_counts(self) -> list:
        """(outcome, count) pairs, most frequent first, then by name."""
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _enoent_is_true(w: PrefaultWorld, results) -> bool | str:
    # The userspace contract takes -ENOENT as final: it had better be true.
    a = results["A"]
    gpa = a.gpa if isinstance(a, (PrefaultCalls, PrefaultResult)) else None
    if gpa is not None and a.ret == -ENOENT and (gpa >> PAGE_SHIFT) <= GFN_MAX:
        slot = w.kvm_memslots(0).gfn_to_memslot(gpa >> PAGE_SHIFT)
        if slot is not None:
            return (f"-ENOENT is wrong: userspace gave up on gpa {gpa:#x}, "
                    f"which slot {slot.id} covers")
    return True


def _label_a(w, results) -> str:
    a = results["A"]
    if isinstance(a, PrefaultCalls):
        return a.label()
    if isinstance(a, PrefaultResult):
        return f"returns {errno_name(a.ret)}; left {a.size:#x}"
    if isinstance(a, tuple):                    # TDX populate: one result per page
        return "pages: " + ", ".join(errno_name(r) for r in a)
    return f"KVM_RUN ends with {a}"


def _populate_never_sees_invalid(w, results) -> bool | str:
    bad = [r for r in results["A"] if r == -EAGAIN]
    return "TDX populate met an INVALID slot" if bad else True


def prefault_race(policy: str = "6.18", writer: str = "delete", caller: str = "userspace loop",
                  *, signal: bool = False, reload_frees_obsolete_roots: bool = True,
                  slot_zap_all: bool = True, slot: str = "race", gpa_offset: int = 0,
                  size: int = RACE_NPAGES * PAGE_SIZE):
    """A scenario: A prefaults (or runs, or populates) the race slot, B deletes or moves it.

    Invariant: no usable root maps a gfn outside the memslots.  Final check:
    an -ENOENT given to userspace is true at the end (no slot covers that
    gpa); for TDX populate, it never meets an INVALID slot.  The scenario's
    ``tally`` counts distinct final states by A's outcome.  ``slot`` picks
    the race slot (slot 1, 2 pages at gpa 0x100000) or the selftest's slot 10;
    ``gpa_offset``/``size`` (from the slot's start) is the prefault range.
    Moves are defined for the race slot only.
    """
    from .memslot_update import PREFAULT_POLICIES
    from .checks import check_bool, check_choice
    check_choice("policy", policy, PREFAULT_POLICIES)
    check_choice("writer", writer, WRITERS)
    check_choice("caller", caller, CALLERS)
    check_bool("signal", signal)
    check_choice("slot", slot, ("race", "selftest"))
    check_u64("gpa_offset", gpa_offset)
    check_u64("size", size)
    if writer == "move" and slot != "race":
        raise ValueError("writer 'move' is defined for slot 'race' only")
    cfg = RaceConfig(policy, writer, caller, signal, reload_frees_obsolete_roots, slot_zap_all,
                     slot=slot, gpa_offset=gpa_offset, size=size)
    a_fn, a_title = {
        "userspace loop": (actor_prefault_loop, "userspace: prefault, retry per contract"),
        "one call": (actor_prefault_once, "KVM_PRE_FAULT_MEMORY once"),
        "KVM_RUN": (actor_kvm_run, "KVM_RUN, guest reads the page"),
        "TDX populate": (actor_tdx_populate, "TDX populate (slots_lock)"),
    }[caller]
    slot_id = RACE_SLOT if slot == "race" else TEST_SLOT
    b_fn, b_title = ((actor_delete_slot, f"delete slot {slot_id}") if writer == "delete"
                     else (actor_move_slot, "move slot 1 to gfn 0xff"))
    actors = [_ex.Actor("A", a_title, a_fn), _ex.Actor("B", b_title, b_fn)]
    if signal:
        actors.append(_ex.Actor("C", "signal A", actor_signal))
    check = _populate_never_sees_invalid if caller == "TDX populate" else _enoent_is_true
    tally = OutcomeTally(_label_a, check)
    knobs = []
    if slot != "race" or gpa_offset or size != RACE_NPAGES * PAGE_SIZE:
        knobs.append(f"slot {slot_id}, offset {gpa_offset:#x}, size {size:#x}")
    if not reload_frees_obsolete_roots:
        knobs.append("old kvm_mmu_reload")
    if not slot_zap_all:
        knobs.append("no fast zap")
    name = f"{caller} vs {writer}, policy {policy}" + (f" ({', '.join(knobs)})" if knobs else "")
    sc = _ex.Scenario(name, _world_factory(cfg), actors,
                      invariants=[_ex.Invariant("no SPTE outside the memslots", no_stale_spte)],
                      final_check=tally)
    sc.tally = tally
    return sc


def selftest_race(case: int, policy: str = "6.18", *, reload_frees_obsolete_roots: bool = True,
                  slot_zap_all: bool = True):
    """pre_fault_memory_test's case ``case`` (0, 1, 2): main thread A, worker B.

    Final check: the selftest's TEST_ASSERTs hold; the tally counts final
    states by the sequence of ioctl results.
    """
    from .memslot_update import PREFAULT_POLICIES
    from .checks import check_bool, check_choice
    check_int("case", case, 0, len(SELFTEST_CASES) - 1)
    check_choice("policy", policy, PREFAULT_POLICIES)
    check_bool("slot_zap_all", slot_zap_all)
    cfg = RaceConfig(policy, "delete+recreate", "selftest",
                     reload_frees_obsolete_roots=reload_frees_obsolete_roots,
                     slot_zap_all=slot_zap_all, selftest_case=case)
    off, size, left = SELFTEST_CASES[case]

    def passes(w, results):
        a = results["A"]
        return True if not a.failure else f"TEST_ASSERT fails: {a.failure}"

    def label(w, results):
        a = results["A"]
        return (f"calls return {', '.join(errno_name(c[0]) for c in a.calls)}; "
                f"left {a.size_left:#x}")
    tally = OutcomeTally(label, passes)
    knob = "" if slot_zap_all else " (no fast zap)"
    sc = _ex.Scenario(
        f"selftest case {case + 1} (offset {off:#x}, size {size:#x}), policy {policy}{knob}",
        _world_factory(cfg),
        [_ex.Actor("A", "selftest main: pre_fault_memory()", actor_selftest_main),
         _ex.Actor("B", "delete_slot_worker", actor_selftest_worker)],
        invariants=[_ex.Invariant("no SPTE outside the memslots", no_stale_spte)],
        final_check=tally)
    sc.tally = tally
    return sc


class _world_factory:
    """A zero-argument world factory for one configuration (picklable, freezable)."""

    def __init__(self, config: RaceConfig):
        self.config = config

    def __call__(self) -> PrefaultWorld:
        return PrefaultWorld(self.config)


@dataclass(frozen=True)
class RaceVerdict:
    """One exhaustive check, summarised for a table (no timings)."""

    scenario: str
    verdict: str
    states: int
    transitions: int
    complete_runs: int
    outcomes: tuple
    schedule: str = ""

    def __str__(self) -> str:
        out = [f"{self.scenario}: {self.verdict}",
               f"  {self.states} states, {self.transitions} transitions, "
               f"{self.complete_runs} distinct final states"]
        out += [f"  {n:4d} x {o}" for o, n in self.outcomes]
        return "\n".join(out)


def check_race(scenario) -> tuple:
    """Explore ``scenario`` fully; return (RaceVerdict, explorer Result).

    Every reachable state is expanded, so the order does not change the
    verdict or the counts; depth-first is used because it is cheaper here
    (these scenarios run on the explorer's replay engine, and depth-first
    order lets it extend the run in hand more often).  A counterexample it
    reports need not be the shortest: use ``explorer.explore`` (breadth-first)
    to print one.
    """
    res = _ex.explore(scenario, stop_at_first=False, order="dfs")
    if res.violated:
        names = sorted({n for n, _ in res.violations})
        verdict = "VIOLATED: " + "; ".join(names)
    else:
        verdict = "holds: every interleaving finishes, every check holds"
    schedule = "" if res.schedule is None else res.schedule
    return (RaceVerdict(scenario.name, verdict, res.states, res.transitions, res.complete_runs,
                        tuple(scenario.tally.sorted_counts()), schedule), res)
