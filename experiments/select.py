r"""Coreset selection: pick a fraction of each class of the real training set, then evaluate it.

    python -m experiments.select --method=lcmat --fraction=0.01 --workdir=runs/select_lcmat_1pct

Writes config.json, selection.npz (indices, importance weights, labels; saved before evaluation)
and metrics.json (finite-network and KRR test accuracy), and prints a table. Methods: random,
kmeans_centers, herding, kcenter, sensitivity (k-means sensitivity sampling), sensitivity_krr
(ridge leverage) and lcmat (LCMat-S). See docs/methods.md.
"""

from absl import app
from absl import flags

from experiments import _common
from robust_dd import config as config_lib

FLAGS = flags.FLAGS
NAMES = _common.define_config_flags(config_lib.SelectConfig,
                                    main=("method", "fraction", "seed", "dataset", "evaluators"),
                                    main_module=__name__)
flags.DEFINE_string("workdir", None, "Output directory (default: runs/select_<method>_<dataset>_"
                    "<fraction>_seed<S>).")


def config_from_flags() -> config_lib.SelectConfig:
  return _common.config_from_flags(config_lib.SelectConfig, NAMES)


def main(argv):
  config = config_from_flags()
  workdir = FLAGS.workdir or (f"runs/select_{config.method}_{config.data.dataset}_"
                              f"{config.fraction:g}_seed{config.seed}")
  from robust_dd import coreset  # pylint: disable=g-import-not-at-top
  _common.run_experiment(argv, lambda w, log: coreset.select_experiment(config, w, log=log),
                         workdir=workdir)


if __name__ == "__main__":
  app.run(main)
