"""The SFDD server strategy: ship S, check and FedAvg the returned S_i, record rounds.

Flower glue only: the maths lives in `aggregation.py`, the bookkeeping in `recorder.py`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.serverapp.strategy.multikrum import select_multikrum

from .aggregation import Aggregate, update_problem, weighted_mean
from .config import Settings
from .federated_eval import FederatedEvalResult, NodeEvaluation, combine_node_evaluations, evaluation_problem
from .recorder import FederatedEvaluator, RunRecorder
from .seeding import derive_seed

SYNTHETIC_SET_KEY = "synthetic-set"
IMAGES_KEY = "images"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
NUM_EXAMPLES_KEY = "num-examples"
SERVER_ROUND_KEY = "server-round"
RUN_DIR_KEY = "run-dir"
ACCURACIES_KEY = "accuracies"
NODE_KEY = "node"
# Error code of a node whose data or settings do not fit the run (Flower's own are 0-8).
NODE_DATA_ERROR_CODE = 100


def images_record(images: torch.Tensor | np.ndarray) -> ArrayRecord:
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    return ArrayRecord({IMAGES_KEY: Array(np.ascontiguousarray(array, dtype=np.float32))})


def record_bytes(record: ArrayRecord | None) -> int:
    return 0 if record is None else sum(len(array.data) for array in record.values())


def robust_aggregator(settings: Settings) -> FedAvg | None:
    """Flower's robust strategy for `aggregator`, used for its aggregation only (None = FedAvg).

    Their `aggregate_train` works on replies holding one ArrayRecord and one MetricRecord
    with `num-examples`, which is the shape of ours, so they are reused as they are.
    """
    common = {"arrayrecord_key": SYNTHETIC_SET_KEY, "configrecord_key": CONFIG_KEY}
    if settings.aggregator == "median":
        return FedMedian(**common)
    if settings.aggregator == "trimmed-mean":
        return FedTrimmedAvg(beta=settings.trim_fraction, **common)
    if settings.aggregator == "krum":
        return Krum(num_malicious_nodes=settings.krum_malicious, **common)
    if settings.aggregator == "multi-krum":
        return MultiKrum(
            num_malicious_nodes=settings.krum_malicious,
            num_nodes_to_select=settings.multi_krum_select,
            **common,
        )
    return None


def aggregate_synthetic_sets(
    settings: Settings, robust: FedAvg | None, server_round: int, arrays: list[np.ndarray], weights: list[float]
) -> np.ndarray:
    """The returned S_i combined by FedAvg (`robust` None) or by Flower's robust strategy."""
    if robust is None:
        return weighted_mean(arrays, weights)
    needed = 2 * settings.krum_malicious + 3
    if settings.aggregator in ("krum", "multi-krum") and len(arrays) < needed:
        log(WARNING, "round %d: %s with krum-malicious=%d needs %d updates for its guarantee, got %d",
            server_round, settings.aggregator, settings.krum_malicious, needed, len(arrays))
    # Flower's robust strategies insist on identical metric keys across replies, so they
    # get minimal replies: the images (serialised by Array) and num-examples only.
    replies = [
        Message(
            RecordDict(
                {
                    SYNTHETIC_SET_KEY: ArrayRecord({IMAGES_KEY: Array(array)}),
                    METRICS_KEY: MetricRecord({NUM_EXAMPLES_KEY: weight}),
                }
            ),
            metadata=Metadata(
                run_id=0, message_id=f"update-{index}", src_node_id=index + 1, dst_node_id=0,
                reply_to_message_id="", group_id=str(server_round), created_at=0.0, ttl=0.0,
                message_type=MessageType.TRAIN,
            ),
        )
        for index, (array, weight) in enumerate(zip(arrays, weights))
    ]
    aggregated, _ = robust.aggregate_train(server_round, replies)
    return np.asarray(aggregated[IMAGES_KEY].numpy(), dtype=np.float32)


def kept_updates(settings: Settings, arrays: list[np.ndarray]) -> list[int] | None:
    """Indices of the S_i that Krum or multi-Krum averages this round; None for the rules
    that use every update.

    Flower's strategies do not say whom they kept, so this runs their selection
    (`select_multikrum`, deterministic) on the same arrays.
    """
    if settings.aggregator not in ("krum", "multi-krum"):
        return None
    contents = [RecordDict({SYNTHETIC_SET_KEY: ArrayRecord({IMAGES_KEY: Array(array)})}) for array in arrays]
    chosen = select_multikrum(
        contents,
        num_malicious_nodes=settings.krum_malicious,
        num_nodes_to_select=1 if settings.aggregator == "krum" else settings.multi_krum_select,
    )
    return [index for index, content in enumerate(contents) if any(content is selected for selected in chosen)]


