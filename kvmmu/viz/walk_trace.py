"""A guest walk explained level by level: what chapter 5 and its widget print.

A view, not kernel code: :func:`trace_walk` runs the real walker
(:func:`kvmmu.paging_tmpl.walk_addr_generic`, alone on the vCPU) and then
explains its record -- each level's entry and the access accumulated so
far, and for a fault the error-code bits with the rule behind each.  The
decision is always the walker's; the words are only the book's
(``_permission_reasons`` restates what ``permission_fault`` decided by
table lookup).  Also the short text forms of entries, access bits and
error codes.  Pure text: no matplotlib, no ipywidgets.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..guest import GPTE_FLAG_NAMES, gpte_str
from ..kvm_host import KvmVcpu
from ..levels import PAGE_SHIFT
from ..memslots import KVM_MEM_READONLY, kvm_is_visible_memslot, kvm_mem_is_private
from ..checks import check_int
from ..paging_tmpl import (PT_INDEX, check_access, gpte_access, gpte_pkeys, is_last_gpte,
                           is_rsvd_bits_set, run_walk)
from ..pferr import (PFERR_FETCH_MASK, PFERR_IMPLICIT_ACCESS, PFERR_PK_MASK, PFERR_PRESENT_MASK,
                     PFERR_RSVD_MASK, PFERR_USER_MASK, PFERR_WRITE_MASK, pferr_str)
from ..spte import ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, PT_PRESENT_MASK

__all__ = ["GPTE_FLAG_NAMES", "LEVEL_NAMES", "PAGE_NAMES", "gpte_str", "acc_str", "pferr_str",
           "access_str", "trace_walk"]

#: The kernel's names of each level's entry, and the page size of a leaf at each level.
LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
PAGE_NAMES = {1: "4K", 2: "2M", 3: "1G"}
ACC_ALL_BITS = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK


def acc_str(acc: int) -> str:
    """Text of ACC_* bits, e.g. ``'U W X'`` (``'-'`` for none)."""
    check_int("acc", acc, 0, ACC_ALL_BITS)
    parts = [n for bit, n in ((ACC_USER_MASK, "U"), (ACC_WRITE_MASK, "W"), (ACC_EXEC_MASK, "X"))
             if acc & bit]
    return " ".join(parts) if parts else "-"


def access_str(access: int) -> str:
    """Text of an access, e.g. ``'user write'``."""
    check_access(access)
    who = "user" if access & PFERR_USER_MASK else (
        "implicit supervisor" if access & PFERR_IMPLICIT_ACCESS else "supervisor")
    what = "write" if access & PFERR_WRITE_MASK else (
        "fetch" if access & PFERR_FETCH_MASK else "read")
    return f"{who} {what}"


@dataclass
class WalkRow:
    """One level of a traced walk."""

    level: int
    name: str
    table_gfn: int | None      # None for the PAE PDPTE (a register, not memory)
    index: int
    pte_gpa: int | None
    gpte: int
    acc_after: int              # ACC_* bits after ANDing this level in
    note: str


@dataclass
class WalkTrace:
    """A walk, level by level: the path, the result or the error code with its reasons."""

    addr: int
    access: int
    mode: str
    rows: list
    ok: bool
    gfn: int | None
    pte_access: int | None
    leaf_level: int | None
    error_code: int | None
    error_bits: list            # (name, set?, why) for P W U RSVD I/D PK
    reason: str
    ad_updates: list            # (level, old, new, outcome)
    retries: int

    @property
    def gpa(self) -> int | None:
        return None if self.gfn is None else (self.gfn << PAGE_SHIFT) | (self.addr & 0xFFF)

    def table(self) -> str:
        """The walk as a text table."""
        lines = [f"walk of {self.addr:#x} for a {access_str(self.access)} ({self.mode} paging)",
                 f"{'level':<6} {'table gfn':>9} {'index':>5} {'entry gpa':>10}  "
                 f"{'entry':<18}  {'flags':<14} {'access so far':<13} note"]
        for r in self.rows:
            gfn = "-" if r.table_gfn is None else f"{r.table_gfn:#x}"
            gpa = "register" if r.pte_gpa is None else f"{r.pte_gpa:#x}"
            lines.append(f"{r.name:<6} {gfn:>9} {r.index:>5} {gpa:>10}  {r.gpte:#018x}  "
                         f"{gpte_str(r.gpte):<14} {acc_str(r.acc_after):<13} {r.note}")
        lines.append(self.result_line())
        if not self.ok:
            for name, is_set, why in self.error_bits:
                lines.append(f"  {name:<4} = {int(is_set)}  {why}")
        for level, old, new, outcome in self.ad_updates:
            lines.append(f"  A/D {LEVEL_NAMES[level]}: {old:#x} -> {new:#x}: {outcome}")
        if self.retries:
            lines.append(f"  the walk restarted {self.retries} time(s)")
        return "\n".join(lines)

    def result_line(self) -> str:
        if self.ok:
            return (f"=> gpa {self.gpa:#x} ({PAGE_NAMES.get(self.leaf_level, '?')} page, "
                    f"gfn {self.gfn:#x}), access {acc_str(self.pte_access)}")
        return (f"=> #PF, error code {self.error_code:#x} [{pferr_str(self.error_code)}]: "
                f"{self.reason}")

    def __repr__(self):
        return self.table()


def _permission_reasons(regs, acc: int, access: int, pkey: int) -> list[str]:
    # Which access rule refused the access, in words (for the trace only;
    # the decision itself is permission_fault's).
    user = access & PFERR_USER_MASK
    write = access & PFERR_WRITE_MASK
    fetch = access & PFERR_FETCH_MASK
    reasons = []
    if user and not acc & ACC_USER_MASK:
        reasons.append("a user access to a supervisor page (U=0 at some level)")
    if write and not acc & ACC_WRITE_MASK and (user or regs.cr0_wp):
        reasons.append("a write to a read-only page (W=0 at some level"
                       + ("" if user else ", and CR0.WP=1") + ")")
    if fetch and not acc & ACC_EXEC_MASK and regs.efer_nx:
        reasons.append("a fetch from a no-execute page (NX=1 at some level)")
    if fetch and not user and acc & ACC_USER_MASK and regs.cr4_smep:
        reasons.append("SMEP: a supervisor fetch from a user page")
    if (not fetch and not user and acc & ACC_USER_MASK and regs.cr4_smap
            and (access & PFERR_IMPLICIT_ACCESS or not regs.eflags_ac)):
        reasons.append("SMAP: a supervisor data access to a user page"
                       + (" (implicit: EFLAGS.AC cannot lift it)" if access & PFERR_IMPLICIT_ACCESS
                          else " with EFLAGS.AC=0"))
    if regs.walk_mmu.pkru_mask and acc & ACC_USER_MASK and not fetch:
        ad = (regs.pkru >> (2 * pkey)) & 1
        wd = (regs.pkru >> (2 * pkey + 1)) & 1
        if ad:
            reasons.append(f"protection key {pkey}: PKRU.AD{pkey}=1 forbids data access")
        elif wd and write and (user or regs.cr0_wp):
            reasons.append(f"protection key {pkey}: PKRU.WD{pkey}=1 forbids the write")
    return reasons


def _rows(vcpu: KvmVcpu, walker, ret: int, addr: int) -> list[WalkRow]:
    kvm, regs = vcpu.kvm, vcpu.arch
    mmu = regs.walk_mmu
    rows = []
    acc = ACC_ALL_BITS
    last = walker.level
    top = mmu.root_level
    for level in range(top, last - 1, -1):
        gpte = walker.gpte_read[level - 1]
        name = LEVEL_NAMES[level]
        if top == 3 and level == 3:
            rows.append(WalkRow(level, name, None, (addr >> 30) & 3, None, gpte, acc,
                                "PDPTR register, loaded with CR3"
                                + ("" if gpte & PT_PRESENT_MASK else "; not present")))
            continue
        table_gfn = walker.table_gfn[level - 1]
        slot = kvm.kvm_memslots(0).gfn_to_memslot(table_gfn)
        if level == last and not ret and not kvm_is_visible_memslot(slot):
            rows.append(WalkRow(level, name, table_gfn, PT_INDEX(addr, level),
                                walker.pte_gpa[level - 1], 0, acc,
                                "table gfn is in no memslot: nothing to read"))
            break
        note = []
        if gpte & PT_PRESENT_MASK:
            acc &= gpte_access(gpte)
        if not gpte & PT_PRESENT_MASK:
            note.append("not present")
        elif is_rsvd_bits_set(mmu, gpte, level):
            bad = gpte & mmu.rsvd_bits_mask[(gpte >> 7) & 1][level - 1]
            note.append(f"reserved bits {bad:#x} set")
        elif level == last and (ret or is_last_gpte(mmu, level, gpte)):
            note.append(f"leaf: {PAGE_NAMES.get(level, '?')} page")
        if slot is not None and slot.flags & KVM_MEM_READONLY:
            note.append("table in a read-only slot")
        if kvm_mem_is_private(kvm, table_gfn):
            note.append("table gfn is private")
        rows.append(WalkRow(level, name, table_gfn, PT_INDEX(addr, level),
                            walker.pte_gpa[level - 1], gpte, acc, "; ".join(note)))
    return rows


def _error_bits(code: int, access: int) -> list:
    fetch = access & PFERR_FETCH_MASK
    bits = [
        ("P", code & PFERR_PRESENT_MASK,
         "the entries were present: a protection or reserved-bit fault"
         if code & PFERR_PRESENT_MASK else "an entry on the path was not present"),
        ("W", code & PFERR_WRITE_MASK, "the access was a write" if access & PFERR_WRITE_MASK
         else "the access was not a write"),
        ("U", code & PFERR_USER_MASK, "the access came from user mode (CPL 3)"
         if access & PFERR_USER_MASK else "the access was a supervisor access"),
        ("RSVD", code & PFERR_RSVD_MASK, "a reserved bit was set in an entry"
         if code & PFERR_RSVD_MASK else "no reserved bit was found"),
        ("I/D", code & PFERR_FETCH_MASK,
         "an instruction fetch, reported because EFER.NX or CR4.SMEP is set"
         if code & PFERR_FETCH_MASK else
         ("a fetch, but neither EFER.NX nor CR4.SMEP is set, so it is not reported"
          if fetch else "not an instruction fetch")),
        ("PK", code & PFERR_PK_MASK, "a protection-key violation" if code & PFERR_PK_MASK
         else "no protection-key violation"),
    ]
    return [(n, bool(s), why) for n, s, why in bits]


def trace_walk(vcpu: KvmVcpu, addr: int, access: int, *, variant=None) -> WalkTrace:
    """Walk ``addr`` on ``vcpu`` (alone) and explain it level by level.

    The walk is real: A/D bits are written to guest memory as the walker
    writes them.  The rows show each entry as the walk read it.  ``variant``
    is passed to the walker (default 6.17).
    """
    ret, walker = run_walk(vcpu, addr, access, variant=variant)
    regs = vcpu.arch
    rows = _rows(vcpu, walker, ret, addr)
    if ret:
        return WalkTrace(addr, access, regs.mode, rows, True, walker.gfn, walker.pte_access,
                         walker.level, None, [], "", list(walker.ad_log), walker.retries)
    code = walker.fault.error_code
    if rows and "no memslot" in rows[-1].note:
        reason = "a page table lies outside every memslot"
    elif rows and "not present" in rows[-1].note:
        reason = f"the {rows[-1].name} is not present"
    elif code & PFERR_RSVD_MASK:
        reason = f"the {rows[-1].name} has reserved bits set"
    else:
        leaf = walker.gpte_read[walker.level - 1]
        reasons = _permission_reasons(regs, walker.pte_access, access, gpte_pkeys(leaf))
        reason = "; ".join(reasons) if reasons else "permission check failed"
    return WalkTrace(addr, access, regs.mode, rows, False, None, None, None, code,
                     _error_bits(code, access), reason, list(walker.ad_log), walker.retries)
