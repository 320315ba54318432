"""Bounds on what one reply can do: capped weights, rejected outlier updates, clipped
updates (norm bounding), for every method, with hand-built replies beside honest ones."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from flower_helpers import delivered, strategy_for
from sfdd_flwr.aggregators.bounds import BoundsSettings, bound_replies, capped_weights, update_norm
from sfdd_flwr.settings import Settings

pytestmark = pytest.mark.usefixtures("server_identity")

SHAPE = (10, 1, 28, 28)


@pytest.fixture
def flwr_log():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("flwr").addHandler(handler)
    yield records
    logging.getLogger("flwr").removeHandler(handler)


def test_no_weight_exceeds_its_share_and_the_rest_keep_theirs():
    assert capped_weights([1e15, 100, 100], 0.5) == [200.0, 100, 100]
    assert capped_weights([100, 100, 100], 0.5) == [100, 100, 100]
    assert capped_weights([5, 3, 1, 1], 0.4) == pytest.approx([10 / 3, 3, 1, 1])
    assert capped_weights([300, 100], 0.5) == [100.0, 100]
    assert capped_weights([4, 1], 0.3) == [1.0, 1.0]  # no cap can: equal weights
    assert capped_weights([1e15, 1, 2], 1.0) == [1e15, 1, 2]  # 1 = off


def state(value: float) -> dict[str, torch.Tensor]:
    return {"images": torch.full(SHAPE, value), "extra": torch.full((3,), value)}


def test_bounds_reject_outliers_cap_weights_and_clip_updates_naming_the_reply():
    sent = state(0.0)
    honest = [state(1.0), state(1.2), state(0.9)]
    result = bound_replies(BoundsSettings(), sent, [*honest, state(1e6)], [100, 100, 100, 100], list("abcd"))
    assert result.kept == [0, 1, 2] and result.rejected == [3]
    assert any(note.startswith("d: its distance to the round's median reply") and note.endswith("rejected")
               for note in result.notes)
    result = bound_replies(BoundsSettings(), sent, [*honest, state(1.1)], [100, 100, 100, 1e15], list("abcd"))
    assert result.capped == [3] and max(result.weights) / sum(result.weights) == pytest.approx(0.5)
    assert any(note.startswith("d: num-examples=1e+15") and "implausible" in note for note in result.notes)
    clipped = bound_replies(BoundsSettings(update_clip=2.0), sent, honest, [1, 1, 1], list("abc"))
    assert clipped.clipped == [0, 1, 2]
    assert [update_norm(sent, s) for s in clipped.states] == pytest.approx([2.0] * 3)
    adaptive = bound_replies(BoundsSettings(update_clip_ratio=1.0), sent, honest, [1, 1, 1], list("abc"))
    median = update_norm(sent, honest[0])
    assert adaptive.clipped == [1] and update_norm(sent, adaptive.states[1]) == pytest.approx(median)
    assert torch.equal(adaptive.states[0]["images"], honest[0]["images"])


def test_with_two_replies_the_smaller_update_is_the_reference():
    result = bound_replies(BoundsSettings(), state(0.0), [state(1.0), state(50.0)], [1, 1], ["a", "b"])
    assert result.rejected == [1]


def reply(node: int, images: np.ndarray, num_examples: float = 100.0) -> Message:
    instruction = delivered(Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node,
                                    message_type=MessageType.TRAIN), node)
    content = RecordDict({"state": ArrayRecord({"images": Array(images)}),
                          "metrics": MetricRecord({"num-examples": num_examples, "matching-loss": 1.0})})
    return Message(content, reply_to=instruction)


def honest_replies(sent: np.ndarray) -> list[Message]:
    """Three honest clients: updates of about one unit per pixel around the sent set."""
    rng = np.random.default_rng(0)
    return [reply(11 + i, (sent + rng.uniform(0.5, 1.5, SHAPE)).astype(np.float32)) for i in range(3)]


ATTACKS = {
    "huge values": lambda sent: reply(99, np.full(SHAPE, 1e6, np.float32)),
    "still huger values": lambda sent: reply(99, np.full(SHAPE, 1e30, np.float32)),
    "a self-reported size of 1e15": lambda sent: reply(99, (sent - 1.0).astype(np.float32), num_examples=1e15),
    "an update far larger than the others": lambda sent: reply(99, (sent - 8.0).astype(np.float32)),
}


def aggregate(settings: Settings, attack: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    strategy = strategy_for(settings)
    sent = strategy.sent_state["images"].numpy()
    honest = honest_replies(sent)
    arrays, _ = strategy.aggregate_train(1, [*honest, ATTACKS[attack](sent)])
    values = np.stack([r.content["state"]["images"].numpy() for r in honest])
    return arrays["images"].numpy(), values.min(axis=0), values.max(axis=0), strategy


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_with_the_defaults_no_hostile_reply_moves_the_set_outside_the_honest_range(tmp_path, flwr_log, attack):
    settings = Settings.from_mapping({"preset": "", "output-dir": str(tmp_path)})
    combined, low, high, strategy = aggregate(settings, attack)
    assert np.all(combined >= low - 1e-5) and np.all(combined <= high + 1e-5)
    messages = [record.getMessage() for record in flwr_log]
    assert any("round 1: node 99:" in message for message in messages), messages
    bounded = strategy.last_round_failures + [f"node {n}" for n in strategy.last_round_bounded["weights_capped"]]
    assert any(line.startswith("node 99") for line in bounded)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_without_the_bounds_each_hostile_reply_takes_the_set_over(tmp_path, attack):
    settings = Settings.from_mapping({"preset": "", "output-dir": str(tmp_path), "max-weight-share": 1.0,
                                      "max-update-ratio": 0})
    combined, low, high, _ = aggregate(settings, attack)
    assert not (np.all(combined >= low - 1e-5) and np.all(combined <= high + 1e-5))


def test_the_bounds_hold_for_a_generators_weights_too(tiny_mnist_dir, tmp_path):
    settings = Settings.from_mapping({"preset": "diffusion-smoke", "data-dir": str(tiny_mnist_dir),
                                      "output-dir": str(tmp_path)})
    strategy = strategy_for(settings)
    sent = strategy.sent_state
    rng = np.random.default_rng(1)

    def weights_reply(node, shift):
        arrays = {k: Array((v.numpy() + shift * rng.standard_normal(v.shape)).astype(np.float32)) for k, v in sent.items()}
        instruction = delivered(Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node,
                                        message_type=MessageType.TRAIN), node)
        content = RecordDict({"state": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 100.0})})
        return Message(content, reply_to=instruction)

    arrays, _ = strategy.aggregate_train(1, [weights_reply(11, 0.01), weights_reply(12, 0.01),
                                             weights_reply(13, 0.01), weights_reply(99, 10.0)])
    assert strategy.last_round_failures and strategy.last_round_failures[0].startswith("node 99: its distance")
    key = next(iter(sent))
    assert np.abs(arrays[key].numpy() - sent[key].numpy()).max() < 0.1
