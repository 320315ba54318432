"""The generator: diffusers' UNet2DModel with a class embedding (one extra class: the
null label of classifier-free guidance), initialised locally from a seed (no weights
ever come from a model hub), and its noise schedule."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from ...data.datasets import DatasetSpec
from .settings import DiffusionSettings


def build_unet(params: DiffusionSettings, spec: DatasetSpec, seed: int) -> UNet2DModel:
    """A fresh UNet whose weights depend only on `seed` (diffusers initialises from
    torch's global generator; forking it keeps everyone else's draws untouched)."""
    widths = params.channels
    groups = 8 if all(width % 8 == 0 for width in widths) else 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet2DModel(
            sample_size=spec.image_size,
            in_channels=spec.channels,
            out_channels=spec.channels,
            block_out_channels=widths,
            layers_per_block=params.diffusion_layers_per_block,
            down_block_types=("DownBlock2D",) * len(widths),
            up_block_types=("UpBlock2D",) * len(widths),
            add_attention=False,
            norm_num_groups=groups,
            num_class_embeds=spec.num_classes + 1,
        )
    return model


def noise_schedule(params: DiffusionSettings) -> DDPMScheduler:
    """The training schedule (DDPM); sampling uses DDIM on the same betas."""
    return DDPMScheduler(
        num_train_timesteps=params.diffusion_timesteps,
        beta_schedule=params.diffusion_beta_schedule,
        prediction_type=params.diffusion_prediction,
    )


def sampling_schedule(params: DiffusionSettings) -> DDIMScheduler:
    return DDIMScheduler.from_config(noise_schedule(params).config)
