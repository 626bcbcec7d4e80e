"""Teaching scenarios, small enough to count by hand (tests/test_explorer.py does).

``lost_update``: two increments by read/write (the lost update) or by
``try_cmpxchg``; ``abba_deadlock``: two locks taken in opposite orders (or
ordered); ``srcu_grace_period``: a reader of an SRCU-protected array and an
updater that frees the old array with or without ``synchronize()``.
"""
from __future__ import annotations

from functools import partial

from ..checks import check_bool, check_choice
from .scenario import Actor, Scenario
from .world import World

__all__ = [
    "CounterWorld", "MemslotsWorld", "TwoLockWorld", "POISON", "abba_deadlock", "inc_cmpxchg",
    "inc_read_write", "lost_update", "srcu_grace_period", "srcu_reader", "srcu_updater",
    "take_both",
]


def _check_world(w, kind):
    if not isinstance(w, kind):
        raise TypeError(f"w must be a {kind.__name__}, got {type(w).__name__}")


class CounterWorld(World):
    """One shared counter."""

    def __init__(self):
        super().__init__()
        self.counter = self.word("counter", 0)


def inc_read_write(w: CounterWorld):
    """counter++ as a load and a store: two steps, so an update can be lost."""
    _check_world(w, CounterWorld)
    v = yield from w.counter.read()
    yield from w.counter.write(v + 1)
    return v + 1


def inc_cmpxchg(w: CounterWorld):
    """counter++ with a try_cmpxchg loop: a lost race retries from the value found."""
    _check_world(w, CounterWorld)
    old = yield from w.counter.read()
    while True:
        ok, old = yield from w.counter.try_cmpxchg(old, old + 1)
        if ok:
            return old + 1


def _counter_is_two(w, results):
    return True if w.counter.value == 2 else f"lost update: counter is {w.counter.value}, not 2"


def lost_update(atomic: bool = False) -> Scenario:
    """Two CPUs increment one counter; with ``atomic`` they use try_cmpxchg."""
    check_bool("atomic", atomic)
    fn = inc_cmpxchg if atomic else inc_read_write
    how = "try_cmpxchg" if atomic else "read, write"
    return Scenario(
        f"lost update ({how})", CounterWorld,
        [Actor("A", f"counter++ ({how})", fn), Actor("B", f"counter++ ({how})", fn)],
        final_check=_counter_is_two,
        description="Both increments must land: the counter ends at 2.")


class TwoLockWorld(World):
    """Two spinlocks and a count of critical sections completed."""

    def __init__(self):
        super().__init__()
        self.l1 = self.spinlock("L1")
        self.l2 = self.spinlock("L2")


def take_both(first: str, second: str):
    """An actor taking two locks in the order given, then releasing them."""
    check_choice("first", first, ("L1", "L2"))
    check_choice("second", second, ("L1", "L2"))
    if first == second:
        raise ValueError(f"second must be the other lock than first ({first!r})")

    def actor(w: TwoLockWorld):
        a, b = w.primitive(first), w.primitive(second)
        yield from a.lock()
        yield from b.lock()
        yield from b.unlock()
        yield from a.unlock()
    actor.__qualname__ = f"take_both_{first}_{second}"
    return actor


def _locks_free(w, results):
    return True if w.l1.holder is None and w.l2.holder is None else "a lock is still held"


def abba_deadlock(ordered: bool = False) -> Scenario:
    """A takes L1 then L2; B takes L2 then L1 (or, ``ordered``, L1 then L2 too)."""
    check_bool("ordered", ordered)
    b_order = ("L1", "L2") if ordered else ("L2", "L1")
    return Scenario(
        "lock order " + ("L1 -> L2 everywhere" if ordered else "ABBA"), TwoLockWorld,
        [Actor("A", "lock L1, L2", take_both("L1", "L2")),
         Actor("B", f"lock {b_order[0]}, {b_order[1]}", take_both(*b_order))],
        final_check=_locks_free,
        description="Both CPUs must get through; taking locks in opposite orders can deadlock.")


#: What the updater writes into the old memslots array when it frees it.
POISON = 0xDEAD


class MemslotsWorld(World):
    """An SRCU-protected pointer to one of two arrays, in the style of kvm->memslots."""

    def __init__(self):
        super().__init__()
        self.srcu = self.srcu_domain("kvm->srcu")
        self.memslots = self.word("memslots", 1)       # 1: the old array, 2: the new one
        self.old = self.word("old.slot", 0x1000)
        self.new = self.word("new.slot", 0x2000)

    def describe(self, name, value):
        if value == POISON and name == "old.slot":
            return "POISON (freed)"
        return super().describe(name, value)


def srcu_reader(w: MemslotsWorld):
    """A vCPU: enter SRCU, read the memslots pointer, use the array, leave."""
    _check_world(w, MemslotsWorld)
    idx = yield from w.srcu.read_lock()
    which = yield from w.memslots.read()
    slot = w.old if which == 1 else w.new
    val = yield from slot.read()
    yield from w.srcu.read_unlock(idx)
    return val


def srcu_updater(w: MemslotsWorld, synchronize: bool = True):
    """Publish the new array, wait for readers (if ``synchronize``), free the old one."""
    _check_world(w, MemslotsWorld)
    check_bool("synchronize", synchronize)
    yield from w.memslots.write(2)
    if synchronize:
        yield from w.srcu.synchronize()
    yield from w.old.write(POISON)


def _reader_saw_live_memory(w, results):
    return True if results["A"] != POISON else "use after free: the vCPU read the freed array"


def srcu_grace_period(synchronize: bool = True) -> Scenario:
    """A vCPU reads memslots under SRCU while an update frees the old array."""
    check_bool("synchronize", synchronize)
    title = "publish, synchronize_srcu, free" if synchronize else "publish, free"
    return Scenario(
        "memslots update " + ("with" if synchronize else "without") + " synchronize_srcu",
        MemslotsWorld,
        [Actor("A", "vCPU (SRCU reader)", srcu_reader),
         Actor("B", title, partial(srcu_updater, synchronize=synchronize))],
        final_check=_reader_saw_live_memory,
        description="The old array may be freed only after every reader that could see it left.")
