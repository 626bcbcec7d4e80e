"""Chapter 4's model on the one VM: kvmmu.folio, kvmmu.guest_memfd's RFC hooks, kvmmu.guest_memfd_rfc.

Constants, return codes, the state table, the one fault path into the RFC's
check, bad input, the console's pure function, the exercises, and property
tests over action sequences (kvmmu.scenarios.guest_memfd runs the actions).
"""
import random

import pytest
from hypothesis import given, settings, strategies as st

from kvmmu import folio as F
from kvmmu import guest_memfd as G
from kvmmu import guest_memfd_rfc as R
from kvmmu.cpu import ModelHang, run_alone
from kvmmu.errno import EAGAIN, EFAULT, RET_PF_FIXED
from kvmmu.kvm_main import kvm_create_vm
from kvmmu.scenarios import guest_memfd as S
from kvmmu.viz import guest_memfd as V

FAST = settings(max_examples=int(__import__('os').environ.get('KVMMU_EXAMPLES', 60)), deadline=None)


def held(*actions, order=0):
    """A VM whose file has one folio of ``order``, after ``actions`` on one CPU."""
    return S.replay(list(actions), size=1 << order, order=order)


def file_of(kvm):
    return S.gmem_file(kvm)


def clear(kvm):
    return run_alone(kvm, R.gmem_clear_mappable(file_of(kvm), 0, 1))


def register(kvm, **variant):
    return run_alone(kvm, R.kvm_slot_gmem_register_callback(kvm, S.gmem_slot(kvm), S.GFN,
                                                            **variant))


def with_state(state):
    """A VM whose only offset starts in ``state`` (the file made so, not converted)."""
    kvm = kvm_create_vm(zoom=S.ZOOM)
    R.kvm_gmem_create(kvm, 1, state=state)
    return kvm


# ---------------------------------------------------------------- constants
def test_constants_match_the_rfc():
    assert (G.KVM_GMEM_ALL_MAPPABLE, G.KVM_GMEM_GUEST_MAPPABLE, G.KVM_GMEM_NONE_MAPPABLE) == (
        0b00, 0b10, 0b11)
    # bit 0 set: the guest cannot map; bit 1 set: the host cannot.
    assert G.KVM_GMEM_GUEST_MAPPABLE & 1 == 0 and G.KVM_GMEM_GUEST_MAPPABLE & 2
    assert G.KVM_GMEM_NONE_MAPPABLE & 1 and G.KVM_GMEM_NONE_MAPPABLE & 2
    assert F.PGTY_guestmem == 0xF8
    assert (R.VM_FAULT_SIGBUS, R.VM_FAULT_LOCKED) == (0x2, 0x200)
    assert R.state_name(0b10) == "GUEST"
    with pytest.raises(ValueError, match="state"):
        R.state_name(1)
    # mm's switch reaches the RFC's callback through the handler table.
    assert F.FREE_TYPED_FOLIO["PGTY_guestmem"] is R.kvm_gmem_handle_folio_put


@pytest.mark.parametrize("state,host,guest", [("ALL", True, True), ("GUEST", False, True),
                                              ("NONE", False, False)])
def test_who_may_map_each_state(state, host, guest):
    kvm = with_state(state)
    file = kvm.primitive("gmem0")
    assert G.gmem_is_mappable(file, 0) is host
    assert G.gmem_is_guest_mappable(file, 0) is guest
    ret, folio = run_alone(kvm, R.kvm_gmem_fault(file, 0))
    assert (ret == R.VM_FAULT_LOCKED) is host and (folio is not None) is host


def _fault_labels(kvm):
    from kvmmu.explorer import Actor, Invariant, Scenario, run_schedule
    sc = Scenario("fault", lambda: kvm, [Actor("A", "vCPU", S.vcpu_fault)],
                  [Invariant("true", lambda w: True)])
    trace = run_schedule(sc, "A" * 60, complete=True)
    return trace.results["A"], [s.label for s in trace.steps]


@pytest.mark.parametrize("state,result", [("ALL", RET_PF_FIXED), ("GUEST", RET_PF_FIXED),
                                          ("NONE", -EAGAIN)])
