"""Curious-server leakage attack on a client's synthetic-set update (SFDD eqs. 4-7, after DLG).

The server knows S before the round, the S_i the client returned, the client's network
parameters at that step (the worst case the paper assumes) and its hyperparameters. It
starts from dummy real batches D^_c ~ N(0, 1), replays the client's matching step with D^
in place of the real batches, and minimises || replayed update - observed update ||^2
over D^ (L-BFGS as in DLG, or Adam). The adaptive variant also learns the target
distribution of each class, which is what LDPO-RLD hides.

Scope: one matching step (outer-loop 1, as at IPC 1 and in the DLG setting) with no
carried-over momentum, which is the update a client sends in its first round. Because
class c's synthetic images only move with class c's real batch, classes are attacked
one at a time. No Flower import.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from sfdd_flwr.data.datasets import DatasetSpec, denormalise
from sfdd_flwr.methods.gradient_matching.distance import match_distance
from sfdd_flwr.methods.gradient_matching.update import class_loss
from sfdd_flwr.models.convnet import ConvNet, NetworkSpec

OPTIMISERS = ("lbfgs", "adam")
BOX_MODES = ("clip", "sigmoid")


@dataclass
class ObservedUpdate:
    """What the server sees of one client's round (and knows of its setting)."""

    synthetic_before: torch.Tensor  # [C*ipc, ch, H, W]
    synthetic_after: torch.Tensor
    network: torch.nn.Module  # the client's network at the matching step
    lr_img: float
    batch_real: int
    metric: str = "ours"


@dataclass(frozen=True)
class AttackParams:
    optimiser: str = "lbfgs"
    iterations: int = 100
    lr: float = 1.0
    adaptive: bool = False
    max_evaluations_per_step: int = 20
    # Known pixel range of real images. 'clip' (default) optimises freely and clips the
    # result; 'sigmoid' keeps every iterate inside through x = low + (high - low) sigmoid(z),
    # which on MNIST converged several times slower (saturated background pixels).
    box: tuple[float, float] | None = None
    box_mode: str = "clip"
    tv_weight: float = 0.0
    # Extra random starts per class while the relative replay loss (loss / ||observed||^2,
    # which the attacker sees) stays above `restart_above`; the lowest-loss start is kept.
    restarts: int = 0
    restart_above: float = 0.01
    # A start ends early once its relative replay loss falls below this (0 = never): the
    # well-posed classes converge in a few steps, the hard ones keep improving for many.
    stop_below: float = 0.0


@dataclass
class Reconstruction:
    images: torch.Tensor  # [C, b, ch, H, W]
    soft_labels: torch.Tensor | None  # [C, C] learnt targets of the adaptive attack
    final_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class LeakageScore:
    mse_normalised: float
    mse_pixel: float
    psnr: float


