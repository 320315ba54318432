"""Gradient matching (Zhao et al.'s Dataset Condensation, DC) as an SFDD method: the
server ships the synthetic images S, each client runs one DC iteration of per-class
gradient matching against its private data, the server combines the S_i.

The shared state is S itself (`images`, normalised space); its labels are a pure
function of (classes, IPC), never sent. The update honours both hooks: soft targets
(LDPO-RLD) and a callback after each inner-loop network training (Doorping).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...augmentation.settings import AugmentationSettings
from ...data.datasets import ClassPools
from ..base import LocalJob, LocalResult
from ..image_set import IMAGES, ImageSetMethod
from .settings import GradientMatchingSettings
from .update import local_distill_update


class GradientMatching(ImageSetMethod):
    name = "gradient-matching"
    settings_group = GradientMatchingSettings
    supported_hooks = frozenset({"targets", "after_network_training"})
    round_metrics = {"matching-loss": "mean"}

    def describe_round(self, round_metrics: Mapping[str, Any]) -> str:
        return f"matching loss {round_metrics.get('matching_loss', float('nan')):.3f}"

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
            dsa=settings.group(AugmentationSettings).params(settings.dataset) if params.dsa else None,
            augment_generator=job.generator("dsa") if params.dsa else None,
        )
        return LocalResult(
            state={IMAGES: update.images},
            metrics={"matching-loss": update.matching_loss, "matched-classes": update.matched_classes},
            method_state={"velocity": update.velocity} if params.persist_momentum else {},
        )
