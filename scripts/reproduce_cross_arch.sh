#!/usr/bin/env bash
# v0.4's cross-architecture table: DC, DSA, LCMat and KIP sets at IPC 10 on mnist5k (the matching
# methods sized to a 2-core CPU as in the matching table of docs/results.md), each trained into ConvNet-3,
# AlexNet, VGG-11, ResNet-18 and a small ViT (300 epochs, DSA, seeds 0..EVAL_SEEDS-1) beside
# random real subsets of the same size; then the table. On 2 CPU cores the evaluation of one set
# on all five networks takes hours (ResNet-18 and VGG-11 dominate): narrow it with SETS and NETS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SETS=${SETS:-"kip dc dsa lcmat"}
NETS=${NETS:-"convnet,alexnet,vgg11,resnet18,vit"}
EVAL_SEEDS=${EVAL_SEEDS:-3}
EPOCHS=${EPOCHS:-300}
for method in $SETS; do
  case $method in
    kip) extra="" ;;
    dc|dsa) extra="--steps=10 --real_per_class=64" ;;
    lcmat) extra="--steps=4 --real_per_class=64" ;;
  esac
  workdir=runs/xarch_${method}_ipc10
  # shellcheck disable=SC2086
  $PY -m experiments.distill --method="$method" --ipc=10 $extra --norobust_eval \
    --workdir="$workdir"
  $PY -m experiments.evaluate --workdir="$workdir" --nonetwork --nokrr --norobust_eval \
    --eval_nets="$NETS" --eval_seeds="$EVAL_SEEDS" --eval_epochs="$EPOCHS" \
    --output=evaluation_archs.json
done
$PY scripts/cross_arch_table.py runs/xarch_*/evaluation_archs.json
