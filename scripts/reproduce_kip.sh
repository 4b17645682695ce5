#!/usr/bin/env bash
# Reproduces the KIP table of docs/results.md: mnist5k, FC1 NTK, 2,000 Adam steps, KRR on the 1,000 test digits.
# Expected (2-core CPU, jax 0.10.2): IPC 1 -> 88.4% (random subset 46.2% ± 3.2),
#                                    IPC 10 -> 95.6% (random subset 76.9% ± 1.5); about 20 s each.
set -euo pipefail
cd "$(dirname "$0")/.."
for ipc in 1 10; do
  python -m experiments.distill --ipc="$ipc" --workdir="runs/kip_mnist5k_ipc${ipc}" | tail -n 4
done
