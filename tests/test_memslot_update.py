"""The memslot update flow: two swaps for delete/move, generations, INVALID, the zap."""
import pytest
from hypothesis import given, settings, strategies as st

from kvmmu import explorer as ex
from kvmmu.errno import EEXIST, EINVAL
from kvmmu.memslot_update import (
    KVM_MR_CREATE, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, KVM_USER_MEM_SLOTS, Kvm, KvmMmuRoot,
    KvmUserspaceMemoryRegion, ModelHang, SequentialSync, describe_generation,
    describe_slot_flags, kvm_arch_flush_shadow_memslot, kvm_set_memory_region, kvm_set_memslot,
    kvm_swap_active_memslots, run_sequential, set_memory_region)
from kvmmu.memslots import (KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
                            KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS, KVM_MEMSLOT_INVALID,
                            KvmMemorySlot)

IP = KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
HVA = 0x7F0000000000


def watched_vm(**kw):
    """A VM whose sequential back-end records (label, active generation, slot flags)."""
    log = []
    kvm = Kvm(**kw)

    def hook(label):
        active = kvm._active(0)
        flags = tuple(s.flags for s in active.slots)
        log.append((label, active.generation, flags))
    kvm.attach_sync(SequentialSync(hook))
    return kvm, log


def both_sets(kvm, as_id=0):
    return [[(s.id, s.base_gfn, s.npages, s.flags) for s in m.slots]
            for m in kvm.memslot_sets[as_id]]


# -- the happy paths ---------------------------------------------------------

def test_create_is_one_swap():
    kvm, log = watched_vm()
    assert set_memory_region(kvm, 10, 0x100000, 0x2000, HVA) == 0
    assert kvm.generation() == 1
    gens = [g for _, g, _ in log]
    assert gens == [IP | 0, 1]                   # published in progress, then final
    a, b = both_sets(kvm)
    assert a == b == [(10, 0x100, 2, 0)]         # both sets agree afterwards


def test_delete_is_two_swaps_with_invalid_in_between():
    kvm, log = watched_vm()
    set_memory_region(kvm, 10, 0x100000, 0x2000, HVA)
    log.clear()
    assert set_memory_region(kvm, 10, 0x100000, 0, HVA) == 0
    labels = [lab for lab, _, _ in log]
    assert labels == ["publish memslots, gen g|IN_PROGRESS", "generation = g + nr_as_ids",
                      "mmu_lock(write): fast zap, every root obsolete",
                      "publish memslots, gen g|IN_PROGRESS", "generation = g + nr_as_ids"]
    # Appendix A 17: g -> g|IP -> g+n (slot INVALID) -> zap -> (g+n)|IP -> g+2n (slot gone)
    assert [(g, f) for _, g, f in log] == [
        (IP | 1, (KVM_MEMSLOT_INVALID,)), (2, (KVM_MEMSLOT_INVALID,)),
        (2, (KVM_MEMSLOT_INVALID,)), (IP | 2, ()), (3, ())]
    assert both_sets(kvm) == [[], []]


def test_move_keeps_the_slot_invalid_until_the_second_swap():
    kvm, log = watched_vm()
    set_memory_region(kvm, 3, 0x100000, 0x2000, HVA)
    log.clear()
    assert set_memory_region(kvm, 3, 0xFF000, 0x2000, HVA) == 0
    assert log[0][2] == (KVM_MEMSLOT_INVALID,)
    assert log[-1][2] == (0,)
    slot = kvm.kvm_memslots().id_to_memslot(3)
    assert (slot.base_gfn, slot.npages, slot.flags) == (0xFF, 2, 0)
    assert kvm.generation() == 3


def test_flags_only_is_one_swap_and_never_invalid():
    kvm, log = watched_vm()
    set_memory_region(kvm, 3, 0x100000, 0x2000, HVA)
    log.clear()
    assert set_memory_region(kvm, 3, 0x100000, 0x2000, HVA, flags=KVM_MEM_LOG_DIRTY_PAGES) == 0
    assert all(f == (KVM_MEM_LOG_DIRTY_PAGES,) for _, _, f in log)
    assert kvm.generation() == 2


