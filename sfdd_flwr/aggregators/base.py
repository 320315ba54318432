"""The aggregation settings and what a rule returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..settings.schema import Rule, SettingsGroup, at_least, choice, setting

AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum", "multi-krum")


@dataclass(frozen=True)
class AggregationSettings(SettingsGroup):
    title = "Aggregation"

    aggregator: str = setting(
        "fedavg", choice(AGGREGATORS),
        "`fedavg` (weighted by the clients' example counts), or Flower's robust rules `median`, `trimmed-mean`, "
        "`krum`, `multi-krum`",
    )
    trim_fraction: float = setting(
        0.2, Rule(lambda v: 0 <= v < 0.5, "a number in [0, 0.5)"), "trimmed mean: share cut at each end"
    )
    krum_malicious: int = setting(1, at_least(0), "(multi-)Krum: malicious clients to tolerate")
    multi_krum_select: int = setting(2, at_least(1), "multi-Krum: updates averaged")


@dataclass
class Combined:
    """A round's combined state, and the indices of the replies a selecting rule (Krum)
    averaged (None: every reply counted)."""

    state: dict[str, torch.Tensor]
    kept: list[int] | None = None


# aggregate(server_round, states, weights) -> Combined
Aggregate = Callable[[int, Sequence[Mapping[str, torch.Tensor]], Sequence[float]], Combined]
