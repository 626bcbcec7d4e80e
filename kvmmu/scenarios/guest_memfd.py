"""Chapter 4's races: guest_memfd's in-place conversion (RFC v5) on the one VM.

The world is one :class:`kvmmu.kvm_host.Kvm` with a vCPU, one guest_memfd
file of the RFC (:func:`kvmmu.guest_memfd_rfc.kvm_gmem_create`) and a
memslot bound to it whose gfns are private, so that the vCPU's fault goes
the one fault path (``kvm_mmu_do_page_fault``) into ``kvm_gmem_get_pfn``.
The folios are in the page cache from the start, and every offset is ALL
(shared): the host may map it, take GUP references and drop them.

This module holds the cast (the actors), the worlds they start from, the
checks (invariants after every step, final checks once every actor is
done) and the scenarios, by name in :data:`SCENARIOS`.  It also runs the
folio console's actions on one CPU (:func:`apply_action`, :func:`replay`),
which the chapter's worked examples, its widget and its exercises share.

Zoom (:data:`ZOOM`): the TDP MMU's map (``kvm_tdp_mmu_map``, chapter 3)
and a punched hole's invalidation bracket (``kvm_gmem_invalidate_begin`` and
``_end``, chapter 2) run as one step each; everything else keeps its steps.
"""
from __future__ import annotations

from functools import partial

from ..checks import KernelWarn, check_bool, check_choice, check_int
from ..cpu import run_alone
from ..errno import EAGAIN, errno_name, ret_pf_name
from ..explorer import Actor, Invariant, Scenario, explore
from ..folio import (FILEMAP, PTE, Oops, _check_folio, folio_mapped, folio_nr_pages,
                     folio_put, folio_test_guestmem, put_page)
from ..guest_memfd import folio_unlock, kvm_gmem_get_folio, kvm_gmem_punch_hole
from ..guest_memfd_rfc import (VM_FAULT_LOCKED, convert_to_private,
                               gmem_clear_mappable, gmem_set_mappable, host_fault,
                               host_gup, host_unmap,
                               kvm_gmem_create, kvm_gmem_punch_hole_fixed,
                               kvm_slot_gmem_register_callback, speculative_get,
                               speculative_put, unshare_and_wait, vm_fault_name)
from ..kvm_host import Kvm, _check_kvm
from ..kvm_main import kvm_create_vm, kvm_vm_ioctl_create_vcpu, set_memory_region
from ..levels import PAGE_SHIFT
from ..memslots import KVM_MEM_GUEST_MEMFD
from ..mmu import kvm_mmu_do_page_fault, kvm_mmu_reload
from ..pferr import PFERR_GUEST_FINAL_MASK, PFERR_PRIVATE_ACCESS
from . import ScenarioEntry

__all__ = [
    "SLOT", "GPA", "GFN", "HVA", "FILE", "ZOOM", "ACTIONS", "SETUP_CLEAR",
    "gmem_world", "gmem_file", "gmem_slot", "register_note", "apply_action",
    "replay", "host_access",
    "private_is_private", "refs_accounted", "no_oops", "transitions_follow_table",
    "INVARIANTS", "check_invariants", "at_baseline", "guest_mapped", "host_unpin",
    "host_refault_then_release", "host_munmap", "speculative_ref", "unshare",
    "register_only", "unshare_waiting", "vcpu_fault", "punch", "share_again",
    "ends_private", "ends_truncated", "explore_outcomes", "verdict", "check_all",
    "scenario_naive_unshare",
    "scenario_pin", "scenario_comment", "scenario_speculative",
    "scenario_host_fault_during_none", "scenario_truncate_pending",
    "scenario_share_again_vs_final_put", "SCENARIOS",
]

#: The memslot of the guest_memfd file: id, first guest physical address, its gfn.
SLOT = 1
GPA = 0x100000
GFN = GPA >> PAGE_SHIFT
#: The slot's userspace address (a guest_memfd slot has one for its shared pages).
HVA = 0x7F0000000000
#: The name of the file in the VM.
FILE = "gmem0"
#: What chapter 4 runs as one step: the TDP MMU's part of the fault (chapter
#: 3) and the invalidation a punched hole brackets its truncation with
#: (chapter 2).  Neither waits in this chapter's worlds: only a punched hole
#: takes mmu_lock for write, and never while a vCPU faults.
ZOOM = frozenset({"kvm_tdp_mmu_map", "kvm_gmem_invalidate_begin",
                  "kvm_gmem_invalidate_end"})