def test_the_vcpu_fault_goes_through_kvm_gmem_get_pfn_and_its_rfc_check(state, result):
    kvm = S.gmem_world()()
    file = file_of(kvm)
    file.mappable_offsets = (R.STATE_BY_NAME[state],)
    r, trace = _fault_labels(kvm)
    assert r == ("RET_PF_FIXED" if result == RET_PF_FIXED else "-EAGAIN")
    assert trace[0].startswith("memslot lookup")
    assert any(lab.startswith("gmem_is_guest_mappable?") for lab in trace)
    assert S.guest_mapped(kvm) is (result == RET_PF_FIXED)
    # KVM's private mapping holds no reference: only the page cache's are left.
    assert file.folio_at(0).holders == {F.FILEMAP: 1}


def test_a_617_file_has_no_states_and_its_fault_takes_no_invalidate_lock():
    from kvmmu.kvm_main import kvm_vm_ioctl_create_vcpu, set_memory_region
    from kvmmu.memslots import KVM_MEM_GUEST_MEMFD
    from kvmmu.mmu import kvm_mmu_reload
    kvm = kvm_create_vm(zoom=S.ZOOM)
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    file = G.kvm_gmem_create(kvm, 1, name="gmem0")
    assert not file.mappability and file.mappable_offsets is None
    with pytest.raises(ValueError, match="no mappability states"):
        G.gmem_is_guest_mappable(file, 0)
    set_memory_region(kvm, S.SLOT, S.GPA, 0x1000, S.HVA, flags=KVM_MEM_GUEST_MEMFD,
                      guest_memfd="gmem0")
    kvm.memslot_state.private = frozenset({S.GFN})
    kvm_mmu_reload(vcpu)
    folio = run_alone(kvm, G.kvm_gmem_get_folio(file, 0, "set-up"))     # populated, as S's are
    run_alone(kvm, G.folio_unlock(folio, "set-up"))
    run_alone(kvm, F.folio_put(folio, "set-up"))
    r617, labels617 = _fault_labels(kvm)
    rrfc, labels_rfc = _fault_labels(S.gmem_world()())
    assert r617 == rrfc == "RET_PF_FIXED"
    assert not any("invalidate_lock" in lab or "mappable" in lab for lab in labels617)
    # The RFC adds exactly its lock, its check and the unlock to the same path.
    assert len(labels_rfc) == len(labels617) + 3
    assert "read_lock(gmem0.invalidate_lock)" in labels_rfc


@pytest.mark.parametrize("order", [0, 1, 2])
def test_clear_mappable_compares_with_nr_pages_plus_one(order):
    nr = 1 << order
    clean = held(order=order)
    assert file_of(clean).folio_at(0).refcount == nr            # the page cache's references
    clear(clean)
    assert file_of(clean).state(0) == "GUEST" and file_of(clean).folio_at(0).refcount == nr
    one_more = held("spec get", order=order)
    clear(one_more)
    assert file_of(one_more).state(0) == "NONE"     # nr + 1 (lookup) + 1 foreign > nr + 1
    absent = with_state("ALL")
    run_alone(absent, R.gmem_clear_mappable(absent.primitive("gmem0"), 0, 1))
    assert absent.primitive("gmem0").state(0) == "GUEST"        # no folio: -ENOENT is fine


# ---------------------------------------------------------------- register / callback
def _unshare(kvm):
    clear(kvm)
    return register(kvm)


def test_register_while_mapped_returns_eagain_and_registers_nothing():
    kvm = held("host map")
    assert _unshare(kvm) == -EAGAIN
    folio = file_of(kvm).folio_at(0)
    assert not F.folio_test_guestmem(folio)            # the comment/code mismatch
    assert folio.holders[F.FILEMAP] == 1 and file_of(kvm).state(0) == "NONE"


def test_register_with_foreign_reference_parks_filemap_refs():
    kvm = held("host map", "get ref", "host unmap")
    assert _unshare(kvm) == -EAGAIN
    folio = file_of(kvm).folio_at(0)
    assert F.folio_test_guestmem(folio)
    assert folio.refcount == 1 and folio.holders.get(F.FILEMAP, 0) == 0  # only the GUP ref
    # a second register sees the type and changes nothing
    assert register(kvm) == -EAGAIN
    assert folio.refcount == 1 and file_of(kvm).callbacks == 0


def test_register_without_foreign_reference_completes():
    kvm = held("spec get")
    clear(kvm)
    assert file_of(kvm).state(0) == "NONE"
    S.apply_action(kvm, "spec put")
    assert register(kvm) == 0
    folio = file_of(kvm).folio_at(0)
    assert file_of(kvm).state(0) == "GUEST" and not F.folio_test_guestmem(folio)
    assert folio.refcount == 1


