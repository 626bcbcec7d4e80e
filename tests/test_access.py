"""The walker tested the way kvm-unit-tests' x86/access.c tests KVM: every combination.

The design, re-derived here rather than copied: build one fixed guest
mapping, enumerate every combination of the flags of the entries on its
path, of the access (read/write/fetch, user/supervisor, implicit) and of the
CPU mode bits, skip the combinations that are illegal or that repeat another
one, and for each compare the walker with an *expected result computed from
the architecture's rules* (Intel SDM vol. 3 §4.6 "Access rights", §4.7
"Page-fault exceptions", §4.8 "Accessed and dirty flags"; AMD APM vol. 2
§5.6): fault or success, the exact error code, the gfn, the final access
bits, and the A and D bits left in guest memory.

The expected-result function below knows nothing of KVM's permission bitmap
or of ``permission_fault``; it walks the entries itself and applies the
rules one by one.  A disagreement is a bug in one of the two.

The A/D rule it checks is KVM's: A/D are written only after the permission
check passed; then A in every entry of the path and D in the leaf of a
write.  (Hardware may set A bits of upper levels even when the access later
faults; KVM's walker does not, and neither does this test.)

The machine under test is the one VM (:func:`kvmmu.guest.guest_vm`) and the
6.17 walker run alone on its vCPU (``run_alone`` over
``walk_addr_generic``); the test writes and reads the entries straight in
the pages behind the table frames, as the guest's CPU would.
"""
import itertools
import time

import pytest

from kvmmu.cpu import run_alone
from kvmmu.guest import HOST, guest_page
from kvmmu.guest import guest_vm as _guest_vm
from kvmmu.memslots import KVM_MEM_READONLY
from kvmmu.mmu_permissions import KvmVcpuArch
from kvmmu.paging_tmpl import GuestWalker, walk_addr_generic
from kvmmu.x86 import load_pdptrs

# ---- architectural bit positions (SDM vol. 3 tables 4-14..4-19, 4-11) -------
P, RW, US, A, D, PS = 1 << 0, 1 << 1, 1 << 2, 1 << 5, 1 << 6, 1 << 7
XD = 1 << 63
BIT51 = 1 << 51                 # above MAXPHYADDR=46: reserved
MAXPHYADDR = 46
# error code bits (SDM vol. 3 figure 4-12)
EC_P, EC_WR, EC_US, EC_RSVD, EC_ID, EC_PK = 1, 2, 4, 8, 16, 32
IMPLICIT = 1 << 48              # KVM's "implicit supervisor access" flag

PML4, PDPT, PD, PT = 0x100, 0x101, 0x102, 0x103        # table gfns
DATA_4K = 0x455                                        # leaf targets
DATA_2M = 0x600                                        # 2M aligned (0x600 = 3 * 512)
GVA = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123

# access: (name, error-code-style access flags)
ACCESSES = [
    ("read", 0), ("write", EC_WR), ("fetch", EC_ID),
    ("user read", EC_US), ("user write", EC_US | EC_WR), ("user fetch", EC_US | EC_ID),
    ("implicit read", IMPLICIT), ("implicit write", IMPLICIT | EC_WR),
]
CPU_BITS = ("cr0_wp", "cr4_smep", "cr4_smap", "efer_nx", "eflags_ac")


# ---------------------------------------------------------------------------
# The expected result, from the architecture.
# ---------------------------------------------------------------------------
def reserved_bits(entry: int, level: int, cpu: dict, leaf_large: bool, root: int) -> bool:
    """Does ``entry`` set a bit the architecture reserves at ``level``?"""
    if root == 3:
        high = ((1 << 63) - 1) & ~((1 << MAXPHYADDR) - 1)       # MAXPHYADDR..62
    else:
        high = ((1 << 52) - 1) & ~((1 << MAXPHYADDR) - 1)       # MAXPHYADDR..51
    if entry & high:
        return True
    if entry & XD and not cpu["efer_nx"]:
        return True                   # XD is reserved unless EFER.NXE = 1
    if entry & PS:
        if level >= 4:
            return True               # no pages above 1G: PS is reserved in PML4E/PML5E
        if level == 3 and not cpu.get("gbpages", True):
            return True
        # a large page's address must be aligned: bits below its size (above
        # bit 12, the PAT bit) are reserved
        size_bits = 12 + 9 * (level - 1)
        if entry & (((1 << size_bits) - 1) & ~((1 << 13) - 1)):
            return True
    return False


