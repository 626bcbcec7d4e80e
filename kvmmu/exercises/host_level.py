"""Seeded problems of chapter 2: the level KVM maps a gfn at, and the retry check.

``problem(seed)`` draws everything from ``random.Random(seed)``, the kind
first; the answers are computed by the model, never written by hand:

- ``level``: a memslot (base gfn, size, host address), the host's backing,
  perhaps dirty logging or a shadowed guest page table, and a gfn; gup's
  pfn for it is given.  At what level does KVM map the gfn, what is the
  largest level the memslot allows, and which pfn does KVM's leaf map?
  The model's fault path answers (``kvm_mmu_do_page_fault``, explained by
  :func:`kvmmu.viz.host_level.explain_mapping_level`).
- ``retry``: the MMU-notifier fields start at a sequence number; a few
  invalidations begin and end around a fault's snapshot of the sequence.
  What does ``mmu_invalidate_retry_gfn()`` say for the fault's gfn, and what
  are ``mmu_invalidate_seq`` and ``mmu_invalidate_in_progress`` then?  The
  model's ``kvm_mmu_invalidate_begin/range_add/end`` answer.

The problems follow the contract of :mod:`kvmmu.exercises.base`.
"""
import random

from ..checks import check_choice
from ..cpu import run_alone
from ..host_mm import host_translation
from ..kvm_host import (kvm_mmu_invalidate_begin, kvm_mmu_invalidate_end,
                        kvm_mmu_invalidate_range_add, mmu_invalidate_retry_gfn)
from ..kvm_main import kvm_create_vm
from ..levels import KVM_PAGES_PER_HPAGE, PG_LEVEL_1G, PG_LEVEL_2M, level_name
from ..memslots import GFN_MAX
from ..scenarios.host_level import make_host_vm
from ..viz.host_level import explain_mapping_level
from .base import AnswerForm, BoolField, ChoiceField, IntField, Problem, check_seed
from .classroom import Assignment, Slot

__all__ = ["KINDS", "LEVELS", "LEVEL_FORM", "RETRY_FORM", "problem", "ASSIGNMENT"]

KINDS = ("level", "retry")
LEVELS = ("4K", "2M", "1G")

_PAGES_2M = KVM_PAGES_PER_HPAGE(PG_LEVEL_2M)
_PAGES_1G = KVM_PAGES_PER_HPAGE(PG_LEVEL_1G)
_BACKING_TEXT = {"4K": "4 KiB pages", "2M": "transparent huge pages (2 MiB)",
                 "1G": "1 GiB pages"}


# --------------------------------------------------------------------------
# level: where the memslot, the host and KVM meet

LEVEL_FORM = AnswerForm((
    ChoiceField("level", "the size of KVM's leaf SPTE for the gfn", LEVELS),
    ChoiceField("slot_level", "the largest size lpage_info and dirty logging allow",
                LEVELS),
    IntField("pfn", "the first page frame KVM's leaf maps", 0, (1 << 40) - 1),
))


