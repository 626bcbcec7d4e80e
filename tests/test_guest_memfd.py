"""kvmmu.folio / kvmmu.guest_memfd (the RFC model): constants, return codes, the state table,
bad input, the console's pure function, the exercises, and property tests over action sequences."""
import random

import pytest
from hypothesis import given, settings, strategies as st

from kvmmu import folio as F
from kvmmu import guest_memfd as G
from kvmmu.errno import EAGAIN, EFAULT
from kvmmu.exercises.guest_memfd import KINDS, problem
from kvmmu.viz import guest_memfd as V

FAST = settings(max_examples=int(__import__('os').environ.get('KVMMU_EXAMPLES', 60)), deadline=None)


def run(file, gen):
    return G.run_op(gen, world=file)


def held(*actions, order=0):
    return G.replay(list(actions), size=1 << order, order=order)


# ---------------------------------------------------------------- constants
def test_constants_match_the_rfc():
    assert (G.KVM_GMEM_ALL_MAPPABLE, G.KVM_GMEM_GUEST_MAPPABLE, G.KVM_GMEM_NONE_MAPPABLE) == (
        0b00, 0b10, 0b11)
    # bit 0 set: the guest cannot map; bit 1 set: the host cannot.
    assert G.KVM_GMEM_GUEST_MAPPABLE & 1 == 0 and G.KVM_GMEM_GUEST_MAPPABLE & 2
    assert G.KVM_GMEM_NONE_MAPPABLE & 1 and G.KVM_GMEM_NONE_MAPPABLE & 2
    assert F.PGTY_guestmem == 0xF8
    assert (G.VM_FAULT_SIGBUS, G.VM_FAULT_LOCKED) == (0x2, 0x200)
    assert G.state_name(0b10) == "GUEST"
    with pytest.raises(ValueError, match="state"):
        G.state_name(1)


@pytest.mark.parametrize("state,host,guest", [("ALL", True, True), ("GUEST", False, True),
                                              ("NONE", False, False)])
def test_who_may_map_each_state(state, host, guest):
    f = G.GmemFile(state=state)
    assert G.gmem_is_mappable(f, 0) is host
    assert G.gmem_is_guest_mappable(f, 0) is guest
    assert (run(f, G.kvm_gmem_fault(f, 0)) == G.VM_FAULT_LOCKED) is host
    assert run(f, G.guest_fault(f, 0)) == (0 if guest else -EAGAIN)
    assert f.guest_mapped[0] is guest


@pytest.mark.parametrize("order", [0, 1, 2])
def test_clear_mappable_compares_with_nr_pages_plus_one(order):
    nr = 1 << order
    clean = held(order=order)
    assert clean.folio_at(0).refcount == nr            # the page cache's references
    run(clean, G.gmem_clear_mappable(clean, 0, 1))
    assert clean.state(0) == "GUEST" and clean.folio_at(0).refcount == nr
    one_more = held("spec get", order=order)
    run(one_more, G.gmem_clear_mappable(one_more, 0, 1))
    assert one_more.state(0) == "NONE"                 # nr + 1 (lookup) + 1 foreign > nr + 1
    absent = G.GmemFile(populate=False)
    run(absent, G.gmem_clear_mappable(absent, 0, 1))
    assert absent.state(0) == "GUEST"                  # no folio: -ENOENT is fine


# ---------------------------------------------------------------- register / callback
def _register(f):
    run(f, G.gmem_clear_mappable(f, 0, 1))
    return run(f, G.kvm_slot_gmem_register_callback(f, 0))


def test_register_while_mapped_returns_eagain_and_registers_nothing():
    f = held("host map")
    assert _register(f) == -EAGAIN
    folio = f.folio_at(0)
    assert not F.folio_test_guestmem(folio)            # the comment/code mismatch
    assert folio.holders[F.FILEMAP] == 1 and f.state(0) == "NONE"


def test_register_with_foreign_reference_parks_filemap_refs():
    f = held("host map", "get ref", "host unmap")
    assert _register(f) == -EAGAIN
    folio = f.folio_at(0)
    assert F.folio_test_guestmem(folio)
    assert folio.refcount == 1 and folio.holders.get(F.FILEMAP, 0) == 0  # only the GUP ref
    # a second register sees the type and changes nothing
    assert run(f, G.kvm_slot_gmem_register_callback(f, 0)) == -EAGAIN
    assert folio.refcount == 1 and f.callbacks == 0


