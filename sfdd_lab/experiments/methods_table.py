"""Paper Table 2 for every distillation method: method x IPC x {centralized, federated}.

    python -m sfdd_lab.experiments.methods_table --data-dir DATA --out OUT [--scale cpu|paper]
        [--datasets mnist fashionmnist] [--ipcs 1 10] [--methods DC DSA DM] [--budget-seconds 60]

Every cell runs the method's own code twice on the same settings and seeds: centralized,
the method on the whole training set (`sfdd_lab.centralized`), and federated, 5 IID
clients in rounds (the ClientApp's code and seeds in one process:
`sfdd_lab.full_protocol`, which `tests/test_full_protocol.py` checks against the Flower
apps), for as many rounds as the centralized run made iterations, as in the SFDD paper's
Table 2. At `--scale cpu` the centralized run stops after the iteration that crosses the
training-time budget, the same for every method (so a cheap method runs more
iterations); the federated run then costs about as long on a deployment whose clients
work in parallel (5x that here, where they take turns). At `--scale paper` both go the
preset's 1000 rounds. Each set is evaluated with its method's reference protocol (DC:
DC's augmentation on MNIST; DSA and DM: DSA's). Writes `methods_table.md`, `.json` and
`.png` (accuracy against training time, per method) under --out; finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfdd_flwr.settings import settings_from_run_configs

from ..centralized import CentralizedSettings, run_centralized
from ..federations import run_in_process, run_logged, start_afresh

CLIENTS = 5
PRESETS = {"cpu": "methods-cpu", "paper": "methods-paper"}
METHODS = {
    "DC": "method='gradient-matching'",
    "DSA": "method='gradient-matching' dsa=true eval-augment='dsa'",
    "DM": "method='distribution-matching' eval-augment='dsa'",
}


@dataclass(frozen=True)
class Cell:
    dataset: str
    method: str
    ipc: int
    mode: str

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.method.lower()}-ipc{self.ipc}-{self.mode}"


def run_config(cell: Cell, scale: str, data_dir: str, runs: Path, extra: str, rounds: int | None = None) -> str:
    """The cell's settings; a federated cell runs `rounds` rounds (the centralized twin's)."""
    config = (
        f"preset='{PRESETS[scale]}' {METHODS[cell.method]} dataset='{cell.dataset}' ipc={cell.ipc} "
        f"data-dir='{data_dir}' output-dir='{runs}' run-name='{cell.name}' {extra}"
    )
    if cell.mode == "federated":
        config += f" min-clients={CLIENTS}" + (f" num-server-rounds={rounds}" if rounds else "")
    return config


def run_cell(cell: Cell, args: argparse.Namespace, rounds: int | None = None) -> dict[str, Any]:
    """The cell's row: its run (in this process, the output in `runs/<cell>.log`), or the
    finished run found under --out."""
    runs = args.out / "runs"
    summary_path = runs / cell.name / "summary.json"
    if summary_path.is_file() and rounds and json.loads(summary_path.read_text())["rounds"] != rounds:
        print(f"{cell.name}: its finished run has other rounds than its centralized twin's {rounds}; running it again",
              flush=True)
        summary_path.unlink()
    if not summary_path.is_file():
        start_afresh(runs / cell.name)
        runs.mkdir(parents=True, exist_ok=True)
        budget = args.budget_seconds if args.scale == "cpu" else None
        config = run_config(cell, args.scale, args.data_dir, runs, args.run_config, rounds)
        log_path = runs / f"{cell.name}.log"
        print(f"{cell.name}: running (log: {log_path})", flush=True)
        if cell.mode == "federated":
            ok = run_in_process(config, log_path)
        else:
            def work(report):
                settings = settings_from_run_configs([config], extra_groups=(CentralizedSettings,))
                return run_centralized(settings, report, max_train_seconds=budget)
            ok = run_logged(work, log_path)
        if not ok:
            raise SystemExit(f"{cell.name} failed; see {log_path}")
    summary = json.loads(summary_path.read_text())
    records = [json.loads(line) for line in (runs / cell.name / "metrics.jsonl").read_text().splitlines()]
    round_seconds = [r["round_seconds"] for r in records if "round_seconds" in r]
    row = {
        "dataset": cell.dataset, "method": cell.method, "ipc": cell.ipc, "mode": cell.mode,
        "accuracy": summary["final_accuracy_mean"], "accuracy_std": summary["final_accuracy_std"],
        "rounds": summary["rounds"], "train_seconds": sum(round_seconds),
        "seconds_per_round": sum(round_seconds) / max(len(round_seconds), 1),
        "eval_epochs": summary["eval_epochs"], "num_eval": summary["num_eval_models"],
    }
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    by_cell = {(r["dataset"], r["method"], r["ipc"], r["mode"]): r for r in rows}
    lines = [
        "| dataset | IPC | method | centralized % | federated, 5 clients % | federated - centralized "
        "| rounds (central / federated) | training s (central / federated) | s per federated round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["dataset"], r["ipc"], r["method"]) for r in rows},
                  key=lambda k: (k[0], k[1], list(METHODS).index(k[2])))
    for dataset, ipc, method in keys:
        central, federated = by_cell.get((dataset, method, ipc, "centralized")), by_cell.get(
            (dataset, method, ipc, "federated"))

        def accuracy(row):
            return "-" if row is None else f"{100 * row['accuracy']:.2f} ± {100 * row['accuracy_std']:.2f}"

        def pair(key, digits=0):
            return " / ".join("-" if row is None else f"{row[key]:.{digits}f}" for row in (central, federated))

        gap = "-" if central is None or federated is None else f"{100 * (federated['accuracy'] - central['accuracy']):+.2f}"
        per_round = "-" if federated is None else f"{federated['seconds_per_round']:.1f}"
        lines.append(
            f"| {dataset} | {ipc} | {method} | {accuracy(central)} | {accuracy(federated)} | {gap} "
            f"| {pair('rounds')} | {pair('train_seconds')} "
            f"| {per_round} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against training time: one panel per dataset, one colour per method,
    filled markers federated, open markers centralized, the IPC written beside each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    figure, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    colours = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:green")))
    for axis, dataset in zip(axes[0], datasets):
        for row in (r for r in rows if r["dataset"] == dataset):
            federated = row["mode"] == "federated"
            axis.scatter(row["train_seconds"] / 60, 100 * row["accuracy"], color=colours[row["method"]],
                         facecolors=colours[row["method"]] if federated else "none", s=40)
            axis.annotate(f"IPC {row['ipc']}", (row["train_seconds"] / 60, 100 * row["accuracy"]), fontsize=7,
                          xytext=(4, 2), textcoords="offset points")
        for method, colour in colours.items():
            axis.scatter([], [], color=colour, label=method)
        axis.scatter([], [], color="grey", label="federated (filled)")
        axis.scatter([], [], color="grey", facecolors="none", label="centralized (open)")
        axis.set_title(dataset)
        axis.set_xlabel("training time here (min; federated clients take turns)")
        axis.set_ylabel("test accuracy (%)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfdd_lab.experiments.methods_table",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", choices=tuple(PRESETS), default="cpu",
                        help="cpu: preset methods-cpu and a time budget per run; paper: preset methods-paper")
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashionmnist"])
    parser.add_argument("--ipcs", type=int, nargs="+", default=None, help="default: 1 10 (cpu), 1 10 50 (paper)")
    parser.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(METHODS))
    parser.add_argument("--budget-seconds", type=float, default=60.0,
                        help="training time of every centralized run at --scale cpu (evaluation not counted)")
    parser.add_argument("--run-config", default="", help="extra settings for every run")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    ipcs = args.ipcs or ([1, 10] if args.scale == "cpu" else [1, 10, 50])
    rows = []
    for dataset in args.datasets:
        for ipc in ipcs:
            for method in args.methods:
                central = run_cell(Cell(dataset, method, ipc, "centralized"), args)
                federated = run_cell(Cell(dataset, method, ipc, "federated"), args, rounds=central["rounds"])
                rows += [central, federated]
    text = table(rows)
    if args.scale == "cpu":
        text += (f"\nCentralized: {args.budget_seconds:g} s of training (the iteration that crosses it completes); "
                 "federated: as many rounds.\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "methods_table.md").write_text(text)
    (args.out / "methods_table.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out / "methods_table.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
