"""The curious-server leakage attack on a tiny, exactly known single-step update."""

import pytest
import torch

from sfdd_flwr.data.datasets import DATASETS
from sfdd_flwr.models.convnet import NetworkSpec, build_network
from sfdd_flwr.seeding import make_generator
from sfdd_lab.attacks.leakage import (
    AttackParams,
    ObservedUpdate,
    reconstruct,
    replayed_gradient,
    score,
    total_variation,
)

SPEC = NetworkSpec(1, 3, (8, 8), net_width=16, net_depth=2, net_activation="sigmoid", net_pooling="none")


def observed_single_step(truth: torch.Tensor, lr: float = 0.1) -> ObservedUpdate:
    """What the server sees when a client steps S once against real batches `truth` [C, b, ...]."""
    network = build_network(SPEC, 7)
    before = torch.randn(3, 1, 8, 8, generator=make_generator(1, "synthetic"))
    after = before.clone()
    for c in range(3):
        after[c : c + 1] -= lr * replayed_gradient(network, before[c : c + 1], truth[c], c, "ours").detach()
    return ObservedUpdate(before, after, network, lr, truth.shape[1])


def test_the_attack_recovers_a_known_batch_from_an_exact_single_step_update():
    """Pixels in a known range (the box), as real images are: without the box, or with it
    applied only to the result ('clip'), this tiny underdetermined update is matched
    exactly (replay loss ~1e-9) by images far from the truth; 'sigmoid' keeps every
    iterate in the box."""
    truth = torch.rand(3, 1, 1, 8, 8, generator=make_generator(2, "truth")) * 2 - 1
    observed = observed_single_step(truth)
    params = AttackParams(iterations=10, box=(-1.0, 1.0), box_mode="sigmoid")
    result = reconstruct(observed, params, make_generator(3, "attack"))
    mse = score(result.images, truth, DATASETS["mnist"]).mse_normalised
    start = torch.randn(truth.shape, generator=make_generator(3, "attack"))
    assert mse < 0.01 * float(((start - truth) ** 2).mean()), mse
    assert max(result.final_loss) < 1e-3


def test_the_adaptive_attack_returns_a_soft_label_per_attacked_class():
    truth = torch.rand(3, 1, 1, 8, 8, generator=make_generator(2, "truth"))
    result = reconstruct(observed_single_step(truth), AttackParams(iterations=1, adaptive=True),
                         make_generator(3, "attack"), classes=[2, 0])
    assert result.images.shape == (2, 1, 1, 8, 8)
    assert result.soft_labels.shape == (2, 3)
    assert torch.allclose(result.soft_labels.sum(dim=1), torch.ones(2))


def test_total_variation_is_zero_only_for_flat_images():
    assert float(total_variation(torch.full((1, 1, 5, 5), 0.3))) == 0.0
    assert float(total_variation(torch.eye(5).view(1, 1, 5, 5))) > 0.0


def test_restarts_keep_the_start_with_the_lowest_replay_loss():
    truth = torch.rand(3, 1, 1, 8, 8, generator=make_generator(2, "truth")) * 2 - 1
    observed = observed_single_step(truth)
    generator = make_generator(4, "attack")
    single = [reconstruct(observed, AttackParams(iterations=1), generator, classes=[2]).final_loss[0] for _ in range(3)]
    assert min(single) not in (single[0], single[-1])  # so neither "first" nor "last" passes
    kept = reconstruct(
        observed, AttackParams(iterations=1, restarts=2, restart_above=0.0), make_generator(4, "attack"), classes=[2]
    )
    assert kept.final_loss[0] == pytest.approx(min(single))


def test_a_start_stops_early_once_its_relative_replay_loss_is_below_stop_below():
    truth = torch.rand(3, 1, 1, 8, 8, generator=make_generator(2, "truth")) * 2 - 1
    observed = observed_single_step(truth)

    def attack(**values):
        return reconstruct(observed, AttackParams(box=(-1.0, 1.0), **values), make_generator(3, "attack"), classes=[1])

    one_step = attack(iterations=1)
    full = attack(iterations=5)
    # Any loss is below 1e30: every start ends after its first step.
    assert torch.equal(attack(iterations=5, stop_below=1e30).images, one_step.images)
    assert not torch.equal(full.images, one_step.images)
    # A threshold that is never reached changes nothing.
    assert torch.equal(attack(iterations=5, stop_below=1e-30).images, full.images)


def test_clip_mode_returns_images_inside_the_box_and_bad_modes_are_refused():
    truth = torch.rand(3, 1, 1, 8, 8, generator=make_generator(2, "truth")) * 2 - 1
    observed = observed_single_step(truth)
    result = reconstruct(observed, AttackParams(iterations=2, box=(-0.5, 0.5)), make_generator(3, "attack"))
    assert result.images.min() >= -0.5 and result.images.max() <= 0.5
    assert (result.images == 0.5).any() or (result.images == -0.5).any()
    with pytest.raises(ValueError, match="box_mode"):
        reconstruct(observed, AttackParams(box_mode="tanh"), make_generator(3, "attack"))
