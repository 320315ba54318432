"""The vectorised local update is the per-class loop's update, to float rounding."""

import pytest
import torch

from sfdd_flwr.data.datasets import ClassPools, LabelledImages
from sfdd_flwr.defences.ldpo_rld import LdpoRldTargets
from sfdd_flwr.methods.base import UpdateHooks
from sfdd_flwr.methods.gradient_matching.batched import ClassGradients, stack_batches
from sfdd_flwr.methods.gradient_matching.distance import MATCH_METRICS, batched_match_distance, match_distance
from sfdd_flwr.methods.gradient_matching.settings import GradientMatchingSettings
from sfdd_flwr.methods.gradient_matching.update import local_distill_update
from sfdd_flwr.methods.image_set import initial_synthetic_images
from sfdd_flwr.models.convnet import NetworkSpec, build_network
from sfdd_flwr.seeding import make_generator

SPEC = NetworkSpec(channels=1, num_classes=4, image_size=(28, 28), net_width=16)


def _pools(per_class=(40, 40, 40, 40), seed=0) -> ClassPools:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(sum(per_class), 1, 28, 28, generator=generator)
    labels = torch.cat([torch.full((count,), c) for c, count in enumerate(per_class)])
    images += labels.view(-1, 1, 1, 1).float() * 0.5
    return ClassPools(LabelledImages(images, labels), len(per_class))


def _both(ipc, pools, spec=SPEC, hooks_for=None, **settings):
    images = initial_synthetic_images(spec, ipc, make_generator(0, "init"))
    results = []
    for vectorised in (False, True):
        params = GradientMatchingSettings(vectorised_matching=vectorised, **settings)
        hooks = hooks_for() if hooks_for is not None else None
        results.append(local_distill_update(
            images, pools, spec, params, network_seed=7, generator=make_generator(0, "real"), hooks=hooks,
        ))
    return results


@pytest.mark.parametrize("ipc", [1, 10])
def test_one_outer_step_equals_the_per_class_loop_in_float32(ipc):
    """DC's IPC-1 update is one outer step; at IPC 10, its first outer step."""
    loop, vectorised = _both(ipc, _pools(), batch_real=16, outer_loop=1)
    assert not torch.equal(loop.images, initial_synthetic_images(SPEC, ipc, make_generator(0, "init")))
    assert (loop.images - vectorised.images).abs().max() <= 1e-5
    assert (loop.velocity - vectorised.velocity).abs().max() <= 1e-4
    assert vectorised.matching_loss == pytest.approx(loop.matching_loss, rel=1e-5)


def test_outer_steps_with_network_training_between_them_equal_the_per_class_loop():
    """Three outer steps at IPC 10 with one network epoch between them. Around DC's
    50-epoch inner loop the bi-level loop amplifies rounding exponentially: the per-class
    loop itself then differs between 1 and 2 CPU threads (RESULTS.md section 3)."""
    loop, vectorised = _both(10, _pools(), batch_real=16, outer_loop=3, inner_loop=1)
    assert (loop.images - vectorised.images).abs().max() <= 1e-5
    assert (loop.velocity - vectorised.velocity).abs().max() <= 1e-4


def test_ldpo_rld_soft_targets_and_a_training_hook_give_the_same_update():
    calls = {False: [], True: []}

    def hooks_for():
        record = calls[len(calls[False]) > 0]
        return UpdateHooks(
            targets=LdpoRldTargets(4, 0.5, 2, "both", make_generator(0, "private")),
            after_network_training=lambda network, step: record.append(step),
        )

    loop, vectorised = _both(2, _pools(), hooks_for=hooks_for, batch_real=16, outer_loop=3, inner_loop=2)
    assert (loop.images - vectorised.images).abs().max() <= 1e-5
    assert calls[False] == calls[True] == [0, 1]


def test_classes_of_unequal_size_and_a_missing_class_are_handled():
    pools = _pools(per_class=(40, 5, 0, 12))
    loop, vectorised = _both(2, pools, batch_real=16, outer_loop=2, inner_loop=1)
    assert (loop.images - vectorised.images).abs().max() <= 1e-5
    assert vectorised.matched_classes == 3
    start = initial_synthetic_images(SPEC, 2, make_generator(0, "init"))
    assert torch.equal(vectorised.images[4:6], start[4:6])


@pytest.mark.parametrize("metric", MATCH_METRICS)
def test_batched_distance_is_the_sum_of_per_class_distances(metric):
    generator = torch.Generator().manual_seed(0)
    shapes = [(8, 3, 3, 3), (8,), (4, 32)]
    real = [torch.randn(3, *shape, generator=generator) for shape in shapes]
    synthetic = [torch.randn(3, *shape, generator=generator) for shape in shapes]
    expected = sum(
        match_distance([g[k] for g in real], [g[k] for g in synthetic], metric) for k in range(3)
    )
    assert batched_match_distance(real, synthetic, metric) == pytest.approx(float(expected), rel=1e-6)


def test_padding_does_not_change_a_class_gradient():
    network = build_network(SPEC, 0)
    generator = torch.Generator().manual_seed(0)
    short, full = torch.randn(3, 1, 28, 28, generator=generator), torch.randn(6, 1, 28, 28, generator=generator)
    images, weights = stack_batches([short, full])
    assert images.shape == (2, 6, 1, 28, 28) and weights[0, 3:].eq(0).all()
    targets = torch.eye(4)[:2]
    batched = ClassGradients(network)(images, targets, weights)
    alone = ClassGradients(network)(short.unsqueeze(0), targets[:1], torch.full((1, 3), 1 / 3))
    for together, single in zip(batched, alone):
        assert torch.allclose(together[0], single[0], atol=1e-6)


def test_batch_norm_keeps_the_per_class_loop():
    spec = NetworkSpec(channels=1, num_classes=4, image_size=(28, 28), net_width=8, net_norm="batchnorm")
    loop, vectorised = _both(1, _pools(), spec=spec, batch_real=16, outer_loop=1, inner_loop=1)
    assert torch.equal(loop.images, vectorised.images)


def test_dsa_augments_both_paths_alike_and_changes_the_update():
    from sfdd_flwr.augmentation.dsa import DsaParams

    images = initial_synthetic_images(SPEC, 2, make_generator(0, "init"))

    def update(vectorised, dsa):
        return local_distill_update(
            images, _pools(), SPEC,
            GradientMatchingSettings(vectorised_matching=vectorised, batch_real=16, outer_loop=2, inner_loop=1),
            network_seed=7, generator=make_generator(0, "real"),
            dsa=DsaParams(strategy="crop_scale_rotate") if dsa else None,
            augment_generator=make_generator(0, "dsa") if dsa else None,
        )

    loop, vectorised, plain = update(False, True), update(True, True), update(False, False)
    assert (loop.images - vectorised.images).abs().max() <= 1e-5
    assert not torch.allclose(loop.images, plain.images)
    with pytest.raises(ValueError, match="augment_generator"):
        local_distill_update(images, _pools(), SPEC, GradientMatchingSettings(), network_seed=0,
                             generator=make_generator(0, "real"), dsa=DsaParams())
