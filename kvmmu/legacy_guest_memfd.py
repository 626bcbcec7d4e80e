"""guest_memfd's in-place conversion and its final-put callback (an RFC, not merged).

Models: virt/kvm/guest_memfd.c: enum folio_mappability, KVM_GMEM_ALL_MAPPABLE, KVM_GMEM_GUEST_MAPPABLE, KVM_GMEM_NONE_MAPPABLE
Models: include/linux/mm_types.h: VM_FAULT_SIGBUS, VM_FAULT_LOCKED
Models: mm/truncate.c: truncate_inode_pages_range()

The functions below carry their own ``Models:`` lines: the RFC's
``gmem_set_mappable``, ``gmem_clear_mappable``, ``__gmem_register_callback``,
``kvm_slot_gmem_register_callback``, ``__kvm_gmem_restore_pending_folio``,
``kvm_gmem_handle_folio_put`` and ``kvm_gmem_fault`` (virt/kvm/guest_memfd.c),
and the 6.17 page-cache and truncation code they meet (mm/filemap.c,
``kvm_gmem_punch_hole``).

**What this models, and what the kernel does.**  The conversion protocol here
is Fuad Tabba's RFC "[RFC PATCH v5 06/15] KVM: guest_memfd: Handle final
folio_put() of guestmem pages" (kvm list, 2025-01) with patch 05/15 of the
same series (the mappability states), as reviewed by Ackerley Tng.  The
series did not merge as posted.  Linux 6.17 has no per-page mappability
state, no shared/private conversion inside guest_memfd and no folio_put
callback; the later "mapping guest_memfd backed memory at the host" series,
which became the merged ``GUEST_MEMFD_FLAG_MMAP``/``INIT_SHARED`` flags (after
6.17), dropped the callback and kept only a placeholder
``kvm_gmem_handle_folio_put`` that WARNs.  In 6.17 a guest_memfd page is
either private (guest only) or lives in the VMM's ordinary memory; the
kernel-facts section 4(a) lists what merged.  ``kvm_gmem_punch_hole`` here
follows 6.17 (invalidate, truncate, end), minus the MMU-notifier sequence,
which chapter 2 covers.

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

**Actors.**  Every operation that touches shared state is a generator of
explorer steps (:mod:`kvmmu.explorer`): one step per shared access or lock
operation.  An explorer actor runs it with ``yield from``; plain code runs
it on one CPU with :func:`run_op`; :func:`apply_action` runs one console
action and describes what it did, :func:`replay` builds a file from a list
of actions, and the ``scenario_*`` functions at the end are the chapter's
races.

**Variants** (keyword arguments, default = the RFC as posted):
``alternative=True`` is Ackerley Tng's suggestion (always let the callback
store GUEST); ``put_after_unlock=True`` drops the conversion's lookup
reference after the invalidate lock (see the chapter: as posted, the put can
run the callback on the thread that holds the lock); ``fix_pending=True`` in
punch-hole restores a pending folio before truncating it.

**Where the model simplifies.**

- One guest_memfd file, no memslots: a gfn is its page offset.  The
  ``kvm_gmem_*``/``kvm_slot_gmem_*`` wrappers that translate gfns and walk
  memslots under ``slots_lock`` are the inode-level functions here.
- All folios of a file have one order; a file holds ``size`` pages.
- The host's userspace mapping is a count (``mapcount``) and one reference
  per mapping; the guest's stage-2 mapping is one flag per offset, holding no
  reference (as KVM's private mappings hold none).
- The xarray of states is a dict; ``xa_store`` never fails (no -ENOMEM).
- Arch hooks (``kvm_arch_gmem_prepare``/``invalidate``), ``uptodate`` and
  zeroing, hugetlb, and the MMU-notifier sequence count are left out.
"""
from functools import partial

from .checks import check_bool, check_choice, check_int
from .errno import EAGAIN, EFAULT, ENOENT, errno_name
from .explorer import Actor, Invariant, Scenario, World, explore, step, wait_until
from .folio import (FILEMAP, PTE, Folio, __folio_put, _ledger, _put_return, KernelWarn, Oops, WouldBlock, __folio_clear_guestmem,
                    __folio_set_guestmem, folio_mapped, folio_nr_pages, folio_put, folio_put_refs, folio_ref_add,
                    folio_ref_count, folio_ref_sub_return, folio_test_guestmem,
                    folio_test_locked, folio_try_get, run_op)


# --------------------------------------------------------------------------
# States (patch 05/15: bit 0 set = the guest cannot map, bit 1 set = the host cannot).
# --------------------------------------------------------------------------
KVM_GMEM_ALL_MAPPABLE = 0b00
KVM_GMEM_GUEST_MAPPABLE = 0b10
KVM_GMEM_NONE_MAPPABLE = 0b11

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
    """Name the host fault handler's result."""
    return {VM_FAULT_SIGBUS: "VM_FAULT_SIGBUS", VM_FAULT_LOCKED: "VM_FAULT_LOCKED"}.get(ret, hex(ret))


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
     "no folio, or refcount == nr_pages + 1 (only the page cache and this lookup)", "rfc"),
    ("ALL", "NONE", "gmem_clear_mappable",
     "refcount > nr_pages + 1 (a host mapping or a foreign reference)", "rfc"),
    ("NONE", "GUEST", "__gmem_register_callback",
     "not mapped, no callback pending, refcount == 1 after parking nr_pages", "rfc"),
    ("NONE", "GUEST", "kvm_gmem_handle_folio_put",
     "callback pending and the last reference is dropped", "rfc"),
    ("NONE", "ALL", "gmem_set_mappable",
     "share again: a pending callback is cancelled (restore_pending_folio)", "rfc"),
    ("GUEST", "ALL", "gmem_set_mappable", "share again", "rfc"),
    ("GUEST", "NONE", "gmem_clear_mappable",
     "unshare a GUEST page again while its count is raised", "unguarded"),
    ("NONE", "GUEST", "gmem_clear_mappable",
     "unshare a NONE page again: the count no longer includes parked references", "unguarded"),
    ("ALL", "GUEST", "__gmem_register_callback",
     "registering on a page shared again meanwhile (count == 1)", "unguarded"),
    ("ALL", "GUEST", "kvm_gmem_handle_folio_put",
     "a callback registered on a page shared again meanwhile fires", "unguarded"),
    ("NONE", "GUEST", "kvm_gmem_punch_hole",
     "fix: a pending folio leaves the file, nothing of the host's remains at the offset", "fix"),
)

_ALLOWED = {(f, t, fn) for f, t, fn, _c, _k in TRANSITIONS}


def transition_allowed(old: str, new: str, function: str) -> bool:
    """Return True if the table has the change ``old -> new`` by ``function``."""
    return old == new or (old, new, function) in _ALLOWED


# --------------------------------------------------------------------------
# The file.
# --------------------------------------------------------------------------
def _real_holder(holder: str) -> bool:
    """A host reference that may touch the data: GUP, a transient lookup, a writing speculative one."""
    return holder == PTE or holder.split(":", 1)[0] in ("gup", "lookup", "specw")


