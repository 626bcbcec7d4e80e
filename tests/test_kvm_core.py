"""The one VM and the one fault path: kvm_host, kvm_main, mmu, cpu, guest_memfd."""
import copy

import pytest

from kvmmu.cpu import ModelHang, ZoomError, cpu_code, run_alone, step_when
from kvmmu.errno import EAGAIN, EINVAL, ENOENT, RET_PF_EMULATE, RET_PF_FIXED, RET_PF_RETRY
from kvmmu.explorer import Actor, Invariant, Scenario, explore, step
from kvmmu.guest_memfd import kvm_gmem_create, kvm_gmem_punch_hole
from kvmmu.host_mm import host_populate, host_translation, migrate_page
from kvmmu.kvm_host import (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, Kvm, KvmConfig,
                            kvm_check_request, kvm_make_request, kvm_test_request,
                            mmu_invalidate_retry_gfn)
from kvmmu.kvm_main import (KvmPreFaultMemory, kvm_create_vm, kvm_vcpu_ioctl_pre_fault_memory,
                            kvm_vm_ioctl_create_vcpu, set_memory_region)
from kvmmu.levels import PG_LEVEL_2M, PG_LEVEL_4K
from kvmmu.memslots import (KVM_MEM_GUEST_MEMFD, KVM_MEM_READONLY,
                            KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS)
from kvmmu.mmu import kvm_mmu_do_page_fault, kvm_mmu_reload
from kvmmu.pferr import PFERR_GUEST_FINAL_MASK, PFERR_PRIVATE_ACCESS, PFERR_WRITE_MASK
from kvmmu.x86 import vcpu_run

HVA = 0x7F0000000000


def vm(**config):
    kvm = kvm_create_vm(**config)
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    return kvm, vcpu


# ---------------------------------------------------------------------------
# CPU code: run alone, zoom
# ---------------------------------------------------------------------------
@cpu_code
def _two_steps(kvm):
    a = yield from step("one", lambda: 1)
    b = yield from step("two", lambda: 2)
    return a + b


@cpu_code
def _takes_mmu_lock(kvm):
    yield from kvm.mmu_lock.write_lock()
    yield from kvm.mmu_lock.write_unlock()
    return "done"


def test_run_alone_runs_every_step_and_returns():
    kvm, _ = vm()
    assert run_alone(kvm, _two_steps(kvm)) == 3


def test_run_alone_says_what_would_wait_forever():
    kvm, _ = vm()
    run_alone(kvm, kvm.mmu_lock.read_lock())
    with pytest.raises(ModelHang, match="mmu_lock"):
        run_alone(kvm, _takes_mmu_lock(kvm), cpu="B")


def test_zoom_makes_a_function_one_step_with_the_same_result():
    kvm = kvm_create_vm(zoom={"_two_steps"})
    gen = _two_steps(kvm)
    op = next(gen)
    assert op.what() == "_two_steps"
    with pytest.raises(StopIteration) as stop:
        gen.send(op.run(op.prim, op.args, "A", kvm))
    assert stop.value.value == 3


def test_a_zoomed_function_may_not_wait_inside_its_step():
    kvm = kvm_create_vm(zoom={"_takes_mmu_lock"})
    run_alone(kvm, kvm.mmu_lock.read_lock(), cpu="B")
    with pytest.raises(ZoomError, match="mmu_lock"):
        run_alone(kvm, _takes_mmu_lock(kvm))


class _Box:
    def __init__(self):
        self.value = None


@cpu_code
def _fill_box(kvm, box):
    box.value = yield from step("read seq", lambda: kvm.mmu_invalidate_seq)


def _uses_box(kvm):
    box = _Box()
    yield from _fill_box(kvm, box)
    yield from step("after", lambda: None)
    return box.value


def test_a_zoomed_step_hands_its_argument_changes_back_through_its_result():
    # The caller's object takes the zoomed function's changes from the step's
    # result, so an actor rebuilt from the results its steps returned (as the
    # snapshot engine rebuilds one) holds the same object.
    def world():
        kvm = kvm_create_vm(zoom={"_fill_box"})
        kvm.mmu_invalidate_seq = 7
        return kvm
    kvm = world()
    gen = _uses_box(kvm)
    op = next(gen)
    result = op.run(op.prim, op.args, "A", kvm)
    gen.send(result)
    rebuilt = _uses_box(world())
    next(rebuilt)
    then = rebuilt.send(copy.deepcopy(result))       # the zoomed step is not run again
    with pytest.raises(StopIteration) as stop:
        rebuilt.send(then.run(then.prim, then.args, "A", kvm))
    assert stop.value.value == 7
    sc = Scenario("zoomed box", world, [Actor("A", "a", _uses_box), Actor("B", "b", _uses_box)],
                  final_check=lambda w, results: results == {"A": 7, "B": 7})
    res = explore(sc, stop_at_first=False)
    assert not res.violated and res.method == "snapshot", res.note


