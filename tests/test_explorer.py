"""The interleaving explorer: primitives, the three ways to run, counts checked by hand."""
import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmmu import explorer as E
from kvmmu.explorer import (Actor, Invariant, Scenario, World, abba_deadlock, explore,
                            lost_update, run_random, run_schedule, srcu_grace_period,
                            state_key, step, wait_until)

#: Every engine in both orders; the counts derived by hand are those of the
#: full search (``reduction=False``): tests/test_explorer_por.py checks the reduction.
BOTH = [(order, method) for order in ("bfs", "dfs")
        for method in ("snapshot", "snapshot-legacy", "replay")]


def one_actor(fn, world=None, **kw):
    """A scenario with a single actor A and a trivially true invariant."""
    class W(World):
        def __init__(self):
            super().__init__()
            self.x = self.word("x", 0)
            self.lock = self.spinlock("lock")
    return Scenario("one", world or W, [Actor("A", "solo", fn)],
                    invariants=[Invariant("true", lambda w: True)], **kw)


# --------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------

def test_word_operations_and_try_cmpxchg_returns_the_value_found():
    def actor(w):
        a = yield from w.x.read()
        yield from w.x.write(5)
        old = yield from w.x.xchg(7)
        miss = yield from w.x.try_cmpxchg(5, 9)      # holds 7: fails, reports 7
        hit = yield from w.x.try_cmpxchg(7, 9)       # succeeds, reports the expected 7
        return (a, old, miss, hit)
    t = run_schedule(one_actor(actor), "AAAAA")
    assert t.results == {"A": (0, 5, (False, 7), (True, 7))}
    assert [s.label for s in t.steps] == [
        "read x = 0", "write x = 5", "xchg x = 7, old 5",
        "try_cmpxchg x 5 -> 9: fails, found 7", "try_cmpxchg x 7 -> 9: ok"]
    assert t.steps[-1].state == {"x": "9", "lock": "free"}


def test_word_values_must_be_u64():
    def actor(w):
        yield from w.x.write(-1)
    with pytest.raises(ValueError, match="value must be in"):
        run_schedule(one_actor(actor), "A")


def two_cpus(fa, fb, invariants=(Invariant("true", lambda w: True),), **kw):
    class W(World):
        def __init__(self):
            super().__init__()
            self.x = self.word("x", 0)
            self.flag = self.word("flag", 0)
            self.mmu_lock = self.rwlock("mmu_lock")
            self.srcu = self.srcu_domain("kvm->srcu")
            self.rcu = self.rcu_domain()
            self.lock = self.spinlock("lock")
    return Scenario("two", W, [Actor("A", "cpu A", fa), Actor("B", "cpu B", fb)],
                    invariants=invariants, **kw)


def test_rwlock_readers_share_writer_excludes():
    def reader(w):
        yield from w.mmu_lock.read_lock()
        yield from w.mmu_lock.read_unlock()

    def writer(w):
        yield from w.mmu_lock.write_lock()
        yield from w.mmu_lock.write_unlock()
    t = run_schedule(two_cpus(reader, reader), "ABAB")
    assert t.steps[1].state["mmu_lock"] == "read A,B" and not t.unfinished
    with pytest.raises(ValueError, match=r"position 1 .*actor B .*blocked.*write_lock\(mmu_lock\): "
                                         r"read A"):
        run_schedule(two_cpus(reader, writer), "AB")
    with pytest.raises(ValueError, match=r"position 1 .*blocked.*read_lock\(mmu_lock\): write B"):
        run_schedule(two_cpus(reader, writer), "BA")


def test_unlocking_a_lock_not_held_is_a_violation():
    def bad(w):
        yield from w.lock.unlock()
    t = run_schedule(one_actor(bad), "A")
    assert t.violation == "spin_unlock(lock) by A, which does not hold it"
    assert t.violation_step == 0


def test_srcu_synchronize_waits_for_readers_that_began_before_it_only():
    def reader(w):
        idx = yield from w.srcu.read_lock()
        yield "inside"
        yield from w.srcu.read_unlock(idx)

    def updater(w):
        yield from w.srcu.synchronize()
    sc = two_cpus(reader, updater)
    # A inside first: B's synchronize begins, then cannot return until A leaves.
    with pytest.raises(ValueError, match=r"blocked, waiting in synchronize_srcu\(kvm->srcu\): "
                                         r"read section of A in progress"):
        run_schedule(sc, "ABB")
    t = run_schedule(sc, "ABAAB")
    assert not t.unfinished and t.steps[1].label == "synchronize_srcu(kvm->srcu) begins: waits for A"
    # B begins first: A's later section does not hold it up.
    t = run_schedule(sc, "BAB")
    assert t.steps[-1].label == "synchronize_srcu(kvm->srcu) returns"
    assert t.steps[-1].state["kvm->srcu"] == "readers A"


