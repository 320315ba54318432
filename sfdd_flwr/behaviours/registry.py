"""Every selectable client behaviour: `honest` (the base class) and the attacks'
malicious clients (`doorping`, `naive-backdoor`, in `attacks/doorping`), by name, or a
user's `module.path:ClassName`."""

from __future__ import annotations

import importlib

from ..attacks.doorping.client import DoorpingBehaviour, NaiveBackdoorBehaviour
from .base import (
    BEHAVIOUR_PATH,
    BEHAVIOURS,
    BehaviourSettings,
    ClientBehaviour,
    behaviour_for_node,
    malicious_partitions,
    private_seed,
    register_behaviour,
)

__all__ = [
    "BEHAVIOURS", "BehaviourSettings", "ClientBehaviour", "DoorpingBehaviour", "NaiveBackdoorBehaviour",
    "behaviour_for_node", "load_behaviour", "malicious_partitions", "private_seed", "register_behaviour",
]


def load_behaviour(name: str) -> type[ClientBehaviour]:
    """The behaviour class for a registered name or a `module.path:ClassName`."""
    if name in BEHAVIOURS:
        return BEHAVIOURS[name]
    if not BEHAVIOUR_PATH.match(name):
        raise ValueError(
            f"behaviour={name!r} is not allowed: must be one of {', '.join(sorted(BEHAVIOURS))} "
            "or module.path:ClassName"
        )
    module_name, class_name = name.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"behaviour={name!r} cannot be loaded: {error}") from error
    if not (isinstance(cls, type) and issubclass(cls, ClientBehaviour)):
        raise ValueError(f"behaviour={name!r} is not a subclass of sfdd_flwr.behaviours.ClientBehaviour")
    return cls
