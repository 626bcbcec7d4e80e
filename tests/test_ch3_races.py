"""Chapter 3's checks: the zap/fault race found and fixed, the removed tables, the player, the exercises."""
import pytest
from hypothesis import given, settings, strategies as st

from kvmmu.exercises import tdp_mmu as E
from kvmmu.explorer import explore, run_random, run_schedule
from kvmmu.scenarios import all_scenarios, scenario
from kvmmu.scenarios import tdp_mmu as R
from kvmmu.viz import tdp_mmu as V

SPTE = V.SPTE_KEY
OLD, NEW = f"{R.OLD_PFN:#x}", f"{R.NEW_PFN:#x}"
#: The shortest schedule that breaks the unsafe zap: A walks (lock + 7 reads)
#: and clears the SPTE (cmpxchg, step 9); B's access is an EPT violation, and
#: its fault (memslot lookup, kvm_mmu_faultin_pfn as one step, lock, staleness
#: check, 7 reads) installs the new pfn with its cmpxchg, step 22, before A's flush.
BREAK = "A" * 9 + "B" * 13
#: The removers with a fault inside the table (see the chapter): A freezes the
#: leaf and flushes; B walks to the 2M entry; C faults down to the table; B cuts
#: the table out and meets A's frozen child; A clears it; ...
LOST = "A" * 10 + "B" * 6 + "C" * 11 + "B" * 5 + "AA" + "BB" + "CCCC"
KEPT = LOST[:-1]


# ---------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------
def test_the_race_world_is_what_the_chapter_says():
    kvm = R.race_world()
    root = kvm.vcpu_root(0)
    assert kvm.vcpu_root(1) == root and kvm.ept.roots == (root,)
    # The EPT and vCPU 0's TLB map the old page; the host already maps the new one.
    assert kvm.translate(root, R.RACE_GFN).pfn == R.OLD_PFN
    assert kvm.tlbs.tlb[0][R.RACE_GFN].pfn == R.OLD_PFN and kvm.tlbs.tlb[1] == {}
    from kvmmu.host_mm import host_translation
    assert host_translation(kvm.mm, R.HVA) == (R.NEW_PFN, 1)
    assert host_translation(R.race_world(same_pfn=True).mm, R.HVA) == (R.OLD_PFN, 1)
    assert R.stale_gfns(kvm) == [] and R.bookkeeping_ok(kvm) is True
    state = kvm.snapshot()
    assert (state[SPTE], state["vCPU 0 TLB"], state["vCPU 1 TLB"]) == (f"leaf {OLD}",
                                                                       f"0x100->{OLD}", "-")


def test_every_scenario_is_registered_for_chapter_3_and_builds():
    mine = {n: e for n, e in all_scenarios().items() if e.chapter == 3}
    assert set(mine) == {"zap-vs-fault", "zap-vs-fault-nofreeze", "zap-vs-fault-same-pfn",
                         "removers-collide", "removers-collide-nospin",
                         "removers-collide-fault", "fault-into-removed-table"}
    for name, entry in mine.items():
        assert scenario(name).actors and entry.expect in ("holds", "violated")


@pytest.mark.parametrize("name", ["zap-vs-fault", "zap-vs-fault-nofreeze", "zap-vs-fault-same-pfn",
                                  "removers-collide", "removers-collide-nospin",
                                  "fault-into-removed-table"])
def test_each_exhaustive_check_gives_what_the_book_expects_on_the_snapshot_engine(name):
    res = explore(scenario(name))
    assert res.method == "snapshot", res.note
    assert ("violated" if res.violated else "holds") == all_scenarios()[name].expect
    assert res.violated or res.exhaustive


# ---------------------------------------------------------------------------
# The race of the seed thread, found and fixed
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("actors", [2, 3])
def test_unsafe_zap_breaks_the_invariant(actors):
    r = explore(R.zap_vs_fault(False, actors))
    assert r.violated and r.invariant == R.NO_STALE_TRANSLATION and r.method == "snapshot"
    assert r.schedule == BREAK
    last = r.counterexample.steps[-1]
    assert last.actor == "B" and last.label == f"cmpxchg L1[0x100] non-present -> leaf {NEW}: ok"
    assert last.state[SPTE] == f"leaf {NEW}" and last.state["vCPU 0 TLB"] == f"0x100->{OLD}"


