"""sfdd_lab.full_protocol (rounds without Flower) matches the Flower app."""

import json
import sys
from pathlib import Path

import pytest
import torch

from flower_helpers import InProcessGrid
from sfdd_flwr import client_app
from sfdd_flwr.attacks.doorping.trigger import initial_trigger
from sfdd_flwr.data.datasets import DATASETS
from sfdd_flwr.runs.artifacts import RunDirectory, load_synthetic_set
from sfdd_flwr.seeding import make_generator
from sfdd_flwr.server_app import server_parts
from sfdd_flwr.settings import Settings
from sfdd_lab import full_protocol
from sfdd_lab.experiments import backdoor

pytestmark = pytest.mark.usefixtures("server_identity")

MNIST = DATASETS["mnist"]


def settings_for(data_dir, tmp_path, name, **extra) -> Settings:
    values = {
        "preset": "", "data-dir": str(data_dir), "output-dir": str(tmp_path / "out"), "run-name": name,
        "net-width": 8, "batch-real": 8, "num-server-rounds": 2, "num-eval": 0, "min-clients": 2,
    }
    return Settings.from_mapping(values | extra)


@pytest.mark.parametrize("ipc", [1, 2])
def test_in_process_rounds_give_the_flower_apps_synthetic_set(tiny_mnist_dir, tmp_path, ipc):
    flower_settings = settings_for(tiny_mnist_dir, tmp_path, "flower", ipc=ipc)
    grid = InProcessGrid(
        {101: client_app.app, 102: client_app.app},
        {101: {"partition-id": 0, "num-partitions": 2}, 102: {"partition-id": 1, "num-partitions": 2}},
    )
    strategy, recorder = server_parts(flower_settings, grid, lambda _: None)
    flower_images = strategy.run(grid, recorder)["images"]
    summary = full_protocol.run(settings_for(tiny_mnist_dir, tmp_path, "in-process", ipc=ipc), None, report=lambda _: None)
    assert summary["rounds"] == 2
    in_process = load_synthetic_set(summary["run_dir"]).images
    assert torch.allclose(in_process, flower_images, atol=1e-6, rtol=0)


def test_a_time_budget_stops_early_and_still_evaluates_the_last_set(tiny_mnist_dir, tmp_path):
    settings = settings_for(tiny_mnist_dir, tmp_path, "budget", **{"num-server-rounds": 5, "num-eval": 2, "eval-epochs": 2})
    summary = full_protocol.run(settings, 0.0, report=lambda _: None)
    assert summary["rounds"] == 1 and summary["planned_rounds"] == 5
    assert len(summary["stopped_early_accuracies"]) == 2
    assert 0.0 <= summary["final_accuracy_mean"] <= 1.0
    records = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1]


def flower_run(settings: Settings, clients: int = 2) -> torch.Tensor:
    grid = InProcessGrid(
        {101 + c: client_app.app for c in range(clients)},
        {101 + c: {"partition-id": c, "num-partitions": clients} for c in range(clients)},
    )
    strategy, recorder = server_parts(settings, grid, lambda _: None)
    return strategy.run(grid, recorder)["images"]


def test_a_doorping_client_behaves_as_in_the_flower_app_and_its_trigger_is_scored(tiny_mnist_dir, tmp_path):
    attack = {"seed": 0, "ipc": 2, "malicious-clients": "0", "malicious-behaviour": "doorping", "doorping-trigger-steps": 3,
              "doorping-poison-fraction": 0.05}
    flower_images = flower_run(settings_for(tiny_mnist_dir, tmp_path, "flower", **attack))
    summary = full_protocol.run(
        settings_for(tiny_mnist_dir, tmp_path, "in-process", **attack, **{"num-eval": 1, "eval-epochs": 2}),
        None, report=lambda _: None,
    )
    assert summary["behaviours"] == ["doorping", "honest"]
    assert torch.allclose(load_synthetic_set(summary["run_dir"]).images, flower_images, atol=1e-6, rtol=0)
    assert (Path(summary["run_dir"]) / "attack" / "trigger_client0.pt").is_file()
    assert 0.0 <= summary["final_attack_success_mean"] <= 1.0
    records = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["client0_poisoned-examples"] >= 1 and "client1_poisoned-examples" not in records[-1]
    assert records[-1]["matching_loss"] > 0
    saved = torch.load(Path(summary["run_dir"]) / "attack" / "trigger_client0.pt", weights_only=True)
    flower_saved = torch.load(tmp_path / "out" / "flower" / "attack" / "trigger_client0.pt", weights_only=True)
    assert saved["round"] == flower_saved["round"] == 2
    assert torch.equal(saved["pattern"], flower_saved["pattern"])
    first = initial_trigger(MNIST, 2, 0, make_generator(0, "doorping-trigger", 0))
    assert not torch.equal(saved["pattern"], first.pattern)  # it was optimised and kept


def test_clients_in_their_own_processes_give_the_same_set(tiny_mnist_dir, tmp_path):
    extra = {"ipc": 2, "malicious-clients": "1", "malicious-behaviour": "doorping", "doorping-trigger-steps": 3}
    one_by_one = full_protocol.run(settings_for(tiny_mnist_dir, tmp_path, "sequential", **extra), None, report=lambda _: None)
    parallel = full_protocol.run(
        settings_for(tiny_mnist_dir, tmp_path, "parallel", **extra), None, report=lambda _: None, parallel_clients=True
    )
    assert parallel["behaviours"] == ["honest", "doorping"]
    assert torch.equal(load_synthetic_set(parallel["run_dir"]).images, load_synthetic_set(one_by_one["run_dir"]).images)


