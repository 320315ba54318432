"""What a way of building a synthetic set owns: the method interface.

A method decides what the server ships (the shared state: named tensors, the same keys
and shapes every round), what a client does with it on its private data, how returned
states are checked and combined, and how a labelled synthetic set for evaluation comes
out of the shared state (the state itself, or samples drawn from a generator). The
strategy, the recorder and the ClientApp talk to this interface only. No Flower import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..aggregators import Aggregate, make_aggregator
from ..data.datasets import LabelledImages
from ..seeding import derive_seed, make_generator
from ..settings.schema import SettingsGroup

if TYPE_CHECKING:
    from ..settings import Settings

# The shared state: named CPU tensors (float for everything the server averages).
State = dict[str, torch.Tensor]

# Reductions of the clients' metrics into the round's, by metric key: "mean" (weighted by
# the clients' example counts), "max" or "sum".
REDUCTIONS = ("mean", "max", "sum")


def class_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """Labels of a class-ordered synthetic set: [0]*per_class + [1]*per_class + ...

    A pure function of (classes, images per class): rebuilt on both sides, never sent."""
    return torch.arange(num_classes).repeat_interleave(per_class)


@dataclass
class UpdateHooks:
    """Where a defence or an attack changes a method's local update (None = unchanged).

    `targets(class_index, step)` returns the target distributions `[C]` used for the real
    and for the synthetic side of that class at that step (None = one-hot);
    `after_network_training(network, step)` runs after each training of the method's
    inner network. A method lists the hooks it honours in `supported_hooks`.
    """

    targets: Callable[[int, int], tuple[torch.Tensor | None, torch.Tensor | None]] | None = None
    after_network_training: Callable[[torch.nn.Module, int], None] | None = None

    def used(self) -> set[str]:
        return {name for name in ("targets", "after_network_training") if getattr(self, name) is not None}


@dataclass
class LocalJob:
    """Everything one local update needs: built by the ClientApp from Flower messages, or
    by the lab's drivers. Its seeds are (run seed, scope, purpose) with the scope
    ('client', round, client) unless the driver sets another (the centralized baseline)."""

    settings: Settings
    server_round: int
    client_id: int | str
    state: State
    data: LabelledImages
    device: torch.device
    method_state: dict[str, torch.Tensor] = field(default_factory=dict)
    behaviour_state: dict[str, torch.Tensor] = field(default_factory=dict)
    private_seed: int = 0
    run_dir: Path | None = None
    node_config: Mapping[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None
    hooks: UpdateHooks = field(default_factory=UpdateHooks)
    seed_scope: tuple[object, ...] = ()

    @property
    def scope(self) -> tuple[object, ...]:
        return self.seed_scope or ("client", self.server_round, self.client_id)

    def generator(self, *purpose: object) -> torch.Generator:
        """A generator seeded by (run seed, scope, purpose)."""
        return make_generator(self.settings.seed, *self.scope, *purpose)

    def network_seed(self) -> int:
        return derive_seed(self.settings.seed, *self.scope, "network")


@dataclass
class LocalResult:
    """A local update: the state to return, its metrics (kebab-case keys), and what the
    method keeps on this client for its next round (never sent)."""

    state: State
    metrics: dict[str, float] = field(default_factory=dict)
    method_state: dict[str, torch.Tensor] = field(default_factory=dict)


def state_problem(sent: Mapping[str, torch.Tensor], returned: Mapping[str, Any]) -> str | None:
    """Why a returned state cannot be combined with the others, or None if it can: the
    same arrays as sent, each floating point, of the sent shape and finite."""
    missing = [key for key in sent if key not in returned]
    if missing:
        return f"the reply lacks array(s) {', '.join(repr(k) for k in missing)}"
    extra = [key for key in returned if key not in sent]
    if extra:
        return f"the reply holds unexpected array(s) {', '.join(repr(k) for k in extra)}"
    for key, expected in sent.items():
        array = returned[key]
        array = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        if not np.issubdtype(array.dtype, np.floating):
            return f"array {key!r} has dtype {array.dtype}, expected a float type"
        if tuple(array.shape) != tuple(expected.shape):
            return f"array {key!r} has shape {tuple(array.shape)}, expected {tuple(expected.shape)}"
        if not np.all(np.isfinite(array)):
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            return f"array {key!r} holds {bad} NaN/Inf values"
    return None


def reduce_metrics(
    reductions: Mapping[str, str], client_metrics: list[Mapping[str, Any]], weights: list[float]
) -> dict[str, float]:
    """The round's metrics from the clients': each declared key the clients reported,
    reduced as declared (snake_case keys, as in metrics.jsonl)."""
    reduced: dict[str, float] = {}
    for key, how in reductions.items():
        pairs = [(float(m[key]), w) for m, w in zip(client_metrics, weights) if key in m]
        if not pairs:
            continue
        values = [value for value, _ in pairs]
        if how == "mean":
            reduced[key.replace("-", "_")] = float(np.average(values, weights=[w for _, w in pairs]))
        elif how == "max":
            reduced[key.replace("-", "_")] = max(values)
        else:
            reduced[key.replace("-", "_")] = float(sum(values))
    return reduced


class SynthesisMethod:
    """Base of a method. Subclass it, set `name`, `settings_group` (its settings) and the
    class attributes below, implement `initial_state`, `local_update` and `labelled_set`;
    register it in `methods/__init__.py` (or name it as `module.path:ClassName`)."""

    name: ClassVar[str] = ""
    settings_group: ClassVar[type[SettingsGroup] | None] = None
    # Hooks of `UpdateHooks` this method's local update honours.
    supported_hooks: ClassVar[frozenset[str]] = frozenset()
    # How the clients' metrics of a round are reduced (key -> one of REDUCTIONS).
    round_metrics: ClassVar[dict[str, str]] = {}
    # The checkpoint in the run directory, rewritten after every round.
    checkpoint_file: ClassVar[str] = "state.pt"
    # With `aggregator='fedavg'`, let the Flower strategy combine replies with Flower's own
    # FedAvg over the ArrayRecord (float32 accumulation) instead of `combine`'s float64 mean.
    flower_fedavg: ClassVar[bool] = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._aggregate: Aggregate | None = None

    # ----- server side -----
    def initial_state(self) -> State:
        """The shared state of round 1, from the settings and the run seed."""
        raise NotImplementedError

    def reply_problem(self, sent: State, returned: Mapping[str, Any]) -> str | None:
        """Why a client's returned state cannot be combined, or None."""
        return state_problem(sent, returned)

    def combine(self, server_round: int, states: list[State], weights: list[float]):
        """The accepted states combined by the run's aggregator (FedAvg by default);
        returns an `aggregators.Combined` (the state, and whom a selecting rule kept)."""
        if self._aggregate is None:
            self._aggregate = make_aggregator(self.settings)
        return self._aggregate(server_round, states, weights)

    def finish_round(self, server_round: int, state: State) -> None:
        """Called with each round's combined state (e.g. to keep an EMA of it)."""

    def labelled_set(
        self, state: State, server_round: int, device: torch.device, report: Callable[[str], None] | None = None
    ) -> LabelledImages:
        """The labelled synthetic set that evaluation trains on (class-ordered)."""
        raise NotImplementedError

    def describe_round(self, round_metrics: Mapping[str, Any]) -> str:
        """The method's part of a round's progress line (e.g. its loss), or ''."""
        return ""

    def describe_set_size(self) -> str:
        """How large the evaluated set is, for the run's title (e.g. 'IPC 10')."""
        return f"IPC {self.settings.ipc}"

    def checkpoint(self, state: State) -> dict[str, torch.Tensor]:
        """What `checkpoint_file` stores besides the metadata."""
        return dict(state)

    def restore(self, saved: Mapping[str, Any]) -> State:
        """The shared state from a loaded checkpoint."""
        return {key: value for key, value in saved.items() if key != "metadata"}

    # ----- client side -----
    def local_update(self, job: LocalJob) -> LocalResult:
        """One round's update of `job.state` on `job.data`."""
        raise NotImplementedError
