"""SFDD ClientApp: Flower messages in, the node's behaviour on its private data, S_i out."""

from __future__ import annotations

from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from .behaviours import ClientJob, behaviour_for_node, load_behaviour
from .config import Settings
from .data import PartitionRequest, load_partition
from .recorder import resolve_device
from .seeding import derive_seed
from .strategy import (
    CONFIG_KEY,
    IMAGES_KEY,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    RUN_DIR_KEY,
    SERVER_ROUND_KEY,
    SYNTHETIC_SET_KEY,
    images_record,
)

VELOCITY_STATE_KEY = "synthetic-velocity"
BEHAVIOUR_STATE_KEY = "behaviour-state"
ANNOUNCED_STATE_KEY = "announced"

app = ClientApp()


def partition_request(settings: Settings, node_config: dict) -> PartitionRequest:
    """Which data this node holds: `partition-id`/`num-partitions` from the node config
    (set by the simulation engine, or by `--node-config` on a SuperNode); `data-dir` in
    the node config overrides the run's."""
    missing = [key for key in ("partition-id", "num-partitions") if key not in node_config]
    if missing:
        raise ValueError(
            f"node config lacks {', '.join(missing)}: start the SuperNode with "
            "--node-config \"partition-id=0 num-partitions=5\""
        )
    return PartitionRequest(
        dataset=settings.dataset,
        data_dir=str(node_config.get("data-dir", settings.data_dir)),
        partition_id=int(node_config["partition-id"]),
        num_partitions=int(node_config["num-partitions"]),
        partitioning=settings.partitioning,
        dirichlet_beta=settings.dirichlet_beta,
        seed=settings.seed,
    )


def private_seed(settings: Settings, node_config: dict, client: int) -> int:
    """The seed of the client's private draws (LDPO-RLD targets, LocalDP noise).

    A node should set its own secret `private-seed` in its node config; otherwise it is
    derived from the run seed, which keeps simulations reproducible but lets a server that
    knows the run seed recompute the draws.
    """
    if "private-seed" in node_config:
        return int(node_config["private-seed"])
    return derive_seed(settings.seed, "private", client)


@app.train()
def train(message: Message, context: Context) -> Message:
    config = message.content[CONFIG_KEY]
    settings = Settings.from_mapping(dict(config), ignore=(SERVER_ROUND_KEY, RUN_DIR_KEY))
    server_round = int(config[SERVER_ROUND_KEY])
    node_config = dict(context.node_config)
    request = partition_request(settings, node_config)
    client = request.partition_id
    device = resolve_device(settings.device)
    local_data = load_partition(request).to(device)
    behaviour_name = behaviour_for_node(settings, node_config)
    behaviour = load_behaviour(behaviour_name)()
    if ANNOUNCED_STATE_KEY not in context.state.config_records:
        context.state[ANNOUNCED_STATE_KEY] = ConfigRecord({"round": server_round})
        counts = torch.bincount(local_data.labels.cpu(), minlength=settings.dataset_spec.num_classes)
        log(
            INFO,
            "client %d: %d local examples (per class %s), behaviour %s, device %s, %d torch threads",
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
        progress=lambda text: log(INFO, "client %d, round %d: %s", client, server_round, text),
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
            **result.metrics,
        }
    )
    content = RecordDict({SYNTHETIC_SET_KEY: images_record(result.update.images), METRICS_KEY: metrics})
    return Message(content=content, reply_to=message)
