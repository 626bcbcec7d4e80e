"""Partial-order reduction: it never changes a verdict, and it does reduce.

Three kinds of evidence: every race scenario of the book (from
``explorer_book_scenarios.book_scenarios``), hypothesis-generated small
scenarios over a few Words and locks, and small scenarios counted by hand.
"""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer_book_scenarios import book_scenarios
from kvmmu.explorer import (Actor, Invariant, Op, Primitive, Scenario, World, explore,
                            srcu_grace_period, step, wait_until)
from kvmmu.explorer.footprint import Footprint, conflict, declared
from kvmmu.explorer.search import _reduced_search


def verdict(res):
    """What reduction must not change: violated, which violations, a deadlock."""
    names = {n for n, _ in res.violations}
    return res.violated, names, "deadlock" in names


# --------------------------------------------------------------------------
# Every race scenario of the book
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name, factory", book_scenarios(), ids=[n for n, _ in book_scenarios()])
def test_reduction_keeps_every_verdict_of_the_book(name, factory):
    red = explore(factory(), stop_at_first=False, record_states=True)
    if red.method != "snapshot":
        # The memo engine cannot run it (red.note says why): another engine
        # explored it, without reduction, so this is the full search itself.
        assert not red.reduced and red.search == "full" and red.exhaustive
        return
    full = explore(factory(), stop_at_first=False, reduction=False, record_states=True)
    assert verdict(red) == verdict(full)
    assert set(red.final_states) == set(full.final_states)
    assert red.complete_runs == full.complete_runs
    assert red.states <= full.states and red.transitions <= full.transitions
    if red.violated:           # re-derived by the full search: the same result
        assert (red.states, red.transitions, red.schedule) == \
            (full.states, full.transitions, full.schedule)
    # The reduced search on its own (before a violation is re-derived) finds
    # a violation exactly when the full one does.
    alone = _reduced_search(factory())
    assert alone.violated == full.violated
    if not full.violated:
        assert alone.complete_runs == full.complete_runs


# --------------------------------------------------------------------------
# Small random scenarios: actors over three Words, a spinlock, an rwlock, SRCU
# --------------------------------------------------------------------------

class RandomWorld(World):
    def __init__(self):
        super().__init__()
        self.w = [self.word(f"w{i}", 0) for i in range(3)]
        self.lock = self.spinlock("L")
        self.rw = self.rwlock("R")
        self.srcu = self.srcu_domain("S")


def interpret(program):
    """An actor running ``program``: a tuple of operations (see ``OPS``)."""
    def actor(w):
        v = 0
        idx = None
        for op in program:
            kind, a, b = op
            if kind == "if" and v != a:
                continue                   # skip the next-level op: a branch on data
            if kind == "if":
                kind, a, b = b
            if kind == "read":
                v = yield from w.w[a].read()
            elif kind == "write":
                yield from w.w[a].write((v + b) % 4)
            elif kind == "cmpxchg":
                ok, v = yield from w.w[a].try_cmpxchg(v, (v + b) % 4)
            elif kind == "lock":
                yield from w.lock.lock()
            elif kind == "unlock":
                yield from w.lock.unlock()
            elif kind == "rlock":
                yield from w.rw.read_lock()
            elif kind == "runlock":
                yield from w.rw.read_unlock()
            elif kind == "wlock":
                yield from w.rw.write_lock()
            elif kind == "wunlock":
                yield from w.rw.write_unlock()
            elif kind == "srcu":
                idx = yield from w.srcu.read_lock()
            elif kind == "srcu_unlock":
                yield from w.srcu.read_unlock(idx if idx is not None else 0)
            elif kind == "sync":
                yield from w.srcu.synchronize()
            elif kind == "wait":
                word = w.w[a]
                reads = [word] if b else None
                yield from wait_until(f"w{a} == 1", lambda w: word.value == 1, reads=reads)
            elif kind == "step":
                word = w.w[a]
                fp = {"reads": [word], "writes": [word]} if b else {}
                v = yield from step(f"w{a} += 1", lambda: _bump(word), **fp)
            elif kind == "yield":
                yield
            elif kind == "assert":
                assert v != a, f"v is {a}"
        return v
    return actor


