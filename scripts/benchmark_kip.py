r"""Benchmarks KIP steps: steps per second and peak memory for FC, Conv and random-feature kernels.

  python scripts/benchmark_kip.py --out=runs/benchmark_kip.json

Kernels (`--archs`): fc (exact FC NTK), conv (exact Conv NTK, no pooling), conv_pool (exact, with
pooling: O((HW)²) memory per image pair), conv_rf (ConvNet-`--rf_depth` with pooling, its NNGP
estimated from random networks of width `--rf_width`, redrawn every step; one row per M in
`--rf_features`, M/width networks whose last hidden layers are the features), conv_entk (the
empirical NTK of one ConvNet-`--entk_depth` of width `--entk_width` with pooling, redrawn every
step; one row per neural-tangents implementation in `--entk_implementations`).

A third table (`--entk_compare`) computes one empirical-NTK matrix of that ConvNet at 28×28
(`--entk_compare_shape` support × targets) with each implementation and reports its time, the
ratio to Jacobian contraction, and the largest difference from it relative to the matrix's
largest entry (all are exact, so only float rounding may differ).

A second table (`--target_counts`) times the loss of every one of n real targets under an IPC-10
support set (`krr.krr_sample_losses`, what importance rescoring and evaluation cost), for n in
1k/10k/60k (28×28 images; tiled from mnist5k), to show that random-feature cost grows linearly.

For every architecture × IPC × target batch it compiles the distillation step of
`robust_dd.distill.make_step` on mnist5k (28×28), runs it until `--min_seconds` have passed
(at least
`--min_steps` steps), and records steps/s, XLA's compiled memory estimate for the step (arguments +
outputs + temporaries), the device's peak bytes where the backend reports them (GPU/TPU), and the
process's peak RSS so far. Writes JSON and prints a Markdown table.

Expected on a 2-core CPU (measured; docs/benchmarks.md): FC1 NTK at IPC 10 / batch 100 runs
hundreds of steps per second; Conv (3×3, no pooling) is one to three orders of magnitude
slower. Conv with pooling (--conv_pool) needs O((28·28)²) memory per image pair: expect it to
fail or crawl on CPU.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import empirical_ntk
from robust_dd import kernels
from robust_dd import krr
from robust_dd import methods
from robust_dd import random_features
import _bench  # scripts/_bench.py

FLAGS = flags.FLAGS
flags.DEFINE_list("archs", ["fc", "conv", "conv_rf"], "Kernels: fc, conv, conv_pool, conv_rf.")
flags.DEFINE_list("ipcs", ["1", "10", "50"], "Images per class.")
flags.DEFINE_list("batches", ["100", "1000"], "Target batch sizes.")
flags.DEFINE_list("depths", ["1"], "Layers / conv blocks of the exact kernels; a row each (e.g. "
                  "1,3: Conv1 and the RF networks' own depth).")
flags.DEFINE_float("min_seconds", 2.0, "Time each configuration at least this long.")
flags.DEFINE_integer("min_steps", 3, "and at least this many steps.")
flags.DEFINE_list("rf_features", ["256"], "conv_rf: M per step (M/rf_width networks); a row each.")
flags.DEFINE_integer("rf_width", 32, "conv_rf: width of each random network.")
flags.DEFINE_integer("rf_depth", 3, "conv_rf: conv blocks (each with AvgPool 2x2).")
flags.DEFINE_integer("entk_width", 64, "conv_entk: width of the network.")
flags.DEFINE_integer("entk_depth", 3, "conv_entk: conv blocks (each with AvgPool 2x2).")
flags.DEFINE_list("entk_implementations", ["jacobian", "structured"],
                  "conv_entk: neural-tangents implementations, a row each.")
flags.DEFINE_bool("entk_compare", False, "Time each empirical-NTK implementation on one kernel "
                  "matrix and check they agree.")
flags.DEFINE_list("entk_compare_shape", ["10", "100"], "Support and target images of the "
                  "comparison.")
flags.DEFINE_list("target_counts", ["1000", "10000", "60000"],
                  "Targets per evaluation for the linear-cost table (empty: skip it).")
flags.DEFINE_list("target_archs", ["fc", "conv_rf"], "Kernels of the linear-cost table.")
flags.DEFINE_string("out", "runs/benchmark_kip.json", "JSON output path.")


def _entk(implementation):
  return empirical_ntk.EmpiricalNTKKernel("conv", depth=FLAGS.entk_depth, width=FLAGS.entk_width,
                                          pool=True, implementation=implementation)


def _kernel(arch, depth, rf_features=None):
  if arch == "conv_entk":
    return _entk(rf_features)
  if arch == "conv_pool":
    return kernels.make_kernel_fn("conv", depth=depth, pool=True)
  if arch == "conv_rf":
    return random_features.RandomFeatureKernel("conv", num_features=rf_features,
                                               width=FLAGS.rf_width, depth=FLAGS.rf_depth,
                                               pool=True)
  return kernels.make_kernel_fn(arch, depth=depth)


def _name(arch, depth, rf_features=None):
  if arch == "conv_entk":
    return (f"conv{FLAGS.entk_depth}-pool empirical NTK (width {FLAGS.entk_width}, "
            f"{rf_features})")
  if arch == "conv_rf":
    return (f"conv{FLAGS.rf_depth}-pool RF nngp ({rf_features // FLAGS.rf_width} networks, "
            f"M={rf_features}, width {FLAGS.rf_width})")
  return {"fc": f"fc{depth} ntk", "conv": f"conv{depth} ntk (no pool)",
          "conv_pool": f"conv{depth}-pool ntk"}[arch]


def bench_targets(arch, depth, num_targets, x, y, rf_features=None):
  """Seconds for the losses of `num_targets` real targets under an IPC-10 support set."""
  kernel = _kernel(arch, depth, rf_features)
  kernel_fn = kernel.fixed(0) if hasattr(kernel, "fixed") else kernel
  idx = np.concatenate([np.flatnonzero(y == c)[:10] for c in range(10)])
  support, labels = jnp.asarray(x[idx]), data_lib.one_hot_centered(y[idx], 10)
  reps = -(-num_targets // len(x))
  targets = jnp.asarray(np.tile(x, (reps, 1, 1, 1))[:num_targets])
  target_labels = data_lib.one_hot_centered(np.tile(y, reps)[:num_targets], 10)
  fn = jax.jit(lambda s, t: krr.krr_sample_losses(s, labels, t, target_labels,
                                                  kernel_fn=kernel_fn))
  t0 = time.time()
  compiled = fn.lower(support, targets).compile()
  compile_seconds = time.time() - t0
  t0 = time.time()
  jax.block_until_ready(compiled(support, targets))
  return {"table": "targets", "arch": arch, "depth": depth, "num_targets": num_targets,
          "rf_features": rf_features,
          "seconds": time.time() - t0, "compile_seconds": compile_seconds,
          **_bench.memory_fields(compiled)}


def bench_one(arch, depth, ipc, batch, x, y, real, rf_features=None):
  kernel_fn = _kernel(arch, depth, rf_features)
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
  return {"arch": arch, "rf_features": rf_features, "depth": depth, "ipc": ipc,
          "support": 10 * ipc,
          "target_batch": batch, "steps_timed": steps, "steps_per_second": steps / seconds,
          "compile_seconds": compile_seconds, "first_step_seconds": first,
          "loss": float(metrics["loss"]), **_bench.memory_fields(compiled)}


_REFERENCE = {}


def bench_entk_compare(x, implementation):
  """One (support × targets) empirical-NTK matrix with `implementation`: seconds, and the largest
  difference from Jacobian contraction's matrix (computed once), relative to its largest entry."""
  n1, n2 = map(int, FLAGS.entk_compare_shape)
  x1, x2 = jnp.asarray(x[:n1]), jnp.asarray(x[n1:n1 + n2])
  fn = jax.jit(_entk(implementation).sample(jax.random.key(0)))
  t0 = time.time()
  compiled = fn.lower(x1, x2).compile()
  compile_seconds = time.time() - t0
  jax.block_until_ready(compiled(x1, x2))
  times = []
  for _ in range(3):
    t0 = time.time()
    k = jax.block_until_ready(compiled(x1, x2))
    times.append(time.time() - t0)
  k = np.asarray(k, np.float64)
  if implementation == "jacobian":  # Timed first: its matrix is the reference (one compile).
    _REFERENCE["jacobian"] = k
  if "jacobian" not in _REFERENCE:
    _REFERENCE["jacobian"] = np.asarray(jax.jit(_entk("jacobian").sample(jax.random.key(0)))(
        x1, x2), np.float64)
  reference = _REFERENCE["jacobian"]
  return {"table": "entk_compare", "implementation": implementation, "support": n1,
          "targets": n2, "seconds": float(np.median(times)), "compile_seconds": compile_seconds,
          "max_rel_diff_vs_jacobian": float(np.abs(k - reference).max()
                                            / np.abs(reference).max()),
          **_bench.memory_fields(compiled)}


