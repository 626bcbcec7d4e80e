"""Every widget survives every input a user can give it.

Each chapter's widget is a thin shell over a pure view function.  This test
drives every one of those functions, one argument at a time, over the same
battery of hostile inputs a student can type or a notebook can pass:
extremes, empty text, garbage, wrong types.  The function must return a view
(which may carry an error message) and that view must render; it must never
raise.  The chapters' own tests check that the *right* message appears.
"""
import pytest

from kvmmu.viz.guest_memfd import folio_console
from kvmmu.viz.host_level import host_mapping_view
from kvmmu.viz.prefault import prefault_console
from kvmmu.viz.spte import spte_view
from kvmmu.viz.tdp_mmu import race_view
from kvmmu.viz.walker import walk_view

HOSTILE = [
    "", "   ", "0x", "0b", "-1", "-0x1", "1e9", "1.5", "0x" + "f" * 40, "9" * 400,
    "\N{SLIGHTLY SMILING FACE}", "A" * 10_000, "AB" * 500, "\x00", "None",
    None, 0, -1, 2**64, -(2**64), 10**30, 3.5, float("nan"), True, False,
    [], (), {}, ["host map"], ("bogus",), object(),
]

#: The pure function behind each chapter's widget, and the arguments a user controls.
VIEWS = {
    "spte_view (ch1)": (lambda text="0x8600000012345b77", **kw: spte_view(text, **kw),
                        ["text", "mode", "level"]),
    "host_mapping_view (ch2)": (host_mapping_view, ["gfn", "base_gfn", "npages", "userspace_addr",
                                                    "backing", "event", "dirty_logging",
                                                    "shadowed", "exec_nx"]),
    "race_view (ch3)": (race_view, ["fix", "schedule", "position", "actors"]),
    "folio_console (ch4)": (folio_console, ["state", "action", "fix_pending"]),
    "walk_view (ch5)": (walk_view, ["gva_text", "access", "privilege"]),
    "prefault_console (ch6)": (prefault_console, ["offset_text", "size_text", "policy",
                                                   "schedule", "action", "zap"]),
}


def _render(view) -> str:
    # The widget shows html(); notebooks show str()/repr().
    html = view.html() if hasattr(view, "html") else view._repr_html_()
    return str(view) + repr(view) + html


@pytest.mark.parametrize("name", list(VIEWS))
def test_default_view_renders(name):
    fn, _ = VIEWS[name]
    assert _render(fn())


@pytest.mark.parametrize("name", list(VIEWS))
def test_view_survives_hostile_input(name):
    fn, params = VIEWS[name]
    for param in params:
        for value in HOSTILE:
            try:
                view = fn(**{param: value})
                _render(view)
            except Exception as exc:  # the failure message names the input
                pytest.fail(f"{name}({param}={value!r:.60}) raised {type(exc).__name__}: {exc}")