class GmemFile(World):
    """A guest_memfd file: page cache, per-offset states, invalidate lock.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_private()

    ``size`` pages, folios of ``order`` (``size`` must be a multiple of the
    folio size).  ``state`` is every offset's initial state (a name or a
    value).  With ``populate`` every folio is allocated up front, as if the
    guest had touched all its memory; otherwise faults allocate them.
    """

    def __init__(self, size: int = 1, order: int = 0, state="ALL", populate: bool = True):
        check_int("order", order, 0, 9)
        check_int("size", size, 1 << order, 64 << order)
        if size % (1 << order):
            raise ValueError(f"size must be a multiple of the folio size {1 << order}, got {size}")
        if isinstance(state, str):
            check_choice("state", state, STATE_BY_NAME)
            state = STATE_BY_NAME[state]
        check_choice("state", state, STATE_NAMES)
        check_bool("populate", populate)
        super().__init__()
        self.size = size
        self.order = order
        self.invalidate_lock = self.rwlock("invalidate_lock")
        self.mappable_offsets = {i: state for i in range(size)}
        self.folio_state: dict[int, dict] = {}   # fid -> the folio's fields (see kvmmu.folio.Folio)
        self.page_cache: dict[int, Folio] = {}
        self.folios: list[Folio] = []
        self.guest_mapped: dict[int, bool] = {i: False for i in range(size)}
        self.warnings: list[str] = []
        self.oops: list[str] = []
        self.callbacks = 0
        self.history: list[tuple] = []      # every state change (not part of snapshots)
        self.bad_transitions: list[str] = []
        if populate:
            for first in range(0, size, 1 << order):
                self._alloc_folio(first, extra=None)

    # ---- helpers the kernel functions use -------------------------------
    @property
    def nr_pages(self) -> int:
        return 1 << self.order

    def check_index(self, index: int) -> int:
        return check_int("index", index, 0, self.size - 1)

    def _alloc_folio(self, index: int, extra: str | None) -> Folio:
        first = index - index % self.nr_pages
        folio = Folio(len(self.folios), owner=self, index=first, order=self.order, in_cache=True)
        folio_ref_add(folio, self.nr_pages, FILEMAP)
        if extra is not None:
            folio_ref_add(folio, 1, extra)
        self.folios.append(folio)
        self.page_cache[first] = folio
        return folio

    def folio_at(self, index: int) -> Folio | None:
        """The folio the page cache holds for ``index`` (no reference taken)."""
        return self.page_cache.get(index - index % self.nr_pages)

    def state(self, index: int) -> str:
        return STATE_NAMES[self.mappable_offsets[self.check_index(index)]]

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def xa_store(self, index: int, value: int, function: str) -> None:
        """Store a state and record the change (the model's xa_store)."""
        old = STATE_NAMES[self.mappable_offsets[index]]
        new = STATE_NAMES[value]
        self.mappable_offsets[index] = value
        if old != new:
            self.history.append((index, old, new, function))
            if not transition_allowed(old, new, function):
                self.bad_transitions.append(f"{index}: {old} -> {new} by {function}")

    # ---- views ----------------------------------------------------------
    def describe_state(self) -> dict:
        """Readable state: per offset its state and folio, plus truncated folios."""
        out = {}
        for i in range(self.size):
            folio = self.folio_at(i)
            out[f"state[{i}]"] = self.state(i)
            if folio is not None and folio.index == i:
                out[f"folio@{i}"] = (f"ref={folio.refcount} map={folio.mapcount}"
                                     + (" guestmem" if folio_test_guestmem(folio) else ""))
            if self.guest_mapped[i]:
                out[f"guest[{i}]"] = "mapped"
        gone = [f for f in self.folios if f.mapping is None and not f.freed]
        for f in gone:
            out[f"truncated folio {f.fid}"] = f"ref={f.refcount}"
        if self.oops:
            out["oops"] = self.oops[-1]
        return out

    def snapshot_extra(self) -> dict:
        """All shared state outside the lock, as readable text (the explorer's key and tables)."""
        out = {}
        for i in range(self.size):
            out[f"state[{i}]"] = STATE_NAMES[self.mappable_offsets[i]]
        for folio in self.folios:
            out[f"folio{folio.fid}"] = folio.short()
        out["guest"] = ",".join(str(i) for i in range(self.size) if self.guest_mapped[i]) or "-"
        out["callbacks"] = str(self.callbacks)
        out["WARN"] = " | ".join(self.warnings) or "-"
        out["oops"] = " | ".join(self.oops) or "-"
        if self.bad_transitions:
            out["bad transitions"] = " | ".join(self.bad_transitions)
        return out

    def describe(self, name, value) -> str:
        return value if isinstance(value, str) else super().describe(name, value)

    def __repr__(self) -> str:
        return f"GmemFile({', '.join(f'{k}={v}' for k, v in self.describe_state().items())})"


def gmem_is_mappable(file: GmemFile, index: int) -> bool:
    """Return True if the host may map ``index`` (state ALL).

    Models: virt/kvm/guest_memfd.c: gmem_is_mappable()
    """
    return file.mappable_offsets[file.check_index(index)] == KVM_GMEM_ALL_MAPPABLE


def gmem_is_guest_mappable(file: GmemFile, index: int) -> bool:
    """Return True if the guest may map ``index`` (state ALL or GUEST: bit 0 clear).

    Models: virt/kvm/guest_memfd.c: gmem_is_guest_mappable()
    """
    return file.mappable_offsets[file.check_index(index)] in (KVM_GMEM_ALL_MAPPABLE,
                                                              KVM_GMEM_GUEST_MAPPABLE)


# --------------------------------------------------------------------------
# Page-cache lookups and the folio lock.
# --------------------------------------------------------------------------
def _try_lock(folio: Folio, who: str) -> bool:
    if folio.locked_by is None:
        folio.locked_by = who
        return True
    return False


def folio_lock(folio: Folio, who: str):
    """Take the folio lock, sleeping while another CPU holds it.

    Models: include/linux/pagemap.h: folio_lock()
    """
    while not (yield from step(f"folio_lock({folio!r})", lambda: _try_lock(folio, who))):
        yield from wait_until(f"folio {folio.fid} unlocked", lambda w: folio.locked_by is None)


def folio_unlock(folio: Folio, who: str):
    """Release the folio lock.

    Models: mm/filemap.c: folio_unlock()
    """
    def unlock():
        if folio.locked_by != who:
            raise KernelWarn(f"folio_unlock: {folio!r} is locked by {folio.locked_by}, not {who}")
        folio.locked_by = None
    yield from step(f"folio_unlock({folio!r})", unlock)


def filemap_get_entry(file: GmemFile, index: int, holder: str):
    """Find the folio at ``index`` and take a reference; None if the page cache has none.

    Models: mm/filemap.c: filemap_get_entry()

    The lookup is speculative (``folio_try_get``).  A folio whose count is
    zero is on its way out: the kernel retries until the count is raised
    again or the entry is gone, and so does the model (a wait).  In the RFC a
    guestmem folio sits in the page cache at count zero from its final put
    until the callback gives the references back.
    """
    first = index - index % file.nr_pages

    def lookup():
        folio = file.page_cache.get(first)
        if folio is None:
            return None
        return folio if folio_try_get(folio, holder) else "count 0, retry"
    while True:
        folio = yield from step(f"page cache lookup at {index}", lookup)
        if folio != "count 0, retry":
            return folio
        yield from wait_until(
            f"page cache lookup at {index} spins: folio count is 0",
            lambda w: file.page_cache.get(first) is None or file.page_cache[first].refcount > 0)


