"""Seeded guest page-walk problems: translate addresses or name the fault and its error code.

``problem(seed)`` draws a small guest (4-level page tables with a few
mappings), a CPU mode and four accesses from ``random.Random(seed)``; the
student translates each access or names the page fault and its error code,
OSTEP style.  ``problem(seed, kind="ad")`` asks which Accessed/Dirty bits a
sequence of accesses sets.  Every answer is computed by the walker
(:func:`kvmmu.viz.walk_trace.trace_walk`), never written by hand.
"""
import random

from ..checks import check_choice, check_int
from ..guest import HOST, GuestPageTables, guest_read_u64, guest_vm, guest_write_u64
from ..pferr import PFERR_FETCH_MASK, PFERR_USER_MASK, PFERR_WRITE_MASK
from ..spte import PT64_NX_MASK, PT_PAGE_SIZE_MASK, PT_PRESENT_MASK, PT_USER_MASK, PT_WRITABLE_MASK
from ..viz import walk_trace as WT
from ..viz.walk_trace import LEVEL_NAMES, access_str
from .base import Problem

__all__ = ["KINDS", "problem"]

KINDS = ("translate", "ad")
P, W, U, NX, PS = (PT_PRESENT_MASK, PT_WRITABLE_MASK, PT_USER_MASK, PT64_NX_MASK,
                   PT_PAGE_SIZE_MASK)
LEGEND = ("Entry bits: P=0, W(R/W)=1, U(U/S)=2, A=5, D=6, PS=7, NX=63; the address is in bits "
          "51:12; MAXPHYADDR is 46, so bits 51:46 are reserved.  Index bits of a virtual "
          "address: PML4 47:39, PDPT 38:30, PD 29:21, PT 20:12.  Error-code bits: P=0x1, W=0x2, "
          "U=0x4, RSVD=0x8, I/D=0x10, PK=0x20.")


def _guest(rng: random.Random):
    """Draw the guest: a recipe (so it can be rebuilt) of mappings and tweaks."""
    user_base = rng.randrange(0x10, 0x7F00) << 28          # canonical lower half
    kern_base = 0xFFFF_8000_0000_0000 | (rng.randrange(0, 0x100) << 30)
    mappings = [
        ("user code", user_base, rng.randrange(0x200, 0x300), 1,
         P | U if rng.random() < 0.7 else P | U | NX),
        ("user data", user_base + 0x1000, rng.randrange(0x300, 0x400), 1,
         P | W | U | NX if rng.random() < 0.8 else P | U | NX),
        ("kernel 2M", kern_base, rng.randrange(1, 0x40) << 9, 2,
         P | W | NX if rng.random() < 0.6 else P | W),
    ]
    if rng.random() < 0.5:
        mappings.append(("kernel 4K", kern_base + 0x20_0000 + (rng.randrange(0, 8) << 12),
                         rng.randrange(0x400, 0x500), 1, P | (W if rng.random() < 0.5 else 0)))
    tweak = rng.choice(("none", "none", "none", "pde-user-ro", "rsvd", "not-present"))
    return mappings, tweak


def _build(mappings, tweak):
    vcpu = guest_vm([(0, 0x800, HOST)])
    kvm = vcpu.kvm
    pt = GuestPageTables(kvm, range(0x100, 0x120))
    for _name, gva, gfn, level, flags in mappings:
        pt.map(gva, gfn << 12, level=level, flags=flags)
    user_data_gva = mappings[1][1]
    if tweak == "pde-user-ro":       # the user PDE loses W: every user page below is read-only
        gpa = pt.entry_gpa(user_data_gva, 2)
        guest_write_u64(kvm, gpa, guest_read_u64(kvm, gpa) & ~W)
    elif tweak == "rsvd":            # a reserved bit in the user data PTE
        gpa = pt.entry_gpa(user_data_gva, 1)
        guest_write_u64(kvm, gpa, guest_read_u64(kvm, gpa) | 1 << 48)
    elif tweak == "not-present":     # the user data page was swapped out
        gpa = pt.entry_gpa(user_data_gva, 1)
        guest_write_u64(kvm, gpa, guest_read_u64(kvm, gpa) & ~P)
    return vcpu, pt


def _cpu(rng: random.Random) -> dict:
    return dict(cr0_wp=rng.random() < 0.8, cr4_smep=rng.random() < 0.5,
                cr4_smap=rng.random() < 0.4, efer_nx=rng.random() < 0.85,
                eflags_ac=rng.random() < 0.2)


def _cpu_text(cpu: dict) -> str:
    names = {"cr0_wp": "CR0.WP", "cr4_smep": "CR4.SMEP", "cr4_smap": "CR4.SMAP",
             "efer_nx": "EFER.NX", "eflags_ac": "EFLAGS.AC"}
    return ", ".join(f"{names[k]}={int(v)}" for k, v in cpu.items())


def _tables_text(vcpu) -> str:
    from ..viz.walker import page_table_tree   # pure data, no matplotlib

    lines = []
    for _level, gfn, entries in page_table_tree(vcpu, max_entries=8):
        body = ", ".join(f"[{i}] {v:#x}" for i, v in entries)
        lines.append(f"  table at gfn {gfn:#x}: {body}")
    return "\n".join(lines)