def test_synchronize_rcu_inside_a_read_section_deadlocks():
    def selfish(w):
        yield from w.rcu.read_lock()
        yield from w.rcu.synchronize()
        yield from w.rcu.read_unlock()
    res = explore(two_cpus(selfish, lambda w: (yield from w.x.read())))
    # A is stuck after two steps, but B can still run: the deadlock is when
    # nothing is left that can run.
    assert res.violated and res.invariant == "deadlock" and res.schedule == "AAB"
    assert "waiting in synchronize_rcu(rcu): read section of A" in res.counterexample.outcome


def test_wait_until_blocks_until_its_predicate_holds():
    def waiter(w):
        yield from wait_until("flag set", lambda w: w.flag.value == 1)
        return (yield from w.x.read())

    def setter(w):
        yield from w.x.write(42)
        yield from w.flag.write(1)
    sc = two_cpus(waiter, setter)
    with pytest.raises(ValueError, match="actor A .*blocked, waiting until flag set"):
        run_schedule(sc, "A")
    t = run_schedule(sc, "BBAA")
    assert t.results["A"] == 42
    res = explore(sc, stop_at_first=False)
    # B's 2 steps, then A's 2: A cannot move before B's second step.  States:
    # (B0,A0) (B1,A0) (B2,A0) (B2,A1) (B2,A2=done) = 5; one step each = 4.
    assert (res.states, res.transitions, res.complete_runs) == (5, 4, 1)


def test_step_runs_its_function_and_bare_yields_are_no_op_steps():
    def actor(w):
        got = yield from step("compute", lambda: 6 * 7)
        yield
        yield "think"
        return got
    t = run_schedule(one_actor(actor), "AAA")
    assert [s.label for s in t.steps] == ["compute -> 42", "(yield)", "think"]
    assert t.results == {"A": 42}


def test_yielding_something_else_is_a_type_error():
    def actor(w):
        yield 3
    with pytest.raises(TypeError, match="actor A .*yielded int 3"):
        run_schedule(one_actor(actor), "")


def test_an_assert_in_an_actor_is_a_violation():
    def actor(w):
        v = yield from w.x.read()
        assert v == 1, "x should be 1"
    t = run_schedule(one_actor(actor), "A")
    assert t.violation == "assertion failed in A: x should be 1"
    assert t.steps[0].label == "read x = 0, then assertion failed in A: x should be 1"
    res = explore(one_actor(actor))
    assert res.violated and res.invariant == t.violation and res.schedule == "A"


def test_other_exceptions_propagate_with_the_schedule_noted():
    def actor(w):
        yield from w.x.read()
        raise KeyError("boom")
    with pytest.raises(KeyError) as info:
        run_schedule(one_actor(actor), "A")
    assert any("actor A (solo)" in n and "'A'" in n for n in info.value.__notes__)


# --------------------------------------------------------------------------
# Scenarios and schedules: bad input
# --------------------------------------------------------------------------

def test_scenario_without_invariants_or_final_check_is_refused():
    with pytest.raises(ValueError, match="no invariants and no final_check"):
        Scenario("empty", World, [Actor("A", "a", lambda w: (yield))])


@pytest.mark.parametrize("actors, match", [
    ([], "actors is empty"),
    ([Actor("AB", "x", lambda w: (yield))], "one letter or digit"),
    ([Actor("A", "x", lambda w: (yield)), Actor("A", "y", lambda w: (yield))], "two actors use"),
])
def test_bad_actor_lists(actors, match):
    with pytest.raises(ValueError, match=match):
        Scenario("bad", World, actors, invariants=[Invariant("t", lambda w: True)])


def test_an_actor_that_is_not_a_generator_is_a_type_error():
    sc = Scenario("plain", World, [Actor("A", "plain function", lambda w: 3)],
                  invariants=[Invariant("t", lambda w: True)])
    with pytest.raises(TypeError, match="actor A .*must be a generator function"):
        run_schedule(sc, "")


def test_schedule_errors_name_position_letter_and_state():
    sc = lost_update()
    with pytest.raises(ValueError, match=r"schedule 'AXB', position 1 .*'X' is not an actor letter; "
                                         r"the actors are A .*, B "):
        run_schedule(sc, "AXB")
    with pytest.raises(ValueError, match=r"position 2 .*actor A .*has already finished "
                                         r"\(returned 1\)"):
        run_schedule(sc, "AAA")
    with pytest.raises(ValueError, match=r"position 2 .*actor B .*blocked, waiting in "
                                         r"spin_lock\(L2\): held by A"):
        run_schedule(abba_deadlock(), "AAB")
    # After a deadlock (or any violation) the rest of the schedule is not run.
    assert run_schedule(abba_deadlock(), "ABB").unused == "B"
    with pytest.raises(TypeError, match="schedule must be a string"):
        run_schedule(sc, ["A"])


