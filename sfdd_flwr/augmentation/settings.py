"""DSA's settings, shared by the methods that augment while synthesising."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings.schema import Rule, SettingsGroup, setting
from .dsa import DEFAULT_STRATEGY, parse_strategy


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
        "DSA's augmentation groups (`dsa=true`, `dm-dsa=true`), one drawn per class and step; `flip` is dropped "
        "on MNIST and Fashion-MNIST as in the reference",
    )
