"""DC gradient matching: the local distillation update a client runs each round.

One call is one DC iteration on the caller's real data: a freshly initialised
network; `outer_loop` steps, each matching per-class gradients of the synthetic
images against a real batch of the same class and taking one momentum-SGD step on
the synthetic images; between outer steps, `inner_loop` epochs of network training on
the synthetic set. No Flower import: the centralized baseline calls the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import ClassPools
from .matching import match_distance
from .models import NetworkSpec, build_network

# (outer_loop, inner_loop) of the DC reference, by images per class.
IPC_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1),
    10: (10, 50),
    20: (20, 25),
    30: (30, 20),
    40: (40, 15),
    50: (50, 10),
}


def loops_for_ipc(ipc: int) -> tuple[int, int]:
    """DC's (outer, inner) loop counts for `ipc` images per class.

    For IPC values outside DC's table, our rule: outer = ipc (as in every DC entry
    from 10 up) and inner = the inner count of the next larger table entry (so 2-9 ->
    50, 11-19 -> 25, ...), or 10 above 50.
    """
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    if ipc in IPC_LOOPS:
        return IPC_LOOPS[ipc]
    larger = [entry for entry in sorted(IPC_LOOPS) if entry >= ipc]
    inner = IPC_LOOPS[larger[0]][1] if larger else IPC_LOOPS[max(IPC_LOOPS)][1]
    return ipc, inner


@dataclass(frozen=True)
class DistillParams:
    """Hyperparameters of one local update (DC defaults)."""

    outer_loop: int = 1
    inner_loop: int = 1
    batch_real: int = 256
    lr_images: float = 0.1
    momentum_images: float = 0.5
    lr_network: float = 0.01
    momentum_network: float = 0.5
    batch_train: int = 256
    metric: str = "ours"


@dataclass
class UpdateHooks:
    """Where a defence or an attack changes the local update (None everywhere = DC).

    `targets(class_index, outer_step)` returns the target distributions `[C]` used for
    the real and for the synthetic gradient of that class at that step (None = one-hot);
    `after_network_training(network, outer_step)` runs after each inner-loop training.
    """

    targets: Callable[[int, int], tuple[torch.Tensor | None, torch.Tensor | None]] | None = None
    after_network_training: Callable[[torch.nn.Module, int], None] | None = None


def class_loss(logits: torch.Tensor, class_index: int, target: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy against the one-hot class, or against a soft target distribution."""
    if target is None:
        labels = torch.full((logits.shape[0],), class_index, device=logits.device)
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, target.to(logits.device, logits.dtype).expand_as(logits))


@dataclass
class LocalUpdate:
    """Result of `local_distill_update`; tensors are on the CPU."""

    images: torch.Tensor
    velocity: torch.Tensor
    matching_loss: float
    matched_classes: int
    seconds: float


def synthetic_labels(num_classes: int, ipc: int) -> torch.Tensor:
    """Fixed labels of a synthetic set: [0]*ipc + [1]*ipc + ... (never transmitted)."""
    return torch.arange(num_classes).repeat_interleave(ipc)


def initial_synthetic_images(spec: NetworkSpec, ipc: int, generator: torch.Generator) -> torch.Tensor:
    """Noise initialisation: N(0, 1) in normalised space (the server holds no data)."""
    height, width = spec.image_size
    return torch.randn(
        (spec.num_classes * ipc, spec.channels, height, width), generator=generator
    )


class ProgressTicker:
    """Calls `emit(text)` at most once every `interval_seconds` (for long local work)."""

    def __init__(self, emit: Callable[[str], None] | None, interval_seconds: float = 30.0):
        self.emit = emit
        self.interval_seconds = interval_seconds
        self.started = time.monotonic()
        self.last = self.started

    def tick(self, describe: Callable[[], str]) -> None:
        if self.emit is None:
            return
        now = time.monotonic()
        if now - self.last >= self.interval_seconds:
            self.last = now
            self.emit(f"{describe()} ({now - self.started:.0f} s elapsed)")


