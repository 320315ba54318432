"""Membership inference: does a model reveal whether an image was in a client's training
data? Scores for members (a client's training images) and non-members (held-out test
images); higher score = "member". Two targets:

- a diffusion generator (the `diffusion` method's weights): the denoising loss at fixed
  timesteps with fixed noise per image (members are denoised better), the simplest
  strong baseline for diffusion models;
- a classifier trained on a synthetic set (SFDD's S, or a generator's samples), and, as
  the baseline, the same classifier trained on the real data: the negative cross-entropy
  loss on the image's true label.

Reported: ROC AUC (0.5 = the attacker learns nothing) and the true-positive rate at 1 %
false positives, with a ROC plot. No Flower import.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from sfdd_flwr.data.datasets import DatasetSpec, LabelledImages
from sfdd_flwr.data.node_data import load_node_split, request_for, whole_split
from sfdd_flwr.evaluation.protocol import train_on_synthetic
from sfdd_flwr.methods.diffusion import Diffusion, to_model_space
from sfdd_flwr.methods.diffusion.model import noise_schedule
from sfdd_flwr.methods.diffusion.settings import DiffusionSettings
from sfdd_flwr.methods.diffusion.training import denoising_losses
from sfdd_flwr.models.convnet import build_network
from sfdd_flwr.runs.artifacts import RunDirectory, load_synthetic_set
from sfdd_flwr.seeding import derive_seed, make_generator
from sfdd_flwr.settings import Settings


@dataclass
class MembershipResult:
    """Scores of members and non-members and the attack's figures."""

    member_scores: np.ndarray
    non_member_scores: np.ndarray
    auc: float
    tpr_at_1_fpr: float

    def as_dict(self) -> dict:
        return {"auc": self.auc, "tpr_at_1pct_fpr": self.tpr_at_1_fpr,
                "members": int(len(self.member_scores)), "non_members": int(len(self.non_member_scores))}


def roc_curve(members: np.ndarray, non_members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) over every threshold, from (0, 0) to (1, 1)."""
    scores = np.concatenate([members, non_members])
    is_member = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tpr = np.r_[0.0, np.cumsum(is_member)[distinct] / max(len(members), 1)]
    fpr = np.r_[0.0, np.cumsum(1 - is_member)[distinct] / max(len(non_members), 1)]
    return fpr, tpr


def roc_auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counting half."""
    fpr, tpr = roc_curve(members, non_members)
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr_limit: float = 0.01) -> float:
    """The largest true-positive rate whose false-positive rate is at most `fpr_limit`."""
    fpr, tpr = roc_curve(members, non_members)
    return float(tpr[fpr <= fpr_limit].max())


def result_of(members: Sequence[float], non_members: Sequence[float]) -> MembershipResult:
    members, non_members = np.asarray(members, dtype=np.float64), np.asarray(non_members, dtype=np.float64)
    return MembershipResult(members, non_members, roc_auc(members, non_members), tpr_at_fpr(members, non_members))


@torch.no_grad()
def denoising_scores(
    model: torch.nn.Module,
    params: DiffusionSettings,
    data: LabelledImages,
    spec: DatasetSpec,
    timesteps: Sequence[int] = (50, 100, 200, 300),
    seed: int = 0,
    batch: int = 500,
) -> np.ndarray:
    """Minus the mean denoising loss of each image over `timesteps`, with one fixed noise
    draw per (image, timestep) (seeded, the same for every model scored)."""
    model.eval()
    device = next(model.parameters()).device
    scheduler = noise_schedule(params)
    images = to_model_space(data.images, spec)
    scores = []
    for start in range(0, len(data), batch):
        clean = images[start : start + batch].to(device)
        labels = data.labels[start : start + batch].to(device)
        total = torch.zeros(len(clean), device=device)
        for t in timesteps:
            generator = make_generator(seed, "membership", t, start)
            noise = torch.randn(clean.shape, generator=generator).to(device)
            steps = torch.full((len(clean),), t, device=device, dtype=torch.long)
            total += denoising_losses(model, scheduler, clean, labels, noise, steps)
        scores.append(-(total / len(timesteps)).cpu())
    return torch.cat(scores).numpy()


@torch.no_grad()
def loss_scores(network: torch.nn.Module, data: LabelledImages, batch: int = 1000) -> np.ndarray:
    """Minus each image's cross-entropy loss under a trained classifier."""
    network.eval()
    device = next(network.parameters()).device
    scores = []
    for start in range(0, len(data), batch):
        logits = network(data.images[start : start + batch].to(device))
        scores.append(-F.cross_entropy(logits, data.labels[start : start + batch].to(device), reduction="none").cpu())
    return torch.cat(scores).numpy()


