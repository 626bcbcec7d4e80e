"""``kvmmu decode``: what an SPTE is, field by field, and whether KVM's reserved-bit check passes it.

Each value gets its class and fields (:func:`kvmmu.spte.decode_spte`) and,
for an MMU-present SPTE, the verdict of the TDP MMU's own check,
``is_rsvd_spte(shadow_zero_check, spte, level)`` (:mod:`kvmmu.mmu_rsvd`),
with the reserved bits it sets and why each is reserved.  A value that is
non-present today but present to the CPU (RWX on EPT, P on NPT, bit 11
clear) is read in the layout KVM used before Linux 5.13, which had no
MMU-present bit.

Text from a log (:mod:`kvmmu.cli.logs`) adds what the log says about each
value: the mask a 5.13+ dump printed beside it, compared with the model's
``get_rsvd_bits()`` (when they differ, the tables of other kernels and
machines that would have printed it are named), and the event's own
fields (``check_mmio_spte``'s generations).  Without ``--phys-bits``, a
dump's physical address width is read from its printed masks.

The report is a plain dict (:func:`decode_values`, :func:`decode_log`);
:func:`render_text` and :func:`render_json` print it.  Nothing here imports
the explorer, the VM model or a view: ``kvmmu decode`` starts fast.
"""
import textwrap
from dataclasses import dataclass
from functools import lru_cache

from .. import KERNEL_VERSION
from .. import mmu_rsvd as R
from .. import spte as S
from ..bits import GENMASK_ULL
from ..checks import check_bool, check_int, check_u64
from ..levels import KVM_MAX_HUGEPAGE_LEVEL, PG_LEVEL_4K, PT32E_ROOT_LEVEL, check_level, level_name

# kvmmu.cli.logs (the log parser and its regexes) and json are imported by
# the functions that need them: `kvmmu decode VALUE` loads neither.

__all__ = ["DEFAULT_PHYS_BITS", "SCHEMA", "DecodeOptions", "spte_config", "decode_value",
           "decode_values", "decode_log", "infer_phys_bits", "render_text", "render_json"]

#: The model's default host physical address width (kvmmu.spte's configurations).
DEFAULT_PHYS_BITS = 46
SCHEMA = "kvmmu-decode/1"
_PRESENT = (S.CLASS_PRESENT_LEAF, S.CLASS_PRESENT_NONLEAF, S.CLASS_ACCESS_TRACKED)
#: Commits cited to readers (from the kernel history).
MMU_PRESENT_COMMIT = "edea7c4fc215"          # "Use a dedicated bit to track shadow/MMU-present SPTEs"
DUMP_FORMAT_COMMIT = "bb4cdf3af939"          # "Dump reserved bits if they're detected on non-MMIO SPTE"
_PHYS_BITS_HINT = "the host's 'address sizes' line in /proc/cpuinfo"


@dataclass(frozen=True)
class DecodeOptions:
    """The command's options: the vendor, A/D bits, the host's physical width, the default level."""

    npt: bool = False
    no_ad: bool = False
    #: None: the model's default, or what a dump's printed masks show.
    phys_bits: int | None = None
    level: int = PG_LEVEL_4K

    def __post_init__(self):
        check_bool("npt", self.npt)
        check_bool("no_ad", self.no_ad)
        if self.phys_bits is not None:
            check_int("phys_bits", self.phys_bits, 36, 52)
        check_level("level", self.level)
        if self.npt and self.no_ad:
            raise ValueError("no_ad applies to EPT only: NPT SPTEs always have A/D bits")


# --------------------------------------------------------------------------
# Configurations and reserved-bit tables.
# --------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _config(npt: bool, no_ad: bool, phys_bits: int) -> S.SpteConfig:
    if npt:
        return S.kvm_mmu_reset_all_pte_masks(phys_bits, name=f"AMD NPT, phys-bits {phys_bits}")
    ad = "no A/D bits" if no_ad else "A/D bits"
    return S.kvm_mmu_set_ept_masks(not no_ad, False, phys_bits=phys_bits,
                                   name=f"EPT, {ad}, phys-bits {phys_bits}")