def _bump(word):
    word.value = (word.value + 1) % 4
    return word.value


WORD = st.integers(0, 2)
SIMPLE = st.one_of(
    st.tuples(st.just("read"), WORD, st.just(0)),
    st.tuples(st.just("write"), WORD, st.integers(0, 2)),
    st.tuples(st.just("cmpxchg"), WORD, st.integers(1, 2)),
    st.tuples(st.sampled_from(["lock", "unlock", "rlock", "runlock", "wlock", "wunlock",
                               "srcu", "srcu_unlock", "sync", "yield"]), st.just(0), st.just(0)),
    st.tuples(st.just("wait"), WORD, st.booleans()),
    st.tuples(st.just("step"), WORD, st.booleans()),
    st.tuples(st.just("assert"), st.integers(1, 3), st.just(0)),
)
OPS = st.one_of(SIMPLE, st.tuples(st.just("if"), st.integers(0, 3), SIMPLE))


@st.composite
def scenarios(draw):
    n = draw(st.integers(2, 3))
    programs = [tuple(draw(st.lists(OPS, min_size=1, max_size=5))) for _ in range(n)]
    invariants = []
    for k in range(draw(st.integers(0, 2))):
        a, b = draw(WORD), draw(WORD)
        c = draw(st.integers(1, 6))
        declare = draw(st.booleans())
        invariants.append(Invariant(
            f"w{a} + w{b} != {c}", lambda w, a=a, b=b, c=c: w.w[a].value + w.w[b].value != c,
            reads=[f"w{a}", f"w{b}"] if declare else None))
    final = None
    if draw(st.booleans()) or not invariants:
        c = draw(st.integers(0, 3))
        final = lambda w, results, c=c: w.w[0].value != c     # noqa: E731
    actors = [Actor("ABC"[i], f"program {i}", interpret(p)) for i, p in enumerate(programs)]
    return Scenario("random", RandomWorld, actors, invariants, final_check=final)


@settings(max_examples=250, deadline=None)
@given(sc=scenarios(), order=st.sampled_from(["bfs", "dfs"]))
def test_reduction_keeps_every_verdict_of_random_scenarios(sc, order):
    full = explore(sc, stop_at_first=False, reduction=False, record_states=True, order=order)
    red = explore(sc, stop_at_first=False, record_states=True, order=order)
    assert verdict(red) == verdict(full)
    assert set(red.final_states) == set(full.final_states)
    assert red.complete_runs == full.complete_runs
    alone = _reduced_search(sc, order=order, record_states=True)
    assert alone.violated == full.violated
    if not full.violated:
        assert set(alone.final_states) == set(full.final_states)
        assert alone.states <= full.states
    # stop_at_first: the same verdict and counterexample as the full search.
    first = explore(sc, order=order)
    first_full = explore(sc, order=order, reduction=False)
    assert (first.violated, first.invariant, first.schedule) == \
        (first_full.violated, first_full.invariant, first_full.schedule)


# --------------------------------------------------------------------------
# Counted by hand
# --------------------------------------------------------------------------

class OwnWords(World):
    def __init__(self):
        super().__init__()
        self.counter = self.word("counter", 0)
        self.own = [self.word(f"own{i}", 0) for i in range(3)]


def own_increments(i, k):
    def actor(w):
        for _ in range(k):
            v = yield from w.own[i].read()
            yield from w.own[i].write(v + 1)
    return actor


def independent(declare: bool):
    reads = ("counter",) if declare else None
    return Scenario("independent", OwnWords,
                    [Actor("ABC"[i], f"cpu{i}", own_increments(i, 2)) for i in range(3)],
                    invariants=[Invariant("counter is 0", lambda w: w.counter.value == 0,
                                          reads=reads)])


