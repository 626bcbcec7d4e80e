"""guest_memfd as Fuad Tabba's RFC v5 has it: page mappability, final-put callback.

Models: virt/kvm/guest_memfd.c: struct kvm_gmem (RFC v5)
Models: virt/kvm/guest_memfd.c: kvm_gmem_create() (RFC v5)
Models: include/linux/mm_types.h: VM_FAULT_SIGBUS, VM_FAULT_LOCKED

The functions below carry their own ``Models:`` lines: the RFC's
``gmem_set_mappable``, ``gmem_clear_mappable``, ``__gmem_register_callback``,
``kvm_slot_gmem_register_callback``, ``__kvm_gmem_restore_pending_folio``,
``kvm_gmem_handle_folio_put`` and ``kvm_gmem_fault`` (virt/kvm/guest_memfd.c).

**What this models, and what the kernel does.**  The conversion protocol is
Fuad Tabba's RFC "[RFC PATCH v5 06/15] KVM: guest_memfd: Handle final
folio_put() of guestmem pages" (kvm list, 2025-01) with patch 05/15 of the
same series (the mappability states), as reviewed by Ackerley Tng.  The
series did not merge as posted.  Linux 6.17 has no per-page mappability
state, no shared/private conversion inside guest_memfd and no folio_put
callback; the later "mapping guest_memfd backed memory at the host" series,
which became the merged ``GUEST_MEMFD_FLAG_MMAP``/``INIT_SHARED`` flags (after
6.17), dropped the callback.

**Where it lives.**  These are functions of ``guest_memfd.c``, so the
module rule would put them in :mod:`kvmmu.guest_memfd`; they are kept in
this module, one layer above it, so that the 6.17 core stays short and
reads on its own.  What the 6.17 functions need of the RFC is in the core:
the state values, ``gmem_is_mappable``/``gmem_is_guest_mappable``, and the
check that :func:`kvmmu.guest_memfd.kvm_gmem_get_pfn` makes in a file that
has states (``GmemFile.mappability``).  The 6.17 page cache, truncation and
``kvm_gmem_punch_hole`` are used as they are; the RFC does not change them.
mm's final put reaches :func:`kvm_gmem_handle_folio_put` through
``kvmmu.folio.FREE_TYPED_FOLIO``, which this module fills in when imported.

**The protocol in one paragraph.**  Each page offset of the file has a
mappability state: ALL (host and guest may map it), GUEST (only the guest)
or NONE (nobody; a page on its way from shared to private).  Unsharing
(``gmem_clear_mappable``) stores GUEST if the folio's count shows no
reference besides the page cache's and its own lookup, else NONE.  For a
NONE page, ``kvm_slot_gmem_register_callback`` gives the folio the guestmem
page type and parks the page cache's references (``ref_sub nr_pages``), so
the count reaches zero exactly when the last foreign reference goes; mm's
final put then calls ``kvm_gmem_handle_folio_put`` instead of freeing, which
gives the references back and stores GUEST.  Sharing again
(``gmem_set_mappable``) cancels a pending callback and stores ALL.

**Variants** (keyword arguments, default = the RFC as posted):
``alternative=True`` is Ackerley Tng's suggestion (always let the callback
store GUEST); ``put_after_unlock=True`` drops the register call's lookup
reference after the invalidate lock (this book's fix; see chapter 4);
:func:`kvm_gmem_punch_hole_fixed` restores a pending folio before
truncating it (this book's fix for the bug found in review).

**The host's side.**  With the RFC the VMM can mmap the file; the model's
host paths into a folio are compositions at the end of this module: a
fault on the VMM's mapping (:func:`host_fault`), its unmap, a GUP reference
taken through it, and a speculative reference taken by pfn.

**Where the model simplifies.**

- The RFC's states are a tuple of the file (the xarray; ``xa_store`` never
  fails).  All folios of a file have one order.
- The host's userspace mapping is the folio's ``mapcount`` with one
  reference per mapping (:mod:`kvmmu.folio`); the VMM's page tables for the
  file are not modelled.
- The vCPU's fault is the x86 fault path of the book on a private gfn of a
  guest_memfd memslot: the RFC's own guest fault is arm64's (pKVM), which
  the model does not have; the RFC's check sits in ``kvm_gmem_get_pfn``.
- The ``kvm_gmem_*``/``kvm_slot_gmem_*`` wrappers that translate gfn ranges
  and walk the memslots under ``slots_lock`` are left out, except the
  register call, which takes a slot and a gfn as the RFC's does.
- Arch hooks (``kvm_arch_gmem_prepare``/``invalidate``), ``uptodate`` and
  zeroing, and hugetlb are left out.
"""
from __future__ import annotations