@pytest.mark.parametrize("kw, exc, match", [
    (dict(preemption_bound=-1), ValueError, "preemption_bound"),
    (dict(max_steps=0), ValueError, "max_steps"),
    (dict(order="random"), ValueError, "order"),
    (dict(method="fork"), ValueError, "method"),
    (dict(reduction="yes"), TypeError, "reduction"),
    (dict(stop_at_first=1), TypeError, "stop_at_first"),
])
def test_explore_argument_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        explore(lost_update(), **kw)


def test_run_random_argument_errors():
    with pytest.raises(TypeError, match="seed"):
        run_random(lost_update(), "7")
    with pytest.raises(ValueError, match="max_steps"):
        run_random(lost_update(), 7, max_steps=0)


# --------------------------------------------------------------------------
# Exact counts, derived by hand
# --------------------------------------------------------------------------
#
# A state is (world, each actor's local state).  "A1v0" below reads: actor A
# has done 1 step and holds v = 0; "Ad1" is A finished, having returned 1.

@pytest.mark.parametrize("order, method", BOTH)
def test_lost_update_counts(order, method):
    # inc_read_write: v = read(counter); write(counter, v + 1); return v + 1.
    # Depth 0: (A0,B0,c0)                                                    1
    # Depth 1: (A1v0,B0,c0) (A0,B1v0,c0)                                     2
    # Depth 2: (Ad1,B0,c1) (A1v0,B1v0,c0) (A0,Bd1,c1)                        3
    # Depth 3: (Ad1,B1v1,c1) (Ad1,B1v0,c1) (A1v0,Bd1,c1) (A1v1,Bd1,c1)       4
    # Depth 4: (Ad1,Bd2,c2) (Ad1,Bd1,c1) [from both middle states]
    #          (Ad2,Bd1,c2)                                                  3
    # States 1+2+3+4+3 = 13.  Transitions: 2 from depth 0, 2+2 from depth 1,
    # 1+2+1 from depth 2, 1 from each depth-3 state: 2+4+4+4 = 14.
    # Complete runs (distinct final states): 3; the one with c1 breaks the
    # final check.  Shortest counterexample: ABAB (BFS meets it first).
    res = explore(lost_update(), stop_at_first=False, order=order, method=method,
                  reduction=False)
    assert (res.states, res.transitions, res.complete_runs) == (13, 14, 3)
    assert res.violated and res.invariant == "lost update: counter is 1, not 2"
    assert res.schedule == "ABAB" and res.exhaustive and res.method == method


def test_lost_update_stops_at_the_first_violation():
    # BFS order: depth 4 is reached from the depth-3 states in the order
    # AAB, ABA, ...; AAB -> AABB (fine, new), ABA -> ABAB (violation): stop.
    # States: 1+2+3+4 + 2 = 12; transitions 2+4+4 + 2 = 12.
    res = explore(lost_update())
    assert (res.states, res.transitions, res.complete_runs) == (12, 12, 2)
    assert res.schedule == "ABAB" and not res.exhaustive


@pytest.mark.parametrize("order, method", BOTH)
def test_cmpxchg_counter_counts(order, method):
    # inc_cmpxchg: old = read(); loop: ok, old = try_cmpxchg(old, old + 1).
    # The local `ok` is unbound before the first attempt and False after a
    # failed one, so "B1o1" (read 1) and "B1o1F" (failed, found 1) differ.
    # Depth 0: (A0,B0,c0)                                                    1
    # Depth 1: (A1o0,B0,c0) (A0,B1o0,c0)                                     2
    # Depth 2: (Ad1,B0,c1) (A1o0,B1o0,c0) (A0,Bd1,c1)                        3
    # Depth 3: (Ad1,B1o1,c1) (Ad1,B1o0,c1) (A1o0,Bd1,c1) (A1o1,Bd1,c1)       4
    # Depth 4: (Ad1,Bd2,c2) (Ad1,B1o1F,c1) (A1o1F,Bd1,c1) (Ad2,Bd1,c2)       4
    # Depth 5: both retries succeed into depth-4 final states               0
    # States 14; transitions 2+4+4+4+2 = 16; final states 2, both c2.
    res = explore(lost_update(atomic=True), stop_at_first=False, order=order, method=method,
                  reduction=False)
    assert (res.states, res.transitions, res.complete_runs) == (14, 16, 2)
    assert not res.violated and res.exhaustive


