"""Show the package's real source in the book.

A chapter calls ``show_source(make_spte)``; the cell's output is the code that
runs, highlighted.  Its plain-text form is the exact source, so nbval fails the
moment the shown code and the package drift apart.  No line numbers are shown:
they would change when unrelated code above moves, and the comparison must
fail only when the shown code itself changes.
"""
import inspect
from pathlib import Path

__all__ = [
    "SourceView", "show_source",
]

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class SourceView:
    """The source of one or more functions, classes or constants' modules."""

    def __init__(self, objs):
        self.parts = []
        for obj in objs:
            target = inspect.unwrap(obj)
            try:
                code = inspect.getsource(target)
                path = Path(inspect.getsourcefile(target)).resolve()
            except (TypeError, OSError) as exc:
                raise TypeError(
                    f"show_source needs a function, class or module of kvmmu; got {obj!r}"
                ) from exc
            try:
                rel = path.relative_to(_PACKAGE_ROOT).as_posix()
            except ValueError:
                rel = path.name
            self.parts.append((rel, inspect.cleandoc("\n" + code) if code.startswith(" ") else code.rstrip("\n")))

    def __repr__(self) -> str:
        return "\n\n".join(f"# {rel}\n{code}" for rel, code in self.parts)

    def _repr_html_(self) -> str:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        fmt = HtmlFormatter(noclasses=True, style="default", nobackground=True)
        blocks = []
        for rel, code in self.parts:
            body = highlight(code, PythonLexer(), fmt)
            blocks.append(
                f'<div class="kvmmu-source"><div class="kvmmu-source-path" '
                f'style="font-family:monospace;font-size:85%;color:#555">{rel}</div>{body}</div>'
            )
        return "\n".join(blocks)


def show_source(*objs) -> SourceView:
    """Return a view of the real source of ``objs`` for a notebook cell."""
    if not objs:
        raise TypeError("show_source needs at least one function, class or module")
    return SourceView(objs)
