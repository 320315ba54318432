"""A node's local data: found through its node config, loaded and checked against the task.

The run config declares the task (`Task`); the node config (`--node-config` on a
SuperNode, or the simulation engine) says where this node's data is:

- a named torchvision dataset (demo): `partition-id` and `num-partitions`, optionally
  `data-dir` (the torchvision root; the run's `data-dir` otherwise). The node trains on
  its partition of the train split and evaluates on its IID share of the test split.
- `dataset='imagefolder'` (a hospital's own images): `data-dir` holds one folder per
  declared class, either under `train/` and `test/`, or directly in `data-dir`; then a
  seeded `test-fraction` (default 0.2) of each class is held out for evaluation.

Optional everywhere: `node-name` ('hospital-a'), used in log lines, error replies and
as this node's seed key. Data that does not fit the task (missing or undeclared classes,
another image size or channel count, unreadable files) raises `NodeDataError` with one
line that says what and where. No Flower import.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..seeding import make_generator
from .datasets import (
    DEFAULT_DIRICHLET_BETA,
    DEFAULT_MIN_PARTITION_SIZE,
    PARTITIONINGS,
    DatasetSpec,
    LabelledImages,
    PartitionRequest,
    load_partition,
    load_split,
    normalise,
    partition_indices,
)

IMAGEFOLDER = "imagefolder"

DATA_DIR_KEY = "data-dir"
PARTITION_ID_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"
TEST_FRACTION_KEY = "test-fraction"
NODE_NAME_KEY = "node-name"
DEFAULT_TEST_FRACTION = 0.2

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")
_CHANNELS_BY_MODE = {"1": 1, "L": 1, "P": 3, "RGB": 3}


class NodeDataError(ValueError):
    """This node's data or node config does not fit the task (one line: what and where)."""


@dataclass(frozen=True)
class Task:
    """What the run config declares about the data every node must hold."""

    dataset: str
    spec: DatasetSpec
    class_names: tuple[str, ...] = ()
    data_dir: str = ""
    partitioning: str = PARTITIONINGS[0]
    dirichlet_beta: float = DEFAULT_DIRICHLET_BETA
    min_partition_size: int = DEFAULT_MIN_PARTITION_SIZE
    seed: int = 0


@dataclass(frozen=True)
class ImageFolderRequest:
    """An ImageFolder directory and the task it must fit."""

    root: str
    spec: DatasetSpec
    class_names: tuple[str, ...]
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = 0


@dataclass(frozen=True)
class NodeDataRequest:
    """Where this node's data is; `client` keys its seeds and names it in log lines."""

    source: PartitionRequest | ImageFolderRequest
    client: int | str
    name: str


def node_label(node_config: Mapping[str, Any], node_id: int | None = None) -> str:
    """'hospital-a' (from `node-name`), else 'node <id>'."""
    name = node_config.get(NODE_NAME_KEY)
    if isinstance(name, str) and name:
        return name
    return f"node {node_id}" if node_id is not None else "this node"


def _int_entry(node_config: Mapping[str, Any], key: str, hint: str) -> int:
    value = node_config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise NodeDataError(f"node config {key}={value!r} is not an integer: {hint}")
    return value