@pytest.mark.parametrize("order, method", BOTH)
def test_abba_deadlock_counts(order, method):
    # pcA, pcB in 0..4.  A: lock L1, lock L2, unlock L2, unlock L1.
    # B: lock L2, lock L1, unlock L1, unlock L2.  A holds L1 at pc 1..3 and
    # L2 at pc 2; B holds L2 at pc 1..3 and L1 at pc 2.  Excluded pairs:
    # (1,2) (2,2) (3,2) (2,1) (2,3); (3,3) is unreachable (A at 3 took L2
    # after taking L1, B at 3 took L1 while holding L2: the intervals cross).
    # Reachable: pcA=0: 5, 1: {0,1,3,4}, 2: {0,4}, 3: {0,1,4}, 4: 5 -> 19.
    # Runnable per state: (0,0)2 (0,1)2 (0,2)1 (0,3)2 (0,4)1 (1,0)2 (1,1)0
    # (1,3)1 (1,4)1 (2,0)1 (2,4)1 (3,0)2 (3,1)1 (3,4)1 (4,0..3)1 each (4,4)0
    # -> 22 transitions.  (1,1) is the deadlock, reached first by "AB".
    res = explore(abba_deadlock(), stop_at_first=False, order=order, method=method,
                  reduction=False)
    assert (res.states, res.transitions, res.complete_runs) == (19, 22, 1)
    assert res.invariant == "deadlock" and res.schedule == "AB"
    assert res.counterexample.deadlock


@pytest.mark.parametrize("order, method", BOTH)
def test_ordered_locks_counts(order, method):
    # Both take L1 then L2: L1 excludes pc 1..3 on both sides at once, so the
    # reachable pairs are those with a side at 0 or 4: 25 - 9 = 16.  Only
    # (0,0) has two runnable actors; (4,4) none; the 14 others one: 16.
    res = explore(abba_deadlock(ordered=True), stop_at_first=False, order=order, method=method,
                  reduction=False)
    assert (res.states, res.transitions, res.complete_runs) == (16, 16, 1)
    assert not res.violated


@pytest.mark.parametrize("order, method", BOTH)
def test_srcu_grace_period_counts(order, method):
    # Reader A: a0 lock, a1 read memslots -> which, a2 read slot -> val,
    # a3 unlock, a4 done(val).  Updater B: b0 publish 2, b1 sync begins,
    # b2 sync returns (blocked while A's section is marked), b3 free, b4.
    # "m" = A's section was in progress when B's sync began (marked).
    # b0: a0 a1 a2(1) a3(1) a4(0x1000)                                 5
    # b1: a0 a1 a2(1) a2(2) a3(1) a3(2) a4(0x1000) a4(0x2000)          8
    # b2: a0 | a1 m, a1 | a2(1)m a2(2)m a2(2) | a3 same three | a4 x2   11
    #     (which=1 means A entered before the publish, so it is marked)
    # b3: a0 a1 a2(2) a3(2) a4 x2  (a marked reader blocks b2->b3)      6
    # b4: the same 6                                                    6
    # States 36.  Runnable: A in every state with a<4; B unless done or
    # blocked (b2 with a mark): b0 4+5, b1 6+8, b2 9+6, b3 4+6, b4 4+0
    # -> 52 transitions.  Final states: b4 with a4(0x1000), a4(0x2000).
    res = explore(srcu_grace_period(), stop_at_first=False, order=order, method=method,
                  reduction=False)
    assert (res.states, res.transitions, res.complete_runs) == (36, 52, 2)
    assert not res.violated


@pytest.mark.parametrize("order, method", BOTH)
def test_srcu_without_synchronize_counts(order, method):
    # B: b0 publish, b1 free, b2 done.  As above, plus the poisoned read:
    # b0: 5; b1: 8; b2: a0 a1 a2(1) a2(2) a3(1,0x1000) a3(1,POISON)
    # a3(2) a4(0x1000) a4(POISON) a4(0x2000) = 10.  States 23.
    # Transitions: b0 4+5, b1 6+8, b2 7 -> 30.  Final states 3, one bad.
    # The bad run needs A's two first steps before the publish and its read
    # after the free, and A must finish: AABBAA is the only 6-step one.
    res = explore(srcu_grace_period(synchronize=False), stop_at_first=False,
                  order=order, method=method, reduction=False)
    assert (res.states, res.transitions, res.complete_runs) == (23, 30, 3)
    assert res.schedule == "AABBAA"
    assert res.invariant == "use after free: the vCPU read the freed array"


@pytest.mark.parametrize("method", ["snapshot", "snapshot-legacy", "replay"])
def test_preemption_bound(method):
    # Bound 0: each actor runs until it finishes: AABB and BBAA only.
    # States: start, A, AA, AAB, AABB, B, BB, BBA, BBAA (AABB's final state
    # has A=1, B=2; BBAA's A=2, B=1: distinct) = 9; one step out of each
    # non-final one, two out of the start = 8.  No lost update.
    res = explore(lost_update(), preemption_bound=0, stop_at_first=False, method=method)
    assert (res.states, res.transitions, res.complete_runs) == (9, 8, 2)
    assert not res.violated
    # Bound 1: ABAB needs two preemptions; ABBA needs one (B finishes, so
    # switching back to A is free) and is the first one BFS finds.
    res = explore(lost_update(), preemption_bound=1, method=method)
    assert res.violated and res.schedule == "ABBA"


