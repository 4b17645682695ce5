r"""Attributes robust DC's cost over the plain step: the matching loss and its image gradient.

  python scripts/profile_robust_dc.py --out=runs/profile_robust_dc.json

ConvNet-3 (width 128) on MNIST-shaped random inputs, IPC 1, `--real` real images split over the
10 classes: the plain class-summed matching loss (`matching.per_class_losses`) and the robust
per-cluster one (`matching.per_class_cluster_losses`, K = `--clusters`, K / 10 clusters a class),
one class at a time (the CPU default), real gradients in chunks of `--grad_chunk`, each jitted,
timed as its value and as its gradient in the synthetic images (minimum of `--repeats`). The
difference between a loss's value and its gradient is the backward pass into the images;
between K and plain, the per-cluster work. Writes JSON and prints a Markdown table.
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

from robust_dd import matching
from robust_dd import models
from robust_dd import training
import _bench  # scripts/_bench.py

FLAGS = flags.FLAGS
flags.DEFINE_integer("clusters", 1000, "Robust clusters K (K / 10 per class).")
flags.DEFINE_integer("real", 1000, "Real images in all (split over the classes and clusters).")
flags.DEFINE_integer("grad_chunk", None, "Images per real-gradient chunk (0: one batch; default: "
                     "training.default_chunk of the backend).")
flags.DEFINE_integer("repeats", 2, "Timed calls per row (minimum reported).")
flags.DEFINE_string("out", "runs/profile_robust_dc.json", "JSON output path.")

CLASSES, SHAPE = 10, (28, 28, 1)


def bench(name: str, clusters: int, gradient: bool) -> dict:
  """One row: the plain (clusters=0) or robust loss, its value or its image gradient."""
  model = models.make_network("convnet", num_classes=CLASSES, input_shape=SHAPE)
  apply_fn = models.logits_fn(model)
  params = models.init_params(model, jax.random.key(1), SHAPE)
  syn = jax.random.normal(jax.random.key(2), (CLASSES, 1, *SHAPE))
  per_class = FLAGS.real // CLASSES
  real = jax.random.normal(jax.random.key(3), (CLASSES, per_class, *SHAPE))
  class_loss = matching.gradient_match_class_loss(
      apply_fn, chunk=training.default_chunk(FLAGS.grad_chunk))
  if clusters:
    m = clusters // CLASSES
    real = real.reshape(CLASSES, m, per_class // m, *SHAPE)
    mask = jnp.ones(real.shape[:3])
    loss = lambda s: matching.per_class_cluster_losses(class_loss, params, s, real, mask,
                                                       class_batch=1).sum()
  else:
    loss = lambda s: matching.per_class_losses(class_loss, params, s, real, class_batch=1).sum()
  fn = jax.jit(jax.grad(loss) if gradient else loss)
  start = time.perf_counter()
  jax.block_until_ready(fn(syn))
  compile_seconds = time.perf_counter() - start
  times, _ = _bench.interleave({"call": lambda: jax.block_until_ready(fn(syn))},
                               repeats=FLAGS.repeats)
  return {"row": name, "clusters": clusters, "gradient": gradient,
          "grad_chunk": training.default_chunk(FLAGS.grad_chunk), "seconds": min(times["call"]),
          "first_call_seconds": compile_seconds}


def main(argv):
  del argv
  configs = [dict(name=f"{'plain' if k == 0 else f'K = {k}'} {'image gradient' if g else 'loss'}",
                  clusters=k, gradient=g) for k in (0, FLAGS.clusters) for g in (False, True)]
  results = _bench.run_all(bench, configs, out=FLAGS.out)
  print("\n| row | s | first call s |\n|---|---|---|")
  for r in results:
    if "error" in r:
      print(f"| {r['name']} | error | {r['error'][:60]} |")
    else:
      print(f"| {r['row']} | {r['seconds']:.2f} | {r['first_call_seconds']:.1f} |")
  print(f"\nJSON: {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
