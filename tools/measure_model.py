"""Print the model's shape: what issue "One simulated MMU" asks to measure.

    .venv/bin/python tools/measure_model.py          # shape only (a second)
    .venv/bin/python tools/measure_model.py --api    # also run the API test, counting calls

- kernel objects claimed by more than one model function without a version tag;
- import cycles among model modules (the same graph tests/test_layers.py checks);
- the three largest modules, in lines;
- with ``--api``: how many exported callables tests/test_api.py enumerates and
  how many calls it makes with bad arguments.
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_test(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def untagged_duplicates():
    from kvmmu.xref import kernel_xref
    claims = defaultdict(list)
    for e in kernel_xref():
        if "(" not in e.kernel_name.split("()", 1)[-1]:
            claims[(e.kernel_file, e.kernel_name)].append(e.model)
    return {k: v for k, v in claims.items() if len(v) > 1}


def largest_modules(n=3):
    sizes = [(len(p.read_text().splitlines()), str(p.relative_to(ROOT)))
             for p in (ROOT / "kvmmu").rglob("*.py")]
    return sorted(sizes, reverse=True)[:n]


def api_counts():
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "calls"
        env = {**os.environ, "KVMMU_API_CALLS": str(log)}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-n", "0", "tests/test_api.py"], cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, check=False)
        calls = log.read_text().split() if log.exists() else []
    api = _load_test("test_api")
    return len(api.CALLABLES), len(calls)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", action="store_true", help="also run the API test")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    layers = _load_test("test_layers")
    dups = untagged_duplicates()
    cycles = layers._cycles(layers._graph())
    print(f"untagged duplicated kernel objects: {len(dups)}")
    for (f, name), models in sorted(dups.items()):
        print(f"  {f}: {name}: {', '.join(models)}")
    print(f"import cycles among model modules: {len(cycles)}")
    for c in cycles:
        print("  " + " <-> ".join(c))
    print("largest modules: " + ", ".join(f"{p} {n}" for n, p in largest_modules()))
    if args.api:
        callables, calls = api_counts()
        print(f"API test: {callables} exported callables, {calls} calls with bad arguments")


if __name__ == "__main__":
    main()
