r"""Markdown tables from benchmark JSON files (what the docs' Benchmarks page shows).

  python scripts/benchmark_report.py docs/benchmarks/*.json [--out=FILE]

Each file is what a `scripts/benchmark_*.py` script writes (`_bench.save`: the device, backend,
JAX version and a list of result rows). Every file becomes a section: its name, the machine it
ran on, the command recorded beside it (a `<name>.cmd` file, if present) and one table whose
columns are the rows' scalar fields in the order they first appear (byte counts shown in MiB,
lists left out). Reads no JAX.
"""

import argparse
import json
import os
import sys
from typing import Any, Iterable

LEFT_OUT = ("times", "cpu_times", "error_trace")
# Fields that name a row come first, in this order; the rest follow as they first appear.
LEADING = ("method", "system", "arch", "kernel", "ipc", "clusters", "syn_steps", "remat",
           "grad_chunk", "conv_impl")


def _cell(key: str, value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, bool):
    return "yes" if value else "no"
  if key.endswith("_bytes") and isinstance(value, (int, float)):
    return f"{value / 2**20:,.0f}"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value).replace("|", "\\|")


def _header(key: str) -> str:
  return key[:-len("_bytes")] + " MiB" if key.endswith("_bytes") else key


def columns(rows: Iterable[dict]) -> list[str]:
  """The scalar fields of `rows` in the order they first appear."""
  seen = []
  for row in rows:
    for key, value in row.items():
      if key not in seen and key not in LEFT_OUT and not isinstance(value, (list, dict)):
        seen.append(key)
  return [k for k in LEADING if k in seen] + [k for k in seen if k not in LEADING]


def table(rows: list[dict]) -> str:
  keys = columns(rows)
  lines = ["| " + " | ".join(_header(k) for k in keys) + " |",
           "|" + "---|" * len(keys)]
  lines += ["| " + " | ".join(_cell(k, row.get(k)) for k in keys) + " |" for row in rows]
  return "\n".join(lines)


def section(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    report = json.load(f)
  name = os.path.splitext(os.path.basename(path))[0]
  parts = [f"### {name}", "",
           f"Device: {report.get('device')} ({report.get('backend')}), JAX "
           f"{report.get('jax_version')}."]
  cmd = os.path.splitext(path)[0] + ".cmd"
  if os.path.exists(cmd):
    with open(cmd, encoding="utf-8") as f:
      parts += ["", "```bash", f.read().strip(), "```"]
  parts += ["", table(report["results"]), ""]
  return "\n".join(parts)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("files", nargs="+")
  parser.add_argument("--out", default=None, help="Write here instead of standard output.")
  args = parser.parse_args(argv)
  text = "\n".join(section(p) for p in sorted(args.files))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)
  else:
    sys.stdout.write(text)


if __name__ == "__main__":
  main()