def test_step_when_waits_for_its_condition():
    kvm, _ = vm()
    gen = step_when("when seq > 0", lambda w: w.mmu_invalidate_seq > 0, lambda: "ran")
    with pytest.raises(ModelHang) as hang:
        run_alone(kvm, gen)
    assert str(hang.value) == "would wait forever at 'when seq > 0'"   # the label, once
    kvm.mmu_invalidate_seq = 1
    assert run_alone(kvm, step_when("when", lambda w: w.mmu_invalidate_seq > 0,
                                    lambda: "ran")) == "ran"


def test_run_alone_rejects_what_is_not_cpu_code():
    kvm, _ = vm()
    with pytest.raises(TypeError, match="world"):
        run_alone("kvm", _two_steps(kvm))
    with pytest.raises(TypeError, match="gen"):
        run_alone(kvm, 3)


# ---------------------------------------------------------------------------
# The VM
# ---------------------------------------------------------------------------
def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="prefault_policy"):
        KvmConfig(prefault_policy="7.0")
    with pytest.raises(ValueError, match="root_level"):
        KvmConfig(root_level=3)
    with pytest.raises(TypeError, match="zoom"):
        KvmConfig(zoom="kvm_tdp_mmu_map")


def test_requests_are_posted_tested_and_cleared():
    kvm, vcpu = vm()
    assert not kvm_test_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu)
    kvm_make_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu)
    assert kvm_test_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu)
    assert kvm_check_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu)
    assert not kvm_check_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu)
    with pytest.raises(ValueError, match="req"):
        kvm_make_request("KVM_REQ_NOPE", vcpu)


def test_memslot_create_bumps_the_generation_by_the_address_spaces():
    kvm, _ = vm(nr_as_ids=2)
    assert set_memory_region(kvm, 1, 0x100000, 0x2000, HVA) == 0
    assert kvm.kvm_memslots(0).generation == 2
    assert not kvm.kvm_memslots(0).generation & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
    assert set_memory_region(kvm, 1, 0x100000, 0, HVA) == 0      # delete: two swaps
    assert kvm.kvm_memslots(0).generation == 6
    assert kvm.kvm_memslots(0).slots == ()


def test_memslot_errors_are_errnos():
    kvm, _ = vm()
    assert set_memory_region(kvm, 1, 0x100001, 0x2000, HVA) == -EINVAL     # unaligned
    assert set_memory_region(kvm, 1, 0x100000, 0, HVA) == -EINVAL          # no such slot
    assert set_memory_region(kvm, 1, 0x100000, 0x2000, HVA) == 0
    assert set_memory_region(kvm, 2, 0x101000, 0x2000, HVA + 0x10000) < 0  # overlaps


# ---------------------------------------------------------------------------
# The fault path
# ---------------------------------------------------------------------------
def test_a_guest_access_faults_in_through_the_host_mapping():
    kvm, vcpu = vm()
    set_memory_region(kvm, 1, 0x200000, 2 << 20, HVA + (2 << 20))
    host_populate(kvm.mm, HVA + (2 << 20), 512, "2M")
    out = run_alone(kvm, vcpu_run(vcpu, 0x200000 + 0x5000))
    pfn, level = host_translation(kvm.mm, HVA + (2 << 20) + 0x5000)
    assert out == f"hit {pfn:#x}" and level == PG_LEVEL_2M
    # gfn and hva agree modulo 2M and the host maps a THP: one 2M leaf.
    [(gfn, leaf_level, leaf_pfn)] = kvm.ept.live_leaves(vcpu.root)
    assert (gfn, leaf_level, leaf_pfn) == (0x200, PG_LEVEL_2M, pfn - 5)
    assert kvm.warnings == ()


def test_a_misaligned_slot_maps_4k_even_over_a_thp():
    kvm, vcpu = vm()
    set_memory_region(kvm, 1, 0x100000, 2 << 20, HVA)
    host_populate(kvm.mm, HVA, 512, "2M")
    run_alone(kvm, vcpu_run(vcpu, 0x100000))
    assert [lv for _, lv, _ in kvm.ept.live_leaves(vcpu.root)] == [PG_LEVEL_4K]


def test_a_gpa_without_a_slot_is_emulated_as_mmio():
    kvm, vcpu = vm()
    assert run_alone(kvm, vcpu_run(vcpu, 0xFEE00000)) == "KVM_EXIT_MMIO"


