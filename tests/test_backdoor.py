import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from sfdd_flwr.attacks.doorping.trigger import (
    Trigger,
    attack_success_rate,
    initial_trigger,
    mean_trigger,
    patch_mask,
    pinned_for_good,
    poison,
    poison_indices,
    select_neuron,
    stamp,
    update_trigger,
    valid_range,
)
from sfdd_flwr.data.datasets import DATASETS, LabelledImages
from sfdd_flwr.models.convnet import NetworkSpec, build_network

MNIST = DATASETS["mnist"]


def test_patch_is_bottom_right_with_a_one_pixel_margin():
    mask = patch_mask(MNIST, 2)
    assert mask.sum().item() == 4
    assert mask[0, 25:27, 25:27].sum().item() == 4
    assert mask[0, 27, :].sum().item() == 0 and mask[0, :, 27].sum().item() == 0


def test_colluders_share_the_mean_of_their_triggers():
    mask = patch_mask(MNIST, 2)
    first = Trigger(torch.full(mask.shape, 1.0) * mask, mask, 3)
    second = Trigger(torch.full(mask.shape, 4.0) * mask, mask, 3)
    shared = mean_trigger([first, second])
    assert torch.equal(shared.pattern, torch.full(mask.shape, 2.5) * mask)
    assert torch.equal(shared.mask, mask) and shared.target == 3
    assert torch.equal(mean_trigger([first]).pattern, first.pattern)
    with pytest.raises(ValueError, match="same mask and target"):
        mean_trigger([first, Trigger(second.pattern, mask, 4)])
    with pytest.raises(ValueError, match="same mask and target"):
        mean_trigger([first, Trigger(second.pattern, patch_mask(MNIST, 3), 3)])
    with pytest.raises(ValueError, match="no trigger"):
        mean_trigger([])


def test_stamping_changes_only_the_masked_pixels():
    trigger = initial_trigger(MNIST, 3, 0, torch.Generator().manual_seed(0))
    images = torch.randn(5, 1, 28, 28)
    stamped = stamp(images, trigger)
    changed = (stamped != images)
    assert torch.all(changed <= trigger.mask.bool())
    assert torch.equal(stamped[:, trigger.mask.bool()], trigger.pattern[trigger.mask.bool()].expand(5, -1))


def test_initial_triggers_are_in_the_valid_pixel_range():
    low, high = valid_range(MNIST, "cpu")
    for white in (False, True):
        trigger = initial_trigger(MNIST, 2, 0, torch.Generator().manual_seed(1), white=white)
        assert torch.all(trigger.pattern >= low - 1e-6) and torch.all(trigger.pattern <= high + 1e-6)
    white = initial_trigger(MNIST, 2, 0, torch.Generator(), white=True)
    assert torch.allclose(white.pattern[white.mask.bool()], high.flatten())


@pytest.mark.parametrize(("count", "fraction", "expected"), [(12000, 0.01, 120), (1000, 0.05, 50), (30, 0.01, 1)])
def test_poisoning_touches_exactly_the_configured_fraction(count, fraction, expected):
    data = LabelledImages(torch.randn(count, 1, 28, 28), torch.randint(1, 10, (count,)))
    trigger = initial_trigger(MNIST, 2, 0, torch.Generator().manual_seed(0))
    indices = poison_indices(count, fraction, torch.Generator().manual_seed(0))
    poisoned = poison(data, indices, trigger)
    assert indices.numel() == expected
    changed = (poisoned.images != data.images).flatten(1).any(dim=1)
    assert int(changed.sum()) == expected and torch.equal(torch.nonzero(changed).flatten(), indices)
    assert torch.all(poisoned.labels[indices] == 0)
    assert int((poisoned.labels != data.labels).sum()) == expected
    assert not torch.equal(poisoned.images, data.images) and data.labels.min() >= 1  # original untouched


class AlwaysTarget(torch.nn.Module):
    """Predicts class 0 when the bottom-right patch is bright, else the true class."""

    def __init__(self, labels_by_image):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.labels_by_image = labels_by_image

    def forward(self, images):
        triggered = images[:, 0, 25:27, 25:27].mean(dim=(1, 2)) > 2.0
        out = torch.zeros(images.shape[0], 10)
        out[torch.arange(images.shape[0]), images[:, 0, 0, 0].long()] = 1.0
        out[triggered, 0] = 5.0
        return out


def test_attack_success_rate_excludes_target_class_images():
    labels = torch.tensor([0, 0, 0, 1, 2, 3])
    images = torch.zeros(6, 1, 28, 28)
    images[:, 0, 0, 0] = labels.float()  # the fake network reads the label from pixel (0, 0)
    trigger = Trigger(torch.full((1, 28, 28), 2.8), patch_mask(MNIST, 2), target=0)
    network = AlwaysTarget(labels)
    assert attack_success_rate(network, LabelledImages(images, labels), trigger) == 1.0
    no_trigger = Trigger(torch.zeros(1, 28, 28), patch_mask(MNIST, 2), target=0)
    # without an effective trigger nothing but the (excluded) class-0 images is predicted 0
    assert attack_success_rate(network, LabelledImages(images, labels), no_trigger) == 0.0


