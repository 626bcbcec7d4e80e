"""Write book/appendix_api.md: the API reference, generated from the package.

One section per model module, in the order the layers stack (CONTRIBUTING.md,
"Layers"), each an ``automodule`` of Sphinx autodoc, which documents exactly
the names in the module's ``__all__`` with their docstrings as written.
``tests/test_api_appendix.py`` checks that the committed page is what this
tool writes, so a module added to the package cannot be missing from it.

    .venv/bin/python tools/api_appendix.py          # rewrite the page
"""
import importlib
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "book" / "appendix_api.md"

#: The model's modules, bottom layer first (CONTRIBUTING.md, "Layers");
#: modules not named here come after, in name order.
LAYERS = [
    ("The shared core", ["bits", "levels", "errno", "pferr", "checks", "cpu"]),
    ("Formats, host memory and hardware", ["spte", "host_mm", "folio", "memslots", "tlb",
                                           "tdp_iter"]),
    ("The MMU", ["mmu_internal", "tdp_mmu", "kvm_host", "guest_memfd", "pfncache",
                 "mmu_permissions", "mmu", "paging_tmpl", "kvm_main", "x86", "tdx"]),
    ("Proposed and historical versions", ["guest_memfd_rfc", "paging_tmpl_rfc"]),
    ("The guest, the scenarios, the problems", ["guest", "scenarios"]),
]
SKIP = {"viz", "source", "xref", "explorer", "exercises"}


def _modules() -> list[str]:
    import kvmmu
    names = []
    for info in pkgutil.iter_modules(kvmmu.__path__):
        if info.name.startswith("_") or info.name.startswith("legacy") or info.name in SKIP:
            continue
        names.append(info.name)
    return names


def page() -> str:
    """The page's Markdown text."""
    present = set(_modules())
    lines = ["(appendix-api)=", "# API reference", "",
             "Every module of the model and what it exports (its `__all__`), with the",
             "docstrings as written: the first line says what a function does, the",
             "`Models:` line names its kernel counterpart.  Modules are listed in the",
             "order their layers stack: each imports only modules above it on this page.",
             "The explorer is documented in its own package docstring",
             "(`kvmmu.explorer`), the scenarios by name in `kvmmu.scenarios`.", ""]
    placed = set()
    for title, names in LAYERS:
        names = [n for n in names if n in present]
        if not names:
            continue
        lines += [f"## {title}", ""]
        for name in names:
            lines += _section(name)
            placed.add(name)
    rest = sorted(present - placed)
    if rest:
        lines += ["## Other modules", ""]
        for name in rest:
            lines += _section(name)
    return "\n".join(lines).rstrip() + "\n"


def _section(name: str) -> list[str]:
    module = importlib.import_module(f"kvmmu.{name}")
    first = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
    return [f"### `kvmmu.{name}`", "", first, "",
            "```{eval-rst}", f".. automodule:: kvmmu.{name}", "   :members:", "```", ""]


def main() -> int:
    PAGE.write_text(page())
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