# --------------------------------------------------------------------------
# What the state key must see
# --------------------------------------------------------------------------

def test_a_loop_iterator_on_the_value_stack_keeps_iterations_apart():
    # Three writes of the same value: equal locals and the same instruction,
    # only the for loop's iterator (on the frame's value stack) moves on.
    # Merging them would end the search after two states.
    def actor(w):
        for v in [1, 1, 1]:
            yield from w.x.write(v)
    res = explore(one_actor(actor), stop_at_first=False)
    assert (res.states, res.transitions, res.complete_runs) == (4, 3, 1)


def test_a_pending_operand_on_the_value_stack_is_part_of_the_key():
    # `acc + (yield from ...)` keeps acc's old value on the stack while the
    # read is pending.  Two paths reach the read with acc rebound to 0 but
    # different values waiting on the stack (0 and 5): they must stay apart.
    def actor(w):
        acc = yield from w.x.read()
        total = acc + (acc := 0) + (yield from w.flag.read())
        return total

    def setter(w):
        yield from w.x.write(5)
    sc = two_cpus(actor, setter)
    res = explore(sc, stop_at_first=False, record_states=True)
    finals = {run_schedule(sc, s, complete=True).results["A"] for s in ("AAB", "BAA", "ABA")}
    assert finals == {0, 5}
    assert res.complete_runs == 2


def test_a_spin_loop_that_changes_nothing_is_not_a_runaway():
    # A spins reading the flag: every failed read returns to the same state,
    # so the search sees a cycle, not an endless run.
    def spinner(w):
        while (yield from w.flag.read()) == 0:
            pass
        return "saw it"

    def setter(w):
        yield from w.flag.write(1)
    res = explore(two_cpus(spinner, setter), stop_at_first=False, max_steps=20)
    # CPython compiles the while test twice (before the loop and at its
    # end), so A's read sits at instruction r1 the first time and r2 after.
    # States: (r1,f0) (r2,f0) (r1,B done,f1) (r2,B done,f1) (A done): 5.
    # Transitions: (r1,f0): A->(r2,f0), B->(r1,f1); (r2,f0): A->itself (the
    # cycle), B->(r2,f1); (r1,f1), (r2,f1): A->done.  2+2+1+1 = 6.
    assert (res.states, res.transitions, res.complete_runs) == (5, 6, 1)
    assert not res.violated


def test_a_loop_that_changes_the_state_forever_is_a_runaway():
    def counter(w):
        while True:
            v = yield from w.x.read()
            yield from w.x.write(v + 1)
    res = explore(one_actor(counter), max_steps=10)
    assert res.violated and res.invariant == "runaway" and len(res.schedule) == 10
    assert res.counterexample.runaway and res.counterexample.outcome.startswith("OOPS!!! runaway")
    t = run_random(one_actor(counter), 3, max_steps=7)
    assert t.runaway and len(t.steps) == 7


def test_invariants_are_checked_after_every_step():
    # x goes 0 -> 1 -> 0: only the middle state breaks "x stays 0"; the run
    # ends fine, so only a per-step check catches it.
    def blip(w):
        yield from w.x.write(1)
        yield from w.x.write(0)
    sc = one_actor(blip)
    sc = Scenario("blip", sc.world, sc.actors, invariants=[Invariant("x stays 0",
                                                                     lambda w: w.x.value == 0)])
    res = explore(sc)
    assert res.violated and res.schedule == "A" and res.invariant == "x stays 0"
    t = run_schedule(sc, "AA")
    assert t.violation == "x stays 0" and t.violation_step == 0 and t.unused == "A"


def test_plain_world_attributes_are_state():
    # The contract's example: a TLB kept in a dict attribute of the world.
    class TlbWorld(World):
        def __init__(self):
            super().__init__()
            self.spte = self.word("spte", 5)
            self.tlb = {}

    def filler(w):
        v = yield from w.spte.read()
        yield from step("fill TLB", lambda: w.tlb.__setitem__(0, v))

    def zapper(w):
        yield from w.spte.write(0)
        yield from step("flush TLBs", lambda: w.tlb.clear())
    sc = Scenario("tlb", TlbWorld, [Actor("A", "fill", filler), Actor("B", "zap", zapper)],
                  invariants=[Invariant("TLB agrees with the SPTE",
                                        lambda w: all(v == w.spte.value for v in w.tlb.values()))])
    snap, replay = (explore(sc, stop_at_first=False, method=m) for m in ("snapshot", "replay"))
    assert snap.method == "snapshot" and not snap.note
    assert (snap.states, snap.transitions, snap.violations) == \
        (replay.states, replay.transitions, replay.violations)
    # A fills the TLB from spte 5, B zaps the SPTE before its flush: stale.
    assert snap.violated and snap.schedule == "AAB"
    assert snap.counterexample.steps[-1].state == {"spte": "0", "tlb": "{0: 5}"}


