#!/usr/bin/env bash
# Provable subset selection on mnist5k, seeds 0-2 (docs/guide/selection.md):
#  1. KIP at IPC 1 and 10 with each --init and each --sampler (48 runs; 32 minutes on a 2-core CPU
#     while part 2 ran beside it);
#  2. coresets at 0.2%, 1% and 5% by each selection method, the random subset alongside (seed s
#     selects and trains evaluation network s: 3 networks per cell; 45 runs; 87 minutes, shared
#     with part 1 for its first half hour);
#  then both tables (scripts/selection_table.py). Pass "kip" or "coreset" to run one part only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
part=${1:-all}
if [[ $part == all || $part == kip ]]; then
  for seed in 0 1 2; do
    for ipc in 1 10; do
      for init in random kmeans_centers sensitivity_kmeans sensitivity_krr; do
        for sampler in uniform importance; do
          $PY -m experiments.distill --ipc=$ipc --init=$init --sampler=$sampler --seed=$seed \
            --workdir=runs/sel_kip_ipc${ipc}_${init}_${sampler}_seed${seed}
        done
      done
    done
  done
fi
if [[ $part == all || $part == coreset ]]; then
  for seed in 0 1 2; do
    for fraction in 0.002 0.01 0.05; do
      for method in random herding kcenter sensitivity lcmat; do
        $PY -m experiments.select --method=$method --fraction=$fraction --seed=$seed \
          --eval_seeds=1 --net_padding=same --workdir=runs/coreset_${method}_${fraction}_seed${seed}
      done
    done
  done
fi
$PY scripts/selection_table.py runs/sel_kip_* runs/coreset_*
