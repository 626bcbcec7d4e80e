"""Chapter 4's races, checked over every interleaving with kvmmu.explorer on the one VM.

Each scenario's verdict is what the chapter says it is; counterexamples replay
to the same violation; the fixed variants hold exhaustively; every scenario
runs on the snapshot engine.
"""
import functools

import pytest

from kvmmu.errno import EAGAIN
from kvmmu.explorer import Scenario, explore, run_schedule
from kvmmu.folio import folio_test_guestmem
from kvmmu.kvm_host import Kvm
from kvmmu.scenarios import all_scenarios, scenario
from kvmmu.scenarios import guest_memfd as S
from kvmmu.viz.guest_memfd import file_column

LOCK = "gmem0.invalidate_lock"


def verdict(sc, **kw):
    res, outcomes = S.explore_outcomes(sc, stop_at_first=False, **kw)
    assert res.exhaustive and res.method == "snapshot", res.note
    return res, {name for name, _ in res.violations}, outcomes


@functools.lru_cache(maxsize=None)
def named(name):
    """The verdict of a registered check, explored once per test process."""
    return verdict(scenario(name))


def replays(sc, res):
    for name, sched in res.violations:
        assert run_schedule(sc, sched).violation == name


def last_file(trace):
    """(states, folios, text) of the file after the trace's last step."""
    text = trace.steps[-1].state[S.FILE]
    states, folios = file_column(text)
    return states, folios, text


def steps_until(sc, letter, done):
    """The number of steps ``letter`` takes alone until ``done(trace)``."""
    return next(k for k in range(1, 80) if done(run_schedule(sc, letter * k)))


# ---------------------------------------------------------------- the registry
def test_the_chapter_registers_its_seventeen_checks():
    mine = {n: e for n, e in all_scenarios().items() if e.chapter == 4}
    assert mine == S.SCENARIOS and len(mine) == 17
    for name, entry in mine.items():
        sc = scenario(name)
        assert isinstance(sc, Scenario) and isinstance(sc.world(), Kvm)
        assert entry.expect in ("holds", "violated")


def test_each_check_ends_as_the_book_says_on_the_snapshot_engine_and_stays_small():
    # Counts, not time: the bench measures seconds (tools/bench_ch4.py).
    for name, entry in S.SCENARIOS.items():
        res = named(name)[0]
        assert bool(res.violations) == (entry.expect == "violated"), (name, res.summary())
        assert res.states < 6000, (name, res.states)


# ---------------------------------------------------------------- the races
def test_unshare_without_refcount_check_exposes_private_memory():
    sc = S.scenario_naive_unshare()
    res, kinds, _ = verdict(sc)
    assert kinds == {"private is private"}
    replays(sc, res)
    states, folios, _ = last_file(res.counterexample)
    assert states[0] == "GUEST" and "gup:host=1" in folios[0]


def test_pin_across_unshare_as_posted_self_deadlocks():
    sc = S.scenario_pin()
    res, kinds, _ = named("gmem-pin")
    assert kinds == {"deadlock"}
    replays(sc, res)
    trace = res.counterexample
    # The callback, run by a final put on the CPU that holds the invalidate lock, waits for it.
    holder = trace.steps[-1].state[LOCK].split()[-1]
    assert trace.steps[-1].state[LOCK].startswith("write")
    assert LOCK in trace.blocked[holder]
    labels = [s.label for s in trace.steps if s.actor == holder]
    assert any("callback: inode" in lab for lab in labels)


def test_pin_across_unshare_fixed_holds_and_callback_fires_iff_pending():
    res, kinds, outcomes = named("gmem-pin-put-after-unlock")
    assert kinds == set()
    assert {state for _r, state, _c in outcomes} == {"GUEST"}
    for results, _state, callbacks in outcomes:
        reg = dict(results)["B"][1]
        assert callbacks == (1 if reg == "-EAGAIN" else 0)
    # The vCPU mapped the page while the guest could, or was told to retry.
    assert {dict(r)["C"] for r, _s, _c in outcomes} == {"RET_PF_FIXED", "-EAGAIN"}