#: The access a program would normally make to each kind of mapping.
NATURAL = {"user code": [PFERR_USER_MASK | PFERR_FETCH_MASK, PFERR_USER_MASK],
           "user data": [PFERR_USER_MASK, PFERR_USER_MASK | PFERR_WRITE_MASK],
           "kernel 2M": [0, PFERR_WRITE_MASK],
           "kernel 4K": [0, PFERR_WRITE_MASK]}


def _queries(rng: random.Random, mappings) -> list:
    """Four accesses over different mappings: mostly natural ones, some that should fault."""
    picks = rng.sample(range(len(mappings)), min(4, len(mappings)))
    while len(picks) < 4:
        picks.append(rng.randrange(len(mappings)))
    out = []
    for i in picks:
        name, gva, _gfn, level, _f = mappings[i]
        span = 1 << (12 + 9 * (level - 1))
        addr = gva + rng.randrange(0, span) // 8 * 8
        if rng.random() < 0.1:
            addr = gva + span * 3 + rng.randrange(0, 0x1000) // 8 * 8   # unmapped
        if rng.random() < 0.6:
            acc = rng.choice(NATURAL[name])
        else:
            acc = (rng.choice((0, PFERR_WRITE_MASK, PFERR_FETCH_MASK))
                   | rng.choice((0, PFERR_USER_MASK)))
        out.append((addr, acc))
    return out


def _answer(trace) -> str:
    path = " -> ".join(f"{r.name}[{r.index}]={r.gpte:#x}" for r in trace.rows)
    return f"{trace.result_line()}\n     path: {path}"


def _translate_problem(seed: int, rng: random.Random) -> Problem:
    mappings, tweak = _guest(rng)
    cpu = _cpu(rng)
    vcpu, pt = _build(mappings, tweak)
    arch = pt.load(vcpu, **cpu)
    queries = _queries(rng, mappings)
    qtext = "\n".join(f"  {n}. {access_str(acc)} of {addr:#x}"
                      for n, (addr, acc) in enumerate(queries, 1))
    question = (f"Seed {seed}: a 64-bit guest (4-level paging) has CR3 = {arch.cr3:#x} and "
                f"{_cpu_text(cpu)}.  Its page tables hold these present entries:\n"
                f"{_tables_text(vcpu)}\n{LEGEND}\n"
                "For each access, give the guest physical address, or name the page fault "
                f"and its error code (assume each access starts from the tables above):\n{qtext}")
    answers = []
    for n, (addr, acc) in enumerate(queries, 1):
        fresh, fresh_pt = _build(mappings, tweak)
        fresh_pt.load(fresh, **cpu)
        trace = WT.trace_walk(fresh, addr, acc)
        answers.append(f"  {n}. {access_str(acc)} of {addr:#x}: {_answer(trace)}")
    return Problem(seed, question, "\n".join(answers), "translate")


def _ad_problem(seed: int, rng: random.Random) -> Problem:
    mappings, _tweak = _guest(rng)
    cpu = dict(cr0_wp=True, cr4_smep=False, cr4_smap=False, efer_nx=True, eflags_ac=False)
    vcpu, pt = _build(mappings, "none")
    pt.load(vcpu, **cpu)
    kvm = vcpu.kvm
    name, gva, _gfn, level, _flags = mappings[1]           # user data: P W U NX (or read-only)
    seq = [rng.choice((0, PFERR_WRITE_MASK)) | PFERR_USER_MASK for _ in range(3)]
    leaf_gpa = pt.entry_gpa(gva, level)
    before = guest_read_u64(kvm, leaf_gpa)
    question = (f"Seed {seed}: the guest's {name} page at {gva:#x} is mapped by the PTE at gpa "
                f"{leaf_gpa:#x}, now {before:#x} (A and D clear, and so are the A bits of the "
                "tables above it).  KVM walks these accesses in order, for emulation: "
                + ", ".join(access_str(a) for a in seq)
                + ".  After each walk, what is the PTE, and what access bits (pte_access) does "
                  "the walk return?  Which entries did KVM write, and in which order?")
    lines = []
    for n, acc in enumerate(seq, 1):
        trace = WT.trace_walk(vcpu, gva, acc)
        writes = ", ".join(f"{LEVEL_NAMES[lv]} {o:#x}->{v:#x}" for lv, o, v, _r in trace.ad_updates)
        lines.append(f"  {n}. {access_str(acc)}: {trace.result_line()}; PTE now "
                     f"{guest_read_u64(kvm, leaf_gpa):#x}; A/D writes (top-down): {writes or 'none'}")
    return Problem(seed, question, "\n".join(lines), "ad")


def problem(seed: int, kind: str | None = None) -> Problem:
    """Return the seeded problem: ``kind`` is "translate" (default) or "ad"."""
    check_int("seed", seed, 0, 2**63 - 1)
    kind = "translate" if kind is None else check_choice("kind", kind, KINDS)
    rng = random.Random(seed)
    if kind == "ad":
        return _ad_problem(seed, rng)
    return _translate_problem(seed, rng)
