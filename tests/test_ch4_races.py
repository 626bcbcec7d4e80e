"""Chapter 4's races, checked over every interleaving with kvmmu.explorer.

Each scenario's verdict is what the chapter says it is; counterexamples replay
to the same violation; the fixed variants hold exhaustively.
"""
import pytest

from kvmmu import guest_memfd as G
from kvmmu.errno import EAGAIN
from kvmmu.explorer import explore, run_schedule


def verdict(scenario, **kw):
    res, outcomes = G.explore_outcomes(scenario, stop_at_first=False, **kw)
    assert res.exhaustive
    return res, {name for name, _ in res.violations}, outcomes


def replays(scenario, res):
    for name, sched in res.violations:
        assert run_schedule(scenario, sched).violation == name


def test_unshare_without_refcount_check_exposes_private_memory():
    sc = G.scenario_naive_unshare()
    res, kinds, _ = verdict(sc)
    assert kinds == {"private is private"}
    replays(sc, res)
    trace = res.counterexample
    assert trace.steps[-1].state["state[0]"] == "GUEST"
    assert "gup:host=1" in trace.steps[-1].state["folio0"]


def test_pin_across_unshare_as_posted_self_deadlocks():
    sc = G.scenario_pin()
    res, kinds, outcomes = verdict(sc)
    assert kinds == {"deadlock"}
    replays(sc, res)
    trace = res.counterexample
    # B holds the invalidate lock and waits for it inside its own final put's callback.
    assert "B" in trace.blocked and "invalidate_lock" in trace.blocked["B"]
    assert trace.steps[-1].state["invalidate_lock"] == "write B"
    labels = [s.label for s in trace.steps if s.actor == "B"]
    assert any("callback: inode" in lab for lab in labels)


def test_pin_across_unshare_fixed_holds_and_callback_fires_iff_pending():
    res, kinds, outcomes = verdict(G.scenario_pin(put_after_unlock=True))
    assert kinds == set()
    assert {state for _r, state, _c in outcomes} == {"GUEST"}
    for results, _state, callbacks in outcomes:
        reg = dict(results)["B"][1]
        assert callbacks == (1 if reg == "-EAGAIN" else 0)
        assert dict(results)["C"] in ("0", "-EAGAIN")


def test_comment_mismatch_trusting_caller_waits_forever_fixed_caller_finishes():
    sc = G.scenario_comment(trust_comment=True)
    res, kinds, _ = verdict(sc)
    assert kinds == {"deadlock"}
    replays(sc, res)
    assert "the callback stores GUEST" in res.counterexample.blocked["B"]
    assert res.counterexample.steps[-1].state["state[0]"] == "NONE"
    res, kinds, outcomes = verdict(G.scenario_comment(trust_comment=False))
    assert kinds == set()
    seen = {dict(r)["B"] for r, _s, _c in outcomes}
    assert ("-EAGAIN", 0) in seen                # refused while mapped, then completed
    assert all(state == "GUEST" for _r, state, _c in outcomes)


def test_speculative_reference_callback_still_fires_everywhere():
    res, kinds, outcomes = verdict(G.scenario_speculative())
    assert kinds == set()
    regs = {dict(r)["B"] for r, _s, _c in outcomes}
    assert (0, "-EAGAIN") in regs and (0, None) in regs and (0, 0) in regs
    for results, state, callbacks in outcomes:
        assert state == "GUEST"
        assert callbacks == (1 if dict(results)["B"][1] == "-EAGAIN" else 0)


def test_speculative_reference_as_posted_can_self_deadlock():
    res, kinds, _ = verdict(G.scenario_speculative(put_after_unlock=False))
    assert kinds == {"deadlock"}


@pytest.mark.parametrize("alternative", [False, True])
def test_a_writing_speculative_reference_breaks_privacy(alternative):
    sc = G.scenario_speculative(writes=True, alternative=alternative)
    res, kinds, _ = verdict(sc)
    assert kinds == {"private is private"}
    replays(sc, res)
    last = res.counterexample.steps[-1]
    assert last.state["state[0]"] == "GUEST" and "specw:S=1" in last.state["folio0"]


def test_host_cannot_fault_during_none():
    res, kinds, outcomes = verdict(G.scenario_host_fault_during_none())
    assert kinds == set()
    faults = {dict(r)["A"] for r, _s, _c in outcomes}
    assert faults == {"VM_FAULT_LOCKED", "VM_FAULT_SIGBUS"}
    # Whenever the host fault succeeded, it ran before the unshare stored NONE.
    # Once gmem_clear_mappable has stored NONE and dropped the lock, the fault fails.
    sc = G.scenario_host_fault_during_none()
    k = next(k for k in range(1, 40)
             if run_schedule(sc, "B" * k).steps[-1].label == "write_unlock(invalidate_lock)")
    trace = run_schedule(sc, "B" * k + "A", complete=True)
    assert trace.results["A"] == "VM_FAULT_SIGBUS" and trace.violation is None


