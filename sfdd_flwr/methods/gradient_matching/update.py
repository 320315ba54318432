"""DC gradient matching: the local update a client runs each round.

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

from ...data.datasets import ClassPools
from ...models.convnet import NetworkSpec, build_network
from ...models.training import train_network_epoch
from ...progress import ProgressTicker
from ..base import UpdateHooks, class_labels
from .distance import match_distance
from .settings import GradientMatchingSettings


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


def initial_synthetic_images(spec: NetworkSpec, ipc: int, generator: torch.Generator) -> torch.Tensor:
    """Noise initialisation: N(0, 1) in normalised space (the server holds no data)."""
    height, width = spec.image_size
    return torch.randn(
        (spec.num_classes * ipc, spec.channels, height, width), generator=generator
    )


def local_distill_update(
    synthetic_images: torch.Tensor,
    real: ClassPools,
    network_spec: NetworkSpec,
    params: GradientMatchingSettings,
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
    images are left untouched. `progress` receives a line every `progress_seconds`.
    The returned matching loss is DC's `loss_avg`: the mean over matched (class, outer
    step) pairs.
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
    labels = class_labels(num_classes, ipc).to(device)
    outer_loop, inner_loop = params.loops(ipc)
    hooks = hooks or UpdateHooks()
    buffer = (
        torch.zeros_like(images)
        if velocity is None
        else velocity.detach().to(device=device, dtype=torch.float32).clone()
    )
    network = build_network(network_spec, network_seed, device)
    network_parameters = list(network.parameters())
    network_optimizer = torch.optim.SGD(network_parameters, lr=params.lr_net, momentum=params.momentum_net)
    present = [c for c, count in enumerate(real.class_counts()) if count > 0]
    ticker = ProgressTicker(progress, progress_seconds)
    loss_sum, loss_terms = 0.0, 0

    for outer_step in range(outer_loop):
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
            loss = loss + match_distance(grads_real, grads_synthetic, params.match_metric)
            ticker.tick(
                lambda: f"outer step {outer_step + 1}/{outer_loop}, "
                f"class {position + 1}/{len(present)}"
            )
        if present:
            (image_grad,) = torch.autograd.grad(loss, [images])
            with torch.no_grad():
                buffer.mul_(params.momentum_img).add_(image_grad)
                images.sub_(params.lr_img * buffer)
            loss_sum += float(loss.detach())
            loss_terms += len(present)

        if outer_step == outer_loop - 1:
            break
        frozen_images, frozen_labels = images.detach().clone(), labels
        for inner_epoch in range(inner_loop):
            train_network_epoch(
                network,
                network_optimizer,
                frozen_images,
                frozen_labels,
                params.batch_train,
                generator,
            )
            ticker.tick(
                lambda: f"outer step {outer_step + 1}/{outer_loop}, "
                f"network epoch {inner_epoch + 1}/{inner_loop}"
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
