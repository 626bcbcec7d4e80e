"""Measure chapter 5: walks per second, the exhaustive access test, each race check, nbval.

    python tools/bench_ch5.py            # everything
    python tools/bench_ch5.py --quick    # skip the nbval run

Prints wall-clock and CPU seconds (the machine may be shared: CPU time is the
steadier figure).  Targets from the chapter's issue: >= 100,000 walks/s,
exhaustive permission test within ~10-15 s, each exhaustive race check <= 1 s.
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


def bench_walks(n: int = 200_000):
    from kvmmu.guest_memory import GuestMemory
    from kvmmu.memslots import KvmMemorySlot
    from kvmmu.guest_paging import PFERR_USER_MASK, PFERR_WRITE_MASK, GuestPageTables
    from kvmmu.walker import GuestWalker, walk_addr_generic

    mem = GuestMemory([KvmMemorySlot(0, 0, 0x1000, 0x7F00_0000_0000)])
    pt = GuestPageTables(mem, range(0x100, 0x180))
    addrs = []
    for i in range(64):                       # 64 mappings spread over many tables
        gva = 0x7FFF_0000_0000 + i * 0x1000 * 513
        pt.map(gva, 0x400000 + i * 0x1000)
        addrs.append(gva + 0x10)
    vcpu = pt.vcpu(cr4_smep=True, cr4_smap=True)
    w = GuestWalker()
    for a in addrs:                           # first walks set A/D (the steady state has them)
        walk_addr_generic(w, vcpu, mem, a, PFERR_WRITE_MASK | PFERR_USER_MASK)

    def run():
        for i in range(n):
            walk_addr_generic(w, vcpu, mem, addrs[i & 63], PFERR_USER_MASK)
    _, wall, cpu = timed(run)
    print(f"walk_addr_generic, 4-level, A/D already set: {n / wall:,.0f} walks/s wall "
          f"({n / cpu:,.0f} per CPU second)")

    # cold walks: every walk writes A at 4 levels (compare-exchange) first
    cold = 20_000

    def run_cold():
        for i in range(cold):
            m = mem                            # same memory; clear the A bits of one path
            gva = addrs[i & 63]
            for level in (4, 3, 2, 1):
                gpa = pt.entry_gpa(gva, level)
                m.guest_write_u64(gpa, m.guest_read_u64(gpa) & ~0x60)
            walk_addr_generic(w, vcpu, m, gva, PFERR_USER_MASK)
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
    from kvmmu.walker_races import ad_race_scenario, gpc_race_scenario

    cases = [
        ("R5.1, 6.17 walker, write", lambda: ad_race_scenario("6.17")),
        ("R5.1, 6.17 walker, read", lambda: ad_race_scenario("6.17", access=0)),
        ("R5.1, blind write (finds)", lambda: ad_race_scenario("blind")),
        ("R5.1, RFC as posted (finds)", lambda: ad_race_scenario("rfc")),
        ("R5.1, RFC fixed", lambda: ad_race_scenario("rfc-fixed")),
        ("seed retry, guest_memfd, RFC fixed", lambda: gpc_race_scenario("rfc-fixed")),
        ("seed retry, shared memory, RFC fixed",
         lambda: gpc_race_scenario("rfc-fixed", private_tables=False)),
        ("seed retry, no check (finds)", lambda: gpc_race_scenario("rfc-nocheck")),
    ]
    for title, make in cases:
        res, wall, cpu = timed(lambda: explore(make()))
        verdict = "VIOLATED" if res.violated else "holds" + (" (exhaustive)" if res.exhaustive else "")
        print(f"{title:<40} {verdict:<20} {res.states:>5} states {res.transitions:>5} transitions "
              f"{wall:5.2f} s wall {cpu:5.2f} s CPU")


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
