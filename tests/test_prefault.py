"""KVM_PRE_FAULT_MEMORY alone: argument checks, progress accounting, every return path."""
import pytest
from hypothesis import given, settings, strategies as st

from kvmmu.errno import (EAGAIN, EINTR, EINVAL, EIO, ENOENT, EOPNOTSUPP, RET_PF_CONTINUE,
                         RET_PF_EMULATE, RET_PF_FIXED, RET_PF_INVALID, RET_PF_RETRY,
                         RET_PF_SPURIOUS, RET_PF_WRITE_PROTECTED)
from kvmmu.levels import PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K
from kvmmu.memslot_update import (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, KVM_REQ_VM_DEAD, Kvm,
                                  ModelHang, SequentialSync, run_sequential, set_memory_region)
from kvmmu.memslots import KVM_MEMSLOT_INVALID
from kvmmu.prefault import (
    KVM_PRE_FAULT_MEMORY, RET_PF_RETRY_INVALID_SLOT, SELFTEST_CASES, TEST_NPAGES, TEST_SIZE,
    KvmPreFaultMemory, describe_mappings, describe_vcpu, kvm_mmu_max_mapping_level,
    kvm_vcpu_ioctl_pre_fault_memory, kvm_vcpu_pre_fault_memory, pf_name, pre_fault_memory,
    prefault, prefault_race, prefault_until_done, run_selftest_case, run_selftest_cases_in_order,
    selftest_gpa, selftest_race, selftest_vm, tdp_map_page_errno)

U64 = (1 << 64) - 1
MB2 = 2 << 20
HVA = 0x7F0000000000


def vm(policy="6.18", **kw):
    return selftest_vm(policy, **kw)


def counted_vm(policy="6.18", **kw):
    """A selftest VM that counts calls of kvm_arch_vcpu_pre_fault_memory (one reload each)."""
    kvm, vcpu, gpa = vm(policy, **kw)
    calls = []
    kvm.attach_sync(SequentialSync(lambda label: calls.append(label)))
    return kvm, vcpu, gpa, calls


# -- constants --------------------------------------------------------------

def test_uapi_constants():
    assert KVM_PRE_FAULT_MEMORY == 0xC040AED5
    assert TEST_NPAGES == 513 and TEST_SIZE == MB2 + 0x1000
    assert SELFTEST_CASES == ((0, MB2, 0), (MB2, 0x2000, 0x1000), (TEST_SIZE, 0x1000, 0x1000))
    assert selftest_gpa() % MB2 == 0
    assert pf_name(RET_PF_RETRY_INVALID_SLOT) == "RET_PF_RETRY_INVALID_SLOT"
    assert pf_name(RET_PF_FIXED) == "RET_PF_FIXED" and pf_name(-EAGAIN) == "-EAGAIN"


# -- argument checks (-EINVAL, range untouched) -----------------------------

@pytest.mark.parametrize("gpa, size, flags", [
    (0x1000, 0x1000, 1),                 # flags must be 0
    (0x1001, 0x1000, 0),                 # gpa not page aligned
    (0x1000, 0x1800, 0),                 # size not page aligned
    (0x1000, 0, 0),                      # size 0: gpa + size <= gpa
    (U64 - 0xFFF, 0x1000, 0),            # gpa + size wraps to 0
    (U64 - 0xFFF, 0x2000, 0),            # wraps past 0
])
def test_bad_ranges_are_einval_and_leave_the_range_alone(gpa, size, flags):
    kvm, vcpu, _ = vm()
    res = prefault(vcpu, gpa, size, flags)
    assert (res.ret, res.gpa, res.size) == (-EINVAL, gpa, size)
    assert vcpu.root is None                     # it never got as far as the MMU


PAGES = st.integers(0, (1 << 52) - 1).map(lambda n: n << 12)
VALUES = st.integers(0, U64) | PAGES


