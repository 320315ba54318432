"""Reduced-size runs of the experiment commands (the full runs are documented in benchmarks/)."""

import json
import shutil

import pytest
import torch

from sfdd_flwr.attacks import round_observers
from sfdd_flwr.attacks.doorping.trigger import initial_trigger, mean_trigger
from sfdd_flwr.methods.gradient_matching import GradientMatching
from sfdd_flwr.runs.artifacts import RunDirectory
from sfdd_flwr.runs.recorder import RunRecorder
from sfdd_flwr.settings import Settings
from sfdd_lab.experiments import backdoor, privacy


def recorder_for(settings: Settings) -> RunRecorder:
    """A recorder as the ServerApp makes one, without evaluation."""
    return RunRecorder(settings, GradientMatching(settings), "test", None, lambda _: None,
                       observers=round_observers(settings))

pytestmark = pytest.mark.slow


def test_backdoor_experiment_writes_table_plot_and_results(tiny_mnist_dir, tmp_path):
    out = tmp_path / "backdoor"
    code = backdoor.main([
        "--data-dir", str(tiny_mnist_dir), "--out", str(out), "--datasets", "mnist",
        "--clients", "2", "--robust-clients", "2", "--aggregators", "fedavg",
        "--ipc", "2", "--rounds", "1", "--batch-real", "4", "--inner-loop", "1", "--trigger-steps", "5",
        "--num-eval", "1", "--eval-epochs", "2",
        "--run-config", "net-width=8 doorping-poison-fraction=0.05", "--collude", "--in-process",
    ])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["clients"], r["aggregator"]) for r in rows] == [(2, "fedavg")]
    assert all(0.0 <= r["asr"] <= 1.0 and 0.0 <= r["cta_attacked"] <= 1.0 for r in rows)
    assert 0.0 <= rows[0]["asr_clean"] <= 1.0
    table = (out / "backdoor_table.md").read_text()
    assert "| mnist | 2 | fedavg |" in table
    assert table.count("| all (no selection) |") == 1  # FedAvg selects no updates
    assert (out / "backdoor.png").stat().st_size > 1000
    assert (out / "mnist" / "runs" / "doorping-n2-fedavg" / "attack" / "trigger_client0.pt").is_file()
    config = (out / "mnist" / "runs" / "doorping-n2-fedavg" / "config.yaml").read_text()
    assert "eval-augment: 'off'" in config, "Doorping's evaluation trains without augmentation by default"
    assert "(augmentation off)" in table
    assert "doorping-collude: true" in config and "(doorping, colluding)" in table


def test_privacy_experiment_writes_tables_and_pictures(tiny_mnist_dir, tmp_path):
    out = tmp_path / "privacy"
    code = privacy.main([
        "--data-dir", str(tiny_mnist_dir), "--out", str(out), "--datasets", "mnist",
        "--width", "8", "--updates", "2", "--extra-updates", "1", "--classes-per-update", "1",
        "--batch-sizes", "1", "2", "--attack-iterations", "1", "--local-dp-noises", "0.01", "1.0",
        "--rounds", "1", "--num-eval", "1", "--eval-epochs", "2", "--run-config", "net-width=8 batch-real=4",
        "--in-process",
    ])
    assert code == 0
    results = json.loads((out / "mnist" / "results.json").read_text())
    assert results["accuracy_local_dp"]["model"] == "standard"
    assert all(len(row["replay_loss"]) == 1 for row in results["rows"])
    assert set(results["mse"]) == {"no-defence", "ldpo-rld", "ldpo-rld-adaptive", "no-defence-b2"}
    assert set(results["accuracy"]) == {"none", "ldpo-rld", "local-dp"}
    conditions = {row["condition"] for row in results["rows"]}
    assert {"no-defence-b1", "ldpo-rld-b1", "ldpo-rld-b1-adaptive", "no-defence-b2"} <= conditions
    assert (out / "mnist" / "no-defence-b1.png").is_file()
    assert (out / "mnist" / "no-defence-b1-update.pt").is_file()
    table = (out / "privacy_tables.md").read_text()
    assert "Table 3" in table and "Tables 4 and 5" in table


def test_a_set_copied_from_a_resumed_run_is_scored_without_that_runs_directory(tiny_mnist_dir, tmp_path):
    """A set saved by a resumed run records `resume-from`; scoring a copy of it elsewhere
    (e.g. fetched from a GPU machine) must not need the directory that setting names."""
    base = {
        "preset": "", "data-dir": str(tiny_mnist_dir), "output-dir": str(tmp_path / "out"), "run-name": "run",
        "ipc": 1, "net-width": 8, "num-eval": 1, "eval-epochs": 2, "num-server-rounds": 3, "eval-every": 0,
    }
    first = recorder_for(Settings.from_mapping(base))
    first.end_round(1, first.start(), {})
    resumed = recorder_for(Settings.from_mapping(base | {"resume-from": str(first.run_dir.path)}))
    resumed.end_round(2, resumed.start(), {})
    copied = tmp_path / "copied.pt"
    shutil.copy(resumed.run_dir.path / "synthetic_set.pt", copied)
    shutil.rmtree(first.run_dir.path)
    spec = Settings.from_mapping(base).dataset_spec
    trigger = initial_trigger(spec, 2, 0, torch.Generator().manual_seed(0))
    result = backdoor.score_with_trigger(copied, trigger, str(tiny_mnist_dir))
    assert len(result.accuracies) == 1 and len(result.scores["attack_success"]) == 1
    assert 0.0 <= result.scores["attack_success"][0] <= 1.0