#: A private read of the gfn, as the x86 exit handler passes it for a
#: software-protected VM's private memory.
_PRIVATE_READ = PFERR_GUEST_FINAL_MASK | PFERR_PRIVATE_ACCESS


# --------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------
def gmem_file(kvm: Kvm):
    """The VM's guest_memfd file."""
    _check_kvm(kvm)
    return kvm.primitive(FILE)


def gmem_slot(kvm: Kvm):
    """The memslot bound to the file (it never changes in chapter 4's worlds)."""
    _check_kvm(kvm)
    return kvm.kvm_memslots(0).id_to_memslot(SLOT)


def guest_mapped(kvm: Kvm, index: int = 0) -> bool:
    """Whether the vCPU's root maps the gfn of file offset ``index``."""
    _check_kvm(kvm)
    check_int("index", index, 0, gmem_file(kvm).size - 1)
    gfn = GFN + index
    root = kvm.vcpus[0].root
    return root is not None and any(g == gfn
                                    for g, _lv, _pfn in kvm.ept.live_leaves(root))


def _populate(kvm: Kvm, file) -> None:
    # As if the guest had touched all its memory: every folio in the page cache.
    for first in range(0, file.size, file.nr_pages):
        folio = run_alone(kvm, kvm_gmem_get_folio(file, first, "set-up"))
        run_alone(kvm, folio_unlock(folio, "set-up"))
        run_alone(kvm, folio_put(folio, "set-up"))


def _build(setup: tuple, size: int, order: int) -> Kvm:
    kvm = kvm_create_vm(zoom=ZOOM)
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    file = kvm_gmem_create(kvm, size, order, "ALL", name=FILE)
    r = set_memory_region(kvm, SLOT, GPA, size << PAGE_SHIFT, HVA,
                          flags=KVM_MEM_GUEST_MEMFD, guest_memfd=file.name)
    assert r == 0, errno_name(r)
    kvm.memslot_state.private = frozenset(range(GFN, GFN + size))
    kvm_mmu_reload(vcpu)
    _populate(kvm, file)
    for action in setup:
        if action == SETUP_CLEAR:
            run_alone(kvm, gmem_clear_mappable(file, 0, 1, "kvm"))
        else:
            apply_action(kvm, action)
    return kvm


#: A set-up step a scenario's world may start from besides the console's
#: actions: ``gmem_clear_mappable`` of offset 0 alone (it stores NONE or
#: GUEST and registers nothing), so that a trace can start at the register call.
SETUP_CLEAR = "clear mappable"


def gmem_world(*setup: str, size: int = 1, order: int = 0):
    """A world factory for a :class:`kvmmu.explorer.Scenario`: a VM, ``setup`` done.

    ``setup``: console actions (:data:`ACTIONS`) or :data:`SETUP_CLEAR`,
    run on one CPU in order.  ``size`` pages in folios of ``order``.
    """
    for action in setup:
        check_choice("setup action", action, ACTIONS + (SETUP_CLEAR,))
    check_int("order", order, 0, 4)
    check_int("size", size, 1 << order, 16 << order)
    return partial(_build, tuple(setup), size, order)


# --------------------------------------------------------------------------
# One CPU: the console's actions, for worked examples, the widget and tests
# --------------------------------------------------------------------------
#: The actions of the folio console, each on offset 0 by one fixed actor.
ACTIONS = ("host map", "host unmap", "get ref", "put ref", "spec get", "spec put",
           "convert to private", "share again", "guest fault", "punch hole")


def _held(file, holder: str, what: str):
    # The folio ``holder`` holds a reference on (the caller has it in hand).
    for folio in file.folios:
        if folio.holders.get(holder, 0) > 0:
            return folio
    raise KernelWarn(f"{holder.split(':', 1)[1]} holds no {what} reference to put")


