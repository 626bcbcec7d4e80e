"""The command line: ``kvmmu decode | problem | scenarios | explore`` (also ``python -m kvmmu``).

For kernel developers and students at a shell, without JupyterLab:

- ``kvmmu decode [VALUE ...]``: an SPTE's class, fields and the verdict of
  KVM's reserved-bit check; with no VALUE, every SPTE in dmesg or trace text
  on standard input (:mod:`kvmmu.cli.decode`, :mod:`kvmmu.cli.logs`);
- ``kvmmu problem CHAPTER [--seed N] [--solve]``: a chapter's seeded
  problem, the same text as its ``problem(seed)`` (:mod:`kvmmu.cli.problem`);
- ``kvmmu scenarios`` and ``kvmmu explore NAME``: the book's race scenarios
  by name, and one run, several random runs or the exhaustive check of one,
  with the two-column trace (:mod:`kvmmu.cli.races`).

Bad input gets one line, ``kvmmu <command>: error: ...``, and exit status 2;
never a traceback.  Each command imports only what it needs, so ``kvmmu
decode`` never loads the explorer, the VM model or a view.  Output wraps to
the terminal's width (84 columns when the output is not a terminal).
"""
import argparse
import os
import shutil
import sys

from ..checks import parse_int_text

__all__ = ["main", "terminal_width"]

PROG = "kvmmu"
_U64_MAX = (1 << 64) - 1


class _UsageError(Exception):
    """A bad command line or input: one line on stderr, exit status 2."""

    def __init__(self, prog: str, message: str):
        super().__init__(f"{prog}: error: {message}")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away)."""

    def error(self, message):
        raise _UsageError(self.prog, f"{message} (see '{self.prog} --help')")


def _value(text: str) -> int:
    try:
        return parse_int_text("VALUE", text, 0, _U64_MAX)
    except ValueError as why:
        raise argparse.ArgumentTypeError(str(why)) from None


def _ranged(name: str, lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            return parse_int_text(name, text, lo, hi)
        except ValueError as why:
            raise argparse.ArgumentTypeError(str(why)) from None
    parse.__name__ = name
    return parse


def _seed(text: str) -> int:
    try:
        return parse_int_text("seed", text, 0, (1 << 63) - 1)
    except ValueError as why:
        raise argparse.ArgumentTypeError(str(why)) from None


_EPILOGS = {
    "decode": """examples:
  kvmmu decode 0x8600000012345b77
  kvmmu decode --npt --level 2 0x8000000012200ee7
  dmesg | kvmmu decode --phys-bits 46
  trace-cmd report | kvmmu decode --json

With no VALUE, standard input is read: get_mmio_spte reserved-bit dumps (the
5.13+ format with its printed 'rsvd bits' masks, and the older one), make_spte
WARNs, and the kvmmmu tracepoints that print an SPTE; dmesg timestamps and
'kvm:' prefixes may stay.  --phys-bits is the host's MAXPHYADDR ('address
sizes' in /proc/cpuinfo); without it a dump's printed masks give it, else 46.""",
    "problem": """examples:
  kvmmu problem 1
  kvmmu problem 3 --seed 7 --solve
  kvmmu problem spte --seed 12

CHAPTER is a number (1-6) or the chapter's topic (spte, host_level, tdp_mmu,
guest_memfd, walker, prefault).  The text is what the chapter's problem(seed)
prints: every student can get a seed of their own.""",
    "scenarios": """example:
  kvmmu scenarios""",
    "explore": """examples:
  kvmmu explore lost-dirty-bit
  kvmmu explore lost-dirty-bit --schedule ABA
  kvmmu explore dirty-bit-xchg --random 5 --seed 1

