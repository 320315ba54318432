"""Small datasets written in the real on-disk formats torchvision reads.

Each class c is a bright block at a class-specific place on a dark, noisy canvas, so a
network can learn the task from a handful of images: tests can then check that
distillation actually learns something.
"""

from __future__ import annotations

import csv
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def class_pattern_images(
    num_classes: int, per_class: int, size: int, channels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, size, size, channels] and labels [N] (N = classes * per_class)."""
    rng = np.random.default_rng(seed)
    grid = int(np.ceil(np.sqrt(num_classes)))
    cell = size // grid
    images = rng.integers(0, 40, size=(num_classes * per_class, size, size, channels), dtype=np.uint8)
    labels = np.repeat(np.arange(num_classes), per_class)
    for index, label in enumerate(labels):
        row, col = divmod(int(label), grid)
        jitter = rng.integers(0, 2, size=2)
        top, left = row * cell + jitter[0], col * cell + jitter[1]
        images[index, top : top + cell - 2, left : left + cell - 2, :] = rng.integers(180, 256)
    order = rng.permutation(labels.size)
    return images[order], labels[order]


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", dim) for dim in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, name: str = "MNIST", per_class: int = 30, test_per_class: int = 10,
                gz: bool = False, seed: int = 0) -> Path:
    """IDX files in `root/<name>/raw/` (unpacked, or .gz archives with `gz=True`)."""
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count, offset in (("train", per_class, 0), ("t10k", test_per_class, 1)):
        images, labels = class_pattern_images(10, count, 28, 1, seed + offset)
        for kind, array in (("images-idx3", images[..., 0]), ("labels-idx1", labels)):
            data = _idx_bytes(array)
            path = raw / f"{prefix}-{kind}-ubyte"
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
            else:
                path.write_bytes(data)
    return Path(root)


def write_cifar(root: Path, num_classes: int = 10, per_class: int = 6, seed: int = 0) -> Path:
    """python-pickle batches as in cifar-10-python.tar.gz / cifar-100-python.tar.gz."""
    images, labels = class_pattern_images(num_classes, per_class, 32, 3, seed)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    if num_classes == 10:
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        chunks = np.array_split(np.arange(len(images)), 6)
        for index, chunk in enumerate(chunks):
            name = f"data_batch_{index + 1}" if index < 5 else "test_batch"
            batch = {"data": flat[chunk], "labels": labels[chunk].tolist()}
            (folder / name).write_bytes(pickle.dumps(batch))
        meta = {"label_names": [f"class{c}" for c in range(10)]}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    else:
        folder = Path(root) / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        half = len(images) // 2
        for name, part in (("train", slice(0, half)), ("test", slice(half, None))):
            batch = {"data": flat[part], "fine_labels": labels[part].tolist()}
            (folder / name).write_bytes(pickle.dumps(batch))
        meta = {"fine_label_names": [f"class{c}" for c in range(num_classes)]}
        (folder / "meta").write_bytes(pickle.dumps(meta))
    return Path(root)


def write_svhn(root: Path, per_class: int = 5, seed: int = 0) -> Path:
    """train_32x32.mat / test_32x32.mat (MATLAB v5, X: 32x32x3xN, y: Nx1 with 10 for 0)."""
    from scipy.io import savemat

    Path(root).mkdir(parents=True, exist_ok=True)
    for split, offset in (("train", 0), ("test", 1)):
        images, labels = class_pattern_images(10, per_class, 32, 3, seed + offset)
        y = np.where(labels == 0, 10, labels).reshape(-1, 1).astype(np.uint8)
        savemat(Path(root) / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})
    return Path(root)


def write_gtsrb(root: Path, num_classes: int = 43, per_class: int = 2, seed: int = 0) -> Path:
    """gtsrb/GTSRB/Training/<class>/*.ppm and Final_Test/Images/*.ppm + GT-final_test.csv.

    Images are 40x40 (GTSRB sizes vary), so the loader's resize to 32x32 is exercised.
    """
    from PIL import Image

    base = Path(root) / "gtsrb"
    images, labels = class_pattern_images(num_classes, per_class, 40, 3, seed)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = base / "GTSRB" / "Training" / f"{label:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"00000_{index:05d}.ppm")
    test_images, test_labels = class_pattern_images(num_classes, 1, 40, 3, seed + 1)
    folder = base / "GTSRB" / "Final_Test" / "Images"
    folder.mkdir(parents=True, exist_ok=True)
    with (base / "GT-final_test.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for index, (image, label) in enumerate(zip(test_images, test_labels)):
            name = f"{index:05d}.ppm"
            Image.fromarray(image).save(folder / name)
            writer.writerow([name, 40, 40, 0, 0, 39, 39, int(label)])
    return Path(root)


def write_imagefolder(root: Path, class_names=("a", "b", "c"), per_class: int = 6, size: int = 28,
                      channels: int = 1, split: bool = True, test_per_class: int = 2, seed: int = 0) -> Path:
    """PNG files in `root/{train,test}/<class>/` (or `root/<class>/` with split=False)."""
    from PIL import Image

    for part, count, offset in (("train", per_class, 0), ("test", test_per_class, 1)):
        if not split and part == "test":
            break
        images, labels = class_pattern_images(len(class_names), count, size, channels, seed + offset)
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = Path(root) / part / class_names[label] if split else Path(root) / class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0] if channels == 1 else image).save(folder / f"{index:03d}.png")
    return Path(root)
