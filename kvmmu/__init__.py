"""kvmmu: an executable model of the Linux KVM x86 MMU, written for teaching.

The package is the single source of truth for the book: every chapter imports
it and shows its real source.  It never drives real KVM.

Importing ``kvmmu`` is cheap: submodules load on first use (``kvmmu.spte``),
and the view layer (``kvmmu.viz``) is the only place that imports matplotlib or
ipywidgets.
"""
from importlib import import_module

__version__ = "0.1.0"

#: The kernel release the model follows.  Facts were read at v6.17-rc3; where a
#: chapter models code from before (``tdp_mmu_zap_spte_atomic``, <= 6.12) or a
#: later patch (prefault ``-EAGAIN``, 6.18) or an RFC (guest_memfd final put),
#: the chapter and the module say so.
KERNEL_VERSION = "6.17"

def __getattr__(name):
    # PEP 562 lazy submodules: keeps `import kvmmu` fast and free of
    # matplotlib/ipywidgets, while `kvmmu.spte.FROZEN_SPTE` still works.
    if not name.startswith("_"):
        try:
            return import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'kvmmu' has no attribute {name!r}")
