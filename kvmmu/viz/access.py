"""Chapter 7's views: one guest access stepped through the layers, and its path as a figure.

- :func:`access_view` is the pure function: the recorded access
  (:func:`kvmmu.scenarios.access.run_access`) for a backing and a prefault
  choice, at one step: the layer, the kernel function, the step's label,
  what it changed, and what has been installed so far.  It never raises;
  :meth:`AccessView.html` is what the widget shows.
- :func:`access_stepper_widget` is a Python-Tutor-style scrubber over it
  (previous / next / a slider), with no matplotlib: it runs live in the page.
- :func:`access_path_figure` draws the path: one lane per layer, one tick
  per step, the EPT violations as bands.
"""
from __future__ import annotations

import functools
import html
from typing import NamedTuple

from ..checks import check_choice
from ..scenarios.access import BACKINGS, DATA_GPA, LAYERS, TABLE_GFNS, access_vm
from ..scenarios.access import _AccessRun  # the type run_access() returns
from ..scenarios.access import run_access

__all__ = ["PREFAULTS", "recorded_access", "AccessView", "access_view", "access_stepper_widget",
           "access_path_figure"]

_TABLES_GPA = TABLE_GFNS[0] << 12
#: What userspace prefaults before the guest runs, by name: (gpa, size) pairs.
PREFAULTS = {
    "nothing": (),
    "the data page": ((DATA_GPA & ~0xFFF, 0x1000),),
    "tables and data": ((_TABLES_GPA, 0x4000), (DATA_GPA & ~0xFFF, 0x1000)),
}


@functools.lru_cache(maxsize=8)
def recorded_access(backing: str = "4K", prefault: str = "nothing") -> _AccessRun:
    """The guest's load on a fresh VM, recorded once per (backing, prefault)."""
    check_choice("backing", backing, BACKINGS)
    check_choice("prefault", prefault, tuple(PREFAULTS))
    return run_access(access_vm(backing, PREFAULTS[prefault]))


class AccessView(NamedTuple):
    """What the stepper shows at one step (``error`` set instead when the input is bad)."""

    backing: str
    prefault: str
    step: int
    last: int
    layer: str
    function: str
    label: str
    changes: tuple
    installed: tuple
    violations_so_far: int
    result: str
    error: str | None = None

    def text(self) -> str:
        """The view as plain text."""
        if self.error:
            return f"error: {self.error}"
        lines = [f"step {self.step}/{self.last}  [{self.layer}] {self.function}",
                 f"  {self.label}"]
        lines += [f"  changed {what}: {text}" for what, text in self.changes]
        lines.append(f"  EPT violations so far: {self.violations_so_far}")
        if self.step == self.last:
            lines.append(f"  KVM_RUN ends: {self.result}")
        return "\n".join(lines)

    def html(self) -> str:
        """The view as HTML: the layers with the current one marked, then the step."""
        if self.error:
            return f'<div class="kvmmu-access-error">{html.escape(self.error)}</div>'
        rows = []
        for name, _mods in LAYERS:
            here = name == self.layer
            style = "background:#ffe08a;font-weight:bold" if here else "color:#777"
            fn = html.escape(self.function) if here else ""
            rows.append(f'<tr style="{style}"><td style="padding:1px 8px">{name}</td>'
                        f'<td style="padding:1px 8px"><code>{fn}</code></td></tr>')
        changed = "".join(f"<li>{html.escape(w)}: {html.escape(t)}</li>"
                          for w, t in self.changes) or "<li>nothing installed</li>"
        so_far = "".join(f"<li>{html.escape(t)}</li>" for t in self.installed) or "<li>-</li>"
        end = (f"<p><b>KVM_RUN ends:</b> {html.escape(self.result)}</p>"
               if self.step == self.last else "")
        return (f'<div class="kvmmu-access-view"><p class="kvmmu-access-where">step '
                f"{self.step}/{self.last}: <b>{html.escape(self.layer)}</b>, "
                f"<code>{html.escape(self.function)}</code></p>"
                f'<table style="border-collapse:collapse">{"".join(rows)}</table>'
                f'<p class="kvmmu-access-label"><code>{html.escape(self.label)}</code></p>'
                f"<p>This step changed:</p><ul>{changed}</ul>"
                f"<p>EPT violations so far: {self.violations_so_far}; "
                f"installed so far:</p><ul>{so_far}</ul>{end}</div>")


def _error(backing, prefault, step, message: str) -> AccessView:
    return AccessView(str(backing)[:20], str(prefault)[:40], -1, -1, "", "", "", (), (), 0, "",
                      message)