def register_note(ret, was_mapped: bool, was_pending: bool) -> str:
    """Say what the register call's return means, given the folio before it."""
    check_int("ret", ret, -4095, 0)
    check_bool("was_mapped", was_mapped)
    check_bool("was_pending", was_pending)
    if ret == 0:
        return "0: no foreign reference, the page is GUEST now"
    if ret == -EAGAIN and was_mapped:
        return ("-EAGAIN: still mapped by the host, NO callback registered "
                "(unmap, then retry)")
    if ret == -EAGAIN and was_pending:
        return "-EAGAIN: a callback is already pending, nothing new registered"
    if ret == -EAGAIN:
        return "-EAGAIN: foreign references remain, callback registered"
    return errno_name(ret)


def _run_action(kvm: Kvm, action: str, variant: dict):
    # One action on one CPU: (return value, message).
    file, slot = gmem_file(kvm), gmem_slot(kvm)
    folio = file.folio_at(0)
    if action == "host map":
        ret = run_alone(kvm, host_fault(file, 0, "host"))
        return ret, f"kvm_gmem_fault -> {vm_fault_name(ret)}" + (
            ": mapped in the host" if ret == VM_FAULT_LOCKED
            else f": the host may map only ALL pages (state {file.state(0)})"
            if file.state(0) != "ALL" else ": a callback is pending (WARN)")
    if action == "host unmap":
        ret = run_alone(kvm, host_unmap(file, 0))
        return ret, f"host PTE zapped; folio_put -> refcount {ret}"
    if action == "get ref":
        mapped = folio is not None and folio_mapped(folio)
        ret, _folio = run_alone(kvm, host_gup(file, 0, "host"))
        return ret, f"get_user_pages -> {errno_name(ret)}" + (
            ": the host may not map this page" if ret != 0 else
            ": the host holds a GUP reference" if mapped else
            ": faulted the page in (a host mapping), then took a GUP reference")
    if action == "put ref":
        ret = run_alone(kvm, put_page(_held(file, "gup:host", "GUP"), "gup:host"))
        return ret, f"put_page -> refcount {ret}"
    if action == "spec get":
        got = run_alone(kvm, speculative_get(file, 0, "S"))
        note = "" if got is not None else " (count 0 or no folio)"
        return (got is not None,
                f"speculative folio_try_get -> {got is not None}{note}")
    if action == "spec put":
        held = _held(file, "spec:S", "speculative")
        ret = run_alone(kvm, speculative_put(held, "S"))
        return ret, f"speculative folio_put -> refcount {ret}"
    if action == "convert to private":
        was_mapped = folio is not None and folio_mapped(folio)
        was_pending = folio is not None and folio_test_guestmem(folio)
        extra = {k: v for k, v in variant.items()
                 if k in ("alternative", "put_after_unlock")}
        ret = run_alone(kvm, convert_to_private(kvm, slot, GFN, "kvm", **extra))
        msg = f"gmem_clear_mappable -> {errno_name(ret[0])}"
        if ret[1] is None:
            return ret, msg + f" (stored {file.state(0)})"
        return ret, msg + ("; stored NONE; kvm_slot_gmem_register_callback -> "
                           + register_note(ret[1], was_mapped, was_pending))
    if action == "share again":
        ret = run_alone(kvm, gmem_set_mappable(file, 0, 1, "kvm"))
        return ret, f"gmem_set_mappable -> {errno_name(ret)}"
    if action == "guest fault":
        ret = run_alone(kvm, vcpu_fault(kvm))
        return ret, f"guest fault -> {ret}" + (
            ": mapped in the guest" if ret == "RET_PF_FIXED"
            else ": state NONE, the vCPU retries later" if ret == "-EAGAIN" else "")
    hole = (kvm_gmem_punch_hole_fixed if variant.get("fix_pending")
            else kvm_gmem_punch_hole)
    ret = run_alone(kvm, hole(kvm, file, 0, 1, "vmm"))
    return ret, "fallocate(PUNCH_HOLE) -> 0: folio removed from the page cache"


