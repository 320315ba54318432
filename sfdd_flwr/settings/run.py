"""The run's own settings (seed, rounds, outputs, device) and the federation's (sampling,
waiting for nodes)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..progress import DEFAULT_PROGRESS_SECONDS
from .schema import POSITIVE, Rule, SettingsGroup, at_least, choice, setting


def _absolute(path: str) -> bool:
    return Path(path).expanduser().is_absolute()


def _readable_dir_or_empty(path: str) -> bool:
    return path == "" or (Path(path).expanduser().is_dir() and os.access(Path(path).expanduser(), os.R_OK | os.X_OK))


@dataclass(frozen=True)
class RunSettings(SettingsGroup):
    title = "Run"

    preset: str = setting("quickstart", help="YAML preset applied over these defaults: `conf/<name>.yaml` or a path to a `.yaml` file; `''` for none")
    seed: int = setting(0, at_least(0), "the run seed; every random draw derives from (seed, round, client, purpose)")
    num_server_rounds: int = setting(30, at_least(1), "rounds of the federation")
    output_dir: str = setting(
        "~/sfdd-flwr-outputs",
        Rule(_absolute, "an absolute path (apps run in the SuperLink's working directory)"),
        "where run directories go (absolute: apps run in the SuperLink's working directory)",
    )
    run_name: str = setting("", help="run directory name; default `<dataset>-ipc<N>-<method>-<timestamp>`")
    resume_from: str = setting(
        "",
        Rule(_readable_dir_or_empty, "'' or a readable run directory"),
        "a run directory to continue (see Outputs)",
    )
    device: str = setting("auto", choice(("auto", "cpu", "cuda")), "`auto` (CUDA if present), `cpu`, `cuda`")
    progress_seconds: float = setting(DEFAULT_PROGRESS_SECONDS, POSITIVE, "how often long local work reports progress")


@dataclass(frozen=True)
class FederationSettings(SettingsGroup):
    title = "Federation"

    fraction_train: float = setting(
        1.0, Rule(lambda v: 0 < v <= 1, "a number in (0, 1]"), "share of the connected nodes sampled per round (seeded)"
    )
    min_clients: int = setting(2, at_least(1), "nodes to wait for, and sampled at least, per round")
    round_timeout: float = setting(
        3600.0,
        POSITIVE,
        "seconds to wait for replies (and for `min-clients` nodes); a node that vanished costs at most this, "
        "the round aggregates what arrived",
    )
