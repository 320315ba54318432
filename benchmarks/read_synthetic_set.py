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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfdd_flwr.artifacts import load_synthetic_set  # noqa: E402
from sfdd_flwr.config import Settings  # noqa: E402
from sfdd_flwr.data import load_split  # noqa: E402
from sfdd_flwr.distill import train_network_epoch  # noqa: E402
from sfdd_flwr.evaluate import test_accuracy  # noqa: E402
from sfdd_flwr.models import NetworkSpec, build_network  # noqa: E402


def train_reader(settings: Settings, data_dir: str, epochs: int) -> tuple[torch.nn.Module, float]:
    train = load_split(settings.dataset, data_dir, train=True)
    spec = settings.dataset_spec
    network = build_network(NetworkSpec(spec.channels, spec.num_classes, spec.image_size, width=32), seed=0)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        train_network_epoch(network, optimizer, train.images, train.labels, 256, generator)
        print(f"reader epoch {epoch + 1}/{epochs}", flush=True)
    accuracy = test_accuracy(network, load_split(settings.dataset, data_dir, train=False))
    return network, accuracy


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("sets", nargs="+")
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    saved = [load_synthetic_set(path) for path in args.sets]
    settings = [s.settings() for s in saved]
    datasets = {s.dataset for s in settings}
    if len(datasets) != 1:
        parser.error(f"the sets come from different datasets: {sorted(datasets)}")
    reader, accuracy = train_reader(settings[0], args.data_dir, args.epochs)
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
