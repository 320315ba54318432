"""Accuracy stage of sfdd_flwr.experiments.privacy (Tables 4/5), run on its own.

Same settings as the experiment's accuracy stage with --rounds 20 --num-eval 3
--eval-epochs 300 (DC ConvNet); LocalDP noise multiplier = matched noise / security clip,
the matched noise (0.03) taken from the experiment's calibration."""
import json
import statistics
import sys
from pathlib import Path

from sfdd_flwr.config import Settings
from sfdd_flwr.data import PartitionRequest, load_partition
from sfdd_flwr.experiments.privacy import NUM_CLIENTS, security_settings, sfdd_accuracy, update_norms
from sfdd_flwr.launch import LocalSuperLink

data_dir, out, matched = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
dataset, seed, rounds, num_eval, epochs = "mnist", 0, 20, 3, 300
partitions = [load_partition(PartitionRequest(dataset, data_dir, c, NUM_CLIENTS, seed=seed)) for c in range(NUM_CLIENTS)]
base = security_settings(dataset, data_dir, 128, 1, seed)
clip = statistics.median(r["update_norm"] for r in update_norms(base, partitions, [0, 1, 2]))
accuracy_base = Settings.from_mapping({"preset": "quickstart", "dataset": dataset, "data-dir": data_dir, "seed": seed, "persist-momentum": False})
accuracy_clip = statistics.median(r["update_norm"] for r in update_norms(accuracy_base, partitions, [0, 1, 2]))
accuracy_noise = matched / clip * accuracy_clip
print(json.dumps({"security_clip": clip, "accuracy_clip": accuracy_clip, "accuracy_noise": accuracy_noise}), flush=True)
common = (f"preset='quickstart' dataset='{dataset}' data-dir='{data_dir}' output-dir='{out / dataset / 'runs'}' "
          f"seed={seed} num-server-rounds={rounds} num-eval={num_eval} eval-epochs={epochs}")
workdir = out / dataset
with LocalSuperLink(workdir / "superlink") as link:
    acc = {
        "ldpo-rld": sfdd_accuracy(link, common + f" defence='ldpo-rld' ldpo-alpha={Settings.ldpo_alpha} ldpo-k={Settings.ldpo_k}", workdir, "ldpo-rld"),
        "local-dp": sfdd_accuracy(link, common + f" defence='local-dp' local-dp-clip={accuracy_clip} local-dp-noise={accuracy_noise}", workdir, f"local-dp-noise{matched:g}"),
        "none": sfdd_accuracy(link, common, workdir, "none"),
    }
print(json.dumps({k: (v["final_accuracy_mean"], v["final_accuracy_std"]) for k, v in acc.items()}), flush=True)