def request_for(task: Task, node_config: Mapping[str, Any], node_id: int | None = None) -> NodeDataRequest:
    """Validate this node's config against the task and say where its data is."""
    name = node_label(node_config, node_id)
    if task.dataset != IMAGEFOLDER:
        hint = 'start the SuperNode with --node-config "partition-id=0 num-partitions=3"'
        missing = [key for key in (PARTITION_ID_KEY, NUM_PARTITIONS_KEY) if key not in node_config]
        if missing:
            raise NodeDataError(f"node config lacks {', '.join(missing)}: {hint}")
        partition_id = _int_entry(node_config, PARTITION_ID_KEY, hint)
        num_partitions = _int_entry(node_config, NUM_PARTITIONS_KEY, hint)
        if num_partitions < 1 or not 0 <= partition_id < num_partitions:
            raise NodeDataError(
                f"node config partition-id={partition_id} is outside 0..{num_partitions - 1} "
                f"(num-partitions={num_partitions})"
            )
        source = PartitionRequest(
            dataset=task.dataset,
            data_dir=str(node_config.get(DATA_DIR_KEY, task.data_dir)),
            partition_id=partition_id,
            num_partitions=num_partitions,
            partitioning=task.partitioning,
            dirichlet_beta=task.dirichlet_beta,
            min_partition_size=task.min_partition_size,
            seed=task.seed,
        )
        return NodeDataRequest(source, partition_id, name)

    root = node_config.get(DATA_DIR_KEY)
    if not isinstance(root, str) or not root:
        raise NodeDataError(
            "node config lacks data-dir: start the SuperNode with "
            "--node-config \"data-dir='/srv/hospital-a'\" (one folder per class)"
        )
    fraction = node_config.get(TEST_FRACTION_KEY, DEFAULT_TEST_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise NodeDataError(f"node config test-fraction={fraction!r} must be a number in (0, 1)")
    source = ImageFolderRequest(
        root=root,
        spec=task.spec,
        class_names=task.class_names,
        test_fraction=float(fraction),
        seed=task.seed,
    )
    client: int | str = name if NODE_NAME_KEY in node_config else (node_id or 0)
    return NodeDataRequest(source, client, name)


def load_node_split(request: NodeDataRequest, train: bool) -> LabelledImages:
    """This node's training data, or its held-out test split (normalised)."""
    source = request.source
    if isinstance(source, ImageFolderRequest):
        return load_imagefolder_split(source, train)
    if train:
        return load_partition(source)
    return load_test_share(source)


@functools.lru_cache(maxsize=16)
def load_test_share(request: PartitionRequest) -> LabelledImages:
    """The node's IID share of the named dataset's test split (disjoint across nodes)."""
    test = load_split(request.dataset, request.data_dir, train=False)
    indices = partition_indices(test.labels, request.num_partitions, "iid", request.seed)[request.partition_id]
    return LabelledImages(test.images[indices], test.labels[indices])


def whole_split(task: Task, train: bool) -> LabelledImages:
    """A whole split in the run's data-dir: the server's test set for server-side
    evaluation, or the centralized baseline's data (an ImageFolder's train/ or test/)."""
    if task.dataset != IMAGEFOLDER:
        return load_split(task.dataset, task.data_dir, train)
    return load_imagefolder_split(ImageFolderRequest(task.data_dir, task.spec, task.class_names, seed=task.seed), train)


# ----- ImageFolder -----
def _class_folders(folder: Path, class_names: tuple[str, ...]) -> list[Path]:
    """One folder per declared class, in label order; no class missing, none extra."""
    if not folder.is_dir():
        raise NodeDataError(f"{folder} is not a directory on this node")
    found = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    declared = ",".join(class_names)
    missing = [name for name in class_names if name not in found]
    if missing:
        raise NodeDataError(
            f"{folder} lacks the class folder(s) {', '.join(missing)}: the task declares "
            f"class-names={declared!r}; found {', '.join(found) or 'no folders'}"
        )
    extra = [name for name in found if name not in class_names]
    if extra:
        raise NodeDataError(
            f"{folder} holds folder(s) {', '.join(extra)} that are not declared classes "
            f"(class-names={declared!r})"
        )
    return [folder / name for name in class_names]


def _image_files(class_folder: Path) -> list[Path]:
    """Image files under a class folder (recursively, sorted; hidden entries skipped)."""
    files, ignored = [], set()
    for path in sorted(class_folder.rglob("*")):
        relative = path.relative_to(class_folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(path)
        else:
            ignored.add(path.suffix.lower() or path.name)
    if not files:
        others = f"; other files are ignored ({', '.join(sorted(ignored))})" if ignored else ""
        raise NodeDataError(
            f"class folder {class_folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}){others}"
        )
    return files


def _split_files(request: ImageFolderRequest, train: bool) -> tuple[Path, list[list[Path]]]:
    """(where, image files per class) of the requested split."""
    root = Path(request.root).expanduser()
    if not root.is_dir():
        raise NodeDataError(f"data-dir={request.root!r} is not a directory on this node")
    train_dir, test_dir = root / "train", root / "test"
    has_train, has_test = train_dir.is_dir(), test_dir.is_dir()
    if has_train or has_test:
        if not (has_train and has_test):
            present, absent = ("train/", "test/") if has_train else ("test/", "train/")
            raise NodeDataError(
                f"{root} has {present} but no {absent}: use train/ and test/ with one folder "
                "per class each, or put the class folders directly in data-dir (a "
                "test-fraction of each class is then held out)"
            )
        folder = train_dir if train else test_dir
        return folder, [_image_files(path) for path in _class_folders(folder, request.class_names)]

    selected = []
    for class_name, path in zip(request.class_names, _class_folders(root, request.class_names)):
        files = _image_files(path)
        if len(files) < 2:
            raise NodeDataError(
                f"class folder {path} holds {len(files)} image: at least 2 are needed to hold "
                "one out for evaluation (or use train/ and test/ folders)"
            )
        held_out = min(len(files) - 1, max(1, round(request.test_fraction * len(files))))
        order = torch.randperm(len(files), generator=make_generator(request.seed, "holdout", class_name))
        test_positions = set(order[:held_out].tolist())
        selected.append([f for i, f in enumerate(files) if (i in test_positions) != train])
    return root, selected


def _read_image(path: Path, spec: DatasetSpec) -> np.ndarray | str:
    """uint8 [C, H, W] pixels, or why the file does not fit the task."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode not in _CHANNELS_BY_MODE:
                return (
                    f"{path} has image mode {mode}, which is not supported: save it as 8-bit "
                    "grayscale (L) or RGB"
                )
            converted = image.convert("L" if _CHANNELS_BY_MODE[mode] == 1 else "RGB")
            pixels = np.asarray(converted, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return f"cannot read {path} as an image ({error})"
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels != spec.channels:
        return f"{path} has {channels} channel(s) (mode {mode}), the task declares channels={spec.channels}"
    height, width = pixels.shape[:2]
    if (height, width) != tuple(spec.image_size):
        want = "x".join(str(v) for v in spec.image_size)
        return f"{path} is {height}x{width} pixels, the task declares image-size={want}"
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@functools.lru_cache(maxsize=8)
def load_imagefolder_split(request: ImageFolderRequest, train: bool) -> LabelledImages:
    """The train or held-out split of an ImageFolder directory, checked against the task."""
    where, files_by_class = _split_files(request, train)
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    problems: list[str] = []
    for label, files in enumerate(files_by_class):
        for path in files:
            pixels = _read_image(path, request.spec)
            if isinstance(pixels, str):
                problems.append(pixels)
            else:
                arrays.append(pixels)
                labels.append(label)
    if problems:
        total = sum(len(files) for files in files_by_class)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise NodeDataError(
            f"{len(problems)} of {total} images under {where} do not fit the task: {problems[0]}{more}"
        )
    raw = torch.from_numpy(np.stack(arrays))
    return LabelledImages(normalise(raw, request.spec), torch.tensor(labels, dtype=torch.int64))