def test_two_address_spaces_bump_the_generation_by_two():
    kvm = Kvm(nr_as_ids=2)
    set_memory_region(kvm, 1, 0x100000, 0x1000, HVA, as_id=1)
    assert kvm.generation(1) == 2 and kvm.generation(0) == 0
    set_memory_region(kvm, 1, 0x100000, 0, HVA, as_id=1)
    assert kvm.generation(1) == 6


def test_no_change_is_not_a_swap():
    kvm = Kvm()
    set_memory_region(kvm, 3, 0x100000, 0x2000, HVA)
    assert set_memory_region(kvm, 3, 0x100000, 0x2000, HVA) == 0
    assert kvm.generation() == 1


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
    kvm = Kvm()
    assert set_memory_region(kvm, **args) == expect
    assert kvm.generation() == 0


def test_overlap_is_eexist_and_changes_of_size_or_hva_are_einval():
    kvm = Kvm()
    set_memory_region(kvm, 1, 0x100000, 0x2000, HVA)
    assert set_memory_region(kvm, 2, 0x101000, 0x1000, HVA) == -EEXIST
    assert set_memory_region(kvm, 1, 0x100000, 0x3000, HVA) == -EINVAL
    assert set_memory_region(kvm, 1, 0x100000, 0x2000, HVA + 0x1000) == -EINVAL
    assert set_memory_region(kvm, 1, 0x100000, 0x2000, HVA, flags=KVM_MEM_READONLY) == -EINVAL
    set_memory_region(kvm, 2, 0x200000, 0x1000, HVA, flags=KVM_MEM_GUEST_MEMFD)
    assert set_memory_region(kvm, 2, 0x300000, 0x1000, HVA, flags=KVM_MEM_GUEST_MEMFD) == -EINVAL
    set_memory_region(kvm, 3, 0x400000, 0x1000, HVA)
    assert set_memory_region(kvm, 3, 0x101000, 0x1000, HVA) == -EEXIST   # move onto slot 1


# -- the zap and roots -------------------------------------------------------

def test_fast_zap_obsoletes_every_root_and_asks_every_vcpu():
    kvm = Kvm()
    v0, v1 = kvm.kvm_vm_ioctl_create_vcpu(), kvm.kvm_vm_ioctl_create_vcpu()
    root = KvmMmuRoot(1, mappings={0x100: 1, 0x900: 1})
    kvm.roots.append(root)
    slot = KvmMemorySlot(1, 0x100, 2, HVA)
    kvm_arch_flush_shadow_memslot(kvm, slot)
    assert root.invalid and root.mappings == {}
    assert v0.requests == v1.requests == [KVM_REQ_MMU_FREE_OBSOLETE_ROOTS]


def test_slot_zap_without_the_quirk_keeps_roots_and_other_slots():
    kvm = Kvm(slot_zap_all=False)
    v0 = kvm.kvm_vm_ioctl_create_vcpu()
    root = KvmMmuRoot(1, mappings={0x100: 1, 0x101: 1, 0x900: 1})
    kvm.roots.append(root)
    kvm_arch_flush_shadow_memslot(kvm, KvmMemorySlot(1, 0x100, 2, HVA))
    assert not root.invalid and root.mappings == {0x900: 1} and v0.requests == []


def test_swap_warns_if_a_swap_is_already_in_progress():
    kvm = Kvm()
    kvm._active(0).generation = IP | 4
    gen = kvm_swap_active_memslots(kvm, 0)
    run_sequential(kvm.slots_arch_lock.lock())
    run_sequential(gen)
    assert kvm.warnings == ["kvm_swap_active_memslots: generation already in progress"]


# -- SRCU: Appendix A 17 on the explorer -------------------------------------

def _world():
    from kvmmu.prefault import PrefaultWorld, RaceConfig
    return PrefaultWorld(RaceConfig(policy="6.18"))


def _reader(w):
    idx = yield from w.srcu.read_lock()
    yield from w.step("read section", None)
    yield from w.srcu.read_unlock(idx)


def _deleter(w):
    mem = KvmUserspaceMemoryRegion(1, 0, 0x100000, 0, 0x7F0000100000)
    return (yield from kvm_set_memory_region(w, mem))


