"""Real `flwr run` simulations (SuperLink + Ray) against a private SuperLink.

The SuperLink has its own FLWR_HOME and free ports, so these tests neither use nor
disturb a developer's local SuperLink; it is stopped by PID at the end.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from sfdd_flwr.runs.artifacts import load_synthetic_set
from sfdd_lab.launch import LocalSuperLink

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    """A private simulation SuperLink the module's runs share (starting one takes seconds),
    stopped by PID at the end (also on failure)."""
    home = tmp_path_factory.mktemp("superlink")
    with LocalSuperLink(home, {"XDG_CACHE_HOME": str(home / "cache")}) as link:
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
        assert "SUMMARY gradient-matching mnist IPC 1 (federated): 2 rounds" in log, log
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


def test_the_diffusion_generator_runs_in_a_simulation(superlink, tiny_mnist_dir, tmp_path):
    """The second synthesizer through a real `flwr run`: FedAvg of the UNet's weights,
    its checkpoint, the sampled set and its evaluation, with DP-SGD's ε per round."""
    out = tmp_path / "out"
    result = superlink.run(
        f"preset='diffusion-smoke' data-dir='{tiny_mnist_dir}' output-dir='{out}' run-name='generator' "
        "dp-noise-multiplier=1.0",
        num_supernodes=2, timeout_seconds=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "SUMMARY diffusion mnist 2 samples per class (federated): 2 rounds" in log, log
    assert "round 2/2 | denoising loss" in log and "| ε " in log, log
    run_dir = out / "generator"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2] and all(m["clients_ok"] == 2 for m in metrics)
    assert 0 < metrics[0]["dp_epsilon"] < metrics[1]["dp_epsilon"] and 0.0 <= metrics[1]["accuracy_mean"] <= 1.0
    assert metrics[0]["bytes_received"] == metrics[0]["bytes_sent"] > 100_000  # the weights both ways
    assert torch.load(run_dir / "generator.pt", weights_only=True)["metadata"]["round"] == 2
    samples = torch.load(run_dir / "synthetic_set_round_0002.pt", weights_only=True)
    assert samples["images"].shape == (20, 1, 28, 28) and (run_dir / "grid_round_0002.png").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["last_round"]["dp_epsilon"] == metrics[1]["dp_epsilon"]


def test_invalid_setting_stops_the_run_before_training(superlink, tiny_mnist_dir, tmp_path):
    result = superlink.run(
        f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{tmp_path}' ipc=0", num_supernodes=2, timeout_seconds=300
    )
    log = result.stdout + result.stderr
    assert "ipc=0 is not allowed: must be a number >= 1" in log, log
    assert "round 1/" not in log


def test_a_killed_run_resumes_at_the_next_round(tiny_mnist_dir, tmp_path):
    """SIGKILL the whole SuperLink process group mid-run, then resume on a new SuperLink."""
    out = tmp_path / "out"
    run_dir = out / "crash"
    config = (
        f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{out}' run-name='crash' "
        "num-server-rounds=12 eval-every=0"
    )
    superlink = LocalSuperLink(tmp_path / "first", {"XDG_CACHE_HOME": str(tmp_path / "cache")}).start()
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
        superlink.stop()
    time.sleep(2)  # nothing may write after the kill: the checkpoint must stay put
    saved_round = load_synthetic_set(run_dir).round
    assert 3 <= saved_round < 12, "the run finished before it could be killed"

    with LocalSuperLink(tmp_path / "second", {"XDG_CACHE_HOME": str(tmp_path / "cache")}) as second:
        result = second.run(config + f" resume-from='{run_dir}'", num_supernodes=2, timeout_seconds=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert f"continuing with round {saved_round + 1}/12" in log, log
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, 13))
    assert load_synthetic_set(run_dir).round == 12


