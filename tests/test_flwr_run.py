"""Real `flwr run` simulations (SuperLink + Ray) against a private SuperLink.

The SuperLink has its own FLWR_HOME and free ports, so these tests neither use nor
disturb a developer's local SuperLink; it is stopped by PID at the end.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from sfdd_flwr.artifacts import load_synthetic_set
from sfdd_flwr.launch import LocalSuperLink

pytestmark = pytest.mark.slow


@pytest.fixture
def superlink(tmp_path):
    """A private simulation SuperLink, stopped by PID at the end (also on failure)."""
    link = LocalSuperLink(tmp_path, {"XDG_CACHE_HOME": str(tmp_path / "cache")})
    with link:
        yield link


def test_flwr_run_simulation_writes_artifacts_and_is_reproducible(superlink, tiny_mnist_dir, tmp_path):
    out = tmp_path / "out"
    runs = {}
    for name in ("first", "second"):
        result = superlink.run(
            f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{out}' run-name='{name}' seed=7",
            num_supernodes=2,
            timeout_seconds=300,
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
    result = superlink.run(
        f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{tmp_path}' ipc=0", num_supernodes=2, timeout_seconds=300
    )
    log = result.stdout + result.stderr
    assert "ipc=0 is not allowed: must be a number >= 1" in log, log
    assert "round 1/" not in log


def test_a_killed_run_resumes_at_the_next_round(superlink, tiny_mnist_dir, tmp_path):
    """SIGKILL the whole SuperLink process group mid-run, then resume on a new SuperLink."""
    out = tmp_path / "out"
    run_dir = out / "crash"
    config = (
        f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{out}' run-name='crash' "
        "num-server-rounds=40 eval-every=0"
    )
    client = superlink.submit(config, num_supernodes=2, log_path=tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "metrics.jsonl").is_file() or len(
            (run_dir / "metrics.jsonl").read_text().splitlines()
        ) < 3:
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            assert client.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.1)
        superlink.kill()
    finally:
        client.kill()
        client.wait()
    time.sleep(2)  # nothing may write after the kill: the checkpoint must stay put
    saved_round = load_synthetic_set(run_dir).round
    assert 3 <= saved_round < 40, "the run finished before it could be killed"

    with LocalSuperLink(tmp_path / "second", {"XDG_CACHE_HOME": str(tmp_path / "cache")}) as second:
        result = second.run(config + f" resume-from='{run_dir}'", num_supernodes=2, timeout_seconds=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert f"continuing with round {saved_round + 1}/40" in log, log
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, 41))
    assert load_synthetic_set(run_dir).round == 40


def test_a_behaviour_written_outside_the_package_runs_in_a_simulation(tiny_mnist_dir, tmp_path):
    """A user's behaviour module (not in sfdd_flwr) is named in the run config and loaded
    by the simulated client that is marked malicious."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_behaviours.py").write_text(
        "from sfdd_flwr.behaviours import ClientBehaviour\n\n"
        "class ReturnsTheInput(ClientBehaviour):\n"
        "    def local_update(self, job):\n"
        "        result = super().local_update(job)\n"
        "        result.update.images = job.synthetic_images.clone()\n"
        "        result.metrics['returned-the-input'] = 1.0\n"
        "        return result\n"
    )
    out = tmp_path / "out"
    with LocalSuperLink(tmp_path, {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(plugins)}) as link:
        result = link.run(
            f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{out}' run-name='plugin' num-server-rounds=1 "
            "malicious-clients='1' malicious-behaviour='my_behaviours:ReturnsTheInput'",
            num_supernodes=2, timeout_seconds=300,
        )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "behaviour my_behaviours:ReturnsTheInput" in log, log
    clients = json.loads((out / "plugin" / "metrics.jsonl").read_text().splitlines()[0])["clients"]
    assert sorted(c.get("returned_the_input", 0.0) for c in clients) == [0.0, 1.0]