def train_network_epoch(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """One shuffled epoch of cross-entropy training; returns the mean loss."""
    network.train()
    order = torch.randperm(images.shape[0], generator=generator).to(images.device)
    total, seen = 0.0, 0
    for start in range(0, images.shape[0], batch_size):
        batch = order[start : start + batch_size]
        inputs = images[batch]
        if augment is not None:
            inputs = augment(inputs)
        loss = F.cross_entropy(network(inputs), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * batch.numel()
        seen += batch.numel()
    return total / max(seen, 1)


def local_distill_update(
    synthetic_images: torch.Tensor,
    real: ClassPools,
    network_spec: NetworkSpec,
    params: DistillParams,
    network_seed: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    velocity: torch.Tensor | None = None,
    progress: Callable[[str], None] | None = None,
    progress_seconds: float = 30.0,
    hooks: UpdateHooks | None = None,
) -> LocalUpdate:
    """One DC iteration of gradient matching of `synthetic_images` against `real`.

    `velocity` is the synthetic images' momentum buffer from an earlier call (None
    starts at zero, as a fresh torch SGD optimizer would). Classes without local real
    images are left untouched. `progress` receives a line every `progress_seconds`. The returned matching loss is DC's `loss_avg`: the mean
    over matched (class, outer step) pairs.
    """
    started = time.monotonic()
    num_classes = network_spec.num_classes
    ipc = synthetic_images.shape[0] // num_classes
    if ipc * num_classes != synthetic_images.shape[0]:
        raise ValueError(
            f"{synthetic_images.shape[0]} synthetic images do not split into {num_classes} classes"
        )
    images = synthetic_images.detach().to(device=device, dtype=torch.float32).clone()
    images.requires_grad_(True)
    labels = synthetic_labels(num_classes, ipc).to(device)
    hooks = hooks or UpdateHooks()
    buffer = (
        torch.zeros_like(images)
        if velocity is None
        else velocity.detach().to(device=device, dtype=torch.float32).clone()
    )
    network = build_network(network_spec, network_seed, device)
    network_parameters = list(network.parameters())
    network_optimizer = torch.optim.SGD(
        network_parameters, lr=params.lr_network, momentum=params.momentum_network
    )
    present = [c for c, count in enumerate(real.class_counts()) if count > 0]
    ticker = ProgressTicker(progress, progress_seconds)
    loss_sum, loss_terms = 0.0, 0

    for outer_step in range(params.outer_loop):
        network.train()
        loss = torch.zeros((), device=device)
        for position, c in enumerate(present):
            real_target, synthetic_target = (
                hooks.targets(c, outer_step) if hooks.targets is not None else (None, None)
            )
            real_batch = real.sample(c, params.batch_real, generator).to(device)
            real_loss = class_loss(network(real_batch), c, real_target)
            grads_real = [
                grad.detach() for grad in torch.autograd.grad(real_loss, network_parameters)
            ]
            class_images = images[c * ipc : (c + 1) * ipc]
            synthetic_loss = class_loss(network(class_images), c, synthetic_target)
            grads_synthetic = torch.autograd.grad(
                synthetic_loss, network_parameters, create_graph=True
            )
            loss = loss + match_distance(grads_real, grads_synthetic, params.metric)
            ticker.tick(
                lambda: f"outer step {outer_step + 1}/{params.outer_loop}, "
                f"class {position + 1}/{len(present)}"
            )
        if present:
            (image_grad,) = torch.autograd.grad(loss, [images])
            with torch.no_grad():
                buffer.mul_(params.momentum_images).add_(image_grad)
                images.sub_(params.lr_images * buffer)
            loss_sum += float(loss.detach())
            loss_terms += len(present)

        if outer_step == params.outer_loop - 1:
            break
        frozen_images, frozen_labels = images.detach().clone(), labels
        for inner_epoch in range(params.inner_loop):
            train_network_epoch(
                network,
                network_optimizer,
                frozen_images,
                frozen_labels,
                params.batch_train,
                generator,
            )
            ticker.tick(
                lambda: f"outer step {outer_step + 1}/{params.outer_loop}, "
                f"network epoch {inner_epoch + 1}/{params.inner_loop}"
            )
        if hooks.after_network_training is not None:
            hooks.after_network_training(network, outer_step)

    return LocalUpdate(
        images=images.detach().cpu(),
        velocity=buffer.detach().cpu(),
        matching_loss=loss_sum / max(loss_terms, 1),
        matched_classes=len(present),
        seconds=time.monotonic() - started,
    )