def access_view(backing: str = "4K", prefault: str = "nothing", step=0) -> AccessView:
    """The recorded access at ``step`` (an int or its text); never raises."""
    try:
        check_choice("backing", backing, BACKINGS)
        check_choice("prefault", prefault, tuple(PREFAULTS))
        run = recorded_access(backing, prefault)
        last = len(run.steps) - 1
        if isinstance(step, str):
            text = step.strip()
            if not text.lstrip("-").isdigit():
                raise ValueError(f"step must be a whole number 0..{last}, got {step!r}")
            step = int(text)
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int 0..{last}, got {type(step).__name__}")
        if not 0 <= step <= last:
            raise ValueError(f"step must be in 0..{last}, got {step}")
        s = run.steps[step]
        done = run.steps[: step + 1]
        installed = tuple(f"{w}: {t}" for x in done for w, t in x.changes)
        so_far = sum(1 for x in done if "-> EPT violation" in x.label)
        return AccessView(backing, prefault, step, last, s.layer, s.function, s.label,
                          s.changes, installed, so_far, repr(run.result))
    except (TypeError, ValueError) as exc:
        return _error(backing, prefault, step, str(exc))
    except Exception as exc:  # a widget never raises: say what happened instead
        return _error(backing, prefault, step, f"internal error: {type(exc).__name__}: {exc}")


def access_stepper_widget(backing: str = "4K", prefault: str = "nothing"):
    """A stepper over the recorded access: previous/next, a slider, backing and prefault."""
    import ipywidgets as W

    check_choice("backing", backing, BACKINGS)
    check_choice("prefault", prefault, tuple(PREFAULTS))
    last = len(recorded_access(backing, prefault).steps) - 1
    slider = W.IntSlider(value=0, min=0, max=last, description="step",
                         continuous_update=False, layout=W.Layout(width="30em"))
    slider.add_class("kvmmu-access-step")
    back_w = W.Dropdown(options=list(BACKINGS), value=backing, description="host pages")
    back_w.add_class("kvmmu-access-backing")
    pre_w = W.Dropdown(options=list(PREFAULTS), value=prefault, description="prefault")
    pre_w.add_class("kvmmu-access-prefault")
    prev_b, next_b = W.Button(description="◀ previous"), W.Button(description="next ▶")
    prev_b.add_class("kvmmu-access-prev")
    next_b.add_class("kvmmu-access-next")
    out = W.HTML()
    out.add_class("kvmmu-access-out")

    def refresh(*_):
        out.value = access_view(back_w.value, pre_w.value, slider.value).html()

    def rerecord(*_):
        n = len(recorded_access(back_w.value, pre_w.value).steps) - 1
        slider.value = min(slider.value, n)
        slider.max = n
        refresh()

    prev_b.on_click(lambda _b: setattr(slider, "value", max(slider.min, slider.value - 1)))
    next_b.on_click(lambda _b: setattr(slider, "value", min(slider.max, slider.value + 1)))
    slider.observe(refresh, names="value")
    back_w.observe(rerecord, names="value")
    pre_w.observe(rerecord, names="value")
    refresh()
    box = W.VBox([W.HBox([back_w, pre_w]), W.HBox([prev_b, slider, next_b]), out])
    box.add_class("kvmmu-access-widget")
    return box


def access_path_figure(run: _AccessRun):
    """One lane per layer, one tick per step; bands where KVM handles an EPT violation."""
    from .style import column_figure

    if not isinstance(run, _AccessRun):
        raise TypeError(f"run must be an _AccessRun, got {type(run).__name__}")
    names = [name for name, _ in LAYERS]
    lane = {name: len(names) - 1 - i for i, name in enumerate(names)}
    fig = column_figure(3.2)
    ax = fig.add_axes((0.17, 0.22, 0.80, 0.69))
    start = None
    for s in run.steps:
        if "-> EPT violation" in s.label:
            start = s.n
        if start is not None and s.label.startswith("vcpu_enter_guest") and s.n > start:
            ax.axvspan(start + 0.5, s.n - 0.5, color="#f3d9d9", zorder=0)
            start = None
    for s in run.steps:
        ax.plot([s.n, s.n], [lane[s.layer] - 0.3, lane[s.layer] + 0.3], color="#444444",
                linewidth=0.8)
        for what, _text in s.changes:
            y, mark, colour = ((lane["TDP MMU"], "s", "#1f77b4") if what == "EPT"
                               else (lane["TLB"], "o", "#2ca02c"))
            ax.plot([s.n], [y], marker=mark, color=colour, markersize=5, zorder=3)
    ax.set_yticks(range(len(names)), list(reversed(names)))
    ax.set_xlim(-1, len(run.steps))
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("step of KVM_RUN\nshaded: KVM handles an EPT violation;  "
                  "square: a leaf SPTE installed;  dot: a TLB fill")
    ax.set_title(f"One guest load: {len(run.steps)} steps, "
                 f"{run.ept_violations} EPT violations")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig
