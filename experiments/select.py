"""Coreset selection: pick a fraction of each class of the real training set, then evaluate it.

    python -m experiments.select --method=lcmat --fraction=0.01 --workdir=runs/select_lcmat_1pct

Writes config.json, selection.npz (indices, importance weights, labels; saved before evaluation)
and metrics.json (finite-network and KRR test accuracy), and prints a table. Methods: random,
kmeans_centers, herding, kcenter, sensitivity (k-means sensitivity sampling), sensitivity_krr
(ridge leverage) and lcmat (LCMat-S). See METHODS.md §3-4.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (imported by NT) is noisy.

from absl import app
from absl import flags

from experiments import _common
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
_common.define_shared_flags(_B)
flags.DEFINE_string("workdir", None, "Output directory (default: runs/select_<method>_<dataset>_"
                    "<fraction>_seed<S>).")

SELECT_FLAGS = ("method", "fraction", "seed", "ridge", "rank", "dedup_quantile", "warmup_epochs",
                "num_coords", "lcmat_eps", "class_batch")


def config_from_flags() -> coreset.SelectConfig:
  base = distill.DistillConfig(method="dc", seed=FLAGS.seed,
                               **{n: FLAGS[n].value for n in _common.SHARED_FLAGS})
  return coreset.SelectConfig(**{n: FLAGS[n].value for n in SELECT_FLAGS},
                              evaluators=tuple(FLAGS.evaluators), base=base)


def main(argv):
  config = config_from_flags()
  workdir = FLAGS.workdir or (f"runs/select_{config.method}_{config.base.dataset}_"
                              f"{config.fraction:g}_seed{config.seed}")
  _common.run_experiment(argv, lambda w, log: coreset.select_experiment(config, w, log=log),
                         workdir=workdir)

if __name__ == "__main__":
  app.run(main)