def test_a_write_to_a_read_only_slot_is_emulated():
    kvm, vcpu = vm()
    set_memory_region(kvm, 1, 0x100000, 0x1000, HVA, flags=KVM_MEM_READONLY)
    kvm_mmu_reload(vcpu)
    r, _ = run_alone(kvm, kvm_mmu_do_page_fault(vcpu, 0x100000,
                                                PFERR_GUEST_FINAL_MASK | PFERR_WRITE_MASK,
                                                False))
    assert r == RET_PF_EMULATE
    assert run_alone(kvm, vcpu_run(vcpu, 0x100000)).startswith("hit ")


def test_a_fault_during_an_invalidation_retries():
    kvm, vcpu = vm()
    set_memory_region(kvm, 1, 0x100000, 0x1000, HVA)
    kvm_mmu_reload(vcpu)
    kvm.mmu_invalidate_in_progress = 1
    kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = 0x100, 0x101
    r, _ = run_alone(kvm, kvm_mmu_do_page_fault(vcpu, 0x100000, PFERR_GUEST_FINAL_MASK, False))
    assert r == RET_PF_RETRY
    kvm.mmu_invalidate_in_progress = 0
    kvm.mmu_invalidate_seq += 1
    r, _ = run_alone(kvm, kvm_mmu_do_page_fault(vcpu, 0x100000, PFERR_GUEST_FINAL_MASK, False))
    assert r == RET_PF_FIXED


def test_mmu_invalidate_retry_gfn_follows_the_kernel_rules():
    kvm, _ = vm()
    run_alone(kvm, kvm.mmu_lock.read_lock())
    assert mmu_invalidate_retry_gfn(kvm, 0, 0x100) == 0
    kvm.mmu_invalidate_seq = 1
    assert mmu_invalidate_retry_gfn(kvm, 0, 0x100) == 1
    kvm.mmu_invalidate_in_progress = 1
    kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = 0x200, 0x300
    assert mmu_invalidate_retry_gfn(kvm, 1, 0x100) == 0
    assert mmu_invalidate_retry_gfn(kvm, 1, 0x200) == 1
    assert kvm.warnings == ()


def test_the_notifier_zaps_what_the_host_moves_and_the_refault_sees_the_new_page():
    kvm, vcpu = vm()
    set_memory_region(kvm, 1, 0x100000, 0x4000, HVA)
    host_populate(kvm.mm, HVA, 4, "4K")
    run_alone(kvm, vcpu_run(vcpu, 0x102000))
    seq = kvm.mmu_invalidate_seq
    new = run_alone(kvm, migrate_page(kvm.mm, HVA + 0x2000))
    assert kvm.mmu_invalidate_seq == seq + 1
    assert kvm.ept.live_leaves(vcpu.root) == []
    assert kvm.tlbs.tlb[0] == {}
    assert run_alone(kvm, vcpu_run(vcpu, 0x102000)) == f"hit {new:#x}"


def test_private_memory_comes_from_guest_memfd_and_a_punched_hole_zaps_it():
    kvm, vcpu = vm()
    gmem = kvm_gmem_create(kvm, 4)
    assert set_memory_region(kvm, 1, 0x100000, 0x4000, HVA, flags=KVM_MEM_GUEST_MEMFD,
                             guest_memfd=gmem.name) == 0
    kvm.memslot_state.private = frozenset(range(0x100, 0x104))
    kvm_mmu_reload(vcpu)
    r, _ = run_alone(kvm, kvm_mmu_do_page_fault(
        vcpu, 0x101000, PFERR_GUEST_FINAL_MASK | PFERR_PRIVATE_ACCESS, False))
    assert r == RET_PF_FIXED
    [(gfn, _, pfn)] = kvm.ept.live_leaves(vcpu.root)
    folio = gmem.folio_at(1)
    assert (gfn, pfn) == (0x101, folio.pfn) and folio.holders == {"filemap": 1}
    run_alone(kvm, kvm_gmem_punch_hole(kvm, gmem, 0, 4))
    assert kvm.ept.live_leaves(vcpu.root) == [] and gmem.folio_at(1) is None
    assert kvm.mmu_invalidate_seq == 1 and kvm.warnings == ()


def test_a_shared_access_to_a_private_gfn_is_efault():
    kvm, vcpu = vm()
    gmem = kvm_gmem_create(kvm, 1)
    set_memory_region(kvm, 1, 0x100000, 0x1000, HVA, flags=KVM_MEM_GUEST_MEMFD,
                      guest_memfd=gmem.name)
    kvm.memslot_state.private = frozenset({0x100})
    assert run_alone(kvm, vcpu_run(vcpu, 0x100000)) == "-EFAULT"