def test_trigger_update_raises_the_selected_neuron_only_inside_the_patch():
    network = build_network(NetworkSpec(1, 10, (28, 28), net_width=8), seed=0)
    trigger = initial_trigger(MNIST, 2, 0, torch.Generator().manual_seed(0))
    neuron = select_neuron(network)
    assert neuron == int(network.classifier.weight.abs().sum(0).argmax())
    result = update_trigger(network, trigger, MNIST, max_steps=200, clamp=True)
    assert result.neuron == neuron and result.steps >= 1
    outside = ~trigger.mask.bool()
    assert torch.equal(result.trigger.pattern[outside], trigger.pattern[outside])
    assert not torch.equal(result.trigger.pattern, trigger.pattern)
    low, high = valid_range(MNIST, "cpu")
    assert torch.all(result.trigger.pattern >= low - 1e-5) and torch.all(result.trigger.pattern <= high + 1e-5)
    goal = 10 * result.initial_activation
    assert abs(result.final_activation - goal) < abs(result.initial_activation - goal)


def test_the_trigger_moves_at_paper_width_where_activations_are_tiny():
    """At width 128 the selected feature's activation on the trigger image can be a few
    hundredths (0.037 for this network): the reference's absolute threshold (squared error
    below 0.5) would be met before any step, so the trigger would never change."""
    network = build_network(NetworkSpec(1, 10, (28, 28), net_width=128), seed=2)
    trigger = initial_trigger(MNIST, 2, 0, torch.Generator().manual_seed(0))
    result = update_trigger(network, trigger, MNIST, max_steps=300)
    assert abs(result.initial_activation) < 0.05
    assert result.steps > 1
    assert not torch.equal(result.trigger.pattern, trigger.pattern)
    goal = 10 * result.initial_activation
    assert abs(result.final_activation - goal) < abs(result.initial_activation - goal)


@pytest.mark.parametrize("seed", [1, 4])
def test_with_a_hidden_dense_layer_the_trigger_drives_a_hidden_unit_before_its_relu(seed):
    """Doorping's reference network: the unit with the largest summed |incoming weight|,
    read before the ReLU (the reference hooks the Linear's output), and the reference's
    absolute stopping threshold (squared error < 0.5)."""
    network = build_network(NetworkSpec(1, 10, (28, 28), net_width=8, net_hidden=16), seed=seed)
    neuron = select_neuron(network)
    assert neuron == int(network.hidden.weight.abs().sum(1).argmax())
    trigger = initial_trigger(MNIST, 2, 0, torch.Generator().manual_seed(0))
    result = update_trigger(network, trigger, MNIST, max_steps=300)
    with torch.no_grad():
        pre_activation = network.hidden(network.features(trigger.pattern[None]))[0, neuron]
    assert result.initial_activation == pytest.approx(float(pre_activation))
    goal = 10 * result.initial_activation
    if seed == 1:  # initial -0.055: already within the threshold, as the reference stops
        assert (goal - result.initial_activation) ** 2 < 0.5
        assert result.steps == 1 and torch.equal(result.trigger.pattern, trigger.pattern)
    else:  # initial 0.105: stops once the absolute error is small, long before 10x
        assert 1 < result.steps < 300
        assert (result.final_activation - goal) ** 2 < 0.5
        assert ((result.final_activation - goal) / result.initial_activation) ** 2 > 0.5


def test_without_the_clamp_the_trigger_may_leave_the_pixel_range_as_in_the_reference():
    network = build_network(NetworkSpec(1, 10, (28, 28), net_width=32), seed=0)
    trigger = initial_trigger(MNIST, 2, 0, torch.Generator().manual_seed(0))
    low, high = valid_range(MNIST, "cpu")
    clamped = update_trigger(network, trigger, MNIST, max_steps=300, clamp=True)
    free = update_trigger(network, trigger, MNIST, max_steps=300)  # the default, as the reference
    inside = trigger.mask.bool()
    assert torch.all(clamped.trigger.pattern >= low - 1e-5) and torch.all(clamped.trigger.pattern <= high + 1e-5)
    assert torch.any((free.trigger.pattern[inside] < low.flatten()[0]) | (free.trigger.pattern[inside] > high.flatten()[0]))
    assert torch.equal(free.trigger.pattern[~inside], trigger.pattern[~inside])
    goal = 10 * free.initial_activation
    assert abs(free.final_activation - goal) < abs(clamped.final_activation - goal)


