"""The race the SPTE atomic-update rule prevents: a lost Dirty bit, for the explorer.

Documentation/virt/kvm/locking.rst describes it: KVM clears W in a leaf SPTE
while the guest writes the page; if KVM reads the SPTE, the CPU then sets D,
and KVM stores its value back with a plain write, the D bit is lost and KVM
never learns that the page was dirtied.  The kernel code that closes the
window is modelled in :mod:`kvmmu.spte` (``spte_needs_atomic_update``) and
:mod:`kvmmu.tdp_iter` (``kvm_tdp_mmu_write_spte``, the xchg); this module
is the scenario of :mod:`kvmmu.explorer` that shows both variants, and
models no kernel function of its own.

**Where the model simplifies.**  One write-protect against one guest write
on one 4K EPT leaf (:data:`DIRTY_RACE_SPTE`); the CPU's setting of D is one
indivisible step; "KVM saw it dirty" stands for the dirty bookkeeping the
kernel does with the replaced value.
"""
from .checks import check_bool
from .explorer import Actor, Scenario, World, step
from .spte import EPT_AD, PT_WRITABLE_MASK, VMX_EPT_DIRTY_BIT, spte_needs_atomic_update


# --------------------------------------------------------------------------
# The race the atomic-update rule prevents: a lost Dirty bit (locking.rst).
# --------------------------------------------------------------------------
#: The leaf both actors share: the EPT leaf of the worked example, writable
#: (H M W = 1 1 1) but clean (D = 0), as after dirty logging cleared D.
DIRTY_RACE_SPTE = 0x8600000012345977


class DirtyRaceWorld(World):
    """One 4K EPT leaf that the guest writes while KVM write-protects it."""

    def __init__(self):
        super().__init__()
        self.spte = self.word("spte", DIRTY_RACE_SPTE)

    def describe(self, name, value):
        if name == "spte" and isinstance(value, int):
            w = "W" if value & PT_WRITABLE_MASK else "-"
            d = "D" if value & VMX_EPT_DIRTY_BIT else "-"
            return f"{value:#018x} ({w}{d})"
        return super().describe(name, value)


def guest_writes_page(w):
    """The guest CPU writes the page: one locked update sets D, if W allows it.

    The hardware walker sets Dirty with an atomic read-modify-write of the
    SPTE, so it is one indivisible step; with W clear the write faults
    instead (an EPT violation) and nothing is written.
    """
    def cpu_write():
        if not w.spte.value & PT_WRITABLE_MASK:
            return "EPT violation"
        w.spte.value |= VMX_EPT_DIRTY_BIT
        return "wrote"
    return (yield from step("guest write: CPU sets D if W", cpu_write))


def write_protect_rmw(w):
    """KVM clears W with read-modify-write: the UNSAFE variant.

    Returns True if KVM saw the page dirty (D in the value it replaced).
    """
    old = yield from w.spte.read()
    yield from w.spte.write(old & ~PT_WRITABLE_MASK)      # plain store
    return bool(old & VMX_EPT_DIRTY_BIT)


def write_protect_atomic(w):
    """KVM clears W the 6.17 way: xchg when spte_needs_atomic_update() says so.

    As ``kvm_tdp_mmu_write_spte()`` in tdp_iter.h does, the value xchg
    returns is the authoritative old SPTE, so a D the CPU set after the
    read is seen there.  Returns True if KVM saw the page dirty.
    """
    old = yield from w.spte.read()
    new = old & ~PT_WRITABLE_MASK
    if spte_needs_atomic_update(old, EPT_AD):
        old = yield from w.spte.xchg(new)
    else:
        yield from w.spte.write(new)
    return bool(old & VMX_EPT_DIRTY_BIT)


def dirty_bit_kept(world, results) -> bool | str:
    """Final check: a page the guest wrote is dirty in the SPTE or known dirty to KVM."""
    if results["B"] != "wrote":
        return True
    if results["A"] or world.spte.value & VMX_EPT_DIRTY_BIT:
        return True
    return "lost Dirty bit: the guest wrote the page, KVM never saw it dirty"


def dirty_race_scenario(atomic: bool) -> Scenario:
    """The lost-Dirty-bit race: KVM write-protects (A) while the guest writes (B)."""
    check_bool("atomic", atomic)
    kvm = write_protect_atomic if atomic else write_protect_rmw
    how = "xchg" if atomic else "read-modify-write"
    return Scenario(f"write-protect by {how} vs guest write", DirtyRaceWorld,
                    [Actor("A", f"KVM clears W ({how})", kvm),
                     Actor("B", "guest CPU writes the page", guest_writes_page)],
                    final_check=dirty_bit_kept)