@settings(max_examples=80, deadline=None)
@given(VALUES, VALUES, st.integers(0, U64) | st.just(0))
def test_einval_exactly_when_the_kernel_checks_say_so(gpa, size, flags):
    kvm, vcpu, _ = vm()
    bad = bool(flags or gpa % 4096 or size % 4096 or (gpa + size) % (1 << 64) <= gpa)
    res = prefault(vcpu, gpa, size, flags)
    assert (res.ret == -EINVAL) == bad
    if not bad:
        assert res.ret in (0, -ENOENT)           # nothing else can happen on this VM


# -- progress accounting ----------------------------------------------------

def test_whole_slot_maps_one_2m_page_then_one_4k_page():
    kvm, vcpu, gpa, calls = counted_vm()
    res = prefault(vcpu, gpa, TEST_SIZE)
    assert (res.ret, res.gpa, res.size) == (0, gpa + TEST_SIZE, 0)
    assert calls.count("kvm_mmu_reload") == 2    # two chunks: 2 MiB, then 4 KiB
    base = gpa >> 12
    assert vcpu.root.mappings == {base: PG_LEVEL_2M, base + 512: PG_LEVEL_4K}


def test_progress_runs_to_the_end_of_the_huge_mapping_not_the_page():
    kvm, vcpu, gpa, calls = counted_vm()
    res = prefault(vcpu, gpa + 0x1000, 0x3000)   # inside the first 2 MiB page
    assert (res.ret, res.size) == (0, 0)
    assert calls.count("kvm_mmu_reload") == 1    # min(size, end - gpa): one chunk did it all
    res = prefault(vcpu, gpa + MB2 - 0x1000, 0x2000)
    assert (res.ret, res.size) == (0, 0)         # last 4K of the huge page, then page 512


def test_host_level_4k_maps_page_by_page():
    kvm, vcpu, gpa, calls = counted_vm(host_mapping_level=PG_LEVEL_4K)
    assert prefault(vcpu, gpa, 0x8000).ret == 0
    assert calls.count("kvm_mmu_reload") == 8
    assert set(vcpu.root.mappings.values()) == {PG_LEVEL_4K}


def test_a_1g_aligned_slot_can_map_1g():
    kvm = Kvm(host_mapping_level=PG_LEVEL_1G)
    vcpu = kvm.kvm_vm_ioctl_create_vcpu()
    assert set_memory_region(kvm, 1, 1 << 30, 1 << 30, 0x40000000) == 0
    res = prefault(vcpu, (1 << 30) + 0x5000, 0x10000)
    assert (res.ret, res.size) == (0, 0)
    assert vcpu.root.mappings == {(1 << 30) >> 12: PG_LEVEL_1G}


def test_max_mapping_level_of_the_selftest_slot():
    # Appendix A 9: a 513-page slot at a 2M-aligned gpa: page 512 is 4K-only.
    kvm, vcpu, gpa = vm()
    slot = kvm.kvm_memslots().slots[0]
    base = gpa >> 12
    assert kvm_mmu_max_mapping_level(kvm, slot, base, PG_LEVEL_1G) == PG_LEVEL_2M
    assert kvm_mmu_max_mapping_level(kvm, slot, base + 511, PG_LEVEL_1G) == PG_LEVEL_2M
    assert kvm_mmu_max_mapping_level(kvm, slot, base + 512, PG_LEVEL_1G) == PG_LEVEL_4K


@settings(max_examples=40, deadline=None)
@given(st.integers(0, TEST_NPAGES - 1), st.integers(1, TEST_NPAGES),
       st.sampled_from([PG_LEVEL_4K, PG_LEVEL_2M]))
def test_progress_adds_up_and_each_chunk_ends_at_a_mapping_boundary(first, npages, host_level):
    npages = min(npages, TEST_NPAGES - first)
    kvm, vcpu, gpa, calls = counted_vm(host_mapping_level=host_level)
    res = prefault(vcpu, gpa + first * 4096, npages * 4096)
    assert (res.ret, res.gpa, res.size) == (0, gpa + (first + npages) * 4096, 0)
    # one chunk per mapping touched, and the mappings cover the range
    touched = [g for g, lvl in vcpu.root.mappings.items()]
    assert calls.count("kvm_mmu_reload") == len(touched)
    covered = set()
    for g, lvl in vcpu.root.mappings.items():
        covered.update(range(g, g + (512 if lvl == PG_LEVEL_2M else 1)))
    assert set(range((gpa >> 12) + first, (gpa >> 12) + first + npages)) <= covered


