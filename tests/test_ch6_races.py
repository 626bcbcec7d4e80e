"""Chapter 6's exhaustive checks: every policy against a memslot delete or move.

The races run on the one VM (chapter 3's TDP MMU and its real roots) and on
the explorer's snapshot engine.  Verdicts and the *kinds* of outcome are
asserted; the exact counts are printed (and so checked) by the chapter.
"""
import pytest

from kvmmu import explorer as ex
from kvmmu.explorer.run import _run_checked
from kvmmu.scenarios import all_scenarios
from kvmmu.scenarios.prefault import (SCENARIOS, check_race, prefault_race, run_until,
                                      selftest_race)


def verdict(scenario, stop_at_first=True):
    res = ex.explore(scenario, stop_at_first=stop_at_first)
    assert res.method == "snapshot", res.note
    return res


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_named_scenario_gives_the_verdict_the_book_expects(name):
    entry = all_scenarios()[name]
    assert entry.chapter == 6
    res = verdict(entry.build())
    assert res.violated == (entry.expect == "violated"), res.summary()


def test_the_deadlock_of_6_17_is_found_and_is_the_srcu_one():
    res = verdict(prefault_race("6.17", "delete", slot_zap_all=False))
    assert res.violated and res.invariant == "deadlock"
    trace = res.counterexample
    assert trace.deadlock
    assert "RET_PF_RETRY" in trace.blocked["A"]
    assert "synchronize_srcu(kvm->srcu)" in trace.blocked["B"]
    labels = [(s.actor, s.label) for s in trace.steps]
    # A entered the read section before B published the INVALID copy...
    assert labels.index(("A", "srcu_read_lock(kvm->srcu) = 0")) < \
        labels.index(("B", "publish memslots, gen g|IN_PROGRESS"))
    # ...and looked the slot up after it: INVALID, so the fault retries.
    lookup = labels.index(("A", "memslot lookup -> slot 1 INVALID"))
    assert labels[lookup + 1] == ("A", "kvm_tdp_mmu_page_fault -> RET_PF_RETRY")


@pytest.mark.parametrize("writer", ["delete", "move"])
def test_6_18_fixes_the_invalid_slot_deadlock(writer):
    v, res = check_race(prefault_race("6.18", writer, slot_zap_all=False))
    assert not res.violated and res.exhaustive and res.method == "snapshot"
    outcomes = " | ".join(o for o, _ in v.outcomes)
    assert "-EAGAIN" in outcomes                  # userspace does see the punt


def test_the_tally_counts_every_distinct_final_state_once():
    v, res = check_race(prefault_race("6.18", "delete", "one call", slot_zap_all=False))
    assert sum(n for _, n in v.outcomes) == v.complete_runs == res.complete_runs


def test_ret_pf_retry_invalid_slot_is_wrong_for_a_move():
    res = verdict(prefault_race("RET_PF_RETRY_INVALID_SLOT", "delete", slot_zap_all=False))
    assert not res.violated
    res = verdict(prefault_race("RET_PF_RETRY_INVALID_SLOT", "move", slot_zap_all=False))
    assert res.violated
    assert res.invariant == "-ENOENT is wrong: userspace gave up on gpa 0x100000, " \
                            "which slot 1 covers"


def test_dropping_srcu_hangs_on_the_stale_root_unless_reload_frees_it():
    assert not verdict(prefault_race("drop-srcu", "delete", slot_zap_all=False)).violated
    res = verdict(prefault_race("drop-srcu", "delete"))
    assert res.invariant == "deadlock"
    trace = res.counterexample
    assert "B" not in trace.blocked               # the update finished; A spins alone
    assert "-EAGAIN: retry" in trace.blocked["A"]
    assert "(obsolete)" in trace.steps[-1].state["vcpus"]
    assert not verdict(prefault_race("drop-srcu+reload", "delete")).violated
    res = verdict(prefault_race("drop-srcu+reload", "delete", reload_frees_obsolete_roots=False))
    assert res.invariant == "deadlock"


