r"""Benchmarks the finite-network evaluator's training: seconds per epoch, by gradient chunk.

  python scripts/benchmark_eval.py --out=runs/benchmark_eval.json

Trains `--seeds` fresh ConvNet-3s (width 128, one `vmap`) on `--ipc` mnist5k images per class
with the evaluation schedule (`evaluate.network_predictions`' training: SGD with momentum, batch
256, per-sample DSA) for `--epochs` epochs, once per `--grad_chunks` value (images per gradient
chunk, `training.train_network(chunk=...)`; 0: one batch; default: `training.default_chunk` of
the backend). After one untimed call each (compilation), the settings are called in turn
`--repeats` rounds, so they see the same machine state; reports the minimum and its ratio to
the first setting. Writes JSON and prints a Markdown table.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import evaluate
from robust_dd import io
from robust_dd import models
from robust_dd import training
import _bench  # scripts/_bench.py

FLAGS = flags.FLAGS
flags.DEFINE_integer("ipc", 10, "Training images per class (the distilled set's size).")
flags.DEFINE_integer("seeds", 3, "Networks trained at once (vmapped).")
flags.DEFINE_integer("epochs", 10, "Epochs per timed call.")
flags.DEFINE_list("grad_chunks", ["0", "default"], "Images per gradient chunk (0: one batch; "
                  "default: training.default_chunk of the backend), one row each.")
flags.DEFINE_integer("repeats", 3, "Timed rounds (minimum reported).")
flags.DEFINE_string("out", "runs/benchmark_eval.json", "JSON output path.")


def main(argv):
  del argv
  ds, x, _ = _bench.mnist5k_real()
  idx = np.concatenate([np.flatnonzero(ds.y_train == c)[:FLAGS.ipc] for c in range(10)])
  model = models.make_network("convnet", num_classes=10, input_shape=x.shape[1:])
  keys = jnp.stack([jax.random.key(i) for i in range(FLAGS.seeds)])
  chunks = [training.default_chunk(None if c == "default" else int(c)) for c in FLAGS.grad_chunks]
  kw = dict(apply_fn=models.logits_fn(model), init_fn=models.init_fn(model, x.shape[1:]),
            epochs=FLAGS.epochs, augment=evaluate.dsa_per_sample)
  fns = {c: (lambda c=c: jax.block_until_ready(training.train_network(
      keys, x[idx], ds.y_train[idx], chunk=c, **kw))) for c in dict.fromkeys(chunks)}
  for fn in fns.values():
    fn()  # Compilation.
  times, _ = _bench.interleave(fns, repeats=FLAGS.repeats)
  first = min(times[chunks[0]])
  rows = [{"grad_chunk": c, "times": t, "seconds": min(t),
           "seconds_per_epoch": min(t) / FLAGS.epochs, "over_first": first / min(t)}
          for c, t in times.items()]
  io.save_json(FLAGS.out, {"device": str(jax.devices()[0]), "jax_version": jax.__version__,
                           "ipc": FLAGS.ipc, "seeds": FLAGS.seeds, "epochs": FLAGS.epochs,
                           "results": rows})
  print(f"\nEvaluator training on {jax.devices()[0]} (jax {jax.__version__}): {FLAGS.seeds} "
        f"ConvNet-3s at once, {FLAGS.ipc * 10} images, {FLAGS.epochs} epochs per call\n")
  print("| gradient chunk | s per call (min) | s per epoch | speed-up over the first row |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['grad_chunk'] or 'none'} | {r['seconds']:.2f} | {r['seconds_per_epoch']:.3f} | "
          f"{r['over_first']:.2f} |")
  print(f"\nJSON: {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
