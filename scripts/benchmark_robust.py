r"""Benchmarks the robust objective: its overhead over the plain step, and vmap against a loop.

  python scripts/benchmark_robust.py --out=runs/benchmark_robust.json

On mnist5k, for each method (KIP: FC1 NTK, IPC 10, one update per step; DC: ConvNet-3 width 128,
IPC 1, one outer iteration per step) it times the plain step (`--target_batch` class-balanced real
samples) and the robust step (`--robust=cvar`) with K = 10, 100, 1000 k-means clusters (K / 10 per
class; target_batch / K real samples per cluster, so every step sees the same number of real
samples). Plain and robust steps use the default `--class_batch` of the backend
(`matching.default_class_batch`: one class, with its clusters, at a time on CPU). For DC and
K <= `--loop_max_clusters` it also times the robust step with one class (and its clusters) at a
time (`--class_batch=1`, a `lax.map` over classes; on CPU the same as the default). Matching
methods compute each class's synthetic gradient once and share it across the class's clusters
(`matching.per_class_cluster_losses`). Every configuration is compiled and called once, then
all are called in turn for `--repeats` rounds (`_bench.run_interleaved`: the 2-core VM's speed
drifts within minutes, so rows timed one after another compared badly); the table gives the median
step and its ratio to the plain step's median, the ratio of the minima, and the median CPU time
of the process (user + system, all threads; `_bench.cpu_seconds`) and its ratio: the VM's wall
time stretches when its cores are taken away, its CPU time much less. Records compile time,
XLA's memory estimate and peak RSS; writes JSON (after every round) and prints a Markdown table.
"""

import functools
import os
import sys
import time
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

from robust_dd import config as config_lib
from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import experiment
from robust_dd import matching
from robust_dd import methods
from robust_dd import presets
import _bench  # scripts/_bench.py

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["kip", "dc"], "kip and/or dc (dsa and lcmat share dc's path).")
flags.DEFINE_list("clusters", ["10", "100", "1000"], "Total clusters K (K / 10 per class).")
flags.DEFINE_integer("target_batch", 1000, "Real samples per update (split over the clusters).")
flags.DEFINE_integer("repeats", 5, "Rounds of timed steps, every configuration in turn "
                     "(median and minimum reported).")
flags.DEFINE_integer("loop_max_clusters", 100, "Largest K also timed with a loop over clusters.")
flags.DEFINE_bool("autodiff_rows", True, "DC with one real image per cluster: also time the "
                  "step with per-image autodiff gradients (no ghost norms).")
flags.DEFINE_string("out", "runs/benchmark_robust.json", "JSON output path.")

IPC = {"kip": 10, "dc": 1}


def prepare_one(method, x, y, real, *, clusters=0, use_vmap=True, ghost=True):
  """One configuration (clusters=0: the plain step), compiled: (row, run)."""
  # ghost=False: matching losses built inside use per-image autodiff instead of ghost norms.
  make = functools.partial(matching.gradient_match_class_loss, ghost=ghost)
  with mock.patch.object(matching, "gradient_match_class_loss", make):
    return _prepare_one(method, x, y, real, clusters=clusters, use_vmap=use_vmap, ghost=ghost)


def _prepare_one(method, x, y, real, *, clusters, use_vmap, ghost):
  # use_vmap=False rows compute one class (with its clusters) at a time (class_batch=1).
  config = presets.resolve_config(config_lib.DistillConfig.make(
      method=method, ipc=IPC[method], real_per_class=FLAGS.target_batch // 10,
      robust="cvar" if clusters else "none", num_clusters=max(clusters // 10, 1),
      class_batch=None if use_vmap else 1), 10)
  o = config.optim
  optimizer = distill.make_optimizer(learning_rate=o.learning_rate, learn_labels=o.learn_labels,
                                     name=o.optimizer)
  idx = np.concatenate([np.flatnonzero(y == c)[:config.ipc] for c in range(10)])
  state = distill.init_state(x[idx], data_lib.one_hot_centered(y[idx], 10), optimizer)
  cluster_seconds = 0.0
  if clusters:
    t0 = time.time()
    real = experiment.make_reclusterer(config, real, x, y, num_classes=10,
                                    key=jax.random.key(1))(state, 0)
    cluster_seconds = time.time() - t0
  step = methods.build_step(config, optimizer, num_classes=10, input_shape=x.shape[1:],
                            num_clusters=clusters or None)
  compiled, compile_seconds, run = _bench.compile_step(step, state, real, jax.random.key(0))
  row = {"method": method, "ipc": config.ipc, "clusters": clusters, "vmap": use_vmap,
         "ghost": ghost, "per_cluster": FLAGS.target_batch // clusters if clusters else None,
         "target_batch": FLAGS.target_batch, "compile_seconds": compile_seconds,
         "cluster_seconds": cluster_seconds, **_bench.memory_fields(compiled)}
  return row, run


def _ratio(row, results, key):
  """row[key] over the same method's plain step's, as a table cell."""
  plain = next((r.get(key) for r in results if r["method"] == row["method"] and
                r["clusters"] == 0), None)
  return f"{row[key] / plain:.2f}" if plain else "n/a"


def main(argv):
  del argv
  ds, x, real = _bench.mnist5k_real()
  configs = []
  for m in FLAGS.methods:
    configs.append(dict(method=m, clusters=0, vmap=True, ghost=True))
    for k in map(int, FLAGS.clusters):
      configs += [dict(method=m, clusters=k, vmap=v, ghost=True) for v in (True, False)
                  if v or (k <= FLAGS.loop_max_clusters and m != "kip")]
      if m != "kip" and FLAGS.autodiff_rows and FLAGS.target_batch // k == 1:
        configs.append(dict(method=m, clusters=k, vmap=True, ghost=False))
  results = _bench.run_interleaved(
      lambda method, clusters, vmap, ghost: prepare_one(method, x, ds.y_train, real,
                                                        clusters=clusters, use_vmap=vmap,
                                                        ghost=ghost),
      configs, repeats=FLAGS.repeats, out=FLAGS.out)
  print(f"\nRobust-objective benchmark on {jax.devices()[0]} (jax {jax.__version__}), "
        f"{FLAGS.target_batch} real samples per update\n")
  print("| method | IPC | clusters K | per cluster | classes | s per step (median) | "
        "× plain (medians) | × plain (minima) | CPU s per step (median) | × plain (CPU) | "
        "compile s | XLA step MiB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    default = f"default ({matching.default_class_batch() or 'all'} at a time)"
    how = default if r["vmap"] else "one class at a time"
    if r["method"] == "kip":
      how = "-"  # KIP's clusters are one vmap, with no class batching.
    if not r.get("ghost", True):
      how += ", per-image autodiff"
    k = r["clusters"] or "plain"
    if "error" in r:
      print(f"| {r['method']} | | {k} | | {how} | failed: {r['error'][:60]} |||||||")
      continue
    print(f"| {r['method']} | {r['ipc']} | {k} | {r['per_cluster'] or '-'} | {how} | "
          f"{r['seconds_per_step']:.3f} | {_ratio(r, results, 'seconds_per_step')} | "
          f"{_ratio(r, results, 'min_seconds')} | {r['cpu_seconds_per_step']:.2f} | "
          f"{_ratio(r, results, 'cpu_seconds_per_step')} | {r['compile_seconds']:.1f} | "
          f"{_bench.mib(r['xla_step_bytes'])} |")
  print(f"\nProcess peak RSS: {_bench.mib(results[-1].get('process_peak_rss_bytes'))} MiB. "
        f"JSON: {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