def filemap_lock_folio(file: GmemFile, index: int, who: str):
    """Find the folio at ``index``, take a reference and lock it; None if absent.

    Models: mm/filemap.c: filemap_lock_folio()

    After the lock, a folio that truncation removed meanwhile is dropped and
    the lookup retried, as ``__filemap_get_folio`` does.
    """
    while True:
        folio = yield from filemap_get_entry(file, index, who)
        if folio is None:
            return None
        yield from folio_lock(folio, who)
        if (yield from step("folio->mapping == mapping", lambda: folio.mapping is file)):
            return folio
        yield from folio_unlock(folio, who)
        yield from folio_put(folio, who)


def kvm_gmem_get_folio(file: GmemFile, index: int, who: str):
    """Return the locked folio at ``index`` with a reference, allocating it if absent.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_get_folio()
    """
    folio = yield from filemap_lock_folio(file, index, who)
    if folio is not None:
        return folio

    def create():
        folio = file._alloc_folio(index, extra=who)
        folio.locked_by = who
        return folio
    return (yield from step(f"allocate a folio at {index}", create))


# --------------------------------------------------------------------------
# Restore, register, callback (patch 06/15).
# --------------------------------------------------------------------------
def __kvm_gmem_restore_pending_folio(folio: Folio):
    """Cancel a pending callback: clear the guestmem type, give back the parked references.

    Models: virt/kvm/guest_memfd.c: __kvm_gmem_restore_pending_folio()

    Returns False (and records the WARN) if the folio is mapped or has no
    callback pending, as the RFC's WARN_ON_ONCE returns early.
    """
    def restore():
        file = folio.owner
        if folio_mapped(folio) or not folio_test_guestmem(folio):
            file.warn(f"restore_pending_folio: {folio!r} "
                      + ("is mapped" if folio_mapped(folio) else "has no callback pending"))
            return False
        if not folio_test_locked(folio) and folio_ref_count(folio) > 1:
            file.warn(f"restore_pending_folio: {folio!r} unlocked with "
                      f"refcount {folio_ref_count(folio)}")
        __folio_clear_guestmem(folio)
        folio_ref_add(folio, folio_nr_pages(folio), FILEMAP)
        return True
    return (yield from step("__kvm_gmem_restore_pending_folio: clear type, ref_add(nr_pages)",
                            restore))


def __gmem_register_callback(file: GmemFile, folio: Folio, index: int, *,
                             alternative: bool = False):
    """Give the folio the guestmem type so that its final put calls guest_memfd.

    Models: virt/kvm/guest_memfd.c: __gmem_register_callback()

    Returns 0 if no foreign reference remains (the offset is now GUEST).
    Returns -EAGAIN in two different cases, which the posted comment
    conflated: (a) the folio is still mapped by the host, or already has a
    callback pending: *nothing is registered*, the caller must unmap and
    retry; (b) foreign references remain: the callback *is* registered and
    will store GUEST when the last one is dropped.

    ``alternative=True`` models Ackerley Tng's suggestion: never store GUEST
    here, always let the callback do it (on the caller's own final put when
    nothing else holds the folio).
    """
    busy = yield from step("folio_mapped || folio_test_guestmem",
                           lambda: folio_mapped(folio) or folio_test_guestmem(folio))
    if busy:
        return -EAGAIN
    yield from step("__folio_set_guestmem", lambda: __folio_set_guestmem(folio))
    refcount = yield from step("folio_ref_sub_return(nr_pages)",
                               lambda: folio_ref_sub_return(folio, folio_nr_pages(folio), FILEMAP))
    if refcount == 1 and not alternative:
        yield from step(f"xa_store({index}, GUEST)",
                        lambda: file.xa_store(index, KVM_GMEM_GUEST_MAPPABLE,
                                              "__gmem_register_callback"))
        yield from __kvm_gmem_restore_pending_folio(folio)
        return 0
    return -EAGAIN


def kvm_slot_gmem_register_callback(file: GmemFile, index: int, who: str = "kvm", *,
                                    alternative: bool = False, put_after_unlock: bool = False):
    """Register the final-put callback for the folio at ``index``, under the invalidate lock.

    Models: virt/kvm/guest_memfd.c: kvm_slot_gmem_register_callback()

    As posted, the lookup reference is dropped *before* the invalidate lock
    is released.  If every foreign reference went away meanwhile, that put is
    the final one: it runs the callback, which takes the same lock on the
    same CPU.  ``put_after_unlock=True`` drops the reference after the unlock.
    """
    file.check_index(index)
    yield from file.invalidate_lock.write_lock()
    folio = yield from filemap_lock_folio(file, index, who)
    if folio is None:
        yield from step("WARN_ON_ONCE(IS_ERR(folio))",
                        lambda: file.warn(f"register_callback: no folio at {index}"))
        yield from file.invalidate_lock.write_unlock()
        return -ENOENT
    r = yield from __gmem_register_callback(file, folio, index, alternative=alternative)
    yield from folio_unlock(folio, who)
    if put_after_unlock:
        yield from file.invalidate_lock.write_unlock()
        yield from folio_put(folio, who)
    else:
        yield from folio_put(folio, who)
        yield from file.invalidate_lock.write_unlock()
    return r


def kvm_gmem_handle_folio_put(folio: Folio):
    """The final put of a guestmem folio: give the references back and store GUEST.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_handle_folio_put()

    mm's ``free_typed_folio`` calls it on the CPU that dropped the last
    reference.  It first reads ``folio->mapping->host``: for a folio that
    truncation removed from the page cache ``mapping`` is NULL: the model
    records the NULL dereference and raises :class:`kvmmu.folio.Oops`, which
    ends the operation on this CPU (the kernel would crash there) with the
    locks and references it held still held.
    """
    inode = yield from step("callback: inode = folio->mapping->host",
                            lambda: "NULL->host" if folio.mapping is None else "inode")
    if inode != "inode":
        message = (f"NULL dereference in kvm_gmem_handle_folio_put({folio!r}): "
                   "folio->mapping is NULL after truncation")
        yield from step("OOPS: NULL pointer dereference", lambda: folio.owner.oops.append(message))
        raise Oops(message)
    file = folio.owner
    yield from file.invalidate_lock.write_lock()
    yield from __kvm_gmem_restore_pending_folio(folio)

    def store():
        file.xa_store(folio.index, KVM_GMEM_GUEST_MAPPABLE, "kvm_gmem_handle_folio_put")
        file.callbacks += 1
    yield from step(f"callback: xa_store({folio.index}, GUEST)", store)
    yield from file.invalidate_lock.write_unlock()


