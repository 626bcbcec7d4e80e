"""Re-execute chapter notebooks top to bottom and store their outputs.

    python tools/execute_notebooks.py            # every notebook in _toc.yml
    python tools/execute_notebooks.py book/ch01_spte_format.ipynb

Each notebook runs in a fresh kernel with ``book/`` as its working directory,
and the widget state is stored in the notebook's metadata so the static HTML
book can show widget snapshots.  This is the only way outputs get into a
notebook: nbval then checks that they are still what the model computes.
"""
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from toc import toc_notebooks  # noqa: E402


# Widget models are named by comm ids, which comm draws from uuid.uuid4().
# Drawing them from a seeded generator instead makes the stored widget state
# the same on every run, so re-executing an unchanged chapter changes nothing
# in git and a real change shows up as a small diff.
_SEEDED_COMM_IDS = (
    "import comm.base_comm as _c, random as _r, uuid as _u; "
    "_g = _r.Random(0); "
    "_c.uuid = type('SeededUUID', (), {'uuid4': staticmethod("
    "lambda: _u.UUID(int=_g.getrandbits(128), version=4))})"
)


def _coalesce_streams(outputs):
    merged = []
    for out in outputs:
        if (out.get("output_type") == "stream" and merged
                and merged[-1].get("output_type") == "stream" and merged[-1]["name"] == out["name"]):
            merged[-1]["text"] += out["text"]
        else:
            merged.append(out)
    return merged


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    env_hash_seed = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = "0"  # no hash-order leaks into outputs
    try:
        NotebookClient(
            nb, timeout=600, kernel_name="python3", store_widget_state=True, record_timing=False,
            resources={"metadata": {"path": str(path.parent)}},
            extra_arguments=[f"--IPKernelApp.exec_lines={_SEEDED_COMM_IDS!r}"],
        ).execute()
    finally:
        if env_hash_seed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = env_hash_seed
    # A print's text can arrive in one stream message or several, depending on
    # timing; store each run of same-stream text as one output so the file
    # does not change when nothing but the timing did.
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = _coalesce_streams(cell.outputs)
    # Kernel metadata from the executing machine is not part of the book.
    nb.metadata.pop("language_info", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or [ROOT / p for p in toc_notebooks()]
    for path in paths:
        seconds = execute(path)
        print(f"executed {path.relative_to(ROOT)} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