def apply_action(kvm: Kvm, action: str, **variant) -> tuple:
    """Run one console action on one CPU; return ``(return value, message)``.

    Raises :class:`kvmmu.checks.KernelWarn` for an action that is illegal in
    this state (a put with no reference, unmapping what is not mapped) and
    :class:`kvmmu.cpu.ModelHang` for one that could never finish on one CPU.
    An action whose CPU crashes (:class:`kvmmu.folio.Oops`) returns
    ``"oops"`` and says so; the VM keeps what the dead CPU held.
    ``variant``: ``alternative`` and ``put_after_unlock`` go to the
    conversion, ``fix_pending`` picks the punch hole with this book's fix.
    """
    _check_kvm(kvm)
    check_choice("action", action, ACTIONS)
    for name, value in variant.items():
        check_choice("variant", name,
                     ("alternative", "put_after_unlock", "fix_pending"))
        check_bool(name, value)
    file = gmem_file(kvm)
    callbacks, freed = file.callbacks, sum(f.freed for f in file.folios)
    try:
        ret, msg = _run_action(kvm, action, variant)
    except Oops as exc:         # this CPU died; what it held stays held
        return "oops", ("the final put ran kvm_gmem_handle_folio_put on this CPU, "
                        f"which crashed: OOPS: {exc} (whatever it held stays held)")
    if file.callbacks > callbacks:
        msg += ("; the final put ran kvm_gmem_handle_folio_put: "
                f"state {file.state(0)}")
    if sum(f.freed for f in file.folios) > freed:
        msg += "; a folio went back to the page allocator"
    return ret, msg


def replay(actions, size: int = 1, order: int = 0, **variant) -> Kvm:
    """A VM (folio present, state ALL) with ``actions`` applied in order, one CPU.

    Raises like :func:`apply_action` if one of them is illegal.
    """
    if isinstance(actions, str) or not isinstance(actions, (list, tuple)):
        raise TypeError("actions must be a list or tuple of action names")
    for action in actions:
        check_choice("action", action, ACTIONS)
    kvm = gmem_world(size=size, order=order)()
    for action in actions:
        apply_action(kvm, action, **variant)
    return kvm


# --------------------------------------------------------------------------
# Invariants: the explorer checks them after every step, tests after every action
# --------------------------------------------------------------------------
def _real_holder(holder: str) -> bool:
    # A host reference that may touch the data: a mapping, GUP, a transient
    # lookup, a speculative reference that writes.
    return holder == PTE or holder.split(":", 1)[0] in ("gup", "lookup", "specw")


def host_access(folio) -> list[str]:
    """The host's ways into the folio's data: mappings, data-touching references."""
    _check_folio(folio)
    out = [f"{folio.mapcount} host mapping(s)"] if folio.mapcount else []
    out += [f"{h} x{n}" for h, n in sorted(folio.holders.items())
            if n > 0 and h != PTE and _real_holder(h)]
    return out


def private_is_private(kvm: Kvm) -> bool:
    """Invariant: a GUEST offset's folio has no host mapping or data-touching ref.

    GUEST is where the guest may map the page as private memory; the RFC
    exists so that the host can no longer read or write it then.
    """
    _check_kvm(kvm)
    file = gmem_file(kvm)
    for i in range(file.size):
        if file.state(i) != "GUEST":
            continue
        folio = file.folio_at(i)
        if folio is not None and host_access(folio):
            return False
    return True


def refs_accounted(kvm: Kvm) -> bool:
    """Invariant: each folio's count is the references someone holds, none < 0."""
    _check_kvm(kvm)
    for folio in gmem_file(kvm).folios:
        if folio.refcount < 0 or any(n < 0 for n in folio.holders.values()):
            return False
        if folio.refcount != sum(folio.holders.values()):
            return False
    return True


def no_oops(kvm: Kvm) -> bool:
    """Invariant: the modelled kernel never dereferenced NULL."""
    _check_kvm(kvm)
    return not gmem_file(kvm).oops


def transitions_follow_table(kvm: Kvm) -> bool:
    """Invariant: every state change so far is a row of the RFC's transitions."""
    _check_kvm(kvm)
    return not gmem_file(kvm).bad_transitions


INVARIANTS = (
    ("private is private", private_is_private),
    ("references accounted", refs_accounted),
    ("no oops", no_oops),
    ("transitions follow the table", transitions_follow_table),
)