@pytest.mark.parametrize("order", [0, 2])
def test_callback_fires_only_when_the_foreign_count_reaches_zero(order):
    nr = 1 << order
    kvm = held("host map", "get ref", "spec get", "host unmap", "convert to private", order=order)
    file = file_of(kvm)
    folio = file.folio_at(0)
    assert file.state(0) == "NONE" and F.folio_test_guestmem(folio)
    assert folio.refcount == 2                         # GUP + speculative; nr parked
    S.apply_action(kvm, "spec put")
    assert file.callbacks == 0 and file.state(0) == "NONE" and folio.refcount == 1
    S.apply_action(kvm, "put ref")
    assert file.callbacks == 1 and file.state(0) == "GUEST"
    assert folio.refcount == nr and not F.folio_test_guestmem(folio)   # back at baseline
    assert S.at_baseline(kvm) is None and not S.check_invariants(kvm)
    assert [h[1:] for h in file.history] == [("ALL", "NONE", "gmem_clear_mappable"),
                                             ("NONE", "GUEST", "kvm_gmem_handle_folio_put")]


def test_share_again_cancels_the_pending_callback():
    kvm = held("host map", "get ref", "host unmap", "convert to private")
    file = file_of(kvm)
    folio = file.folio_at(0)
    S.apply_action(kvm, "share again")
    assert file.state(0) == "ALL" and not F.folio_test_guestmem(folio)
    assert folio.refcount == 2                         # page cache + GUP
    S.apply_action(kvm, "put ref")
    assert file.callbacks == 0 and folio.refcount == 1 and not folio.freed


def test_guest_fault_retries_in_none_and_host_fault_sigbuses():
    kvm = held("host map", "get ref", "host unmap", "convert to private")
    ret, msg = S.apply_action(kvm, "guest fault")
    assert ret == "-EAGAIN" and "retries" in msg and not S.guest_mapped(kvm)
    ret, msg = S.apply_action(kvm, "host map")
    assert ret == R.VM_FAULT_SIGBUS and "ALL" in msg
    assert S.apply_action(kvm, "get ref")[0] == -EFAULT


def test_host_fault_on_pending_folio_in_all_warns():
    # Only reachable when register runs on a page shared again meanwhile (unguarded rows 9/10).
    kvm = held("host map", "get ref", "host unmap")
    file = file_of(kvm)
    register(kvm)                                      # register on an ALL page
    assert F.folio_test_guestmem(file.folio_at(0)) and file.state(0) == "ALL"
    assert run_alone(kvm, R.kvm_gmem_fault(file, 0)) == (R.VM_FAULT_SIGBUS, None)
    assert "callback pending" in kvm.warnings[-1]
    S.apply_action(kvm, "put ref")
    assert file.state(0) == "GUEST" and not file.bad_transitions   # ALL -> GUEST by the callback


def test_unshare_twice_while_pending_goes_guest_with_a_host_reference():
    kvm = held("host map", "get ref", "host unmap", "convert to private")
    S.apply_action(kvm, "convert to private")
    assert file_of(kvm).state(0) == "GUEST"
    assert S.check_invariants(kvm) == ["private is private"]
    assert ("NONE", "GUEST", "gmem_clear_mappable") in [h[1:] for h in file_of(kvm).history]


def test_truncating_a_pending_folio_oopses_and_the_fix_does_not():
    kvm = held("host map", "get ref", "host unmap", "convert to private")
    ret, msg = S.apply_action(kvm, "punch hole")
    file = file_of(kvm)
    assert ret == "oops" and "OOPS" in msg and "NULL" in file.oops[0]
    old = file.folios[0]
    assert old.mapping is None and old.refcount == 0 and old.holders["gup:host"] == 1
    assert set(S.check_invariants(kvm)) == {"references accounted", "no oops"}
    assert file.invalidate_lock.writer == "A"       # the crashed truncation still holds it
    # The invalidation it began never ends: the vCPU's fault retries forever ...
    assert S.apply_action(kvm, "guest fault")[0] == "RET_PF_RETRY"
    # ... and a conversion waits for the lock forever.
    with pytest.raises(ModelHang, match="invalidate_lock"):
        S.apply_action(kvm, "share again")
    with pytest.raises(F.Oops, match="NULL"):
        run_alone(kvm, R.kvm_gmem_handle_folio_put(old))
    with pytest.raises(F.KernelWarn, match="underflow"):
        S.apply_action(kvm, "put ref")
    fixed = S.replay(["host map", "get ref", "host unmap", "convert to private", "punch hole"],
                     fix_pending=True)
    old = file_of(fixed).folios[0]
    assert not file_of(fixed).oops and old.refcount == 1 and file_of(fixed).state(0) == "GUEST"
    S.apply_action(fixed, "put ref")
    assert old.freed and not S.check_invariants(fixed)


