"""The server strategy: ship the method's shared state, check and combine the returned
states, record every round; federated evaluation of the labelled set on the nodes.

Flower glue, method-agnostic: what the state is, how a reply is checked and how replies
are combined is the method's (`methods/`); the bookkeeping is the recorder's (`runs/`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .aggregators import Combined
from .aggregators.bounds import BoundsSettings, bound_replies
from .aggregators.fedavg import weight_problem
from .data.datasets import LabelledImages
from .evaluation.federated import FederatedEvalResult, NodeEvaluation, combine_node_evaluations, evaluation_problem
from .methods.base import State, SynthesisMethod, reduce_metrics
from .protocol import (
    ACCURACIES_KEY,
    CONFIG_KEY,
    LABELLED_SET_KEY,
    METRICS_KEY,
    NODE_KEY,
    NUM_EXAMPLES_KEY,
    SERVER_ROUND_KEY,
    STATE_KEY,
    labelled_record,
    metrics_dict,
    record_bytes,
    record_state,
    settings_config,
    state_record,
)
from .runs.recorder import FederatedEvaluator, RunRecorder
from .seeding import derive_seed
from .settings import Settings

LOCAL_SECONDS_KEY = "local-update-seconds"


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


REPLY_POLL_SECONDS = 0.1


def exchange(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Push `messages` and collect their replies until all have come or `timeout` passed.

    Flower's `Grid.send_and_receive` does the same, but a deployment's grid looks for
    replies only every 3 s, which adds up to 3 s to every round and evaluation; this polls
    every `REPLY_POLL_SECONDS`, as Flower's simulation grid does."""
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        arrived = list(grid.pull_messages(waiting))
        replies += arrived
        waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(REPLY_POLL_SECONDS)
    return replies


