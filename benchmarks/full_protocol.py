"""SFDD rounds in one process, without Flower: for GPU machines that lack flwr/Ray.

    python benchmarks/full_protocol.py --run-config "preset='paper-ipc1' data-dir='/data'" \
        [--max-train-seconds 300]

Each round runs every client's honest local update (the ClientApp's behaviour code,
with the same seeds: run seed, round, partition id) on its IID partition, one client
after the other, and FedAvgs the returned images weighted by partition size (the
Strategy's `weighted_mean`). Only the transport differs from `flwr run`, so figures are
those of the app's maths; `tests/test_full_protocol.py` checks that this loop and the
ClientApp/Strategy pair return the same S. Outputs (S, grids, metrics.jsonl,
summary.json) go where an app run's would.

`--max-train-seconds` stops after the round that crosses the budget and evaluates that
S with the run's protocol, so a lease too short for 1000 rounds still yields an honest
accuracy at a known round count; the summary says how many rounds ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfdd_flwr.aggregation import weighted_mean  # noqa: E402
from sfdd_flwr.behaviours import ClientBehaviour, ClientJob, private_seed  # noqa: E402
from sfdd_flwr.centralized import settings_from_run_configs  # noqa: E402
from sfdd_flwr.config import Settings  # noqa: E402
from sfdd_flwr.node_data import load_node_split, request_for, whole_split  # noqa: E402
from sfdd_flwr.recorder import RunRecorder, resolve_device, server_evaluator  # noqa: E402


def client_data(settings: Settings, device: torch.device) -> list:
    """Each simulated node's training split, as the ClientApp loads it."""
    return [
        load_node_split(
            request_for(settings.task, {"partition-id": client, "num-partitions": settings.min_clients}),
            train=True,
        ).to(device)
        for client in range(settings.min_clients)
    ]


def federated_round(
    settings: Settings, server_round: int, images: torch.Tensor, data: list, device: torch.device,
    velocities: dict[int, torch.Tensor | None],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One SFDD round: every client's honest update, then size-weighted FedAvg."""
    started = time.monotonic()
    results = []
    for client, local in enumerate(data):
        job = ClientJob(
            settings=settings,
            server_round=server_round,
            client_id=client,
            synthetic_images=images,
            data=local,
            device=device,
            velocity=velocities.get(client),
            private_seed=private_seed(settings, {}, client),
        )
        result = ClientBehaviour().local_update(job)
        if settings.persist_momentum:
            velocities[client] = result.update.velocity
        results.append(result.update)
    weights = [float(len(local)) for local in data]
    aggregated = weighted_mean([u.images.numpy() for u in results], weights)
    seconds = [u.seconds for u in results]
    metrics = {
        "matching_loss": sum(u.matching_loss * w for u, w in zip(results, weights)) / sum(weights),
        "local_update_seconds_sum": round(sum(seconds), 3),
        "local_update_seconds_max": round(max(seconds), 3),
        "round_seconds": round(time.monotonic() - started, 3),
    }
    return torch.from_numpy(aggregated), metrics


def run(settings: Settings, max_train_seconds: float | None, report=print) -> dict[str, Any]:
    device = resolve_device(settings.device)
    report(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    data = client_data(settings, device)
    test_set = whole_split(settings.task, train=False) if settings.num_eval else None
    evaluator = server_evaluator(settings, test_set, device, report)
    recorder = RunRecorder(settings, "sfdd-in-process", evaluator, report)
    images = recorder.start()
    velocities: dict[int, torch.Tensor | None] = {}
    train_seconds = 0.0
    stopping = False
    for server_round in range(recorder.first_round, settings.num_server_rounds + 1):
        images, metrics = federated_round(settings, server_round, images, data, device, velocities)
        train_seconds += metrics["round_seconds"]
        out_of_time = max_train_seconds is not None and train_seconds >= max_train_seconds
        stopping = out_of_time and server_round < settings.num_server_rounds
        if stopping:
            report(f"stopping after round {server_round}: --max-train-seconds={max_train_seconds:g} reached")
        recorder.end_round(server_round, images, metrics, final=stopping)
        if stopping:
            break
    extra: dict[str, Any] = {"train_seconds": round(train_seconds, 1), "device": str(device),
                             "planned_rounds": settings.num_server_rounds}
    if stopping and recorder.last_evaluation:
        extra["stopped_early_accuracies"] = recorder.last_evaluation["accuracies"]
    return recorder.finish(extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", "-c", action="append", default=[],
                        help="settings as in `flwr run --run-config`")
    parser.add_argument("--max-train-seconds", type=float, default=None,
                        help="stop after the round that crosses this training time, then evaluate")
    args = parser.parse_args(argv)
    settings = settings_from_run_configs(args.run_config)
    summary = run(settings, args.max_train_seconds, report=lambda text: print(text, flush=True))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
