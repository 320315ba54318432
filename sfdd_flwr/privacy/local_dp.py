"""LocalDP baseline: clip the update S_i - S to an L2 norm and add noise before sending.

Flower ships `LocalDpMod` for this on an ArrayRecord, and its clipping fits our message
shape, but it draws its Gaussian noise from NumPy's global, unseeded generator (runs are
not reproducible), has no Laplace mechanism, and is configured once when the ClientApp is
built rather than per run. So the mechanism is implemented here with the client's seeded
generator; the clipping is checked against Flower's `compute_clip_model_update` in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MECHANISMS = ("gaussian", "laplace")


@dataclass(frozen=True)
class LocalDpParams:
    clip: float
    noise: float
    mechanism: str = "gaussian"
    delta: float = 1e-5


@dataclass
class PrivatisedUpdate:
    images: torch.Tensor
    update_norm: float
    epsilon: float
    delta: float


def clip_update(update: torch.Tensor, clip: float) -> tuple[torch.Tensor, float]:
    """Scale `update` down to L2 norm `clip` if it is longer; returns (clipped, original norm)."""
    norm = float(update.norm())
    return update * min(1.0, clip / (norm + 1e-12)), norm


def privacy_cost(params: LocalDpParams, dimension: int) -> tuple[float, float]:
    """(epsilon, delta) of one round's release.

    Both updates lie in the L2 ball of radius `clip`, so the L2 sensitivity is 2*clip.
    Gaussian: the classic calibration epsilon = 2 clip sqrt(2 ln(1.25/delta)) / sigma
    (a valid guarantee for epsilon <= 1; reported beyond that as the same formula).
    Laplace: the L1 sensitivity is at most 2 clip sqrt(d), epsilon = that / b, delta = 0.
    No noise means no privacy: epsilon = inf.
    """
    if params.noise <= 0:
        return math.inf, 0.0
    if params.mechanism == "gaussian":
        return 2 * params.clip * math.sqrt(2 * math.log(1.25 / params.delta)) / params.noise, params.delta
    return 2 * params.clip * math.sqrt(dimension) / params.noise, 0.0


def laplace_noise(shape: torch.Size, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Laplace(0, scale) samples by inverse CDF from a seeded generator."""
    uniform = torch.rand(shape, generator=generator) - 0.5
    return -scale * torch.sign(uniform) * torch.log1p(-2 * uniform.abs())


def privatise_update(
    received: torch.Tensor, updated: torch.Tensor, params: LocalDpParams, generator: torch.Generator
) -> PrivatisedUpdate:
    """received + clip(updated - received) + noise, with its per-round (epsilon, delta)."""
    if params.mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {params.mechanism!r}")
    clipped, norm = clip_update(updated - received, params.clip)
    if params.noise > 0:
        if params.mechanism == "gaussian":
            noise = params.noise * torch.randn(clipped.shape, generator=generator)
        else:
            noise = laplace_noise(clipped.shape, params.noise, generator)
        clipped = clipped + noise.to(clipped.dtype)
    epsilon, delta = privacy_cost(params, clipped.numel())
    return PrivatisedUpdate(received + clipped, norm, epsilon, delta)