@pytest.mark.parametrize("actors", [2, 3])
def test_freezing_zap_holds_over_every_interleaving(actors):
    r = explore(R.zap_vs_fault(True, actors))
    assert not r.violated and r.exhaustive and r.method == "snapshot"
    assert r.states > 50 and r.complete_runs >= 3


def test_the_break_schedule_on_the_fixed_zap_retries_instead():
    # Same schedule with the freeze: B's fault walks into FROZEN_SPTE and
    # gives up (RET_PF_RETRY); its second access faults again.
    trace = run_schedule(R.zap_vs_fault(True), BREAK, complete=True)
    assert trace.violation is None
    assert trace.results["B"] == "RET_PF_RETRY, then EPT violation"
    assert [s.state[SPTE] for s in trace.steps][8] == "FROZEN_SPTE"
    assert [s.label for s in trace.steps[20:22]] == ["read L1[0x100] = FROZEN_SPTE",
                                                    "read_unlock(mmu_lock)"]


def test_the_fault_takes_its_pfn_from_the_host_mapping():
    # A first, to the end, then B: the fault maps the host's new page.
    trace = run_schedule(R.zap_vs_fault(True), "A" * 12, complete=True)
    assert trace.results["B"] == f"RET_PF_FIXED, then hit {NEW}"
    trace = run_schedule(R.zap_vs_fault(True, same_pfn=True), "A" * 12, complete=True)
    assert trace.results["B"] == f"RET_PF_FIXED, then hit {OLD}"


def test_same_pfn_needs_no_freeze():
    # Matlack (6.13): when the new mapping has the same pfn, the
    # translation never changes, so the unfrozen zap is safe.
    for actors in (2, 3):
        r = explore(R.zap_vs_fault(False, actors, same_pfn=True))
        assert not r.violated and r.exhaustive


def test_removers_collide_each_value_once():
    r = explore(R.removers_collide(True))
    assert not r.violated and r.exhaustive
    r = explore(R.removers_collide(False))
    assert r.violated and r.invariant == ("removed table entry L1[0x100] is non-present, "
                                          "not FROZEN_SPTE")


def test_without_the_spin_a_fault_leaves_a_leaf_in_a_removed_table():
    trace = run_schedule(R.removers_collide(False, fault=True), LOST)
    assert trace.violation == (f"a leaf was never processed and is unreachable: "
                               f"gfn 0x100 pfn {NEW}")
    # With the spin, B waits for A's write and takes the entry back to FROZEN_SPTE
    # before C looks at it: C's walk sees FROZEN_SPTE and retries.
    trace = run_schedule(R.removers_collide(True, fault=True), KEPT, complete=True)
    assert trace.violation is None
    assert [s.label for s in trace.steps[34:37]] == [
        "L1[0x100] is not FROZEN_SPTE (spin)",
        "xchg L1[0x100] = FROZEN_SPTE, old non-present",
        "read L1[0x100] = FROZEN_SPTE"]
    assert trace.results["C"] == "RET_PF_RETRY, then EPT violation"


def test_fault_into_a_removed_table():
    r = explore(R.fault_into_removed_table())
    assert not r.violated and r.exhaustive and r.complete_runs == 4


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32))
def test_random_schedules_of_the_removers_and_a_fault_keep_the_ledger(seed):
    # The 3-actor removal race is too big to explore in a unit test; random
    # schedules of it must all keep the bookkeeping (the final check).
    trace = run_random(R.removers_collide(True, fault=True), seed)
    assert trace.violation is None and not trace.unfinished


# ---------------------------------------------------------------------------
# The race player (pure view)
# ---------------------------------------------------------------------------
def test_player_shows_the_break_and_the_fix():
    v = V.race_view(False, BREAK)
    assert v.ok and not v.holds and v.violation == R.NO_STALE_TRANSLATION
    assert v.value(SPTE) == f"leaf {NEW}" and v.value("vCPU 0 TLB") == f"0x100->{OLD}"
    assert [k for k, _ in v.state] == list(V.SHOWN)
    assert v.broken_at == 22 and "BROKEN at step 22" in v.html()
    v = V.race_view(True, BREAK)
    assert v.ok and v.holds and v.value(SPTE) == "FROZEN_SPTE"
    v = V.race_view(False, BREAK, position=9)
    assert v.holds and v.value(SPTE) == "non-present"


