"""Chapter 6's exhaustive checks: every policy against a memslot delete or move.

Each test explores every interleaving.  Verdicts and the *kinds* of outcome
are asserted; the exact counts are printed (and so checked) by the chapter.
"""
import pytest

from kvmmu import explorer as ex
from kvmmu.prefault import check_race, prefault_race, selftest_race


def verdict(scenario, stop_at_first=True):
    res = ex.explore(scenario, stop_at_first=stop_at_first)
    return res


def test_the_deadlock_of_6_17_is_found_and_is_the_srcu_one():
    res = verdict(prefault_race("6.17", "delete", slot_zap_all=False))
    assert res.violated and res.invariant == "deadlock"
    trace = res.counterexample
    assert trace.deadlock
    assert "RET_PF_RETRY" in trace.blocked["A"]
    assert "synchronize_srcu(kvm->srcu)" in trace.blocked["B"]
    assert trace.steps[0].label == "srcu_read_lock(kvm->srcu) = 0"


@pytest.mark.parametrize("writer", ["delete", "move"])
def test_6_18_fixes_the_invalid_slot_deadlock(writer):
    v, res = check_race(prefault_race("6.18", writer, slot_zap_all=False))
    assert not res.violated and res.exhaustive
    outcomes = " | ".join(o for o, _ in v.outcomes)
    assert "-EAGAIN" in outcomes                  # userspace does see the punt


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
    assert not verdict(prefault_race("drop-srcu+reload", "delete")).violated
    res = verdict(prefault_race("drop-srcu+reload", "delete", reload_frees_obsolete_roots=False))
    assert res.invariant == "deadlock"


def test_6_18_leaves_a_stale_root_window_with_the_fast_zap():
    res = verdict(prefault_race("6.18", "delete"))
    assert res.invariant == "deadlock"
    trace = res.counterexample
    labels = [s.label for s in trace.steps]
    zap = labels.index("mmu_lock(write): fast zap, every root obsolete")
    reload_ = labels.index("kvm_mmu_reload -> 0")
    assert reload_ < zap                          # the root was loaded, then made obsolete
    assert labels[-1].startswith("synchronize_srcu(kvm->srcu) begins: waits for A")
    assert "RET_PF_RETRY" in trace.blocked["A"]


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
    assert not verdict(prefault_race("6.17", "delete", "KVM_RUN")).violated
    v, res = check_race(prefault_race("6.17", "delete", "TDX populate", slot_zap_all=False))
    assert not res.violated
    assert {o for o, _ in v.outcomes} == {"pages: 0, 0", "pages: -ENOENT"}


def test_a_signal_breaks_the_6_17_hang_of_one_call():
    v, res = check_race(prefault_race("6.17", "delete", "one call", signal=True,
                                      slot_zap_all=False))
    assert not res.violated
    assert any("-EINTR" in o for o, _ in v.outcomes)


def test_check_race_depth_first_counts_equal_breadth_first():
    # check_race explores depth-first (cheaper on the replay engine); with
    # every state expanded the order must not change what the chapter prints.
    sc = prefault_race("6.18", "delete", "one call", slot_zap_all=False)
    v, res = check_race(sc)
    bfs = ex.explore(prefault_race("6.18", "delete", "one call", slot_zap_all=False),
                     stop_at_first=False, order="bfs")
    assert (v.states, v.transitions, v.complete_runs) == \
        (bfs.states, bfs.transitions, bfs.complete_runs)
    assert res.violated == bfs.violated


def test_the_6_18_hang_also_when_a_enters_after_the_first_grace_period():
    # The chapter's model finding does not depend on SRCU letting a late
    # reader slip past a synchronize_srcu() already in progress.
    t = ex.run_schedule(prefault_race("6.18", "delete"), "BBBBBBBAABBBAABB")
    labels = [(s.actor, s.label) for s in t.steps]
    assert labels.index(("B", "synchronize_srcu(kvm->srcu) returns")) < \
        labels.index(("A", "srcu_read_lock(kvm->srcu) = 0"))
    assert t.deadlock and "RET_PF_RETRY" in t.blocked["A"]