from .checks import KernelWarn, check_bool, check_choice, check_int, check_name
from .cpu import cpu_code
from .errno import EAGAIN, EFAULT, ENOENT
from .explorer import step, wait_until
from .folio import (FILEMAP, FREE_TYPED_FOLIO, PTE, Folio, Oops,
                    __folio_clear_guestmem, __folio_set_guestmem,
                    folio_add_file_rmap_pte, folio_mapped, folio_nr_pages,
                    folio_put, folio_ref_add, folio_ref_count, folio_ref_sub_return,
                    folio_remove_rmap_pte, folio_test_guestmem, folio_test_locked,
                    folio_try_get)
from .guest_memfd import (KVM_GMEM_ALL_MAPPABLE, KVM_GMEM_GUEST_MAPPABLE,
                          KVM_GMEM_NONE_MAPPABLE, GmemFile, filemap_lock_folio,
                          folio_unlock, gmem_is_mappable, kvm_gmem_file,
                          kvm_gmem_get_folio, kvm_gmem_invalidate_begin,
                          kvm_gmem_invalidate_end, truncate_inode_pages_range)
from .kvm_host import _check_kvm
from .memslots import KvmMemorySlot

__all__ = [
    "STATE_NAMES", "STATE_BY_NAME", "state_name", "VM_FAULT_SIGBUS",
    "VM_FAULT_LOCKED", "vm_fault_name", "TRANSITIONS", "transition_allowed",
    "GmemMappableFile", "kvm_gmem_create", "__kvm_gmem_restore_pending_folio",
    "__gmem_register_callback", "kvm_slot_gmem_register_callback",
    "kvm_gmem_handle_folio_put", "gmem_clear_mappable", "gmem_set_mappable",
    "kvm_gmem_fault", "kvm_gmem_punch_hole_fixed", "convert_to_private",
    "unshare_and_wait", "host_fault", "host_unmap", "host_gup", "speculative_get",
    "speculative_put",
]

STATE_NAMES = {
    KVM_GMEM_ALL_MAPPABLE: "ALL",
    KVM_GMEM_GUEST_MAPPABLE: "GUEST",
    KVM_GMEM_NONE_MAPPABLE: "NONE",
}
STATE_BY_NAME = {v: k for k, v in STATE_NAMES.items()}

#: include/linux/mm_types.h: enum vm_fault_reason (the two the host fault returns).
VM_FAULT_SIGBUS = 0x000002
VM_FAULT_LOCKED = 0x000200


def state_name(state: int) -> str:
    """Name a mappability state: ``0b10`` -> ``'GUEST'``."""
    check_choice("state", state, STATE_NAMES)
    return STATE_NAMES[state]


def vm_fault_name(ret: int) -> str:
    """Name the host fault handler's result: ``0x2`` -> ``'VM_FAULT_SIGBUS'``."""
    check_int("ret", ret, 0, (1 << 32) - 1)
    names = {VM_FAULT_SIGBUS: "VM_FAULT_SIGBUS", VM_FAULT_LOCKED: "VM_FAULT_LOCKED"}
    return names.get(ret, hex(ret))


# --------------------------------------------------------------------------
# The transition table: the figure draws it, the tests check every state
# change against it, and the file records any change that is not in it.
# --------------------------------------------------------------------------
#: (from, to, function, condition, kind).  kind "rfc": the protocol's own
#: transitions; "unguarded": the code allows them because it does not check
#: the current state (a caller that follows the protocol never takes them);
#: "fix": only with the model's punch-hole fix.
TRANSITIONS = (
    ("ALL", "GUEST", "gmem_clear_mappable",
     "no folio, or refcount == nr_pages + 1 (page cache and this lookup)", "rfc"),
    ("ALL", "NONE", "gmem_clear_mappable",
     "refcount > nr_pages + 1 (a host mapping or a foreign reference)", "rfc"),
    ("NONE", "GUEST", "__gmem_register_callback",
     "not mapped, no callback pending, refcount 1 after parking nr_pages", "rfc"),
    ("NONE", "GUEST", "kvm_gmem_handle_folio_put",
     "callback pending and the last reference is dropped", "rfc"),
    ("NONE", "ALL", "gmem_set_mappable",
     "share again: a pending callback is cancelled (restore_pending_folio)", "rfc"),
    ("GUEST", "ALL", "gmem_set_mappable", "share again", "rfc"),
    ("GUEST", "NONE", "gmem_clear_mappable",
     "unshare a GUEST page again while its count is raised", "unguarded"),
    ("NONE", "GUEST", "gmem_clear_mappable",
     "unshare a NONE page again: the count lacks the parked references",
     "unguarded"),
    ("ALL", "GUEST", "__gmem_register_callback",
     "registering on a page shared again meanwhile (count == 1)", "unguarded"),
    ("ALL", "GUEST", "kvm_gmem_handle_folio_put",
     "a callback registered on a page shared again meanwhile fires", "unguarded"),
    ("NONE", "GUEST", "kvm_gmem_punch_hole",
     "fix: a pending folio leaves the file; nothing of the host's remains there",
     "fix"),
)