# --------------------------------------------------------------------------
# Conversions (patch 05/15, with 06/15's change to sharing again).
# --------------------------------------------------------------------------
def gmem_clear_mappable(file: GmemFile, start: int, end: int, who: str = "kvm", *,
                        check_refs: bool = True):
    """Unshare ``[start, end)``: GUEST where no foreign reference shows, else NONE.

    Models: virt/kvm/guest_memfd.c: gmem_clear_mappable()

    The count is read once per folio and compared with ``nr_pages + 1`` (the
    page cache's references plus this lookup's).  It neither unmaps the host
    nor registers the callback: a NONE page waits for
    :func:`kvm_slot_gmem_register_callback`.  ``check_refs=False`` is the
    unsafe variant the RFC exists to avoid: store GUEST without looking.
    """
    _check_range(file, start, end)
    yield from file.invalidate_lock.write_lock()
    for i in range(start, end):
        folio = yield from filemap_lock_folio(file, i, who)
        value = KVM_GMEM_GUEST_MAPPABLE
        if folio is not None and check_refs:
            refcount = yield from step("folio_ref_count", lambda: folio_ref_count(folio))
            if refcount > folio_nr_pages(folio) + 1:
                value = KVM_GMEM_NONE_MAPPABLE
        yield from step(f"xa_store({i}, {STATE_NAMES[value]})",
                        lambda: file.xa_store(i, value, "gmem_clear_mappable"))
        if folio is not None:
            yield from folio_unlock(folio, who)
            yield from folio_put(folio, who)
    yield from file.invalidate_lock.write_unlock()
    return 0


def gmem_set_mappable(file: GmemFile, start: int, end: int, who: str = "kvm"):
    """Share ``[start, end)`` again: cancel pending callbacks, store ALL.

    Models: virt/kvm/guest_memfd.c: gmem_set_mappable()
    """
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
                                lambda: file.warn(f"set_mappable: NONE offset {i} has no folio"))
                r = -ENOENT
                break
            pending = yield from step("folio_test_guestmem", lambda: folio_test_guestmem(folio))
            if pending:
                yield from __kvm_gmem_restore_pending_folio(folio)
        yield from step(f"xa_store({i}, ALL)",
                        lambda: file.xa_store(i, KVM_GMEM_ALL_MAPPABLE, "gmem_set_mappable"))
        if folio is not None:
            yield from folio_unlock(folio, who)
            yield from folio_put(folio, who)
    yield from file.invalidate_lock.write_unlock()
    return r


def convert_to_private(file: GmemFile, index: int, who: str = "kvm", *,
                       check_refs: bool = True, **variant):
    """Unshare one page: clear_mappable, then register the callback if the page went NONE.

    A Python composition: the model's stand-in for the series' caller (the
    guest's unshare request, on arm64/pKVM), which the seed thread does not
    show; the order of the two calls is the one the patch's comments
    describe.  Returns ``(clear_ret, register_ret)``;
    ``register_ret`` is None when the page went straight to GUEST.
    ``variant``: ``alternative``, ``put_after_unlock`` (see
    :func:`kvm_slot_gmem_register_callback`).
    """
    file.check_index(index)
    r1 = yield from gmem_clear_mappable(file, index, index + 1, who, check_refs=check_refs)
    state = yield from step("read state", lambda: file.state(index))
    if state != "NONE":
        return r1, None
    r2 = yield from kvm_slot_gmem_register_callback(file, index, who, **variant)
    return r1, r2


def unshare_and_wait(file: GmemFile, index: int, who: str = "kvm", *,
                     trust_comment: bool = False, cleared: bool = False, **variant):
    """A caller that must see the page private before it goes on (the guest's unshare request).

    A Python composition.  With ``trust_comment=True`` it reads -EAGAIN the
    way the posted comment described it ("the callback has been registered")
    and waits for the callback to store GUEST.  Otherwise it follows the
    corrected reading: -EAGAIN only means "not yet"; wait until the state
    changed, or until the folio is unmapped with no callback pending, and
    call again.  With ``cleared=True`` ``gmem_clear_mappable`` has already
    run (the scenario's setup stored NONE): start with the register call.
    Returns the list of return codes it saw.
    """
    file.check_index(index)
    check_bool("cleared", cleared)
    if cleared:
        r = yield from kvm_slot_gmem_register_callback(file, index, who, **variant)
    else:
        _, r = yield from convert_to_private(file, index, who, **variant)
    seen = [r]
    while r == -EAGAIN:
        if trust_comment:
            yield from wait_until("the callback stores GUEST",
                                  lambda w: file.mappable_offsets[index] != KVM_GMEM_NONE_MAPPABLE)
            break

        def changed(w):
            folio = file.folio_at(index)
            return (file.mappable_offsets[index] != KVM_GMEM_NONE_MAPPABLE or folio is None
                    or not (folio_mapped(folio) or folio_test_guestmem(folio)))
        yield from wait_until("state changed, or unmapped with no callback pending", changed)
        state = yield from step("read state", lambda: file.state(index))
        if state != "NONE":
            break
        r = yield from kvm_slot_gmem_register_callback(file, index, who, **variant)
        seen.append(r)
    return seen


# --------------------------------------------------------------------------
# Faults and the host's references.
# --------------------------------------------------------------------------
def kvm_gmem_fault(file: GmemFile, index: int, who: str = "host"):
    """The host's userspace fault on guest_memfd's mmap: allowed only in ALL.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_fault()

    Under the shared invalidate lock: SIGBUS unless the state is ALL; a
    folio with a callback pending WARNs and SIGBUSes too.  On success the
    page table maps the folio and keeps the fault's reference (the model
    moves it to the "pte" holder) and it returns VM_FAULT_LOCKED (the kernel
    hands the locked folio to the fault core, which maps and unlocks it; the
    model does both here).
    """
    file.check_index(index)
    yield from file.invalidate_lock.read_lock()
    ok = yield from step("gmem_is_mappable", lambda: gmem_is_mappable(file, index))
    if not ok:
        yield from file.invalidate_lock.read_unlock()
        return VM_FAULT_SIGBUS
    folio = yield from kvm_gmem_get_folio(file, index, who)
    pending = yield from step("folio_test_guestmem", lambda: folio_test_guestmem(folio))
    if pending:
        yield from step("WARN_ON_ONCE(folio_test_guestmem)", lambda: file.warn(
            f"kvm_gmem_fault: {folio!r} has a callback pending"))
        yield from folio_unlock(folio, who)
        yield from folio_put(folio, who)
        yield from file.invalidate_lock.read_unlock()
        return VM_FAULT_SIGBUS

    def map_pte():
        folio.mapcount += 1
        _ledger(folio, who, -1)          # the fault's reference now belongs to the PTE
        _ledger(folio, PTE, 1)
    yield from step("map the folio in the host page table", map_pte)
    yield from folio_unlock(folio, who)
    yield from file.invalidate_lock.read_unlock()
    return VM_FAULT_LOCKED


