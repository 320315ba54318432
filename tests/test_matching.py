import pytest
import torch

from sfdd_flwr.methods.gradient_matching.distance import layer_distance, match_distance


def _grads(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(16, 3, 3, 3, generator=generator),  # conv weight
        torch.randn(16, generator=generator),  # bias
        torch.randn(10, 64, generator=generator),  # linear weight
    ]


def test_zero_for_equal_gradients():
    grads = _grads(0)
    assert match_distance(grads, [g.clone() for g in grads]).item() == pytest.approx(0.0, abs=1e-4)


def test_invariant_to_positive_scaling_of_each_row():
    real = _grads(0)
    generator = torch.Generator().manual_seed(1)
    synthetic = _grads(2)
    scaled = [
        g * (torch.rand(g.shape[0], *([1] * (g.dim() - 1)), generator=generator) * 10 + 0.1)
        for g in synthetic
    ]
    assert match_distance(real, scaled).item() == pytest.approx(
        match_distance(real, synthetic).item(), rel=1e-4
    )


def test_negated_rows_give_the_maximum_distance_per_row():
    real = [torch.randn(4, 5)]
    assert match_distance(real, [-real[0]]).item() == pytest.approx(2.0 * 4, rel=1e-4)


def test_one_dimensional_tensors_contribute_nothing():
    bias_real, bias_synthetic = torch.randn(16), torch.randn(16)
    assert layer_distance(bias_real, bias_synthetic).item() == 0.0
    real, synthetic = _grads(0), _grads(1)
    changed = [synthetic[0], torch.randn(16) * 100, synthetic[2]]
    assert match_distance(real, changed).item() == pytest.approx(
        match_distance(real, synthetic).item(), rel=1e-6
    )


def test_conv_rows_are_output_channels():
    real = torch.randn(2, 3, 3, 3)
    synthetic = real.clone()
    synthetic[1] = -synthetic[1]  # only the second output row disagrees
    assert layer_distance(real, synthetic).item() == pytest.approx(2.0, rel=1e-4)


def test_mse_and_cos_variants():
    real, synthetic = _grads(0), _grads(1)
    flat_real = torch.cat([g.flatten() for g in real])
    flat_synthetic = torch.cat([g.flatten() for g in synthetic])
    assert match_distance(real, synthetic, "mse").item() == pytest.approx(
        ((flat_real - flat_synthetic) ** 2).sum().item(), rel=1e-5
    )
    assert match_distance(real, real, "cos").item() == pytest.approx(0.0, abs=1e-5)
    assert match_distance(real, [2 * g for g in real], "cos").item() == pytest.approx(0.0, abs=1e-5)


def test_distance_is_differentiable_in_the_synthetic_gradients():
    real = _grads(0)
    synthetic = [g.clone().requires_grad_(True) for g in _grads(1)]
    match_distance(real, synthetic).backward()
    assert synthetic[0].grad is not None and synthetic[0].grad.abs().sum() > 0


def test_rejects_unknown_metric_and_mismatched_lists():
    with pytest.raises(ValueError, match="metric"):
        match_distance(_grads(0), _grads(1), "l1")
    with pytest.raises(ValueError, match="length"):
        match_distance(_grads(0), _grads(1)[:2])
