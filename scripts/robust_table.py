r"""Prints the robustness table (mean ± std over seeds) of finished distillation runs.

  python scripts/robust_table.py runs/rare_*

Each argument is a workdir of `experiments.distill` (its metrics.json, written with
--robust_eval, the default). Runs are grouped by method, IPC and objective; see
`robust_dd.distill.robustness_table`.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robust_dd import distill  # pylint: disable=g-import-not-at-top


def main(workdirs):
  runs, missing = [], []
  for w in workdirs:
    path = os.path.join(w, "metrics.json")
    if os.path.exists(path):
      runs.append(json.load(open(path)))
    else:
      missing.append(w)
  if not runs:
    sys.exit(f"No metrics.json in {workdirs}.")
  print(distill.robustness_table(runs))
  if missing:
    print(f"\n(no metrics.json yet: {', '.join(missing)})")


if __name__ == "__main__":
  main(sys.argv[1:])
