"""Doorping's malicious client, and the naive backdoor (its baseline), as client
behaviours: poison a share of the local data with a trigger relabelled to the target
class; Doorping also re-optimises the trigger inside the method's update (the
`after_network_training` hook, which gradient matching offers)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ...behaviours.base import ClientBehaviour, register_behaviour
from ...methods.base import LocalJob, LocalResult, SynthesisMethod
from ...seeding import make_generator
from ...settings.schema import ConfigError
from .files import colluders_folder, latest_triggers, save_trigger, trigger_file, trigger_files_in
from .settings import DoorpingSettings, doorping_problem
from .trigger import Trigger, initial_trigger, mean_trigger, poison, poison_indices, stamp, update_trigger


def previous_round_triggers(job: LocalJob, paths: list[Path]) -> list[Trigger]:
    """The triggers among `paths` written at the end of the previous round for this run's target."""
    if job.run_dir is None or job.server_round <= 1:
        return []
    round_number, latest = latest_triggers([path for path in paths if path.is_file()])
    if round_number != job.server_round - 1:
        return []
    return [trigger for trigger in latest.values() if trigger.target == job.settings.doorping_target]


def saved_trigger(job: LocalJob) -> Trigger | None:
    """The trigger this client wrote at the end of the previous round, if the run directory
    holds it: a resumed run starts with empty client state, and without this the attacker
    would start again from a random patch."""
    if job.run_dir is None:
        return None
    found = previous_round_triggers(job, [trigger_file(job.run_dir, job.client_id)])
    return found[0] if found else None


def colluders_trigger(job: LocalJob) -> Trigger | None:
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

    settings_group = DoorpingSettings
    required_hooks = frozenset({"after_network_training"})
    optimise_trigger = True

    def local_update(self, job: LocalJob, method: SynthesisMethod) -> LocalResult:
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
            result = update_trigger(
                network, trigger, spec, max_steps=settings.doorping_trigger_steps, clamp=settings.doorping_clamp
            )
            trigger = result.trigger
            trigger_steps.append(result.steps)
            pinned_updates += result.pinned
            poisoned.images[indices.to(poisoned.images.device)] = stamp(clean_poisoned_images, trigger)

        hooks = replace(job.hooks, after_network_training=refresh_trigger) if self.optimise_trigger else job.hooks
        result = method.local_update(replace(job, data=poisoned, hooks=hooks))
        job.behaviour_state["trigger-pattern"] = trigger.pattern.cpu()
        job.behaviour_state["trigger-mask"] = trigger.mask.cpu()
        if job.run_dir is not None:
            saved, own = {"behaviour": self.name, "round": job.server_round}, trigger_file(job.run_dir, job.client_id)
            save_trigger(own, trigger, saved)
            if settings.doorping_collude:
                save_trigger(colluders_folder(job.run_dir, job.server_round) / own.name, trigger, saved)
        metrics = {"poisoned-examples": float(indices.numel()), "trigger-updates": float(len(trigger_steps))}
        if trigger_steps:
            metrics["trigger-steps-mean"] = sum(trigger_steps) / len(trigger_steps)
            metrics["trigger-updates-pinned"] = float(pinned_updates)
        result.metrics |= metrics
        return result

    def starting_trigger(self, job: LocalJob) -> Trigger:
        """Colluders' pooled trigger, else this client's own from its state or the run
        directory, else a fresh patch (one seed for all colluders, else one per client)."""
        settings = job.settings
        shared = colluders_trigger(job) if settings.doorping_collude else None
        if shared is not None:
            return shared
        if "trigger-pattern" in job.behaviour_state:
            return Trigger(
                job.behaviour_state["trigger-pattern"], job.behaviour_state["trigger-mask"], settings.doorping_target
            )
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
    target; no trigger optimisation (so it needs no hook: any method)."""

    required_hooks = frozenset()
    optimise_trigger = False