def save_roc_plot(curves: dict[str, MembershipResult], path: Path, title: str = "Membership inference") -> Path:
    """ROC curves (log-scale false-positive axis, as for low-FPR attacks) of named attacks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 4.5))
    for name, result in curves.items():
        fpr, tpr = roc_curve(result.member_scores, result.non_member_scores)
        axis.plot(np.maximum(fpr, 1e-4), tpr, label=f"{name} (AUC {result.auc:.3f})")
    axis.plot([1e-4, 1], [1e-4, 1], color="grey", linestyle=":", label="chance")
    axis.set_xscale("log")
    axis.set_xlabel("false-positive rate")
    axis.set_ylabel("true-positive rate")
    axis.set_title(title)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ----- the two targets on a run's data, and the command -----
def membership_data(settings: Settings, client: int, count: int, seed: int = 0) -> tuple[LabelledImages, LabelledImages]:
    """`count` training images of partition `client` (members) and `count` test images
    (non-members, never seen by any client), each a seeded random subset."""
    members = load_node_split(request_for(settings.task, {"partition-id": client, "num-partitions": settings.min_clients}),
                              train=True)
    test = whole_split(settings.task, train=False)

    def subset(data: LabelledImages, purpose: str) -> LabelledImages:
        order = torch.randperm(len(data), generator=make_generator(seed, "membership", purpose))[:count]
        return LabelledImages(data.images[order], data.labels[order])

    return subset(members, "members"), subset(test, "non-members")


def saved_run_settings(run_dir: Path) -> Settings:
    """The settings a run recorded in its config.yaml (resume-from left out)."""
    values = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    return Settings.from_mapping(values, ignore=("resume-from",))


def generator_attack(run_dir: Path, client: int = 0, count: int = 1000, seed: int = 0) -> MembershipResult:
    """Denoising-loss scores of a diffusion run's final generator (its checkpoint)."""
    settings = saved_run_settings(run_dir)
    method = Diffusion(settings)
    model = method.new_unet()
    model.load_state_dict(method.restore(RunDirectory(Path(run_dir)).load_checkpoint(Diffusion.checkpoint_file)))
    members, non_members = membership_data(settings, client, count, seed)
    params = settings.group(DiffusionSettings)
    spec = settings.dataset_spec
    return result_of(denoising_scores(model, params, members, spec, seed=seed),
                     denoising_scores(model, params, non_members, spec, seed=seed))


def trained_classifier(settings: Settings, training: LabelledImages, tag: object) -> torch.nn.Module:
    """One fresh network trained on `training` with the run's evaluation protocol."""
    network = build_network(settings.network_spec, derive_seed(settings.seed, "membership", tag, "network"))
    train_on_synthetic(training.images, training.labels, network, settings.eval_params,
                       make_generator(settings.seed, "membership", tag, "training"))
    return network


def classifier_attack(
    settings: Settings, training: LabelledImages, members: LabelledImages, non_members: LabelledImages, tag: object
) -> MembershipResult:
    """Loss scores of a classifier trained on `training` (a synthetic set, or real data)."""
    network = trained_classifier(settings, training, tag)
    return result_of(loss_scores(network, members), loss_scores(network, non_members))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfdd_lab.attacks.membership", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("generator", "classifier"),
                        help="generator: a diffusion run's model; classifier: a network trained on a run's set")
    parser.add_argument("run_dir", type=Path, help="the run directory (its config.yaml names the data)")
    parser.add_argument("--set", type=Path, default=None,
                        help="classifier: the synthetic set to train on (default: the run's latest evaluated set)")
    parser.add_argument("--real-baseline", action="store_true",
                        help="classifier: also attack the same classifier trained on the client's real data")
    parser.add_argument("--client", type=int, default=0, help="the client whose training images are the members")
    parser.add_argument("--count", type=int, default=1000, help="members and non-members scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not (args.run_dir / "config.yaml").is_file():
        print(f"sfdd-flwr: {args.run_dir} holds no config.yaml: not a run directory", file=sys.stderr)
        return 2
    results: dict[str, MembershipResult] = {}
    if args.target == "generator":
        results["generator, denoising loss"] = generator_attack(args.run_dir, args.client, args.count, args.seed)
    else:
        settings = saved_run_settings(args.run_dir)
        sets = sorted(args.run_dir.glob("synthetic_set_round_*.pt"))
        chosen = args.set or (sets[-1] if sets else args.run_dir / "synthetic_set.pt")
        saved = load_synthetic_set(chosen)
        members, non_members = membership_data(settings, args.client, args.count, args.seed)
        results["classifier on the synthetic set"] = classifier_attack(
            settings, LabelledImages(saved.images, saved.labels), members, non_members, "synthetic")
        if args.real_baseline:
            own = load_node_split(
                request_for(settings.task, {"partition-id": args.client, "num-partitions": settings.min_clients}), True)
            results["classifier on the client's real data"] = classifier_attack(
                settings, own, members, non_members, "real")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {name: result.as_dict() for name, result in results.items()}
    (args.out / "membership.json").write_text(json.dumps(report, indent=2) + "\n")
    save_roc_plot(results, args.out / "membership_roc.png")
    for name, figures in report.items():
        print(f"{name}: AUC {figures['auc']:.3f}, TPR at 1 % FPR {100 * figures['tpr_at_1pct_fpr']:.1f} % "
              f"({figures['members']} members, {figures['non_members']} non-members)")
    print(f"outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
