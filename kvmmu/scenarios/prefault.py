"""Chapter 6's races: KVM_PRE_FAULT_MEMORY (or KVM_RUN, or TDX populate) against a memslot update.

The kernel code the actors run is the model's: the ioctl
(:func:`kvmmu.kvm_main.kvm_vcpu_ioctl_pre_fault_memory`), the one fault path
and chapter 3's TDP MMU with its real roots (:mod:`kvmmu.mmu`), the memslot
update flow (:func:`kvmmu.kvm_main.kvm_set_memory_region`), ``KVM_RUN``
(:func:`kvmmu.x86.vcpu_run`) and TDX's populate
(:func:`kvmmu.tdx.tdx_vcpu_init_mem_region`).  This module adds the cast:

- userspace: one ioctl call (:func:`prefault`), the retry loop the uAPI
  implies (:func:`prefault_retry_loop`), and the kernel selftest's two
  threads (:func:`pre_fault_memory`, :func:`delete_slot_worker`);
- the VMs they start from: slot 1 (2 pages at gfn 0x100) for the races,
  the selftest's slot 10 (513 pages at a 2 MiB aligned gpa, backed by
  transparent huge pages), built with ``kvm_create_vm`` +
  ``set_memory_region`` + ``host_populate``;
- the checks: no usable root maps a gfn outside the memslots or another
  page than the host's, ``-ENOENT`` given to userspace is true, TDX
  populate never meets an INVALID slot, the selftest's asserts; and
  :class:`OutcomeTally`, which counts the distinct final states by what
  userspace saw.

The chapter does not teach the fault's internals nor the zap: they run as
one step each (:data:`ZOOM`), so the explorer interleaves the ioctl's
loop, SRCU and the memslot update at their real grain and the fault and the
zap as wholes.

Reference: tools/testing/selftests/kvm/pre_fault_memory_test.c (the version
with ``delete_slot_worker()``).  The selftest's VM has a 40-bit guest
physical address space here (the selftest uses the host's).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..bits import u64
from ..checks import check_bool, check_choice, check_int, check_u64
from ..cpu import run_alone
from ..errno import EAGAIN, EINTR, ENOENT, errno_name
from ..explorer import (Actor, Invariant, Primitive, Scenario, explore, run_schedule, step,
                        wait_until)
from ..host_mm import host_populate, host_translation
from ..kvm_host import PREFAULT_POLICIES, Kvm, KvmVcpu
from ..kvm_main import (KvmPreFaultMemory, KvmUserspaceMemoryRegion, kvm_create_vm,
                        kvm_set_memory_region, kvm_vcpu_ioctl_pre_fault_memory,
                        kvm_vm_ioctl_create_vcpu, set_memory_region)
from ..levels import KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PAGE_SIZE, level_name
from ..memslots import GFN_MAX, __gfn_to_hva_memslot
from ..mmu import retry_wait
from ..tdx import tdx_vcpu_init_mem_region
from ..x86 import vcpu_run
from . import ScenarioEntry

__all__ = [
    "ZOOM", "RACE_SLOT", "RACE_GFN", "RACE_NPAGES", "RACE_GPA", "RACE_HVA", "MOVE_TO_GFN",
    "TEST_SLOT", "TEST_NPAGES", "TEST_SIZE", "SZ_2M", "SELFTEST_CASES", "SELFTEST_HVA",
    "SELFTEST_GUEST_PHYS_BITS", "WRITERS", "CALLERS", "BACKINGS",
    "race_vm", "selftest_gpa", "selftest_vm", "PrefaultResult", "prefault",
    "USERSPACE_CONTRACT", "PrefaultCalls", "prefault_retry_loop", "prefault_until_done",
    "SelftestShared", "delete_slot_worker", "SelftestOutcome", "pre_fault_memory",
    "run_selftest_case", "run_selftest_cases_in_order", "describe_leaves",
    "maps_only_slots_host_pages", "OutcomeTally", "RaceConfig", "prefault_race",
    "selftest_race", "memslot_update_alone", "run_until", "RaceVerdict", "check_race",
    "SCENARIOS",
]

#: What the chapter runs as one step: the fault handler, from faulting the pfn
#: in to the SPTE (the memslot lookup before it stays a step of its own), and
#: both kinds of memslot zap.
ZOOM = frozenset({"kvm_tdp_mmu_page_fault", "kvm_mmu_zap_all_fast", "kvm_zap_gfn_range"})

#: The small slot the races use: 2 pages at gfn 0x100.
RACE_SLOT = 1
RACE_GFN = 0x100
RACE_NPAGES = 2
RACE_GPA = RACE_GFN << PAGE_SHIFT
RACE_HVA = 0x7F0000100000
#: The move takes the slot down one page: gfn 0x100 stays covered.
MOVE_TO_GFN = 0xFF

#: The selftest's slot: 513 pages (2 MiB + 4 KiB) at a 2 MiB aligned gpa.
TEST_SLOT = 10
TEST_NPAGES = 513
SZ_2M = 2 << 20
TEST_SIZE = SZ_2M + PAGE_SIZE
#: The selftest's three calls: (gpa offset, size, expected size left).
SELFTEST_CASES = ((0, SZ_2M, 0), (SZ_2M, 2 * PAGE_SIZE, PAGE_SIZE),
                  (TEST_SIZE, PAGE_SIZE, PAGE_SIZE))
SELFTEST_GUEST_PHYS_BITS = 40
#: A 1 GiB aligned host address for slot 10: gfn and hva agree modulo 2 MiB.
SELFTEST_HVA = 0x7F0000000000

WRITERS = ("delete", "move")
CALLERS = ("userspace loop", "one call", "KVM_RUN", "TDX populate")
#: How the host backs guest memory: transparent huge pages, or 4 KiB pages.
BACKINGS = ("2M", "4K")


# ---------------------------------------------------------------------------
# The VMs
# ---------------------------------------------------------------------------
def _vm(policy: str, zoom, config: dict) -> Kvm:
    check_choice("policy", policy, PREFAULT_POLICIES)
    kvm = kvm_create_vm(prefault_policy=policy, zoom=zoom, **config)
    kvm_vm_ioctl_create_vcpu(kvm)
    return kvm


def race_vm(policy: str = "6.18", *, zoom=ZOOM, **config) -> Kvm:
    """A VM with one vCPU and slot 1 (2 pages at gfn 0x100), its host pages faulted in.

    ``config``: more :class:`kvmmu.kvm_host.KvmConfig` fields
    (``slot_zap_all``, ``reload_frees_obsolete_roots``...).
    """
    kvm = _vm(policy, zoom, config)
    r = set_memory_region(kvm, RACE_SLOT, RACE_GPA, RACE_NPAGES * PAGE_SIZE, RACE_HVA)
    assert r == 0, errno_name(r)
    host_populate(kvm.mm, RACE_HVA, RACE_NPAGES, "4K")
    return kvm


def selftest_gpa(guest_phys_bits: int = SELFTEST_GUEST_PHYS_BITS) -> int:
    """Slot 10's gpa, as the selftest picks it: the top of guest memory, rounded down to 2 MiB."""
    check_int("guest_phys_bits", guest_phys_bits, 32, 52)
    max_gfn = (1 << (guest_phys_bits - PAGE_SHIFT)) - 1
    return ((max_gfn - TEST_NPAGES) * PAGE_SIZE) & -SZ_2M


