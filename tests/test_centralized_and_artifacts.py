import json

import pytest
import torch

from sfdd_flwr.data import node_data
from sfdd_flwr.data.datasets import LabelledImages
from sfdd_flwr.runs.artifacts import RunDirectory, load_synthetic_set
from sfdd_flwr.settings import ConfigError, parse_run_config
from sfdd_lab.centralized import main


def test_parse_run_config_reads_toml_values():
    assert parse_run_config("ipc=10 dataset='cifar10' lr-img=0.5 persist-momentum=false") == {
        "ipc": 10, "dataset": "cifar10", "lr-img": 0.5, "persist-momentum": False,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_run_config("ipc")
    with pytest.raises(ConfigError, match="TOML value"):
        parse_run_config("dataset=cifar10")


def test_centralized_baseline_runs_and_writes_the_same_artifacts(tiny_mnist_dir, tmp_path, capsys):
    code = main([
        "--run-config",
        f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{tmp_path}' run-name='central'",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "SUMMARY gradient-matching mnist IPC 1 (centralized): 2 rounds" in out
    run_dir = tmp_path / "central"
    saved = load_synthetic_set(run_dir)
    assert saved.round == 2 and saved.metadata["mode"] == "centralized"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= summary["final_accuracy_mean"] <= 1.0


def test_central_networks_averages_independent_updates_from_the_same_set(tiny_mnist_dir, tmp_path, monkeypatch):
    """central-networks=K: K updates per iteration, distinct seeds, same start, plain mean."""
    from sfdd_flwr.methods import LocalResult
    from sfdd_flwr.methods.gradient_matching import GradientMatching

    calls = []

    def fake_update(self, job):
        images = job.state["images"]
        calls.append((images.clone(), job.network_seed(), job.method_state.get("velocity")))
        shift = float(len(calls))
        return LocalResult({"images": images + shift}, {"matching-loss": 1.0}, {"velocity": torch.full_like(images, shift)})

    monkeypatch.setattr(GradientMatching, "local_update", fake_update)
    config = f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{tmp_path}' num-eval=0 num-server-rounds=2"
    assert main(["--run-config", f"{config} run-name='one'"]) == 0
    single_seeds = [seed for _, seed, _ in calls]
    calls.clear()
    assert main(["--run-config", f"{config} run-name='three' central-networks=3"]) == 0
    assert len(calls) == 6
    first_round, second_round = calls[:3], calls[3:]
    assert all(torch.equal(images, first_round[0][0]) for images, _, _ in first_round)
    assert len({seed for _, seed, _ in calls}) == 6
    # Replica 0 keeps plain DC's seeds, so central-networks=1 is unchanged.
    assert [first_round[0][1], second_round[0][1]] == single_seeds
    # Round 1 returned start + 1, + 2, + 3: round 2 starts from their mean, start + 2.
    assert torch.allclose(second_round[0][0], first_round[0][0] + 2.0)
    # Each replica keeps its own momentum across iterations.
    assert [float(velocity.flatten()[0]) for _, _, velocity in second_round] == [1.0, 2.0, 3.0]
    assert load_synthetic_set(tmp_path / "three").round == 2


def test_centralized_rejects_bad_settings_with_one_line(tiny_mnist_dir, capsys):
    assert main(["--run-config", "preset='smoke' ipc=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sfdd-flwr: ipc=0 is not allowed: must be a number >= 1"


def test_metrics_lines_cut_off_by_a_crash_are_dropped(tmp_path):
    run_dir = RunDirectory(tmp_path)
    run_dir.prepare()
    for round_number in (1, 2, 3):
        run_dir.append_metrics({"round": round_number})
    with run_dir.file("metrics.jsonl").open("a") as handle:
        handle.write('{"round": 4, "matching_lo')
    assert [r["round"] for r in run_dir.read_metrics()] == [1, 2, 3]
    run_dir.keep_metrics_up_to(2)
    assert [r["round"] for r in run_dir.read_metrics()] == [1, 2]


def test_synthetic_set_files_hold_images_labels_and_metadata(tmp_path):
    run_dir = RunDirectory(tmp_path)
    images = torch.randn(4, 1, 28, 28)
    path = run_dir.save_labelled_set(LabelledImages(images, torch.arange(4)), {"round": 3, "dataset": "mnist"})
    assert path.name == "synthetic_set_round_0003.pt"
    saved = load_synthetic_set(path)
    assert torch.equal(saved.images, images) and saved.labels.tolist() == [0, 1, 2, 3] and saved.round == 3
    checkpoint = run_dir.save_checkpoint("synthetic_set.pt", {"images": images, "labels": torch.arange(4)}, {"round": 3})
    assert torch.equal(load_synthetic_set(checkpoint).images, images)  # gradient matching's checkpoint is S
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_centralized_baseline_runs_on_an_imagefolder_task(tmp_path, capsys):
    from fakedata import write_imagefolder

    root = write_imagefolder(tmp_path / "data", per_class=4, test_per_class=2)
    config = (
        f"preset='smoke' dataset='imagefolder' class-names='a,b,c' channels=1 image-size='28x28' "
        f"norm-mean='0.5' norm-std='0.25' data-dir='{root}' output-dir='{tmp_path / 'out'}' run-name='c' "
        "num-server-rounds=1"
    )
    assert main(["--run-config", config]) == 0
    summary = json.loads((tmp_path / "out" / "c" / "summary.json").read_text())
    assert summary["dataset"] == "imagefolder" and summary["final_accuracy_mean"] is not None
    next((root / "test" / "c").iterdir()).write_bytes(b"broken")
    node_data.load_imagefolder_split.cache_clear()
    assert main(["--run-config", config + " run-name='d'"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_resuming_a_run_cut_off_during_its_final_evaluation_evaluates_it(tiny_mnist_dir, tmp_path, capsys):
    config = f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{tmp_path}' run-name='central'"
    assert main(["--run-config", config]) == 0
    run_dir = tmp_path / "central"
    finished = json.loads((run_dir / "summary.json").read_text())
    # Emulate a crash during the final evaluation: S of the last round is saved, its
    # metrics line and the summary are not.
    run_dir.joinpath("summary.json").unlink()
    RunDirectory(run_dir).keep_metrics_up_to(finished["rounds"] - 1)
    capsys.readouterr()
    assert main(["--run-config", f"{config} resume-from='{run_dir}'"]) == 0
    out = capsys.readouterr().out
    assert "evaluation was cut off; evaluating the saved state now" in out
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["final_accuracy_mean"] == finished["final_accuracy_mean"]
    assert [r["round"] for r in RunDirectory(run_dir).read_metrics()] == list(range(1, finished["rounds"] + 1))


def test_a_resumed_run_counts_its_earlier_training_against_the_time_budget(tiny_mnist_dir, tmp_path, capsys):
    config = f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{tmp_path}' run-name='central' num-eval=0"
    assert main(["--run-config", config]) == 0
    run_dir = tmp_path / "central"
    # The 2 finished iterations are said to have taken 1000 s each; the budget is 1500 s.
    records = [{**record, "round_seconds": 1000.0} for record in RunDirectory(run_dir).read_metrics()]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    capsys.readouterr()
    resumed = f"{config} num-server-rounds=5 resume-from='{run_dir}'"
    assert main(["--run-config", resumed, "--max-train-seconds", "1500"]) == 0
    assert "stopping after iteration 3" in capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["train_seconds"] >= 2000


def test_a_time_budget_caps_the_eta(tiny_mnist_dir, tmp_path, capsys):
    config = f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{tmp_path}' num-eval=0 num-server-rounds=1000"
    assert main(["--run-config", config, "--max-train-seconds", "1e-9"]) == 0
    round_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("round 1/1000"))
    assert "ETA 0 s" in round_line, round_line


def test_a_fresh_run_refuses_a_folder_that_holds_an_earlier_run(tiny_mnist_dir, tmp_path, capsys):
    config = f"preset='smoke' data-dir='{tiny_mnist_dir}' output-dir='{tmp_path}' run-name='central'"
    assert main(["--run-config", config]) == 0
    run_dir = tmp_path / "central"
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["--run-config", config]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run-name='central' is not allowed" in err[0] and "resume-from=" in err[0], err
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before