def spte_config(npt: bool = False, no_ad: bool = False,
                phys_bits: int = DEFAULT_PHYS_BITS) -> S.SpteConfig:
    """Return the SPTE configuration for the command's ``--npt``, ``--no-ad`` and ``--phys-bits``."""
    options = DecodeOptions(npt, no_ad, phys_bits)
    return _config(options.npt, options.no_ad, options.phys_bits)


@lru_cache(maxsize=None)
def _zero_check(cfg: S.SpteConfig) -> R.RsvdBitsValidate:
    # A 5-level NPT table has the 4-level one's levels 1-4 and adds level 5,
    # so it judges an SPTE of either root; EPT's table covers every level.
    return R.reset_tdp_shadow_zero_bits_mask(cfg, root_level=5)


def _npt_table(cfg, level, nx, gbpages=True):
    check = R.RsvdBitsValidate()
    R.__reset_rsvds_bits_mask(check, R.reserved_hpa_bits(cfg), level, nx, gbpages, False, True)
    return check


_NX_FIX = "before the March 2022 patch 'KVM: x86/mmu: Don't treat NX as reserved for NPT MMUs'"


@lru_cache(maxsize=None)
def _alternatives(cfg: S.SpteConfig) -> tuple:
    """Other tables a kernel may have printed its masks from: (description, table) pairs.

    The other vendor (a forgotten ``--npt``), CPUs without 1G pages, and the
    NPT tables of other kernels and hosts: bit 63 reserved (kernels before
    the March 2022 NX fix), a 32-bit host's PAE root.
    """
    npt = cfg if not cfg.ept else _config(True, False, cfg.phys_bits)
    ept = cfg if cfg.ept else _config(False, False, cfg.phys_bits)
    tables = [("the EPT table (no --npt)", _zero_check(ept)),
              ("EPT on a CPU without 1G pages", R.reset_tdp_shadow_zero_bits_mask(ept, gbpages=False)),
              ("the NPT table (--npt)", _zero_check(npt)),
              (f"NPT with bit 63 (NX) reserved, as {_NX_FIX}", _npt_table(npt, 4, False)),
              ("NPT on a 32-bit host (3-level PAE root)", _npt_table(npt, PT32E_ROOT_LEVEL, True)),
              (f"NPT on a 32-bit host (PAE root) with bit 63 reserved, as {_NX_FIX}",
               _npt_table(npt, PT32E_ROOT_LEVEL, False)),
              ("NPT on a CPU without 1G pages",
               R.reset_tdp_shadow_zero_bits_mask(npt, root_level=5, gbpages=False))]
    own = _zero_check(cfg)
    return tuple((what, table) for what, table in tables if table is not own)


def infer_phys_bits(rsvd_bits: int) -> int | None:
    """Return the physical address width a printed reserved-bit mask shows, or None.

    Every table reserves the address bits from the width up to bit 51 at
    every level; below bit 30 a mask may also hold a large page's alignment
    bits, so only bits 30-51 are read.  None if they are not one run ending
    at bit 51 (no mask of KVM's looks like that).
    """
    check_u64("rsvd_bits", rsvd_bits)
    high = rsvd_bits & GENMASK_ULL(51, 30)
    if not high:
        return 52
    low = (high & -high).bit_length() - 1
    return low if high == GENMASK_ULL(51, low) and low >= 36 else None


# --------------------------------------------------------------------------
# One value.
# --------------------------------------------------------------------------
def _older_layout(value: int, cfg: S.SpteConfig, level: int, cls: str) -> dict | None:
    """How a value that is non-present today reads in the layout before 5.13, or None."""
    if cls != S.CLASS_NONPRESENT:
        return None
    if S.is_mmio_spte_2021(value):
        return {"kind": "MMIO", "present": False,
                "note": "bits 52-53 are both set: an MMIO SPTE in the layout of Linux 5.12 and "
                        "earlier, which marked MMIO SPTEs with those two bits"}
    if not value & (S.VMX_EPT_RWX_MASK if cfg.ept else S.PT_PRESENT_MASK):
        return None
    kind = S.CLASS_PRESENT_LEAF if S.is_last_spte(value, level) else S.CLASS_PRESENT_NONLEAF
    what = "R/W/X" if cfg.ept else "P"
    return {"kind": kind, "present": True,
            "note": f"bit 11 is clear but {what} is set: a {kind} SPTE in the layout before "
                    "Linux 5.13, when KVM had no MMU-present bit (SPTE_MMU_PRESENT_MASK, bit 11, "
                    f"came with commit {MMU_PRESENT_COMMIT}) and judged presence by 'not zero and "
                    "not MMIO'; the fields below read it that way"}