def selftest_vm(policy: str = "6.18", backing: str = "2M", *, zoom=ZOOM, **config):
    """The selftest's VM: one vCPU and slot 10; returns ``(kvm, vcpu, gpa)``.

    ``backing``: the host backs the slot with transparent huge pages
    (``"2M"``, the selftest's usual case) or 4 KiB pages.
    """
    check_choice("backing", backing, BACKINGS)
    kvm = _vm(policy, zoom, config)
    gpa = selftest_gpa()
    r = set_memory_region(kvm, TEST_SLOT, gpa, TEST_NPAGES * PAGE_SIZE, SELFTEST_HVA)
    assert r == 0, errno_name(r)
    host_populate(kvm.mm, SELFTEST_HVA, TEST_NPAGES, backing)
    return kvm, kvm.vcpus[0], gpa


def _check_rets(name: str, rets) -> tuple:
    if not isinstance(rets, tuple) or not all(isinstance(r, int) and not isinstance(r, bool)
                                              for r in rets):
        raise TypeError(f"{name} must be a tuple of return values (ints)")
    return rets


def _check_vcpu(vcpu) -> KvmVcpu:
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    return vcpu


def describe_leaves(vcpu: KvmVcpu) -> str:
    """The leaves of the vCPU's root as ``gfn:level`` items, in gfn order ('-' if none)."""
    _check_vcpu(vcpu)
    if vcpu.root is None:
        return "-"
    leaves = vcpu.kvm.ept.live_leaves(vcpu.root)
    return " ".join(f"{gfn:#x}:{level_name(level)}" for gfn, level, _ in leaves) or "-"