def test_partial_progress_returns_0_and_the_rest_is_left():
    kvm, vcpu, gpa = vm()
    res = prefault(vcpu, gpa + MB2, 0x3000)      # page 512 exists, 513 and 514 do not
    assert (res.ret, res.gpa, res.size) == (0, gpa + MB2 + 0x1000, 0x2000)
    again = prefault(vcpu, res.gpa, res.size)
    assert (again.ret, again.gpa, again.size) == (-ENOENT, res.gpa, res.size)


def test_a_second_prefault_is_spurious_and_changes_nothing():
    kvm, vcpu, gpa = vm()
    prefault(vcpu, gpa, 0x1000)
    before = dict(vcpu.root.mappings)
    res = prefault(vcpu, gpa + 0x2000, 0x1000)
    assert (res.ret, res.size) == (0, 0)
    assert vcpu.root.mappings == before


# -- every return path ------------------------------------------------------

def test_enoent_without_a_slot():
    kvm, vcpu, gpa = vm()
    assert prefault(vcpu, 0x1000, 0x1000).ret == -ENOENT
    assert prefault(vcpu, U64 - 0x1FFF, 0x1000).ret == -ENOENT     # beyond any gpa


def test_eintr_with_no_progress_and_0_with_some():
    kvm, vcpu, gpa = vm()
    vcpu.signal_pending = True
    res = prefault(vcpu, gpa, 0x1000)
    assert (res.ret, res.size) == (-EINTR, 0x1000)
    assert vcpu.signal_pending is False           # delivered on the way out
    # a signal that arrives after the first chunk: 0, with the rest left
    kvm2, vcpu2, gpa2 = vm(host_mapping_level=PG_LEVEL_4K)
    kvm2.attach_sync(SequentialSync(
        lambda label: label.startswith("mmu_lock") and setattr(vcpu2, "signal_pending", True)))
    res = prefault(vcpu2, gpa2, 0x3000)
    assert (res.ret, res.gpa, res.size) == (0, gpa2 + 0x1000, 0x2000)


@pytest.mark.parametrize("setup", ["not allowed", "shadow paging", "nested guest"])
def test_eopnotsupp(setup):
    kvm, vcpu, gpa = vm()
    if setup == "not allowed":
        kvm.pre_fault_allowed = False
    elif setup == "shadow paging":
        vcpu.tdp = False
    else:
        vcpu.guest_mode = True
    assert prefault(vcpu, gpa, 0x1000).ret == -EOPNOTSUPP


def test_eio_from_the_ioctl_gate_and_from_a_dying_vm_mid_call():
    kvm, vcpu, gpa = vm()
    kvm.kvm_vm_dead()
    assert prefault(vcpu, gpa, 0x1000).ret == -EIO
    kvm2, vcpu2, gpa2 = vm()
    vcpu2.kvm_make_request(KVM_REQ_VM_DEAD)      # the request, not yet the gate
    range_ = KvmPreFaultMemory(gpa2, 0x1000)
    assert run_sequential(kvm_vcpu_pre_fault_memory(vcpu2, range_)) == -EIO
    assert kvm2.warnings == ["kvm_vcpu_pre_fault_memory: r = -EIO"]


def _invalid_slot_vm(policy, **kw):
    kvm, vcpu, gpa = vm(policy, **kw)
    active = kvm.kvm_memslots()
    active.slots = [active.slots[0].with_flags(KVM_MEMSLOT_INVALID)]
    return kvm, vcpu, gpa