def test_punch_hole_zaps_the_guest_mapping_and_unmaps_the_host():
    kvm = held("host map", "guest fault")
    file = file_of(kvm)
    assert S.guest_mapped(kvm) and file.folio_at(0).mapcount == 1
    seq = kvm.mmu_invalidate_seq
    S.apply_action(kvm, "punch hole")
    old = file.folios[0]
    assert not S.guest_mapped(kvm) and old.mapcount == 0 and old.freed
    assert kvm.mmu_invalidate_seq == seq + 1 and kvm.warnings == ()


def test_alternative_with_the_posted_lock_order_self_deadlocks_on_one_cpu():
    kvm = held("spec get")
    clear(kvm)
    S.apply_action(kvm, "spec put")
    with pytest.raises(ModelHang, match="invalidate_lock"):
        register(kvm, alternative=True)
    kvm = held("spec get")
    clear(kvm)
    S.apply_action(kvm, "spec put")
    assert register(kvm, alternative=True, put_after_unlock=True) == -EAGAIN
    assert file_of(kvm).callbacks == 1 and file_of(kvm).state(0) == "GUEST"
    assert S.at_baseline(kvm) is None


def test_the_host_fault_maps_after_the_invalidate_lock_is_dropped():
    from kvmmu.explorer import Actor, Invariant, Scenario, run_schedule
    kvm = S.gmem_world()()
    sc = Scenario("host fault", lambda: kvm,
                  [Actor("A", "host", lambda w: R.host_fault(file_of(w), 0))],
                  [Invariant("true", lambda w: True)])
    labels = [s.label for s in run_schedule(sc, "A" * 20, complete=True).steps]
    assert labels[0] == "read_lock(gmem0.invalidate_lock)"
    unlock = labels.index("read_unlock(gmem0.invalidate_lock)")
    assert labels[unlock + 1].startswith("finish_fault: map the folio")
    assert labels[-1].startswith("folio_unlock")
    assert file_of(kvm).folio_at(0).holders == {F.FILEMAP: 1, F.PTE: 1}


# ---------------------------------------------------------------- illegal ops and bad input
def test_illegal_operations_raise_like_a_warn():
    kvm = held()
    with pytest.raises(F.KernelWarn, match="nothing maps offset 0"):
        S.apply_action(kvm, "host unmap")
    with pytest.raises(F.KernelWarn, match="holds no GUP reference"):
        S.apply_action(kvm, "put ref")
    with pytest.raises(F.KernelWarn, match="no speculative reference"):
        S.apply_action(kvm, "spec put")
    folio = file_of(kvm).folio_at(0)
    with pytest.raises(F.KernelWarn, match="underflow"):
        run_alone(kvm, F.folio_put_refs(folio, 2, F.FILEMAP))
    assert folio.refcount == 1                            # nothing changed
    with pytest.raises(F.KernelWarn, match="free folio"):
        F.folio_get(F.Folio(9, index=0), "x")
    with pytest.raises(F.KernelWarn, match="already has a page type"):
        F.__folio_set_guestmem(F.Folio(9, index=0, page_type=F.PGTY_guestmem))
    with pytest.raises(F.KernelWarn, match="not a guestmem"):
        F.__folio_clear_guestmem(folio)
    with pytest.raises(F.KernelWarn, match="not mapped"):
        F.folio_remove_rmap_pte(folio)
    with pytest.raises(F.KernelWarn, match="holds no reference"):
        F.folio_add_file_rmap_pte(folio, "nobody")


