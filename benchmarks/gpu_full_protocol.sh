#!/bin/bash
# The paper's full protocol (MNIST, 5 clients, batch-real 256, 1000 rounds) at IPC 1 and
# IPC 10 on one GPU, both runs side by side, each stopped after TRAIN_SECONDS of rounds
# and then evaluated (NUM_EVAL fresh ConvNets x 1000 epochs, the DC MNIST protocol).
#   benchmarks/gpu_full_protocol.sh DATA_DIR OUT_DIR [TRAIN_SECONDS] [NUM_EVAL]
# Uses python -m sfdd_lab.full_protocol (the app code without Flower; run from the repository root), so it runs where
# only torch is installed. Logs: OUT_DIR/ipc1.log, OUT_DIR/ipc10.log; runs in OUT_DIR/runs.
set -u
data_dir=${1:?data dir}; out=${2:?output dir}; train_seconds=${3:-300}; num_eval=${4:-20}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
"$python" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available())" >> "$out/gpu.txt" 2>&1
for ipc in 1 10; do
  "$python" -m sfdd_lab.full_protocol --max-train-seconds "$train_seconds" -c \
    "preset='paper-ipc$ipc' data-dir='$data_dir' output-dir='$out/runs' run-name='mnist-ipc$ipc' eval-every=0 num-eval=$num_eval" \
    > "$out/ipc$ipc.log" 2>&1 &
done
wait
