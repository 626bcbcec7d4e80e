"""Measure the command line's start-up: ``kvmmu decode VALUE`` as ``python -m kvmmu`` and as the script.

    .venv/bin/python tools/bench_cli.py          # 21 runs of each
    .venv/bin/python tools/bench_cli.py 51

Each command is a whole process, start to exit, timed from outside: wall
time, and CPU time (user + system, the kernel's accounting of the finished
child), which a busy machine disturbs much less.  The median of N runs is
printed with the fastest and slowest (a wide spread says the machine was
busy).  The interpreter's own start-up (``python -c pass``)
and ``import kvmmu`` are printed beside them, so the CLI's share can be read
off.  The target of issue 16 is 0.2 s for ``kvmmu decode VALUE``.  Prints;
asserts nothing (tests/test_cli.py checks which modules decode loads).
"""
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SCRIPT = str(Path(PY).with_name("kvmmu"))
VALUE = "0x8600000012345b77"

COMMANDS = [
    ("python -c pass (interpreter start-up)", [PY, "-c", "pass"]),
    ("python -c 'import kvmmu'", [PY, "-c", "import kvmmu"]),
    (f"python -m kvmmu decode {VALUE}", [PY, "-m", "kvmmu", "decode", VALUE]),
    (f"kvmmu decode {VALUE} (console script)", [SCRIPT, "decode", VALUE]),
    (f"kvmmu decode --json {VALUE}", [SCRIPT, "decode", "--json", VALUE]),
    ("kvmmu decode < a 5-line dmesg dump", [SCRIPT, "decode"]),
]
DUMP = """\
[ 4711.123456] kvm: get_mmio_spte: reserved bits set on MMU-present spte, addr 0xfee00000, hierarchy:
[ 4711.123460] kvm: ------ spte = 0x8000000101234907 level = 4, rsvd bits = 0x000fff80000000f8
[ 4711.123461] kvm: ------ spte = 0x8000000101235907 level = 3, rsvd bits = 0x000fff8000000078
[ 4711.123462] kvm: ------ spte = 0x8000000101236907 level = 2, rsvd bits = 0x000fff8000000078
[ 4711.123463] kvm: ------ spte = 0x86000080fee00b77 level = 1, rsvd bits = 0x000fff8000000000
"""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _once(cmd) -> tuple:
    stdin = DUMP if cmd[-1] == "decode" else ""
    cpu, started = _cpu(), time.perf_counter()
    subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=ROOT, check=True)
    return time.perf_counter() - started, _cpu() - cpu


def _ms(values) -> str:
    return (f"{statistics.median(values) * 1000:5.0f} ms "
            f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f})")


def main(runs: int = 21) -> None:
    print(f"start-up, {runs} runs each, whole process: median (min-max)")
    print(f"  {'command':52s} {'wall':>18s}   {'cpu (user+sys)':>18s}")
    for label, cmd in COMMANDS:
        _once(cmd)                                   # warm the page cache
        walls, cpus = zip(*(_once(cmd) for _ in range(runs)))
        print(f"  {label:52s} {_ms(walls):>18s}   {_ms(cpus):>18s}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 21)