def test_register_without_foreign_reference_completes():
    f = held("spec get")
    run(f, G.gmem_clear_mappable(f, 0, 1))
    assert f.state(0) == "NONE"
    G.apply_action(f, "spec put")
    assert run(f, G.kvm_slot_gmem_register_callback(f, 0)) == 0
    folio = f.folio_at(0)
    assert f.state(0) == "GUEST" and not F.folio_test_guestmem(folio) and folio.refcount == 1


@pytest.mark.parametrize("order", [0, 2])
def test_callback_fires_only_when_the_foreign_count_reaches_zero(order):
    nr = 1 << order
    f = held("host map", "get ref", "spec get", "host unmap", "convert to private", order=order)
    folio = f.folio_at(0)
    assert f.state(0) == "NONE" and F.folio_test_guestmem(folio)
    assert folio.refcount == 2                         # GUP + speculative; nr parked
    G.apply_action(f, "spec put")
    assert f.callbacks == 0 and f.state(0) == "NONE" and folio.refcount == 1
    G.apply_action(f, "put ref")
    assert f.callbacks == 1 and f.state(0) == "GUEST"
    assert folio.refcount == nr and not F.folio_test_guestmem(folio)   # back at baseline
    assert G.at_baseline(f) is None and not G.check_invariants(f)
    assert [h[1:] for h in f.history] == [("ALL", "NONE", "gmem_clear_mappable"),
                                          ("NONE", "GUEST", "kvm_gmem_handle_folio_put")]


def test_share_again_cancels_the_pending_callback():
    f = held("host map", "get ref", "host unmap", "convert to private")
    folio = f.folio_at(0)
    G.apply_action(f, "share again")
    assert f.state(0) == "ALL" and not F.folio_test_guestmem(folio)
    assert folio.refcount == 2                         # page cache + GUP
    G.apply_action(f, "put ref")
    assert f.callbacks == 0 and folio.refcount == 1 and not folio.freed


def test_guest_fault_retries_in_none_and_host_fault_sigbuses():
    f = held("host map", "get ref", "host unmap", "convert to private")
    ret, msg = G.apply_action(f, "guest fault")
    assert ret == -EAGAIN and "retries" in msg
    ret, msg = G.apply_action(f, "host map")
    assert ret == G.VM_FAULT_SIGBUS and "ALL" in msg
    assert G.apply_action(f, "get ref")[0] == -EFAULT


def test_host_fault_on_pending_folio_in_all_warns():
    # Only reachable when register runs on a page shared again meanwhile (unguarded row 9/10).
    f = held("host map", "get ref", "host unmap")
    run(f, G.kvm_slot_gmem_register_callback(f, 0))   # register on an ALL page
    assert F.folio_test_guestmem(f.folio_at(0)) and f.state(0) == "ALL"
    assert run(f, G.kvm_gmem_fault(f, 0)) == G.VM_FAULT_SIGBUS
    assert "callback pending" in f.warnings[-1]
    G.apply_action(f, "put ref")
    assert f.state(0) == "GUEST" and not f.bad_transitions   # ALL -> GUEST by the callback


def test_unshare_twice_while_pending_goes_guest_with_a_host_reference():
    f = held("host map", "get ref", "host unmap", "convert to private")
    G.apply_action(f, "convert to private")
    assert f.state(0) == "GUEST"
    assert G.check_invariants(f) == ["private is private"]
    assert ("NONE", "GUEST", "gmem_clear_mappable") in [h[1:] for h in f.history]


