#!/usr/bin/env bash
# Rare-subgroup mnist5k (5% of each class's training digits inverted, 50% of its test digits):
# KIP and DC, plain and robust (CVaR over 5 k-means clusters per class, the defaults), IPC 1 and
# 10, seeds 0-2; then the table of docs/results.md. KIP runs take about a minute each on a 2-core CPU,
# DC runs several (docs/results.md gives the measured times). The DC rows were measured with v0.3's
# ConvNet padding, which --net_padding=same keeps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
for seed in 0 1 2; do
  for ipc in 1 10; do
    for robust in none cvar; do
      $PY -m experiments.distill --subgroup=invert --method=kip --ipc=$ipc --robust=$robust \
        --seed=$seed --workdir=runs/rare_kip_ipc${ipc}_${robust}_seed${seed}
    done
  done
done
# DC: IPC 1 with 100 outer iterations, IPC 10 with 2 (sized to a 2-core CPU).
for ipc_steps in "1 100" "10 2"; do
  read -r ipc steps <<< "$ipc_steps"
  for seed in 0 1 2; do
    for robust in none cvar; do
      $PY -m experiments.distill --subgroup=invert --method=dc --ipc=$ipc --steps=$steps \
        --real_per_class=64 --robust=$robust --seed=$seed --net_padding=same \
        --workdir=runs/rare_dc_ipc${ipc}_${robust}_seed${seed}
    done
  done
done
$PY scripts/robust_table.py runs/rare_*