def test_reviewers_alternative_compared():
    posted, k1, o1 = verdict(G.scenario_pin(put_after_unlock=True))
    alt, k2, o2 = verdict(G.scenario_pin(put_after_unlock=True, alternative=True))
    assert k1 == k2 == set()
    # The alternative never completes in the register call: the callback always does it.
    assert {dict(r)["B"][1] for r, _s, _c in o2} <= {None, "-EAGAIN"}
    assert any(dict(r)["B"][1] == 0 for r, _s, _c in o1)
    _, k3, _ = verdict(G.scenario_pin(alternative=True))          # posted lock order
    assert k3 == {"deadlock"}


def test_truncation_while_pending_is_the_review_bug():
    sc = G.scenario_truncate_pending()
    res, kinds, _ = verdict(sc)
    assert "references accounted" in kinds
    replays(sc, res)
    only_oops = G.Scenario("oops only", sc.world, sc.actors,
                           [i for i in sc.invariants if i.name == "no oops"])
    trace = run_schedule(only_oops, "B" * 30)
    assert trace.violation == "no oops"
    assert trace.steps[-1].actor == "B" and "NULL" in trace.steps[-1].state["oops"]


def test_truncation_fix_removes_oops_and_leaks_only_the_count_zero_window_remains():
    sc = G.scenario_truncate_pending(fix_pending=True)
    res, kinds, outcomes = verdict(sc)
    assert kinds == {"deadlock"}
    trace = res.counterexample
    assert "spins" in trace.blocked["B"] and "invalidate_lock" in trace.blocked["A"]
    # Every schedule where the host's final put does not land in that window finishes cleanly.
    for sched in ("B" * 14, "A" * 6):
        t = run_schedule(sc, sched, complete=True)
        assert t.violation is None and not t.unfinished


def test_share_again_vs_final_put_deadlocks_on_a_zero_count():
    sc = G.scenario_share_again_vs_final_put()
    res, kinds, _ = verdict(sc)
    assert kinds == {"deadlock"}
    blocked = res.counterexample.blocked
    assert "count is 0" in blocked["B"] and "invalidate_lock" in blocked["A"]


def test_scenarios_run_on_the_snapshot_engine_without_falling_back():
    # Every operation touches shared state only inside steps, so the explorer
    # can restore a saved world and rebuild one actor instead of replaying.
    for sc in (G.scenario_pin(), G.scenario_comment(), G.scenario_speculative(),
               G.scenario_host_fault_during_none(), G.scenario_truncate_pending(),
               G.scenario_share_again_vs_final_put()):
        res = explore(sc, stop_at_first=False)
        assert getattr(res, "method", "snapshot") == "snapshot", getattr(res, "note", "")


def test_scenarios_are_fast_enough_to_explore_in_the_book():
    # Counts, not time: the bench measures seconds. Every scenario stays small.
    for sc in (G.scenario_pin(put_after_unlock=True), G.scenario_host_fault_during_none(),
               G.scenario_comment(False), G.scenario_speculative()):
        res = explore(sc)
        assert res.exhaustive and not res.violated and res.states < 2000


# ---------------------------------------------------------------- traces that start at the register call
def test_from_none_world_starts_after_clear_mappable():
    f = G.gmem_world("host map", "get ref", "host unmap", G.SETUP_CLEAR)()
    folio = f.folio_at(0)
    assert f.state(0) == "NONE" and folio.refcount == 2 and not G.folio_test_guestmem(folio)
    assert f.history == [(0, "ALL", "NONE", "gmem_clear_mappable")]
    g = G.gmem_world(G.SETUP_CLEAR)()          # nobody else holds it: straight to GUEST
    assert g.state(0) == "GUEST"


def test_pin_from_none_self_deadlocks_and_fix_holds():
    sc = G.scenario_pin(vcpu=False, from_none=True)
    res = explore(sc)
    assert res.invariant == "deadlock"
    trace = res.counterexample
    assert trace.blocked == {"B": "waiting in write_lock(invalidate_lock): write B"}
    assert len(trace.steps) < 15                  # short enough to read in the chapter
    res, kinds, outcomes = verdict(G.scenario_pin(put_after_unlock=True, from_none=True))
    assert not kinds and {s for _r, s, _c in outcomes} == {"GUEST"}
    assert all(c == (1 if dict(r)["B"] == "-EAGAIN" else 0) for r, _s, c in outcomes)


def test_comment_from_none_trusting_caller_waits_forever_retrying_one_finishes():
    res = explore(G.scenario_comment(trust_comment=True, from_none=True))
    assert res.invariant == "deadlock"
    assert "callback stores GUEST" in res.counterexample.blocked["B"]
    res, kinds, outcomes = verdict(G.scenario_comment(trust_comment=False, from_none=True))
    assert not kinds and {s for _r, s, _c in outcomes} == {"GUEST"}


def test_scenario_bad_input():
    with pytest.raises(TypeError, match="from_none"):
        G.scenario_pin(from_none=1)
    with pytest.raises(TypeError, match="from_none"):
        G.scenario_comment(from_none="yes")
    with pytest.raises(ValueError, match="setup action"):
        G.gmem_world("clear everything")
