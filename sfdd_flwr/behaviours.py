"""Client behaviours: how a client turns (S, its private data) into the S_i it returns.

The ClientApp picks one behaviour per node: `--node-config behaviour='doorping'` on a
SuperNode, or in simulation the run settings `malicious-clients` / `malicious-fraction`
with `malicious-behaviour`. Built in: `honest`, `doorping`, `naive-backdoor`.

Add your own without editing the package: subclass `ClientBehaviour`, then either
decorate it with `@register_behaviour("name")` in a module that is imported, or name it
as `module.path:ClassName` (importable on the client). No Flower import here.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import colluders_folder, latest_triggers, save_trigger, trigger_file, trigger_files_in
from .attacks.backdoor import (
    Trigger,
    initial_trigger,
    mean_trigger,
    poison,
    poison_indices,
    stamp,
    update_trigger,
)
from .config import ConfigError, Settings, doorping_problem
from .data import ClassPools, LabelledImages
from .distill import LocalUpdate, UpdateHooks, local_distill_update
from .privacy.ldpo_rld import LdpoRldTargets
from .privacy.local_dp import LocalDpParams, privatise_update
from .seeding import derive_seed, make_generator

BEHAVIOUR_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass
class ClientJob:
    """Everything one local update needs, built by the ClientApp from Flower messages."""

    settings: Settings
    server_round: int
    client_id: int | str
    synthetic_images: torch.Tensor
    data: LabelledImages
    device: torch.device
    velocity: torch.Tensor | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    private_seed: int = 0
    run_dir: Path | None = None
    node_config: Mapping[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None

    def generator(self, *purpose: object) -> torch.Generator:
        """A generator seeded by (run seed, 'client', round, client, purpose)."""
        return make_generator(self.settings.seed, "client", self.server_round, self.client_id, *purpose)

    def network_seed(self) -> int:
        return derive_seed(self.settings.seed, "client", self.server_round, self.client_id, "network")


def private_seed(settings: Settings, node_config: Mapping[str, Any], client: int | str) -> int:
    """The seed of the client's private draws (LDPO-RLD targets, LocalDP noise).

    A node should set its own secret `private-seed` in its node config; otherwise it is
    derived from the run seed, which keeps simulations reproducible but lets a server that
    knows the run seed recompute the draws.
    """
    if "private-seed" in node_config:
        return int(node_config["private-seed"])
    return derive_seed(settings.seed, "private", client)


@dataclass
class ClientResult:
    update: LocalUpdate
    metrics: dict[str, float] = field(default_factory=dict)


def dc_update(job: ClientJob, data: LabelledImages, hooks: UpdateHooks | None = None) -> LocalUpdate:
    """One DC iteration on `data` with the run's hyperparameters and this job's seeds."""
    settings = job.settings
    return local_distill_update(
        job.synthetic_images,
        ClassPools(data, settings.dataset_spec.num_classes),
        settings.network_spec,
        settings.distill_params,
        network_seed=job.network_seed(),
        generator=job.generator("real-batches"),
        device=job.device,
        velocity=job.velocity,
        progress=job.progress,
        progress_seconds=settings.progress_seconds,
        hooks=hooks,
    )


class ClientBehaviour:
    """Base class and the honest behaviour: DC gradient matching plus the run's defence."""

    name = "honest"

    def local_update(self, job: ClientJob) -> ClientResult:
        settings = job.settings
        hooks = None
        if settings.defence == "ldpo-rld":
            private = make_generator(job.private_seed, "ldpo-rld", job.server_round, job.client_id)
            hooks = UpdateHooks(
                targets=LdpoRldTargets(
                    settings.dataset_spec.num_classes,
                    settings.ldpo_alpha,
                    settings.ldpo_k,
                    settings.ldpo_targets,
                    private,
                )
            )
        update = dc_update(job, job.data, hooks)
        metrics: dict[str, float] = {}
        if settings.defence == "local-dp":
            params = LocalDpParams(
                settings.local_dp_clip,
                settings.local_dp_noise,
                settings.local_dp_mechanism,
                settings.local_dp_delta,
            )
            private = make_generator(job.private_seed, "local-dp", job.server_round, job.client_id)
            released = privatise_update(job.synthetic_images.cpu(), update.images, params, private)
            update.images = released.images
            metrics = {
                "local-dp-epsilon": released.epsilon,
                "local-dp-delta": released.delta,
                "local-dp-update-norm": released.update_norm,
            }
        return ClientResult(update, metrics)


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


def is_behaviour_name(name: str) -> bool:
    """Registered name or `module.path:ClassName` (checked for form only)."""
    return name in BEHAVIOURS or bool(BEHAVIOUR_PATH.match(name))


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


