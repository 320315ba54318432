"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021).

The same randomly drawn transformation is applied to a real batch and to the synthetic
images it is matched against, and every transformation is differentiable w.r.t. the
images, so matching gradients (or embeddings) flow back to the synthetic set through it.

As in DSA's single mode, each call applies one group of the strategy, chosen at random:
`color` (brightness, saturation, contrast), `crop` (a translation by up to
`ratio-crop-pad` of the size, zero padding), `cutout` (a zeroed square of
`ratio-cutout` of the size), `flip` (horizontal, with probability 1/2), `scale` (each
axis by a factor in [1/ratio, ratio]) or `rotate` (up to `ratio-rotate` degrees).

The parameters are drawn once per sample position (`draw`) and applied to any batch
(`apply`): sample i of the synthetic images gets exactly the transformation of sample i
of the real batch. The reference draws the real and synthetic parameters from one reset
seed instead; our explicit draw makes the siamese pairing exact and testable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DIGIT_DATASETS = ("mnist", "fashionmnist")


@dataclass(frozen=True)
class DsaParams:
    """DSA's reference parameters."""

    strategy: str = DEFAULT_STRATEGY
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    @property
    def groups(self) -> tuple[str, ...]:
        return parse_strategy(self.strategy)


def parse_strategy(strategy: str) -> tuple[str, ...]:
    groups = tuple(strategy.split("_"))
    unknown = [group for group in groups if group not in GROUPS]
    if not groups or unknown:
        raise ValueError(f"augmentation groups must be among {GROUPS} joined by '_', got {strategy!r}")
    return groups


def strategy_for(dataset: str, strategy: str = DEFAULT_STRATEGY) -> str:
    """The reference drops `flip` for MNIST-like data (a flipped digit is another glyph)."""
    if dataset in DIGIT_DATASETS:
        return "_".join(group for group in parse_strategy(strategy) if group != "flip")
    return strategy


@dataclass(frozen=True)
class DrawnAugmentation:
    """One group and its per-sample parameters for up to `count` sample positions."""

    group: str
    values: dict[str, torch.Tensor]

    @property
    def count(self) -> int:
        return int(next(iter(self.values.values())).shape[0])


def draw(params: DsaParams, count: int, generator: torch.Generator) -> DrawnAugmentation:
    """Draw a group and `count` per-sample parameter sets from `generator`."""
    groups = params.groups
    group = groups[int(torch.randint(len(groups), (1,), generator=generator))]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand((count, *shape), generator=generator) * (high - low) + low

    if group == "color":
        values = {
            "brightness": uniform(-0.5, 0.5) * params.brightness,
            "saturation": uniform(0.0, 1.0) * params.saturation,
            "contrast": uniform(0.0, 1.0) + params.contrast,
        }
    elif group == "crop":
        values = {"shift": uniform(-params.ratio_crop_pad, params.ratio_crop_pad, 2)}
    elif group == "cutout":
        values = {"centre": uniform(0.0, 1.0, 2)}
    elif group == "flip":
        values = {"flip": (torch.rand(count, generator=generator) < 0.5).float()}
    elif group == "scale":
        values = {"scale": uniform(1.0 / params.ratio_scale, params.ratio_scale, 2)}
    else:
        values = {"angle": uniform(-params.ratio_rotate, params.ratio_rotate) * math.pi / 180}
    return DrawnAugmentation(group, values)


def apply(images: torch.Tensor, drawn: DrawnAugmentation, params: DsaParams) -> torch.Tensor:
    """`images [N, C, H, W]` transformed by the first N drawn parameter sets."""
    count = images.shape[0]
    if count > drawn.count:
        raise ValueError(f"{count} images but parameters drawn for {drawn.count}")
    values = {name: value[:count].to(images.device, images.dtype) for name, value in drawn.values.items()}
    if drawn.group == "color":
        return _color(images, values)
    if drawn.group == "cutout":
        return images * _cutout_mask(images, values["centre"], params.ratio_cutout)
    if drawn.group == "flip":
        flip = values["flip"].view(-1, 1, 1, 1)
        return flip * images.flip(3) + (1 - flip) * images
    return _warp(images, _affine(drawn.group, values, images))


def _color(images: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
    x = images + values["brightness"].view(-1, 1, 1, 1)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * values["saturation"].view(-1, 1, 1, 1) + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * values["contrast"].view(-1, 1, 1, 1) + image_mean


def _cutout_mask(images: torch.Tensor, centre: torch.Tensor, ratio: float) -> torch.Tensor:
    height, width = images.shape[2:]
    half_h, half_w = int(height * ratio + 0.5) // 2, int(width * ratio + 0.5) // 2
    rows = torch.arange(height, device=images.device).view(1, -1, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, -1)
    centre_row = (centre[:, 0] * height).floor().view(-1, 1, 1)
    centre_col = (centre[:, 1] * width).floor().view(-1, 1, 1)
    inside = ((rows - centre_row).abs() <= half_h) & ((cols - centre_col).abs() <= half_w)
    return (~inside).to(images.dtype).unsqueeze(1)


def _affine(group: str, values: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    count = images.shape[0]
    theta = torch.zeros((count, 2, 3), device=images.device, dtype=images.dtype)
    if group == "crop":
        height, width = images.shape[2:]
        # a whole number of pixels, in grid units (2 per image side)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2] = (values["shift"][:, 1] * width).round() * 2 / width
        theta[:, 1, 2] = (values["shift"][:, 0] * height).round() * 2 / height
    elif group == "scale":
        theta[:, 0, 0] = values["scale"][:, 0]
        theta[:, 1, 1] = values["scale"][:, 1]
    else:
        angle = values["angle"]
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), torch.sin(-angle)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    return theta


def _warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
