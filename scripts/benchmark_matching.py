r"""Benchmarks DC and LCMat outer iterations: seconds per outer iteration and peak memory.

  python scripts/benchmark_matching.py --out=runs/benchmark_matching.json

For each method x IPC it compiles `robust_dd.methods.build_step` on mnist5k (28x28, ConvNet-3
width 128, DC's outer/inner loops for that IPC, `--real_per_class` real images per class per
update, `--class_batches` classes vmapped at once, `--grad_chunks` images per gradient chunk),
then times `--repeats` outer iterations
(each: a fresh network, outer_loop set updates,
inner training between them). With `--compare_loop` (IPC 1 only, where one outer iteration is one
update) it also times the same step with the per-class losses computed by a Python loop over
classes instead of `vmap`. Records XLA's memory estimate for the step (arguments + outputs +
temporaries), the device's peak bytes where reported (GPU/TPU) and the process peak RSS. Writes
JSON and prints a Markdown table.

With `--torch` (default; skipped where torch is not installed, it is not a robust_dd
dependency) DC rows also time the PyTorch reference outer iteration (`scripts/_torch_dc.py`, the
DC code's loop on the same ConvNet, initial set and real data; tested equal to robust_dd's loss
and image gradient), called in turn with the JAX step in the same process, and report the
ratio of the two minima.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

from robust_dd import config as config_lib
from robust_dd import convolutions
from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import matching
from robust_dd import methods
from robust_dd import presets
from robust_dd import training
import _bench  # scripts/_bench.py

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["dc", "lcmat"], "Matching methods: dc, dsa, lcmat.")
flags.DEFINE_list("ipcs", ["1", "10"], "Images per class.")
flags.DEFINE_integer("real_per_class", 256, "Real images per class per update.")
flags.DEFINE_integer("repeats", 2, "Timed outer iterations per configuration.")
flags.DEFINE_bool("compare_loop", True, "At IPC 1, also time the class loop instead of vmap.")
flags.DEFINE_string("conv_impl", "auto", "auto, patches, lax, shifted, winograd or winograd4.")
flags.DEFINE_list("class_batches", ["default"], "Classes vmapped at once (0: all; default: "
                  "matching.default_class_batch of the backend), one row each.")
flags.DEFINE_list("grad_chunks", ["default"], "Images per gradient chunk (--grad_chunk; 0: one "
                  "batch; default: training.default_chunk of the backend), one row each.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch reference DC outer iteration "
                  "(scripts/_torch_dc.py) on the same network and data, interleaved with the JAX "
                  "step, where torch is installed (DC rows only).")
flags.DEFINE_bool("inner_share", True, "Where outer_loop > 1, also time the step without its "
                  "inner loop (--inner_loop=0), interleaved, and report the inner loop's share.")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: the machine's cores).")
flags.DEFINE_string("out", "runs/benchmark_matching.json", "JSON output path.")


def torch_outer_iteration(config, x_syn, x, y):
  """`run()` for one PyTorch DC outer iteration from the same initial set, real data and loops
  (None where torch is not installed)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import _torch_dc  # pylint: disable=g-import-not-at-top  # scripts/_torch_dc.py
  except ImportError:
    return None
  torch.set_num_threads(FLAGS.torch_threads or os.cpu_count())
  nchw = lambda a: torch.tensor(np.asarray(a, np.float32).transpose(0, 3, 1, 2))
  syn = nchw(x_syn).reshape(10, -1, x.shape[-1], *x.shape[1:3])
  syn = syn.detach().requires_grad_(True)
  opt = torch.optim.SGD([syn], lr=config.optim.learning_rate, momentum=config.optim.momentum)
  by_class = [nchw(x[y == c]) for c in range(10)]
  rng = np.random.default_rng(0)
  n = config.optim.real_per_class
  sample = lambda: torch.stack([b[rng.choice(len(b), n, replace=False)] for b in by_class])
  padding = 3 if config.network.net_padding == "reference" and x.shape[1:] == (28, 28, 1) else 1
  m = config.matching
  return lambda: _torch_dc.outer_iteration(
      lambda: _torch_dc.ConvNet(10, channels=x.shape[-1], width=config.network.net_width,
                                depth=config.network.net_depth, first_padding=padding,
                                side=x.shape[1]),
      syn, opt, sample, outer_loop=m.outer_loop, inner_loop=m.inner_loop,
      lr_net=m.net_learning_rate)


def compiled_step(method, ipc, x, y, real, **overrides):
  """(config, compiled step, compile seconds, run) of a method's outer iteration on mnist5k."""
  config = presets.resolve_config(config_lib.DistillConfig.make(
      method=method, ipc=ipc, real_per_class=FLAGS.real_per_class, conv_impl=FLAGS.conv_impl,
      **overrides), 10)
  optimizer = distill.make_optimizer(learning_rate=config.optim.learning_rate, learn_labels=False,
                                     name=config.optim.optimizer)
  idx = np.concatenate([np.flatnonzero(y == c)[:ipc] for c in range(10)])
  state = distill.init_state(x[idx], data_lib.one_hot_centered(y[idx], 10), optimizer)
  step = methods.build_step(config, optimizer, num_classes=10, input_shape=x.shape[1:])
  return (config, idx, *_bench.compile_step(step, state, real, jax.random.key(0)))