VECTOR_METHOD = """
from dataclasses import dataclass

import torch

from sfdd_flwr.data.datasets import LabelledImages
from sfdd_flwr.methods import LocalResult, SynthesisMethod, class_labels
from sfdd_flwr.settings.schema import SettingsGroup, at_least, setting


@dataclass(frozen=True)
class VectorSettings(SettingsGroup):
    title = "Vector method"
    vector_length: int = setting(4, at_least(1), "length of the shared vector")


class VectorMethod(SynthesisMethod):
    \"\"\"Ships a vector; a client moves it halfway to its data's mean pixel value.\"\"\"

    name = "vector"
    settings_group = VectorSettings
    round_metrics = {"vector-shift": "mean"}
    checkpoint_file = "vector.pt"

    def initial_state(self):
        return {"vector": torch.zeros(self.settings.vector_length)}

    def local_update(self, job):
        vector = job.state["vector"]
        moved = vector + 0.5 * (job.data.images.mean().cpu() - vector)
        return LocalResult({"vector": moved}, {"vector-shift": float((moved - vector).abs().mean())})

    def labelled_set(self, state, server_round, device, report=None):
        spec = self.settings.dataset_spec
        level = state["vector"].mean() + torch.arange(spec.num_classes, dtype=torch.float32)
        images = level.view(-1, 1, 1, 1).expand(spec.num_classes, spec.channels, *spec.image_size)
        return LabelledImages(images.contiguous(), class_labels(spec.num_classes, 1))
"""

RETURNS_THE_INPUT = """
from sfdd_flwr.behaviours.base import ClientBehaviour


class ReturnsTheInput(ClientBehaviour):
    def local_update(self, job, method):
        result = super().local_update(job, method)
        result.state = {key: value.clone() for key, value in job.state.items()}
        result.metrics["returned-the-input"] = 1.0
        return result
"""


def test_a_method_and_a_behaviour_written_outside_the_package_run_in_a_simulation(tiny_mnist_dir, tmp_path):
    """Plug-ins in a user's modules (not in sfdd_flwr), named in the run config: a toy
    method that ships a vector (strategy, recorder, artifacts and ClientApp unchanged), and
    a behaviour for the simulated client marked malicious (the reply bounds are off: they
    would reject its reply, far from the others')."""
    from sfdd_flwr.data.datasets import PartitionRequest, load_partition

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "vector_method.py").write_text(VECTOR_METHOD)
    (plugins / "my_behaviours.py").write_text(RETURNS_THE_INPUT)
    out = tmp_path / "out"
    with LocalSuperLink(tmp_path, {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(plugins)}) as link:
        result = link.run(
            f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{out}' run-name='plugin' min-clients=3 "
            "method='vector_method:VectorMethod' malicious-clients='1' max-update-ratio=0 "
            "malicious-behaviour='my_behaviours:ReturnsTheInput'",
            num_supernodes=3, timeout_seconds=300,
        )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "method vector, behaviour my_behaviours:ReturnsTheInput" in log, log
    assert "SUMMARY vector mnist IPC 1 (federated): 2 rounds" in log, log
    run_dir = out / "plugin"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2] and all(m["clients_ok"] == 3 for m in metrics)
    assert sorted(c.get("returned_the_input", 0.0) for c in metrics[0]["clients"]) == [0.0, 0.0, 1.0]
    assert metrics[0]["vector_shift"] > 0 and 0.0 <= metrics[-1]["accuracy_mean"] <= 1.0
    # Round 1 is FedAvg of each partition's move halfway from 0 to its mean; the malicious
    # partition 1 returned the zeros it received.
    parts = [load_partition(PartitionRequest("mnist", str(tiny_mnist_dir), p, 3)) for p in range(3)]
    sizes = [len(part) for part in parts]
    moves = [0.5 * float(part.images.mean()) if p != 1 else 0.0 for p, part in enumerate(parts)]
    expected = sum(n * m for n, m in zip(sizes, moves)) / sum(sizes)
    checkpoint = torch.load(run_dir / "vector.pt", weights_only=True)
    assert checkpoint["metadata"]["round"] == 2 and checkpoint["metadata"]["method"] == "vector"
    first = torch.load(run_dir / "synthetic_set_round_0001.pt", weights_only=True)
    assert first["images"].shape == (10, 1, 28, 28) and first["labels"].tolist() == list(range(10))
    assert float(first["images"][0].mean()) == pytest.approx(expected, abs=1e-5)
    assert (run_dir / "grid_round_0002.png").is_file() and not (run_dir / "synthetic_set.pt").exists()
