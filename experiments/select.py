"""Coreset selection: pick a fraction of each class of the real training set, then evaluate it.

    python -m experiments.select --method=lcmat --fraction=0.01 --workdir=runs/select_lcmat_1pct

Writes config.json, selection.npz (indices, importance weights, labels; saved before evaluation)
and metrics.json (finite-network and KRR test accuracy), and prints a table. Methods: random,
kmeans_centers, herding, kcenter, sensitivity (k-means sensitivity sampling), sensitivity_krr
(ridge leverage) and lcmat (LCMat-S). See METHODS.md §3-4.
"""

import sys

from absl import app
from absl import flags

from robust_dd import coreset
from robust_dd import distill
from robust_dd import select

_D = coreset.SelectConfig()
_B = _D.base
FLAGS = flags.FLAGS
flags.DEFINE_enum("method", _D.method, list(select.METHODS), "Selection method.")
flags.DEFINE_float("fraction", _D.fraction, "Fraction of the training set kept, per class "
                   "(at least 1 per class).")
flags.DEFINE_integer("seed", _D.seed, "Seed of the selection (and of evaluation networks).")
flags.DEFINE_float("ridge", _D.ridge, "sensitivity_krr: ridge relative to the kernel's mean "
                   "diagonal.")
flags.DEFINE_integer("rank", _D.rank, "sensitivity_krr: Nyström landmarks (0: exact).")
flags.DEFINE_float("dedup_quantile", _D.dedup_quantile, "Sampling methods: drop near-duplicates "
                   "closer than this quantile of nearest-neighbour distances.")
flags.DEFINE_integer("warmup_epochs", _D.warmup_epochs, "lcmat: warm-up epochs on all data.")
flags.DEFINE_integer("num_coords", _D.num_coords, "lcmat: Hessian coordinates kept (highest "
                     "variance).")
flags.DEFINE_float("lcmat_eps", _D.lcmat_eps, "lcmat: weight of the Hessian L1 distance.")
flags.DEFINE_integer("class_batch", _D.class_batch, "lcmat: classes vmapped at once (0: all).")
flags.DEFINE_list("evaluators", list(_D.evaluators), "network and/or krr.")
flags.DEFINE_string("dataset", _B.dataset, "digits, mnist5k, mnist1d, npz or a TFDS name.")
flags.DEFINE_string("data_dir", _B.data_dir, "TFDS data_dir.")
flags.DEFINE_string("data_path", _B.data_path, "Path of an .npz dataset (--dataset=npz).")
flags.DEFINE_integer("split_seed", _B.split_seed, "Seed of the train/test split.")
flags.DEFINE_bool("zca", _B.zca, "ZCA-whiten the inputs.")
flags.DEFINE_enum("arch", _B.arch, ["fc", "conv"], "KRR evaluation / leverage kernel.")
flags.DEFINE_enum("kernel", _B.kernel, ["ntk", "nngp"], "KRR kernel.")
flags.DEFINE_integer("depth", _B.depth, "Kernel depth.")
flags.DEFINE_float("diag_reg", _B.diag_reg, "KRR ridge (relative).")
flags.DEFINE_string("net", _B.net, "Evaluation network: auto, convnet or mlp.")
flags.DEFINE_integer("net_depth", _B.net_depth, "Network depth.")
flags.DEFINE_integer("net_width", _B.net_width, "Network width.")
flags.DEFINE_integer("eval_seeds", _B.eval_seeds, "Finite-network evaluation seeds.")
flags.DEFINE_integer("eval_epochs", _B.eval_epochs, "Epochs of finite-network evaluation.")
flags.DEFINE_integer("eval_batch", _B.eval_batch, "Batch size of finite-network evaluation.")
flags.DEFINE_bool("eval_augment", _B.eval_augment, "DSA while training evaluation networks.")
flags.DEFINE_string("workdir", None, "Output directory (default: runs/select_<method>_<dataset>_"
                    "<fraction>_seed<S>).")

BASE_FLAGS = ("dataset", "data_dir", "data_path", "split_seed", "zca", "arch", "kernel", "depth",
              "diag_reg", "net", "net_depth", "net_width", "eval_seeds", "eval_epochs",
              "eval_batch", "eval_augment", "seed")
SELECT_FLAGS = ("method", "fraction", "seed", "ridge", "rank", "dedup_quantile", "warmup_epochs",
                "num_coords", "lcmat_eps", "class_batch")


def config_from_flags() -> coreset.SelectConfig:
  base = distill.DistillConfig(method="dc", **{n: FLAGS[n].value for n in BASE_FLAGS})
  return coreset.SelectConfig(**{n: FLAGS[n].value for n in SELECT_FLAGS},
                              evaluators=tuple(FLAGS.evaluators), base=base)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = config_from_flags()
  workdir = FLAGS.workdir or (f"runs/select_{config.method}_{config.base.dataset}_"
                              f"{config.fraction:g}_seed{config.seed}")
  try:
    coreset.select_experiment(config, workdir, log=lambda s: print(s, flush=True))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"Outputs in {workdir}/", flush=True)


if __name__ == "__main__":
  app.run(main)
