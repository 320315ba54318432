#!/bin/bash
# Session 15: session 8's dp-noclamp-n1 (the attacker alone, Doorping's reference network,
# 1 % poisoning: ASR 100 % at round 40 with an unclamped trigger) with one change: the
# trigger is clamped to the valid pixel range, as the issue asks (doorping-clamp=true, the
# default). If the attack cannot reach 70 % here, with no honest clients to dilute it, it
# cannot as 1 client of 3. CLAMP=false runs the unclamped twin (session 8's settings) into
# dp-noclamp-n1: this machine's floats differ from session 8's (its round-1 matching loss
# is 140.674 against 140.595), so the pair is re-run side by side on one machine.
# From round 0 on the 2-core CPU, one thread each. Run from anywhere; RUNS_DIR (default
# /tmp/scratch/s15/runs) receives the run; RESUME=1 continues it; LAST (default 60) is
# the last round.
set -eu
cd "$(dirname "$0")/../../../../../.." && . .venv/bin/activate
runs=${RUNS_DIR:-/tmp/scratch/s15/runs}; clamp=${CLAMP:-true}
name=dp-clamp-n1; [ "$clamp" = true ] || name=dp-noclamp-n1
common="preset='' dataset='mnist' data-dir='/work/shared/datasets' output-dir='$runs' seed=0 ipc=10 \
  num-server-rounds=${LAST:-60} batch-real=16 inner-loop=50 net-width=32 net-hidden=192 num-eval=3 eval-epochs=300 \
  eval-augment='off' eval-every=10 min-clients=1"
attack="doorping-poison-fraction=0.01 malicious-clients='0' malicious-behaviour='doorping' doorping-clamp=$clamp"
resume=""; [ -z "${RESUME:-}" ] || resume="resume-from='$runs/$name'"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1 python benchmarks/full_protocol.py -c "$common run-name='$name' $attack $resume"
