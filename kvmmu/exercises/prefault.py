"""Seeded problems for chapter 6: what does this KVM_PRE_FAULT_MEMORY call return?

``problem(seed)`` builds the selftest's VM (slot 10: 513 pages at a 2 MiB
aligned gpa), puts it in a situation (fresh, already prefaulted, a signal
pending, slot 10 half-way through a deletion, 4 KiB host pages), picks a
range -- sometimes one the ioctl must refuse -- and asks for the return value
and the gpa/size userspace sees afterwards.  The answer comes from the model
(:func:`kvmmu.scenarios.prefault.prefault`, the ioctl run alone); the worked
solution walks the kernel's loop chunk by chunk.  All randomness comes from
``random.Random(seed)``.
"""
import random

from ..checks import check_int
from ..cpu import ModelHang, run_alone
from ..errno import EAGAIN, EINTR, EINVAL, ENOENT, errno_name
from ..kvm_host import KvmVcpu
from ..kvm_main import KvmPreFaultMemory
from ..levels import KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PAGE_SIZE, level_name
from ..memslots import KVM_MEMSLOT_INVALID
from ..mmu import kvm_arch_vcpu_pre_fault_memory
from ..scenarios import prefault as P
from .base import Problem

__all__ = ["SITUATIONS", "explain", "problem"]

MB2 = 2 << 20
U64 = (1 << 64) - 1

SITUATIONS = {
    "fresh": "Nothing has been prefaulted yet.",
    "after case 1": "The selftest's first case already ran: the first 2 MiB are mapped.",
    "signal": "A signal is pending for the calling thread.",
    "deleting": ("Another thread is deleting slot 10: the copy flagged KVM_MEMSLOT_INVALID "
                 "is published and that thread waits in synchronize_srcu()."),
    "host 4K": "The host backs guest memory with 4 KiB pages only (no THP).",
}


def _vm(policy: str, situation: str):
    kvm, vcpu, base = P.selftest_vm(policy, "4K" if situation == "host 4K" else "2M")
    if situation == "after case 1":
        P.prefault(vcpu, base, MB2)
    elif situation == "signal":
        vcpu.signal_pending = True
    elif situation == "deleting":
        # The first swap of the deletion is done: the active set holds the INVALID copy.
        active = kvm.kvm_memslots()
        slot = active.slots[0]
        active.replace(slot, slot.with_flags(slot.flags | KVM_MEMSLOT_INVALID))
    return kvm, vcpu, base


def _pick_range(rng: random.Random):
    offset = rng.choice([0, 0x1000, MB2 - 0x1000, MB2, MB2 + 0x1000,
                         rng.randrange(0, P.TEST_NPAGES) * PAGE_SIZE])
    size = rng.choice([PAGE_SIZE, 2 * PAGE_SIZE, 3 * PAGE_SIZE, MB2, P.TEST_SIZE])
    flags = 0
    twist = rng.random()
    if twist < 0.08:
        offset += 0x10                      # gpa not page aligned
    elif twist < 0.14:
        size = 0
    elif twist < 0.18:
        size += 0x200                       # size not page aligned
    elif twist < 0.22:
        flags = 1
    return offset, size, flags


def _leaf_at(kvm, root: int, gfn: int):
    # The (gfn, level, pfn) leaf of ``root`` that maps ``gfn``.
    return next(leaf for leaf in kvm.ept.live_leaves(root)
                if leaf[0] <= gfn < leaf[0] + KVM_PAGES_PER_HPAGE(leaf[1]))


