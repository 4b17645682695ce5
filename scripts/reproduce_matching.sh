#!/usr/bin/env bash
# Reproduces the gradient/curvature-matching table of docs/results.md on mnist5k (about 90 minutes on 2 CPU
# cores in all; each IPC-1 run finishes in under 15 minutes, each IPC-10 run in about 25). The table
# was measured with v0.3's ConvNet padding, which --net_padding=same keeps.
set -euo pipefail
cd "$(dirname "$0")/.."
for m in dc dsa; do
  python -m experiments.distill --method=$m --ipc=1 --steps=200 --real_per_class=64 --net_padding=same --workdir=runs/${m}_mnist5k_ipc1
done
python -m experiments.distill --method=lcmat --ipc=1 --steps=100 --real_per_class=64 --net_padding=same --workdir=runs/lcmat_mnist5k_ipc1
python -m experiments.distill --method=dc --ipc=10 --steps=10 --real_per_class=64 --net_padding=same --workdir=runs/dc_mnist5k_ipc10
python -m experiments.distill --method=lcmat --ipc=10 --steps=4 --real_per_class=64 --net_padding=same --workdir=runs/lcmat_mnist5k_ipc10
