r"""Prints the robustness table (mean ± std over seeds) of finished distillation runs.

  python scripts/robust_table.py runs/rare_*

Each argument is a workdir of `experiments.distill` (its metrics.json, written with
--robust_eval, the default). Runs are grouped by method, IPC and objective; see
`robust_dd.reporting.robustness_table`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robust_dd import reporting  # pylint: disable=g-import-not-at-top


def main(workdirs):
  runs, missing = reporting.load_runs(workdirs)
  if not runs:
    sys.exit(f"No metrics.json in {workdirs}.")
  print(reporting.robustness_table(runs))
  if missing:
    print(f"\n(no metrics.json yet: {', '.join(missing)})")


if __name__ == "__main__":
  main(sys.argv[1:])
