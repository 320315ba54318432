"""Demo hospitals: ImageFolder directories cut from a named dataset (no Flower import).

    python -m sfdd_lab.demo_data --dataset mnist --data-dir /work/shared/datasets \\
        --out /tmp/hospitals --nodes 3 --train-per-class 30 --test-per-class 10

writes /tmp/hospitals/hospital-a/{train,test}/<class>/<n>.png (disjoint images per node:
each node draws from its own share of every class of the train and test splits) and prints the
run-config task declaration that matches them. With --flat the class folders sit
directly in each node's directory and the nodes hold out a test-fraction themselves.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import torch

from sfdd_flwr.data.datasets import DATASETS, LabelledImages, denormalise, load_split
from sfdd_flwr.seeding import make_generator


def node_names(count: int) -> list[str]:
    """hospital-a, hospital-b, ... (then hospital-27, ...)."""
    letters = string.ascii_lowercase
    return [f"hospital-{letters[i]}" if i < len(letters) else f"hospital-{i + 1}" for i in range(count)]


def task_declaration(dataset: str) -> str:
    """The `--run-config` keys that declare a named dataset's task for `dataset='imagefolder'`."""
    spec = DATASETS[dataset]
    height, width = spec.image_size
    return (
        f"dataset='imagefolder' class-names='{','.join(str(c) for c in range(spec.num_classes))}' "
        f"channels={spec.channels} image-size='{height}x{width}' "
        f"norm-mean='{','.join(f'{m:g}' for m in spec.mean)}' norm-std='{','.join(f'{s:g}' for s in spec.std)}'"
    )


def class_shares(
    labels: torch.Tensor, num_classes: int, nodes: int, per_class: int, generator: torch.Generator, split: str
) -> list[list[torch.Tensor]]:
    """`per_class` indices of every class for every node, disjoint across nodes: each
    class's images are shuffled (seeded) and cut into `nodes` equal shares, so no node
    runs short of a class that the split holds enough of; too few images is an error."""
    shares: list[list[torch.Tensor]] = [[] for _ in range(nodes)]
    for c in range(num_classes):
        members = torch.nonzero(labels == c, as_tuple=False).flatten()
        if members.numel() < nodes * per_class:
            raise ValueError(
                f"class {c} of the {split} split has {members.numel()} images: {nodes} nodes x {per_class} "
                "per class need more"
            )
        members = members[torch.randperm(members.numel(), generator=generator)]
        for node, part in enumerate(torch.tensor_split(members, nodes)):
            shares[node].append(part[:per_class].sort().values)
    return shares


def _write_pngs(folder: Path, split: LabelledImages, indices: torch.Tensor, dataset: str) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = (denormalise(split.images[indices], DATASETS[dataset]) * 255).round().to(torch.uint8)
    for index, image in zip(indices.tolist(), pixels):
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(folder / f"{index:05d}.png")


def write_demo_hospitals(
    dataset: str,
    data_dir: str,
    out: Path,
    nodes: int,
    train_per_class: int,
    test_per_class: int,
    flat: bool = False,
    seed: int = 0,
) -> list[Path]:
    """One ImageFolder directory per demo hospital; returns their paths."""
    spec = DATASETS[dataset]
    paths = []
    for split_name, per_class in (("train", train_per_class), ("test", test_per_class)):
        if per_class == 0:
            continue
        split = load_split(dataset, data_dir, train=split_name == "train")
        generator = make_generator(seed, "demo-data", split_name)
        shares = class_shares(split.labels, spec.num_classes, nodes, per_class, generator, split_name)
        for name, share in zip(node_names(nodes), shares):
            root = Path(out) / name
            for c, indices in enumerate(share):
                folder = root / str(c) if flat else root / split_name / str(c)
                _write_pngs(folder, split, indices, dataset)
            if split_name == "train":
                paths.append(root)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", required=True, help="torchvision root of the dataset")
    parser.add_argument("--out", required=True, type=Path, help="directory to create the node folders in")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--flat", action="store_true", help="class folders without train/ and test/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.train_per_class < 1 or args.test_per_class < 0:
        parser.error("--nodes and --train-per-class must be >= 1, --test-per-class >= 0")
    per_class_test = 0 if args.flat else args.test_per_class
    train_per_class = args.train_per_class + (args.test_per_class if args.flat else 0)
    try:
        paths = write_demo_hospitals(
            args.dataset, args.data_dir, args.out, args.nodes, train_per_class, per_class_test, args.flat, args.seed
        )
    except ValueError as error:
        parser.error(str(error))
    for path in paths:
        print(f"wrote {path}")
    print(f"task declaration for --run-config: {task_declaration(args.dataset)}")


if __name__ == "__main__":
    main()