def expected(path: list, access: int, cpu: dict, root: int = 4) -> dict:
    """What the architecture says about ``access`` through ``path``.

    ``path``: [(level, entry)] from the top; returns fault/error code or the
    gfn, the access bits and the entries after the A/D update.
    """
    write = bool(access & EC_WR)
    user = bool(access & EC_US)
    fetch = bool(access & EC_ID)
    implicit = bool(access & IMPLICIT)
    base = (EC_WR if write else 0) | (EC_US if user else 0)
    if fetch and (cpu["efer_nx"] or cpu["cr4_smep"]):
        base |= EC_ID                 # I/D is reported only when NX or SMEP exist
    user_page, writable, executable = True, True, True
    used = []
    for level, entry in path:
        if not entry & P:
            return {"fault": True, "error_code": base, "level": level}
        if reserved_bits(entry, level, cpu, False, root):
            return {"fault": True, "error_code": base | EC_P | EC_RSVD, "level": level}
        used.append((level, entry))
        user_page &= bool(entry & US)
        writable &= bool(entry & RW)
        if entry & XD:
            executable = False
        if level == 1 or entry & PS:
            break
    leaf_level, leaf = used[-1]

    # access rights (SDM §4.6)
    denied = False
    if user:
        if not user_page:
            denied = True
        elif write and not writable:
            denied = True
        elif fetch and not executable:
            denied = True
    else:
        if fetch:
            if not executable:
                denied = True
            elif cpu["cr4_smep"] and user_page:
                denied = True         # SMEP: no supervisor fetch from user pages
        else:
            if write and not writable and cpu["cr0_wp"]:
                denied = True         # WP=0 lets the supervisor write read-only pages
            if cpu["cr4_smap"] and user_page and (implicit or not cpu["eflags_ac"]):
                denied = True         # SMAP, unless EFLAGS.AC on an explicit access
    # protection keys (SDM §4.6.2): data accesses to user pages in IA-32e mode
    pk = False
    if cpu.get("cr4_pke") and root >= 4 and user_page and not fetch:
        key = (leaf >> 59) & 0xF
        ad = (cpu.get("pkru", 0) >> (2 * key)) & 1
        wd = (cpu.get("pkru", 0) >> (2 * key + 1)) & 1
        if ad or (wd and write and (user or cpu["cr0_wp"])):
            pk = True
    if denied or pk:
        return {"fault": True, "error_code": base | EC_P | (EC_PK if pk else 0),
                "level": leaf_level}

    size_bits = 12 + 9 * (leaf_level - 1)
    frame = leaf & ((1 << 52) - 1) & ~((1 << size_bits) - 1)
    gfn = (frame | (GVA_OF[0] & ((1 << size_bits) - 1))) >> 12
    after = {lv: e | A for lv, e in used}
    if write:
        after[leaf_level] |= D
    acc = (4 if user_page else 0) | (2 if writable else 0) | (1 if executable else 0)
    if not write and not leaf & D:
        acc &= ~2                     # KVM maps a clean page read-only until written
    return {"fault": False, "level": leaf_level, "gfn": gfn, "pte_access": acc, "after": after}


GVA_OF = [GVA]      # the address the expected function translates


