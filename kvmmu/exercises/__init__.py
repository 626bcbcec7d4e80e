"""Seeded problem generators: ``problem(seed)`` in one module per topic."""
