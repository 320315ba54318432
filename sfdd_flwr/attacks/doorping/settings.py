"""Doorping's settings (also those of the naive backdoor, its baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...settings.schema import Rule, SettingsGroup, at_least, setting

if TYPE_CHECKING:
    from ...settings import Settings


@dataclass(frozen=True)
class DoorpingSettings(SettingsGroup):
    title = "Doorping and the naive backdoor (`malicious-behaviour`)"

    doorping_target: int = setting(0, at_least(0), "target class")
    doorping_poison_fraction: float = setting(
        0.01, Rule(lambda v: 0 < v <= 1, "a number in (0, 1]"), "share of the attacker's local data poisoned"
    )
    doorping_trigger_size: int = setting(2, at_least(1), "side of the square patch in pixels")
    doorping_trigger_steps: int = setting(1000, at_least(1), "most trigger optimisation steps per update")
    doorping_clamp: bool = setting(
        False,
        help="keep the optimised trigger in the valid pixel range; `false` is Doorping's reference code, whose "
        "trigger can leave it (an image no camera produces)",
    )
    doorping_collude: bool = setting(
        False,
        help="several backdoor clients pool one trigger (the mean of theirs, every round) instead of each "
        "planting its own; see [docs/backdoors.md](docs/backdoors.md)",
    )

    def check(self, settings: Settings) -> str | None:
        if settings.malicious_clients or settings.malicious_fraction > 0:
            return doorping_problem(settings)
        return None


def doorping_problem(settings: Settings) -> str | None:
    """Why the Doorping settings do not fit the task, or None (also checked on the nodes)."""
    classes = settings.dataset_spec.num_classes
    if settings.doorping_target >= classes:
        return (
            f"doorping-target={settings.doorping_target} is not allowed: must be a class of "
            f"{settings.dataset} (0..{classes - 1})"
        )
    if settings.doorping_trigger_size + 1 > min(settings.dataset_spec.image_size):
        return (
            f"doorping-trigger-size={settings.doorping_trigger_size} is not allowed: the patch "
            "and its 1 px margin must fit in the image"
        )
    return None