_ALLOWED = {(f, t, fn) for f, t, fn, _c, _k in TRANSITIONS}


def transition_allowed(old: str, new: str, function: str) -> bool:
    """Return True if the table has the change ``old -> new`` by ``function``."""
    check_choice("old", old, STATE_BY_NAME)
    check_choice("new", new, STATE_BY_NAME)
    if not isinstance(function, str):
        raise TypeError(f"function must be a function name, "
                        f"got {type(function).__name__}")
    return old == new or (old, new, function) in _ALLOWED


# --------------------------------------------------------------------------
# The file.
# --------------------------------------------------------------------------
class GmemMappableFile(GmemFile):
    """A guest_memfd file of the RFC: the 6.17 file, a mappability state per offset.

    Models: virt/kvm/guest_memfd.c: struct kvm_gmem (RFC v5)

    ``mappable_offsets`` is the inode's xarray of states (a tuple here).
    The model's instruments ride along: ``callbacks`` counts the runs of
    :func:`kvm_gmem_handle_folio_put`, ``oops`` records NULL dereferences,
    ``history`` every state change as ``(index, old, new, function)`` and
    ``bad_transitions`` the changes that are not rows of
    :data:`TRANSITIONS`.
    """

    _FIELDS = GmemFile._FIELDS + ("mappable_offsets", "callbacks", "oops",
                                  "history", "bad_transitions")
    _field_locations = {**GmemFile._field_locations,
                        "mappable_offsets": ("offsets",),
                        "callbacks": ("callbacks",), "oops": ("oops",),
                        "history": ("history",), "bad_transitions": ("history",)}
    mappability = True

    def __init__(self, world, name: str, size: int, order: int = 0, state: int = 0):
        super().__init__(world, name, size, order)
        self.mappable_offsets = (state,) * size
        self.callbacks = 0
        self.oops: tuple = ()
        self.history: tuple = ()
        self.bad_transitions: tuple = ()

    def state(self, index: int) -> str:
        """The state of ``index`` by name (plain read, for checks and views)."""
        return STATE_NAMES[self.mappable_offsets[self.check_index(index)]]

    def _show(self):
        # The states, then every folio (a truncated one too: its ledger is
        # where a miscount shows), then the instruments that are not zero.
        states = " ".join(STATE_NAMES[s] for s in self.mappable_offsets)
        folios = "; ".join(f"{f!r}@{f.index} {f.short()}" for f in self.folios)
        folios = folios or "no folio"
        text = f"{states} | {folios}"
        if self.callbacks:
            text += f" | callbacks={self.callbacks}"
        if self.oops:
            text += f" | OOPS: {self.oops[-1]}"
        return text


def kvm_gmem_create(kvm, size: int, order: int = 0, state="ALL",
                    name: str | None = None):
    """Create a guest_memfd file whose offsets start in ``state`` (the RFC's file).

    Models: virt/kvm/guest_memfd.c: kvm_gmem_create() (RFC v5)

    ``state`` is a name (``"ALL"``...) or a value.  The RFC starts a file
    NONE unless it is created with its flag to start mappable (ALL); the
    model lets the caller pick.  Set-up, not CPU code.
    """
    _check_kvm(kvm)
    if isinstance(state, str):
        check_choice("state", state, STATE_BY_NAME)
        state = STATE_BY_NAME[state]
    check_choice("state", state, STATE_NAMES)
    check_int("size", size, 1, 1 << 12)
    n = sum(1 for p in kvm._prims if isinstance(p, GmemFile))
    file = GmemMappableFile(kvm, name or f"gmem{n}", size, order, state)
    return kvm._register(file)


