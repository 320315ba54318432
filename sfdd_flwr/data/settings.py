"""The data settings: which task (a named dataset, or a declared ImageFolder task), where
its files are, and how a named dataset is split over the simulated clients."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..settings.schema import POSITIVE, ZERO_OR_POSITIVE_INT, Rule, SettingsGroup, choice, key_of, setting
from .datasets import DATASETS, DEFAULT_DIRICHLET_BETA, DEFAULT_MIN_PARTITION_SIZE, PARTITIONINGS, DatasetSpec
from .node_data import IMAGEFOLDER, Task

if TYPE_CHECKING:
    from ..settings import Settings


def parse_class_names(text: str) -> tuple[str, ...]:
    """'normal, pneumonia' -> ('normal', 'pneumonia'): at least two distinct folder names."""
    names = tuple(name.strip() for name in text.split(","))
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError("need at least two distinct names")
    if any(not name or name.startswith(".") or "/" in name or "\\" in name for name in names):
        raise ValueError("names must be plain folder names")
    return names


def parse_image_size(text: str) -> tuple[int, int]:
    """'28x28' or '28' -> (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise ValueError(f"not HEIGHTxWIDTH: {text!r}")
    return int(parts[0]), int(parts[1])


def parse_floats(text: str) -> tuple[float, ...]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5): finite numbers."""
    values = tuple(float(part) for part in text.split(","))
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"not finite: {text!r}")
    return values


def _parses(parse: Callable[[str], Any], text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def _usable_data_dir(path: str) -> bool:
    where = Path(path).expanduser()
    return bool(path) and (not where.exists() or (where.is_dir() and os.access(where, os.R_OK | os.X_OK)))


_TASK_FIELDS = ("class_names", "channels", "image_size", "norm_mean", "norm_std")


@dataclass(frozen=True)
class DataSettings(SettingsGroup):
    title = "Data"

    dataset: str = setting(
        "mnist",
        choice([*sorted(DATASETS), IMAGEFOLDER]),
        "`mnist`, `fashionmnist`, `cifar10`, `cifar100`, `svhn`, `gtsrb` (torchvision; DC normalisation), or "
        "`imagefolder`: each node's own images, the task declared by the next five keys",
    )
    data_dir: str = setting(
        "~/.cache/sfdd-flwr/data",
        Rule(_usable_data_dir, "a readable directory (or a path where the dataset may be downloaded)"),
        "torchvision root of the dataset (a SuperNode's `--node-config data-dir=...` overrides it); for "
        "`imagefolder`, the server's own test data (only for server-side evaluation)",
    )
    class_names: str = setting(
        "",
        Rule(
            lambda v: v == "" or _parses(parse_class_names, v),
            "'' or the class folder names in label order, comma-separated, at least two, distinct "
            "(e.g. 'normal,pneumonia')",
        ),
        "`imagefolder` only: class folder names in label order, e.g. `\"normal,pneumonia\"`",
    )
    channels: int = setting(
        0, Rule(lambda v: v in (0, 1, 3), "0 (the named dataset's), 1 or 3"),
        "`imagefolder` only: `1` (8-bit grayscale) or `3` (RGB)",
    )
    image_size: str = setting(
        "",
        Rule(
            lambda v: v == "" or _parses(parse_image_size, v),
            "'' or HEIGHTxWIDTH in pixels (e.g. '28x28'; one number for square images)",
        ),
        "`imagefolder` only: `\"HEIGHTxWIDTH\"` (or one number) in pixels; images are not resized",
    )
    norm_mean: str = setting(
        "",
        Rule(
            lambda v: v == "" or _parses(parse_floats, v),
            "'' or one number per channel, comma-separated (e.g. '0.5' or '0.5,0.5,0.5')",
        ),
        "`imagefolder` only: normalisation mean, one value per channel, e.g. `\"0.5\"` or `\"0.5,0.5,0.5\"`",
    )
    norm_std: str = setting(
        "",
        Rule(
            lambda v: v == "" or (_parses(parse_floats, v) and min(parse_floats(v)) > 0),
            "'' or one number > 0 per channel, comma-separated (e.g. '0.25' or '0.2,0.2,0.2')",
        ),
        "`imagefolder` only: normalisation std, one value > 0 per channel",
    )
    partitioning: str = setting(
        PARTITIONINGS[0], choice(PARTITIONINGS), "`iid` (paper: disjoint equal shares) or `dirichlet` (label skew)"
    )
    dirichlet_beta: float = setting(
        DEFAULT_DIRICHLET_BETA, POSITIVE, "concentration of the Dirichlet partition (smaller = more skewed)"
    )
    min_partition_size: int = setting(
        DEFAULT_MIN_PARTITION_SIZE, ZERO_OR_POSITIVE_INT,
        "a Dirichlet partition is redrawn (up to 100 times) until every client holds this many examples (or "
        "the average share, if smaller); 0 accepts empty partitions, whose nodes reply with an error",
    )

    @property
    def spec(self) -> DatasetSpec:
        """The task: a named dataset's, or the one declared for `dataset='imagefolder'`."""
        if self.dataset != IMAGEFOLDER:
            return DATASETS[self.dataset]
        return DatasetSpec(
            name=IMAGEFOLDER,
            num_classes=len(self.class_name_list),
            channels=self.channels,
            image_size=parse_image_size(self.image_size),
            mean=parse_floats(self.norm_mean),
            std=parse_floats(self.norm_std),
        )

    @property
    def class_name_list(self) -> tuple[str, ...]:
        """Declared class folder names in label order (imagefolder), else ()."""
        return parse_class_names(self.class_names) if self.class_names else ()

    def task(self, seed: int) -> Task:
        """What every node's data must fit (and where named datasets are by default)."""
        return Task(
            dataset=self.dataset,
            spec=self.spec,
            class_names=self.class_name_list,
            data_dir=str(Path(self.data_dir).expanduser()),
            partitioning=self.partitioning,
            dirichlet_beta=self.dirichlet_beta,
            min_partition_size=self.min_partition_size,
            seed=seed,
        )

    def check(self, settings: Settings) -> str | None:
        """A named dataset brings its own classes, size and normalisation; an ImageFolder
        task must declare all of them, with one mean and one std per channel."""
        defaults = type(self).defaults()
        if self.dataset != IMAGEFOLDER:
            for name in _TASK_FIELDS:
                value = getattr(self, name)
                if value != defaults[key_of(name)]:
                    return (
                        f"{key_of(name)}={value!r} is not allowed: must be left unset unless "
                        f"dataset='{IMAGEFOLDER}' ({self.dataset} defines its own classes, "
                        "image size and normalisation)"
                    )
            return None
        for name in _TASK_FIELDS:
            value = getattr(self, name)
            if value == defaults[key_of(name)]:
                return (
                    f"{key_of(name)}={value!r} is not allowed: must be set when "
                    f"dataset='{IMAGEFOLDER}' (the task declares class-names, channels, "
                    "image-size, norm-mean and norm-std)"
                )
        for name in ("norm_mean", "norm_std"):
            value = getattr(self, name)
            if len(parse_floats(value)) != self.channels:
                return (
                    f"{key_of(name)}={value!r} is not allowed: must hold one number per channel "
                    f"(channels={self.channels})"
                )
        return None
