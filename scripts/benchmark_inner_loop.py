r"""Benchmarks DC's inner loop: `--steps` full-batch SGD steps of ConvNet-3 on the synthetic set.

  python scripts/benchmark_inner_loop.py --out=runs/benchmark_inner_loop.json

At IPC 10 the inner loop is most of a DC outer iteration (450 of these steps on 100 images; see
`benchmark_matching.py`'s inner-loop share). This times `training.sgd_steps` (jitted, the
default gradient chunk) on the first `--ipc` mnist5k images of each class, for the ConvNet with
its first convolution and InstanceNorm folded into one matmul (`fold_norm=True`, the default)
and unfolded, and, with `--torch` (default; skipped where torch is not installed, it is not a
robust_dd dependency), the PyTorch reference's loop on the same network and images
(`scripts/_torch_dc.py`: its ConvNet, SGD and cross-entropy, as in `outer_iteration`). All are
called in turn for `--rounds` rounds in one process, so they see the same machine state. Writes
JSON (wall and CPU seconds of every call) and prints a Markdown table with each row's ratio to
the default (paired medians and minima).
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

from robust_dd import convolutions
from robust_dd import models
from robust_dd import training
import _bench  # scripts/_bench.py

FLAGS = flags.FLAGS
flags.DEFINE_integer("ipc", 10, "Synthetic images per class (the batch: 10 * ipc images).")
flags.DEFINE_integer("steps", 50, "SGD steps per timed call (DC's inner_loop at IPC 10).")
flags.DEFINE_integer("rounds", 5, "Timed calls of each system, in turn.")
flags.DEFINE_float("learning_rate", 0.01, "The network's SGD learning rate (DC's lr_net).")
flags.DEFINE_string("conv_impl", "auto", "auto, patches, lax, shifted, winograd or winograd4.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch reference's loop (where installed).")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: the machine's cores).")
flags.DEFINE_string("out", "runs/benchmark_inner_loop.json", "JSON output path.")


def jax_loop(x, y, *, fold_norm: bool):
  """A no-argument callable: `--steps` SGD steps from fixed initial parameters (compiled)."""
  net = models.make_network("convnet", num_classes=10, input_shape=x.shape[1:],
                            conv_impl=FLAGS.conv_impl).clone(fold_norm=fold_norm)
  apply_fn = models.logits_fn(net)
  params = models.init_params(net, jax.random.key(0), x.shape[1:])
  loop = jax.jit(lambda p: training.sgd_steps(
      apply_fn, p, x, y, key=jax.random.key(1), steps=FLAGS.steps,
      learning_rate=FLAGS.learning_rate, chunk=training.default_chunk(None)))
  jax.block_until_ready(loop(params))  # Compiles.
  return lambda: jax.block_until_ready(loop(params))


def torch_loop(x, y):
  """The PyTorch reference's inner loop on the same images (None where torch is absent)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
    import _torch_dc  # pylint: disable=g-import-not-at-top  # scripts/_torch_dc.py
  except ImportError:
    return None
  torch.set_num_threads(FLAGS.torch_threads or os.cpu_count())
  padding = models.make_network("convnet", num_classes=10, input_shape=x.shape[1:]).first_padding
  net = _torch_dc.ConvNet(10, channels=x.shape[-1], width=128, depth=3, first_padding=padding,
                          side=x.shape[1])
  state = {k: v.clone() for k, v in net.state_dict().items()}
  images = torch.tensor(np.asarray(x, np.float32).transpose(0, 3, 1, 2))
  labels = torch.tensor(np.asarray(y), dtype=torch.long)

  def run():
    net.load_state_dict(state)
    optimizer = torch.optim.SGD(net.parameters(), lr=FLAGS.learning_rate)
    for _ in range(FLAGS.steps):
      optimizer.zero_grad()
      F.cross_entropy(net(images), labels).backward()
      optimizer.step()
  return run


def main(argv):
  del argv
  ds, x, _ = _bench.mnist5k_real()
  idx = np.concatenate([np.flatnonzero(ds.y_train == c)[:FLAGS.ipc] for c in range(10)])
  x, y = jnp.asarray(x[idx]), jnp.asarray(ds.y_train[idx])
  fns = {"robust_dd (fold_norm, default)": jax_loop(x, y, fold_norm=True),
         "robust_dd, fold_norm=False": jax_loop(x, y, fold_norm=False)}
  run_torch = torch_loop(x, y) if FLAGS.torch else None
  if run_torch is not None:
    fns["PyTorch reference"] = run_torch
  wall, cpu, _ = _bench.interleave_cpu(fns, repeats=FLAGS.rounds)
  base = next(iter(fns))
  results = [{"system": name, "ipc": FLAGS.ipc, "images": len(idx), "steps": FLAGS.steps,
              "conv_impl": FLAGS.conv_impl, "auto_conv_impl": convolutions.auto_conv_impl(),
              "wall_seconds": wall[name], "cpu_seconds": cpu[name],
              "paired_median_ratio": float(np.median(np.divide(wall[name], wall[base]))),
              "min_ratio": float(np.min(wall[name]) / np.min(wall[base]))} for name in fns]
  _bench.save(FLAGS.out, results)
  print(f"\nInner loop on {jax.devices()[0]} (jax {jax.__version__}): {FLAGS.steps} SGD steps "
        f"on {len(idx)} images, {FLAGS.rounds} rounds in turn\n")
  print("| system | s per call (min / median) | CPU s (min) | / default (paired median) | "
        "/ default (minima) |")
  print("|---|---|---|---|---|")
  for r in results:
    w = r["wall_seconds"]
    print(f"| {r['system']} | {min(w):.2f} / {np.median(w):.2f} | {min(r['cpu_seconds']):.2f} | "
          f"{r['paired_median_ratio']:.3f} | {r['min_ratio']:.3f} |")
  print(f"\nJSON: {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