def host_unmap(file: GmemFile, index: int, who: str = "host"):
    """munmap of one host mapping: remove it from the rmap, then put its reference.

    A Python composition of the kernel's zap path (``folio_remove_rmap_pte``,
    then the batched ``folio_put`` after the TLB flush): two steps, so the
    count can still include the mapping's reference when the mapcount is
    already 0.  Raises :class:`KernelWarn` if nothing maps offset ``index``.
    """
    file.check_index(index)

    def unmap():
        folio = file.folio_at(index)
        if folio is None or not folio_mapped(folio):
            raise KernelWarn(f"host unmap: nothing maps offset {index} in the host")
        folio.mapcount -= 1
        return folio
    folio = yield from step("zap the host PTE (folio_remove_rmap_pte)", unmap)
    return (yield from folio_put(folio, PTE))


def get_user_pages(file: GmemFile, index: int, who: str = "host"):
    """Take a GUP reference through the host mapping, faulting the page in first if needed.

    Models: mm/gup.c: get_user_pages()

    Like GUP-fast, the reference is taken only if a host page table still
    maps the folio (checked in the same step); otherwise the page is faulted
    in through ``kvm_gmem_fault`` and the grab retried.  Returns 0, or
    -EFAULT when the host may not map the page.  Holder: ``gup:<who>``.
    """
    file.check_index(index)
    for attempt in range(2):
        def grab():
            folio = file.folio_at(index)
            return (folio is not None and folio_mapped(folio)
                    and folio_try_get(folio, f"gup:{who}"))
        if (yield from step("GUP: grab the folio through the host page table", grab)):
            return 0
        if attempt == 0 and (yield from kvm_gmem_fault(file, index, who)) != VM_FAULT_LOCKED:
            return -EFAULT
    return -EFAULT


def put_page(file: GmemFile, who: str = "host"):
    """Drop one GUP reference of ``who`` (the I/O that held it is done); may be the final put.

    Models: include/linux/mm.h: put_page()

    A ``get_user_pages()`` reference is dropped with ``put_page()``; the
    model finds the folio ``who`` holds it on.

    Raises :class:`KernelWarn` if ``who`` holds no GUP reference.
    """
    return (yield from _put_held(file, (f"gup:{who}",), "put_page"))


def host_lookup_get(file: GmemFile, index: int, who: str = "host"):
    """A transient host lookup that will read the data; allowed only while the host may map.

    A Python composition standing for any host kernel path that reaches a
    guest_memfd page and follows the RFC's rule: check the state under the
    shared invalidate lock, as ``kvm_gmem_fault`` does.  The reference it
    keeps is a foreign one for the conversion.  Holder: ``lookup:<who>``.
    Returns 0, or -EFAULT when the state is not ALL or there is no folio.
    """
    file.check_index(index)
    yield from file.invalidate_lock.read_lock()
    ok = yield from step("gmem_is_mappable", lambda: gmem_is_mappable(file, index))
    folio = None
    if ok:
        folio = yield from filemap_get_entry(file, index, f"lookup:{who}")
    yield from file.invalidate_lock.read_unlock()
    return 0 if folio is not None else -EFAULT


def host_lookup_put(file: GmemFile, who: str = "host"):
    """Drop the transient lookup reference of ``who``; may be the final put."""
    return (yield from _put_held(file, (f"lookup:{who}",), "folio_put (lookup)"))


def speculative_get(file: GmemFile, index: int, who: str = "spec", *, writes: bool = False):
    """A speculative reference: found by pfn, not through guest_memfd; no state check.

    A Python composition around ``folio_try_get()``.
    pfn walkers (compaction, page_idle, GUP-fast before its recheck) take
    such references and drop them again without touching the data.
    ``writes=True`` is the reviewer's "what if it writes to the page"
    (holder ``specw:<who>``, which the invariant counts as host access).
    Returns True if the reference was taken (False: count 0 or no folio).
    """
    file.check_index(index)
    holder = f"{'specw' if writes else 'spec'}:{who}"

    def get():
        folio = file.folio_at(index)
        return folio is not None and folio_try_get(folio, holder)
    return (yield from step("speculative folio_try_get" + (" (will write)" if writes else ""), get))


def speculative_put(file: GmemFile, who: str = "spec"):
    """Drop the speculative reference of ``who``; may be the final put (and run the callback)."""
    return (yield from _put_held(file, (f"spec:{who}", f"specw:{who}"), "folio_put (speculative)"))


def guest_fault(file: GmemFile, index: int, who: str = "vcpu"):
    """The guest's stage-2 fault on a guest_memfd page: ALL or GUEST map it, NONE retries.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_get_pfn()

    Under the shared invalidate lock: -EAGAIN in NONE (the page is on its way
    to private; the vCPU retries), else the folio is looked up (allocated if
    absent), mapped in the guest, and the lookup reference dropped: KVM's
    mapping of guest_memfd memory holds no reference.
    """
    file.check_index(index)
    yield from file.invalidate_lock.read_lock()
    ok = yield from step("gmem_is_guest_mappable", lambda: gmem_is_guest_mappable(file, index))
    if not ok:
        yield from file.invalidate_lock.read_unlock()
        return -EAGAIN
    folio = yield from kvm_gmem_get_folio(file, index, f"kvm:{who}")
    yield from step("map the folio in the guest (stage 2)",
                    lambda: file.guest_mapped.__setitem__(index, True))
    yield from folio_unlock(folio, f"kvm:{who}")
    yield from folio_put(folio, f"kvm:{who}")
    yield from file.invalidate_lock.read_unlock()
    return 0


# --------------------------------------------------------------------------
# Truncation.
# --------------------------------------------------------------------------
def filemap_remove_folio(file: GmemFile, folio: Folio):
    """Delete the folio from the page cache and put the page cache's references.

    Models: mm/filemap.c: filemap_remove_folio()

    ``folio->mapping`` becomes NULL, then ``folio_put_refs(nr_pages)`` runs
    unconditionally: for a folio whose references the callback had parked,
    that put drops references the page cache no longer holds.
    """
    def delete():
        del file.page_cache[folio.index]
        folio.mapping = None
    yield from step("delete from the page cache (folio->mapping = NULL)", delete)
    return (yield from folio_put_refs(folio, folio_nr_pages(folio), FILEMAP))