class SynthesisStrategy(FedAvg):
    """FedAvg's sampling and message shape over a method's shared state.

    Replies that carry an error, miss records, or hold a state the method rejects (wrong
    arrays, shapes, NaN/Inf) are dropped with a log line naming the node; the round
    combines the rest with the method's rule. `metric_reductions` say how the clients'
    metrics become the round's (the method's and the defence's declarations).
    """

    def __init__(
        self,
        settings: Settings,
        method: SynthesisMethod,
        metric_reductions: Mapping[str, str] | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            fraction_train=settings.fraction_train,
            min_train_nodes=settings.min_clients,
            min_available_nodes=settings.min_clients,
            arrayrecord_key=STATE_KEY,
            configrecord_key=CONFIG_KEY,
        )
        self.settings = settings
        self.method = method
        self.metric_reductions = dict(metric_reductions if metric_reductions is not None else method.round_metrics)
        self.report = report or (lambda text: log(INFO, text))
        self.sent_state: State = {}
        self.last_round_failures: list[str] = []
        self.last_round_clients: list[dict] = []
        self.last_round_metrics: dict[str, float] = {}
        # What the bounds did in the last round (`BoundedReplies.named`): clipped and capped
        # node ids, every node's update norm.
        self.last_round_bounded: dict[str, Any] = {}
        # Nodes whose state a selecting rule (Krum) combined in the last round; None: all.
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
                self.report(f"waiting for nodes: {len(node_ids)} connected, min-clients={self.min_available_nodes}")
            time.sleep(1.0)
        return node_ids

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message per sampled node; sampling is seeded by (seed, round)."""
        node_ids = self.wait_for_nodes(grid)
        sample_size = min(len(node_ids), max(int(len(node_ids) * self.fraction_train), self.min_train_nodes))
        sampler = random.Random(derive_seed(self.settings.seed, "sampling", server_round))
        sampled = sorted(sampler.sample(node_ids, sample_size))
        config[SERVER_ROUND_KEY] = server_round
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN) for node_id in sampled]

    def reply_problem(self, reply: Message) -> str | None:
        """Why a training reply cannot be combined, or None if it can."""
        if reply.has_error():
            return f"client error: {reply.error.reason}"
        content = reply.content
        if STATE_KEY not in content.array_records:
            return f"missing ArrayRecord {STATE_KEY!r}"
        if METRICS_KEY not in content.metric_records:
            return f"missing MetricRecord {METRICS_KEY!r}"
        returned = {key: array.numpy() for key, array in content.array_records[STATE_KEY].items()}
        return self.method.reply_problem(self.sent_state, returned) or weight_problem(
            content.metric_records[METRICS_KEY].get(NUM_EXAMPLES_KEY)
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The accepted replies combined by the method (against `sent_state`)."""
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
        weights = [float(reply.content.metric_records[METRICS_KEY][NUM_EXAMPLES_KEY]) for reply in accepted]
        states = [record_state(reply.content.array_records[STATE_KEY]) for reply in accepted]
        nodes = [reply.metadata.src_node_id for reply in accepted]
        bounded = bound_replies(self.settings.group(BoundsSettings), self.sent_state, states, weights,
                                [f"node {node}" for node in nodes])
        for note in bounded.notes:
            log(WARNING, "round %d: %s", server_round, note)
        self.last_round_failures += [note for note in bounded.notes if note.endswith(": rejected")]
        self.last_round_bounded = bounded.named(nodes)
        accepted = [accepted[i] for i in bounded.kept]
        if not accepted:
            return None, None
        if self.method.flower_fedavg and self.settings.aggregator == "fedavg":
            combined = Combined(record_state(self.flower_fedavg(server_round, accepted, bounded.states, bounded.weights)))
        else:
            combined = self.method.combine(server_round, bounded.states, bounded.weights)
        weights = bounded.weights
        self.method.finish_round(server_round, combined.state)
        client_metrics = [metrics_dict(reply.content.metric_records[METRICS_KEY]) for reply in accepted]
        seconds = [float(m.get(LOCAL_SECONDS_KEY, 0.0)) for m in client_metrics]
        self.last_round_metrics = reduce_metrics(self.metric_reductions, client_metrics, weights)
        self.last_round_clients = [
            {"node": reply.metadata.src_node_id} | {key.replace("-", "_"): value for key, value in metric.items()}
            for reply, metric in zip(accepted, client_metrics)
        ]
        self.last_round_kept = None
        if combined.kept is not None:
            self.last_round_kept = [accepted[index].metadata.src_node_id for index in combined.kept]
            log(INFO, "round %d: %s kept the updates of node(s) %s of %d", server_round, self.settings.aggregator,
                ", ".join(map(str, self.last_round_kept)), len(accepted))
        metrics = MetricRecord(
            {
                NUM_EXAMPLES_KEY: int(sum(weights)),
                "local-update-seconds-sum": float(sum(seconds)),
                "local-update-seconds-max": float(max(seconds)),
            }
        )
        return state_record(combined.state), metrics

    def flower_fedavg(
        self, server_round: int, accepted: list[Message], states: list[State], weights: list[float]
    ) -> ArrayRecord:
        """Flower's FedAvg (`aggregate_train` of the base class) over the accepted states.

        It insists on identical metric keys across replies, so it gets replies of the
        (bounded) state and weight only."""
        minimal = [
            Message(
                RecordDict({STATE_KEY: state_record(state), METRICS_KEY: MetricRecord({NUM_EXAMPLES_KEY: weight})}),
                metadata=reply.metadata,
            )
            for reply, state, weight in zip(accepted, states, weights)
        ]
        arrays, _ = super().aggregate_train(server_round, minimal)
        return arrays

    def run(self, grid: Grid, recorder: RunRecorder) -> State:
        """Run rounds `recorder.first_round`..`num_server_rounds`; return the final state."""
        state = recorder.start()
        settings = self.settings
        for server_round in range(recorder.first_round, settings.num_server_rounds + 1):
            started = time.monotonic()
            self.sent_state = state
            arrays = state_record(state)
            config = settings_config(settings, run_dir=str(recorder.run_dir.path))
            messages = list(self.configure_train(server_round, arrays, config, grid))
            if server_round == recorder.first_round:
                self.report(f"round {server_round}: sending the shared state to {len(messages)} clients")
            replies = exchange(grid, messages, settings.round_timeout)
            replies, unavailable = replies_from_nodes(messages, replies, f"round-timeout={settings.round_timeout:g} s")
            for line in unavailable:
                log(WARNING, "round %d: %s; aggregating the replies that arrived", server_round, line)
            received_bytes = sum(
                record_bytes(reply.content.array_records.get(STATE_KEY)) for reply in replies if not reply.has_error()
            )
            aggregated, metrics = self.aggregate_train(server_round, replies)
            missing = len(messages) - len(replies)
            if aggregated is None:
                reasons = "; ".join(self.last_round_failures + unavailable) or "no reply arrived in time"
                raise RuntimeError(
                    f"round {server_round}: no usable client update ({reasons}); "
                    f"the state of round {server_round - 1} is saved, resume with "
                    f"--run-config \"resume-from='{recorder.run_dir.path}'\""
                )
            state = record_state(aggregated)
            recorder.end_round(
                server_round,
                state,
                {
                    **self.last_round_metrics,
                    "clients_ok": len(replies) - len(self.last_round_failures),
                    "clients_failed": len(self.last_round_failures) + missing,
                    "failures": self.last_round_failures + unavailable,
                    "local_update_seconds_sum": float(metrics["local-update-seconds-sum"]),
                    "local_update_seconds_max": float(metrics["local-update-seconds-max"]),
                    "round_seconds": round(time.monotonic() - started, 3),
                    "bytes_sent": record_bytes(arrays) * len(messages),
                    "bytes_received": received_bytes,
                    "clients": self.last_round_clients,
                    **{key: nodes for key, nodes in self.last_round_bounded.items() if nodes},
                    **({"aggregator_kept": self.last_round_kept} if self.last_round_kept is not None else {}),
                },
            )
        return state

    # ----- federated evaluation -----
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One evaluate message per connected node: every node tests the labelled set on
        its held-out data."""
        config[SERVER_ROUND_KEY] = server_round
        content = RecordDict({LABELLED_SET_KEY: arrays, self.configrecord_key: config})
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
        return evaluation_problem(metrics.get(ACCURACIES_KEY), metrics.get(NUM_EXAMPLES_KEY), self.settings.num_eval)

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

    def evaluate_federated(self, grid: Grid, server_round: int, labelled: LabelledImages) -> FederatedEvalResult:
        """Send the labelled set to every connected node, wait up to `eval-timeout`,
        combine the answers."""
        started = time.monotonic()
        messages = list(
            self.configure_evaluate(server_round, labelled_record(labelled), settings_config(self.settings), grid)
        )
        replies = exchange(grid, messages, self.settings.eval_timeout) if messages else []
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
        """The recorder's hook: evaluate the labelled set on the nodes' held-out data."""
        return lambda server_round, labelled: self.evaluate_federated(grid, server_round, labelled)
