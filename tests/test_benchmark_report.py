"""scripts/benchmark_report.py: the docs' benchmark tables from benchmark JSON."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))

import benchmark_report  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_a_section_is_the_machine_the_command_and_one_row_per_result(tmp_path):
  rows = [{"seconds": 1.23456, "method": "dc", "times": [1.0, 2.0], "peak_bytes": 3 * 2**20,
           "vmap": True},
          {"method": "kip", "error": "out of memory"}]
  path = tmp_path / "bench.json"
  path.write_text(json.dumps({"device": "cpu:0", "backend": "cpu", "jax_version": "9.9",
                              "results": rows}))
  (tmp_path / "bench.cmd").write_text("python scripts/x.py --out=bench.json\n")
  text = benchmark_report.section(str(path))
  lines = text.splitlines()
  assert lines[0] == "### bench" and "Device: cpu:0 (cpu), JAX 9.9." in text
  assert "python scripts/x.py --out=bench.json" in text
  table = [l for l in lines if l.startswith("|")]
  # The naming field first, byte counts in MiB, lists left out, a missing field an empty cell.
  assert table[0] == "| method | seconds | peak MiB | vmap | error |"
  assert table[2] == "| dc | 1.235 | 3 | yes |  |"
  assert table[3] == "| kip |  |  |  | out of memory |"


def test_every_committed_benchmark_renders(tmp_path):
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                      "benchmarks")
  files = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".json"))
  assert files
  out = tmp_path / "tables.md"
  benchmark_report.main([*files, f"--out={out}"])
  assert out.read_text().count("### ") == len(files)