# ---------------------------------------------------------------------------
# The machine under test.
# ---------------------------------------------------------------------------
class Guest:
    """A VM with one vCPU, and the guest CPU's own view of its table pages."""

    def __init__(self, readonly_tables: bool = False):
        regions = [(0, 0x800, HOST)]
        if readonly_tables:
            regions = [(0, 0x100, HOST), (0x100, 0x10, HOST + 0x1000_0000, KVM_MEM_READONLY),
                       (0x110, 0x6F0, HOST + 0x2000_0000)]
        self.vcpu = _guest_vm(regions)
        self.kvm = self.vcpu.kvm
        self._pfns = {}

    def _pfn(self, gfn: int) -> int:
        if gfn not in self._pfns:
            self._pfns[gfn] = guest_page(self.kvm, gfn, create=True)
        return self._pfns[gfn]

    def write(self, gpa: int, value: int) -> None:
        """The guest (or, for a ROM, the VMM) stores an entry."""
        self.kvm.mm.mem.write_data(self._pfn(gpa >> 12), gpa & 0xFFF, value)

    def read(self, gpa: int) -> int:
        return self.kvm.mm.mem.read_data(self._pfn(gpa >> 12), gpa & 0xFFF)

    def load(self, **regs) -> object:
        """Give the vCPU these registers; return the walk MMU they make."""
        self.vcpu.arch = KvmVcpuArch(**regs)
        return self.vcpu.arch.walk_mmu

    def walk(self, w, mmu, gva: int, access: int) -> int:
        return run_alone(self.kvm, walk_addr_generic(w, self.vcpu, mmu, gva, access))

    def dirty_gfns(self) -> list[int]:
        return sorted(self.kvm.fields.dirty)


def make_memory(readonly_tables: bool = False) -> Guest:
    return Guest(readonly_tables)


def entry_gpas(gva: int):
    index = [(gva >> (12 + 9 * (lv - 1))) & 0x1FF for lv in (1, 2, 3, 4)]
    return {4: (PML4 << 12) + 8 * index[3], 3: (PDPT << 12) + 8 * index[2],
            2: (PD << 12) + 8 * index[1], 1: (PT << 12) + 8 * index[0]}


def cpu_modes():
    for bits in itertools.product((False, True), repeat=len(CPU_BITS)):
        yield dict(zip(CPU_BITS, bits))


FLAG_BITS = {"P": P, "W": RW, "U": US, "A": A, "D": D, "NX": XD, "RSVD": BIT51, "PS": PS}


def table_configs():
    """Every (PDE, PTE) pair worth testing; illegal or repeated ones skipped.

    Skipped, as access.c skips them: PTE flags when the walk cannot reach
    the PTE (PDE not present, reserved, or a 2M leaf); the D bit of a
    non-leaf PDE (ignored by the architecture).
    """
    pde_names = ["P", "W", "U", "A", "D", "NX", "RSVD", "PS"]
    pte_names = ["P", "W", "U", "A", "D", "NX", "RSVD"]
    for pde_bits in itertools.product((0, 1), repeat=len(pde_names)):
        pde_flags = {n for n, b in zip(pde_names, pde_bits) if b}
        if "PS" not in pde_flags and "D" in pde_flags:
            continue
        pde = sum(FLAG_BITS[n] for n in pde_flags)
        if "PS" in pde_flags:
            yield pde | (DATA_2M << 12), None
            continue
        pde |= PT << 12
        reaches_pte = "P" in pde_flags and "RSVD" not in pde_flags
        pte_space = itertools.product((0, 1), repeat=len(pte_names)) if reaches_pte else [(0,) * 7]
        for pte_bits in pte_space:
            pte = sum(FLAG_BITS[n] for n, b in zip(pte_names, pte_bits) if b)
            yield pde, pte | (DATA_4K << 12)


UPPER = P | RW | US | A
#: the upper-level test crosses 64 x 64 entry pairs, so it takes a smaller
#: set of accesses and CPU modes (each rule still switched on and off)
UPPER_ACCESSES = [ACCESSES[0], ACCESSES[1], ACCESSES[2], ACCESSES[4], ACCESSES[5]]
UPPER_CPU_MODES = [
    dict(cr0_wp=wp, cr4_smep=smep, cr4_smap=smap, efer_nx=nx, eflags_ac=False)
    for wp, smep, smap, nx in [(True, True, True, True), (False, False, False, False),
                               (True, False, False, True), (False, True, True, False)]
]