def test_bad_arguments_name_the_argument():
    kvm = held()
    file = file_of(kvm)
    with pytest.raises(ValueError, match="action"):
        S.apply_action(kvm, "fly")
    with pytest.raises(TypeError, match="kvm"):
        S.apply_action(file, "host map")
    with pytest.raises(ValueError, match="variant"):
        S.apply_action(kvm, "host map", fix=True)
    with pytest.raises(ValueError, match="state"):
        R.kvm_gmem_create(kvm_create_vm(), 1, state="PRIVATE")
    with pytest.raises(ValueError, match="size must be a multiple"):
        R.kvm_gmem_create(kvm_create_vm(), 3, order=1)
    with pytest.raises(ValueError, match="order"):
        R.kvm_gmem_create(kvm_create_vm(), 1 << 10, order=10)
    with pytest.raises(ValueError, match="end"):
        next(R.gmem_clear_mappable(file, 0, 0))
    with pytest.raises(ValueError, match="index"):
        next(R.kvm_gmem_fault(file, 1))
    with pytest.raises(TypeError, match="GmemMappableFile"):
        next(R.gmem_set_mappable(G.kvm_gmem_create(kvm_create_vm(), 1), 0, 1))
    with pytest.raises(ValueError, match="gfn"):
        next(R.kvm_slot_gmem_register_callback(kvm, S.gmem_slot(kvm), S.GFN + 1))
    with pytest.raises(TypeError, match="slot"):
        next(R.convert_to_private(kvm, None, S.GFN))
    with pytest.raises(TypeError, match="alternative"):
        next(R.__gmem_register_callback(file, file.folio(0), 0, alternative=1))
    with pytest.raises(TypeError, match="actions"):
        S.replay("host map")
    with pytest.raises(ValueError, match="nr"):
        F.folio_ref_add(F.Folio(0, index=0), 0, "x")
    with pytest.raises(ValueError, match="setup action"):
        S.gmem_world("nope")
    with pytest.raises(TypeError, match="function"):
        R.transition_allowed("ALL", "NONE", 3)
    with pytest.raises(ValueError, match="ret"):
        R.vm_fault_name(-1)


# ---------------------------------------------------------------- the transition table
def test_figure_and_tests_use_one_table():
    edges = V.state_machine_edges()
    assert [e[1:] for e in edges] == list(R.TRANSITIONS)
    for _n, src, dst, fn, cond, kind in edges:
        assert src in R.STATE_BY_NAME and dst in R.STATE_BY_NAME and src != dst
        assert kind in ("rfc", "unguarded", "fix") and cond
    rfc = {(s, d) for _n, s, d, _f, _c, k in edges if k == "rfc"}
    assert rfc == {("ALL", "GUEST"), ("ALL", "NONE"), ("NONE", "GUEST"), ("NONE", "ALL"),
                   ("GUEST", "ALL")}
    assert not R.transition_allowed("GUEST", "NONE", "kvm_gmem_handle_folio_put")


def test_a_change_outside_the_table_is_recorded():
    kvm = held()
    R._xa_store(file_of(kvm), 0, G.KVM_GMEM_NONE_MAPPABLE, "kvm_gmem_fault")
    assert file_of(kvm).bad_transitions == ("0: ALL -> NONE by kvm_gmem_fault",)
    assert "transitions follow the table" in S.check_invariants(kvm)


# ---------------------------------------------------------------- properties
ACTION = st.sampled_from(S.ACTIONS)


def _protocol_ok(kvm, action) -> bool:
    # A caller that follows the protocol unshares only shared pages.
    return action != "convert to private" or file_of(kvm).state(0) == "ALL"


@FAST
@given(st.lists(ACTION, max_size=14), st.sampled_from([0, 1]))
def test_any_sequence_keeps_counts_and_the_table(actions, order):
    """Posted RFC, any legal sequence: refcount never negative, states move along the table."""
    kvm = held(order=order)
    file = file_of(kvm)
    for action in actions:
        before = [fo.refcount for fo in file.folios]
        try:
            S.apply_action(kvm, action)
        except F.KernelWarn:
            assert [fo.refcount for fo in file.folios] == before   # refused: nothing changed
            continue
        assert all(fo.refcount >= 0 for fo in file.folios)
        assert not file.bad_transitions
        for _i, old, new, fn in file.history:
            assert R.transition_allowed(old, new, fn)
        if file.oops:   # truncating a pending folio: the reviewer's bug, nothing to check after
            assert "NULL" in file.oops[0]
            return