def synthetic_set_aggregator(settings: Settings) -> Aggregate:
    """`aggregate(server_round, arrays, weights)` for code that runs rounds without a Strategy."""
    robust = robust_aggregator(settings)
    return lambda server_round, arrays, weights: aggregate_synthetic_sets(settings, robust, server_round, arrays, weights)


def replying_nodes(messages: Iterable[Message], replies: Iterable[Message]) -> list[int]:
    """The node each reply is about: the destination of the message it answers.

    Replies the SuperLink makes itself (e.g. 'node unavailable' after missed heartbeats)
    carry the SuperLink as their source, so the source alone does not name the node.
    """
    destinations = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
    return [destinations.get(r.metadata.reply_to_message_id, r.metadata.src_node_id) for r in replies]


def replies_from_nodes(
    messages: list[Message], replies: list[Message], deadline: str
) -> tuple[list[Message], list[str]]:
    """The replies the nodes sent, and one line for each node that sent none.

    A node that crashed or disconnected stays silent until the `deadline` (e.g.
    'round-timeout=600 s'), or the SuperLink answers for it once it signed off or its
    heartbeats stopped.
    """
    from_nodes, missing = [], []
    nodes = replying_nodes(messages, replies)
    for reply, node_id in zip(replies, nodes):
        if reply.metadata.src_node_id == node_id:
            from_nodes.append(reply)
        else:
            missing.append(f"node {node_id}: {reply.error.reason if reply.has_error() else 'no reply'}")
    answered = set(nodes)
    missing += [
        f"node {m.metadata.dst_node_id}: no reply within {deadline}"
        for m in messages
        if m.metadata.dst_node_id not in answered
    ]
    return from_nodes, missing


