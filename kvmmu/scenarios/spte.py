"""Chapter 1's race: a lost Dirty bit, which the SPTE atomic-update rule prevents.

Documentation/virt/kvm/locking.rst describes it: KVM clears W in a leaf SPTE
while the guest writes the page; if KVM reads the SPTE, the CPU then sets D,
and KVM stores its value back with a plain write, the D bit is lost and KVM
never learns that the page was dirtied.  KVM's side is the TDP MMU's own
accessors (:mod:`kvmmu.tdp_iter`): ``kvm_tdp_mmu_write_spte()`` exchanges
the SPTE when ``spte_needs_atomic_update()`` says its bits are volatile, and
the unsafe variant stores with ``__kvm_tdp_mmu_write_spte()`` (WRITE_ONCE)
whatever the SPTE holds.

**Where the model simplifies.**  One write-protect against one or two guest
CPUs writing the page, on one 4K EPT leaf (:data:`DIRTY_RACE_SPTE`, built
directly in a VM's root: the page tables a fault would have made); the
CPU's setting of D is one indivisible step; "KVM saw it dirty" stands for
the dirty bookkeeping the kernel does with the replaced value.
"""
from ..checks import check_bool, check_int
from ..cpu import check_vm
from ..explorer import Actor, Scenario, step
from ..kvm_main import kvm_create_vm, kvm_vm_ioctl_create_vcpu
from ..levels import PAGE_SHIFT, PG_LEVEL_4K, SPTE_INDEX
from ..mmu import kvm_mmu_load
from ..spte import EPT_AD, PT_WRITABLE_MASK, VMX_EPT_DIRTY_BIT, make_nonleaf_spte
from ..tdp_iter import (Sptep, __kvm_tdp_mmu_write_spte, kvm_tdp_mmu_read_spte,
                        kvm_tdp_mmu_write_spte)
from . import ScenarioEntry

__all__ = ["DIRTY_RACE_SPTE", "DIRTY_RACE_GFN", "WRITERS", "dirty_race_world",
           "guest_writes_page", "write_protect_rmw", "write_protect_atomic",
           "dirty_bit_kept", "dirty_race_scenario", "SCENARIOS"]

#: The leaf both actors share: the EPT leaf of the worked example, writable
#: (H M W = 1 1 1) but clean (D = 0), as after dirty logging cleared D.
DIRTY_RACE_SPTE = 0x8600000012345977
#: The gfn it maps.
DIRTY_RACE_GFN = 0x100
#: The schedule letters of the guest CPUs that write the page, in order.
WRITERS = "BC"


def _check_world(w):
    """Refuse anything but the world :func:`dirty_race_world` builds."""
    check_vm("w", w)
    if not isinstance(getattr(w, "leaf", None), Sptep):
        raise TypeError("w must be the VM dirty_race_world() builds "
                        "(this one has no leaf)")
    return w


def _describe(value: int) -> str:
    w = "W" if value & PT_WRITABLE_MASK else "-"
    d = "D" if value & VMX_EPT_DIRTY_BIT else "-"
    return f"{value:#018x} ({w}{d})"


def dirty_race_world():
    """A VM whose root maps gfn 0x100 to :data:`DIRTY_RACE_SPTE` (``kvm.leaf``)."""
    kvm = kvm_create_vm(cfg=EPT_AD)
    vcpu = kvm_vm_ioctl_create_vcpu(kvm)
    kvm_mmu_load(vcpu)
    ept, gpa = kvm.ept, DIRTY_RACE_GFN << PAGE_SHIFT
    pt = vcpu.root
    for level in range(kvm.config.root_level, PG_LEVEL_4K, -1):
        child = ept.new_table(level - 1, 0, Sptep(pt, SPTE_INDEX(gpa, level)))
        ept.put(Sptep(pt, SPTE_INDEX(gpa, level)),
                make_nonleaf_spte(child << PAGE_SHIFT))
        pt = child
    leaf = Sptep(pt, SPTE_INDEX(gpa, PG_LEVEL_4K))
    ept.put(leaf, DIRTY_RACE_SPTE)
    kvm.leaf = leaf
    kvm.watch("spte", lambda k: _describe(k.ept.get(leaf)), only=True)
    return kvm


