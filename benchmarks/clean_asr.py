"""ASR of a clean run's S under an attack run's trigger: the chance level an attack's ASR
must be compared with (same evaluation networks, seeds and protocol as the run's own).

    python benchmarks/clean_asr.py CLEAN_RUN_DIR TRIGGER_FILE DATA_DIR [NUM_EVAL]

TRIGGER_FILE is an attack run's `attack/trigger_client<id>.pt`; NUM_EVAL (default: the
clean run's `num-eval`) evaluates the first models only. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfdd_flwr.artifacts import load_synthetic_set  # noqa: E402
from sfdd_flwr.attacks.backdoor import Trigger, attack_success_rate  # noqa: E402
from sfdd_flwr.config import Settings  # noqa: E402
from sfdd_flwr.data import load_split  # noqa: E402
from sfdd_flwr.distill import synthetic_labels  # noqa: E402
from sfdd_flwr.evaluate import evaluate_synthetic_set, mean_and_std  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    clean_dir, trigger_file, data_dir = argv[:3]
    trigger = Trigger.from_dict(torch.load(trigger_file, weights_only=True))
    saved = load_synthetic_set(clean_dir)
    values = dict(saved.metadata["settings"])
    if len(argv) == 4:
        values["num-eval"] = int(argv[3])
    settings = Settings.from_mapping(values)
    test = load_split(settings.dataset, data_dir, train=False)
    result = evaluate_synthetic_set(
        saved.images, synthetic_labels(settings.dataset_spec.num_classes, settings.ipc), test,
        settings.network_spec, settings.eval_params, settings.seed, saved.round,
        progress=lambda text: print(text, flush=True), progress_seconds=60,
        score_trigger=lambda network: attack_success_rate(network, test, trigger),
    )
    print(json.dumps({"clean_run": clean_dir, "trigger": trigger_file, "round": saved.round,
                      "cta": mean_and_std(result.accuracies), "asr": mean_and_std(result.attack_success),
                      "asr_per_model": result.attack_success}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
