"""KVM_PRE_FAULT_MEMORY alone: argument checks, progress accounting, every return path.

The ioctl is kvm_main's, the fault path mmu's with chapter 3's TDP MMU; the
selftest's VM and the userspace loop are chapter 6's cast
(kvmmu.scenarios.prefault).  Also the chapter's console, figures and
seeded problems.
"""
import pytest
from hypothesis import given, settings, strategies as st

from kvmmu.cpu import ModelHang, run_alone
from kvmmu.errno import (EAGAIN, EINTR, EINVAL, EIO, ENOENT, EOPNOTSUPP, RET_PF_CONTINUE,
                         RET_PF_EMULATE, RET_PF_FIXED, RET_PF_INVALID, RET_PF_RETRY,
                         RET_PF_RETRY_INVALID_SLOT, RET_PF_SPURIOUS, RET_PF_WRITE_PROTECTED,
                         ret_pf_name)
from kvmmu.host_mm import host_populate, host_translation
from kvmmu.kvm_host import KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, KVM_REQ_VM_DEAD, kvm_make_request
from kvmmu.kvm_main import (KVM_PRE_FAULT_MEMORY, KvmPreFaultMemory, kvm_create_vm,
                            kvm_vcpu_ioctl_pre_fault_memory, kvm_vcpu_pre_fault_memory,
                            kvm_vm_dead, kvm_vm_ioctl_create_vcpu, set_memory_region)
from kvmmu.levels import PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K
from kvmmu.memslots import KVM_MEMSLOT_INVALID
from kvmmu.mmu import _tdp_map_page_errno
from kvmmu.mmu_internal import kvm_mmu_max_mapping_level
from kvmmu.scenarios.prefault import (
    SELFTEST_CASES, SELFTEST_HVA, TEST_NPAGES, TEST_SIZE, PrefaultCalls, PrefaultResult,
    RaceConfig, describe_leaves, maps_only_slots_host_pages, pre_fault_memory, prefault,
    prefault_race, prefault_retry_loop, prefault_until_done, run_selftest_case,
    run_selftest_cases_in_order, selftest_gpa, selftest_race, selftest_vm)

U64 = (1 << 64) - 1
MB2 = 2 << 20


def vm(policy="6.18", backing="2M", **kw):
    return selftest_vm(policy, backing, **kw)


def leaves(vcpu):
    return vcpu.kvm.ept.live_leaves(vcpu.root)


def run_watching(kvm, gen, after=None):
    """Run CPU code alone; return (result, what each step did), calling after(what) each step."""
    done, value = [], None
    try:
        while True:
            op = gen.send(value)
            assert op.enabled is None or op.enabled(op.prim, op.args, "A", kvm), op.what()
            value = op.run(op.prim, op.args, "A", kvm)
            done.append(op.what())
            if after is not None:
                after(op.what())
    except StopIteration as stop:
        return stop.value, done


def chunks(vcpu, gpa, size):
    """Prefault alone; return (result, how many chunks the ioctl's loop ran)."""
    rng = KvmPreFaultMemory(gpa, size)
    r, done = run_watching(vcpu.kvm, kvm_vcpu_ioctl_pre_fault_memory(vcpu, rng))
    return r, rng, done.count("kvm_mmu_reload")


# -- constants --------------------------------------------------------------

def test_uapi_constants_and_the_selftest_slot():
    assert KVM_PRE_FAULT_MEMORY == 0xC040AED5
    assert TEST_NPAGES == 513 and TEST_SIZE == MB2 + 0x1000
    assert SELFTEST_CASES == ((0, MB2, 0), (MB2, 0x2000, 0x1000), (TEST_SIZE, 0x1000, 0x1000))
    assert selftest_gpa() % MB2 == 0 and selftest_gpa() == 0xFFFFC00000
    assert ret_pf_name(RET_PF_RETRY_INVALID_SLOT) == "RET_PF_RETRY_INVALID_SLOT"
    kvm, vcpu, gpa = vm()
    assert host_translation(kvm.mm, SELFTEST_HVA)[1] == PG_LEVEL_2M     # a THP behind it


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


@settings(max_examples=60, deadline=None)
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
    kvm, vcpu, gpa = vm()
    r, rng, n = chunks(vcpu, gpa, TEST_SIZE)
    assert (r, rng.gpa, rng.size) == (0, gpa + TEST_SIZE, 0)
    assert n == 2                                # two chunks: 2 MiB, then 4 KiB
    base, thp = gpa >> 12, host_translation(kvm.mm, SELFTEST_HVA)[0]
    # Real SPTEs in chapter 3's root, mapping the host's pages.
    assert leaves(vcpu) == [(base, PG_LEVEL_2M, thp), (base + 512, PG_LEVEL_4K, thp + 512)]
    assert kvm.warnings == ()


