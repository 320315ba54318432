"""Networks used for distillation and evaluation (no Flower import).

The default is the ConvNet of Zhao et al.'s DC reference: `depth` blocks of
Conv3x3(width) -> InstanceNorm -> ReLU -> AvgPool2d(2), then one Linear layer.
28x28 inputs get padding 3 on the first convolution, so MNIST-sized and
CIFAR-sized inputs both end at 4x4xwidth = 2048 features with the defaults.
`net_hidden` > 0 inserts Linear(features, hidden) -> ReLU before the classifier: the
ConvNet of Doorping's reference code (hidden 192), whose trigger update works on that
dense layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = ("relu", "sigmoid", "leakyrelu")
NORMALIZATIONS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
POOLINGS = ("avgpooling", "maxpooling", "none")


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to build a fresh network for one task."""

    channels: int
    num_classes: int
    image_size: tuple[int, int]
    net_width: int = 128
    net_depth: int = 3
    net_activation: str = "relu"
    net_norm: str = "instancenorm"
    net_pooling: str = "avgpooling"
    net_hidden: int = 0


class ConvNet(nn.Module):
    """DC's ConvNet; `features()` exposes the penultimate representation."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        if spec.net_activation not in ACTIVATIONS:
            raise ValueError(f"net-activation must be one of {ACTIVATIONS}, got {spec.net_activation!r}")
        if spec.net_norm not in NORMALIZATIONS:
            raise ValueError(
                f"net-norm must be one of {NORMALIZATIONS}, got {spec.net_norm!r}"
            )
        if spec.net_pooling not in POOLINGS:
            raise ValueError(f"net-pooling must be one of {POOLINGS}, got {spec.net_pooling!r}")
        height, width = spec.image_size
        first_padding = 1
        if (height, width) == (28, 28):
            first_padding = 3
            height, width = 32, 32
        layers: list[nn.Module] = []
        in_channels = spec.channels
        for block in range(spec.net_depth):
            layers.append(
                nn.Conv2d(
                    in_channels,
                    spec.net_width,
                    kernel_size=3,
                    padding=first_padding if block == 0 else 1,
                )
            )
            norm = _normalization_layer(spec.net_norm, spec.net_width, height, width)
            if norm is not None:
                layers.append(norm)
            layers.append(_activation_layer(spec.net_activation))
            if spec.net_pooling != "none":
                layers.append(
                    nn.AvgPool2d(2, 2) if spec.net_pooling == "avgpooling" else nn.MaxPool2d(2, 2)
                )
                height, width = height // 2, width // 2
            in_channels = spec.net_width
        self.body = nn.Sequential(*layers)
        self.num_features = spec.net_width * height * width
        self.hidden = nn.Linear(self.num_features, spec.net_hidden) if spec.net_hidden > 0 else None
        self.classifier = nn.Linear(spec.net_hidden or self.num_features, spec.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Convolutional features, flattened (input of the dense layers)."""
        return self.body(images).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        if self.hidden is not None:
            features = torch.relu(self.hidden(features))
        return self.classifier(features)


def _normalization_layer(kind: str, channels: int, height: int, width: int) -> nn.Module | None:
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels, affine=True)
    if kind == "layernorm":
        return nn.LayerNorm([channels, height, width], elementwise_affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    return None


def _activation_layer(kind: str) -> nn.Module:
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    return nn.ReLU()


def build_network(spec: NetworkSpec, seed: int, device: torch.device | str = "cpu") -> ConvNet:
    """A freshly initialised ConvNet whose weights depend only on `seed`.

    PyTorch's default initialisers draw from the global generator; forking it keeps
    those draws reproducible without disturbing anyone else's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = ConvNet(spec)
    return network.to(device)