def test_a_folder_of_triggers_is_scored_with_their_mean(tmp_path):
    """Colluding clients' pool (`attack/colluders/round_XXXX/`) stands for their mean trigger."""
    spec = Settings.from_mapping({"preset": ""}).dataset_spec
    trigger = initial_trigger(spec, 2, 0, torch.Generator().manual_seed(0))
    other = initial_trigger(spec, 2, 0, torch.Generator().manual_seed(1))
    kept = tmp_path / "round_0003"
    kept.mkdir()
    for client, each in enumerate((trigger, other)):
        torch.save(each.as_dict() | {"round": 3}, kept / f"trigger_client{client}.pt")
    assert torch.equal(backdoor.load_trigger(kept).pattern, mean_trigger([trigger, other]).pattern)
    assert torch.equal(backdoor.load_trigger(kept / "trigger_client1.pt").pattern, other.pattern)
    with pytest.raises(FileNotFoundError, match="no trigger_client"):
        backdoor.load_trigger(tmp_path)


def test_each_evaluated_round_keeps_the_trigger_it_was_scored_with(tiny_mnist_dir, tmp_path):
    """Backdoor clients overwrite attack/trigger_client<id>.pt every round; the recorder keeps
    a copy at each evaluated round only, so a later round does not change an earlier copy."""
    base = {
        "preset": "", "data-dir": str(tiny_mnist_dir), "output-dir": str(tmp_path / "out"), "run-name": "run",
        "ipc": 1, "net-width": 8, "num-server-rounds": 4, "eval-every": 2,
    }
    recorder = recorder_for(Settings.from_mapping(base))
    images = recorder.start()
    live = recorder.run_dir.path / "attack" / "trigger_client3.pt"
    live.parent.mkdir()
    for round_number in (1, 2, 3):
        torch.save({"round": round_number}, live)
        recorder.end_round(round_number, images, {})
    rounds = sorted(p.name for p in (recorder.run_dir.path / "attack").glob("round_*"))
    assert rounds == ["round_0002"]
    kept = torch.load(recorder.run_dir.path / "attack" / "round_0002" / "trigger_client3.pt", weights_only=True)
    assert kept == {"round": 2}


def test_malicious_updates_kept_counts_rounds_with_an_attacker_among_the_kept():
    def flower_row(round_number, kept, partitions):
        return {"round": round_number, "aggregator_kept": kept,
                "clients": [{"node": node, "partition_id": float(p)} for node, p in partitions.items()]}

    nodes = {11: 0, 12: 1, 13: 2}
    rows = [flower_row(1, [11, 12], nodes), flower_row(2, [12, 13], nodes), flower_row(3, [13], nodes)]
    assert backdoor.malicious_updates_kept(rows, {0}) == (1, 3)
    assert backdoor.malicious_updates_kept(rows, {2}) == (2, 3)
    assert backdoor.malicious_updates_kept(rows, {0, 1}) == (2, 3)
    assert backdoor.malicious_updates_kept(rows, set()) == (0, 3)
    # in-process rows (sfdd_lab.full_protocol) already hold partition ids
    assert backdoor.malicious_updates_kept([{"round": 1, "aggregator_kept": [0, 2]}, {"round": 2, "aggregator_kept": [1]}], {0}) == (1, 2)
    assert backdoor.malicious_updates_kept([{"round": 1, "accuracy_mean": 0.9}], {0}) is None  # FedAvg, median: no selection
    unmapped = [{"round": 1, "aggregator_kept": [11], "clients": [{"node": 11, "partition_id": 0.0}, {"node": 12}]}]
    with pytest.raises(ValueError, match="round 1: a client reported no partition id"):
        backdoor.malicious_updates_kept(unmapped, {0})