def check_invariants(kvm: Kvm) -> list[str]:
    """Return the names of the invariants that do not hold (empty: all hold)."""
    _check_kvm(kvm)
    return [name for name, inv in INVARIANTS if not inv(kvm)]


def at_baseline(kvm: Kvm) -> str | None:
    """Final check: every folio nobody else holds is back at its baseline.

    Once every actor dropped what it took, a folio in the page cache holds
    exactly the page cache's ``nr_pages`` references, has no callback pending
    and is unlocked.  Returns None, or what is wrong.
    """
    _check_kvm(kvm)
    for folio in gmem_file(kvm).folios:
        others = {h: n for h, n in folio.holders.items() if n and h != FILEMAP}
        if others or folio.mapping is None:
            continue
        off = folio.refcount != folio_nr_pages(folio) or folio.locked_by
        if folio_test_guestmem(folio) or off:
            return (f"{folio!r} not at baseline: refcount {folio.refcount}, type "
                    f"{'guestmem' if folio_test_guestmem(folio) else 'none'}")
    return None


def _invariants():
    return [Invariant(name, fn, reads=(FILE,)) for name, fn in INVARIANTS]


# --------------------------------------------------------------------------
# The cast
# --------------------------------------------------------------------------
def _folio0(kvm: Kvm):
    # The handle of the folio the set-up put at offset 0 (its id never changes).
    return gmem_file(kvm).folio(0)


def host_unpin(kvm: Kvm):
    """Actor: the host VMM's I/O completes and drops its GUP reference."""
    _check_kvm(kvm)
    return (yield from put_page(_folio0(kvm), "gup:host"))


def host_refault_then_release(kvm: Kvm):
    """Actor: the host touches the page (a fault), unmaps, drops its GUP ref."""
    _check_kvm(kvm)
    file = gmem_file(kvm)
    ret = yield from host_fault(file, 0, "host")
    if ret == VM_FAULT_LOCKED:
        yield from host_unmap(file, 0)
    yield from put_page(_folio0(kvm), "gup:host")
    return vm_fault_name(ret)


def host_munmap(kvm: Kvm):
    """Actor: the host VMM unmaps the page (munmap)."""
    _check_kvm(kvm)
    return (yield from host_unmap(gmem_file(kvm), 0))


def speculative_ref(kvm: Kvm, writes: bool = False):
    """Actor: a pfn walker takes a speculative reference and drops it."""
    _check_kvm(kvm)
    check_bool("writes", writes)
    folio = yield from speculative_get(gmem_file(kvm), 0, "S", writes=writes)
    if folio is not None:
        yield from speculative_put(folio, "S", writes=writes)
    return folio is not None


def unshare(kvm: Kvm, **variant):
    """Actor: the unshare of the page (clear_mappable, then register if NONE)."""
    _check_kvm(kvm)
    return (yield from convert_to_private(kvm, gmem_slot(kvm), GFN, "kvm",
                                          **variant))


def register_only(kvm: Kvm, **variant):
    """Actor: the register call alone, on a page the set-up already stored NONE."""
    _check_kvm(kvm)
    return (yield from kvm_slot_gmem_register_callback(kvm, gmem_slot(kvm), GFN,
                                                       "kvm", **variant))


def unshare_waiting(kvm: Kvm, **variant):
    """Actor: an unshare that must see the page private before it returns."""
    _check_kvm(kvm)
    return (yield from unshare_and_wait(kvm, gmem_slot(kvm), GFN, "kvm", **variant))


def vcpu_fault(kvm: Kvm):
    """Actor: the vCPU faults on the private gfn once, through the one fault path.

    Returns the fault's result by name: ``"RET_PF_FIXED"`` (mapped),
    ``"-EAGAIN"`` (NONE: retry later)...
    """
    _check_kvm(kvm)
    r, _level = yield from kvm_mmu_do_page_fault(kvm.vcpus[0], GPA, _PRIVATE_READ,
                                                 False)
    return ret_pf_name(r)


def punch(kvm: Kvm, fix_pending: bool = False):
    """Actor: the VMM punches a hole over offset 0."""
    _check_kvm(kvm)
    check_bool("fix_pending", fix_pending)
    hole = kvm_gmem_punch_hole_fixed if fix_pending else kvm_gmem_punch_hole
    return (yield from hole(kvm, gmem_file(kvm), 0, 1, "vmm"))