# ---------------------------------------------------------------------------
# Userspace: one call, and the retry loop the uAPI implies
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefaultResult:
    """What userspace sees after one KVM_PRE_FAULT_MEMORY call."""

    ret: int
    gpa: int
    size: int

    def __post_init__(self):
        check_int("ret", self.ret, -4095, 0)
        check_u64("gpa", self.gpa)
        check_u64("size", self.size)

    def __str__(self) -> str:
        return f"ret={errno_name(self.ret)} gpa={self.gpa:#x} size={self.size:#x}"

    def __repr__(self) -> str:
        return f"PrefaultResult({self})"


def prefault(vcpu: KvmVcpu, gpa: int, size: int, flags: int = 0) -> PrefaultResult:
    """Call KVM_PRE_FAULT_MEMORY once, with no other thread running.

    Raises :class:`kvmmu.cpu.ModelHang` if the call could never return alone
    (the 6.17 policy on an INVALID slot, for instance).
    """
    _check_vcpu(vcpu)
    range_ = KvmPreFaultMemory(gpa, size, flags)
    r = run_alone(vcpu.kvm, kvm_vcpu_ioctl_pre_fault_memory(vcpu, range_))
    return PrefaultResult(r, range_.gpa, range_.size)


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
    anything else the last fault read) changed: the model's form of "try
    again later" (:func:`kvmmu.mmu.retry_wait`).
    """
    _check_vcpu(vcpu)
    range_ = KvmPreFaultMemory(gpa, size)
    calls = ()
    while True:
        r = yield from kvm_vcpu_ioctl_pre_fault_memory(vcpu, range_)
        calls += ((r, range_.gpa, range_.size),)
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
    return run_alone(_check_vcpu(vcpu).kvm, prefault_retry_loop(vcpu, gpa, size))


@dataclass(frozen=True)
class PrefaultCalls:
    """How a userspace retry loop ended: its last ret, gpa/size left, every call's ret."""

    ret: int
    gpa: int
    size: int
    rets: tuple

    def __post_init__(self):
        check_int("ret", self.ret, -4095, 0)
        check_u64("gpa", self.gpa)
        check_u64("size", self.size)
        _check_rets("rets", self.rets)

    def label(self) -> str:
        seq = ", ".join(errno_name(r) for r in self.rets)
        return f"calls return {seq}; left {self.size:#x}"

    def __repr__(self) -> str:
        return f"PrefaultCalls({self.label()})"


# ---------------------------------------------------------------------------
# The selftest: tools/testing/selftests/kvm/pre_fault_memory_test.c
# ---------------------------------------------------------------------------
class SelftestShared(Primitive):
    """The variables the selftest's main thread and its worker share (userspace memory)."""

    _sealed = True

    __slots__ = ("prefault_ready", "recreate_slot", "worker_done")

    def __init__(self, world, name: str = "selftest"):
        if not isinstance(world, Kvm):
            raise TypeError(f"world must be a Kvm, got {type(world).__name__}")
        super().__init__(world, name)
        self.prefault_ready = False
        self.recreate_slot = False
        self.worker_done = False

    def _state(self):
        return (self.prefault_ready, self.recreate_slot, self.worker_done)

    def _load(self, st):
        self.prefault_ready, self.recreate_slot, self.worker_done = st

    def _show(self):
        return (f"prefault_ready={int(self.prefault_ready)} "
                f"recreate_slot={int(self.recreate_slot)} worker_done={int(self.worker_done)}")


def _check_shared(shared) -> SelftestShared:
    if not isinstance(shared, SelftestShared):
        raise TypeError(f"shared must be a SelftestShared, got {type(shared).__name__}")
    return shared


def delete_slot_worker(kvm: Kvm, shared: SelftestShared, gpa: int):
    """The worker: delete slot 10 once the prefault starts, recreate it when told.

    Models: tools/testing/selftests/kvm/pre_fault_memory_test.c: delete_slot_worker()
    """
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    _check_shared(shared)
    check_u64("gpa", gpa)
    yield from wait_until("wait for prefault_ready", lambda _w: shared.prefault_ready)
    gone = KvmUserspaceMemoryRegion(TEST_SLOT, 0, gpa, 0, SELFTEST_HVA)
    r = yield from kvm_set_memory_region(kvm, gone)
    assert r == 0, errno_name(r)
    yield from wait_until("wait for recreate_slot", lambda _w: shared.recreate_slot)
    back = KvmUserspaceMemoryRegion(TEST_SLOT, 0, gpa, TEST_NPAGES * PAGE_SIZE, SELFTEST_HVA)
    r = yield from kvm_set_memory_region(kvm, back)
    assert r == 0, errno_name(r)
    yield from step("worker exits", lambda: setattr(shared, "worker_done", True))
    return "recreated"


