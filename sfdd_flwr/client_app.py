"""SFDD ClientApp: Flower messages in, `local_distill_update` on private data, S_i out."""

from __future__ import annotations

from logging import INFO

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from .config import Settings
from .data import ClassPools, PartitionRequest, load_partition
from .distill import local_distill_update
from .recorder import resolve_device
from .seeding import derive_seed, make_generator
from .strategy import CONFIG_KEY, IMAGES_KEY, METRICS_KEY, NUM_EXAMPLES_KEY, SYNTHETIC_SET_KEY, images_record

VELOCITY_STATE_KEY = "synthetic-velocity"
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


@app.train()
def train(message: Message, context: Context) -> Message:
    config = message.content[CONFIG_KEY]
    settings = Settings.from_mapping(dict(config), ignore=("server-round",))
    server_round = int(config["server-round"])
    request = partition_request(settings, dict(context.node_config))
    client = request.partition_id
    device = resolve_device(settings.device)
    local_data = load_partition(request)
    pools = ClassPools(local_data.to(device), settings.dataset_spec.num_classes)
    if ANNOUNCED_STATE_KEY not in context.state.config_records:
        context.state[ANNOUNCED_STATE_KEY] = ConfigRecord({"round": server_round})
        log(
            INFO,
            "client %d: %d local examples (per class %s), device %s, %d torch threads",
            client, len(local_data), pools.class_counts(), device, torch.get_num_threads(),
        )

    velocity = None
    if settings.persist_momentum and VELOCITY_STATE_KEY in context.state.array_records:
        velocity = torch.from_numpy(context.state[VELOCITY_STATE_KEY][IMAGES_KEY].numpy().copy())

    images = torch.from_numpy(message.content[SYNTHETIC_SET_KEY][IMAGES_KEY].numpy().copy())
    update = local_distill_update(
        images,
        pools,
        settings.network_spec,
        settings.distill_params,
        network_seed=derive_seed(settings.seed, "client", server_round, client, "network"),
        generator=make_generator(settings.seed, "client", server_round, client, "real-batches"),
        device=device,
        velocity=velocity,
        progress=lambda text: log(INFO, "client %d, round %d: %s", client, server_round, text),
        progress_seconds=settings.progress_seconds,
    )
    if settings.persist_momentum:
        context.state[VELOCITY_STATE_KEY] = images_record(update.velocity)

    metrics = MetricRecord(
        {
            NUM_EXAMPLES_KEY: len(local_data),
            "matching-loss": update.matching_loss,
            "local-update-seconds": update.seconds,
            "matched-classes": update.matched_classes,
            "torch-threads": torch.get_num_threads(),
        }
    )
    content = RecordDict({SYNTHETIC_SET_KEY: images_record(update.images), METRICS_KEY: metrics})
    return Message(content=content, reply_to=message)

