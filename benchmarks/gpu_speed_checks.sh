#!/bin/bash
# The GPU figures of the speed and methods work, in one short run on one GPU, one after
# the other (nothing shares the GPU):
#   1. the paper's MNIST IPC-10 protocol (5 clients, batch-real 256) with vectorised
#      matching, stopped after TRAIN_SECONDS of rounds and evaluated (NUM_EVAL ConvNets,
#      DC's MNIST protocol): seconds per round, extrapolated to 1000 rounds;
#   2. seconds per local update, per-class loop against vectorised matching, at IPC 1 /
#      batch-real 64, IPC 10 / 256 and IPC 50 / 256 (benchmarks/matching_speed.py);
#   3. DM at the methods table's paper protocol (MNIST, IPC 10, 5 clients, 20 DM steps a
#      round), stopped after DM_TRAIN_SECONDS and evaluated the same way (DM's protocol:
#      1000 epochs with DSA).
#   benchmarks/gpu_speed_checks.sh DATA_DIR OUT_DIR [TRAIN_SECONDS] [NUM_EVAL] [DM_TRAIN_SECONDS]
# OUT_DIR must not hold the runs of an earlier call (a new run refuses a folder that holds one).
# Runs from the repository root with only torch installed (sfdd_lab.full_protocol needs
# no flwr). Logs: OUT_DIR/*.log; each run's summary.json under OUT_DIR/runs.
set -u
data_dir=${1:?data dir}; out=${2:?output dir}; train_seconds=${3:-150}; num_eval=${4:-5}; dm_train_seconds=${5:-90}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
"$python" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available())" \
  >> "$out/gpu.txt" 2>&1
common="data-dir='$data_dir' output-dir='$out/runs' eval-every=0 num-eval=$num_eval"
"$python" -m sfdd_lab.full_protocol --max-train-seconds "$train_seconds" -c \
  "preset='paper-ipc10' vectorised-matching=true run-name='dc-ipc10-vectorised' $common" > "$out/dc_ipc10.log" 2>&1
"$python" benchmarks/matching_speed.py --device cuda --repeats 2 --data-dir "$data_dir" > "$out/matching_speed.log" 2>&1
"$python" -m sfdd_lab.full_protocol --max-train-seconds "$dm_train_seconds" -c \
  "preset='methods-paper' method='distribution-matching' eval-augment='dsa' ipc=10 run-name='dm-ipc10' $common" \
  > "$out/dm_ipc10.log" 2>&1
