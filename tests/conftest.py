"""Shared fixtures: tiny datasets on disk and an isolated cache directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fakedata import write_mnist  # noqa: E402

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's extracted archives out of the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_mnist_dir(tmp_path_factory) -> Path:
    """A 10-class, 28x28 MNIST-format dataset: 30 train and 10 test images per class."""
    return write_mnist(tmp_path_factory.mktemp("tiny-mnist"))


def real_mnist_dir() -> Path | None:
    """The md5-verified MNIST archives of this workplace, if present."""
    return SHARED_DATASETS if (SHARED_DATASETS / "MNIST" / "raw").is_dir() else None


@pytest.fixture
def server_identity():
    """The task identity a ServerApp process has, so tests can build instruction Messages."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
