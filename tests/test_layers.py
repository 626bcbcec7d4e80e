"""The package's shape: imports only go down, each kernel object is modelled once.

CONTRIBUTING.md, "Layers" and "One VM, one fault path".  The import graph is
read from the source (every ``import`` statement, inside functions and
``if TYPE_CHECKING:`` blocks too), so a cycle cannot hide in a lazy import.
"""
import ast
from collections import defaultdict
from pathlib import Path

import kvmmu
from kvmmu.xref import kernel_xref

PACKAGE = Path(kvmmu.__file__).resolve().parent
#: The view layer and the problem generators sit on top of the model; the
#: explorer is the instrument below it.  Neither is a "model module".
NOT_MODEL = ("viz", "exercises")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set:
    """Every kvmmu module ``path`` imports, wherever the import statement is."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("kvmmu")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("kvmmu"):
                continue
            out.add(target)
            for alias in node.names:          # `from . import spte` imports a module
                if (PACKAGE.parent / (target.replace(".", "/") + f"/{alias.name}.py")).exists():
                    out.add(f"{target}.{alias.name}")
    return out


def _graph(model_only: bool = True) -> dict:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        top = name.split(".")[1] if "." in name else ""
        if model_only and top in NOT_MODEL:
            continue
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for dep in _imports(path):
            # Importing kvmmu.x.y depends on kvmmu.x.y, or on the package if y is a name.
            while dep not in modules and "." in dep:
                dep = dep.rsplit(".", 1)[0]
            if dep in modules and dep != name and not name.startswith(dep + "."):
                deps.add(dep)
        graph[name] = deps
    return graph


def _cycles(graph: dict) -> list:
    """Tarjan's strongly connected components with more than one module."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_among_model_modules():
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_model_never_imports_the_views_or_the_problem_generators():
    graph = _graph(model_only=False)
    bad = sorted((m, d) for m, deps in graph.items() for d in deps
                 if m.split(".")[1:2] and m.split(".")[1] not in NOT_MODEL
                 and d.split(".")[1:2] and d.split(".")[1] in NOT_MODEL)
    assert bad == []


def test_the_package_never_imports_the_book():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] == "book" for n in names), path


def test_each_kernel_object_is_modelled_once_or_tagged_with_its_version():
    claims = defaultdict(list)
    for e in kernel_xref():
        name = e.kernel_name
        if "(" in name.split("()", 1)[-1]:      # "f() (RFC v2 as posted)": a tagged version
            continue
        claims[(e.kernel_file, name)].append(e.model)
    twice = {k: v for k, v in claims.items() if len(v) > 1}
    assert twice == {}, "\n".join(f"{f}: {n} modelled by {', '.join(v)}"
                                  for (f, n), v in sorted(twice.items()))


def test_the_layering_rule_graph_helper_sees_function_level_imports(tmp_path):
    # The graph must not miss a lazy import (that is how the old cycles hid).
    src = "def f():\n    from .spte import FROZEN_SPTE\n    return FROZEN_SPTE\n"
    path = PACKAGE / "_layers_probe.py"
    try:
        path.write_text(src)
        assert "kvmmu.spte" in _imports(path)
    finally:
        path.unlink()
