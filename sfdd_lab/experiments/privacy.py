"""Paper Tables 3, 4 and 5: leakage-attack MSE with and without LDPO-RLD, the accuracy
cost of LDPO-RLD, and LDPO-RLD against a LocalDP baseline of equal attack MSE.

    python -m sfdd_lab.experiments.privacy --data-dir /path/to/datasets --out results/privacy

For each dataset, on the paper's security model (ConvNet without pooling, sigmoid):
1. attack scenarios: a client of a 5-client IID federation runs its first-round update
   (the same ClientBehaviour code as the app) with one real image per class (the DLG
   setting), with no defence and with LDPO-RLD; the server attacks each update
   (non-adaptive, and adaptive for LDPO-RLD). Also batches of 4 and 16 images per class.
2. LocalDP calibration: the noise level whose attack MSE reaches LDPO-RLD's.
3. accuracy: federated runs (real `flwr run` simulations; `--in-process`: the same rounds
   in this process), 5 clients, quick protocol, without defence, with LDPO-RLD and with
   the calibrated LocalDP, same rounds and seeds.
Writes `privacy_tables.md`, `results.json` and comparison PNGs under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sfdd_flwr.behaviours.base import ClientBehaviour, private_seed
from sfdd_flwr.data.datasets import ClassPools, LabelledImages, PartitionRequest, load_partition
from sfdd_flwr.defences.ldpo_rld import LdpoRldSettings
from sfdd_flwr.methods import LocalJob
from sfdd_flwr.methods.gradient_matching import GradientMatching
from sfdd_flwr.methods.image_set import initial_synthetic_images
from sfdd_flwr.models.convnet import build_network
from sfdd_flwr.seeding import make_generator
from sfdd_flwr.settings import Settings, parse_run_config

from ..attacks.leak import pixel_box
from ..attacks.leakage import (
    BOX_MODES,
    AttackParams,
    ObservedUpdate,
    reconstruct,
    save_comparison,
    save_observed_update,
    score,
)
from ..federations import Federations, start_afresh

NUM_CLIENTS = 5


def security_settings(dataset: str, data_dir: str, width: int, batch: int, seed: int, **extra: Any) -> Settings:
    """The paper's security setting: DC ConvNet without pooling, sigmoid; IPC 1."""
    return Settings.from_mapping(
        {
            "preset": "", "dataset": dataset, "data-dir": data_dir, "seed": seed, "ipc": 1,
            "net-activation": "sigmoid", "net-pooling": "none", "net-width": width,
            "batch-real": batch, "persist-momentum": False,
        }
        | extra
    )


def client_round(
    settings: Settings, data: LabelledImages, client: int, scenario: int
) -> tuple[ObservedUpdate, torch.Tensor | None, dict]:
    """A client's first-round update in scenario `scenario`, as the app computes it.

    Returns what the server observes, the real batches the client used (replayed from the
    same seeded generator: one sample per class, in class order, as the update draws
    them), and the client's metrics.
    """
    spec = settings.network_spec
    synthetic = initial_synthetic_images(spec, settings.ipc, make_generator(settings.seed, "attack-scenario", scenario))
    job = LocalJob(
        settings=settings,
        server_round=1 + scenario,
        client_id=client,
        state={"images": synthetic},
        data=data,
        device=torch.device("cpu"),
        private_seed=private_seed(settings, {}, client),
    )
    result = ClientBehaviour().local_update(job, GradientMatching(settings))
    pools = ClassPools(data, spec.num_classes)
    replay = job.generator("real-batches")
    samples = [pools.sample(c, settings.batch_real, replay) for c in range(spec.num_classes)]
    # Classes with fewer images than the batch give shorter batches: no stacked truth then.
    truth = torch.stack(samples) if len({sample.shape for sample in samples}) == 1 else None
    network = build_network(spec, job.network_seed())
    observed = ObservedUpdate(synthetic, result.state["images"], network, settings.lr_img, settings.batch_real, settings.match_metric)
    return observed, truth, result.metrics