def test_independent_actors_are_explored_in_one_order():
    # Three actors of 4 steps each on their own words.  Full: 5^3 = 125
    # states (each actor at 0..4 steps), 3*4*25 = 300 transitions.  Reduced:
    # no step conflicts with another actor's, none is visible (the invariant
    # reads only the counter), so one actor at a time: 13 states, 12
    # transitions, one order.
    full = explore(independent(True), stop_at_first=False, reduction=False)
    assert (full.states, full.transitions, full.complete_runs) == (125, 300, 1)
    red = explore(independent(True), stop_at_first=False)
    assert (red.states, red.transitions, red.complete_runs) == (13, 12, 1)
    assert red.reduced and red.search == "partial-order reduced"
    assert not red.violated and red.exhaustive


def test_an_invariant_that_declares_nothing_makes_every_write_visible():
    # Every write may change what the invariant reads: writes of different
    # actors must keep their order, so only reads commute.  Each actor's
    # read (pending while the others' writes are not) may go first alone.
    red = explore(independent(False), stop_at_first=False)
    full = explore(independent(False), stop_at_first=False, reduction=False)
    assert full.states == 125 and 13 < red.states < 125


def test_srcu_reader_of_the_new_array_commutes_with_the_updater():
    # In srcu_grace_period, only the reader's read of new.slot touches
    # nothing the updater ever touches, and no invariant watches it (there
    # are none: the final check needs no visibility).  It is pending in two
    # states where B can also step: (a2 of the new array, b1) and (same, b2
    # unmarked); each is expanded with A alone, saving B's transition: 52 - 2
    # = 50 transitions; every state is still reached (B's step from there
    # leads to states A's successors reach too).
    res = explore(srcu_grace_period(), stop_at_first=False)
    assert (res.states, res.transitions, res.complete_runs) == (36, 50, 2)
    assert res.reduced_expansions == 2


def test_a_lock_holder_runs_alone_while_the_others_wait():
    # A and B take L, then write their own word.  While A holds L, B is
    # blocked in spin_lock and only A's unlock can enable it, so A's steps
    # need no interleaving with B's: B is "frozen".
    class W(World):
        def __init__(self):
            super().__init__()
            self.lock = self.spinlock("L")
            self.x = [self.word("x0"), self.word("x1")]

    def cpu(i):
        def actor(w):
            yield from w.lock.lock()
            yield from w.x[i].write(1)
            yield from w.lock.unlock()
            yield from w.x[i].write(2)
        return actor
    sc = Scenario("lock", W, [Actor("A", "a", cpu(0)), Actor("B", "b", cpu(1))],
                  invariants=[Invariant("true", lambda w: True, reads=())])
    full = explore(sc, stop_at_first=False, reduction=False)
    red = explore(sc, stop_at_first=False)
    assert red.complete_runs == full.complete_runs == 1
    assert red.states < full.states and red.reduced


def test_a_cycle_is_expanded_fully_once():
    # A spins on a flag B sets; B first writes its own word.  Reduced
    # expansions that lead back to a known state (A's spin) are expanded
    # fully, so B is not ignored: the search still ends with A done.
    class W(World):
        def __init__(self):
            super().__init__()
            self.flag = self.word("flag")
            self.y = self.word("y")

    def spinner(w):
        while (yield from w.flag.read()) == 0:
            pass
        return "saw it"

    def setter(w):
        yield from w.y.write(1)
        yield from w.flag.write(1)
    sc = Scenario("spin", W, [Actor("A", "spin", spinner), Actor("B", "set", setter)],
                  final_check=lambda w, r: r["A"] == "saw it")
    full = explore(sc, stop_at_first=False, reduction=False, max_steps=50)
    red = explore(sc, stop_at_first=False, max_steps=50)
    assert not red.violated and not full.violated and red.exhaustive
    assert red.complete_runs == full.complete_runs == 1


def test_a_deadlock_is_found_with_reduction():
    from kvmmu.explorer import abba_deadlock
    res = explore(abba_deadlock())
    assert res.invariant == "deadlock" and res.schedule == "AB"
    assert _reduced_search(abba_deadlock()).violated


def test_a_preemption_bound_turns_the_reduction_off():
    res = explore(independent(True), preemption_bound=1, stop_at_first=False)
    assert not res.reduced and res.search == "full"


# --------------------------------------------------------------------------
# Declaring footprints
# --------------------------------------------------------------------------

