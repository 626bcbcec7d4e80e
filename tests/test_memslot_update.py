"""The memslot update flow (kvm_main): two swaps for delete/move, generations, INVALID, the zap."""
import pytest
from hypothesis import given, settings, strategies as st

from kvmmu import explorer as ex
from kvmmu.cpu import ModelHang, run_alone
from kvmmu.errno import EEXIST, EINVAL
from kvmmu.guest_memfd import kvm_gmem_create
from kvmmu.host_mm import host_populate
from kvmmu.kvm_host import KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, KvmConfig
from kvmmu.kvm_main import (KVM_MR_CREATE, KvmUserspaceMemoryRegion, describe_generation,
                            kvm_create_vm, kvm_set_memory_region, kvm_set_memslot,
                            kvm_swap_active_memslots, kvm_vm_ioctl_create_vcpu,
                            set_memory_region)
from kvmmu.memslots import (KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
                            KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS, KVM_MEMSLOT_INVALID,
                            KVM_USER_MEM_SLOTS, describe_slot_flags)
from kvmmu.mmu import kvm_arch_flush_shadow_memslot
from kvmmu.scenarios.prefault import (RACE_GPA, RACE_HVA, memslot_update_alone, prefault,
                                      race_vm)

IP = KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
HVA = 0x7F0000000000


def watched(kvm, gen):
    """Run CPU code alone; return (result, [(step, active generation, slot flags)])."""
    log, value = [], None
    try:
        while True:
            op = gen.send(value)
            value = op.run(op.prim, op.args, "A", kvm)
            active = kvm.kvm_memslots(0)
            log.append((op.what(), active.generation, tuple(s.flags for s in active.slots)))
    except StopIteration as stop:
        return stop.value, log


def update(kvm, slot, gpa, size, hva, flags=0):
    mem = KvmUserspaceMemoryRegion(slot, flags, gpa, size, hva)
    return watched(kvm, kvm_set_memory_region(kvm, mem))


def swaps(log):
    """The generations each swap published and finished with."""
    return [(what, gen, flags) for what, gen, flags in log
            if what.startswith(("publish memslots", "generation =", "kvm_mmu_zap_all_fast"))]


def both_sets(kvm, as_id=0):
    return [[(s.id, s.base_gfn, s.npages, s.flags) for s in m.slots]
            for m in kvm.memslot_state.sets[as_id]]


# -- the happy paths ---------------------------------------------------------

def test_create_is_one_swap():
    kvm = kvm_create_vm()
    r, log = update(kvm, 10, 0x100000, 0x2000, HVA)
    assert r == 0 and kvm.kvm_memslots().generation == 1
    assert [g for _, g, _ in swaps(log)] == [IP | 0, 1]     # published in progress, then final
    a, b = both_sets(kvm)
    assert a == b == [(10, 0x100, 2, 0)]         # both sets agree afterwards


def test_delete_is_two_swaps_with_invalid_in_between():
    kvm = kvm_create_vm(zoom={"kvm_mmu_zap_all_fast"})
    set_memory_region(kvm, 10, 0x100000, 0x2000, HVA)
    r, log = update(kvm, 10, 0x100000, 0, HVA)
    assert r == 0
    # g -> g|IP (slot INVALID) -> g+n -> zap -> (g+n)|IP (slot gone) -> g+2n
    assert swaps(log) == [
        ("publish memslots, gen g|IN_PROGRESS", IP | 1, (KVM_MEMSLOT_INVALID,)),
        ("generation = g + nr_as_ids", 2, (KVM_MEMSLOT_INVALID,)),
        ("kvm_mmu_zap_all_fast", 2, (KVM_MEMSLOT_INVALID,)),
        ("publish memslots, gen g|IN_PROGRESS", IP | 2, ()),
        ("generation = g + nr_as_ids", 3, ())]
    assert both_sets(kvm) == [[], []]


def test_the_deletion_alone_step_by_step():
    # The chapter's table: every step of B, the memslots as the explorer shows them.
    trace = ex.run_schedule(memslot_update_alone("delete"), "", complete=True)
    assert trace.results == {"B": 0}
    text = [s.state["memslots"] for s in trace.steps]
    assert text[0] == "as 0: gen 1, slots 1@0x100+2"
    assert "as 0: gen 1|IN_PROGRESS, slots 1@0x100+2 INVALID" in text
    assert text[-1] == "as 0: gen 3, slots none"