def test_invalid_slot_per_policy():
    kvm, vcpu, gpa = _invalid_slot_vm("6.18")
    assert prefault(vcpu, gpa, 0x1000).ret == -EAGAIN
    kvm, vcpu, gpa = _invalid_slot_vm("RET_PF_RETRY_INVALID_SLOT")
    assert prefault(vcpu, gpa, 0x1000).ret == -ENOENT
    for policy in ("6.17", "drop-srcu", "drop-srcu+reload"):
        kvm, vcpu, gpa = _invalid_slot_vm(policy)
        with pytest.raises(ModelHang, match="would wait forever"):
            prefault(vcpu, gpa, 0x1000)


def test_an_obsolete_root_heals_only_if_reload_frees_it():
    for frees in (True, False):
        kvm, vcpu, gpa = vm("6.18", reload_frees_obsolete_roots=frees)
        prefault(vcpu, gpa, 0x1000)
        old_root = vcpu.root
        set_memory_region(kvm, 10, gpa, 0, HVA)      # delete: fast zap, root obsolete
        set_memory_region(kvm, 10, gpa, TEST_NPAGES * 4096, 0x7F0000000000)
        assert old_root.invalid and vcpu.requests == [KVM_REQ_MMU_FREE_OBSOLETE_ROOTS]
        if frees:
            assert prefault(vcpu, gpa, 0x1000).ret == 0
            assert vcpu.root is not old_root and old_root not in kvm.roots
        else:
            with pytest.raises(ModelHang, match="RET_PF_RETRY"):
                prefault(vcpu, gpa, 0x1000)


@pytest.mark.parametrize("r, policy, expect", [
    (RET_PF_FIXED, "6.18", 0), (RET_PF_SPURIOUS, "6.18", 0), (RET_PF_WRITE_PROTECTED, "6.18", 0),
    (RET_PF_EMULATE, "6.18", -ENOENT), (-EAGAIN, "6.18", -EAGAIN), (-EINTR, "6.17", -EINTR),
    (RET_PF_RETRY_INVALID_SLOT, "RET_PF_RETRY_INVALID_SLOT", -ENOENT),
    (RET_PF_RETRY, "drop-srcu", -EAGAIN), (RET_PF_RETRY, "drop-srcu+reload", -EAGAIN),
])
def test_kvm_tdp_map_page_results(r, policy, expect):
    kvm, vcpu, _ = vm(policy)
    assert tdp_map_page_errno(vcpu, r) == expect
    assert kvm.warnings == []


@pytest.mark.parametrize("r", [RET_PF_CONTINUE, RET_PF_INVALID, RET_PF_RETRY, 99])
def test_unexpected_results_warn_and_are_eio(r):
    kvm, vcpu, _ = vm("6.18")
    assert tdp_map_page_errno(vcpu, r) == -EIO
    assert len(kvm.warnings) == 1 and kvm.warnings[0].startswith("kvm_tdp_map_page: unexpected")


def test_the_range_is_copied_back_even_on_error():
    kvm, vcpu, gpa = vm()
    user = KvmPreFaultMemory(gpa + MB2, 0x2000)
    r = run_sequential(kvm_vcpu_ioctl_pre_fault_memory(vcpu, user))
    assert (r, user.gpa, user.size) == (0, gpa + MB2 + 0x1000, 0x1000)


# -- the userspace contract and the selftest, alone -------------------------

def test_userspace_retry_loop_stops_at_enoent():
    kvm, vcpu, gpa = vm()
    ret, range_, calls = prefault_until_done(vcpu, gpa + MB2 - 0x1000, 0x4000)
    assert ret == -ENOENT and range_.size == 0x2000
    assert [c[0] for c in calls] == [0, -ENOENT]


@pytest.mark.parametrize("policy", ["6.17", "6.18", "RET_PF_RETRY_INVALID_SLOT", "drop-srcu",
                                    "drop-srcu+reload", "6.18+request-break"])