def kvm_gmem_punch_hole(file: GmemFile, start: int, end: int, who: str = "vmm", *,
                        fix_pending: bool = False):
    """fallocate(PUNCH_HOLE): zap guest mappings, truncate the folios, under the invalidate lock.

    Models: virt/kvm/guest_memfd.c: kvm_gmem_punch_hole()

    Truncation (``truncate_inode_pages_range``) looks each folio up with a
    speculative reference, locks it, unmaps it from the host, removes it from
    the page cache, unlocks it and puts the lookup.  ``fix_pending=True`` is
    the model's version of the fix direction from review: a folio with a
    callback pending is first restored (its parked references given back),
    and once it has left the page cache its NONE offsets are stored GUEST,
    since nothing of the host's remains in the file there.  (The kernel's final form of the fix is not known to this book.)
    """
    _check_range(file, start, end)
    holder = f"truncate:{who}"
    yield from file.invalidate_lock.write_lock()

    def zap_guest():
        for i in range(start, end):
            file.guest_mapped[i] = False
    yield from step("kvm_gmem_invalidate_begin: zap guest mappings", zap_guest)
    first = start - start % file.nr_pages
    for index in range(first, end, file.nr_pages):
        folio = yield from filemap_get_entry(file, index, holder)
        if folio is None:
            continue
        yield from folio_lock(folio, holder)
        pending = False
        if fix_pending:
            pending = yield from step("folio_test_guestmem", lambda: folio_test_guestmem(folio))
            if pending:
                yield from __kvm_gmem_restore_pending_folio(folio)
        nr_ptes = yield from step("unmap_mapping_folio: zap host PTEs", lambda: _unmap_all(folio))
        for _ in range(nr_ptes):
            yield from folio_put(folio, PTE)
        yield from filemap_remove_folio(file, folio)
        if pending:
            def store_guest():
                for i in range(folio.index, folio.index + folio_nr_pages(folio)):
                    if file.mappable_offsets[i] == KVM_GMEM_NONE_MAPPABLE:
                        file.xa_store(i, KVM_GMEM_GUEST_MAPPABLE, "kvm_gmem_punch_hole")
            yield from step("xa_store(NONE offsets, GUEST)", store_guest)
        yield from folio_unlock(folio, holder)
        yield from folio_put(folio, holder)
    yield from step("kvm_gmem_invalidate_end")
    yield from file.invalidate_lock.write_unlock()
    return 0


def _unmap_all(folio: Folio) -> int:
    n = folio.mapcount
    folio.mapcount = 0
    return n


def _check_range(file: GmemFile, start: int, end: int) -> None:
    check_int("start", start, 0, file.size - 1)
    check_int("end", end, start + 1, file.size)


def _put_held(file: GmemFile, holders: tuple, what: str):
    """Drop one reference that one of ``holders`` holds (on whichever folio it is), in one step.

    Finding the folio and the decrement are one step, as the kernel's caller
    simply has the folio in hand; raises :class:`KernelWarn` (before changing
    anything) if none of ``holders`` holds a reference.  On reaching zero the
    final put runs on this CPU.  Returns the new count.
    """
    def put():
        for folio in file.folios:
            for holder in holders:
                if folio.holders.get(holder, 0) > 0:
                    return folio, _put_return(folio, 1, holder)
        kind, who = holders[0].split(":", 1)
        kind = {"gup": "GUP", "spec": "speculative"}.get(kind, kind)
        raise KernelWarn(f"{who} holds no {kind} reference to put")
    folio, count = yield from step(f"{what}: refcount", put)
    if count == 0:
        yield from __folio_put(folio)
    return count


# --------------------------------------------------------------------------
# Invariants: the explorer checks them after every step, tests after every op.
# --------------------------------------------------------------------------
def host_access(folio: Folio) -> list[str]:
    """The host's ways into the folio's data: mappings and data-touching references."""
    out = [f"{folio.mapcount} host mapping(s)"] if folio.mapcount else []
    out += [f"{h} x{n}" for h, n in sorted(folio.holders.items())
            if n > 0 and h != PTE and _real_holder(h)]
    return out


def private_is_private(file: GmemFile) -> bool:
    """Invariant: a GUEST offset's folio has no host mapping and no data-touching host reference.

    GUEST is where the guest may map the page as private memory; the RFC
    exists so that the host can no longer read or write it then.
    """
    for i in range(file.size):
        if file.mappable_offsets[i] != KVM_GMEM_GUEST_MAPPABLE:
            continue
        folio = file.folio_at(i)
        if folio is not None and host_access(folio):
            return False
    return True


def refs_accounted(file: GmemFile) -> bool:
    """Invariant: every folio's count equals the references someone holds, none negative."""
    for folio in file.folios:
        if folio.refcount < 0 or any(n < 0 for n in folio.holders.values()):
            return False
        if folio.refcount != sum(folio.holders.values()):
            return False
    return True


def no_oops(file: GmemFile) -> bool:
    """Invariant: the modelled kernel never dereferenced NULL."""
    return not file.oops


def transitions_follow_table(file: GmemFile) -> bool:
    """Invariant: every state change so far is a row of :data:`TRANSITIONS`."""
    return not file.bad_transitions


INVARIANTS = (
    ("private is private", private_is_private),
    ("references accounted", refs_accounted),
    ("no oops", no_oops),
    ("transitions follow the table", transitions_follow_table),
)


def check_invariants(file: GmemFile) -> list[str]:
    """Return the names of the invariants that do not hold (empty: all hold)."""
    return [name for name, inv in INVARIANTS if not inv(file)]


def at_baseline(file: GmemFile) -> str | None:
    """Final check: every folio nobody else holds is back at its baseline.

    Once every actor dropped what it took, a folio in the page cache holds
    exactly the page cache's ``nr_pages`` references, has no callback pending
    and is unlocked.  Returns None, or what is wrong.
    """
    for folio in file.folios:
        others = {h: n for h, n in folio.holders.items() if n and h != FILEMAP}
        if others or folio.mapping is None:
            continue
        if folio_test_guestmem(folio) or folio.refcount != folio_nr_pages(folio) or folio.locked_by:
            return (f"{folio!r} not at baseline: refcount {folio.refcount}, type "
                    f"{'guestmem' if folio_test_guestmem(folio) else 'none'}")
    return None


# --------------------------------------------------------------------------
# One CPU: the console's actions, for worked examples, the widget and tests.
# --------------------------------------------------------------------------
#: The actions of the folio console, each on offset 0 by one fixed actor.
ACTIONS = ("host map", "host unmap", "get ref", "put ref", "spec get", "spec put",
           "convert to private", "share again", "guest fault", "punch hole")


def _register_note(ret, was_mapped: bool, was_pending: bool) -> str:
    if ret == 0:
        return "0: no foreign reference, the page is GUEST now"
    if ret == -EAGAIN and was_mapped:
        return "-EAGAIN: still mapped by the host, NO callback registered (unmap, then retry)"
    if ret == -EAGAIN and was_pending:
        return "-EAGAIN: a callback is already pending, nothing new registered"
    if ret == -EAGAIN:
        return "-EAGAIN: foreign references remain, callback registered"
    return errno_name(ret)


