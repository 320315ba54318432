"""The Strategy with hand-built Messages and an in-process grid running the real ClientApp."""

import json
import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from flower_helpers import InProcessGrid, delivered, error_reply, strategy_for
from sfdd_flwr import client_app
from sfdd_flwr.data.datasets import LabelledImages
from sfdd_flwr.runs.artifacts import load_synthetic_set
from sfdd_flwr.server_app import server_parts
from sfdd_flwr.settings import Settings

pytestmark = pytest.mark.usefixtures("server_identity")

SHAPE = (10, 1, 28, 28)


@pytest.fixture
def flwr_log():
    """Records of Flower's logger (which does not propagate to the root logger)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def tiny_settings(data_dir, tmp_path, **extra) -> Settings:
    values = {
        "preset": "", "data-dir": str(data_dir), "output-dir": str(tmp_path / "out"),
        "run-name": "run", "net-width": 8, "batch-real": 8, "num-server-rounds": 2,
        "eval-every": 1, "num-eval": 1, "eval-epochs": 2, "min-clients": 2,
    }
    return Settings.from_mapping(values | extra)


def instruction(node_id: int) -> Message:
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})
    return delivered(Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN), node_id)


def reply(node_id: int, images: np.ndarray | None = None, num_examples=100, extra=None, to: Message | None = None,
          **metrics) -> Message:
    """A train reply from `node_id` (to `to`, the message it answers, if given)."""
    content = RecordDict()
    if images is not None:
        content["state"] = ArrayRecord({"images": Array(images)} | ({"extra": Array(extra)} if extra is not None else {}))
    content["metrics"] = MetricRecord(
        {"num-examples": num_examples, "matching-loss": 1.0, "local-update-seconds": 0.5, **metrics}
    )
    return Message(content, reply_to=to if to is not None else instruction(node_id))


def test_aggregation_is_the_data_size_weighted_mean_of_images(tmp_path):
    strategy = strategy_for(tiny_settings("/tmp", tmp_path, **{"max-weight-share": 1.0, "max-update-ratio": 0}))
    replies = [
        reply(1, np.full(SHAPE, 1.0, np.float32), num_examples=300),
        reply(2, np.full(SHAPE, 5.0, np.float32), num_examples=100),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert list(arrays.keys()) == ["images"]  # labels are never sent nor averaged
    images = arrays["images"].numpy()
    assert images.dtype == np.float32 and images.shape == SHAPE
    assert np.allclose(images, 2.0)
    assert metrics["num-examples"] == 400
    assert metrics["local-update-seconds-sum"] == pytest.approx(1.0)
    # With the default bounds neither of two replies outweighs the other (max-weight-share 0.5).
    close = [reply(1, np.full(SHAPE, 1.0, np.float32), num_examples=300),
             reply(2, np.full(SHAPE, 2.0, np.float32), num_examples=100)]
    arrays, _ = strategy_for(tiny_settings("/tmp", tmp_path)).aggregate_train(1, close)
    assert np.allclose(arrays["images"].numpy(), 1.5)


@pytest.mark.parametrize(
    ("bad_reply", "fragment"),
    [
        (lambda: reply(9, np.full(SHAPE, np.nan, np.float32)), "NaN/Inf"),
        (lambda: reply(9, np.full(SHAPE, np.inf, np.float32)), "NaN/Inf"),
        (lambda: reply(9, np.zeros((10, 1, 28, 27), np.float32)), "shape"),
        (lambda: reply(9, None), "missing ArrayRecord 'state'"),
        (lambda: reply(9, np.zeros(SHAPE, np.float32), extra=np.zeros(3, np.float32)), "unexpected array(s) 'extra'"),
        (lambda: Message(RecordDict({"state": ArrayRecord({"images": Array(np.zeros(SHAPE, np.float32))})}),
                         reply_to=instruction(9)), "missing MetricRecord 'metrics'"),
        (lambda: reply(9, np.zeros(SHAPE, np.float32), num_examples=0), "num-examples"),
        (lambda: error_reply(instruction(9), "ValueError: data does not fit"), "client error"),
    ],
)
def test_bad_replies_are_rejected_naming_the_node_and_the_rest_aggregated(tmp_path, flwr_log, bad_reply, fragment):
    strategy = strategy_for(tiny_settings("/tmp", tmp_path))
    good = [reply(1, np.full(SHAPE, 1.0, np.float32)), reply(2, np.full(SHAPE, 3.0, np.float32))]
    arrays, _ = strategy.aggregate_train(4, [good[0], bad_reply(), good[1]])
    assert np.allclose(arrays["images"].numpy(), 2.0)
    assert len(strategy.last_round_failures) == 1
    assert strategy.last_round_failures[0].startswith("node 9:")
    messages = [record.getMessage() for record in flwr_log]
    assert any("round 4" in m and "node 9" in m and fragment in m for m in messages), messages


def test_a_round_with_only_bad_replies_aggregates_nothing(tmp_path):
    strategy = strategy_for(tiny_settings("/tmp", tmp_path))
    arrays, metrics = strategy.aggregate_train(1, [reply(3, None)])
    assert arrays is None and metrics is None


def test_sampling_is_seeded_and_respects_fraction(tmp_path):
    settings = tiny_settings("/tmp", tmp_path, **{"fraction-train": 0.5, "min-clients": 2})
    strategy = strategy_for(settings)
    grid = InProcessGrid({n: None for n in range(10, 20)})
    pick = lambda rnd: [m.metadata.dst_node_id for m in strategy.configure_train(rnd, ArrayRecord(), ConfigRecord(), grid)]
    assert len(pick(1)) == 5
    assert pick(1) == pick(1)
    assert any(pick(1) != pick(r) for r in range(2, 6))


def run_clients(settings, tmp_path, handlers=None, rounds=None):
    grid = InProcessGrid(
        handlers or {101: client_app.app, 102: client_app.app},
        {101: {"partition-id": 0, "num-partitions": 2}, 102: {"partition-id": 1, "num-partitions": 2}},
    )
    lines = []
    strategy, recorder = server_parts(settings, grid, lines.append)
    images = strategy.run(grid, recorder)["images"]
    return grid, recorder, images, lines


def test_rounds_with_the_real_client_app_write_every_artifact(tiny_mnist_dir, tmp_path):
    settings = tiny_settings(tiny_mnist_dir, tmp_path)
    grid, recorder, images, lines = run_clients(settings, tmp_path)
    run_dir = recorder.run_dir.path
    assert run_dir == tmp_path / "out" / "run"
    for name in ("config.yaml", "synthetic_set.pt", "synthetic_set_round_0002.pt", "metrics.jsonl",
                 "grid_round_0001.png", "grid_round_0002.png"):
        assert (run_dir / name).is_file(), name
    saved = load_synthetic_set(run_dir)
    assert saved.round == 2 and torch.equal(saved.images, images)
    assert saved.labels.tolist() == [c for c in range(10)]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2]
    serialized = len(Array(np.zeros(SHAPE, np.float32)).data)  # raw bytes + npy header
    assert metrics[0]["clients_ok"] == 2
    assert metrics[0]["bytes_sent"] == metrics[0]["bytes_received"] == 2 * serialized
    assert any(line.startswith("round 2/2 | matching loss") and "ETA" in line for line in lines)
    # clients keep their momentum between rounds (client state, never sent)
    assert all("method-state" in ctx.state.array_records for ctx in grid.contexts.values())
    assert all("velocity" in ctx.state["method-state"] for ctx in grid.contexts.values())


def test_a_failing_client_does_not_stop_the_round(tiny_mnist_dir, tmp_path):
    def broken(message, context):
        return reply(103, np.full(SHAPE, np.nan, np.float32), to=message)

    settings = tiny_settings(tiny_mnist_dir, tmp_path, **{"num-server-rounds": 1})
    _, recorder, _, _ = run_clients(settings, tmp_path, {101: client_app.app, 102: client_app.app, 103: broken})
    metrics = recorder.run_dir.read_metrics()
    assert metrics[0]["clients_ok"] == 2 and metrics[0]["clients_failed"] == 1


def test_no_usable_update_stops_the_run_with_a_resume_hint(tiny_mnist_dir, tmp_path):
    settings = tiny_settings(tiny_mnist_dir, tmp_path)
    broken = lambda message, context: error_reply(message, "out of memory")
    with pytest.raises(RuntimeError, match="no usable client update.*out of memory.*resume-from"):
        run_clients(settings, tmp_path, {101: broken, 102: broken})


def test_resume_continues_at_the_next_round_and_matches_an_uninterrupted_run(tiny_mnist_dir, tmp_path):
    settings = tiny_settings(tiny_mnist_dir, tmp_path, **{"num-server-rounds": 3, "persist-momentum": False})
    _, _, uninterrupted, _ = run_clients(settings, tmp_path)

    # "kill" after round 2: a run configured for 2 rounds leaves the same checkpoint
    first = tiny_settings(tiny_mnist_dir, tmp_path, **{"num-server-rounds": 2, "persist-momentum": False, "run-name": "cut"})
    _, recorder, _, _ = run_clients(first, tmp_path)
    run_dir = recorder.run_dir.path
    resumed_settings = tiny_settings(
        tiny_mnist_dir, tmp_path,
        **{"num-server-rounds": 3, "persist-momentum": False, "resume-from": str(run_dir)},
    )
    grid, recorder, resumed, lines = run_clients(resumed_settings, tmp_path)
    assert recorder.first_round == 3
    assert {m.content["config"]["server-round"] for m in grid.sent} == {3}
    assert [m["round"] for m in recorder.run_dir.read_metrics()] == [1, 2, 3]
    assert torch.allclose(resumed, uninterrupted, atol=1e-6)
    assert any("resuming" in line for line in lines)


# ----- resilience: nodes that vanish -----
def test_a_silent_node_is_named_and_the_round_aggregates_the_others(tiny_mnist_dir, tmp_path, flwr_log):
    settings = tiny_settings(tiny_mnist_dir, tmp_path, **{"num-server-rounds": 1, "num-eval": 0, "round-timeout": 0.5})
    silent = lambda message, context: None
    _, recorder, _, _ = run_clients(settings, tmp_path, {101: client_app.app, 102: client_app.app, 103: silent})
    metrics = recorder.run_dir.read_metrics()[0]
    assert (metrics["clients_ok"], metrics["clients_failed"]) == (2, 1)
    assert metrics["failures"] == ["node 103: no reply within round-timeout=0.5 s"]
    assert any("round 1: node 103: no reply" in record.getMessage() for record in flwr_log)


def test_a_superlink_reply_for_an_unavailable_node_names_that_node(tiny_mnist_dir, tmp_path):
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

    settings = tiny_settings(tiny_mnist_dir, tmp_path, **{"num-server-rounds": 1, "num-eval": 0})
    gone = lambda message, context: create_message_error_unavailable_res_message(message.metadata, "node_unavail")
    _, recorder, _, _ = run_clients(settings, tmp_path, {101: client_app.app, 102: client_app.app, 103: gone})
    metrics = recorder.run_dir.read_metrics()[0]
    assert (metrics["clients_ok"], metrics["clients_failed"]) == (2, 1)
    assert len(metrics["failures"]) == 1 and metrics["failures"][0].startswith("node 103: Error: Node Unavailable")


# ----- federated evaluation -----
def evaluation_reply(node_id: int, num_examples, accuracies, name: str | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": num_examples, "accuracies": accuracies})})
    if name:
        content["node"] = ConfigRecord({"name": name})
    return Message(content, reply_to=instruction(node_id))


def test_federated_accuracy_is_each_models_test_size_weighted_mean(tmp_path, flwr_log):
    strategy = strategy_for(tiny_settings("/tmp", tmp_path, **{"num-eval": 2}))
    replies = [
        evaluation_reply(1, 100, [0.5, 0.7], "hospital-a"),
        evaluation_reply(2, 300, [0.9, 0.1]),
        evaluation_reply(3, 50, [0.9]),
        error_reply(instruction(4), "hospital-d: class folder missing"),
    ]
    metrics = strategy.aggregate_evaluate(5, replies)
    assert metrics["accuracies"] == pytest.approx([0.8, 0.25])
    assert metrics["num-examples"] == 400 and metrics["accuracy-mean"] == pytest.approx(0.525)
    result = strategy.last_evaluation
    assert [node.node for node in result.nodes] == ["hospital-a (node 1)", "node 2"]
    assert result.failures[0].startswith("node 3: accuracies is [0.9], expected 2 numbers")
    assert result.failures[1] == "node 4: client error: hospital-d: class folder missing"
    messages = [record.getMessage() for record in flwr_log]
    assert any("round 5" in m and "node 4" in m and "hospital-d: class folder missing" in m for m in messages)


def test_federated_and_server_evaluation_agree_on_the_union_of_the_test_shares(tiny_mnist_dir, tmp_path):
    """Nodes train the server's networks (same seeds) and hold disjoint shares of the
    test split, so the size-weighted federated accuracy equals the server's."""
    from sfdd_flwr.data.datasets import load_split

    settings = tiny_settings(
        tiny_mnist_dir, tmp_path, **{"eval-mode": "both", "num-eval": 2, "eval-epochs": 5, "num-server-rounds": 1,
                                     "round-timeout": 0.5, "eval-timeout": 0.5}
    )
    grid = InProcessGrid(
        {101: client_app.app, 102: client_app.app, 103: lambda message, context: None},
        {101: {"partition-id": 0, "num-partitions": 2, "node-name": "hospital-a"},
         102: {"partition-id": 1, "num-partitions": 2}},
    )
    lines = []
    test_set = load_split("mnist", str(tiny_mnist_dir), train=False)
    strategy, recorder = server_parts(settings, grid, lines.append, test_set)
    strategy.run(grid, recorder)
    summary = recorder.finish()
    metrics = recorder.run_dir.read_metrics()
    for record in metrics:
        assert record["federated_accuracies"] == pytest.approx(record["accuracies"], abs=1e-12)
        assert record["federated_test_examples"] == 100
        assert [n["node"] for n in record["federated_nodes"]] == ["hospital-a (node 101)", "node 102"]
        assert record["federated_failures"] == ["node 103: no reply within eval-timeout=0.5 s"]
    assert summary["final_federated_accuracy_mean"] == pytest.approx(summary["final_accuracy_mean"])
    assert any(line.startswith("round 1: federated accuracy") and "100 held-out images of 2/3 nodes" in line for line in lines)
    assert any("final federated accuracy" in line for line in lines if line.startswith("SUMMARY"))
    evaluate_messages = [m for m in grid.sent if m.metadata.message_type == MessageType.EVALUATE]
    assert [m.content["config"]["server-round"] for m in evaluate_messages] == [1, 1, 1]


def test_federated_only_evaluation_reports_when_no_node_answers(tiny_mnist_dir, tmp_path):
    settings = tiny_settings(tiny_mnist_dir, tmp_path, **{"eval-mode": "federated", "num-server-rounds": 1})
    grid = InProcessGrid({101: client_app.app, 102: client_app.app},
                         {101: {"partition-id": 0, "num-partitions": 2}, 102: {"partition-id": 1, "num-partitions": 2}})
    lines = []
    strategy, recorder = server_parts(settings, grid, lines.append)
    strategy.run(grid, recorder)
    assert recorder.run_dir.read_metrics()[0]["federated_accuracy_mean"] is not None

    broken = InProcessGrid({101: lambda message, context: error_reply(message, "disk full")})
    result = strategy.evaluate_federated(broken, 2, LabelledImages(torch.zeros(SHAPE), torch.arange(10)))
    assert result.nodes == [] and result.failures == ["node 101: client error: disk full"]
    record = recorder._federated_record(2, result, "")
    assert record["federated_accuracy_mean"] is None
    assert any("federated accuracy not available: no node answered (node 101: client error: disk full)" in line for line in lines)
