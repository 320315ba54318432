"""Where simulated backdoor clients keep their triggers in the run directory, for the
next round, a resumed run, and the server's scoring of the attack (a real attacker would
keep them to itself).

<run-dir>/attack/trigger_client<id>.pt      latest trigger of each backdoor client
<run-dir>/attack/round_XXXX/                those triggers as they were at each evaluated round
<run-dir>/attack/colluders/round_XXXX/      colluding clients' triggers at the end of each round
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...runs.artifacts import atomic_write
from .trigger import Trigger, mean_trigger


def save_trigger(path: Path, trigger: Trigger, extra: dict[str, Any]) -> None:
    """Save a backdoor client's trigger (with e.g. its round) atomically: the next round, a
    resumed run and the server's scoring all read it."""
    atomic_write(Path(path), lambda p: torch.save(trigger.as_dict() | extra, p))


def trigger_file(run_dir: Path, client_id: int | str) -> Path:
    """Where a backdoor client writes its trigger after every round (for scoring and resume)."""
    return Path(run_dir) / "attack" / f"trigger_client{client_id}.pt"


def trigger_files(run_dir: Path) -> list[Path]:
    """The latest trigger of each simulated backdoor client, sorted by name (empty for a
    run without one)."""
    return trigger_files_in(Path(run_dir) / "attack")


def trigger_files_in(folder: Path) -> list[Path]:
    """The `trigger_client<id>.pt` files directly in `folder` (e.g. a kept `attack/round_XXXX/`)."""
    return sorted(Path(folder).glob(trigger_file(Path(), "*").name))


def colluders_folder(run_dir: Path, round_number: int) -> Path:
    """Where colluding backdoor clients (`doorping-collude`) pool the triggers they end
    `round_number` with: per round, so that the pool a client reads does not depend on
    whether the others already finished the next round (clients may run one after another)."""
    return Path(run_dir) / "attack" / "colluders" / f"round_{round_number:04d}"


def round_folder(run_dir: Path, round_number: int) -> Path:
    """Where the triggers of an evaluated round are kept, next to that round's set."""
    return Path(run_dir) / "attack" / f"round_{round_number:04d}"


def keep_round_triggers(run_dir: Path, round_number: int) -> None:
    """Copy the backdoor clients' current triggers to `attack/round_XXXX/`: the clients
    overwrite `attack/trigger_client<id>.pt` every round, and scoring an evaluated set later
    (ASR, or the trigger's chance level on a clean set) needs the trigger of that round."""
    for source in trigger_files(run_dir):
        data = source.read_bytes()
        atomic_write(round_folder(run_dir, round_number) / source.name, lambda p: p.write_bytes(data))


def latest_triggers(paths: list[Path]) -> tuple[int | None, dict[str, Trigger]]:
    """The saved triggers among `paths` written in the latest round, by file stem, with that round."""
    saved = {path.stem: torch.load(path, map_location="cpu", weights_only=True) for path in paths}
    if not saved:
        return None, {}
    latest = max(int(values.get("round", 0)) for values in saved.values())
    return latest, {
        stem: Trigger.from_dict(values) for stem, values in saved.items() if int(values.get("round", 0)) == latest
    }


def scored_trigger(paths: list[Path], colluding: bool) -> tuple[Trigger, str] | None:
    """The trigger an experiment scores among saved trigger files, with a description: the
    first by name, or for colluding clients (`doorping-collude`) the mean of those written
    in the latest round (the trigger they share)."""
    if not paths:
        return None
    if not colluding:
        return Trigger.from_dict(torch.load(paths[0], map_location="cpu", weights_only=True)), paths[0].stem
    _, latest = latest_triggers(paths)
    return mean_trigger(list(latest.values())), "the colluders' mean of " + ", ".join(latest)


def find_trigger(run_dir: Path, colluding_round: int | None = None) -> tuple[Trigger, str] | None:
    """The trigger a backdoor client of this run saved (the first by file name), or with
    `colluding_round` the mean of the colluding clients' triggers of that round, if any."""
    if colluding_round is None:
        return scored_trigger(trigger_files(run_dir), colluding=False)
    return scored_trigger(trigger_files_in(colluders_folder(run_dir, colluding_round)), colluding=True)