def main(argv):
  del argv
  ds, x, real = _bench.mnist5k_real()
  def variants(arch):  # (depth, M): one per random-feature size for conv_rf, else per depth.
    if arch == "conv_rf":
      return [(FLAGS.rf_depth, int(m)) for m in FLAGS.rf_features]
    if arch == "conv_entk":  # The implementation rides in the M slot.
      return [(FLAGS.entk_depth, i) for i in FLAGS.entk_implementations]
    return [(int(d), None) for d in FLAGS.depths]

  configs = [dict(arch=arch, depth=d, rf_features=m, ipc=ipc, target_batch=batch)
             for arch in FLAGS.archs for d, m in variants(arch) for ipc in map(int, FLAGS.ipcs)
             for batch in map(int, FLAGS.batches)]
  configs += [dict(table="targets", arch=arch, depth=d, rf_features=m, num_targets=int(n))
              for arch in FLAGS.target_archs for d, m in variants(arch)
              for n in FLAGS.target_counts]

  if FLAGS.entk_compare:
    configs += [dict(table="entk_compare", implementation=i)
                for i in ("jacobian", "structured", "ntvp")]

  def run(table="step", **kw):
    if table == "entk_compare":
      return bench_entk_compare(x, kw["implementation"])
    if table == "targets":
      return bench_targets(kw["arch"], kw["depth"], kw["num_targets"], x, ds.y_train,
                           kw["rf_features"])
    return bench_one(kw["arch"], kw["depth"], kw["ipc"], kw["target_batch"], x, ds.y_train,
                     real, kw["rf_features"])

  results = _bench.run_all(run, configs, out=FLAGS.out)
  print(f"\nKIP step benchmark on {jax.devices()[0]} (jax {jax.__version__})\n")
  print("| kernel | IPC | target batch | steps/s | ms/step | XLA step MiB | device peak MiB |")
  print("|---|---|---|---|---|---|---|")
  for r in results:
    if r.get("table") in ("targets", "entk_compare"):
      continue
    if "error" in r:
      print(f"| {r['arch']} | {r['ipc']} | {r['target_batch']} | failed: {r['error'][:60]} |||")
      continue
    name = _name(r["arch"], r["depth"], r.get("rf_features"))
    print(f"| {name} | {r['ipc']} | {r['target_batch']} | "
          f"{r['steps_per_second']:.3g} | {1000 / r['steps_per_second']:.4g} | "
          f"{_bench.mib(r['xla_step_bytes'])} | {_bench.mib(r['device_peak_bytes'])} |")
  steps = [r for r in results if "table" not in r and "error" not in r]
  ratios = [(rf, ex) for rf in steps if rf["arch"] == "conv_rf" for ex in steps
            if ex["arch"] == "conv" and (ex["ipc"], ex["target_batch"]) == (rf["ipc"],
                                                                             rf["target_batch"])]
  if ratios:
    print("\nRandom-feature step time against the exact conv NTK (no pool), same IPC and batch:\n")
    for rf, ex in ratios:
      print(f"- IPC {rf['ipc']}, batch {rf['target_batch']}: "
            f"{_name('conv_rf', rf['depth'], rf['rf_features'])} is "
            f"{rf['steps_per_second'] / ex['steps_per_second']:.3g}x as fast as "
            f"{_name('conv', ex['depth'])}")
  targets = [r for r in results if r.get("table") == "targets"]
  if targets:
    print("\nLosses of n real targets under an IPC-10 support set (krr_sample_losses):\n")
    print("| kernel | targets | seconds | µs/target | XLA MiB |")
    print("|---|---|---|---|---|")
    for r in targets:
      if "error" in r:
        print(f"| {r['arch']} | {r['num_targets']} | failed: {r['error'][:60]} |||")
        continue
      name = _name(r["arch"], r["depth"], r.get("rf_features"))
      print(f"| {name} | {r['num_targets']} | {r['seconds']:.3g} | "
            f"{1e6 * r['seconds'] / r['num_targets']:.3g} | {_bench.mib(r['xla_step_bytes'])} |")
  compare = [r for r in results if r.get("table") == "entk_compare" and "error" not in r]
  if compare:
    r0 = compare[0]
    print(f"\nEmpirical NTK of conv{FLAGS.entk_depth}-pool width {FLAGS.entk_width} at 28x28, "
          f"{r0['support']} x {r0['targets']} images, each neural-tangents implementation:\n")
    print("| implementation | seconds | × jacobian time | compile s | max rel diff vs jacobian "
          "| XLA MiB |")
    print("|---|---|---|---|---|---|")
    for r in compare:
      print(f"| {r['implementation']} | {r['seconds']:.3g} | {r['seconds'] / r0['seconds']:.3g} "
            f"| {r['compile_seconds']:.3g} | {r['max_rel_diff_vs_jacobian']:.2g} | "
            f"{_bench.mib(r['xla_step_bytes'])} |")
  print(f"\nProcess peak RSS: {_bench.mib(results[-1].get('process_peak_rss_bytes'))} MiB. "
        f"JSON: {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
