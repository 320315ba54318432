"""LDPO-RLD: label obfuscation by randomized linear dispersion (SFDD paper, section 4.2).

Our concrete reading (REFERENCE.md section 3): the one-hot target e_c of class c is
replaced by  y~ = (1 - alpha) e_c + alpha * sum_j w_j e_{r_j},  where r_1..r_k are k
distinct labels drawn uniformly from the other classes, afresh for every class and
every matching step, and w_j = 2 (k - j + 1) / (k (k + 1)) is a linear ramp summing to
1. The draws come from the client's private generator and are never sent, so a server
that replays the client's update cannot know the targets it used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from ..methods.base import LocalJob, UpdateHooks
from ..seeding import make_generator
from ..settings.schema import Rule, SettingsGroup, at_least, choice, setting
from .base import Defence

if TYPE_CHECKING:
    from ..settings import Settings

TARGET_MODES = ("both", "real-only")


def linear_ramp_weights(k: int) -> torch.Tensor:
    """w_j = 2 (k - j + 1) / (k (k + 1)) for j = 1..k: decreasing, summing to 1."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    j = torch.arange(1, k + 1, dtype=torch.float64)
    return (2 * (k - j + 1) / (k * (k + 1))).to(torch.float32)


def obfuscated_target(
    true_class: int, num_classes: int, alpha: float, k: int, generator: torch.Generator
) -> torch.Tensor:
    """One LDPO-RLD target distribution `[num_classes]` for `true_class`."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 1 <= k <= num_classes - 1:
        raise ValueError(f"k must be in 1..{num_classes - 1}, got {k}")
    others = torch.tensor([c for c in range(num_classes) if c != true_class])
    chosen = others[torch.randperm(others.numel(), generator=generator)[:k]]
    target = torch.zeros(num_classes)
    target[true_class] = 1.0 - alpha
    target[chosen] += alpha * linear_ramp_weights(k)
    return target


class LdpoRldTargets:
    """The `targets` hook for LDPO-RLD: a fresh obfuscated target per class and step.

    With `mode='both'` (default) the same target is used for the real and the synthetic
    gradient, so matching stays consistent; 'real-only' keeps one-hot synthetic targets.
    """

    def __init__(
        self, num_classes: int, alpha: float, k: int, mode: str, generator: torch.Generator
    ) -> None:
        if mode not in TARGET_MODES:
            raise ValueError(f"mode must be one of {TARGET_MODES}, got {mode!r}")
        self.num_classes, self.alpha, self.k, self.mode = num_classes, alpha, k, mode
        self.generator = generator

    def __call__(self, class_index: int, outer_step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        target = obfuscated_target(class_index, self.num_classes, self.alpha, self.k, self.generator)
        return target, (target if self.mode == "both" else None)


@dataclass(frozen=True)
class LdpoRldSettings(SettingsGroup):
    title = "LDPO-RLD (`defence='ldpo-rld'`)"

    ldpo_alpha: float = setting(
        0.5, Rule(lambda v: 0 < v < 1, "a number in (0, 1)"), "share of the target moved to other classes"
    )
    ldpo_k: int = setting(3, at_least(1), "other classes it is spread over (linear ramp)")
    ldpo_targets: str = setting(
        "both", choice(TARGET_MODES), "`both` (the real and the synthetic gradient) or `real-only`"
    )

    def check(self, settings: Settings) -> str | None:
        classes = settings.dataset_spec.num_classes
        if settings.defence == LdpoRld.name and self.ldpo_k > classes - 1:
            return f"ldpo-k={self.ldpo_k} is not allowed: must be at most num classes - 1 = {classes - 1}"
        return None


class LdpoRld(Defence):
    """Obfuscated soft targets in the client's gradient matching, drawn from its private
    generator (seeded by its `private-seed`), so the server cannot replay its update."""

    name = "ldpo-rld"
    settings_group = LdpoRldSettings
    required_hooks = frozenset({"targets"})

    def update_hooks(self, job: LocalJob, hooks: UpdateHooks) -> UpdateHooks:
        params = job.settings.group(LdpoRldSettings)
        private = make_generator(job.private_seed, "ldpo-rld", job.server_round, job.client_id)
        targets = LdpoRldTargets(
            job.settings.dataset_spec.num_classes, params.ldpo_alpha, params.ldpo_k, params.ldpo_targets, private
        )
        return replace(hooks, targets=targets)
