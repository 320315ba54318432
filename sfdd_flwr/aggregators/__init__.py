"""How the accepted replies of a round are combined: FedAvg (`fedavg`, the default) or
one of Flower's robust rules (`robust`), with their settings (`base`).

The robust rules need flwr; FedAvg does not, so code that runs rounds without Flower
(the lab's local federation) imports this room on a machine with only torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..settings.schema import ConfigError
from .base import AGGREGATORS, Aggregate, AggregationSettings, Combined
from .fedavg import fedavg

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["AGGREGATORS", "Aggregate", "AggregationSettings", "Combined", "make_aggregator"]


def make_aggregator(settings: Settings) -> Aggregate:
    """The run's rule: FedAvg, or Flower's robust strategy (imported only when chosen)."""
    group = settings.group(AggregationSettings)
    if group.aggregator == "fedavg":
        return lambda server_round, states, weights: Combined(fedavg(states, weights))
    try:
        from .robust import RobustAggregate
    except ImportError as error:
        raise ConfigError(
            f"aggregator={group.aggregator!r} needs flwr (Flower's robust strategies), which cannot be "
            f"imported here ({error}); fedavg runs without it"
        ) from error
    return RobustAggregate(group)