def run_case(w, mmu, mem, gpas, path, access, cpu, root=4, gva=GVA, in_memory=None):
    """Write ``path`` into guest memory, walk, and compare with ``expected``.

    ``in_memory`` (a dict level -> value) remembers what the previous case
    left in memory, so unchanged entries are not rewritten.
    """
    in_memory = {} if in_memory is None else in_memory
    for level, entry in path:
        if in_memory.get(level) != entry:
            mem.write(gpas[level], entry)
    got = mem.walk(w, mmu, gva, access)
    exp = expected(path, access, cpu, root)
    after = {level: mem.read(gpas[level]) for level, _ in path}
    in_memory.clear()
    in_memory.update(after)

    def where():
        return f"path={[(lv, hex(e)) for lv, e in path]} access={access:#x} cpu={cpu}"
    if exp["fault"]:
        assert got == 0, f"expected a fault, walker translated: {where()}"
        assert w.fault.error_code == exp["error_code"], (
            f"error code {w.fault.error_code:#x} != {exp['error_code']:#x}: {where()}")
        assert w.fault.vector == 14 and w.fault.address == gva, where()
        assert w.level == exp["level"], f"fault level {w.level} != {exp['level']}: {where()}"
        for level, entry in path:    # nothing written on a fault
            assert after[level] == entry, f"A/D changed on a fault: {where()}"
    else:
        assert got == 1, f"expected success, walker faulted {w.fault!r}: {where()}"
        assert w.gfn == exp["gfn"], f"gfn {w.gfn:#x} != {exp['gfn']:#x}: {where()}"
        assert w.level == exp["level"], where()
        assert w.pte_access == exp["pte_access"], (
            f"pte_access {w.pte_access} != {exp['pte_access']}: {where()}")
        for level, entry in path:
            want = exp["after"].get(level, entry)
            assert after[level] == want, f"L{level} after walk {after[level]:#x} != {want:#x}: {where()}"
    return exp["fault"]


def test_exhaustive_4level_without_pkeys():
    """Every PDE x PTE flag combination x 8 accesses x 32 CPU modes (4-level paging)."""
    mem = make_memory()
    gpas = entry_gpas(GVA)
    configs = list(table_configs())
    w = GuestWalker()
    started = time.perf_counter()
    counts = {"fault": 0, "ok": 0}
    error_codes = set()
    in_memory = {}
    for cpu in cpu_modes():
        mmu = mem.load(cr3=PML4 << 12, maxphyaddr=MAXPHYADDR, **cpu)
        for pde, pte in configs:
            path = [(4, UPPER | (PDPT << 12)), (3, UPPER | (PD << 12)), (2, pde)]
            if pte is not None:
                path.append((1, pte))
            for _name, access in ACCESSES:
                fault = run_case(w, mmu, mem, gpas, path, access, cpu, in_memory=in_memory)
                counts["fault" if fault else "ok"] += 1
                if fault:
                    error_codes.add(w.fault.error_code)
    seconds = time.perf_counter() - started
    total = counts["fault"] + counts["ok"]
    assert total == len(configs) * len(ACCESSES) * 32
    # the enumeration really reaches both outcomes and every error-code bit
    # except PK (no keys here)
    assert counts["ok"] > 10_000 and counts["fault"] > 10_000
    seen_bits = 0
    for code in error_codes:
        seen_bits |= code
    assert seen_bits == EC_P | EC_WR | EC_US | EC_RSVD | EC_ID
    print(f"{total} combinations ({len(configs)} table configs) in {seconds:.1f} s")


def test_upper_levels_and_large_pages():
    """PML4E/PDPTE flags (incl. PS where reserved, 1G pages with and without gbpages)."""
    mem = make_memory()
    gpas = entry_gpas(GVA)
    w = GuestWalker()
    names = ["P", "W", "U", "A", "NX", "PS"]
    n = 0
    in_memory = {}
    for gbpages in (True, False):
        for cpu in UPPER_CPU_MODES:
            mmu = mem.load(cr3=PML4 << 12, maxphyaddr=MAXPHYADDR, gbpages=gbpages, **cpu)
            cpu = dict(cpu, gbpages=gbpages)
            for l4_bits in itertools.product((0, 1), repeat=len(names)):
                l4 = sum(FLAG_BITS[x] for x, b in zip(names, l4_bits) if b) | (PDPT << 12)
                for l3_bits in itertools.product((0, 1), repeat=len(names)):
                    l3 = sum(FLAG_BITS[x] for x, b in zip(names, l3_bits) if b)
                    if l3 & PS:
                        l3 |= 0x40000 << 12           # a 1G-aligned frame
                        path = [(4, l4), (3, l3)]
                    else:
                        l3 |= PD << 12
                        path = [(4, l4), (3, l3), (2, UPPER | (PT << 12)),
                                (1, UPPER | D | (DATA_4K << 12))]
                    for _name, access in UPPER_ACCESSES:
                        run_case(w, mmu, mem, gpas, path, access, cpu, in_memory=in_memory)
                        n += 1
    assert n > 20_000


