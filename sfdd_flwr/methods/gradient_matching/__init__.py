"""Gradient matching (Zhao et al.'s Dataset Condensation, DC) as an SFDD method: the
server ships the synthetic images S, each client runs one DC iteration of per-class
gradient matching against its private data, the server combines the S_i.

The shared state is S itself (`images`, normalised space); its labels are a pure
function of (classes, IPC), never sent. The update honours both hooks: soft targets
(LDPO-RLD) and a callback after each inner-loop network training (Doorping).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ...data.datasets import ClassPools, LabelledImages
from ...seeding import make_generator
from ..base import LocalJob, LocalResult, State, SynthesisMethod, class_labels
from .settings import GradientMatchingSettings
from .update import initial_synthetic_images, local_distill_update

IMAGES = "images"


class GradientMatching(SynthesisMethod):
    name = "gradient-matching"
    settings_group = GradientMatchingSettings
    supported_hooks = frozenset({"targets", "after_network_training"})
    round_metrics = {"matching-loss": "mean"}
    checkpoint_file = "synthetic_set.pt"

    def labels(self) -> torch.Tensor:
        return class_labels(self.settings.dataset_spec.num_classes, self.settings.ipc)

    def initial_state(self) -> State:
        """Noise in normalised space: the server holds no data."""
        generator = make_generator(self.settings.seed, "init")
        return {IMAGES: initial_synthetic_images(self.settings.network_spec, self.settings.ipc, generator)}

    def labelled_set(
        self, state: State, server_round: int, device: torch.device, report: Callable[[str], None] | None = None
    ) -> LabelledImages:
        return LabelledImages(state[IMAGES], self.labels())

    def describe_round(self, round_metrics: Mapping[str, Any]) -> str:
        return f"matching loss {round_metrics.get('matching_loss', float('nan')):.3f}"

    def checkpoint(self, state: State) -> dict[str, torch.Tensor]:
        return {IMAGES: state[IMAGES], "labels": self.labels()}

    def restore(self, saved: Mapping[str, Any]) -> State:
        return {IMAGES: saved[IMAGES]}

    def local_update(self, job: LocalJob) -> LocalResult:
        settings = job.settings
        params = settings.group(GradientMatchingSettings)
        velocity = job.method_state.get("velocity") if params.persist_momentum else None
        update = local_distill_update(
            job.state[IMAGES],
            ClassPools(job.data, settings.dataset_spec.num_classes),
            settings.network_spec,
            params,
            network_seed=job.network_seed(),
            generator=job.generator("real-batches"),
            device=job.device,
            velocity=velocity,
            progress=job.progress,
            progress_seconds=settings.progress_seconds,
            hooks=job.hooks,
        )
        return LocalResult(
            state={IMAGES: update.images},
            metrics={"matching-loss": update.matching_loss, "matched-classes": update.matched_classes},
            method_state={"velocity": update.velocity} if params.persist_momentum else {},
        )
