"""Differentiable siamese augmentation: same parameters, same transformation, gradients flow."""

import pytest
import torch

from sfdd_flwr.augmentation.dsa import GROUPS, DsaParams, apply, draw, parse_strategy, strategy_for


def _draw_group(group: str, count: int, seed: int = 0):
    return draw(DsaParams(strategy=group), count, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("group", GROUPS)
def test_a_synthetic_image_gets_exactly_its_real_partners_transformation(group):
    generator = torch.Generator().manual_seed(1)
    real = torch.randn(8, 3, 16, 16, generator=generator)
    synthetic = real[:3].clone().requires_grad_(True)
    drawn = _draw_group(group, 8)
    real_out = apply(real, drawn, DsaParams())
    synthetic_out = apply(synthetic, drawn, DsaParams())
    assert real_out.shape == real.shape
    assert torch.allclose(synthetic_out, real_out[:3], atol=1e-6)
    (gradient,) = torch.autograd.grad(synthetic_out.square().sum(), [synthetic])
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


@pytest.mark.parametrize("group", ["crop", "cutout", "scale", "rotate", "color"])
def test_each_group_changes_the_images(group):
    images = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(apply(images, _draw_group(group, 6, seed=3), DsaParams()), images)


def test_crop_is_a_whole_pixel_shift_with_zero_padding():
    images = torch.arange(64.0).view(1, 1, 8, 8)
    drawn = _draw_group("crop", 1)
    drawn.values["shift"][:] = torch.tensor([[0.125, -0.125]])  # one pixel along each axis
    out = apply(images, drawn, DsaParams())
    shifted_values = set(out.flatten().tolist()) - {0.0}
    assert shifted_values <= set(images.flatten().tolist())
    assert (out == 0).sum() == 15  # one row and one column padded


def test_draws_are_seeded_and_the_group_follows_the_strategy():
    first, again = _draw_group("crop_scale", 4, seed=5), _draw_group("crop_scale", 4, seed=5)
    assert first.group == again.group and torch.equal(first.values[next(iter(first.values))],
                                                       again.values[next(iter(again.values))])
    groups = {draw(DsaParams(strategy="crop_scale"), 2, torch.Generator().manual_seed(s)).group for s in range(20)}
    assert groups == {"crop", "scale"}


def test_digits_drop_the_flip_and_bad_strategies_are_refused():
    assert strategy_for("mnist") == "color_crop_cutout_scale_rotate"
    assert strategy_for("cifar10") == "color_crop_cutout_flip_scale_rotate"
    with pytest.raises(ValueError, match="augmentation groups"):
        parse_strategy("color_blur")


def test_more_images_than_drawn_parameters_is_an_error():
    with pytest.raises(ValueError, match="drawn for 2"):
        apply(torch.zeros(3, 1, 8, 8), _draw_group("flip", 2), DsaParams())
