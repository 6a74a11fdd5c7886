"""Shared fixtures and markers; the data makers and runners they use live in tests/helpers.py."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Re-exported: test files import these from tests.conftest as well as from tests.helpers.
from tests.helpers import (BIN, COLOURS, QUICK, MONGODB_URI_VARIABLE, Result, TextDataset,  # noqa: F401
                           image_bytes, make_folder_dataset, make_text_dataset, run, run_in_process, user_home)

# One CPU thread per test process and per training it starts (unless the caller set it): the
# models here are tiny, and many tests run several processes at once (DDP ranks, a controller
# and its trainings), which oversubscribe the cores when each one starts a thread per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Test files whose every test drives a real browser.
_BROWSER_FILES = {"test_viewer_browser.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks what needs an outside program: `browser` for the real-browser tests, `mongodb` for
    every test skipped without a real MongoDB server (also those of the importable conformance
    suites in mitorch.testing), so `-m "not slow and not browser and not mongodb"` is the part
    that runs anywhere, fast."""
    for item in items:
        if item.path.name in _BROWSER_FILES:
            item.add_marker(pytest.mark.browser)
        if any(MONGODB_URI_VARIABLE in str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.mongodb)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The built-in dataset is generated once per test session, never into the user's cache.
    os.environ["MITORCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A user's own database and credentials, in-process and for subprocesses."""
    return user_home(tmp_path, monkeypatch)


@pytest.fixture
def text_dataset(tmp_path: Path) -> TextDataset:
    return make_text_dataset(tmp_path / "data")


@pytest.fixture
def store(tmp_path: Path) -> Iterator:
    """An embedded store at tmp_path/db.sqlite (where a subprocess's MITORCH_DB_URI can name it);
    a test file with a store of its own defines its own `store`."""
    from mitorch.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "db.sqlite")
    yield store
    store.close()