def test_selftest_cases_alone_pass_on_every_policy(policy):
    outcomes = run_selftest_cases_in_order(policy)
    assert [(o.ret, o.size_left, len(o.calls), o.failure) for o in outcomes] == [
        (0, 0, 1, ""), (-ENOENT, 0x1000, 2, ""), (-ENOENT, 0x1000, 1, "")]
    for (off, size, left), fresh in zip(SELFTEST_CASES, range(3)):
        assert run_selftest_case(off, size, left, policy).failure == ""


def test_selftest_asserts_can_fail():
    kvm, vcpu, gpa = vm()
    out = run_sequential(pre_fault_memory(vcpu, gpa, MB2, 0x2000, 0))
    assert out.failure == "size left 0x1000, expected 0x0"
    out = run_sequential(pre_fault_memory(vcpu, gpa, 0, 0x1000, 0x1000))
    assert out.failure == "size left 0x0, expected 0x1000"


def test_describe_helpers():
    kvm, vcpu, gpa = vm()
    assert describe_vcpu(vcpu) == "root none, requests -, signal no"
    prefault(vcpu, gpa, 0x1000)
    assert describe_vcpu(vcpu) == "root #1, requests -, signal no"
    assert describe_mappings(vcpu.root) == f"{gpa >> 12:#x}:2M"
    assert describe_mappings(None) == "-"


# -- bad input to the Python API --------------------------------------------

def test_bad_python_input():
    kvm, vcpu, gpa = vm()
    with pytest.raises(ValueError, match="gpa must be in"):
        KvmPreFaultMemory(-1, 0x1000)
    with pytest.raises(TypeError, match="size must be an integer"):
        KvmPreFaultMemory(0, "0x1000")
    with pytest.raises(ValueError, match="flags must be in"):
        prefault(vcpu, 0, 0x1000, 1 << 64)
    with pytest.raises(TypeError, match="vcpu must be a KvmVcpu"):
        prefault(None, 0, 0x1000)
    with pytest.raises(TypeError, match="range must be a KvmPreFaultMemory"):
        run_sequential(kvm_vcpu_ioctl_pre_fault_memory(vcpu, (0, 0x1000)))
    with pytest.raises(ValueError, match="policy must be one of"):
        prefault_race("7.0")
    with pytest.raises(ValueError, match="writer must be one of"):
        prefault_race("6.18", "rename")
    with pytest.raises(ValueError, match="case must be in"):
        selftest_race(3)
    with pytest.raises(ValueError, match="guest_phys_bits must be in"):
        selftest_gpa(64)


# -- the console (pure function behind the widget) --------------------------

from kvmmu.viz import prefault as V          # noqa: E402
from kvmmu.exercises import prefault as EX   # noqa: E402


def test_console_steps_into_the_deadlock_and_refuses_blocked_steps():
    sched = ""
    for a in "AABBBBB":
        v = V.prefault_console(policy="6.17", schedule=sched, action=a)
        assert v.ok, v.message
        sched = v.schedule
    assert sched == "AABBBBB"
    assert v.field("SRCU readers") == "readers A (B waits)"
    assert "KVM_MEMSLOT_INVALID" in v.field("memslots")
    refused = V.prefault_console(policy="6.17", schedule=sched, action="B")
    assert not refused.ok and "blocked" in refused.message and refused.schedule == sched
    v = V.prefault_console(policy="6.17", schedule=sched, action="finish")
    assert v.field("verdict") == "DEADLOCK: nothing can run"
    after = V.prefault_console(policy="6.17", schedule=v.schedule, action="A")
    assert not after.ok and "deadlock" in after.message


def test_console_6_18_returns_eagain_with_the_range_unchanged():
    v = V.prefault_console(policy="6.18", schedule="AABBBBB", action="finish")
    assert v.field("A (prefault)") == \
        f"returned -EAGAIN; gpa={selftest_gpa():#x} size=0x200000"
    assert v.field("verdict") == "both finished; every check holds"
    assert "<table" in v.html() and "returned -EAGAIN" in v._repr_html_()


