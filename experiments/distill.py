r"""Distills a dataset: flags -> DistillConfig -> robust_dd.distill_experiment.

Default (KIP, mnist5k, FC1 NTK, IPC 10, 2,000 Adam steps; about 30 s on a 2-core CPU):

  python -m experiments.distill --workdir=runs/kip_ipc10

Gradient matching (DC), with DSA, and loss-curvature matching on ConvNet-3:

  python -m experiments.distill --method=dc --ipc=1 --steps=200 --workdir=runs/dc_ipc1
  python -m experiments.distill --method=dsa --ipc=1 ...
  python -m experiments.distill --method=lcmat --ipc=1 ...

Group-robust variants of every method (CVaR over k-means clusters of each class), here on the
rare-subgroup benchmark (5% of training digits inverted, 50% of test digits):

  python -m experiments.distill --ipc=1 --subgroup=invert --robust=cvar --workdir=runs/kip_rob

Flags without a value shown below take the method's default (see distill.METHOD_DEFAULTS).

Re-running with the same --workdir resumes from its last checkpoint; a workdir that holds a run with
a different config is refused.
"""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (imported by NT) is noisy.

from absl import app
from absl import flags

from experiments import _common
from robust_dd import data as data_lib
from robust_dd import distill

_D = distill.DistillConfig()
FLAGS = flags.FLAGS
flags.DEFINE_enum("method", _D.method, list(distill.METHODS), "Distillation method.")
_common.define_shared_flags(_D)
flags.DEFINE_integer("ipc", _D.ipc, "Synthetic images per class.")
flags.DEFINE_integer("outer_loop", _D.outer_loop, "Set updates per fresh network (DC default by "
                     "IPC: 1 -> 1, 10 -> 10, 50 -> 50).")
flags.DEFINE_integer("inner_loop", _D.inner_loop, "Network SGD steps on the set between updates "
                     "(DC default by IPC: 1 -> 1, 10 -> 50, 50 -> 10).")
flags.DEFINE_float("net_learning_rate", _D.net_learning_rate, "Inner-loop SGD learning rate.")
flags.DEFINE_enum("metric", _D.metric, ["ours", "mse", "cos"], "Gradient-matching distance.")
flags.DEFINE_bool("augment", _D.augment, "Siamese DSA in matching (default: on for dsa, lcmat).")
flags.DEFINE_float("rho", _D.rho, "LCMat: radius of the adversarial direction.")
flags.DEFINE_float("gamma", _D.gamma, "LCMat: weight of the curvature term.")
flags.DEFINE_enum("hvp", _D.hvp, ["exact", "finite_difference"], "LCMat: Hessian-vector product.")
flags.DEFINE_integer("class_batch", _D.class_batch, "Classes vmapped at once in matching losses "
                     "(0: all). Lower it to bound memory, e.g. for lcmat with 256 images/class.")
flags.DEFINE_enum("robust", _D.robust, list(distill.ROBUST), "cvar: minimise (1 - robust_weight)"
                  " * mean + robust_weight * CVaR of per-cluster losses (METHODS.md §5).")
flags.DEFINE_float("tail_fraction", _D.tail_fraction, "CVaR tail fraction alpha in (0, 1] (1: the "
                   "mean; small: the worst cluster).")
flags.DEFINE_float("robust_weight", _D.robust_weight, "Weight lambda of CVaR against the mean.")
flags.DEFINE_integer("num_clusters", _D.num_clusters, "k-means clusters, per class with "
                     "--cluster_scope=class (ignored by prototype assignment: IPC per class).")
flags.DEFINE_enum("cluster_features", _D.cluster_features, ["pixels", "random", "embed"],
                  "Features clustered: inputs, random ReLU features, or a random network's "
                  "embedding (redrawn at every reclustering).")
flags.DEFINE_enum("cluster_assignment", _D.cluster_assignment, list(distill.CLUSTER_ASSIGNMENTS),
                  "kmeans, or prototype: each real sample joins its nearest synthetic image.")
flags.DEFINE_enum("cluster_scope", _D.cluster_scope, list(distill.CLUSTER_SCOPES),
                  "Cluster within each class or globally.")
flags.DEFINE_integer("recluster_every", _D.recluster_every, "Steps between reclusterings (0: "
                     "once; default 1 for prototype, 0 for kmeans).")