def _xa_store(file: GmemMappableFile, index: int, value: int,
              function: str) -> None:
    # The model's xa_store: store a state and record the change (plain: in a step).
    old, new = STATE_NAMES[file.mappable_offsets[index]], STATE_NAMES[value]
    offsets = list(file.mappable_offsets)
    offsets[index] = value
    file.mappable_offsets = tuple(offsets)
    if old != new:
        file.history += ((index, old, new, function),)
        if not transition_allowed(old, new, function):
            file.bad_transitions += (f"{index}: {old} -> {new} by {function}",)


def _check_file(file) -> GmemMappableFile:
    if not isinstance(file, GmemMappableFile):
        raise TypeError(f"file must be a GmemMappableFile (the RFC's file), "
                        f"got {type(file).__name__}")
    return file


def _check_range(file, start: int, end: int) -> None:
    _check_file(file)
    check_int("start", start, 0, file.size - 1)
    check_int("end", end, start + 1, file.size)


def _check_folio(folio) -> Folio:
    if not (isinstance(folio, Folio) and isinstance(folio.owner, GmemMappableFile)):
        raise TypeError(f"folio must be a Folio of a GmemMappableFile, "
                        f"got {folio!r}")
    return folio


# --------------------------------------------------------------------------
# Restore, register, callback (patch 06/15).
# --------------------------------------------------------------------------
def _restore(folio: Folio) -> bool:
    kvm = folio.owner.world
    if folio_mapped(folio) or not folio_test_guestmem(folio):
        why = "is mapped" if folio_mapped(folio) else "has no callback pending"
        kvm.warn(f"restore_pending_folio: {folio!r} {why}")
        return False
    if not folio_test_locked(folio) and folio_ref_count(folio) > 1:
        kvm.warn(f"restore_pending_folio: {folio!r} unlocked with "
                 f"refcount {folio_ref_count(folio)}")
    __folio_clear_guestmem(folio)
    folio_ref_add(folio, folio_nr_pages(folio), FILEMAP)
    return True


def __kvm_gmem_restore_pending_folio(folio: Folio):
    """Cancel a pending callback: clear the type, give the parked references back.

    Models: virt/kvm/guest_memfd.c: __kvm_gmem_restore_pending_folio() (RFC v5)

    Returns False (and records the WARN) if the folio is mapped or has no
    callback pending, as the RFC's WARN_ON_ONCE returns early.
    """
    _check_folio(folio)
    label = "__kvm_gmem_restore_pending_folio: clear type, ref_add(nr_pages)"
    return (yield from step(label, lambda: _restore(folio)))


def __gmem_register_callback(file: GmemMappableFile, folio: Folio, index: int, *,
                             alternative: bool = False):
    """Give the folio the guestmem type, so that its final put calls guest_memfd.

    Models: virt/kvm/guest_memfd.c: __gmem_register_callback() (RFC v5)

    0: no foreign reference remains, the offset is GUEST now.  -EAGAIN in
    two cases the posted comment conflated: the folio is still mapped or
    already pending (*nothing* registered: unmap, call again), or foreign
    references remain (the callback *is* registered).
    ``alternative=True``: Ackerley Tng's suggestion, the callback always
    stores GUEST (on the caller's own put, if nobody else holds the folio).
    """
    _check_file(file)
    _check_folio(folio)
    file.check_index(index)
    check_bool("alternative", alternative)
    busy = yield from step(
        "folio_mapped || folio_test_guestmem",
        lambda: folio_mapped(folio) or folio_test_guestmem(folio))
    if busy:
        return -EAGAIN
    yield from step("__folio_set_guestmem", lambda: __folio_set_guestmem(folio))
    # Lend the page cache's references away: 0 now means "nobody else".
    nr = folio_nr_pages(folio)
    refcount = yield from step("folio_ref_sub_return(nr_pages)",
                               lambda: folio_ref_sub_return(folio, nr, FILEMAP))
    if refcount == 1 and not alternative:        # only our lookup is left
        yield from step(f"xa_store({index}, GUEST)",
                        lambda: _xa_store(file, index, KVM_GMEM_GUEST_MAPPABLE,
                                          "__gmem_register_callback"))
        yield from __kvm_gmem_restore_pending_folio(folio)
        return 0
    return -EAGAIN


def _slot_index(kvm, slot, gfn: int) -> tuple:
    if not isinstance(slot, KvmMemorySlot):
        raise TypeError(f"slot must be a KvmMemorySlot, got {type(slot).__name__}")
    check_int("gfn", gfn, slot.base_gfn, slot.end_gfn - 1)
    file = kvm_gmem_file(kvm, slot)
    _check_file(file)
    return file, gfn - slot.base_gfn + slot.gmem_pgoff


