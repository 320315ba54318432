"""The ClientApp called in-process with hand-built Messages and Contexts."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from flower_helpers import delivered
from sfdd_flwr import client_app, data
from sfdd_flwr.config import Settings

pytestmark = pytest.mark.usefixtures("server_identity")

SHAPE = (10, 1, 28, 28)


def train_message(settings: Settings, images: np.ndarray, server_round: int = 1, node_id: int = 5) -> Message:
    content = RecordDict(
        {
            "synthetic-set": ArrayRecord({"images": Array(images)}),
            "config": ConfigRecord(settings.to_record() | {"server-round": server_round}),
        }
    )
    return delivered(Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN), node_id)


def context(node_config: dict, node_id: int = 5) -> Context:
    return Context(run_id=1, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={})


def settings_for(data_dir, **extra) -> Settings:
    return Settings.from_mapping({"preset": "", "data-dir": str(data_dir), "net-width": 8, "batch-real": 4} | extra)


def test_train_returns_an_updated_set_and_the_partition_size(tiny_mnist_dir):
    settings = settings_for(tiny_mnist_dir)
    images = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    ctx = context({"partition-id": 1, "num-partitions": 3})
    reply = client_app.app(train_message(settings, images), ctx)
    assert not reply.has_error()
    returned = reply.content["synthetic-set"]["images"].numpy()
    assert returned.shape == SHAPE and returned.dtype == np.float32
    assert not np.array_equal(returned, images)
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 100
    assert metrics["matched-classes"] == 10 and metrics["matching-loss"] > 0
    assert list(reply.content.array_records) == ["synthetic-set"]  # the velocity stays local
    assert "synthetic-velocity" in ctx.state.array_records


def test_same_round_and_partition_give_identical_updates_different_partitions_differ(tiny_mnist_dir):
    settings = settings_for(tiny_mnist_dir)
    images = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    run = lambda pid: client_app.app(
        train_message(settings, images), context({"partition-id": pid, "num-partitions": 3})
    ).content["synthetic-set"]["images"].numpy()
    assert np.array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


def test_momentum_persists_in_client_state_only_when_asked(tiny_mnist_dir):
    images = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    for persist in (True, False):
        settings = settings_for(tiny_mnist_dir, **{"persist-momentum": persist})
        ctx = context({"partition-id": 0, "num-partitions": 3})
        client_app.app(train_message(settings, images, 1), ctx)
        second = client_app.app(train_message(settings, images, 2), ctx)
        fresh = client_app.app(train_message(settings, images, 2), context({"partition-id": 0, "num-partitions": 3}))
        same = np.array_equal(second.content["synthetic-set"]["images"].numpy(),
                              fresh.content["synthetic-set"]["images"].numpy())
        assert same is (not persist)


def test_data_is_loaded_once_per_process_across_rounds(tiny_mnist_dir, monkeypatch):
    data._load_raw_split.cache_clear()
    data.load_partition.cache_clear()
    calls = []
    original = data._RAW_LOADERS["mnist"]
    monkeypatch.setitem(data._RAW_LOADERS, "mnist", lambda *a: calls.append(a) or original(*a))
    settings = settings_for(tiny_mnist_dir)
    ctx = context({"partition-id": 0, "num-partitions": 2})
    for server_round in (1, 2, 3):
        client_app.app(train_message(settings, np.zeros(SHAPE, np.float32), server_round), ctx)
    assert len(calls) == 1


def test_node_without_partition_fails_with_a_clear_message(tiny_mnist_dir):
    """Flower's runtime turns the exception into an error reply carrying this text."""
    with pytest.raises(ValueError, match="partition-id.*--node-config"):
        client_app.app(train_message(settings_for(tiny_mnist_dir), np.zeros(SHAPE, np.float32)), context({}))


def test_node_config_data_dir_overrides_the_run_setting(tiny_mnist_dir, tmp_path):
    settings = settings_for(tmp_path / "nowhere")
    request = client_app.partition_request(
        settings, {"partition-id": 0, "num-partitions": 2, "data-dir": str(tiny_mnist_dir)}
    )
    assert request.data_dir == str(tiny_mnist_dir)