def share_again(kvm: Kvm):
    """Actor: the guest shares the page again."""
    _check_kvm(kvm)
    return (yield from gmem_set_mappable(gmem_file(kvm), 0, 1, "kvm"))


# --------------------------------------------------------------------------
# Final checks
# --------------------------------------------------------------------------
def ends_private(kvm: Kvm, results: dict):
    """Final check: back at baseline, offset 0 GUEST, at most one callback."""
    _check_kvm(kvm)
    wrong = at_baseline(kvm)
    if wrong:
        return wrong
    file = gmem_file(kvm)
    if file.state(0) != "GUEST":
        return f"conversion never finished: state {file.state(0)}"
    if file.callbacks > 1:
        return f"the callback ran {file.callbacks} times"
    return True


def _ends_private_callback_iff_pending(kvm: Kvm, results: dict):
    ok = ends_private(kvm, results)
    if ok is not True:
        return ok
    reg = results.get("B")
    pending = (reg[1] if isinstance(reg, tuple) else reg) == -EAGAIN
    if pending != (gmem_file(kvm).callbacks == 1):
        return "callback fired without a pending registration, or not at all"
    return True


def ends_truncated(kvm: Kvm, results: dict):
    """Final check: every truncated folio is freed, nothing else is off baseline."""
    _check_kvm(kvm)
    for folio in gmem_file(kvm).folios:
        if folio.mapping is None and not folio.freed:
            return (f"{folio!r} left the file but was never freed "
                    f"(refcount {folio.refcount})")
    return at_baseline(kvm) or True


def _baseline_only(kvm: Kvm, results: dict):
    return at_baseline(kvm) or True


# --------------------------------------------------------------------------
# The scenarios: the thread's questions, the reviewers' bugs
# --------------------------------------------------------------------------
def _tag(**on) -> str:
    tags = [name.replace("_", " ") for name, flag in on.items() if flag]
    return ", ".join(tags) or "as posted"


def scenario_naive_unshare() -> Scenario:
    """Break it: unsharing without looking at the count while the host holds GUP."""
    return Scenario(
        "unshare without the refcount check",
        gmem_world("host map", "get ref", "host unmap"),
        [Actor("A", "host: I/O done, unpin", host_unpin),
         Actor("B", "unshare (no check)", partial(unshare, check_refs=False))],
        _invariants(), ends_private,
        description="The host holds a GUP reference when the page goes private.")


def scenario_pin(put_after_unlock: bool = False, alternative: bool = False,
                 vcpu: bool = True, from_none: bool = False,
                 walker: bool = False) -> Scenario:
    """A GUP reference held across the unshare, a vCPU faulting meanwhile.

    ``from_none=True``: the set-up has already run ``gmem_clear_mappable``
    (state NONE) and B only makes the register call (a shorter trace).
    ``walker=True`` adds a fourth CPU, D: a pfn walker whose speculative
    reference comes and goes (:func:`speculative_ref`).
    """
    flags = {"put_after_unlock": put_after_unlock, "alternative": alternative,
             "vcpu": vcpu, "from_none": from_none, "walker": walker}
    for name, flag in flags.items():
        check_bool(name, flag)
    setup = ("host map", "get ref", "host unmap") + (SETUP_CLEAR,) * from_none
    variant = {"put_after_unlock": put_after_unlock, "alternative": alternative}
    if from_none:
        b = Actor("B", "unshare: register callback",
                  partial(register_only, **variant))
    else:
        b = Actor("B", "unshare", partial(unshare, **variant))
    actors = [Actor("A", "host: I/O done, unpin", host_unpin), b]
    if vcpu:
        actors.append(Actor("C", "vCPU: guest fault", vcpu_fault))
    if walker:
        actors.append(Actor("D", "pfn walker: try_get, put", speculative_ref))
    return Scenario(
        f"GUP reference across unshare ({_tag(**variant, walker=walker)})",
        gmem_world(*setup), actors, _invariants(),
        _ends_private_callback_iff_pending,
        description="The page may be GUEST only once the host's reference is gone.")