def test_truncating_a_pending_folio_oopses_and_the_fix_does_not():
    f = held("host map", "get ref", "host unmap", "convert to private")
    ret, msg = G.apply_action(f, "punch hole")
    assert ret == "oops" and "OOPS" in msg and "NULL" in f.oops[0]
    old = f.folios[0]
    assert old.mapping is None and old.refcount == 0 and old.holders["gup:host"] == 1
    assert set(G.check_invariants(f)) == {"references accounted", "no oops"}
    assert f.invalidate_lock.writer == "0"          # the crashed truncation still holds it
    with pytest.raises(G.WouldBlock):
        G.apply_action(f, "guest fault")
    with pytest.raises(F.Oops, match="NULL"):
        G.run_op(G.kvm_gmem_handle_folio_put(old), world=f)
    with pytest.raises(F.KernelWarn, match="underflow"):
        G.apply_action(f, "put ref")
    fixed = G.replay(["host map", "get ref", "host unmap", "convert to private", "punch hole"],
                     fix_pending=True)
    old = fixed.folios[0]
    assert not fixed.oops and old.refcount == 1 and fixed.state(0) == "GUEST"
    G.apply_action(fixed, "put ref")
    assert old.freed and not G.check_invariants(fixed)


def test_alternative_with_the_posted_lock_order_self_deadlocks_on_one_cpu():
    f = held("spec get")
    run(f, G.gmem_clear_mappable(f, 0, 1))
    G.apply_action(f, "spec put")
    with pytest.raises(G.WouldBlock, match="invalidate_lock"):
        run(f, G.kvm_slot_gmem_register_callback(f, 0, alternative=True))
    g = held("spec get")
    run(g, G.gmem_clear_mappable(g, 0, 1))
    G.apply_action(g, "spec put")
    assert run(g, G.kvm_slot_gmem_register_callback(g, 0, alternative=True,
                                                    put_after_unlock=True)) == -EAGAIN
    assert g.callbacks == 1 and g.state(0) == "GUEST" and G.at_baseline(g) is None


def test_run_op_trace_and_labels():
    f = G.GmemFile()
    trace = []
    G.run_op(G.kvm_gmem_fault(f, 0), world=f, trace=trace)
    assert trace[0] == "read_lock(invalidate_lock)" and trace[-1] == "read_unlock(invalidate_lock)"
    assert "map the folio in the host page table" in trace


# ---------------------------------------------------------------- illegal ops and bad input
def test_illegal_operations_raise_like_a_warn():
    f = G.GmemFile()
    with pytest.raises(F.KernelWarn, match="nothing maps offset 0"):
        G.apply_action(f, "host unmap")
    with pytest.raises(F.KernelWarn, match="holds no GUP reference"):
        G.apply_action(f, "put ref")
    with pytest.raises(F.KernelWarn, match="no speculative reference"):
        G.apply_action(f, "spec put")
    folio = f.folio_at(0)
    with pytest.raises(F.KernelWarn, match="underflow"):
        G.run_op(F.folio_put_refs(folio, 2, F.FILEMAP), world=f)
    assert folio.refcount == 1                            # nothing changed
    with pytest.raises(F.KernelWarn, match="free folio"):
        F.folio_get(F.Folio(9, index=0), "x")
    with pytest.raises(F.KernelWarn, match="already has a page type"):
        F.__folio_set_guestmem(F.Folio(9, index=0, page_type=F.PGTY_guestmem))
    with pytest.raises(F.KernelWarn, match="not a guestmem"):
        F.__folio_clear_guestmem(folio)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="index"):
        G.apply_action(G.GmemFile(), "host map", index=1)
    with pytest.raises(ValueError, match="action"):
        G.apply_action(G.GmemFile(), "fly")
    with pytest.raises(ValueError, match="state"):
        G.GmemFile(state="PRIVATE")
    with pytest.raises(ValueError, match="size must be a multiple"):
        G.GmemFile(size=3, order=1)
    with pytest.raises(ValueError, match="order"):
        G.GmemFile(order=10)
    with pytest.raises(TypeError, match="populate"):
        G.GmemFile(populate=1)
    with pytest.raises(ValueError, match="end"):
        G.run_op(G.gmem_clear_mappable(G.GmemFile(), 0, 0))
    with pytest.raises(TypeError, match="actions"):
        G.replay("host map")
    with pytest.raises(ValueError, match="nr"):
        F.folio_ref_add(F.Folio(0, index=0), 0, "x")
    with pytest.raises(ValueError, match="setup action"):
        G.gmem_world("nope")


