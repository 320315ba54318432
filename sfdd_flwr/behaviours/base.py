"""Client behaviours: how a client turns (the shared state, its private data) into the
state it returns. The base class is the honest behaviour: the run's method with the
run's defence.

The ClientApp picks one behaviour per node: `--node-config behaviour='doorping'` on a
SuperNode, or in simulation the run settings `malicious-clients` / `malicious-fraction`
with `malicious-behaviour`. Add your own without editing the package: subclass
`ClientBehaviour`, then either decorate it with `@register_behaviour("name")` in a
module that is imported, or name it as `module.path:ClassName` (importable on the
client). No Flower import.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..defences import defence_for
from ..methods import load_method
from ..methods.base import LocalJob, LocalResult, SynthesisMethod
from ..seeding import derive_seed, make_generator
from ..settings.schema import Rule, SettingsGroup, setting

if TYPE_CHECKING:
    from ..settings import Settings

BEHAVIOUR_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def private_seed(settings: Settings, node_config: Mapping[str, Any], client: int | str) -> int:
    """The seed of the client's private draws (LDPO-RLD targets, LocalDP noise).

    A node should set its own secret `private-seed` in its node config; otherwise it is
    derived from the run seed, which keeps simulations reproducible but lets a server that
    knows the run seed recompute the draws.
    """
    if "private-seed" in node_config:
        return int(node_config["private-seed"])
    return derive_seed(settings.seed, "private", client)


class ClientBehaviour:
    """Base class and the honest behaviour: the method's update with the run's defence.

    `required_hooks`: the method hooks this behaviour needs (checked before a run)."""

    name: ClassVar[str] = "honest"
    settings_group: ClassVar[type[SettingsGroup] | None] = None
    required_hooks: ClassVar[frozenset[str]] = frozenset()

    def local_update(self, job: LocalJob, method: SynthesisMethod) -> LocalResult:
        defence = defence_for(job.settings)
        job.hooks = defence.update_hooks(job, job.hooks)
        return defence.release(job, method.local_update(job))


BEHAVIOURS: dict[str, type[ClientBehaviour]] = {}


def register_behaviour(name: str) -> Callable[[type[ClientBehaviour]], type[ClientBehaviour]]:
    """Class decorator: make a behaviour selectable by `name`."""

    def register(cls: type[ClientBehaviour]) -> type[ClientBehaviour]:
        if not (isinstance(cls, type) and issubclass(cls, ClientBehaviour)):
            raise TypeError(f"{cls!r} must subclass ClientBehaviour")
        cls.name = name
        BEHAVIOURS[name] = cls
        return cls

    return register


register_behaviour("honest")(ClientBehaviour)


def malicious_partitions(settings: Settings, num_partitions: int) -> set[int]:
    """Partition ids that run `malicious-behaviour` in simulation.

    `malicious-clients` ("0,3") wins; otherwise `malicious-fraction` of the partitions,
    rounded, at least one when the fraction is positive, chosen by a seeded draw.
    """
    if settings.malicious_clients:
        return {int(part) for part in settings.malicious_clients.split(",")}
    if settings.malicious_fraction <= 0:
        return set()
    count = max(1, round(settings.malicious_fraction * num_partitions))
    generator = make_generator(settings.seed, "malicious-partitions", num_partitions)
    return set(torch.randperm(num_partitions, generator=generator)[:count].tolist())


def behaviour_for_node(settings: Settings, node_config: Mapping[str, Any]) -> str:
    """The behaviour name of this node: node config first, then the simulation settings."""
    if "behaviour" in node_config:
        return str(node_config["behaviour"])
    if "partition-id" in node_config and "num-partitions" in node_config:
        malicious = malicious_partitions(settings, int(node_config["num-partitions"]))
        if int(node_config["partition-id"]) in malicious:
            return settings.malicious_behaviour
    return "honest"


@dataclass(frozen=True)
class BehaviourSettings(SettingsGroup):
    title = "Client behaviours (simulation)"

    malicious_clients: str = setting(
        "",
        Rule(lambda v: v == "" or all(part.strip().isdigit() for part in v.split(",")),
             "'' or comma-separated partition ids such as '0,3'"),
        "partitions that run `malicious-behaviour` (e.g. `'0,3'`); see [docs/backdoors.md](docs/backdoors.md)",
    )
    malicious_fraction: float = setting(
        0.0, Rule(lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        "or a seeded share of the partitions (when `malicious-clients` is empty)",
    )
    malicious_behaviour: str = setting(
        "doorping",
        Rule(lambda v: v in BEHAVIOURS or bool(BEHAVIOUR_PATH.match(v)),
             "a registered behaviour (honest, doorping, naive-backdoor) or module.path:ClassName"),
        "the behaviour of those partitions: `doorping`, `naive-backdoor`, `honest`, or your own "
        "`module.path:ClassName`",
    )

    @property
    def configured(self) -> bool:
        """Whether simulated partitions run a malicious behaviour."""
        return bool(self.malicious_clients) or self.malicious_fraction > 0

    def check(self, settings: Settings) -> str | None:
        behaviour = BEHAVIOURS.get(self.malicious_behaviour)
        if not self.configured or behaviour is None:
            return None
        try:
            method = load_method(settings.method)
        except ValueError:
            return None  # the synthesis settings report it
        missing = behaviour.required_hooks - method.supported_hooks
        if missing:
            return (
                f"malicious-behaviour={self.malicious_behaviour!r} is not allowed with method="
                f"{settings.method!r}: it needs the method's {', '.join(sorted(missing))} hook, which that "
                "method does not offer"
            )
        return None