def test_6_18_leaves_a_stale_root_window_with_the_fast_zap():
    sc = prefault_race("6.18", "delete")
    res = verdict(sc)
    assert res.invariant == "deadlock"
    trace = res.counterexample
    labels = [s.label for s in trace.steps]
    zap = labels.index("kvm_mmu_zap_all_fast")
    reload_ = labels.index("kvm_mmu_reload -> 0")
    assert reload_ < zap                          # the root was loaded, then made obsolete
    assert labels[-1].startswith("synchronize_srcu(kvm->srcu) begins: waits for A")
    assert "RET_PF_RETRY" in trace.blocked["A"]
    # On chapter 3's roots: the vCPU still runs on the root the fast zap
    # invalidated, inside its read section, with the request pending.
    kvm = _run_checked(sc, trace.schedule).world
    vcpu = kvm.vcpus[0]
    assert kvm.ept.sps[vcpu.root].invalid and vcpu.root in kvm.ept.roots
    assert vcpu.requests == ("KVM_REQ_MMU_FREE_OBSOLETE_ROOTS",)
    assert [(cpu, waiters) for cpu, _idx, waiters in kvm.srcu.readers] == [("A", ("B",))]


def test_the_6_18_hang_also_when_a_enters_after_the_first_grace_period():
    # The chapter's model finding does not depend on SRCU letting a late
    # reader slip past a synchronize_srcu() already in progress.
    sc = prefault_race("6.18", "delete")
    s = run_until(sc, "", "B", "generation = g")          # B's first grace period is over
    s = run_until(sc, s, "A", "kvm_mmu_reload")            # A takes SRCU, loads its root
    s = run_until(sc, s, "B", "publish memslots")          # the fast zap, the second swap
    t = ex.run_schedule(sc, s, complete=True)
    labels = [(st.actor, st.label) for st in t.steps]
    assert labels.index(("B", "synchronize_srcu(kvm->srcu) returns")) < \
        labels.index(("A", "srcu_read_lock(kvm->srcu) = 0"))
    assert t.deadlock and "RET_PF_RETRY" in t.blocked["A"]
    assert "synchronize_srcu" in t.blocked["B"]


def test_the_request_break_experiment_closes_that_window():
    # (the move is checked by the chapter; one writer keeps this file quick)
    assert not verdict(prefault_race("6.18+request-break", "delete")).violated


def test_selftest_races():
    assert verdict(selftest_race(0, "6.17", slot_zap_all=False)).invariant == "deadlock"
    for case in range(3):
        assert not verdict(selftest_race(case, "6.18", slot_zap_all=False)).violated
    assert verdict(selftest_race(2, "6.18")).invariant == "deadlock"     # stale root window
    assert not verdict(selftest_race(1, "6.18+request-break")).violated


def test_kvm_run_and_tdx_populate_never_hang():
    v, res = check_race(prefault_race("6.17", "delete", "KVM_RUN"))
    assert not res.violated
    assert {o.split(" 0x")[0] for o, _ in v.outcomes} == \
        {"KVM_RUN ends with KVM_EXIT_MMIO", "KVM_RUN ends with hit"}
    v, res = check_race(prefault_race("6.17", "delete", "TDX populate", slot_zap_all=False))
    assert not res.violated
    assert {o for o, _ in v.outcomes} == {"pages: 0, 0", "pages: -ENOENT"}


def test_a_signal_breaks_the_6_17_hang_of_one_call():
    v, res = check_race(prefault_race("6.17", "delete", "one call", signal=True,
                                      slot_zap_all=False))
    assert not res.violated
    assert any("-EINTR" in o for o, _ in v.outcomes)


def test_check_race_rejects_what_it_cannot_tally():
    with pytest.raises(TypeError, match="prefault_race"):
        check_race(ex.lost_update())
