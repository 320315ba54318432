"""SFDD ServerApp: settings in, SFDDStrategy out; the strategy and core do the work."""

from __future__ import annotations

from logging import ERROR, INFO

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from .config import ConfigError, resolve_settings
from .data import DataUnavailableError
from .node_data import NodeDataError, whole_split
from .recorder import RunRecorder, resolve_device, server_evaluator
from .strategy import SFDDStrategy

app = ServerApp()


def explicit_overrides(grid: Grid) -> dict:
    """The `--run-config` values of this run (they win over the preset)."""
    try:
        return dict(grid.run.override_config)
    except (AttributeError, NotImplementedError):
        return {}


def report(text: str) -> None:
    log(INFO, text)


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        settings = resolve_settings(context.run_config, explicit_overrides(grid))
        device = resolve_device(settings.device)
        test_set = None
        if settings.evaluates_on_server:
            report(f"loading the {settings.dataset} test set from {settings.data_path} for evaluation")
            test_set = whole_split(settings.task, train=False)
    except (ConfigError, DataUnavailableError, NodeDataError) as error:
        log(ERROR, "%s", error)
        raise SystemExit(f"sfdd-flwr: {error}") from None
    strategy = SFDDStrategy(settings, report)
    recorder = RunRecorder(
        settings,
        "sfdd",
        server_evaluator(settings, test_set, device, report),
        report,
        federated_evaluator=strategy.federated_evaluator(grid) if settings.evaluates_federated else None,
    )
    strategy.distill(grid, recorder)
    recorder.finish()
