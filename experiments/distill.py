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


from experiments import _common
from robust_dd import config as config_lib

config_from_flags, main = _common.config_driver(
    config_lib.DistillConfig, main_module=__name__,
    experiment="robust_dd.experiment.distill_experiment",
    default_workdir="runs/{c.method}_{c.data.dataset}_ipc{c.ipc}_seed{c.seed}",
    errors=(ValueError, FloatingPointError),
    main=("method", "ipc", "steps", "seed", "dataset", "data_dir", "learning_rate",
          "real_per_class", "robust", "init", "sampler"))

if __name__ == "__main__":
  _common.run(main)
