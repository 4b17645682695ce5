#!/usr/bin/env bash
# Full Fashion-MNIST (60,000 train / 10,000 test, IDX files from `apt-get install
# dataset-fashion-mnist` or --data_dir): KIP with the exact FC1 NTK and with the conv random-feature
# NNGP (ConvNet-3 with pooling, 8 width-32 networks per step, readout integrated: 4,105
# features), IPC 1, 10, 50, with the squared loss (20 real images per class per step) and with
# RFAD's setting (Platt-scaled cross-entropy, fixed labels, 128 real images per class per step);
# then the ConvNet-3 evaluator (a network trained on each set). The Fashion-MNIST table of docs/results.md.
#   RF_STEPS=1000 (default) and EVAL_SEEDS=3 set the cost; docs/results.md says which values it used.
set -euo pipefail
cd "$(dirname "$0")/.."
RF_STEPS="${RF_STEPS:-1000}"
EVAL_SEEDS="${EVAL_SEEDS:-3}"
for ipc in 1 10 50; do
  python -m experiments.distill --dataset=fashion_mnist --ipc="$ipc" --norobust_eval \
    --workdir="runs/kip_fashion_fc_ipc${ipc}" | tail -n 4
  python -m experiments.distill --dataset=fashion_mnist --ipc="$ipc" --arch=conv --depth=3 --pool \
    --random_features=256 --zca --real_per_class=20 --steps="$RF_STEPS" --eval_during=false \
    --norobust_eval --workdir="runs/kip_fashion_rf_ipc${ipc}" | tail -n 4
  python -m experiments.distill --dataset=fashion_mnist --ipc="$ipc" --arch=conv --depth=3 --pool \
    --random_features=256 --zca --real_per_class=128 --krr_loss=platt --nolearn_labels \
    --steps="$RF_STEPS" --eval_during=false --norobust_eval \
    --workdir="runs/kip_fashion_rf_platt_ipc${ipc}" | tail -n 4
done
for ipc in 1 10 50; do
  for kind in fc rf rf_platt; do
    python -m experiments.evaluate --workdir="runs/kip_fashion_${kind}_ipc${ipc}" --nokrr \
      --eval_seeds="$EVAL_SEEDS" | tail -n 3
  done
done
