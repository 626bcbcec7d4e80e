"""Seeded problem generators: ``problem(seed)`` in one module per topic.

:data:`CHAPTER` says which module is which chapter's, for the command line
(``kvmmu problem 3``) and the tests (a test checks it against the notebooks).
"""
#: Chapter number -> the module (``kvmmu.exercises.<topic>``) whose problem(seed) it prints.
CHAPTER = {1: "spte", 2: "host_level", 3: "tdp_mmu", 4: "guest_memfd", 5: "walker", 6: "prefault"}

__all__ = ["CHAPTER"]
