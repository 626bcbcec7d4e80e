"""Locks: ``SpinLock`` (``spinlock_t``), ``Mutex`` (``struct mutex``), ``RWLock`` (``rwlock_t``).

A waiter is simply not runnable until the lock is free: sleeping and spinning
are the same thing here.  Misuse (unlocking a lock the actor does not hold)
ends the run with a :class:`~kvmmu.explorer.ops.Violation`.

Models: include/linux/spinlock.h: spin_lock(), spin_unlock()
Models: include/linux/mutex.h: mutex_lock(), mutex_unlock()
Models: include/linux/rwlock.h: read_lock(), read_unlock(), write_lock(), write_unlock()

Simplifies: ``RWLock`` has no writer preference (a reader may enter while a
writer waits; the kernel's queued rwlock makes new process-context readers
wait); its read side is recursive; write_lock while holding read deadlocks.
"""
from __future__ import annotations

from .ops import Op, Violation
from .primitives import _Primitive

__all__ = ["SpinLock", "Mutex", "RWLock"]


class SpinLock(_Primitive):
    """A lock with one holder; a CPU spinning for it is not runnable."""

    __slots__ = ("holder",)
    _lock_name, _unlock_name = "spin_lock", "spin_unlock"

    def __init__(self, world, name):
        super().__init__(world, name)
        self.holder = None

    def _state(self):
        return self.holder

    def _load(self, st):
        self.holder = st

    def _show(self):
        return "free" if self.holder is None else f"held by {self.holder}"

    def lock(self):
        """Take the lock (one step); blocks while another CPU holds it.

        Models: include/linux/spinlock.h: spin_lock()
        """
        return (yield Op(self, "lock", (), _lock_take, _lock_free))

    def unlock(self):
        """Release the lock (one step); releasing a lock not held is a violation.

        Models: include/linux/spinlock.h: spin_unlock()
        """
        return (yield Op(self, "unlock", (), _lock_release))

    def _what(self, kind, args):
        return f"{self._lock_name if kind == 'lock' else self._unlock_name}({self.name})"

    def _label(self, kind, args, result, cpu):
        return self._what(kind, args)

    def _why_blocked(self, kind, args, cpu):
        return f"waiting in {self._what(kind, args)}: held by {self.holder}"


class Mutex(SpinLock):
    """A sleeping lock: in the model it behaves as a SpinLock."""

    __slots__ = ()
    _lock_name, _unlock_name = "mutex_lock", "mutex_unlock"

    def lock(self):
        """Take the mutex (one step); blocks while another CPU holds it.

        Models: include/linux/mutex.h: mutex_lock()
        """
        return (yield from SpinLock.lock(self))

    def unlock(self):
        """Release the mutex (one step).

        Models: include/linux/mutex.h: mutex_unlock()
        """
        return (yield from SpinLock.unlock(self))


def _lock_free(lk, args, cpu, world):
    return lk.holder is None


def _lock_take(lk, args, cpu, world):
    lk.holder = cpu


def _lock_release(lk, args, cpu, world):
    if lk.holder != cpu:
        raise Violation(f"{lk._unlock_name}({lk.name}) by {cpu}, which does not hold it")
    lk.holder = None


class RWLock(_Primitive):
    """A reader-writer lock: many readers or one writer.

    No writer preference (see the module docstring).  A CPU may hold the read
    side more than once (it is counted); asking for the write side while
    holding the read side deadlocks, as it does in the kernel.
    """

    __slots__ = ("writer", "readers")

    def __init__(self, world, name):
        super().__init__(world, name)
        self.writer = None
        self.readers = ()   # sorted tuple of letters, one entry per read hold

    def _state(self):
        return (self.writer, self.readers)

    def _load(self, st):
        self.writer, self.readers = st

    def _show(self):
        if self.writer is not None:
            return f"write {self.writer}"
        if self.readers:
            return "read " + ",".join(self.readers)
        return "free"

    def read_lock(self):
        """Take the lock for reading (one step); blocks while a writer holds it.

        Models: include/linux/rwlock.h: read_lock()
        """
        return (yield Op(self, "read_lock", (), _rw_read_lock, _rw_no_writer))

    def read_unlock(self):
        """Drop one read hold (one step).

        Models: include/linux/rwlock.h: read_unlock()
        """
        return (yield Op(self, "read_unlock", (), _rw_read_unlock))

    def write_lock(self):
        """Take the lock for writing (one step); blocks while anyone holds it.

        Models: include/linux/rwlock.h: write_lock()
        """
        return (yield Op(self, "write_lock", (), _rw_write_lock, _rw_unheld))

    def write_unlock(self):
        """Release the write side (one step).

        Models: include/linux/rwlock.h: write_unlock()
        """
        return (yield Op(self, "write_unlock", (), _rw_write_unlock))

    def _what(self, kind, args):
        return f"{kind}({self.name})"

    def _label(self, kind, args, result, cpu):
        return self._what(kind, args)

    def _why_blocked(self, kind, args, cpu):
        return f"waiting in {kind}({self.name}): {self._show()}"


def _rw_no_writer(lk, args, cpu, world):
    return lk.writer is None


def _rw_unheld(lk, args, cpu, world):
    return lk.writer is None and not lk.readers


def _rw_read_lock(lk, args, cpu, world):
    lk.readers = tuple(sorted(lk.readers + (cpu,)))


def _rw_read_unlock(lk, args, cpu, world):
    if cpu not in lk.readers:
        raise Violation(f"read_unlock({lk.name}) by {cpu}, which does not hold it for reading")
    r = list(lk.readers)
    r.remove(cpu)
    lk.readers = tuple(r)


def _rw_write_lock(lk, args, cpu, world):
    lk.writer = cpu


def _rw_write_unlock(lk, args, cpu, world):
    if lk.writer != cpu:
        raise Violation(f"write_unlock({lk.name}) by {cpu}, which does not hold it for writing")
    lk.writer = None
