#!/bin/bash
# Session 10, on the device machine (H100), from the repository root, $OUT its output folder:
#   benchmarks/results/backdoor/reference-doorping/gpu-h100-s10/resume_attack_n5.sh 470 545
# The 5-client FedAvg Doorping run of session 9 (gpu-h100/attack-n5), resumed from its
# round-8 set and trigger for TRAIN_SECONDS of rounds. .gpudata/MNIST/raw: the MNIST archives.
# As run in session 10 this script lacked the final tar line, and the device tool returns
# only a few files, so the round-25 set and trigger were lost (metrics, log and grid came back).
set -u
run=$OUT/runs/attack-n5
mkdir -p "$OUT/runs" && cp -a benchmarks/results/backdoor/reference-doorping/gpu-h100/attack-n5 "$run"
cp "$run/synthetic_set_round_0008.pt" "$run/synthetic_set.pt"
mkdir -p "$run/attack" && cp "$run/trigger_round_8.pt" "$run/attack/trigger_client0.pt"
RUNS="attack-n5" BASE="preset='' dataset='mnist' seed=0 ipc=10 batch-real=16 inner-loop=50 net-width=32 net-hidden=192 num-server-rounds=300" \
EXTRA="eval-every=10 eval-epochs=300 eval-augment='off' doorping-clamp=false doorping-poison-fraction=0.01 resume-from='$run'" \
  benchmarks/gpu_backdoor.sh "$PWD/.gpudata" "$OUT/logs" "${1:-480}" 3 "${2:-550}"
echo "exit $?"; tail -5 "$OUT/logs/attack-n5.log"; rm -f "$run/synthetic_set_round_0008.pt"
tar czf "$OUT/attack-n5.tgz" -C "$OUT" runs logs && rm -rf "$OUT/runs" "$OUT/logs"
