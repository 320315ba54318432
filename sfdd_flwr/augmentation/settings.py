"""DSA's settings, shared by the methods that augment while synthesising and by evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..settings.schema import Rule, SettingsGroup, setting
from .dsa import DEFAULT_STRATEGY, DsaParams, parse_strategy, strategy_for

if TYPE_CHECKING:
    from ..settings import Settings


def _is_strategy(text: str) -> bool:
    try:
        parse_strategy(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class AugmentationSettings(SettingsGroup):
    title = "Differentiable siamese augmentation (DSA)"

    dsa_strategy: str = setting(
        DEFAULT_STRATEGY, Rule(_is_strategy, "groups among color, crop, cutout, flip, scale, rotate joined by '_'"),
        "DSA's augmentation groups (`dsa=true`, `dm-dsa=true`, `eval-augment='dsa'`), one drawn per class and "
        "step; `flip` is dropped on MNIST and SVHN, as the reference prescribes for digits",
    )

    def check(self, settings: Settings) -> str | None:
        try:
            strategy_for(settings.dataset, self.dsa_strategy)
        except ValueError as error:
            return str(error)
        return None

    def params(self, dataset: str) -> DsaParams:
        """DSA's parameters with the strategy as used on `dataset`."""
        return DsaParams(strategy=strategy_for(dataset, self.dsa_strategy))