@FAST
@given(st.lists(ACTION, max_size=14), st.sampled_from([0, 1, 2]))
def test_protocol_sequences_keep_every_invariant(actions, order):
    """With the punch-hole fix and unshare only from ALL, every invariant holds after every action,
    the callback runs only when the last foreign reference goes, and dropping everything returns
    the folio to its baseline."""
    kvm = held(order=order)
    file = file_of(kvm)
    for action in actions:
        if not _protocol_ok(kvm, action):
            continue
        callbacks = file.callbacks
        try:
            S.apply_action(kvm, action, fix_pending=True)
        except F.KernelWarn:
            continue
        assert S.check_invariants(kvm) == []
        assert kvm.warnings == ()
        if file.callbacks > callbacks:
            folio = file.folio_at(0)
            assert {h: n for h, n in folio.holders.items() if n} == {F.FILEMAP: 1 << order}
    # Drop everything the host still holds: the folio returns to its baseline.
    for _ in range(8):
        for cleanup in ("host unmap", "put ref", "spec put"):
            try:
                S.apply_action(kvm, cleanup, fix_pending=True)
            except F.KernelWarn:
                pass
    assert S.check_invariants(kvm) == []
    assert S.at_baseline(kvm) is None
    for folio in file.folios:
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
    if not isinstance(state, (tuple, list)) or state and not all(a in S.ACTIONS for a in state):
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
    assert fields["state"] == "NONE (0b11)" and fields["refcount"] == "2"
    assert fields["mapcount"] == "1" and fields["type"] == "none"
    v = V.folio_console(("host map", "get ref", "host unmap"), "convert to private")
    assert "callback registered" in v.message and dict(v.fields)["type"].startswith("guestmem")
    v = V.folio_console(v.state, "put ref")
    assert "kvm_gmem_handle_folio_put" in v.message and dict(v.fields)["state"] == "GUEST (0b10)"
    v = V.folio_console(v.state, "guest fault")
    assert "RET_PF_FIXED" in v.message and dict(v.fields)["guest mapping"] == "yes"
    long = ("host map", "host unmap") * 200
    assert V.folio_console(long, "host map").ok


def test_console_says_when_an_action_would_wait_forever():
    # After the oops the dead truncation holds the invalidate lock: sharing again would wait.
    crashed = ("host map", "get ref", "host unmap", "convert to private", "punch hole")
    v = V.folio_console(crashed, "share again")
    assert not v.ok and "would wait forever" in v.message and v.state == crashed
    assert "OOPS" in dict(v.fields)


# ---------------------------------------------------------------- figures and tables
def _fixed_run():
    """The fix, B's whole unshare first, then A's put (the final one)."""
    from kvmmu.explorer import run_schedule
    sc = S.scenario_pin(put_after_unlock=True, vcpu=False)
    whole = next(k for k in range(1, 60) if "B" in run_schedule(sc, "B" * k).results)
    return run_schedule(sc, "B" * whole, complete=True)


def test_figures_are_drawn_for_the_column_and_legible():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from kvmmu.viz.style import COLUMN_IN, DPI, legibility

    trace = _fixed_run()
    rows = V.refcount_timeline_rows(trace)
    assert rows[0][3] == 2 and rows[-1][3] == 1 and rows[-1][4] == "GUEST"
    assert min(r[3] for r in rows) == 0                  # the final put
    for fig in (V.state_machine_figure(), V.state_machine_figure(False),
                V.refcount_timeline(trace)):
        assert (fig.get_figwidth(), fig.dpi) == (COLUMN_IN, DPI)
        assert legibility(fig) == []
    plt.close("all")


def test_transition_key_numbers_every_row_and_fits():
    key = V.transition_key()
    assert max(map(len, key.splitlines())) <= 84
    heads = [line for line in key.splitlines() if not line.startswith(" " * 6)]
    assert [int(h.split()[0]) for h in heads] == list(range(1, len(R.TRANSITIONS) + 1))
    assert "[unguarded]" in key and "[this book's fix]" in key
    with pytest.raises(ValueError, match="width"):
        V.transition_key(10)


def test_race_table_shows_only_what_changed_and_fits():
    from kvmmu.explorer import explore
    trace = explore(S.scenario_pin(vcpu=False, from_none=True)).counterexample
    rows = V.race_rows(trace)
    assert rows[0][:3] == (0, "", "At the beginning")
    assert "ref 2 [filemap=1 gup:host=1]" in rows[0][3] and "state NONE" in rows[0][3]
    by_label = {label: changed for _n, _a, label, changed in rows[1:]}
    assert by_label["write_lock(invalidate_lock)"] == "lock: write B"
    assert by_label["folio_ref_sub_return(nr_pages) -> 2"] == "ref 2 (-filemap)"
    assert by_label["folio->mapping == mapping -> True"] == ""
    for sc in (S.scenario_pin(), S.scenario_truncate_pending(), S.scenario_naive_unshare()):
        table = V.race_table(explore(sc).counterexample)
        text = repr(table)
        assert max(map(len, text.splitlines())) <= 84 and "OOPS" in text
        assert "overflow-wrap:anywhere" in table._repr_html_()
    with pytest.raises(TypeError, match="trace"):
        V.race_rows("BBA")


