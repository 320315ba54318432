"""ServerApp: the run's settings in; the method, the strategy and the recorder wired up."""

from __future__ import annotations

from collections.abc import Callable
from logging import ERROR, INFO

import torch
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from .attacks import round_observers
from .data.datasets import DataUnavailableError, LabelledImages
from .data.node_data import NodeDataError, whole_split
from .defences import defence_for
from .device import resolve_device
from .methods import load_method
from .runs.recorder import RunRecorder, server_evaluator
from .settings import ConfigError, Settings, resolve_settings
from .strategy import SynthesisStrategy

app = ServerApp()


def explicit_overrides(grid: Grid) -> dict:
    """The `--run-config` values of this run (they win over the preset)."""
    try:
        return dict(grid.run.override_config)
    except (AttributeError, NotImplementedError):
        return {}


def report(text: str) -> None:
    log(INFO, text)


def server_parts(
    settings: Settings,
    grid: Grid,
    report: Callable[[str], None],
    test_set: LabelledImages | None = None,
    device: torch.device | str = "cpu",
) -> tuple[SynthesisStrategy, RunRecorder]:
    """The run's method behind a strategy and a recorder, wired as the ServerApp runs them
    (also for in-process tests with a hand-built grid)."""
    method = load_method(settings.method)(settings)
    reductions = method.round_metrics | defence_for(settings).round_metrics
    strategy = SynthesisStrategy(settings, method, reductions, report)
    recorder = RunRecorder(
        settings,
        method,
        "federated",
        server_evaluator(settings, test_set, torch.device(device), report),
        report,
        federated_evaluator=strategy.federated_evaluator(grid) if settings.evaluates_federated else None,
        observers=round_observers(settings),
        device=device,
    )
    return strategy, recorder


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        settings = resolve_settings(context.run_config, explicit_overrides(grid))
        device = resolve_device(settings.device)
        load_method(settings.method)
        test_set = None
        if settings.evaluates_on_server:
            report(f"loading the {settings.dataset} test set from {settings.data_path} for evaluation")
            test_set = whole_split(settings.task, train=False)
    except (ConfigError, DataUnavailableError, NodeDataError) as error:
        log(ERROR, "%s", error)
        raise SystemExit(f"sfdd-flwr: {error}") from None
    strategy, recorder = server_parts(settings, grid, report, test_set, device)
    try:
        strategy.run(grid, recorder)
    except ConfigError as error:
        log(ERROR, "%s", error)
        raise SystemExit(f"sfdd-flwr: {error}") from None
    recorder.finish()
