#!/bin/bash
# Doorping federations on one GPU, several runs side by side, each stopped after
# TRAIN_SECONDS of rounds and then evaluated (NUM_EVAL fresh ConvNets; CTA and ASR).
#   benchmarks/gpu_backdoor.sh DATA_DIR OUT_DIR [TRAIN_SECONDS] [NUM_EVAL] [JOB_TIMEOUT]
# RUNS names the runs (default "attack-n3 clean-n3 attack-n1"): attack-nK is K clients of
# which client 0 runs Doorping, clean-nK the same federation all honest; K > 1 runs each
# client in its own process on the shared GPU (FedAvg).
# BASE holds the distillation settings (default "preset='paper-ipc10'": MNIST, IPC 10,
# batch-real 256, DC loops outer 10 / inner 50, width 128, trigger steps <= 1000, the DC
# evaluation of 1000 epochs with augmentation, once at the end).
# EXTRA="key=value ..." adds settings to every run and wins over BASE and this script's own
# (e.g. EXTRA="eval-augment='off' eval-epochs=300" for Doorping's evaluation protocol,
# "net-hidden=192" for the ConvNet of Doorping's reference code, "doorping-clamp=true" for a
# trigger kept in the pixel range, "eval-every=10" for evaluations during the run).
# Uses python -m sfdd_lab.full_protocol (the app code without Flower; run from the repository root). Logs:
# OUT_DIR/<run>.log; runs (S, trigger, metrics, summary) in OUT_DIR/runs.
set -u
data_dir=${1:?data dir}; out=${2:?output dir}; train_seconds=${3:-400}; num_eval=${4:-5}; job_timeout=${5:-0}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
"$python" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available())" >> "$out/gpu.txt" 2>&1
# Unpack the archives once, before several processes read them.
"$python" -c "import sys; from sfdd_flwr.data.datasets import load_split; [load_split('mnist', sys.argv[1], train=t) for t in (True, False)]" "$data_dir" || exit 1
common="${BASE:-preset='paper-ipc10'} data-dir='$data_dir' output-dir='$out/runs' eval-every=0 num-eval=$num_eval malicious-behaviour='doorping'"
pids=()
for name in ${RUNS:-attack-n3 clean-n3 attack-n1}; do
  case $name in
    attack-n[0-9]*) clients=${name#attack-n}; malicious=0 ;;
    clean-n[0-9]*) clients=${name#clean-n}; malicious="" ;;
    *) echo "run name $name is not attack-nK or clean-nK" >&2; exit 2 ;;
  esac
  flags=(--max-train-seconds "$train_seconds")
  if [ "$clients" -gt 1 ]; then flags+=(--parallel-clients); fi
  wrap=()
  if [ "$job_timeout" -gt 0 ]; then wrap=(timeout "$job_timeout"); fi
  ${wrap[@]+"${wrap[@]}"} "$python" -m sfdd_lab.full_protocol "${flags[@]}" \
    -c "$common run-name='$name' min-clients=$clients malicious-clients='$malicious'" -c "${EXTRA:-}" \
    > "$out/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