# --------------------------------------------------------------------------
# The snapshot engine falls back to replay when it cannot be trusted
# --------------------------------------------------------------------------

def test_reading_shared_state_between_steps_is_remembered_by_what_it_read():
    def peeker(w):
        yield from w.x.read()
        seen = w.flag.value                 # not a step: the code depends on the world
        yield from w.x.write(seen)

    def setter(w):
        yield from w.flag.write(1)
    sc = two_cpus(peeker, setter)
    replay = explore(sc, stop_at_first=False, method="replay", record_states=True)
    # The memo engine sees the read and remembers the code after x's read
    # keyed on the state of the flag it read (rebuilds run it in the world it
    # first ran in): the same states as replay, no step run live.
    memo = explore(sc, stop_at_first=False, record_states=True)
    assert memo.method == "snapshot" and memo.demoted == 0
    assert memo.visited == replay.visited and memo.transitions == replay.transitions
    # The legacy engine finds out when a rebuild does not come back, and replays.
    legacy = explore(sc, stop_at_first=False, method="snapshot-legacy")
    assert legacy.method == "replay" and "actor A" in legacy.note
    assert (legacy.states, legacy.transitions) == (replay.states, replay.transitions)


def test_keeping_an_object_from_inside_the_world_falls_back_to_replay():
    class Nested(World):
        def __init__(self):
            super().__init__()
            self.x = self.word("x", 0)
            self.table = {"a": [0]}         # a list below an attribute: restores copy it

    def holder(w):
        entry = w.table["a"]
        yield from w.x.read()
        yield from step("bump", lambda: entry.append(1))

    def other(w):
        yield from step("bump", lambda: w.table["a"].append(2))
    sc = Scenario("nested", Nested, [Actor("A", "holder", holder), Actor("B", "other", other)],
                  invariants=[Invariant("t", lambda w: True)])
    snap = explore(sc, stop_at_first=False, record_states=True)
    replay = explore(sc, stop_at_first=False, method="replay", record_states=True)
    assert snap.method == "replay" and "keeps a list" in snap.note
    assert snap.visited == replay.visited


def test_a_primitive_without_load_falls_back_to_replay():
    class Box(E._Primitive):
        __slots__ = ("v",)

        def __init__(self, world, name):
            super().__init__(world, name)
            self.v = 0

        def _state(self):
            return self.v

        def _show(self):
            return str(self.v)

        def bump(self):
            return (yield E.Op(self, "bump", (), lambda p, a, c, w: setattr(p, "v", p.v + 1)))

    class W(World):
        def __init__(self):
            super().__init__()
            self.box = self._register(Box(self, "box"))
    sc = Scenario("box", W, [Actor("A", "a", lambda w: (yield from w.box.bump())),
                             Actor("B", "b", lambda w: (yield from w.box.bump()))],
                  invariants=[Invariant("t", lambda w: True)])
    res = explore(sc, stop_at_first=False)
    assert res.method == "replay" and "has no _load()" in res.note
    assert (res.states, res.transitions) == (4, 4)


# --------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------

LOST_UPDATE_TABLE = """\
CPU 0 (A): counter++ (read, write); CPU 1 (B): counter++ (read,
write)
+-----+-----------------------+-----------------------+------------+
| #   | CPU 0 (A)             | CPU 1 (B)             | changes    |
+=====+=======================+=======================+============+
| At the beginning: counter: 0                                     |
+-----+-----------------------+-----------------------+------------+
| 1   | read counter = 0      |                       |            |
+-----+-----------------------+-----------------------+------------+
| 2   |                       | read counter = 0      |            |
+-----+-----------------------+-----------------------+------------+
| 3   | write counter = 1     |                       | counter: 1 |
+-----+-----------------------+-----------------------+------------+
| 4   |                       | write counter = 1 <<< |            |
+-----+-----------------------+-----------------------+------------+
| OOPS!!! lost update: counter is 1, not 2                         |
+------------------------------------------------------------------+"""


def test_the_counterexample_table_reads_like_locking_rst():
    res = explore(lost_update())
    assert res.counterexample.table() == LOST_UPDATE_TABLE
    assert repr(res.counterexample) == LOST_UPDATE_TABLE


def test_table_columns_and_html():
    t = run_schedule(srcu_grace_period(), "AAB")
    text = t.table(columns=["memslots"])
    assert "memslots: 2" in text and "kvm->srcu: " not in text   # only the column asked for
    with pytest.raises(ValueError, match="'spte' is not a shared-state name"):
        t.table(columns=["spte"])
    page = t._repr_html_()
    assert page.count("<tr") == 1 + 1 + 3 + 1       # header, beginning, 3 steps, outcome
    assert "CPU 1 (B): publish, synchronize_srcu, free" in page
    # Only what a step changed is on its row (the locking.rst cut).
    changes = [row.rsplit("<td", 1)[1] for row in page.split("<tr")[3:6]]
    assert "memslots: 2" in changes[2] and "memslots" not in changes[0] + changes[1]
    assert "Stopped after the schedule; not finished: A, B" in t.outcome