@dataclass(frozen=True)
class SelftestOutcome:
    """The end of one ``pre_fault_memory()`` call of the selftest."""

    ret: int
    size_left: int
    calls: tuple = ()
    failure: str = ""

    def __post_init__(self):
        check_int("ret", self.ret, -4095, 0)
        check_u64("size_left", self.size_left)
        if not isinstance(self.calls, tuple) or not all(
                isinstance(c, tuple) and len(c) == 3 for c in self.calls):
            raise TypeError("calls must be a tuple of (ret, gpa, size) tuples")
        if not isinstance(self.failure, str):
            raise TypeError(f"failure must be a string, got {type(self.failure).__name__}")

    def __str__(self) -> str:
        head = f"ret={errno_name(self.ret)} left={self.size_left:#x} calls={len(self.calls)}"
        return head + (f" FAIL: {self.failure}" if self.failure else " ok")


def _selftest_verdict(ret: int, left: int, expected_left: int) -> str:
    # The selftest's final TEST_ASSERTs: the size left, then the return value.
    if left != expected_left:
        return f"size left {left:#x}, expected {expected_left:#x}"
    if expected_left == 0 and ret != 0:
        return f"ret {errno_name(ret)}, expected 0"
    if expected_left and ret != -ENOENT:
        return f"ret {errno_name(ret)}, expected -ENOENT"
    return ""


def pre_fault_memory(vcpu: KvmVcpu, base_gpa: int, offset: int, size: int, expected_left: int,
                     shared: SelftestShared | None = None):
    """The selftest's main loop for one case, with the asserts it makes.

    Models: tools/testing/selftests/kvm/pre_fault_memory_test.c: pre_fault_memory()

    With ``shared`` (a worker is racing), the first result that is not
    -EINTR tells the worker to recreate the slot and joins it, then the loop
    goes on if size is left.  Returns a :class:`SelftestOutcome`; ``failure``
    names the first TEST_ASSERT that would fail.
    """
    _check_vcpu(vcpu)
    for name, value in (("base_gpa", base_gpa), ("offset", offset), ("size", size),
                        ("expected_left", expected_left)):
        check_u64(name, value)
    if shared is not None:
        _check_shared(shared)
    range_ = KvmPreFaultMemory(u64(base_gpa + offset), size)
    calls = ()
    recreated = shared is None
    if shared is not None:
        yield from step("prefault_ready = true", lambda: setattr(shared, "prefault_ready", True))
    while True:
        prev = range_.size
        ret = yield from kvm_vcpu_ioctl_pre_fault_memory(vcpu, range_)
        calls += ((ret, range_.gpa, range_.size),)
        if (range_.size < prev) == (ret < 0):
            return SelftestOutcome(ret, range_.size, calls,
                                   "progress must come with ret 0, and no progress with ret < 0")
        if ret == -EINTR:
            continue
        if not recreated:
            yield from step("recreate_slot = true",
                            lambda: setattr(shared, "recreate_slot", True))
            yield from wait_until("pthread_join(worker)", lambda _w: shared.worker_done)
            recreated = True
            if range_.size:
                continue
        if range_.size == 0 or ret < 0:
            break
    return SelftestOutcome(ret, range_.size, calls,
                           _selftest_verdict(ret, range_.size, expected_left))


def run_selftest_case(offset: int, size: int, expected_left: int, policy: str = "6.18",
                      **config) -> SelftestOutcome:
    """Replay one selftest case alone (no worker) on a fresh VM."""
    kvm, vcpu, gpa = selftest_vm(policy, **config)
    return run_alone(kvm, pre_fault_memory(vcpu, gpa, offset, size, expected_left))


def run_selftest_cases_in_order(policy: str = "6.18", **config) -> list:
    """Replay the three cases alone, in order, on one VM (as the selftest does)."""
    kvm, vcpu, gpa = selftest_vm(policy, **config)
    return [run_alone(kvm, pre_fault_memory(vcpu, gpa, off, size, left))
            for off, size, left in SELFTEST_CASES]


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------
def maps_only_slots_host_pages(kvm: Kvm) -> bool:
    """Every leaf of a usable root lies in an active memslot and maps the host's page there.

    An obsolete root is left out: no vCPU may enter it, and its SPTEs are
    zapped before the update goes on.  A slot flagged INVALID still counts:
    its SPTEs are live until the writer's zap.
    """
    if not isinstance(kvm, Kvm):
        raise TypeError(f"kvm must be a Kvm, got {type(kvm).__name__}")
    slots = kvm.kvm_memslots(0)
    for root in kvm.ept.roots:
        if kvm.ept.sps[root].invalid:
            continue
        for gfn, level, pfn in kvm.ept.live_leaves(root):
            slot = slots.gfn_to_memslot(gfn)
            if slot is None or not slot.contains(gfn + KVM_PAGES_PER_HPAGE(level) - 1):
                return False
            found = host_translation(kvm.mm, __gfn_to_hva_memslot(slot, gfn))
            if found is None or found[0] != pfn:
                return False
    return True


