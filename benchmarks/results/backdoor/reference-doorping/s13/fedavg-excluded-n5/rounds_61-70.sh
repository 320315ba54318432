#!/bin/bash
# Session 13: the control fork (EXCLUDE=1 RUNS_DIR=... cpu_rounds.sh 50 60) continued in place
# from its round 60 to round 70 (a resume: the clients' momentum restarts at zero), then its
# round-70 set and trigger scored on ten networks. As run, this script spelled out the
# full_protocol.py command itself (after waiting for the round-60 scorings); cpu_rounds.sh
# with CONTINUE=1 builds the identical command.
set -eu
cd "$(dirname "$0")/../../../../../.." && . .venv/bin/activate
runs=${RUNS_DIR:-/tmp/scratch/s13/runs}; run=$runs/fedavg-excluded-n5
CONTINUE=1 EXCLUDE=1 RUNS_DIR=$runs benchmarks/results/backdoor/reference-doorping/s11/attack-n5/cpu_rounds.sh 60 70
C=benchmarks/results/backdoor/reference-doorping/gpu-h100/clean-n3; T=$run/attack/round_0070/trigger_client0.pt
OMP_NUM_THREADS=1 python benchmarks/clean_asr.py $run/synthetic_set_round_0070.pt $T /work/shared/datasets 10 > $run/score70_attacked.log 2>&1 &
OMP_NUM_THREADS=1 python benchmarks/clean_asr.py $C/synthetic_set_round_0060.pt $T /work/shared/datasets 10 > $run/score70_chance.log 2>&1 &
wait
{ tail -1 $run/score70_attacked.log; tail -1 $run/score70_chance.log; } >> $run/ten_networks.jsonl