def kvm_slot_gmem_register_callback(kvm, slot: KvmMemorySlot, gfn: int,
                                    who: str = "kvm", *, alternative: bool = False,
                                    put_after_unlock: bool = False):
    """Register the final-put callback for ``gfn``'s folio, under invalidate_lock.

    Models: virt/kvm/guest_memfd.c: kvm_slot_gmem_register_callback() (RFC v5)

    As posted, the lookup's reference is put *before* the unlock: if every
    foreign reference went away meanwhile, that put is the final one and
    runs the callback, which takes the same lock on the same CPU.
    ``put_after_unlock=True`` (this book's fix) puts it after the unlock.
    """
    check_name("who", who)
    file, index = _slot_index(kvm, slot, gfn)
    check_bool("put_after_unlock", put_after_unlock)
    yield from file.invalidate_lock.write_lock()
    folio = yield from filemap_lock_folio(file, index, who)
    if folio is None:
        yield from step("WARN_ON_ONCE(IS_ERR(folio))",
                        lambda: kvm.warn(f"register_callback: no folio at {index}"))
        yield from file.invalidate_lock.write_unlock()
        return -ENOENT
    r = yield from __gmem_register_callback(file, folio, index,
                                            alternative=alternative)
    yield from folio_unlock(folio, who)
    if put_after_unlock:
        yield from file.invalidate_lock.write_unlock()
        yield from folio_put(folio, who)
    else:
        yield from folio_put(folio, who)
        yield from file.invalidate_lock.write_unlock()
    return r


def _oops(folio: Folio, message: str) -> None:
    folio.owner.oops += (message,)


def kvm_gmem_handle_folio_put(folio: Folio):
    """The final put of a guestmem folio: give the references back, store GUEST.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_handle_folio_put() (RFC v5)

    mm's ``free_typed_folio`` calls it on the CPU that dropped the last
    reference.  A folio truncation removed has ``mapping`` NULL: the model
    records the NULL dereference and raises :class:`kvmmu.folio.Oops`,
    which ends this CPU's operation with what it held still held.
    """
    _check_folio(folio)
    inode = yield from step(
        "callback: inode = folio->mapping->host",
        lambda: "NULL->host" if folio.mapping is None else "inode")
    if inode != "inode":
        message = (f"NULL dereference in kvm_gmem_handle_folio_put({folio!r}): "
                   "folio->mapping is NULL after truncation")
        yield from step("OOPS: NULL pointer dereference",
                        lambda: _oops(folio, message))
        raise Oops(message)
    file = folio.owner
    yield from file.invalidate_lock.write_lock()
    yield from __kvm_gmem_restore_pending_folio(folio)

    def store():
        _xa_store(file, folio.index, KVM_GMEM_GUEST_MAPPABLE,
                  "kvm_gmem_handle_folio_put")
        file.callbacks += 1
    yield from step(f"callback: xa_store({folio.index}, GUEST)", store)
    yield from file.invalidate_lock.write_unlock()


# mm/swap.c's free_typed_folio(): the RFC's ``case PGTY_guestmem:``.
FREE_TYPED_FOLIO["PGTY_guestmem"] = kvm_gmem_handle_folio_put


# --------------------------------------------------------------------------
# Conversions (patch 05/15, with 06/15's change to sharing again).
# --------------------------------------------------------------------------
def gmem_clear_mappable(file: GmemMappableFile, start: int, end: int,
                        who: str = "kvm", *, check_refs: bool = True):
    """Unshare ``[start, end)``: GUEST where no foreign reference shows, else NONE.

    Models: virt/kvm/guest_memfd.c: gmem_clear_mappable() (RFC v5)

    It neither unmaps the host nor registers the callback: a NONE page
    waits for :func:`kvm_slot_gmem_register_callback`.
    ``check_refs=False`` is the unsafe variant the RFC exists to avoid.
    """
    check_name("who", who)
    _check_range(file, start, end)
    check_bool("check_refs", check_refs)
    yield from file.invalidate_lock.write_lock()
    for i in range(start, end):
        folio = yield from filemap_lock_folio(file, i, who)
        value = KVM_GMEM_GUEST_MAPPABLE
        if folio is not None and check_refs:
            refcount = yield from step("folio_ref_count",
                                       lambda: folio_ref_count(folio))
            if refcount > folio_nr_pages(folio) + 1:     # page cache + this lookup
                value = KVM_GMEM_NONE_MAPPABLE
        yield from step(f"xa_store({i}, {STATE_NAMES[value]})",
                        lambda: _xa_store(file, i, value, "gmem_clear_mappable"))
        if folio is not None:
            yield from folio_unlock(folio, who)
            yield from folio_put(folio, who)
    yield from file.invalidate_lock.write_unlock()
    return 0