def test_progress_runs_to_the_end_of_the_huge_mapping_not_the_page():
    kvm, vcpu, gpa = vm()
    r, rng, n = chunks(vcpu, gpa + 0x1000, 0x3000)   # inside the first 2 MiB page
    assert (r, rng.size, n) == (0, 0, 1)         # min(size, end - gpa): one chunk did it all
    res = prefault(vcpu, gpa + MB2 - 0x1000, 0x2000)
    assert (res.ret, res.size) == (0, 0)         # last 4K of the huge page, then page 512


def test_4k_host_pages_map_page_by_page():
    kvm, vcpu, gpa = vm(backing="4K")
    r, rng, n = chunks(vcpu, gpa, 0x8000)
    assert (r, n) == (0, 8)
    assert {level for _, level, _ in leaves(vcpu)} == {PG_LEVEL_4K}


def test_a_1g_aligned_slot_backed_by_a_1g_page_maps_1g():
    kvm = kvm_create_vm()
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    assert set_memory_region(kvm, 1, 1 << 30, 1 << 30, 0x7F0040000000) == 0
    host_populate(kvm.mm, 0x7F0040000000, 1 << 18, "1G")
    res = prefault(vcpu, (1 << 30) + 0x5000, 0x10000)
    assert (res.ret, res.size) == (0, 0)
    assert [(g, lv) for g, lv, _ in leaves(vcpu)] == [((1 << 30) >> 12, PG_LEVEL_1G)]


def test_max_mapping_level_of_the_selftest_slot():
    # A 513-page slot at a 2M-aligned gpa: page 512 is 4K-only.
    kvm, vcpu, gpa = vm()
    slot = kvm.kvm_memslots().slots[0]
    base = gpa >> 12
    for gfn, level in ((base, PG_LEVEL_2M), (base + 511, PG_LEVEL_2M), (base + 512, PG_LEVEL_4K)):
        assert run_alone(kvm, kvm_mmu_max_mapping_level(kvm, slot, gfn)) == level


@settings(max_examples=25, deadline=None)
@given(st.integers(0, TEST_NPAGES - 1), st.integers(1, 64), st.sampled_from(["4K", "2M"]))
def test_progress_adds_up_and_each_chunk_ends_at_a_mapping_boundary(first, npages, backing):
    npages = min(npages, TEST_NPAGES - first)
    kvm, vcpu, gpa = vm(backing=backing)
    r, rng, n = chunks(vcpu, gpa + first * 4096, npages * 4096)
    assert (r, rng.gpa, rng.size) == (0, gpa + (first + npages) * 4096, 0)
    # one chunk per leaf installed, and the leaves cover the range
    assert n == len(leaves(vcpu))
    covered = set()
    for g, level, _ in leaves(vcpu):
        covered.update(range(g, g + (512 if level == PG_LEVEL_2M else 1)))
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
    before = leaves(vcpu)
    res = prefault(vcpu, gpa + 0x2000, 0x1000)
    assert (res.ret, res.size) == (0, 0)
    assert leaves(vcpu) == before


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
    kvm2, vcpu2, gpa2 = vm(backing="4K")

    def signal_after_the_first_fault(what):
        if what == "kvm_tdp_mmu_page_fault":
            vcpu2.signal_pending = True
    rng = KvmPreFaultMemory(gpa2, 0x3000)
    r, _ = run_watching(kvm2, kvm_vcpu_ioctl_pre_fault_memory(vcpu2, rng),
                        signal_after_the_first_fault)
    assert (r, rng.gpa, rng.size) == (0, gpa2 + 0x1000, 0x2000)


@pytest.mark.parametrize("setup", ["not allowed", "shadow paging", "nested guest"])
def test_eopnotsupp(setup):
    kvm, vcpu, gpa = vm(pre_fault_allowed=setup != "not allowed")
    if setup == "shadow paging":
        vcpu.tdp = False
    elif setup == "nested guest":
        vcpu.guest_mode = True
    assert prefault(vcpu, gpa, 0x1000).ret == -EOPNOTSUPP


def test_eio_from_the_ioctl_gate_and_from_a_dying_vm_mid_call():
    kvm, vcpu, gpa = vm()
    kvm_vm_dead(kvm)
    assert prefault(vcpu, gpa, 0x1000).ret == -EIO
    kvm2, vcpu2, gpa2 = vm()
    kvm_make_request(KVM_REQ_VM_DEAD, vcpu2)      # the request, not yet the gate
    range_ = KvmPreFaultMemory(gpa2, 0x1000)
    assert run_alone(kvm2, kvm_vcpu_pre_fault_memory(vcpu2, range_)) == -EIO
    assert kvm2.warnings == ("kvm_vcpu_pre_fault_memory: r = -EIO",)


