"""A node's local data: node config → ImageFolder or named-dataset splits, and the errors
a hospital sees when its data does not fit the task."""

import numpy as np
import pytest
import torch
from PIL import Image

from fakedata import write_imagefolder
from sfdd_flwr.data import node_data
from sfdd_flwr.data.node_data import NodeDataError, load_node_split, request_for, whole_split
from sfdd_flwr.settings import Settings


@pytest.fixture(autouse=True)
def fresh_caches():
    node_data.load_imagefolder_split.cache_clear()
    node_data.load_test_share.cache_clear()
    yield


def folder_task(**extra):
    values = {"dataset": "imagefolder", "class-names": "a,b,c", "channels": 1, "image-size": "28x28",
              "norm-mean": "0.5", "norm-std": "0.25"}
    return Settings.from_mapping(values | extra).task


def load(task, root, train=True, **node_config):
    return load_node_split(request_for(task, {"data-dir": str(root), **node_config}, node_id=7), train)


def test_train_and_test_folders_are_loaded_normalised_in_label_order(tmp_path):
    root = write_imagefolder(tmp_path / "h", per_class=5, test_per_class=2)
    train, test = load(folder_task(), root), load(folder_task(), root, train=False)
    assert train.images.shape == (15, 1, 28, 28) and test.images.shape == (6, 1, 28, 28)
    assert train.labels.bincount().tolist() == [5, 5, 5]
    pixels = np.asarray(Image.open(sorted((root / "train" / "b").iterdir())[0]), dtype=np.float32)
    expected = (torch.from_numpy(pixels) / 255 - 0.5) / 0.25
    first_b = train.images[train.labels == 1][0, 0]
    assert torch.allclose(first_b, expected)


def test_flat_class_folders_hold_out_a_seeded_disjoint_fraction(tmp_path):
    root = write_imagefolder(tmp_path / "h", per_class=10, split=False)
    task = folder_task()
    train, test = load(task, root, **{"test-fraction": 0.3}), load(task, root, False, **{"test-fraction": 0.3})
    assert test.labels.bincount().tolist() == [3, 3, 3] and train.labels.bincount().tolist() == [7, 7, 7]
    as_rows = lambda split: {tuple(image.flatten().tolist()) for image in split.images}
    assert not as_rows(train) & as_rows(test)
    node_data.load_imagefolder_split.cache_clear()
    assert torch.equal(load(task, root, False, **{"test-fraction": 0.3}).images, test.images)
    other_seed = folder_task(seed=1)
    assert not torch.equal(load(other_seed, root, False, **{"test-fraction": 0.3}).images, test.images)


def test_rgb_and_non_square_images_fit_a_matching_declaration(tmp_path):
    root = tmp_path / "h"
    for split in ("train", "test"):
        for name in ("x", "y"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (20, 12), (10, 200, 30)).save(root / split / name / "0.png")
    task = folder_task(**{"class-names": "x,y", "channels": 3, "image-size": "12x20",
                          "norm-mean": "0.5,0.5,0.5", "norm-std": "0.2,0.2,0.2"})
    assert load(task, root).images.shape == (2, 3, 12, 20)


def _empty(folder):
    for path in folder.rglob("*.png"):
        path.unlink()


def _remove_class_c(root):
    _empty(root / "train" / "c")
    (root / "train" / "c").rmdir()


@pytest.mark.parametrize(
    ("change", "split", "fragment"),
    [
        (_remove_class_c, "train", "lacks the class folder(s) c: the task declares class-names='a,b,c'; found a, b"),
        (lambda r: (r / "train" / "d").mkdir(), "train", "holds folder(s) d that are not declared classes"),
        (lambda r: Image.new("L", (32, 32)).save(r / "train" / "a" / "big.png"), "train",
         "big.png is 32x32 pixels, the task declares image-size=28x28"),
        (lambda r: Image.new("RGB", (28, 28)).save(r / "train" / "b" / "colour.png"), "train",
         "colour.png has 3 channel(s) (mode RGB), the task declares channels=1"),
        (lambda r: (r / "train" / "a" / "broken.png").write_bytes(b"not a png"), "train", "cannot read"),
        (lambda r: Image.new("I;16", (28, 28)).save(r / "train" / "a" / "deep.png"), "train", "mode I;16"),
        (lambda r: _empty(r / "train" / "b") or (r / "train" / "b" / "scan.dcm").write_bytes(b""), "train",
         "holds no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .gif, .webp, .ppm, .pgm); other files are ignored (.dcm)"),
        (lambda r: _empty(r / "test"), "test", "holds no images"),
    ],
)
def test_data_that_does_not_fit_the_task_is_named_in_one_line(tmp_path, change, split, fragment):
    root = write_imagefolder(tmp_path / "h", per_class=3, test_per_class=1)
    change(root)
    with pytest.raises(NodeDataError) as caught:
        load(folder_task(), root, train=split == "train")
    message = str(caught.value)
    assert fragment in message and "\n" not in message