def _draw_slot(rng: random.Random) -> dict:
    # Slot start: 1G aligned, 2M aligned, or a few pages off.
    base = rng.randrange(1, 16) * _PAGES_1G
    shape = rng.choice(("1G", "1G", "2M", "2M", "off"))
    if shape == "2M":
        base += rng.randrange(1, 512) * _PAGES_2M
    elif shape == "off":
        base += rng.randrange(1, _PAGES_2M)
    npages = rng.choice((_PAGES_2M, 2 * _PAGES_2M, 2 * _PAGES_2M + 1, 0x600,
                         _PAGES_1G, _PAGES_1G + _PAGES_2M, 2 * _PAGES_1G))
    # Host address: congruent with the gfn (the usual case) or off by some pages.
    ua_pages = 0x7F0000000 + rng.randrange(0, 64) * _PAGES_1G + (base % _PAGES_1G)
    if rng.random() < 0.25:
        ua_pages += rng.choice((1, 0x10, 0x100, _PAGES_2M + 3))
    backing = rng.choice(("4K", "2M", "2M", "1G", "1G"))
    where = rng.choice(("start", "middle", "last", "any"))
    gfn = {"start": base, "last": base + npages - 1,
           "middle": base + npages // 2}.get(where, base + rng.randrange(npages))
    return dict(base_gfn=base, npages=npages, userspace_addr=ua_pages << 12,
                backing=backing, gfn=gfn, dirty_logging=rng.random() < 0.08,
                shadowed=rng.random() < 0.08)


def _level_problem(seed: int, rng: random.Random) -> Problem:
    p = _draw_slot(rng)
    kvm = make_host_vm(**p)
    decision = explain_mapping_level(kvm, p["gfn"])
    hva = p["userspace_addr"] + ((p["gfn"] - p["base_gfn"]) << 12)
    gup_pfn = host_translation(kvm.mm, hva)[0]
    extras = []
    if p["dirty_logging"]:
        extras.append("Dirty logging is enabled on the slot.")
    if p["shadowed"]:
        extras.append("KVM shadows a guest page table in that gfn "
                      "(kvm_mmu_gfn_disallow_lpage() was called for it).")
    text = " ".join([
        f"A memslot maps {p['npages']:#x} pages from gfn {p['base_gfn']:#x} at "
        f"host address {p['userspace_addr']:#x}; the host backs it with "
        f"{_BACKING_TEXT[p['backing']]}.", *extras,
        f"A vCPU faults on gfn {p['gfn']:#x} (TDP MMU, 1G pages supported) and "
        f"gup returns pfn {gup_pfn:#x} for it. At what level does KVM map the gfn, "
        "what is the largest level the memslot allows there (lpage_info and dirty "
        "logging), and which page frame does the leaf SPTE start at?"])
    expected = {"level": level_name(decision.level),
                "slot_level": level_name(decision.slot_level),
                "pfn": decision.mapped_pfn}
    worked = (f"level {expected['level']}, slot_level {expected['slot_level']}, "
              f"pfn {decision.mapped_pfn:#x}.\n{decision.text(wrap=False)}")
    params = [("base_gfn", p["base_gfn"]), ("npages", p["npages"]),
              ("userspace_addr", p["userspace_addr"]), ("backing", p["backing"]),
              ("dirty_logging", p["dirty_logging"]), ("shadowed", p["shadowed"]),
              ("gfn", p["gfn"]), ("gup_pfn", gup_pfn)]
    return Problem.make(seed, "level", __name__, params, text, LEVEL_FORM, expected,
                        worked)


# --------------------------------------------------------------------------
# retry: the sequence counter and the range, by hand

RETRY_FORM = AnswerForm((
    BoolField("retry", "what mmu_invalidate_retry_gfn() says"),
    IntField("seq", "mmu_invalidate_seq at the check", 0, (1 << 32) - 1),
    IntField("in_progress", "mmu_invalidate_in_progress at the check", 0, 7),
))


def _draw_events(rng: random.Random) -> tuple:
    # Invalidations that begin (with a range) and end, and the fault's
    # snapshot among them; never more ends than begins.
    events, open_now = [], 0
    for _ in range(rng.randrange(2, 6)):
        if open_now and rng.random() < 0.45:
            events.append(("end",))
            open_now -= 1
        else:
            start = rng.randrange(0x100, 0x800) << 4
            events.append(("begin", start, start + rng.choice((1, 0x10, 0x200))))
            open_now += 1
    events.insert(rng.randrange(len(events) + 1), ("snapshot",))
    return tuple(events)


def _event_text(event: tuple) -> str:
    if event[0] == "begin":
        return f"begin [{event[1]:#x}, {event[2]:#x})"
    return event[0]


def _run_events(start_seq: int, events: tuple, gfn: int) -> tuple:
    # The model's notifier bracket, each call under mmu_lock held for write.
    kvm = kvm_create_vm()
    kvm.mmu_invalidate_seq = start_seq
    snapshot = None

    def locked(fn, *args):
        run_alone(kvm, kvm.mmu_lock.write_lock())
        try:
            return fn(kvm, *args)
        finally:
            run_alone(kvm, kvm.mmu_lock.write_unlock())

    for event in events:
        if event[0] == "snapshot":
            snapshot = kvm.mmu_invalidate_seq
        elif event[0] == "begin":
            locked(kvm_mmu_invalidate_begin)
            locked(kvm_mmu_invalidate_range_add, event[1], event[2])
        else:
            locked(kvm_mmu_invalidate_end)
    retry = bool(locked(mmu_invalidate_retry_gfn, snapshot, gfn))
    return snapshot, retry, kvm


def _retry_problem(seed: int, rng: random.Random) -> Problem:
    start_seq = rng.randrange(0, 200)
    events = _draw_events(rng)
    ranges = [e for e in events if e[0] == "begin"]
    lo, hi = ranges[rng.randrange(len(ranges))][1:]
    gfn = rng.choice((lo, hi - 1, hi, lo + rng.randrange(0x1000)))
    gfn = min(gfn, GFN_MAX)
    snapshot, retry, kvm = _run_events(start_seq, events, gfn)
    shown = "; ".join(_event_text(e) for e in events)
    text = (f"mmu_invalidate_seq is {start_seq} and no invalidation is in "
            f"progress. Then, in order: {shown}. Each 'begin' is "
            "kvm_mmu_invalidate_begin() and kvm_mmu_invalidate_range_add() of that "
            "gfn range, 'end' is kvm_mmu_invalidate_end(), 'snapshot' is the fault "
            "reading mmu_seq. Now the fault, holding mmu_lock, calls "
            f"mmu_invalidate_retry_gfn(kvm, mmu_seq, {gfn:#x}). Does it say retry, "
            "and what are mmu_invalidate_seq and mmu_invalidate_in_progress?")
    expected = {"retry": retry, "seq": kvm.mmu_invalidate_seq,
                "in_progress": kvm.mmu_invalidate_in_progress}
    if kvm.mmu_invalidate_in_progress:
        window = (f"in progress: {kvm.mmu_invalidate_in_progress}, range "
                  f"[{kvm.mmu_invalidate_range_start:#x}, "
                  f"{kvm.mmu_invalidate_range_end:#x})")
    else:
        window = "nothing in progress"
    seq = kvm.mmu_invalidate_seq
    covered = (kvm.mmu_invalidate_in_progress and
               kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end)
    why = ("the gfn is inside the range in progress" if covered else
           "the sequence moved since the snapshot" if snapshot != seq
           else "no invalidation covers the gfn and the sequence has not moved")
    worked = (f"retry {retry}, seq {seq}, in_progress "
              f"{kvm.mmu_invalidate_in_progress}.\nThe snapshot read {snapshot}; "
              f"each end moves the sequence; at the check: seq {seq}, {window}.\n"
              f"{'Retry' if retry else 'Go on'}: {why}.")
    params = [("start_seq", start_seq), ("events", shown), ("gfn", gfn)]
    return Problem.make(seed, "retry", __name__, params, text, RETRY_FORM, expected,
                        worked)


_MAKERS = {"level": _level_problem, "retry": _retry_problem}


def problem(seed: int, kind: str | None = None) -> Problem:
    """Chapter 2's problem for ``seed`` in [0, 2**32); its kind drawn from the seed.

    The kind is drawn first either way, so ``problem(seed, kind)`` with the
    kind ``problem(seed)`` drew is the same problem.
    """
    check_seed(seed)
    rng = random.Random(seed)
    drawn = KINDS[rng.randrange(len(KINDS))]
    if kind is not None:
        drawn = check_choice("kind", kind, KINDS)
    return _MAKERS[drawn](seed, rng)


#: Chapter 2's nbgrader assignment (tools/classroom.py builds it): each student's
#: own problems (kvmmu.exercises.classroom.student_seed).
ASSIGNMENT = Assignment("ch02_host_mapping_level", __name__, (
    Slot("level", 2), Slot("retry", 2), Slot("level", 1),
))
