"""Every race scenario the book explores, from ONE function: ``book_scenarios()``.

The reduction tests (tests/test_explorer_por.py) and the explorer benchmark
run over this list: the explorer's own teaching scenarios, then every entry
of the book's registry (:func:`kvmmu.scenarios.all_scenarios`).  Each entry is
``(id, factory)``: ``factory()`` builds a fresh Scenario (some scenarios carry
tallies, so each run gets its own).
"""
from __future__ import annotations

from functools import partial


def _explorer_teaching():
    from kvmmu.explorer import abba_deadlock, lost_update, srcu_grace_period
    return [
        ("explorer: lost update", partial(lost_update, False)),
        ("explorer: lost update, cmpxchg", partial(lost_update, True)),
        ("explorer: ABBA", partial(abba_deadlock, False)),
        ("explorer: ordered locks", partial(abba_deadlock, True)),
        ("explorer: srcu, synchronize", partial(srcu_grace_period, True)),
        ("explorer: srcu, no synchronize", partial(srcu_grace_period, False)),
    ]


def _registry():
    from kvmmu.scenarios import all_scenarios
    return [(f"ch{entry.chapter}: {name}", entry.build)
            for name, entry in all_scenarios().items()]


def book_scenarios() -> list:
    """``(id, factory)`` for every race scenario of the book, in chapter order."""
    return _explorer_teaching() + _registry()
