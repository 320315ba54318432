import hashlib
import os
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import real_mnist_dir
from fakedata import write_cifar, write_gtsrb, write_mnist, write_svhn
from sfdd_flwr.data import datasets as data
from sfdd_flwr.data.datasets import (
    DATASETS,
    ClassPools,
    DataUnavailableError,
    LabelledImages,
    PartitionRequest,
    denormalise,
    load_partition,
    load_split,
    normalise,
    partition_indices,
)


@pytest.fixture(autouse=True)
def fresh_caches():
    data._load_raw_split.cache_clear()
    load_partition.cache_clear()
    yield
    data._load_raw_split.cache_clear()
    load_partition.cache_clear()


def _labels(n=1000, classes=10, seed=0):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.parametrize("parts", [1, 3, 5])
def test_partitions_are_disjoint_and_cover_everything(scheme, parts):
    labels = _labels()
    partitions = partition_indices(labels, parts, scheme, seed=0, dirichlet_beta=0.5)
    assert len(partitions) == parts
    joined = torch.cat(partitions)
    assert joined.numel() == labels.numel()
    assert torch.equal(joined.sort().values, torch.arange(labels.numel()))


def test_iid_partitions_are_balanced_and_seeded():
    labels = _labels(1003)
    partitions = partition_indices(labels, 5, "iid", seed=0)
    assert sorted(p.numel() for p in partitions) == [200, 200, 201, 201, 201]
    again = partition_indices(labels, 5, "iid", seed=0)
    other = partition_indices(labels, 5, "iid", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(partitions, again))
    assert not all(torch.equal(a, b) for a, b in zip(partitions, other))


def test_dirichlet_partitions_skew_labels_more_for_small_beta():
    labels = _labels(5000)

    def skew(beta):
        parts = partition_indices(labels, 5, "dirichlet", seed=0, dirichlet_beta=beta)
        shares = [torch.bincount(labels[p], minlength=10).float() / p.numel() for p in parts]
        return float(torch.stack(shares).std(dim=0).mean())

    assert skew(0.1) > skew(100.0) * 3


def test_unknown_partitioning_is_rejected():
    with pytest.raises(ValueError, match="partitioning"):
        partition_indices(_labels(), 2, "shards", seed=0)


def test_class_pools_sample_distinct_images_of_one_class():
    images = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1)
    labels = torch.tensor([0, 1] * 10)
    pools = ClassPools(LabelledImages(images, labels), num_classes=3)
    assert pools.class_counts() == [10, 10, 0]
    batch = pools.sample(1, 4, torch.Generator().manual_seed(0))
    values = batch.flatten().tolist()
    assert len(set(values)) == 4 and all(int(v) % 2 == 1 for v in values)
    assert pools.sample(0, 50, torch.Generator()).shape[0] == 10
    with pytest.raises(ValueError, match="class 2"):
        pools.sample(2, 1, torch.Generator())


def test_normalisation_round_trip_and_reference_constants():
    spec = DATASETS["mnist"]
    assert (spec.mean, spec.std) == ((0.1307,), (0.3081,))
    assert DATASETS["cifar10"].std == (0.2023, 0.1994, 0.2010)
    raw = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert torch.allclose(denormalise(normalise(raw, spec), spec) * 255, raw.float(), atol=1e-3)


def _accept_generated_files(monkeypatch):
    """Generated files cannot have the published md5 sums: accept them."""
    for module in (torchvision.datasets.utils, torchvision.datasets.cifar, torchvision.datasets.svhn):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)


def _check_split(split: LabelledImages, dataset: str):
    spec = DATASETS[dataset]
    assert split.images.dtype == torch.float32
    assert tuple(split.images.shape[1:]) == (spec.channels, *spec.image_size)
    assert split.labels.dtype == torch.int64
    assert int(split.labels.min()) >= 0 and int(split.labels.max()) < spec.num_classes


