"""Seeded problems for chapter 6: what does this KVM_PRE_FAULT_MEMORY call return?

``problem(seed)`` builds the selftest's VM (slot 10: 513 pages at a 2 MiB
aligned gpa), puts it in a situation (fresh, already prefaulted, a signal
pending, slot 10 half-way through a deletion, 4 KiB host pages), picks a
range -- sometimes one the ioctl must refuse -- and asks for the return value
and the gpa/size userspace sees afterwards.  The answer comes from the model
(:func:`kvmmu.scenarios.prefault.prefault`, the ioctl run alone); the worked
solution walks the kernel's loop chunk by chunk.  All randomness comes from
``random.Random(seed)``.  Two kinds: ``call`` (the return value and the
range left) and ``chunks`` (how many chunks the ioctl's loop maps, and how
many bytes).  The problems follow the contract of
:mod:`kvmmu.exercises.base`.
"""
import random

from ..checks import check_choice
from ..cpu import ModelHang, run_alone
from ..errno import EAGAIN, EINTR, EINVAL, ENOENT, errno_name
from ..kvm_host import KvmVcpu
from ..kvm_main import KvmPreFaultMemory
from ..levels import KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PAGE_SIZE, level_name
from ..memslots import KVM_MEMSLOT_INVALID
from ..mmu import kvm_arch_vcpu_pre_fault_memory
from ..scenarios import prefault as P
from .base import AnswerForm, ChoiceField, IntField, Problem, check_seed
from .classroom import Assignment, Slot

__all__ = ["KINDS", "SITUATIONS", "RETURNS", "ASSIGNMENT", "explain", "problem"]

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
        return einval, gpa, size, ["gpa and size must be multiples of 4 KiB: -EINVAL."]
    if (gpa + size) & U64 <= gpa:
        return einval, gpa, size, ["gpa + size <= gpa (size 0, or a wrap): -EINVAL."]
    lines = ["Arguments pass; kvm->srcu is held for the whole loop."]
    full = size
    while True:
        if vcpu.signal_pending:
            r = -EINTR
            lines.append("A signal is pending at the top of the loop: -EINTR.")
            break
        before = kvm.ept.live_leaves(vcpu.root) if vcpu.root is not None else []
        r = run_alone(kvm, kvm_arch_vcpu_pre_fault_memory(vcpu, rng_))
        if r < 0:
            lines.append(f"gpa {rng_.gpa:#x}: {_why(r)}")
            break
        _gfn, level, _pfn = _leaf_at(kvm, vcpu.root, rng_.gpa >> PAGE_SHIFT)
        how = "already mapped, RET_PF_SPURIOUS" if kvm.ept.live_leaves(vcpu.root) == before \
            else f"{level_name(level)} leaf, RET_PF_FIXED"
        lines.append(f"gpa {rng_.gpa:#x}: {how}; "
                     f"min({rng_.size:#x}, end - gpa) = {r:#x}.")
        rng_.size -= r
        rng_.gpa += r
        if rng_.size == 0:
            break
    if full != rng_.size:
        lines.append(f"Bytes were mapped: returns 0, gpa = {rng_.gpa:#x}, "
                     f"size = {rng_.size:#x} left.")
        return 0, rng_.gpa, rng_.size, lines
    lines.append(f"No byte was mapped: returns {errno_name(r)}, range unchanged.")
    return r, rng_.gpa, rng_.size, lines


def _why(r: int) -> str:
    return {
        -ENOENT: "no memslot (RET_PF_EMULATE) -> -ENOENT.",
        -EAGAIN: "memslot INVALID, prefetch fault -> -EAGAIN (6.18).",
        -EINTR: "a signal is pending -> -EINTR.",
    }.get(r, f"-> {errno_name(r)}.")


KINDS = ("call", "chunks")
#: What a call can return; "never returns" is the pre-6.18 hang.
RETURNS = ("0", "-EINVAL", "-EINTR", "-ENOENT", "-EAGAIN", "-EOPNOTSUPP", "-EIO",
           "never returns")
CALL_FORM = AnswerForm((
    ChoiceField("ret", "what the ioctl returns", RETURNS),
    IntField("gpa", "range.gpa afterwards (as given if it never returns)"),
    IntField("size", "range.size afterwards (as given if it never returns)"),
))
CHUNKS_FORM = AnswerForm((
    IntField("chunks", "how many chunks the loop maps", 0, 1 << 20),
    IntField("mapped", "how many bytes those chunks cover"),
))
_POLICY_TEXT = {"6.17": "6.17 (before the -EAGAIN patch)",
                "6.18": "6.18 (after the -EAGAIN patch)"}


