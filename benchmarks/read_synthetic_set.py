"""Which classes S's images look like to a network trained on real data.

    python benchmarks/read_synthetic_set.py DATA_DIR SET [SET ...] [--target 0] [--epochs 2]

SET is a run directory or a saved `synthetic_set*.pt`; all sets must share one dataset.
A ConvNet (width 32, seed 0) is trained on the real training split, its test accuracy
printed, and then, for each set, the class it reads for each of the target class's
synthetic images, and the share of all synthetic images read as their own label. A
backdoor carries into networks trained on S only if target-class images look like other
classes with the trigger (`benchmarks/backdoor_oracle.py`); this shows whether they do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfdd_flwr.artifacts import load_synthetic_set  # noqa: E402
from sfdd_flwr.config import Settings  # noqa: E402
from sfdd_flwr.data import load_split  # noqa: E402
from sfdd_flwr.models import NetworkSpec, build_network  # noqa: E402


def train_reader(dataset: str, data_dir: str, epochs: int) -> tuple[torch.nn.Module, float]:
    train, test = load_split(dataset, data_dir, train=True), load_split(dataset, data_dir, train=False)
    classes = int(train.labels.max()) + 1
    network = build_network(NetworkSpec(train.images.shape[1], classes, tuple(train.images.shape[2:]), width=32), seed=0)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        order = torch.randperm(len(train.labels), generator=generator)
        for start in range(0, len(order), 256):
            batch = order[start : start + 256]
            loss = F.cross_entropy(network(train.images[batch]), train.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"reader epoch {epoch + 1}/{epochs}", flush=True)
    network.eval()
    with torch.no_grad():
        accuracy = (network(test.images).argmax(1) == test.labels).float().mean().item()
    return network, accuracy


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("sets", nargs="+")
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    saved = [load_synthetic_set(path) for path in args.sets]
    datasets = {Settings.from_mapping(s.metadata["settings"]).dataset for s in saved}
    if len(datasets) != 1:
        parser.error(f"the sets come from different datasets: {sorted(datasets)}")
    reader, accuracy = train_reader(datasets.pop(), args.data_dir, args.epochs)
    print(f"reader test accuracy {100 * accuracy:.2f} %")
    for path, synthetic in zip(args.sets, saved):
        with torch.no_grad():
            read = reader(synthetic.images).argmax(1)
        target_reads = read[synthetic.labels == args.target].tolist()
        own = (read == synthetic.labels).float().mean().item()
        print(f"{path}: class-{args.target} images read as {target_reads}; all images read as their label: {100 * own:.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
