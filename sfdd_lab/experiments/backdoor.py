"""Paper Figure 6: Doorping attack success rate (ASR) and clean test accuracy (CTA) against
the number of clients, with FedAvg and with robust aggregation of the synthetic sets.

    python -m sfdd_lab.experiments.backdoor --data-dir /path/to/datasets --out results/backdoor

Every point is a real `flwr run` simulation (IID clients, one of them, or
`--malicious-fraction` of them, running Doorping) plus a clean run with the same settings
and seeds (`--in-process`: the same rounds in this process, `sfdd_lab.federations`). ASR
of the clean run is measured with the attack run's final trigger. Writes
`backdoor_table.md`, `backdoor.png` and `results.json` under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from sfdd_flwr.attacks.doorping.files import find_trigger, scored_trigger, trigger_files_in
from sfdd_flwr.attacks.doorping.trigger import Trigger, attack_success_rate
from sfdd_flwr.behaviours.base import malicious_partitions
from sfdd_flwr.data.datasets import LabelledImages, load_split
from sfdd_flwr.device import resolve_device
from sfdd_flwr.evaluation.protocol import EvalResult, mean_and_std
from sfdd_flwr.runs.artifacts import RunDirectory, load_synthetic_set
from sfdd_flwr.runs.recorder import server_evaluator
from sfdd_flwr.settings import Settings

from ..federations import Federations, start_afresh


def saved_settings(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> Settings:
    """The settings of a saved run, with `overrides`. `resume-from` is left out: it names a
    directory on the machine that ran it, which a copied run does not carry along."""
    values = load_synthetic_set(run_dir).settings_record | dict(overrides or {})
    return Settings.from_mapping(values, ignore=("resume-from",))


def run_sfdd(args: argparse.Namespace, federations: Federations, dataset: str, clients: int, name: str,
             extra: str) -> dict[str, Any]:
    """One federated run (a `flwr run` simulation unless --in-process); returns its summary
    (CTA, ASR) and run directory.

    A run that already has a summary is not run again (unless --rerun), so an interrupted
    experiment continues where it stopped.
    """
    runs = args.out / dataset / "runs"
    run_dir = runs / name
    if (run_dir / "summary.json").is_file() and not args.rerun:
        return json.loads((run_dir / "summary.json").read_text())
    settings = (
        f"preset='' dataset='{dataset}' data-dir='{args.data_dir}' output-dir='{runs}' run-name='{name}' "
        f"seed={args.seed} ipc={args.ipc} num-server-rounds={args.rounds} batch-real={args.batch_real} "
        f"inner-loop={args.inner_loop} min-clients={clients} num-eval={args.num_eval} eval-epochs={args.eval_epochs} "
        f"eval-augment='{args.eval_augment}' doorping-trigger-steps={args.trigger_steps} {args.run_config} {extra}"
    )
    start_afresh(run_dir)
    federations.run(settings, clients, args.out / dataset / f"{name}.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    print(json.dumps({"run": name, "cta": summary["final_accuracy_mean"], "asr": summary.get("final_attack_success_mean")}), flush=True)
    return summary


def load_trigger(path: str | Path) -> Trigger:
    """A saved trigger file, or the mean of the `trigger_client<id>.pt` files of the latest
    round in a folder (e.g. colluding clients' pool `attack/colluders/round_XXXX/`)."""
    path = Path(path)
    found = scored_trigger(trigger_files_in(path) if path.is_dir() else [path], colluding=True)
    if found is None:
        raise FileNotFoundError(f"no trigger_client<id>.pt in {path}")
    return found[0]


def score_with_trigger(
    run_dir: str | Path, trigger: str | Path | Trigger, data_dir: str, num_eval: int | None = None,
    report=lambda _: None, images: torch.Tensor | None = None, overrides: dict[str, Any] | None = None,
) -> EvalResult:
    """A saved run's final S evaluated as its own server did (same networks and seeds),
    scoring another run's trigger: on a clean run, the chance level of that attack's ASR.
    `trigger` is a Trigger, a saved trigger file, or a folder of them (their mean, see
    `load_trigger`: colluding clients' shared trigger); `num_eval` evaluates only
    the first models; `images` replaces S's images (same labels); `overrides` changes
    run-config settings (e.g. {"eval-augment": "off"})."""
    if not isinstance(trigger, Trigger):
        trigger = load_trigger(trigger)
    saved = load_synthetic_set(run_dir)
    settings = saved_settings(run_dir, ({"num-eval": num_eval} if num_eval else {}) | (overrides or {}))
    test = load_split(settings.dataset, data_dir, train=False)
    evaluate = server_evaluator(settings, test, resolve_device(settings.device), report)
    labelled = LabelledImages(saved.images if images is None else images, saved.labels)

    def score(network: torch.nn.Module, test_set: LabelledImages) -> float:
        return attack_success_rate(network, test_set, trigger.to(test_set.images.device))

    return evaluate(saved.round, labelled, {"attack_success": score})


def clean_asr(args: argparse.Namespace, clean: dict, attacked: dict) -> float | None:
    """ASR of the clean run's S under the attack run's final trigger (the chance baseline)."""
    found = find_trigger(Path(attacked["run_dir"]), args.rounds if args.collude else None)
    if found is None:
        return None
    return mean_and_std(score_with_trigger(clean["run_dir"], found[0], args.data_dir).scores["attack_success"])[0]


def malicious_updates_kept(metrics: list[dict[str, Any]], malicious: set[int]) -> tuple[int, int] | None:
    """(rounds in which Krum / multi-Krum kept a malicious partition's S_i, rounds it chose in),
    from a run's metrics rows; None if the aggregator chose no subset (FedAvg, median,
    trimmed mean use every update). A Flower run records the kept node ids and, per client,
    the node's partition id; in-process rows (`sfdd_lab.full_protocol`) hold partition ids."""
    chosen = [row for row in metrics if "aggregator_kept" in row]
    if not chosen:
        return None
    rounds_with_attacker = 0
    for row in chosen:
        partition_of = {client["node"]: int(client["partition_id"]) for client in row.get("clients", [])
                        if "node" in client and "partition_id" in client}
        if row.get("clients") and len(partition_of) != len(row["clients"]):
            raise ValueError(f"round {row.get('round')}: a client reported no partition id; "
                             "cannot tell whether a malicious update was kept")
        kept = {partition_of[node] for node in row["aggregator_kept"]} if partition_of else set(row["aggregator_kept"])
        rounds_with_attacker += bool(kept & malicious)
    return rounds_with_attacker, len(chosen)


def run_dataset(args: argparse.Namespace, federations: Federations, dataset: str) -> list[dict]:
    rows = []
    malicious = (
        f"malicious-fraction={args.malicious_fraction}" if args.malicious_fraction else "malicious-clients='0'"
    )
    attack = f"{malicious} malicious-behaviour='{args.behaviour}' doorping-collude={str(args.collude).lower()}"
    for clients in args.clients:
        clean = run_sfdd(args, federations, dataset, clients, f"clean-n{clients}-fedavg", "aggregator='fedavg'")
        aggregators = ["fedavg"] + ([a for a in args.aggregators if a != "fedavg"] if clients == args.robust_clients else [])
        for aggregator in aggregators:
            attacked = run_sfdd(args, federations, dataset, clients, f"{args.behaviour}-n{clients}-{aggregator}", f"{attack} aggregator='{aggregator}'")
            row = {
                "dataset": dataset, "clients": clients, "aggregator": aggregator,
                "cta_clean_fedavg": clean["final_accuracy_mean"],
                "cta_attacked": attacked["final_accuracy_mean"],
                "asr": attacked.get("final_attack_success_mean"),
            }
            run_dir = Path(attacked["run_dir"])
            kept = malicious_updates_kept(
                RunDirectory(run_dir).read_metrics(),
                malicious_partitions(saved_settings(run_dir), clients),
            )
            if kept is not None:
                row["malicious_kept_rounds"], row["aggregator_chose_rounds"] = kept
            if aggregator == "fedavg" and not args.skip_clean_asr:
                row["asr_clean"] = clean_asr(args, clean, attacked)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"IPC {args.ipc}, {args.rounds} rounds, batch-real {args.batch_real}, inner-loop {args.inner_loop}, "
        f"Doorping trigger steps <= {args.trigger_steps}; evaluation {args.num_eval} models x {args.eval_epochs} epochs "
        f"(augmentation {args.eval_augment}); "
        f"{'malicious fraction ' + str(args.malicious_fraction) if args.malicious_fraction else 'one malicious client'} ({args.behaviour}{', colluding' if args.collude else ''}).",
        "",
        "| dataset | clients | aggregator | CTA clean FedAvg % | CTA attacked % | CTA change | ASR % | ASR of clean S % "
        "| rounds a malicious S_i was kept |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        asr_clean = row.get("asr_clean")
        kept = (f"{row['malicious_kept_rounds']} of {row['aggregator_chose_rounds']}"
                if "malicious_kept_rounds" in row else "all (no selection)")
        lines.append(
            f"| {row['dataset']} | {row['clients']} | {row['aggregator']} | {100 * row['cta_clean_fedavg']:.2f} | "
            f"{100 * row['cta_attacked']:.2f} | {100 * (row['cta_attacked'] - row['cta_clean_fedavg']):+.2f} | "
            f"{100 * row['asr']:.2f} | {'-' if asr_clean is None else f'{100 * asr_clean:.2f}'} | {kept} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], args: argparse.Namespace, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({row["dataset"] for row in rows})
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for dataset in datasets:
        points = sorted((r["clients"], 100 * r["asr"]) for r in rows if r["dataset"] == dataset and r["aggregator"] == "fedavg")
        axes[0].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=dataset)
    axes[0].set_xlabel("clients (one malicious)" if not args.malicious_fraction else "clients")
    axes[0].set_ylabel("attack success rate (%)")
    axes[0].set_title("Doorping ASR with FedAvg")
    axes[0].set_ylim(0, 100)
    axes[0].legend()
    robust = [r for r in rows if r["clients"] == args.robust_clients]
    labels = [f"{r['dataset']}\n{r['aggregator']}" for r in robust]
    axes[1].bar(range(len(robust)), [100 * r["asr"] for r in robust], label="ASR")
    axes[1].plot(range(len(robust)), [100 * r["cta_attacked"] for r in robust], "k^", label="CTA")
    axes[1].set_xticks(range(len(robust)), labels, rotation=45, ha="right", fontsize=7)
    axes[1].set_ylim(0, 100)
    axes[1].set_title(f"aggregators, {args.robust_clients} clients")
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfdd_lab.experiments.backdoor", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashionmnist"])
    parser.add_argument("--clients", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--aggregators", nargs="+", default=["fedavg", "median", "trimmed-mean", "krum", "multi-krum"])
    parser.add_argument("--robust-clients", type=int, default=5, help="client count at which aggregators are compared")
    parser.add_argument("--behaviour", default="doorping", help="doorping, naive-backdoor or module:Class")
    parser.add_argument("--malicious-fraction", type=float, default=0.0, help="instead of one malicious client")
    parser.add_argument("--collude", action="store_true", help="malicious clients pool one trigger (doorping-collude)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--batch-real", type=int, default=256)
    parser.add_argument("--inner-loop", type=int, default=0, help="0 = DC table (50 at IPC 10)")
    parser.add_argument("--trigger-steps", type=int, default=1000)
    parser.add_argument(
        "--num-eval", type=int, default=10,
        help="fresh networks per evaluation (default 10): a network trained on a backdoored S tends to "
        "learn the backdoor fully or not at all, so ASR over few networks is coarse (RESULTS.md section 6)",
    )
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument(
        "--eval-augment", choices=("off", "on", "auto"), default="off",
        help="augmentation when training evaluation networks on S; off (default) as in Doorping's reference, "
        "whose evaluation turns DC's MNIST augmentation off (it moves the corner trigger: "
        "benchmarks/RESULTS.md section 6)",
    )
    parser.add_argument("--run-config", default="", help="extra settings for every run")
    parser.add_argument("--skip-clean-asr", action="store_true")
    parser.add_argument("--rerun", action="store_true", help="rerun runs that already have a summary")
    parser.add_argument("--in-process", action="store_true",
                        help="run the federations in this process instead of `flwr run` (quick checks)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    with Federations(args.out, in_process=args.in_process) as federations:
        rows = [row for dataset in args.datasets for row in run_dataset(args, federations, dataset)]
    table = markdown(rows, args)
    (args.out / "backdoor_table.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args, args.out / "backdoor.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