def _bit_reason(bit: int, level: int, bit7: int, cfg: S.SpteConfig) -> str:
    """Why ``bit`` is reserved in an entry at ``level`` with bit 7 = ``bit7`` (model wording)."""
    size = {2: "2M", 3: "1G"}.get(level)
    if bit == 63:
        return "NX, reserved in this table"
    if cfg.phys_bits <= bit <= 51:
        return f"a physical address at or above the host's {cfg.phys_bits}-bit MAXPHYADDR"
    if 52 <= bit <= 62:
        return "reserved in PAE entries"
    if bit == 7:
        if level > KVM_MAX_HUGEPAGE_LEVEL:
            return f"PS: a level-{level} entry cannot map a page"
        return f"PS: this host has no {size} pages"
    if bit == 8 and not cfg.ept and not bit7:
        return "bit 8 of an AMD non-leaf entry at level 4 or 5"
    if cfg.ept and 3 <= bit <= 6 and not bit7:
        return "memory type and ignore-PAT bits, which a non-leaf EPT entry does not have"
    if bit7 and 12 <= bit <= 29 and size:
        return f"the frame of a {size} page must be {size}-aligned"
    return "reserved"


def _bit_runs(bits: int, describe) -> list:
    """Group the set bits into runs with one reason: ``["bits 12-20: ...", "bit 7: ..."]``."""
    runs = []                               # [first, last, reason]
    for bit in range(64):
        if not bits >> bit & 1:
            continue
        reason = describe(bit)
        if runs and runs[-1][1] == bit - 1 and runs[-1][2] == reason:
            runs[-1][1] = bit
        else:
            runs.append([bit, bit, reason])
    return [(f"bit {a}" if a == b else f"bits {a}-{b}") + f": {why}" for a, b, why in runs]


def _rsvd_verdict(value: int, level: int, cfg: S.SpteConfig, cls: str, older) -> dict:
    check = _zero_check(cfg)
    mask = R.get_rsvd_bits(check, value, level)
    bit7 = (value >> 7) & 1
    bad_mt_xwr = R.__is_bad_mt_xwr(check, value)
    reasons = _bit_runs(value & mask, lambda b: _bit_reason(b, level, bit7, cfg))
    if bad_mt_xwr:
        reasons += [f"bad_mt_xwr: {r}" for r in R.bad_mt_xwr_reason(value)]
    why = None
    if cls == S.CLASS_MMIO:
        why = ("an MMIO SPTE: its reserved bits are what make the access fault (EPT "
               "misconfiguration or #PF with RSVD), and the check skips a walk's last SPTE when it "
               "is not MMU-present")
    elif cls not in _PRESENT and not (older and older["present"]):
        why = ("not MMU-present: the CPU has nothing to use, and the check skips a walk's last "
               "SPTE when it is not MMU-present")
    return {"checked": why is None, "why_unchecked": why,
            "reserved": R.is_rsvd_spte(check, value, level), "index": [bit7, level - 1],
            "rsvd_bits_mask": mask, "bits": value & mask, "bad_mt_xwr": bad_mt_xwr,
            "reasons": reasons}


def _logs():
    from . import logs
    return logs


def _source(kind: str, line=None, dump=None, event=None, field=None, printed_as=None,
            context=None) -> dict:
    """Where a value came from; every key is always there (None where it does not apply)."""
    return {"kind": kind, "line": line, "dump": dump, "event": event, "field": field,
            "printed_as": printed_as, "context": context}


def _verdict_class(cls: str, older) -> str:
    if older is None:
        return cls
    return S.CLASS_MMIO if older["kind"] == "MMIO" else S.CLASS_NONPRESENT


