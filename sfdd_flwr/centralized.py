"""Centralized DC baseline: the same core on the whole training set, no Flower.

    python -m sfdd_flwr.centralized --run-config "preset='compare' data-dir='/data'"

Each round is one DC iteration on all training data; settings, seeds, evaluation and
outputs are those of an SFDD run, so the two are compared on identical code (Table 2).
With `central-networks=K` an iteration runs K independent updates from the same
synthetic set (each with its own fresh network and real batches, all on the whole
training set) and averages them: an SFDD round with K clients, minus the data split.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tomllib
from typing import Any

import torch

from .config import ConfigError, Settings, resolve_settings
from .data import ClassPools, DataUnavailableError
from .node_data import NodeDataError, whole_split
from .distill import local_distill_update
from .recorder import RunRecorder, resolve_device, server_evaluator
from .seeding import derive_seed, make_generator


def parse_run_config(text: str) -> dict[str, Any]:
    """Parse `flwr run --run-config` style 'k1=v1 k2="v 2"' pairs (TOML values)."""
    values: dict[str, Any] = {}
    for pair in shlex.split(text, posix=False):
        key, separator, raw = pair.partition("=")
        if not separator or not key:
            raise ConfigError(f"run-config entry {pair!r} is not allowed: must be key=value")
        try:
            values[key.strip()] = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(
                f"{key.strip()}={raw} is not allowed: must be a TOML value (quote strings: 'text')"
            ) from None
    return values


def settings_from_run_configs(texts: list[str]) -> Settings:
    """Settings from `--run-config` texts (later texts win), resolved as `flwr run` does."""
    overrides: dict[str, Any] = {}
    for text in texts:
        overrides.update(parse_run_config(text))
    return resolve_settings(Settings().to_record() | overrides, overrides)


def average_images(images: list[torch.Tensor]) -> torch.Tensor:
    """The plain mean: every replica sees the whole training set, so equal weights."""
    return images[0] if len(images) == 1 else torch.stack(images).mean(dim=0)


def run_centralized(settings: Settings, report=print) -> dict[str, Any]:
    """Distill on the full training set for `num_server_rounds` iterations."""
    device = resolve_device(settings.device)
    report(f"loading {settings.dataset} from {settings.data_path}")
    train_set = whole_split(settings.task, train=True)
    test_set = whole_split(settings.task, train=False) if settings.num_eval else None
    pools = ClassPools(train_set.to(device), settings.dataset_spec.num_classes)
    recorder = RunRecorder(
        settings, "centralized", server_evaluator(settings, test_set, device, report), report
    )
    images = recorder.start()
    replicas = settings.central_networks
    velocities: list[torch.Tensor | None] = [None] * replicas
    for iteration in range(recorder.first_round, settings.num_server_rounds + 1):
        updates = []
        for replica in range(replicas):
            # Replica 0 keeps the single-network seeds, so central-networks=1 is plain DC.
            tag = ("central", iteration) if replica == 0 else ("central", iteration, "replica", replica)
            updates.append(
                local_distill_update(
                    images,
                    pools,
                    settings.network_spec,
                    settings.distill_params,
                    network_seed=derive_seed(settings.seed, *tag, "network"),
                    generator=make_generator(settings.seed, *tag, "real-batches"),
                    device=device,
                    velocity=velocities[replica],
                    progress=lambda text, it=iteration: report(f"iteration {it}: {text}"),
                    progress_seconds=settings.progress_seconds,
                )
            )
        images = average_images([update.images for update in updates])
        velocities = [update.velocity if settings.persist_momentum else None for update in updates]
        seconds = sum(update.seconds for update in updates)
        recorder.end_round(
            iteration,
            images,
            {
                "matching_loss": sum(update.matching_loss for update in updates) / replicas,
                "local_update_seconds_sum": round(seconds, 3),
                "round_seconds": round(seconds, 3),
            },
        )
    return recorder.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sfdd_flwr.centralized",
        description="Centralized DC baseline on the same core and settings as the SFDD app.",
    )
    parser.add_argument(
        "--run-config",
        "-c",
        action="append",
        default=[],
        help="settings as in `flwr run --run-config`, e.g. \"preset='quickstart' ipc=10\"",
    )
    args = parser.parse_args(argv)
    try:
        settings = settings_from_run_configs(args.run_config)
        run_centralized(settings, report=lambda text: print(text, flush=True))
    except (ConfigError, DataUnavailableError, NodeDataError) as error:
        print(f"sfdd-flwr: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
