"""House style that a formatter does not enforce by itself: no line over 100 columns."""

import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_line_over_100_columns():
  long_lines = []
  for pattern in ("robust_dd/*.py", "experiments/*.py", "scripts/*.py", "tests/*.py", "setup.py"):
    for path in glob.glob(os.path.join(REPO, pattern)):
      with open(path, encoding="utf-8") as f:
        long_lines += [f"{os.path.relpath(path, REPO)}:{i}" for i, line in enumerate(f, 1)
                       if len(line.rstrip("\n")) > 100]
  assert not long_lines, long_lines
