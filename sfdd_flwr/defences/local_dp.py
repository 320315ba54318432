"""LocalDP baseline: clip the update S_i - S to an L2 norm and add noise before sending.

Flower ships `LocalDpMod` for this on an ArrayRecord, and its clipping fits our message
shape, but it draws its Gaussian noise from NumPy's global, unseeded generator (runs are
not reproducible), has no Laplace mechanism, and is configured once when the ClientApp is
built rather than per run. So the mechanism is implemented here with the client's seeded
generator; the clipping is checked against Flower's `compute_clip_model_update` in the tests.
The update of a state with several arrays is clipped as one vector (its global L2 norm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..methods.base import LocalJob, LocalResult, State
from ..seeding import make_generator
from ..settings.schema import NON_NEGATIVE, POSITIVE, Rule, SettingsGroup, choice, setting
from .base import Defence

MECHANISMS = ("gaussian", "laplace")


@dataclass(frozen=True)
class LocalDpSettings(SettingsGroup):
    """The mechanism's parameters; the typed object `privatise_update` takes."""

    title = "LocalDP baseline (`defence='local-dp'`)"

    local_dp_clip: float = setting(1.0, POSITIVE, "L2 clip of the update S_i - S")
    local_dp_noise: float = setting(0.1, NON_NEGATIVE, "noise std (Gaussian) or scale (Laplace)")
    local_dp_mechanism: str = setting("gaussian", choice(MECHANISMS), "`gaussian` or `laplace`")
    local_dp_delta: float = setting(
        1e-5, Rule(lambda v: 0 < v < 1, "a number in (0, 1)"), "δ of the reported ε (Gaussian)"
    )


@dataclass
class PrivatisedUpdate:
    state: State
    update_norm: float
    epsilon: float
    delta: float


def clip_update(update: torch.Tensor, clip: float) -> tuple[torch.Tensor, float]:
    """Scale `update` down to L2 norm `clip` if it is longer; returns (clipped, original norm)."""
    norm = float(update.norm())
    return update * min(1.0, clip / (norm + 1e-12)), norm


def privacy_cost(params: LocalDpSettings, dimension: int) -> tuple[float, float]:
    """(epsilon, delta) of one round's release.

    Both updates lie in the L2 ball of radius `clip`, so the L2 sensitivity is 2*clip.
    Gaussian: the classic calibration epsilon = 2 clip sqrt(2 ln(1.25/delta)) / sigma
    (a valid guarantee for epsilon <= 1; reported beyond that as the same formula).
    Laplace: the L1 sensitivity is at most 2 clip sqrt(d), epsilon = that / b, delta = 0.
    No noise means no privacy: epsilon = inf.
    """
    if params.local_dp_noise <= 0:
        return math.inf, 0.0
    if params.local_dp_mechanism == "gaussian":
        epsilon = 2 * params.local_dp_clip * math.sqrt(2 * math.log(1.25 / params.local_dp_delta)) / params.local_dp_noise
        return epsilon, params.local_dp_delta
    return 2 * params.local_dp_clip * math.sqrt(dimension) / params.local_dp_noise, 0.0


def composed_epsilon(params: LocalDpSettings, dimension: int, rounds: int) -> float:
    """ε after `rounds` releases: for the Gaussian mechanism Opacus' RDP accountant (noise
    multiplier σ / (2 clip), sampling rate 1, one step per round: the accountant DP-SGD
    uses, so budgets of both systems compare), for Laplace basic composition."""
    if params.local_dp_noise <= 0:
        return math.inf
    if params.local_dp_mechanism == "laplace":
        return rounds * privacy_cost(params, dimension)[0]
    from ..opacus_parts import RDPAccountant  # imported here: seconds, needed by this defence only

    accountant = RDPAccountant()
    accountant.history = [(params.local_dp_noise / (2 * params.local_dp_clip), 1.0, rounds)]
    return float(accountant.get_epsilon(params.local_dp_delta))


def laplace_noise(shape: torch.Size, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Laplace(0, scale) samples by inverse CDF from a seeded generator."""
    uniform = torch.rand(shape, generator=generator) - 0.5
    return -scale * torch.sign(uniform) * torch.log1p(-2 * uniform.abs())


def privatise_update(
    received: State, updated: State, params: LocalDpSettings, generator: torch.Generator
) -> PrivatisedUpdate:
    """received + clip(updated - received) + noise, with its per-round (epsilon, delta)."""
    if params.local_dp_mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {params.local_dp_mechanism!r}")
    keys = list(received)
    flat = torch.cat([(updated[key] - received[key]).reshape(-1) for key in keys])
    clipped, norm = clip_update(flat, params.local_dp_clip)
    released: State = {}
    offset = 0
    for key in keys:
        size = received[key].numel()
        delta = clipped[offset : offset + size].reshape(received[key].shape)
        offset += size
        if params.local_dp_noise > 0:
            if params.local_dp_mechanism == "gaussian":
                noise = params.local_dp_noise * torch.randn(delta.shape, generator=generator)
            else:
                noise = laplace_noise(delta.shape, params.local_dp_noise, generator)
            delta = delta + noise.to(delta.dtype)
        released[key] = received[key] + delta
    epsilon, delta_spent = privacy_cost(params, int(flat.numel()))
    return PrivatisedUpdate(released, norm, epsilon, delta_spent)


class LocalDp(Defence):
    """Clip and noise the update before it leaves the client (the paper's baseline)."""

    name = "local-dp"
    settings_group = LocalDpSettings
    round_metrics = {"local-dp-epsilon": "max", "local-dp-epsilon-composed": "max", "local-dp-delta": "max"}

    def release(self, job: LocalJob, result: LocalResult) -> LocalResult:
        params = job.settings.group(LocalDpSettings)
        private = make_generator(job.private_seed, "local-dp", job.server_round, job.client_id)
        received = {key: value.cpu() for key, value in job.state.items()}
        released = privatise_update(received, result.state, params, private)
        size = sum(value.numel() for value in received.values())
        metrics = result.metrics | {
            "local-dp-epsilon": released.epsilon,
            # An upper bound: the client assumes it took part in every round so far.
            "local-dp-epsilon-composed": composed_epsilon(params, size, job.server_round),
            "local-dp-delta": released.delta,
            "local-dp-update-norm": released.update_norm,
        }
        return LocalResult(released.state, metrics, result.method_state)