def scenario_comment(trust_comment: bool = True,
                     from_none: bool = False) -> Scenario:
    """The -EAGAIN that registers nothing: a caller trusting the comment hangs.

    ``from_none=True``: the set-up has stored NONE; B starts at the register call.
    """
    check_bool("trust_comment", trust_comment)
    check_bool("from_none", from_none)
    how = "trusts the comment" if trust_comment else "retries on -EAGAIN"
    setup = ("host map",) + ((SETUP_CLEAR,) if from_none else ())
    return Scenario(
        f"unshare while still mapped (caller {how})", gmem_world(*setup),
        [Actor("A", "host: munmap", host_munmap),
         Actor("B", f"unshare, {how}",
               partial(unshare_waiting, trust_comment=trust_comment,
                       put_after_unlock=True, cleared=from_none))],
        _invariants(), ends_private,
        description="register_callback returns -EAGAIN while the host maps it.")


def scenario_speculative(writes: bool = False, put_after_unlock: bool = True,
                         alternative: bool = False) -> Scenario:
    """Ackerley Tng's question: the refcount check races a speculative reference."""
    for name, flag in (("writes", writes), ("put_after_unlock", put_after_unlock),
                       ("alternative", alternative)):
        check_bool(name, flag)
    tag = _tag(writing=writes, put_after_unlock=put_after_unlock,
               alternative=alternative)
    return Scenario(
        f"speculative reference vs unshare ({tag})", gmem_world(),
        [Actor("A", "pfn walker: try_get, put" + (" (writes)" if writes else ""),
               partial(speculative_ref, writes=writes)),
         Actor("B", "unshare", partial(unshare, put_after_unlock=put_after_unlock,
                                        alternative=alternative))],
        _invariants(), _ends_private_callback_iff_pending,
        description="Does the callback fire when a speculative ref comes and goes?")


def scenario_host_fault_during_none() -> Scenario:
    """The transient NONE state: the host faults the page in as it drains."""
    return Scenario(
        "host fault during the unshare",
        gmem_world("host map", "get ref", "host unmap"),
        [Actor("A", "host: touch, unmap, unpin", host_refault_then_release),
         Actor("B", "unshare, retry on -EAGAIN",
               partial(unshare_waiting, put_after_unlock=True))],
        _invariants(), ends_private,
        description="While the state is NONE the host fault must fail.")


def scenario_truncate_pending(fix_pending: bool = False) -> Scenario:
    """PUNCH_HOLE while the callback is pending (the bug found in review)."""
    check_bool("fix_pending", fix_pending)
    return Scenario(
        "punch hole while a callback is pending" + (" (fixed)" * fix_pending),
        gmem_world("host map", "get ref", "host unmap", "convert to private"),
        [Actor("A", "host: I/O done, unpin", host_unpin),
         Actor("B", "VMM: fallocate(PUNCH_HOLE)",
               partial(punch, fix_pending=fix_pending))],
        _invariants(), ends_truncated,
        description="Truncation removes a folio whose page-cache refs are lent.")


def scenario_share_again_vs_final_put() -> Scenario:
    """Share again racing the final put: the page-cache lookup meets count 0."""
    return Scenario(
        "share again vs the final put",
        gmem_world("host map", "get ref", "host unmap", "convert to private"),
        [Actor("A", "host: I/O done, unpin", host_unpin),
         Actor("B", "guest: share again", share_again)],
        _invariants(), _baseline_only,
        description="The callback sleeps on invalidate_lock; lookups spin.")


def explore_outcomes(scenario: Scenario, **kwargs):
    """Explore ``scenario``; also collect every distinct way a complete run ended.

    Returns ``(result, outcomes)``: ``outcomes`` is a sorted list of
    ``(actor results, final state of offset 0, callbacks run)``.
    """
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, "
                        f"got {type(scenario).__name__}")
    seen = set()
    check = scenario.final_check

    def record(kvm, results):
        file = gmem_file(kvm)
        seen.add((tuple(sorted((k, _plain(v)) for k, v in results.items())),
                  file.state(0), file.callbacks))
        return True if check is None else check(kvm, results)
    wrapped = Scenario(scenario.name, scenario.world, scenario.actors,
                       scenario.invariants, record, scenario.description)
    result = explore(wrapped, **kwargs)
    return result, sorted(seen, key=repr)


