import pytest
import torch

from sfdd_flwr.data.datasets import ClassPools, LabelledImages
from sfdd_flwr.evaluation.protocol import EvalParams, evaluate_synthetic_set
from sfdd_flwr.methods.base import class_labels as synthetic_labels
from sfdd_flwr.methods.gradient_matching.settings import GradientMatchingSettings as DistillParams
from sfdd_flwr.methods.gradient_matching.settings import loops_for_ipc
from sfdd_flwr.methods.gradient_matching.update import local_distill_update
from sfdd_flwr.methods.image_set import initial_synthetic_images
from sfdd_flwr.models.convnet import NetworkSpec
from sfdd_flwr.seeding import make_generator

SPEC = NetworkSpec(channels=1, num_classes=4, image_size=(28, 28), net_width=8)


@pytest.mark.parametrize(
    ("ipc", "loops"),
    [(1, (1, 1)), (10, (10, 50)), (20, (20, 25)), (30, (30, 20)), (40, (40, 15)), (50, (50, 10))],
)
def test_ipc_to_loops_table_of_dc(ipc, loops):
    assert loops_for_ipc(ipc) == loops


@pytest.mark.parametrize(("ipc", "loops"), [(2, (2, 50)), (9, (9, 50)), (15, (15, 25)), (100, (100, 10))])
def test_other_ipc_values_follow_the_documented_rule(ipc, loops):
    assert loops_for_ipc(ipc) == loops


def test_ipc_below_one_is_rejected():
    with pytest.raises(ValueError, match="ipc"):
        loops_for_ipc(0)


def test_synthetic_labels_are_class_blocks():
    assert synthetic_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]


def toy_pools(num_classes=4, per_class=40, seed=0, drop_class=None) -> ClassPools:
    """Class c = a bright block in quadrant c, plus noise (normalised space)."""
    generator = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c in range(num_classes):
        if c == drop_class:
            continue
        block = torch.randn(per_class, 1, 28, 28, generator=generator) * 0.3 - 0.5
        row, col = divmod(c, 2)
        block[:, :, row * 14 + 2 : row * 14 + 12, col * 14 + 2 : col * 14 + 12] += 2.5
        images.append(block)
        labels.append(torch.full((per_class,), c))
    return ClassPools(LabelledImages(torch.cat(images), torch.cat(labels)), num_classes)


# The loops of DC's IPC-1 entry unless a test sets them.
ONE_STEP = {"outer_loop": 1, "inner_loop": 1}


def _update(images, pools, params=DistillParams(batch_real=16, **ONE_STEP), seed=0, velocity=None):
    return local_distill_update(
        images, pools, SPEC, params, network_seed=seed, generator=make_generator(0, seed),
        velocity=velocity,
    )


def test_update_keeps_shape_and_changes_images():
    images = initial_synthetic_images(SPEC, 2, make_generator(0, "init"))
    update = _update(images, toy_pools())
    assert update.images.shape == images.shape == (8, 1, 28, 28)
    assert update.images.dtype == torch.float32
    assert not torch.equal(update.images, images)
    assert update.matched_classes == 4 and update.matching_loss > 0


def test_update_is_reproducible_for_equal_seeds():
    images = initial_synthetic_images(SPEC, 1, make_generator(0, "init"))
    first = _update(images, toy_pools(), seed=3)
    second = _update(images, toy_pools(), seed=3)
    other = _update(images, toy_pools(), seed=4)
    assert torch.equal(first.images, second.images)
    assert not torch.equal(first.images, other.images)


def test_classes_without_local_images_are_left_untouched():
    images = initial_synthetic_images(SPEC, 1, make_generator(0, "init"))
    update = _update(images, toy_pools(drop_class=2))
    assert torch.equal(update.images[2], images[2])
    assert not torch.equal(update.images[0], images[0])
    assert update.matched_classes == 3


def test_image_momentum_matches_torch_sgd():
    """velocity = m * velocity + grad; x -= lr * velocity, as torch.optim.SGD does."""
    images = initial_synthetic_images(SPEC, 1, make_generator(0, "init"))
    params = DistillParams(batch_real=16, lr_img=0.1, momentum_img=0.5, **ONE_STEP)
    first = _update(images, toy_pools(), params, seed=1)
    grad = (images - first.images) / 0.1
    assert torch.allclose(first.velocity, grad, atol=1e-5)
    second = _update(first.images, toy_pools(), params, seed=2, velocity=first.velocity)
    fresh = _update(first.images, toy_pools(), params, seed=2)
    grad2 = (first.images - fresh.images) / 0.1
    assert torch.allclose(second.velocity, 0.5 * first.velocity + grad2, atol=1e-4)
    assert torch.allclose(second.images, first.images - 0.1 * second.velocity, atol=1e-5)


def test_inner_loop_trains_the_network_between_outer_steps():
    images = initial_synthetic_images(SPEC, 2, make_generator(0, "init"))
    one_outer = _update(images, toy_pools(), DistillParams(batch_real=16, **ONE_STEP))
    two_outer = _update(images, toy_pools(), DistillParams(batch_real=16, outer_loop=2, inner_loop=3))
    assert not torch.equal(one_outer.images, two_outer.images)


def test_distillation_learns_the_task():
    """After a few DC iterations, networks trained on S beat noise-initialised S by far."""
    pools = toy_pools(per_class=60)
    test = toy_pools(per_class=30, seed=1).data
    labels = synthetic_labels(4, 1)
    images = initial_synthetic_images(SPEC, 1, make_generator(0, "init"))
    evaluation = EvalParams(eval_epochs=40, num_eval=2)
    before = evaluate_synthetic_set(images, labels, test, SPEC, evaluation, 0, "before")
    velocity = None
    for iteration in range(15):
        update = _update(images, pools, DistillParams(batch_real=32, lr_img=1.0, **ONE_STEP), iteration, velocity)
        images, velocity = update.images, update.velocity
    after = evaluate_synthetic_set(images, labels, test, SPEC, evaluation, 0, "after")
    assert after.mean >= 0.9
    assert after.mean > before.mean + 0.3


def test_long_local_work_reports_progress():
    lines = []
    images = initial_synthetic_images(SPEC, 2, make_generator(0, "init"))
    local_distill_update(
        images, toy_pools(), SPEC,
        DistillParams(batch_real=8, outer_loop=2, inner_loop=2, vectorised_matching=False),
        network_seed=0, generator=make_generator(0, 1), progress=lines.append, progress_seconds=1e-9,
    )
    assert any("outer step 1/2, class 4/4" in line for line in lines)
    assert any("network epoch 2/2" in line for line in lines)
    assert all(line.endswith("s elapsed)") for line in lines)


def test_the_inner_network_trains_with_plain_sgd_by_default_as_dcs_code():
    """DC's current code: SGD(lr_net) without momentum; `momentum-net` restores the 0.5 of
    its first versions, and the update then differs."""
    images = initial_synthetic_images(SPEC, 2, make_generator(0, "init"))
    loops = {"outer_loop": 3, "inner_loop": 2}
    plain = _update(images, toy_pools(), DistillParams(batch_real=16, **loops))
    explicit = _update(images, toy_pools(), DistillParams(batch_real=16, momentum_net=0.0, **loops))
    heavy = _update(images, toy_pools(), DistillParams(batch_real=16, momentum_net=0.5, **loops))
    assert DistillParams().momentum_net == 0.0
    assert torch.equal(plain.images, explicit.images)
    assert not torch.equal(plain.images, heavy.images)