# ---------------------------------------------------------------- the transition table
def test_figure_and_tests_use_one_table():
    edges = V.state_machine_edges()
    assert [e[1:] for e in edges] == list(G.TRANSITIONS)
    for _n, src, dst, fn, cond, kind in edges:
        assert src in G.STATE_BY_NAME and dst in G.STATE_BY_NAME and src != dst
        assert kind in ("rfc", "unguarded", "fix") and cond
    rfc = {(s, d) for _n, s, d, _f, _c, k in edges if k == "rfc"}
    assert rfc == {("ALL", "GUEST"), ("ALL", "NONE"), ("NONE", "GUEST"), ("NONE", "ALL"),
                   ("GUEST", "ALL")}
    assert not G.transition_allowed("GUEST", "NONE", "kvm_gmem_handle_folio_put")


def test_a_change_outside_the_table_is_recorded():
    f = G.GmemFile()
    f.xa_store(0, G.KVM_GMEM_NONE_MAPPABLE, "kvm_gmem_fault")
    assert f.bad_transitions == ["0: ALL -> NONE by kvm_gmem_fault"]
    assert "transitions follow the table" in G.check_invariants(f)


# ---------------------------------------------------------------- properties
ACTION = st.sampled_from(G.ACTIONS)


def _protocol_ok(file, action) -> bool:
    # A caller that follows the protocol unshares only shared pages.
    return action != "convert to private" or file.state(0) == "ALL"


@FAST
@given(st.lists(ACTION, max_size=14), st.sampled_from([0, 1]))
def test_any_sequence_keeps_counts_and_the_table(actions, order):
    """Posted RFC, any legal sequence: refcount never negative, states move along the table."""
    f = G.GmemFile(size=1 << order, order=order)
    for action in actions:
        before = [fo.refcount for fo in f.folios]
        try:
            G.apply_action(f, action)
        except F.KernelWarn:
            assert [fo.refcount for fo in f.folios] == before   # refused: nothing changed
            continue
        assert all(fo.refcount >= 0 for fo in f.folios)
        assert not f.bad_transitions
        for _i, old, new, fn in f.history:
            assert G.transition_allowed(old, new, fn)
        if f.oops:      # truncating a pending folio: the reviewer's bug, nothing to check after
            assert "NULL" in f.oops[0]
            return


@FAST
@given(st.lists(ACTION, max_size=14), st.sampled_from([0, 1, 2]))
def test_protocol_sequences_keep_every_invariant(actions, order):
    """With the punch-hole fix and unshare only from ALL, every invariant holds after every action,
    the callback runs only when the last foreign reference goes, and dropping everything returns
    the folio to its baseline."""
    f = G.GmemFile(size=1 << order, order=order)
    for action in actions:
        if not _protocol_ok(f, action):
            continue
        callbacks = f.callbacks
        try:
            G.apply_action(f, action, fix_pending=True)
        except F.KernelWarn:
            continue
        assert G.check_invariants(f) == []
        if f.callbacks > callbacks:
            folio = f.folio_at(0)
            assert {h: n for h, n in folio.holders.items() if n} == {F.FILEMAP: 1 << order}
    # Drop everything the host still holds: the folio returns to its baseline.
    for _ in range(8):
        for cleanup in ("host unmap", "put ref", "spec put"):
            try:
                G.apply_action(f, cleanup, fix_pending=True)
            except F.KernelWarn:
                pass
    assert G.check_invariants(f) == []
    assert G.at_baseline(f) is None
    for folio in f.folios:
        if folio.mapping is None:
            assert folio.freed and folio.refcount == 0
        else:
            assert folio.refcount == 1 << order and not F.folio_test_guestmem(folio)


# ---------------------------------------------------------------- the console (pure, never raises)
GARBAGE = [None, 5, "host map", ("fly",), ("host map", 3), [["x"]], b"x", 1.5, "", " ", "x" * 10_000]


@pytest.mark.parametrize("state", GARBAGE)
def test_console_never_raises_on_bad_state(state):
    v = V.folio_console(state, "host map")
    assert isinstance(v, V.ConsoleView)
    if not isinstance(state, (tuple, list)) or state and not all(a in G.ACTIONS for a in state):
        assert not v.ok and v.state == ()
    assert isinstance(v.html(), str) and isinstance(repr(v), str)


