"""Shared test set-up: record which notebooks nbval collected this session."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COLLECTED_NOTEBOOKS = pytest.StashKey[set]()


def pytest_collection_modifyitems(session, config, items):
    notebooks = set()
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.suffix == ".ipynb":
            notebooks.add(path.relative_to(ROOT).as_posix())
    config.stash[COLLECTED_NOTEBOOKS] = notebooks


@pytest.fixture
def collected_notebooks(request) -> set:
    return request.config.stash.get(COLLECTED_NOTEBOOKS, set())
