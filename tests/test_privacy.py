import math

import numpy as np
import pytest
import torch

from sfdd_flwr.defences.ldpo_rld import LdpoRldTargets, linear_ramp_weights, obfuscated_target
from sfdd_flwr.defences.local_dp import LocalDpSettings, clip_update, privacy_cost, privatise_update


def test_linear_ramp_is_decreasing_and_sums_to_one():
    for k in (1, 2, 3, 9):
        weights = linear_ramp_weights(k)
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.all(weights[:-1] > weights[1:])
    assert torch.allclose(linear_ramp_weights(3), torch.tensor([3, 2, 1]) / 6)


@pytest.mark.parametrize(("alpha", "k"), [(0.5, 3), (0.1, 1), (0.9, 9)])
def test_soft_label_structure(alpha, k):
    target = obfuscated_target(4, 10, alpha, k, torch.Generator().manual_seed(0))
    assert target.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert target[4].item() == pytest.approx(1 - alpha)
    others = torch.cat([target[:4], target[5:]])
    nonzero = others[others > 0]
    assert nonzero.numel() == k  # exactly k other classes
    assert torch.allclose(nonzero.sort(descending=True).values, alpha * linear_ramp_weights(k), atol=1e-6)


def test_soft_labels_change_between_steps_and_differ_between_clients():
    def targets(seed):
        hook = LdpoRldTargets(10, 0.5, 3, "both", torch.Generator().manual_seed(seed))
        return [hook(2, step)[0] for step in range(6)]

    first, other_client = targets(1), targets(2)
    assert any(not torch.equal(first[0], t) for t in first[1:])
    assert any(not torch.equal(a, b) for a, b in zip(first, other_client))
    assert all(torch.equal(a, b) for a, b in zip(first, targets(1)))  # seeded


def test_target_modes():
    real, synthetic = LdpoRldTargets(10, 0.5, 2, "both", torch.Generator().manual_seed(0))(1, 0)
    assert torch.equal(real, synthetic)
    real, synthetic = LdpoRldTargets(10, 0.5, 2, "real-only", torch.Generator().manual_seed(0))(1, 0)
    assert real is not None and synthetic is None
    with pytest.raises(ValueError):
        obfuscated_target(0, 10, 1.0, 2, torch.Generator())
    with pytest.raises(ValueError):
        obfuscated_target(0, 10, 0.5, 10, torch.Generator())


def test_clipping_bounds_the_update_norm_and_matches_flower():
    from flwr.supercore.differential_privacy import compute_clip_model_update

    received = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    updated = received + 5 * torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    clipped, norm = clip_update(updated - received, clip=2.0)
    assert norm > 2.0 and clipped.norm().item() == pytest.approx(2.0, rel=1e-5)
    flower = [updated.numpy().copy()]
    compute_clip_model_update(flower, [received.numpy()], 2.0)
    assert np.allclose(received.numpy() + clipped.numpy(), flower[0], atol=1e-5)
    small, _ = clip_update(torch.full((3,), 0.1), clip=2.0)
    assert torch.equal(small, torch.full((3,), 0.1))  # short updates are not stretched


@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
def test_privatised_update_without_noise_is_the_clipped_update(mechanism):
    received = {"images": torch.zeros(4, 1, 28, 28)}
    updated = {"images": torch.ones(4, 1, 28, 28)}
    released = privatise_update(received, updated, LocalDpSettings(1.0, 0.0, mechanism), torch.Generator())
    assert released.state["images"].norm().item() == pytest.approx(1.0, rel=1e-5)
    assert math.isinf(released.epsilon)


@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
def test_noise_has_the_configured_scale_and_is_seeded(mechanism):
    received = {"images": torch.zeros(200, 1, 28, 28)}
    params = LocalDpSettings(local_dp_clip=1e-6, local_dp_noise=0.5, local_dp_mechanism=mechanism)
    first = privatise_update(received, received, params, torch.Generator().manual_seed(3))
    again = privatise_update(received, received, params, torch.Generator().manual_seed(3))
    assert torch.equal(first.state["images"], again.state["images"])
    expected_std = 0.5 if mechanism == "gaussian" else 0.5 * math.sqrt(2)
    assert first.state["images"].std().item() == pytest.approx(expected_std, rel=0.02)


def test_a_state_of_several_arrays_is_clipped_as_one_vector():
    received = {"a": torch.zeros(3), "b": torch.zeros(4)}
    updated = {"a": torch.full((3,), 2.0), "b": torch.full((4,), 2.0)}
    released = privatise_update(received, updated, LocalDpSettings(1.0, 0.0), torch.Generator())
    joint = torch.cat([released.state["a"], released.state["b"]])
    assert joint.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert released.update_norm == pytest.approx(2.0 * math.sqrt(7))


def test_privacy_cost_formulas():
    eps, delta = privacy_cost(LocalDpSettings(1.0, 2.0, "gaussian", 1e-5), 100)
    assert eps == pytest.approx(2 * math.sqrt(2 * math.log(1.25e5)) / 2.0) and delta == 1e-5
    eps, delta = privacy_cost(LocalDpSettings(1.0, 4.0, "laplace"), 100)
    assert eps == pytest.approx(2 * 10 / 4.0) and delta == 0.0


def test_the_composed_epsilon_is_opacus_rdp_accountant_over_the_rounds():
    from opacus.accountants import RDPAccountant

    from sfdd_flwr.defences.local_dp import composed_epsilon

    params = LocalDpSettings(local_dp_clip=0.5, local_dp_noise=2.0, local_dp_delta=1e-5)
    reference = RDPAccountant()
    for _ in range(7):
        reference.step(noise_multiplier=2.0 / (2 * 0.5), sample_rate=1.0)
    assert composed_epsilon(params, 100, 7) == pytest.approx(reference.get_epsilon(1e-5))
    assert composed_epsilon(params, 100, 7) > composed_epsilon(params, 100, 1)
    laplace = LocalDpSettings(1.0, 4.0, "laplace")
    assert composed_epsilon(laplace, 100, 3) == pytest.approx(3 * privacy_cost(laplace, 100)[0])
    assert math.isinf(composed_epsilon(LocalDpSettings(1.0, 0.0), 100, 3))