def test_the_fix_holds_with_a_pfn_walker_as_a_fourth_cpu():
    res, kinds, outcomes = named("gmem-pin-walker-put-after-unlock")
    assert kinds == set() and len(scenario("gmem-pin-walker-put-after-unlock").actors) == 4
    assert {state for _r, state, _c in outcomes} == {"GUEST"}
    for results, _state, callbacks in outcomes:
        assert callbacks == (1 if dict(results)["B"][1] == "-EAGAIN" else 0)
    # The walker both got its reference and found the count at 0 in some run.
    assert {dict(r)["D"] for r, _s, _c in outcomes} == {True, False}


def test_the_vcpus_own_fault_reference_can_be_counted_and_run_the_callback():
    # The fault holds a folio reference from kvm_gmem_get_pfn until its SPTE is in:
    # an unshare that runs meanwhile counts it (NONE, callback pending), and once
    # the host's reference is gone the vCPU's put is the final one.
    sc = S.scenario_pin(put_after_unlock=True)
    sched = "C" * steps_until(sc, "C", lambda t: t.steps[-1].label == f"read_unlock({LOCK})")
    while "B" not in run_schedule(sc, sched).results:
        sched += "B"
    sched += "A"                                 # the host's put: not the last one now
    trace = run_schedule(sc, sched, complete=True)
    assert trace.violation is None and trace.results["B"] == (0, -EAGAIN)
    callback = [s for s in trace.steps if s.label.startswith("callback: inode")]
    assert [s.actor for s in callback] == ["C"]
    assert trace.results["C"] == "RET_PF_FIXED" and last_file(trace)[0][0] == "GUEST"


def test_comment_mismatch_trusting_caller_waits_forever_fixed_caller_finishes():
    sc = S.scenario_comment(trust_comment=True)
    res, kinds, _ = verdict(sc)
    assert kinds == {"deadlock"}
    replays(sc, res)
    assert "the callback stores GUEST" in res.counterexample.blocked["B"]
    assert last_file(res.counterexample)[0][0] == "NONE"
    res, kinds, outcomes = verdict(S.scenario_comment(trust_comment=False))
    assert kinds == set()
    seen = {dict(r)["B"] for r, _s, _c in outcomes}
    assert ("-EAGAIN", 0) in seen                # refused while mapped, then completed
    assert all(state == "GUEST" for _r, state, _c in outcomes)


def test_speculative_reference_callback_still_fires_everywhere():
    res, kinds, outcomes = verdict(S.scenario_speculative())
    assert kinds == set()
    regs = {dict(r)["B"] for r, _s, _c in outcomes}
    assert (0, "-EAGAIN") in regs and (0, None) in regs and (0, 0) in regs
    for results, state, callbacks in outcomes:
        assert state == "GUEST"
        assert callbacks == (1 if dict(results)["B"][1] == "-EAGAIN" else 0)


def test_speculative_reference_as_posted_can_self_deadlock():
    _res, kinds, _ = verdict(S.scenario_speculative(put_after_unlock=False))
    assert kinds == {"deadlock"}


@pytest.mark.parametrize("alternative", [False, True])
def test_a_writing_speculative_reference_breaks_privacy(alternative):
    sc = S.scenario_speculative(writes=True, alternative=alternative)
    res, kinds, _ = verdict(sc)
    assert kinds == {"private is private"}
    replays(sc, res)
    states, folios, _ = last_file(res.counterexample)
    assert states[0] == "GUEST" and "specw:S=1" in folios[0]


def test_host_cannot_fault_during_none():
    _res, kinds, outcomes = verdict(S.scenario_host_fault_during_none())
    assert kinds == set()
    faults = {dict(r)["A"] for r, _s, _c in outcomes}
    assert faults == {"VM_FAULT_LOCKED", "VM_FAULT_SIGBUS"}
    # Once gmem_clear_mappable has stored NONE and dropped the lock, the fault fails.
    sc = S.scenario_host_fault_during_none()
    k = steps_until(sc, "B", lambda t: t.steps[-1].label == f"write_unlock({LOCK})")
    trace = run_schedule(sc, "B" * k + "A", complete=True)
    assert trace.results["A"] == "VM_FAULT_SIGBUS" and trace.violation is None