def test_verdict_table_wraps_and_rejects_bad_rows():
    rows = [("a check whose description is much too long for its column to hold", 3,
             "deadlock, references accounted", 1316), ("short", 2, "holds", 24)]
    text = V.verdict_table(rows)
    assert max(map(len, text.splitlines())) <= 84
    assert text.splitlines()[2].split()[-1] == "1316"
    with pytest.raises(TypeError, match="rows"):
        V.verdict_table([("x", "3", "holds", 1)])
    with pytest.raises(TypeError, match="rows"):
        V.verdict_table("rows")


def test_every_check_of_the_registry_has_its_verdict():
    checks = S.check_all(["gmem-naive-unshare", "gmem-speculative"])
    assert [(n, cpus, S.verdict(r)) for n, _e, cpus, r in checks] == [
        ("gmem-naive-unshare", 2, "private is private"), ("gmem-speculative", 2, "holds")]
    with pytest.raises(ValueError, match="names"):
        S.check_all(["no-such-check"])
    with pytest.raises(TypeError, match="result"):
        S.verdict("holds")


def test_file_column_reads_what_the_file_shows():
    kvm = held("host map", "get ref")
    states, folios = V.file_column(file_of(kvm)._show())
    assert states == ("ALL",) and folios[0].startswith("ref=3 map=1")
    with pytest.raises(TypeError, match="text"):
        V.file_column(None)


def test_widget_builds():
    w = V.folio_console_widget()
    grid, out, _log = w.children
    assert len(grid.children) == len(S.ACTIONS) + 1
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
    code = ("import sys, kvmmu.guest_memfd_rfc, kvmmu.folio, kvmmu.exercises.guest_memfd, "
            "kvmmu.scenarios.guest_memfd; "
            "print(any(m in sys.modules for m in ('matplotlib', 'ipywidgets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_random_console_walk_is_deterministic():
    def walk(seed):
        rng = random.Random(seed)
        state, msgs = (), []
        for _ in range(30):
            v = V.folio_console(state, rng.choice(S.ACTIONS))
            state, msgs = v.state, msgs + [v.message]
        return state, msgs
    assert walk(3) == walk(3)


def test_run_alone_can_record_each_step():
    kvm = held()
    trace = []
    ret = run_alone(kvm, R.gmem_clear_mappable(file_of(kvm), 0, 1), trace=trace)
    assert ret == 0 and trace[0] == "write_lock(gmem0.invalidate_lock)"
    assert "folio_ref_count -> 2" in trace and trace[-1] == "write_unlock(gmem0.invalidate_lock)"
    with pytest.raises(TypeError, match="trace"):
        run_alone(kvm, R.gmem_set_mappable(file_of(kvm), 0, 1), trace=())


@pytest.mark.parametrize("module", ["kvmmu.folio", "kvmmu.guest_memfd", "kvmmu.guest_memfd_rfc",
                                    "kvmmu.scenarios.guest_memfd", "kvmmu.viz.guest_memfd",
                                    "kvmmu.exercises.guest_memfd"])
@pytest.mark.parametrize("bad", [None, -1, 1.5, "x", 2**70])
def test_every_exported_function_rejects_bad_arguments_by_name(module, bad):
    """Each exported function given a bad value for every argument it needs raises
    TypeError/ValueError (a generator before its first step), never anything else."""
    import importlib
    import inspect
    m = importlib.import_module(module)
    checked = 0
    for name in m.__all__:
        fn = getattr(m, name)
        if inspect.isclass(fn) or not callable(fn):
            continue
        need = [p for p in inspect.signature(fn).parameters.values()
                if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
        if not need:
            continue
        with pytest.raises((TypeError, ValueError)):
            out = fn(*[bad] * len(need))
            if inspect.isgenerator(out):
                next(out)
        checked += 1
    assert checked >= 1