def apply_action(file: GmemFile, action: str, index: int = 0, **variant) -> tuple:
    """Run one console action on one CPU; return ``(return value, message)``.

    Raises :class:`KernelWarn` for an action that is illegal in this state
    (a put with no reference, unmapping what is not mapped) and
    :class:`WouldBlock` for one that could never finish on one CPU.  An
    action whose CPU crashes (:class:`kvmmu.folio.Oops`) returns ``"oops"``
    and says so; the file keeps what the dead CPU held.  ``variant`` goes to the conversion (``alternative``, ``put_after_unlock``)
    and, as ``fix_pending``, to the punch hole.
    """
    check_choice("action", action, ACTIONS)
    file.check_index(index)
    folio = file.folio_at(index)
    callbacks, oops, freed = file.callbacks, len(file.oops), sum(f.freed for f in file.folios)
    crashed = []

    def run(gen):
        try:
            return run_op(gen, world=file)
        except Oops as exc:      # this CPU died; what it held stays held
            crashed.append(str(exc))
            return "oops"
    if action == "host map":
        ret = run(kvm_gmem_fault(file, index, "host"))
        msg = f"kvm_gmem_fault -> {vm_fault_name(ret)}" + (
            ": mapped in the host" if ret == VM_FAULT_LOCKED
            else f": the host may map only ALL pages (state {file.state(index)})"
            if not gmem_is_mappable(file, index) else ": a callback is pending (WARN)")
    elif action == "host unmap":
        ret = run(host_unmap(file, index, "host"))
        msg = f"host PTE zapped; folio_put -> refcount {ret}"
    elif action == "get ref":
        mapped = folio is not None and folio_mapped(folio)
        ret = run(get_user_pages(file, index, "host"))
        msg = f"get_user_pages -> {errno_name(ret)}" + (
            ": the host may not map this page" if ret != 0 else
            ": the host holds a GUP reference" if mapped else
            ": faulted the page in (a host mapping), then took a GUP reference")
    elif action == "put ref":
        ret = run(put_page(file, "host"))
        msg = f"put_page -> refcount {ret}"
    elif action == "spec get":
        ret = run(speculative_get(file, index, "spec"))
        msg = f"speculative folio_try_get -> {ret}" + ("" if ret else " (count 0 or no folio)")
    elif action == "spec put":
        ret = run(speculative_put(file, "spec"))
        msg = f"speculative folio_put -> refcount {ret}"
    elif action == "convert to private":
        was_mapped = folio is not None and folio_mapped(folio)
        was_pending = folio is not None and folio_test_guestmem(folio)
        extra = {k: v for k, v in variant.items() if k in ("alternative", "put_after_unlock")}
        ret = run(convert_to_private(file, index, "kvm", **extra))
        r1, r2 = ret
        msg = f"gmem_clear_mappable -> {errno_name(r1)}"
        if r2 is None:
            msg += f" (stored {file.state(index)})"
        else:
            msg += ("; stored NONE; kvm_slot_gmem_register_callback -> "
                    + _register_note(r2, was_mapped, was_pending))
    elif action == "share again":
        ret = run(gmem_set_mappable(file, index, index + 1, "kvm"))
        msg = f"gmem_set_mappable -> {errno_name(ret)}"
    elif action == "guest fault":
        ret = run(guest_fault(file, index, "vcpu"))
        msg = f"guest fault -> {errno_name(ret)}" + (
            ": mapped in the guest" if ret == 0 else ": state NONE, the vCPU retries later")
    else:
        fix = bool(variant.get("fix_pending", False))
        ret = run(kvm_gmem_punch_hole(file, index, index + 1, "vmm", fix_pending=fix))
        msg = "fallocate(PUNCH_HOLE) -> 0: folio removed from the page cache"
    if crashed:
        return "oops", ("the final put ran kvm_gmem_handle_folio_put on this CPU, which "
                        f"crashed: OOPS: {crashed[0]} (whatever it held stays held)")
    if file.callbacks > callbacks:
        msg += f"; the final put ran kvm_gmem_handle_folio_put: state {file.state(index)}"
    if len(file.oops) > oops:
        msg += "; OOPS: " + file.oops[-1]
    if sum(f.freed for f in file.folios) > freed:
        msg += "; a folio went back to the page allocator"
    return ret, msg


def replay(actions, size: int = 1, order: int = 0, **variant) -> GmemFile:
    """A fresh file (folio present, state ALL) with ``actions`` applied in order.

    Raises like :func:`apply_action` if one of them is illegal.
    """
    if isinstance(actions, str) or not isinstance(actions, (list, tuple)):
        raise TypeError("actions must be a list or tuple of action names")
    file = GmemFile(size=size, order=order)
    for action in actions:
        apply_action(file, action, **variant)
    return file


# --------------------------------------------------------------------------
# Scenarios for the explorer: the thread's questions, the reviewers' bugs.
# --------------------------------------------------------------------------
#: A setup step a scenario's world may start from besides the console's
#: actions: ``gmem_clear_mappable`` of offset 0 alone (it stores NONE or
#: GUEST and registers nothing), so that a trace can start at the register call.
SETUP_CLEAR = "clear mappable"


def _make_world(setup: tuple, size: int, order: int) -> GmemFile:
    file = GmemFile(size=size, order=order)
    for action in setup:
        if action == SETUP_CLEAR:
            run_op(gmem_clear_mappable(file, 0, 1, "kvm"), world=file)
        else:
            apply_action(file, action)
    return file


def gmem_world(*setup: str, size: int = 1, order: int = 0):
    """A world factory for :class:`kvmmu.explorer.Scenario`: a fresh file with ``setup`` applied.

    ``setup``: console actions (:data:`ACTIONS`) or :data:`SETUP_CLEAR`.
    """
    for action in setup:
        check_choice("setup action", action, ACTIONS + (SETUP_CLEAR,))
    return partial(_make_world, tuple(setup), size, order)


def _invariants(names=None):
    return [Invariant(name, fn) for name, fn in INVARIANTS if names is None or name in names]


def host_unpin(f: GmemFile):
    """Actor: the host VMM's I/O completes and drops its GUP reference."""
    return (yield from put_page(f, "host"))


def host_refault_then_release(f: GmemFile):
    """Actor: the host touches the page again (a fault), then unmaps and drops its GUP reference."""
    ret = yield from kvm_gmem_fault(f, 0, "host")
    if ret == VM_FAULT_LOCKED:
        yield from host_unmap(f, 0, "host")
    yield from put_page(f, "host")
    return vm_fault_name(ret)


def host_munmap(f: GmemFile):
    """Actor: the host VMM unmaps the page (munmap)."""
    return (yield from host_unmap(f, 0, "host"))


def speculative_ref(f: GmemFile, writes: bool = False):
    """Actor: a pfn walker takes a speculative reference and drops it (optionally writing)."""
    got = yield from speculative_get(f, 0, "S", writes=writes)
    if got:
        yield from speculative_put(f, "S")
    return got


def unshare(f: GmemFile, **variant):
    """Actor: the unshare of offset 0 (clear_mappable, then register if NONE)."""
    return (yield from convert_to_private(f, 0, "kvm", **variant))


def register_only(f: GmemFile, **variant):
    """Actor: the register call alone, on a page the setup already stored NONE."""
    return (yield from kvm_slot_gmem_register_callback(f, 0, "kvm", **variant))


def unshare_waiting(f: GmemFile, **variant):
    """Actor: an unshare that must see the page private before it returns."""
    return (yield from unshare_and_wait(f, 0, "kvm", **variant))


def vcpu_fault(f: GmemFile):
    """Actor: a vCPU faults on the page once (0 mapped, -EAGAIN retry later)."""
    return errno_name((yield from guest_fault(f, 0, "vcpu")))


def punch(f: GmemFile, fix_pending: bool = False):
    """Actor: the VMM punches a hole over offset 0."""
    return (yield from kvm_gmem_punch_hole(f, 0, 1, "vmm", fix_pending=fix_pending))


def share_again(f: GmemFile):
    """Actor: the guest shares offset 0 again."""
    return (yield from gmem_set_mappable(f, 0, 1, "kvm"))


