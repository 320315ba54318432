#!/bin/bash
# Session 11: the 5-client FedAvg Doorping run on the 2-core CPU, resumed from a kept round
# and run to LAST_ROUND:  cpu_rounds.sh 31 50  (as run: rounds 32-50 from the H200's round-31
# set and trigger), then  cpu_rounds.sh 50 70  (rounds 51-70). Run from anywhere; RUNS_DIR
# (default /tmp/scratch/s11/runs) receives the run. The lines before `common=` rebuild the
# state the run started from out of this directory (in session 11 the runs continued in place);
# the last lines are the command as run. Session 12 forks the same kept round (50 -> 70):
# AGGREGATOR=median (or trimmed-mean, krum, multi-krum) runs it into RUNS_DIR/<aggregator>-n5;
# MALICIOUS='0,1' makes those clients colluding Doorping attackers (doorping-collude=true),
# pooling from the kept trigger, into RUNS_DIR/<aggregator>-colluding-n5. Session 13:
# EXCLUDE=1 adds full_protocol.py's --exclude-malicious-updates (the attacker runs, its S_i
# is never aggregated), into RUNS_DIR/<aggregator>-excluded-n5; CONTINUE=1 continues that
# run where it stands (resume after round FROM) instead of rebuilding it from the kept state.
set -eu
from=${1:?round to resume from}; last=${2:?last round}; padded=$(printf %04d "$from")
cd "$(dirname "$0")/../../../../../.." && . .venv/bin/activate
kept=benchmarks/results/backdoor/reference-doorping/s11/attack-n5
aggregator=${AGGREGATOR:-fedavg}; malicious=${MALICIOUS:-0}; collude=false
name=attack-n5; [ "$aggregator" = fedavg ] || name=$aggregator-n5
[ "$malicious" = 0 ] || { collude=true; name=$aggregator-colluding-n5; }
exclude=(); [ -z "${EXCLUDE:-}" ] || { exclude=(--exclude-malicious-updates); name=${name%-n5}-excluded-n5; name=${name/#attack/fedavg}; }
runs=${RUNS_DIR:-/tmp/scratch/s11/runs}; run=$runs/$name
if [ -z "${CONTINUE:-}" ]; then
  mkdir -p "$run/attack" && cp "$kept"/{config.yaml,metrics.jsonl} "$run/" && cp "$kept/synthetic_set_round_$padded.pt" "$run/synthetic_set.pt"
  trigger=$kept/attack/round_$padded/trigger_client0.pt; [ -f "$trigger" ] || trigger=$kept/trigger_round_$from.pt
  cp "$trigger" "$run/attack/trigger_client0.pt"
  if [ "$collude" = true ]; then mkdir -p "$run/attack/colluders/round_$padded" && cp "$trigger" "$run/attack/colluders/round_$padded/trigger_client0.pt"; fi
fi
common="preset='' dataset='mnist' data-dir='/work/shared/datasets' output-dir='$runs' seed=0 ipc=10 num-server-rounds=$last batch-real=16 inner-loop=50 net-width=32 net-hidden=192 num-eval=3 eval-epochs=300 eval-augment='off' eval-every=10 min-clients=5"
attack="doorping-poison-fraction=0.01 malicious-clients='$malicious' malicious-behaviour='doorping' doorping-clamp=false doorping-collude=$collude"
OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 python benchmarks/full_protocol.py --parallel-clients "${exclude[@]}" -c "$common run-name='$name' aggregator='$aggregator' $attack resume-from='$run'"
