"""LDPO-RLD: label obfuscation by randomized linear dispersion (SFDD paper, section 4.2).

Our concrete reading (REFERENCE.md section 3): the one-hot target e_c of class c is
replaced by  y~ = (1 - alpha) e_c + alpha * sum_j w_j e_{r_j},  where r_1..r_k are k
distinct labels drawn uniformly from the other classes, afresh for every class and
every matching step, and w_j = 2 (k - j + 1) / (k (k + 1)) is a linear ramp summing to
1. The draws come from the client's private generator and are never sent, so a server
that replays the client's update cannot know the targets it used.
"""

from __future__ import annotations

import torch

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
    """`UpdateHooks.targets` for LDPO-RLD: a fresh obfuscated target per class and step.

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