def ends_private(f: GmemFile, results: dict):
    """Final check: back at baseline, offset 0 GUEST, at most one callback."""
    wrong = at_baseline(f)
    if wrong:
        return wrong
    if f.state(0) != "GUEST":
        return f"conversion never finished: state {f.state(0)}"
    if f.callbacks > 1:
        return f"the callback ran {f.callbacks} times"
    return True


def _ends_private_callback_iff_pending(f: GmemFile, results: dict):
    ok = ends_private(f, results)
    if ok is not True:
        return ok
    reg = results.get("B")
    pending = (reg[1] if isinstance(reg, tuple) else reg) == -EAGAIN
    if pending != (f.callbacks == 1):
        return "callback fired without a pending registration, or not at all"
    return True


def ends_truncated(f: GmemFile, results: dict):
    """Final check: every truncated folio is freed and nothing else is off baseline."""
    for folio in f.folios:
        if folio.mapping is None and not folio.freed:
            return f"{folio!r} left the file but was never freed (refcount {folio.refcount})"
    return at_baseline(f) or True


def scenario_naive_unshare() -> Scenario:
    """Break it: unsharing without looking at the count while the host holds a GUP reference."""
    return Scenario(
        "unshare without the refcount check", gmem_world("host map", "get ref", "host unmap"),
        [Actor("A", "host: I/O done, unpin", host_unpin),
         Actor("B", "unshare (no check)", partial(unshare, check_refs=False))],
        _invariants(), ends_private,
        description="The host still holds a GUP reference when the guest takes the page private.")


def scenario_pin(put_after_unlock: bool = False, alternative: bool = False,
                 vcpu: bool = True, from_none: bool = False) -> Scenario:
    """R4.1: a GUP reference held across the unshare, a vCPU faulting meanwhile.

    ``from_none=True``: the setup has already run ``gmem_clear_mappable``
    (state NONE) and B only makes the register call (a shorter trace).
    """
    check_bool("from_none", from_none)
    setup = ("host map", "get ref", "host unmap") + ((SETUP_CLEAR,) if from_none else ())
    b = (Actor("B", "unshare: register callback", partial(
        register_only, put_after_unlock=put_after_unlock, alternative=alternative))
         if from_none else
         Actor("B", "unshare", partial(unshare, put_after_unlock=put_after_unlock,
                                       alternative=alternative)))
    actors = [Actor("A", "host: I/O done, unpin", host_unpin), b]
    if vcpu:
        actors.append(Actor("C", "vCPU: guest fault", vcpu_fault))
    tag = ", ".join(t for t, on in (("put after unlock", put_after_unlock),
                                    ("alternative", alternative)) if on) or "as posted"
    return Scenario(
        f"GUP reference across unshare ({tag})", gmem_world(*setup),
        actors, _invariants(), _ends_private_callback_iff_pending,
        description="The page may become GUEST only after the host's reference is gone.")


def scenario_comment(trust_comment: bool = True, from_none: bool = False) -> Scenario:
    """The -EAGAIN that registers nothing: a caller that trusts the posted comment waits forever.

    ``from_none=True``: the setup has already stored NONE; B starts at the register call.
    """
    check_bool("from_none", from_none)
    how = "trusts the comment" if trust_comment else "retries on -EAGAIN"
    setup = ("host map",) + ((SETUP_CLEAR,) if from_none else ())
    return Scenario(
        f"unshare while still mapped (caller {how})", gmem_world(*setup),
        [Actor("A", "host: munmap", host_munmap),
         Actor("B", f"unshare, {how}",
               partial(unshare_waiting, trust_comment=trust_comment, put_after_unlock=True,
                       cleared=from_none))],
        _invariants(), ends_private,
        description="register_callback returns -EAGAIN while the host still maps the page.")


def scenario_speculative(writes: bool = False, put_after_unlock: bool = True,
                         alternative: bool = False) -> Scenario:
    """Ackerley Tng's question: the refcount check racing a speculative reference."""
    tag = ", ".join(t for t, on in (("writing", writes), ("put after unlock", put_after_unlock),
                                    ("alternative", alternative)) if on) or "as posted"
    return Scenario(
        f"speculative reference vs unshare ({tag})", gmem_world(),
        [Actor("A", "pfn walker: try_get, put" + (" (writes)" if writes else ""),
               partial(speculative_ref, writes=writes)),
         Actor("B", "unshare", partial(unshare, put_after_unlock=put_after_unlock,
                                        alternative=alternative))],
        _invariants(), _ends_private_callback_iff_pending,
        description="Does the callback still fire when a speculative reference comes and goes?")


def scenario_host_fault_during_none() -> Scenario:
    """The transient NONE state: the host tries to fault the page in while it drains."""
    return Scenario(
        "host fault during the unshare", gmem_world("host map", "get ref", "host unmap"),
        [Actor("A", "host: touch, unmap, unpin", host_refault_then_release),
         Actor("B", "unshare, retry on -EAGAIN",
               partial(unshare_waiting, put_after_unlock=True))],
        _invariants(), ends_private,
        description="While the state is NONE the host fault must fail.")


def scenario_truncate_pending(fix_pending: bool = False) -> Scenario:
    """R4.2: PUNCH_HOLE while the callback is pending (the bug found in review)."""
    return Scenario(
        "punch hole while a callback is pending" + (" (fixed)" if fix_pending else ""),
        gmem_world("host map", "get ref", "host unmap", "convert to private"),
        [Actor("A", "host: I/O done, unpin", host_unpin),
         Actor("B", "VMM: fallocate(PUNCH_HOLE)", partial(punch, fix_pending=fix_pending))],
        _invariants(), ends_truncated,
        description="Truncation removes a folio whose page-cache references are parked.")


def scenario_share_again_vs_final_put() -> Scenario:
    """Share again racing the final put: the page-cache lookup meets a folio at count 0."""
    return Scenario(
        "share again vs the final put",
        gmem_world("host map", "get ref", "host unmap", "convert to private"),
        [Actor("A", "host: I/O done, unpin", host_unpin),
         Actor("B", "guest: share again", share_again)],
        _invariants(), lambda f, r: at_baseline(f) or True,
        description="The callback sleeps on the invalidate lock; a lookup under it spins on count 0.")


def explore_outcomes(scenario: Scenario, **kwargs):
    """Explore ``scenario``; also collect every distinct way a complete run ended.

    Returns ``(result, outcomes)``: ``outcomes`` is a sorted list of
    ``(actor results, final state of offset 0, callbacks run)``.
    """
    seen = set()
    check = scenario.final_check

    def record(f, results):
        seen.add((tuple(sorted((k, _plain(v)) for k, v in results.items())),
                  f.state(0), f.callbacks))
        return True if check is None else check(f, results)
    wrapped = Scenario(scenario.name, scenario.world, scenario.actors, scenario.invariants,
                       record, scenario.description)
    result = explore(wrapped, **kwargs)
    return result, sorted(seen, key=repr)


def _plain(v):
    if isinstance(v, (tuple, list)):
        return tuple(_plain(x) for x in v)
    if isinstance(v, int) and not isinstance(v, bool) and v < 0:
        return errno_name(v)
    return v
