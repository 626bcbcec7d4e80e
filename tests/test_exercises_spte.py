"""kvmmu.exercises.spte: seeded, reproducible, and answered by the model."""
import re

import pytest

from kvmmu import spte as S
from kvmmu.exercises.base import Problem
from kvmmu.exercises.spte import CONFIGS, KINDS, access_name, problem


def test_same_seed_same_problem():
    for seed in range(40):
        assert problem(seed) == problem(seed)
        assert problem(seed).question.startswith(f"Seed {seed}:")


def test_different_seeds_differ_and_cover_every_kind():
    problems = [problem(s) for s in range(60)]
    assert len({p.question for p in problems}) == 60
    assert {p.kind for p in problems} == set(KINDS)


def test_problem_is_generic():
    p = problem(7)
    assert isinstance(p, Problem) and p.seed == 7
    assert repr(p) == p.question == str(p)
    assert p.solution() == p.solution_text


@pytest.mark.parametrize("seed", range(25))
def test_build_solution_matches_model(seed):
    p = problem(seed, "build")
    m = re.search(r"under (.+?), which SPTE .* level=(\d) \(\w+\), pte_access=([\w|]+), "
                  r"pfn=(0x[0-9a-f]+), host_writable=(\w+), prefetch=(\w+), write_tracked=(\w+)",
                  p.question)
    cfg = dict(CONFIGS)[m[1]]
    access = sum(getattr(S, n) for n in m[3].split("|")) if m[3] != "0" else 0
    spte, wrprot = S.make_spte(int(m[2]), access, int(m[4], 16), cfg=cfg,
                               host_writable=m[5] == "True", prefetch=m[6] == "True",
                               write_tracked=m[7] == "True")
    assert p.solution().startswith(f"new_spte = {spte:#018x}, wrprot = {wrprot}")


@pytest.mark.parametrize("seed", range(25))
def test_decode_solution_matches_model(seed):
    p = problem(seed, "decode")
    m = re.search(r"under (.+?), decode the level-(\d) SPTE (0x[0-9a-f]+)", p.question)
    dec = S.decode_spte(int(m[3], 16), dict(CONFIGS)[m[1]], int(m[2]))
    assert p.solution().startswith(str(dec))


@pytest.mark.parametrize("seed", range(25))
def test_mmio_solution_matches_model(seed):
    p = problem(seed, "mmio")
    m = re.search(r"under (.+?), a vCPU caches gfn (0x[0-9a-f]+) .* generation is (0x[0-9a-f]+)\. "
                  r".* generation is (0x[0-9a-f]+):", p.question)
    cfg = dict(CONFIGS)[m[1]]
    spte = S.make_mmio_spte(int(m[2], 16), 6, int(m[3], 16), cfg)
    hit = S.check_mmio_spte(spte, int(m[4], 16))
    assert f"SPTE = {spte:#018x}" in p.solution()
    assert ("check_mmio_spte: hit" if hit else "check_mmio_spte: miss") in p.solution()


@pytest.mark.parametrize("seed", range(25))
def test_classify_solution_matches_model(seed):
    p = problem(seed, "classify")
    m = re.search(r"under (.+?), classify each value found in a level-(\d)", p.question)
    cfg, level = dict(CONFIGS)[m[1]], int(m[2])
    values = re.findall(r"^  (0x[0-9a-f]{16})$", p.question, re.M)
    assert len(values) == 4
    for v in values:
        assert f"{v}: {S.classify(int(v, 16), cfg, level)} " in p.solution()


def test_access_name():
    assert access_name(S.ACC_ALL) == "ACC_EXEC_MASK|ACC_WRITE_MASK|ACC_USER_MASK"
    assert access_name(0) == "0"


@pytest.mark.parametrize("seed,kind,err", [(-1, None, ValueError), (1.0, None, TypeError),
                                           ("7", None, TypeError), (1, "guess", ValueError)])
def test_bad_seed_or_kind(seed, kind, err):
    with pytest.raises(err, match="seed" if kind is None else "kind"):
        problem(seed, kind)