class SFDDStrategy(FedAvg):
    """FedAvg over synthetic sets: weighted by client data size, labels never averaged.

    Replies that carry an error, miss keys, or hold images of the wrong shape or with
    NaN/Inf are dropped with a log line naming the node; the round aggregates the rest.
    """

    def __init__(self, settings: Settings, report: Callable[[str], None] | None = None) -> None:
        super().__init__(
            fraction_train=settings.fraction_train,
            min_train_nodes=settings.min_clients,
            min_available_nodes=settings.min_clients,
            arrayrecord_key=SYNTHETIC_SET_KEY,
            configrecord_key=CONFIG_KEY,
        )
        self.settings = settings
        spec = settings.dataset_spec
        self.expected_shape = (spec.num_classes * settings.ipc, spec.channels, *spec.image_size)
        self.report = report or (lambda text: log(INFO, text))
        self.aggregate = synthetic_set_aggregator(settings)
        self.last_round_failures: list[str] = []
        self.last_round_clients: list[dict] = []
        # Nodes whose S_i (multi-)Krum averaged in the last round; None for the other rules.
        self.last_round_kept: list[int] | None = None
        self.last_evaluation: FederatedEvalResult | None = None

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Connected node IDs once at least `min-clients` are there (up to round-timeout)."""
        started = time.monotonic()
        last_report = started - 10.0
        while len(node_ids := sorted(grid.get_node_ids())) < self.min_available_nodes:
            now = time.monotonic()
            if now - started > self.settings.round_timeout:
                raise RuntimeError(
                    f"only {len(node_ids)} of min-clients={self.min_available_nodes} nodes "
                    f"connected within round-timeout={self.settings.round_timeout:.0f} s"
                )
            if now - last_report >= 10.0:
                last_report = now
                self.report(
                    f"waiting for nodes: {len(node_ids)} connected, "
                    f"min-clients={self.min_available_nodes}"
                )
            time.sleep(1.0)
        return node_ids

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message per sampled node; sampling is seeded by (seed, round)."""
        node_ids = self.wait_for_nodes(grid)
        sample_size = min(
            len(node_ids), max(int(len(node_ids) * self.fraction_train), self.min_train_nodes)
        )
        sampler = random.Random(derive_seed(self.settings.seed, "sampling", server_round))
        sampled = sorted(sampler.sample(node_ids, sample_size))
        config[SERVER_ROUND_KEY] = server_round
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [
            Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN)
            for node_id in sampled
        ]

    def reply_problem(self, reply: Message) -> str | None:
        """Why a training reply cannot be aggregated, or None if it can."""
        if reply.has_error():
            return f"client error: {reply.error.reason}"
        content = reply.content
        if SYNTHETIC_SET_KEY not in content.array_records:
            return f"missing ArrayRecord {SYNTHETIC_SET_KEY!r}"
        if METRICS_KEY not in content.metric_records:
            return f"missing MetricRecord {METRICS_KEY!r}"
        arrays = content.array_records[SYNTHETIC_SET_KEY]
        metrics = content.metric_records[METRICS_KEY]
        images = arrays[IMAGES_KEY].numpy() if IMAGES_KEY in arrays else None
        return update_problem(images, self.expected_shape, metrics.get(NUM_EXAMPLES_KEY))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted: list[Message] = []
        self.last_round_failures = []
        for reply in replies:
            problem = self.reply_problem(reply)
            if problem is None:
                accepted.append(reply)
            else:
                node = reply.metadata.src_node_id
                self.last_round_failures.append(f"node {node}: {problem}")
                log(WARNING, "round %d: rejected the reply of node %d: %s", server_round, node, problem)
        if not accepted:
            return None, None
        weights = [
            float(reply.content.metric_records[METRICS_KEY][NUM_EXAMPLES_KEY]) for reply in accepted
        ]
        arrays = [reply.content.array_records[SYNTHETIC_SET_KEY][IMAGES_KEY].numpy() for reply in accepted]
        images = self.aggregate(server_round, arrays, weights)
        kept = kept_updates(self.settings, arrays)
        client_metrics = [reply.content.metric_records[METRICS_KEY] for reply in accepted]
        seconds = [float(m.get("local-update-seconds", 0.0)) for m in client_metrics]
        losses = [float(m.get("matching-loss", float("nan"))) for m in client_metrics]
        metrics = MetricRecord(
            {
                NUM_EXAMPLES_KEY: int(sum(weights)),
                "matching-loss": float(np.average(losses, weights=weights)),
                "local-update-seconds-sum": float(sum(seconds)),
                "local-update-seconds-max": float(max(seconds)),
            }
        )
        epsilons = [float(m["local-dp-epsilon"]) for m in client_metrics if "local-dp-epsilon" in m]
        if epsilons:
            metrics["local-dp-epsilon"] = max(epsilons)
            metrics["local-dp-delta"] = max(float(m["local-dp-delta"]) for m in client_metrics if "local-dp-delta" in m)
        self.last_round_clients = [
            {"node": reply.metadata.src_node_id}
            | {
                key.replace("-", "_"): [float(v) for v in value] if isinstance(value, list) else float(value)
                for key, value in metric.items()
            }
            for reply, metric in zip(accepted, client_metrics)
        ]
        self.last_round_kept = None
        if kept is not None:
            self.last_round_kept = [accepted[index].metadata.src_node_id for index in kept]
            log(INFO, "round %d: %s kept the updates of node(s) %s of %d",
                server_round, self.settings.aggregator, ", ".join(map(str, self.last_round_kept)), len(accepted))
        return images_record(images), metrics

    def distill(self, grid: Grid, recorder: RunRecorder) -> torch.Tensor:
        """Run rounds `recorder.first_round`..`num_server_rounds`; return the final S."""
        images = recorder.start()
        settings = self.settings
        for server_round in range(recorder.first_round, settings.num_server_rounds + 1):
            started = time.monotonic()
            arrays = images_record(images)
            config = ConfigRecord(settings.to_record() | {RUN_DIR_KEY: str(recorder.run_dir.path)})
            messages = list(self.configure_train(server_round, arrays, config, grid))
            if server_round == recorder.first_round:
                self.report(f"round {server_round}: sending S to {len(messages)} clients")
            replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
            replies, unavailable = replies_from_nodes(messages, replies, f"round-timeout={settings.round_timeout:g} s")
            for line in unavailable:
                log(WARNING, "round %d: %s; aggregating the replies that arrived", server_round, line)
            received_bytes = sum(
                record_bytes(reply.content.array_records.get(SYNTHETIC_SET_KEY))
                for reply in replies
                if not reply.has_error()
            )
            aggregated, metrics = self.aggregate_train(server_round, replies)
            missing = len(messages) - len(replies)
            if aggregated is None:
                reasons = "; ".join(self.last_round_failures + unavailable) or "no reply arrived in time"
                raise RuntimeError(
                    f"round {server_round}: no usable client update ({reasons}); "
                    f"S of round {server_round - 1} is saved, resume with "
                    f"--run-config \"resume-from='{recorder.run_dir.path}'\""
                )
            images = torch.from_numpy(aggregated[IMAGES_KEY].numpy().copy())
            recorder.end_round(
                server_round,
                images,
                {
                    "matching_loss": float(metrics["matching-loss"]),
                    "clients_ok": len(replies) - len(self.last_round_failures),
                    "clients_failed": len(self.last_round_failures) + missing,
                    "failures": self.last_round_failures + unavailable,
                    "local_update_seconds_sum": float(metrics["local-update-seconds-sum"]),
                    "local_update_seconds_max": float(metrics["local-update-seconds-max"]),
                    "round_seconds": round(time.monotonic() - started, 3),
                    "bytes_sent": record_bytes(arrays) * len(messages),
                    "bytes_received": received_bytes,
                    **({"local_dp_epsilon": float(metrics["local-dp-epsilon"]),
                        "local_dp_delta": float(metrics["local-dp-delta"])}
                       if "local-dp-epsilon" in metrics else {}),
                    "clients": self.last_round_clients,
                    **({"aggregator_kept": self.last_round_kept} if self.last_round_kept is not None else {}),
                },
            )
        return images

    # ----- federated evaluation -----
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One evaluate message per connected node: every node tests S on its held-out data."""
        config[SERVER_ROUND_KEY] = server_round
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [
            Message(content=content, dst_node_id=node_id, message_type=MessageType.EVALUATE)
            for node_id in sorted(grid.get_node_ids())
        ]

    def evaluation_reply_problem(self, reply: Message) -> str | None:
        """Why an evaluation reply cannot be combined, or None if it can."""
        if reply.has_error():
            return f"client error: {reply.error.reason}"
        if METRICS_KEY not in reply.content.metric_records:
            return f"missing MetricRecord {METRICS_KEY!r}"
        metrics = reply.content.metric_records[METRICS_KEY]
        return evaluation_problem(
            metrics.get(ACCURACIES_KEY), metrics.get(NUM_EXAMPLES_KEY), self.settings.num_eval
        )

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Test-size-weighted accuracy of each model over the nodes that answered.

        The full result (per-node figures, failures) is kept in `last_evaluation`.
        """
        nodes, failures = [], []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            problem = self.evaluation_reply_problem(reply)
            if problem is not None:
                failures.append(f"node {node_id}: {problem}")
                log(WARNING, "round %d: rejected the evaluation of node %d: %s", server_round, node_id, problem)
                continue
            metrics = reply.content.metric_records[METRICS_KEY]
            info = reply.content.config_records.get(NODE_KEY)
            name = str(info["name"]) if info is not None and "name" in info else f"node {node_id}"
            nodes.append(
                NodeEvaluation(
                    node=name if name == f"node {node_id}" else f"{name} (node {node_id})",
                    num_examples=int(metrics[NUM_EXAMPLES_KEY]),
                    accuracies=tuple(float(a) for a in metrics[ACCURACIES_KEY]),
                    seconds=float(metrics.get("eval-seconds", 0.0)),
                )
            )
        self.last_evaluation = combine_node_evaluations(sorted(nodes, key=lambda n: n.node), failures)
        if not nodes:
            return None
        result = self.last_evaluation
        return MetricRecord(
            {
                NUM_EXAMPLES_KEY: result.num_examples,
                ACCURACIES_KEY: result.accuracies,
                "accuracy-mean": result.mean,
                "accuracy-std": result.std,
            }
        )

    def evaluate_federated(self, grid: Grid, server_round: int, images: torch.Tensor) -> FederatedEvalResult:
        """Send S to every connected node, wait up to `eval-timeout`, combine the answers."""
        started = time.monotonic()
        messages = list(
            self.configure_evaluate(server_round, images_record(images), ConfigRecord(self.settings.to_record()), grid)
        )
        replies = list(grid.send_and_receive(messages, timeout=self.settings.eval_timeout)) if messages else []
        replies, silent = replies_from_nodes(messages, replies, f"eval-timeout={self.settings.eval_timeout:g} s")
        self.aggregate_evaluate(server_round, replies)
        if not messages:
            silent.append("no node is connected")
        for line in silent:
            log(WARNING, "round %d: federated evaluation: %s", server_round, line)
        result = self.last_evaluation
        result.failures.extend(silent)
        result.seconds = time.monotonic() - started
        return result

    def federated_evaluator(self, grid: Grid) -> FederatedEvaluator:
        """`RunRecorder`'s hook: evaluate S on the nodes' held-out data."""
        return lambda server_round, images: self.evaluate_federated(grid, server_round, images)
