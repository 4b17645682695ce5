r"""Benchmarks trajectory matching (MTT): time and memory per iteration as the unroll grows.

  python scripts/benchmark_mtt.py --out=runs/benchmark_mtt.json

One MTT iteration (the loop's jitted step: an expert segment, N student SGD steps on the
synthetic set, the normalised distance, the gradient through the unroll to the images and the
step size, one optimiser update) on mnist5k shapes (28x28x1, 10 classes) with the config's
ConvNet, for N in --syn_steps, with and without rematerialisation. The expert buffer is
synthetic (random parameter vectors of the right size): the cost does not depend on its values.
Records the median step time, compile time, XLA's memory estimate of the step (where remat
shows: activations of one student step instead of N) and peak RSS; writes JSON and prints a
Markdown table.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np

from robust_dd import config as config_lib
from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import methods
from robust_dd import models
from robust_dd import presets
import _bench  # scripts/_bench.py

FLAGS = flags.FLAGS
flags.DEFINE_list("syn_steps", ["10", "20", "50"], "Student steps N per iteration.")
flags.DEFINE_integer("ipc", 1, "Synthetic images per class (the student's batch: all of them).")
flags.DEFINE_integer("net_width", 128, "ConvNet width.")
flags.DEFINE_bool("augment", False, "DSA on the student's batches.")
flags.DEFINE_integer("repeats", 3, "Timed iterations per configuration (median reported).")
flags.DEFINE_string("out", "runs/benchmark_mtt.json", "JSON output path.")


def bench_one(syn_steps: int, remat: bool):
  config = presets.resolve_config(config_lib.DistillConfig.make(
      method="mtt", ipc=FLAGS.ipc, expert_dir="synthetic", syn_steps=syn_steps, remat=remat,
      net_width=FLAGS.net_width, augment=FLAGS.augment), 10)
  ds, x, real = _bench.mnist5k_real()
  model = methods.network_model(config, 10, x.shape[1:])
  init = models.init_fn(model, tuple(x.shape[1:]))
  theta = ravel_pytree(init(jax.random.key(0)))[0]
  rng = np.random.default_rng(0)
  experts = theta[None, None] + 0.01 * jnp.asarray(  # 2 experts x 13 epochs.
      rng.normal(size=(2, 13, theta.size)), jnp.float32).cumsum(1)
  real = dict(real, experts=experts)
  o = config.optim
  optimizer = distill.make_optimizer(learning_rate=o.learning_rate, learn_labels=False,
                                     name=o.optimizer, momentum=o.momentum,
                                     learning_rates=methods.get("mtt").learning_rates(config))
  idx = np.concatenate([np.flatnonzero(ds.y_train == c)[:FLAGS.ipc] for c in range(10)])
  state = distill.init_state(x[idx], data_lib.one_hot_centered(ds.y_train[idx], 10), optimizer,
                             extra_params=methods.get("mtt").extra_params(config))
  step = methods.build_step(config, optimizer, num_classes=10, input_shape=x.shape[1:])
  compiled, compile_s, times, metrics = _bench.time_step(step, state, real, jax.random.key(1),
                                                         repeats=FLAGS.repeats)
  return {"syn_steps": syn_steps, "remat": remat, "ipc": FLAGS.ipc,
          "net_width": FLAGS.net_width, "augment": FLAGS.augment,
          "seconds": float(np.median(times)), "compile_seconds": round(compile_s, 2),
          "loss": float(metrics["loss"]), "params": int(theta.size),
          **_bench.memory_fields(compiled)}


def main(argv):
  del argv
  configs = [dict(syn_steps=int(n), remat=r) for n in FLAGS.syn_steps for r in (True, False)]
  results = _bench.run_all(bench_one, configs, out=FLAGS.out)
  print(f"\nMTT iteration, mnist5k shapes, ConvNet-3 w{FLAGS.net_width}, IPC {FLAGS.ipc}, DSA "
        f"{'on' if FLAGS.augment else 'off'}, {jax.devices()[0].platform}:\n")
  print("| N student steps | remat | s per iteration | compile s | XLA step MiB | peak RSS MiB |")
  print("|---|---|---|---|---|---|")
  for r in results:
    if "error" in r:
      print(f"| {r['syn_steps']} | {'on' if r['remat'] else 'off'} | {r['error']} | | | |")
      continue
    print(f"| {r['syn_steps']} | {'on' if r['remat'] else 'off'} | {r['seconds']:.3f} | "
          f"{r['compile_seconds']:.1f} | {_bench.mib(r['xla_step_bytes'])} | "
          f"{_bench.mib(r['process_peak_rss_bytes'])} |")


if __name__ == "__main__":
  app.run(main)
