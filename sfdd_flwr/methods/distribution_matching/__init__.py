"""Distribution matching (DM) as a federated method: the server ships S, each client
moves it for `dm-steps` steps towards its own data's per-class mean embeddings under
random networks, the server combines the S_i as for gradient matching.

The shared state, labels and evaluation set are those of every image-set method
(`methods/image_set.py`). No hooks: DM has no labels in its loss (LDPO-RLD's soft
targets do not apply) and no trained network (nor Doorping's trigger update).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...augmentation.settings import AugmentationSettings
from ...data.datasets import ClassPools
from ..base import LocalJob, LocalResult
from ..image_set import IMAGES, ImageSetMethod
from .settings import DistributionMatchingSettings
from .update import distribution_matching_update


class DistributionMatching(ImageSetMethod):
    name = "distribution-matching"
    settings_group = DistributionMatchingSettings
    round_metrics = {"embedding-distance": "mean"}

    def describe_round(self, round_metrics: Mapping[str, Any]) -> str:
        return f"embedding distance {round_metrics.get('embedding_distance', float('nan')):.3f}"

    def local_update(self, job: LocalJob) -> LocalResult:
        settings = job.settings
        params = settings.group(DistributionMatchingSettings)
        dsa = settings.group(AugmentationSettings).params(settings.dataset) if params.dm_dsa else None
        update = distribution_matching_update(
            job.state[IMAGES],
            ClassPools(job.data, settings.dataset_spec.num_classes),
            settings.network_spec,
            params,
            network_seed=job.network_seed(),
            generator=job.generator("real-batches"),
            device=job.device,
            velocity=job.method_state.get("velocity"),
            dsa=dsa,
            augment_generator=job.generator("dsa") if dsa is not None else None,
            progress=job.progress,
            progress_seconds=settings.progress_seconds,
        )
        return LocalResult(
            state={IMAGES: update.images},
            metrics={"embedding-distance": update.distance, "matched-classes": update.matched_classes},
            method_state={"velocity": update.velocity},
        )