Without --schedule or --random the check is exhaustive: every interleaving,
breadth-first, so a counterexample is a shortest one.""",
}


def _parser() -> _Parser:
    fmt = argparse.RawDescriptionHelpFormatter
    top = _Parser(prog=PROG, formatter_class=fmt,
                  description="The KVM x86 MMU model from the shell: decode SPTEs from logs, "
                              "seeded problems, race scenarios.",
                  epilog="examples:\n  kvmmu decode 0x8600000012345b77\n  kvmmu problem 1 --seed 7"
                         "\n  kvmmu explore lost-dirty-bit\n\n'kvmmu COMMAND --help' for each.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("decode", help="decode SPTE values, or the SPTEs in dmesg/trace text",
                       description="Decode SPTEs: class, fields, and KVM's reserved-bit check.",
                       epilog=_EPILOGS["decode"], formatter_class=fmt)
    d.add_argument("values", nargs="*", type=_value, metavar="VALUE",
                   help="an SPTE, hex (0x...) or decimal; none: read standard input")
    d.add_argument("--npt", action="store_true", help="AMD NPT SPTEs (default: Intel EPT)")
    d.add_argument("--no-ad", action="store_true", help="EPT without accessed/dirty bits")
    d.add_argument("--level", type=_ranged("--level", 1, 5), default=1, metavar="N",
                   help="the page-table level of each VALUE, 1 (4K) to 5 (default 1); dump lines "
                        "and most tracepoints carry their own")
    d.add_argument("--phys-bits", type=_ranged("--phys-bits", 36, 52), default=None, metavar="N",
                   help="the host's physical address width, 36-52 (default: read from a dump's "
                        "masks, else 46)")
    d.add_argument("--json", action="store_true", help="print JSON with fixed keys")

    p = sub.add_parser("problem", help="a chapter's seeded problem, OSTEP-style",
                       description="Print a chapter's seeded problem, and with --solve its "
                                   "worked solution.", epilog=_EPILOGS["problem"],
                       formatter_class=fmt)
    p.add_argument("chapter", metavar="CHAPTER", help="1-6, or the chapter's topic")
    p.add_argument("--seed", "-s", type=_seed, default=0, metavar="N",
                   help="the problem's seed (default 0)")
    p.add_argument("--solve", "-c", action="store_true", help="print the solution too")

    sub.add_parser("scenarios", help="list the book's race scenarios by name",
                   description="List every race scenario of the book: name, chapter, what the "
                               "exhaustive check finds, summary.",
                   epilog=_EPILOGS["scenarios"], formatter_class=fmt)

    e = sub.add_parser("explore", help="run or exhaustively check one race scenario",
                       description="Print a scenario's summary and a two-column trace (one "
                                   "column per CPU) in the cut of locking.rst.",
                       epilog=_EPILOGS["explore"], formatter_class=fmt)
    e.add_argument("name", metavar="NAME", help="a scenario name (see 'kvmmu scenarios')")
    how = e.add_mutually_exclusive_group()
    how.add_argument("--schedule", metavar="S", help="run this exact schedule, one actor "
                                                      "letter per step (e.g. AABAB)")
    how.add_argument("--random", type=_ranged("--random", 1, 1000), metavar="N",
                     help="run N schedules drawn from seeds S, S+1, ...")
    how.add_argument("--exhaustive", action="store_true",
                     help="check every interleaving (the default)")
    e.add_argument("--seed", type=_seed, default=None, metavar="S",
                   help="the first seed of --random (default 0)")
    e.add_argument("--complete", action="store_true",
                   help="with --schedule: let the actors run on to the end after it")
    return top


def terminal_width() -> int:
    """The columns to wrap to: the terminal's (or ``$COLUMNS``), 84 when output is not a terminal."""
    return max(40, min(400, shutil.get_terminal_size((84, 24)).columns))


def _run_decode(args) -> str:
    from .decode import DecodeOptions, decode_log, decode_values, render_json, render_text

    if args.npt and args.no_ad:
        raise _UsageError("kvmmu decode", "--no-ad is for EPT: NPT SPTEs always have A/D bits")
    options = DecodeOptions(args.npt, args.no_ad, args.phys_bits, args.level)
    if args.values:
        report = decode_values(args.values, options)
    else:
        if sys.stdin.isatty():
            print("kvmmu decode: reading log text from standard input (end with Ctrl-D)",
                  file=sys.stderr)
        report = decode_log(sys.stdin.buffer.read().decode("utf-8", errors="replace"), options)
        if not report["values"]:
            why = "; ".join(f"line {s['line']}: {s['why']}" for s in report["skipped"][:3])
            raise _UsageError("kvmmu decode", "no SPTE found in standard input (expected "
                              "get_mmio_spte dump lines, a make_spte WARN or kvmmmu tracepoint "
                              "lines)" + (f"; {why}" if why else ""))
    return render_json(report) if args.json else render_text(report, terminal_width())


def _run_problem(args) -> str:
    from .problem import problem_text
    return problem_text(args.chapter, args.seed, args.solve)


def _run_scenarios(args) -> str:
    from .races import scenarios_text
    return scenarios_text(terminal_width())


def _run_explore(args) -> str:
    from .races import explore_text
    if args.seed is not None and args.random is None:
        raise _UsageError("kvmmu explore", "--seed goes with --random N")
    if args.complete and args.schedule is None:
        raise _UsageError("kvmmu explore", "--complete goes with --schedule S")
    return explore_text(args.name, schedule=args.schedule, random_runs=args.random,
                        seed=args.seed or 0, complete=args.complete, width=terminal_width())


_COMMANDS = {"decode": _run_decode, "problem": _run_problem, "scenarios": _run_scenarios,
             "explore": _run_explore}


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    if isinstance(argv, (str, bytes)) or not all(isinstance(a, str) for a in argv):
        raise TypeError("argv must be a list of strings")
    try:
        args = _parser().parse_args(list(argv))
        output = _COMMANDS[args.command](args)
    except SystemExit as done:                 # --help
        return done.code or 0
    except _UsageError as bad:
        print(bad, file=sys.stderr)
        return 2
    except (ValueError, TypeError) as bad:     # the model refused an argument
        print(f"{PROG} {args.command}: error: {str(bad).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(output)
        sys.stdout.flush()
    except BrokenPipeError:                    # `kvmmu ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
