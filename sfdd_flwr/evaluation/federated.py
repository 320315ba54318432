"""Combining the nodes' evaluations of S into one federated accuracy (no Flower import).

Every node trains the same `num-eval` fresh networks on S (seeded from seed, round and
model index) and tests them on its held-out split. Model k's federated accuracy is the
test-size-weighted mean of the nodes' accuracies of model k, i.e. its accuracy on the
union of their test splits; mean ± std over the models are reported as on the server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .protocol import EvalResult


@dataclass(frozen=True)
class NodeEvaluation:
    """One node's evaluation of S: its test-split size and the accuracy of each model."""

    node: str
    num_examples: int
    accuracies: tuple[float, ...]
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)


@dataclass
class FederatedEvalResult(EvalResult):
    """Per-model weighted accuracies (`accuracies`), the nodes behind them, and why the
    others are missing."""

    nodes: list[NodeEvaluation] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def num_examples(self) -> int:
        return sum(node.num_examples for node in self.nodes)


def evaluation_problem(accuracies: object, num_examples: object, expected_models: int) -> str | None:
    """Why a node's evaluation reply cannot be combined, or None if it can."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, float)):
        return f"num-examples is {num_examples!r}, expected a number"
    if not math.isfinite(num_examples) or num_examples <= 0:
        return f"num-examples is {num_examples!r}, expected a positive number"
    if not isinstance(accuracies, Sequence) or len(accuracies) != expected_models:
        return f"accuracies is {accuracies!r}, expected {expected_models} numbers"
    if not all(isinstance(a, (int, float)) and 0.0 <= a <= 1.0 for a in accuracies):
        return f"accuracies {list(accuracies)!r} are not all in [0, 1]"
    return None


def combine_node_evaluations(
    nodes: Sequence[NodeEvaluation], failures: Sequence[str] = (), seconds: float = 0.0
) -> FederatedEvalResult:
    """Per model: sum_i n_i * acc_ik / sum_i n_i over the nodes that answered."""
    result = FederatedEvalResult(seconds=seconds, nodes=list(nodes), failures=list(failures))
    total = sum(node.num_examples for node in nodes)
    if not nodes or total <= 0:
        return result
    num_models = len(nodes[0].accuracies)
    if any(len(node.accuracies) != num_models for node in nodes):
        raise ValueError("every node must report the same number of models")
    result.accuracies = [
        sum(node.num_examples * node.accuracies[k] for node in nodes) / total for k in range(num_models)
    ]
    return result
