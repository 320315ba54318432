"""Checking and aggregating returned synthetic sets (numpy only, no Flower import)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# aggregate(server_round, arrays, weights) -> the aggregated array: FedAvg or a robust rule.
Aggregate = Callable[[int, list[np.ndarray], list[float]], np.ndarray]
# kept_updates(arrays) -> indices of the arrays a rule averaged (e.g. Krum's pick); None: all.
KeptUpdates = Callable[[list[np.ndarray]], list[int] | None]


def update_problem(
    images: np.ndarray | None,
    expected_shape: tuple[int, ...],
    num_examples: object,
) -> str | None:
    """Why a client's returned synthetic set cannot be aggregated, or None if it can."""
    if images is None:
        return "no synthetic images in the reply"
    if not np.issubdtype(images.dtype, np.floating):
        return f"images have dtype {images.dtype}, expected a float type"
    if tuple(images.shape) != tuple(expected_shape):
        return f"images have shape {tuple(images.shape)}, expected {tuple(expected_shape)}"
    if not np.all(np.isfinite(images)):
        bad = int(images.size - np.count_nonzero(np.isfinite(images)))
        return f"images hold {bad} NaN/Inf values"
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, float)):
        return f"num-examples is {num_examples!r}, expected a number"
    if not np.isfinite(num_examples) or num_examples <= 0:
        return f"num-examples is {num_examples!r}, expected a positive number"
    return None


def weighted_mean(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """FedAvg: sum_i w_i * x_i / sum_i w_i, computed in float64, returned as float32."""
    if not arrays:
        raise ValueError("nothing to aggregate")
    if len(arrays) != len(weights):
        raise ValueError(f"{len(arrays)} arrays but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    result = np.zeros(arrays[0].shape, dtype=np.float64)
    for array, weight in zip(arrays, weights):
        result += array.astype(np.float64) * (float(weight) / total)
    return result.astype(np.float32)
