"""Folios and their references: what mm does when the last one goes.

Models: include/linux/page-flags.h: enum pagetype, PGTY_guestmem (RFC v5)

The functions below carry their own ``Models:`` lines (mm_types.h, mm.h,
page_ref.h, page-flags.h, rmap.c, mm/swap.c).

Reference version: Linux 6.17 for the folio calls; ``PGTY_guestmem`` and the
``case PGTY_guestmem:`` in ``free_typed_folio`` come from Fuad Tabba's RFC
"[RFC PATCH v5 06/15] KVM: guest_memfd: Handle final folio_put() of guestmem
pages" (2025-01), which did not merge as posted (see
:mod:`kvmmu.guest_memfd_rfc`).

A folio here is one page-cache folio of a guest_memfd file
(:mod:`kvmmu.guest_memfd`): its reference count, how many host page tables
map it, its lock, its page type, its ``mapping`` (the file, or ``None`` once
truncation removed it) and the host page it lives in (``pfn``).

**The reference ledger (model only).**  Beside the kernel's ``refcount`` each
folio keeps ``holders``: who holds how many of those references ("filemap",
"pte", "gup:host", "kvm:vcpu0", "spec:S" ...).  Every function that changes
the count names the holder, and the ledger changes in the same atomic step,
so "no reference is lost or double-counted" is a checkable statement:
``refcount == sum(holders)`` and no holder below zero.  The kernel has no
such ledger; it is how the model sees a put by someone who holds nothing
(truncation putting references that the callback had already parked, for
instance).

**Operations as steps.**  Anything that may run the final put (and so a
typed folio's handler, which may sleep on a lock) is CPU code
(:mod:`kvmmu.cpu`): an explorer actor runs it with ``yield from``, plain
code with ``cpu.run_alone(kvm, ...)``.  Each change to shared state is one
explorer step; the plain functions (``folio_ref_add`` ...) are what a step
runs.

**Where the model simplifies.**

- A GUP reference is one reference (``get_user_pages``/FOLL_GET); the
  ``pin_user_pages`` bias of 1024 per pin on small folios is left out.
- ``folio_put`` decrements and, on zero, runs ``__folio_put``: a typed folio
  goes to ``free_typed_folio``; any other folio is marked freed.  Memcg,
  LRU and the per-CPU batches are not modelled.
- A host page-table mapping is counted (``mapcount``, the rmap's count) and
  holds one reference; the page tables themselves are not modelled here.
- Where the kernel would WARN because the *caller* broke a rule (a put with no
  reference left, unmapping a folio that is not mapped), the model raises
  :class:`KernelWarn`.
- ``free_typed_folio()`` dispatches through :data:`FREE_TYPED_FOLIO`, which
  the module that owns a page type fills in: mm's code does not import KVM's
  (CONTRIBUTING.md, "Layers").
"""
from .checks import KernelWarn, check_int, check_name
from .explorer import Violation, step

__all__ = [
    "PGTY_guestmem", "FILEMAP", "PTE", "KernelWarn", "Oops", "FOLIO_FIELDS", "Folio", "folio_nr_pages",
    "folio_ref_count", "folio_mapped", "folio_test_locked", "folio_test_guestmem",
    "__folio_set_guestmem", "__folio_clear_guestmem", "folio_ref_add", "folio_ref_sub_return",
    "folio_try_get", "folio_get", "folio_add_file_rmap_pte", "folio_remove_rmap_pte",
    "folio_put_refs", "folio_put", "put_page", "__folio_put", "free_typed_folio",
    "FREE_TYPED_FOLIO",
]

#: ``enum pagetype`` value the RFC adds for guest_memfd folios (page-flags.h).
PGTY_guestmem = 0xF8

_PGTY_NAMES = {PGTY_guestmem: "PGTY_guestmem"}

#: Holder names used by the guest_memfd model.  "filemap" holds
#: ``folio_nr_pages`` references while the folio is in the page cache; "pte"
#: holds one per host page-table mapping.
FILEMAP = "filemap"
PTE = "pte"


class Oops(Violation):
    """The modelled kernel crashed on this CPU (a NULL dereference): the operation ends here.

    It is an explorer ``Violation`` named "no oops", so a run under the
    explorer ends with that verdict; on one CPU it propagates to the caller.
    Whatever the dead operation held (locks, references) stays held.
    """

    def __init__(self, message: str):
        super().__init__("no oops")
        self.message = message

    def __str__(self) -> str:
        return self.message


