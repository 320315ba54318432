#!/bin/bash
# Session 16 wrote this, session 17 ran it: the acceptance setting itself with the issue's
# clamp. Session 8's dp-noclamp-n3 (FedAvg, 3 IID clients, client 0 runs Doorping at 1 %,
# Doorping's reference network, DC's inner loop: 63 % at round 40 with an unclamped
# trigger) with one change: doorping-clamp=true (the default), the trigger kept in the
# valid pixel range. The three clients in parallel processes, one thread each, on the
# 2-core CPU. Run from anywhere; RUNS_DIR (default /tmp/scratch/s16/runs) receives the
# run; RESUME=1 continues it; LAST (default 40) is the last round.
set -eu
cd "$(dirname "$0")/../../../../../.." && . .venv/bin/activate
runs=${RUNS_DIR:-/tmp/scratch/s16/runs}; name=dp-clamp-n3
common="preset='' dataset='mnist' data-dir='/work/shared/datasets' output-dir='$runs' seed=0 ipc=10 \
  num-server-rounds=${LAST:-40} batch-real=16 inner-loop=50 net-width=32 net-hidden=192 num-eval=3 eval-epochs=300 \
  eval-augment='off' eval-every=10 min-clients=3"
attack="doorping-poison-fraction=0.01 malicious-clients='0' malicious-behaviour='doorping' doorping-clamp=true"
resume=""; [ -z "${RESUME:-}" ] || resume="resume-from='$runs/$name'"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1 python benchmarks/full_protocol.py --parallel-clients -c "$common run-name='$name' $attack $resume"
