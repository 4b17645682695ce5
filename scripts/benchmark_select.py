r"""Benchmarks coreset selection on all 4,000 mnist5k training images: time and peak memory.

  python scripts/benchmark_select.py --out=runs/benchmark_select.json

Each method runs in its own subprocess (so its peak RSS is its own), selecting `--fraction` of
every class from the preprocessed training images: the first call (compilation included) and a
second call with another key (compiled). LCMat-S also reports its warm-up training (ConvNet-3,
`--warmup_epochs` epochs on all 4,000 images) separately; sensitivity_krr uses the exact FC1 NTK
class kernels (400 × 400), and with `--rank` also Nyström. Writes JSON and prints a Markdown table.
"""

import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

from robust_dd import coreset
from robust_dd import config as config_lib
from robust_dd import methods
from robust_dd import io
from robust_dd import kernels
from robust_dd import select
import _bench  # scripts/_bench.py

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", list(select.METHODS), "Selection methods.")
flags.DEFINE_float("fraction", 0.05, "Fraction selected (0.05: 20 per class).")
flags.DEFINE_integer("warmup_epochs", 5, "LCMat-S warm-up epochs.")
flags.DEFINE_integer("rank", 100, "Also time sensitivity_krr with Nyström of this rank (0: no).")
flags.DEFINE_string("only", None, "Internal: run one method in this process, print its JSON.")
flags.DEFINE_string("out", "runs/benchmark_select.json", "JSON output path.")


def bench_one(method: str, rank: int) -> dict:
  ds, x, _ = _bench.mnist5k_real()
  y = np.asarray(ds.y_train)
  _, counts = np.unique(y, return_counts=True)
  budget = select.budget_per_class(FLAGS.fraction, counts)
  kwargs, warmup_seconds = {}, 0.0
  if method == "lcmat":
    t0 = time.time()
    model = methods.network_model(config_lib.SelectConfig(), 10, x.shape[1:])
    kwargs["lcmat_inputs"] = coreset.lcmat_warmup(jax.random.key(0), model, x, y,
                                                  epochs=FLAGS.warmup_epochs)
    warmup_seconds = time.time() - t0
  if method == "sensitivity_krr":
    kwargs.update(kernel_fn=kernels.make_kernel_fn("fc"), rank=rank)
  times = []
  for i in range(2):
    t0 = time.time()
    idx, _ = select.select_indices(method, jax.random.key(i), x, y, num_classes=10,
                                   budget=budget, **kwargs)
    times.append(time.time() - t0)
  return {"method": method, "rank": rank or None, "num_train": len(y), "selected": len(idx),
          "first_call_seconds": times[0], "compiled_seconds": times[1],
          "warmup_seconds": warmup_seconds,
          "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "backend": jax.default_backend()}


def run_child(method: str, rank: int) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--only={method}", f"--rank={rank}",
         f"--fraction={FLAGS.fraction}", f"--warmup_epochs={FLAGS.warmup_epochs}"]
  result = subprocess.run(cmd, capture_output=True, text=True, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if FLAGS.only:
    print(json.dumps(bench_one(FLAGS.only, FLAGS.rank)), flush=True)
    return
  configs = [dict(method=m, rank=0) for m in FLAGS.methods]
  if FLAGS.rank and "sensitivity_krr" in FLAGS.methods:
    configs.append(dict(method="sensitivity_krr", rank=FLAGS.rank))
  results = _bench.run_all(run_child, configs, out=FLAGS.out)
  print(f"\nCoreset selection on all {results[0].get('num_train', 4000)} mnist5k training images,"
        f" fraction {FLAGS.fraction} ({jax.devices()[0]}, jax {jax.__version__})\n")
  print("| method | selected | first call s (compile incl.) | compiled s | warm-up s | "
        "peak RSS MiB |")
  print("|---|---|---|---|---|---|")
  for r in results:
    name = r["method"] + (f" (Nyström r={r['rank']})" if r.get("rank") else "")
    if "error" in r:
      print(f"| {name} | failed: {r['error'][:60]} |||||")
      continue
    print(f"| {name} | {r['selected']} | {r['first_call_seconds']:.1f} | "
          f"{r['compiled_seconds']:.1f} | {r['warmup_seconds']:.1f} | "
          f"{_bench.mib(r['process_peak_rss_bytes'])} |")
  print(f"\nJSON: {FLAGS.out}")
  io.save_json(FLAGS.out, {"device": str(jax.devices()[0]), "jax_version": jax.__version__,
                           "fraction": FLAGS.fraction, "results": results})


if __name__ == "__main__":
  app.run(main)