#: A folio's state fields and their defaults (struct folio, as far as the model needs it).
_FIELDS = {
    "index": 0,            # folio->index: first page offset in the file
    "order": 0,
    "refcount": 0,         # folio->_refcount
    "mapcount": 0,         # host page tables mapping it (folio_mapcount)
    "locked_by": None,     # PG_locked, with the locker's name
    "page_type": None,     # PGTY_guestmem or None
    "in_cache": False,     # folio->mapping != NULL: still in its file's page cache
    "freed": False,        # returned to the page allocator
    "holders": {},         # the model's reference ledger: holder -> count
    "pfn": None,           # the first host page of the folio (None: no memory behind it)
}


#: The names of a folio's fields, in the order its state keeps them.
FOLIO_FIELDS = tuple(_FIELDS)


class Folio:
    """One folio of a guest_memfd file, with the model's reference ledger.

    Models: include/linux/mm_types.h: struct folio

    A ``Folio`` is a *handle*: ``fid`` names it and its fields live in the
    owning file's ``folio_state`` (a plain dict of the world), so that the
    explorer, which saves and restores a world's attributes, restores folios
    too while actors keep their handles.  A folio made without an owner (for
    unit tests of the mm helpers) keeps its fields to itself.
    ``mapping`` is the owning file while the folio is in its page cache, else
    None; ``owner`` stays the file after truncation (the model's back-pointer).
    """

    __slots__ = ("fid", "owner", "_own")

    def __init__(self, fid: int, owner=None, **fields):
        check_int("fid", fid, 0, (1 << 40) - 1)
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise TypeError(f"Folio has no field {sorted(unknown)[0]!r}; fields: {', '.join(_FIELDS)}")
        state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in _FIELDS.items()}
        state.update(fields)
        self.fid = fid
        self.owner = owner
        if owner is None:
            self._own = state
        else:
            self._own = None
            owner.folio_state[fid] = state

    @classmethod
    def of(cls, owner, fid: int) -> "Folio":
        """The handle of an existing folio ``fid`` of ``owner`` (its state is left alone)."""
        if fid not in owner.folio_state:
            raise ValueError(f"{owner!r} has no folio {fid}")
        folio = cls.__new__(cls)
        folio.fid, folio.owner, folio._own = fid, owner, None
        return folio

    def __eq__(self, other):
        return (type(other) is Folio and other.fid == self.fid
                and (other.owner is self.owner or self.owner is None or other.owner is None
                     or other.owner.name == self.owner.name)
                and (self.owner is not None or other._own == self._own))

    def __hash__(self):
        return hash(("folio", self.fid))

    def _st(self) -> dict:
        return self._own if self.owner is None else self.owner.folio_state[self.fid]

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        # A handle is a reference: copying a world's containers (or a step's
        # result) must not copy the file it points into.
        if self.owner is not None:
            return self
        twin = Folio(self.fid)
        twin._own = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._own.items()}
        return twin

    @property
    def mapping(self):
        """folio->mapping: the file while in its page cache, else None."""
        return self.owner if self._st()["in_cache"] else None

    @mapping.setter
    def mapping(self, value):
        if value is not None and value is not self.owner:
            raise ValueError("a folio's mapping can only be its own file or None")
        self._st()["in_cache"] = value is not None

    def __repr__(self) -> str:
        return f"folio {self.fid}"

    def short(self) -> str:
        """Compact state for trace tables: ``ref=2 map=1 guestmem locked:A gone [filemap=1 pte=1]``."""
        bits = [f"ref={self.refcount}", f"map={self.mapcount}"]
        if self.page_type == PGTY_guestmem:
            bits.append("guestmem")
        if self.locked_by:
            bits.append(f"locked:{self.locked_by}")
        if self.mapping is None:
            bits.append("freed" if self.freed else "truncated")
        ledger = " ".join(f"{k}={v}" for k, v in sorted(self.holders.items()) if v)
        return " ".join(bits) + f" [{ledger}]"

    def describe(self) -> str:
        """One line a reader can follow: refcount, mapcount, type, lock, ledger."""
        ty = "guestmem" if self.page_type == PGTY_guestmem else "none"
        ledger = ", ".join(f"{k}={v}" for k, v in sorted(self.holders.items()) if v) or "-"
        where = "in page cache" if self.mapping is not None else (
            "freed" if self.freed else "truncated")
        lock = f", locked by {self.locked_by}" if self.locked_by else ""
        return (f"folio {self.fid}@{self.index}: refcount={self.refcount} mapcount={self.mapcount} "
                f"type={ty}{lock}, {where} [{ledger}]")


def _field(name):
    def get(self):
        return self._st()[name]

    def put(self, value):
        self._st()[name] = value
    return property(get, put, doc=f"folio field {name!r}")


for _name in _FIELDS:
    setattr(Folio, _name, _field(_name))
del _name


