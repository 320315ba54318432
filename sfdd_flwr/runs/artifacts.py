"""Everything a run writes, in one directory per run (no Flower import).

<output-dir>/<run-name>/
    config.yaml                     resolved settings
    <checkpoint>                    the latest shared state, rewritten atomically each round
                                    (the method names the file, e.g. synthetic_set.pt)
    synthetic_set_round_XXXX.pt     the labelled synthetic set evaluated at round XXXX
    grid_round_XXXX.png             a picture of that set (one row per class)
    metrics.jsonl                   one JSON object per round
    summary.json                    written when the run finishes
    attack/                         simulated attackers' files (see attacks/doorping/files.py)

A saved set is `{"images", "labels", "metadata"}` (`torch.load(..., weights_only=True)`),
images in the dataset's normalised space.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data.datasets import DatasetSpec, LabelledImages, denormalise

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

    @property
    def settings_record(self) -> dict[str, Any]:
        """The settings of the run that saved this set (kebab-case keys)."""
        return dict(self.metadata["settings"])


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
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


def load_synthetic_set(path: Path | str) -> SavedSyntheticSet:
    """Load a saved synthetic set (a file, or a run directory holding synthetic_set.pt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / SYNTHETIC_SET_FILE
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return SavedSyntheticSet(payload["images"], payload["labels"], payload["metadata"])


def _cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().contiguous() for key, value in tensors.items()}


class RunDirectory:
    """The output directory of one run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def holds_run(self) -> bool:
        """Whether an earlier run started here (its settings, rounds or summary are present)."""
        return any(self.file(name).is_file() for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE))

    def save_config(self, settings_record: dict[str, Any]) -> None:
        text = yaml.safe_dump(settings_record, sort_keys=False)
        atomic_write(self.file(CONFIG_FILE), lambda p: p.write_text(text))

    def save_checkpoint(self, name: str, tensors: Mapping[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
        """The latest shared state (`name` is the method's checkpoint file)."""
        payload = _cpu(tensors) | {"metadata": metadata}
        atomic_write(self.file(name), lambda p: torch.save(payload, p))
        return self.file(name)

    def load_checkpoint(self, name: str) -> dict[str, Any]:
        return torch.load(self.file(name), map_location="cpu", weights_only=True)

    def save_labelled_set(self, labelled: LabelledImages, metadata: dict[str, Any]) -> Path:
        """The labelled synthetic set evaluated at `metadata['round']`."""
        payload = {
            "images": labelled.images.detach().cpu().to(torch.float32).contiguous(),
            "labels": labelled.labels.detach().cpu().to(torch.int64),
            "metadata": metadata,
        }
        path = self.file(f"synthetic_set_round_{int(metadata['round']):04d}.pt")
        atomic_write(path, lambda p: torch.save(payload, p))
        return path

    def save_grid(
        self, labelled: LabelledImages, spec: DatasetSpec, round_number: int, most_per_class: int = 20
    ) -> Path:
        """A PNG of a class-ordered set in pixel space: one row per class (one single row
        when each class has one image), at most `most_per_class` images of each (a
        generator's thousands of samples would not be readable), upscaled to at least
        56 px per image."""
        from torchvision.utils import save_image

        labels = labelled.labels.cpu()
        if len(labels):
            shown = torch.cat([torch.nonzero(labels == c).flatten()[:most_per_class] for c in labels.unique()])
            labelled = LabelledImages(labelled.images[shown], labels[shown])
        pixels = denormalise(labelled.images.detach().cpu().to(torch.float32), spec)
        scale = max(1, 56 // pixels.shape[-1])
        if scale > 1:
            pixels = torch.nn.functional.interpolate(pixels, scale_factor=scale, mode="nearest")
        per_class = int(torch.bincount(labelled.labels.cpu()).max()) if len(labelled) else 1
        per_row = spec.num_classes if per_class == 1 else per_class
        path = self.file(f"grid_round_{round_number:04d}.png")
        atomic_write(path, lambda p: save_image(pixels, str(p), nrow=per_row, padding=2, format="png"))
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
        atomic_write(self.file(METRICS_FILE), lambda p: p.write_text(text))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.file(METRICS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(self.file(SUMMARY_FILE), lambda p: p.write_text(text))