def explain(vcpu, gpa: int, size: int, flags: int) -> tuple:
    """Walk kvm_vcpu_pre_fault_memory() on ``vcpu`` chunk by chunk, in words.

    Runs the model's kvm_arch_vcpu_pre_fault_memory() for each chunk, so the
    walk changes the VM exactly as the call would.  Returns
    ``(ret, gpa, size, lines)``.
    """
    if not isinstance(vcpu, KvmVcpu):
        raise TypeError(f"vcpu must be a KvmVcpu, got {type(vcpu).__name__}")
    rng_ = KvmPreFaultMemory(gpa, size, flags)
    kvm = vcpu.kvm
    einval = -EINVAL
    if flags:
        return einval, gpa, size, [f"flags = {flags} is not 0: -EINVAL before anything else."]
    if gpa % PAGE_SIZE or size % PAGE_SIZE:
        return einval, gpa, size, ["gpa and size must both be multiples of 4 KiB: -EINVAL, "
                                   "range untouched."]
    if (gpa + size) & U64 <= gpa:
        return einval, gpa, size, ["gpa + size <= gpa (size 0, or the sum wraps): -EINVAL, "
                                   "range untouched."]
    lines = ["The arguments pass the checks; SRCU is taken for the whole loop."]
    full = size
    while True:
        if vcpu.signal_pending:
            r = -EINTR
            lines.append("A signal is pending at the top of the loop: r = -EINTR.")
            break
        before = kvm.ept.live_leaves(vcpu.root) if vcpu.root is not None else []
        r = run_alone(kvm, kvm_arch_vcpu_pre_fault_memory(vcpu, rng_))
        if r < 0:
            lines.append(f"gpa {rng_.gpa:#x}: {_why(r)}")
            break
        _gfn, level, _pfn = _leaf_at(kvm, vcpu.root, rng_.gpa >> PAGE_SHIFT)
        how = "already mapped (RET_PF_SPURIOUS)" if kvm.ept.live_leaves(vcpu.root) == before \
            else f"mapped by a {level_name(level)} leaf (RET_PF_FIXED)"
        lines.append(f"gpa {rng_.gpa:#x}: {how}; progress = min(size {rng_.size:#x}, "
                     f"end of the {level_name(level)} page - gpa) = {r:#x}.")
        rng_.size -= r
        rng_.gpa += r
        if rng_.size == 0:
            break
    if full != rng_.size:
        lines.append(f"Some bytes were mapped, so the call returns 0; gpa = {rng_.gpa:#x}, "
                     f"size = {rng_.size:#x} is what is left.")
        return 0, rng_.gpa, rng_.size, lines
    lines.append(f"No byte was mapped, so the call returns {errno_name(r)}; gpa and size "
                 "are unchanged.")
    return r, rng_.gpa, rng_.size, lines


def _why(r: int) -> str:
    return {
        -ENOENT: "no memslot covers it (RET_PF_EMULATE, emulated MMIO) -> -ENOENT.",
        -EAGAIN: "its memslot is INVALID and this is a prefetch fault -> -EAGAIN (6.18).",
        -EINTR: "a signal is pending -> -EINTR.",
    }.get(r, f"-> {errno_name(r)}.")


def problem(seed: int) -> Problem:
    """Generate the problem for ``seed``: its question and worked solution."""
    check_int("seed", seed, 0, (1 << 63) - 1)
    rng = random.Random(seed)
    policy = rng.choice(["6.17", "6.18", "6.18"])
    situation = rng.choice(list(SITUATIONS))
    offset, size, flags = _pick_range(rng)
    kvm, vcpu, base = _vm(policy, situation)
    gpa = base + offset
    question = (
        f"Problem {seed}. Slot 10 holds 513 pages at gpa {base:#x} (2 MiB aligned); "
        f"the kernel follows policy {policy} "
        f"({'before' if policy == '6.17' else 'after'} the -EAGAIN patch). "
        f"{SITUATIONS[situation]} Userspace calls KVM_PRE_FAULT_MEMORY with "
        f"gpa = {gpa:#x} (slot start + {offset:#x}), size = {size:#x}, flags = {flags}. "
        "What does the call return, and what are gpa and size afterwards?")
    try:
        res = P.prefault(vcpu, gpa, size, flags)
    except ModelHang:
        solution = (
            "The call never returns.  The first fault finds slot 10 INVALID; before 6.18 "
            "that is RET_PF_RETRY, and kvm_tdp_map_page() retries while the ioctl still "
            "holds kvm->srcu.  The deleting thread waits in synchronize_srcu() for exactly "
            "that read section: a deadlock that only a signal ends (the call then returns "
            "-EINTR, or 0 if it had mapped something).")
        return Problem(seed, question, solution, "hang")
    kvm2, vcpu2, _ = _vm(policy, situation)
    _ret, _gpa, _size, walk = explain(vcpu2, gpa, size, flags)
    head = f"ret = {errno_name(res.ret)}, gpa = {res.gpa:#x}, size = {res.size:#x}."
    return Problem(seed, question, head + "\n" + "\n".join(f"- {line}" for line in walk),
                   "call")
