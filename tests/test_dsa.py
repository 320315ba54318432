"""Differentiable siamese augmentation: one transformation for a class's real and synthetic
batch, the reference's parameter ranges, gradients flow to the synthetic images."""

import pytest
import torch

from sfdd_flwr.augmentation.dsa import GROUPS, DsaParams, apply, augment, draw, parse_strategy, siamese, strategy_for


def _draw_group(group: str, count: int, seed: int = 0):
    return draw(DsaParams(strategy=group), count, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("group", GROUPS)
def test_siamese_mode_gives_the_real_batch_and_the_synthetic_images_one_transformation(group):
    generator = torch.Generator().manual_seed(1)
    real = torch.randn(8, 3, 16, 16, generator=generator)
    synthetic = real[:3].clone().requires_grad_(True)
    for seed in range(4):  # a few draws, so that the random choices vary
        real_out, synthetic_out = siamese(real, synthetic, DsaParams(strategy=group), torch.Generator().manual_seed(seed))
        assert real_out.shape == real.shape
        assert torch.allclose(synthetic_out, real_out[:3], atol=1e-6)
        drawn = _draw_group(group, 1, seed)
        for i in range(8):  # every real image got the same transformation
            assert torch.allclose(apply(real[i : i + 1], drawn, DsaParams()), real_out[i : i + 1], atol=1e-6)
    (gradient,) = torch.autograd.grad(synthetic_out.square().sum(), [synthetic])
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


@pytest.mark.parametrize("group", ["crop", "cutout", "scale", "rotate", "color"])
def test_each_group_changes_the_images_and_training_mode_draws_per_image(group):
    images = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    out = augment(images, DsaParams(strategy=group), torch.Generator().manual_seed(3))
    assert not torch.allclose(out, images)
    same_image = augment(images[:1].expand(6, -1, -1, -1), DsaParams(strategy=group), torch.Generator().manual_seed(3))
    assert len({tuple(view.flatten().tolist()) for view in same_image}) > 1, "one transformation for all"


def test_crop_shifts_by_whole_pixels_uniformly_over_the_references_range():
    images = torch.zeros(1, 1, 32, 32)
    images[0, 0, 16, 16] = 1.0
    shifts = set()
    for seed in range(300):
        out = apply(images, _draw_group("crop", 1, seed), DsaParams())
        assert out.sum().item() == pytest.approx(1.0, abs=1e-5)  # one whole pixel, moved
        row, col = divmod(int(out.flatten().argmax()), 32)
        shifts.add((16 - row, 16 - col))
    pad = int(32 * 0.125 + 0.5)
    assert {s for s, _ in shifts} == set(range(-pad, pad + 1)) == {s for _, s in shifts}


@pytest.mark.parametrize(("size", "side"), [(32, 16), (28, 14)])
def test_cutout_zeroes_the_references_square_and_its_centre_covers_the_image(size, side):
    images = torch.ones(1, 1, size, size)
    zeroed, largest_centre = [], 0
    for seed in range(400):
        drawn = _draw_group("cutout", 1, seed)
        out = apply(images, drawn, DsaParams())
        zeroed.append(int((out == 0).sum()))
        largest_centre = max(largest_centre, int(drawn.values["offset"][0, 0] * (size + 1 - side % 2)))
    assert max(zeroed) == side * side and min(zeroed) >= (side // 2) ** 2
    assert largest_centre == size  # even side: the centre is an integer in [0, size]


def test_draws_are_seeded_and_the_group_follows_the_strategy():
    first, again = _draw_group("crop_scale", 4, seed=5), _draw_group("crop_scale", 4, seed=5)
    assert first.group == again.group and torch.equal(first.values[next(iter(first.values))],
                                                       again.values[next(iter(again.values))])
    groups = {draw(DsaParams(strategy="crop_scale"), 2, torch.Generator().manual_seed(s)).group for s in range(20)}
    assert groups == {"crop", "scale"}


def test_digits_drop_the_flip_and_bad_strategies_are_refused():
    assert strategy_for("mnist") == strategy_for("svhn") == "color_crop_cutout_scale_rotate"
    assert strategy_for("fashionmnist") == strategy_for("cifar10") == "color_crop_cutout_flip_scale_rotate"
    with pytest.raises(ValueError, match="augmentation groups"):
        parse_strategy("color_blur")
    with pytest.raises(ValueError, match="holds only flip"):
        strategy_for("mnist", "flip")


def test_more_images_than_drawn_parameters_is_an_error():
    with pytest.raises(ValueError, match="drawn for 2"):
        apply(torch.zeros(3, 1, 8, 8), _draw_group("flip", 2), DsaParams())
