"""ClientApp: a train message in, the node's behaviour running the run's method on its
private data, the returned state out; an evaluate message in, the labelled set tested on
the node's held-out split."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from logging import ERROR, INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from .behaviours.registry import behaviour_for_node, load_behaviour, private_seed
from .data.datasets import DataUnavailableError, PartitionRequest
from .data.node_data import NodeDataError, NodeDataRequest, load_node_split, node_label, request_for
from .device import resolve_device
from .evaluation.protocol import evaluate_synthetic_set
from .methods import LocalJob, load_method
from .protocol import (
    ACCURACIES_KEY,
    CONFIG_KEY,
    LABELLED_SET_KEY,
    METRICS_KEY,
    NODE_DATA_ERROR_CODE,
    NODE_KEY,
    NUM_EXAMPLES_KEY,
    RUN_DIR_KEY,
    SERVER_ROUND_KEY,
    STATE_KEY,
    record_labelled,
    record_state,
    settings_from_config,
    state_record,
)
from .settings import ConfigError, Settings

METHOD_STATE_KEY = "method-state"
BEHAVIOUR_STATE_KEY = "behaviour-state"
ANNOUNCED_STATE_KEY = "announced"

app = ClientApp()


def node_data_request(settings: Settings, context: Context) -> NodeDataRequest:
    """Where this node's data is: its node config checked against the run's task."""
    return request_for(settings.task, dict(context.node_config), context.node_id)


def partition_metric(request: NodeDataRequest) -> dict[str, int]:
    """{"partition-id": id} on a partitioned dataset (none for a node's own image folder), so
    the server's per-client metrics say which partition an update came from: experiments
    use it to tell whether a robust aggregator kept a malicious partition's state."""
    if isinstance(request.source, PartitionRequest):
        return {"partition-id": request.source.partition_id}
    return {}


def kept_tensors(context: Context, key: str) -> dict[str, torch.Tensor]:
    """What an earlier round of this run left in the node's state under `key`."""
    if key not in context.state.array_records:
        return {}
    return context.state[key].to_torch_state_dict()


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
    settings = settings_from_config(config)
    server_round = int(config[SERVER_ROUND_KEY])
    node_config = dict(context.node_config)
    request = node_data_request(settings, context)
    client = request.client
    device = resolve_device(settings.device)
    local_data = load_node_split(request, train=True).to(device)
    behaviour_name = behaviour_for_node(settings, node_config)
    try:
        behaviour = load_behaviour(behaviour_name)()
        method = load_method(settings.method)(settings)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if ANNOUNCED_STATE_KEY not in context.state.config_records:
        context.state[ANNOUNCED_STATE_KEY] = ConfigRecord({"round": server_round})
        counts = torch.bincount(local_data.labels.cpu(), minlength=settings.dataset_spec.num_classes)
        log(
            INFO,
            "client %s: %d local examples (per class %s), method %s, behaviour %s, device %s, %d torch threads",
            client, len(local_data), counts.tolist(), method.name, behaviour_name, device, torch.get_num_threads(),
        )
    job = LocalJob(
        settings=settings,
        server_round=server_round,
        client_id=client,
        state=record_state(message.content[STATE_KEY]),
        data=local_data,
        device=device,
        method_state=kept_tensors(context, METHOD_STATE_KEY),
        behaviour_state=kept_tensors(context, BEHAVIOUR_STATE_KEY),
        private_seed=private_seed(settings, node_config, client),
        run_dir=Path(str(config[RUN_DIR_KEY])) if RUN_DIR_KEY in config else None,
        node_config=node_config,
        progress=lambda text: log(INFO, "client %s, round %d: %s", client, server_round, text),
    )
    started = time.monotonic()
    result = behaviour.local_update(job, method)
    seconds = time.monotonic() - started
    for key, tensors in ((METHOD_STATE_KEY, result.method_state), (BEHAVIOUR_STATE_KEY, job.behaviour_state)):
        if tensors:
            context.state[key] = ArrayRecord({name: value.cpu() for name, value in tensors.items()})
    metrics = MetricRecord(
        {
            NUM_EXAMPLES_KEY: len(local_data),
            "local-update-seconds": seconds,
            **partition_metric(request),
            **result.metrics,
        }
    )
    content = RecordDict({STATE_KEY: state_record(result.state), METRICS_KEY: metrics})
    return Message(content=content, reply_to=message)


@app.evaluate()
@replies_with_node_errors
def evaluate(message: Message, context: Context) -> Message:
    """Federated evaluation: the evaluation protocol on the labelled set the server sent, tested
    on this node's held-out split.

    Model k is seeded from (seed, round, k) as on the server, so every node trains the
    same networks and the size-weighted mean of the nodes' accuracies is model k's
    accuracy on the union of their test splits.
    """
    config = message.content[CONFIG_KEY]
    settings = settings_from_config(config)
    server_round = int(config[SERVER_ROUND_KEY])
    request = node_data_request(settings, context)
    device = resolve_device(settings.device)
    test_set = load_node_split(request, train=False)
    labelled = record_labelled(message.content[LABELLED_SET_KEY])
    log(
        INFO,
        "%s, round %d: evaluating the synthetic set with %d fresh networks on %d held-out images",
        request.name, server_round, settings.eval_params.num_eval, len(test_set),
    )
    result = evaluate_synthetic_set(
        labelled.images,
        labelled.labels,
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
            ACCURACIES_KEY: [float(a) for a in result.accuracies],
            "eval-seconds": result.seconds,
        }
    )
    content = RecordDict({METRICS_KEY: metrics, NODE_KEY: ConfigRecord({"name": request.name})})
    return Message(content=content, reply_to=message)
