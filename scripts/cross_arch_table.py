r"""Prints the cross-architecture table of sets evaluated with --eval_nets.

  python scripts/cross_arch_table.py runs/xarch_*/evaluation_archs.json

Each argument is a metrics.json (distillation with --eval_nets) or an evaluation file of
`experiments.evaluate --eval_nets=... --output=NAME`; see
`robust_dd.reporting.cross_architecture_table`.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robust_dd import reporting  # pylint: disable=g-import-not-at-top


def main(paths):
  reports = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      reports.append(json.load(f))
  if not reports:
    sys.exit("No evaluation files given.")
  print(reporting.cross_architecture_table(reports))


if __name__ == "__main__":
  main(sys.argv[1:])
