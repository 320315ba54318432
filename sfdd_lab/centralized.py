"""The centralized baseline: the same method code on the whole training set, no Flower.

    python -m sfdd_lab.centralized --run-config "preset='compare' data-dir='/data'"

Each round is one local update of the run's method on all training data; settings,
seeds, evaluation and outputs are those of a federated run, so the two are compared on
identical code (the paper's Table 2). With `central-networks=K` a round runs K
independent updates from the same state (each with its own seeds: for gradient matching
its own fresh network and real batches, all on the whole training set) and averages
them: a federated round with K clients, minus the data split. `--max-train-seconds`
stops after the iteration that crosses that much training time and evaluates that set,
as `sfdd_lab.full_protocol` does for the federated rounds (equal time budgets).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from sfdd_flwr.data.datasets import DataUnavailableError
from sfdd_flwr.data.node_data import NodeDataError, whole_split
from sfdd_flwr.device import resolve_device
from sfdd_flwr.methods import LocalJob, State, load_method
from sfdd_flwr.methods.base import reduce_metrics
from sfdd_flwr.runs.recorder import RunRecorder, server_evaluator
from sfdd_flwr.settings import ConfigError, Settings, settings_from_run_configs
from sfdd_flwr.settings.schema import SettingsGroup, at_least, setting


@dataclass(frozen=True)
class CentralizedSettings(SettingsGroup):
    """The centralized baseline's own setting (not an app setting: `flwr run` never uses it)."""

    title = "Centralized baseline (`python -m sfdd_lab.centralized` only)"

    central_networks: int = setting(
        1, at_least(1),
        "independent updates (own seeds, e.g. a fresh network and real batches) averaged per round; "
        "K = a federated round with K clients minus the data split",
    )


def average_states(states: list[State]) -> State:
    """The plain mean: every replica sees the whole training set, so equal weights."""
    if len(states) == 1:
        return states[0]
    return {key: torch.stack([state[key] for state in states]).mean(dim=0) for key in states[0]}


def run_centralized(settings: Settings, report=print, max_train_seconds: float | None = None) -> dict[str, Any]:
    """Run the method on the full training set for `num_server_rounds` rounds, or until
    the iteration that crosses `max_train_seconds` of training (a resumed run counts the
    training its earlier part recorded)."""
    device = resolve_device(settings.device)
    method = load_method(settings.method)(settings)
    report(f"loading {settings.dataset} from {settings.data_path}")
    train_set = whole_split(settings.task, train=True).to(device)
    test_set = whole_split(settings.task, train=False) if settings.num_eval else None
    recorder = RunRecorder(
        settings, method, "centralized", server_evaluator(settings, test_set, device, report), report, device=device
    )
    state = recorder.start()
    replicas = settings.central_networks
    method_states: list[dict[str, torch.Tensor]] = [{} for _ in range(replicas)]
    train_seconds = sum(float(record.get("round_seconds", 0.0)) for record in recorder.run_dir.read_metrics())
    for iteration in range(recorder.first_round, settings.num_server_rounds + 1):
        started = time.monotonic()
        results = []
        for replica in range(replicas):
            # Replica 0 keeps the single-network seeds, so central-networks=1 is the plain method.
            scope = ("central", iteration) if replica == 0 else ("central", iteration, "replica", replica)
            job = LocalJob(
                settings=settings,
                server_round=iteration,
                client_id="central",
                state=state,
                data=train_set,
                device=device,
                method_state=method_states[replica],
                progress=lambda text, it=iteration: report(f"iteration {it}: {text}"),
                seed_scope=scope,
            )
            results.append(method.local_update(job))
        state = average_states([result.state for result in results])
        method.finish_round(iteration, state)
        method_states = [result.method_state for result in results]
        seconds = round(time.monotonic() - started, 3)
        train_seconds += seconds
        stopping = (
            max_train_seconds is not None and train_seconds >= max_train_seconds
            and iteration < settings.num_server_rounds
        )
        if stopping:
            report(f"stopping after iteration {iteration}: --max-train-seconds={max_train_seconds:g} reached")
        recorder.end_round(
            iteration,
            state,
            {
                **reduce_metrics(method.round_metrics, [result.metrics for result in results], [1.0] * replicas),
                "local_update_seconds_sum": seconds,
                "round_seconds": seconds,
            },
            final=stopping,
            seconds_left=None if max_train_seconds is None else max_train_seconds - train_seconds,
        )
        if stopping:
            break
    return recorder.finish({"train_seconds": round(train_seconds, 1), "planned_rounds": settings.num_server_rounds})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sfdd_lab.centralized",
        description="Centralized baseline on the same method code and settings as the app.",
    )
    parser.add_argument(
        "--run-config",
        "-c",
        action="append",
        default=[],
        help="settings as in `flwr run --run-config`, e.g. \"preset='quickstart' ipc=10\"",
    )
    parser.add_argument("--max-train-seconds", type=float, default=None,
                        help="stop after the iteration that crosses this training time, then evaluate")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_run_configs(args.run_config, extra_groups=(CentralizedSettings,))
        run_centralized(settings, report=lambda text: print(text, flush=True), max_train_seconds=args.max_train_seconds)
    except (ConfigError, DataUnavailableError, NodeDataError) as error:
        print(f"sfdd-flwr: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
