"""Every race scenario of the book, by name: one module per chapter's mechanism.

Each module here builds the explorer scenarios (:mod:`kvmmu.explorer`) of
one chapter on the one VM model (:class:`kvmmu.kvm_host.Kvm`) and lists them
in a module-level ``SCENARIOS``: a dict from a short name (``"zap-vs-fault"``)
to a :class:`ScenarioEntry`.  The book, the tests and the command line
(``kvmmu scenarios``) all find scenarios here, by name, so that a race is
defined once.

The scenario modules hold no kernel function: the kernel code the actors run
is in the model's modules; a scenario adds the cast (the actors), the world
they start from, and the checks.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

__all__ = ["ScenarioEntry", "scenario_modules", "all_scenarios", "scenario"]


@dataclass(frozen=True)
class ScenarioEntry:
    """One named scenario: how to build it, which chapter shows it, what it shows."""

    build: Callable          # (**options) -> kvmmu.explorer.Scenario
    chapter: int
    summary: str
    #: what the book expects of an exhaustive check: "holds" or "violated"
    expect: str = "holds"

    def __post_init__(self):
        if not callable(self.build):
            raise TypeError(f"build must be callable, got {type(self.build).__name__}")
        if not isinstance(self.chapter, int) or isinstance(self.chapter, bool) \
                or not 1 <= self.chapter <= 99:
            raise ValueError(f"chapter must be a chapter number in [1, 99], got {self.chapter!r}")
        if not isinstance(self.summary, str) or not self.summary:
            raise TypeError(f"summary must be a non-empty string, got {self.summary!r}")
        if self.expect not in ("holds", "violated"):
            raise ValueError(f"expect must be 'holds' or 'violated', got {self.expect!r}")


def scenario_modules() -> list:
    """The scenario modules, in name order."""
    import kvmmu.scenarios as pkg
    return [importlib.import_module(f"{pkg.__name__}.{info.name}")
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name)
            if not info.name.startswith("_")]


def all_scenarios() -> dict:
    """Every named scenario of the book: name -> :class:`ScenarioEntry`, sorted by chapter, name."""
    entries = {}
    for module in scenario_modules():
        for name, entry in getattr(module, "SCENARIOS", {}).items():
            if name in entries:
                raise ValueError(f"scenario name {name!r} is defined twice "
                                 f"(again in {module.__name__})")
            entries[name] = entry
    return dict(sorted(entries.items(), key=lambda kv: (kv[1].chapter, kv[0])))


def scenario(name: str, **options):
    """Build the scenario called ``name`` (see :func:`all_scenarios`)."""
    entries = all_scenarios()
    if name not in entries:
        raise ValueError(f"no scenario named {name!r}; the scenarios are: {', '.join(entries)}")
    return entries[name].build(**options)