def gmem_set_mappable(file: GmemMappableFile, start: int, end: int,
                      who: str = "kvm"):
    """Share offsets ``[start, end)`` again: cancel pending callbacks, store ALL.

    Models: virt/kvm/guest_memfd.c: gmem_set_mappable() (RFC v5)
    """
    check_name("who", who)
    _check_range(file, start, end)
    yield from file.invalidate_lock.write_lock()
    r = 0
    for i in range(start, end):
        folio = None
        state = yield from step(f"xa_load({i})", lambda: file.state(i))
        if state == "NONE":
            folio = yield from filemap_lock_folio(file, i, who)
            if folio is None:
                yield from step("WARN_ON_ONCE(IS_ERR(folio))",
                                lambda: file.world.warn(
                                    f"set_mappable: NONE offset {i} has no folio"))
                r = -ENOENT
                break
            pending = yield from step("folio_test_guestmem",
                                      lambda: folio_test_guestmem(folio))
            if pending:
                yield from __kvm_gmem_restore_pending_folio(folio)
        yield from step(f"xa_store({i}, ALL)",
                        lambda: _xa_store(file, i, KVM_GMEM_ALL_MAPPABLE,
                                          "gmem_set_mappable"))
        if folio is not None:
            yield from folio_unlock(folio, who)
            yield from folio_put(folio, who)
    yield from file.invalidate_lock.write_unlock()
    return r


# --------------------------------------------------------------------------
# The host fault on the VMM's mapping (patch 07/15).
# --------------------------------------------------------------------------
@cpu_code
def kvm_gmem_fault(file: GmemMappableFile, index: int, who: str = "host"):
    """The fault handler of the VMM's mmap: ``(VM_FAULT_LOCKED, folio)`` or SIGBUS.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_fault() (RFC v5)

    Under the shared invalidate lock: SIGBUS unless the state is ALL; a
    folio with a callback pending WARNs and SIGBUSes too.  Otherwise the
    folio goes back to mm locked, with the reference the page table will
    keep (``vmf->page``); mm installs the PTE and unlocks it
    (:func:`host_fault`).  Returns ``(VM_FAULT_SIGBUS, None)`` on failure.
    """
    check_name("who", who)
    _check_file(file)
    file.check_index(index)
    yield from file.invalidate_lock.read_lock()
    ok = yield from step("gmem_is_mappable?", lambda: gmem_is_mappable(file, index))
    if not ok:
        yield from file.invalidate_lock.read_unlock()
        return VM_FAULT_SIGBUS, None
    folio = yield from kvm_gmem_get_folio(file, index, who)
    pending = yield from step("folio_test_guestmem",
                              lambda: folio_test_guestmem(folio))
    if pending:
        yield from step("WARN_ON_ONCE(folio_test_guestmem)",
                        lambda: file.world.warn(
                            f"kvm_gmem_fault: {folio!r} has a callback pending"))
        yield from folio_unlock(folio, who)
        yield from folio_put(folio, who)
        yield from file.invalidate_lock.read_unlock()
        return VM_FAULT_SIGBUS, None
    yield from file.invalidate_lock.read_unlock()
    return VM_FAULT_LOCKED, folio


# --------------------------------------------------------------------------
# This book's fix for truncating a pending folio.
# --------------------------------------------------------------------------
def _restore_pending_range(file: GmemMappableFile, start: int, end: int, who: str):
    # Give every pending folio of the range its page-cache references back,
    # under its lock, before truncation puts them.
    first = start - start % file.nr_pages
    for index in range(first, end, file.nr_pages):
        folio = yield from filemap_lock_folio(file, index, who)
        if folio is None:
            continue
        pending = yield from step("folio_test_guestmem",
                                  lambda: folio_test_guestmem(folio))
        if pending:
            yield from __kvm_gmem_restore_pending_folio(folio)
        yield from folio_unlock(folio, who)
        yield from folio_put(folio, who)


def _none_to_guest(file: GmemMappableFile, start: int, end: int) -> None:
    # The offsets left NONE have no folio any more: nothing of the host's remains.
    for i in range(start, end):
        none = file.mappable_offsets[i] == KVM_GMEM_NONE_MAPPABLE
        if none and file.folio_at(i) is None:
            _xa_store(file, i, KVM_GMEM_GUEST_MAPPABLE, "kvm_gmem_punch_hole")


def kvm_gmem_punch_hole_fixed(kvm, file: GmemMappableFile, start: int, end: int,
                              who: str = "vmm"):
    """fallocate(PUNCH_HOLE) that first restores pending folios: this book's fix.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_punch_hole() (this book's fix)

    As :func:`kvmmu.guest_memfd.kvm_gmem_punch_hole`, plus two things under
    the invalidate lock: before truncating, a folio with a callback pending
    gets its parked references back (so truncation puts references that
    exist); after, an offset still NONE whose folio has left the file is
    stored GUEST.  The review asked for pending folios to be handled on
    truncation; the kernel's final form of that fix is not known to this
    book.
    """
    _check_kvm(kvm)
    check_name("who", who)
    _check_range(file, start, end)
    yield from file.invalidate_lock.write_lock()
    yield from kvm_gmem_invalidate_begin(kvm, file, start, end)
    yield from _restore_pending_range(file, start, end, f"fix:{who}")
    yield from truncate_inode_pages_range(file, start, end, who)
    yield from step("xa_store(NONE offsets without a folio, GUEST)",
                    lambda: _none_to_guest(file, start, end))
    yield from kvm_gmem_invalidate_end(kvm, file, start, end)
    yield from file.invalidate_lock.write_unlock()
    return 0


# --------------------------------------------------------------------------
# The unshare's caller: the guest's request, as the patches' comments describe it.
# --------------------------------------------------------------------------
def convert_to_private(kvm, slot: KvmMemorySlot, gfn: int, who: str = "kvm", *,
                       check_refs: bool = True, alternative: bool = False,
                       put_after_unlock: bool = False):
    """Unshare one page: clear_mappable, then register the callback if it went NONE.

    A composition: the model's stand-in for the series' caller (the guest's
    unshare request, on arm64/pKVM), which the seed thread does not show;
    the order of the two calls is the one the patch's comments describe.
    Returns ``(clear_ret, register_ret)``; ``register_ret`` is None when the
    page went straight to GUEST.
    """
    check_name("who", who)
    file, index = _slot_index(kvm, slot, gfn)
    check_bool("check_refs", check_refs)
    r1 = yield from gmem_clear_mappable(file, index, index + 1, who,
                                        check_refs=check_refs)
    state = yield from step("read state", lambda: file.state(index))
    if state != "NONE":
        return r1, None
    r2 = yield from kvm_slot_gmem_register_callback(
        kvm, slot, gfn, who, alternative=alternative,
        put_after_unlock=put_after_unlock)
    return r1, r2


def _may_register_again(file: GmemMappableFile, index: int) -> bool:
    folio = file.folio_at(index)
    return (file.mappable_offsets[index] != KVM_GMEM_NONE_MAPPABLE or folio is None
            or not (folio_mapped(folio) or folio_test_guestmem(folio)))


def unshare_and_wait(kvm, slot: KvmMemorySlot, gfn: int, who: str = "kvm", *,
                     trust_comment: bool = False, cleared: bool = False,
                     alternative: bool = False, put_after_unlock: bool = False):
    """A caller that must see the page private before it goes on (the guest's ask).

    A composition.  With ``trust_comment=True`` it reads -EAGAIN the way the
    posted comment described it ("the callback has been registered") and
    waits for the callback to store GUEST.  Otherwise it follows the
    corrected reading: -EAGAIN only means "not yet"; wait until the state
    changed, or until the folio is unmapped with no callback pending, and
    call again.  With ``cleared=True`` ``gmem_clear_mappable`` has already
    run (the scenario's set-up stored NONE): start with the register call.
    Returns the list of return codes it saw.
    """
    check_name("who", who)
    file, index = _slot_index(kvm, slot, gfn)
    check_bool("trust_comment", trust_comment)
    check_bool("cleared", cleared)
    variant = {"alternative": alternative, "put_after_unlock": put_after_unlock}
    if cleared:
        r = yield from kvm_slot_gmem_register_callback(kvm, slot, gfn, who,
                                                       **variant)
    else:
        _, r = yield from convert_to_private(kvm, slot, gfn, who, **variant)
    seen = [r]
    while r == -EAGAIN:
        if trust_comment:
            yield from wait_until(
                "the callback stores GUEST",
                lambda w: file.mappable_offsets[index] != KVM_GMEM_NONE_MAPPABLE)
            break
        yield from wait_until("state changed, or unmapped with no callback pending",
                              lambda w: _may_register_again(file, index))
        state = yield from step("read state", lambda: file.state(index))
        if state != "NONE":
            break
        r = yield from kvm_slot_gmem_register_callback(kvm, slot, gfn, who,
                                                       **variant)
        seen.append(r)
    return seen