def test_summary_says_which_search_the_counts_come_from():
    red = explore(independent(True), stop_at_first=False)
    assert red.summary().splitlines()[-1] == (
        "  13 states, 12 transitions, 1 complete run (distinct final states), "
        "partial-order reduced search; exhaustive")
    full = explore(independent(True), stop_at_first=False, reduction=False)
    assert full.summary().splitlines()[-1].endswith("full search; exhaustive")


def test_footprints_conflict_by_location_prefix_and_mode():
    def fp(**kw):
        return declared(**kw)
    assert conflict(fp(writes=[("tlb", 0)]), fp(reads=["tlb"]))        # "tlb" covers ("tlb", 0)
    assert not conflict(fp(writes=[("tlb", 0)]), fp(reads=[("tlb", 1)]))
    assert not conflict(fp(reads=["x"]), fp(reads=["x"]))               # two reads commute
    assert conflict(fp(writes=["x"]), fp(writes=["x"]))
    assert not conflict(Footprint([(("L",), "s")]), Footprint([(("L",), "s")]))
    assert conflict(Footprint([(("L",), "s")]), Footprint([(("L",), "w")]))
    assert declared() is None


@pytest.mark.parametrize("kw, exc, match", [
    (dict(reads=[3]), TypeError, "a location is a primitive, a name or a tuple"),
    (dict(writes=[("",)]), TypeError, "starts with a primitive or a name"),
    (dict(reads=[""]), ValueError, "must not be empty"),
    (dict(reads=[("tlb", [])]), TypeError, "hashable"),
    (dict(writes=5), TypeError, "an iterable of locations"),
])
def test_bad_locations_are_refused_with_the_argument_named(kw, exc, match):
    with pytest.raises(exc, match=match):
        declared(what="step 'x'", **kw)


def test_step_and_wait_until_check_their_declarations():
    def bad(w):
        yield from step("x", lambda: None, reads=[1.5])
    sc = Scenario("bad", RandomWorld, [Actor("A", "a", bad)],
                  invariants=[Invariant("t", lambda w: True)])
    with pytest.raises(TypeError, match="step 'x' reads"):
        explore(sc)
    with pytest.raises(TypeError, match="invariant 'i' reads"):
        Invariant("i", lambda w: True, reads=[{}])


class Table(Primitive):
    """A custom primitive: a few slots, each a location of its own."""

    __slots__ = ("slots",)

    def __init__(self, world, name, n):
        super().__init__(world, name)
        self.slots = [0] * n

    def _state(self):
        return tuple(self.slots)

    def _load(self, st):
        self.slots[:] = st

    def _show(self):
        return str(self.slots)

    def bump(self, i):
        return (yield Op(self, "bump", (i,), _table_bump))

    def _what(self, kind, args):
        return f"bump {self.name}[{args[0]}]"

    def _footprint(self, kind, args):
        return [], [(self, args[0])]


def _table_bump(t, args, cpu, world):
    t.slots[args[0]] += 1


def test_a_custom_primitive_declares_one_location_per_slot():
    class W(World):
        def __init__(self):
            super().__init__()
            self.t = self._register(Table(self, "T", 3))

    def bumper(i):
        def actor(w):
            yield from w.t.bump(i)
            yield from w.t.bump(i)
        return actor
    sc = Scenario("table", W, [Actor("ABC"[i], f"cpu{i}", bumper(i)) for i in range(3)],
                  invariants=[Invariant("slot 0 <= 2", lambda w: w.t.slots[0] <= 2,
                                        reads=[("T", 0)])])
    full = explore(sc, stop_at_first=False, reduction=False)
    red = explore(sc, stop_at_first=False)
    assert (full.states, red.states) == (27, 7)       # 3^3 products; one order
    assert red.complete_runs == full.complete_runs == 1


