"""The kernel cross-reference, generated from the package itself.

Every modelled function says ``Models: <kernel file>: <function>()`` in its
docstring.  ``kernel_xref()`` collects those lines, so the book's appendix can
never list a function the package does not have, nor miss one it has.
"""
import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass

_MODELS = re.compile(r"^\s*Models:\s*(?P<path>[^\s:]+)\s*:\s*(?P<what>.+?)\s*$", re.M)

#: Which chapter teaches each model module (module name -> chapter number).
CHAPTER_OF_MODULE = {
    "bits": 1, "levels": 1, "spte": 1, "spte_races": 1,
    "host_mm": 2, "memslots": 2, "scenarios.host_level": 2,
    "explorer": 3, "tdp_mmu": 3, "tdp_iter": 3, "tlb": 3, "scenarios.tdp_mmu": 3,
    "guest_memfd": 4, "guest_memfd_rfc": 4, "folio": 4, "scenarios.guest_memfd": 4,
    "paging_tmpl": 5, "paging_tmpl_rfc": 5, "pfncache": 5, "mmu_permissions": 5, "pferr": 5,
    "guest": 5, "scenarios.paging_tmpl": 5,
    "memslot_update": 6, "prefault": 6,
}

CHAPTER_TITLES = {
    1: "SPTE format",
    2: "Host mapping level rules",
    3: "Removed SPTEs and the TLB flush",
    4: "guest_memfd folio put",
    5: "Guest page-table walk",
    6: "Prefault -EAGAIN",
}


@dataclass(frozen=True)
class XrefEntry:
    """One modelled kernel object: where the kernel has it, where the model has it."""

    kernel_file: str
    kernel_name: str
    model: str
    chapter: int | None


#: Model packages (the rest, viz and exercises, are views and problem generators).
_MODEL_PACKAGES = ("explorer",)


def _model_modules():
    import kvmmu

    for info in pkgutil.iter_modules(kvmmu.__path__):
        if info.name.startswith("_") or info.name in ("xref", "source", "checks"):
            continue
        if info.ispkg and info.name not in _MODEL_PACKAGES:
            continue
        module = importlib.import_module(f"kvmmu.{info.name}")
        yield module
        if info.ispkg:
            for sub in pkgutil.iter_modules(module.__path__):
                yield importlib.import_module(f"{module.__name__}.{sub.name}")


def _split_names(text: str) -> list[str]:
    """Split "a(), b() (note, with commas)" on the commas outside parentheses."""
    names, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += ch
    return names + [current]


def _entries_of(owner_name: str, doc: str | None, chapter):
    for match in _MODELS.finditer(doc or ""):
        for name in _split_names(match["what"]):
            name = name.strip()
            if name:
                yield XrefEntry(match["path"], name, owner_name, chapter)


def kernel_xref() -> list[XrefEntry]:
    """Return every ``Models:`` line of the package, sorted by kernel file and name."""
    entries, module_entries = [], []
    for module in _model_modules():
        short = module.__name__.split(".", 1)[1]
        chapter = CHAPTER_OF_MODULE.get(short, CHAPTER_OF_MODULE.get(short.split(".")[0]))
        module_entries.extend(_entries_of(module.__name__, module.__doc__, chapter))
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                entries.extend(_entries_of(f"{module.__name__}.{name}", obj.__doc__, chapter))
                if inspect.isclass(obj):
                    for meth_name, meth in vars(obj).items():
                        if inspect.isfunction(meth):
                            entries.extend(_entries_of(
                                f"{module.__name__}.{name}.{meth_name}", meth.__doc__, chapter))
    # A module docstring may summarise what its functions model; keep the
    # precise function-level entry where one exists.
    precise = {(e.kernel_file, e.kernel_name) for e in entries}
    entries += [e for e in module_entries if (e.kernel_file, e.kernel_name) not in precise]
    unique = {(e.kernel_file, e.kernel_name, e.model): e for e in entries}
    kept = list(unique.values())
    return sorted(kept, key=lambda e: (e.kernel_file, e.kernel_name, e.model))


def xref_table_markdown(entries=None) -> str:
    """Render the cross-reference as a Markdown table (kernel file, name, model, chapter)."""
    entries = kernel_xref() if entries is None else entries
    lines = ["| kernel file | kernel name | model | chapter |", "| --- | --- | --- | --- |"]
    for e in entries:
        chapter = f"{e.chapter}. {CHAPTER_TITLES[e.chapter]}" if e.chapter else "shared core"
        lines.append(f"| `{e.kernel_file}` | `{e.kernel_name}` | `{e.model}` | {chapter} |")
    return "\n".join(lines)
