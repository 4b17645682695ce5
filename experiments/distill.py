r"""Distills a dataset: flags -> robust_dd.DistillConfig -> robust_dd.distill_experiment.

Default (KIP, mnist5k, FC1 NTK, IPC 10, 2,000 Adam steps; about 20 s on a 2-core CPU):

  python -m experiments.distill --workdir=runs/kip_ipc10

Gradient matching (DC), with DSA, and loss-curvature matching on ConvNet-3:

  python -m experiments.distill --method=dc --ipc=1 --steps=200 --workdir=runs/dc_ipc1
  python -m experiments.distill --method=dsa --ipc=1 ...
  python -m experiments.distill --method=lcmat --ipc=1 ...

Group-robust variants of every method (CVaR over k-means clusters of each class), here on the
rare-subgroup benchmark (5% of training digits inverted, 50% of test digits):

  python -m experiments.distill --ipc=1 --subgroup=invert --robust=cvar --workdir=runs/kip_rob

Flags whose help says "Default by method" take that method's preset when left unset. `--help`
lists the flags set most often; `--helpfull` lists every flag (docs/methods.md explains them).
Re-running with the same --workdir resumes from its last checkpoint; a workdir that holds a run
with a different config is refused.
"""

from absl import app
from absl import flags

from experiments import _common
from robust_dd import config as config_lib

FLAGS = flags.FLAGS
MAIN_FLAGS = ("method", "ipc", "steps", "seed", "dataset", "data_dir", "learning_rate",
              "real_per_class", "robust", "init", "sampler")
NAMES = _common.define_config_flags(config_lib.DistillConfig, main=MAIN_FLAGS,
                                    main_module=__name__)
flags.DEFINE_string("workdir", None, "Output directory (default: runs/<method>_<dataset>_ipc<N>"
                    "_seed<S>).")


def config_from_flags() -> config_lib.DistillConfig:
  return _common.config_from_flags(config_lib.DistillConfig, NAMES)


def main(argv):
  config = config_from_flags()
  workdir = FLAGS.workdir or (f"runs/{config.method}_{config.data.dataset}_ipc{config.ipc}"
                              f"_seed{config.seed}")
  from robust_dd import experiment  # pylint: disable=g-import-not-at-top
  _common.run_experiment(argv, lambda w, log: experiment.distill_experiment(config, w, log=log),
                         workdir=workdir, errors=(ValueError, FloatingPointError))


if __name__ == "__main__":
  app.run(main)
