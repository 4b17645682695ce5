"""Tables of provable-subset-selection runs: KIP by init and sampler, and coresets by method.

    python scripts/selection_table.py runs/sel_kip_* runs/coreset_*

Reads each workdir's metrics.json (distillation runs have `init`/`sampler` in their config;
coreset runs have `num_selected`) and prints mean ± std over the runs of each cell.
"""

import json
import os
import sys

import numpy as np

from robust_dd import coreset


def kip_table(runs):
  groups = {}
  for m in runs:
    c = m["config"]
    groups.setdefault((c["ipc"], c["init"], c["sampler"]), []).append(m)
  lines = ["| IPC | init | sampler | runs | KIP test acc (KRR) | random subset |",
           "|---|---|---|---|---|---|"]
  for (ipc, init, sampler), ms in sorted(groups.items()):
    acc = [100 * m["distilled_test_acc"] for m in ms]
    rnd = [100 * m["random_subset_test_acc_mean"] for m in ms]
    lines.append(f"| {ipc} | {init} | {sampler} | {len(ms)} | {np.mean(acc):.1f} ± "
                 f"{np.std(acc):.1f} | {np.mean(rnd):.1f} |")
  return "\n".join(lines)


def main(paths):
  distilled, coresets = [], []
  for path in paths:
    f = os.path.join(path, "metrics.json")
    if not os.path.exists(f):
      print(f"skipping {path}: no metrics.json (unfinished?)", file=sys.stderr)
      continue
    m = json.load(open(f))
    (coresets if "num_selected" in m else distilled).append(m)
  if distilled:
    print(kip_table(distilled))
    print()
  if coresets:
    print(coreset.coreset_table(coresets))


if __name__ == "__main__":
  main(sys.argv[1:])