def _check_folio(folio) -> Folio:
    if not isinstance(folio, Folio):
        raise TypeError(f"folio must be a kvmmu.folio.Folio, got {type(folio).__name__}")
    return folio


def _check_holder(holder) -> str:
    # The ledger's name for who holds the references ("filemap", "gup:host"...).
    return check_name("holder", holder)


def _ledger(folio: Folio, holder: str, delta: int) -> None:
    """Move ``holder``'s entry by ``delta``; the ledger stays sorted and without zeros."""
    held = dict(folio.holders)
    held[holder] = held.get(holder, 0) + delta
    folio.holders = {k: v for k, v in sorted(held.items()) if v}


def folio_nr_pages(folio: Folio) -> int:
    """Return how many pages the folio spans.

    Models: include/linux/mm.h: folio_nr_pages()
    """
    _check_folio(folio)
    return 1 << folio.order


def folio_ref_count(folio: Folio) -> int:
    """Return the folio's reference count.

    Models: include/linux/page_ref.h: folio_ref_count()
    """
    _check_folio(folio)
    return folio.refcount


def folio_mapped(folio: Folio) -> bool:
    """Return True if any host page table maps the folio.

    Models: include/linux/mm.h: folio_mapped()
    """
    _check_folio(folio)
    return folio.mapcount > 0


def folio_test_locked(folio: Folio) -> bool:
    """Return True if the folio is locked.

    Models: include/linux/page-flags.h: folio_test_locked()
    """
    _check_folio(folio)
    return folio.locked_by is not None


def folio_test_guestmem(folio: Folio) -> bool:
    """Return True if the folio has the guestmem type (a final-put callback is registered).

    Models: include/linux/page-flags.h: folio_test_guestmem()
    """
    _check_folio(folio)
    return folio.page_type == PGTY_guestmem


def __folio_set_guestmem(folio: Folio) -> None:
    """Give the folio the guestmem type, so its final put calls guest_memfd.

    Models: include/linux/page-flags.h: __folio_set_guestmem()
    """
    _check_folio(folio)
    if folio.page_type is not None:
        raise KernelWarn(f"__folio_set_guestmem: folio {folio.fid} already has a page type")
    folio.page_type = PGTY_guestmem


def __folio_clear_guestmem(folio: Folio) -> None:
    """Remove the guestmem type: the folio is an ordinary page-cache folio again.

    Models: include/linux/page-flags.h: __folio_clear_guestmem()
    """
    _check_folio(folio)
    if folio.page_type != PGTY_guestmem:
        raise KernelWarn(f"__folio_clear_guestmem: folio {folio.fid} is not a guestmem folio")
    folio.page_type = None


def folio_ref_add(folio: Folio, nr: int, holder: str) -> None:
    """Add ``nr`` references held by ``holder``.

    Models: include/linux/page_ref.h: folio_ref_add()
    """
    _check_folio(folio)
    _check_holder(holder)
    check_int("nr", nr, 1, 1 << 18)
    folio.refcount += nr
    _ledger(folio, holder, nr)


def folio_ref_sub_return(folio: Folio, nr: int, holder: str) -> int:
    """Drop ``nr`` references of ``holder`` without freeing; return the new count.

    Models: include/linux/page_ref.h: folio_ref_sub_return()
    """
    _check_folio(folio)
    _check_holder(holder)
    check_int("nr", nr, 1, 1 << 18)
    if folio.refcount < nr:
        raise KernelWarn(f"folio_ref_sub_return: folio {folio.fid} has {folio.refcount} "
                         f"references, cannot drop {nr}")
    folio.refcount -= nr
    _ledger(folio, holder, -nr)
    return folio.refcount


def folio_try_get(folio: Folio, holder: str) -> bool:
    """Take a reference unless the count is already zero (a speculative get).

    Models: include/linux/page_ref.h: folio_try_get()

    This is how code that found the folio without holding a reference (a pfn
    walker, GUP-fast before its recheck, the page cache's own lookup) gets one:
    it never resurrects a folio whose count reached zero.
    """
    _check_folio(folio)
    _check_holder(holder)
    if folio.refcount == 0:
        return False
    folio.refcount += 1
    _ledger(folio, holder, 1)
    return True


def folio_get(folio: Folio, holder: str) -> None:
    """Take a reference on a folio the caller knows is alive.

    Models: include/linux/mm.h: folio_get()
    """
    _check_folio(folio)
    _check_holder(holder)
    if folio.refcount <= 0:
        raise KernelWarn(f"folio_get: folio {folio.fid} has refcount {folio.refcount} "
                         "(VM_BUG_ON_FOLIO: get on a free folio)")
    folio.refcount += 1
    _ledger(folio, holder, 1)


