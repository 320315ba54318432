"""Flower's robust aggregation rules (median, trimmed mean, Krum, multi-Krum) over
shared states, used for their aggregation only.

Their `aggregate_train` works on replies holding one ArrayRecord and one MetricRecord
with `num-examples`; they get minimal such replies (the arrays and the weight: they
insist on identical metric keys across replies). Flower's strategies do not say whom
Krum kept, so its selection (`select_multikrum`, deterministic) is run on the same
arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import WARNING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.serverapp.strategy.multikrum import select_multikrum

from .base import AggregationSettings, Combined

_ARRAYS_KEY = "state"
_METRICS_KEY = "metrics"


def flower_rule(settings: AggregationSettings) -> FedAvg:
    """Flower's strategy for `aggregator` (median, trimmed-mean, krum, multi-krum)."""
    common = {"arrayrecord_key": _ARRAYS_KEY}
    if settings.aggregator == "median":
        return FedMedian(**common)
    if settings.aggregator == "trimmed-mean":
        return FedTrimmedAvg(beta=settings.trim_fraction, **common)
    if settings.aggregator == "krum":
        return Krum(num_malicious_nodes=settings.krum_malicious, **common)
    if settings.aggregator == "multi-krum":
        return MultiKrum(
            num_malicious_nodes=settings.krum_malicious, num_nodes_to_select=settings.multi_krum_select, **common
        )
    raise ValueError(f"aggregator {settings.aggregator!r} is not one of Flower's robust rules")


def _record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value.numpy())) for key, value in state.items()})


class RobustAggregate:
    """`aggregate(server_round, states, weights)` with one of Flower's robust rules."""

    def __init__(self, settings: AggregationSettings) -> None:
        self.settings = settings
        self.rule = flower_rule(settings)

    def __call__(
        self, server_round: int, states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
    ) -> Combined:
        settings = self.settings
        selecting = settings.aggregator in ("krum", "multi-krum")
        needed = 2 * settings.krum_malicious + 3
        if selecting and len(states) < needed:
            log(WARNING, "round %d: %s with krum-malicious=%d needs %d updates for its guarantee, got %d",
                server_round, settings.aggregator, settings.krum_malicious, needed, len(states))
        replies = [
            Message(
                RecordDict({_ARRAYS_KEY: _record(state), _METRICS_KEY: MetricRecord({"num-examples": weight})}),
                metadata=Metadata(
                    run_id=0, message_id=f"update-{index}", src_node_id=index + 1, dst_node_id=0,
                    reply_to_message_id="", group_id=str(server_round), created_at=0.0, ttl=0.0,
                    message_type=MessageType.TRAIN,
                ),
            )
            for index, (state, weight) in enumerate(zip(states, weights))
        ]
        aggregated, _ = self.rule.aggregate_train(server_round, replies)
        combined = {
            key: torch.from_numpy(np.asarray(aggregated[key].numpy(), dtype=states[0][key].numpy().dtype))
            for key in states[0]
        }
        return Combined(combined, self.kept(states) if selecting else None)

    def kept(self, states: Sequence[Mapping[str, torch.Tensor]]) -> list[int]:
        """Indices of the states Krum or multi-Krum averaged."""
        contents = [RecordDict({_ARRAYS_KEY: _record(state)}) for state in states]
        chosen = select_multikrum(
            contents,
            num_malicious_nodes=self.settings.krum_malicious,
            num_nodes_to_select=1 if self.settings.aggregator == "krum" else self.settings.multi_krum_select,
        )
        return [index for index, content in enumerate(contents) if any(content is picked for picked in chosen)]
