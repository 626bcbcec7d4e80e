"""Seeded "what level will KVM map this gfn at, and why?" problems.

``problem(seed)`` draws a memslot (its base gfn, size and host address), the
host's backing, possibly a host event (khugepaged collapse, a THP split, a
1 GiB promotion, a migration), dirty logging or a shadowed page, and a gfn,
all from ``random.Random(seed)``.  The answer is computed by running the
model's fault path (``kvmmu.viz.host_level.explain_mapping_level``), never
written by hand.
"""
import random

from ..checks import check_int
from ..scenarios.host_level import make_host_vm
from ..viz.host_level import explain_mapping_level
from ..levels import KVM_PAGES_PER_HPAGE, PG_LEVEL_1G, PG_LEVEL_2M, level_name
from .base import Problem

__all__ = ["problem"]

_PAGES_2M = KVM_PAGES_PER_HPAGE(PG_LEVEL_2M)
_PAGES_1G = KVM_PAGES_PER_HPAGE(PG_LEVEL_1G)

#: Events each backing can take (an event needs the right host state).
_EVENTS = {
    "4K": ("none", "khugepaged collapses the 2M around it", "the host migrates the page",
           "the host promotes the 1G around it"),
    "2M": ("none", "the host splits the THP", "the host promotes the 1G around it"),
    "1G": ("none",),
}


def _draw(rng: random.Random) -> dict:
    # Slot start: 1G aligned, 2M aligned, or a few pages off.
    base = rng.randrange(1, 16) * _PAGES_1G
    shape = rng.choice(("1G", "2M", "2M", "off"))
    if shape == "2M":
        base += rng.randrange(1, 512) * _PAGES_2M
    elif shape == "off":
        base += rng.randrange(1, _PAGES_2M)
    npages = rng.choice((_PAGES_2M, 2 * _PAGES_2M, 2 * _PAGES_2M + 1, 0x600, _PAGES_1G,
                         _PAGES_1G + _PAGES_2M))
    # Host address: congruent with the gfn (the usual case) or off by some pages.
    ua_pages = 0x7F0000000 + rng.randrange(0, 64) * _PAGES_1G + (base % _PAGES_1G)
    if rng.random() < 0.25:
        ua_pages += rng.choice((1, 0x10, 0x100, _PAGES_2M + 3))
    backing = rng.choice(("4K", "2M", "2M", "1G"))
    event = rng.choice(_EVENTS[backing])
    where = rng.choice(("start", "middle", "last", "any"))
    if where == "start":
        gfn = base
    elif where == "last":
        gfn = base + npages - 1
    elif where == "middle":
        gfn = base + npages // 2
    else:
        gfn = base + rng.randrange(npages)
    return dict(base_gfn=base, npages=npages, userspace_addr=ua_pages << 12, backing=backing,
                gfn=gfn, event=event, dirty_logging=rng.random() < 0.1,
                shadowed=rng.random() < 0.1)


_BACKING_TEXT = {"4K": "4 KiB pages", "2M": "transparent huge pages (2 MiB)",
                 "1G": "1 GiB pages"}


def problem(seed: int) -> Problem:
    """Return seeded problem number ``seed``: the level KVM maps a gfn at, and why."""
    check_int("seed", seed, 0, (1 << 32) - 1)
    rng = random.Random(seed)
    p = _draw(rng)
    kvm = make_host_vm(**p)
    decision = explain_mapping_level(kvm, p["gfn"])
    extras = []
    if p["event"] != "none":
        extras.append(f"Then {p['event']}.")
    if p["dirty_logging"]:
        extras.append("Dirty logging is enabled on the slot.")
    if p["shadowed"]:
        extras.append("KVM shadows a guest page table in that gfn "
                      "(kvm_mmu_gfn_disallow_lpage was called for it).")
    question = (
        f"Seed {seed}: a memslot maps {p['npages']:#x} pages from gfn {p['base_gfn']:#x} at host "
        f"address {p['userspace_addr']:#x}; the host backs it with {_BACKING_TEXT[p['backing']]}. "
        + " ".join(extras) + (" " if extras else "")
        + f"The vCPU faults on gfn {p['gfn']:#x} (TDP MMU, 1G pages supported). At what level "
        "does KVM map it, and which rule decides?")
    solution = (f"{level_name(decision.level)}.\n{decision.text()}")
    return Problem(seed, question, solution, "mapping level")
