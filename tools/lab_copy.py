"""The copy of book/ that JupyterLab serves to a class (``make lab``).

The chapters are written for the Sphinx book.  JupyterLab, with
jupyterlab-myst, renders their MyST one notebook at a time and without the
book's glossary and bibliography, and Run All shows every solution cell's
output again.  The copy changes only what needs a book to render:

- each solution's hidden code cell moves into its ``{solution}`` dropdown, as
  the code and the output the book stores (nbval checks it), so a solution
  shows only when clicked, and Run All has nothing to reveal;
- ``{cite}`key``` becomes a link to a references cell appended to the notebook;
- a glossary cell with the terms the notebook uses is appended, in mystmd's
  definition-list syntax (the book's Sphinx glossary indents instead), so
  every ``{term}`` resolves and shows its definition on hover;
- ``{ref}`` to a label in another notebook becomes a link to that notebook;
- the notebook metadata JupyterLab would otherwise add on opening (``collapsed``
  beside ``outputs_hidden``, the kernel's ``language_info``) is there already,
  so opening a chapter does not mark it modified.

Refreshing keeps a file a student changed (a manifest holds the hash of what
was written) and replaces the others.
"""
import hashlib
import json
import platform
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
MANIFEST = ".kvmmu-lab-copy.json"

_FENCE = re.compile(r"^(`{3,}|:{3,})\{solution\}")
_ROLE = re.compile(r"\{(cite|term|ref)\}`([^`]+)`")


# --------------------------------------------------------------------------
# The book's glossary and bibliography
# --------------------------------------------------------------------------
def glossary_entries(text: str) -> dict:
    """{term: definition lines} from the ``{glossary}`` block of book/glossary.md."""
    block = re.search(r"^```\{glossary\}\n(.*?)^```", text, re.M | re.S).group(1)
    entries, term = {}, None
    for line in block.splitlines():
        if line and not line[0].isspace():
            term = line.strip()
            entries[term] = []
        elif term is not None:
            entries[term].append(line)
    return {t: "\n".join(lines).rstrip() for t, lines in entries.items()}


def _role_target(text: str) -> str:
    """``text <target>`` names its target; a bare role text is its own target."""
    m = re.fullmatch(r"(.*?)\s*<(.+)>", text, re.S)
    return m.group(2) if m else text


def _role_text(text: str) -> str:
    m = re.fullmatch(r"(.*?)\s*<(.+)>", text, re.S)
    return m.group(1) if m else text


def bibliography() -> dict:
    """{key: (short citation, full reference)} from book/references.bib, as plain text."""
    from pybtex.database import parse_file

    out = {}
    for key, entry in parse_file(str(BOOK / "references.bib")).entries.items():
        people = entry.persons.get("author", [])
        last = [" ".join(p.last_names) for p in people]
        last = [_plain_tex(n) for n in last]
        names = last[0] if len(last) == 1 else f"{last[0]} and {last[1]}" if len(last) == 2 \
            else f"{last[0]} et al."
        year = entry.fields.get("year", "")
        fields = [entry.fields.get(f, "") for f in ("title", "howpublished", "note", "url")]
        authors = _plain_tex(" and ".join(str(p) for p in people))
        full = f"{authors} ({year}). " + ". ".join(_plain_tex(f) for f in fields if f) + "."
        out[key] = (f"{names} {year}".strip(), full)
    return out


def _plain_tex(text: str) -> str:
    return re.sub(r"\\([_&%$#])", r"\1", text).replace("{", "").replace("}", "")


def book_labels() -> dict:
    """{label: (notebook file, the heading after it)} for every ``(label)=`` in book/."""
    labels = {}
    for path in sorted(BOOK.glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "markdown":
                continue
            for m in re.finditer(r"^\(([^)]+)\)=\n#+ (.+)$", cell.source, re.M):
                labels[m.group(1)] = (path.name, m.group(2).strip())
    return labels


# --------------------------------------------------------------------------
# One notebook
# --------------------------------------------------------------------------
def _outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out and "text/plain" in out.data:
            parts.append(out.data["text/plain"] + "\n")
    return "".join(parts).rstrip("\n")


def _is_hidden_code(cell) -> bool:
    return cell.cell_type == "code" and "hide-input" in cell.metadata.get("tags", [])


def fold_solution_cells(cells: list) -> list:
    """Move each hidden code cell after a ``{solution}`` into that dropdown (code, then output)."""
    kept = []
    for cell in cells:
        host = kept[-1] if kept else None
        if _is_hidden_code(cell) and host is not None and host.cell_type == "markdown" \
                and any(_FENCE.match(line) for line in host.source.splitlines()):
            host.source = _append_to_last_solution(host.source, cell.source, _outputs_text(cell))
            continue
        kept.append(cell)
    return kept


def _append_to_last_solution(markdown: str, code: str, output: str) -> str:
    lines = markdown.split("\n")
    start = max(i for i, line in enumerate(lines) if _FENCE.match(line))
    fence = _FENCE.match(lines[start]).group(1)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == fence)
    # The outer fence must be longer than the ``` fences put inside it.
    outer = fence[0] * max(len(fence), 4)
    inner = ["", "```python", code.rstrip("\n"), "```"]
    if output:
        inner += ["", "```text", output, "```"]
    lines[start] = outer + lines[start][len(fence):]
    return "\n".join(lines[:end] + inner + [outer] + lines[end + 1:])