def test_player_says_each_thing_once_and_true():
    # The invariant's name appears once per view; the last line says who may
    # step or how the run ended, nothing else.
    for view in (V.race_view(False, ""), V.race_view(False, BREAK),
                 V.race_view(True, BREAK + "AAAB")):
        assert repr(view).count(R.NO_STALE_TRANSLATION) == 1
        assert view.html().count(R.NO_STALE_TRANSLATION) == 1
        assert max(map(len, repr(view).splitlines())) <= 84
    start = V.race_view(False, "")
    assert start.message == "at the start: step an actor"
    assert start.outcome == "next: A or B may step"
    assert repr(start).splitlines()[-2:] == [
        f"  invariant ({R.NO_STALE_TRANSLATION}): holds", "  next: A or B may step"]
    assert V.race_view(False, BREAK).outcome == "stopped at step 22: nobody steps on"
    done = V.race_view(True, BREAK + "AAAB")
    assert done.outcome == ("finished: A returned True; "
                            "B returned RET_PF_RETRY, then EPT violation")
    assert (V.race_view(True, "A" * 9, actors=3).outcome
            == "after step 9: A or B or C may step")
    assert V.race_view(True, BREAK, 0).outcome == "after step 22: A or B may step"


def test_player_refuses_illegal_steps_with_a_message():
    v = V.race_view(True, "A" * 13)               # A has 12 steps
    assert not v.ok and v.schedule == "A" * 12 and "already finished" in v.message
    v = V.race_view(True, "C")
    assert not v.ok and "not an actor letter" in v.message and v.schedule == ""
    v = V.race_view(False, BREAK + "AAA")
    assert not v.ok and v.schedule == BREAK and "the rest was not run" in v.message
    assert V.race_view(True, " a a b ").schedule == "AAB"


@settings(max_examples=60, deadline=None)
@given(fix=st.one_of(st.booleans(), st.none(), st.integers(), st.text(max_size=3)),
       schedule=st.one_of(st.text(alphabet="ABCabc xyz\n", max_size=40), st.none(),
                          st.integers(), st.lists(st.text(max_size=2), max_size=3)),
       position=st.one_of(st.none(), st.integers(-5, 60), st.floats(allow_nan=True),
                          st.text(max_size=3), st.booleans()),
       actors=st.one_of(st.sampled_from([2, 3]), st.integers(-2, 5), st.none(),
                        st.text(max_size=2)))
def test_player_never_raises(fix, schedule, position, actors):
    v = V.race_view(fix, schedule, position, actors)
    assert isinstance(v, V.RaceView)
    assert isinstance(v.html(), str) and isinstance(repr(v), str)
    assert 0 <= v.position <= len(v.steps)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.booleans(), st.sampled_from([2, 3]))
def test_player_agrees_with_the_explorer_at_every_moment(seed, fix, actors):
    trace = run_random(R.zap_vs_fault(fix, actors), seed)
    snaps = trace.snapshots()
    for position in range(len(snaps)):
        v = V.race_view(fix, trace.schedule, position, actors)
        assert v.schedule == trace.schedule
        assert dict(v.state) == {k: snaps[position]["state"][k] for k in V.SHOWN}
        broken = trace.violation_step is not None and position > trace.violation_step
        assert v.holds == (not broken)


def test_player_widget_steps_undoes_and_toggles():
    box = V.race_player(fix=False)
    toggle, buttons, controls, out = box.children
    assert toggle.description == "the fix: freeze before the flush" and not toggle.indent
    for _ in range(9):
        buttons.children[0].click()
    for _ in range(13):
        buttons.children[1].click()
    assert out.value == V.race_view(False, BREAK).html() and "BROKEN" in out.value
    controls.children[0].click()                   # undo
    assert "BROKEN" not in out.value
    toggle.value = True
    assert out.value == V.race_view(True, BREAK[:-1]).html() and "fix on" in out.value
    controls.children[2].value = 0                 # the slider: back to the start
    assert out.value == V.race_view(True, BREAK[:-1], 0).html()
    controls.children[1].click()                   # reset
    assert out.value == V.race_view(True, "").html()