# --------------------------------------------------------------------------
# The host's side: compositions standing for mm paths into the VMM's mapping.
# --------------------------------------------------------------------------
def host_fault(file: GmemMappableFile, index: int, who: str = "host"):
    """The VMM touches offset ``index`` of its mapping: mm's fault, then the PTE.

    A composition of mm's fault path: ``vma->vm_ops->fault`` is
    :func:`kvm_gmem_fault`; on ``VM_FAULT_LOCKED`` mm installs the PTE
    (``finish_fault``: the rmap counts the mapping, which keeps the fault's
    reference) and unlocks the folio.  Returns the vm_fault code.
    """
    check_name("who", who)
    _check_file(file)
    file.check_index(index)
    ret, folio = yield from kvm_gmem_fault(file, index, who)
    if ret != VM_FAULT_LOCKED:
        return ret
    yield from step("finish_fault: map the folio in the host page table",
                    lambda: folio_add_file_rmap_pte(folio, who))
    yield from folio_unlock(folio, who)
    return ret


def _unmap_one(file: GmemMappableFile, index: int) -> Folio:
    folio = file.folio_at(index)
    if folio is None or not folio_mapped(folio):
        raise KernelWarn(f"host unmap: nothing maps offset {index} in the host")
    folio_remove_rmap_pte(folio)
    return folio


def host_unmap(file: GmemMappableFile, index: int):
    """munmap of a host mapping of ``index``: off the rmap, then put its reference.

    A composition of the zap path (``folio_remove_rmap_pte``, then the
    batched ``folio_put`` after the TLB flush): two steps, so the count can
    still include the mapping's reference when the mapcount is already 0.
    Raises :class:`KernelWarn` if nothing maps offset ``index``.  Returns
    the new count.
    """
    _check_file(file)
    file.check_index(index)
    folio = yield from step("zap the host PTE (folio_remove_rmap_pte)",
                            lambda: _unmap_one(file, index))
    return (yield from folio_put(folio, PTE))


def _grab(file: GmemMappableFile, index: int, holder: str):
    folio = file.folio_at(index)
    if folio is not None and folio_mapped(folio) and folio_try_get(folio, holder):
        return folio
    return None


def host_gup(file: GmemMappableFile, index: int, who: str = "host"):
    """Take a GUP reference through the VMM's mapping, faulting the page in first.

    A composition of ``get_user_pages()`` on the mapping: like GUP-fast the
    reference is taken only while a host page table maps the folio (checked
    in the same step); otherwise the page is faulted in (:func:`host_fault`)
    and the grab retried.  Returns ``(0, folio)``, or ``(-EFAULT, None)``
    when the host may not map the page.  Holder: ``gup:<who>``.
    """
    check_name("who", who)
    _check_file(file)
    file.check_index(index)
    holder = f"gup:{who}"
    for attempt in range(2):
        folio = yield from step("GUP: grab the folio through the host page table",
                                lambda: _grab(file, index, holder))
        if folio is not None:
            return 0, folio
        if attempt:
            break
        if (yield from host_fault(file, index, who)) != VM_FAULT_LOCKED:
            break
    return -EFAULT, None


def _spec_holder(who: str, writes: bool) -> str:
    return f"{'specw' if writes else 'spec'}:{who}"


def _spec_get(file: GmemMappableFile, index: int, holder: str):
    folio = file.folio_at(index)
    return folio if folio is not None and folio_try_get(folio, holder) else None


def speculative_get(file: GmemMappableFile, index: int, who: str = "spec", *,
                    writes: bool = False):
    """A speculative reference: found by pfn, not via guest_memfd; no state check.

    A composition around ``folio_try_get()``: pfn walkers (compaction,
    page_idle, GUP-fast before its recheck) take such references and drop
    them again without touching the data.  ``writes=True`` is the
    reviewer's "what if it writes to the page" (holder ``specw:<who>``,
    which the invariant counts as host access).  Returns the folio, or None
    (no folio, or its count is 0).
    """
    check_name("who", who)
    _check_file(file)
    file.check_index(index)
    check_bool("writes", writes)
    holder = _spec_holder(who, writes)
    label = "speculative folio_try_get" + (" (will write)" if writes else "")
    return (yield from step(label, lambda: _spec_get(file, index, holder)))


def speculative_put(folio: Folio, who: str = "spec", *, writes: bool = False):
    """Drop the speculative reference; may be the final put (runs the callback)."""
    check_name("who", who)
    _check_folio(folio)
    check_bool("writes", writes)
    return (yield from folio_put(folio, _spec_holder(who, writes)))
