import math

import pytest
import torch

from sfdd_flwr.augmentation.dsa import DsaParams
from sfdd_flwr.data.datasets import LabelledImages
from sfdd_flwr.evaluation.protocol import (
    EvalParams,
    EvalResult,
    dc_augment,
    evaluate_synthetic_set,
    training_augmentation,
)
from sfdd_flwr.evaluation.protocol import (
    test_accuracy as accuracy_of,
)
from sfdd_flwr.evaluation.settings import protocol_defaults
from sfdd_flwr.models.convnet import NetworkSpec, build_network


def test_protocol_defaults_follow_dc_and_dsa():
    assert protocol_defaults("mnist", "auto") == (1000, "dc")
    assert protocol_defaults("cifar10", "auto") == (300, "none")
    assert protocol_defaults("fashionmnist", "auto") == (300, "none")
    assert protocol_defaults("fashionmnist", "on") == (300, "dc")
    assert protocol_defaults("mnist", "off") == (1000, "none")
    assert protocol_defaults("cifar10", "dsa") == (1000, "dsa")


def test_dsa_evaluation_needs_its_parameters_and_trains_on_augmented_batches():
    with pytest.raises(ValueError, match="needs the DSA parameters"):
        EvalParams(eval_augment="dsa")
    generator = torch.Generator().manual_seed(0)
    augment = training_augmentation(EvalParams(eval_augment="dsa", dsa=DsaParams(strategy="rotate")), generator)
    batch = torch.randn(4, 1, 28, 28)
    assert not torch.allclose(augment(batch), batch)
    assert training_augmentation(EvalParams(), generator) is None


def test_augment_keeps_shape_is_seeded_and_changes_images():
    images = torch.randn(32, 3, 32, 32)
    first = dc_augment(images, torch.Generator().manual_seed(0))
    again = dc_augment(images, torch.Generator().manual_seed(0))
    assert first.shape == images.shape
    assert torch.equal(first, again)
    assert not torch.equal(first, images)


def test_augment_crop_is_an_integer_shift_filled_with_the_channel_mean(monkeypatch):
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    # force every image to take the crop branch with a known shift
    real_randint = torch.randint

    def fake_randint(low, high=None, size=None, generator=None, **kwargs):
        if high == 3:  # choice of transform
            return torch.zeros(size, dtype=torch.long)
        if high == 8:  # shifts in [0, 2*crop): 6 -> +2 rows, 3 -> -1 column
            return torch.tensor([[6, 3], [6, 3]])
        return real_randint(low, high, size, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "randint", fake_randint)
    out = dc_augment(images, torch.Generator().manual_seed(0), crop=4)
    mean = images.mean()
    expected = torch.full_like(images, float(mean))
    expected[:, :, :6, 1:] = images[:, :, 2:, :7]
    assert torch.allclose(out, expected, atol=1e-4)


def test_eval_result_statistics_are_population_mean_and_std():
    result = EvalResult(accuracies=[0.8, 0.9, 1.0])
    assert result.mean == pytest.approx(0.9)
    assert result.std == pytest.approx(math.sqrt(2 / 300))
    assert math.isnan(EvalResult().mean)


def test_accuracy_counts_correct_predictions():
    spec = NetworkSpec(1, 2, (28, 28), net_width=4)
    network = build_network(spec, 0)
    test = LabelledImages(torch.randn(10, 1, 28, 28), torch.zeros(10, dtype=torch.long))
    predictions = network.eval()(test.images).argmax(1)
    assert accuracy_of(network, test, batch_size=3) == pytest.approx(float((predictions == 0).float().mean()))


def test_evaluation_is_reproducible_and_learns_separable_data():
    spec = NetworkSpec(1, 2, (28, 28), net_width=8)
    images = torch.stack([torch.full((1, 28, 28), -1.0), torch.full((1, 28, 28), 1.0)])
    labels = torch.tensor([0, 1])
    test_images = torch.cat([torch.full((20, 1, 28, 28), -1.0), torch.full((20, 1, 28, 28), 1.0)])
    test_images = test_images + 0.1 * torch.randn(test_images.shape, generator=torch.Generator().manual_seed(0))
    test = LabelledImages(test_images, torch.tensor([0] * 20 + [1] * 20))
    params = EvalParams(eval_epochs=30, num_eval=2, eval_lr=0.05)
    first = evaluate_synthetic_set(images, labels, test, spec, params, run_seed=1, tag=3)
    second = evaluate_synthetic_set(images, labels, test, spec, params, run_seed=1, tag=3)
    assert first.accuracies == second.accuracies
    assert first.mean == 1.0
