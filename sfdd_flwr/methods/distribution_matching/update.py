"""Distribution matching (Zhao & Bilen, WACV 2023): the local update a client runs each round.

Each step draws a freshly initialised ConvNet, embeds a real batch and the synthetic
images of every class with its convolutional features (no training: the network is
only a random feature map), and moves the synthetic images down the summed squared
distance between the classes' mean embeddings. No bi-level loop and no network
training, which is why DM is far cheaper than gradient matching. No Flower import.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...augmentation.dsa import DsaParams, siamese
from ...data.datasets import ClassPools
from ...models.convnet import NetworkSpec, build_network
from ...progress import DEFAULT_PROGRESS_SECONDS, ProgressTicker
from ...seeding import derive_seed
from .settings import DistributionMatchingSettings


@dataclass
class DistributionMatchingUpdate:
    """Result of `distribution_matching_update`; tensors are on the CPU."""

    images: torch.Tensor
    velocity: torch.Tensor
    distance: float
    matched_classes: int
    seconds: float


def mean_embedding_distance(real_embeddings: torch.Tensor, synthetic_embeddings: torch.Tensor) -> torch.Tensor:
    """|| mean(real) - mean(synthetic) ||^2 over the feature dimension (one class)."""
    return (real_embeddings.mean(dim=0) - synthetic_embeddings.mean(dim=0)).square().sum()


def distribution_matching_update(
    synthetic_images: torch.Tensor,
    real: ClassPools,
    network_spec: NetworkSpec,
    params: DistributionMatchingSettings,
    network_seed: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    velocity: torch.Tensor | None = None,
    dsa: DsaParams | None = None,
    augment_generator: torch.Generator | None = None,
    progress: Callable[[str], None] | None = None,
    progress_seconds: float = DEFAULT_PROGRESS_SECONDS,
) -> DistributionMatchingUpdate:
    """`dm-steps` momentum-SGD steps of the synthetic images on the mean-embedding distance.

    Classes without local real images are left untouched. The reported distance is the
    mean over (class, step) pairs.
    """
    if dsa is not None and augment_generator is None:
        raise ValueError("DSA needs an augment_generator")
    started = time.monotonic()
    num_classes = network_spec.num_classes
    ipc = synthetic_images.shape[0] // num_classes
    if ipc * num_classes != synthetic_images.shape[0]:
        raise ValueError(f"{synthetic_images.shape[0]} synthetic images do not split into {num_classes} classes")
    images = synthetic_images.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
    buffer = (
        torch.zeros_like(images) if velocity is None
        else velocity.detach().to(device=device, dtype=torch.float32).clone()
    )
    present = [c for c, count in enumerate(real.class_counts()) if count > 0]
    ticker = ProgressTicker(progress, progress_seconds)
    distance_sum = 0.0
    for step in range(params.dm_steps):
        if not present:
            break
        network = build_network(network_spec, derive_seed(network_seed, step), device)
        network.train()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        loss = torch.zeros((), device=device)
        for c in present:
            real_batch = real.sample(c, params.dm_batch_real, generator).to(device)
            class_images = images[c * ipc : (c + 1) * ipc]
            if dsa is not None:
                real_batch, class_images = siamese(real_batch, class_images, dsa, augment_generator)
            with torch.no_grad():
                real_embeddings = network.features(real_batch)
            loss = loss + mean_embedding_distance(real_embeddings, network.features(class_images))
        (image_grad,) = torch.autograd.grad(loss, [images])
        with torch.no_grad():
            buffer.mul_(params.dm_momentum_img).add_(image_grad)
            images.sub_(params.dm_lr_img * buffer)
        distance_sum += float(loss.detach())
        ticker.tick(lambda: f"distribution matching step {step + 1}/{params.dm_steps}")
    steps = params.dm_steps if present else 0
    return DistributionMatchingUpdate(
        images=images.detach().cpu(),
        velocity=buffer.detach().cpu(),
        distance=distance_sum / max(steps * len(present), 1),
        matched_classes=len(present),
        seconds=time.monotonic() - started,
    )