def _boxes(enabled=None):
    class Box(Primitive):
        __slots__ = ("v",)

        def __init__(self, world, name):
            super().__init__(world, name)
            self.v = 0

        def _state(self):
            return self.v

        def _load(self, st):
            self.v = st

        def _show(self):
            return str(self.v)

        def bump(self):
            return (yield Op(self, "bump", (), lambda p, a, c, w: setattr(p, "v", p.v + 1),
                             enabled))

    class W(World):
        def __init__(self):
            super().__init__()
            self.boxes = [self._register(Box(self, f"box{i}")) for i in range(2)]

    def bumper(i):
        def actor(w):
            yield from w.boxes[i].bump()
            yield from w.boxes[i].bump()
        return actor
    return Scenario("boxes", W, [Actor("A", "a", bumper(0)), Actor("B", "b", bumper(1))],
                    invariants=[Invariant("t", lambda w: True, reads=())])


def test_without_a_footprint_hook_a_custom_step_is_watched():
    # Nothing says what bump touches: the memo engine watches its runs (each
    # reads and writes only its own box), so the two actors commute.
    red = explore(_boxes(), stop_at_first=False)
    assert (red.states, red.transitions, red.search) == (5, 4, "partial-order reduced")


def test_a_custom_step_that_may_block_is_watched_where_it_waits_too():
    # Its enabled() is watched each time it is asked (reading nothing here).
    red = explore(_boxes(lambda p, a, c, w: True), stop_at_first=False)
    assert (red.states, red.transitions, red.search) == (5, 4, "partial-order reduced")


def test_a_custom_step_whose_wait_writes_conflicts_with_everything():
    # Its enabled() writes (the same value back, here): the watch cannot
    # bound what a predicate with side effects changes.
    red = explore(_boxes(lambda p, a, c, w: (setattr(p, "v", p.v), True)[1]),
                  stop_at_first=False)
    assert (red.states, red.transitions, red.search) == (9, 12, "full")


def test_a_declared_step_commutes_with_steps_elsewhere():
    class W(World):
        def __init__(self):
            super().__init__()
            self.hits = {0: 0, 1: 0}

    def cpu(i):
        def actor(w):
            for _ in range(2):
                yield from step("hit", lambda: w.hits.__setitem__(i, w.hits[i] + 1),
                                reads=[("hits", i)], writes=[("hits", i)])
        return actor
    sc = Scenario("hits", W, [Actor("A", "a", cpu(0)), Actor("B", "b", cpu(1))],
                  final_check=lambda w, r: w.hits == {0: 2, 1: 2})
    full = explore(sc, stop_at_first=False, reduction=False)
    red = explore(sc, stop_at_first=False)
    assert (full.states, red.states) == (9, 5) and not red.violated


# --------------------------------------------------------------------------
# The memo engine: code between steps that looks at the world
# --------------------------------------------------------------------------

def test_a_constant_attribute_read_between_steps_is_remembered():
    class W(World):
        def __init__(self):
            super().__init__()
            self.limit = 3                  # configuration: no step changes it
            self.x = self.word("x")

    def cpu(w):
        for _ in range(w.limit):
            v = yield from w.x.read()
            if v < w.limit:
                yield from w.x.write(v + 1)
    sc = Scenario("limit", W, [Actor("A", "a", cpu), Actor("B", "b", cpu)],
                  invariants=[Invariant("x <= limit", lambda w: w.x.value <= w.limit)])
    res = explore(sc, stop_at_first=False, reduction=False, record_states=True)
    replay = explore(sc, stop_at_first=False, method="replay", record_states=True)
    assert res.visited == replay.visited and res.demoted == 0


def test_an_attribute_that_changes_later_starts_the_search_over():
    class W(World):
        def __init__(self):
            super().__init__()
            self.mode = 0
            self.x = self.word("x")

    def reader(w):
        yield from w.x.read()
        if w.mode:                          # read between steps
            yield from w.x.write(5)
        yield from w.x.read()

    def switcher(w):
        yield from w.x.read()
        yield from w.x.read()
        yield from step("mode = 1", lambda: setattr(w, "mode", 1))
    sc = Scenario("mode", W, [Actor("A", "reader", reader), Actor("B", "switch", switcher)],
                  invariants=[Invariant("t", lambda w: True)])
    res = explore(sc, stop_at_first=False, reduction=False, record_states=True)
    replay = explore(sc, stop_at_first=False, method="replay", record_states=True)
    assert res.visited == replay.visited and res.restarts >= 1
