"""Drawing labelled samples from the generator: DDIM with classifier-free guidance,
batched, seeded, with progress lines."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .settings import DiffusionSettings
from .training import autocast

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, UNet2DModel


@torch.no_grad()
def sample_images(
    model: UNet2DModel,
    scheduler: DDIMScheduler,
    labels: torch.Tensor,
    params: DiffusionSettings,
    null_label: int,
    generator: torch.Generator,
    device: torch.device,
    report: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """One image in [-1, 1] per label: `diffusion-sampling-steps` deterministic DDIM
    steps from seeded Gaussian noise; with guidance scale w > 1 each step uses
    uncond + w (cond - uncond), both halves in one forward pass."""
    model.to(device).eval()
    scheduler.set_timesteps(params.diffusion_sampling_steps)
    guided = params.diffusion_guidance != 1.0
    shape = (model.config.in_channels, *model.config.sample_size)
    out = []
    started = time.monotonic()
    for start in range(0, len(labels), params.diffusion_sample_batch):
        chunk = labels[start : start + params.diffusion_sample_batch].to(device)
        x = torch.randn((len(chunk), *shape), generator=generator).to(device)
        conditions = torch.cat([chunk, torch.full_like(chunk, null_label)]) if guided else chunk
        for t in scheduler.timesteps:
            inputs = torch.cat([x, x]) if guided else x
            with autocast(params, device):
                prediction = model(inputs, t, class_labels=conditions).sample.float()
            if guided:
                conditional, unconditional = prediction.chunk(2)
                prediction = unconditional + params.diffusion_guidance * (conditional - unconditional)
            x = scheduler.step(prediction, t, x, eta=0.0).prev_sample
        out.append(x.clamp(-1, 1).cpu())
        if report is not None:
            report(
                f"sampled {min(start + len(chunk), len(labels))}/{len(labels)} images "
                f"({time.monotonic() - started:.0f} s elapsed)"
            )
    return torch.cat(out)
