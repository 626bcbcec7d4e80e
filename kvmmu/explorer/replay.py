"""The replay engine of ``explore``: reach a state by re-running its schedule.

The run already in hand is extended when the schedule continues it; otherwise
a fresh world is built and the schedule re-run.  Each replay checks that the
world has the key it had the first time, so a scenario that is not
deterministic is reported, not explored wrongly.
"""
from __future__ import annotations

from .ops import Violation
from .run import _Run

__all__ = []


class _ReplayEngine:
    """Reach a state by re-running its schedule from a fresh world."""

    method = "replay"

    def __init__(self, sc, res):
        self.sc, self.res = sc, res
        self.live = None
        self.live_sched = None

    def start(self):
        self.live = _Run(self.sc)
        self.live_sched = ""
        if self.live.failure is not None:
            return self.live.failure
        return None

    def initial(self):
        live = self.live
        n = len(live.ops)
        return live.world._key(), tuple(live.actor_key(i) for i in range(n)), None

    def _restore(self, sched, wkey):
        live = self.live
        if self.live_sched is not None and sched.startswith(self.live_sched):
            start = len(self.live_sched)
        else:
            live = self.live = _Run(self.sc)
            start = 0
            self.res.replays += 1
        index = self.sc._index
        for ch in sched[start:]:
            live.step(index[ch])
        self.res.replayed_steps += len(sched) - start
        self.live_sched = sched
        if live.world._key() != wkey:
            raise RuntimeError(
                f"scenario {self.sc.name!r} is not deterministic: replaying schedule "
                f"{sched!r} gave a different world than the first time (do the actors or "
                "the world use unseeded randomness, globals or set order?)")

    def runnable(self, node):
        if self.live_sched != node[0]:
            self._restore(node[0], node[1])
        return self.live.runnable()

    def child(self, node, i):
        sched, wkey, akeys = node[0], node[1], node[2]
        if self.live_sched != sched:
            self._restore(sched, wkey)
        live = self.live
        try:
            live.step(i)
        except Violation as bad:
            self.live_sched = None
            return bad.name
        self.live_sched = sched + self.sc.letters[i]
        ak = akeys[:i] + (live.actor_key(i),) + akeys[i + 1:]
        return live.world._key(), ak

    def verdict(self):
        return self.live.verdict(), all(self.live.done)

    def payload(self):
        return None