def _params(policy, situation, base, offset, size, flags):
    return [("policy", _POLICY_TEXT[policy]), ("situation", situation),
            ("slot 10", f"513 pages at gpa {base:#x}"),
            ("gpa", f"{base + offset:#x} (slot start + {offset:#x})"), ("size", size),
            ("flags", flags)]


def _call_problem(seed: int, rng: random.Random) -> Problem:
    policy = rng.choice(["6.17", "6.18", "6.18"])
    situation = rng.choice(list(SITUATIONS))
    offset, size, flags = _pick_range(rng)
    kvm, vcpu, base = _vm(policy, situation)
    gpa = base + offset
    text = (f"{SITUATIONS[situation]} Userspace calls KVM_PRE_FAULT_MEMORY on slot 10 "
            "with this gpa, size and flags. What does the call return, and what are "
            "gpa and size afterwards?")
    try:
        res = P.prefault(vcpu, gpa, size, flags)
    except ModelHang:
        worked = (
            "ret = never returns. The first fault finds slot 10 INVALID; before 6.18 "
            "that is RET_PF_RETRY, and kvm_tdp_map_page() retries inside the ioctl's "
            "kvm->srcu read section, for which the deleting thread waits in "
            "synchronize_srcu(): only a signal ends it.")
        expected = {"ret": "never returns", "gpa": gpa, "size": size}
    else:
        _r, _g, _s, walk = explain(_vm(policy, situation)[1], gpa, size, flags)
        worked = (f"ret = {errno_name(res.ret)}, gpa = {res.gpa:#x}, size = {res.size:#x}.\n"
                  + "\n".join(f"- {line}" for line in walk))
        expected = {"ret": errno_name(res.ret), "gpa": res.gpa, "size": res.size}
    return Problem.make(seed, "call", __name__,
                        _params(policy, situation, base, offset, size, flags),
                        text, CALL_FORM, expected, worked)


def _chunks_problem(seed: int, rng: random.Random) -> Problem:
    situation = rng.choice(["fresh", "after case 1", "host 4K"])
    offset = rng.randrange(0, P.TEST_NPAGES) * PAGE_SIZE
    size = rng.choice([1, 2, 3, 4, 8]) * PAGE_SIZE
    if rng.random() < 0.3:
        offset = MB2 - rng.choice([1, 2, 3]) * PAGE_SIZE     # across the huge page's end
    kvm, vcpu, base = _vm("6.18", situation)
    ret, gpa, left, walk = explain(vcpu, base + offset, size, 0)
    chunks = sum(1 for line in walk if "RET_PF_" in line and "EMULATE" not in line)
    expected = {"chunks": chunks, "mapped": size - left}
    text = (f"{SITUATIONS[situation]} Userspace calls KVM_PRE_FAULT_MEMORY once on "
            "slot 10 with this gpa and size. How many chunks does the ioctl's loop "
            "map, and how many bytes do they cover?")
    worked = (f"chunks = {chunks}, mapped = {size - left:#x}.\n"
              + "\n".join(f"- {line}" for line in walk))
    return Problem.make(seed, "chunks", __name__,
                        _params("6.18", situation, base, offset, size, 0),
                        text, CHUNKS_FORM, expected, worked)


_MAKERS = {"call": _call_problem, "chunks": _chunks_problem}


def problem(seed: int, kind: str | None = None) -> Problem:
    """Return the prefault problem for ``seed`` in [0, 2**32) (kind drawn unless given).

    The kind is drawn first either way, so ``problem(seed, kind)`` with the
    kind ``problem(seed)`` drew is the same problem.
    """
    check_seed(seed)
    rng = random.Random(seed)
    drawn = KINDS[rng.randrange(len(KINDS))]
    if kind is not None:
        drawn = check_choice("kind", kind, KINDS)
    return _MAKERS[drawn](seed, rng)


#: Chapter 6's nbgrader assignment (tools/classroom.py builds it): each
#: student's own problems (kvmmu.exercises.classroom.student_seed).
ASSIGNMENT = Assignment("ch06_prefault_eagain", __name__, (
    Slot("call", 2), Slot("chunks", 2), Slot("call", 2),
))
