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

__all__ = ["XrefEntry", "kernel_xref", "xref_table_html"]

_MODELS = re.compile(r"^\s*Models:\s*(?P<path>[^\s:]+)\s*:\s*(?P<what>.+?)\s*$", re.M)

@dataclass(frozen=True)
class XrefEntry:
    """One modelled kernel object: where the kernel has it, where the model has it."""

    kernel_file: str
    kernel_name: str
    model: str

    def __post_init__(self):
        for name in ("kernel_file", "kernel_name", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty string, got {value!r}")

    @property
    def identifier(self) -> str:
        """The C identifier alone: ``make_spte`` for ``make_spte() (6.17)``, ``kvm`` for ``struct kvm``."""
        name = re.sub(r"^FNAME\((\w+)\)", r"\1", self.kernel_name.strip())
        name = re.sub(r"\s*\(.*$", "", name)
        return re.sub(r"^(struct|union|enum)\s+", "", name)


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


def _entries_of(owner_name: str, doc: str | None):
    for match in _MODELS.finditer(doc or ""):
        for name in _split_names(match["what"]):
            name = name.strip()
            if name:
                yield XrefEntry(match["path"], name, owner_name)


def kernel_xref() -> list[XrefEntry]:
    """Return every ``Models:`` line of the package, sorted by kernel file and name."""
    entries, module_entries = [], []
    for module in _model_modules():
        module_entries.extend(_entries_of(module.__name__, module.__doc__))
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                entries.extend(_entries_of(f"{module.__name__}.{name}", obj.__doc__))
                if inspect.isclass(obj):
                    for meth_name, meth in vars(obj).items():
                        if inspect.isfunction(meth):
                            entries.extend(_entries_of(
                                f"{module.__name__}.{name}.{meth_name}", meth.__doc__))
    # A module docstring may summarise what its functions model; keep the
    # precise function-level entry where one exists.
    precise = {(e.kernel_file, e.kernel_name) for e in entries}
    entries += [e for e in module_entries if (e.kernel_file, e.kernel_name) not in precise]
    unique = {(e.kernel_file, e.kernel_name, e.model): e for e in entries}
    kept = list(unique.values())
    return sorted(kept, key=lambda e: (e.kernel_file, e.kernel_name, e.model))


_CELL = "border-top:1px solid #ddd;padding:2px 6px;vertical-align:top;overflow-wrap:anywhere"


def xref_table_html(entries) -> str:
    """One narrow table (kernel file, kernel name, model) that wraps to the page.

    The kernel file is printed once for the rows that share it, the way
    locking.rst's tables print only what changes; ``kvmmu.`` is left out of
    the model's name.
    """
    from html import escape

    entries = list(entries) if not isinstance(entries, (str, bytes)) else None
    if entries is None or not all(isinstance(e, XrefEntry) for e in entries):
        raise TypeError("entries must be an iterable of XrefEntry")
    rows, last = [], None
    for e in sorted(entries, key=lambda e: (e.kernel_file, e.kernel_name, e.model)):
        where = "" if e.kernel_file == last else escape(e.kernel_file)
        last = e.kernel_file
        model = e.model.removeprefix("kvmmu.")
        rows.append(f'<tr><td style="{_CELL};width:34%"><code>{where}</code></td>'
                    f'<td style="{_CELL};width:33%"><code>{escape(e.kernel_name)}</code></td>'
                    f'<td style="{_CELL};width:33%"><code>{escape(model)}</code></td></tr>')
    head = "".join(f'<th style="{_CELL};text-align:left">{h}</th>'
                   for h in ("kernel file", "kernel name", "model (kvmmu.)"))
    return ('<table style="table-layout:fixed;width:100%;border-collapse:collapse;'
            f'font-size:85%"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")
