"""What a synthetic set must contain for a backdoor to carry into networks trained on it.

    python -m sfdd_lab.experiments.backdoor_oracle CLEAN_RUN_DIR DATA_DIR [--trigger FILE]
        [--counts 9,3,1] [--layouts target,others] [--eval-augment off,on] [--num-eval 3]
        [--out TABLE.md]

Takes a clean run's final S, plants a trigger in it by hand, and scores the planted set
with the run's own evaluation (same networks and seeds; `score_with_trigger`). It is an
upper bound for a distillation attack: a set the attack could at best produce.

Layouts (k = each entry of --counts):
- `target`: the trigger stamped on k of the target class's synthetic images.
- `others`: k of the target class's synthetic images replaced by trigger-stamped copies
  of one synthetic image from each of k other classes (what poisoned real images are:
  other classes' pictures, with the trigger, labelled as the target).

The trigger is the naive white patch unless --trigger names a saved trigger
(`attack/trigger_client<id>.pt`). Prints a Markdown table (and writes it to --out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sfdd_flwr.attacks.doorping.trigger import Trigger, initial_trigger, stamp
from sfdd_flwr.evaluation.protocol import mean_and_std
from sfdd_flwr.runs.artifacts import load_synthetic_set

from .backdoor import saved_settings, score_with_trigger

LAYOUTS = ("target", "others")


def planted_set(images: torch.Tensor, labels: torch.Tensor, trigger: Trigger, layout: str, count: int) -> torch.Tensor:
    """S's images with the trigger planted in `count` target-class slots (see the module doc)."""
    slots = (labels == trigger.target).nonzero().flatten()
    other_classes = [c for c in labels.unique().tolist() if c != trigger.target]
    if not 0 < count <= len(slots):
        raise ValueError(f"count {count}: the target class has {len(slots)} synthetic images")
    if layout == "others" and count > len(other_classes):
        raise ValueError(f"count {count}: layout 'others' has only {len(other_classes)} other classes")
    planted = images.clone()
    slots = slots[:count]
    if layout == "target":
        planted[slots] = stamp(images[slots], trigger)
    elif layout == "others":
        donors = torch.stack([(labels == c).nonzero().flatten()[0] for c in other_classes[:count]])
        planted[slots] = stamp(images[donors], trigger)
    else:
        raise ValueError(f"layout {layout!r}: allowed {', '.join(LAYOUTS)}")
    return planted


def comma_list(kind):
    def parse(text: str) -> list:
        return [kind(part) for part in text.split(",") if part]

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfdd_lab.experiments.backdoor_oracle", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("data_dir")
    parser.add_argument("--trigger", help="saved trigger file (default: the naive white patch)")
    parser.add_argument("--counts", type=comma_list(int), default=[9, 3, 1])
    parser.add_argument("--layouts", type=comma_list(str), default=list(LAYOUTS))
    parser.add_argument("--eval-augment", type=comma_list(str), default=["off"], help="off, on or auto, comma-separated")
    parser.add_argument("--num-eval", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    for layout in args.layouts:
        if layout not in LAYOUTS:
            parser.error(f"--layouts: {layout!r} is not one of {', '.join(LAYOUTS)}")

    saved = load_synthetic_set(args.run_dir)
    settings = saved_settings(args.run_dir)
    if args.trigger:
        trigger = Trigger.from_dict(torch.load(args.trigger, weights_only=True))
    else:
        trigger = initial_trigger(settings.dataset_spec, settings.doorping_trigger_size, settings.doorping_target,
                                  torch.Generator().manual_seed(0), white=True)
    rows = ["| layout | planted images | eval augmentation | CTA | ASR |", "| --- | --- | --- | --- | --- |"]

    def score(images: torch.Tensor | None, augment: str) -> tuple[str, str]:
        result = score_with_trigger(args.run_dir, trigger, args.data_dir, args.num_eval, images=images,
                                    overrides={"eval-augment": augment})
        (cta, cta_sd), (asr, asr_sd) = mean_and_std(result.accuracies), mean_and_std(result.scores["attack_success"])
        return f"{100 * cta:.2f} ± {100 * cta_sd:.2f} %", f"{100 * asr:.2f} ± {100 * asr_sd:.2f} %"

    cases = [("none", 0)] + [(layout, count) for layout in args.layouts for count in args.counts]
    for augment in args.eval_augment:
        for layout, count in cases:
            started = time.monotonic()
            images = None if count == 0 else planted_set(saved.images, saved.labels, trigger, layout, count)
            cta, asr = score(images, augment)
            rows.append(f"| {layout} | {count} | {augment} | {cta} | {asr} |")
            print(f"{rows[-1]}  ({time.monotonic() - started:.0f} s)", flush=True)
    table = "\n".join(rows) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
