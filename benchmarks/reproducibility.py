"""Two `flwr run` simulations with the same settings must give the same S and accuracies.

    python benchmarks/reproducibility.py --data-dir /path/to/datasets

Default: the quickstart preset shortened to 5 rounds with 2 evaluation models x 50
epochs. Prints the max |difference| of the synthetic images and both accuracy lists.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from sfdd_lab.launch import LocalSuperLink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--run-config", default="num-server-rounds=5 num-eval=2 eval-epochs=50")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        for name in ("first", "second"):
            with LocalSuperLink(Path(tmp) / name) as link:
                result = link.run(
                    f"preset='quickstart' data-dir='{args.data_dir}' output-dir='{out}' run-name='{name}' "
                    f"min-clients={args.clients} {args.run_config}",
                    num_supernodes=args.clients,
                )
            if result.returncode != 0:
                raise SystemExit(result.stdout + result.stderr)
            saved = torch.load(out / name / "synthetic_set.pt", weights_only=True)
            metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
            results.append((saved["images"], [m.get("accuracies") for m in metrics if "accuracies" in m]))
    (first_images, first_acc), (second_images, second_acc) = results
    difference = float((first_images - second_images).abs().max())
    print(f"max |S_first - S_second| = {difference:.3g} (bit-identical: {torch.equal(first_images, second_images)})")
    print(f"accuracies first:  {first_acc}")
    print(f"accuracies second: {second_acc}")
    print("REPRODUCIBLE" if difference < 1e-6 and first_acc == second_acc else "NOT REPRODUCIBLE")


if __name__ == "__main__":
    main()
