#!/bin/bash
# Session 13: the control fork continued from its round 60 to round 70 (resume: client momentum restarts).
cd /work/main && . .venv/bin/activate
while pgrep -f "clean_asr.py /tmp/scratch/s13/runs/fedavg-excluded-n5" > /dev/null || [ ! -s /tmp/scratch/s13/runs/fedavg-excluded-n5/ten_networks.jsonl ]; do sleep 10; done
runs=/tmp/scratch/s13/runs; run=$runs/fedavg-excluded-n5
common="preset='' dataset='mnist' data-dir='/work/shared/datasets' output-dir='$runs' seed=0 ipc=10 num-server-rounds=70 batch-real=16 inner-loop=50 net-width=32 net-hidden=192 num-eval=3 eval-epochs=300 eval-augment='off' eval-every=10 min-clients=5"
attack="doorping-poison-fraction=0.01 malicious-clients='0' malicious-behaviour='doorping' doorping-clamp=false doorping-collude=false"
OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 python benchmarks/full_protocol.py --parallel-clients --exclude-malicious-updates -c "$common run-name='fedavg-excluded-n5' aggregator='fedavg' $attack resume-from='$run'"
C=benchmarks/results/backdoor/reference-doorping/gpu-h100/clean-n3; T=$run/attack/round_0070/trigger_client0.pt
OMP_NUM_THREADS=1 python benchmarks/clean_asr.py $run/synthetic_set_round_0070.pt $T /work/shared/datasets 10 > $run/score70_attacked.log 2>&1 &
OMP_NUM_THREADS=1 python benchmarks/clean_asr.py $C/synthetic_set_round_0060.pt $T /work/shared/datasets 10 > $run/score70_chance.log 2>&1 &
wait
{ tail -1 $run/score70_attacked.log; tail -1 $run/score70_chance.log; } >> $run/ten_networks.jsonl