def rewrite_roles(text: str, here: str, bib: dict, labels: dict, cited: list, terms: set) -> str:
    """Replace the roles JupyterLab cannot resolve alone; record what the notebook cites and uses."""
    def replace(m):
        role, body = m.group(1), m.group(2)
        if role == "term":
            terms.add(_role_target(body))
            return m.group(0)
        if role == "cite":
            keys = [k.strip() for k in body.split(",")]
            cited.extend(k for k in keys if k not in cited)
            return "; ".join(f"[{bib[k][0]}](#cite-{k})" if k in bib else k for k in keys)
        target = _role_target(body)
        where = labels.get(target)
        if where is None or where[0] == here:
            return m.group(0)
        text_shown = _role_text(body) if "<" in body else where[1]
        return f"[{text_shown}]({where[0]})"
    return _ROLE.sub(replace, text)


def _with_used_terms(terms: set, glossary: dict) -> list:
    """The glossary terms a notebook uses, and those their definitions use, in glossary order."""
    lower = {t.lower(): t for t in glossary}
    todo = [lower[t.lower()] for t in terms if t.lower() in lower]
    used = set()
    while todo:
        term = todo.pop()
        if term in used:
            continue
        used.add(term)
        for m in _ROLE.finditer(glossary[term]):
            if m.group(1) == "term" and _role_target(m.group(2)).lower() in lower:
                todo.append(lower[_role_target(m.group(2)).lower()])
    return [t for t in glossary if t in used]


def _definition(term: str, text: str) -> str:
    """One glossary entry as a MyST definition list item (mystmd's glossary syntax)."""
    lines = [line.strip() for line in text.splitlines()]
    return f"{term}\n: " + "\n  ".join(lines) + "\n"


def lab_notebook(path: Path, bib: dict, labels: dict, glossary: dict) -> nbformat.NotebookNode:
    """The JupyterLab version of one book notebook."""
    nb = nbformat.read(path, as_version=4)
    nb.cells = fold_solution_cells(nb.cells)
    cited, terms = [], set()
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = rewrite_roles(cell.source, path.name, bib, labels, cited, terms)
        jupyter = cell.metadata.get("jupyter", {})
        if cell.cell_type == "code" and jupyter.get("outputs_hidden"):
            cell.metadata["collapsed"] = True
    md = nbformat.v4.new_markdown_cell
    if cited:
        refs = "\n\n".join(f"(cite-{k})=\n{bib[k][1]}" for k in cited if k in bib)
        nb.cells.append(md("## References cited here\n\nThe book's bibliography has them all.\n\n" + refs,
                           id="kvmmu-lab-references"))
    used = _with_used_terms(terms, glossary)
    if used:
        body = "\n".join(_definition(t, glossary[t]) for t in used)
        nb.cells.append(md("## Terms used here\n\nFrom the book's glossary.\n\n"
                           "```{glossary}\n" + body + "```", id="kvmmu-lab-glossary"))
    nb.metadata["language_info"] = _language_info()
    return nb


def _language_info() -> dict:
    """What ipykernel reports on connecting, so JupyterLab finds nothing to add."""
    return {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
            "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
            "pygments_lexer": "ipython3", "version": platform.python_version()}


# --------------------------------------------------------------------------
# The whole copy
# --------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def render_files() -> dict:
    """{relative path: bytes} of the whole copy."""
    bib, labels = bibliography(), book_labels()
    glossary = glossary_entries((BOOK / "glossary.md").read_text())
    files = {}
    for path in sorted(BOOK.iterdir()):
        if path.is_dir():
            continue
        if path.suffix == ".ipynb":
            files[path.name] = nbformat.writes(lab_notebook(path, bib, labels, glossary)).encode() + b"\n"
        else:
            files[path.name] = path.read_bytes()
    return files


def refresh(out: Path) -> list:
    """Write the copy into ``out``; keep files changed since the last refresh. Return those kept."""
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    written = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    kept = []
    for name, data in render_files().items():
        target = out / name
        current = target.read_bytes() if target.exists() else None
        if current is not None and _digest(current) != written.get(name):
            kept.append(name)       # a student's work (or a file this tool did not write)
            continue
        if current != data:         # an unchanged file keeps its time stamp
            target.write_bytes(data)
        written[name] = _digest(data)
    manifest_path.write_text(json.dumps(written, indent=1, sort_keys=True) + "\n")
    for name in kept:
        print(f"kept {out / name}: it changed since the last refresh (delete it to get the book's version)",
              file=sys.stderr)
    return kept