@pytest.mark.parametrize(("dataset", "folder"), [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_family_loads_unpacked_idx_files(tmp_path, dataset, folder):
    write_mnist(tmp_path, name=folder, per_class=3, test_per_class=2)
    train = load_split(dataset, str(tmp_path), train=True)
    test = load_split(dataset, str(tmp_path), train=False)
    _check_split(train, dataset)
    assert (len(train), len(test)) == (30, 20)


@pytest.mark.parametrize(("dataset", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_loads_the_python_pickle_format(tmp_path, monkeypatch, dataset, classes):
    write_cifar(tmp_path, num_classes=classes, per_class=6 if classes == 10 else 2)
    _accept_generated_files(monkeypatch)
    train = load_split(dataset, str(tmp_path), train=True)
    test = load_split(dataset, str(tmp_path), train=False)
    _check_split(train, dataset)
    assert len(train) + len(test) == classes * (6 if classes == 10 else 2)


def test_svhn_loads_the_mat_format_and_maps_label_10_to_0(tmp_path, monkeypatch):
    write_svhn(tmp_path, per_class=3)
    _accept_generated_files(monkeypatch)
    train = load_split("svhn", str(tmp_path), train=True)
    _check_split(train, "svhn")
    assert sorted(set(train.labels.tolist())) == list(range(10))


def test_gtsrb_loads_ppm_folders_and_resizes_to_32(tmp_path):
    write_gtsrb(tmp_path, per_class=1)
    train = load_split("gtsrb", str(tmp_path), train=True)
    test = load_split("gtsrb", str(tmp_path), train=False)
    _check_split(train, "gtsrb")
    assert (len(train), len(test)) == (43, 43)


def test_missing_dataset_offline_gives_a_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", no_network)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", no_network)
    with pytest.raises(DataUnavailableError) as caught:
        load_split("mnist", str(tmp_path / "empty"), train=True)
    message = str(caught.value)
    assert "mnist" in message and "data-dir=" in message and "\n" not in message


def test_partition_is_loaded_once_per_process(tiny_mnist_dir, monkeypatch):
    calls = []
    original = data._RAW_LOADERS["mnist"]
    monkeypatch.setitem(data._RAW_LOADERS, "mnist", lambda *a: calls.append(a) or original(*a))
    request = PartitionRequest("mnist", str(tiny_mnist_dir), 0, 3)
    first = load_partition(request)
    for partition_id in (0, 1, 2, 0):
        load_partition(PartitionRequest("mnist", str(tiny_mnist_dir), partition_id, 3))
    assert len(calls) == 1
    assert load_partition(request) is first
    assert len(first) == 100


def test_partition_id_out_of_range(tiny_mnist_dir):
    with pytest.raises(ValueError, match="partition-id=3"):
        load_partition(PartitionRequest("mnist", str(tiny_mnist_dir), 3, 3))


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.skipif(real_mnist_dir() is None, reason="no MNIST archives in ../shared/datasets")
def test_archive_folder_is_used_without_writing_into_it():
    """The md5-checked .gz archives load offline; data-dir stays byte-for-byte unchanged."""
    root = real_mnist_dir()
    before = _tree_digest(root / "MNIST")
    test = load_split("mnist", str(root), train=False)
    assert len(test) == 10000
    assert _tree_digest(root / "MNIST") == before
    assert Path(os.environ["XDG_CACHE_HOME"], "sfdd-flwr", "datasets", "MNIST", "raw").is_dir()


def test_many_clients_with_strong_skew_need_a_lower_floor_and_empty_partitions_are_named(tiny_mnist_dir):
    """300 images over 60 clients with beta=0.1: some client gets (almost) nothing in every
    draw, so the default floor fails with a hint, and a floor of 0 gives empty partitions
    that fail with one line naming the partition."""
    with pytest.raises(ValueError, match="lower min-partition-size"):
        load_partition(PartitionRequest("mnist", str(tiny_mnist_dir), 0, 60, "dirichlet", 0.1))
    partitions = [
        PartitionRequest("mnist", str(tiny_mnist_dir), p, 60, "dirichlet", 0.1, min_partition_size=0)
        for p in range(60)
    ]
    sizes, errors = [], []
    for request in partitions:
        try:
            sizes.append(len(load_partition(request)))
        except data.DataUnavailableError as error:
            errors.append(str(error))
    assert sum(sizes) == 300 and errors
    assert "holds no examples" in errors[0] and "of 60" in errors[0]
