r"""Attributes robust DC's cost over the plain step: the matching loss and its image gradient.

  python scripts/profile_robust_dc.py --out=runs/profile_robust_dc.json

ConvNet-3 (width 128) on MNIST-shaped random inputs, IPC 1, `--real` real images split over the
10 classes: the plain class-summed matching loss (`matching.per_class_losses`) and the robust
per-cluster one (`matching.per_class_cluster_losses`, K = `--clusters`, K / 10 clusters a class),
one class at a time (the CPU default), real gradients in chunks of `--grad_chunk`, each jitted,
timed as its value and as its gradient in the synthetic images (all rows compiled, then called
in turn for `--repeats` rounds; minimum wall time reported, and the median CPU time of the
process, user + system, which the VM's drifting share of its cores stretches much less). The
difference between a loss's value and its gradient is the backward pass into the images; between
K and plain, the per-cluster work. Writes JSON and prints a Markdown table.

With one real image per cluster (K = `--real`) the robust rows use ghost norms
(`robust_dd.ghost`); a row times the image gradient with per-image autodiff gradients
instead (`gradient_match_class_loss(ghost=False)`). `--ablate` adds two rows that attribute the
ghost path's cost, timing only (their gradients are wrong): the inner products' backward pass
dropped (their value kept, no gradient: no weight gradient, nothing stored for it), and with it
the wide layers' Gram norms (replaced by |delta|^2).
"""

import os
import sys
import time
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import ghost as ghost_lib
from robust_dd import io
from robust_dd import matching
from robust_dd import models
from robust_dd import training
import _bench  # scripts/_bench.py

FLAGS = flags.FLAGS
flags.DEFINE_integer("clusters", 1000, "Robust clusters K (K / 10 per class).")
flags.DEFINE_integer("real", 1000, "Real images in all (split over the classes and clusters).")
flags.DEFINE_integer("grad_chunk", None, "Images per real-gradient chunk (0: one batch; default: "
                     "training.default_chunk of the backend).")
flags.DEFINE_integer("repeats", 3, "Rounds of calls, every row in turn (minimum wall time and "
                     "median CPU time reported).")
flags.DEFINE_bool("ablate", False, "Also time the ghost image gradient without the inner "
                  "products' backward pass, and without it and the Gram norms (timing only).")
flags.DEFINE_string("out", "runs/profile_robust_dc.json", "JSON output path.")

CLASSES, SHAPE = 10, (28, 28, 1)


def compile_row(name: str, clusters: int, gradient: bool, ghost: bool = True) -> dict:
  """One row, compiled and called once: the plain (clusters=0) or robust loss, its value or its
  image gradient (`ghost`: as `matching.gradient_match_class_loss`). Returns the row with its
  `call` (no arguments). The network's parameters and the real images are arguments of
  the jitted call (as constants XLA would try to fold the real gradients at compile time)."""
  model = models.make_network("convnet", num_classes=CLASSES, input_shape=SHAPE)
  apply_fn = models.logits_fn(model)
  params = models.init_params(model, jax.random.key(1), SHAPE)
  syn = jax.random.normal(jax.random.key(2), (CLASSES, 1, *SHAPE))
  per_class = FLAGS.real // CLASSES
  real = jax.random.normal(jax.random.key(3), (CLASSES, per_class, *SHAPE))
  chunk = training.default_chunk(FLAGS.grad_chunk)
  class_loss = matching.gradient_match_class_loss(apply_fn, chunk=chunk, ghost=ghost)
  if clusters:
    m = clusters // CLASSES
    real = real.reshape(CLASSES, m, per_class // m, *SHAPE)
    mask = jnp.ones(real.shape[:3])
    loss = lambda s, p, x: matching.per_class_cluster_losses(class_loss, p, s, x, mask,
                                                             class_batch=1).sum()
  else:
    loss = lambda s, p, x: matching.per_class_losses(class_loss, p, s, x, class_batch=1).sum()
  fn = jax.jit(jax.grad(loss) if gradient else loss)
  call = lambda: jax.block_until_ready(fn(syn, params, real))
  start = time.perf_counter()
  call()
  return {"row": name, "clusters": clusters, "gradient": gradient, "ghost": ghost,
          "grad_chunk": chunk, "first_call_seconds": time.perf_counter() - start, "call": call}


def _ablated(name: str, clusters: int, gram: bool) -> dict:
  """The K = `clusters` image gradient with ghost's inner products cut from the gradient (their
  values kept) and, unless `gram`, the Gram norms replaced by |delta|^2: what those parts cost.
  The patches are active while the row is traced (its first call, in `compile_row`)."""
  # pylint: disable=protected-access
  inner, stats = ghost_lib._inner_products, ghost_lib._batch_stats

  def no_backward(layer, s, a, d, r):
    return jax.lax.stop_gradient(inner(layer, s, a, d, r))

  def no_gram(layer, a, d):
    if layer.kind == "conv" and not layer.direct:
      return jnp.sum(d * d, (1, 2)), None
    return stats(layer, a, d)

  with mock.patch.object(ghost_lib, "_inner_products", no_backward), \
       mock.patch.object(ghost_lib, "_batch_stats", stats if gram else no_gram):
    return compile_row(name, clusters, gradient=True)


def main(argv):
  del argv
  label = lambda k: "plain" if k == 0 else f"K = {k}"
  configs = [dict(name=f"{label(k)} {'image gradient' if g else 'loss'}", clusters=k, gradient=g)
             for k in (0, FLAGS.clusters) for g in (False, True)]
  configs.append(dict(name=f"{label(FLAGS.clusters)} image gradient, per-image autodiff",
                      clusters=FLAGS.clusters, gradient=True, ghost=False))
  rows = [compile_row(**c) for c in configs]
  if FLAGS.ablate:
    k = label(FLAGS.clusters)
    rows += [_ablated(f"{k} image gradient, inner products' backward dropped", FLAGS.clusters,
                      gram=True),
             _ablated(f"{k} image gradient, that and Gram norms dropped", FLAGS.clusters,
                      gram=False)]
  # All rows called in turn, `--repeats` rounds: the VM's speed drifts between minutes.
  times, cpu, _ = _bench.interleave_cpu({r["row"]: r.pop("call") for r in rows},
                                        repeats=FLAGS.repeats)
  results = [{**r, "seconds": min(times[r["row"]]), "times": times[r["row"]],
              "cpu_seconds": float(np.median(cpu[r["row"]])), "cpu_times": cpu[r["row"]]}
             for r in rows]
  io.save_json(FLAGS.out, {"device": str(jax.devices()[0]), "jax_version": jax.__version__,
                           "results": results})
  print("\n| row | s (min) | CPU s (median) | first call s |\n|---|---|---|---|")
  for r in results:
    print(f"| {r['row']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
          f"{r['first_call_seconds']:.1f} |")
  by_row = {r["row"]: r for r in results}
  k = label(FLAGS.clusters)
  plain = by_row["plain image gradient"]
  for row, r in by_row.items():
    if row.startswith(f"{k} image gradient"):
      print(f"\n{row}: {r['seconds'] / plain['seconds']:.2f}x plain (wall, minima), "
            f"{r['cpu_seconds'] / plain['cpu_seconds']:.2f}x (CPU, medians)")
  print(f"\nJSON: {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
