"""The server's view of a simulated backdoor: at each evaluation, the attack success rate
of every evaluation network for the trigger a backdoor client of this run saved."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...data.datasets import LabelledImages
from .files import find_trigger, keep_round_triggers
from .trigger import attack_success_rate

if TYPE_CHECKING:
    from ...settings import Settings


class BackdoorScoring:
    """A run observer (see `runs.recorder.RoundObserver`): keeps each evaluated round's
    triggers and scores `attack_success` for the trigger found (nothing without one)."""

    def __init__(self, settings: Settings) -> None:
        self.colluding = settings.doorping_collude

    def keep(self, run_dir: Path, round_number: int) -> None:
        keep_round_triggers(run_dir, round_number)

    def scorers(
        self, run_dir: Path, round_number: int
    ) -> dict[str, tuple[str, Callable[[torch.nn.Module, LabelledImages], float]]]:
        found = find_trigger(run_dir, round_number if self.colluding else None)
        if found is None:
            return {}
        trigger, description = found

        def score(network: torch.nn.Module, test_set: LabelledImages) -> float:
            return attack_success_rate(network, test_set, trigger.to(test_set.images.device))

        return {"attack_success": (f"the backdoor of {description}", score)}