@pytest.mark.parametrize("kwargs, text", [
    (dict(offset_text="zz"), "offset 'zz' is not a number"),
    (dict(offset_text=""), "offset is empty"),
    (dict(size_text="-1"), "size must be in"),
    (dict(offset_text=str(1 << 70)), "offset must be in"),
    (dict(policy="4.0"), "policy must be one of"),
    (dict(policy=None), "policy must be one of"),
    (dict(zap="none"), "zap must be one of"),
    (dict(action="C"), "action must be one of"),
    (dict(schedule=5), "schedule and action must be text"),
    (dict(offset_text=None), "offset must be text"),
])
def test_console_never_raises_on_garbage(kwargs, text):
    v = V.prefault_console(**kwargs)
    assert not v.ok and text in v.message
    assert isinstance(repr(v), str) and isinstance(v.html(), str)


def test_console_keeps_the_valid_part_of_a_bad_schedule():
    v = V.prefault_console(policy="6.17", schedule="AXB?BBBBBBBBBB")
    assert not v.ok and v.schedule == "ABBBBB"
    v = V.prefault_console(offset_text="0x10", policy="6.18", action="finish")
    assert v.field("A (prefault)").startswith("returned -EINVAL")      # the ioctl's verdict


def test_timeline_rows_follow_srcu_and_the_slot():
    trace = ex_trace("6.17", "AABBBBBA")
    rows = V.race_timeline_rows(trace)
    assert rows[0][1:4] == ("A", "srcu_read_lock(kvm->srcu) = 0", True)
    assert rows[-1][4] is True and rows[-1][5] == "INVALID"      # B waits, slot INVALID
    assert [r[5] for r in rows[:2]] == ["valid", "valid"]


def ex_trace(policy, schedule):
    from kvmmu import explorer as ex
    return ex.run_schedule(prefault_race(policy, "delete", "one call", slot_zap_all=False),
                           schedule)


def test_figures_build(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = V.race_timeline([ex_trace("6.17", "AABBBBBA")], ["6.17"])
    assert len(fig.axes) == 1
    plt.close(fig)
    data = V.selftest_map_rows()
    assert data["cases"] == [(1, 0, 512, 0, "0", 1), (2, 512, 2, 1, "-ENOENT", 2),
                             (3, 513, 1, 1, "-ENOENT", 1)]
    assert data["mappings"] == [(0, 512, "2M"), (512, 1, "4K")]
    plt.close(V.selftest_map_figure())


# -- the seeded problems ----------------------------------------------------

def test_problems_are_reproducible_and_start_with_the_seed():
    for seed in (0, 7, 123):
        a, b = EX.problem(seed), EX.problem(seed)
        assert a == b and a.question.startswith(f"Problem {seed}.")
    assert len({EX.problem(s).question for s in range(30)}) > 25


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**9))
def test_the_worked_solution_agrees_with_the_model(seed):
    p = EX.problem(seed)
    if p.kind == "hang":
        assert p.solution().startswith("The call never returns")
        return
    rng = EX.random.Random(seed)
    policy = rng.choice(["6.17", "6.18", "6.18"])
    situation = rng.choice(list(EX.SITUATIONS))
    offset, size, flags = EX._pick_range(rng)
    _, v1, base = EX._vm(policy, situation)
    _, v2, _ = EX._vm(policy, situation)
    res = prefault(v1, base + offset, size, flags)
    ret, gpa, left, lines = EX.explain(v2, base + offset, size, flags)
    assert (ret, gpa, left) == (res.ret, res.gpa, res.size)
    assert v1.root == v2.root or v1.root.mappings == v2.root.mappings
    assert lines and all(isinstance(x, str) for x in lines)
    assert p.solution().splitlines()[0] == \
        f"ret = {EX.errno_name(res.ret)}, gpa = {res.gpa:#x}, size = {res.size:#x}."


def test_problem_rejects_bad_seeds():
    with pytest.raises(ValueError, match="seed must be in"):
        EX.problem(-1)
    with pytest.raises(TypeError, match="seed must be an integer"):
        EX.problem("7")