def test_move_keeps_the_slot_invalid_until_the_second_swap():
    kvm = kvm_create_vm()
    set_memory_region(kvm, 3, 0x100000, 0x2000, HVA)
    r, log = update(kvm, 3, 0xFF000, 0x2000, HVA)
    assert r == 0
    flags = [f for _, _, f in swaps(log)]
    assert flags[0] == (KVM_MEMSLOT_INVALID,) and flags[-1] == (0,)
    slot = kvm.kvm_memslots().id_to_memslot(3)
    assert (slot.base_gfn, slot.npages, slot.flags) == (0xFF, 2, 0)
    assert kvm.kvm_memslots().generation == 3


def test_flags_only_is_one_swap_and_never_invalid():
    kvm = kvm_create_vm()
    set_memory_region(kvm, 3, 0x100000, 0x2000, HVA)
    r, log = update(kvm, 3, 0x100000, 0x2000, HVA, flags=KVM_MEM_LOG_DIRTY_PAGES)
    assert r == 0
    assert [f for _, _, f in swaps(log)] == [(KVM_MEM_LOG_DIRTY_PAGES,)] * 2
    assert not any(f & KVM_MEMSLOT_INVALID for _, _, flags in log for f in flags)
    assert kvm.kvm_memslots().generation == 2


def test_two_address_spaces_bump_the_generation_by_two():
    kvm = kvm_create_vm(nr_as_ids=2)
    set_memory_region(kvm, 1, 0x100000, 0x1000, HVA, as_id=1)
    assert kvm.kvm_memslots(1).generation == 2 and kvm.kvm_memslots(0).generation == 0
    set_memory_region(kvm, 1, 0x100000, 0, HVA, as_id=1)
    assert kvm.kvm_memslots(1).generation == 6


def test_no_change_is_not_a_swap():
    kvm = kvm_create_vm()
    set_memory_region(kvm, 3, 0x100000, 0x2000, HVA)
    assert set_memory_region(kvm, 3, 0x100000, 0x2000, HVA) == 0
    assert kvm.kvm_memslots().generation == 1


# -- errors of the ioctl (errno, like the kernel) ----------------------------

@pytest.mark.parametrize("args, expect", [
    (dict(slot=1, guest_phys_addr=0x1000, memory_size=0x1001, userspace_addr=HVA), -EINVAL),
    (dict(slot=1, guest_phys_addr=0x1800, memory_size=0x1000, userspace_addr=HVA), -EINVAL),
    (dict(slot=1, guest_phys_addr=0x1000, memory_size=0x1000, userspace_addr=HVA + 8), -EINVAL),
    (dict(slot=1, guest_phys_addr=0x1000, memory_size=0x1000, userspace_addr=HVA, flags=1 << 5),
     -EINVAL),
    (dict(slot=KVM_USER_MEM_SLOTS, guest_phys_addr=0, memory_size=0x1000, userspace_addr=HVA),
     -EINVAL),
    (dict(slot=1, guest_phys_addr=0, memory_size=0x1000, userspace_addr=HVA, as_id=1), -EINVAL),
    (dict(slot=9, guest_phys_addr=0x100000, memory_size=0, userspace_addr=HVA), -EINVAL),
    (dict(slot=1, guest_phys_addr=0x1 << 52, memory_size=0x1000, userspace_addr=HVA), -EINVAL),
])
def test_bad_regions_are_einval(args, expect):
    kvm = kvm_create_vm()
    assert set_memory_region(kvm, **args) == expect
    assert kvm.kvm_memslots().generation == 0


