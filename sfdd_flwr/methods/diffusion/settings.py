"""The federated diffusion generator's settings: the UNet, its local training, sampling
for evaluation, and sample-level DP-SGD."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...settings.schema import NON_NEGATIVE, POSITIVE, Rule, SettingsGroup, at_least, choice, setting

if TYPE_CHECKING:
    from ...settings import Settings

PREDICTIONS = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
PRECISIONS = ("float32", "bfloat16")


def parse_channels(text: str) -> tuple[int, ...]:
    """'16,32,32' -> (16, 32, 32): the UNet's block widths."""
    return tuple(int(part) for part in text.split(","))


def _channels_ok(text: str) -> bool:
    try:
        widths = parse_channels(text)
    except ValueError:
        return False
    return 1 <= len(widths) <= 4 and all(width >= 4 and width % 4 == 0 for width in widths)


@dataclass(frozen=True)
class DiffusionSettings(SettingsGroup):
    """Hyperparameters of the class-conditional DDPM each client trains (`method='diffusion'`)."""

    title = "Diffusion generator (`method='diffusion'`)"

    diffusion_channels: str = setting(
        "16,32,32",
        Rule(_channels_ok, "1 to 4 comma-separated widths, each a multiple of 4 (e.g. '16,32,32')"),
        "UNet block widths, one down/up block each (diffusers' UNet2DModel, no attention)",
    )
    diffusion_layers_per_block: int = setting(1, at_least(1), "ResNet layers per UNet block")
    diffusion_local_steps: int = setting(30, at_least(1), "optimiser steps per client per round")
    diffusion_batch: int = setting(128, at_least(1), "images per step (DP: the expected batch of Poisson sampling)")
    diffusion_lr: float = setting(1e-3, POSITIVE, "AdamW learning rate of round 1")
    diffusion_lr_final: float = setting(1e-4, POSITIVE, "learning rate of the last round (cosine decay over the rounds)")
    diffusion_ema: float = setting(
        0.0, Rule(lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "server-side EMA of the averaged weights, per round (0 = off); sampling uses the EMA",
    )
    diffusion_timesteps: int = setting(1000, at_least(2), "DDPM training timesteps")
    diffusion_beta_schedule: str = setting("squaredcos_cap_v2", choice(BETA_SCHEDULES), "DDPM noise schedule")
    diffusion_prediction: str = setting("epsilon", choice(PREDICTIONS), "what the UNet predicts")
    diffusion_label_dropout: float = setting(
        0.1, Rule(lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "share of training labels replaced by the null class (classifier-free guidance)",
    )
    diffusion_guidance: float = setting(
        1.5, Rule(lambda v: v >= 1, "a number >= 1 (1 = the conditional model alone)"),
        "classifier-free guidance scale when sampling: uncond + scale x (cond - uncond); 1 = no guidance",
    )
    diffusion_sampling_steps: int = setting(20, at_least(1), "DDIM steps per sample")
    diffusion_samples_per_class: int = setting(100, at_least(1), "labelled samples per class drawn for evaluation")
    diffusion_sample_batch: int = setting(500, at_least(1), "samples drawn per UNet forward batch")
    diffusion_precision: str = setting(
        "float32", choice(PRECISIONS), "`bfloat16` autocast for training and sampling (fast on CPUs with AMX/AVX-512)"
    )
    dp_noise_multiplier: float = setting(
        0.0, NON_NEGATIVE, "DP-SGD noise multiplier (0 with dp-target-epsilon 0 = no DP)"
    )
    dp_target_epsilon: float = setting(
        0.0, NON_NEGATIVE, "DP-SGD: the noise multiplier that spends this ε over the run (0 = use dp-noise-multiplier)"
    )
    dp_clip: float = setting(1.0, POSITIVE, "DP-SGD per-example gradient clip (L2)")
    dp_delta: float = setting(1e-5, Rule(lambda v: 0 < v < 1, "a number in (0, 1)"), "DP-SGD δ")

    @property
    def channels(self) -> tuple[int, ...]:
        return parse_channels(self.diffusion_channels)

    @property
    def private(self) -> bool:
        return self.dp_noise_multiplier > 0 or self.dp_target_epsilon > 0

    def check(self, settings: Settings) -> str | None:
        halvings = len(self.channels) - 1
        if any(size % (2**halvings) for size in settings.dataset_spec.image_size):
            return (
                f"diffusion-channels={self.diffusion_channels!r} is not allowed: {len(self.channels)} blocks halve "
                f"the image {halvings} times, and {settings.dataset} images are "
                f"{'x'.join(map(str, settings.dataset_spec.image_size))} (use fewer blocks)"
            )
        if self.dp_noise_multiplier > 0 and self.dp_target_epsilon > 0:
            return (
                f"dp-target-epsilon={self.dp_target_epsilon!r} is not allowed together with dp-noise-multiplier="
                f"{self.dp_noise_multiplier!r}: set one of them"
            )
        return None
