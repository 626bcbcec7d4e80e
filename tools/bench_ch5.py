"""Measure chapter 5: walks per second, the exhaustive access test, each race check, nbval.

    python tools/bench_ch5.py            # everything
    python tools/bench_ch5.py --quick    # skip the nbval run

Prints wall-clock and CPU seconds (the machine may be shared: CPU time is the
steadier figure).  The walker is CPU code run alone (one source with the
explorer's steps); each exhaustive race check of the chapter (every scenario
of kvmmu.scenarios.paging_tmpl) must stay <= 1 s.
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench_walks(n: int = 50_000):
    from kvmmu.cpu import run_alone
    from kvmmu.guest import HOST, GuestPageTables, guest_read_u64, guest_vm, guest_write_u64
    from kvmmu.paging_tmpl import GuestWalker, walk_addr_generic
    from kvmmu.pferr import PFERR_USER_MASK, PFERR_WRITE_MASK

    vcpu = guest_vm([(0, 0x1000, HOST)])
    kvm = vcpu.kvm
    pt = GuestPageTables(kvm, range(0x100, 0x180))
    addrs = []
    for i in range(64):                       # 64 mappings spread over many tables
        gva = 0x7FFF_0000_0000 + i * 0x1000 * 513
        pt.map(gva, 0x400000 + i * 0x1000)
        addrs.append(gva + 0x10)
    mmu = pt.load(vcpu, cr4_smep=True, cr4_smap=True).walk_mmu
    w = GuestWalker()
    for a in addrs:                           # first walks set A/D (the steady state has them)
        run_alone(kvm, walk_addr_generic(w, vcpu, mmu, a, PFERR_WRITE_MASK | PFERR_USER_MASK))

    def run():
        for i in range(n):
            run_alone(kvm, walk_addr_generic(w, vcpu, mmu, addrs[i & 63], PFERR_USER_MASK))
    _, wall, cpu = timed(run)
    print(f"walk_addr_generic run alone, 4-level, A/D already set: {n / wall:,.0f} walks/s "
          f"wall ({n / cpu:,.0f} per CPU second)")

    # cold walks: every walk writes A at 4 levels (compare-exchange) first
    cold = 5_000

    def run_cold():
        for i in range(cold):
            gva = addrs[i & 63]
            for level in (4, 3, 2, 1):        # clear the A bits of one path
                gpa = pt.entry_gpa(gva, level)
                guest_write_u64(kvm, gpa, guest_read_u64(kvm, gpa) & ~0x60)
            run_alone(kvm, walk_addr_generic(w, vcpu, mmu, gva, PFERR_USER_MASK))
    _, wall, cpu = timed(run_cold)
    print(f"  with 4 A-bit compare-exchanges per walk (incl. resetting them): "
          f"{cold / cpu:,.0f} walks per CPU second")


def bench_access_test():
    sys.path.insert(0, str(ROOT / "tests"))
    import test_access

    _, wall, cpu = timed(test_access.test_exhaustive_4level_without_pkeys)
    print(f"exhaustive access test (4-level, no pkeys): {wall:.1f} s wall, {cpu:.1f} s CPU")
    total_wall = total_cpu = 0.0
    for name in dir(test_access):
        if name.startswith("test_") and name != "test_exhaustive_4level_without_pkeys":
            _, wall, cpu = timed(getattr(test_access, name))
            total_wall += wall
            total_cpu += cpu
    print(f"  the other access tests together: {total_wall:.1f} s wall, {total_cpu:.1f} s CPU")


def bench_races():
    from kvmmu.explorer import explore
    from kvmmu.scenarios.paging_tmpl import SCENARIOS

    for name, entry in SCENARIOS.items():
        res, wall, cpu = timed(lambda: explore(entry.build()))
        verdict = "VIOLATED" if res.violated else "holds" + (" (exhaustive)" if res.exhaustive else "")
        print(f"{name:<28} {verdict:<20} {res.states:>5} states {res.transitions:>5} transitions "
              f"{wall:5.2f} s wall {cpu:5.2f} s CPU  [{res.method}]")


def bench_nbval():
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
           "book/ch05_guest_page_walk.ipynb"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    print(f"nbval of the chapter: {wall:.1f} s wall ({last})")


def main(argv):
    bench_walks()
    bench_access_test()
    bench_races()
    if "--quick" not in argv:
        bench_nbval()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