def decode_value(value: int, level: int = PG_LEVEL_4K, cfg: S.SpteConfig = S.EPT_AD) -> dict:
    """Return the report on one SPTE: class, fields, notes, reserved-bit verdict (a dict)."""
    check_u64("value", value)
    check_level("level", level)
    if not isinstance(cfg, S.SpteConfig):
        raise TypeError(f"cfg must be a SpteConfig (e.g. kvmmu.spte.EPT_AD), got {type(cfg).__name__}")
    decoded = S.decode_spte(value, cfg, level)
    older = _older_layout(value, cfg, level, decoded.cls)
    notes = list(decoded.notes)
    if older and older["present"]:
        decoded = S.decode_spte(value | S.SPTE_MMU_PRESENT_MASK, cfg, level)
        notes = list(decoded.notes)
    return {"value": value, "level": level, "config": cfg.name, "phys_bits": cfg.phys_bits,
            "class": S.classify(value, cfg, level), "fields": dict(decoded.fields), "notes": notes,
            "older_layout": older,
            "rsvd": _rsvd_verdict(value, level, cfg, _verdict_class(decoded.cls, older), older),
            "printed": None, "event_checks": [], "source": _source("argument")}


def _report(options: DecodeOptions, source: str) -> dict:
    return {"schema": SCHEMA, "kernel": KERNEL_VERSION, "input": source,
            "settings": {"npt": options.npt, "no_ad": options.no_ad,
                         "phys_bits": options.phys_bits, "level": options.level},
            "values": [], "dumps": [], "skipped": []}


def decode_values(values, options: DecodeOptions = DecodeOptions()) -> dict:
    """Return the report on the SPTE values given as arguments, each at ``options.level``."""
    if not isinstance(options, DecodeOptions):
        raise TypeError(f"options must be a DecodeOptions, got {type(options).__name__}")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"values must be a list of integers, got {type(values).__name__}")
    values = [check_u64("value", v) for v in values]
    cfg = _config(options.npt, options.no_ad, options.phys_bits or DEFAULT_PHYS_BITS)
    report = _report(options, "arguments")
    report["values"] = [decode_value(v, options.level, cfg) for v in values]
    return report


# --------------------------------------------------------------------------
# Text from a log.
# --------------------------------------------------------------------------
def _printed_check(printed: int, value: int, level: int, cfg: S.SpteConfig) -> dict:
    model = R.get_rsvd_bits(_zero_check(cfg), value, level)
    others = []
    if printed != model:
        others = [what for what, table in _alternatives(cfg)
                  if R.get_rsvd_bits(table, value, level) == printed]
    return {"rsvd_bits": printed, "model": model, "agrees": printed == model,
            "only_printed": printed & ~model, "only_model": model & ~printed, "agrees_with": others}


def _dump_phys_bits(dump, options: DecodeOptions) -> tuple:
    if options.phys_bits is not None:
        return options.phys_bits, "option"
    for entry in dump.levels:
        if entry.rsvd_bits is not None:
            width = infer_phys_bits(entry.rsvd_bits)
            if width is not None:
                return width, "inferred from the printed masks"
    return DEFAULT_PHYS_BITS, f"the model's default: pass --phys-bits, {_PHYS_BITS_HINT}"


def _dump_summary(dump, values: list, cfg: S.SpteConfig, phys: tuple, first: int) -> dict:
    printed = [v["printed"] for v in values if v["printed"] is not None]
    common, rejudged = None, None
    if printed and not all(p["agrees"] for p in printed):
        common = [w for w in printed[0]["agrees_with"] if all(w in p["agrees_with"] or p["agrees"]
                                                             for p in printed)]
    if common:
        # Judge the walk again with the table the kernel printed from.
        table = dict(_alternatives(cfg))[common[0]]
        rejudged = [v["level"] for v in values if v["rsvd"]["checked"]
                    and R.is_rsvd_spte(table, v["value"], v["level"])]
    note = None
    if dump.layout == "before 5.13":
        note = ("this message predates Linux 5.13 (commit " + DUMP_FORMAT_COMMIT + " changed it), "
                "so its SPTEs are in the older layout: no MMU-present bit, Host-/MMU-writable in "
                "bits 10/11, and in 5.10-5.12 MMIO marked by bits 52-53; it prints no masks. "
                "Decoded with the 6.17 rules and the older layout's notes")
    return {"line": dump.line, "layout": dump.layout, "function": dump.function, "addr": dump.addr,
            "config": cfg.name, "phys_bits": phys[0], "phys_bits_source": phys[1],
            "values": list(range(first, first + len(values))),
            "reserved_levels": [v["level"] for v in values
                                if v["rsvd"]["checked"] and v["rsvd"]["reserved"]],
            "printed_agree": sum(p["agrees"] for p in printed) if printed else None,
            "printed_agree_with": common, "reserved_levels_printed_table": rejudged, "note": note}


