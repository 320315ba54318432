"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021).

As in the reference's single mode, each call applies one group of the strategy, chosen
at random: `color` (brightness, saturation, contrast), `crop` (a whole-pixel translation
by up to `ratio-crop-pad` of the size, zero padding), `cutout` (a zeroed square of
`ratio-cutout` of the size), `flip` (horizontal, with probability 1/2), `scale` (each
axis by a factor in [1/ratio, ratio]) or `rotate` (up to `ratio-rotate` degrees). Every
transformation is differentiable w.r.t. the images.

Two modes, as in the reference:

- `siamese` (matching): one transformation is drawn and applied to a class's whole real
  batch and to its synthetic images alike, so the matched gradients or embeddings see
  the same view of both (the reference draws per sample from one reset seed and then
  overwrites every sample's parameters with the first one's);
- `augment` (training a network on S: DSA's inner loop and evaluation): a group per call
  and parameters per sample.

The parameters are drawn from an explicit generator (the client's seeded `dsa` draw)
instead of the reference's wall-clock seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
# The reference's README: no flip for the digit datasets (MNIST and SVHN).
NO_FLIP_DATASETS = ("mnist", "svhn")


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
    if not strategy or unknown:
        raise ValueError(f"augmentation groups must be among {GROUPS} joined by '_', got {strategy!r}")
    return groups


def strategy_for(dataset: str, strategy: str = DEFAULT_STRATEGY) -> str:
    """The strategy as used on `dataset`: without `flip` on digits (a flipped digit is
    another glyph), as the reference's README prescribes. Fails if nothing is left."""
    if dataset in NO_FLIP_DATASETS:
        kept = "_".join(group for group in parse_strategy(strategy) if group != "flip")
        if not kept:
            raise ValueError(f"dsa-strategy {strategy!r} holds only flip, which {dataset} does not use")
        return kept
    parse_strategy(strategy)
    return strategy


@dataclass(frozen=True)
class DrawnAugmentation:
    """One group and its parameters for `count` images (1: the same for every image).

    Integer parameters (crop shifts, cutout offsets) are kept as uniforms in [0, 1) and
    turned into pixels by `apply`, which knows the image size."""

    group: str
    values: dict[str, torch.Tensor]

    @property
    def count(self) -> int:
        return int(next(iter(self.values.values())).shape[0])


def draw(params: DsaParams, count: int, generator: torch.Generator) -> DrawnAugmentation:
    """Draw a group and `count` parameter sets from `generator`."""
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
        values = {"shift": uniform(0.0, 1.0, 2)}
    elif group == "cutout":
        values = {"offset": uniform(0.0, 1.0, 2)}
    elif group == "flip":
        values = {"flip": (torch.rand(count, generator=generator) < 0.5).float()}
    elif group == "scale":
        values = {"scale": uniform(1.0 / params.ratio_scale, params.ratio_scale, 2)}
    else:
        values = {"angle": uniform(-params.ratio_rotate, params.ratio_rotate) * math.pi / 180}
    return DrawnAugmentation(group, values)


def apply(images: torch.Tensor, drawn: DrawnAugmentation, params: DsaParams) -> torch.Tensor:
    """`images [N, C, H, W]` transformed: all by the one drawn set if `drawn.count` is 1,
    else image i by set i (the first N sets)."""
    count = images.shape[0]
    if drawn.count == 1:
        values = {name: value.expand(count, *value.shape[1:]) for name, value in drawn.values.items()}
    elif count <= drawn.count:
        values = {name: value[:count] for name, value in drawn.values.items()}
    else:
        raise ValueError(f"{count} images but parameters drawn for {drawn.count}")
    values = {name: value.to(images.device, images.dtype) for name, value in values.items()}
    if drawn.group == "color":
        return _color(images, values)
    if drawn.group == "cutout":
        return images * _cutout_mask(images, values["offset"], params.ratio_cutout)
    if drawn.group == "flip":
        flip = values["flip"].view(-1, 1, 1, 1)
        return flip * images.flip(3) + (1 - flip) * images
    return _warp(images, _affine(drawn.group, values, images, params))


def siamese(
    real: torch.Tensor, synthetic: torch.Tensor, params: DsaParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """DSA's matching mode: one transformation drawn, applied to both batches."""
    drawn = draw(params, 1, generator)
    return apply(real, drawn, params), apply(synthetic, drawn, params)


def augment(images: torch.Tensor, params: DsaParams, generator: torch.Generator) -> torch.Tensor:
    """DSA's training mode: one group, parameters drawn per image."""
    return apply(images, draw(params, images.shape[0], generator), params)


def _color(images: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
    x = images + values["brightness"].view(-1, 1, 1, 1)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * values["saturation"].view(-1, 1, 1, 1) + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * values["contrast"].view(-1, 1, 1, 1) + image_mean


def _cutout_mask(images: torch.Tensor, offset: torch.Tensor, ratio: float) -> torch.Tensor:
    """The reference's square: `int(size * ratio + 0.5)` pixels a side, its centre at an
    integer uniform in [0, size] (even sides) or [0, size - 1] (odd), cut at the border."""
    masks = []
    for axis, size in enumerate(images.shape[2:]):
        side = int(size * ratio + 0.5)
        centre = (offset[:, axis] * (size + 1 - side % 2)).floor()
        start = centre - side // 2
        positions = torch.arange(size, device=images.device, dtype=images.dtype).view(1, -1)
        masks.append((positions >= start.view(-1, 1)) & (positions < (start + side).view(-1, 1)))
    inside = masks[0].unsqueeze(2) & masks[1].unsqueeze(1)
    return (~inside).to(images.dtype).unsqueeze(1)


def _affine(group: str, values: dict[str, torch.Tensor], images: torch.Tensor, params: DsaParams) -> torch.Tensor:
    count = images.shape[0]
    theta = torch.zeros((count, 2, 3), device=images.device, dtype=images.dtype)
    if group == "crop":
        # a whole number of pixels in [-pad, pad], pad = int(size * ratio + 0.5), in grid units (2 per side)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        for row, axis in ((1, 0), (0, 1)):
            size = images.shape[2 + axis]
            pad = int(size * params.ratio_crop_pad + 0.5)
            pixels = (values["shift"][:, axis] * (2 * pad + 1)).floor() - pad
            theta[:, row, 2] = pixels * 2 / size
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
