#!/bin/bash
# Session 15: ten evaluation networks at round 60 for both runs of run.sh: each run's S with
# its own round-60 trigger, and the chance level (the same trigger on the clean 3-client
# twin's round-60 S, gpu-h100/clean-n3: a set that never saw a poisoned image). Two
# scorings at a time, one thread each; one JSON line each in ten_networks.jsonl, in order.
set -eu
cd "$(dirname "$0")/../../../../../.." && . .venv/bin/activate
runs=${RUNS_DIR:-/tmp/scratch/s15/runs}; here=benchmarks/results/backdoor/reference-doorping/s15/clamped-n1
C=benchmarks/results/backdoor/reference-doorping/gpu-h100/clean-n3/synthetic_set_round_0060.pt
score() { OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/clean_asr.py "$1" "$2" /work/shared/datasets 10 > "$3" 2>&1; }
for name in dp-clamp-n1 dp-noclamp-n1; do
  T=$runs/$name/attack/round_0060/trigger_client0.pt
  score $runs/$name/synthetic_set_round_0060.pt $T $runs/$name-attacked.log &
  score $C $T $runs/$name-chance.log &
  wait
done
for name in dp-clamp-n1 dp-noclamp-n1; do tail -n 1 $runs/$name-attacked.log; tail -n 1 $runs/$name-chance.log; done > $here/ten_networks.jsonl
