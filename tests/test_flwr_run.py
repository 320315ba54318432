"""A real `flwr run` simulation (SuperLink + Ray), twice with the same seed.

The test starts its own SuperLink on free loopback ports with its own FLWR_HOME, so it
neither uses nor disturbs a developer's local SuperLink, and stops it by PID at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def flower_command(name: str) -> str:
    """A Flower CLI entry point of this interpreter's environment (venv need not be active)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: pip install -e '.[dev]'")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def superlink(tmp_path):
    """A simulation SuperLink; yields the environment for `flwr`; killed by PID afterwards."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    http_port, control_port, fleet_port = free_port(), free_port(), free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "test"\n\n'
        f'[superlink.test]\naddress = "127.0.0.1:{http_port}"\ninsecure = true\n'
    )
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }
    log = (tmp_path / "superlink.log").open("w")
    process = subprocess.Popen(
        [
            flower_command("flower-superlink"), "--insecure", "--simulation",
            "--host", "127.0.0.1", "--port", str(http_port),
            "--control-api-address", f"127.0.0.1:{control_port}",
            "--fleet-api-address", f"127.0.0.1:{fleet_port}",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("SuperLink did not start:\n" + (tmp_path / "superlink.log").read_text())
                time.sleep(0.5)
        yield env
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def flwr_run(env: dict, run_config: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [flower_command("flwr"), "run", str(ROOT), "--stream",
         "--federation-config", "num-supernodes=2", "--run-config", run_config],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_flwr_run_simulation_writes_artifacts_and_is_reproducible(superlink, tiny_mnist_dir, tmp_path):
    out = tmp_path / "out"
    runs = {}
    for name in ("first", "second"):
        result = flwr_run(
            superlink,
            f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{out}' run-name='{name}' seed=7",
        )
        log = result.stdout + result.stderr
        assert result.returncode == 0, log
        assert "SUMMARY sfdd mnist IPC 1: 2 rounds" in log, log
        assert "round 2/2 | matching loss" in log, log
        run_dir = out / name
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [m["round"] for m in metrics] == [1, 2]
        assert all(m["clients_ok"] == 2 and m["clients_failed"] == 0 for m in metrics)
        assert (run_dir / "grid_round_0002.png").is_file()
        assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 2
        runs[name] = (torch.load(run_dir / "synthetic_set.pt", weights_only=True), metrics)

    (first_set, first_metrics), (second_set, second_metrics) = runs["first"], runs["second"]
    assert torch.equal(first_set["images"], second_set["images"])
    assert [m["accuracies"] for m in first_metrics] == [m["accuracies"] for m in second_metrics]


def test_invalid_setting_stops_the_run_before_training(superlink, tiny_mnist_dir, tmp_path):
    result = flwr_run(superlink, f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{tmp_path}' ipc=0")
    log = result.stdout + result.stderr
    assert "ipc=0 is not allowed: must be a number >= 1" in log, log
    assert "round 1/" not in log