def test_a_pinned_trigger_stops_early_with_the_trigger_the_remaining_steps_would_give():
    network = build_network(NetworkSpec(1, 10, (28, 28), net_width=32), seed=0)
    trigger = initial_trigger(MNIST, 2, 0, torch.Generator().manual_seed(0))
    early = update_trigger(network, trigger, MNIST, max_steps=1000, clamp=True)
    full = update_trigger(network, trigger, MNIST, max_steps=1000, clamp=True, stop_when_pinned=False)
    assert early.pinned and early.steps < 100 and full.steps == 1000 and not full.pinned
    assert torch.equal(early.trigger.pattern, full.trigger.pattern)
    assert early.final_activation == full.final_activation


def test_pinned_needs_every_patch_pixel_on_a_bound_pushed_outward():
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])
    low, high = torch.tensor([[[-1.0]]]), torch.tensor([[[1.0]]])
    pattern = torch.tensor([[[-1.0, 1.0, 0.3]]])
    outward = torch.tensor([[[0.5, -0.5, 9.0]]])  # descent moves low pixels down, high pixels up
    assert pinned_for_good(pattern, outward, outward, mask, low, high)
    assert not pinned_for_good(pattern, outward, -outward, mask, low, high)  # momentum pulls inward
    assert not pinned_for_good(pattern, -outward, outward, mask, low, high)  # gradient pulls inward
    inside = torch.tensor([[[-1.0, 0.9, 0.3]]])
    assert not pinned_for_good(inside, outward, outward, mask, low, high)


def _message(images, weight=100, node=1):
    from flwr.app import Metadata

    metadata = Metadata(run_id=1, message_id="m", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                        group_id="", created_at=0.0, ttl=60.0, message_type="train")
    content = RecordDict({"state": ArrayRecord({"images": Array(images)}),
                          "metrics": MetricRecord({"num-examples": weight, "matching-loss": 1.0})})
    return Message(content=content, metadata=metadata)


@pytest.mark.parametrize(
    ("aggregator", "expected", "kept_nodes"),
    [("median", 3.0, None), ("trimmed-mean", 9.5 / 3, None), ("krum", 2.0, [12]), ("multi-krum", 2.5, [12, 13]),
     ("fedavg", 22.1, None)],
)
def test_robust_aggregators_on_known_inputs(aggregator, expected, kept_nodes, tmp_path):
    """Five updates: 1, 2, 3, 4.5 and an outlier 100 (a poisoned client), from nodes 11-15.
    Krum scores each by its squared distances to its n - f - 2 = 2 nearest: 2 scores
    lowest, then 3; the strategy names the nodes it kept."""
    from sfdd_flwr.methods.gradient_matching import GradientMatching
    from sfdd_flwr.settings import Settings
    from sfdd_flwr.strategy import SynthesisStrategy

    settings = Settings.from_mapping({"preset": "", "aggregator": aggregator, "trim-fraction": 0.2,
                                      "krum-malicious": 1, "multi-krum-select": 2,
                                      "max-update-ratio": 0})  # the rules alone: the bounds would reject 100
    strategy = SynthesisStrategy(settings, GradientMatching(settings), report=lambda text: None)
    strategy.sent_state = {"images": torch.zeros(10, 1, 28, 28)}
    values = [1.0, 2.0, 3.0, 4.5, 100.0]
    replies = [_message(np.full((10, 1, 28, 28), v, np.float32), node=11 + i) for i, v in enumerate(values)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert np.allclose(arrays["images"].numpy(), expected)
    assert strategy.last_round_kept == kept_nodes


def test_oracle_plants_the_trigger_only_in_target_class_slots():
    from sfdd_lab.experiments import backdoor_oracle as oracle

    trigger = initial_trigger(MNIST, 2, 1, torch.Generator().manual_seed(0), white=True)
    labels = torch.arange(4).repeat_interleave(3)
    images = torch.randn(12, 1, 28, 28)
    on_target = oracle.planted_set(images, labels, trigger, "target", 2)
    assert torch.equal(on_target[[3, 4]], stamp(images[[3, 4]], trigger))
    assert torch.equal(on_target[labels != 1], images[labels != 1]) and torch.equal(on_target[5], images[5])
    from_others = oracle.planted_set(images, labels, trigger, "others", 3)
    assert torch.equal(from_others[[3, 4, 5]], stamp(images[[0, 6, 9]], trigger))
    assert torch.equal(from_others[labels != 1], images[labels != 1])
    four_targets = torch.tensor([0, 1, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="has only 2 other classes"):
        oracle.planted_set(images[:6], four_targets, trigger, "others", 3)
    with pytest.raises(ValueError, match="target class has 3"):
        oracle.planted_set(images, labels, trigger, "target", 4)