def _scenario():
    return ex.Scenario("reader vs delete", _world,
                       [ex.Actor("A", "SRCU reader", _reader), ex.Actor("B", "delete", _deleter)],
                       final_check=lambda w, r: r["B"] == 0)


def test_a_reader_from_before_the_publish_blocks_synchronize_srcu():
    # A enters, B publishes and begins synchronize_srcu: B cannot return while A reads.
    trace = ex.run_schedule(_scenario(), "A" + "BBBBB")
    assert "synchronize_srcu(kvm->srcu) begins: waits for A" in trace.steps[-1].label
    with pytest.raises(ValueError, match="blocked"):
        ex.run_schedule(_scenario(), "A" + "BBBBB" + "B")
    done = ex.run_schedule(_scenario(), "A" + "BBBBB" + "AA", complete=True)
    assert done.results["B"] == 0


def test_a_reader_entering_after_synchronize_began_does_not_block_it():
    trace = ex.run_schedule(_scenario(), "BBBBB" + "A" + "B")
    assert trace.steps[-1].label == "synchronize_srcu(kvm->srcu) returns"


# -- the sequential back-end -------------------------------------------------

def test_sequential_backend_reports_hangs():
    sync = SequentialSync()
    m = sync.mutex("m")
    run_sequential(m.lock())
    with pytest.raises(ModelHang, match="mutex_lock"):
        run_sequential(m.lock())
    s = sync.srcu_domain("s")
    run_sequential(s.read_lock())
    with pytest.raises(ModelHang, match="synchronize_srcu"):
        run_sequential(s.synchronize())
    with pytest.raises(ModelHang, match="would wait forever: never"):
        run_sequential(sync.wait_until("never", lambda _w: False))
    with pytest.raises(RuntimeError, match="not held"):
        run_sequential(sync.mutex("n").unlock())


# -- bad input to the Python API ---------------------------------------------

def test_bad_python_input_raises_clear_errors():
    with pytest.raises(ValueError, match="prefault_policy must be one of"):
        Kvm(prefault_policy="5.0")
    with pytest.raises(ValueError, match="nr_as_ids must be in"):
        Kvm(nr_as_ids=3)
    with pytest.raises(TypeError, match="slot_zap_all must be True or False"):
        Kvm(slot_zap_all=1)
    with pytest.raises(ValueError, match="memory_size must be in"):
        KvmUserspaceMemoryRegion(1, 0, 0, -1, HVA)
    with pytest.raises(TypeError, match="guest_phys_addr must be an integer"):
        KvmUserspaceMemoryRegion(1, 0, "0x1000", 0x1000, HVA)
    with pytest.raises(TypeError, match="kvm must be a Kvm"):
        run_sequential(kvm_set_memory_region(None, KvmUserspaceMemoryRegion(1, 0, 0, 0, HVA)))
    with pytest.raises(ValueError, match="change must be one of"):
        run_sequential(kvm_set_memslot(Kvm(), None, None, 7))
    with pytest.raises(ValueError, match="slot must be in"):
        set_memory_region(Kvm(), -1, 0, 0x1000, HVA)
    with pytest.raises(ValueError, match="as_id must be in"):
        Kvm().kvm_memslots(1)
    with pytest.raises(TypeError, match="hook must be callable"):
        SequentialSync(hook=3)
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


@settings(max_examples=40, deadline=None)
@given(OPS, st.sampled_from([1, 2]))
def test_updates_bump_the_generation_once_per_swap_and_keep_both_sets_equal(ops, nr_as_ids):
    kvm = Kvm(nr_as_ids=nr_as_ids)
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
        if did:
            op = change
        assert r in (0, -EINVAL, -EEXIST)
        if did:
            expected_gen += nr_as_ids * swaps_per[op]
        assert kvm.generation() == expected_gen
        a, b = both_sets(kvm)
        assert a == b
        slots = kvm.kvm_memslots().slots
        assert all(x.end_gfn <= y.base_gfn for x, y in zip(slots, slots[1:]))
        assert not any(s.flags & KVM_MEMSLOT_INVALID for s in slots)