def bench_one(method, ipc, x, y, real, *, use_vmap=True, class_batch=0, grad_chunk=None):
  # "Loop" rows (use_vmap=False) compute one class at a time (lax.map, class_batch=1).
  kw = dict(class_batch=class_batch if use_vmap else 1, grad_chunk=grad_chunk)
  config, idx, compiled, compile_seconds, run = compiled_step(method, ipc, x, y, real, **kw)
  fns = {"jax": run}
  if FLAGS.inner_share and config.matching.outer_loop > 1:
    fns["no_inner"] = compiled_step(method, ipc, x, y, real, **kw, inner_loop=0)[-1]
  torch_run = (torch_outer_iteration(config, x[idx], x, y)
               if FLAGS.torch and method == "dc" and use_vmap else None)
  if torch_run is not None:
    fns["torch"] = torch_run
  all_times, last = _bench.interleave(fns, repeats=FLAGS.repeats)
  times, metrics = all_times["jax"], last["jax"]
  extra = {}
  if "no_inner" in all_times:
    extra["inner_loop_share"] = 1.0 - float(np.min(all_times["no_inner"]) / np.min(times))
  if "torch" in all_times:
    extra.update({"torch_times": all_times["torch"],
             "torch_seconds_per_outer_iteration": float(np.median(all_times["torch"])),
             "torch_over_jax": float(np.min(all_times["torch"]) / np.min(times))})
  return {"method": method, "ipc": ipc, "vmap": use_vmap, "class_batch": class_batch,
          "grad_chunk": training.default_chunk(grad_chunk), **extra,
          "real_per_class": FLAGS.real_per_class,
          "outer_loop": config.matching.outer_loop, "inner_loop": config.matching.inner_loop,
          "conv_impl": _conv_impl(), "seconds_per_outer_iteration": float(np.median(times)),
          "seconds_per_update": float(np.median(times)) / config.matching.outer_loop,
          "times": times, "compile_seconds": compile_seconds,
          "loss": float(metrics["loss"]), **_bench.memory_fields(compiled)}


def _conv_impl():
  impl = FLAGS.conv_impl
  return f"auto ({convolutions.auto_conv_impl()})" if impl == "auto" else impl


def _fmt(v):
  return "-" if v is None else f"{v:.2f}"


def main(argv):
  del argv
  ds, x, real = _bench.mnist5k_real()
  batches = [None if b == "default" else int(b) for b in FLAGS.class_batches]
  chunks = [None if c == "default" else int(c) for c in FLAGS.grad_chunks]
  configs = [dict(method=m, ipc=int(i), vmap=True, class_batch=b, grad_chunk=c)
             for m in FLAGS.methods for i in FLAGS.ipcs for b in batches for c in chunks]
  if FLAGS.compare_loop and "1" in FLAGS.ipcs:
    configs += [dict(method=m, ipc=1, vmap=False, class_batch=0, grad_chunk=None)
                for m in FLAGS.methods]
  results = _bench.run_all(
      lambda method, ipc, vmap, **kw: bench_one(method, ipc, x, ds.y_train, real,
                                                use_vmap=vmap, **kw),
      configs, out=FLAGS.out)
  print(f"\nMatching benchmark on {jax.devices()[0]} (jax {jax.__version__}), "
        f"{FLAGS.real_per_class} real images per class per update\n")
  print("| method | IPC | classes | gradient chunk | outer/inner loop | s per outer iteration | "
        "s per update | inner-loop share | PyTorch s per outer iteration | PyTorch / JAX (min) | "
        "XLA step MiB | device peak MiB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    batch = r["class_batch"]
    how = ("loop" if not r["vmap"] else
           f"default ({matching.default_class_batch() or 'all'} at a time)" if batch is None else
           f"vmap {batch} at a time" if batch else "vmap")
    if "error" in r:
      print(f"| {r['method']} | {r['ipc']} | {how} | failed: {r['error'][:60]} ||||||||")
      continue
    print(f"| {r['method']} | {r['ipc']} | {how} | {r['grad_chunk'] or 'none'} | "
          f"{r['outer_loop']}/{r['inner_loop']} | "
          f"{r['seconds_per_outer_iteration']:.2f} | {r['seconds_per_update']:.2f} | "
          f"{_fmt(r.get('inner_loop_share'))} | "
          f"{_fmt(r.get('torch_seconds_per_outer_iteration'))} | {_fmt(r.get('torch_over_jax'))}"
          f" | {_bench.mib(r['xla_step_bytes'])} | {_bench.mib(r['device_peak_bytes'])} |")
  print(f"\nProcess peak RSS: {_bench.mib(results[-1].get('process_peak_rss_bytes'))} MiB. "
        f"JSON: {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
