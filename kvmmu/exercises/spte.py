"""Seeded SPTE problems: decode, build, an MMIO SPTE's generation, classify values.

``problem(seed)`` draws everything from ``random.Random(seed)``; every answer
is computed by :mod:`kvmmu.spte`, never written by hand.  The problems follow
the exercise contract of :mod:`kvmmu.exercises.base`: ``.question``,
``.solution()``, ``.answer()`` and ``.check(answer)``.
"""
import random

from .. import spte as S
from ..checks import check_choice, check_int
from ..levels import KVM_PAGES_PER_HPAGE, level_name
from .classroom import Assignment, Slot
from .base import (AnswerForm, BoolField, ChoiceField, ChoiceListField, IntField,
                   Problem, check_seed, show_value)

__all__ = ["CONFIGS", "KINDS", "HMW_DIGITS", "access_name", "DECODE_FORM",
           "BUILD_FORM", "MMIO_FORM", "CLASSIFY_FORM", "problem", "ASSIGNMENT"]

#: The configurations problems use, in a fixed order (the rng indexes it):
#: (the model's name, what the question calls it, the configuration).
CONFIGS = (
    ("EPT_AD", "Intel EPT with A/D bits", S.EPT_AD),
    ("EPT_NO_AD", "Intel EPT without A/D bits", S.EPT_NO_AD),
    ("NPT", "AMD NPT", S.NPT),
)
KINDS = ("decode", "build", "mmio", "classify")
HMW_DIGITS = tuple("".join(map(str, state)) for state in S.HMW_STATES)


def access_name(access: int) -> str:
    """Return ``pte_access`` spelled with the kernel's ACC_* names."""
    check_int("access", access, 0, S.ACC_ALL)
    names = [n for bit, n in ((S.ACC_EXEC_MASK, "ACC_EXEC_MASK"),
                              (S.ACC_WRITE_MASK, "ACC_WRITE_MASK"),
                              (S.ACC_USER_MASK, "ACC_USER_MASK")) if access & bit]
    return "|".join(names) if names else "0"




def _random_leaf(rng: random.Random):
    """Draw make_spte() arguments; return them with what it builds.

    The result is ``(cfg entry, level, access, pfn, kwargs, (spte, wrprot))``.
    """
    entry = CONFIGS[rng.randrange(len(CONFIGS))]
    cfg = entry[2]
    level = rng.choice((1, 1, 1, 2, 3))
    access = rng.randrange(1, 8)
    pfn = rng.randrange(1, 1 << 24) & ~(KVM_PAGES_PER_HPAGE(level) - 1)
    kwargs = dict(host_writable=rng.random() < 0.8, prefetch=rng.random() < 0.3,
                  write_tracked=(not cfg.ept) and rng.random() < 0.3)
    built = S.make_spte(level, access, pfn, cfg=cfg, **kwargs)
    return entry, level, access, pfn, kwargs, built


def _leaf_params(entry, level, access, pfn, kwargs):
    return [("cfg", f"{entry[0]} ({entry[1]})"),
            ("level", f"{level} ({level_name(level)})"),
            ("pte_access", access_name(access)), ("pfn", pfn), *kwargs.items()]


DECODE_FORM = AnswerForm((
    ChoiceField("class", "what classify() says", S.SPTE_CLASSES),
    IntField("pfn", "the page frame, spte_to_pfn()", 0, (1 << 40) - 1),
    BoolField("writable", "the hardware W bit"),
    BoolField("executable", "is_executable_pte()"),
    BoolField("accessed", "is_accessed_spte()"),
    BoolField("dirty", "the D bit"),
    ChoiceField("hmw", "Host-writable, MMU-writable, Writable as three digits",
                HMW_DIGITS),
))


def _decode_problem(seed: int, rng: random.Random) -> Problem:
    entry, level, access, pfn, kwargs, (spte, wrprot) = _random_leaf(rng)
    name, cfg = entry[1], entry[2]
    dec = S.decode_spte(spte, cfg, level)
    expected = {"class": dec.cls, "pfn": dec.fields["pfn"],
                "writable": dec.fields["W"],
                "executable": S.is_executable_pte(spte, cfg),
                "accessed": dec.fields["A"], "dirty": dec.fields["D"],
                "hmw": dec.fields["H/M/W"][:3]}
    text = (f"Under {name}, decode the level-{level} SPTE {spte:#018x}. Which "
            "class is it? Give its pfn, whether it is writable and executable, "
            "Accessed and Dirty, and its Host-writable/MMU-writable/Writable state "
            "as three digits (e.g. '110').")
    args = _leaf_params(entry, level, access, pfn, kwargs)[1:]
    worked = (f"{dec}\nIt is what make_spte() builds for "
              + ", ".join(f"{k}={show_value(v)}" for k, v in args)
              + f" (wrprot={wrprot}).")
    params = [("cfg", f"{entry[0]} ({name})"), ("level", level),
              ("spte", f"{spte:#018x}")]
    return Problem.make(seed, "decode", __name__, params, text, DECODE_FORM,
                        expected, worked)


BUILD_FORM = AnswerForm((
    IntField("new_spte", "the SPTE make_spte() returns"),
    BoolField("wrprot", "make_spte()'s return value"),
))


