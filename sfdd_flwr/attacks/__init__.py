"""Attacks that run inside a federation: Doorping's malicious clients and the server's
scoring of them (`doorping`). The offline attacks (the curious server's leakage attack,
membership inference) are tools of the lab package."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .doorping.scoring import BackdoorScoring

if TYPE_CHECKING:
    from ..settings import Settings


def round_observers(settings: Settings) -> list[BackdoorScoring]:
    """What the run's recorder consults at every evaluation (scores next to accuracy)."""
    return [BackdoorScoring(settings)]
