"""Tables of provable-subset-selection runs: KIP by init and sampler, and coresets by method.

    python scripts/selection_table.py runs/sel_kip_* runs/coreset_*

Reads each workdir's metrics.json (distillation runs have `init`/`sampler` in their config;
coreset runs have `num_selected`) and prints mean ± std over the runs of each cell.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robust_dd import reporting  # pylint: disable=g-import-not-at-top


def main(paths):
  runs, missing = reporting.load_runs(paths)
  for path in missing:
    print(f"skipping {path}: no metrics.json (unfinished?)", file=sys.stderr)
  distilled = [m for m in runs if "num_selected" not in m]
  coresets = [m for m in runs if "num_selected" in m]
  if distilled:
    print(reporting.init_sampler_table(distilled))
    print()
  if coresets:
    print(reporting.coreset_table(coresets))


if __name__ == "__main__":
  main(sys.argv[1:])
