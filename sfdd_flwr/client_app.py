"""SFDD ClientApp: Flower messages in, the node's behaviour on its private data, S_i out;
federated evaluation of S on the node's held-out split."""

from __future__ import annotations

import functools
from collections.abc import Callable
from logging import ERROR, INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from .behaviours import ClientJob, behaviour_for_node, load_behaviour, private_seed
from .config import ConfigError, Settings
from .data import DataUnavailableError, PartitionRequest
from .distill import synthetic_labels
from .evaluate import evaluate_synthetic_set
from .node_data import NodeDataError, NodeDataRequest, load_node_split, node_label, request_for
from .recorder import resolve_device
from .strategy import (
    CONFIG_KEY,
    IMAGES_KEY,
    METRICS_KEY,
    NODE_DATA_ERROR_CODE,
    NODE_KEY,
    NUM_EXAMPLES_KEY,
    RUN_DIR_KEY,
    SERVER_ROUND_KEY,
    SYNTHETIC_SET_KEY,
    images_record,
)

VELOCITY_STATE_KEY = "synthetic-velocity"
BEHAVIOUR_STATE_KEY = "behaviour-state"
ANNOUNCED_STATE_KEY = "announced"
# Settings that name things on the server's machine only: not checked on a node.
SERVER_ONLY_KEYS = (SERVER_ROUND_KEY, RUN_DIR_KEY, "resume-from")

app = ClientApp()


def settings_from(config: ConfigRecord) -> Settings:
    """The run's settings as the server sent them."""
    return Settings.from_mapping(dict(config), ignore=SERVER_ONLY_KEYS)


def node_data_request(settings: Settings, context: Context) -> NodeDataRequest:
    """Where this node's data is: its node config checked against the run's task."""
    return request_for(settings.task, dict(context.node_config), context.node_id)


def partition_metric(request: NodeDataRequest) -> dict[str, int]:
    """{"partition-id": id} on a partitioned dataset (none for a node's own image folder), so
    the server's per-client metrics say which partition an update came from: experiments
    use it to tell whether a robust aggregator kept a malicious partition's S_i."""
    if isinstance(request.source, PartitionRequest):
        return {"partition-id": request.source.partition_id}
    return {}


def replies_with_node_errors(
    handler: Callable[[Message, Context], Message],
) -> Callable[[Message, Context], Message]:
    """Answer with an explicit error reply when this node's data or settings do not fit.

    The reason names the node and says what is wrong in one line, so the server logs it
    and goes on with the other nodes; other exceptions are left to Flower.
    """

    @functools.wraps(handler)
    def wrapped(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except (NodeDataError, DataUnavailableError, ConfigError) as error:
            reason = f"{node_label(context.node_config, context.node_id)}: {error}"
            log(ERROR, "%s", reason)
            return Message(Error(code=NODE_DATA_ERROR_CODE, reason=reason), reply_to=message)

    return wrapped


@app.train()
@replies_with_node_errors
def train(message: Message, context: Context) -> Message:
    config = message.content[CONFIG_KEY]
    settings = settings_from(config)
    server_round = int(config[SERVER_ROUND_KEY])
    node_config = dict(context.node_config)
    request = node_data_request(settings, context)
    client = request.client
    device = resolve_device(settings.device)
    local_data = load_node_split(request, train=True).to(device)
    behaviour_name = behaviour_for_node(settings, node_config)
    try:
        behaviour = load_behaviour(behaviour_name)()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if ANNOUNCED_STATE_KEY not in context.state.config_records:
        context.state[ANNOUNCED_STATE_KEY] = ConfigRecord({"round": server_round})
        counts = torch.bincount(local_data.labels.cpu(), minlength=settings.dataset_spec.num_classes)
        log(
            INFO,
            "client %s: %d local examples (per class %s), behaviour %s, device %s, %d torch threads",
            client, len(local_data), counts.tolist(), behaviour_name, device, torch.get_num_threads(),
        )

    velocity = None
    if settings.persist_momentum and VELOCITY_STATE_KEY in context.state.array_records:
        velocity = torch.from_numpy(context.state[VELOCITY_STATE_KEY][IMAGES_KEY].numpy().copy())
    state = {}
    if BEHAVIOUR_STATE_KEY in context.state.array_records:
        state = context.state[BEHAVIOUR_STATE_KEY].to_torch_state_dict()

    job = ClientJob(
        settings=settings,
        server_round=server_round,
        client_id=client,
        synthetic_images=torch.from_numpy(message.content[SYNTHETIC_SET_KEY][IMAGES_KEY].numpy().copy()),
        data=local_data,
        device=device,
        velocity=velocity,
        state=state,
        private_seed=private_seed(settings, node_config, client),
        run_dir=Path(str(config[RUN_DIR_KEY])) if RUN_DIR_KEY in config else None,
        node_config=node_config,
        progress=lambda text: log(INFO, "client %s, round %d: %s", client, server_round, text),
    )
    result = behaviour.local_update(job)
    if settings.persist_momentum:
        context.state[VELOCITY_STATE_KEY] = images_record(result.update.velocity)
    if job.state:
        context.state[BEHAVIOUR_STATE_KEY] = ArrayRecord({k: v.cpu() for k, v in job.state.items()})

    metrics = MetricRecord(
        {
            NUM_EXAMPLES_KEY: len(local_data),
            "matching-loss": result.update.matching_loss,
            "local-update-seconds": result.update.seconds,
            "matched-classes": result.update.matched_classes,
            **partition_metric(request),
            **result.metrics,
        }
    )
    content = RecordDict({SYNTHETIC_SET_KEY: images_record(result.update.images), METRICS_KEY: metrics})
    return Message(content=content, reply_to=message)


@app.evaluate()
@replies_with_node_errors
def evaluate(message: Message, context: Context) -> Message:
    """Federated evaluation: the DC protocol on S, tested on this node's held-out split.

    Model k is seeded from (seed, round, k) as on the server, so every node trains the
    same networks and the size-weighted mean of the nodes' accuracies is model k's
    accuracy on the union of their test splits.
    """
    config = message.content[CONFIG_KEY]
    settings = settings_from(config)
    server_round = int(config[SERVER_ROUND_KEY])
    request = node_data_request(settings, context)
    device = resolve_device(settings.device)
    test_set = load_node_split(request, train=False)
    images = torch.from_numpy(message.content[SYNTHETIC_SET_KEY][IMAGES_KEY].numpy().copy())
    log(
        INFO,
        "%s, round %d: evaluating S with %d fresh networks on %d held-out images",
        request.name, server_round, settings.eval_params.num_models, len(test_set),
    )
    result = evaluate_synthetic_set(
        images,
        synthetic_labels(settings.dataset_spec.num_classes, settings.ipc),
        test_set.to(device),
        settings.network_spec,
        settings.eval_params,
        settings.seed,
        server_round,
        device,
        progress=lambda text: log(INFO, "%s, round %d: %s", request.name, server_round, text),
        progress_seconds=settings.progress_seconds,
    )
    metrics = MetricRecord(
        {
            NUM_EXAMPLES_KEY: len(test_set),
            "accuracies": [float(a) for a in result.accuracies],
            "eval-seconds": result.seconds,
        }
    )
    content = RecordDict({METRICS_KEY: metrics, NODE_KEY: ConfigRecord({"name": request.name})})
    return Message(content=content, reply_to=message)