def replayed_gradient(
    network: torch.nn.Module,
    synthetic_class: torch.Tensor,
    real_class: torch.Tensor,
    class_index: int,
    metric: str,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """d(matching distance)/d(synthetic images of one class), differentiable in `real_class`
    and `target` (the client steps its images by -lr times this)."""
    parameters = [p for p in network.parameters()]
    synthetic = synthetic_class.detach().requires_grad_(True)
    grads_real = torch.autograd.grad(
        class_loss(network(real_class), class_index, target), parameters, create_graph=True
    )
    grads_synthetic = torch.autograd.grad(
        class_loss(network(synthetic), class_index, target), parameters, create_graph=True
    )
    (gradient,) = torch.autograd.grad(
        match_distance(grads_real, grads_synthetic, metric), [synthetic], create_graph=True
    )
    return gradient


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels: the image prior of
    "Inverting Gradients" (Geiping et al. 2020), which suppresses the pixel noise the
    update does not constrain."""
    return (images[..., 1:, :] - images[..., :-1, :]).abs().mean() + (
        images[..., :, 1:] - images[..., :, :-1]
    ).abs().mean()


def reconstruct(
    observed: ObservedUpdate,
    params: AttackParams,
    generator: torch.Generator,
    progress: Callable[[str], None] | None = None,
    classes: list[int] | None = None,
) -> Reconstruction:
    """Dummy real batches (and, if adaptive, soft labels) that best replay the update.

    `classes` limits the attack to some classes (each is independent of the others);
    the result then holds those classes in that order.
    """
    if params.optimiser not in OPTIMISERS:
        raise ValueError(f"optimiser must be one of {OPTIMISERS}, got {params.optimiser!r}")
    if params.box_mode not in BOX_MODES:
        raise ValueError(f"box_mode must be one of {BOX_MODES}, got {params.box_mode!r}")
    started = time.monotonic()
    network = observed.network
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    device = next(network.parameters()).device
    before = observed.synthetic_before.to(device)
    num_images, *image_shape = before.shape
    num_classes = network.classifier.out_features
    ipc = num_images // num_classes
    observed_gradient = (before - observed.synthetic_after.to(device)) / observed.lr_img
    images, labels, losses = [], [], []
    targets = list(range(num_classes)) if classes is None else list(classes)
    for position, c in enumerate(targets):
        synthetic_class = before[c * ipc : (c + 1) * ipc]
        wanted = observed_gradient[c * ipc : (c + 1) * ipc]
        scale = max(float((wanted**2).sum()), 1e-12)
        best: tuple[float, torch.Tensor, torch.Tensor | None] | None = None
        for attempt in range(1 + params.restarts):
            candidate = _attack_one_class(
                network, synthetic_class, wanted, c, num_classes, observed, params, generator, image_shape, device
            )
            if best is None or candidate[0] < best[0]:
                best = candidate
            if best[0] / scale <= params.restart_above:
                break
        final, image, label = best
        losses.append(final)
        images.append(image)
        labels.append(label)
        if progress is not None:
            progress(
                f"class {c} ({position + 1}/{len(targets)}): replay loss {final:.3g} after "
                f"{attempt + 1} start(s) ({time.monotonic() - started:.0f} s)"
            )
    return Reconstruction(
        images=torch.stack(images),
        soft_labels=torch.stack(labels) if params.adaptive else None,
        final_loss=losses,
        seconds=time.monotonic() - started,
    )


def _attack_one_class(
    network: torch.nn.Module,
    synthetic_class: torch.Tensor,
    wanted: torch.Tensor,
    c: int,
    num_classes: int,
    observed: ObservedUpdate,
    params: AttackParams,
    generator: torch.Generator,
    image_shape: list[int],
    device: torch.device,
) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """One random start for class c: (final replay loss, dummies, learnt soft label)."""
    scale = max(float((wanted**2).sum()), 1e-12)
    latent = torch.randn((observed.batch_real, *image_shape), generator=generator).to(device).requires_grad_(True)
    to_image = lambda z: z  # noqa: E731
    finish = to_image
    if params.box is not None:
        low, high = params.box
        if params.box_mode == "sigmoid":
            to_image = finish = lambda z: low + (high - low) * torch.sigmoid(z)  # noqa: E731
        else:
            finish = lambda z: z.clamp(low, high)  # noqa: E731
    variables = [latent]
    logits = None
    if params.adaptive:
        logits = torch.zeros(num_classes, device=device)
        logits[c] = 2.0
        logits.requires_grad_(True)
        variables.append(logits)

    def objective(dummy: torch.Tensor | None = None) -> torch.Tensor:
        target = torch.softmax(logits, dim=0) if logits is not None else None
        dummy = to_image(latent) if dummy is None else dummy
        replay = replayed_gradient(network, synthetic_class, dummy, c, observed.metric, target)
        mismatch = ((replay - wanted) ** 2).sum()
        if params.tv_weight:
            mismatch = mismatch + params.tv_weight * total_variation(dummy)
        return mismatch

    if params.optimiser == "lbfgs":
        optimiser = torch.optim.LBFGS(
            variables, lr=params.lr, max_iter=params.max_evaluations_per_step,
            history_size=100, line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        for _ in range(params.iterations):
            # LBFGS.step returns the loss at the start of the step: the check costs nothing.
            if float(optimiser.step(closure).detach()) / scale < params.stop_below:
                break
    else:
        optimiser = torch.optim.Adam(variables, lr=params.lr)
        for _ in range(params.iterations):
            optimiser.zero_grad()
            loss = objective()
            if float(loss.detach()) / scale < params.stop_below:
                break
            loss.backward()
            optimiser.step()
    images = finish(latent.detach())
    with torch.enable_grad():
        final = float(objective(images).detach())
    if not math.isfinite(final):
        final = math.inf
    label = torch.softmax(logits.detach(), 0).cpu() if logits is not None else None
    return final, images.cpu(), label


def save_observed_update(observed: ObservedUpdate, spec: NetworkSpec, path: Path,
                         truth: torch.Tensor | None = None, extra: dict | None = None) -> Path:
    """An attack input file: what the server saw, the client's network, optional truth."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "synthetic_before": observed.synthetic_before.cpu(),
        "synthetic_after": observed.synthetic_after.cpu(),
        "network_spec": dataclasses.asdict(spec),
        "network_state": {k: v.cpu() for k, v in observed.network.state_dict().items()},
        "lr_img": observed.lr_img,
        "batch_real": observed.batch_real,
        "metric": observed.metric,
        **({"truth": truth.cpu()} if truth is not None else {}),
        **(extra or {}),
    }
    torch.save(payload, path)
    return path