# ---------------------------------------------------------------------------
# The table and the figure
# ---------------------------------------------------------------------------
def test_race_table_is_the_locking_rst_cut():
    trace = explore(R.zap_vs_fault(False)).counterexample
    table = V.race_table(trace)
    steps = [(first, last, actor) for first, last, actor, *_ in table.rows]
    # The walks fold into one row each; the steps on the SPTE keep their own.
    assert steps == [(1, 7, "A"), (8, 8, "A"), (9, 9, "A"), (10, 10, "B"),
                     (11, 20, "B"), (21, 21, "B"), (22, 22, "B")]
    assert table.rows[0][3] == "lock, read x6"
    assert table.rows[4][3] == "memslot, faultin, lock, stale?, read x6"
    assert table.rows[2][4] == {SPTE: "non-present"}
    assert table.rows[-1][4:] == ({SPTE: f"leaf {NEW}"}, True)
    assert [r[5] for r in table.rows].count(True) == 1
    text = repr(table)
    assert max(map(len, text.splitlines())) <= 84 and "<<<" in text
    html = table._repr_html_()
    assert "OOPS" in html and "table-layout:fixed" in html
    # Every step of the trace is in exactly one row.
    covered = [n for first, last, *_ in table.rows for n in range(first, last + 1)]
    assert covered == list(range(1, len(trace.steps) + 1))
    with pytest.raises(ValueError, match="columns"):
        V.race_table(trace, columns=["no such state"])
    with pytest.raises(TypeError, match="trace"):
        V.race_table("AAAB")


def test_race_rows_follow_the_trace():
    trace = explore(R.zap_vs_fault(False)).counterexample
    rows = V.race_rows(trace)
    assert len(rows) == len(BREAK)
    assert rows[8][:4] == (9, "A", "cmpxchg", "non-present")
    assert [r[2] for r in rows[9:14]] == ["EPT violation", "memslot", "faultin", "lock",
                                          "stale?"]
    assert rows[-1][3:] == (f"leaf {NEW}", f"0x100->{OLD}", "-", True)
    assert [r[6] for r in rows].count(True) == 1
    with pytest.raises(TypeError, match="trace"):
        V.race_rows("AAAB")


@pytest.mark.parametrize("schedule,fix,shown", [
    (BREAK + "AAA", True, "FROZEN_SPTE"), (BREAK, False, "invariant broken "),
    ("A" * 12 + "B" * 15, True, "EPT violation, fault, walk, install, TLB hit")])
def test_race_figure_fits_the_column_and_is_legible(schedule, fix, shown):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from kvmmu.viz.style import COLUMN_IN, legibility
    fig = V.race_figure(run_schedule(R.zap_vs_fault(fix), schedule), "a title")
    assert fig.get_figwidth() == COLUMN_IN and legibility(fig) == []
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert all(t.get_rotation() == 0 for t in fig.axes[0].texts)
    assert shown in texts
    colours = {p.get_facecolor()[:3] for p in fig.axes[0].patches}
    assert len(colours) >= 3            # boxes, the old pfn, and another state
    plt.close(fig)


# ---------------------------------------------------------------------------
# Exercises
# ---------------------------------------------------------------------------
def test_breaking_schedule_checker():
    ok, why = E.breaks_unsafe_zap(BREAK)
    assert ok and f"step {len(BREAK)}" in why
    ok, why = E.breaks_unsafe_zap("A" * 11 + "B" * 15)     # zap first, then the fault
    assert not ok and "holds" in why
    ok, why = E.breaks_unsafe_zap("AZ")
    assert not ok and "cannot run" in why
    with pytest.raises(TypeError, match="schedule"):
        E.breaks_unsafe_zap(None)
    with pytest.raises(ValueError, match="actors"):
        E.breaks_unsafe_zap(BREAK, actors=4)
