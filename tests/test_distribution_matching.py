"""Distribution matching: the distance, the local update, the method in the house."""

import torch

from sfdd_flwr.augmentation.dsa import DsaParams
from sfdd_flwr.data.datasets import ClassPools, LabelledImages
from sfdd_flwr.methods import METHODS
from sfdd_flwr.methods.distribution_matching.settings import DistributionMatchingSettings
from sfdd_flwr.methods.distribution_matching.update import distribution_matching_update, mean_embedding_distance
from sfdd_flwr.methods.image_set import initial_synthetic_images
from sfdd_flwr.models.convnet import NetworkSpec
from sfdd_flwr.seeding import make_generator

SPEC = NetworkSpec(channels=1, num_classes=3, image_size=(28, 28), net_width=8)


def test_the_distance_is_zero_for_equal_means_and_matches_a_hand_computation():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert mean_embedding_distance(real, torch.tensor([[2.0, 3.0]])) == 0
    # means (2, 3) and (0, 1): (2 - 0)^2 + (3 - 1)^2 = 8
    assert mean_embedding_distance(real, torch.tensor([[0.0, 0.0], [0.0, 2.0]])) == 8


def _pools(per_class=(30, 30, 30)) -> ClassPools:
    generator = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    images = torch.randn(len(labels), 1, 28, 28, generator=generator) + labels.view(-1, 1, 1, 1).float()
    return ClassPools(LabelledImages(images, labels), len(per_class))


def _update(seed=0, steps=3, dsa=False, pools=None, images=None):
    images = images if images is not None else initial_synthetic_images(SPEC, 2, make_generator(0, "init"))
    return distribution_matching_update(
        images, pools or _pools(), SPEC, DistributionMatchingSettings(dm_steps=steps, dm_batch_real=16),
        network_seed=seed, generator=make_generator(0, "real", seed),
        dsa=DsaParams(strategy="crop_scale") if dsa else None,
        augment_generator=make_generator(0, "dsa", seed) if dsa else None,
    )


def test_the_update_is_seeded_and_moves_s_towards_the_real_means():
    first, again, other = _update(seed=1), _update(seed=1), _update(seed=2)
    assert torch.equal(first.images, again.images) and not torch.equal(first.images, other.images)
    images = initial_synthetic_images(SPEC, 2, make_generator(0, "init"))
    distances = []
    for step in range(6):
        update = _update(seed=step, steps=1, images=images)
        distances.append(update.distance)
        images = update.images
    assert distances[-1] < 0.75 * distances[0]


def test_dsa_changes_the_update_and_missing_classes_stay_untouched():
    assert not torch.equal(_update(dsa=True).images, _update().images)
    start = initial_synthetic_images(SPEC, 2, make_generator(0, "init"))
    update = _update(pools=_pools((30, 0, 30)))
    assert torch.equal(update.images[2:4], start[2:4]) and update.matched_classes == 2


def test_distribution_matching_is_a_registered_image_set_method():
    method = METHODS["distribution-matching"]
    assert method.checkpoint_file == "synthetic_set.pt" and not method.supported_hooks
