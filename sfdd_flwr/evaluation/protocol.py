"""DC's evaluation protocol for a synthetic set (no Flower import).

Train fresh ConvNets on the synthetic set (SGD lr 0.01, momentum 0.9, weight decay
5e-4, batch 256, lr x0.1 at half the epochs) and report test accuracy mean and
(population) std over the models, as the DC reference prints them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..augmentation.dsa import DsaParams
from ..augmentation.dsa import augment as dsa_augment
from ..data.datasets import LabelledImages
from ..models.convnet import NetworkSpec, build_network
from ..models.training import train_network_epoch
from ..progress import DEFAULT_PROGRESS_SECONDS, ProgressTicker
from ..seeding import derive_seed, make_generator


AUGMENTATIONS = ("none", "dc", "dsa")


@dataclass(frozen=True)
class EvalParams:
    """The protocol with the dataset defaults resolved (`EvaluationSettings.params`);
    momentum and weight decay are DC's and not settings. `eval_augment`: `none`, `dc`
    (DC's crop/scale/rotate) or `dsa` (DSA's transformations with `dsa`'s parameters)."""

    def __post_init__(self) -> None:
        if self.eval_augment not in AUGMENTATIONS:
            raise ValueError(f"eval_augment must be one of {AUGMENTATIONS}, got {self.eval_augment!r}")
        if self.eval_augment == "dsa" and self.dsa is None:
            raise ValueError("eval_augment 'dsa' needs the DSA parameters (dsa=DsaParams(...))")

    @property
    def augmentation_name(self) -> str:
        return {"none": "", "dc": "DC's augmentation", "dsa": "DSA augmentation"}[self.eval_augment]

    eval_epochs: int = 300
    num_eval: int = 5
    eval_lr: float = 0.01
    eval_batch: int = 256
    eval_augment: str = "none"
    dsa: DsaParams | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (as DC reports them); NaN for no values."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


@dataclass
class EvalResult:
    """Test accuracy of each model, and each extra score per model (e.g. a backdoor's
    `attack_success`), by name."""

    accuracies: list[float] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return mean_and_std(self.accuracies)[0]

    @property
    def std(self) -> float:
        return mean_and_std(self.accuracies)[1]


def dc_augment(
    images: torch.Tensor,
    generator: torch.Generator,
    crop: int = 4,
    scale: float = 0.2,
    rotate: int = 45,
) -> torch.Tensor:
    """DC's 'crop_scale_rotate' augmentation, vectorised: one transform per image.

    crop: shift by an integer in [-crop, crop-1] px, border filled with the channel
    mean; scale: each axis x U(1-scale, 1+scale) about the centre, zero fill (nearest);
    rotate: an integer angle in [-rotate, rotate-1] degrees, bilinear, filled with the
    mean of the channel means. DC rotates with a cubic spline (scipy); we use bilinear.
    """
    count, channels, height, width = images.shape
    choice = torch.randint(0, 3, (count,), generator=generator)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0

    shifts = torch.randint(0, 2 * crop, (count, 2), generator=generator).float() - crop
    is_crop = choice == 0
    theta[is_crop, 0, 2] = 2.0 * shifts[is_crop, 1] / width
    theta[is_crop, 1, 2] = 2.0 * shifts[is_crop, 0] / height

    factors = 1.0 - scale + 2.0 * scale * torch.rand((count, 2), generator=generator)
    is_scale = choice == 1
    theta[is_scale, 0, 0] = 1.0 / factors[is_scale, 1]
    theta[is_scale, 1, 1] = 1.0 / factors[is_scale, 0]

    angles = torch.randint(-rotate, rotate, (count,), generator=generator).float()
    radians = angles * math.pi / 180.0
    is_rotate = choice == 2
    cos, sin = torch.cos(radians[is_rotate]), torch.sin(radians[is_rotate])
    theta[is_rotate, 0, 0] = cos
    theta[is_rotate, 0, 1] = -sin
    theta[is_rotate, 1, 0] = sin
    theta[is_rotate, 1, 1] = cos

    theta = theta.to(images.device, images.dtype)
    channel_mean = images.mean(dim=(0, 2, 3)).view(1, channels, 1, 1)
    fill = torch.zeros(count, channels, 1, 1, device=images.device, dtype=images.dtype)
    fill[is_crop.to(images.device)] = channel_mean.expand(int(is_crop.sum()), -1, -1, -1)
    fill[is_rotate.to(images.device)] = channel_mean.mean()

    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    output = torch.empty_like(images)
    nearest = (~is_rotate).to(images.device)
    rotated = is_rotate.to(images.device)
    for mask, mode in ((nearest, "nearest"), (rotated, "bilinear")):
        if mask.any():
            shifted = images[mask] - fill[mask]
            output[mask] = (
                F.grid_sample(shifted, grid[mask], mode=mode, padding_mode="zeros", align_corners=False)
                + fill[mask]
            )
    return output


@torch.no_grad()
def test_accuracy(network: torch.nn.Module, test: LabelledImages, batch_size: int = 1000) -> float:
    """Share of `test` classified correctly (test tensors may live on any device).

    The network is switched to channels-last memory format in place: on CPU this makes
    inference about 25 % faster (AvgPool2d in particular); training is done by then.
    """
    network.eval()
    network.to(memory_format=torch.channels_last)
    correct = 0
    device = next(network.parameters()).device
    for start in range(0, len(test), batch_size):
        images = test.images[start : start + batch_size].to(device)
        images = images.contiguous(memory_format=torch.channels_last)
        labels = test.labels[start : start + batch_size].to(device)
        correct += int((network(images).argmax(dim=1) == labels).sum())
    return correct / max(len(test), 1)


def training_augmentation(
    params: EvalParams, generator: torch.Generator
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The protocol's augmentation of a training batch, or None."""
    if params.eval_augment == "dc":
        return lambda batch: dc_augment(batch, generator)
    if params.eval_augment == "dsa":
        return lambda batch: dsa_augment(batch, params.dsa, generator)
    return None


def train_on_synthetic(
    images: torch.Tensor,
    labels: torch.Tensor,
    network: torch.nn.Module,
    params: EvalParams,
    generator: torch.Generator,
    ticker: ProgressTicker | None = None,
) -> torch.nn.Module:
    """DC's `evaluate_synset` training: lr x0.1 (fresh optimizer) after half the epochs."""
    augment = training_augmentation(params, generator)
    lr = params.eval_lr
    optimizer = torch.optim.SGD(
        network.parameters(), lr=lr, momentum=params.momentum, weight_decay=params.weight_decay
    )
    for epoch in range(params.eval_epochs):
        if epoch == params.eval_epochs // 2 and epoch > 0:
            lr *= 0.1
            optimizer = torch.optim.SGD(
                network.parameters(),
                lr=lr,
                momentum=params.momentum,
                weight_decay=params.weight_decay,
            )
        train_network_epoch(network, optimizer, images, labels, params.eval_batch, generator, augment)
        if ticker is not None:
            ticker.tick(lambda: f"evaluation training epoch {epoch + 1}/{params.eval_epochs}")
    return network


def evaluate_synthetic_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    test: LabelledImages,
    network_spec: NetworkSpec,
    params: EvalParams,
    run_seed: int,
    tag: object,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] | None = None,
    progress_seconds: float = DEFAULT_PROGRESS_SECONDS,
    scorers: Mapping[str, Callable[[torch.nn.Module], float]] | None = None,
) -> EvalResult:
    """Accuracy of `params.num_eval` fresh networks trained on (images, labels).

    Model k's weights and its shuffling/augmentation draws are seeded from
    (run_seed, "eval", tag, k), so an evaluation is reproducible and independent of
    how many other evaluations ran before it. Each of `scorers` (name -> score of a
    trained network, e.g. a backdoor's attack success rate) is recorded per model in
    `scores[name]`.
    """
    started = time.monotonic()
    result = EvalResult()
    images = images.detach().to(device=device, dtype=torch.float32)
    labels = labels.to(device)
    scorers = dict(scorers or {})
    result.scores = {name: [] for name in scorers}
    for model_index in range(params.num_eval):
        model_started = time.monotonic()
        network = build_network(
            network_spec, derive_seed(run_seed, "eval", tag, model_index, "network"), device
        )
        generator = make_generator(run_seed, "eval", tag, model_index, "training")
        train_on_synthetic(
            images, labels, network, params, generator, ProgressTicker(progress, progress_seconds)
        )
        accuracy = test_accuracy(network, test)
        result.accuracies.append(accuracy)
        extra = ""
        for name, score in scorers.items():
            result.scores[name].append(score(network))
            extra += f", {name.replace('_', ' ')} {100 * result.scores[name][-1]:.2f} %"
        if progress is not None:
            progress(
                f"evaluation model {model_index + 1}/{params.num_eval}: "
                f"{100 * accuracy:.2f} %{extra} ({time.monotonic() - model_started:.0f} s)"
            )
    result.seconds = time.monotonic() - started
    return result