def test_large_page_alignment_bits_are_reserved():
    """A 2M leaf with bit 13 set, a 1G leaf with bit 21 set: RSVD faults."""
    mem = make_memory()
    gpas = entry_gpas(GVA)
    w = GuestWalker()
    cpu = dict(cr0_wp=True, cr4_smep=False, cr4_smap=False, efer_nx=True, eflags_ac=False)
    mmu = mem.load(cr3=PML4 << 12, maxphyaddr=MAXPHYADDR, **cpu)
    cases = [
        [(4, UPPER | (PDPT << 12)), (3, UPPER | (PD << 12)), (2, UPPER | PS | (DATA_2M << 12) | (1 << 13))],
        [(4, UPPER | (PDPT << 12)), (3, UPPER | PS | (0x40000 << 12) | (1 << 21))],
        [(4, UPPER | (PDPT << 12)), (3, UPPER | PS | (0x40000 << 12) | (1 << 12))],   # PAT: fine
    ]
    outcomes = [run_case(w, mmu, mem, gpas, path, 0, cpu) for path in cases]
    assert outcomes == [True, True, False]


def test_protection_keys():
    """PKE: every key-0/key-5 x AD/WD x U/W leaf x access x WP/SMAP/AC combination."""
    mem = make_memory()
    gpas = entry_gpas(GVA)
    w = GuestWalker()
    n = pk_faults = 0
    for wp, smap, ac, pke in itertools.product((False, True), repeat=4):
        for key in (0, 5):
            for ad, wd in itertools.product((0, 1), repeat=2):
                for other in (0, 3):                   # the other key's bits must not matter
                    pkru = (ad | wd << 1) << (2 * key) | other << (2 * (7 - key))
                    cpu = dict(cr0_wp=wp, cr4_smep=False, cr4_smap=smap, efer_nx=True,
                               eflags_ac=ac, cr4_pke=pke, pkru=pkru)
                    mmu = mem.load(cr3=PML4 << 12, maxphyaddr=MAXPHYADDR, **cpu)
                    for u, wr, d in itertools.product((0, 1), repeat=3):
                        leaf = (P | (US if u else 0) | (RW if wr else 0) | (D if d else 0)
                                | (key << 59) | (DATA_4K << 12))
                        path = [(4, UPPER | (PDPT << 12)), (3, UPPER | (PD << 12)),
                                (2, UPPER | (PT << 12)), (1, leaf)]
                        for _name, access in ACCESSES:
                            run_case(w, mmu, mem, gpas, path, access, cpu)
                            n += 1
                            pk_faults += bool(w.fault.error_code & EC_PK) and w.fault.address == GVA
    assert n == 16 * 2 * 4 * 2 * 8 * 8
    assert pk_faults > 0


