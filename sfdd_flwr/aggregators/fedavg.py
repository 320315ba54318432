"""FedAvg over shared states: the example-weighted mean of every array (numpy; no Flower
import, so the lab's federation without Flower runs it too).

Our own rather than Flower's `aggregate_arrayrecords`: that one accumulates in the
arrays' dtype (float32 here), this one in float64 and rounds once, so the mean does not
depend on the order in which replies arrive, and it runs where flwr is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch


def weight_problem(num_examples: object) -> str | None:
    """Why a reply's `num-examples` cannot weigh it in the mean, or None."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, float)):
        return f"num-examples is {num_examples!r}, expected a number"
    if not np.isfinite(num_examples) or num_examples <= 0:
        return f"num-examples is {num_examples!r}, expected a positive number"
    return None


def weighted_mean(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_i w_i * x_i / sum_i w_i, computed in float64, returned in the arrays' dtype."""
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
    return result.astype(arrays[0].dtype)


def fedavg(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """`weighted_mean` of each named array over the states."""
    if not states:
        raise ValueError("nothing to aggregate")
    return {
        key: torch.from_numpy(weighted_mean([state[key].numpy() for state in states], weights))
        for key in states[0]
    }
