r"""Step time of KIP, random-feature KIP and DC on meshes of 1, 2, 4 and 8 devices.

  python scripts/benchmark_scaling.py --out=runs/benchmark_scaling.json

On mnist5k, for each method (KIP: FC1 NTK, IPC 10, `--kip_real_per_class` real targets per
class; random-feature KIP: `--random_features` features of the FC1 NNGP; DC: ConvNet-3 width 128,
IPC 1, one outer iteration, `--dc_real_per_class` real images per class) it builds the step on a
mesh of d devices (`parallel.make_mesh(d)`, d in `--devices`), times it (`--repeats`, median),
and reports throughput (real samples per second) and strong-scaling efficiency t_1 / (d · t_d).

On a CPU-only machine the script asks XLA for `--cpu_devices` simulated host devices (they share
the machine's cores), so the table shows the overhead of splitting the work, not a speed-up; on a
GPU/TPU host the mesh spans the real accelerators. Writes JSON after each row and prints a
Markdown table.
"""

import os
import sys


def _cpu_devices(argv) -> int:
  for arg in argv:
    if arg.startswith("--cpu_devices="):
      return int(arg.split("=", 1)[1])
  return 8


# XLA reads the host device count once, before JAX starts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={_cpu_devices(sys.argv)}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

from robust_dd import config as config_lib
from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import methods
from robust_dd import parallel
from robust_dd import presets
import _bench  # scripts/_bench.py

flags.DEFINE_list("methods", ["kip", "rfkip", "dc"], "kip, rfkip (random-feature KIP), dc.")
flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Mesh sizes (those above the device count "
                  "are skipped).")
flags.DEFINE_integer("cpu_devices", 8, "Simulated host devices where there is no accelerator "
                     "(read before JAX starts).")
flags.DEFINE_integer("kip_real_per_class", 200, "KIP: real targets per class per update.")
flags.DEFINE_integer("random_features", 4096, "rfkip: random features.")
flags.DEFINE_integer("dc_real_per_class", 64, "DC: real images per class per update.")
flags.DEFINE_integer("repeats", 3, "Timed steps per configuration.")
flags.DEFINE_string("out", "runs/benchmark_scaling.json", "JSON output path.")
FLAGS = flags.FLAGS

SETTINGS = {
    "kip": lambda: dict(method="kip", ipc=10, real_per_class=FLAGS.kip_real_per_class),
    "rfkip": lambda: dict(method="kip", ipc=10, real_per_class=FLAGS.kip_real_per_class,
                          random_features=FLAGS.random_features),
    "dc": lambda: dict(method="dc", ipc=1, real_per_class=FLAGS.dc_real_per_class,
                       outer_loop=1, inner_loop=1),
}


def bench_one(method, devices, x, y, real):
  config = presets.resolve_config(config_lib.DistillConfig.make(**SETTINGS[method]()), 10)
  o = config.optim
  optimizer = distill.make_optimizer(learning_rate=o.learning_rate, learn_labels=o.learn_labels,
                                     name=o.optimizer)
  idx = np.concatenate([np.flatnonzero(y == c)[:config.ipc] for c in range(10)])
  mesh = parallel.make_mesh(devices)
  state = parallel.replicate(
      distill.init_state(x[idx], data_lib.one_hot_centered(y[idx], 10), optimizer), mesh)
  step = methods.build_step(config, optimizer, num_classes=10, input_shape=x.shape[1:],
                            mesh=mesh)
  compiled, compile_seconds, times, metrics = _bench.time_step(
      step, state, parallel.replicate(real, mesh), jax.random.key(0), repeats=FLAGS.repeats)
  samples = config.optim.real_per_class * 10
  seconds = float(np.median(times))
  return {"method": method, "devices": devices, "seconds_per_step": seconds, "times": times,
          "samples_per_second": samples / seconds, "real_samples_per_update": samples,
          "compile_seconds": compile_seconds, "loss": float(metrics["loss"]),
          "mesh": parallel.describe(mesh), **_bench.memory_fields(compiled)}


def main(argv):
  del argv
  ds, x, real = _bench.mnist5k_real()
  available = len(jax.devices())
  sizes = [d for d in map(int, FLAGS.devices) if d <= available]
  configs = [dict(method=m, devices=d) for m in FLAGS.methods for d in sizes]
  results = _bench.run_all(lambda method, devices: bench_one(method, devices, x, ds.y_train,
                                                             real), configs, out=FLAGS.out)
  single = {r["method"]: r.get("seconds_per_step") for r in results if r["devices"] == 1}
  print(f"\nScaling on {available} x {jax.devices()[0].device_kind} ({jax.default_backend()}, "
        f"jax {jax.__version__})\n")
  print("| method | devices | s per step | real samples / s | efficiency t1 / (d td) | "
        "compile s |")
  print("|---|---|---|---|---|---|")
  for r in results:
    if "error" in r:
      print(f"| {r['method']} | {r['devices']} | failed: {r['error'][:60]} ||||")
      continue
    eff = (f"{single[r['method']] / (r['devices'] * r['seconds_per_step']):.2f}"
           if single.get(r["method"]) else "n/a")
    print(f"| {r['method']} | {r['devices']} | {r['seconds_per_step']:.3f} | "
          f"{r['samples_per_second']:,.0f} | {eff} | {r['compile_seconds']:.1f} |")
  print(f"\nJSON: {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