def _invariant() -> Invariant:
    return Invariant("no SPTE outside the memslots or off the host's page",
                     maps_only_slots_host_pages,
                     reads=[("memslots", "slots"), "EPT", "host memory"])


class OutcomeTally:
    """A final check that also counts distinct final states by outcome.

    ``check(world, results)`` returns True or a violation message; every
    distinct final state (the world and every actor's result) is counted
    once under ``label(world, results)``.
    """

    def __init__(self, label, check=None):
        if not callable(label) or (check is not None and not callable(check)):
            raise TypeError("label (and check, if given) must be callable")
        self.label = label
        self.check = check
        self.counts: dict[str, int] = {}
        self._seen: set = set()

    def __call__(self, w, results):
        key = (w._key(), repr(sorted(results.items())))
        if key not in self._seen:
            self._seen.add(key)
            name = self.label(w, results)
            self.counts[name] = self.counts.get(name, 0) + 1
        return True if self.check is None else self.check(w, results)

    def sorted_counts(self) -> list:
        """(outcome, count) pairs, most frequent first, then by name."""
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _enoent_is_true(w: Kvm, results) -> bool | str:
    # The userspace contract takes -ENOENT as final: it had better be true.
    a = results["A"]
    if isinstance(a, (PrefaultCalls, PrefaultResult)) and a.ret == -ENOENT \
            and (a.gpa >> PAGE_SHIFT) <= GFN_MAX:
        slot = w.kvm_memslots(0).gfn_to_memslot(a.gpa >> PAGE_SHIFT)
        if slot is not None:
            return (f"-ENOENT is wrong: userspace gave up on gpa {a.gpa:#x}, "
                    f"which slot {slot.id} covers")
    return True


def _populate_never_sees_invalid(w: Kvm, results) -> bool | str:
    return "TDX populate met an INVALID slot" if -EAGAIN in results["A"] else True


def _label_a(w, results) -> str:
    a = results["A"]
    if isinstance(a, PrefaultCalls):
        return a.label()
    if isinstance(a, PrefaultResult):
        return f"returns {errno_name(a.ret)}; left {a.size:#x}"
    if isinstance(a, tuple):                    # TDX populate: one result per page
        return "pages: " + ", ".join(errno_name(r) for r in a)
    return f"KVM_RUN ends with {a}"


# ---------------------------------------------------------------------------
# The cast, as explorer actors
# ---------------------------------------------------------------------------
def _actor_prefault_loop(w: Kvm, gpa: int, size: int):
    # Userspace prefaults the range with the retry contract.
    r, range_, calls = yield from prefault_retry_loop(w.vcpus[0], gpa, size)
    return PrefaultCalls(r, range_.gpa, range_.size, tuple(c[0] for c in calls))


def _actor_prefault_once(w: Kvm, gpa: int, size: int):
    # Userspace calls KVM_PRE_FAULT_MEMORY once.
    range_ = KvmPreFaultMemory(gpa, size)
    r = yield from kvm_vcpu_ioctl_pre_fault_memory(w.vcpus[0], range_)
    return PrefaultResult(r, range_.gpa, range_.size)


def _actor_kvm_run(w: Kvm, gpa: int, size: int):
    # The vCPU runs a guest that reads the range's first page.
    return (yield from vcpu_run(w.vcpus[0], gpa))


