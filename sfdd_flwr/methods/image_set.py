"""What every method whose shared state is the synthetic images themselves has in common
(gradient matching, distribution matching): S starts from noise (the server holds no
data), its labels are a pure function of (classes, IPC) and never travel, and the
labelled set for evaluation is S itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..data.datasets import LabelledImages
from ..models.convnet import NetworkSpec
from ..seeding import make_generator
from .base import State, SynthesisMethod, class_labels

IMAGES = "images"


def initial_synthetic_images(spec: NetworkSpec, ipc: int, generator: torch.Generator) -> torch.Tensor:
    """Noise initialisation: N(0, 1) in normalised space, `ipc` images per class."""
    height, width = spec.image_size
    return torch.randn((spec.num_classes * ipc, spec.channels, height, width), generator=generator)


class ImageSetMethod(SynthesisMethod):
    """Base of the methods that ship S and receive each client's S_i."""

    checkpoint_file = "synthetic_set.pt"

    def labels(self) -> torch.Tensor:
        return class_labels(self.settings.dataset_spec.num_classes, self.settings.ipc)

    def initial_state(self) -> State:
        generator = make_generator(self.settings.seed, "init")
        return {IMAGES: initial_synthetic_images(self.settings.network_spec, self.settings.ipc, generator)}

    def labelled_set(
        self, state: State, server_round: int, device: torch.device, report: Callable[[str], None] | None = None
    ) -> LabelledImages:
        return LabelledImages(state[IMAGES], self.labels())

    def checkpoint(self, state: State) -> dict[str, torch.Tensor]:
        return {IMAGES: state[IMAGES], "labels": self.labels()}

    def restore(self, saved: Mapping[str, Any]) -> State:
        return {IMAGES: saved[IMAGES]}
