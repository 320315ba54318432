"""ASR of a clean run's S under an attack run's trigger: the chance level an attack's ASR
must be compared with (same evaluation networks, seeds and protocol as the run's own).

    python benchmarks/clean_asr.py CLEAN_RUN_DIR TRIGGER_FILE DATA_DIR [NUM_EVAL]

TRIGGER_FILE is an attack run's `attack/trigger_client<id>.pt`, or a folder of them (their
mean: colluding clients, `doorping-collude`); NUM_EVAL (default: the clean run's `num-eval`)
evaluates the first models only. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfdd_flwr.evaluate import mean_and_std  # noqa: E402
from sfdd_flwr.experiments.backdoor import score_with_trigger  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    clean_dir, trigger_file, data_dir = argv[:3]
    num_eval = int(argv[3]) if len(argv) == 4 else None
    result = score_with_trigger(clean_dir, trigger_file, data_dir, num_eval, report=lambda text: print(text, flush=True))
    print(json.dumps({"clean_run": clean_dir, "trigger": trigger_file, "cta": mean_and_std(result.accuracies),
                      "asr": mean_and_std(result.attack_success), "asr_per_model": result.attack_success}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