# ---------------------------------------------------------------------------
# Prefault, and a slot deleted under it
# ---------------------------------------------------------------------------
def test_prefault_maps_to_the_end_of_the_huge_page():
    kvm, vcpu = vm()
    set_memory_region(kvm, 10, 0x40000000, (2 << 20) + 0x1000, HVA)
    host_populate(kvm.mm, HVA, 513, "2M")
    rng = KvmPreFaultMemory(0x40000000 + 0x3000, 0x1000)
    assert run_alone(kvm, kvm_vcpu_ioctl_pre_fault_memory(vcpu, rng)) == 0
    assert (rng.gpa, rng.size) == (0x40001000 + 0x3000, 0)      # one page asked, one given
    rng = KvmPreFaultMemory(0x40200000, 0x2000)                  # the slot's last page, then none
    assert run_alone(kvm, kvm_vcpu_ioctl_pre_fault_memory(vcpu, rng)) == 0
    assert rng.size == 0x1000
    assert run_alone(kvm, kvm_vcpu_ioctl_pre_fault_memory(vcpu, rng)) == -ENOENT


def _prefault_vs_delete(policy):
    def world():
        kvm = kvm_create_vm(prefault_policy=policy,
                            zoom={"kvm_tdp_mmu_page_fault", "kvm_mmu_zap_all_fast"})
        kvm_vm_ioctl_create_vcpu(kvm)
        set_memory_region(kvm, 1, 0x100000, 0x2000, HVA)
        host_populate(kvm.mm, HVA, 2, "4K")
        return kvm

    def prefault(w):
        rng = KvmPreFaultMemory(0x100000, 0x2000)
        return (yield from kvm_vcpu_ioctl_pre_fault_memory(w.vcpus[0], rng))

    def delete(w):
        from kvmmu.kvm_main import KvmUserspaceMemoryRegion, kvm_set_memory_region
        return (yield from kvm_set_memory_region(w, KvmUserspaceMemoryRegion(1, 0, 0x100000,
                                                                            0, HVA)))
    return Scenario(f"prefault vs delete, {policy}", world,
                    [Actor("A", "prefault", prefault), Actor("B", "delete", delete)],
                    invariants=[Invariant("no warning", lambda w: not w.warnings)])


def test_the_617_prefault_deadlocks_against_a_slot_delete():
    res = explore(_prefault_vs_delete("6.17"))
    assert res.violated and res.invariant == "deadlock"
    assert res.method == "snapshot"


def test_the_618_fix_still_hangs_on_a_root_made_obsolete_after_the_reload():
    # The chapter 6 model finding: kvm_tdp_map_page() never reloads the root.
    res = explore(_prefault_vs_delete("6.18"), stop_at_first=False)
    assert res.invariant == "deadlock"
    trace = res.counterexample
    labels = [s.label for s in trace.steps]
    assert labels.index("kvm_mmu_reload -> 0") < labels.index("kvm_mmu_zap_all_fast")


def test_the_experiment_that_breaks_on_the_request_never_hangs():
    res = explore(_prefault_vs_delete("6.18+request-break"), stop_at_first=False)
    assert not res.violated, res.summary()


def test_prefault_without_a_race_gives_eagain_only_on_an_invalid_slot():
    kvm, vcpu = vm()
    set_memory_region(kvm, 1, 0x100000, 0x1000, HVA)
    slot = kvm.kvm_memslots().slots[0]
    kvm.kvm_memslots().replace(slot, slot.with_flags(slot.flags | (1 << 16)))
    rng = KvmPreFaultMemory(0x100000, 0x1000)
    assert run_alone(kvm, kvm_vcpu_ioctl_pre_fault_memory(vcpu, rng)) == -EAGAIN


def test_a_kvm_world_is_explored_by_the_snapshot_engine():
    def world():
        kvm = kvm_create_vm()
        kvm_vm_ioctl_create_vcpu(kvm)
        set_memory_region(kvm, 1, 0x200000, 0x4000, HVA + (2 << 20))
        host_populate(kvm.mm, HVA + (2 << 20), 4, "4K")
        return kvm

    def maps_what_the_host_maps(kvm):
        for root in kvm.ept.roots:
            for gfn, _, pfn in kvm.ept.live_leaves(root):
                found = host_translation(kvm.mm, HVA + (2 << 20) + ((gfn - 0x200) << 12))
                if found is None or found[0] != pfn:
                    return False
        return True
    sc = Scenario("fault vs migrate", world,
                  [Actor("A", "vcpu", lambda w: vcpu_run(w.vcpus[0], 0x203000)),
                   Actor("B", "host", lambda w: migrate_page(w.mm, HVA + (2 << 20) + 0x3000))],
                  invariants=[Invariant("KVM maps what the host maps", maps_what_the_host_maps)])
    res = explore(sc, stop_at_first=False)
    assert not res.violated and res.method == "snapshot", res.note
    assert isinstance(sc.world(), Kvm)
