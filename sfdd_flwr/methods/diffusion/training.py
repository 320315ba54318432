"""A client's local training of the denoiser: the standard DDPM objective on its own
images, with label dropout for classifier-free guidance, optionally with DP-SGD.

Every draw (batches, noise, timesteps, dropped labels, DP noise) comes from the client's
seeded generator, so a round is reproducible on CPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...progress import DEFAULT_PROGRESS_SECONDS, ProgressTicker
from .settings import DiffusionSettings

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

    from .privacy import PrivateTraining


def round_learning_rate(params: DiffusionSettings, server_round: int, num_rounds: int) -> float:
    """Cosine decay from `diffusion-lr` (round 1) to `diffusion-lr-final` (last round)."""
    if num_rounds <= 1:
        return params.diffusion_lr
    progress = (server_round - 1) / (num_rounds - 1)
    return params.diffusion_lr_final + 0.5 * (params.diffusion_lr - params.diffusion_lr_final) * (
        1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))
    )


def autocast(params: DiffusionSettings, device: torch.device):
    """bfloat16 autocast when asked for (`diffusion-precision`), else a no-op context."""
    if params.diffusion_precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def denoising_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, t)
    return noise


def denoising_losses(
    model: UNet2DModel,
    scheduler: DDPMScheduler,
    clean: torch.Tensor,
    labels: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """Per-image mean squared error of the denoiser at timesteps `t` with `noise`."""
    noisy = scheduler.add_noise(clean, noise, t)
    prediction = model(noisy, t, class_labels=labels).sample.float()
    target = denoising_target(scheduler, clean, noise, t)
    return F.mse_loss(prediction, target, reduction="none").flatten(1).mean(dim=1)


@dataclass
class TrainingResult:
    loss: float
    images_seen: int
    seconds: float


class BatchDrawer:
    """Seeded batches: shuffled epochs without replacement (non-private training), or
    Poisson sampling with rate batch / N (DP-SGD: what the accountant assumes)."""

    def __init__(self, count: int, batch: int, poisson: bool, generator: torch.Generator) -> None:
        self.count, self.batch, self.poisson, self.generator = count, batch, poisson, generator
        self.order = torch.empty(0, dtype=torch.long)

    @property
    def sample_rate(self) -> float:
        return min(1.0, self.batch / self.count)

    def next(self) -> torch.Tensor:
        if self.poisson:
            return torch.nonzero(torch.rand(self.count, generator=self.generator) < self.sample_rate).flatten()
        if self.order.numel() < min(self.batch, self.count):
            self.order = torch.cat([self.order, torch.randperm(self.count, generator=self.generator)])
        chosen, self.order = self.order[: self.batch], self.order[self.batch :]
        return chosen


def train_locally(
    model: UNet2DModel,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    params: DiffusionSettings,
    learning_rate: float,
    null_label: int,
    generator: torch.Generator,
    device: torch.device,
    private: PrivateTraining | None = None,
    progress: Callable[[str], None] | None = None,
    progress_seconds: float = DEFAULT_PROGRESS_SECONDS,
) -> TrainingResult:
    """`diffusion-local-steps` AdamW steps on (images in [-1, 1], labels); with `private`,
    each step is a DP-SGD step (per-example clipping and Gaussian noise, Opacus)."""
    started = time.monotonic()
    model.to(device).train()
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    trained: torch.nn.Module = model
    if private is not None:
        trained, optimizer = private.wrap(model, optimizer, generator)
    drawer = BatchDrawer(len(labels), params.diffusion_batch, private is not None, generator)
    ticker = ProgressTicker(progress, progress_seconds)
    total, seen = 0.0, 0
    for step in range(params.diffusion_local_steps):
        chosen = drawer.next()
        if chosen.numel() == 0:  # an empty Poisson batch: the step still counts for privacy
            if private is not None:
                private.count_step(drawer.sample_rate)
            continue
        clean = images[chosen.to(images.device)]
        batch_labels = labels[chosen.to(labels.device)].clone()
        noise = torch.randn(clean.shape, generator=generator).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(chosen),), generator=generator).to(device)
        dropped = (torch.rand(len(chosen), generator=generator) < params.diffusion_label_dropout).to(device)
        batch_labels[dropped] = null_label
        with autocast(params, device):
            loss = denoising_losses(trained, scheduler, clean, batch_labels, noise, t).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if private is not None:
            private.count_step(drawer.sample_rate)
        total += float(loss.detach()) * len(chosen)
        seen += len(chosen)
        ticker.tick(lambda: f"denoiser step {step + 1}/{params.diffusion_local_steps}, loss {float(loss):.4f}")
    if private is not None:
        private.unwrap(trained)
    return TrainingResult(total / max(seen, 1), seen, time.monotonic() - started)
