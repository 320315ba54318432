"""Distribution matching's settings (the DM reference's defaults where it has them)."""

from __future__ import annotations

from dataclasses import dataclass

from ...settings.schema import POSITIVE, Rule, SettingsGroup, at_least, setting


@dataclass(frozen=True)
class DistributionMatchingSettings(SettingsGroup):
    title = "Distribution matching (`method='distribution-matching'`)"

    dm_steps: int = setting(
        10, at_least(1), "image updates per client per round, each under a freshly initialised network"
    )
    dm_batch_real: int = setting(256, at_least(1), "real images per class per step")
    dm_lr_img: float = setting(1.0, POSITIVE, "SGD learning rate of the synthetic images (DM: 1.0)")
    dm_momentum_img: float = setting(
        0.5, Rule(lambda v: 0 <= v < 1, "a number in [0, 1)"), "SGD momentum of the synthetic images"
    )
    dm_dsa: bool = setting(
        True, help="one DSA transformation for a class's real and synthetic batch before embedding (as DM's "
        "reference; its groups: `dsa-strategy`; evaluate as DM with `eval-augment='dsa'`)",
    )
