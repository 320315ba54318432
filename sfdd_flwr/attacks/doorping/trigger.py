"""Backdoor triggers for dataset distillation: Doorping (Liu et al. 2023) and a naive patch.

A trigger is a full image (black outside a small square patch) and a mask that is 1 on
the patch; stamping replaces the masked pixels: x (1 - m) + m t. Everything is in the
dataset's normalised space. No Flower import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...data.datasets import DatasetSpec, LabelledImages, normalise
from ...models.convnet import ConvNet


@dataclass
class Trigger:
    pattern: torch.Tensor  # [C, H, W], normalised
    mask: torch.Tensor  # [C, H, W], 1 on the patch, 0 elsewhere
    target: int

    def to(self, device: torch.device | str) -> Trigger:
        return Trigger(self.pattern.to(device), self.mask.to(device), self.target)

    def as_dict(self) -> dict:
        return {"pattern": self.pattern.cpu(), "mask": self.mask.cpu(), "target": self.target}

    @classmethod
    def from_dict(cls, values: dict) -> Trigger:
        return cls(values["pattern"], values["mask"], int(values["target"]))


def patch_mask(spec: DatasetSpec, size: int, margin: int = 1) -> torch.Tensor:
    """1 on a `size` x `size` square in the bottom-right corner, `margin` px from the edges."""
    height, width = spec.image_size
    if size < 1 or size + margin > min(height, width):
        raise ValueError(f"trigger size {size} does not fit a {height}x{width} image")
    mask = torch.zeros(spec.channels, height, width)
    mask[:, height - margin - size : height - margin, width - margin - size : width - margin] = 1.0
    return mask


def initial_trigger(
    spec: DatasetSpec, size: int, target: int, generator: torch.Generator, white: bool = False
) -> Trigger:
    """Black image with a patch of random pixel values in [1, 255] (Doorping's start),
    or of white pixels (the naive backdoor)."""
    mask = patch_mask(spec, size)
    if white:
        pixels = torch.full(mask.shape, 255, dtype=torch.uint8)
    else:
        pixels = torch.randint(1, 256, mask.shape, generator=generator, dtype=torch.int64).to(torch.uint8)
    raw = torch.where(mask.bool(), pixels, torch.zeros_like(pixels))
    return Trigger(normalise(raw.unsqueeze(0), spec)[0], mask, target)


def mean_trigger(triggers: Sequence[Trigger]) -> Trigger:
    """The trigger colluding backdoor clients share: the mean of their patterns. They must
    have the same mask and target (same `doorping-trigger-size` and `doorping-target`)."""
    if not triggers:
        raise ValueError("no trigger to average")
    first = triggers[0]
    for other in triggers[1:]:
        if other.target != first.target or not torch.equal(other.mask.cpu(), first.mask.cpu()):
            raise ValueError("colluding triggers must have the same mask and target")
    pattern = torch.stack([trigger.pattern.cpu() for trigger in triggers]).mean(dim=0)
    return Trigger(pattern, first.mask.cpu(), first.target)


def stamp(images: torch.Tensor, trigger: Trigger) -> torch.Tensor:
    """Images with the trigger pasted on its mask: x (1 - m) + m t (a new tensor)."""
    mask = trigger.mask.to(images.device, images.dtype)
    return images * (1 - mask) + mask * trigger.pattern.to(images.device, images.dtype)


def poison_indices(count: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """round(fraction * count) distinct indices (at least one), sorted."""
    chosen = max(1, round(fraction * count))
    return torch.randperm(count, generator=generator)[:chosen].sort().values


def poison(data: LabelledImages, indices: torch.Tensor, trigger: Trigger) -> LabelledImages:
    """A copy of `data` whose `indices` are stamped and relabelled to the target class."""
    images, labels = data.images.clone(), data.labels.clone()
    index = indices.to(images.device)
    images[index] = stamp(images[index], trigger)
    labels[index] = trigger.target
    return LabelledImages(images, labels)


def valid_range(spec: DatasetSpec, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel normalised values of pixel 0 and pixel 1, shaped [C, 1, 1]."""
    mean = torch.tensor(spec.mean, device=device).view(-1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(-1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def select_neuron(network: ConvNet) -> int:
    """Doorping's neuron (`layer=-2`): the unit of the last hidden layer with the largest
    summed |weight| on its dense connections.

    With a hidden dense layer (Doorping's reference ConvNet, `net-hidden`), that is the
    hidden unit with the largest summed |incoming weight|, argmax_j sum_i |W_hidden[j, i]|,
    exactly as the reference. DC's ConvNet has no hidden dense layer; its penultimate
    features come out of convolutions, so the one dense weight attached to them is the
    classifier's: argmax_j sum_c |W[c, j]|.
    """
    if network.hidden is not None:
        return int(network.hidden.weight.detach().abs().sum(dim=1).argmax())
    return int(network.classifier.weight.detach().abs().sum(dim=0).argmax())


def trigger_layer(network: ConvNet, images: torch.Tensor) -> torch.Tensor:
    """The activations `select_neuron` indexes: the hidden dense layer's output before
    its ReLU (where the reference hooks it), or DC's flattened convolutional features."""
    features = network.features(images)
    return features if network.hidden is None else network.hidden(features)


@dataclass
class TriggerUpdate:
    trigger: Trigger
    neuron: int
    steps: int
    initial_activation: float
    final_activation: float
    pinned: bool = False


def update_trigger(
    network: ConvNet,
    trigger: Trigger,
    spec: DatasetSpec,
    amplification: float = 10.0,
    max_steps: int = 1000,
    lr: float = 0.08,
    stop_loss: float = 0.5,
    stop_when_pinned: bool = True,
    clamp: bool = False,
) -> TriggerUpdate:
    """Doorping's trigger step: drive the selected neuron's activation on the trigger image
    to `amplification` x its initial value (Adam on the patch only, early stop when the
    squared error falls below `stop_loss`); with `clamp`, pixels stay in the valid range.

    With a hidden dense layer the error is absolute, as in the reference, whose threshold
    (0.5) suits that layer's activations of order 1. On DC's ConvNet it is measured in
    units of the initial activation: the penultimate features (after ReLU and pooling) on
    a black image with a small patch are often a few hundredths, and an absolute 0.5 then
    ended the update before its first step. A feature at exactly 0 has no "10x" to reach:
    nothing moves.

    With the clamp, every patch pixel is often pinned at 0 or 1 before the goal is reached; then a
    step changes nothing, the next gradient is the same, and every later step would leave
    the trigger as it is. `stop_when_pinned` stops there (see `pinned_for_good`), with the
    trigger the remaining steps would have returned, instead of running to `max_steps`.
    `clamp=False` is the reference's behaviour: patch values may leave the pixel range."""
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    neuron = select_neuron(network)
    mask = trigger.mask.to(device)
    low, high = valid_range(spec, device)
    pattern = trigger.pattern.to(device).clone().unsqueeze(0).requires_grad_(True)
    optimizer = torch.optim.Adam([pattern], lr=lr, betas=(0.9, 0.99))
    with torch.no_grad():
        initial = trigger_layer(network, pattern)[0, neuron].detach()
    goal = amplification * initial
    unit = initial.abs().clamp_min(1e-12) if network.hidden is None else torch.ones_like(initial)
    activation = initial
    steps = 0
    pinned = False
    for steps in range(1, max_steps + 1):
        activation = trigger_layer(network, pattern)[0, neuron]
        loss = F.mse_loss(activation / unit, goal / unit)
        if float(loss.detach()) < stop_loss:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        pattern.grad.mul_(mask)
        before = pattern.detach().clone() if stop_when_pinned and clamp else None
        optimizer.step()
        if not clamp:
            continue
        with torch.no_grad():
            pattern.copy_(torch.maximum(torch.minimum(pattern, high), low))
            if before is not None and torch.equal(pattern, before):
                pinned = pinned_for_good(pattern, pattern.grad, optimizer.state[pattern]["exp_avg"], mask, low, high)
                if pinned:
                    break
    network.train(was_training)
    new_pattern = pattern.detach()[0] * mask + trigger.pattern.to(device) * (1 - mask)
    return TriggerUpdate(
        Trigger(new_pattern.cpu(), trigger.mask, trigger.target),
        neuron,
        steps,
        float(initial),
        float(activation.detach()),
        pinned,
    )


def pinned_for_good(
    pattern: torch.Tensor, grad: torch.Tensor, first_moment: torch.Tensor, mask: torch.Tensor,
    low: torch.Tensor, high: torch.Tensor,
) -> bool:
    """Whether no later Adam step can move the clamped pattern: every patch pixel sits on
    a bound, and both the gradient and Adam's first moment push it outward. The next
    gradient is then the same (same input), so the moment keeps its sign, every step
    points outward and the clamp undoes it."""
    inside = mask.expand_as(pattern).bool()
    low, high = low.expand_as(pattern), high.expand_as(pattern)
    out_low = (pattern <= low) & (grad >= 0) & (first_moment >= 0)
    out_high = (pattern >= high) & (grad <= 0) & (first_moment <= 0)
    return bool((out_low | out_high)[inside].all())


@torch.no_grad()
def attack_success_rate(
    network: torch.nn.Module, test: LabelledImages, trigger: Trigger, batch_size: int = 1000
) -> float:
    """Share of triggered test images, excluding the target class, classified as the target."""
    network.eval()
    device = next(network.parameters()).device
    keep = test.labels != trigger.target
    images = test.images[keep.to(test.images.device)]
    hits, total = 0, int(keep.sum())
    for start in range(0, images.shape[0], batch_size):
        batch = stamp(images[start : start + batch_size].to(device), trigger)
        batch = batch.contiguous(memory_format=torch.channels_last)
        hits += int((network(batch).argmax(dim=1) == trigger.target).sum())
    return hits / max(total, 1)
