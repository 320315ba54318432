#!/bin/bash
# Doorping at the paper's distillation scale (MNIST, IPC 10, batch-real 256, DC loops:
# outer 10 / inner 50, width 128, trigger steps <= 1000) on one GPU, three runs side by
# side, each stopped after TRAIN_SECONDS of rounds and then evaluated with the DC MNIST
# protocol (NUM_EVAL fresh ConvNets x 1000 epochs with augmentation; CTA and ASR):
#   attack-n3: 3 clients, client 0 runs Doorping, FedAvg (clients in parallel processes)
#   clean-n3:  the same federation, all honest (the CTA baseline)
#   attack-n1: the Doorping client alone (centralized Doorping, the original attack)
#   benchmarks/gpu_backdoor.sh DATA_DIR OUT_DIR [TRAIN_SECONDS] [NUM_EVAL] [JOB_TIMEOUT]
# EXTRA="key=value ..." adds settings to every run (e.g. to shrink a dry run on CPU, or
# EXTRA="eval-augment='off' eval-epochs=300" for Doorping's evaluation protocol; add
# "net-hidden=192" for the ConvNet of Doorping's reference code, "doorping-clamp=false" for
# its unclamped trigger).
# Uses benchmarks/full_protocol.py (the app's client code without Flower). Logs:
# OUT_DIR/<run>.log; runs (S, trigger, metrics, summary) in OUT_DIR/runs.
set -u
data_dir=${1:?data dir}; out=${2:?output dir}; train_seconds=${3:-400}; num_eval=${4:-5}; job_timeout=${5:-0}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
"$python" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available())" >> "$out/gpu.txt" 2>&1
# Unpack the archives once, before several processes read them.
"$python" -c "import sys; sys.path.insert(0, '.'); from sfdd_flwr.data import load_split; [load_split('mnist', sys.argv[1], train=t) for t in (True, False)]" "$data_dir" || exit 1
common="preset='paper-ipc10' data-dir='$data_dir' output-dir='$out/runs' eval-every=0 num-eval=$num_eval malicious-behaviour='doorping' ${EXTRA:-}"
pids=()
launch() {  # name clients malicious [extra flags]
  local name=$1 clients=$2 malicious=$3; shift 3
  local wrap=()
  if [ "$job_timeout" -gt 0 ]; then wrap=(timeout "$job_timeout"); fi
  ${wrap[@]+"${wrap[@]}"} "$python" benchmarks/full_protocol.py --max-train-seconds "$train_seconds" "$@" -c \
    "$common run-name='$name' min-clients=$clients malicious-clients='$malicious'" > "$out/$name.log" 2>&1 &
  pids+=($!)
}
launch attack-n3 3 0 --parallel-clients
launch clean-n3 3 "" --parallel-clients
launch attack-n1 1 0
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
