"""The ClientApp called in-process with hand-built Messages and Contexts."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fakedata import write_imagefolder
from flower_helpers import delivered
from sfdd_flwr import client_app
from sfdd_flwr.data import datasets as data
from sfdd_flwr.data import node_data
from sfdd_flwr.evaluation.protocol import evaluate_synthetic_set
from sfdd_flwr.protocol import NODE_DATA_ERROR_CODE
from sfdd_flwr.settings import Settings

pytestmark = pytest.mark.usefixtures("server_identity")

SHAPE = (10, 1, 28, 28)


def train_message(settings: Settings, images: np.ndarray, server_round: int = 1, node_id: int = 5) -> Message:
    content = RecordDict(
        {
            "state": ArrayRecord({"images": Array(images)}),
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
    returned = reply.content["state"]["images"].numpy()
    assert returned.shape == SHAPE and returned.dtype == np.float32
    assert not np.array_equal(returned, images)
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 100
    assert metrics["matched-classes"] == 10 and metrics["matching-loss"] > 0
    assert metrics["partition-id"] == 1  # experiments map the server's node ids to partitions
    assert list(reply.content.array_records) == ["state"]  # the velocity stays local
    assert list(reply.content["state"]) == ["images"]
    assert "velocity" in ctx.state["method-state"]


def test_same_round_and_partition_give_identical_updates_different_partitions_differ(tiny_mnist_dir):
    settings = settings_for(tiny_mnist_dir)
    images = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    run = lambda pid: client_app.app(
        train_message(settings, images), context({"partition-id": pid, "num-partitions": 3})
    ).content["state"]["images"].numpy()
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
        same = np.array_equal(second.content["state"]["images"].numpy(),
                              fresh.content["state"]["images"].numpy())
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


def test_node_without_partition_answers_with_an_error_naming_the_node(tiny_mnist_dir):
    """An explicit error reply: the server logs this one line and goes on with the others."""
    reply = client_app.app(train_message(settings_for(tiny_mnist_dir), np.zeros(SHAPE, np.float32)), context({}))
    assert reply.has_error() and reply.error.code == NODE_DATA_ERROR_CODE
    assert reply.error.reason.startswith("node 5: node config lacks partition-id, num-partitions")
    assert "--node-config" in reply.error.reason


def test_node_config_data_dir_overrides_the_run_setting(tiny_mnist_dir, tmp_path):
    settings = settings_for(tmp_path / "nowhere")
    request = client_app.node_data_request(
        settings, context({"partition-id": 0, "num-partitions": 2, "data-dir": str(tiny_mnist_dir)})
    )
    assert request.source.data_dir == str(tiny_mnist_dir)


def test_a_resume_path_that_exists_only_on_the_server_is_not_checked_on_the_node(tiny_mnist_dir, tmp_path):
    run_dir = tmp_path / "server-run"
    run_dir.mkdir()
    (run_dir / "synthetic_set.pt").write_bytes(b"")
    settings = settings_for(tiny_mnist_dir, **{"resume-from": str(run_dir)})
    (run_dir / "synthetic_set.pt").unlink()
    reply = client_app.app(train_message(settings, np.zeros(SHAPE, np.float32)), context({"partition-id": 0, "num-partitions": 2}))
    assert not reply.has_error(), reply.error


def evaluate_message(settings: Settings, images: np.ndarray, server_round: int = 3, node_id: int = 5) -> Message:
    classes = settings.dataset_spec.num_classes
    labels = np.repeat(np.arange(classes), images.shape[0] // classes)
    content = RecordDict(
        {
            "labelled-set": ArrayRecord({"images": Array(images), "labels": Array(labels)}),
            "config": ConfigRecord(settings.to_record() | {"server-round": server_round}),
        }
    )
    return delivered(Message(content=content, dst_node_id=node_id, message_type=MessageType.EVALUATE), node_id)


def test_evaluate_trains_the_servers_networks_and_tests_them_on_the_nodes_share(tiny_mnist_dir):
    settings = settings_for(tiny_mnist_dir, **{"num-eval": 2, "eval-epochs": 3})
    images = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    ctx = context({"partition-id": 1, "num-partitions": 2, "node-name": "hospital-b"})
    reply = client_app.app(evaluate_message(settings, images), ctx)
    assert not reply.has_error(), reply.error
    metrics = reply.content["metrics"]
    share = node_data.load_node_split(client_app.node_data_request(settings, ctx), train=False)
    assert metrics["num-examples"] == len(share) == 50
    expected = evaluate_synthetic_set(
        torch.from_numpy(images), torch.arange(10), share, settings.network_spec, settings.eval_params,
        settings.seed, 3,
    )
    assert metrics["accuracies"] == pytest.approx(expected.accuracies)
    assert reply.content["node"]["name"] == "hospital-b"


def test_evaluate_on_a_node_whose_data_does_not_fit_answers_with_an_error(tmp_path):
    write_imagefolder(tmp_path / "h", class_names=("a", "b"), size=32)
    settings = settings_for(tmp_path, **{"dataset": "imagefolder", "class-names": "a,b", "channels": 1,
                                         "image-size": "28x28", "norm-mean": "0.5", "norm-std": "0.25"})
    ctx = context({"data-dir": str(tmp_path / "h"), "node-name": "hospital-c"})
    reply = client_app.app(evaluate_message(settings, np.zeros((2, 1, 28, 28), np.float32)), ctx)
    assert reply.has_error() and reply.error.code == NODE_DATA_ERROR_CODE
    assert reply.error.reason.startswith("hospital-c: 4 of 4 images under")
    assert "is 32x32 pixels, the task declares image-size=28x28" in reply.error.reason