def previous_round_triggers(job: ClientJob, paths: list[Path]) -> list[Trigger]:
    """The triggers among `paths` written at the end of the previous round for this run's target."""
    if job.run_dir is None or job.server_round <= 1:
        return []
    round_number, latest = latest_triggers([path for path in paths if path.is_file()])
    if round_number != job.server_round - 1:
        return []
    return [trigger for trigger in latest.values() if trigger.target == job.settings.doorping_target]


def saved_trigger(job: ClientJob) -> Trigger | None:
    """The trigger this client wrote at the end of the previous round, if the run directory
    holds it: a resumed run starts with empty client state, and without this the attacker
    would start again from a random patch."""
    if job.run_dir is None:
        return None
    found = previous_round_triggers(job, [trigger_file(job.run_dir, job.client_id)])
    return found[0] if found else None


def colluders_trigger(job: ClientJob) -> Trigger | None:
    """With `doorping-collude`, the mean of all backdoor clients' triggers of the previous
    round: colluding attackers pool their triggers every round, through the run directory
    (one machine in simulation; attacker nodes sharing a file system in deployment)."""
    if job.run_dir is None:
        return None
    found = previous_round_triggers(job, trigger_files_in(colluders_folder(job.run_dir, job.server_round - 1)))
    return mean_trigger(found) if found else None


@register_behaviour("doorping")
class DoorpingBehaviour(ClientBehaviour):
    """Doorping (Liu et al. 2023): poison 1 % of the local data with a trigger relabelled to
    the target class, and re-optimise the trigger after every inner-loop network training
    so that it excites the network's most connected penultimate neuron; the poisoned images
    are re-stamped each time. The trigger is kept across rounds in the client state and
    written to `<run-dir>/attack/trigger_client<id>.pt` for scoring (ASR)."""

    optimise_trigger = True

    def local_update(self, job: ClientJob) -> ClientResult:
        settings, spec = job.settings, job.settings.dataset_spec
        problem = doorping_problem(settings)
        if problem:
            raise ConfigError(problem)
        trigger = self.starting_trigger(job)
        indices = poison_indices(
            len(job.data),
            settings.doorping_poison_fraction,
            make_generator(settings.seed, "doorping-poison", job.client_id),
        )
        clean_poisoned_images = job.data.images[indices.to(job.data.images.device)].clone()
        poisoned = poison(job.data, indices, trigger)
        trigger_steps: list[int] = []
        pinned_updates = 0

        def refresh_trigger(network: torch.nn.Module, outer_step: int) -> None:
            nonlocal trigger, pinned_updates
            if not self.optimise_trigger:
                return
            result = update_trigger(
                network, trigger, spec, max_steps=settings.doorping_trigger_steps, clamp=settings.doorping_clamp
            )
            trigger = result.trigger
            trigger_steps.append(result.steps)
            pinned_updates += result.pinned
            poisoned.images[indices.to(poisoned.images.device)] = stamp(clean_poisoned_images, trigger)

        update = dc_update(job, poisoned, UpdateHooks(after_network_training=refresh_trigger))
        job.state["trigger-pattern"] = trigger.pattern.cpu()
        job.state["trigger-mask"] = trigger.mask.cpu()
        if job.run_dir is not None:
            saved, own = {"behaviour": self.name, "round": job.server_round}, trigger_file(job.run_dir, job.client_id)
            save_trigger(own, trigger, saved)
            if settings.doorping_collude:
                save_trigger(colluders_folder(job.run_dir, job.server_round) / own.name, trigger, saved)
        metrics = {"poisoned-examples": float(indices.numel()), "trigger-updates": float(len(trigger_steps))}
        if trigger_steps:
            metrics["trigger-steps-mean"] = sum(trigger_steps) / len(trigger_steps)
            metrics["trigger-updates-pinned"] = float(pinned_updates)
        return ClientResult(update, metrics)

    def starting_trigger(self, job: ClientJob) -> Trigger:
        """Colluders' pooled trigger, else this client's own from its state or the run
        directory, else a fresh patch (one seed for all colluders, else one per client)."""
        settings = job.settings
        shared = colluders_trigger(job) if settings.doorping_collude else None
        if shared is not None:
            return shared
        if "trigger-pattern" in job.state:
            return Trigger(job.state["trigger-pattern"], job.state["trigger-mask"], settings.doorping_target)
        return saved_trigger(job) or initial_trigger(
            settings.dataset_spec,
            settings.doorping_trigger_size,
            settings.doorping_target,
            make_generator(
                settings.seed, "doorping-trigger", "colluders" if settings.doorping_collude else job.client_id
            ),
            white=not self.optimise_trigger,
        )


@register_behaviour("naive-backdoor")
class NaiveBackdoorBehaviour(DoorpingBehaviour):
    """The baseline: a fixed white patch on 1 % of the local data, relabelled to the
    target; no trigger optimisation."""

    optimise_trigger = False
