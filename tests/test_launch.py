"""The app bundle `flwr run` ships, and the staged copy the local harness runs from."""

from __future__ import annotations

import io
import zipfile

import pytest
from flwr.cli.build import build_fab_from_disk

from sfdd_lab.launch import PROJECT_ROOT, stage_app

# Flower's FAB builder uses a pathspec pattern class that pathspec now deprecates
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


def test_the_staged_app_builds_the_same_bundle_as_the_checkout(tmp_path):
    from_checkout = build_fab_from_disk(PROJECT_ROOT)
    staged = stage_app(tmp_path / "sfdd-flwr")
    assert build_fab_from_disk(staged) == from_checkout
    names = zipfile.ZipFile(io.BytesIO(from_checkout)).namelist()
    assert {"pyproject.toml", "sfdd_flwr/client_app.py", "sfdd_flwr/server_app.py", "conf/quickstart.yaml"} <= set(names)
    assert not [name for name in names if name.startswith(("sfdd_lab/", "benchmarks/", "tests/", "docs/"))], names
    app_modules = {path.relative_to(PROJECT_ROOT).as_posix() for path in (PROJECT_ROOT / "sfdd_flwr").rglob("*.py")}
    assert {name for name in names if name.startswith("sfdd_flwr/")} == app_modules
    assert len(from_checkout) < 1_000_000, "the bundle carries only the app package and its presets"


def test_staging_again_replaces_the_previous_copy(tmp_path):
    staged = stage_app(tmp_path / "sfdd-flwr")
    (staged / "sfdd_flwr" / "stale.py").write_text("")
    assert not (stage_app(staged) / "sfdd_flwr" / "stale.py").exists()