def test_snapshots_for_a_slider():
    t = run_schedule(lost_update(), "ABAB")
    snaps = t.snapshots()
    assert len(snaps) == 5
    assert snaps[0] == {"index": 0, "actor": None, "label": "At the beginning",
                        "state": {"counter": "0"}, "violation": None}
    assert snaps[4]["actor"] == "B" and snaps[4]["violation"] == t.violation
    assert [s["state"]["counter"] for s in snaps] == ["0", "0", "0", "1", "1"]


def test_complete_runs_the_rest_in_letter_order_and_unfinished_is_reported():
    t = run_schedule(lost_update(atomic=True), "B")
    assert t.unfinished == ["A", "B"] and t.runnable == ["A", "B"]
    t = run_schedule(lost_update(atomic=True), "B", complete=True)
    # B read 0; A reads 0 and wins; B's try_cmpxchg fails (finds 1), retries.
    assert t.schedule == "BAABB" and t.results == {"A": 1, "B": 2} and not t.unfinished
    assert t.outcome == "All finished (A returned 1, B returned 2); every check holds"


def test_deadlock_at_the_end_of_a_schedule():
    t = run_schedule(abba_deadlock(), "AB")
    assert t.deadlock and t.violation == "deadlock"
    assert t.blocked == {"A": "waiting in spin_lock(L2): held by B",
                         "B": "waiting in spin_lock(L1): held by A"}


def test_explore_summary_is_deterministic_and_has_no_time():
    a, b = explore(srcu_grace_period(False)), explore(srcu_grace_period(False))
    assert repr(a) == repr(b) and a.summary() == b.summary()
    assert a.counterexample.table() == b.counterexample.table()
    assert re.search(r"\d\.\d", repr(a)) is None                      # no seconds in it
    assert repr(a).splitlines()[1:3] == [
        "  VIOLATED: use after free: the vCPU read the freed array",
        "  counterexample (shortest, breadth-first): 'AABBAA', 6 steps"]
    assert a.seconds >= 0 and a.transitions_per_second > 0


def test_run_random_is_reproducible_by_seed():
    sc = srcu_grace_period()
    schedules = {run_random(sc, seed).schedule for seed in range(20)}
    assert len(schedules) > 1
    for seed in (0, 7, 123):
        assert run_random(sc, seed).table() == run_random(sc, seed).table()


def test_importing_the_explorer_does_not_import_matplotlib():
    import subprocess
    code = ("import sys, kvmmu.explorer; "
            "print('matplotlib' in sys.modules, 'ipywidgets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_timeline_figure():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kvmmu.viz.explorer import timeline, timeline_rows
    t = explore(srcu_grace_period(False)).counterexample
    rows = timeline_rows(t)
    assert [r[2] for r in rows] == list("AABBAA")
    assert [r[5] for r in rows] == [False] * 5 + [True]
    fig = timeline(t)
    ax = fig.axes[0]
    assert [tick.get_text() for tick in ax.get_yticklabels()] == [
        "CPU 0 (A: vCPU (SRCU reader))", "CPU 1 (B: publish, free)"]
    assert "OOPS: use after free" in ax.get_title()
    plt.close(fig)
    w = run_schedule(srcu_grace_period(), "ABBAAAB")
    assert [r[4] for r in timeline_rows(w)][3:6] == ["B", "B", "B"]   # B waits in synchronize
    plt.close(timeline(w))
    with pytest.raises(ValueError, match="label_width"):
        timeline(w, label_width=1)


# --------------------------------------------------------------------------
# Random schedules agree with the exhaustive search
# --------------------------------------------------------------------------

SCENARIOS = {"lost": lost_update(), "cmpxchg": lost_update(atomic=True),
             "abba": abba_deadlock(), "srcu": srcu_grace_period(),
             "srcu-unsafe": srcu_grace_period(synchronize=False)}
VISITED = {}


def visited(name):
    if name not in VISITED:
        VISITED[name] = set(explore(SCENARIOS[name], stop_at_first=False, reduction=False,
                                    record_states=True).visited)
    return VISITED[name]


def build_schedule(sc, picks):
    """A valid schedule: at each step pick among the runnable actors."""
    sched = ""
    for k in picks:
        t = run_schedule(sc, sched)
        if t.violation is not None or not t.runnable:
            break
        sched += t.runnable[k % len(t.runnable)]
    return sched


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(SCENARIOS)), picks=st.lists(st.integers(0, 3), max_size=12))
def test_every_random_schedule_ends_in_a_state_the_explorer_visited(name, picks):
    sc = SCENARIOS[name]
    sched = build_schedule(sc, picks)
    t = run_schedule(sc, sched)
    assert state_key(sc, sched) in visited(name)
    res = explore(sc, stop_at_first=False)
    if t.violation is not None:
        # the explorer found this kind of violation, at no greater length
        found = dict(res.violations)
        assert t.violation in found and len(found[t.violation]) <= len(sched)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(SCENARIOS)), seed=st.integers(0, 10**6))
