"""The two systems side by side on the same clients and partitions: SFDD (a distilled set
built by gradient matching) against a federated diffusion generator, without and with
DP-SGD, and a FedAvg classifier trained on the real data as the upper bound.

    python -m sfdd_lab.experiments.generative_privacy --data-dir DATA --out OUT [--scale cpu|paper]

Every synthetic row is a real `flwr run` simulation (5 IID clients); the upper bound runs
FedAvg of ConvNets in this process over the same partitions. Columns: test accuracy of
classifiers trained on the synthetic data only (for a generator also with as many
samples as SFDD's IPC-10 set has images), bytes exchanged per client per round and in
total, wall time, and the membership-inference AUC against a classifier trained on that
data (and against the generator itself). Writes `generative_privacy.md`, `.json` and a
PNG of accuracy against membership AUC under --out; finished runs, and the attacks and
evaluations made on them (`runs/<run>.figures.json`), are reused.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sfdd_flwr.aggregators.fedavg import fedavg
from sfdd_flwr.data.datasets import LabelledImages
from sfdd_flwr.data.node_data import load_node_split, request_for, whole_split
from sfdd_flwr.device import resolve_device
from sfdd_flwr.evaluation.protocol import test_accuracy
from sfdd_flwr.methods.diffusion import Diffusion
from sfdd_flwr.models.convnet import build_network
from sfdd_flwr.models.training import train_network_epoch
from sfdd_flwr.runs.artifacts import RunDirectory, load_synthetic_set
from sfdd_flwr.runs.recorder import server_evaluator
from sfdd_flwr.seeding import derive_seed, make_generator
from sfdd_flwr.settings import Settings, load_preset, settings_from_run_configs

from ..attacks.membership import (
    classifier_attack,
    generator_attack,
    loss_scores,
    membership_data,
    result_of,
    saved_run_settings,
)
from ..federations import start_afresh
from ..launch import LocalSuperLink

CLIENTS = 5


@dataclass(frozen=True)
class Row:
    """One row: a name, its run-config (over the scale's base), and what kind it is."""

    name: str
    run_config: str
    generator: bool = False


def rows_for(scale: str) -> list[Row]:
    """The table's synthetic rows at a scale (presets: conf/)."""
    sfdd = "preset='side-by-side-sfdd'" if scale == "cpu" else "preset='paper-ipc10'"
    sfdd50 = "preset='side-by-side-sfdd' ipc=50 num-server-rounds=4" if scale == "cpu" else "preset='paper-ipc50'"
    generator = "preset='diffusion-quickstart'" if scale == "cpu" else "preset='diffusion-paper'"
    private = "preset='diffusion-dp-quickstart'" if scale == "cpu" else "preset='diffusion-paper'"
    return [
        Row("SFDD, IPC 10", sfdd),
        Row("SFDD, IPC 50", sfdd50),
        Row("diffusion, no DP", generator, generator=True),
        Row("diffusion, DP ε = 10", private + " dp-target-epsilon=10.0", generator=True),
        Row("diffusion, DP ε = 1", private + " dp-target-epsilon=1.0", generator=True),
    ]


def sfdd_eval_epochs(scale: str) -> int:
    """The epochs SFDD's rows train their classifiers (0: the DC protocol's default)."""
    return int(load_preset("side-by-side-sfdd" if scale == "cpu" else "paper-ipc10").get("eval-epochs", 0))


def run_name(dataset: str, row: Row) -> str:
    """A folder name for the row's run, e.g. `mnist-diffusion-dp-eps-10`."""
    return f"{dataset}-" + re.sub(r"[^a-z0-9]+", "-", row.name.lower().replace("ε", "eps")).strip("-")


def simulate(link: LocalSuperLink, out: Path, dataset: str, data_dir: str, row: Row, extra: str) -> dict[str, Any]:
    """The row's `flwr run` (reused when its summary exists), with its wall clock."""
    name = run_name(dataset, row)
    run_dir = out / "runs" / name
    timing = out / "runs" / f"{name}.wall_seconds"
    if not (run_dir / "summary.json").is_file():
        start_afresh(run_dir)
        (out / "runs" / f"{name}.figures.json").unlink(missing_ok=True)
        started = time.monotonic()
        print(f"{name}: running (log: {out / 'runs' / f'{name}.log'})", flush=True)
        result = link.run(
            f"{row.run_config} dataset='{dataset}' data-dir='{data_dir}' output-dir='{out / 'runs'}' "
            f"run-name='{name}' min-clients={CLIENTS} {extra}",
            num_supernodes=CLIENTS, timeout_seconds=48 * 3600, log_path=out / "runs" / f"{name}.log",
        )
        if result.returncode != 0:
            raise SystemExit(f"{name} failed; see {out / 'runs' / f'{name}.log'}")
        timing.write_text(f"{time.monotonic() - started:.1f}\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["wall_seconds"] = float(timing.read_text()) if timing.is_file() else None
    return summary


def traffic(run_dir: Path) -> tuple[float, float]:
    """(bytes per client per round, bytes in total) sent and received by the server."""
    records = RunDirectory(run_dir).read_metrics()
    total = sum(r.get("bytes_sent", 0) + r.get("bytes_received", 0) for r in records)
    clients = sum(r.get("clients_ok", 0) + r.get("clients_failed", 0) for r in records)
    return total / max(clients, 1), float(total)


def few_samples_accuracy(run_dir: Path, per_class: int, data_dir: str, eval_epochs: int) -> float:
    """A generator's accuracy with `per_class` samples per class (as many as SFDD's set),
    its classifiers trained for SFDD's `eval_epochs`."""
    settings = saved_run_settings(run_dir).replace(
        diffusion_samples_per_class=per_class, data_dir=data_dir, eval_epochs=eval_epochs
    )
    method = Diffusion(settings)
    state = method.restore(RunDirectory(run_dir).load_checkpoint(Diffusion.checkpoint_file))
    device = resolve_device(settings.device)
    labelled = method.labelled_set(state, settings.num_server_rounds, device)
    evaluate = server_evaluator(settings, whole_split(settings.task, train=False), device, lambda _: None)
    return evaluate(settings.num_server_rounds, labelled, {}).mean


def membership(run_dir: Path, generator: bool, count: int) -> dict[str, float]:
    """AUC of the loss attack on a classifier trained on the run's set, and for a
    generator of the denoising-loss attack on its weights."""
    settings = saved_run_settings(run_dir)
    saved = load_synthetic_set(sorted(run_dir.glob("synthetic_set_round_*.pt"))[-1])
    members, non_members = membership_data(settings, 0, count)
    figures = {"mia_auc_classifier": classifier_attack(
        settings, LabelledImages(saved.images, saved.labels), members, non_members, "synthetic").auc}
    if generator:
        figures["mia_auc_generator"] = generator_attack(run_dir, 0, count).auc
    return figures


def fedavg_classifier(settings: Settings, rounds: int, local_epochs: int, count: int) -> dict[str, Any]:
    """The upper bound: FedAvg of ConvNets trained on the clients' real partitions (the
    evaluation protocol's optimiser, `local_epochs` per round), and its membership AUC."""
    started = time.monotonic()
    device = resolve_device(settings.device)
    parts = [load_node_split(request_for(settings.task, {"partition-id": c, "num-partitions": CLIENTS}), True).to(device)
             for c in range(CLIENTS)]
    params = settings.eval_params
    network = build_network(settings.network_spec, derive_seed(settings.seed, "upper-bound", "network"), device)
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    for server_round in range(1, rounds + 1):
        states = []
        for client, part in enumerate(parts):
            network.load_state_dict(state)
            optimizer = torch.optim.SGD(network.parameters(), lr=params.eval_lr, momentum=params.momentum,
                                        weight_decay=params.weight_decay)
            generator = make_generator(settings.seed, "upper-bound", server_round, client)
            for _ in range(local_epochs):
                train_network_epoch(network, optimizer, part.images, part.labels, params.eval_batch, generator)
            states.append({k: v.detach().cpu().clone() for k, v in network.state_dict().items()})
        state = fedavg(states, [float(len(part)) for part in parts])
    network.load_state_dict(state)
    test = whole_split(settings.task, train=False).to(device)
    accuracy = test_accuracy(network, test)
    members, non_members = membership_data(settings, 0, count)
    attack = result_of(loss_scores(network, members), loss_scores(network, non_members))
    size = sum(v.numel() * v.element_size() for v in state.values())
    return {"accuracy": accuracy, "bytes_per_client_round": 2.0 * size, "bytes_total": 2.0 * size * CLIENTS * rounds,
            "wall_seconds": time.monotonic() - started, "mia_auc_classifier": attack.auc}


def row_figures(args: argparse.Namespace, dataset: str, row: Row, summary: dict[str, Any]) -> dict[str, Any]:
    """A synthetic row's columns: from its run's summary and metrics, and the attacks."""
    run_dir = Path(summary["run_dir"])
    per_round, total = traffic(run_dir)
    figures = {
        "dataset": dataset, "system": row.name, "accuracy": summary["final_accuracy_mean"],
        "accuracy_std": summary["final_accuracy_std"], "bytes_per_client_round": per_round,
        "bytes_total": total, "wall_seconds": summary["wall_seconds"],
        "epsilon": summary["last_round"].get("dp_epsilon"),
        **membership(run_dir, row.generator, args.membership_count),
    }
    if row.generator:
        figures["accuracy_10_per_class"] = few_samples_accuracy(run_dir, 10, args.data_dir, sfdd_eval_epochs(args.scale))
    return figures


def cached(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`compute()`, kept in `path`: a rerun reuses a row's attacks and evaluations too."""
    if path.is_file():
        return json.loads(path.read_text())
    figures = compute()
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | system | accuracy % | accuracy, 10 samples per class % | MB per client per round | MB in total "
        "| wall clock | MIA AUC, classifier | MIA AUC, generator | ε (δ = 1e-5) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def number(value, scale=1.0, digits=2):
        return "-" if value is None else f"{scale * value:.{digits}f}"

    for row in rows:
        accuracy = number(row["accuracy"], 100)
        if row.get("accuracy_std") is not None:
            accuracy += f" ± {100 * row['accuracy_std']:.2f}"
        wall = row.get("wall_seconds")
        lines.append(
            f"| {row['dataset']} | {row['system']} | {accuracy} | {number(row.get('accuracy_10_per_class'), 100)} "
            f"| {number(row['bytes_per_client_round'], 1e-6, 3)} | {number(row['bytes_total'], 1e-6, 1)} "
            f"| {'-' if wall is None else f'{wall / 60:.1f} min'} | {number(row.get('mia_auc_classifier'), 1, 3)} "
            f"| {number(row.get('mia_auc_generator'), 1, 3)} | {number(row.get('epsilon'), 1, 2)} |"
        )
    return "\n".join(lines) + "\n"


def null_auc_std(members: int, non_members: int) -> float:
    """Standard deviation of the ROC AUC of a score that knows nothing (Mann-Whitney)."""
    return ((members + non_members + 1) / (12 * members * non_members)) ** 0.5


def plot(rows: list[dict[str, Any]], path: Path, membership_count: int) -> Path:
    """One panel per dataset: accuracy against the membership AUC of the attack on a
    classifier trained on each system's data (the one attack every row has), with the
    band a score that knows nothing falls in (0.5 +- 2 standard deviations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    systems = list(dict.fromkeys(row["system"] for row in rows))
    colours = plt.get_cmap("tab10")
    markers = "osD^vP*X"
    figure, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.2), sharey=True, squeeze=False)
    band = 2 * null_auc_std(membership_count, membership_count)
    for axis, dataset in zip(axes[0], datasets):
        axis.axvspan(0.5 - band, 0.5 + band, color="grey", alpha=0.15, lw=0)
        axis.axvline(0.5, color="grey", linestyle=":")
        for row in (r for r in rows if r["dataset"] == dataset):
            index = systems.index(row["system"])
            axis.scatter(row["mia_auc_classifier"], 100 * row["accuracy"], color=colours(index),
                         marker=markers[index % len(markers)], s=45, label=row["system"])
        axis.set_title(dataset)
        axis.set_xlabel("membership AUC against a classifier trained on it")
    axes[0][0].set_ylabel("test accuracy of a classifier trained on it (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.14, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfdd_lab.experiments.generative_privacy",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashionmnist"])
    parser.add_argument("--scale", choices=("cpu", "paper"), default="cpu",
                        help="cpu: the CPU presets (side-by-side-sfdd, diffusion-quickstart); paper: the full protocol")
    parser.add_argument("--run-config", default="", help="extra settings for every run")
    parser.add_argument("--membership-count", type=int, default=1000, help="members and non-members per attack")
    parser.add_argument("--upper-bound-rounds", type=int, default=10)
    parser.add_argument("--upper-bound-epochs", type=int, default=1, help="local epochs per round")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    results = []
    with LocalSuperLink(args.out / "superlink") as link:
        for dataset in args.datasets:
            for row in rows_for(args.scale):
                summary = simulate(link, args.out, dataset, args.data_dir, row, args.run_config)
                results.append(cached(args.out / "runs" / f"{run_name(dataset, row)}.figures.json",
                                      lambda: row_figures(args, dataset, row, summary)))
                print(json.dumps(results[-1]), flush=True)

            def upper_bound() -> dict[str, Any]:
                base = settings_from_run_configs(
                    [f"preset='diffusion-quickstart' dataset='{dataset}' data-dir='{args.data_dir}'", args.run_config])
                bound = fedavg_classifier(base, args.upper_bound_rounds, args.upper_bound_epochs, args.membership_count)
                return {"dataset": dataset, "system": "FedAvg classifier on the real data (upper bound)",
                        "accuracy": bound["accuracy"], "accuracy_std": None, **bound}

            results.append(cached(args.out / "runs" / f"{dataset}-upper-bound.figures.json", upper_bound))
            print(json.dumps(results[-1]), flush=True)
    text = table(results)
    (args.out / "generative_privacy.md").write_text(text)
    (args.out / "generative_privacy.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "generative_privacy.png", args.membership_count)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
