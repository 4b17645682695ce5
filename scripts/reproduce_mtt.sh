#!/usr/bin/env bash
# Reproduces the MTT rows of docs/results.md on mnist5k: experts, then MTT at IPC 1 (3 seeds) and IPC 10,
# ConvNet-3 width 128 with v0.3's padding (--net_padding=same), as the DC/DSA/LCMat table.
# About 1 hour on 2 CPU cores. FULL=1 runs the paper-sized setting instead (10 experts x 50 epochs,
# 5,000 iterations, IPC 1 and 10, 3 seeds each, and the same on the full Fashion-MNIST): days on
# this CPU, hours on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${FULL:-0}" = 1 ]; then
  for ds in mnist5k fashion_mnist; do
    python -m experiments.experts --dataset=$ds --net_padding=same --num_experts=10 --epochs=50 \
      --workdir=runs/experts_${ds}_full
    for ipc in 1 10; do for seed in 0 1 2; do
      python -m experiments.distill --method=mtt --dataset=$ds --ipc=$ipc --seed=$seed \
        --net_padding=same --expert_dir=runs/experts_${ds}_full --max_start_epoch=20 \
        --syn_steps=50 --steps=5000 --workdir=runs/mtt_${ds}_ipc${ipc}_seed${seed}_full
    done; done
  done
  exit 0
fi
python -m experiments.experts --dataset=mnist5k --net_padding=same --num_experts=3 --epochs=12 \
  --workdir=runs/experts_mnist5k
for seed in 0 1 2; do
  python -m experiments.distill --method=mtt --ipc=1 --seed=$seed --net_padding=same \
    --expert_dir=runs/experts_mnist5k --steps=100 --workdir=runs/mtt_mnist5k_ipc1_seed$seed
done
python -m experiments.distill --method=mtt --ipc=10 --syn_batch=20 --net_padding=same \
  --expert_dir=runs/experts_mnist5k --steps=60 --workdir=runs/mtt_mnist5k_ipc10
