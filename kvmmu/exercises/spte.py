"""Seeded SPTE problems: decode an SPTE, build one, follow an MMIO SPTE's generation, classify values.

``problem(seed)`` draws everything from ``random.Random(seed)``; every answer
is computed by :mod:`kvmmu.spte`, never written by hand.
"""
import random

from .. import spte as S
from ..checks import check_choice, check_int
from ..levels import KVM_PAGES_PER_HPAGE, level_name
from .base import Problem

#: The configurations problems use, in a fixed order (the rng indexes it).
CONFIGS = (
    ("Intel EPT with A/D bits", S.EPT_AD),
    ("Intel EPT without A/D bits", S.EPT_NO_AD),
    ("AMD NPT", S.NPT),
)
KINDS = ("decode", "build", "mmio", "classify")


def access_name(access: int) -> str:
    """Return ``pte_access`` spelled with the kernel's ACC_* names."""
    names = [n for bit, n in ((S.ACC_EXEC_MASK, "ACC_EXEC_MASK"), (S.ACC_WRITE_MASK, "ACC_WRITE_MASK"),
                              (S.ACC_USER_MASK, "ACC_USER_MASK")) if access & bit]
    return "|".join(names) if names else "0"


def _random_leaf(rng: random.Random):
    """Draw make_spte() arguments and return (cfg name, cfg, kwargs, (spte, wrprot))."""
    name, cfg = CONFIGS[rng.randrange(len(CONFIGS))]
    level = rng.choice((1, 1, 1, 2, 3))
    access = rng.randrange(1, 8)
    pfn = rng.randrange(1, 1 << 24) & ~(KVM_PAGES_PER_HPAGE(level) - 1)
    kwargs = dict(host_writable=rng.random() < 0.8, prefetch=rng.random() < 0.3,
                  write_tracked=(not cfg.ept) and rng.random() < 0.3)
    spte = S.make_spte(level, access, pfn, cfg=cfg, **kwargs)
    return name, cfg, level, access, pfn, kwargs, spte


def _args_text(level, access, pfn, kwargs) -> str:
    flags = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"level={level} ({level_name(level)}), pte_access={access_name(access)}, pfn={pfn:#x}, {flags}"


def _decode_problem(seed: int, rng: random.Random) -> Problem:
    name, cfg, level, access, pfn, kwargs, (spte, wrprot) = _random_leaf(rng)
    question = (f"Seed {seed}: under {name}, decode the level-{level} SPTE {spte:#018x}. "
                "Which class is it? Give its pfn, its permission bits, whether it is Accessed "
                "and Dirty, and its Host-writable/MMU-writable/Writable state.")
    solution = (f"{S.decode_spte(spte, cfg, level)}\n"
                f"It is what make_spte() builds for {_args_text(level, access, pfn, kwargs)}"
                f" (wrprot={wrprot}).")
    return Problem(seed, question, solution, "decode")


def _build_problem(seed: int, rng: random.Random) -> Problem:
    name, cfg, level, access, pfn, kwargs, (spte, wrprot) = _random_leaf(rng)
    question = (f"Seed {seed}: under {name}, which SPTE does make_spte() build for "
                f"{_args_text(level, access, pfn, kwargs)}? Does it return wrprot=True?")
    solution = f"new_spte = {spte:#018x}, wrprot = {wrprot}\n{S.decode_spte(spte, cfg, level)}"
    return Problem(seed, question, solution, "build")


def _mmio_problem(seed: int, rng: random.Random) -> Problem:
    name, cfg = CONFIGS[(0, 2)[rng.randrange(2)]]
    gfn = rng.randrange(0x100, 0x100000)
    gen = rng.randrange(0, 1 << 21) & ~1          # even: address space 0
    if rng.random() < 0.25:
        gen |= S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
    later = rng.choice((gen, (gen & ~S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS) + 2,
                        gen | S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS, gen + (1 << 20)))
    spte = S.make_mmio_spte(gfn, S.ACC_WRITE_MASK | S.ACC_USER_MASK, gen, cfg)
    stored = S.get_mmio_spte_generation(spte)
    hit = S.check_mmio_spte(spte, later)
    if later & S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        why = "the current generation has KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS set, so every MMIO SPTE misses"
    elif hit:
        why = f"the low 19 bits match ({stored:#x})"
    else:
        why = f"stored {stored:#x} != current {later & S.MMIO_SPTE_GEN_MASK:#x}"
    question = (f"Seed {seed}: under {name}, a vCPU caches gfn {gfn:#x} as MMIO (access "
                f"ACC_WRITE_MASK|ACC_USER_MASK) while the memslots generation is {gen:#x}. "
                f"Which SPTE does make_mmio_spte() build? Later the generation is {later:#x}: "
                "does check_mmio_spte() hit?")
    solution = (f"SPTE = {spte:#018x} (stored generation {stored:#x}, gfn {S.get_mmio_spte_gfn(spte, cfg):#x}, "
                f"access {S.get_mmio_spte_access(spte, cfg):#x}).\n"
                f"check_mmio_spte: {'hit' if hit else 'miss'}: {why}."
                + ("" if hit else " The fault takes the full path (RET_PF_INVALID)."))
    return Problem(seed, question, solution, "mmio")


def _classify_problem(seed: int, rng: random.Random) -> Problem:
    name, cfg = CONFIGS[rng.randrange(len(CONFIGS))]
    level = rng.choice((1, 2))
    pfn = rng.randrange(1, 1 << 20) << 9
    pool = [
        S.make_spte(level, S.ACC_ALL, pfn, cfg=cfg)[0],
        S.make_nonleaf_spte(pfn << 12, cfg=cfg),
        S.make_mmio_spte(pfn >> 9, 0, rng.randrange(1 << 19), cfg),
        S.FROZEN_SPTE, S.SHADOW_NONPRESENT_VALUE, S.REMOVED_SPTE_OLD, 0,
    ]
    if not cfg.kvm_ad_enabled:
        pool.append(S.make_spte(1, S.ACC_ALL, pfn, cfg=cfg, prefetch=True)[0])
    values = rng.sample(pool, 4)
    lines = "\n".join(f"  {v:#018x}" for v in values)
    question = (f"Seed {seed}: under {name}, classify each value found in a level-{level} "
                f"page table ({', '.join(S.SPTE_CLASSES)}):\n{lines}")
    answers = []
    for v in values:
        cls = S.classify(v, cfg, level)
        answers.append(f"  {v:#018x}: {cls} (bit 11 {'set' if v & S.SPTE_MMU_PRESENT_MASK else 'clear'})")
    return Problem(seed, question, "\n".join(answers), "classify")


_MAKERS = {"decode": _decode_problem, "build": _build_problem, "mmio": _mmio_problem,
           "classify": _classify_problem}


def problem(seed: int, kind: str | None = None) -> Problem:
    """Return the SPTE problem for ``seed`` (its kind drawn from the seed unless given)."""
    check_int("seed", seed, 0, (1 << 63) - 1)
    rng = random.Random(seed)
    drawn = KINDS[rng.randrange(len(KINDS))]
    if kind is not None:
        drawn = check_choice("kind", kind, KINDS)
    return _MAKERS[drawn](seed, rng)
