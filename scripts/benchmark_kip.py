r"""Benchmarks KIP steps: steps per second and peak memory for FC and Conv kernels.

  python scripts/benchmark_kip.py --out=runs/benchmark_kip.json

For every architecture × IPC × target batch it compiles the distillation step of
`robust_dd.distill.make_step` on mnist5k (28×28), runs it until `--min_seconds` have passed
(at least
`--min_steps` steps), and records steps/s, XLA's compiled memory estimate for the step (arguments +
outputs + temporaries), the device's peak bytes where the backend reports them (GPU/TPU), and the
process's peak RSS so far. Writes JSON and prints a Markdown table.

Expected on a 2-core CPU (measured, see README): FC1 NTK at IPC 10 / batch 100 runs hundreds of
steps
per second; Conv (3×3, no pooling) is one to three orders of magnitude slower. Conv with pooling
(--conv_pool) needs O((28·28)²) memory per image pair: expect it to fail or crawl on CPU.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import methods
from robust_dd import kernels
import _bench  # scripts/_bench.py

FLAGS = flags.FLAGS
flags.DEFINE_list("archs", ["fc", "conv"], "Architectures: fc, conv, conv_pool.")
flags.DEFINE_list("ipcs", ["1", "10", "50"], "Images per class.")
flags.DEFINE_list("batches", ["100", "1000"], "Target batch sizes.")
flags.DEFINE_integer("depth", 1, "Layers / conv blocks.")
flags.DEFINE_float("min_seconds", 2.0, "Time each configuration at least this long.")
flags.DEFINE_integer("min_steps", 3, "and at least this many steps.")
flags.DEFINE_string("out", "runs/benchmark_kip.json", "JSON output path.")


def _kernel(arch):
  if arch == "conv_pool":
    return kernels.make_kernel_fn("conv", depth=FLAGS.depth, pool=True)
  return kernels.make_kernel_fn(arch, depth=FLAGS.depth)


def bench_one(arch, ipc, batch, x, y, real):
  kernel_fn = _kernel(arch)
  optimizer = distill.make_optimizer(learning_rate=0.01, learn_labels=True)
  idx = np.concatenate([np.flatnonzero(y == c)[:ipc] for c in range(10)])
  state = distill.init_state(x[idx], data_lib.one_hot_centered(y[idx], 10), optimizer)
  step = distill.make_step(methods.kip_loss_fn(kernel_fn=kernel_fn), optimizer,
                           per_class=batch // 10)
  key = jax.random.key(0)
  t0 = time.time()
  compiled = step.lower(state, real, key).compile()
  compile_seconds = time.time() - t0
  t0 = time.time()
  state, metrics = step(state, real, jax.random.fold_in(key, 0))
  jax.block_until_ready(metrics)
  first = time.time() - t0
  t0 = time.time()
  state, metrics = step(state, real, jax.random.fold_in(key, 1))
  jax.block_until_ready(metrics)
  estimate = time.time() - t0
  # Dispatch enough steps to fill min_seconds (estimated from the first), without a sync between
  # them, as the distillation loop runs; then wait for the last.
  steps = max(FLAGS.min_steps, min(int(FLAGS.min_seconds / max(estimate, 1e-4)), 5000))
  t0 = time.time()
  for i in range(steps):
    state, metrics = step(state, real, jax.random.fold_in(key, i + 2))
  jax.block_until_ready(metrics)
  seconds = time.time() - t0
  return {"arch": arch, "depth": FLAGS.depth, "ipc": ipc, "support": 10 * ipc,
          "target_batch": batch, "steps_timed": steps, "steps_per_second": steps / seconds,
          "compile_seconds": compile_seconds, "first_step_seconds": first,
          "loss": float(metrics["loss"]), **_bench.memory_fields(compiled)}


def main(argv):
  del argv
  ds, x, real = _bench.mnist5k_real()
  configs = [dict(arch=arch, ipc=ipc, target_batch=batch) for arch in FLAGS.archs
             for ipc in map(int, FLAGS.ipcs) for batch in map(int, FLAGS.batches)]
  results = _bench.run_all(
      lambda arch, ipc, target_batch: bench_one(arch, ipc, target_batch, x, ds.y_train, real),
      configs, out=FLAGS.out)
  print(f"\nKIP step benchmark on {jax.devices()[0]} (jax {jax.__version__})\n")
  print("| kernel | IPC | target batch | steps/s | ms/step | XLA step MiB | device peak MiB |")
  print("|---|---|---|---|---|---|---|")
  for r in results:
    if "error" in r:
      print(f"| {r['arch']} | {r['ipc']} | {r['target_batch']} | failed: {r['error'][:60]} |||")
      continue
    name = f"{r['arch']}{r['depth']} ntk{' (no pool)' if r['arch'] == 'conv' else ''}"
    print(f"| {name} | {r['ipc']} | {r['target_batch']} | "
          f"{r['steps_per_second']:.3g} | {1000 / r['steps_per_second']:.4g} | "
          f"{_bench.mib(r['xla_step_bytes'])} | {_bench.mib(r['device_peak_bytes'])} |")
  print(f"\nProcess peak RSS: {_bench.mib(results[-1].get('process_peak_rss_bytes'))} MiB. "
        f"JSON: {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
