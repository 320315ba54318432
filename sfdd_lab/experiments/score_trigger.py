"""A saved synthetic set scored with a trigger: clean accuracy (CTA) and attack success
rate (ASR) of fresh networks trained on it, with the run's own evaluation networks, seeds
and protocol. On an attacked run's set, its ASR with more networks than the run used; on
a clean run's set, the chance level an attack's ASR must be compared with.

    python -m sfdd_lab.experiments.score_trigger SET TRIGGER DATA_DIR [--num-eval 10]

SET is a run directory or a saved `synthetic_set*.pt`; TRIGGER an attack run's
`attack/trigger_client<id>.pt` (or `attack/round_XXXX/...` for an evaluated round), or a
folder of them (their mean: colluding clients). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

from sfdd_flwr.evaluation.protocol import mean_and_std

from .backdoor import score_with_trigger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfdd_lab.experiments.score_trigger",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("synthetic_set", help="run directory or synthetic_set*.pt")
    parser.add_argument("trigger", help="trigger file, or a folder of them (their mean)")
    parser.add_argument("data_dir", help="torchvision root holding the test split")
    parser.add_argument("--num-eval", type=int, default=None, help="networks (default: the run's num-eval)")
    args = parser.parse_args(argv)
    result = score_with_trigger(args.synthetic_set, args.trigger, args.data_dir, args.num_eval,
                                report=lambda text: print(text, flush=True))
    asr = result.scores["attack_success"]
    print(json.dumps({"set": args.synthetic_set, "trigger": args.trigger, "cta": mean_and_std(result.accuracies),
                      "asr": mean_and_std(asr), "asr_per_model": asr}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