def test_the_side_by_side_table_reads_traffic_and_renders_every_row(tiny_mnist_dir, tmp_path):
    from sfdd_lab.experiments import generative_privacy

    run_dir = RunDirectory(tmp_path / "run")
    run_dir.prepare()
    for round_number in (1, 2):
        run_dir.append_metrics({"round": round_number, "bytes_sent": 300, "bytes_received": 300,
                                "clients_ok": 3, "clients_failed": 0})
    assert generative_privacy.traffic(run_dir.path) == (200.0, 1200.0)
    rows = [
        {"dataset": "mnist", "system": "SFDD, IPC 10", "accuracy": 0.9, "accuracy_std": 0.01,
         "bytes_per_client_round": 62720.0, "bytes_total": 6.3e6, "wall_seconds": 600.0, "mia_auc_classifier": 0.51},
        {"dataset": "mnist", "system": "diffusion, DP ε = 10", "accuracy": 0.8, "accuracy_std": 0.02,
         "accuracy_10_per_class": 0.7, "bytes_per_client_round": 2.1e6, "bytes_total": 1.7e8, "wall_seconds": 900.0,
         "mia_auc_classifier": 0.5, "mia_auc_generator": 0.52, "epsilon": 9.97},
    ]
    text = generative_privacy.table(rows)
    assert "| mnist | SFDD, IPC 10 | 90.00 ± 1.00 | - | 0.063 | 6.3 | 10.0 min | 0.510 | - | - |" in text
    assert "| 70.00 |" in text and "| 9.97 |" in text
    assert generative_privacy.plot(rows, tmp_path / "table.png", 1000).stat().st_size > 1000
    assert generative_privacy.null_auc_std(1000, 1000) == pytest.approx(0.0129, abs=1e-4)
    computed = []

    def figures():
        computed.append(1)
        return {"accuracy": 0.5}

    assert generative_privacy.cached(tmp_path / "row.json", figures) == {"accuracy": 0.5}
    assert generative_privacy.cached(tmp_path / "row.json", figures) == {"accuracy": 0.5} and computed == [1]
    names = [row.name for row in generative_privacy.rows_for("cpu")]
    assert names == ["SFDD, IPC 10", "SFDD, IPC 50", "diffusion, no DP", "diffusion, DP ε = 10", "diffusion, DP ε = 1"]


def test_the_upper_bound_is_fedavg_of_classifiers_on_the_real_partitions(tiny_mnist_dir):
    from sfdd_lab.experiments import generative_privacy

    settings = Settings.from_mapping({"preset": "", "data-dir": str(tiny_mnist_dir), "net-width": 8, "min-clients": 5})
    bound = generative_privacy.fedavg_classifier(settings, rounds=2, local_epochs=1, count=20)
    assert 0.0 <= bound["accuracy"] <= 1.0 and 0.0 <= bound["mia_auc_classifier"] <= 1.0
    assert bound["bytes_total"] == bound["bytes_per_client_round"] * 5 * 2 > 0


def test_the_methods_table_stops_centralized_at_the_budget_and_runs_federated_as_many_rounds(tiny_mnist_dir, tmp_path):
    from sfdd_lab.experiments import methods_table

    out = tmp_path / "methods"
    argv = ["--data-dir", str(tiny_mnist_dir), "--out", str(out), "--datasets", "mnist", "--ipcs", "1",
            "--methods", "DM", "--budget-seconds", "0.2",
            "--run-config", "net-width=8 dm-batch-real=4 dm-steps=2 num-server-rounds=500 num-eval=1 eval-epochs=2"]
    assert methods_table.main(argv) == 0
    central, federated = json.loads((out / "methods_table.json").read_text())
    assert (central["mode"], federated["mode"]) == ("centralized", "federated")
    assert 1 <= central["rounds"] < 500 and central["train_seconds"] >= 0.2, "the budget stops the centralized run"
    assert federated["rounds"] == central["rounds"], "the federated run makes as many rounds"
    config = (out / "runs" / "mnist-dm-ipc1-federated" / "config.yaml").read_text()
    assert "method: distribution-matching" in config and "eval-augment: dsa" in config and "min-clients: 5" in config
    assert "| mnist | 1 | DM |" in (out / "methods_table.md").read_text()
    stamp = (out / "runs" / "mnist-dm-ipc1-federated" / "summary.json").stat().st_mtime
    assert methods_table.main(argv) == 0  # finished runs are reused
    assert (out / "runs" / "mnist-dm-ipc1-federated" / "summary.json").stat().st_mtime == stamp
    fake = [{"dataset": "mnist", "method": m, "ipc": 10, "mode": mode, "accuracy": a, "accuracy_std": 0.01,
             "rounds": r, "train_seconds": 240.0, "seconds_per_round": 240.0 / r}
            for m, mode, a, r in [("DC", "centralized", 0.9, 8), ("DC", "federated", 0.89, 2),
                                  ("DM", "centralized", 0.8, 200), ("DM", "federated", 0.81, 40)]]
    text = methods_table.table(fake)
    assert "| mnist | 10 | DC | 90.00 ± 1.00 | 89.00 ± 1.00 | -1.00 | 8 / 2 | 240 / 240 | 120.0 |" in text
    assert text.index("| DC |") < text.index("| DM |")
    assert methods_table.plot(fake, tmp_path / "plot.png").stat().st_size > 1000