@pytest.mark.parametrize("action", [None, 7, "fly", "HOST MAP", " host map", "x" * 5000, ("a",)])
def test_console_never_raises_on_bad_action(action):
    v = V.folio_console(("host map",), action)
    assert isinstance(v, V.ConsoleView)
    if action is None:
        assert v.ok and v.state == ("host map",)
    else:
        assert not v.ok and "unknown action" in v.message and v.state == ("host map",)


def test_console_shows_refusals_and_return_codes():
    v = V.folio_console((), "put ref")
    assert not v.ok and "refused" in v.message and v.state == ()
    v = V.folio_console(("host map",), "convert to private")
    assert v.ok and "NO callback registered" in v.message
    fields = dict(v.fields)
    assert fields["state"] == "NONE (0b11)" and fields["refcount"] == "2" and fields["mapcount"] == "1"
    assert fields["type"] == "none"
    v = V.folio_console(("host map", "get ref", "host unmap"), "convert to private")
    assert "callback registered" in v.message and dict(v.fields)["type"].startswith("guestmem")
    v = V.folio_console(v.state, "put ref")
    assert "kvm_gmem_handle_folio_put" in v.message and dict(v.fields)["state"] == "GUEST (0b10)"
    long = ("host map", "host unmap") * 200
    assert V.folio_console(long, "host map").ok


def test_console_deadlock_is_a_message():
    # There is no one-CPU deadlock in the console's actions; check the WouldBlock path directly.
    f = G.GmemFile()
    G.run_op(f.invalidate_lock.write_lock(), world=f)
    with pytest.raises(G.WouldBlock):
        G.apply_action(f, "guest fault")


# ---------------------------------------------------------------- exercises
@pytest.mark.parametrize("seed", range(25))
def test_problems_are_reproducible_and_computed(seed):
    p = problem(seed)
    assert p.question.startswith(f"Seed {seed}:")
    assert p.kind in KINDS
    assert problem(seed) == p
    assert "Answer:" in p.solution() or "kvm_slot_gmem_register_callback ->" in p.solution()


def test_sequence_problem_answer_matches_replay():
    for seed in range(40):
        p = problem(seed, "sequence")
        actions = p.question.split("actions: ", 1)[1].split(". What", 1)[0].split(", ")
        order = int(p.question.split("order-", 1)[1].split(" ", 1)[0])
        f = G.replay(actions, size=1 << order, order=order)
        assert p.solution().endswith(f"Answer: {G_describe(f)}.")


def G_describe(f):
    from kvmmu.exercises.guest_memfd import _describe
    return _describe(f)


def test_problem_bad_input():
    with pytest.raises(TypeError, match="seed"):
        problem("7")
    with pytest.raises(ValueError, match="kind"):
        problem(7, "essay")


# ---------------------------------------------------------------- figures
def test_figures_draw(monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from kvmmu.explorer import run_schedule

    fig = V.state_machine_figure()
    assert len(fig.axes) == 2
    trace = run_schedule(G.scenario_pin(put_after_unlock=True, vcpu=False), "B" * 18, complete=True)
    rows = V.refcount_timeline_rows(trace)
    assert rows[0][3] == 2 and rows[-1][3] == 1 and rows[-1][4] == "GUEST"
    assert min(r[3] for r in rows) == 0                  # the final put
    fig2 = V.refcount_timeline(trace)
    assert fig2.axes
    plt.close("all")


def test_widget_builds():
    w = V.folio_console_widget()
    grid, out, _log = w.children
    assert len(grid.children) == len(G.ACTIONS) + 1
    grid.children[0].click()                              # host map
    assert "VM_FAULT_LOCKED" in out.value
    grid.children[1].click()                              # host unmap
    grid.children[1].click()                              # again: refused, not raised
    assert "refused" in out.value
    grid.children[-1].click()
    assert "ready" in out.value


def test_import_does_not_pull_views():
    import subprocess
    import sys
    code = ("import sys, kvmmu.guest_memfd, kvmmu.folio, kvmmu.exercises.guest_memfd; "
            "print(any(m in sys.modules for m in ('matplotlib', 'ipywidgets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_random_console_walk_is_deterministic():
    def walk(seed):
        rng = random.Random(seed)
        state, msgs = (), []
        for _ in range(30):
            v = V.folio_console(state, rng.choice(G.ACTIONS))
            state, msgs = v.state, msgs + [v.message]
        return state, msgs
    assert walk(3) == walk(3)
