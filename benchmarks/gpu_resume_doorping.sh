#!/bin/bash
# Continue a reference-Doorping federation (benchmarks/gpu_backdoor.sh's attack-nK / clean-nK
# runs: MNIST, IPC 10, batch-real 16, inner loop 50, width 32, Doorping's ConvNet, unclamped
# trigger, 1 % poisoning, FedAvg) on the device machine from one of its evaluated rounds:
#   benchmarks/gpu_resume_doorping.sh RUN_DIR ROUND [TRAIN_SECONDS] [JOB_TIMEOUT]
# RUN_DIR (in the copied working tree) holds synthetic_set_round_XXXX.pt of ROUND and, for an
# attack run, that round's trigger: attack/round_XXXX/trigger_client0.pt (kept by the
# recorder), or trigger_round_ROUND.pt (kept by hand in earlier sessions). Runs in $OUT,
# then packs everything into $OUT/<run>.tgz: the device returns only a few files, so S and
# the trigger come back only inside the archive. .gpudata/MNIST/raw: the MNIST archives.
set -u
source=${1:?run dir}; round=${2:?round}; padded=$(printf %04d "$round")
name=$(basename "$source"); run=$OUT/runs/$name
if ! [[ $name =~ ^(attack|clean)-n[0-9]+$ ]]; then
  echo "$source: the run directory must be named attack-nK or clean-nK (K clients)" >&2; exit 2
fi
mkdir -p "$OUT/runs" && cp -a "$source" "$run" || exit 1
cp "$run/synthetic_set_round_$padded.pt" "$run/synthetic_set.pt" || exit 1
case $name in
  attack-n*)
    mkdir -p "$run/attack"
    for trigger in "$run/attack/round_$padded/trigger_client0.pt" "$run/trigger_round_$round.pt" ""; do
      [ -f "$trigger" ] && break
    done
    if [ -z "$trigger" ]; then echo "no trigger of round $round in $source" >&2; exit 1; fi
    cp "$trigger" "$run/attack/trigger_client0.pt" ;;
esac
RUNS="$name" BASE="preset='' dataset='mnist' seed=0 ipc=10 batch-real=16 inner-loop=50 net-width=32 net-hidden=192 num-server-rounds=300" \
EXTRA="eval-every=10 eval-epochs=300 eval-augment='off' doorping-clamp=false doorping-poison-fraction=0.01 resume-from='$run'" \
  benchmarks/gpu_backdoor.sh "$PWD/.gpudata" "$OUT/logs" "${3:-500}" 3 "${4:-575}"
echo "exit $?"; tail -5 "$OUT/logs/$name.log"
tar czf "$OUT/$name.tgz" -C "$OUT" runs logs && rm -rf "$OUT/runs" "$OUT/logs"
ls -la "$OUT"