def _decode_dump(report: dict, dump, options: DecodeOptions) -> None:
    phys = _dump_phys_bits(dump, options)
    cfg = _config(options.npt, options.no_ad, phys[0])
    values = []
    for entry in dump.levels:
        if not 1 <= entry.level <= 5:
            report["skipped"].append({"line": entry.line,
                                      "why": f"level {entry.level} is not a page-table level (1-5)"})
            continue
        rec = decode_value(entry.spte, entry.level, cfg)
        rec["source"] = _source("dump", entry.line, dump=len(report["dumps"]))
        if entry.rsvd_bits is not None:
            rec["printed"] = _printed_check(entry.rsvd_bits, entry.spte, entry.level, cfg)
        values.append(rec)
    report["dumps"].append(_dump_summary(dump, values, cfg, phys, len(report["values"])))
    report["values"] += values


def _event_level(event, options: DecodeOptions):
    level = event.fields.get("level")
    if level is None:
        return options.level, f"{event.event} prints no level: decoded at level {options.level} (--level)"
    if not 1 <= level <= 5:
        raise ValueError(f"line {event.line}: level {level} is not a page-table level (1-5)")
    return level, None


_DECIMAL_FIELDS = {"level", "as_id", "vcpu_id", "spurious", "fixed", "errno", "valid"}


def _context(event, skip: str) -> dict:
    """The event's other fields as the trace prints them (label -> text)."""
    out = {}
    for k, v in event.fields.items():
        if k in (skip, "rsvd_bits"):
            continue
        text = v if isinstance(v, str) else str(v) if k in _DECIMAL_FIELDS else f"{v:#x}"
        out[_logs().PRINTED_AS.get((event.event, k), k)] = text
    return out


def _rebuild_mmio(event, cfg: S.SpteConfig) -> tuple:
    """mark_mmio_spte prints gfn, the SPTE's low three bits and the generation: rebuild the SPTE."""
    f = event.fields
    if f["gen"] > S.MMIO_SPTE_GEN_MASK:
        raise ValueError(f"line {event.line}: gen {f['gen']:#x} is wider than the 19-bit MMIO generation")
    spte = S.make_mmio_spte(f["gfn"], f["access"] & S.ACC_ALL, f["gen"], cfg)
    low = spte & S.ACC_ALL
    return spte, {"what": f"printed access {f['access']:#x} (the SPTE's bits 0-2) against the "
                          f"rebuilt SPTE's {low:#x}", "agrees": low == f["access"]}


def _event_phys_bits(event, options: DecodeOptions) -> int:
    if options.phys_bits is not None:
        return options.phys_bits
    printed = event.fields.get("rsvd_bits")             # a make_spte WARN prints its mask
    width = infer_phys_bits(printed) if printed is not None else None
    return width or DEFAULT_PHYS_BITS


def _decode_event(report: dict, event, options: DecodeOptions) -> None:
    cfg = _config(options.npt, options.no_ad, _event_phys_bits(event, options))
    level, level_note = _event_level(event, options)
    if event.event == "mark_mmio_spte":
        spte, check = _rebuild_mmio(event, cfg)
        sources = [("rebuilt", spte, [check])]
    else:
        names = ("spte",) if event.event == "make_spte" else _logs().TRACE_EVENTS[event.event][1]
        sources = [(name, event.fields[name], []) for name in names]
    for name, value, checks in sources:
        rec = decode_value(value, level, cfg)
        if level_note:
            rec["notes"].insert(0, level_note)
        if event.event == "check_mmio_spte":
            checks = _mmio_gen_checks(event, value)
        if event.event == "make_spte":
            rec["printed"] = _printed_check(event.fields["rsvd_bits"], value, level, cfg)
        rec["event_checks"] = checks
        rec["source"] = _source("warn" if event.event == "make_spte" else "tracepoint",
                                event.line, event=event.event, field=name,
                                printed_as=_logs().PRINTED_AS.get((event.event, name), name),
                                context=_context(event, name))
        report["values"].append(rec)