def attack_updates(
    settings: Settings,
    partitions: list[LabelledImages],
    scenarios: list[int],
    classes_per_update: int,
    attack: AttackParams,
    out_dir: Path,
    label: str,
) -> list[dict]:
    """Attack one update per scenario; returns per-update scores (and saves the first PNG)."""
    rows = []
    for index, scenario in enumerate(scenarios):
        client = scenario % NUM_CLIENTS
        observed, truth, metrics = client_round(settings, partitions[client], client, scenario)
        classes = [(scenario + offset) % settings.dataset_spec.num_classes for offset in range(classes_per_update)]
        started = time.monotonic()
        result = reconstruct(observed, attack, make_generator(settings.seed, "leakage-attack", scenario), classes=classes)
        scores = score(result.images, truth[classes], settings.dataset_spec)
        row = {
            "condition": label, "scenario": scenario, "client": client, "classes": classes,
            "mse_normalised": scores.mse_normalised, "mse_pixel": scores.mse_pixel, "psnr": scores.psnr,
            "replay_loss": result.final_loss,
            "attack_seconds": round(time.monotonic() - started, 1), **metrics,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if index == 0:
            save_comparison(result.images, truth[classes], settings.dataset_spec, out_dir / f"{label}.png")
            save_observed_update(observed, settings.network_spec, out_dir / f"{label}-update.pt", truth,
                                 {"dataset": settings.dataset, "condition": label})
    return rows


def mean_of(rows: list[dict], key: str = "mse_normalised") -> float:
    return statistics.mean(row[key] for row in rows)


def sfdd_accuracy(federations: Federations, settings_text: str, workdir: Path, name: str) -> dict:
    """A federated run with 5 clients (a real `flwr run` simulation unless --in-process);
    returns its summary (a finished run found in `workdir` is reused, so an interrupted
    experiment continues)."""
    summary_path = workdir / "runs" / name / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    start_afresh(summary_path.parent)
    federations.run(f"{settings_text} run-name='{name}' min-clients={NUM_CLIENTS}", NUM_CLIENTS,
                    workdir / "runs" / f"{name}.log")
    summary = json.loads((workdir / "runs" / name / "summary.json").read_text())
    print(json.dumps({"run": name, "accuracy": summary["final_accuracy_mean"], "std": summary["final_accuracy_std"]}), flush=True)
    return summary


def run_dataset(args: argparse.Namespace, dataset: str) -> dict:
    out_dir = args.out / dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    base = security_settings(dataset, args.data_dir, args.width, 1, args.seed)
    partitions = [
        load_partition(PartitionRequest(dataset, args.data_dir, client, NUM_CLIENTS, seed=args.seed))
        for client in range(NUM_CLIENTS)
    ]
    box = None if args.no_box else pixel_box(dataset)
    attack = AttackParams(
        "lbfgs", args.attack_iterations, 1.0, adaptive=False, box=box, box_mode=args.box_mode, restarts=args.restarts, restart_above=args.restart_above,
        stop_below=args.stop_below,
    )
    adaptive = dataclasses.replace(attack, adaptive=True)
    scenarios = list(range(args.updates))
    ldpo = {"defence": "ldpo-rld", "ldpo-alpha": args.ldpo_alpha, "ldpo-k": args.ldpo_k}
    results: dict[str, Any] = {"dataset": dataset, "rows": []}

    def save() -> None:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    def run(label: str, settings: Settings, params: AttackParams, chosen: list[int]) -> list[dict]:
        print(f"{dataset}: attacking {len(chosen)} updates ({label})", flush=True)
        rows = attack_updates(settings, partitions, chosen, args.classes_per_update, params, out_dir, label)
        results["rows"].extend(rows)
        save()  # partial results survive an interrupted experiment
        return rows

    plain = run("no-defence-b1", base, attack, scenarios)
    if args.no_defence_only:
        results["mse"] = {"no-defence": mean_of(plain)}
        save()
        return results
    defended = run("ldpo-rld-b1", base.replace(**ldpo), attack, scenarios)
    adaptive_rows = run(
        "ldpo-rld-b1-adaptive", base.replace(**ldpo), adaptive,
        scenarios[: args.adaptive_updates or None],
    )
    results["mse"] = {"no-defence": mean_of(plain), "ldpo-rld": mean_of(defended), "ldpo-rld-adaptive": mean_of(adaptive_rows)}
    for batch in args.batch_sizes:
        if batch == 1:
            continue
        rows = run(f"no-defence-b{batch}", base.replace(batch_real=batch), attack, scenarios[: args.extra_updates])
        results["mse"][f"no-defence-b{batch}"] = mean_of(rows)

    target = results["mse"]["ldpo-rld"]
    clip = statistics.median(row["update_norm"] for row in update_norms(base, partitions, scenarios[:3]))
    results["local_dp_clip"] = clip
    calibration = []
    for noise in args.local_dp_noises:
        settings = base.replace(defence="local-dp", local_dp_clip=clip, local_dp_noise=noise)
        rows = run(f"local-dp-noise{noise:g}-b1", settings, attack, scenarios[: args.extra_updates])
        calibration.append((noise, mean_of(rows), rows[0].get("local-dp-epsilon")))
        if mean_of(rows) >= target:
            break
    results["local_dp_calibration"] = calibration
    matched = next((c for c in calibration if c[1] >= target), calibration[-1])
    results["local_dp_noise"] = matched[0]

    if not args.skip_accuracy:
        network = ""
        if args.accuracy_model == "security":
            network = f"net-activation='sigmoid' net-pooling='none' net-width={args.width}"
        accuracy_base = Settings.from_mapping(
            {"preset": "quickstart", "dataset": dataset, "data-dir": args.data_dir, "seed": args.seed}
            | parse_run_config(f"{network} {args.run_config}")
            | {"persist-momentum": False}
        )
        # Equal noise multiplier (noise / clip) as the matched LocalDP of the security model,
        # with the clip set from this model's own update norms.
        accuracy_clip = statistics.median(row["update_norm"] for row in update_norms(accuracy_base, partitions, scenarios[:3]))
        accuracy_noise = matched[0] / clip * accuracy_clip
        results["accuracy_local_dp"] = {"clip": accuracy_clip, "noise": accuracy_noise, "model": args.accuracy_model}
        common = (
            f"preset='quickstart' dataset='{dataset}' data-dir='{args.data_dir}' output-dir='{args.out / dataset / 'runs'}' "
            f"seed={args.seed} num-server-rounds={args.rounds} num-eval={args.num_eval} eval-epochs={args.eval_epochs} "
            f"{network} {args.run_config}"
        )
        workdir = args.out / dataset
        with Federations(workdir, in_process=args.in_process) as federations:
            results["accuracy"] = {
                "none": sfdd_accuracy(federations, common, workdir, "none"),
                "ldpo-rld": sfdd_accuracy(
                    federations, common + f" defence='ldpo-rld' ldpo-alpha={args.ldpo_alpha} ldpo-k={args.ldpo_k}", workdir, "ldpo-rld"
                ),
                # Named by the matched level, so a rerun whose calibration picks another
                # level does not reuse a run made with the old noise.
                "local-dp": sfdd_accuracy(
                    federations, common + f" defence='local-dp' local-dp-clip={accuracy_clip} local-dp-noise={accuracy_noise}",
                    workdir, f"local-dp-noise{matched[0]:g}",
                ),
            }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def update_norms(settings: Settings, partitions: list[LabelledImages], scenarios: list[int]) -> list[dict]:
    """L2 norms of undefended updates S_i - S (to set the LocalDP clipping norm)."""
    rows = []
    for scenario in scenarios:
        client = scenario % NUM_CLIENTS
        observed, _, _ = client_round(settings, partitions[client], client, scenario)
        rows.append({"update_norm": float((observed.synthetic_after - observed.synthetic_before).norm())})
    return rows


def markdown(all_results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "### Table 3: leakage-attack MSE (normalised space), 5 clients, security model",
        "",
        f"ConvNet without pooling, sigmoid, width {args.width}; IPC 1; {args.updates} attacked first-round updates, "
        f"{args.classes_per_update} classes each; L-BFGS {args.attack_iterations} steps x up to 20 evaluations, "
        f"pixel range: {'none' if args.no_box else args.box_mode}; "
        f"early stop below a relative replay loss of {args.stop_below:g}; "
        f"{args.restarts} extra random starts while the relative replay loss > {args.restart_above:g}; "
        f"LDPO-RLD alpha={args.ldpo_alpha}, k={args.ldpo_k}.",
        "",
        "| dataset | no defence (1 img/class) | LDPO-RLD, non-adaptive | ratio | LDPO-RLD, adaptive attacker | "
        + " | ".join(f"no defence, {b} img/class" for b in args.batch_sizes if b != 1) + " |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for b in args.batch_sizes if b != 1) + " |",
    ]
    for result in all_results:
        mse = result["mse"]

        def cell(key: str) -> str:
            return f"{mse[key]:.3f}" if key in mse else "not run"

        extra = " | ".join(cell(f"no-defence-b{b}") for b in args.batch_sizes if b != 1)
        ratio = f"{mse['ldpo-rld'] / mse['no-defence']:.1f}x" if "ldpo-rld" in mse else "not run"
        lines.append(
            f"| {result['dataset']} | {cell('no-defence')} | {cell('ldpo-rld')} | {ratio} | "
            f"{cell('ldpo-rld-adaptive')} | {extra} |"
        )
    if any("accuracy" in r for r in all_results):
        lines += [
            "",
            "### Tables 4 and 5: accuracy (%) with each defence, same rounds and seeds",
            "",
            f"5 clients, IPC 1, {'security model' if args.accuracy_model == 'security' else 'DC ConvNet (the app default)'}, "
            f"quickstart preset with {args.rounds} rounds, {args.num_eval} evaluation models x {args.eval_epochs} epochs. "
            "LocalDP: the noise multiplier (noise / clip) that matched LDPO-RLD's attack MSE on the security model, "
            "with the clip set to the median norm of this model's undefended updates.",
            "",
            "| dataset | no defence | LDPO-RLD | change (Table 4) | LocalDP (equal attack MSE) | LDPO-RLD - LocalDP (Table 5) | LocalDP noise, clip, epsilon per round |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for result in all_results:
            acc = {k: 100 * v["final_accuracy_mean"] for k, v in result["accuracy"].items()}
            noise = result["local_dp_noise"]
            epsilon = next((c[2] for c in result["local_dp_calibration"] if c[0] == noise), None)
            lines.append(
                f"| {result['dataset']} | {acc['none']:.2f} | {acc['ldpo-rld']:.2f} | {acc['ldpo-rld'] - acc['none']:+.2f} | "
                f"{acc['local-dp']:.2f} | {acc['ldpo-rld'] - acc['local-dp']:+.2f} | "
                f"{result['accuracy_local_dp']['noise']:.3g}, {result['accuracy_local_dp']['clip']:.3g}, "
                f"{epsilon if epsilon is None else f'{epsilon:.3g}'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfdd_lab.experiments.privacy", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashionmnist"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=128, help="ConvNet width of the security model (paper: 128)")
    parser.add_argument("--updates", type=int, default=10, help="attacked updates per condition")
    parser.add_argument("--extra-updates", type=int, default=3, help="updates for larger batches and LocalDP calibration")
    parser.add_argument("--adaptive-updates", type=int, default=0, help="updates for the adaptive attacker (0 = --updates)")
    parser.add_argument("--classes-per-update", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--attack-iterations", type=int, default=20)
    parser.add_argument("--no-box", action="store_true")
    parser.add_argument("--box-mode", choices=BOX_MODES, default="clip",
                        help="clip: optimise freely, clip the result to the pixel range; sigmoid: keep every iterate inside")
    parser.add_argument("--restarts", type=int, default=0, help="extra random starts per attacked class (see attacks.leak)")
    parser.add_argument("--restart-above", type=float, default=0.01)
    parser.add_argument("--stop-below", type=float, default=0.002,
                        help="end an attack start early once its relative replay loss is below this (0 = never)")
    parser.add_argument("--ldpo-alpha", type=float, default=LdpoRldSettings().ldpo_alpha)
    parser.add_argument("--ldpo-k", type=int, default=LdpoRldSettings().ldpo_k)
    parser.add_argument("--local-dp-noises", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--num-eval", type=int, default=3)
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--in-process", action="store_true",
                        help="run the accuracy federations in this process instead of `flwr run` (quick checks)")
    parser.add_argument("--no-defence-only", action="store_true",
                        help="only attack undefended 1-image updates (e.g. to try other attack settings)")
    parser.add_argument("--accuracy-model", choices=["standard", "security"], default="standard",
                        help="network of the accuracy runs: the app's DC ConvNet or the security model")
    parser.add_argument("--run-config", default="", help="extra settings for the accuracy runs, e.g. \"batch-real=64\"")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_dataset(args, dataset) for dataset in args.datasets]
    table = markdown(results, args)
    (args.out / "privacy_tables.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
