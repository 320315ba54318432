"""Run the curious-server leakage attack on a saved client update.

    python -m sfdd_lab.attacks.leak UPDATE.pt --dataset mnist --out DIR [--adaptive]

UPDATE.pt holds what the server saw (S before the round, the client's S_i), the client's
network at that step and its hyperparameters (see `save_observed_update`; the privacy
experiment writes such files). Writes `reconstruction.pt`, `scores.json` and, when the
file carries the ground truth, `comparison.png` (truth above reconstruction).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sfdd_flwr.data.datasets import DATASETS
from sfdd_flwr.seeding import make_generator

from .leakage import BOX_MODES, OPTIMISERS, AttackParams, load_observed_update, reconstruct, save_comparison, score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfdd_lab.attacks.leak", description=__doc__.splitlines()[0])
    parser.add_argument("update", type=Path, help="observed-update file (.pt)")
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="for normalisation and pixel range")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--optimiser", choices=OPTIMISERS, default="lbfgs")
    parser.add_argument("--iterations", type=int, default=20, help="optimiser steps per class (L-BFGS: x up to 20 evaluations)")
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--adaptive", action="store_true", help="also learn each class's soft label")
    parser.add_argument("--no-box", action="store_true", help="do not restrict dummies to the valid pixel range")
    parser.add_argument("--box-mode", choices=BOX_MODES, default="clip",
                        help="clip: optimise freely, clip the result to the pixel range; sigmoid: keep every iterate inside")
    parser.add_argument("--tv-weight", type=float, default=0.0,
                        help="weight of a total-variation image prior (0 = the plain DLG objective)")
    parser.add_argument("--restarts", type=int, default=0,
                        help="extra random starts for a class whose relative replay loss stays above --restart-above")
    parser.add_argument("--restart-above", type=float, default=0.01)
    parser.add_argument("--stop-below", type=float, default=0.002,
                        help="end a start early once its relative replay loss is below this (0 = run all iterations)")
    parser.add_argument("--classes", default="", help="attack only these classes, e.g. '0,3'")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.update.is_file():
        print(f"sfdd-flwr: no such update file: {args.update}", file=sys.stderr)
        return 2
    spec = DATASETS[args.dataset]
    observed, payload = load_observed_update(args.update)
    classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    box = None if args.no_box else pixel_box(args.dataset)
    params = AttackParams(
        args.optimiser, args.iterations, args.lr, args.adaptive, box=box, box_mode=args.box_mode, tv_weight=args.tv_weight,
        restarts=args.restarts, restart_above=args.restart_above, stop_below=args.stop_below,
    )
    result = reconstruct(observed, params, make_generator(args.seed, "leakage-attack"),
                         progress=lambda text: print(text, flush=True), classes=classes)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"images": result.images, "soft_labels": result.soft_labels, "classes": classes}, args.out / "reconstruction.pt")
    report = {"seconds": result.seconds, "replay_loss": result.final_loss}
    if "truth" in payload:
        truth = payload["truth"] if classes is None else payload["truth"][classes]
        scores = score(result.images, truth, spec)
        report |= {"mse_normalised": scores.mse_normalised, "mse_pixel": scores.mse_pixel, "psnr": scores.psnr}
        save_comparison(result.images, truth, spec, args.out / "comparison.png")
        print(f"MSE (normalised) {scores.mse_normalised:.4f}, MSE (pixels) {scores.mse_pixel:.4f}, PSNR {scores.psnr:.2f} dB")
    (args.out / "scores.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"outputs in {args.out}")
    return 0


def pixel_box(dataset: str) -> tuple[float, float]:
    """The normalised values of black and white (one range for all channels: their union)."""
    spec = DATASETS[dataset]
    lows = [(0 - m) / s for m, s in zip(spec.mean, spec.std)]
    highs = [(1 - m) / s for m, s in zip(spec.mean, spec.std)]
    return min(lows), max(highs)


if __name__ == "__main__":
    sys.exit(main())