def _mmio_gen_checks(event, value: int) -> list:
    f = event.fields
    decoded = S.get_mmio_spte_generation(value)
    return [{"what": f"printed spte-gen {f['spte_gen']:#x} against the generation in the SPTE, "
                     f"{decoded:#x}", "agrees": decoded == f["spte_gen"]},
            {"what": f"printed valid {f['valid']} against kvm_gen == spte-gen",
             "agrees": f["valid"] == int(f["kvm_gen"] == f["spte_gen"])}]


def decode_log(text: str, options: DecodeOptions = DecodeOptions()) -> dict:
    """Return the report on every SPTE in log or trace text (see :mod:`kvmmu.cli.logs`)."""
    if not isinstance(options, DecodeOptions):
        raise TypeError(f"options must be a DecodeOptions, got {type(options).__name__}")
    from .logs import Dump, Skipped, parse_log

    report = _report(options, "text")
    for item in parse_log(text):
        if isinstance(item, Skipped):
            report["skipped"].append({"line": item.line, "why": item.why})
        elif isinstance(item, Dump):
            _decode_dump(report, item, options)
        else:
            try:
                _decode_event(report, item, options)
            except ValueError as why:
                report["skipped"].append({"line": item.line, "why": str(why)})
    return report


# --------------------------------------------------------------------------
# Rendering.
# --------------------------------------------------------------------------
_LABEL = 16