def _actor_tdx_populate(w: Kvm, gpa: int, size: int):
    # TDX's KVM_TDX_INIT_MEM_REGION over the range, under slots_lock.
    return (yield from tdx_vcpu_init_mem_region(w.vcpus[0], gpa, size // PAGE_SIZE))


_CALLER_ACTORS = {
    "userspace loop": (_actor_prefault_loop, "userspace: prefault, retry per contract"),
    "one call": (_actor_prefault_once, "KVM_PRE_FAULT_MEMORY once"),
    "KVM_RUN": (_actor_kvm_run, "KVM_RUN, guest reads the page"),
    "TDX populate": (_actor_tdx_populate, "TDX populate (slots_lock)"),
}


def _actor_update_slot(w: Kvm, mem: KvmUserspaceMemoryRegion):
    # Userspace deletes (size 0) or moves the slot: KVM_SET_USER_MEMORY_REGION.
    return (yield from kvm_set_memory_region(w, mem))


def _actor_signal(w: Kvm):
    # Another thread sends the prefaulting thread a signal.
    vcpu = w.vcpus[0]
    yield from step("kill(A, SIGUSR1)", lambda: setattr(vcpu, "signal_pending", True))
    return "sent"


def _actor_selftest_main(w: Kvm, case: int, gpa: int):
    off, size, left = SELFTEST_CASES[case]
    return (yield from pre_fault_memory(w.vcpus[0], gpa, off, size, left,
                                        w.primitive("selftest")))


def _actor_selftest_worker(w: Kvm, gpa: int):
    return (yield from delete_slot_worker(w, w.primitive("selftest"), gpa))


# ---------------------------------------------------------------------------
# The scenarios
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RaceConfig:
    """What a race world is built with: policy and VM knobs, which slot."""

    policy: str = "6.18"
    reload_frees_obsolete_roots: bool = True
    slot_zap_all: bool = True
    #: "race" (slot 1, 2 pages) or "selftest" (slot 10, 513 pages)
    slot: str = "race"
    #: the selftest's shared variables exist (its two threads race)
    selftest_threads: bool = False

    def __post_init__(self):
        check_choice("policy", self.policy, PREFAULT_POLICIES)
        check_bool("reload_frees_obsolete_roots", self.reload_frees_obsolete_roots)
        check_bool("slot_zap_all", self.slot_zap_all)
        check_choice("slot", self.slot, ("race", "selftest"))
        check_bool("selftest_threads", self.selftest_threads)

    def __call__(self) -> Kvm:
        """Build the world (a scenario's zero-argument factory)."""
        knobs = dict(reload_frees_obsolete_roots=self.reload_frees_obsolete_roots,
                     slot_zap_all=self.slot_zap_all)
        if self.slot == "race":
            kvm = race_vm(self.policy, **knobs)
        else:
            kvm, _vcpu, _gpa = selftest_vm(self.policy, **knobs)
        if self.selftest_threads:
            kvm._register(SelftestShared(kvm))
        return kvm


def _knobs(reload_frees_obsolete_roots: bool, slot_zap_all: bool) -> list:
    out = []
    if not reload_frees_obsolete_roots:
        out.append("old kvm_mmu_reload")
    if not slot_zap_all:
        out.append("no fast zap")
    return out


def prefault_race(policy: str = "6.18", writer: str = "delete", caller: str = "userspace loop",
                  *, signal: bool = False, reload_frees_obsolete_roots: bool = True,
                  slot_zap_all: bool = True, slot: str = "race", gpa_offset: int = 0,
                  size: int = RACE_NPAGES * PAGE_SIZE) -> Scenario:
    """A scenario: A prefaults (or runs, or populates) the slot, B deletes or moves it.

    Invariant: no usable root maps a gfn outside the memslots, nor another
    page than the host's.  Final check: an -ENOENT given to userspace is
    true at the end (no slot covers that gpa); for TDX populate, it never
    meets an INVALID slot.  The scenario's ``tally`` counts distinct final
    states by A's outcome.  ``slot`` picks the race slot (slot 1, 2 pages at
    gpa 0x100000) or the selftest's slot 10; ``gpa_offset``/``size`` (from
    the slot's start) is the range.  ``signal`` adds C, which signals A
    once.  Moves are defined for the race slot only.
    """
    check_choice("policy", policy, PREFAULT_POLICIES)
    check_choice("writer", writer, WRITERS)
    check_choice("caller", caller, CALLERS)
    check_bool("signal", signal)
    check_bool("reload_frees_obsolete_roots", reload_frees_obsolete_roots)
    check_bool("slot_zap_all", slot_zap_all)
    check_choice("slot", slot, ("race", "selftest"))
    check_u64("gpa_offset", gpa_offset)
    check_u64("size", size)
    if writer == "move" and slot != "race":
        raise ValueError("writer 'move' is defined for slot 'race' only")
    if caller == "TDX populate" and not 1 <= size // PAGE_SIZE <= 512:
        raise ValueError("TDX populate takes 1 to 512 pages")
    config = RaceConfig(policy, reload_frees_obsolete_roots, slot_zap_all, slot)
    base, slot_id, hva, npages = ((RACE_GPA, RACE_SLOT, RACE_HVA, RACE_NPAGES) if slot == "race"
                                  else (selftest_gpa(), TEST_SLOT, SELFTEST_HVA, TEST_NPAGES))
    gpa = u64(base + gpa_offset)
    a_fn, a_title = _CALLER_ACTORS[caller]
    if writer == "delete":
        mem = KvmUserspaceMemoryRegion(slot_id, 0, base, 0, hva)
        b_title = f"delete slot {slot_id}"
    else:
        mem = KvmUserspaceMemoryRegion(slot_id, 0, MOVE_TO_GFN << PAGE_SHIFT,
                                       npages * PAGE_SIZE, hva)
        b_title = f"move slot {slot_id} to gfn {MOVE_TO_GFN:#x}"
    actors = [Actor("A", a_title, functools.partial(a_fn, gpa=gpa, size=size)),
              Actor("B", b_title, functools.partial(_actor_update_slot, mem=mem))]
    if signal:
        actors.append(Actor("C", "signal A", _actor_signal))
    check = _populate_never_sees_invalid if caller == "TDX populate" else _enoent_is_true
    tally = OutcomeTally(_label_a, check)
    knobs = _knobs(reload_frees_obsolete_roots, slot_zap_all)
    if slot != "race" or gpa_offset or size != RACE_NPAGES * PAGE_SIZE:
        knobs.insert(0, f"slot {slot_id}, offset {gpa_offset:#x}, size {size:#x}")
    name = f"{caller} vs {writer}, policy {policy}" + (f" ({', '.join(knobs)})" if knobs else "")
    sc = Scenario(name, config, actors, invariants=[_invariant()], final_check=tally)
    sc.tally = tally
    return sc


def selftest_race(case: int, policy: str = "6.18", *, reload_frees_obsolete_roots: bool = True,
                  slot_zap_all: bool = True) -> Scenario:
    """pre_fault_memory_test's case ``case`` (0, 1, 2): main thread A, worker B.

    Final check: the selftest's TEST_ASSERTs hold; the tally counts final
    states by the sequence of ioctl results.
    """
    check_int("case", case, 0, len(SELFTEST_CASES) - 1)
    check_choice("policy", policy, PREFAULT_POLICIES)
    check_bool("reload_frees_obsolete_roots", reload_frees_obsolete_roots)
    check_bool("slot_zap_all", slot_zap_all)
    config = RaceConfig(policy, reload_frees_obsolete_roots, slot_zap_all, "selftest",
                        selftest_threads=True)
    off, size, _left = SELFTEST_CASES[case]
    gpa = selftest_gpa()

    def passes(w, results):
        a = results["A"]
        return True if not a.failure else f"TEST_ASSERT fails: {a.failure}"

    def label(w, results):
        a = results["A"]
        return (f"calls return {', '.join(errno_name(c[0]) for c in a.calls)}; "
                f"left {a.size_left:#x}")
    tally = OutcomeTally(label, passes)
    knobs = _knobs(reload_frees_obsolete_roots, slot_zap_all)
    sc = Scenario(
        f"selftest case {case + 1} (offset {off:#x}, size {size:#x}), policy {policy}"
        + (f" ({', '.join(knobs)})" if knobs else ""),
        config,
        [Actor("A", "selftest main: pre_fault_memory()",
               functools.partial(_actor_selftest_main, case=case, gpa=gpa)),
         Actor("B", "delete_slot_worker", functools.partial(_actor_selftest_worker, gpa=gpa))],
        invariants=[_invariant()], final_check=tally)
    sc.tally = tally
    return sc


def memslot_update_alone(writer: str = "delete", *, slot_zap_all: bool = True) -> Scenario:
    """B alone deletes or moves slot 1 (no other thread): every step of the update flow."""
    check_choice("writer", writer, WRITERS)
    check_bool("slot_zap_all", slot_zap_all)
    sc = prefault_race("6.18", writer, "one call", slot_zap_all=slot_zap_all)
    b = sc.actors[1]
    return Scenario(f"{b.title}, alone", sc.world, [b], invariants=[_invariant()],
                    final_check=lambda w, results: results["B"] == 0)


def run_until(scenario: Scenario, schedule: str, letter: str, label: str) -> str:
    """Extend ``schedule`` with steps of actor ``letter`` until one's label starts with ``label``.

    Returns the longer schedule.  Raises ValueError (from
    :func:`kvmmu.explorer.run_schedule`) if the actor blocks or finishes
    first.  A way to write a schedule by what happens, not by counting steps.
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, got {type(scenario).__name__}")
    for name, value in (("schedule", schedule), ("letter", letter), ("label", label)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    check_choice("letter", letter, scenario.letters)
    for _ in range(1000):
        schedule += letter
        if run_schedule(scenario, schedule).steps[-1].label.startswith(label):
            return schedule
    raise ValueError(f"actor {letter} took 1000 steps without a step labelled {label!r}...")


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

    def __post_init__(self):
        for name in ("scenario", "verdict", "schedule"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string")
        for name in ("states", "transitions", "complete_runs"):
            check_int(name, getattr(self, name), 0)
        if not isinstance(self.outcomes, tuple):
            raise TypeError("outcomes must be a tuple of (outcome, count) pairs")

    def __str__(self) -> str:
        out = [f"{self.scenario}: {self.verdict}",
               f"  {self.states} states, {self.transitions} transitions, "
               f"{self.complete_runs} distinct final states"]
        out += [f"  {n:4d} x {o}" for o, n in self.outcomes]
        return "\n".join(out)


def check_race(scenario: Scenario) -> tuple:
    """Explore ``scenario`` over every interleaving; return (RaceVerdict, explorer Result).

    Every reachable state is expanded (``stop_at_first=False``), so the
    counts and the tally cover all of them; the schedule is a shortest one
    breaking the first violation found.
    """
    if not isinstance(scenario, Scenario) or not isinstance(
            getattr(scenario, "tally", None), OutcomeTally):
        raise TypeError("scenario must be a Scenario built by prefault_race() or selftest_race()")
    res = explore(scenario, stop_at_first=False)
    if res.violated:
        names = sorted({n for n, _ in res.violations})
        verdict = "VIOLATED: " + "; ".join(names)
    else:
        verdict = "holds: every interleaving finishes, every check holds"
    return (RaceVerdict(scenario.name, verdict, res.states, res.transitions, res.complete_runs,
                        tuple(scenario.tally.sorted_counts()), res.schedule or ""), res)


def _entry(build, summary: str, expect: str) -> ScenarioEntry:
    return ScenarioEntry(build, 6, summary, expect)


SCENARIOS = {
    "prefault-deadlock-6.17": _entry(
        functools.partial(prefault_race, "6.17", "delete", "one call", slot_zap_all=False),
        "6.17: a prefault retries on the INVALID slot inside kvm->srcu while the "
        "deletion waits in synchronize_srcu() for it", "violated"),
    "prefault-signal-6.17": _entry(
        functools.partial(prefault_race, "6.17", "delete", "one call", signal=True,
                          slot_zap_all=False),
        "6.17: a signal ends the prefault's retry loop with -EINTR", "holds"),
    "kvm-run-vs-delete": _entry(
        functools.partial(prefault_race, "6.17", "delete", "KVM_RUN"),
        "KVM_RUN retries by re-entering the guest, outside kvm->srcu: no deadlock", "holds"),
    "prefault-eagain-6.18": _entry(
        functools.partial(prefault_race, "6.18", "delete", slot_zap_all=False),
        "6.18: -EAGAIN to userspace, which calls again after the deletion", "holds"),
    "prefault-eagain-move-6.18": _entry(
        functools.partial(prefault_race, "6.18", "move", slot_zap_all=False),
        "6.18: -EAGAIN during a move, then the moved slot is prefaulted", "holds"),
    "prefault-enoent-on-move": _entry(
        functools.partial(prefault_race, "RET_PF_RETRY_INVALID_SLOT", "move",
                          slot_zap_all=False),
        "RET_PF_RETRY_INVALID_SLOT tells userspace -ENOENT for a gpa the moved slot "
        "still covers", "violated"),
    "prefault-drop-srcu-stale-root": _entry(
        functools.partial(prefault_race, "drop-srcu", "delete"),
        "the drop-SRCU sketch retries forever on a root the fast zap made obsolete",
        "violated"),
    "prefault-drop-srcu-reload": _entry(
        functools.partial(prefault_race, "drop-srcu+reload", "delete"),
        "the sketch with kvm_mmu_reload() (which frees obsolete roots since 6.15)", "holds"),
    "prefault-stale-root-6.18": _entry(
        functools.partial(prefault_race, "6.18", "delete"),
        "model finding: 6.18 on a default VM hangs on a root made obsolete after the "
        "prefault's kvm_mmu_reload(), inside its kvm->srcu read section", "violated"),
    "prefault-request-break": _entry(
        functools.partial(prefault_race, "6.18+request-break", "delete"),
        "this book's experiment: stop retrying while KVM_REQ_MMU_FREE_OBSOLETE_ROOTS is "
        "pending", "holds"),
    "tdx-populate-vs-delete": _entry(
        functools.partial(prefault_race, "6.17", "delete", "TDX populate", slot_zap_all=False),
        "TDX populate holds slots_lock: it never meets an INVALID slot", "holds"),
    "selftest-case-1-6.18": _entry(
        functools.partial(selftest_race, 0, "6.18", slot_zap_all=False),
        "the selftest's first case against delete_slot_worker, 6.18 without the fast zap",
        "holds"),
}