flags.DEFINE_enum("subgroup", _D.subgroup, ["none", *data_lib.SUBGROUPS], "Rare-subgroup "
                  "benchmark: transform a rare part of every class (train) and a larger part "
                  "(test), reported separately.")
flags.DEFINE_float("subgroup_train_fraction", _D.subgroup_train_fraction,
                   "Fraction of each class's training samples in the subgroup.")
flags.DEFINE_float("subgroup_test_fraction", _D.subgroup_test_fraction,
                   "Fraction of each class's test samples in the subgroup.")
flags.DEFINE_enum("optimizer", _D.optimizer, ["adam", "sgd"], "Optimiser of the synthetic set "
                  "(default: adam for kip, sgd for matching).")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Learning rate of the synthetic set "
                   "(default: 0.01 kip, 0.1 matching).")
flags.DEFINE_float("momentum", _D.momentum, "SGD momentum of the synthetic set.")
flags.DEFINE_bool("learn_labels", _D.learn_labels, "Learn the synthetic labels too (default: "
                  "kip only).")
flags.DEFINE_integer("target_batch", _D.target_batch, "Real samples per update, class-balanced "
                     "(default: 500 kip, 256 per class matching).")
flags.DEFINE_integer("steps", _D.steps, "Steps (kip: updates; matching: outer iterations, each "
                     "with a fresh network). Default 2000 kip, 1000 matching.")
flags.DEFINE_integer("seed", _D.seed, "Seed of initialisation, batches and baselines.")
flags.DEFINE_bool("robust_eval", _D.robust_eval, "Also report accuracy per test cluster, on the "
                  "rare subgroup and under corruptions (noise, blur, invert).")
flags.DEFINE_enum("init", _D.init, list(distill.INIT_METHODS), "Initial synthetic images, per "
                  "class: random real ones, the real ones nearest to k-means centres (k = IPC), "
                  "or drawn by k-means sensitivity or by ridge leverage of the kernel "
                  "(METHODS.md §4).")
flags.DEFINE_float("init_ridge", _D.init_ridge, "sensitivity_krr: ridge, relative to the mean "
                   "kernel diagonal.")
flags.DEFINE_integer("init_rank", _D.init_rank, "sensitivity_krr: Nyström landmarks per class "
                     "(0: the exact class kernel).")
flags.DEFINE_float("dedup_quantile", _D.dedup_quantile, "Sensitivity inits: never draw points "
                   "closer to a kept one than this quantile of nearest-neighbour distances "
                   "(default: only exact duplicates are removed).")
flags.DEFINE_enum("sampler", _D.sampler, list(distill.SAMPLERS), "Real batches: uniform, or "
                  "importance-sampled by each real sample's loss under the synthetic set's model.")
flags.DEFINE_integer("sampler_every", _D.sampler_every, "Importance: steps between rescorings.")
flags.DEFINE_float("sampler_beta", _D.sampler_beta, "Importance: uniform share beta of "
                   "p = (1 - beta) loss / sum + beta / n_c.")
flags.DEFINE_bool("sampler_unbiased", _D.sampler_unbiased, "Importance: reweight drawn samples "
                  "by 1 / (n_c p) (self-normalised).")
flags.DEFINE_integer("sampler_train_steps", _D.sampler_train_steps, "Importance, matching "
                     "methods: SGD steps on the synthetic set of the network that scores.")
flags.DEFINE_integer("log_every", _D.log_every, "Steps between progress lines.")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Steps between checkpoints.")
flags.DEFINE_bool("eval_during", _D.eval_during, "Report test accuracy at each progress line "
                  "(for monitoring only; nothing is selected on it). Default: kip only.")
flags.DEFINE_string("workdir", None, "Output directory (default: runs/<method>_<dataset>_ipc<N>"
                    "_seed<S>).")


def config_from_flags() -> distill.DistillConfig:
  names = [f.name for f in dataclasses.fields(distill.DistillConfig)]
  return distill.DistillConfig(**{n: FLAGS[n].value for n in names})


def main(argv):
  config = config_from_flags()
  workdir = FLAGS.workdir or (f"runs/{config.method}_{config.dataset}_ipc{config.ipc}"
                              f"_seed{config.seed}")
  _common.run_experiment(argv, lambda w, log: distill.distill_experiment(config, w, log=log),
                         workdir=workdir, errors=(ValueError, FloatingPointError))

if __name__ == "__main__":
  app.run(main)