def guest_writes_page(w):
    """The guest CPU writes the page: one locked update sets D, if W allows it.

    The hardware walker sets Dirty with an atomic read-modify-write of the
    SPTE, so it is one indivisible step; with W clear the write faults
    instead (an EPT violation) and nothing is written.
    """
    leaf = _check_world(w).leaf

    def cpu_write():
        value = w.ept.get(leaf)
        if not value & PT_WRITABLE_MASK:
            return "EPT violation"
        w.ept.put(leaf, value | VMX_EPT_DIRTY_BIT)
        return "wrote"
    return (yield from step("guest write: CPU sets D if W", cpu_write))


def write_protect_rmw(w):
    """KVM clears W with a read and a plain store: the UNSAFE variant.

    Returns True if KVM saw the page dirty (D in the value it replaced).
    """
    _check_world(w)
    old = yield from kvm_tdp_mmu_read_spte(w, w.leaf)
    new = old & ~PT_WRITABLE_MASK
    yield from __kvm_tdp_mmu_write_spte(w, w.leaf, new)       # WRITE_ONCE
    return bool(old & VMX_EPT_DIRTY_BIT)


def write_protect_atomic(w):
    """KVM clears W the 6.17 way: ``kvm_tdp_mmu_write_spte()``, an xchg if volatile.

    The value the xchg returns is the authoritative old SPTE, so a D the
    CPU set after the read is seen there.  Returns True if KVM saw the page
    dirty.
    """
    _check_world(w)
    old = yield from kvm_tdp_mmu_read_spte(w, w.leaf)
    old = yield from kvm_tdp_mmu_write_spte(w, w.leaf, old, old & ~PT_WRITABLE_MASK,
                                            PG_LEVEL_4K)
    return bool(old & VMX_EPT_DIRTY_BIT)


def dirty_bit_kept(world, results) -> bool | str:
    """Final check: a page the guest wrote is dirty in the SPTE or known to KVM."""
    _check_world(world)
    if not isinstance(results, dict) or "A" not in results:
        raise TypeError("results must map actor letters to what they returned")
    if not any(results.get(cpu) == "wrote" for cpu in WRITERS):
        return True
    if results["A"] or world.ept.get(world.leaf) & VMX_EPT_DIRTY_BIT:
        return True
    return "lost Dirty bit: the guest wrote the page, KVM never saw it dirty"


def dirty_race_scenario(atomic: bool, writers: int = 1) -> Scenario:
    """The lost-Dirty-bit race: KVM write-protects (A) while vCPUs write (B, C).

    ``writers`` is how many guest CPUs write the page: 1 or 2.
    """
    check_bool("atomic", atomic)
    check_int("writers", writers, 1, len(WRITERS))
    kvm = write_protect_atomic if atomic else write_protect_rmw
    how = "xchg" if atomic else "read-modify-write"
    guests = [Actor(letter, f"vCPU {n} writes the page", guest_writes_page)
              for n, letter in enumerate(WRITERS[:writers])]
    name = f"write-protect by {how} vs {writers} guest write{'s' * (writers > 1)}"
    return Scenario(name, dirty_race_world,
                    [Actor("A", f"KVM clears W ({how})", kvm), *guests],
                    final_check=dirty_bit_kept)


SCENARIOS = {
    "lost-dirty-bit": ScenarioEntry(
        lambda: dirty_race_scenario(atomic=False), 1,
        "KVM clears W with read + plain store while the guest writes: the Dirty "
        "bit is lost", "violated"),
    "lost-dirty-bit-2-writers": ScenarioEntry(
        lambda: dirty_race_scenario(atomic=False, writers=2), 1,
        "the same with two guest CPUs writing the page", "violated"),
    "dirty-bit-xchg": ScenarioEntry(
        lambda: dirty_race_scenario(atomic=True, writers=2), 1,
        "KVM clears W with kvm_tdp_mmu_write_spte() (xchg) while two guest CPUs "
        "write: D is kept"),
}
