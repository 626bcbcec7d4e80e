"""Find the SPTEs in kernel log and trace text: reserved-bit dumps, make_spte WARNs, kvmmmu events.

What the kernel prints, and since when (each checked in the kernel's history):

- The MMIO fault path's dump of a walk that failed the reserved-bit check
  (``get_mmio_spte()`` in mmu.c).  Since Linux 5.13 (commit bb4cdf3af939,
  2021-02-25) a header ``<function>: reserved bits set on MMU-present spte,
  addr 0x…, hierarchy:`` and one ``------ spte = 0x… level = N, rsvd bits =
  0x…`` line per level, root first, the mask being ``get_rsvd_bits()``;
  before, ``<function>: detect reserved bits on spte, addr 0x…, dump
  hierarchy:`` and ``------ spte 0x… level N.`` lines (the function was
  ``walk_shadow_page_get_mmio_spte`` until 5.10 renamed it ``get_mmio_spte``).
- ``make_spte()``'s WARN when it built an SPTE with a reserved bit (spte.c,
  since 2021): ``spte = 0x…, level = N, rsvd bits = 0x…``.
- The ``kvmmmu`` tracepoints of arch/x86/kvm/mmu/mmutrace.h that print an
  SPTE, as ``trace-cmd report`` and ``/sys/kernel/tracing/trace`` show them
  (``task-pid [cpu] flags timestamp: event: fields``).  Their fields keep the
  kernel's ``__entry`` names: ``kvm_mmu_set_spte`` (``gfn``, ``spte``,
  ``level``, ``sptep``), ``kvm_tdp_mmu_spte_changed`` (``as_id``, ``gfn``,
  ``level``, ``old_spte``, ``new_spte``), ``fast_page_fault``
  (``vcpu_id``, ``cr2_or_gpa`` printed as ``gva``, ``error_code``,
  ``sptep``, ``old_spte`` / ``new_spte`` printed as ``old`` / ``new``,
  ``ret`` printed as ``spurious`` and ``fixed``), ``check_mmio_spte``
  (``spte``, ``kvm_gen``, ``spte_gen`` printed as ``spte-gen``),
  ``mark_mmio_spte`` (``sptep``, ``gfn``, ``access``, ``gen``: no SPTE, the
  decoder rebuilds it) and ``kvm_mmu_split_huge_page`` (``gfn``, ``spte``,
  ``level``, ``errno``).  The other events print no SPTE
  (``kvm_mmu_paging_element``'s ``pte`` is the guest's own entry), so their
  lines are left alone.

Lines are matched wherever the text sits on the line, so dmesg timestamps
(``[12345.678901]``), ``kvm:`` / ``kvm_intel:`` prefixes and journal
prefixes do not matter.  Everything else in the text is ignored.
"""
import re
from dataclasses import dataclass, field

from ..bits import U64_MAX

__all__ = ["DumpLine", "Dump", "TraceEvent", "Skipped", "parse_log", "TRACE_EVENTS"]

_HEX = r"[0-9a-fA-F]+"

DUMP_HEADER = {
    "5.13+": re.compile(rf"(?P<function>\w+): reserved bits set on MMU-present spte, "
                        rf"addr 0x(?P<addr>{_HEX}), hierarchy:"),
    "before 5.13": re.compile(rf"(?P<function>\w+): detect reserved bits on spte, "
                              rf"addr 0x(?P<addr>{_HEX}), dump hierarchy:"),
}
DUMP_LINE = {
    "5.13+": re.compile(rf"------ spte = 0x(?P<spte>{_HEX}) level = (?P<level>-?\d+), "
                        rf"rsvd bits = 0x(?P<rsvd>{_HEX})"),
    "before 5.13": re.compile(rf"------ spte 0x(?P<spte>{_HEX}) level (?P<level>-?\d+)\."),
}
MAKE_SPTE_WARN = re.compile(rf"\bspte = 0x(?P<spte>{_HEX}), level = (?P<level>-?\d+), "
                            rf"rsvd bits = 0x(?P<rsvd>{_HEX})")

