#!/bin/bash
# Session 13: the 3-client FedAvg Doorping run (doorping-n3), forked from its kept round-40 state
# (S and trigger; the backdoor is there: 51.9 % on ten networks) to round 50 with the attacker's
# S_i never aggregated. Session 9 resumed the FedAvg run from the same round-40 state.
# Run from anywhere; RUNS_DIR (default /tmp/scratch/s13/runs) receives the run.
set -eu
cd "$(dirname "$0")/../../../../../.." && . .venv/bin/activate
kept=benchmarks/results/backdoor/reference-doorping/doorping-n3
runs=${RUNS_DIR:-/tmp/scratch/s13/runs}; run=$runs/fedavg-excluded-n3
mkdir -p $run/attack && cp $kept/config_resumed.yaml $run/config.yaml && cp $kept/metrics.jsonl $run/
cp $kept/synthetic_set_round_0040.pt $run/synthetic_set.pt && cp $kept/trigger_round_40.pt $run/attack/trigger_client0.pt
common="preset='' dataset='mnist' data-dir='/work/shared/datasets' output-dir='$runs' seed=0 ipc=10 num-server-rounds=50 batch-real=16 inner-loop=50 net-width=32 net-hidden=192 num-eval=3 eval-epochs=300 eval-augment='off' eval-every=10 min-clients=3"
attack="doorping-poison-fraction=0.01 malicious-clients='0' malicious-behaviour='doorping' doorping-clamp=false"
OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 python benchmarks/full_protocol.py --parallel-clients --exclude-malicious-updates -c "$common run-name='fedavg-excluded-n3' $attack resume-from='$run'"
C=benchmarks/results/backdoor/reference-doorping/gpu-h100/clean-n3; T=$run/attack/round_0050/trigger_client0.pt
OMP_NUM_THREADS=1 python benchmarks/clean_asr.py $run/synthetic_set_round_0050.pt $T /work/shared/datasets 10 > $run/score_attacked.log 2>&1 &
OMP_NUM_THREADS=1 python benchmarks/clean_asr.py $C/synthetic_set_round_0050.pt $T /work/shared/datasets 10 > $run/score_chance.log 2>&1 &
wait
{ tail -1 $run/score_attacked.log; tail -1 $run/score_chance.log; } > $run/ten_networks.jsonl