def test_overlap_is_eexist_and_changes_of_size_or_hva_are_einval():
    kvm = kvm_create_vm()
    set_memory_region(kvm, 1, 0x100000, 0x2000, HVA)
    assert set_memory_region(kvm, 2, 0x101000, 0x1000, HVA) == -EEXIST
    assert set_memory_region(kvm, 1, 0x100000, 0x3000, HVA) == -EINVAL
    assert set_memory_region(kvm, 1, 0x100000, 0x2000, HVA + 0x1000) == -EINVAL
    assert set_memory_region(kvm, 1, 0x100000, 0x2000, HVA, flags=KVM_MEM_READONLY) == -EINVAL
    gmem = kvm_gmem_create(kvm, 1)
    assert set_memory_region(kvm, 2, 0x200000, 0x1000, HVA, flags=KVM_MEM_GUEST_MEMFD,
                             guest_memfd=gmem.name) == 0
    assert set_memory_region(kvm, 2, 0x300000, 0x1000, HVA, flags=KVM_MEM_GUEST_MEMFD,
                             guest_memfd=gmem.name) == -EINVAL       # guest_memfd slots can't move
    set_memory_region(kvm, 3, 0x400000, 0x1000, HVA)
    assert set_memory_region(kvm, 3, 0x101000, 0x1000, HVA) == -EEXIST   # move onto slot 1


# -- the zap and roots (chapter 3's TDP MMU) ----------------------------------

def test_fast_zap_obsoletes_every_root_and_asks_every_vcpu():
    kvm = race_vm("6.18")
    v0, v1 = kvm.vcpus[0], kvm_vm_ioctl_create_vcpu(kvm)
    assert prefault(v0, RACE_GPA, 0x2000).ret == 0
    root = v0.root
    assert len(kvm.ept.live_leaves(root)) == 2
    run_alone(kvm, kvm_arch_flush_shadow_memslot(kvm, kvm.kvm_memslots().slots[0]))
    assert kvm.ept.sps[root].invalid and kvm.ept.live_leaves(root) == []
    assert v0.requests == v1.requests == (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,)


def test_slot_zap_without_the_quirk_keeps_roots_and_other_slots():
    kvm = race_vm("6.18", slot_zap_all=False)
    v0 = kvm.vcpus[0]
    assert set_memory_region(kvm, 2, 0x900000, 0x1000, HVA) == 0
    host_populate(kvm.mm, HVA, 1, "4K")
    prefault(v0, RACE_GPA, 0x2000)
    prefault(v0, 0x900000, 0x1000)
    root = v0.root
    run_alone(kvm, kvm_arch_flush_shadow_memslot(kvm, kvm.kvm_memslots().id_to_memslot(1)))
    assert not kvm.ept.sps[root].invalid and v0.requests == ()
    assert [gfn for gfn, _, _ in kvm.ept.live_leaves(root)] == [0x900]


def test_swap_warns_if_a_swap_is_already_in_progress():
    kvm = kvm_create_vm()
    kvm.kvm_memslots(0).generation = IP | 4
    run_alone(kvm, kvm.slots_arch_lock.lock())
    run_alone(kvm, kvm_swap_active_memslots(kvm, 0))
    assert kvm.warnings == ("kvm_swap_active_memslots: generation already in progress",)


# -- SRCU: a deletion waits for the readers of the old set ---------------------

def _reader(w):
    idx = yield from w.srcu.read_lock()
    yield from ex.step("read section")
    yield from w.srcu.read_unlock(idx)


def _deleter(w):
    mem = KvmUserspaceMemoryRegion(1, 0, RACE_GPA, 0, RACE_HVA)
    return (yield from kvm_set_memory_region(w, mem))


def _scenario():
    return ex.Scenario("reader vs delete", race_vm,
                       [ex.Actor("A", "SRCU reader", _reader), ex.Actor("B", "delete", _deleter)],
                       final_check=lambda w, r: r["B"] == 0)


def test_a_reader_from_before_the_publish_blocks_synchronize_srcu():
    # A enters, B publishes and begins synchronize_srcu: B cannot return while A reads.
    begin = "A" + "B" * 6
    trace = ex.run_schedule(_scenario(), begin)
    assert trace.steps[-1].label == "synchronize_srcu(kvm->srcu) begins: waits for A"
    with pytest.raises(ValueError, match="blocked"):
        ex.run_schedule(_scenario(), begin + "B")
    done = ex.run_schedule(_scenario(), begin + "AA", complete=True)
    assert done.results["B"] == 0


def test_a_reader_entering_after_synchronize_began_does_not_block_it():
    trace = ex.run_schedule(_scenario(), "B" * 6 + "A" + "B")
    assert trace.steps[-1].label == "synchronize_srcu(kvm->srcu) returns"


