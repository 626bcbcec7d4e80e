"""Footprints hold: every step touches what its footprint says, steps said independent commute.

``kvmmu.explorer.fpcheck.check_footprints`` watches the steps of every
state of a scenario; here it runs over every race scenario of the book, and
over small scenarios whose declarations are wrong on purpose, to show that
it notices.
"""
import pytest

from explorer_book_scenarios import book_scenarios
from kvmmu.explorer import (Actor, Invariant, Op, Primitive, Scenario, World, explore, step,
                            wait_until)
from kvmmu.explorer.fpcheck import check_footprints

#: Enough states to meet every kind of step of the book's scenarios (the
#: largest have a few thousand; their first states hold every step kind).
MAX_STATES = 1500


@pytest.mark.parametrize("name, factory", book_scenarios(), ids=[n for n, _ in book_scenarios()])
def test_every_footprint_of_the_book_holds(name, factory):
    res = check_footprints(factory(), max_states=MAX_STATES)
    assert res.ok, repr(res)
    assert res.states > 1


# --------------------------------------------------------------------------
# Wrong declarations are caught
# --------------------------------------------------------------------------

class Two(World):
    def __init__(self):
        super().__init__()
        self.a = self.word("a")
        self.b = self.word("b")
        self.c = self.word("c")


def _bump(word):
    word.value += 1


def two_steps(declare_a_writes_b: bool):
    def writer(w):
        # Declares that it writes a; in truth it writes b.
        yield from step("b += 1", lambda: _bump(w.b), writes=[w.a])

    def other(w):
        yield from step("b += 1", lambda: _bump(w.b), writes=[w.b])
        yield from w.c.write(1)
    return Scenario("two steps", Two, [Actor("A", "liar" if declare_a_writes_b else "a", writer),
                                       Actor("B", "b", other)],
                    invariants=[Invariant("c small", lambda w: w.c.value < 5, reads=[w_c])])


w_c = "c"


def test_a_step_writing_outside_its_declaration_is_caught():
    res = check_footprints(two_steps(True))
    assert not res.ok
    assert any("changes b, which its footprint" in p for p in res.problems), res.problems
    assert any("outside its footprint" in p for p in res.problems), res.problems


def test_an_invariant_reading_outside_its_declaration_is_caught():
    sc = Scenario("peek", Two, [Actor("A", "a", lambda w: (yield from w.b.write(1)))],
                  invariants=[Invariant("b is 0", lambda w: w.b.value == 0, reads=["a"])])
    res = check_footprints(sc)
    assert any("invariant 'b is 0' reads b" in p for p in res.problems), res.problems
    # The reduction would miss the write's visibility: it is also caught there.
    assert any("invisible step" in p for p in res.problems), res.problems


class Slots(Primitive):
    """Three slots; its footprint claims slot i, but ``bump`` always bumps slot 0."""

    __slots__ = ("slots", "honest")

    def __init__(self, world, name, honest):
        super().__init__(world, name)
        self.slots = [0, 0, 0]
        self.honest = honest

    def _state(self):
        return tuple(self.slots)

    def _load(self, st):
        self.slots[:] = st

    def _show(self):
        return str(self.slots)

    def bump(self, i):
        return (yield Op(self, "bump", (i,), _slots_bump))

    def _what(self, kind, args):
        return f"bump {self.name}[{args[0]}]"

    def _footprint(self, kind, args):
        return [(self, args[0])], [(self, args[0])]


def _slots_bump(p, args, cpu, world):
    # The dishonest one also changes slot 0, so that the order of two bumps shows.
    if not p.honest:
        p.slots[0] = p.slots[0] * 2 + args[0]
    p.slots[args[0]] += 1
    return tuple(p.slots)


def slots_scenario(honest):
    class W(World):
        def __init__(self):
            super().__init__()
            self.t = self._register(Slots(self, "T", honest))

    def bumper(i):
        def actor(w):
            yield from w.t.bump(i)
        return actor
    return Scenario("slots", W, [Actor("A", "a", bumper(1)), Actor("B", "b", bumper(2))],
                    invariants=[Invariant("t", lambda w: True, reads=())])


def test_a_primitive_footprint_finer_than_a_field_is_checked_by_commuting():
    assert check_footprints(slots_scenario(True)).ok
    res = check_footprints(slots_scenario(False))
    assert any("do not commute" in p for p in res.problems), res.problems


def test_a_wait_reading_outside_its_declaration_is_caught():
    def waiter(w):
        # Declares that its predicate reads a; it reads b.
        yield from wait_until("b set", lambda w: w.b.value == 1, reads=[w.a])

    def setter(w):
        yield from w.b.write(1)
    sc = Scenario("wait", Two, [Actor("A", "waits", waiter), Actor("B", "sets", setter)],
                  invariants=[Invariant("t", lambda w: True, reads=())])
    res = check_footprints(sc)
    assert any("enables A: b set, which does not count it" in p for p in res.problems), res.problems
    assert any("the wait of A" in p and "outside its footprint" in p for p in res.problems)


def test_what_the_memo_engine_watches_needs_no_declaration():
    # Undeclared steps get the footprint their watched runs show: nothing to
    # get wrong, and the two steps on different words commute.
    def a(w):
        yield from step("a += 1", lambda: _bump(w.a))

    def b(w):
        yield from step("b += 1", lambda: _bump(w.b))
    sc = Scenario("watched", Two, [Actor("A", "a", a), Actor("B", "b", b)],
                  invariants=[Invariant("c is 0", lambda w: w.c.value == 0, reads=["c"])])
    res = check_footprints(sc)
    assert res.ok and res.pairs == 1, repr(res)
    assert explore(sc, stop_at_first=False).reduced
