#!/bin/bash
# Session 16 wrote this, session 17 ran it: ten evaluation networks at round 40 for
# run.sh's run: its S with its own round-40 trigger, and the chance level (the same
# trigger on the clean 3-client twin's round-40 S, gpu-h100/clean-n3: a set that never saw
# a poisoned image). Both scorings at once, one thread each; one JSON line each in
# ten_networks.jsonl, attacked S first.
set -eu
cd "$(dirname "$0")/../../../../../.." && . .venv/bin/activate
runs=${RUNS_DIR:-/tmp/scratch/s16/runs}; here=benchmarks/results/backdoor/reference-doorping/s16/clamped-n3
C=benchmarks/results/backdoor/reference-doorping/gpu-h100/clean-n3/synthetic_set_round_0040.pt
T=$runs/dp-clamp-n3/attack/round_0040/trigger_client0.pt
score() { OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/clean_asr.py "$1" "$2" /work/shared/datasets 10 > "$3" 2>&1; }
score $runs/dp-clamp-n3/synthetic_set_round_0040.pt $T $runs/dp-clamp-n3-attacked.log &
score $C $T $runs/dp-clamp-n3-chance.log &
wait
for kind in attacked chance; do tail -n 1 $runs/dp-clamp-n3-$kind.log; done > $here/ten_networks.jsonl