def _build_problem(seed: int, rng: random.Random) -> Problem:
    entry, level, access, pfn, kwargs, (spte, wrprot) = _random_leaf(rng)
    text = (f"Under {entry[1]}, which SPTE does make_spte() build for these "
            "arguments, and does it return wrprot=True?")
    worked = (f"new_spte = {spte:#018x}, wrprot = {wrprot}\n"
              f"{S.decode_spte(spte, entry[2], level)}")
    params = _leaf_params(entry, level, access, pfn, kwargs)
    return Problem.make(seed, "build", __name__, params, text, BUILD_FORM,
                        {"new_spte": spte, "wrprot": wrprot}, worked)


MMIO_FORM = AnswerForm((
    IntField("spte", "the SPTE make_mmio_spte() builds"),
    BoolField("hit", "what check_mmio_spte() returns for the later generation"),
))


def _mmio_problem(seed: int, rng: random.Random) -> Problem:
    entry = CONFIGS[(0, 2)[rng.randrange(2)]]
    name, cfg = entry[1], entry[2]
    gfn = rng.randrange(0x100, 0x100000)
    gen = rng.randrange(0, 1 << 21) & ~1          # even: address space 0
    if rng.random() < 0.25:
        gen |= S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
    later = rng.choice((gen, (gen & ~S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS) + 2,
                        gen | S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
                        gen + (1 << 20)))
    access = S.ACC_WRITE_MASK | S.ACC_USER_MASK
    spte = S.make_mmio_spte(gfn, access, gen, cfg)
    stored = S.get_mmio_spte_generation(spte)
    hit = S.check_mmio_spte(spte, later)
    if later & S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        why = ("the current generation has KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS set, "
               "so every MMIO SPTE misses")
    elif hit:
        why = f"the low 19 bits match ({stored:#x})"
    else:
        why = f"stored {stored:#x} != current {later & S.MMIO_SPTE_GEN_MASK:#x}"
    text = (f"Under {name}, a vCPU caches gfn {gfn:#x} as MMIO with access "
            f"{access_name(access)} while the memslots generation is {gen:#x}. "
            "Which SPTE does make_mmio_spte() build? Later the generation is "
            f"{later:#x}: does check_mmio_spte() hit?")
    worked = (f"SPTE = {spte:#018x} (stored generation {stored:#x}, "
              f"gfn {S.get_mmio_spte_gfn(spte, cfg):#x}, "
              f"access {S.get_mmio_spte_access(spte, cfg):#x}).\n"
              f"check_mmio_spte: {'hit' if hit else 'miss'}: {why}."
              + ("" if hit else " The fault takes the full path (RET_PF_INVALID)."))
    params = [("cfg", f"{entry[0]} ({name})"), ("gfn", gfn),
              ("access", access_name(access)), ("generation", gen),
              ("later", later)]
    return Problem.make(seed, "mmio", __name__, params, text, MMIO_FORM,
                        {"spte": spte, "hit": hit}, worked)


CLASSIFY_FORM = AnswerForm((
    ChoiceListField("classes", "what classify() says of each value, in order",
                    S.SPTE_CLASSES, 4),
))


def _classify_problem(seed: int, rng: random.Random) -> Problem:
    entry = CONFIGS[rng.randrange(len(CONFIGS))]
    name, cfg = entry[1], entry[2]
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
    classes = [S.classify(v, cfg, level) for v in values]
    lines = "\n".join(f"  {v:#018x}" for v in values)
    text = (f"Under {name}, classify each value found in a level-{level} page "
            f"table:\n{lines}")
    worked = "\n".join(
        f"  {v:#018x}: {cls} "
        f"(bit 11 {'set' if v & S.SPTE_MMU_PRESENT_MASK else 'clear'})"
        for v, cls in zip(values, classes))
    params = [("cfg", f"{entry[0]} ({name})"), ("level", level),
              ("values", ", ".join(f"{v:#x}" for v in values))]
    return Problem.make(seed, "classify", __name__, params, text, CLASSIFY_FORM,
                        {"classes": classes}, worked)


_MAKERS = {"decode": _decode_problem, "build": _build_problem,
           "mmio": _mmio_problem, "classify": _classify_problem}


def problem(seed: int, kind: str | None = None) -> Problem:
    """Return the SPTE problem for ``seed`` in [0, 2**32).

    Its kind is drawn from the seed unless ``kind`` names one of KINDS.

    The kind is drawn first either way, so ``problem(seed, kind)`` with the
    kind ``problem(seed)`` drew is the same problem.
    """
    check_seed(seed)
    rng = random.Random(seed)
    drawn = KINDS[rng.randrange(len(KINDS))]
    if kind is not None:
        drawn = check_choice("kind", kind, KINDS)
    return _MAKERS[drawn](seed, rng)


#: Chapter 1's nbgrader assignment (tools/classroom.py builds it): one problem
#: of each kind, each student's own (kvmmu.exercises.classroom.student_seed).
ASSIGNMENT = Assignment("ch01_spte_format", __name__, (
    Slot("build", 2), Slot("decode", 2), Slot("mmio", 2), Slot("classify", 1),
))
