"""Federated rounds without Flower: for GPU machines that lack flwr/Ray.

    python -m sfdd_lab.full_protocol --run-config "preset='paper-ipc1' data-dir='/data'" \
        [--max-train-seconds 300] [--parallel-clients]

Each round runs every client's local update with the ClientApp's code and seeds (run
seed, round, partition id) on its partition, and combines the returned states with the
method's rule (FedAvg by partition size, as the Strategy). Clients behave as the
ClientApp makes them: `malicious-clients` / `malicious-fraction` pick the
`malicious-behaviour` (e.g. Doorping), whose state (the trigger) persists across rounds
and is saved for the ASR. Only the transport differs from `flwr run`, so figures are
those of the app's maths; `tests/test_full_protocol.py` checks that this loop and the
ClientApp/Strategy pair return the same state. Outputs (checkpoint, sets, grids,
metrics.jsonl, summary.json) go where an app run's would. `aggregator` other than
fedavg (median, trimmed-mean, krum, multi-krum) applies Flower's robust strategy as the
Strategy does, so it needs flwr installed.

`--max-train-seconds` stops after the round that crosses the budget and evaluates that
S with the run's protocol, so a lease too short for 1000 rounds still yields an honest
accuracy at a known round count; the summary says how many rounds ran.
`--exclude-malicious-updates` is a control experiment: the malicious clients still run
every round (they receive S, poison, optimise their trigger), but only the honest
clients' S_i are aggregated, so any backdoor left is not carried by the attackers'
updates, and no aggregation rule over the S_i could remove it.
`--parallel-clients` runs each client in its own process (one GPU shared), with the
same results as one after the other at the same thread count (bit-identical on CPU;
nondeterministic GPU kernels can make runs differ slightly either way). On a CPU give
each process its share of the cores (e.g. `OMP_NUM_THREADS=1` for 3 clients on 2 cores):
with more threads than cores every client runs several times slower.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from sfdd_flwr.attacks import round_observers
from sfdd_flwr.data.node_data import whole_split
from sfdd_flwr.defences import defence_for
from sfdd_flwr.device import resolve_device
from sfdd_flwr.methods import load_method
from sfdd_flwr.runs.recorder import RunRecorder, server_evaluator
from sfdd_flwr.settings import ConfigError, Settings, settings_from_run_configs

from .local_federation import ClientPool, federated_round


def malicious_clients(behaviours: list[str]) -> frozenset[int]:
    """The clients whose replies the control leaves out: every one that is not honest."""
    left_out = frozenset(client for client, name in enumerate(behaviours) if name != "honest")
    if len(left_out) == len(behaviours):
        raise ConfigError("--exclude-malicious-updates needs at least one honest client; every client is malicious")
    return left_out


def run(settings: Settings, max_train_seconds: float | None, report=print, parallel_clients: bool = False,
        exclude_malicious_updates: bool = False) -> dict[str, Any]:
    method = load_method(settings.method)(settings)
    device = resolve_device(settings.device)
    report(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    test_set = whole_split(settings.task, train=False) if settings.num_eval else None
    evaluator = server_evaluator(settings, test_set, device, report)
    recorder = RunRecorder(
        settings, method, "in-process", evaluator, report, observers=round_observers(settings), device=device
    )
    state = recorder.start()
    pool = ClientPool(settings, device, recorder.run_dir.path, parallel_clients)
    report("clients: " + ", ".join(f"{c} {name}" for c, name in enumerate(pool.behaviours))
           + (" (one process each)" if parallel_clients else "") + f"; aggregator {settings.aggregator}"
           + (", over the honest clients' updates only" if exclude_malicious_updates else ""))
    reductions = method.round_metrics | defence_for(settings).round_metrics
    train_seconds = 0.0
    stopping = False
    try:
        left_out = malicious_clients(pool.behaviours) if exclude_malicious_updates else frozenset()
        for server_round in range(recorder.first_round, settings.num_server_rounds + 1):
            state, metrics = federated_round(pool, server_round, state, method, reductions, left_out)
            train_seconds += metrics["round_seconds"]
            out_of_time = max_train_seconds is not None and train_seconds >= max_train_seconds
            stopping = out_of_time and server_round < settings.num_server_rounds
            if stopping:
                report(f"stopping after round {server_round}: --max-train-seconds={max_train_seconds:g} reached")
            recorder.end_round(server_round, state, metrics, final=stopping)
            if stopping:
                break
    finally:
        pool.close()
    extra: dict[str, Any] = {"train_seconds": round(train_seconds, 1), "device": str(device),
                             "planned_rounds": settings.num_server_rounds, "behaviours": pool.behaviours,
                             "malicious_updates_excluded": exclude_malicious_updates}
    if stopping and recorder.last_evaluation:
        extra["stopped_early_accuracies"] = recorder.last_evaluation["accuracies"]
    return recorder.finish(extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfdd_lab.full_protocol", description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", "-c", action="append", default=[],
                        help="settings as in `flwr run --run-config`")
    parser.add_argument("--max-train-seconds", type=float, default=None,
                        help="stop after the round that crosses this training time, then evaluate")
    parser.add_argument("--parallel-clients", action="store_true",
                        help="run each client in its own process (same maths, faster on a GPU)")
    parser.add_argument("--exclude-malicious-updates", action="store_true",
                        help="control: malicious clients run, but only honest clients' S_i are aggregated")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_run_configs(args.run_config)
        summary = run(settings, args.max_train_seconds, lambda text: print(text, flush=True), args.parallel_clients,
                      args.exclude_malicious_updates)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