def test_5level_and_pae_leaf_flags():
    """The PTE flags x accesses x CPU modes again under LA57 and under PAE paging."""
    # 5-level: a PML5 table at gfn 0x104 above the usual path
    mem = make_memory()
    w = GuestWalker()
    gva5 = (0x1F << 48) | GVA           # index 0x1f in the PML5 table; canonical (bit 56 clear)
    gpas = entry_gpas(gva5)
    gpas[5] = (0x104 << 12) + 8 * 0x1F
    GVA_OF[0] = gva5
    try:
        n = 0
        for cpu in cpu_modes():
            mmu = mem.load(cr3=0x104 << 12, cr4_la57=True, maxphyaddr=MAXPHYADDR, **cpu)
            for pte_bits in itertools.product((0, 1), repeat=6):
                pte = sum(FLAG_BITS[x] for x, b in zip(["P", "W", "U", "A", "D", "NX"], pte_bits) if b)
                path = [(5, UPPER | (PML4 << 12)), (4, UPPER | (PDPT << 12)),
                        (3, UPPER | (PD << 12)), (2, UPPER | (PT << 12)), (1, pte | (DATA_4K << 12))]
                for _name, access in ACCESSES:
                    run_case(w, mmu, mem, gpas, path, access, cpu, root=5, gva=gva5)
                    n += 1
        # PAE: PDPT at gpa 0x100000 (gfn 0x100), PD at gfn 0x102, PT at gfn 0x103
        gva = (2 << 30) | (7 << 21) | (9 << 12) | 0x123
        GVA_OF[0] = gva
        mem = make_memory()
        pdpt_gpa = PML4 << 12
        gpas = {3: pdpt_gpa + 8 * 2, 2: (PD << 12) + 8 * 7, 1: (PT << 12) + 8 * 9}
        mem.write(gpas[3], P | (PD << 12))
        for cpu in cpu_modes():
            pdptrs = load_pdptrs(mem.vcpu, pdpt_gpa, maxphyaddr=MAXPHYADDR)
            mmu = mem.load(cr3=pdpt_gpa, efer_lma=False, pdptrs=pdptrs, maxphyaddr=MAXPHYADDR, **cpu)
            for pte_bits in itertools.product((0, 1), repeat=7):
                pte = sum(FLAG_BITS[x] for x, b in
                          zip(["P", "W", "U", "A", "D", "NX", "RSVD"], pte_bits) if b)
                path = [(2, UPPER | (PT << 12)), (1, pte | (DATA_4K << 12))]
                for _name, access in ACCESSES:
                    run_case(w, mmu, mem, gpas, path, access, cpu, root=3, gva=gva)
                    n += 1
        assert n == 32 * 64 * 8 + 32 * 128 * 8
    finally:
        GVA_OF[0] = GVA


def test_pae_pdpte_not_present_and_reserved():
    mem = make_memory()
    pdpt_gpa = PML4 << 12
    mem.write(pdpt_gpa, 0)                                 # PDPTE 0 not present
    mem.write(pdpt_gpa + 8, P | (PD << 12))
    mmu = mem.load(cr3=pdpt_gpa, efer_lma=False, pdptrs=load_pdptrs(mem.vcpu, pdpt_gpa))
    w = GuestWalker()
    assert mem.walk(w, mmu, 0x1000, EC_WR) == 0
    assert w.fault.error_code == EC_WR and w.level == 3
    mem.write(pdpt_gpa, P | RW | (PD << 12))               # R/W is reserved in a PAE PDPTE
    with pytest.raises(ValueError, match="PDPTE 0 .* reserved bits 0x2"):
        load_pdptrs(mem.vcpu, pdpt_gpa)


def test_read_only_slot_tables_keep_their_ad_bits():
    """Tables in a KVM_MEM_READONLY slot: the walk succeeds, nothing is written."""
    mem = make_memory(readonly_tables=True)
    gpas = entry_gpas(GVA)
    w = GuestWalker()
    cpu = dict(cr0_wp=True, cr4_smep=False, cr4_smap=False, efer_nx=True, eflags_ac=False)
    mmu = mem.load(cr3=PML4 << 12, maxphyaddr=MAXPHYADDR, **cpu)
    path = [(4, P | RW | US | (PDPT << 12)), (3, P | RW | US | (PD << 12)),
            (2, P | RW | US | (PT << 12)), (1, P | RW | US | (DATA_4K << 12))]
    for level, entry in path:
        mem.write(gpas[level], entry)
    assert mem.walk(w, mmu, GVA, EC_WR | EC_US) == 1
    assert [mem.read(gpas[lv]) for lv, _ in path] == [e for _, e in path]
    assert all(o.startswith("skipped") for *_x, o in w.ad_log) and len(w.ad_log) == 4
    assert mem.dirty_gfns() == []
    # the same tables in a writable slot do get A/D, and their gfns are logged dirty
    mem2 = make_memory()
    for level, entry in path:
        mem2.write(gpas[level], entry)
    mmu2 = mem2.load(cr3=PML4 << 12, maxphyaddr=MAXPHYADDR, **cpu)
    assert mem2.walk(w, mmu2, GVA, EC_WR | EC_US) == 1
    assert [mem2.read(gpas[lv]) for lv, _ in path] == (
        [e | A for _, e in path[:3]] + [path[3][1] | A | D])
    assert mem2.dirty_gfns() == [PML4, PDPT, PD, PT]
