"""Gradient-matching distances between real and synthetic gradients (DC, eq. 'ours')."""

from __future__ import annotations

from collections.abc import Sequence

import torch

MATCH_METRICS = ("ours", "mse", "cos")

_EPSILON = 1e-6


def layer_distance(grad_real: torch.Tensor, grad_synthetic: torch.Tensor) -> torch.Tensor:
    """DC's per-tensor distance: sum over output rows of 1 - cos(real row, synthetic row).

    Conv weights are viewed as out x (in*kh*kw), 3-D tensors as C x (h*w), linear
    weights as they are. 1-D tensors (biases, norm affine parameters) contribute 0.
    """
    if grad_real.dim() == 1:
        return torch.zeros((), dtype=grad_real.dtype, device=grad_real.device)
    real_rows = grad_real.reshape(grad_real.shape[0], -1)
    synthetic_rows = grad_synthetic.reshape(grad_synthetic.shape[0], -1)
    cosine = (real_rows * synthetic_rows).sum(dim=-1) / (
        real_rows.norm(dim=-1) * synthetic_rows.norm(dim=-1) + _EPSILON
    )
    return (1 - cosine).sum()


def match_distance(
    grads_real: Sequence[torch.Tensor],
    grads_synthetic: Sequence[torch.Tensor],
    metric: str = "ours",
) -> torch.Tensor:
    """Distance between two lists of per-parameter gradients.

    'ours' sums `layer_distance` over parameters; 'mse' is the squared L2 distance of
    the concatenated gradients; 'cos' is 1 - one global cosine similarity.
    """
    if len(grads_real) != len(grads_synthetic):
        raise ValueError(
            f"gradient lists differ in length: {len(grads_real)} vs {len(grads_synthetic)}"
        )
    if metric == "ours":
        total = torch.zeros((), dtype=grads_real[0].dtype, device=grads_real[0].device)
        for grad_real, grad_synthetic in zip(grads_real, grads_synthetic):
            total = total + layer_distance(grad_real, grad_synthetic)
        return total
    real = torch.cat([grad.reshape(-1) for grad in grads_real])
    synthetic = torch.cat([grad.reshape(-1) for grad in grads_synthetic])
    if metric == "mse":
        return ((synthetic - real) ** 2).sum()
    if metric == "cos":
        return 1 - (real * synthetic).sum() / (real.norm() * synthetic.norm() + _EPSILON)
    raise ValueError(f"metric must be one of {MATCH_METRICS}, got {metric!r}")


def batched_match_distance(
    grads_real: Sequence[torch.Tensor],
    grads_synthetic: Sequence[torch.Tensor],
    metric: str = "ours",
) -> torch.Tensor:
    """`match_distance` summed over classes, for gradients stacked `[K, ...]` by class."""
    if len(grads_real) != len(grads_synthetic):
        raise ValueError(
            f"gradient lists differ in length: {len(grads_real)} vs {len(grads_synthetic)}"
        )
    if metric == "ours":
        total = torch.zeros((), dtype=grads_real[0].dtype, device=grads_real[0].device)
        for grad_real, grad_synthetic in zip(grads_real, grads_synthetic):
            if grad_real.dim() == 2:
                continue
            classes, rows = grad_real.shape[:2]
            real_rows = grad_real.reshape(classes, rows, -1)
            synthetic_rows = grad_synthetic.reshape(classes, rows, -1)
            cosine = (real_rows * synthetic_rows).sum(dim=-1) / (
                real_rows.norm(dim=-1) * synthetic_rows.norm(dim=-1) + _EPSILON
            )
            total = total + (1 - cosine).sum()
        return total
    classes = grads_real[0].shape[0]
    real = torch.cat([grad.reshape(classes, -1) for grad in grads_real], dim=1)
    synthetic = torch.cat([grad.reshape(classes, -1) for grad in grads_synthetic], dim=1)
    if metric == "mse":
        return ((synthetic - real) ** 2).sum()
    if metric == "cos":
        return (1 - (real * synthetic).sum(dim=1) / (real.norm(dim=1) * synthetic.norm(dim=1) + _EPSILON)).sum()
    raise ValueError(f"metric must be one of {MATCH_METRICS}, got {metric!r}")