def test_every_misfit_is_counted_and_the_first_named(tmp_path):
    root = write_imagefolder(tmp_path / "h", per_class=3, test_per_class=1, size=32)
    with pytest.raises(NodeDataError, match=r"9 of 9 images under .*train do not fit the task: .* is 32x32 pixels.*\(and 8 more\)"):
        load(folder_task(), root)


def test_layout_and_node_config_mistakes_say_what_to_do(tmp_path):
    task = folder_task()
    with pytest.raises(NodeDataError, match="lacks data-dir.*--node-config \"data-dir="):
        request_for(task, {}, 3)
    with pytest.raises(NodeDataError, match="is not a directory on this node"):
        load(task, tmp_path / "missing")
    root = write_imagefolder(tmp_path / "h")
    for path in (root / "test").rglob("*.png"):
        path.unlink()
    for folder in sorted((root / "test").iterdir()):
        folder.rmdir()
    (root / "test").rmdir()
    with pytest.raises(NodeDataError, match="has train/ but no test/"):
        load(task, root)
    with pytest.raises(NodeDataError, match="test-fraction=1.5"):
        request_for(task, {"data-dir": str(root), "test-fraction": 1.5})
    flat = write_imagefolder(tmp_path / "flat", per_class=1, split=False)
    with pytest.raises(NodeDataError, match="at least 2 are needed"):
        load(task, flat)


def test_node_name_keys_seeds_and_labels_else_the_node_id(tmp_path):
    task = folder_task()
    named = request_for(task, {"data-dir": str(tmp_path), "node-name": "hospital-a"}, 7)
    anonymous = request_for(task, {"data-dir": str(tmp_path)}, 7)
    assert (named.client, named.name) == ("hospital-a", "hospital-a")
    assert (anonymous.client, anonymous.name) == (7, "node 7")


def test_named_dataset_nodes_need_a_partition_and_get_disjoint_test_shares(tiny_mnist_dir):
    task = Settings.from_mapping({"data-dir": str(tiny_mnist_dir)}).task
    with pytest.raises(NodeDataError, match="lacks partition-id, num-partitions.*--node-config"):
        request_for(task, {"node-name": "x"}, 1)
    with pytest.raises(NodeDataError, match="partition-id=3 is outside 0..2"):
        request_for(task, {"partition-id": 3, "num-partitions": 3}, 1)
    with pytest.raises(NodeDataError, match="not an integer"):
        request_for(task, {"partition-id": "0", "num-partitions": 3}, 1)
    shares = [load_node_split(request_for(task, {"partition-id": p, "num-partitions": 3}, p), train=False) for p in range(3)]
    full = whole_split(task, train=False)
    assert sum(len(share) for share in shares) == len(full) == 100
    joined = torch.cat([share.images for share in shares]).flatten(1)
    assert torch.unique(joined, dim=0).shape[0] == torch.unique(full.images.flatten(1), dim=0).shape[0]
    train = load_node_split(request_for(task, {"partition-id": 1, "num-partitions": 3}, 1), train=True)
    assert len(train) == 100


def test_a_server_with_an_imagefolder_test_split_can_evaluate(tmp_path):
    root = write_imagefolder(tmp_path / "server", per_class=2, test_per_class=3)
    task = folder_task(**{"data-dir": str(root)})
    assert whole_split(task, train=False).labels.bincount().tolist() == [3, 3, 3]


def test_demo_hospitals_are_disjoint_imagefolders_that_fit_the_printed_declaration(tiny_mnist_dir, tmp_path, capsys):
    from sfdd_flwr.settings import parse_run_config, resolve_settings
    from sfdd_lab import demo_data

    demo_data.main(["--data-dir", str(tiny_mnist_dir), "--out", str(tmp_path), "--nodes", "2",
                    "--train-per-class", "4", "--test-per-class", "2"])
    declaration = capsys.readouterr().out.split("task declaration for --run-config: ")[1].strip()
    task = resolve_settings({"preset": ""} | parse_run_config(declaration)).task
    splits = {}
    for name in ("hospital-a", "hospital-b"):
        splits[name] = [load(task, tmp_path / name, train) for train in (True, False)]
        assert [len(split) for split in splits[name]] == [40, 20]
    rows = lambda split: {tuple(image.flatten().tolist()) for image in split.images}
    assert not rows(splits["hospital-a"][0]) & rows(splits["hospital-b"][0])


def test_demo_hospitals_get_every_class_in_full_or_a_clear_error(tiny_mnist_dir, tmp_path):
    """Each class is cut into equal shares per node, so a split with 10 test images per
    class gives 3 nodes 3 each, and asking for 4 each names the class that falls short."""
    from sfdd_lab import demo_data

    demo_data.write_demo_hospitals("mnist", str(tiny_mnist_dir), tmp_path / "ok", 3, 10, 3)
    for name in ("hospital-a", "hospital-b", "hospital-c"):
        for c in range(10):
            assert len(list((tmp_path / "ok" / name / "test" / str(c)).glob("*.png"))) == 3
    with pytest.raises(ValueError, match="class 0 of the test split has 10 images: 3 nodes x 4 per class"):
        demo_data.write_demo_hospitals("mnist", str(tiny_mnist_dir), tmp_path / "short", 3, 10, 4)
