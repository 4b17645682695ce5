r"""Coreset selection: pick a fraction of each class of the real training set, then evaluate it.

    python -m experiments.select --method=lcmat --fraction=0.01 --workdir=runs/select_lcmat_1pct

Writes config.json, selection.npz (indices, importance weights, labels; saved before evaluation)
and metrics.json (finite-network and KRR test accuracy), and prints a table. Methods: random,
kmeans_centers, herding, kcenter, sensitivity (k-means sensitivity sampling), sensitivity_krr
(ridge leverage) and lcmat (LCMat-S). See docs/methods.md.
"""


from experiments import _common
from robust_dd import config as config_lib

config_from_flags, main = _common.config_driver(
    config_lib.SelectConfig, main_module=__name__,
    experiment="robust_dd.coreset.select_experiment",
    default_workdir="runs/select_{c.method}_{c.data.dataset}_{c.fraction:g}_seed{c.seed}",
    main=("method", "fraction", "seed", "dataset", "evaluators"))

if __name__ == "__main__":
  _common.run(main)
