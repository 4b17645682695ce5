"""Flags shared by the drivers (`experiments.distill`, `experiments.select`): data, kernel,
network and evaluation settings, each a field of `robust_dd.DistillConfig`."""

import sys

from absl import app
from absl import flags

from robust_dd import data as data_lib

SHARED_FLAGS = ("dataset", "data_dir", "data_path", "split_seed", "arch", "kernel", "depth", "w_std",
                "b_std", "pool", "zca", "zca_reg", "diag_reg", "net", "net_depth", "net_width",
                "conv_impl", "baseline_draws", "kernel_batch", "eval_seeds", "eval_epochs",
                "eval_batch", "eval_augment")


def define_shared_flags(d) -> None:
  """Defines SHARED_FLAGS with the defaults of the DistillConfig `d`."""
  flags.DEFINE_string("dataset", d.dataset,
                      f"One of {', '.join(data_lib.ALL_DATASETS)}, or tfds:NAME.")
  flags.DEFINE_string("data_dir", None, "TFDS data directory.")
  flags.DEFINE_string("data_path", None, "With --dataset=npz: a .npz with x_train, y_train, "
                      "x_test, y_test.")
  flags.DEFINE_integer("split_seed", d.split_seed, "Seed of the train/test split we make.")
  flags.DEFINE_enum("arch", d.arch, ["fc", "conv"], "Kernel architecture.")
  flags.DEFINE_enum("kernel", d.kernel, ["ntk", "nngp"], "Infinite-width kernel.")
  flags.DEFINE_integer("depth", d.depth, "Hidden layers (fc) or conv blocks (conv).")
  flags.DEFINE_float("w_std", d.w_std, "Weight standard deviation.")
  flags.DEFINE_float("b_std", d.b_std, "Bias standard deviation.")
  flags.DEFINE_bool("pool", d.pool, "conv: AvgPool 2x2 after each block (memory O((HW)^2)).")
  flags.DEFINE_bool("zca", d.zca, "ZCA-whiten (fitted on training data) after standardising.")
  flags.DEFINE_float("zca_reg", d.zca_reg, "ZCA regularisation (times the mean eigenvalue).")
  flags.DEFINE_float("diag_reg", d.diag_reg, "KRR ridge, relative to the mean kernel diagonal.")
  flags.DEFINE_enum("net", d.net, ["auto", "convnet", "mlp"], "Network of matching methods and of "
                    "finite-network evaluation (auto: ConvNet for images, MLP for flat inputs).")
  flags.DEFINE_integer("net_depth", d.net_depth, "ConvNet blocks / MLP hidden layers.")
  flags.DEFINE_integer("net_width", d.net_width, "ConvNet channels / MLP units.")
  flags.DEFINE_enum("conv_impl", d.conv_impl, ["patches", "lax"], "Convolution as one matmul "
                    "(patches, faster under vmap on CPU) or lax.conv.")
  flags.DEFINE_integer("baseline_draws", d.baseline_draws, "Random subsets for the KRR baseline.")
  flags.DEFINE_integer("kernel_batch", d.kernel_batch, "Block size of evaluation kernels.")
  flags.DEFINE_integer("eval_seeds", d.eval_seeds, "Finite-network evaluation seeds (and random "
                       "subsets of its baseline).")
  flags.DEFINE_integer("eval_epochs", d.eval_epochs, "Epochs of finite-network evaluation.")
  flags.DEFINE_integer("eval_batch", d.eval_batch, "Batch size of finite-network evaluation.")
  flags.DEFINE_bool("eval_augment", d.eval_augment, "DSA while training evaluation networks.")


def run_experiment(argv, experiment, *, workdir: str, errors=(ValueError,)) -> None:
  """The drivers' `main`: `experiment(workdir, log)` with progress printed as it comes; the
  `errors` (bad input) end the process with exit code 2 and the message, not a traceback."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    experiment(workdir, lambda s: print(s, flush=True))
  except errors as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"Outputs in {workdir}/", flush=True)
