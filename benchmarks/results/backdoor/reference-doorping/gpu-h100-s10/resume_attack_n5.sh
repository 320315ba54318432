#!/bin/bash
# Session 10, on the device machine (H100), from the repository root, $OUT its output folder:
#   benchmarks/results/backdoor/reference-doorping/gpu-h100-s10/resume_attack_n5.sh 470 545
# The 5-client FedAvg Doorping run of session 9 (gpu-h100/attack-n5), resumed from its
# round-8 set and trigger for TRAIN_SECONDS of rounds. .gpudata/MNIST/raw: the MNIST archives.
# As run in session 10 the script held these steps itself and lacked the final packing, and
# the device tool returns only a few files, so the round-25 set and trigger were lost
# (metrics, log and grid came back). The same steps, with the packing, are now
# benchmarks/gpu_resume_doorping.sh (session 11).
exec benchmarks/gpu_resume_doorping.sh benchmarks/results/backdoor/reference-doorping/gpu-h100/attack-n5 8 "${1:-480}" "${2:-550}"