def test_reviewers_alternative_compared():
    _posted, k1, o1 = named("gmem-pin-put-after-unlock")
    _alt, k2, o2 = named("gmem-pin-alternative-put-after-unlock")
    assert k1 == k2 == set()
    # The alternative never completes in the register call: the callback always does it.
    assert {dict(r)["B"][1] for r, _s, _c in o2} <= {None, "-EAGAIN"}
    assert any(dict(r)["B"][1] == 0 for r, _s, _c in o1)
    _, k3, _ = named("gmem-pin-alternative")                      # posted lock order
    assert k3 == {"deadlock"}


def test_truncation_while_pending_is_the_review_bug():
    sc = S.scenario_truncate_pending()
    res, kinds, _ = verdict(sc)
    assert "references accounted" in kinds
    replays(sc, res)
    only_oops = Scenario("oops only", sc.world, sc.actors,
                         [i for i in sc.invariants if i.name == "no oops"])
    trace = run_schedule(only_oops, "B" * 40)
    assert trace.violation == "no oops"
    assert trace.steps[-1].actor == "B" and "NULL" in last_file(trace)[2]
    # Truncation's own put was final: the ledger has put a reference nobody held.
    assert "filemap=-1" in last_file(trace)[1][0] and "gup:host=1" in last_file(trace)[1][0]


def test_truncation_fix_removes_oops_and_leaks_only_the_count_zero_window_remains():
    sc = S.scenario_truncate_pending(fix_pending=True)
    res, kinds, _ = verdict(sc)
    assert kinds == {"deadlock"}
    trace = res.counterexample
    assert "spins" in trace.blocked["B"] and LOCK in trace.blocked["A"]
    # Every schedule where the host's final put does not land in that window finishes cleanly.
    b_alone = steps_until(sc, "B", lambda t: "B" in t.results)
    for sched in ("B" * b_alone, "A" * 7):
        t = run_schedule(sc, sched, complete=True)
        assert t.violation is None and not t.unfinished


def test_share_again_vs_final_put_deadlocks_on_a_zero_count():
    res, kinds, _ = verdict(S.scenario_share_again_vs_final_put())
    assert kinds == {"deadlock"}
    blocked = res.counterexample.blocked
    assert "count is 0" in blocked["B"] and LOCK in blocked["A"]


# ---------------------------------------------------------------- traces that start at the register call
def test_from_none_world_starts_after_clear_mappable():
    kvm = S.gmem_world("host map", "get ref", "host unmap", S.SETUP_CLEAR)()
    file = S.gmem_file(kvm)
    folio = file.folio_at(0)
    assert file.state(0) == "NONE" and folio.refcount == 2 and not folio_test_guestmem(folio)
    assert file.history == ((0, "ALL", "NONE", "gmem_clear_mappable"),)
    other = S.gmem_world(S.SETUP_CLEAR)()          # nobody else holds it: straight to GUEST
    assert S.gmem_file(other).state(0) == "GUEST"


def test_pin_from_none_self_deadlocks_and_fix_holds():
    res = explore(S.scenario_pin(vcpu=False, from_none=True))
    assert res.invariant == "deadlock"
    trace = res.counterexample
    assert trace.blocked == {"B": f"waiting in write_lock({LOCK}): write B"}
    assert len(trace.steps) < 15                  # short enough to read in the chapter
    _res, kinds, outcomes = verdict(S.scenario_pin(put_after_unlock=True, from_none=True))
    assert not kinds and {s for _r, s, _c in outcomes} == {"GUEST"}
    assert all(c == (1 if dict(r)["B"] == "-EAGAIN" else 0) for r, _s, c in outcomes)


def test_comment_from_none_trusting_caller_waits_forever_retrying_one_finishes():
    res = explore(S.scenario_comment(trust_comment=True, from_none=True))
    assert res.invariant == "deadlock"
    assert "callback stores GUEST" in res.counterexample.blocked["B"]
    _res, kinds, outcomes = verdict(S.scenario_comment(trust_comment=False, from_none=True))
    assert not kinds and {s for _r, s, _c in outcomes} == {"GUEST"}


def test_scenario_bad_input():
    with pytest.raises(TypeError, match="from_none"):
        S.scenario_pin(from_none=1)
    with pytest.raises(TypeError, match="from_none"):
        S.scenario_comment(from_none="yes")
    with pytest.raises(ValueError, match="setup action"):
        S.gmem_world("clear everything")
    with pytest.raises(TypeError, match="scenario"):
        S.explore_outcomes("gmem-pin")
