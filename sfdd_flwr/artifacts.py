"""Everything a run writes, in one directory per run (no Flower import).

<output-dir>/<run-name>/
    config.yaml                     resolved settings
    synthetic_set.pt                latest S (images, labels, metadata); rewritten atomically each round
    synthetic_set_round_XXXX.pt     S at each evaluated round
    attack/trigger_client<id>.pt    latest trigger of each simulated backdoor client (if any)
    attack/round_XXXX/              those triggers as they were at each evaluated round
    attack/colluders/round_XXXX/    colluding clients' triggers at the end of each round (if any)
    grid_round_XXXX.png             picture of S at each evaluated round (one row per class)
    metrics.jsonl                   one JSON object per round
    summary.json                    written when the run finishes
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .attacks.backdoor import Trigger, mean_trigger
from .config import Settings
from .data import DatasetSpec, denormalise

SYNTHETIC_SET_FILE = "synthetic_set.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


@dataclass
class SavedSyntheticSet:
    images: torch.Tensor
    labels: torch.Tensor
    metadata: dict[str, Any]

    @property
    def round(self) -> int:
        return int(self.metadata["round"])

    def settings(self, overrides: dict[str, Any] | None = None) -> Settings:
        """The settings of the run that saved this set, with `overrides`. `resume-from` is
        left out: it names a directory on the machine that ran it, which a copied set (e.g.
        fetched from a GPU machine) does not carry along, and reading a set never needs it."""
        values = dict(self.metadata["settings"]) | dict(overrides or {})
        return Settings.from_mapping(values, ignore=("resume-from",))


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_trigger(path: Path, trigger: Trigger, extra: dict[str, Any]) -> None:
    """Save a backdoor client's trigger (with e.g. its round) atomically: the next round, a
    resumed run and the server's scoring all read it."""
    _atomic_write(Path(path), lambda p: torch.save(trigger.as_dict() | extra, p))


def trigger_file(run_dir: Path, client_id: int | str) -> Path:
    """Where a backdoor client writes its trigger after every round (for scoring and resume)."""
    return Path(run_dir) / "attack" / f"trigger_client{client_id}.pt"


def trigger_files(run_dir: Path) -> list[Path]:
    """The latest trigger of each simulated backdoor client, `<run-dir>/attack/trigger_client<id>.pt`,
    sorted by name (empty for a run without one)."""
    return trigger_files_in(Path(run_dir) / "attack")


def trigger_files_in(folder: Path) -> list[Path]:
    """The `trigger_client<id>.pt` files directly in `folder` (e.g. a kept `attack/round_XXXX/`)."""
    return sorted(Path(folder).glob(trigger_file(Path(), "*").name))


def colluders_folder(run_dir: Path, round_number: int) -> Path:
    """Where colluding backdoor clients (`doorping-collude`) pool the triggers they end
    `round_number` with: per round, so that the pool a client reads does not depend on
    whether the others already finished the next round (clients may run one after another)."""
    return Path(run_dir) / "attack" / "colluders" / f"round_{round_number:04d}"


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


def load_synthetic_set(path: Path | str) -> SavedSyntheticSet:
    """Load a saved synthetic set (a file, or a run directory holding synthetic_set.pt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / SYNTHETIC_SET_FILE
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return SavedSyntheticSet(payload["images"], payload["labels"], payload["metadata"])


class RunDirectory:
    """The output directory of one run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def save_config(self, settings_record: dict[str, Any]) -> None:
        text = yaml.safe_dump(settings_record, sort_keys=False)
        _atomic_write(self.file(CONFIG_FILE), lambda p: p.write_text(text))

    def save_synthetic_set(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        metadata: dict[str, Any],
        keep_round_copy: bool,
    ) -> Path:
        payload = {
            "images": images.detach().cpu().to(torch.float32).contiguous(),
            "labels": labels.detach().cpu().to(torch.int64),
            "metadata": metadata,
        }
        _atomic_write(self.file(SYNTHETIC_SET_FILE), lambda p: torch.save(payload, p))
        if keep_round_copy:
            copy = self.file(f"synthetic_set_round_{int(metadata['round']):04d}.pt")
            _atomic_write(copy, lambda p: torch.save(payload, p))
            return copy
        return self.file(SYNTHETIC_SET_FILE)

    def keep_triggers(self, round_number: int) -> None:
        """Copy the backdoor clients' current triggers to `attack/round_XXXX/`, next to that
        round's set: the clients overwrite `attack/trigger_client<id>.pt` every round, and
        scoring an evaluated set later (ASR, or the trigger's chance level on a clean set)
        needs the trigger of that same round."""
        for source in trigger_files(self.path):
            data = source.read_bytes()
            _atomic_write(self.file(f"attack/round_{round_number:04d}/{source.name}"), lambda p: p.write_bytes(data))

    def load_latest(self) -> SavedSyntheticSet:
        return load_synthetic_set(self.file(SYNTHETIC_SET_FILE))

    def save_grid(self, images: torch.Tensor, spec: DatasetSpec, ipc: int, round_number: int) -> Path:
        """A PNG of S in pixel space: one row per class (one single row at IPC 1),
        upscaled to at least 56 px per image so small images stay readable."""
        from torchvision.utils import save_image

        pixels = denormalise(images.detach().cpu().to(torch.float32), spec)
        scale = max(1, 56 // pixels.shape[-1])
        if scale > 1:
            pixels = torch.nn.functional.interpolate(pixels, scale_factor=scale, mode="nearest")
        per_row = spec.num_classes if ipc == 1 else ipc
        path = self.file(f"grid_round_{round_number:04d}.png")
        _atomic_write(path, lambda p: save_image(pixels, str(p), nrow=per_row, padding=2, format="png"))
        return path

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.file(METRICS_FILE)
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut off by a crash: everything after it is dropped
        return records

    def keep_metrics_up_to(self, last_round: int) -> None:
        """Drop metric lines of rounds after `last_round` (work lost in a crash)."""
        kept = [r for r in self.read_metrics() if int(r.get("round", 0)) <= last_round]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        _atomic_write(self.file(METRICS_FILE), lambda p: p.write_text(text))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.file(METRICS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(summary, indent=2) + "\n"
        _atomic_write(self.file(SUMMARY_FILE), lambda p: p.write_text(text))
