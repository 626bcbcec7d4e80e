"""Grace periods: ``SRCU`` (an SRCU domain such as ``kvm->srcu``) and plain ``RCU``.

Models: include/linux/srcu.h: srcu_read_lock(), srcu_read_unlock()
Models: kernel/rcu/srcutree.c: synchronize_srcu()
Models: include/linux/rcupdate.h: rcu_read_lock(), rcu_read_unlock()
Models: kernel/rcu/tree.c: synchronize_rcu()

Simplifies: ``synchronize()`` is two steps: it *begins* (marking the read
sections in progress at that moment) and *returns* (enabled once every marked
section has ended).  Sections that start after it began do not delay it, which
is the grace-period guarantee; how the kernel achieves it (SRCU's two counter
sets, RCU's quiescent states) is not modelled.  ``read_lock()``'s ``idx`` is the
model's token for the section (0 outermost, 1 nested, ...), not the kernel's
counter index.
"""
from __future__ import annotations

from ..checks import check_int
from .ops import Op, Violation
from .primitives import _Primitive

__all__ = ["SRCU", "RCU"]


class SRCU(_Primitive):
    """An SRCU domain: read sections and grace periods.

    ``readers`` is a sorted tuple of ``(cpu, idx, waiters)``: one entry per
    read section in progress, with the letters of the CPUs whose
    ``synchronize()`` began while it was in progress.
    """

    __slots__ = ("readers",)
    _rl, _ru, _sync = "srcu_read_lock", "srcu_read_unlock", "synchronize_srcu"

    def __init__(self, world, name):
        super().__init__(world, name)
        self.readers = ()

    def _state(self):
        return self.readers

    def _load(self, st):
        self.readers = st

    def _show(self):
        if not self.readers:
            return "no readers"
        parts = []
        for cpu, idx, waiters in self.readers:
            who = cpu if idx == 0 else f"{cpu}#{idx}"
            parts.append(f"{who} ({','.join(waiters)} waits)" if waiters else who)
        return "readers " + " ".join(parts)

    def read_lock(self):
        """Enter a read section (one step); return its ``idx`` token.

        Models: include/linux/srcu.h: srcu_read_lock()
        """
        return (yield Op(self, "read_lock", (), _srcu_read_lock))

    def read_unlock(self, idx):
        """Leave the read section ``idx`` (one step).

        Models: include/linux/srcu.h: srcu_read_unlock()
        """
        check_int("idx", idx, 0)
        return (yield Op(self, "read_unlock", (idx,), _srcu_read_unlock))

    def synchronize(self):
        """Wait for every read section in progress now to end (two steps).

        The first step marks the sections in progress; the second is enabled
        once all of them have ended.  Sections entered in between do not
        delay it.

        Models: kernel/rcu/srcutree.c: synchronize_srcu()
        """
        yield Op(self, "sync_begin", (), _srcu_sync_begin)
        yield Op(self, "sync_wait", (), _srcu_sync_end, _srcu_sync_done)

    def _what(self, kind, args):
        if kind == "read_lock":
            return f"{self._rl}({self.name})"
        if kind == "read_unlock":
            return f"{self._ru}({self.name}, {args[0]})" if self._ru == "srcu_read_unlock" \
                else f"{self._ru}()"
        if kind == "sync_begin":
            return f"{self._sync}({self.name}) begins"
        return f"{self._sync}({self.name}) returns"

    def _label(self, kind, args, result, cpu):
        if kind == "read_lock":
            return f"{self._what(kind, args)} = {result}" if self._rl == "srcu_read_lock" \
                else f"{self._rl}()"
        if kind == "sync_begin":
            marked = [c if i == 0 else f"{c}#{i}" for c, i, ws in self.readers if cpu in ws]
            waits = f": waits for {', '.join(marked)}" if marked else ": no readers to wait for"
            return self._what(kind, args) + waits
        return self._what(kind, args)

    def _why_blocked(self, kind, args, cpu):
        marked = [c for c, i, ws in self.readers if cpu in ws]
        return f"waiting in {self._sync}({self.name}): read section of {', '.join(marked)} in progress"


def _srcu_read_lock(d, args, cpu, world):
    used = {idx for c, idx, _ in d.readers if c == cpu}
    idx = 0
    while idx in used:
        idx += 1
    d.readers = tuple(sorted(d.readers + ((cpu, idx, ()),)))
    return idx


def _srcu_read_unlock(d, args, cpu, world):
    idx = args[0]
    if idx is None:   # RCU: the innermost section of this CPU
        mine = [i for c, i, _ in d.readers if c == cpu]
        if not mine:
            raise Violation(f"{d._ru}() by {cpu} outside a read section")
        idx = max(mine)
    kept = tuple(r for r in d.readers if not (r[0] == cpu and r[1] == idx))
    if len(kept) == len(d.readers):
        raise Violation(f"{d._ru}({d.name}, {idx}) by {cpu} without a matching {d._rl}")
    d.readers = kept


def _srcu_sync_begin(d, args, cpu, world):
    d.readers = tuple((c, i, tuple(sorted(ws + (cpu,)))) for c, i, ws in d.readers)


def _srcu_sync_done(d, args, cpu, world):
    for _c, _i, ws in d.readers:
        if cpu in ws:
            return False
    return True


def _srcu_sync_end(d, args, cpu, world):
    return None


class RCU(SRCU):
    """Plain RCU: the same grace-period model as SRCU, kernel names of RCU."""

    __slots__ = ()
    _rl, _ru, _sync = "rcu_read_lock", "rcu_read_unlock", "synchronize_rcu"

    def read_lock(self):
        """Enter a read section (one step).

        Models: include/linux/rcupdate.h: rcu_read_lock()
        """
        yield Op(self, "read_lock", (), _srcu_read_lock)

    def read_unlock(self):
        """Leave the innermost read section of this CPU (one step).

        Models: include/linux/rcupdate.h: rcu_read_unlock()
        """
        return (yield Op(self, "read_unlock", (None,), _srcu_read_unlock))

    def synchronize(self):
        """Wait for every read section in progress now to end (two steps).

        Models: kernel/rcu/tree.c: synchronize_rcu()
        """
        return (yield from SRCU.synchronize(self))