def test_random_runs_break_only_scenarios_the_explorer_says_break(name, seed):
    sc = SCENARIOS[name]
    t = run_random(sc, seed)
    res = explore(sc, stop_at_first=False)
    if t.violation is not None:
        assert res.violated and t.violation in dict(res.violations)
    assert state_key(sc, t.schedule) in visited(name)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_replaying_the_counterexample_reproduces_the_violation(name):
    res = explore(SCENARIOS[name])
    if res.violated:
        again = run_schedule(SCENARIOS[name], res.schedule)
        assert again.violation == res.invariant
        assert again.table() == res.counterexample.table()
        assert state_key(SCENARIOS[name], res.schedule) in visited(name)


def test_every_engine_visits_the_same_states_in_the_same_order():
    for sc in SCENARIOS.values():
        for order in ("bfs", "dfs"):
            runs = [explore(sc, stop_at_first=False, order=order, method=m, reduction=False,
                            record_states=True) for m in ("snapshot", "snapshot-legacy", "replay")]
            for r in runs[1:]:
                assert r.visited == runs[0].visited and r.transitions == runs[0].transitions
                assert r.final_states == runs[0].final_states


def test_table_text_does_not_depend_on_hash_order():
    # Set-valued shared state and results print sorted, so a notebook's
    # output is the same under every PYTHONHASHSEED.
    import subprocess
    code = ("from kvmmu.explorer import *\n"
            "class W(World):\n"
            "    def __init__(self):\n"
            "        super().__init__(); self.names = set()\n"
            "def a(w):\n"
            "    for n in ('kvm', 'mmu', 'srcu', 'tdp', 'rcu'):\n"
            "        yield from step('add', lambda n=n: w.names.add(n))\n"
            "    return set(w.names)\n"
            "sc = Scenario('s', W, [Actor('A', 'a', a)], invariants=[Invariant('t', lambda w: True)])\n"
            "print(run_schedule(sc, 'AAAAA').table())\n")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"}).stdout
            for seed in (1, 2, 3)}
    assert len(outs) == 1
    assert "names: {'kvm', 'mmu', 'rcu', 'srcu', 'tdp'}" in outs.pop().replace("\n|", "")


def test_max_states_stops_the_search_and_says_it_is_not_a_proof():
    res = explore(lost_update(atomic=True), stop_at_first=False, max_states=5)
    assert res.stopped_at_max_states and not res.exhaustive and not res.violated
    assert res.summary().endswith("stopped at max_states: NOT a proof")


def test_a_violation_in_the_initial_state():
    def idle(w):
        yield from w.x.read()
    sc = Scenario("bad start", one_actor(idle).world, [Actor("A", "idle", idle)],
                  invariants=[Invariant("x is 1", lambda w: w.x.value == 1)])
    res = explore(sc)
    assert res.violated and res.schedule == "" and res.states == 1 and res.transitions == 0
    t = res.counterexample
    assert t.violation_step == -1 and t.steps == [] and t.outcome == "OOPS!!! x is 1"
    assert t.snapshots()[0]["violation"] == "x is 1"


def test_read_section_misuse_is_a_violation():
    def bad_srcu(w):
        yield from w.srcu.read_unlock(3)

    def bad_rcu(w):
        yield from w.rcu.read_unlock()
    idle = lambda w: (yield from w.x.read())   # noqa: E731
    t = run_schedule(two_cpus(bad_srcu, idle), "A")
    assert t.violation == "srcu_read_unlock(kvm->srcu, 3) by A without a matching srcu_read_lock"
    t = run_schedule(two_cpus(bad_rcu, idle), "A")
    assert t.violation == "rcu_read_unlock() by A outside a read section"


def test_package_keeps_the_single_module_names():
    # kvmmu.explorer became a package: the names other modules import from it,
    # private ones included, still resolve to the objects the submodules define.
    from kvmmu.explorer import locks, ops, primitives, search, world
    assert E._Primitive is primitives._Primitive is E.Primitive
    assert E._Diverged is ops._Diverged and E.Op is ops.Op
    assert E.RWLock is locks.RWLock and E.World is world.World and E.explore is search.explore
    assert all(hasattr(E, name) for name in E.__all__)


def test_trace_view_shows_the_same_table_as_text_and_html():
    from kvmmu.explorer import explore, lost_update

    trace = explore(lost_update(False)).counterexample
    view = trace.view(columns=["counter"])
    assert repr(view) == trace.table(columns=["counter"])
    assert view._repr_html_() == trace._repr_html_(columns=["counter"])
    with pytest.raises(ValueError, match="columns"):
        trace.view(columns=["no such state"])