def test_a_robust_aggregator_gives_the_flower_strategys_set(tiny_mnist_dir, tmp_path):
    attack = {"ipc": 2, "min-clients": 3, "malicious-clients": "0", "malicious-behaviour": "doorping",
              "doorping-trigger-steps": 3}
    flower_images = flower_run(settings_for(tiny_mnist_dir, tmp_path, "flower", aggregator="median", **attack), clients=3)
    median = full_protocol.run(settings_for(tiny_mnist_dir, tmp_path, "median", aggregator="median", **attack),
                               None, report=lambda _: None)
    fedavg = full_protocol.run(settings_for(tiny_mnist_dir, tmp_path, "fedavg", **attack), None, report=lambda _: None)
    median_images = load_synthetic_set(median["run_dir"]).images
    assert torch.allclose(median_images, flower_images, atol=1e-6, rtol=0)
    assert not torch.allclose(median_images, load_synthetic_set(fedavg["run_dir"]).images, atol=1e-4, rtol=0)


def test_multi_krum_records_whom_it_kept_as_the_flower_strategy_does(tiny_mnist_dir, tmp_path):
    """Krum's selection is in each round's metrics: node ids from the Strategy, partition
    ids in process, the same clients either way."""
    attack = {"ipc": 2, "min-clients": 3, "malicious-clients": "0", "malicious-behaviour": "doorping",
              "doorping-trigger-steps": 3, "aggregator": "multi-krum", "krum-malicious": 0, "multi-krum-select": 2}
    settings = settings_for(tiny_mnist_dir, tmp_path, "flower", **attack)
    grid = InProcessGrid({101 + c: client_app.app for c in range(3)},
                         {101 + c: {"partition-id": c, "num-partitions": 3} for c in range(3)})
    strategy, recorder = server_parts(settings, grid, lambda _: None)
    flower_images = strategy.run(grid, recorder)["images"]
    summary = full_protocol.run(settings_for(tiny_mnist_dir, tmp_path, "in-process", **attack), None, report=lambda _: None)
    assert torch.allclose(load_synthetic_set(summary["run_dir"]).images, flower_images, atol=1e-6, rtol=0)

    def kept(run_dir):
        return [json.loads(line)["aggregator_kept"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]

    in_process = kept(summary["run_dir"])
    assert len(in_process) == 2 and all(len(clients) == 2 and set(clients) <= {0, 1, 2} for clients in in_process)
    assert kept(recorder.run_dir.path) == [[101 + client for client in clients] for clients in in_process]
    # the Flower rows name nodes, and their clients' partition ids map them back
    for partition in range(3):
        expected = (sum(partition in clients for clients in in_process), 2)
        assert backdoor.malicious_updates_kept(RunDirectory(recorder.run_dir.path).read_metrics(), {partition}) == expected
        assert backdoor.malicious_updates_kept(RunDirectory(summary["run_dir"]).read_metrics(), {partition}) == expected


def test_the_control_leaves_out_every_client_that_is_not_honest():
    assert full_protocol.malicious_clients(["doorping", "honest", "naive-backdoor"]) == {0, 2}
    with pytest.raises(full_protocol.ConfigError, match="needs at least one honest client"):
        full_protocol.malicious_clients(["doorping", "naive-backdoor"])


def test_a_run_without_the_malicious_updates_records_the_honest_clients_as_kept(tiny_mnist_dir, tmp_path):
    attack = {"ipc": 2, "malicious-clients": "0", "malicious-behaviour": "doorping", "doorping-trigger-steps": 3}
    excluded = full_protocol.run(settings_for(tiny_mnist_dir, tmp_path, "excluded", **attack), None,
                                 report=lambda _: None, exclude_malicious_updates=True)
    attacked = full_protocol.run(settings_for(tiny_mnist_dir, tmp_path, "attacked", **attack), None, report=lambda _: None)
    rows = [json.loads(line) for line in (Path(excluded["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [row["aggregator_kept"] for row in rows] == [[1], [1]] and excluded["malicious_updates_excluded"]
    assert (Path(excluded["run_dir"]) / "attack" / "trigger_client0.pt").exists()  # the attacker did run
    excluded_images = load_synthetic_set(excluded["run_dir"]).images
    assert not torch.allclose(excluded_images, load_synthetic_set(attacked["run_dir"]).images, atol=1e-4, rtol=0)


def test_a_robust_aggregator_without_flwr_is_refused_with_the_reason(tiny_mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sfdd_flwr.aggregators.robust", None)  # as on a machine without flwr
    with pytest.raises(full_protocol.ConfigError, match="aggregator='median' needs flwr"):
        full_protocol.run(settings_for(tiny_mnist_dir, tmp_path, "median", aggregator="median"), None, report=lambda _: None)


def test_a_client_process_that_fails_stops_the_run_with_its_error(tiny_mnist_dir, tmp_path):
    settings = settings_for(tiny_mnist_dir, tmp_path, "broken", **{"malicious-clients": "1",
                                                                 "malicious-behaviour": "no_such_module:Nothing"})
    with pytest.raises(full_protocol.ConfigError, match="behaviour='no_such_module:Nothing' cannot be loaded"):
        full_protocol.run(settings, None, report=lambda _: None, parallel_clients=True)
