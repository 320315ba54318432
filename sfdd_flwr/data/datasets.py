"""Datasets, normalisation, partitions and per-class sampling of real images (no Flower).

Images are held as normalised float tensors `[N, C, H, W]` with the DC reference's
mean/std. Raw splits are cached per process, so a client process loads its data once,
however many rounds or simulated clients it serves.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..seeding import derive_seed


class DataUnavailableError(RuntimeError):
    """The requested dataset is neither on disk nor downloadable."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a task looks like: classes, image shape and normalisation."""

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Normalisation constants of the DC reference (GTSRB is not in DC: the commonly used
# training-set statistics, our choice).
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", 10, 1, (28, 28), (0.1307,), (0.3081,)),
    "fashionmnist": DatasetSpec("fashionmnist", 10, 1, (28, 28), (0.2861,), (0.3530,)),
    "svhn": DatasetSpec(
        "svhn", 10, 3, (32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    ),
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    ),
    "cifar100": DatasetSpec(
        "cifar100", 100, 3, (32, 32), (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "gtsrb": DatasetSpec(
        "gtsrb", 43, 3, (32, 32), (0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669)
    ),
}

PARTITIONINGS = ("iid", "dirichlet")
# The defaults of the partition settings (`sfdd_flwr.data.settings` offers them as settings).
DEFAULT_DIRICHLET_BETA = 0.5
DEFAULT_MIN_PARTITION_SIZE = 10


@dataclass
class LabelledImages:
    """Normalised images `[N, C, H, W]` (float32) and integer labels `[N]`."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> LabelledImages:
        return LabelledImages(self.images.to(device), self.labels.to(device))


class ClassPools:
    """Real images grouped by class, for drawing DC's per-class real batches."""

    def __init__(self, data: LabelledImages, num_classes: int) -> None:
        self.data = data
        self.num_classes = num_classes
        labels = data.labels.cpu()
        self.indices_by_class = [
            torch.nonzero(labels == c, as_tuple=False).flatten() for c in range(num_classes)
        ]

    def class_counts(self) -> list[int]:
        return [int(indices.numel()) for indices in self.indices_by_class]

    def sample(self, class_index: int, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` distinct random images of one class (all of them if it has fewer)."""
        pool = self.indices_by_class[class_index]
        if pool.numel() == 0:
            raise ValueError(f"class {class_index} has no local images")
        order = torch.randperm(pool.numel(), generator=generator)[:count]
        return self.data.images[pool[order].to(self.data.images.device)]


def normalise(raw: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 `[N, C, H, W]` -> float32 in the reference's normalised space."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (raw.to(torch.float32) / 255.0 - mean) / std


def denormalise(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """Normalised images -> [0, 1] pixel space (clamped)."""
    mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


def cache_root() -> Path:
    """Where this project may write (extracted archives); never inside `data-dir`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sfdd-flwr"


def load_split(dataset: str, data_dir: str, train: bool) -> LabelledImages:
    """The normalised train or test split of a named dataset (cached per process)."""
    spec = DATASETS[dataset]
    raw_images, labels = _load_raw_split(dataset, str(data_dir), train)
    return LabelledImages(normalise(raw_images, spec), labels)


@functools.lru_cache(maxsize=8)
def _load_raw_split(dataset: str, data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    loader = _RAW_LOADERS[dataset]
    try:
        images, labels = loader(Path(data_dir).expanduser(), train)
    except DataUnavailableError:
        raise
    except (OSError, RuntimeError, ValueError) as error:
        raise DataUnavailableError(
            f"dataset {dataset!r} ({'train' if train else 'test'} split) is not usable in "
            f"data-dir={data_dir!r} and could not be downloaded: {error}. Put the torchvision "
            "files there (e.g. MNIST/raw/*.gz) or give the machine internet access."
        ) from error
    return images.contiguous(), labels.to(torch.int64)


def _mnist_family_root(torchvision_class: type, data_dir: Path) -> tuple[Path, bool]:
    """Root and download flag for MNIST-style datasets.

    Unpacked files in data-dir are used in place. A folder holding only the `.gz`
    archives (possibly read-only) is linked into the project cache, where torchvision
    checks their md5 and unpacks them offline; data-dir itself is never written.
    """
    raw = data_dir / torchvision_class.__name__ / "raw"
    files = [Path(url).name for url, _ in torchvision_class.resources]
    if all((raw / Path(name).stem).is_file() for name in files):
        return data_dir, False
    if all((raw / name).is_file() for name in files):
        cache = cache_root() / "datasets"
        cached_raw = cache / torchvision_class.__name__ / "raw"
        cached_raw.mkdir(parents=True, exist_ok=True)
        for name in files:
            target = cached_raw / name
            if not target.exists():
                try:
                    target.symlink_to((raw / name).resolve())
                except OSError:
                    shutil.copyfile(raw / name, target)
        return cache, True
    return data_dir, True


def _load_mnist_family(name: str) -> Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]]:
    def load(data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import datasets

        torchvision_class = getattr(datasets, name)
        root, download = _mnist_family_root(torchvision_class, data_dir)
        dataset = torchvision_class(str(root), train=train, download=download)
        return dataset.data.unsqueeze(1), torch.as_tensor(dataset.targets)

    return load


def _load_cifar(name: str) -> Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]]:
    def load(data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import datasets

        dataset = getattr(datasets, name)(str(data_dir), train=train, download=True)
        images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2)
        return images, torch.as_tensor(dataset.targets)

    return load


def _load_svhn(data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    dataset = datasets.SVHN(str(data_dir), split="train" if train else "test", download=True)
    return torch.from_numpy(np.ascontiguousarray(dataset.data)), torch.as_tensor(dataset.labels)


def _load_gtsrb(data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GTSRB images vary in size: each is resized to 32x32 (bilinear), as usual."""
    from PIL import Image
    from torchvision import datasets

    dataset = datasets.GTSRB(str(data_dir), split="train" if train else "test", download=True)
    images, labels = [], []
    for path, label in dataset._samples:  # noqa: SLF001 (no public accessor for the file list)
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((32, 32), Image.BILINEAR)
            images.append(torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()))
        labels.append(label)
    if not images:
        raise DataUnavailableError(f"GTSRB in {data_dir} has no images")
    return torch.stack(images).permute(0, 3, 1, 2), torch.tensor(labels)


_RAW_LOADERS: dict[str, Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]]] = {
    "mnist": _load_mnist_family("MNIST"),
    "fashionmnist": _load_mnist_family("FashionMNIST"),
    "cifar10": _load_cifar("CIFAR10"),
    "cifar100": _load_cifar("CIFAR100"),
    "svhn": _load_svhn,
    "gtsrb": _load_gtsrb,
}


def partition_indices(
    labels: torch.Tensor,
    num_partitions: int,
    scheme: str,
    seed: int,
    dirichlet_beta: float = DEFAULT_DIRICHLET_BETA,
    min_partition_size: int = DEFAULT_MIN_PARTITION_SIZE,
) -> list[torch.Tensor]:
    """Disjoint index sets covering every example, identical on every client.

    'iid': a seeded permutation cut into `num_partitions` near-equal parts (the paper's
    setting). 'dirichlet': per class, proportions ~ Dirichlet(beta) over partitions;
    redrawn (up to 100 times) until every partition holds `min_partition_size` examples.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    count = int(labels.shape[0])
    if scheme == "iid":
        generator = torch.Generator().manual_seed(derive_seed(seed, "partition", "iid"))
        order = torch.randperm(count, generator=generator)
        return [part.sort().values for part in torch.tensor_split(order, num_partitions)]
    if scheme != "dirichlet":
        raise ValueError(f"partitioning must be one of {PARTITIONINGS}, got {scheme!r}")
    rng = np.random.default_rng(derive_seed(seed, "partition", "dirichlet"))
    labels_np = labels.cpu().numpy()
    classes = np.unique(labels_np)
    for _attempt in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels_np == c))
            proportions = rng.dirichlet(np.full(num_partitions, dirichlet_beta))
            cuts = (np.cumsum(proportions)[:-1] * members.size).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts)):
                part.append(chunk)
        sizes = [sum(chunk.size for chunk in part) for part in parts]
        if min(sizes) >= min(min_partition_size, count // num_partitions):
            return [torch.from_numpy(np.sort(np.concatenate(part))) for part in parts]
    raise ValueError(
        f"could not draw a Dirichlet(beta={dirichlet_beta}) partition into {num_partitions} "
        f"parts with at least {min_partition_size} examples each; raise dirichlet-beta or lower "
        "min-partition-size"
    )


@dataclass(frozen=True)
class PartitionRequest:
    """Which slice of which dataset a client holds."""

    dataset: str
    data_dir: str
    partition_id: int
    num_partitions: int
    partitioning: str = PARTITIONINGS[0]
    dirichlet_beta: float = DEFAULT_DIRICHLET_BETA
    min_partition_size: int = DEFAULT_MIN_PARTITION_SIZE
    seed: int = 0


@functools.lru_cache(maxsize=4)
def _cached_partition_indices(
    dataset: str, data_dir: str, num_partitions: int, partitioning: str, dirichlet_beta: float,
    min_partition_size: int, seed: int,
) -> list[torch.Tensor]:
    """Every client's indices, drawn once per process (a process serves many clients)."""
    _, labels = _load_raw_split(dataset, data_dir, True)
    return partition_indices(labels, num_partitions, partitioning, seed, dirichlet_beta, min_partition_size)


@functools.lru_cache(maxsize=16)
def load_partition(request: PartitionRequest) -> LabelledImages:
    """A client's private training partition (loaded once per process and request)."""
    if not 0 <= request.partition_id < request.num_partitions:
        raise ValueError(
            f"partition-id={request.partition_id} is outside 0..{request.num_partitions - 1}"
        )
    spec = DATASETS[request.dataset]
    raw_images, labels = _load_raw_split(request.dataset, request.data_dir, True)
    indices = _cached_partition_indices(
        request.dataset, request.data_dir, request.num_partitions, request.partitioning,
        request.dirichlet_beta, request.min_partition_size, request.seed,
    )[request.partition_id]
    if indices.numel() == 0:
        raise DataUnavailableError(
            f"partition {request.partition_id} of {request.num_partitions} holds no examples "
            f"({request.partitioning}"
            + (f", dirichlet-beta={request.dirichlet_beta}" if request.partitioning == "dirichlet" else "")
            + f", min-partition-size={request.min_partition_size})"
        )
    return LabelledImages(normalise(raw_images[indices], spec), labels[indices])