def _shown(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return f"{value:#x}"
    return str(value)


def _item(label: str, text: str, width: int) -> list:
    """``  label            text``, the text wrapped under itself."""
    lead = "  " + label.ljust(_LABEL) + " "
    return textwrap.wrap(text, width, initial_indent=lead, subsequent_indent=" " * len(lead),
                         break_on_hyphens=False, break_long_words=True) or [lead.rstrip()]


def _rsvd_lines(rec: dict, width: int) -> list:
    rs, level = rec["rsvd"], rec["level"]
    b, i = rs["index"]
    where = f"rsvd_bits_mask[{b}][{i}] = {rs['rsvd_bits_mask']:#018x}"
    if not rs["checked"]:
        verdict = "reserved" if rs["reserved"] else "none reserved"
        return _item("reserved bits", f"not checked: {rs['why_unchecked']} (is_rsvd_spte() "
                                      f"would say: {verdict})", width)
    if not rs["reserved"]:
        return _item("reserved bits", f"none: is_rsvd_spte() is false at level {level}, "
                                      f"the check passes ({where})", width)
    lines = _item("reserved bits", f"SET: is_rsvd_spte() is true at level {level}", width)
    if rs["bits"]:
        lines += _item("", f"spte & rsvd_bits_mask[{b}][{i}] ({rs['rsvd_bits_mask']:#018x}) = "
                           f"{rs['bits']:#018x}", width)
    for reason in rs["reasons"]:
        lines += _item("", reason, width)
    return lines


def _printed_lines(p: dict, width: int, name_tables: bool = True) -> list:
    if p["agrees"]:
        return _item("printed mask", f"{p['rsvd_bits']:#018x}: agrees with the model", width)
    diff = []
    if p["only_printed"]:
        diff.append(f"printed only: {_bits_text(p['only_printed'])}")
    if p["only_model"]:
        diff.append(f"model only: {_bits_text(p['only_model'])}")
    lines = _item("printed mask", f"{p['rsvd_bits']:#018x}, the model's is {p['model']:#018x}: "
                                  f"DIFFERS ({'; '.join(diff)})", width)
    if p["agrees_with"] and name_tables:
        lines += _item("", "the printed mask is that of: " + "; or ".join(p["agrees_with"]), width)
    return lines


def _bits_text(bits: int) -> str:
    return ", ".join(r.split(":")[0] for r in _bit_runs(bits, lambda b: ""))


def _value_lines(rec: dict, width: int, name_tables: bool = True) -> list:
    lines = textwrap.wrap(f"{rec['value']:#018x} at level {rec['level']} "
                          f"({level_name(rec['level'])}), {rec['config']}: {rec['class']}",
                          width, subsequent_indent="  ")
    if rec["older_layout"]:
        lines += _item("older layout", rec["older_layout"]["note"], width)
    for key, value in rec["fields"].items():
        lines += _item(key, _shown(value), width)
    for note in rec["notes"]:
        lines += _item("note", note, width)
    lines += _rsvd_lines(rec, width)
    if rec["printed"]:
        lines += _printed_lines(rec["printed"], width, name_tables)
    for check in rec["event_checks"]:
        lines += _item("event check", f"{check['what']}: "
                                      f"{'agrees' if check['agrees'] else 'DIFFERS'}", width)
    return lines


def _dump_header(d: dict, width: int) -> list:
    what = d["function"] or "(a dump whose header is not in the text)"
    addr = f", addr {d['addr']:#x}" if d["addr"] is not None else ""
    layout = {"5.13+": "the format of Linux 5.13+", "before 5.13": "the format before 5.13"}
    lines = textwrap.wrap(f"== line {d['line']}: {what}: reserved-bit dump in "
                          f"{layout[d['layout']]}{addr}; {d['config']} ({d['phys_bits_source']})",
                          width, subsequent_indent="   ")
    if d["note"]:
        lines += textwrap.wrap(d["note"], width, initial_indent="   ", subsequent_indent="   ")
    return lines


def _dump_footer(d: dict, report: dict, width: int) -> list:
    levels = d["reserved_levels"]
    text = ("reserved bits set at level " + ", ".join(map(str, levels)) if levels
            else "no MMU-present SPTE of this walk has a reserved bit under the model's table")
    if d["printed_agree"] is not None:
        n = len(d["values"])
        text += f"; the printed masks agree with the model at {d['printed_agree']} of {n} levels"
        if d["printed_agree_with"]:
            text += "; all of them are the masks of " + "; or ".join(d["printed_agree_with"])
            levels = d["reserved_levels_printed_table"]
            which = "that table" if len(d["printed_agree_with"]) == 1 else "the first of them"
            text += f"; judged with {which}, " + (
                "reserved bits are set at level " + ", ".join(map(str, levels)) if levels
                else "no level has a reserved bit")
    return textwrap.wrap(f"== verdict: {text}", width, subsequent_indent="   ")


def _event_header(rec: dict, width: int) -> list:
    src = rec["source"]
    context = ", ".join(f"{k} {_shown(v)}" for k, v in src["context"].items())
    what = {"rebuilt": "the MMIO SPTE rebuilt from gfn, access and gen (it prints no SPTE)"}.get(
        src["field"], src["printed_as"])
    event = "make_spte WARN" if src["kind"] == "warn" else src["event"]
    return textwrap.wrap(f"== line {src['line']}: {event}: {what} ({context})", width,
                         subsequent_indent="   ")


def render_text(report: dict, width: int = 84) -> str:
    """The report as text for a terminal ``width`` columns wide."""
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise TypeError("report must be a report of kvmmu.cli.decode (decode_values, decode_log)")
    check_int("width", width, 40, 1000)
    out, starts = [], {d["values"][0]: d for d in report["dumps"] if d["values"]}
    ends = {d["values"][-1]: d for d in report["dumps"] if d["values"]}
    for n, rec in enumerate(report["values"]):
        if n in starts:
            out += _dump_header(starts[n], width)
        elif rec["source"]["kind"] in ("tracepoint", "warn"):
            out += _event_header(rec, width)
        dump = report["dumps"][rec["source"]["dump"]] if rec["source"]["kind"] == "dump" else None
        # A table every level's mask agrees with is named once, in the verdict.
        out += _value_lines(rec, width, name_tables=not (dump and dump["printed_agree_with"]))
        if n in ends:
            out += _dump_footer(ends[n], report, width)
        out.append("")
    for skip in report["skipped"]:
        out += textwrap.wrap(f"skipped line {skip['line']}: {skip['why']}", width,
                             subsequent_indent="   ")
    return "\n".join(out).rstrip() + "\n"


_HEX_KEYS = {"value", "rsvd_bits_mask", "bits", "rsvd_bits", "model", "only_printed",
             "only_model", "addr"}


def _jsonable(obj, key=None):
    if isinstance(obj, dict):
        return {k: _jsonable(v, k) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if key in _HEX_KEYS and isinstance(obj, int) and not isinstance(obj, bool):
        return f"{obj:#018x}" if key != "addr" else f"{obj:#x}"
    return obj


def render_json(report: dict) -> str:
    """The report as JSON: fixed keys, 64-bit values as ``0x`` strings (JavaScript-safe)."""
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise TypeError("report must be a report of kvmmu.cli.decode (decode_values, decode_log)")
    import json

    return json.dumps(_jsonable(report), indent=2) + "\n"
