"""Runs every method variant as `python -m experiments.distill` runs it; used by
test_multidevice_driver.py.

  python tests/multidevice_driver_worker.py DEVICES OUTDIR

Must start before JAX: with DEVICES > 1 it asks XLA for that many host devices. Each variant's
flags (`VARIANTS`, after `COMMON`) are parsed by the driver's own flag definitions
(`experiments.distill.config_from_flags`) and run by `distill_experiment` into OUTDIR/<variant>
on a mesh of all DEVICES devices; a variant that fails writes OUTDIR/<variant>.error (its
traceback) and the others still run. MTT's experts are trained once, on one device, so both
device counts match against the same buffer.
"""

import os
import sys
import time
import traceback

DEVICES = int(sys.argv[1])
if DEVICES > 1:  # As in multidevice_worker.py: collectives on 8 threads sharing 2 cores.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={DEVICES}"
                             + " --xla_cpu_collective_call_terminate_timeout_seconds=600")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top

from experiments import distill as driver  # Defines the driver's flags.
from robust_dd import config as config_lib
from robust_dd import experiment
from robust_dd import experts

# Small enough for CI: digits (8x8), IPC 1, 2 steps, a width-8 ConvNet, one evaluation epoch.
# --grad_chunk=4 takes the chunked gradient path (real batches of 20 per class) on every device
# count; --class_batch is left unset so classes are split over the devices.
COMMON = ["--dataset=digits", "--ipc=1", "--steps=2", "--log_every=1", "--real_per_class=20",
          "--grad_chunk=4", "--net_width=8", "--outer_loop=2", "--inner_loop=2",
          "--eval_epochs=1", "--eval_seeds=1", "--baseline_draws=1", "--norobust_eval"]
ROBUST = ["--robust=cvar", "--num_clusters=2"]
IMPORTANCE = ["--sampler=importance", "--sampler_every=1", "--sampler_train_steps=2"]
VARIANTS = {
    "kip": ["--method=kip"],
    "kip_cvar": ["--method=kip", *ROBUST],
    "kip_importance": ["--method=kip", *IMPORTANCE],
    "dc": ["--method=dc"],
    "dsa": ["--method=dsa"],
    "lcmat": ["--method=lcmat"],
    "mtt": ["--method=mtt", "--syn_steps=2", "--expert_epochs=1", "--max_start_epoch=1"],
    "dc_cvar": ["--method=dc", *ROBUST],
    "dc_cvar_network": ["--method=dc", *ROBUST, "--robust_on=network", "--robust_net_batch=16"],
    "dc_importance": ["--method=dc", *IMPORTANCE],
}


def log(line: str) -> None:
  if os.environ.get("VERBOSE"):
    print(f"  {time.strftime('%H:%M:%S')} {line}", flush=True)


def main():
  out = sys.argv[2]
  only = sys.argv[3].split(",") if len(sys.argv) > 3 else list(VARIANTS)
  expert_dir = os.path.join(out, "experts")
  if "mtt" in only:
    experts.experts_experiment(
        config_lib.ExpertsConfig.make(dataset="digits", num_experts=1, epochs=2, net_width=8,
                                      expert_batch=64, mesh="1"),
        expert_dir, log=lambda s: None)
  for name in only:
    argv = ["distill", *COMMON, *VARIANTS[name]]
    if name == "mtt":
      argv.append(f"--expert_dir={expert_dir}")
    try:
      flags.FLAGS.unparse_flags()
      flags.FLAGS(argv)
      config = driver.config_from_flags()
      t0 = time.time()
      experiment.distill_experiment(config, os.path.join(out, name), log=log)
      print(f"{name}: {time.time() - t0:.1f} s", flush=True)
    except Exception:  # pylint: disable=broad-except  # Reported per variant by the test.
      with open(os.path.join(out, f"{name}.error"), "w", encoding="utf-8") as f:
        f.write(traceback.format_exc())


if __name__ == "__main__":
  main()