def _invalid_slot_vm(policy):
    # The first swap of a deletion is done: the active set holds the INVALID copy.
    kvm, vcpu, gpa = vm(policy)
    active = kvm.kvm_memslots()
    slot = active.slots[0]
    active.replace(slot, slot.with_flags(KVM_MEMSLOT_INVALID))
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
        set_memory_region(kvm, 10, gpa, 0, SELFTEST_HVA)      # delete: fast zap, root obsolete
        set_memory_region(kvm, 10, gpa, TEST_NPAGES * 4096, SELFTEST_HVA)
        assert kvm.ept.sps[old_root].invalid and leaves(vcpu) == []
        assert vcpu.requests == (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,)
        if frees:
            assert prefault(vcpu, gpa, 0x1000).ret == 0
            assert vcpu.root != old_root and old_root not in kvm.ept.roots
            assert len(leaves(vcpu)) == 1
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
    assert _tdp_map_page_errno(vcpu, r) == expect
    assert kvm.warnings == ()


@pytest.mark.parametrize("r", [RET_PF_CONTINUE, RET_PF_INVALID, RET_PF_RETRY, 99])
def test_unexpected_results_warn_and_are_eio(r):
    kvm, vcpu, _ = vm("6.18")
    assert _tdp_map_page_errno(vcpu, r) == -EIO
    assert len(kvm.warnings) == 1 and kvm.warnings[0].startswith("kvm_tdp_map_page: unexpected")


def test_the_range_is_copied_back_even_on_error():
    kvm, vcpu, gpa = vm()
    user = KvmPreFaultMemory(gpa + MB2, 0x2000)
    r = run_alone(kvm, kvm_vcpu_ioctl_pre_fault_memory(vcpu, user))
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
    for off, size, left in SELFTEST_CASES:
        assert run_selftest_case(off, size, left, policy).failure == ""


def test_selftest_asserts_can_fail():
    kvm, vcpu, gpa = vm()
    out = run_alone(kvm, pre_fault_memory(vcpu, gpa, MB2, 0x2000, 0))
    assert out.failure == "size left 0x1000, expected 0x0"
    out = run_alone(kvm, pre_fault_memory(vcpu, gpa, 0, 0x1000, 0x1000))
    assert out.failure == "size left 0x0, expected 0x1000"


def test_describe_leaves():
    kvm, vcpu, gpa = vm()
    assert describe_leaves(vcpu) == "-"
    prefault(vcpu, gpa, 0x1000)
    assert describe_leaves(vcpu) == f"{gpa >> 12:#x}:2M"


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
    with pytest.raises(TypeError, match="user_range must be a KvmPreFaultMemory"):
        run_alone(kvm, kvm_vcpu_ioctl_pre_fault_memory(vcpu, (0, 0x1000)))
    with pytest.raises(TypeError, match="vcpu must be a KvmVcpu"):
        next(prefault_retry_loop("vcpu", 0, 0x1000))       # before its first step
    with pytest.raises(ValueError, match="shared must be|expected_left must be in"):
        next(pre_fault_memory(vcpu, gpa, 0, 0x1000, -1))
    with pytest.raises(ValueError, match="policy must be one of"):
        prefault_race("7.0")
    with pytest.raises(ValueError, match="writer must be one of"):
        prefault_race("6.18", "rename")
    with pytest.raises(ValueError, match="move.*race"):
        prefault_race("6.18", "move", slot="selftest")
    with pytest.raises(ValueError, match="case must be in"):
        selftest_race(3)
    with pytest.raises(ValueError, match="guest_phys_bits must be in"):
        selftest_gpa(64)
    with pytest.raises(ValueError, match="backing must be one of"):
        selftest_vm("6.18", "1G")
    with pytest.raises(TypeError, match="kvm must be a Kvm"):
        maps_only_slots_host_pages(None)
    with pytest.raises(ValueError, match="slot must be one of"):
        RaceConfig(slot="tdx")
    with pytest.raises(ValueError, match="ret must be in"):
        PrefaultResult(1, 0, 0)
    with pytest.raises(TypeError, match="rets must be a tuple"):
        PrefaultCalls(0, 0, 0, [0])


def test_bad_input_to_the_views_and_the_walk():
    kvm, vcpu, gpa = vm()
    with pytest.raises(TypeError, match="trace must be"):
        V.race_timeline_rows("AAB")
    with pytest.raises(TypeError, match="traces must be"):
        V.race_timeline([])
    with pytest.raises(TypeError, match="vcpu must be a KvmVcpu"):
        EX.explain(None, gpa, 0x1000, 0)
    with pytest.raises(ValueError, match="size must be in"):
        EX.explain(vcpu, gpa, -1, 0)


# -- the console (pure function behind the widget) --------------------------

from kvmmu.viz import prefault as V          # noqa: E402
from kvmmu.exercises import prefault as EX   # noqa: E402