#: Each event that prints an SPTE (or, mark_mmio_spte, what rebuilds one):
#: the TP_printk layout as a regex over the fields, and the fields that hold SPTEs.
TRACE_EVENTS = {
    "kvm_mmu_set_spte": (
        rf"gfn (?P<gfn>{_HEX}) spte (?P<spte>{_HEX}) \((?P<flags>[^)]*)\) "
        rf"level (?P<level>-?\d+) at (?P<sptep>{_HEX})", ("spte",)),
    "kvm_tdp_mmu_spte_changed": (
        rf"as id (?P<as_id>-?\d+) gfn (?P<gfn>{_HEX}) level (?P<level>-?\d+) "
        rf"old_spte (?P<old_spte>{_HEX}) new_spte (?P<new_spte>{_HEX})", ("old_spte", "new_spte")),
    "fast_page_fault": (
        rf"vcpu (?P<vcpu_id>-?\d+) gva (?P<cr2_or_gpa>{_HEX}) error_code (?P<error_code>\S*)\s+"
        rf"sptep (?P<sptep>\S+) old (?P<old_spte>(?:0x)?{_HEX}) new (?P<new_spte>{_HEX}) "
        rf"spurious (?P<spurious>\d+) fixed (?P<fixed>\d+)", ("old_spte", "new_spte")),
    "check_mmio_spte": (
        rf"spte (?P<spte>{_HEX}) kvm_gen (?P<kvm_gen>{_HEX}) spte-gen (?P<spte_gen>{_HEX}) "
        rf"valid (?P<valid>\d+)", ("spte",)),
    "mark_mmio_spte": (
        rf"sptep:(?P<sptep>\S+) gfn (?P<gfn>{_HEX}) access (?P<access>{_HEX}) gen (?P<gen>{_HEX})", ()),
    "kvm_mmu_split_huge_page": (
        rf"gfn (?P<gfn>{_HEX}) spte (?P<spte>{_HEX}) level (?P<level>-?\d+) errno (?P<errno>-?\d+)",
        ("spte",)),
}
_TRACE = re.compile(r"(?:\bkvmmmu:)?\b(?P<event>" + "|".join(TRACE_EVENTS) + r"):\s+(?P<fields>.*)$")
_FIELDS = {name: re.compile(rx) for name, (rx, _) in TRACE_EVENTS.items()}
#: How mmutrace.h prints a field, where its label is not the __entry name.
PRINTED_AS = {("fast_page_fault", "cr2_or_gpa"): "gva", ("fast_page_fault", "old_spte"): "old",
              ("fast_page_fault", "new_spte"): "new", ("check_mmio_spte", "spte_gen"): "spte-gen",
              ("kvm_tdp_mmu_spte_changed", "as_id"): "as id"}
_DECIMAL = {"level", "as_id", "vcpu_id", "spurious", "fixed", "errno", "valid"}
_TEXT = {"flags", "error_code", "sptep"}


@dataclass(frozen=True)
class DumpLine:
    """One level of a reserved-bit dump: the SPTE, its level, the mask printed beside it (5.13+)."""

    line: int
    spte: int
    level: int
    rsvd_bits: int | None


@dataclass
class Dump:
    """One dump of a walk: its header (None if the text starts mid-dump) and its levels."""

    line: int
    layout: str                  # "5.13+" or "before 5.13"
    function: str | None
    addr: int | None
    levels: list = field(default_factory=list)


@dataclass(frozen=True)
class TraceEvent:
    """One kvmmmu tracepoint line (or a make_spte WARN): its event and its fields by kernel name."""

    line: int
    event: str
    fields: dict


@dataclass(frozen=True)
class Skipped:
    """A line that looked like an SPTE line but could not be used, and why."""

    line: int
    why: str


def _number(text: str, base: int) -> int:
    return int(text[2:] if text.lower().startswith("0x") else text, base)


def _u64(line: int, name: str, text: str, base: int = 16) -> int:
    value = _number(text, base)
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"line {line}: {name} {text} does not fit 64 bits")
    return value


def _trace_fields(line: int, event: str, text: str) -> dict:
    m = _FIELDS[event].fullmatch(text.strip())
    if m is None:
        raise ValueError(f"line {line}: {event} fields do not have the mmutrace.h layout: "
                         f"{text.strip()[:60]!r}")
    out = {}
    for name, raw in m.groupdict().items():
        if name in _TEXT:
            out[name] = raw
        elif name in _DECIMAL:
            out[name] = int(raw)
        else:
            out[name] = _u64(line, name, raw)
    return out


def _dump_line(n: int, layout: str, m) -> DumpLine:
    rsvd = _u64(n, "rsvd bits", m["rsvd"]) if "rsvd" in m.groupdict() else None
    return DumpLine(n, _u64(n, "spte", m["spte"]), int(m["level"]), rsvd)


def _attach(items: list, n: int, layout: str, entry: DumpLine) -> None:
    # A level line continues the latest dump of its layout if it descends
    # from that dump's last level; otherwise the text began mid-dump.
    last = items[-1] if items and isinstance(items[-1], Dump) else None
    if (last is None or last.layout != layout
            or (last.levels and last.levels[-1].level <= entry.level)):
        last = Dump(n, layout, None, None)
        items.append(last)
    last.levels.append(entry)


def _parse_line(items: list, n: int, text: str) -> None:
    for layout, rx in DUMP_HEADER.items():
        m = rx.search(text)
        if m:
            items.append(Dump(n, layout, m["function"], _u64(n, "addr", m["addr"])))
            return
    for layout, rx in DUMP_LINE.items():
        m = rx.search(text)
        if m:
            _attach(items, n, layout, _dump_line(n, layout, m))
            return
    m = MAKE_SPTE_WARN.search(text)
    if m:
        items.append(TraceEvent(n, "make_spte", {"spte": _u64(n, "spte", m["spte"]),
                                                 "level": int(m["level"]),
                                                 "rsvd_bits": _u64(n, "rsvd bits", m["rsvd"])}))
        return
    m = _TRACE.search(text)
    if m:
        items.append(TraceEvent(n, m["event"], _trace_fields(n, m["event"], m["fields"])))


def parse_log(text: str) -> list:
    """Return the dumps, WARNs and trace events in ``text``, in order, and the lines skipped.

    The result is a list of :class:`Dump`, :class:`TraceEvent` and
    :class:`Skipped`; lines with nothing SPTE-shaped are left out.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    items: list = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            _parse_line(items, n, line)
        except ValueError as why:
            items.append(Skipped(n, str(why)))
    return items