def _put_return(folio: Folio, nr: int, holder: str) -> int:
    """The atomic part of a put: drop ``nr`` references, return the new count."""
    if folio.refcount < nr:
        raise KernelWarn(f"folio_put: folio {folio.fid} has refcount {folio.refcount}, "
                         f"cannot drop {nr} (reference count underflow)")
    folio.refcount -= nr
    _ledger(folio, holder, -nr)
    return folio.refcount


def folio_add_file_rmap_pte(folio: Folio, holder: str) -> None:
    """A host page table now maps the folio: one more mapping in the rmap's count.

    Models: mm/rmap.c: folio_add_file_rmap_pte()

    Plain computation (the fault that installs the PTE runs it in a step).
    The mapping keeps the reference the fault took: in the ledger it moves
    from ``holder`` to "pte".
    """
    _check_folio(folio)
    _check_holder(holder)
    if folio.holders.get(holder, 0) <= 0:
        raise KernelWarn(f"folio_add_file_rmap_pte: {holder} holds no reference to {folio!r}")
    folio.mapcount += 1
    _ledger(folio, holder, -1)
    _ledger(folio, PTE, 1)


def folio_remove_rmap_pte(folio: Folio) -> None:
    """A host page-table mapping of the folio is gone: one mapping fewer.

    Models: mm/rmap.c: folio_remove_rmap_pte()

    Plain computation.  Its reference is put later, after the TLB flush
    (the zap batches the puts), so the count can still include it while the
    mapcount no longer does.  Raises :class:`KernelWarn` if nothing maps it.
    """
    _check_folio(folio)
    if folio.mapcount <= 0:
        raise KernelWarn(f"folio_remove_rmap_pte: {folio!r} is not mapped")
    folio.mapcount -= 1


def folio_put_refs(folio: Folio, nr: int, holder: str):
    """Drop ``nr`` references of ``holder``; on reaching zero run ``__folio_put``.

    Models: include/linux/mm.h: folio_put_refs()

    Returns the new count (0: this put was the final one).  The decrement is
    one step; the final put's work (``__folio_put``) runs on the same CPU.
    """
    _check_folio(folio)
    _check_holder(holder)
    check_int("nr", nr, 1, 1 << 18)
    what = "folio_put" if nr == 1 else f"folio_put_refs({nr})"
    count = yield from step(f"{what} by {holder}: refcount",
                            lambda: _put_return(folio, nr, holder))
    if count == 0:
        yield from __folio_put(folio)
    return count


def folio_put(folio: Folio, holder: str):
    """Drop one reference of ``holder``; on reaching zero run ``__folio_put``.

    Models: include/linux/mm.h: folio_put()
    """
    _check_folio(folio)
    _check_holder(holder)
    return (yield from folio_put_refs(folio, 1, holder))


def put_page(folio: Folio, holder: str):
    """Drop a page reference (a GUP reference, for instance); may be the final put.

    Models: include/linux/mm.h: put_page()

    The kernel's ``put_page(page)`` is ``folio_put(page_folio(page))``.
    """
    _check_folio(folio)
    _check_holder(holder)
    return (yield from folio_put_refs(folio, 1, holder))


def __folio_put(folio: Folio):
    """The last reference is gone: a typed folio goes to its owner, others are freed.

    Models: mm/swap.c: __folio_put()
    """
    _check_folio(folio)
    ptype = yield from step("__folio_put: page type",
                            lambda: _PGTY_NAMES.get(folio.page_type, "none"))
    if ptype != "none":
        yield from free_typed_folio(folio, ptype)
        return
    yield from step(f"free folio {folio.fid} to the page allocator",
                    lambda: setattr(folio, "freed", True))


def free_typed_folio(folio: Folio, ptype: str):
    """Dispatch a typed folio's final put; the RFC sends guestmem folios to KVM.

    Models: mm/swap.c: free_typed_folio()

    ``ptype`` is the page type ``__folio_put`` read (by name).  The direct
    call from core mm into KVM is what Sean Christopherson objected to in
    review: mm/swap.c cannot call a function of a module (CONFIG_KVM=m).
    """
    _check_folio(folio)
    if not isinstance(ptype, str):
        raise TypeError(f"ptype must be a page type name, "
                        f"got {type(ptype).__name__}")
    handler = FREE_TYPED_FOLIO.get(ptype)
    if handler is None:
        raise KernelWarn(f"free_typed_folio: unknown page type {ptype}")
    yield from handler(folio)


#: The final-put handler of each page type: ``free_typed_folio``'s switch.
#: The RFC's ``case PGTY_guestmem:`` calls guest_memfd directly; the model
#: lets guest_memfd fill the entry in when it is loaded, so that mm's code
#: does not import KVM's (the layering the review objected to, made visible).
FREE_TYPED_FOLIO: dict = {}
