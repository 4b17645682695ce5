r"""Evaluates a saved distilled set: flags -> robust_dd.evaluate_workdir.

  python -m experiments.evaluate --workdir=runs/dc_mnist5k_ipc1

Rebuilds the run's dataset and test split from its config.json, applies the preprocessing saved in
distilled.npz, and reports test accuracy (mean ± std over seeds) of the finite network trained on
the set and, for kernel runs or with --krr, of KRR with the run's kernel, each beside random real
subsets of the same size under the same evaluator; with --robust_eval (default: the run's), also
accuracy per test cluster (worst and mean), on the rare subgroup of --subgroup runs, and under
corruptions. Writes <workdir>/evaluation.json.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags

from robust_dd import distill

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A directory written by experiments.distill.", required=True)
flags.DEFINE_enum("net", None, ["auto", "convnet", "mlp"], "Evaluation network (default: the "
                  "run's).")
flags.DEFINE_integer("net_depth", None, "Evaluation network depth (default: the run's).")
flags.DEFINE_integer("net_width", None, "Evaluation network width (default: the run's).")
flags.DEFINE_integer("eval_seeds", None, "Network seeds and random subsets (default: the run's).")
flags.DEFINE_integer("eval_epochs", None, "Training epochs (default: the run's).")
flags.DEFINE_integer("eval_batch", None, "Training batch size (default: the run's).")
flags.DEFINE_bool("eval_augment", None, "DSA while training (default: the run's).")
flags.DEFINE_bool("robust_eval", None, "Per-cluster, subgroup and corruption accuracy (default: "
                  "the run's).")
flags.DEFINE_bool("network", True, "Evaluate with the finite network.")
flags.DEFINE_bool("krr", None, "Evaluate with KRR and the run's kernel (default: for kip runs).")
flags.DEFINE_bool("baseline", True, "Also evaluate random real subsets of the same size.")
flags.DEFINE_string("output", "evaluation.json", "File name written in --workdir.")

OVERRIDES = ("net", "net_depth", "net_width", "eval_seeds", "eval_epochs", "eval_batch",
             "eval_augment", "robust_eval")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  overrides = {k: FLAGS[k].value for k in OVERRIDES if FLAGS[k].value is not None}
  try:
    distill.evaluate_workdir(FLAGS.workdir, network=FLAGS.network, krr=FLAGS.krr,
                             baseline=FLAGS.baseline, output=FLAGS.output,
                             log=lambda s: print(s, flush=True), **overrides)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
