#!/bin/bash
# Long-horizon probe (CPU, one thread each): does the backdoor take with more rounds?
cd /work/main && . .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
common="preset='' dataset='mnist' data-dir='/work/shared/datasets' output-dir='/tmp/scratch/long/runs' seed=0 ipc=10 num-server-rounds=200 batch-real=16 inner-loop=5 net-width=32 min-clients=1 num-eval=3 eval-epochs=300 eval-every=50 doorping-trigger-steps=100"
python benchmarks/full_protocol.py -c "$common run-name='doorping-n1' malicious-clients='0' malicious-behaviour='doorping'" > /tmp/scratch/long/doorping-n1.log 2>&1 &
python benchmarks/full_protocol.py -c "$common run-name='naive10-n1' malicious-clients='0' malicious-behaviour='naive-backdoor' doorping-poison-fraction=0.1" > /tmp/scratch/long/naive10-n1.log 2>&1 &
python benchmarks/full_protocol.py -c "$common run-name='clean-n1'" > /tmp/scratch/long/clean-n1.log 2>&1 &
wait
