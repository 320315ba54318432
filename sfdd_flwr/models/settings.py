"""The network settings: DC's ConvNet, used to distill and to evaluate a synthetic set."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.datasets import DatasetSpec
from ..settings.schema import Rule, SettingsGroup, at_least, choice, setting
from .convnet import ACTIVATIONS, NORMALIZATIONS, POOLINGS, NetworkSpec


@dataclass(frozen=True)
class NetworkSettings(SettingsGroup):
    title = "Network"

    net_width: int = setting(128, at_least(1), "channels of every convolution")
    net_depth: int = setting(3, at_least(1), "convolutional blocks")
    net_activation: str = setting("relu", choice(ACTIVATIONS), "activation after each normalisation")
    net_norm: str = setting("instancenorm", choice(NORMALIZATIONS), "normalisation of each block")
    net_pooling: str = setting("avgpooling", choice(POOLINGS), "pooling after each block")
    net_hidden: int = setting(
        0,
        Rule(lambda v: v >= 0, "0 (DC's ConvNet) or the width of a hidden dense layer (Doorping's reference: 192)"),
        "width of a hidden dense layer (ReLU) before the classifier; `0` is DC's ConvNet, `192` the ConvNet "
        "of Doorping's reference code",
    )

    def spec(self, dataset: DatasetSpec) -> NetworkSpec:
        return NetworkSpec(
            channels=dataset.channels,
            num_classes=dataset.num_classes,
            image_size=dataset.image_size,
            net_width=self.net_width,
            net_depth=self.net_depth,
            net_activation=self.net_activation,
            net_norm=self.net_norm,
            net_pooling=self.net_pooling,
            net_hidden=self.net_hidden,
        )