def verdict(result) -> str:
    """What an exhaustive check found: ``"holds"``, or the names of what broke."""
    if not hasattr(result, "violations") or not hasattr(result, "exhaustive"):
        raise TypeError(f"result must be an explorer Result, "
                        f"got {type(result).__name__}")
    return ", ".join(name for name, _schedule in result.violations) or "holds"


def check_all(names=None) -> list[tuple]:
    """Explore each check of :data:`SCENARIOS` (or ``names``), every interleaving.

    Returns ``(name, entry, cpus, result)`` per check, in registry order;
    every search runs to the end (``stop_at_first=False``).
    """
    if names is None:
        names = list(SCENARIOS)
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError("names must be a list of the chapter's check names")
    for name in names:
        check_choice("names", name, tuple(SCENARIOS))
    out = []
    for name in names:
        sc = SCENARIOS[name].build()
        out.append((name, SCENARIOS[name], len(sc.actors),
                    explore(sc, stop_at_first=False)))
    return out


def _plain(v):
    if isinstance(v, (tuple, list)):
        return tuple(_plain(x) for x in v)
    if isinstance(v, int) and not isinstance(v, bool) and v < 0:
        return errno_name(v)
    return v


def _entry(build, summary: str, expect: str) -> ScenarioEntry:
    return ScenarioEntry(build, 4, summary, expect)


#: The chapter's exhaustive checks, by name; each summary says what it varies.
SCENARIOS = {
    "gmem-naive-unshare": _entry(
        scenario_naive_unshare, "unshare without the refcount check", "violated"),
    "gmem-pin": _entry(
        scenario_pin, "a GUP reference across the unshare, as posted", "violated"),
    "gmem-pin-put-after-unlock": _entry(
        partial(scenario_pin, put_after_unlock=True),
        "the same, put after unlock (the fix)", "holds"),
    "gmem-pin-walker-put-after-unlock": _entry(
        partial(scenario_pin, put_after_unlock=True, walker=True),
        "the fix, and a pfn walker as a fourth CPU", "holds"),
    "gmem-pin-alternative": _entry(
        partial(scenario_pin, alternative=True),
        "the reviewer's alternative, as posted", "violated"),
    "gmem-pin-alternative-put-after-unlock": _entry(
        partial(scenario_pin, alternative=True, put_after_unlock=True),
        "the alternative, put after unlock", "holds"),
    "gmem-comment-trusting": _entry(
        partial(scenario_comment, trust_comment=True),
        "a caller trusting the posted -EAGAIN comment", "violated"),
    "gmem-comment-retrying": _entry(
        partial(scenario_comment, trust_comment=False),
        "a caller that retries on -EAGAIN", "holds"),
    "gmem-speculative-posted": _entry(
        partial(scenario_speculative, put_after_unlock=False),
        "a speculative reference, as posted", "violated"),
    "gmem-speculative": _entry(
        scenario_speculative, "a speculative reference, put after unlock", "holds"),
    "gmem-speculative-writes": _entry(
        partial(scenario_speculative, writes=True),
        "a speculative reference that writes", "violated"),
    "gmem-speculative-alternative": _entry(
        partial(scenario_speculative, alternative=True),
        "the alternative, a speculative reference", "holds"),
    "gmem-speculative-writes-alternative": _entry(
        partial(scenario_speculative, alternative=True, writes=True),
        "the alternative, a reference that writes", "violated"),
    "gmem-host-fault-during-none": _entry(
        scenario_host_fault_during_none, "a host fault while the page is NONE",
        "holds"),
    "gmem-truncate-pending": _entry(
        scenario_truncate_pending, "PUNCH_HOLE while a callback is pending",
        "violated"),
    "gmem-truncate-pending-fixed": _entry(
        partial(scenario_truncate_pending, fix_pending=True),
        "the same, with this book's truncation fix", "violated"),
    "gmem-share-again-vs-final-put": _entry(
        scenario_share_again_vs_final_put, "share again races the final put",
        "violated"),
}