def test_synchronize_srcu_inside_a_read_section_hangs_when_run_alone():
    kvm = kvm_create_vm()
    run_alone(kvm, kvm.srcu.read_lock())
    with pytest.raises(ModelHang, match="synchronize_srcu"):
        run_alone(kvm, kvm.srcu.synchronize())


# -- bad input to the Python API ---------------------------------------------

def test_bad_python_input_raises_clear_errors():
    with pytest.raises(ValueError, match="prefault_policy must be one of"):
        KvmConfig(prefault_policy="5.0")
    with pytest.raises(ValueError, match="nr_as_ids must be in"):
        kvm_create_vm(nr_as_ids=3)
    with pytest.raises(TypeError, match="slot_zap_all must be True or False"):
        kvm_create_vm(slot_zap_all=1)
    with pytest.raises(ValueError, match="memory_size must be in"):
        KvmUserspaceMemoryRegion(1, 0, 0, -1, HVA)
    with pytest.raises(TypeError, match="guest_phys_addr must be an integer"):
        KvmUserspaceMemoryRegion(1, 0, "0x1000", 0x1000, HVA)
    with pytest.raises(TypeError, match="kvm must be a Kvm"):
        next(kvm_set_memory_region(None, KvmUserspaceMemoryRegion(1, 0, 0, 0, HVA)))
    with pytest.raises(ValueError, match="change must be in"):
        next(kvm_set_memslot(kvm_create_vm(), None, None, 7))
    with pytest.raises(ValueError, match="slot must be in"):
        set_memory_region(kvm_create_vm(), -1, 0, 0x1000, HVA)
    with pytest.raises(ValueError, match="as_id must be in"):
        kvm_create_vm().kvm_memslots(1)
    assert KVM_MR_CREATE == 0


def test_describe_helpers():
    assert describe_generation(5) == "5"
    assert describe_generation(IP | 5) == "5|IN_PROGRESS"
    assert describe_slot_flags(0) == "0"
    assert describe_slot_flags(KVM_MEM_READONLY | KVM_MEMSLOT_INVALID) == \
        "KVM_MEM_READONLY|KVM_MEMSLOT_INVALID"


# -- property: any sequence of updates keeps the bookkeeping straight --------

OPS = st.lists(st.tuples(st.sampled_from(["create", "delete", "move", "flags"]),
                         st.integers(0, 2), st.integers(0, 6)), max_size=8)


@settings(max_examples=30, deadline=None)
@given(OPS, st.sampled_from([1, 2]))
def test_updates_bump_the_generation_once_per_swap_and_keep_both_sets_equal(ops, nr_as_ids):
    kvm = kvm_create_vm(nr_as_ids=nr_as_ids)
    swaps_per = {"create": 1, "delete": 2, "move": 2, "flags": 1}
    expected_gen = 0
    for op, slot, where in ops:
        old = kvm.kvm_memslots().id_to_memslot(slot)
        gpa = (0x100 + where * 4) << 12
        hva = old.userspace_addr if old else HVA + slot * 0x10000
        if op == "delete":
            r = set_memory_region(kvm, slot, gpa, 0, hva)
            change = "delete" if old else None
        elif op == "flags" and old is not None:
            r = set_memory_region(kvm, slot, old.base_gfn << 12, 0x2000, hva,
                                  flags=KVM_MEM_LOG_DIRTY_PAGES)
            change = "flags" if old.flags != KVM_MEM_LOG_DIRTY_PAGES else None
        else:                       # create, or move if the slot exists
            r = set_memory_region(kvm, slot, gpa, 0x2000, hva)
            if old is None:
                change = "create"
            elif old.base_gfn != gpa >> 12:
                change = "move"
            else:
                change = "flags" if old.flags else None
        did = r == 0 and change is not None
        assert r in (0, -EINVAL, -EEXIST)
        if did:
            expected_gen += nr_as_ids * swaps_per[change]
        assert kvm.kvm_memslots().generation == expected_gen
        a, b = both_sets(kvm)
        assert a == b
        slots = kvm.kvm_memslots().slots
        assert all(x.end_gfn <= y.base_gfn for x, y in zip(slots, slots[1:]))
        assert not any(s.flags & KVM_MEMSLOT_INVALID for s in slots)
    assert kvm.warnings == ()