def load_observed_update(path: Path, device: torch.device | str = "cpu") -> tuple[ObservedUpdate, dict]:
    """Inverse of `save_observed_update`: (ObservedUpdate, the raw payload)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    values = dict(payload["network_spec"])
    values["image_size"] = tuple(values["image_size"])
    network = ConvNet(NetworkSpec(**values))
    network.load_state_dict(payload["network_state"])
    observed = ObservedUpdate(
        payload["synthetic_before"],
        payload["synthetic_after"],
        network.to(device),
        float(payload["lr_img"]),
        int(payload["batch_real"]),
        str(payload["metric"]),
    )
    return observed, payload


def score(reconstruction: torch.Tensor, truth: torch.Tensor, spec: DatasetSpec) -> LeakageScore:
    """MSE in normalised space and MSE/PSNR in [0, 1] pixels, each reconstruction paired
    with a ground-truth image of its class by optimal assignment (on normalised MSE)."""
    normalised, pixel = [], []
    for recon_class, truth_class in zip(reconstruction, truth):
        recon_flat = recon_class.flatten(1).double()
        truth_flat = truth_class.flatten(1).double()
        cost = ((recon_flat[:, None, :] - truth_flat[None, :, :]) ** 2).mean(dim=2).numpy()
        rows, cols = linear_sum_assignment(cost)
        for row, col in zip(rows, cols):
            normalised.append(float(cost[row, col]))
            a = denormalise(recon_class[row : row + 1].float(), spec)
            b = denormalise(truth_class[col : col + 1].float(), spec)
            pixel.append(float(((a - b) ** 2).mean()))
    mse_pixel = float(np.mean(pixel))
    return LeakageScore(
        mse_normalised=float(np.mean(normalised)),
        mse_pixel=mse_pixel,
        psnr=10 * math.log10(1.0 / max(mse_pixel, 1e-12)),
    )


def save_comparison(reconstruction: torch.Tensor, truth: torch.Tensor, spec: DatasetSpec, path: Path) -> Path:
    """PNG: per class, the ground-truth images (top row) above their reconstructions."""
    from torchvision.utils import save_image

    num_classes, batch = truth.shape[:2]
    top = denormalise(truth.flatten(0, 1).float(), spec)
    bottom = denormalise(reconstruction.flatten(0, 1).float(), spec)
    grid = torch.cat([top, bottom])
    scale = max(1, 56 // grid.shape[-1])
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, str(path), nrow=num_classes * batch, padding=2)
    return path