def _into_the_deadlock(policy):
    """A enters SRCU (two steps), then B runs until it blocks: the chapter's schedule."""
    v = V.prefault_console(policy=policy, action="A")
    v = V.prefault_console(policy=policy, schedule=v.schedule, action="A")
    assert v.ok and "srcu_read_lock" in v.message
    while True:
        nxt = V.prefault_console(policy=policy, schedule=v.schedule, action="B")
        if not nxt.ok:
            return v, nxt
        v = nxt


def test_console_steps_into_the_deadlock_and_refuses_blocked_steps():
    v, refused = _into_the_deadlock("6.17")
    assert v.schedule == "AABBBBBB"
    assert v.field("SRCU readers") == "readers A (B waits)"
    assert " INVALID" in v.field("memslots")
    assert "blocked" in refused.message and refused.schedule == v.schedule
    v = V.prefault_console(policy="6.17", schedule=v.schedule, action="finish")
    assert v.field("verdict") == "DEADLOCK: nothing can run"
    after = V.prefault_console(policy="6.17", schedule=v.schedule, action="A")
    assert not after.ok and "deadlock" in after.message


def test_console_6_18_returns_eagain_with_the_range_unchanged():
    v, _ = _into_the_deadlock("6.18")
    v = V.prefault_console(policy="6.18", schedule=v.schedule, action="finish")
    assert v.field("A (prefault)") == \
        f"returned -EAGAIN; gpa={selftest_gpa():#x} size=0x200000"
    assert v.field("verdict") == "both finished; every check holds"
    assert "(obsolete)" in v.field("vCPU")          # the fast zap made the root obsolete
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
    v = V.prefault_console(policy="6.17", schedule="AAXB?BBBBBBBBBBB")
    assert not v.ok and v.schedule == "AABBBBBB"
    v = V.prefault_console(offset_text="0x10", policy="6.18", action="finish")
    assert v.field("A (prefault)").startswith("returned -EINVAL")      # the ioctl's verdict


def ex_trace(policy, schedule):
    from kvmmu import explorer as ex
    return ex.run_schedule(prefault_race(policy, "delete", "one call", slot_zap_all=False),
                           schedule)


def test_timeline_rows_follow_srcu_and_the_slot():
    trace = ex_trace("6.17", "AABBBBBBA")
    rows = V.race_timeline_rows(trace)
    assert rows[1][1:4] == ("A", "srcu_read_lock(kvm->srcu) = 0", True)
    assert rows[-1][4] is True and rows[-1][5] == "INVALID"      # B waits, slot INVALID
    assert [r[5] for r in rows[:3]] == ["valid", "valid", "valid"]


def test_figures_build():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = V.race_timeline([ex_trace("6.17", "AABBBBBBA")], ["6.17"])
    assert len(fig.axes) == 1
    plt.close(fig)
    data = V.selftest_map_rows()
    assert data["cases"] == [(1, 0, 512, 0, "0", 1), (2, 512, 2, 1, "-ENOENT", 2),
                             (3, 513, 1, 1, "-ENOENT", 1)]
    assert data["mappings"] == [(0, 512, "2M"), (512, 1, "4K")]
    plt.close(V.selftest_map_figure())


# -- the seeded problems ----------------------------------------------------

def test_call_problems_agree_with_explain():
    # explain() walks the same loop as the ioctl (the contract's own tests
    # are in tests/test_exercises_prefault.py).
    for seed in range(20):
        p = EX.problem(seed, "call")
        if p.answer()["ret"] == "never returns":
            continue
        args = dict(p.params)
        _, v1, base = EX._vm(args["policy"].split()[0], args["situation"])
        gpa = int(args["gpa"].split()[0], 16)
        ret, gpa_after, left, lines = EX.explain(v1, gpa, args["size"], args["flags"])
        assert (EX.errno_name(ret), gpa_after, left) == tuple(p.answer().values())
        assert lines and all(len(x) <= 84 for x in lines)


def test_problem_rejects_bad_seeds():
    with pytest.raises(ValueError, match="seed must be in"):
        EX.problem(-1)
    with pytest.raises(ValueError, match="seed must be in"):
        EX.problem(1 << 32)
    with pytest.raises(TypeError, match="seed must be an integer"):
        EX.problem("7")


def test_chapter_figures_are_legible_in_the_column():
    # The race timeline is chapter 6's figure: drawn for the column, no text
    # smaller than the book's minimum on screen.
    import matplotlib.pyplot as plt

    from kvmmu.viz.style import COLUMN_IN, legibility

    hang = ex_trace("6.17", "AABBBBBBA")
    fig = V.race_timeline([hang, hang], ["6.17", "again"])
    assert legibility(fig) == [] and fig.get_figwidth() == COLUMN_IN
    plt.close(fig)
