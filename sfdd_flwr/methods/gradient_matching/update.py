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

from ...augmentation.dsa import DsaParams, augment, siamese
from ...data.datasets import ClassPools
from ...models.convnet import NetworkSpec, build_network
from ...models.training import train_network_epoch
from ...progress import DEFAULT_PROGRESS_SECONDS, ProgressTicker
from ..base import UpdateHooks, class_labels
from .batched import BATCHABLE_NORMS, ClassGradients, one_hot_targets, stack_batches
from .distance import batched_match_distance, match_distance
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
    progress_seconds: float = DEFAULT_PROGRESS_SECONDS,
    hooks: UpdateHooks | None = None,
    dsa: DsaParams | None = None,
    augment_generator: torch.Generator | None = None,
) -> LocalUpdate:
    """One DC iteration of gradient matching of `synthetic_images` against `real`.

    `velocity` is the synthetic images' momentum buffer from an earlier call (None
    starts at zero, as a fresh torch SGD optimizer would). Classes without local real
    images are left untouched. `progress` receives a line every `progress_seconds`.
    The returned matching loss is DC's `loss_avg`: the mean over matched (class, outer
    step) pairs. With `dsa` (DSA), each class's real batch and synthetic images get one
    and the same transformation, and the inner-loop network trains on augmented S (a
    transformation per image), as in the DSA reference; both draw from `augment_generator`.
    """
    started = time.monotonic()
    if dsa is not None and augment_generator is None:
        raise ValueError("DSA needs an augment_generator")
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

    vectorised = params.vectorised_matching and network_spec.net_norm in BATCHABLE_NORMS
    class_gradients = ClassGradients(network) if vectorised else None

    for outer_step in range(outer_loop):
        network.train()
        if present:
            batches = draw_class_batches(
                images, ipc, present, real, params, generator, hooks, outer_step, dsa, augment_generator
            )
            if class_gradients is not None:
                loss = _batched_matching_loss(class_gradients, batches, present, num_classes, params.match_metric)
                ticker.tick(lambda: f"outer step {outer_step + 1}/{outer_loop}")
            else:
                loss = _per_class_matching_loss(
                    network, batches, present, params.match_metric, lambda position: ticker.tick(
                        lambda: f"outer step {outer_step + 1}/{outer_loop}, class {position + 1}/{len(present)}"
                    ),
                )
            (image_grad,) = torch.autograd.grad(loss, [images])
            with torch.no_grad():
                buffer.mul_(params.momentum_img).add_(image_grad)
                images.sub_(params.lr_img * buffer)
            loss_sum += float(loss.detach())
            loss_terms += len(present)

        if outer_step == outer_loop - 1:
            break
        frozen_images, frozen_labels = images.detach().clone(), labels
        augment_inner = (lambda batch: augment(batch, dsa, augment_generator)) if dsa is not None else None
        for inner_epoch in range(inner_loop):
            train_network_epoch(
                network,
                network_optimizer,
                frozen_images,
                frozen_labels,
                params.batch_train,
                generator,
                augment=augment_inner,
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


@dataclass
class ClassBatch:
    """What one class contributes to an outer step: its real batch and synthetic images
    (augmented alike under DSA) and their targets (None = the one-hot class)."""

    real: torch.Tensor
    synthetic: torch.Tensor
    real_target: torch.Tensor | None
    synthetic_target: torch.Tensor | None


def draw_class_batches(
    images: torch.Tensor,
    ipc: int,
    present: list[int],
    real: ClassPools,
    params: GradientMatchingSettings,
    generator: torch.Generator,
    hooks: UpdateHooks,
    outer_step: int,
    dsa: DsaParams | None,
    augment_generator: torch.Generator | None,
) -> list[ClassBatch]:
    """Per present class, in class order: targets, then the real batch, then (DSA) one
    transformation drawn and applied to both. Both matching paths use this, so
    they consume every generator identically."""
    batches = []
    for c in present:
        real_target, synthetic_target = (
            hooks.targets(c, outer_step) if hooks.targets is not None else (None, None)
        )
        real_batch = real.sample(c, params.batch_real, generator).to(images.device, images.dtype)
        class_images = images[c * ipc : (c + 1) * ipc]
        if dsa is not None:
            real_batch, class_images = siamese(real_batch, class_images, dsa, augment_generator)
        batches.append(ClassBatch(real_batch, class_images, real_target, synthetic_target))
    return batches


def _per_class_matching_loss(
    network: torch.nn.Module, batches: list[ClassBatch], present: list[int], metric: str, tick: Callable[[int], None]
) -> torch.Tensor:
    """DC's loop: per class, a real gradient and a synthetic one with its graph."""
    parameters = list(network.parameters())
    loss = torch.zeros((), device=batches[0].real.device)
    for position, (c, batch) in enumerate(zip(present, batches)):
        real_loss = class_loss(network(batch.real), c, batch.real_target)
        grads_real = [grad.detach() for grad in torch.autograd.grad(real_loss, parameters)]
        synthetic_loss = class_loss(network(batch.synthetic), c, batch.synthetic_target)
        grads_synthetic = torch.autograd.grad(synthetic_loss, parameters, create_graph=True)
        loss = loss + match_distance(grads_real, grads_synthetic, metric)
        tick(position)
    return loss


def _batched_matching_loss(
    class_gradients: ClassGradients, batches: list[ClassBatch], present: list[int], num_classes: int, metric: str
) -> torch.Tensor:
    """The same sum of per-class distances, every class in one batched computation."""
    reference = batches[0].real
    one_hot = one_hot_targets(present, num_classes, reference.device).to(reference.dtype)

    def targets(chosen: list[torch.Tensor | None]) -> torch.Tensor:
        return torch.stack([
            one_hot[position] if target is None else target.to(reference.device, reference.dtype)
            for position, target in enumerate(chosen)
        ])

    real_images, real_weights = stack_batches([batch.real for batch in batches])
    grads_real = [
        grad.detach()
        for grad in class_gradients(real_images, targets([b.real_target for b in batches]), real_weights)
    ]
    synthetic_images, synthetic_weights = stack_batches([batch.synthetic for batch in batches])
    grads_synthetic = class_gradients(
        synthetic_images, targets([b.synthetic_target for b in batches]), synthetic_weights
    )
    return batched_match_distance(grads_real, grads_synthetic, metric)
